"""Saliency for ECG models: which leads and which moments of a record drove a prediction.

Two methods, one result type (`EcgExplanation`, ``(leads, samples)`` aligned with the signal the
model saw):

* ``"integrated_gradients"`` (Sundararajan et al. 2017, through Captum's `IntegratedGradients`):
  for a ``...ForSequenceClassification`` of any family, the attribution of every input sample to
  the model's probability for one class (sigmoid for ``multi_label_classification``, softmax for
  ``single_label_classification``), integrated along the straight path from a flat 0 mV line (the
  baseline: a record with no electrical activity) to the record, with ``steps`` Gauss-Legendre
  points. Signed, in units of probability: they sum to ``score - baseline_score`` up to
  ``convergence_delta`` (Captum's completeness check); when that misses by more than 10 % the
  integral is recomputed with 4 x the points, up to ``max_steps`` (pre-LN transformers such as
  ECG-JEPA often need a few hundred). Leads the record lacks are zero-filled by the feature
  extractor, equal to the baseline, and get exactly zero attribution. The baseline must be
  neutral for the class: a ``UserWarning`` says when the model scores the flat line within 0.1 of
  the record (the attributions then explain that difference only).
* ``"attention_rollout"`` (Abnar & Zuidema 2020) for the transformer families (ECG-JEPA, ECG2TOK),
  classifiers and bare encoders alike: per block, the head-averaged attention weights plus the
  identity (the residual path), rows renormalised, multiplied from the first block to the last.
  The rows of the patch tokens that the model's mean pooling averages (tokens of recorded leads and
  real time) are averaged into one distribution over input tokens; a [CLS] token's share (ECG2TOK)
  is dropped and the rest renormalised. Tokens are per-lead patches (token ``l * patches + p`` is
  time patch ``p`` of lead ``l``), so the distribution maps to ``(lead, patch)`` and is spread
  evenly over the ``patch_size`` samples of each patch: non-negative, summing to 1 over the whole
  array, constant within a patch, zero on missing leads and padding. It is not class-specific: the
  same map explains every class (``score`` is still the model's probability for ``target``).

``explain(model, feature_extractor, ecg, sampling_rate=..., leads=...)`` works on a loaded model;
``explain_from_pretrained(path_or_repo, ecg, ...)`` loads one (no remote code). The command line is
``ecg-hub explain``; ``EcgExplanation.plot`` draws the saliency over the 12-lead plot.
Captum is the optional extra ``pip install 'ecg-hub[explain]'``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ecg_hub.utils import accepted_kwargs

__all__ = ["METHODS", "EcgExplanation", "explain", "explain_from_pretrained", "load_explainable"]

#: Saliency methods of :func:`explain`.
METHODS = ("integrated_gradients", "attention_rollout")

#: Display names of the methods (plot colour bar, command line).
METHOD_TITLES = {"integrated_gradients": "integrated gradients", "attention_rollout": "attention rollout"}

_PROBLEM_TYPES = ("multi_label_classification", "single_label_classification")

#: Integrated gradients are recomputed with more points (and finally warn) while ``|convergence_delta|``
#: exceeds this fraction of the score change from the baseline (or of 0.01, when it barely changes).
CONVERGENCE_TOLERANCE = 0.1

#: Integrated gradients warn when the target's probability on the record and on the flat baseline
#: differ by less than this: the attributions then explain that small difference only.
SMALL_SCORE_CHANGE = 0.1


@dataclass
class EcgExplanation:
    """The saliency of one record for one model output.

    Attributes:
        signal: ``(leads, samples)`` float32, the record as the model saw it after the feature
            extractor (resampled, filtered, cropped or padded; in mV unless ``units`` says otherwise).
        attributions: ``(leads, samples)`` float32 aligned with ``signal`` (see the module docstring
            for what each method's values mean).
        leads: lead names of the rows, in the feature extractor's order.
        sampling_rate: Hz of ``signal`` (the feature extractor's rate).
        target_index / target_label: the explained class (None for an encoder without a head).
        method: ``"integrated_gradients"`` or ``"attention_rollout"``.
        score: the model's probability for the target class on ``signal`` (None for an encoder).
        units: ``"mV"``, or the normalisation the feature extractor applied (the values are then
            not millivolts and the integrated-gradients baseline 0 is the normalised zero).
        lead_present: ``(leads,)`` bool, False for leads the record lacked (zero-filled).
        baseline_score: integrated gradients: the probability for the target on the flat line.
        convergence_delta: integrated gradients: ``attributions.sum() - (score - baseline_score)``.
        steps: integrated gradients: the number of integration points.
    """

    signal: np.ndarray
    attributions: np.ndarray
    leads: list[str]
    sampling_rate: float
    target_index: int | None
    target_label: str | None
    method: str
    score: float | None
    units: str = "mV"
    lead_present: np.ndarray | None = None
    baseline_score: float | None = None
    convergence_delta: float | None = None
    steps: int | None = None

    def lead_share(self) -> dict[str, float]:
        """Lead -> its share of the total ``|attribution|`` mass (the shares sum to 1), in lead
        order; every share is 0.0 when the attributions are all zero."""
        mass = np.abs(self.attributions.astype(np.float64)).sum(axis=1)
        total = float(mass.sum())
        return {lead: (float(m) / total if total > 0 else 0.0) for lead, m in zip(self.leads, mass)}

    def top_leads(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` leads with the largest `lead_share`, largest first."""
        shares = self.lead_share()
        return sorted(shares.items(), key=lambda item: -item[1])[: max(0, int(k))]

    def plot(
        self,
        out_path: str | os.PathLike | None = None,
        *,
        record_id: str | None = None,
        title: str | None = None,
        dpi: int | None = None,
    ):
        """The 12-lead plot of ``signal`` with the attributions as a heat band
        (:func:`ecg_hub.data.plot.plot_ecg`); the title names the record, the target and its score.
        Returns the figure, or the path when ``out_path`` is given."""
        from ecg_hub.data.plot import DEFAULT_DPI, plot_ecg

        labels = None
        if self.target_label is not None:
            labels = [f"{self.target_label} p={self.score:.3f}" if self.score is not None else self.target_label]
        note = METHOD_TITLES.get(self.method, self.method)
        if self.units != "mV":
            note += f" (values after {self.units}, not mV)"
        return plot_ecg(
            self.signal,
            self.sampling_rate,
            self.leads,
            out_path,
            title=f"{note}  |  {title}" if title else note,
            dpi=dpi or DEFAULT_DPI,
            record_id=record_id,
            labels=labels,
            saliency=self.attributions,
            saliency_label=METHOD_TITLES.get(self.method, self.method),
        )


# ----------------------------------------------------------------------------------------------
# Model kinds
# ----------------------------------------------------------------------------------------------


def _is_classifier(model) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification") and hasattr(model, "classifier")


def _transformer_classes() -> tuple[type, ...]:
    """The models whose attention rollout is defined: per-lead patch tokens and mean pooling."""
    from ecg_hub.modeling import (
        Ecg2TokForSequenceClassification,
        Ecg2TokModel,
        EcgJepaForSequenceClassification,
        EcgJepaModel,
    )

    return (EcgJepaModel, EcgJepaForSequenceClassification, Ecg2TokModel, Ecg2TokForSequenceClassification)


def _check_model(model, method: str) -> bool:
    """Whether ``model`` is a classifier; a ``ValueError`` if ``method`` cannot explain it."""
    name = type(model).__name__
    classifier = _is_classifier(model)
    if method == "integrated_gradients" and not classifier:
        hint = " (an encoder: method='attention_rollout' explains its pooled features)" if isinstance(
            model, _transformer_classes()
        ) else ""
        raise ValueError(
            f"explain: method 'integrated_gradients' needs a ...ForSequenceClassification (class scores to "
            f"attribute), got {name}{hint}; zero-shot ECG-text models are not supported yet"
        )
    if method == "attention_rollout" and not isinstance(model, _transformer_classes()):
        raise ValueError(
            f"explain: method 'attention_rollout' needs a transformer over per-lead patches (ECG-JEPA or "
            f"ECG2TOK: EcgJepaModel, EcgJepaForSequenceClassification, Ecg2TokModel, "
            f"Ecg2TokForSequenceClassification), got {name}; use method='integrated_gradients'"
        )
    if classifier:
        problem_type = getattr(model.config, "problem_type", None)
        if problem_type not in _PROBLEM_TYPES:
            raise ValueError(
                f"explain: {name} has config.problem_type {problem_type!r}; expected "
                "'multi_label_classification' (sigmoid) or 'single_label_classification' (softmax)"
            )
        if int(model.config.num_labels) < 1:
            raise ValueError(f"explain: {name} has config.num_labels {model.config.num_labels}; expected >= 1")
    return classifier


def _class_names(model) -> list[str]:
    id2label = {int(k): str(v) for k, v in (getattr(model.config, "id2label", None) or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(int(model.config.num_labels))]


def _resolve_target(target: int | str | None, names: list[str], scores: np.ndarray) -> int:
    """The class index of ``target``: an index, a label name of ``config.id2label``, or None for
    the top-scoring class."""
    available = ", ".join(f"{i}: {name}" for i, name in enumerate(names))
    if target is None:
        return int(np.argmax(scores))
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"explain: target must be a class index or label name, got the boolean {target!r}")
    if isinstance(target, (int, np.integer)):
        if not 0 <= int(target) < len(names):
            raise ValueError(
                f"explain: target index {int(target)} is outside 0..{len(names) - 1}; available labels: {available}"
            )
        return int(target)
    if isinstance(target, str):
        if target in names:
            return names.index(target)
        folded = [i for i, name in enumerate(names) if name.casefold() == target.casefold()]
        if len(folded) == 1:
            return folded[0]
        raise ValueError(
            f"explain: target {target!r} is not a label of this model (config.id2label); available labels: "
            f"{available}"
        )
    raise TypeError(f"explain: target must be a class index, a label name or None, got {type(target).__name__}")


def _scores(logits: torch.Tensor, problem_type: str) -> torch.Tensor:
    logits = logits.float()
    return torch.sigmoid(logits) if problem_type == "multi_label_classification" else logits.softmax(-1)


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------


def _prepare(model, feature_extractor, ecg, sampling_rate, leads, masked_leads) -> dict[str, torch.Tensor]:
    """The model inputs of one record (batch of 1) on the model's device and dtype."""
    if not hasattr(feature_extractor, "leads") or not hasattr(feature_extractor, "sampling_rate"):
        raise ValueError(
            f"explain: feature_extractor must be an EcgFeatureExtractor (lead order, sampling rate, length), "
            f"got {type(feature_extractor).__name__}"
        )
    config_leads = getattr(model.config, "lead_names", None)
    if config_leads is not None and list(config_leads) != list(feature_extractor.leads):
        raise ValueError(
            f"explain: the feature extractor's leads {list(feature_extractor.leads)} differ from the model's "
            f"config.lead_names {list(config_leads)}; use the feature extractor saved with the model"
        )
    features = feature_extractor(
        ecg, sampling_rate=sampling_rate, leads=leads, masked_leads=masked_leads, return_tensors="pt"
    )
    values = features["input_values"]
    if values.shape[0] != 1:
        raise ValueError(
            f"explain: ecg must be one record (leads, samples), got a batch of {values.shape[0]} records"
        )
    parameter = next(model.parameters())
    inputs = {"input_values": values.to(device=parameter.device, dtype=parameter.dtype)}
    for key in ("attention_mask", "lead_mask"):
        if features.get(key) is not None:
            inputs[key] = features[key].to(parameter.device)
    return inputs


def _units(feature_extractor) -> str:
    normalization = getattr(feature_extractor, "normalization", "none")
    return "mV" if normalization in (None, "none") else f"{normalization} normalisation"


# ----------------------------------------------------------------------------------------------
# The methods
# ----------------------------------------------------------------------------------------------


def _integrated_gradients(
    model, inputs, target_index: int, target_label: str, problem_type: str, steps: int, max_steps: int,
    internal_batch_size,
) -> tuple[np.ndarray, float, float, int]:
    """``(attributions (leads, samples), baseline score, convergence delta, steps used)``."""
    try:
        from captum.attr import IntegratedGradients
    except ImportError as error:
        raise ImportError(
            "explain: integrated gradients need Captum; install it with pip install 'ecg-hub[explain]'"
        ) from error

    keys = [key for key in ("attention_mask", "lead_mask") if key in inputs]
    masks = tuple(inputs[key] for key in keys)

    def forward(values, *masks):
        batch = accepted_kwargs(model.forward, {"input_values": values, **dict(zip(keys, masks))})
        return _scores(model(**batch).logits, problem_type)[:, target_index]

    values = inputs["input_values"]
    # The flat 0 mV line: a record with no electrical activity at all.
    baseline = torch.zeros_like(values)
    with torch.no_grad():
        baseline_score = float(forward(baseline, *masks)[0])
        change = float(forward(values, *masks)[0]) - baseline_score
    if abs(change) < SMALL_SCORE_CHANGE:
        # IG explains F(record) - F(baseline): a model that already scores the flat line like the
        # record (e.g. a class it predicts for "no evidence") leaves almost nothing to attribute.
        warnings.warn(
            f"explain: the flat 0 mV baseline scores {baseline_score:.3f} for {target_label!r} and the record "
            f"{baseline_score + change:.3f}; the attributions account for that difference ({change:+.3f}) only, "
            "not for the score itself",
            UserWarning,
            stacklevel=3,
        )
    integrator = IntegratedGradients(forward)
    # Completeness (Sundararajan et al. 2017, section 3): the attributions must add up to the score
    # change from the baseline; the paper checks it and adds points until it holds. Pre-LN
    # transformers need many: LayerNorm undoes the input's scale, so their output switches from the
    # baseline's to the record's over a few per cent of the path, near the baseline.
    while True:
        attributions, delta = integrator.attribute(
            values,
            baselines=baseline,
            additional_forward_args=masks or None,
            n_steps=steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
        delta = float(delta.reshape(-1)[0])
        converged = abs(delta) <= CONVERGENCE_TOLERANCE * max(abs(change), 0.01)
        if converged or steps >= max_steps:
            break
        steps = min(4 * steps, max_steps)
    if not converged:
        warnings.warn(
            f"explain: integrated gradients with steps={steps} approximate the path integral poorly: the "
            f"attributions sum to {change + delta:.3f} but the score changes by {change:.3f} from the flat "
            f"baseline (convergence delta {delta:+.3f}); raise max_steps (e.g. to {steps * 4})",
            UserWarning,
            stacklevel=3,
        )
    return attributions[0].detach().float().cpu().numpy(), baseline_score, delta, steps


def _attention_rollout(model, inputs) -> tuple[np.ndarray, torch.Tensor | None]:
    """``(attributions (leads, samples) float64, logits or None)``; see the module docstring."""
    from ecg_hub.modeling.layers import token_validity

    previous = model.config._attn_implementation
    try:
        if previous != "eager":  # SDPA kernels do not return attention weights
            model.set_attn_implementation("eager")
        with torch.no_grad():
            outputs = model(**accepted_kwargs(model.forward, inputs), output_attentions=True)
    finally:
        if model.config._attn_implementation != previous:
            model.set_attn_implementation(previous)
    attentions = outputs.attentions
    if not attentions or any(a is None for a in attentions):
        raise ValueError(f"explain: {type(model).__name__} returned no attention weights with output_attentions=True")

    values = inputs["input_values"]
    _, num_leads, num_samples = values.shape
    patch_size = int(model.config.patch_size)
    num_patches = num_samples // patch_size
    num_tokens = attentions[0].shape[-1]
    num_prefix = num_tokens - num_leads * num_patches  # [CLS] of ECG2TOK, none for ECG-JEPA
    if num_prefix < 0:
        raise ValueError(
            f"explain: {type(model).__name__} attends over {num_tokens} tokens; expected at least "
            f"{num_leads} leads x {num_patches} patches"
        )
    valid = token_validity(1, num_leads, num_patches, inputs.get("attention_mask"), inputs.get("lead_mask"))
    valid = torch.ones(num_leads * num_patches, dtype=torch.bool) if valid is None else valid[0].cpu()

    identity = torch.eye(num_tokens, dtype=torch.float64)
    rollout = identity.clone()
    for weights in attentions:
        layer = weights[0].detach().to(device="cpu", dtype=torch.float64).mean(0)  # average the heads
        layer = 0.5 * layer + 0.5 * identity  # the residual path carries the token itself
        layer = layer / layer.sum(-1, keepdim=True)
        rollout = layer @ rollout
    # The pooled features average the valid patch tokens, so their rows average into one distribution.
    pooled = rollout[num_prefix:][valid].mean(0)[num_prefix:]
    pooled = pooled / pooled.sum()
    grid = pooled.reshape(num_leads, num_patches)
    # Spread each token's share evenly over its patch_size samples: the total stays 1.
    per_sample = grid.repeat_interleave(patch_size, dim=1) / patch_size
    logits = getattr(outputs, "logits", None)
    return per_sample.numpy(), logits


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def explain(
    model,
    feature_extractor,
    ecg,
    *,
    sampling_rate: float | None,
    leads: Sequence[str] | None,
    target: int | str | None = None,
    method: str = "integrated_gradients",
    steps: int = 32,
    masked_leads: Sequence[str] | None = None,
    max_steps: int | None = 512,
    internal_batch_size: int | None = 16,
) -> EcgExplanation:
    """Explain one prediction of ``model`` on one record.

    Args:
        model: a ``...ForSequenceClassification`` of any ecg-hub family (both methods for ECG-JEPA
            and ECG2TOK, integrated gradients for the others), or an ``EcgJepaModel`` /
            ``Ecg2TokModel`` encoder (attention rollout only, no target).
        feature_extractor: the model's ``EcgFeatureExtractor`` (its lead order, rate and length).
        ecg: one record ``(leads, samples)`` (numpy array or tensor) in mV, or a dataset row.
        sampling_rate: Hz of ``ecg``.
        leads: lead names of the rows of ``ecg``.
        target: class index, or label name of ``config.id2label``; None: the top-scoring class.
        method: ``"integrated_gradients"`` or ``"attention_rollout"`` (module docstring).
        steps: integrated gradients: integration points from the flat 0 mV baseline (>= 1).
        masked_leads: leads of ``ecg`` to treat as missing (flat or clipped electrodes).
        max_steps: integrated gradients: when the attributions miss the score change from the
            baseline by more than :data:`CONVERGENCE_TOLERANCE` (10 %), the integral is computed
            again with 4 x the points, up to this many (at least ``steps``; then a ``UserWarning``);
            None: ``steps`` only. ``EcgExplanation.steps`` is the number used.
        internal_batch_size: integrated gradients: path points per forward pass (memory bound);
            None: all ``steps`` at once.

    Returns:
        An `EcgExplanation`. The model is put in eval mode for the call and its mode restored; for
        attention rollout its attention implementation is switched to ``eager`` for the call and
        restored.

    Raises:
        ValueError: naming the field, for an unknown method, a bad ``steps``, a model the method
            cannot explain, a target that is not a class of the model (the message lists the
            labels), a feature extractor that does not match the model, or a record the feature
            extractor refuses.
        TypeError: for a target that is neither an index, a label name nor None (a boolean, say).
        ImportError: for integrated gradients without Captum (``pip install 'ecg-hub[explain]'``).
    """
    if method not in METHODS:
        raise ValueError(f"explain: method must be one of {METHODS}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"explain: steps must be a positive integer (integration points), got {steps!r}")
    if max_steps is not None and (
        isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1
    ):
        raise ValueError(f"explain: max_steps must be a positive integer or None, got {max_steps!r}")
    max_steps = steps if max_steps is None else max(int(max_steps), int(steps))
    if internal_batch_size is not None and (
        isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int) or internal_batch_size < 1
    ):
        raise ValueError(f"explain: internal_batch_size must be a positive integer or None, got {internal_batch_size!r}")
    if isinstance(ecg, Mapping) and ("sampling_rate" in ecg or "leads" in ecg):
        sampling_rate = sampling_rate if sampling_rate is not None else ecg.get("sampling_rate")
        leads = leads if leads is not None else ecg.get("leads")
    classifier = _check_model(model, method)
    if not classifier and target is not None:
        raise ValueError(
            f"explain: {type(model).__name__} is an encoder without class scores; target must be None, got {target!r}"
        )
    inputs = _prepare(model, feature_extractor, ecg, sampling_rate, leads, masked_leads)

    was_training = model.training
    model.eval()  # no dropout or stochastic depth; BatchNorm uses its running statistics
    try:
        # A caller inside torch.no_grad() or inference_mode() (a demo server) still gets gradients.
        with torch.inference_mode(False), torch.enable_grad():
            target_index = target_label = score = None
            baseline_score = delta = None
            problem_type = getattr(model.config, "problem_type", None)
            if classifier:
                names = _class_names(model)
                with torch.no_grad():
                    scores = _scores(model(**accepted_kwargs(model.forward, inputs)).logits, problem_type)[0]
                target_index = _resolve_target(target, names, scores.cpu().numpy())
                target_label = names[target_index]
                score = float(scores[target_index])
            if method == "integrated_gradients":
                attributions, baseline_score, delta, steps = _integrated_gradients(
                    model, inputs, target_index, target_label, problem_type, int(steps), int(max_steps),
                    internal_batch_size,
                )
            else:
                attributions, _ = _attention_rollout(model, inputs)
    finally:
        model.train(was_training)

    lead_mask = inputs.get("lead_mask")
    return EcgExplanation(
        signal=inputs["input_values"][0].detach().float().cpu().numpy().astype(np.float32),
        attributions=np.asarray(attributions, dtype=np.float32),
        leads=list(feature_extractor.leads),
        sampling_rate=float(feature_extractor.sampling_rate),
        target_index=target_index,
        target_label=target_label,
        method=method,
        score=score,
        units=_units(feature_extractor),
        lead_present=None if lead_mask is None else lead_mask[0].cpu().numpy().astype(bool),
        baseline_score=baseline_score,
        convergence_delta=delta,
        steps=int(steps) if method == "integrated_gradients" else None,
    )


def load_explainable(path_or_repo: str | os.PathLike, *, method: str = "integrated_gradients", revision: str | None = None):
    """``(model, feature_extractor)`` of a saved checkpoint for :func:`explain`: a fine-tuned
    classifier through ``AutoModelForSequenceClassification``, or (attention rollout only) an encoder
    through ``AutoModel``; the feature extractor through ``AutoFeatureExtractor``. No remote code."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForSequenceClassification

    if method not in METHODS:
        raise ValueError(f"explain: method must be one of {METHODS}, got {method!r}")
    name = os.fspath(path_or_repo)
    config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=False)
    architectures = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        model = AutoModelForSequenceClassification.from_pretrained(name, revision=revision, trust_remote_code=False)
    elif method == "attention_rollout":
        model = AutoModel.from_pretrained(name, revision=revision, trust_remote_code=False)
    else:
        raise ValueError(
            f"explain: model {name!r} has config.architectures {architectures}; integrated gradients need a "
            "fine-tuned ...ForSequenceClassification (an encoder can be explained with method='attention_rollout')"
        )
    try:
        feature_extractor = AutoFeatureExtractor.from_pretrained(name, revision=revision, trust_remote_code=False)
    except OSError as error:
        raise ValueError(
            f"explain: model {name!r} has no preprocessor_config.json (its EcgFeatureExtractor); expected one saved "
            f"next to the weights ({error})"
        ) from error
    return model, feature_extractor


def explain_from_pretrained(
    path_or_repo: str | os.PathLike,
    ecg,
    *,
    sampling_rate: float | None,
    leads: Sequence[str] | None,
    target: int | str | None = None,
    method: str = "integrated_gradients",
    steps: int = 32,
    masked_leads: Sequence[str] | None = None,
    revision: str | None = None,
    device: str | torch.device | None = None,
) -> EcgExplanation:
    """:func:`explain` with the model and feature extractor loaded from a folder or Hub id
    (:func:`load_explainable`), on ``device`` (default CPU)."""
    model, feature_extractor = load_explainable(path_or_repo, method=method, revision=revision)
    if device is not None:
        model.to(device)
    return explain(
        model,
        feature_extractor,
        ecg,
        sampling_rate=sampling_rate,
        leads=leads,
        target=target,
        method=method,
        steps=steps,
        masked_leads=masked_leads,
    )
