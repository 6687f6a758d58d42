"""Classification metrics for ECG statements: macro AUROC, macro AUPRC, Fmax, per-class AUROC.

Library choice: ``evaluate.load("roc_auc")`` needs the Hugging Face Hub (its metric scripts live
there), so it fails offline. Every metric here is computed with **scikit-learn**
(``roc_auc_score``, ``average_precision_score``, ``f1_score``) on NumPy arrays. The bootstrap
intervals are ``scipy.stats.bootstrap``'s; the statistic it resamples uses NumPy re-implementations
of the same two ranking metrics because 1000 resamples x C classes of scikit-learn calls is too
slow; ``tests/test_metrics.py`` checks they equal scikit-learn's.

Conventions
-----------
- ``y_true``: (N, C) multi-hot {0, 1}, or (N,) integer class indices for single-label tasks (then
  one-hot encoded, one-vs-rest).
- ``y_score``: (N, C) scores; probabilities in [0, 1] (sigmoid for multi-label, softmax for
  single-label) for Fmax and F1, any monotone score for AUROC/AUPRC.
- A class whose ``y_true`` column has no positive or no negative example has no defined AUROC: it is
  left out of the macro averages and listed under ``"excluded_classes"`` (ecg-hub protocol §7).

Fmax (the PTB-XL benchmark definition, Strodthoff et al., JBHI 2020, after CAFA / Clark & Radivojac
2013): a sample-centric, threshold-free F1. For each threshold t in {0.00, 0.01, ..., 1.00}, a class
is predicted for a record when its score is >= t;

    precision(t) = mean over records with >= 1 predicted class of  |pred ∩ true| / |pred|
    recall(t)    = mean over records with >= 1 true class of        |pred ∩ true| / |true|
    F(t)         = 2 precision(t) recall(t) / (precision(t) + recall(t))
    Fmax         = max_t F(t)

Fmax picks its threshold on the set it scores, so it is an optimistic summary; ``macro_f1_at``
with thresholds tuned on validation (``tune_f1_thresholds``) is the honest thresholded metric.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

# Thresholds on the probability scale searched by Fmax and by the per-class F1 tuning.
FMAX_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 101), 2)

HEADLINE_METRICS = ("macro_auroc", "macro_auprc", "fmax")


def _as_multi_hot(y_true: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) class indices or (N, C) multi-hot -> (N, C) int multi-hot."""
    y_true = np.asarray(y_true)
    if y_true.ndim == 1:
        if y_true.size and (y_true.min() < 0 or y_true.max() >= num_classes):
            raise ValueError(
                f"y_true: class indices must lie in [0, {num_classes}), got range "
                f"[{y_true.min()}, {y_true.max()}]"
            )
        one_hot = np.zeros((y_true.shape[0], num_classes), dtype=np.int64)
        one_hot[np.arange(y_true.shape[0]), y_true.astype(np.int64)] = 1
        return one_hot
    if y_true.ndim != 2 or y_true.shape[1] != num_classes:
        raise ValueError(f"y_true: expected shape (N, {num_classes}) or (N,), got {y_true.shape}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true: multi-hot labels must be 0 or 1")
    return y_true.astype(np.int64)


def _check_inputs(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_score.ndim != 2:
        raise ValueError(f"y_score: expected shape (N, C), got {y_score.shape}")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score: contains NaN or infinite values")
    y_true = _as_multi_hot(y_true, y_score.shape[1])
    if y_true.shape[0] != y_score.shape[0]:
        raise ValueError(f"y_true has {y_true.shape[0]} records but y_score has {y_score.shape[0]}")
    return y_true, y_score


def defined_classes(y_true: np.ndarray) -> np.ndarray:
    """Boolean (C,) mask of classes with at least one positive and one negative record."""
    positives = y_true.sum(axis=0)
    return (positives > 0) & (positives < y_true.shape[0])


def per_class_auroc(y_true, y_score) -> np.ndarray:
    """(C,) ROC AUC per class with scikit-learn; NaN where a class lacks positives or negatives."""
    y_true, y_score = _check_inputs(y_true, y_score)
    defined = defined_classes(y_true)
    return np.array(
        [roc_auc_score(y_true[:, c], y_score[:, c]) if defined[c] else np.nan for c in range(y_true.shape[1])]
    )


def per_class_auprc(y_true, y_score) -> np.ndarray:
    """(C,) average precision (area under the precision-recall curve, scikit-learn's step-wise
    definition) per class; NaN where a class lacks positives or negatives."""
    y_true, y_score = _check_inputs(y_true, y_score)
    defined = defined_classes(y_true)
    return np.array(
        [
            average_precision_score(y_true[:, c], y_score[:, c]) if defined[c] else np.nan
            for c in range(y_true.shape[1])
        ]
    )


def fmax_score(y_true, y_score, thresholds: Sequence[float] = FMAX_THRESHOLDS) -> tuple[float, float]:
    """Sample-centric Fmax (PTB-XL benchmark / CAFA definition, see the module docstring).

    Args:
        y_true: (N, C) multi-hot or (N,) class indices.
        y_score: (N, C) probabilities in [0, 1].
        thresholds: probability thresholds searched (default 0.00, 0.01, ..., 1.00).

    Returns:
        ``(fmax, threshold)``: the best F and the threshold reaching it (the smallest on ties).
    """
    y_true, y_score = _check_inputs(y_true, y_score)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    # (T, N, C) boolean predictions; T = 101 and N*C is at most a few 100k for PTB-XL test sets.
    predicted = y_score[None, :, :] >= thresholds[:, None, None]
    true_positives = (predicted & (y_true[None] == 1)).sum(axis=2)  # (T, N)
    num_predicted = predicted.sum(axis=2)  # (T, N)
    num_true = y_true.sum(axis=1)  # (N,)
    has_true = num_true > 0
    if not has_true.any():
        raise ValueError("y_true: Fmax needs at least one record with a positive class")
    covered = num_predicted > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        sample_precision = np.where(covered, true_positives / np.maximum(num_predicted, 1), 0.0)
        precision = sample_precision.sum(axis=1) / covered.sum(axis=1)  # NaN when nothing predicted
        recall = (true_positives[:, has_true] / num_true[has_true]).mean(axis=1)
        f = 2 * precision * recall / (precision + recall)
    f = np.where(np.isfinite(f), f, 0.0)
    best = int(np.argmax(f))
    return float(f[best]), float(thresholds[best])


def tune_f1_thresholds(y_true, y_score, thresholds: Sequence[float] = FMAX_THRESHOLDS) -> np.ndarray:
    """(C,) per-class thresholds maximising each class's F1 (tune on the validation split).

    A class without positives gets threshold 0.5.
    """
    y_true, y_score = _check_inputs(y_true, y_score)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    best = np.full(y_true.shape[1], 0.5)
    for c in range(y_true.shape[1]):
        positive = y_true[:, c] == 1
        if not positive.any():
            continue
        # F1 at every threshold from counts (scikit-learn's f1_score with zero_division=0, vectorised).
        predicted = y_score[:, c][:, None] >= thresholds[None, :]  # (N, T)
        true_pos = (predicted & positive[:, None]).sum(0)
        false_pos = (predicted & ~positive[:, None]).sum(0)
        false_neg = positive.sum() - true_pos
        denominator = 2 * true_pos + false_pos + false_neg
        f1 = np.where(denominator > 0, 2 * true_pos / np.maximum(denominator, 1), 0.0)
        best[c] = thresholds[int(np.argmax(f1))]
    return best


def macro_f1_at(y_true, y_score, thresholds: np.ndarray) -> float:
    """Macro F1 (scikit-learn) at fixed per-class ``thresholds`` (C,), over classes with a positive."""
    y_true, y_score = _check_inputs(y_true, y_score)
    keep = y_true.sum(axis=0) > 0
    predicted = y_score >= np.asarray(thresholds)[None, :]
    return float(f1_score(y_true[:, keep], predicted[:, keep], average="macro", zero_division=0.0))


def classification_metrics(
    y_true,
    y_score,
    class_names: Sequence[str] | None = None,
    *,
    f1_thresholds: np.ndarray | None = None,
) -> dict:
    """Headline metrics for one split.

    Args:
        y_true: (N, C) multi-hot or (N,) class indices.
        y_score: (N, C) probabilities (sigmoid for multi-label, softmax for single-label).
        class_names: C names for the per-class entries (default ``"0"``, ``"1"``, ...).
        f1_thresholds: optional (C,) thresholds tuned on validation -> adds ``macro_f1``.

    Returns:
        ``{"macro_auroc", "macro_auprc", "fmax", "fmax_threshold", ["macro_f1"], "num_records",
        "per_class_auroc": {name: float|None}, "per_class_auprc": {...}, "excluded_classes": [...]}``.
        Macro averages are over classes with both positive and negative records.
    """
    y_true, y_score = _check_inputs(y_true, y_score)
    num_classes = y_true.shape[1]
    names = [str(c) for c in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"class_names: expected {num_classes} names, got {len(names)}")
    defined = defined_classes(y_true)
    if not defined.any():
        raise ValueError("y_true: no class has both positive and negative records; AUROC is undefined")
    auroc = per_class_auroc(y_true, y_score)
    auprc = per_class_auprc(y_true, y_score)
    fmax, fmax_threshold = fmax_score(y_true, y_score)
    metrics = {
        "macro_auroc": float(np.mean(auroc[defined])),
        "macro_auprc": float(np.mean(auprc[defined])),
        "fmax": fmax,
        "fmax_threshold": fmax_threshold,
    }
    if f1_thresholds is not None:
        metrics["macro_f1"] = macro_f1_at(y_true, y_score, f1_thresholds)
    metrics["num_records"] = int(y_true.shape[0])
    metrics["per_class_auroc"] = {n: (float(a) if d else None) for n, a, d in zip(names, auroc, defined)}
    metrics["per_class_auprc"] = {n: (float(a) if d else None) for n, a, d in zip(names, auprc, defined)}
    metrics["excluded_classes"] = [n for n, d in zip(names, defined) if not d]
    return metrics


# --- fast NumPy versions for the bootstrap ----------------------------------------------------


def _rank_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of one class by the Mann-Whitney U statistic with mid-ranks for ties (equals
    scikit-learn's ``roc_auc_score``)."""
    from scipy.stats import rankdata

    num_pos = labels.sum()
    num_neg = labels.shape[0] - num_pos
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def _step_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one class, sum_n (R_n - R_{n-1}) P_n over distinct score thresholds
    (equals scikit-learn's ``average_precision_score``)."""
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # Last index of each run of equal scores: all tied records switch at the same threshold.
    distinct = np.r_[np.flatnonzero(np.diff(scores)), labels.shape[0] - 1]
    true_pos = np.cumsum(labels)[distinct]
    predicted = distinct + 1
    precision = true_pos / predicted
    recall = true_pos / labels.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def macro_auroc_fast(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Macro AUROC over defined classes with the rank kernel (for per-epoch model selection)."""
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    defined = np.flatnonzero(defined_classes(y_true))
    if defined.size == 0:
        raise ValueError("y_true: no class has both positive and negative records; AUROC is undefined")
    return float(np.mean([_rank_auroc(y_true[:, c], y_score[:, c]) for c in defined]))


def bootstrap_confidence_intervals(
    y_true,
    y_score,
    *,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals for macro AUROC, macro AUPRC and Fmax (``scipy.stats.bootstrap``).

    Records are resampled with replacement ``num_resamples`` times (``numpy.random.default_rng(seed)``),
    each record's labels and scores together: scipy resamples the record index, which is what its
    ``paired=True`` does inside; handing it the index directly indexes the (N, C) matrices once per
    resample instead of broadcasting them to (C, resamples, N). In each resample the macro averages
    use the classes with both positives and negatives there. A resample where no class has both
    (only on tiny test sets) has no macro AUROC: the statistic is NaN there, and, as before the port
    to scipy, such resamples are left out of all three intervals (scipy's own percentile step would
    make the whole interval NaN); a metric none of the resamples defines is left out.

    The percentile method, not scipy's default BCa: BCa's jackknife scores the metrics once more per
    record (N more evaluations of every metric on top of ``num_resamples``), and a leave-one-out
    set that loses a class's only positive changes which classes the macro average covers.

    Returns:
        ``{"macro_auroc": [low, high], "macro_auprc": [...], "fmax": [...]}``.
    """
    from scipy.stats import DegenerateDataWarning, bootstrap

    y_true, y_score = _check_inputs(y_true, y_score)
    whole = isinstance(num_resamples, (int, np.integer)) and not isinstance(num_resamples, bool)
    if not whole or num_resamples < 1:
        raise ValueError(f"num_resamples: expected a positive integer, got {num_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a level in (0, 1), got {confidence!r}")

    def statistic(index: np.ndarray) -> np.ndarray:
        labels, scores = y_true[index], y_score[index]
        defined = np.flatnonzero(defined_classes(labels))
        if defined.size == 0:
            return np.full(len(HEADLINE_METRICS), np.nan)
        return np.array(
            [
                np.mean([_rank_auroc(labels[:, c], scores[:, c]) for c in defined]),
                np.mean([_step_average_precision(labels[:, c], scores[:, c]) for c in defined]),
                fmax_score(labels, scores)[0],  # a defined class has a positive, so Fmax is defined
            ]
        )

    with warnings.catch_warnings():
        # NaN resamples make scipy's interval NaN and warn; they are handled below.
        warnings.simplefilter("ignore", DegenerateDataWarning)
        result = bootstrap(
            (np.arange(y_true.shape[0]),),
            statistic,
            n_resamples=int(num_resamples),
            batch=100,  # resampled indices in memory: batch x N
            vectorized=False,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    distribution = np.asarray(result.bootstrap_distribution)  # (metrics, resamples)
    low, high = result.confidence_interval
    defined = ~np.isnan(distribution[0])  # the three metrics are NaN in the same resamples
    if not defined.any():
        return {}
    if not defined.all():
        # scipy's percentile step on the defined resamples: its quantile method is NumPy's "linear".
        alpha = (1.0 - confidence) / 2
        low, high = np.quantile(distribution[:, defined], [alpha, 1.0 - alpha], axis=1)
    return {name: [float(low[i]), float(high[i])] for i, name in enumerate(HEADLINE_METRICS)}


# --- Trainer glue -----------------------------------------------------------------------------


def scores_from_logits(logits, problem_type: str):
    """Logits -> probabilities: sigmoid for ``multi_label_classification``, softmax for
    ``single_label_classification``. Works on torch tensors and NumPy arrays."""
    if problem_type not in ("multi_label_classification", "single_label_classification"):
        raise ValueError(
            f"problem_type: expected 'multi_label_classification' or 'single_label_classification', "
            f"got {problem_type!r}"
        )
    try:
        import torch

        if isinstance(logits, torch.Tensor):
            logits = logits.float()
            return torch.sigmoid(logits) if problem_type == "multi_label_classification" else logits.softmax(-1)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    logits = np.asarray(logits, dtype=np.float64)
    if problem_type == "multi_label_classification":
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def make_compute_metrics(class_names: Sequence[str]) -> Callable:
    """A ``Trainer`` ``compute_metrics`` function.

    Expects ``EvalPrediction.predictions`` to be probabilities (pair it with
    ``preprocess_logits_for_metrics=make_preprocess_logits(problem_type)``) and ``label_ids`` to be
    (N, C) multi-hot floats or (N,) class indices. Returns flat floats, as the Trainer logs them:
    ``macro_auroc``, ``macro_auprc``, ``fmax`` and ``auroc_<class>`` per defined class.
    """
    names = list(class_names)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions = eval_prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        metrics = classification_metrics(eval_prediction.label_ids, predictions, names)
        flat = {name: metrics[name] for name in HEADLINE_METRICS}
        flat.update({f"auroc_{n}": v for n, v in metrics["per_class_auroc"].items() if v is not None})
        return flat

    return compute_metrics


def make_preprocess_logits(problem_type: str) -> Callable:
    """``preprocess_logits_for_metrics`` turning logits into probabilities on the model's device."""

    def preprocess_logits_for_metrics(logits, labels):
        if isinstance(logits, tuple):
            logits = logits[0]
        return scores_from_logits(logits, problem_type)

    return preprocess_logits_for_metrics
