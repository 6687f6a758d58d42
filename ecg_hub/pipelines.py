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

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

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


def _ecg_inputs(feature_extractor, ecg: Any, sampling_rate, leads, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One record through the model's feature extractor -> ``input_values`` (1, L, T) + masks."""
    if feature_extractor is None:
        raise ValueError("this pipeline needs the model's EcgFeatureExtractor (save it with the checkpoint)")
    features = feature_extractor(ecg, sampling_rate=sampling_rate, leads=leads, return_tensors="pt")
    inputs = {"input_values": features["input_values"].to(dtype), "lead_mask": features["lead_mask"]}
    if "attention_mask" in features:
        inputs["attention_mask"] = features["attention_mask"]
    return inputs


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
# Zero-shot classification
# --------------------------------------------------------------------------------------------------


class ZeroShotEcgClassificationPipeline(Pipeline):
    """Classify ECGs into classes given only as text (``"zero-shot-ecg-classification"``).

    Works with any ECG-text model exposing ``get_ecg_features`` / ``get_text_features`` (ETP, MELP)
    and its processor (``EtpProcessor``: feature extractor + tokenizer).

    Call arguments:
        ecg: see the module docstring (one record, a row, a list, a batch array, a Dataset).
        sampling_rate, leads: the recording's rate (Hz) and lead names, unless rows carry them.
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
        For one record: a list of ``{"label": str, "score": float}``, **sorted by score, best first**.
        For several: one such list per record, in input order.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is not None:
            self.feature_extractor = self.feature_extractor or getattr(self.processor, "feature_extractor", None)
            self.tokenizer = self.tokenizer or getattr(self.processor, "tokenizer", None)
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
            _split_batch_input(ecg),
            candidate_labels=list(candidate_labels),
            class_embeddings=class_embeds,
            **kwargs,
        )

    def _sanitize_parameters(
        self,
        sampling_rate=None,
        leads=None,
        candidate_labels=None,
        class_embeddings=None,
        multi_label=None,
        function_to_apply=None,
        top_k=None,
        **kwargs,
    ):
        if kwargs:
            raise ValueError(f"{ZERO_SHOT_TASK}: unexpected argument(s) {sorted(kwargs)}")
        preprocess = {}
        if sampling_rate is not None:
            preprocess["sampling_rate"] = sampling_rate
        if leads is not None:
            preprocess["leads"] = leads
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
            if not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"{ZERO_SHOT_TASK}: top_k must be a positive int, got {top_k!r}")
            postprocess["top_k"] = top_k
        return preprocess, forward, postprocess

    def preprocess(self, ecg, sampling_rate=None, leads=None):
        return _ecg_inputs(self.feature_extractor, ecg, sampling_rate, leads, self.dtype or torch.float32)

    def _forward(self, model_inputs, class_embeddings=None):
        if class_embeddings is None:
            raise ValueError(f"{ZERO_SHOT_TASK}: call the pipeline with candidate_labels=[...]")
        cosine, scale = ecg_text_cosine(self.model, model_inputs, class_embeddings)
        # Every output keeps the batch dimension (the scale too, as a (B,) tensor): with batch_size > 1
        # transformers collates records into one forward and slices each output along dim 0 again.
        return {"cosine": cosine, "logit_scale": torch.full((cosine.shape[0],), float(scale))}

    def postprocess(self, model_outputs, candidate_labels=None, function_to_apply="softmax", top_k=None):
        cosine = model_outputs["cosine"][:1]
        scale = float(model_outputs["logit_scale"].reshape(-1)[0])
        scores = apply_score_function(cosine, scale, function_to_apply)[0]
        ranked = sorted(zip(scores.tolist(), candidate_labels), key=lambda pair: -pair[0])
        if top_k is not None:
            ranked = ranked[:top_k]
        return [{"label": label, "score": float(score)} for score, label in ranked]


# --------------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------------


EMBEDDINGS = ("projection", "pooled")


def resolve_embedding(model, embedding: str | None = None) -> str:
    """The embedding kind for ``model``: ``embedding`` checked, or the default (``"projection"``
    when the model has ``get_ecg_features``, else ``"pooled"``)."""
    if embedding is None:
        return "projection" if hasattr(model, "get_ecg_features") else "pooled"
    if embedding not in EMBEDDINGS:
        raise ValueError(
            f"{FEATURE_EXTRACTION_TASK}: embedding must be 'projection' or 'pooled', got {embedding!r}"
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
    else:
        vector = _embed(ecg_encoder(model).forward, inputs)
    if normalize if normalize is not None else embedding == "projection":
        vector = F.normalize(vector, dim=-1)
    return vector


class EcgFeatureExtractionPipeline(Pipeline):
    """One embedding per ECG (``"ecg-feature-extraction"``), for retrieval, clustering or probing.

    Call arguments:
        ecg, sampling_rate, leads: as the zero-shot pipeline.
        embedding: ``"projection"`` (ECG-text models: the projected, shared-space embedding from
            ``get_ecg_features``; the default when the model has it) or ``"pooled"`` (the ECG
            encoder's ``pooler_output``, e.g. ETP's 512-d probe feature; the default otherwise).
        normalize: L2-normalise the embedding (default: ``True`` for ``"projection"``, else ``False``).
        return_tensors: return a ``torch.Tensor`` instead of a list of floats.

    Returns:
        For one record: a list of ``dim`` floats (or a ``(dim,)`` tensor); for several, one per record.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.feature_extractor is None and self.processor is not None:
            self.feature_extractor = getattr(self.processor, "feature_extractor", None)

    def __call__(self, ecg: Any, **kwargs):
        return super().__call__(_split_batch_input(ecg), **kwargs)

    def _sanitize_parameters(self, sampling_rate=None, leads=None, embedding=None, normalize=None, return_tensors=None, **kwargs):
        if kwargs:
            raise ValueError(f"{FEATURE_EXTRACTION_TASK}: unexpected argument(s) {sorted(kwargs)}")
        preprocess = {}
        if sampling_rate is not None:
            preprocess["sampling_rate"] = sampling_rate
        if leads is not None:
            preprocess["leads"] = leads
        forward = {}
        if embedding is not None:
            forward["embedding"] = resolve_embedding(self.model, embedding)
        if normalize is not None:
            forward["normalize"] = bool(normalize)
        postprocess = {}
        if return_tensors is not None:
            postprocess["return_tensors"] = bool(return_tensors)
        return preprocess, forward, postprocess

    def preprocess(self, ecg, sampling_rate=None, leads=None):
        return _ecg_inputs(self.feature_extractor, ecg, sampling_rate, leads, self.dtype or torch.float32)

    def _encoder(self):
        """The ECG encoder whose ``pooler_output`` is the pooled feature."""
        return ecg_encoder(self.model)

    def _forward(self, model_inputs, embedding=None, normalize=None):
        # (B, dim): the batch dimension stays, so batch_size > 1 unbatches into one row per record.
        return {"embedding": ecg_embeddings(self.model, model_inputs, embedding, normalize)}

    def postprocess(self, model_outputs, return_tensors=False):
        vector = model_outputs["embedding"][0].float()
        return vector if return_tensors else vector.tolist()


# --------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------


def register_pipelines() -> None:
    """Register ``zero-shot-ecg-classification`` and ``ecg-feature-extraction`` with ``transformers.pipeline``.

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


__all__ = [
    "DEFAULT_PROMPT_TEMPLATES",
    "EMBEDDINGS",
    "EcgFeatureExtractionPipeline",
    "ZeroShotEcgClassificationPipeline",
    "apply_score_function",
    "build_class_prompts",
    "class_text_embeddings",
    "ecg_embeddings",
    "ecg_encoder",
    "ecg_text_cosine",
    "register_pipelines",
    "resolve_embedding",
]
