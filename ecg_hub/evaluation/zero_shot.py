"""Zero-shot classification: class prompts -> scores -> macro AUROC, without training labels.

Model-agnostic hook for the text-aligned models (ETP, MELP, ...). Either

- pass ``score_fn(rows, class_prompts) -> (B, C) scores`` (any model, any scoring), or
- pass ``model`` + ``processor``: the model must expose ``get_ecg_features(**ecg_inputs)`` and
  ``get_text_features(**text_inputs)`` (CLIP-style; each returns a tensor or an output whose
  ``pooler_output`` is the projected embedding), the processor a ``feature_extractor`` and a
  ``tokenizer``.

Scoring with a model (ecg-hub protocol §6): ECG and text embeddings are L2-normalised; a class with
several prompts (a template ensemble) gets the mean of its normalised prompt embeddings,
re-normalised (open_clip's zero-shot classifier, :mod:`ecg_hub.prompt_ensemble`, shared with the
``zero-shot-ecg-classification`` pipeline); the **primary score is the per-class cosine**
(no softmax, so a class's score does not depend on the other classes). ``scoring="softmax"`` gives
MERL's softmax over ``logit_scale * cosine`` as a secondary number. Fmax needs scores in [0, 1]:
the cosine is mapped by ``(cos + 1) / 2`` (monotone, so AUROC/AUPRC are unchanged).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ecg_hub.data.collators import COLLATOR_COLUMNS, EcgCollator
from ecg_hub.data.labels import label_names, multi_hot
from ecg_hub.inference import collect_outputs, inference_autocast, resolve_inference_dtype
from ecg_hub.prompt_ensemble import encode_class_prompts, pooled_embedding
from ecg_hub.utils import accepted_kwargs

from .metrics import classification_metrics

ScoreFn = Callable[[list[dict], list[list[str]]], np.ndarray]


def normalize_class_prompts(class_prompts: Mapping[str, str | Sequence[str]], class_names: Sequence[str]) -> list[list[str]]:
    """One list of prompts per class, in ``class_names`` order (keys matched exactly, else
    case-insensitively); raises naming the classes without a prompt."""
    by_lower = {str(k).lower(): v for k, v in class_prompts.items()}
    class_prompts = {
        name: class_prompts[name] if name in class_prompts else by_lower[name.lower()]
        for name in class_names
        if name in class_prompts or name.lower() in by_lower
    }
    missing = [name for name in class_names if name not in class_prompts]
    if missing:
        raise ValueError(f"class_prompts: no prompt for class(es) {missing}; every class needs at least one")
    prompts = []
    for name in class_names:
        value = class_prompts[name]
        value = [value] if isinstance(value, str) else list(value)
        if not value or not all(isinstance(p, str) and p.strip() for p in value):
            raise ValueError(f"class_prompts[{name!r}]: expected a non-empty string or list of strings, got {value!r}")
        prompts.append(value)
    return prompts


def load_class_prompts(path: str | Path, class_names: Sequence[str] | None = None, *, lowercase: bool = True) -> dict[str, str]:
    """Read a ``{class_code: prompt}`` JSON file (e.g. the CKEPE prompts of MERL/MELP).

    Keys are matched case-insensitively to ``class_names`` when given; prompts are lower-cased by
    default (as MERL/MELP do).
    """
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object mapping class codes to prompts")  # noqa: TRY004
    prompts = {str(k): (v.lower() if lowercase and isinstance(v, str) else v) for k, v in raw.items()}
    if class_names is None:
        return prompts
    by_lower = {k.lower(): v for k, v in prompts.items()}
    return {name: by_lower[name.lower()] for name in class_names if name.lower() in by_lower}


def model_score_fn(
    model, processor, *, scoring: str = "cosine", max_text_length: int = 128, dtype: str = "float32"
) -> ScoreFn:
    """A ``score_fn`` from a CLIP-style ECG-text model and its processor (see the module docstring).

    Prompts are tokenised with ``processor.tokenizer`` (lower-cased when the processor's
    ``lowercase_text`` is set; truncated to its ``max_text_length``, else ``max_text_length``);
    ECGs go through ``processor.feature_extractor`` with its deterministic crop.

    The returned function also has ``dataset_scores(dataset, class_prompts, batch_size=...)``,
    which :func:`zero_shot_scores` uses: the same scores through the shared inference loop
    (:func:`ecg_hub.inference.collect_outputs`). ``dtype``: precision of the ECG side
    (:mod:`ecg_hub.inference`); the class prompts are encoded once, in float32."""
    if scoring not in ("cosine", "softmax"):
        raise ValueError(f"scoring: expected 'cosine' or 'softmax', got {scoring!r}")
    for method in ("get_ecg_features", "get_text_features"):
        if not hasattr(model, method):
            raise ValueError(f"{type(model).__name__} has no {method}(); zero-shot needs an ECG-text model")
    tokenizer = getattr(processor, "tokenizer", None)
    feature_extractor = getattr(processor, "feature_extractor", None)
    if tokenizer is None or feature_extractor is None:
        raise ValueError("processor must have a tokenizer and a feature_extractor")
    collator = EcgCollator(feature_extractor, training=False)
    device = next(model.parameters()).device
    text_cache: dict[tuple, torch.Tensor] = {}

    def class_embeddings(class_prompts: list[list[str]]) -> torch.Tensor:
        key = tuple(tuple(p) for p in class_prompts)
        if key not in text_cache:
            flat = [prompt for prompts in class_prompts for prompt in prompts]
            if getattr(processor, "lowercase_text", False):  # e.g. EtpProcessor(lowercase_text=True)
                flat = [prompt.lower() for prompt in flat]
            length = getattr(processor, "max_text_length", max_text_length)
            tokens = tokenizer(flat, padding=True, truncation=True, max_length=length, return_tensors="pt")
            tokens = {k: v.to(device) for k, v in tokens.items()}
            text_cache[key] = encode_class_prompts(model, tokens, class_prompts)
        return text_cache[key]

    def score_batch(batch: dict[str, torch.Tensor], class_prompts: list[list[str]]) -> torch.Tensor:
        """(B, C) scores of a collated batch on the model's device (model in eval mode, no gradients)."""
        ecg = F.normalize(
            pooled_embedding(model.get_ecg_features(**accepted_kwargs(model.get_ecg_features, batch))).float(), dim=-1
        )
        cosine = ecg @ class_embeddings(class_prompts).T
        if scoring == "softmax":
            if callable(getattr(model, "scale", None)):  # ETP: exp(logit_scale), clamped
                scale = float(model.scale())
            else:
                scale = getattr(model, "logit_scale", None)
                scale = float(scale.exp()) if isinstance(scale, torch.Tensor) else 1.0
            return (scale * cosine).softmax(-1)
        return cosine

    @torch.no_grad()
    def score_fn(rows: list[dict], class_prompts: list[list[str]]) -> np.ndarray:
        model.eval()
        batch = {k: v.to(device) for k, v in collator(rows).items()}
        class_embeddings(class_prompts)  # text side in float32, outside the autocast
        with inference_autocast(resolve_inference_dtype(dtype, device)[0], device):
            scores = score_batch(batch, class_prompts)
        return scores.float().cpu().numpy()

    def dataset_scores(dataset, class_prompts: list[list[str]], *, batch_size: int = 32) -> np.ndarray:
        class_embeddings(class_prompts)  # text side in float32, outside the autocast
        return collect_outputs(
            model, dataset, feature_extractor, lambda batch: score_batch(batch, class_prompts),
            batch_size=batch_size, empty_shape=(0, len(class_prompts)), dtype=dtype,
        )

    score_fn.scoring = scoring
    score_fn.dataset_scores = dataset_scores
    return score_fn


def zero_shot_scores(
    dataset,
    class_prompts: list[list[str]],
    score_fn: ScoreFn,
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """(N, C) scores of ``score_fn`` over the dataset, in dataset order.

    A ``score_fn`` from :func:`model_score_fn` runs through the shared inference loop (its
    ``dataset_scores``); any other gets lists of ``batch_size`` rows."""
    dataset_scores = getattr(score_fn, "dataset_scores", None)
    if dataset_scores is not None:
        scores = np.asarray(dataset_scores(dataset, class_prompts, batch_size=batch_size), dtype=np.float64)
        if scores.shape != (len(dataset), len(class_prompts)):
            raise ValueError(f"score_fn returned shape {scores.shape}, expected ({len(dataset)}, {len(class_prompts)})")
        return scores
    columns = [c for c in COLLATOR_COLUMNS if c in dataset.column_names]  # with masked_leads
    view = dataset.select_columns(columns).with_format("numpy", columns=["signal"], output_all_columns=True)
    scores = []
    for start in range(0, len(view), batch_size):
        chunk = view[start : start + batch_size]
        rows = [{k: chunk[k][i] for k in chunk} for i in range(len(chunk["signal"]))]
        out = np.asarray(score_fn(rows, class_prompts), dtype=np.float64)
        if out.shape != (len(rows), len(class_prompts)):
            raise ValueError(f"score_fn returned shape {out.shape}, expected ({len(rows)}, {len(class_prompts)})")
        scores.append(out)
    return np.concatenate(scores)


def zero_shot_evaluate(
    score_fn: ScoreFn | None = None,
    *,
    model=None,
    processor=None,
    dataset,
    class_prompts: Mapping[str, str | Sequence[str]],
    label_column: str,
    scoring: str = "cosine",
    batch_size: int = 32,
    return_scores: bool = False,
    dtype: str = "float32",
) -> dict:
    """Zero-shot metrics of a model on ``dataset[label_column]`` from class prompts only.

    Args:
        score_fn: ``score_fn(rows, prompts_per_class) -> (B, C)`` scores; or give ``model`` + ``processor``.
        model / processor: a CLIP-style ECG-text model and its processor (see the module docstring).
        dataset: a split with ``signal``, ``sampling_rate``, ``leads`` and the label column.
        class_prompts: ``{class_name: prompt or [prompts]}`` covering every class of the column.
        label_column: a ``Sequence(ClassLabel)`` column (its labels are only used for scoring).
        scoring: with a model, ``"cosine"`` (primary) or ``"softmax"``.
        batch_size: records per ``score_fn`` call.
        return_scores: also return the (N, C) scores under ``"scores"``.

    Returns:
        ``classification_metrics`` (macro AUROC, macro AUPRC, Fmax, per-class AUROC, ...) plus
        ``"scoring"`` and ``"prompts"`` (the prompts used per class).
    """
    if (score_fn is None) == (model is None):
        raise ValueError("give either score_fn or model (+ processor)")
    if score_fn is None:
        score_fn = model_score_fn(model, processor, scoring=scoring, dtype=dtype)
    class_names = label_names(dataset, label_column)
    prompts = normalize_class_prompts(class_prompts, class_names)
    scores = zero_shot_scores(dataset, prompts, score_fn, batch_size=batch_size)
    used_scoring = getattr(score_fn, "scoring", "custom")
    probabilities = (scores + 1.0) / 2.0 if used_scoring == "cosine" else scores
    if used_scoring == "custom" and (scores.min() < 0 or scores.max() > 1):
        probabilities = (scores - scores.min()) / max(scores.max() - scores.min(), 1e-12)
    metrics = classification_metrics(multi_hot(dataset, label_column), probabilities, class_names)
    metrics["scoring"] = used_scoring
    metrics["prompts"] = {name: p for name, p in zip(class_names, prompts)}
    if return_scores:
        metrics["scores"] = scores
    return metrics
