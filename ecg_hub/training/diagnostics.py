"""Learning-health diagnostics of self-supervised pretraining, and a quick validation linear probe.

A latent-prediction model can lower its loss for hundreds of steps without learning anything about
the ECG: when the position code dominates the tokens (ECG-JEPA's sin-cos table, re-added before
every block, against small patch embeddings), the targets hardly depend on the record, and the
predictor only has to learn what each *position* looks like. The figures below measure that
directly, on one fixed probe batch, so that a run which learns positions only says so within its
first evaluations instead of after a linear probe.

The pretraining loop (:mod:`ecg_hub.training.pretrain`) runs :class:`LearningHealthMonitor` with a
``diagnostics:`` recipe section before the first optimizer step, every ``diagnostics.every_steps``
steps and at the end, and :class:`ValidationProbe` with ``diagnostics.probe.every_steps``
(``ecg-hub pretrain --probe-every N``). Both follow the held-out evaluation's rules
(:mod:`ecg_hub.training.held_out`): the same records (and the same masks) every time, the model's
own random draws on a forked generator seeded by ``diagnostics.seed`` (the training stream and an
exact resume are untouched), eval mode, no gradients, the run's autocast.

Definitions
-----------
Notation: the probe batch has ``R`` records. ``X`` is a ``(R, T, D)`` tensor of per-token vectors
(``T`` tokens at fixed positions, the same for every record), ``w`` its ``(R, T)`` token weights
(1 for tokens that count, 0 for missing leads, padded time or, for predictions, tokens outside the
mask; all ones when there are none). Sums run over records ``r``, tokens ``t`` and dims ``d``.

- **Record-dependent share** (:func:`record_share`) of ``X``: the law of total variance over the
  entries of ``X`` grouped by their (token, dim) cell. With the cell means over records
  ``mu[t, d] = sum_r w X / sum_r w`` (what the position alone predicts) and the grand mean ``m``
  of all weighted entries, the total variance ``sum w (X - m)^2`` splits exactly into a *position
  part* ``sum_{t,d} (sum_r w) (mu - m)^2`` (the variance of the per-(token, dim) means) and a
  *record part* ``sum w (X - mu)^2`` (the variance across records around them); the share is
  ``record part / total`` (0 when nothing varies). 0 for a model whose output ignores its input;
  about ``1 - 1/R`` for one that copies a zero-mean input (the ``R`` records' own mean is the
  finite-sample floor of the position part). Everything the record does not change, a constant
  vector included, is position part. For layer-normed tokens (zero mean over dims, so ``m = 0``)
  the total is the energy ``sum w X^2``. Reported for the **targets** the loss compares with, the
  **predictions**, and the encoder's **output tokens** on the full, unmasked input.
- **Pooled record share** (:func:`pooled_record_share`) of pooled features ``P`` ``(R, D)``, one
  vector per record (mean over tokens, the linear probe's feature): the same with one token,
  ``sum_r |P_r - mean_r P|^2 / sum_{r,d} (P_rd - m)^2``: the across-record variance over the total
  variance of the entries, whose other part is the spread of the mean vector ``mean_r P`` over
  dims (what every record shares; for a position-dominated encoder, the average of the position
  codes). 0 for a model that ignores its input, near 1 for features that copy a zero-mean input;
  for features pooled from layer-normed tokens the total is ``sum_r |P_r|^2``, so the share is the
  across-record variance over the second moment ``variance + |mean_r P|^2``.
- **Loss with the predictions replaced** (:func:`replaced_losses`), with the family's own loss:
  ``loss`` (the model's predictions), ``loss_mean_replaced`` (each prediction replaced by its
  across-record mean at the same token: the same prediction for every record, so a predictor that
  ignores the record loses nothing) and ``loss_oracle`` (predictions replaced by the per-token
  mean of the *targets* over the probe records: the **record-mean oracle**, which knows the
  position exactly and nothing about the record). ``mean_replaced_change`` is
  ``(loss_mean_replaced - loss) / loss`` (how much the record-dependence of the predictions is
  worth; 0 when unused, negative when it only adds noise) and ``oracle_gap`` is
  ``loss / loss_oracle``. A run that learns positions only has ``mean_replaced_change`` near 0 and,
  while the position pattern is still being chased, ``oracle_gap`` far above 1. For a
  cross-entropy family the oracle's prediction is the per-token mean target distribution (its
  logarithm as logits), the mean replacement averages the logits.
- **RankMe** (:func:`rankme`; Garrido et al., ICML 2023): ``exp(-sum_k p_k log p_k)`` with
  ``p_k = s_k / sum s + 1e-7`` over the singular values ``s`` of the pooled ``(R, D)`` matrix,
  uncentred as in the paper (between 1 and ``min(R, D)``: ``D`` for an identity-like matrix, 1 for
  rank 1). ``rankme_centered`` is the same of ``P - mean_r P``: the rank of the record-dependent
  part alone (a position-dominated encoder has ``rankme`` near 1 whatever that part holds).
- **Per-dimension std** (:func:`per_dimension_std`) of the pooled features over the probe records,
  its minimum and median over dims (``pooled_std_min`` / ``pooled_std_median``): dims at 0 have
  collapsed.
- ``position_signal_ratio``: the mean norm of the position code added to a token over the mean norm
  of the patch embedding (the signal) at the encoder input (ECG-JEPA, ECG2TOK).

**Positions-only warning** (:func:`positions_only`). After the first optimizer step, a
measurement with ``target_record_share < diagnostics.target_share_threshold`` (default ``1e-2``)
*and* ``mean_replaced_change < diagnostics.loss_change_threshold`` (default ``1e-2``) prints one
warning line (once per run) and sets ``positions_only`` to 1. Why these values: on the PTB-XL
subset, ECG-JEPA's layer-normed targets had a record-dependent share of about 3e-4 at
initialisation and about 3.5e-4 after 100-150 steps (issue 17; with this module, recipe
``ecg_jepa/pretrain_ptbxl_subset``, 64 training records: 2.4e-4 at step 0, 2.25e-4 at step 100),
and replacing the predictor's outputs by their across-record mean left the loss unchanged (here
to float precision: the predictions' own record share is 3e-10) while the record-mean oracle's
loss was about 1,000 times lower (here 3,800 times at step 0, 1,360 times at step 100). ``1e-2``
is 30 to 40 times above the measured shares and still means that 99 % of
the target variance is predictable from the position alone: for a squared loss the best
record-blind prediction (the position mean) leaves exactly the record part as error, so seeing
the record could lower the attainable loss by at most 1 % of the target variance. A predictor that
uses the record gains more than 1 % from it; below 1 % is indistinguishable from not using it
(probe-batch noise). Both conditions are needed: small target shares alone also occur where the
predictor does use what little record information there is.

Families
--------
:func:`learning_health_inputs` runs the model once over the probe batch (in chunks of
``diagnostics.batch_size``) with a fixed mask shared by every record, and returns
:class:`HealthInputs`:

- ``EcgJepaForPreTraining``: the forward's ``predicted_features`` and ``target_features`` (layer
  normed, at the masked slots of every lead), its SmoothL1; pooled features and output tokens of
  the context encoder ``ecg_jepa`` on the full input (the encoder the probe and the published model
  use).
- ``Ecg2TokForMaskedSignalModeling`` (ECG2TOK stage B): ``logits`` against the one-hot token ids
  (the batch's ``labels`` or the frozen tokenizer's ``encode``), cross-entropy at masked patches;
  the encoder ``ecg2tok`` for the pooled features.
- ``Ecg2TokTokenizerModel`` (stage A): the student's masked-patch logits (cosine scores over the
  student temperature) against the teacher's Sinkhorn / k-means targets of the un-augmented input,
  the ``patch`` term of the loss (the ``cls`` term has no per-token target); the student encoder
  for the pooled features.
- a model with a method ``learning_health_inputs(batch, generator=...) -> HealthInputs`` of its own;
- any other model whose ``base_model`` returns a 2-D ``pooler_output``: the pooled figures only.

Validation probe
----------------
:class:`ValidationProbe` (``diagnostics.probe``): the backbone's pooled features (the same ones as
above, through :func:`ecg_hub.inference.collect_outputs` with the feature extractor's deterministic
crop) of ``probe.records`` training records and up to ``probe.records`` validation records of the
recipe's dataset, computed once per probe, then the linear-probe head (by default
:func:`ecg_hub.evaluation.linear_probe.train_linear_probe`, named as the recipe component
``probe.head``: ``ecg_hub.training`` does not import ``ecg_hub.evaluation``), early-stopped on
validation macro AUROC. Logged as ``probe/val_macro_auroc``; with ``probe.keep_best``
(``--keep-best-probe``) the run's ``model`` folder holds the weights of the step with the best
validation AUROC (steps after the first optimizer step; the starting point is the baseline), as
MELP selects its checkpoint by validation zero-shot AUROC.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..data.labels import label_columns, multi_hot
from ..data.splits import dataset_split, select_task_records
from ..inference import collect_outputs
from ..recipe import Component, instantiate
from .checkpointing import read_history_until, write_json_atomic
from .dataloading import SeededCollate

__all__ = [
    "DiagnosticsSettings",
    "HealthInputs",
    "LearningHealthMonitor",
    "ProbeSettings",
    "ValidationProbe",
    "health_metrics",
    "learning_health_inputs",
    "per_dimension_std",
    "pooled_features",
    "pooled_record_share",
    "positions_only",
    "rankme",
    "record_share",
    "replaced_losses",
]

HEALTH_FILE = "learning_health.json"
PROBE_FILE = "probe.json"
BEST_PROBE_DIR = "best_probe_model"
LAST_MODEL_DIR = "model_last"
_BEST_MARKER = "probe_step.json"


# ------------------------------------------------------------------------------------------------
# Recipe settings.
# ------------------------------------------------------------------------------------------------


def _default_probe_head() -> Component:
    return Component({"_component_": "ecg_hub.evaluation.linear_probe.train_linear_probe", "_partial_": True})


@dataclass(kw_only=True)
class ProbeSettings:
    """``diagnostics.probe:`` section, the quick validation linear probe.

    Attributes:
        every_steps: probe every this many optimizer steps, before the first one and at the end
            (``null``: no probe). CLI: ``--probe-every``.
        records: training records the head is trained on, and the most validation records it is
            scored on (a seeded sample, the same at every probe). CLI: ``--probe-records``.
        label_column: the dataset's label column (``null``: its only label column).
            CLI: ``--probe-label``.
        train_split / validation_split: the splits of the recipe's dataset the head is trained and
            scored on.
        problem_type: ``multi_label_classification`` (BCE) or ``single_label_classification``.
        keep_best: the final ``model`` folder holds the best-validation step's weights (the last
            step's go to ``model_last``). CLI: ``--keep-best-probe``.
        batch_size: records per feature-extraction batch.
        seed: seed of the record samples.
        head: the component that trains the head on cached features, called as
            ``head(train_features, train_labels, val_features, val_labels, problem_type=...)`` and
            returning a result with ``val_metrics["macro_auroc"]`` and ``best_epoch``.
    """

    every_steps: int | None = None
    records: int = 256
    label_column: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    problem_type: Literal["multi_label_classification", "single_label_classification"] = (
        "multi_label_classification"
    )
    keep_best: bool = False
    batch_size: int = 64
    seed: int = 0
    head: Component = field(default_factory=_default_probe_head)

    def __post_init__(self) -> None:
        for name in ("every_steps", "records", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"diagnostics.probe.{name} must be >= 1, got {value}")
        if self.keep_best and self.every_steps is None:
            raise ValueError("diagnostics.probe.keep_best needs diagnostics.probe.every_steps (--probe-every N)")


@dataclass(kw_only=True)
class DiagnosticsSettings:
    """``diagnostics:`` section of a pretraining recipe (see the module docstring).

    Attributes:
        every_steps: measure the learning health every this many optimizer steps, before the first
            one and at the end (``null``: off).
        split: split the probe batch is drawn from (``null``: ``data.split``, the training rows).
        records: records in the probe batch (a seeded sample of the split, at least 2).
        batch_size: records per forward pass (``null``: ``data.batch_size``).
        seed: seed of the record sample, of the collator's randomness and of the masks.
        target_share_threshold / loss_change_threshold: the positions-only warning fires when the
            targets' record-dependent share is below the first and ``mean_replaced_change`` below
            the second.
        probe: the validation linear probe (`ProbeSettings`).
    """

    every_steps: int | None = None
    split: str | None = None
    records: int = 64
    batch_size: int | None = None
    seed: int = 4321
    target_share_threshold: float = 1e-2
    loss_change_threshold: float = 1e-2
    probe: ProbeSettings = field(default_factory=ProbeSettings)

    def __post_init__(self) -> None:
        for name in ("every_steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"diagnostics.{name} must be >= 1, got {value}")
        if self.records < 2:
            raise ValueError(f"diagnostics.records must be >= 2 (a share across records), got {self.records}")


# ------------------------------------------------------------------------------------------------
# The figures: pure functions of tensors.
# ------------------------------------------------------------------------------------------------


def _token_weights(x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return torch.ones(x.shape[:2], dtype=torch.float64, device=x.device)
    if tuple(weights.shape) != tuple(x.shape[:2]):
        raise ValueError(f"weights must be (records, tokens) = {tuple(x.shape[:2])}, got {tuple(weights.shape)}")
    return weights.to(device=x.device, dtype=torch.float64)


def across_record_mean(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``(tokens, dim)`` weighted mean of ``(records, tokens, dim)`` over records (0 at tokens that
    no record weights)."""
    w = _token_weights(x, weights)
    total = (w[..., None] * x.double()).sum(0)
    return (total / w.sum(0).clamp(min=1e-12)[:, None]).to(x.dtype)


def record_share(x: torch.Tensor, weights: torch.Tensor | None = None) -> float:
    """Record-dependent variance share of ``(records, tokens, dim)`` (module docstring)."""
    if x.ndim != 3:
        raise ValueError(f"record_share: expected (records, tokens, dim), got {tuple(x.shape)}")
    x = x.double()
    w = _token_weights(x, weights)
    keep = w.sum(0) > 0
    x, w = x[:, keep], w[:, keep]
    if x.numel() == 0:
        return 0.0
    per_token = (w[..., None] * x).sum(0) / w.sum(0)[:, None]
    grand = (w[..., None] * x).sum() / (w.sum() * x.shape[-1])
    record = (w[..., None] * (x - per_token) ** 2).sum()
    total = (w[..., None] * (x - grand) ** 2).sum()
    return float(record / total) if float(total) > 0 else 0.0


def pooled_record_share(pooled: torch.Tensor) -> float:
    """Record-dependent share of ``(records, dim)`` pooled features: `record_share` with one token."""
    if pooled.ndim != 2:
        raise ValueError(f"pooled_record_share: expected (records, dim), got {tuple(pooled.shape)}")
    return record_share(pooled[:, None, :])


def rankme(features: torch.Tensor, eps: float = 1e-7, center: bool = False) -> float:
    """RankMe (Garrido et al. 2023) of ``(records, dim)`` features: exp of the entropy of the
    l1-normalised singular values (+ ``eps``); ``center`` subtracts the mean over records first."""
    f = features.double()
    if center:
        f = f - f.mean(0)
    singular = torch.linalg.svdvals(f)
    total = singular.sum()
    if float(total) <= 0:
        return 0.0
    p = singular / total + eps
    return float(torch.exp(-(p * p.log()).sum()))


def per_dimension_std(pooled: torch.Tensor) -> tuple[float, float]:
    """``(min, median)`` over dims of the std over records of ``(records, dim)`` features."""
    std = pooled.double().std(0, unbiased=False)
    return float(std.min()), float(std.median())


@dataclass
class HealthInputs:
    """What the figures are computed from, for the whole probe batch (CPU tensors).

    Attributes:
        pooled: ``(records, dim)`` pooled features of the encoder (the linear probe's feature).
        predictions: ``(records, tokens, C)`` what the loss compares (features, or logits); None
            for families without a per-token prediction.
        targets: ``(records, tokens, C)`` what they are compared with (features, distributions or
            one-hot ids).
        loss_fn: ``loss_fn(predictions, targets, weights) -> scalar``, the family's loss.
        weights: ``(records, tokens)`` tokens that count in the loss (None: all).
        oracle_predictions: maps the per-token mean target ``(tokens, C)`` to the predictions the
            loss takes (identity for features, ``log`` for distributions under a logit loss).
        tokens: ``(records, tokens', dim)`` encoder output tokens on the full input (and
            ``token_weights``).
        model_loss: the forward's own loss over the probe batch (mean over chunks weighted by
            records), a consistency check for ``loss``.
        position_signal_ratio: mean position-code norm over mean patch-embedding norm.
        family: the model family.
    """

    pooled: torch.Tensor
    predictions: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None
    weights: torch.Tensor | None = None
    oracle_predictions: Callable[[torch.Tensor], torch.Tensor] | None = None
    tokens: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None
    model_loss: float | None = None
    position_signal_ratio: float | None = None
    family: str = "generic"


def replaced_losses(inputs: HealthInputs) -> dict[str, float]:
    """``loss``, ``loss_mean_replaced`` and ``loss_oracle`` (module docstring)."""
    if inputs.predictions is None or inputs.targets is None or inputs.loss_fn is None:
        return {}
    predictions, targets, weights = inputs.predictions.float(), inputs.targets.float(), inputs.weights
    mean_prediction = across_record_mean(predictions, weights).expand_as(predictions)
    target_mean = across_record_mean(targets, weights)
    oracle = inputs.oracle_predictions(target_mean) if inputs.oracle_predictions is not None else target_mean
    return {
        "loss": float(inputs.loss_fn(predictions, targets, weights)),
        "loss_mean_replaced": float(inputs.loss_fn(mean_prediction, targets, weights)),
        "loss_oracle": float(inputs.loss_fn(oracle.expand_as(predictions), targets, weights)),
    }


def health_metrics(inputs: HealthInputs) -> dict[str, float]:
    """Every figure of the module docstring that ``inputs`` allow (keys without the ``health/``
    prefix; figures a family has no inputs for are left out)."""
    pooled = inputs.pooled.float()
    std_min, std_median = per_dimension_std(pooled)
    metrics: dict[str, float] = {
        "records": float(pooled.shape[0]),
        "pooled_record_share": pooled_record_share(pooled),
        "rankme": rankme(pooled),
        "rankme_centered": rankme(pooled, center=True),
        "pooled_std_min": std_min,
        "pooled_std_median": std_median,
    }
    if inputs.tokens is not None:
        metrics["token_record_share"] = record_share(inputs.tokens, inputs.token_weights)
    if inputs.targets is not None:
        metrics["target_record_share"] = record_share(inputs.targets, inputs.weights)
    if inputs.predictions is not None:
        metrics["prediction_record_share"] = record_share(inputs.predictions, inputs.weights)
    losses = replaced_losses(inputs)
    if losses:
        metrics.update(losses)
        loss, oracle = losses["loss"], losses["loss_oracle"]
        metrics["mean_replaced_change"] = (losses["loss_mean_replaced"] - loss) / max(abs(loss), 1e-12)
        metrics["oracle_gap"] = loss / max(oracle, 1e-12)
    if inputs.position_signal_ratio is not None:
        metrics["position_signal_ratio"] = inputs.position_signal_ratio
    return metrics


def positions_only(
    metrics: dict[str, float], target_share_threshold: float = 1e-2, loss_change_threshold: float = 1e-2
) -> bool:
    """Whether ``metrics`` read as a run learning positions only (module docstring); False where the
    family has no targets or predictions."""
    share, change = metrics.get("target_record_share"), metrics.get("mean_replaced_change")
    if share is None or change is None:
        return False
    return share < target_share_threshold and change < loss_change_threshold


# ------------------------------------------------------------------------------------------------
# Families: running a model over the probe batch.
# ------------------------------------------------------------------------------------------------


def _feature_loss(beta: float):
    """ECG-JEPA's SmoothL1: mean over features, then over the weighted tokens."""

    def loss_fn(predictions, targets, weights):
        per_token = F.smooth_l1_loss(predictions, targets, beta=beta, reduction="none").mean(-1)
        if weights is None:
            return per_token.mean()
        weights = weights.to(per_token.dtype)
        return (per_token * weights).sum() / weights.sum().clamp(min=1.0)

    return loss_fn


def _token_cross_entropy(predictions, targets, weights):
    """Cross-entropy of logits against target distributions, mean over weighted tokens (stage B)."""
    per_token = -(targets * F.log_softmax(predictions.float(), dim=-1)).sum(-1)
    if weights is None:
        return per_token.mean()
    weights = weights.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)


def _record_cross_entropy(predictions, targets, weights):
    """Cross-entropy per record over its weighted tokens, then the mean over records (stage A's
    ``patch`` term)."""
    per_token = -(targets * F.log_softmax(predictions.float(), dim=-1)).sum(-1)
    if weights is None:
        return per_token.mean()
    weights = weights.to(per_token.dtype)
    return ((per_token * weights).sum(1) / weights.sum(1).clamp(min=1.0)).mean()


def _log_distribution(mean_target: torch.Tensor) -> torch.Tensor:
    return mean_target.clamp(min=1e-12).log()


def _model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: batch[k] for k in ("input_values", "attention_mask", "lead_mask") if batch.get(k) is not None}


def _family(model: torch.nn.Module) -> str:
    name = type(model).__name__
    if callable(getattr(model, "learning_health_inputs", None)):
        return "model"
    if name == "EcgJepaForPreTraining":
        return "ecg_jepa"
    if name == "Ecg2TokForMaskedSignalModeling":
        return "ecg2tok"
    if name == "Ecg2TokTokenizerModel":
        return "ecg2tok_tokenizer"
    return "generic"


def _grid(batch: dict[str, Any], patch_size: int) -> tuple[int, int, int]:
    batch_size, num_leads, num_samples = batch["input_values"].shape
    return batch_size, num_leads, num_samples // patch_size


def _valid_mean_norm(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    norms = x.float().norm(dim=-1)
    return norms[valid].mean() if valid is not None else norms.mean()


def _ecg_jepa_chunk(model, batch, masked) -> dict[str, torch.Tensor]:
    from ecg_hub.modeling.layers import sincos_position_table

    inputs = _model_inputs(batch)
    batch_size, num_leads, num_patches = _grid(batch, model.config.patch_size)
    output = model(**inputs, masked_time_patches=masked)
    token_valid = model.ecg_jepa.token_validity(
        batch_size, num_patches, inputs.get("attention_mask"), inputs.get("lead_mask")
    )
    weights = None
    if token_valid is not None:
        weights = token_valid.reshape(batch_size, num_leads, num_patches)[:, :, masked].reshape(batch_size, -1)
    encoded = model.ecg_jepa(**inputs)
    embeddings = model.ecg_jepa.patch_embeddings(inputs["input_values"])
    scale = float(getattr(model.config, "position_scale", 1.0))
    table = sincos_position_table(model.config.hidden_size, num_leads, num_patches) * scale
    return {
        "predictions": output.predicted_features.reshape(batch_size, -1, output.predicted_features.shape[-1]),
        "targets": output.target_features.reshape(batch_size, -1, output.target_features.shape[-1]),
        "weights": weights,
        "pooled": encoded.pooler_output,
        "tokens": encoded.last_hidden_state,
        "token_weights": token_valid,
        "model_loss": output.loss,
        "position_norm": table.norm(dim=-1).mean(),
        "signal_norm": _valid_mean_norm(embeddings, token_valid),
    }


def _ecg2tok_position_norms(encoder, batch, valid) -> tuple[torch.Tensor, torch.Tensor]:
    from ecg_hub.modeling.layers import sincos_time_table

    embeddings = encoder.embeddings
    config = embeddings.config
    input_values = batch["input_values"]
    _, num_leads, num_patches = _grid(batch, config.patch_size)
    signal = embeddings.patch_embeddings(input_values)
    time_table = sincos_time_table(config.hidden_size, num_patches).to(signal) * config.time_position_scale
    lead_ids = torch.arange(num_leads, device=signal.device)
    positions = time_table[None] + embeddings.lead_embeddings(lead_ids)[:, None]
    return positions.norm(dim=-1).mean(), _valid_mean_norm(signal, valid)


def _ecg2tok_chunk(model, batch, masked) -> dict[str, torch.Tensor]:
    from ecg_hub.modeling.layers import token_validity

    IGNORE = -100
    inputs = _model_inputs(batch)
    batch_size, num_leads, num_patches = _grid(batch, model.config.patch_size)
    labels = batch.get("labels")
    if labels is None:
        labels = model.label_tokenizer(inputs["input_values"].device).encode(
            inputs["input_values"], lead_mask=inputs.get("lead_mask"), attention_mask=inputs.get("attention_mask")
        )
    labels = labels.reshape(batch_size, -1).long()
    mask = masked.expand(batch_size, -1)
    output = model(**inputs, bool_masked_pos=mask, labels=labels)
    labelled = labels != IGNORE
    targets = F.one_hot(labels.clamp(min=0), model.config.codebook_size).float() * labelled[..., None]
    encoded = model.ecg2tok(**inputs)
    valid = token_validity(batch_size, num_leads, num_patches, inputs.get("attention_mask"), inputs.get("lead_mask"))
    position_norm, signal_norm = _ecg2tok_position_norms(model.ecg2tok.encoder, batch, valid)
    return {
        "predictions": output.logits,
        "targets": targets,
        "weights": mask & labelled,
        "pooled": encoded.pooler_output,
        "tokens": encoded.last_hidden_state[:, 1:],
        "token_weights": valid,
        "model_loss": output.loss,
        "position_norm": position_norm,
        "signal_norm": signal_norm,
    }


def _ecg2tok_tokenizer_chunk(model, batch, masked) -> dict[str, torch.Tensor]:
    from ecg_hub.modeling.layers import masked_mean, token_validity

    inputs = _model_inputs(batch)
    batch_size, num_leads, num_patches = _grid(batch, model.config.patch_size)
    mask = masked.expand(batch_size, -1)
    output = model(**inputs, bool_masked_pos=mask, augment=False)
    valid = token_validity(batch_size, num_leads, num_patches, inputs.get("attention_mask"), inputs.get("lead_mask"))
    weights = mask if valid is None else mask & valid
    hidden, patch_valid = model.student(
        inputs["input_values"], attention_mask=inputs.get("attention_mask"), lead_mask=inputs.get("lead_mask")
    )
    position_norm, signal_norm = _ecg2tok_position_norms(model.student, batch, valid)
    return {
        "predictions": output.student_scores[0].float() / model.config.student_temperature,
        "targets": output.targets[0],
        "weights": weights,
        "pooled": masked_mean(hidden[:, 1:], patch_valid),
        "tokens": hidden[:, 1:],
        "token_weights": valid,
        "model_loss": output.losses["patch"],
        "position_norm": position_norm,
        "signal_norm": signal_norm,
    }


def _generic_chunk(model, batch, masked) -> dict[str, torch.Tensor]:
    return {"pooled": pooled_features(model, batch)}


def pooled_features(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """``(batch, dim)`` pooled features of the model's encoder: the context encoder of ECG-JEPA,
    the stage-B encoder of ECG2TOK, the masked mean of the stage-A student's patch tokens, or the
    ``pooler_output`` of any other model's ``base_model`` (the linear probe's feature)."""
    family = _family(model)
    inputs = _model_inputs(batch)
    if family == "ecg_jepa":
        return model.ecg_jepa(**inputs).pooler_output
    if family == "ecg2tok":
        return model.ecg2tok(**inputs).pooler_output
    if family == "ecg2tok_tokenizer":
        from ecg_hub.modeling.layers import masked_mean

        hidden, patch_valid = model.student(
            inputs["input_values"], attention_mask=inputs.get("attention_mask"), lead_mask=inputs.get("lead_mask")
        )
        return masked_mean(hidden[:, 1:], patch_valid)
    backbone = getattr(model, "base_model", None)
    backbone = model if backbone is None else backbone
    try:
        output = backbone(**inputs)
    except TypeError as error:
        raise ValueError(
            f"{type(model).__name__}: its encoder ({type(backbone).__name__}) does not take an ECG batch "
            f"({error}); learning-health diagnostics and the probe need an ECG encoder"
        ) from None
    pooled = getattr(output, "pooler_output", None)
    if not torch.is_tensor(pooled) or pooled.ndim != 2:
        raise ValueError(
            f"{type(model).__name__}: its encoder ({type(backbone).__name__}) returns no (batch, dim) "
            "pooler_output; define learning_health_inputs(batch, generator=...) on the model for diagnostics"
        )
    return pooled


def _probe_mask(model, family: str, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor | None:
    """One mask for the whole probe batch, drawn from ``generator`` the way the family draws it."""
    config = model.config
    device = batch["input_values"].device
    _, num_leads, num_patches = _grid(batch, config.patch_size)
    if family == "ecg_jepa":
        return model.sample_masked_time_patches(num_patches, generator=generator, device=device)
    if family in ("ecg2tok", "ecg2tok_tokenizer"):
        from ecg_hub.modeling.modeling_ecg2tok import sample_masked_positions

        if family == "ecg2tok":
            ratio_range = (config.mask_ratio, config.mask_ratio)
        else:  # the middle of the range, on every record (mask_probability 1)
            middle = sum(config.mask_ratio_range) / 2
            ratio_range = (middle, middle)
        mask = sample_masked_positions(
            1, num_leads, num_patches, ratio_range, config.mask_block_range, 1.0, device, generator=generator
        )
        if not bool(mask.any()):
            mask[0, 0] = True
        return mask
    return None


_CHUNKS = {
    "ecg_jepa": _ecg_jepa_chunk,
    "ecg2tok": _ecg2tok_chunk,
    "ecg2tok_tokenizer": _ecg2tok_tokenizer_chunk,
    "generic": _generic_chunk,
}


@torch.no_grad()
def learning_health_inputs(
    model: torch.nn.Module,
    batch: dict[str, Any],
    *,
    seed: int = 0,
    chunk_size: int | None = None,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> HealthInputs:
    """Run ``model`` (the unwrapped module) over the probe ``batch`` in eval mode and collect the
    inputs of the figures (module docstring, "Families"). The mask is drawn once from a generator
    seeded by ``seed`` and shared by every record and chunk. Uses the global torch RNG for nothing
    of its own, but callers fork it (a model's forward may draw from it)."""
    family = _family(model)
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        if family == "model":
            return model.learning_health_inputs(batch, generator=generator)
        masked = _probe_mask(model, family, batch, generator)
        records = int(batch["input_values"].shape[0])
        size = chunk_size or records
        parts: list[dict[str, torch.Tensor]] = []
        for start in range(0, records, size):
            chunk = {k: v[start : start + size] if torch.is_tensor(v) else v for k, v in batch.items()}
            with autocast():
                parts.append(_CHUNKS[family](model, chunk, masked))
    finally:
        model.train(was_training)
    return _concatenate(parts, family, model)


def _concatenate(parts: list[dict[str, torch.Tensor]], family: str, model: torch.nn.Module) -> HealthInputs:
    def cat(name: str) -> torch.Tensor | None:
        values = [part.get(name) for part in parts]
        if any(v is None for v in values):
            return None
        return torch.cat([v.detach().float().cpu() if v.is_floating_point() else v.cpu() for v in values])

    sizes = [int(part["pooled"].shape[0]) for part in parts]
    losses = [part.get("model_loss") for part in parts]
    model_loss = None
    if all(v is not None for v in losses):
        model_loss = sum(float(v) * n for v, n in zip(losses, sizes)) / sum(sizes)
    ratio = None
    if "position_norm" in parts[0]:
        position = sum(float(p["position_norm"]) * n for p, n in zip(parts, sizes)) / sum(sizes)
        signal = sum(float(p["signal_norm"]) * n for p, n in zip(parts, sizes)) / sum(sizes)
        ratio = position / max(signal, 1e-12)
    loss_fns = {
        "ecg_jepa": _feature_loss(float(getattr(model.config, "smooth_l1_beta", 1.0))),
        "ecg2tok": _token_cross_entropy,
        "ecg2tok_tokenizer": _record_cross_entropy,
    }
    return HealthInputs(
        pooled=cat("pooled"),
        predictions=cat("predictions"),
        targets=cat("targets"),
        loss_fn=loss_fns.get(family),
        weights=cat("weights"),
        oracle_predictions=_log_distribution if family in ("ecg2tok", "ecg2tok_tokenizer") else None,
        tokens=cat("tokens"),
        token_weights=cat("token_weights"),
        model_loss=model_loss,
        position_signal_ratio=ratio,
        family=family,
    )




# ------------------------------------------------------------------------------------------------
# The monitor the loop runs.
# ------------------------------------------------------------------------------------------------


class _SeededRows(list):
    """Rows tagged with the seed of their collator randomness (what `SeededCollate` reads)."""

    seed: int | None = None


def _sample_rows(dataset: Any, count: int, seed: int) -> list[Any]:
    """``count`` rows of ``dataset``: a seeded sample (in dataset order) of a map-style dataset, the
    first ones of an iterable one."""
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        size = len(dataset)
        indices = np.sort(np.random.default_rng(seed).choice(size, size=min(count, size), replace=False))
        return [dataset[int(i)] for i in indices]
    rows = []
    for row in dataset:
        rows.append(row)
        if len(rows) >= count:
            break
    return rows


def _print(accelerator: Any, message: str) -> None:
    accelerator.print(message)


class LearningHealthMonitor:
    """Learning-health figures on a fixed probe batch (module docstring), logged as ``health/*``,
    kept in ``<output_dir>/learning_health.json`` and summarised by :meth:`summary`.

    Args:
        settings: the ``diagnostics:`` section.
        dataset: rows of the probe split (``signal``, ``sampling_rate``, ``leads``, ...).
        collator: the run's collator; its randomness (random crops) is seeded by ``settings.seed``.
        batch_size: records per forward pass when ``settings.batch_size`` is unset.
        accelerator: the run's Accelerator (device, autocast, logging, main process).
        output_dir: where ``learning_health.json`` goes.
        resume_step: the step a resumed run starts from (its earlier measurements are kept), or None.
        split_name: the split the rows come from, for the summary (default ``settings.split``).
    """

    def __init__(
        self,
        settings: DiagnosticsSettings,
        dataset: Any,
        collator: Any,
        batch_size: int,
        accelerator: Any,
        output_dir: Path,
        resume_step: int | None = None,
        split_name: str | None = None,
    ):
        self.settings = settings
        self.accelerator = accelerator
        self.split_name = split_name if split_name is not None else settings.split
        self.path = Path(output_dir) / HEALTH_FILE
        rows = _SeededRows(_sample_rows(dataset, settings.records, settings.seed))
        if len(rows) < 2:
            raise ValueError(
                f"diagnostics: the probe split {self.split_name!r} has {len(rows)} row(s); the record-dependent "
                "share needs at least 2 records"
            )
        rows.seed = settings.seed
        batch = SeededCollate(collator)(rows)
        if not torch.is_tensor(batch.get("input_values")):
            raise ValueError(
                f"diagnostics: the collator ({type(collator).__name__}) gives no input_values; learning-health "
                "diagnostics need ECG batches"
            )
        self.batch = batch
        self.chunk_size = settings.batch_size or batch_size
        self.history: list[dict[str, float]] = read_history_until(self.path, resume_step)
        self.warning: str | None = next((e["warning"] for e in self.history if e.get("warning")), None)

    def due(self, step: int, total_steps: int) -> bool:
        every = self.settings.every_steps
        return bool(every and step % every == 0) or step == total_steps

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """The figures of ``model`` (the unwrapped module; every process calls it: a family's
        forward may hold collectives) on the probe batch."""
        device = self.accelerator.device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.batch.items()}
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.settings.seed)
            inputs = learning_health_inputs(
                model, batch, seed=self.settings.seed, chunk_size=self.chunk_size, autocast=self.accelerator.autocast
            )
        metrics = health_metrics(inputs)
        flagged = positions_only(
            metrics, self.settings.target_share_threshold, self.settings.loss_change_threshold
        )
        if "target_record_share" in metrics:
            metrics["positions_only"] = float(flagged)
        return metrics

    def warning_text(self, step: int, metrics: dict[str, float]) -> str:
        return (
            f"WARNING: learning positions only at step {step}: the targets' record-dependent share is "
            f"{metrics['target_record_share']:.2e} (< {self.settings.target_share_threshold:g}) and replacing the "
            f"predictions by their mean across records changes the loss by {100 * metrics['mean_replaced_change']:+.3f} % "
            f"(< {100 * self.settings.loss_change_threshold:g} %); the record-mean oracle's loss is "
            f"{metrics['oracle_gap']:.3g}x lower than the model's. The targets hardly depend on the ECG (position "
            f"code / signal norm at the input: {metrics.get('position_signal_ratio', float('nan')):.3g})."
        )

    def run(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Measure, log ``health/*`` at ``step``, append to the history (written atomically), print
        a line, and the positions-only warning the first time it applies after step 0."""
        metrics = self.measure(model)
        entry: dict[str, Any] = {"step": step, **metrics}
        if step > 0 and metrics.get("positions_only") and self.warning is None:
            self.warning = self.warning_text(step, metrics)
            entry["warning"] = self.warning
            _print(self.accelerator, self.warning)
        self.accelerator.log({f"health/{name}": value for name, value in metrics.items()}, step=step)
        self.history.append(entry)
        if self.accelerator.is_main_process:
            write_json_atomic(self.path, self.history, sort_keys=True)
            shown = [
                ("target share", "target_record_share", ".2e"),
                ("token share", "token_record_share", ".2e"),
                ("pooled share", "pooled_record_share", ".2e"),
                ("loss", "loss", ".4g"),
                ("mean-replaced", "mean_replaced_change", "+.2%"),
                ("oracle gap", "oracle_gap", ".3g"),
                ("RankMe", "rankme", ".3g"),
                ("std min", "pooled_std_min", ".2e"),
            ]
            text = ", ".join(f"{label} {metrics[key]:{spec}}" for label, key, spec in shown if key in metrics)
            _print(self.accelerator, f"learning health at step {step}: {text}")
        return metrics

    def summary(self) -> dict[str, Any]:
        flagged = [entry["step"] for entry in self.history if entry.get("positions_only")]
        return {
            "split": self.split_name,
            "records": int(self.batch["input_values"].shape[0]),
            "initial": self.history[0] if self.history else None,
            "final": self.history[-1] if self.history else None,
            "history": self.history,
            "positions_only_steps": flagged,
            "warning": self.warning,
        }


# ------------------------------------------------------------------------------------------------
# The validation linear probe.
# ------------------------------------------------------------------------------------------------


def _probe_split(dataset: Any, split: str, column: str, problem_type: str, records: int, seed: int):
    try:
        rows = dataset_split(dataset, split)
    except ValueError as error:
        raise ValueError(f"diagnostics.probe: {error}; set diagnostics.probe.train_split / validation_split") from None
    rows = select_task_records(rows, column, problem_type)
    if len(rows) == 0:
        raise ValueError(f"diagnostics.probe: split {split!r} has no record with a {column!r} label")
    if len(rows) > records:
        rows = rows.select(np.sort(np.random.default_rng(seed).choice(len(rows), size=records, replace=False)))
    return rows, multi_hot(rows, column)


class ValidationProbe:
    """The quick validation linear probe of a pretraining run (module docstring), logged as
    ``probe/*``, kept in ``<output_dir>/probe.json``; with ``keep_best`` it saves the best step's
    model to ``<output_dir>/best_probe_model`` and :meth:`finish` makes it the run's ``model``.

    Args:
        settings: the ``diagnostics.probe`` section.
        dataset: the recipe's whole dataset (every split, with its label columns).
        feature_extractor: the run's feature extractor (its deterministic crop is used).
        accelerator: the run's Accelerator.
        output_dir: the run's folder.
        resume_step: the step a resumed run starts from, or None.
    """

    def __init__(
        self,
        settings: ProbeSettings,
        dataset: Any,
        feature_extractor: Any,
        accelerator: Any,
        output_dir: Path,
        resume_step: int | None = None,
    ):
        import datasets

        self.settings = settings
        self.accelerator = accelerator
        self.feature_extractor = feature_extractor
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / PROBE_FILE
        self.best_dir = self.output_dir / BEST_PROBE_DIR
        if not isinstance(dataset, (datasets.Dataset, datasets.DatasetDict)):
            raise TypeError(
                "--probe-every / diagnostics.probe needs a map-style labelled dataset (datasets.Dataset or "
                f"DatasetDict with label columns), got {type(dataset).__name__}"
            )
        first = dataset[next(iter(dataset))] if isinstance(dataset, datasets.DatasetDict) else dataset
        columns = label_columns(first)
        column = settings.label_column
        if column is None:
            if len(columns) != 1:
                raise ValueError(
                    "--probe-every needs a labelled dataset: "
                    + (
                        "the recipe's dataset has no label column (Sequence(ClassLabel)); prepare one with labels"
                        if not columns
                        else f"the recipe's dataset has the label columns {columns}; choose one with --probe-label "
                        "(diagnostics.probe.label_column)"
                    )
                )
            column = columns[0]
        elif column not in columns:
            raise ValueError(
                f"diagnostics.probe.label_column {column!r} is not a label column of the recipe's dataset "
                f"(its label columns: {columns or 'none'})"
            )
        self.label_column = column
        self.train, self.train_labels = _probe_split(
            dataset, settings.train_split, column, settings.problem_type, settings.records, settings.seed
        )
        self.validation, self.validation_labels = _probe_split(
            dataset, settings.validation_split, column, settings.problem_type, settings.records, settings.seed + 1
        )
        self.head = instantiate(settings.head)
        self.history: list[dict[str, float]] = read_history_until(self.path, resume_step)
        self.best: dict[str, float] | None = None
        self.model_step: int | None = None  # set by `finish`
        self.last_model_dir: Path | None = None
        self._restore_best(resume_step)

    def _restore_best(self, resume_step: int | None) -> None:
        """The best candidate of a resumed run's kept history, if its saved model is that step's."""
        candidates = [entry for entry in self.history if entry["step"] > 0]
        if not candidates:
            return
        best = max(candidates, key=lambda entry: entry["val_macro_auroc"])
        if not self.settings.keep_best:  # nothing saved to match
            self.best = best
            return
        marker = self.best_dir / _BEST_MARKER
        saved = json.loads(marker.read_text(encoding="utf-8"))["step"] if marker.is_file() else None
        if saved == best["step"]:
            self.best = best
        else:
            _print(
                self.accelerator,
                f"probe: the saved best-probe model (step {saved}) is not the best step of the resumed run "
                f"({best['step']}); best-probe selection restarts after step {resume_step}",
            )

    def due(self, step: int, total_steps: int) -> bool:
        every = self.settings.every_steps
        return bool(every and step % every == 0) or step == total_steps

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        """Features of both subsets, the head, and its validation metrics (this process)."""
        start = time.perf_counter()

        def step(batch):
            return pooled_features(model, batch)

        device = self.accelerator.device
        # The head's construction draws from the global generator: fork it (the training stream and
        # an exact resume stay untouched).
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.settings.seed)
            features = {
                name: collect_outputs(
                    model, rows, self.feature_extractor, step, batch_size=self.settings.batch_size, device=device
                )
                for name, rows in (("train", self.train), ("validation", self.validation))
            }
            result = self.head(
                features["train"], self.train_labels, features["validation"], self.validation_labels,
                problem_type=self.settings.problem_type,
            )
        val_metrics = getattr(result, "val_metrics", None) or {}
        auroc = float(val_metrics.get("macro_auroc", float("nan")))
        return {
            "val_macro_auroc": auroc,
            "best_epoch": float(getattr(result, "best_epoch", 0)),
            "train_records": float(len(self.train)),
            "validation_records": float(len(self.validation)),
            "seconds": time.perf_counter() - start,
        }

    def run(self, model: torch.nn.Module, step: int, save: Callable[[Path], None]) -> dict[str, float]:
        """Probe on the main process (the others wait for its figures), log ``probe/*``, append to the
        history; a new best after step 0 with ``keep_best`` is saved by ``save(folder)`` (every
        process calls it: gathering a state dict is a collective)."""
        from accelerate.utils import broadcast_object_list

        holder = [self.measure(model) if self.accelerator.is_main_process else None]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(holder, from_process=0)
        metrics = holder[0]
        self.accelerator.log({f"probe/{name}": value for name, value in metrics.items()}, step=step)
        entry = {"step": step, **metrics}
        self.history.append(entry)
        improved = step > 0 and math.isfinite(metrics["val_macro_auroc"]) and (
            self.best is None or metrics["val_macro_auroc"] > self.best["val_macro_auroc"]
        )
        if improved:
            self.best = entry
            if self.settings.keep_best:
                save(self.best_dir)
                if self.accelerator.is_main_process:
                    write_json_atomic(self.best_dir / _BEST_MARKER, {"step": step, **metrics}, sort_keys=True)
        if self.accelerator.is_main_process:
            write_json_atomic(self.path, self.history, sort_keys=True)
            best = f" (best {self.best['val_macro_auroc']:.4f} at step {self.best['step']})" if self.best else ""
            _print(
                self.accelerator,
                f"validation probe at step {step}: macro AUROC {metrics['val_macro_auroc']:.4f} on "
                f"{int(metrics['validation_records'])} records{best}",
            )
        return metrics

    def finish(self, model_dir: Path, final_step: int) -> int:
        """After the final model was saved to ``model_dir``: with ``keep_best`` and a best step other
        than the last, move the last weights to ``model_last`` and the best ones into ``model_dir``.
        Returns the step whose weights ``model_dir`` holds (the main process moves, all wait)."""
        self.model_step, self.last_model_dir = final_step, None
        if self.settings.keep_best and self.best is not None and self.best["step"] != final_step:
            self.model_step = int(self.best["step"])
            self.last_model_dir = self.output_dir / LAST_MODEL_DIR
            if self.accelerator.is_main_process:
                if self.last_model_dir.exists():
                    shutil.rmtree(self.last_model_dir)
                os.replace(model_dir, self.last_model_dir)
                os.replace(self.best_dir, model_dir)
                (model_dir / _BEST_MARKER).unlink(missing_ok=True)
        elif self.accelerator.is_main_process and self.best_dir.exists():
            shutil.rmtree(self.best_dir)  # the last step is the best: the model folder holds it
        self.accelerator.wait_for_everyone()
        start = self.history[0] if self.history and self.history[0]["step"] == 0 else None
        if self.best is not None and start is not None and self.best["val_macro_auroc"] <= start["val_macro_auroc"]:
            _print(
                self.accelerator,
                f"probe: no trained step beat the starting point's validation macro AUROC "
                f"({start['val_macro_auroc']:.4f}; best trained step {self.best['step']}: "
                f"{self.best['val_macro_auroc']:.4f})",
            )
        return self.model_step

    def summary(self) -> dict[str, Any]:
        """``label_column``, record counts, ``initial`` / ``final`` / ``best`` probes, ``history``,
        ``model_step`` (the step whose weights the run's ``model`` folder holds; None if the run
        stopped early) and ``last_model_dir`` (the last step's weights, where they were moved)."""
        return {
            "label_column": self.label_column,
            "train_records": len(self.train),
            "validation_records": len(self.validation),
            "keep_best": self.settings.keep_best,
            "initial": self.history[0] if self.history else None,
            "final": self.history[-1] if self.history else None,
            "best": self.best,
            "model_step": self.model_step,
            "last_model_dir": str(self.last_model_dir) if self.last_model_dir is not None else None,
            "history": self.history,
        }
