"""Loading ecg-hub models and feature extractors: the one place fine-tuning, evaluation and recipes
build them.

- :func:`load_classification_model`: an ``AutoModelForSequenceClassification`` for a label set
  (from a checkpoint, or a config for a randomly initialised model);
- :func:`load_backbone`: a checkpoint's encoder (``AutoModel``), or the same architecture with
  random weights (the baseline a pretrained encoder must beat);
- :func:`load_feature_extractor`: the model's saved ``EcgFeatureExtractor``, or a preset;
- :data:`PROBLEM_TYPES`, :func:`check_problem_type`, :func:`label_config_kwargs`: the label-set
  fields of a classification config.

Importing any ``ecg_hub`` submodule first runs ``ecg_hub/__init__.py``, which registers the ecg-hub
classes with the ``transformers`` Auto classes, so the Auto classes below know them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from ecg_hub.modeling import EcgFeatureExtractor
from ecg_hub.modeling.heads import PROBLEM_TYPES as HEAD_PROBLEM_TYPES

__all__ = [
    "PROBLEM_TYPES",
    "check_problem_type",
    "label_config_kwargs",
    "load_backbone",
    "load_classification_model",
    "load_feature_extractor",
]

#: ``config.problem_type`` values of ecg-hub classification tasks (the heads' problem types but
#: regression): BCE on multi-hot labels, or cross-entropy on class indices (records with exactly
#: one class).
PROBLEM_TYPES = tuple(problem for problem in HEAD_PROBLEM_TYPES if problem != "regression")


def check_problem_type(problem_type: str, name: str = "problem_type") -> str:
    """``problem_type`` if it is one of :data:`PROBLEM_TYPES`, else a ``ValueError`` naming ``name``."""
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"{name}: expected one of {PROBLEM_TYPES}, got {problem_type!r}")
    return problem_type


def label_config_kwargs(class_names: Sequence[str], problem_type: str) -> dict:
    """``num_labels``, ``id2label``, ``label2id`` (both, see HF_CONVENTIONS §1) and ``problem_type``."""
    check_problem_type(problem_type)
    names = list(class_names)
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
        "problem_type": problem_type,
    }


def load_classification_model(
    pretrained: str | None = None,
    *,
    class_names: Sequence[str],
    problem_type: str = "multi_label_classification",
    config: dict | None = None,
    model_type: str | None = None,
    freeze_base_model: bool = False,
    random_init: bool = False,
    ignore_mismatched_sizes: bool = False,
    **config_overrides,
):
    """An ``AutoModelForSequenceClassification`` for ``class_names``.

    Args:
        pretrained: a folder or Hub id. A pretraining checkpoint (e.g. ``EcgJepaForPreTraining``) or
            a bare encoder loads its encoder weights; the classification head starts fresh.
        class_names: the label set's class names (sets ``num_labels``, ``id2label``, ``label2id``).
        problem_type: ``"multi_label_classification"`` or ``"single_label_classification"``.
        config: without ``pretrained``: config fields of a randomly initialised model (with
            ``model_type``), e.g. ``{"hidden_size": 192, ...}``.
        model_type: the registered ``model_type`` (``"ecg_jepa"``, ``"ecg_resnet"``, ...) for
            ``config``; may also be given inside ``config``.
        freeze_base_model: call ``model.freeze_base_model()`` (linear probing through the Trainer).
        random_init: with ``pretrained``, take only its config: the same architecture with random
            weights (the baseline a pretrained encoder must beat).
        ignore_mismatched_sizes: allow a classification checkpoint with another number of labels.
        **config_overrides: extra config fields (e.g. ``classifier_dropout=0.1``).
    """
    label_kwargs = label_config_kwargs(class_names, problem_type)
    if pretrained is not None and config:
        raise ValueError("give either pretrained=... or config=..., not both")
    if pretrained is not None and random_init:
        model_config = AutoConfig.from_pretrained(pretrained, **config_overrides, **label_kwargs)
        model = AutoModelForSequenceClassification.from_config(model_config)
    elif pretrained is not None:
        model = AutoModelForSequenceClassification.from_pretrained(
            pretrained, ignore_mismatched_sizes=ignore_mismatched_sizes, **label_kwargs, **config_overrides
        )
    else:
        fields = dict(config or {})
        model_type = fields.pop("model_type", model_type)
        if model_type is None:
            raise ValueError("a randomly initialised model needs model_type (e.g. 'ecg_jepa') or pretrained=...")
        model_config = AutoConfig.for_model(model_type, **fields, **config_overrides, **label_kwargs)
        model = AutoModelForSequenceClassification.from_config(model_config)
    if freeze_base_model:
        if not hasattr(model, "freeze_base_model"):
            raise ValueError(f"{type(model).__name__} has no freeze_base_model()")
        model.freeze_base_model()
    return model


def load_backbone(model_name_or_path: str, *, random_init: bool = False, seed: int = 0):
    """The encoder of a checkpoint (``AutoModel``), or the same architecture with random weights
    (drawn after ``torch.manual_seed(seed)``)."""
    if random_init:
        torch.manual_seed(seed)
        return AutoModel.from_config(AutoConfig.from_pretrained(model_name_or_path))
    return AutoModel.from_pretrained(model_name_or_path)


def load_feature_extractor(pretrained: str | None = None, *, preset: str | None = None, **overrides):
    """The model's ``EcgFeatureExtractor``: saved with ``pretrained`` (``preprocessor_config.json``),
    else the named ``preset`` (``"ecg_jepa"``, ``"merl"``, ...), with field ``overrides``."""
    if pretrained is not None and preset is None:
        try:
            extractor = EcgFeatureExtractor.from_pretrained(pretrained)
        except OSError as error:
            raise ValueError(
                f"{pretrained!r} has no preprocessor_config.json; name a feature-extractor preset instead"
            ) from error
        for key, value in overrides.items():
            setattr(extractor, key, value)
        return extractor
    if preset is None:
        raise ValueError("load_feature_extractor needs pretrained=... (with preprocessor_config.json) or preset=...")
    return EcgFeatureExtractor.from_preset(preset, **overrides)
