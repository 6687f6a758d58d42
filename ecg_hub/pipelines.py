"""ECG pipelines for ``transformers.pipeline``: zero-shot classification by text prompts, and embeddings.

After ``import ecg_hub`` (which calls :func:`register_pipelines`):

>>> from transformers import pipeline
>>> classifier = pipeline("zero-shot-ecg-classification", model="path/to/etp-checkpoint")
>>> classifier(signal, sampling_rate=500, leads=["I", "II", ...],
...            candidate_labels=["NORM", "MI", "AF"],
...            class_descriptions={"AF": "atrial fibrillation, irregularly irregular rhythm"})
[{'label': 'AF', 'score': 0.71}, {'label': 'NORM', 'score': 0.2}, {'label': 'MI', 'score': 0.09}]
>>> embedder = pipeline("ecg-feature-extraction", model="path/to/checkpoint")
>>> embedder(signal, sampling_rate=500, leads=[...])   # list of floats (the ECG embedding)

Inputs (both pipelines): one record ``(leads, samples)`` (numpy or torch) with ``sampling_rate=`` and
``leads=``; a dataset row (a dict with ``signal``, ``sampling_rate``, ``leads``); or a list of either,
a ``(batch, leads, samples)`` array, or a ``datasets.Dataset`` (one result per record, in order).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForMultimodalLM, AutoModelForSequenceClassification
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.base import ChunkPipeline

from ecg_hub.modeling.feature_extraction_ecg import EcgInputReducedWarning
from ecg_hub.prompt_ensemble import encode_class_prompts, pooled_embedding
from ecg_hub.utils import accepted_kwargs

ZERO_SHOT_TASK = "zero-shot-ecg-classification"
FEATURE_EXTRACTION_TASK = "ecg-feature-extraction"

#: Library default prompt ensemble (ETP.md, section 5); ``{}`` is replaced by the class description.
DEFAULT_PROMPT_TEMPLATES: tuple[str, ...] = ("{}", "an ECG showing {}", "electrocardiogram with {}")

#: ``function_to_apply`` values: how cosine similarities become scores.
SCORE_FUNCTIONS = ("softmax", "sigmoid", "none")


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def _split_batch_input(ecg: Any) -> Any:
    """Turn batch-shaped inputs into lists (one pipeline item per record); leave single records alone."""
    try:  # datasets is optional here: a Dataset is streamed row by row
        import datasets

        if isinstance(ecg, datasets.Dataset):
            return (row for row in ecg)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(ecg, torch.Tensor):
        ecg = ecg.detach().cpu().numpy()
    if isinstance(ecg, np.ndarray) and ecg.ndim == 3:
        return list(ecg)
    if isinstance(ecg, Mapping) and "signal" in ecg:
        signal = ecg["signal"]
        rank = getattr(signal, "ndim", None)
        if rank is None and isinstance(signal, (list, tuple)) and signal:
            rank = 3 if isinstance(signal[0], (list, tuple, np.ndarray)) and len(signal[0]) and np.ndim(signal[0]) == 2 else None
        if rank == 3:
            return [{key: ecg[key][i] for key in ecg} for i in range(len(signal))]
    if isinstance(ecg, tuple):
        return list(ecg)
    return ecg


def read_record_input(ecg: Any) -> Any:
    """A record path (``str`` / ``os.PathLike``) -> a dataset row read from the file; other inputs as
    they are. Paths: a WFDB record (the ``.hea`` stem, or the ``.hea`` / ``.dat`` file), a PhysioNet
    ``.mat`` with its ``.hea`` (CinC), a CODE-15 style ``.mat``; see
    :func:`ecg_hub.data.records.read_record`. The row carries the file's rate, leads and masked leads."""
    if not isinstance(ecg, (str, os.PathLike)):
        return ecg
    from ecg_hub.data.records import read_record

    record = read_record(ecg)
    return {
        "signal": record.signal,
        "sampling_rate": record.sampling_rate,
        "leads": record.leads,
        "record_id": record.record_id,
        "masked_leads": record.masked_leads,
    }


#: How the windows of one record (``window_stride=``) become its result: ``"mean"`` of the
#: per-window probabilities / scores / embeddings, or ``"max"`` (detection: a finding seen in any
#: window counts).
WINDOW_AGGREGATES = ("mean", "max")


def aggregate_windows(values: torch.Tensor, aggregate: str) -> torch.Tensor:
    """``(windows, ...)`` -> ``(...)`` by ``aggregate`` (:data:`WINDOW_AGGREGATES`)."""
    if aggregate == "mean":
        return values.mean(dim=0)
    if aggregate == "max":
        return values.amax(dim=0)
    raise ValueError(f"aggregate must be one of {WINDOW_AGGREGATES}, got {aggregate!r}")


class _Numbered:
    """One input of a pipeline call with its position (for warnings and errors)."""

    __slots__ = ("item", "number")

    def __init__(self, number: int, item: Any):
        self.number, self.item = number, item


def _is_single_record(inputs: Any) -> bool:
    """Whether ``inputs`` is one record (an array, a row, a path) rather than a stream of records."""
    return isinstance(inputs, (np.ndarray, torch.Tensor, Mapping, str, os.PathLike))


def _ecg_windows(feature_extractor, ecg: Any, sampling_rate, leads, dtype: torch.dtype, window_stride, record_id=None):
    """One record (array, row or path) -> its windows, each the model's inputs ``(1, L, T)`` + masks
    + ``is_last``. Without ``window_stride`` one window, cropped by the extractor's policy.
    ``record_id`` names a record that carries no id of its own."""
    if feature_extractor is None:
        raise ValueError("this pipeline needs the model's EcgFeatureExtractor (save it with the checkpoint)")
    ecg = read_record_input(ecg)
    named = isinstance(ecg, Mapping) and ecg.get("record_id") is not None
    features = feature_extractor(
        ecg, sampling_rate=sampling_rate, leads=leads, return_tensors="pt", window_stride=window_stride,
        record_ids=None if named or record_id is None else [record_id],
    )
    num_windows = features["input_values"].shape[0]
    for i in range(num_windows):
        window = {"input_values": features["input_values"][i : i + 1].to(dtype), "lead_mask": features["lead_mask"][i : i + 1]}
        if "attention_mask" in features:
            window["attention_mask"] = features["attention_mask"][i : i + 1]
        window["is_last"] = i == num_windows - 1
        yield window


def _embed(method, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``method`` (``get_ecg_features``, an encoder's ``forward``) on the inputs it accepts -> the embedding."""
    return pooled_embedding(method(**accepted_kwargs(method, inputs)))


def build_class_prompts(
    candidate_labels: Sequence[str],
    class_descriptions: Mapping[str, str | Sequence[str]] | None = None,
    prompt_templates: Sequence[str] | str | None = None,
) -> list[list[str]]:
    """The prompt ensemble of every class: each template filled with each of the class's descriptions.

    Args:
        candidate_labels: class names, in output order.
        class_descriptions: ``{label: description or [descriptions]}`` (e.g. the CKEPE prompts);
            a label without an entry is described by its own name.
        prompt_templates: format strings with ``{}`` (or ``{description}``; ``{label}`` is also
            available), e.g. ``"an ECG showing {}"``; default :data:`DEFAULT_PROMPT_TEMPLATES`.

    Returns:
        ``prompts[c]``: the list of prompts of ``candidate_labels[c]``.
    """
    if isinstance(candidate_labels, str):
        candidate_labels = [candidate_labels]
    labels = list(candidate_labels or [])
    if not labels:
        raise ValueError(f"{ZERO_SHOT_TASK}: candidate_labels must name at least one class")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{ZERO_SHOT_TASK}: candidate_labels has duplicates: {labels}")
    templates = [prompt_templates] if isinstance(prompt_templates, str) else list(prompt_templates or DEFAULT_PROMPT_TEMPLATES)
    for template in templates:
        if "{" not in template:
            raise ValueError(
                f"{ZERO_SHOT_TASK}: prompt template {template!r} has no '{{}}' placeholder for the class description"
            )
    descriptions = dict(class_descriptions or {})
    unknown = sorted(set(descriptions) - set(labels))
    if unknown:
        raise ValueError(f"{ZERO_SHOT_TASK}: class_descriptions names classes not in candidate_labels: {unknown}")
    prompts = []
    for label in labels:
        described = descriptions.get(label, label)
        described = [described] if isinstance(described, str) else list(described)
        if not described or not all(isinstance(d, str) and d.strip() for d in described):
            raise ValueError(f"{ZERO_SHOT_TASK}: class_descriptions[{label!r}] must be non-empty text, got {described!r}")
        prompts.append([t.format(d, description=d, label=label) for d in described for t in templates])
    return prompts


@torch.no_grad()
def class_text_embeddings(model, processor_or_tokenizer, class_prompts: list[list[str]], max_length: int | None = None) -> torch.Tensor:
    """``(num_classes, dim)`` L2-normalised class embeddings: the normalised mean of each class's
    normalised prompt embeddings (open_clip's zero-shot classifier, MERL's CKEPE ensembling;
    :func:`ecg_hub.prompt_ensemble.ensemble_class_embeddings`)."""
    flat = [prompt for prompts in class_prompts for prompt in prompts]
    device = next(model.parameters()).device
    if hasattr(processor_or_tokenizer, "feature_extractor"):  # an EtpProcessor-like processor
        kwargs = {"max_length": max_length} if max_length is not None else {}
        tokens = processor_or_tokenizer(text=flat, return_tensors="pt", **kwargs)
    else:
        tokens = processor_or_tokenizer(
            flat, padding=True, truncation=True, max_length=max_length or 256, return_tensors="pt"
        )
    tokens = {k: v.to(device) for k, v in tokens.items()}
    return encode_class_prompts(model, tokens, class_prompts)


def ecg_text_cosine(
    model, inputs: Mapping[str, torch.Tensor], class_embeddings: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """``(batch, num_classes)`` cosines between the ECGs of ``inputs`` (the feature extractor's
    output) and the class embeddings, and the model's ``exp(logit_scale)`` (clamped at
    ``config.max_logit_scale``; 1 without one). Shared by the zero-shot pipeline (one record) and
    ``ecg_hub.batch_inference`` (batches), so both score alike."""
    inputs = dict(inputs)
    # ETP names the ECG time mask ecg_attention_mask (the text owns attention_mask).
    if "attention_mask" in inputs:
        inputs["ecg_attention_mask"] = inputs.pop("attention_mask")
    ecg = F.normalize(_embed(model.get_ecg_features, inputs).float(), dim=-1)
    cosine = ecg @ class_embeddings.to(ecg.device).t()
    scale = getattr(model, "logit_scale", None)
    scale = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 1.0
    max_scale = getattr(model.config, "max_logit_scale", None)
    if max_scale is not None:
        scale = min(scale, float(max_scale))
    return cosine, scale


def apply_score_function(
    cosine: torch.Tensor, logit_scale: float, function_to_apply: str = "softmax"
) -> torch.Tensor:
    """``(batch, num_classes)`` scores from cosines, per record (row): ``"softmax"`` over
    ``logit_scale * cosine``, ``"sigmoid"`` of the cosines standardised over the row's classes, or
    ``"none"`` (the cosines). See :class:`ZeroShotEcgClassificationPipeline` (``function_to_apply``)."""
    if function_to_apply not in SCORE_FUNCTIONS:
        raise ValueError(
            f"{ZERO_SHOT_TASK}: function_to_apply must be one of {SCORE_FUNCTIONS}, got {function_to_apply!r}"
        )
    cosine = cosine.float()
    if function_to_apply == "softmax":
        return (logit_scale * cosine).softmax(-1)
    if function_to_apply == "sigmoid":
        if cosine.shape[-1] > 1:
            spread = cosine.std(dim=-1, unbiased=False, keepdim=True)
        else:
            spread = cosine.new_zeros(cosine.shape[:-1] + (1,))
        return torch.sigmoid((cosine - cosine.mean(dim=-1, keepdim=True)) / spread.clamp(min=1e-6))
    return cosine


# --------------------------------------------------------------------------------------------------
# The shared pipeline base: inputs, windows, precision, warnings
# --------------------------------------------------------------------------------------------------


class EcgPipeline(ChunkPipeline):
    """What every ECG pipeline shares. Call arguments read by all of them:

    - ``ecg``: see the module docstring; a ``str`` / ``os.PathLike`` is a record file (WFDB ``.hea``
      stem, PhysioNet ``.mat``) read with its own rate and leads.
    - ``sampling_rate``, ``leads``: the recording's rate (Hz) and lead names, unless rows carry them.
    - ``window_stride``: samples (at the model's rate) between sliding windows of the model's length:
      a record longer than the model's window is scored window by window and the windows
      aggregated (``aggregate``), instead of being cropped to its first window (which warns).
      E.g. ``window_stride=2500`` at 250 Hz: consecutive 10 s windows.
    - ``aggregate``: ``"mean"`` (default) or ``"max"`` over a record's windows (:data:`WINDOW_AGGREGATES`).
    - ``inference_dtype``: ``"auto"`` (default: bfloat16 autocast where the hardware computes it
      natively, else float32; :func:`ecg_hub.inference.resolve_inference_dtype`), ``"float32"`` or
      ``"bfloat16"``.

    A call that crops records or zero-fills most of the model's leads warns once
    (:class:`~ecg_hub.modeling.feature_extraction_ecg.EcgInputReducedWarning`), naming how many
    records and which.

    Built on ``ChunkPipeline``: each window is one model input, so ``batch_size`` batches windows
    and every record still gets exactly one result.
    """

    task_name = "ecg"
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is not None:  # an ECG-text processor's own parts
            if self.feature_extractor is None:
                self.feature_extractor = getattr(self.processor, "feature_extractor", None)
            if self.tokenizer is None:
                self.tokenizer = getattr(self.processor, "tokenizer", None)

    def __call__(self, ecg: Any, **kwargs):
        inputs = _split_batch_input(ecg)
        if isinstance(inputs, list):
            inputs = [_Numbered(i, item) for i, item in enumerate(inputs)]
        elif not _is_single_record(inputs):
            inputs = (_Numbered(i, item) for i, item in enumerate(inputs))
        if not isinstance(inputs, list):  # a stream or a single record: warnings come as they arise
            return super().__call__(inputs, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EcgInputReducedWarning)
            outputs = super().__call__(inputs, **kwargs)
        self._warn_once(caught, len(inputs))
        return outputs

    def _warn_once(self, caught, num_records: int) -> None:
        """Re-issue what the feature extractor reported for each record as one warning per kind."""
        by_kind: dict[str, list] = {}
        for item in caught:
            if isinstance(item.message, EcgInputReducedWarning):
                by_kind.setdefault(item.message.kind, []).append(item.message)
            else:
                warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
        for kind, found in by_kind.items():
            ids = [record_id for warning in found for record_id in warning.record_ids]
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            what = (
                "were cropped to the model's window" if kind == "cropped"
                else "lack more than half of the model's leads"
            )
            warnings.warn(
                EcgInputReducedWarning(
                    f"{self.task_name}: {len(ids)} of {num_records} record(s) {what} ({shown}). {found[0].detail}",
                    kind, ids, num_records, found[0].detail,
                ),
                stacklevel=3,
            )

    def _sanitize_parameters(self, sampling_rate=None, leads=None, window_stride=None, aggregate=None,
                             inference_dtype=None, **kwargs):
        preprocess = {}
        if sampling_rate is not None:
            preprocess["sampling_rate"] = sampling_rate
        if leads is not None:
            preprocess["leads"] = leads
        if window_stride is not None:
            if isinstance(window_stride, bool) or not isinstance(window_stride, int) or window_stride <= 0:
                raise ValueError(f"{self.task_name}: window_stride must be a positive int (samples), got {window_stride!r}")
            preprocess["window_stride"] = window_stride
        forward = {}
        if inference_dtype is not None:
            from ecg_hub.inference import resolve_inference_dtype

            forward["autocast_dtype"] = resolve_inference_dtype(inference_dtype, self.device)[0]
        postprocess = {}
        if aggregate is not None:
            if aggregate not in WINDOW_AGGREGATES:
                raise ValueError(f"{self.task_name}: aggregate must be one of {WINDOW_AGGREGATES}, got {aggregate!r}")
            postprocess["aggregate"] = aggregate
        own_preprocess, own_forward, own_postprocess = self._sanitize_task_parameters(**kwargs)
        return {**preprocess, **own_preprocess}, {**forward, **own_forward}, {**postprocess, **own_postprocess}

    def _sanitize_task_parameters(self, **kwargs):
        if kwargs:
            raise ValueError(f"{self.task_name}: unexpected argument(s) {sorted(kwargs)}")
        return {}, {}, {}

    def preprocess(self, ecg, sampling_rate=None, leads=None, window_stride=None):
        record_id = None
        if isinstance(ecg, _Numbered):  # warnings and errors name the record by its place in the call
            record_id, ecg = f"#{ecg.number} of the call", ecg.item
        yield from _ecg_windows(
            self.feature_extractor, ecg, sampling_rate, leads, self.dtype or torch.float32, window_stride, record_id
        )

    def _autocast(self, autocast_dtype):
        """The inference precision of one forward (default ``"auto"``, resolved once per pipeline)."""
        if autocast_dtype is None:
            if getattr(self, "_auto_dtype", None) is None:
                from ecg_hub.inference import resolve_inference_dtype

                self._auto_dtype = resolve_inference_dtype("auto", self.device)[0]
            autocast_dtype = self._auto_dtype
        if autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=autocast_dtype)

    def _forward(self, model_inputs, autocast_dtype=None, **forward_params):
        is_last = model_inputs.pop("is_last")
        with self._autocast(autocast_dtype):
            outputs = self._forward_windows(model_inputs, **forward_params)
        # Every output keeps the batch dimension: with batch_size > 1 transformers collates windows
        # into one forward and slices each output along dim 0 again.
        return {**{key: value.float() for key, value in outputs.items()}, "is_last": is_last}

    def _forward_windows(self, model_inputs, **forward_params) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def _windows(model_outputs, key: str) -> torch.Tensor:
        """``(windows, ...)``: ``key`` of every window of one record (each output is ``(1, ...)``)."""
        return torch.cat([output[key] for output in model_outputs], dim=0)


# --------------------------------------------------------------------------------------------------
# Zero-shot classification
# --------------------------------------------------------------------------------------------------


class ZeroShotEcgClassificationPipeline(EcgPipeline):
    """Classify ECGs into classes given only as text (``"zero-shot-ecg-classification"``).

    Works with any ECG-text model exposing ``get_ecg_features`` / ``get_text_features`` (ETP, MELP)
    and its processor (``EtpProcessor``: feature extractor + tokenizer).

    Call arguments (and those of every :class:`EcgPipeline`: ``sampling_rate``, ``leads``,
    ``window_stride``, ``aggregate``, ``inference_dtype``):
        ecg: see the module docstring (one record, a row, a record path, a list, a batch array, a Dataset).
        candidate_labels (required): class names, e.g. ``["NORM", "MI", "STTC", "CD", "HYP"]``.
        class_descriptions: ``{label: text or [texts]}`` describing each class (e.g. the CKEPE
            prompts); default: the label itself.
        prompt_templates: list of format strings with ``{}``, averaged (prompt ensembling); default
            :data:`DEFAULT_PROMPT_TEMPLATES`. ``hypothesis_template`` (one string) is accepted too.
        multi_label: ``False`` (default): softmax over the classes of ``exp(logit_scale) * cosine``
            (single-label, CLIP/MERL default; scores sum to 1). ``True``: each class scored
            independently by a sigmoid of the cosines standardised over this record's classes
            (MERL's sigmoid option, per record).
        function_to_apply: ``"softmax"``, ``"sigmoid"`` or ``"none"`` (raw cosine, the ecg-hub
            protocol's primary zero-shot score); overrides ``multi_label``.
        top_k: keep the ``top_k`` best classes (default: all).

    Returns:
        For one record: a list of ``{"label": str, "score": float}``, **sorted by score, best first**
        (with windows: the windows' scores aggregated). For several: one such list per record, in
        input order.
    """

    task_name = ZERO_SHOT_TASK
    _load_processor = True
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for method in ("get_ecg_features", "get_text_features"):
            if not hasattr(self.model, method):
                raise ValueError(
                    f"{ZERO_SHOT_TASK} needs an ECG-text model with {method}(); {type(self.model).__name__} has none"
                )
        if self.feature_extractor is None or (self.processor is None and self.tokenizer is None):
            raise ValueError(f"{ZERO_SHOT_TASK} needs the model's processor (feature extractor + tokenizer)")

    def __call__(self, ecg: Any, **kwargs) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        candidate_labels = kwargs.pop("candidate_labels", None)
        if candidate_labels is None:
            raise ValueError(f"{ZERO_SHOT_TASK}: pass candidate_labels=[...] (the class names to score)")
        if isinstance(candidate_labels, str):
            candidate_labels = [candidate_labels]
        templates = kwargs.pop("prompt_templates", None)
        hypothesis = kwargs.pop("hypothesis_template", None)
        if templates is None and hypothesis is not None:
            templates = [hypothesis]
        class_prompts = build_class_prompts(candidate_labels, kwargs.pop("class_descriptions", None), templates)
        # The class embeddings are computed once per call, not once per record.
        self.model.eval()
        class_embeds = class_text_embeddings(self.model, self.processor or self.tokenizer, class_prompts)
        return super().__call__(
            ecg,
            candidate_labels=list(candidate_labels),
            class_embeddings=class_embeds,
            **kwargs,
        )

    def _sanitize_task_parameters(
        self, candidate_labels=None, class_embeddings=None, multi_label=None, function_to_apply=None, top_k=None, **kwargs
    ):
        if kwargs:
            raise ValueError(f"{ZERO_SHOT_TASK}: unexpected argument(s) {sorted(kwargs)}")
        forward = {}
        if class_embeddings is not None:
            forward["class_embeddings"] = class_embeddings
        postprocess = {}
        if candidate_labels is not None:
            postprocess["candidate_labels"] = candidate_labels
        if function_to_apply is None and multi_label is not None:
            function_to_apply = "sigmoid" if multi_label else "softmax"
        if function_to_apply is not None:
            if function_to_apply not in SCORE_FUNCTIONS:
                raise ValueError(f"{ZERO_SHOT_TASK}: function_to_apply must be one of {SCORE_FUNCTIONS}, got {function_to_apply!r}")
            postprocess["function_to_apply"] = function_to_apply
        if top_k is not None:
            postprocess["top_k"] = _check_top_k(top_k, ZERO_SHOT_TASK)
        return {}, forward, postprocess

    def _forward_windows(self, model_inputs, class_embeddings=None):
        if class_embeddings is None:
            raise ValueError(f"{ZERO_SHOT_TASK}: call the pipeline with candidate_labels=[...]")
        cosine, scale = ecg_text_cosine(self.model, model_inputs, class_embeddings)
        return {"cosine": cosine, "logit_scale": torch.full((cosine.shape[0],), float(scale))}

    def postprocess(self, model_outputs, candidate_labels=None, function_to_apply="softmax", top_k=None, aggregate="mean"):
        scale = float(model_outputs[0]["logit_scale"].reshape(-1)[0])
        scores = apply_score_function(self._windows(model_outputs, "cosine"), scale, function_to_apply)
        return ranked_labels(aggregate_windows(scores, aggregate), candidate_labels, top_k)


def _check_top_k(top_k, task: str) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"{task}: top_k must be a positive int, got {top_k!r}")
    return top_k


def ranked_labels(scores: torch.Tensor, labels: Sequence[str], top_k: int | None = None, extra=None) -> list[dict[str, Any]]:
    """``[{"label", "score"}, ...]`` best first (the first ``top_k``); ``extra(index, score)`` adds keys."""
    ranked = sorted(enumerate(scores.tolist()), key=lambda pair: -pair[1])
    if top_k is not None:
        ranked = ranked[:top_k]
    return [{"label": labels[i], "score": float(score), **(extra(i, score) if extra else {})} for i, score in ranked]


# --------------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------------


EMBEDDINGS = ("projection", "pooled")


def family_embeddings(model) -> dict[str, str]:
    """The extra ``embedding=`` choices the model's family declares (``ModelFamily.embeddings``:
    name -> attribute of the ECG encoder's output), e.g. MELP's ``rhythm`` / ``beats`` / ``probe``."""
    from ecg_hub.modeling.registry import family_of_model_type

    family = family_of_model_type(getattr(model.config, "model_type", ""))
    return dict(family.embeddings) if family is not None else {}


def resolve_embedding(model, embedding: str | None = None) -> str:
    """The embedding kind for ``model``: ``embedding`` checked, or the default (``"projection"``
    when the model has ``get_ecg_features``, else ``"pooled"``). Besides ``projection`` / ``pooled``,
    a family may declare more (:func:`family_embeddings`)."""
    if embedding is None:
        return "projection" if hasattr(model, "get_ecg_features") else "pooled"
    declared = family_embeddings(model)
    if embedding in declared and embedding not in EMBEDDINGS:
        return embedding
    if embedding not in EMBEDDINGS:
        choices = ", ".join(repr(name) for name in (*EMBEDDINGS, *declared))
        raise ValueError(
            f"{FEATURE_EXTRACTION_TASK}: embedding must be one of {choices}, got {embedding!r}"
        )
    if embedding == "projection" and not hasattr(model, "get_ecg_features"):
        raise ValueError(
            f"{FEATURE_EXTRACTION_TASK}: embedding='projection' needs an ECG-text model; "
            f"{type(model).__name__} has no get_ecg_features()"
        )
    return embedding


def ecg_encoder(model):
    """The ECG encoder of ``model`` whose ``pooler_output`` is the pooled feature."""
    encoder = getattr(model, "ecg_encoder", None)
    if encoder is not None:
        return encoder
    base = getattr(model, "base_model", None)
    return base if base is not None else model


def ecg_embeddings(
    model, inputs: Mapping[str, torch.Tensor], embedding: str | None = None, normalize: bool | None = None
) -> torch.Tensor:
    """``(batch, dim)`` embeddings of the ECGs of ``inputs`` (the feature extractor's output), as
    the ``ecg-feature-extraction`` pipeline computes them (see its ``embedding`` / ``normalize``).
    Shared by the pipeline (one record) and ``ecg_hub.batch_inference`` (batches)."""
    embedding = resolve_embedding(model, embedding)
    inputs = dict(inputs)
    if embedding == "projection":
        if "attention_mask" in inputs:
            inputs["ecg_attention_mask"] = inputs.pop("attention_mask")
        vector = _embed(model.get_ecg_features, inputs)
    elif embedding == "pooled":
        vector = _embed(ecg_encoder(model).forward, inputs)
    else:  # declared by the model's family: an attribute of the ECG encoder's output
        forward = ecg_encoder(model).forward
        vector = getattr(forward(**accepted_kwargs(forward, inputs)), family_embeddings(model)[embedding])
    if normalize if normalize is not None else embedding == "projection":
        vector = F.normalize(vector, dim=-1)
    return vector


class EcgFeatureExtractionPipeline(EcgPipeline):
    """One embedding per ECG (``"ecg-feature-extraction"``), for retrieval, clustering or probing.

    Call arguments (and those of every :class:`EcgPipeline`: ``sampling_rate``, ``leads``,
    ``window_stride``, ``aggregate``, ``inference_dtype``):
        ecg: as the zero-shot pipeline.
        embedding: ``"projection"`` (ECG-text models: the projected, shared-space embedding from
            ``get_ecg_features``; the default when the model has it) or ``"pooled"`` (the ECG
            encoder's ``pooler_output``, e.g. ETP's 512-d probe feature; the default otherwise), or
            a choice the model's family declares (``ModelFamily.embeddings``), e.g. MELP's
            ``"rhythm"`` (mean beat embedding, 256-d), ``"beats"`` (``n_q x 256``: a list of lists
            per record) and ``"probe"`` (the linear-probe feature); these are not normalised by default.
        normalize: L2-normalise the embedding (default: ``True`` for ``"projection"``, else ``False``);
            with windows, after aggregating them.
        return_tensors: return a ``torch.Tensor`` instead of a list of floats.

    Returns:
        For one record: a list of ``dim`` floats (or a ``(dim,)`` tensor); for several, one per record.
    """

    task_name = FEATURE_EXTRACTION_TASK

    def _sanitize_task_parameters(self, embedding=None, normalize=None, return_tensors=None, **kwargs):
        if kwargs:
            raise ValueError(f"{FEATURE_EXTRACTION_TASK}: unexpected argument(s) {sorted(kwargs)}")
        forward, postprocess = {}, {}
        if embedding is not None:
            forward["embedding"] = postprocess["embedding"] = resolve_embedding(self.model, embedding)
        if normalize is not None:
            postprocess["normalize"] = bool(normalize)
        if return_tensors is not None:
            postprocess["return_tensors"] = bool(return_tensors)
        return {}, forward, postprocess

    def _forward_windows(self, model_inputs, embedding=None):
        # Unnormalised (B, dim): windows are aggregated first, then normalised (postprocess).
        return {"embedding": ecg_embeddings(self.model, model_inputs, embedding, normalize=False)}

    def postprocess(self, model_outputs, embedding=None, normalize=None, return_tensors=False, aggregate="mean"):
        vector = aggregate_windows(self._windows(model_outputs, "embedding"), aggregate)
        if normalize if normalize is not None else resolve_embedding(self.model, embedding) == "projection":
            vector = F.normalize(vector, dim=-1)
        return vector if return_tensors else vector.tolist()


# --------------------------------------------------------------------------------------------------
# Classification by a fine-tuned classifier
# --------------------------------------------------------------------------------------------------

CLASSIFICATION_TASK = "ecg-classification"

#: ``function_to_apply`` of the classification pipeline; default by ``config.problem_type``.
CLASSIFIER_FUNCTIONS = ("sigmoid", "softmax", "none")


def classifier_labels(model, where: str | None = None) -> tuple[str, list[str]]:
    """``(problem_type, class names in logit order)`` of a fine-tuned ``...ForSequenceClassification``,
    checked: ``problem_type`` is multi- or single-label, ``id2label`` names every logit."""
    where = where or getattr(model, "name_or_path", "") or type(model).__name__
    config = model.config
    problem_type = config.problem_type
    if problem_type not in ("multi_label_classification", "single_label_classification"):
        raise ValueError(
            f"model {where!r}: config.problem_type is {problem_type!r}; expected "
            "'multi_label_classification' (sigmoid) or 'single_label_classification' (softmax)"
        )
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    if sorted(id2label) != list(range(config.num_labels)):
        raise ValueError(f"model {where!r}: config.id2label has ids {sorted(id2label)}; expected 0..{config.num_labels - 1}")
    return problem_type, [str(id2label[i]) for i in range(config.num_labels)]


def classifier_thresholds(model, class_names: Sequence[str]) -> list[float]:
    """Per-class decision thresholds: those fine-tuning tuned on validation and saved in
    ``config.classification_thresholds`` (``{label: threshold}``), else 0.5 for every class."""
    saved = getattr(model.config, "classification_thresholds", None) or {}
    return [float(saved.get(name, 0.5)) for name in class_names]


class EcgClassificationPipeline(EcgPipeline):
    """Classify ECGs with a fine-tuned classifier (``"ecg-classification"``), e.g.
    ``EcgJepaForSequenceClassification`` saved by ``ecg-hub finetune``.

    >>> clf = pipeline("ecg-classification", model="runs/finetune/best")
    >>> clf("records500/00000/00001_hr", top_k=2)
    [{'label': 'NORM', 'score': 0.93, 'positive': True}, {'label': 'MI', 'score': 0.04, 'positive': False}]

    Call arguments (and those of every :class:`EcgPipeline`: ``sampling_rate``, ``leads``,
    ``window_stride``, ``aggregate`` (``"max"`` for detection), ``inference_dtype``):
        function_to_apply: ``"sigmoid"`` (default for ``multi_label_classification``),
            ``"softmax"`` (default for ``single_label_classification``) or ``"none"`` (logits).
        top_k: keep the ``top_k`` best classes (default: all).

    Returns:
        For one record: ``[{"label", "score"}, ...]`` best first, label names from
        ``config.id2label``; multi-label models add ``"positive"``: ``score >= `` the class's
        threshold (tuned on validation by fine-tuning when it saved them, else 0.5). For several
        records: one such list per record, in input order.
    """

    task_name = CLASSIFICATION_TASK

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        saved = list(getattr(self.model.config, "architectures", None) or [type(self.model).__name__])
        if not type(self.model).__name__.endswith("ForSequenceClassification") or not any(
            name.endswith("ForSequenceClassification") for name in saved
        ):
            # A checkpoint of an encoder would load with a random head: refuse it rather than guess.
            raise ValueError(
                f"{CLASSIFICATION_TASK} needs a fine-tuned ...ForSequenceClassification; the checkpoint holds "
                f"{saved} (for an ECG-text model use zero-shot-ecg-classification, for an encoder ecg-hub finetune)"
            )
        self.problem_type, self.class_names = classifier_labels(self.model)
        self.thresholds = classifier_thresholds(self.model, self.class_names)

    def _sanitize_task_parameters(self, function_to_apply=None, top_k=None, **kwargs):
        if kwargs:
            raise ValueError(f"{CLASSIFICATION_TASK}: unexpected argument(s) {sorted(kwargs)}")
        postprocess = {}
        if function_to_apply is not None:
            if function_to_apply not in CLASSIFIER_FUNCTIONS:
                raise ValueError(
                    f"{CLASSIFICATION_TASK}: function_to_apply must be one of {CLASSIFIER_FUNCTIONS}, got {function_to_apply!r}"
                )
            postprocess["function_to_apply"] = function_to_apply
        if top_k is not None:
            postprocess["top_k"] = _check_top_k(top_k, CLASSIFICATION_TASK)
        return {}, {}, postprocess

    def _forward_windows(self, model_inputs):
        return {"logits": self.model(**accepted_kwargs(self.model.forward, model_inputs)).logits}

    def postprocess(self, model_outputs, function_to_apply=None, top_k=None, aggregate="mean"):
        logits = self._windows(model_outputs, "logits")
        if function_to_apply is None:
            function_to_apply = "sigmoid" if self.problem_type == "multi_label_classification" else "softmax"
        if function_to_apply == "sigmoid":
            scores = torch.sigmoid(logits)
        elif function_to_apply == "softmax":
            scores = logits.softmax(-1)
        else:
            scores = logits
        scores = aggregate_windows(scores, aggregate)
        extra = None
        if self.problem_type == "multi_label_classification" and function_to_apply == "sigmoid":
            def extra(index, score):
                return {"positive": bool(score >= self.thresholds[index])}
        return ranked_labels(scores, self.class_names, top_k, extra)


# --------------------------------------------------------------------------------------------------
# Report generation by an ECG-conditioned text decoder
# --------------------------------------------------------------------------------------------------

REPORT_GENERATION_TASK = "ecg-report-generation"


class EcgReportGenerationPipeline(EcgPipeline):
    """Write a report for each ECG (``"ecg-report-generation"``) with a model that generates text
    from an ECG, e.g. ``MelpForConditionalGeneration`` (loaded by ``AutoModelForMultimodalLM`` from
    a MELP checkpoint and its processor).

    >>> writer = pipeline("ecg-report-generation", model="path/to/melp")
    >>> writer(signal, sampling_rate=500, leads=[...], max_new_tokens=64)
    [{'generated_text': 'sinus rhythm. normal ecg.'}]

    Call arguments (and those of every :class:`EcgPipeline`: ``sampling_rate``, ``leads``,
    ``window_stride``, ``inference_dtype``):
        max_new_tokens: tokens to generate at most (default: the model's generation config).
        generate_kwargs: more ``model.generate`` arguments (``num_beams``, ``do_sample``, ...).
        skip_special_tokens: drop ``[BOS]``, ``[SEP]`` and padding when decoding (default ``True``).

    Returns:
        For one record: ``[{"generated_text": str}]``, one entry per window (one without
        ``window_stride``); ``aggregate`` does not apply to text. For several records: one such
        list per record, in input order. The text equals ``processor.batch_decode(model.generate(...))``.
    """

    task_name = REPORT_GENERATION_TASK
    _load_processor = True
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not (hasattr(self.model, "generate") and self.model.can_generate()):
            raise ValueError(f"{REPORT_GENERATION_TASK} needs a model that generates text; {type(self.model).__name__} does not")
        if self.feature_extractor is None or self.tokenizer is None:
            raise ValueError(f"{REPORT_GENERATION_TASK} needs the model's processor (feature extractor + tokenizer)")

    def _sanitize_task_parameters(self, max_new_tokens=None, generate_kwargs=None, skip_special_tokens=None, **kwargs):
        if kwargs:
            raise ValueError(f"{REPORT_GENERATION_TASK}: unexpected argument(s) {sorted(kwargs)}")
        forward, postprocess = {}, {}
        if generate_kwargs is not None or max_new_tokens is not None:
            forward["generate_kwargs"] = dict(generate_kwargs or {})
            if max_new_tokens is not None:
                if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                    raise ValueError(f"{REPORT_GENERATION_TASK}: max_new_tokens must be a positive int, got {max_new_tokens!r}")
                forward["generate_kwargs"]["max_new_tokens"] = max_new_tokens
        if skip_special_tokens is not None:
            postprocess["skip_special_tokens"] = bool(skip_special_tokens)
        return {}, forward, postprocess

    def _forward(self, model_inputs, autocast_dtype=None, generate_kwargs=None):
        is_last = model_inputs.pop("is_last")
        inputs = dict(model_inputs)
        if "attention_mask" in inputs:  # the ECG's time mask; the text's masks are the model's own
            inputs["ecg_attention_mask"] = inputs.pop("attention_mask")
        with self._autocast(autocast_dtype):
            generated = self.model.generate(**inputs, **(generate_kwargs or {}))
        return {"generated_ids": generated, "is_last": is_last}

    def postprocess(self, model_outputs, skip_special_tokens=True, aggregate=None):
        ids = [row for output in model_outputs for row in output["generated_ids"]]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens)
        return [{"generated_text": text} for text in texts]


# --------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------


def register_pipelines() -> None:
    """Register ``zero-shot-ecg-classification``, ``ecg-feature-extraction``, ``ecg-classification``
    and ``ecg-report-generation`` with ``transformers.pipeline``.

    Idempotent; ``import ecg_hub`` calls it.
    """
    supported = PIPELINE_REGISTRY.supported_tasks
    if supported.get(ZERO_SHOT_TASK, {}).get("impl") is not ZeroShotEcgClassificationPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            ZERO_SHOT_TASK, pipeline_class=ZeroShotEcgClassificationPipeline, pt_model=AutoModel, type="multimodal"
        )
    if supported.get(FEATURE_EXTRACTION_TASK, {}).get("impl") is not EcgFeatureExtractionPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            FEATURE_EXTRACTION_TASK, pipeline_class=EcgFeatureExtractionPipeline, pt_model=AutoModel, type="multimodal"
        )
    if supported.get(CLASSIFICATION_TASK, {}).get("impl") is not EcgClassificationPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            CLASSIFICATION_TASK,
            pipeline_class=EcgClassificationPipeline,
            pt_model=AutoModelForSequenceClassification,
            type="multimodal",
        )
    if supported.get(REPORT_GENERATION_TASK, {}).get("impl") is not EcgReportGenerationPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            REPORT_GENERATION_TASK,
            pipeline_class=EcgReportGenerationPipeline,
            pt_model=AutoModelForMultimodalLM,
            type="multimodal",
        )


__all__ = [
    "CLASSIFICATION_TASK",
    "DEFAULT_PROMPT_TEMPLATES",
    "EMBEDDINGS",
    "REPORT_GENERATION_TASK",
    "WINDOW_AGGREGATES",
    "EcgClassificationPipeline",
    "EcgFeatureExtractionPipeline",
    "EcgPipeline",
    "EcgReportGenerationPipeline",
    "ZeroShotEcgClassificationPipeline",
    "aggregate_windows",
    "apply_score_function",
    "build_class_prompts",
    "class_text_embeddings",
    "classifier_labels",
    "classifier_thresholds",
    "ecg_embeddings",
    "ecg_encoder",
    "ecg_text_cosine",
    "family_embeddings",
    "ranked_labels",
    "read_record_input",
    "register_pipelines",
    "resolve_embedding",
]
