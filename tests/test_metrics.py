"""Metrics equal scikit-learn's on fixed examples; label-fraction sampling is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from ecg_hub.data.fractions import num_records_for_fraction, sample_label_fraction
from ecg_hub.evaluation.metrics import (
    _rank_auroc,
    _step_average_precision,
    bootstrap_confidence_intervals,
    classification_metrics,
    fmax_score,
    macro_f1_at,
    make_compute_metrics,
    scores_from_logits,
    tune_f1_thresholds,
)


def _fixed_example(num_records=200, num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((num_records, num_classes)) < [0.4, 0.25, 0.15, 0.3, 0.05]).astype(int)
    y_true[y_true.sum(1) == 0, 0] = 1  # every record has a statement, as in PTB-XL
    logits = 1.5 * (2 * y_true - 1) + rng.normal(0, 1.5, y_true.shape)
    y_score = np.round(1 / (1 + np.exp(-logits)), 2)  # rounding creates ties on purpose
    return y_true, y_score


def _fmax_with_sklearn(y_true, y_score):
    """Fmax written with scikit-learn's sample-averaged precision/recall (independent code path)."""
    best = 0.0
    for t in np.round(np.linspace(0, 1, 101), 2):
        predicted = (y_score >= t).astype(int)
        covered = predicted.sum(1) > 0
        if not covered.any():
            continue
        precision = precision_score(y_true[covered], predicted[covered], average="samples", zero_division=0)
        recall = recall_score(y_true, predicted, average="samples", zero_division=0)
        if precision + recall > 0:
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def test_metrics_equal_sklearn_on_fixed_example():
    y_true, y_score = _fixed_example()
    names = ["NORM", "MI", "STTC", "CD", "HYP"]
    metrics = classification_metrics(y_true, y_score, names)
    assert metrics["macro_auroc"] == pytest.approx(roc_auc_score(y_true, y_score, average="macro"), abs=1e-12)
    assert metrics["macro_auprc"] == pytest.approx(
        average_precision_score(y_true, y_score, average="macro"), abs=1e-12
    )
    for c, name in enumerate(names):
        assert metrics["per_class_auroc"][name] == pytest.approx(roc_auc_score(y_true[:, c], y_score[:, c]))
    assert metrics["fmax"] == pytest.approx(_fmax_with_sklearn(y_true, y_score), abs=1e-12)
    assert 0.5 < metrics["fmax"] < 1.0 and metrics["excluded_classes"] == []
    assert metrics["num_records"] == 200


def test_fmax_hand_computed():
    # Two records, three classes. For t in (0.6, 0.9]: record 0 predicts {0} (true {0}), record 1
    # predicts nothing -> precision 1 (over covered records), recall (1 + 0) / 2 -> F = 2/3.
    # For t in (0.4, 0.6]: both predict {0} -> P = R = 1/2 -> F = 1/2. At t = 0 every class is
    # predicted -> P = 1/3, R = 1 -> F = 1/2. So Fmax = 2/3, first reached at t = 0.61.
    y_true = np.array([[1, 0, 0], [0, 1, 0]])
    y_score = np.array([[0.9, 0.4, 0.1], [0.6, 0.05, 0.3]])
    fmax, threshold = fmax_score(y_true, y_score)
    assert fmax == pytest.approx(2 / 3)
    assert threshold == pytest.approx(0.61)
    assert fmax == pytest.approx(_fmax_with_sklearn(y_true, y_score))
    perfect = fmax_score(y_true, np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1]]))[0]
    assert perfect == pytest.approx(1.0)


def test_class_without_positives_is_excluded_and_listed():
    y_true, y_score = _fixed_example()
    y_true[:, 4] = 0
    metrics = classification_metrics(y_true, y_score, list("abcde"))
    assert metrics["excluded_classes"] == ["e"]
    assert metrics["per_class_auroc"]["e"] is None
    assert metrics["macro_auroc"] == pytest.approx(roc_auc_score(y_true[:, :4], y_score[:, :4], average="macro"))


def test_single_label_indices_are_one_vs_rest():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 120)
    probs = scores_from_logits(np.eye(4)[y] * 2 + rng.normal(0, 1, (120, 4)), "single_label_classification")
    assert np.allclose(probs.sum(1), 1)
    metrics = classification_metrics(y, probs)
    assert metrics["macro_auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="y_score"):
        classification_metrics(np.zeros((3, 2)), np.array([[0.1, np.nan]] * 3))
    with pytest.raises(ValueError, match="3 records"):
        classification_metrics(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="class_names"):
        classification_metrics(*_fixed_example(), class_names=["a"])


def test_fast_bootstrap_kernels_equal_sklearn_and_ci_brackets_point():
    y_true, y_score = _fixed_example()
    for c in range(y_true.shape[1]):
        assert _rank_auroc(y_true[:, c], y_score[:, c]) == pytest.approx(roc_auc_score(y_true[:, c], y_score[:, c]))
        assert _step_average_precision(y_true[:, c], y_score[:, c]) == pytest.approx(
            average_precision_score(y_true[:, c], y_score[:, c])
        )
    point = classification_metrics(y_true, y_score)
    ci = bootstrap_confidence_intervals(y_true, y_score, num_resamples=100, seed=0)
    assert ci == bootstrap_confidence_intervals(y_true, y_score, num_resamples=100, seed=0)
    for name in ("macro_auroc", "macro_auprc", "fmax"):
        low, high = ci[name]
        assert low < point[name] < high and high - low < 0.2


def _reference_bootstrap(y_true, y_score, num_resamples, seed, confidence=0.95):
    """The percentile bootstrap written out with scikit-learn's ranking metrics, drawing records as
    scipy.stats.bootstrap does (one ``rng.integers(0, N, N)`` row per resample); resamples without
    a class that has both label values are skipped. Returns the intervals and the skipped count."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    samples, skipped = [], 0
    for _ in range(num_resamples):
        index = rng.integers(0, n, n)
        labels, scores = y_true[index], y_score[index]
        keep = np.flatnonzero((labels.sum(0) > 0) & (labels.sum(0) < n))
        if keep.size == 0:
            skipped += 1
            continue
        samples.append(
            [
                np.mean([roc_auc_score(labels[:, c], scores[:, c]) for c in keep]),
                np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in keep]),
                fmax_score(labels, scores)[0],
            ]
        )
    alpha = (1 - confidence) / 2
    low, high = np.quantile(np.array(samples), [alpha, 1 - alpha], axis=0)
    return {name: [low[i], high[i]] for i, name in enumerate(("macro_auroc", "macro_auprc", "fmax"))}, skipped


def test_scipy_bootstrap_equals_the_written_out_percentile_bootstrap():
    y_true, y_score = _fixed_example(num_records=120)
    ci = bootstrap_confidence_intervals(y_true, y_score, num_resamples=60, confidence=0.9, seed=7)
    expected, skipped = _reference_bootstrap(y_true, y_score, 60, seed=7, confidence=0.9)
    assert skipped == 0 and set(ci) == set(expected)
    for name in expected:
        assert ci[name] == pytest.approx(expected[name], abs=1e-12), name
    assert ci != bootstrap_confidence_intervals(y_true, y_score, num_resamples=60, confidence=0.9, seed=8)


def test_bootstrap_skips_resamples_where_no_class_has_both_label_values():
    # One defined class with a single positive among 8 records: about a third of the resamples miss
    # it and have no macro AUROC. They are left out of all three intervals (scipy alone would give NaN).
    rng = np.random.default_rng(3)
    y_true = np.zeros((8, 2), dtype=int)
    y_true[2, 0] = 1
    y_score = np.round(rng.random((8, 2)), 2)
    ci = bootstrap_confidence_intervals(y_true, y_score, num_resamples=200, seed=1)
    expected, skipped = _reference_bootstrap(y_true, y_score, 200, seed=1)
    assert 40 < skipped < 110
    for name in expected:
        assert ci[name] == pytest.approx(expected[name], abs=1e-12), name
        assert np.isfinite(ci[name]).all() and ci[name][0] <= ci[name][1]
    assert bootstrap_confidence_intervals(np.zeros((8, 2), dtype=int), y_score, num_resamples=20) == {}


def test_bootstrap_rejects_bad_settings():
    y_true, y_score = _fixed_example(num_records=40)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="num_resamples"):
            bootstrap_confidence_intervals(y_true, y_score, num_resamples=bad)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_confidence_intervals(y_true, y_score, num_resamples=10, confidence=95)


def test_val_tuned_f1_thresholds():
    y_true, y_score = _fixed_example()
    grid = np.linspace(0, 1, 21)
    thresholds = tune_f1_thresholds(y_true, y_score, thresholds=grid)
    assert thresholds.shape == (5,)
    for c in range(5):  # each threshold maximises scikit-learn's F1 of its class over the grid
        f1s = [f1_score(y_true[:, c], y_score[:, c] >= t, zero_division=0) for t in grid]
        assert f1_score(y_true[:, c], y_score[:, c] >= thresholds[c], zero_division=0) == pytest.approx(max(f1s))
    thresholds = tune_f1_thresholds(y_true, y_score)
    tuned = macro_f1_at(y_true, y_score, thresholds)
    assert tuned >= macro_f1_at(y_true, y_score, np.full(5, 0.5)) - 1e-12


def test_trainer_compute_metrics_is_flat_floats():
    from transformers import EvalPrediction

    y_true, y_score = _fixed_example()
    out = make_compute_metrics(list("abcde"))(EvalPrediction(predictions=y_score, label_ids=y_true.astype(np.float32)))
    assert set(out) == {"macro_auroc", "macro_auprc", "fmax", *[f"auroc_{c}" for c in "abcde"]}
    assert all(isinstance(v, float) for v in out.values())


# --- label fractions ---------------------------------------------------------------------------


def _train_labels(num_records=1000, seed=3):
    rng = np.random.default_rng(seed)
    labels = (rng.random((num_records, 6)) < [0.5, 0.3, 0.2, 0.1, 0.01, 0.0]).astype(int)
    return labels  # class 4 has ~10 positives, class 5 none


def test_fraction_sampling_is_deterministic_per_seed():
    labels = _train_labels()
    first = sample_label_fraction(labels, 0.1, seed=42)
    assert np.array_equal(first, sample_label_fraction(labels, 0.1, seed=42))
    assert not np.array_equal(first, sample_label_fraction(labels, 0.1, seed=43))
    assert len(first) == num_records_for_fraction(1000, 0.1) == 100
    assert np.array_equal(np.unique(first), first)
    assert np.array_equal(sample_label_fraction(labels, 1.0, seed=0), np.arange(1000))


def test_fraction_sampling_matches_pandas_when_no_class_is_missing():
    import pandas as pd

    labels = np.ones((500, 2), dtype=int)  # every record carries both classes: no repair needed
    frame = pd.DataFrame({"row": np.arange(500)})
    for seed in (42, 43, 44):
        expected = np.sort(frame.sample(frac=0.1, random_state=seed)["row"].to_numpy())
        assert np.array_equal(sample_label_fraction(labels, 0.1, seed), expected)


def test_fraction_sampling_keeps_every_present_class():
    labels = _train_labels()
    for seed in (42, 43, 44):
        subset = sample_label_fraction(labels, 0.01, seed)
        assert len(subset) == 10  # a record was swapped in, not appended
        present = labels[subset].sum(0) > 0
        assert present[:5].all() and not present[5]  # class 5 has no positive in the full split


def test_fraction_sampling_rejects_bad_fraction():
    with pytest.raises(ValueError, match="fraction"):
        sample_label_fraction(_train_labels(), 0.0, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        sample_label_fraction(_train_labels(), 1.5, seed=0)
