"""The family registry: every fact about a model family in one declaration, next to its code.

Each family declares one `ModelFamily` as ``FAMILY`` in its ``configuration_<family>.py`` (as timm
keeps ``default_cfgs`` beside the architecture): its model types with their config class and the
model class per Auto class, the processor if it has one, its feature-extractor input presets, its
model-card template, the pipelines it serves and its entries in the checkpoint catalogue. What
ecg-hub derives from it:

* ``import ecg_hub`` registration of every config, model, feature extractor and processor with the
  transformers Auto classes (`register_families`);
* ``EcgFeatureExtractor.from_preset`` (`input_preset`);
* the publisher's family lookup, model-card template and ``auto_map`` classes (``ecg_hub.hub``);
* the checkpoint catalogue (``ecg_hub.list_pretrained_checkpoints``, ``ecg-hub download --list``);
* the shared model test battery.

A new family writes its configuration/modeling files with a ``FAMILY`` declaration and adds its
configuration module to :data:`FAMILY_MODULES`; nothing else in ecg-hub names it.

Class references are ``"module.ClassName"`` strings relative to this package, so reading the
registry imports no model code. This module imports the standard library only; family modules are
loaded with ``importlib`` when first asked for, and a family whose files are absent (a Hub
remote-code bundle holds one family's files) is skipped.
"""

import importlib
from dataclasses import dataclass, field
from typing import Any

#: The configuration modules that declare a ``FAMILY``, in catalogue order.
FAMILY_MODULES: tuple[str, ...] = (
    "configuration_ecg_jepa",
    "configuration_etp",
    "configuration_ecg2tok",
    "configuration_cardiology_text",
    "configuration_melp",
)

#: Family kinds: ``ecg`` (ecg-hub's own model types, registered with the Auto classes, remote code on
#: the Hub) and ``text`` (a text model of a standard transformers architecture that ecg-hub trains and
#: publishes, e.g. a masked-LM BERT: no model types of its own, no remote code).
FAMILY_KINDS = ("ecg", "text")

#: Auto classes a family may map model classes to (``ModelType.models`` keys).
AUTO_MODEL_CLASSES: tuple[str, ...] = (
    "AutoModel",
    "AutoModelForPreTraining",
    "AutoModelForSequenceClassification",
    "AutoModelForMaskedLM",
    # ECG-conditioned text generation (MELP's report captioning: ``MelpForConditionalGeneration``).
    "AutoModelForMultimodalLM",
)

#: Catalogue statuses: ``published`` (weights on the Hub), ``planned`` (the name the project will
#: publish under; nothing uploaded yet).
CHECKPOINT_STATUSES = ("published", "planned")


@dataclass(frozen=True)
class ModelType:
    """One ``config.model_type`` of a family.

    Attributes:
        config: ``"module.Class"`` of its ``PreTrainedConfig``.
        models: Auto class name -> ``"module.Class"`` of the model registered for it.
        processor: ``"module.Class"`` of its ``ProcessorMixin`` (ECG-text models), else None; the
            ``EcgFeatureExtractor`` is registered for every model type.
    """

    config: str
    models: dict[str, str]
    processor: str | None = None


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint of the catalogue.

    Attributes:
        repo_id: Hub repo id (``"ecg-hub/ecg-jepa-multiblock"``).
        architecture: the class ``from_pretrained`` builds from it.
        input_preset: the `input_preset` name of the ECG input it expects (None for a text model).
        description: one line about what it is.
        status: ``published`` or ``planned`` (see :data:`CHECKPOINT_STATUSES`).
    """

    repo_id: str
    architecture: str
    input_preset: str | None
    description: str
    status: str = "planned"


@dataclass(frozen=True)
class ModelFamily:
    """Everything ecg-hub knows about one model family (see the module docstring).

    Attributes:
        name: family id (``"ecg_jepa"``), also the model-card template's stem by default.
        title: display name (``"ECG-JEPA"``).
        paper: citation in one line.
        model_types: ``model_type`` -> `ModelType`; the first is the family's main model type.
        input_presets: preset name -> `EcgFeatureExtractor` keyword arguments.
        model_card: template file name in ``model_cards/``.
        pipelines: ``transformers.pipeline`` tasks its models serve.
        checkpoints: its catalogue entries.
        kind: ``ecg`` or ``text`` (see :data:`FAMILY_KINDS`).
        embeddings: extra ``embedding=`` choices of the ``ecg-feature-extraction`` pipeline beyond
            ``projection`` / ``pooled``: name -> the attribute of the ECG encoder's output that holds
            it (MELP: ``{"rhythm": "rhythm_embeds", "beats": "beat_embeds", "probe": "pooler_output"}``).
    """

    name: str
    title: str
    paper: str
    model_types: dict[str, ModelType]
    input_presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_card: str = ""
    pipelines: tuple[str, ...] = ()
    checkpoints: tuple[CheckpointEntry, ...] = ()
    kind: str = "ecg"
    embeddings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in FAMILY_KINDS:
            raise ValueError(f"family {self.name}: kind {self.kind!r} is not one of {FAMILY_KINDS}")
        if self.kind == "text" and (self.model_types or self.input_presets):
            raise ValueError(f"family {self.name}: a text family uses transformers' own model types and no ECG input")
        for entry in self.checkpoints:
            if entry.status not in CHECKPOINT_STATUSES:
                raise ValueError(f"family {self.name}: checkpoint {entry.repo_id} has status {entry.status!r}")
            if (entry.input_preset is None) != (self.kind == "text"):
                raise ValueError(f"family {self.name}: checkpoint {entry.repo_id} needs an input preset iff it is an ECG model")
        for model_type, spec in self.model_types.items():
            unknown = set(spec.models) - set(AUTO_MODEL_CLASSES)
            if unknown:
                raise ValueError(f"family {self.name}: model type {model_type} maps unknown Auto classes {unknown}")
        if not self.model_card:
            object.__setattr__(self, "model_card", f"{self.name}.md")


_FAMILIES: dict[str, ModelFamily] | None = None


def families() -> dict[str, ModelFamily]:
    """Family name -> `ModelFamily`, for every family whose files are present."""
    global _FAMILIES
    if _FAMILIES is None:
        found: dict[str, ModelFamily] = {}
        for module_name in FAMILY_MODULES:
            try:
                module = importlib.import_module(f"{__package__}.{module_name}")
            except ImportError:  # a remote-code bundle holds one family's files only
                continue
            family = module.FAMILY
            if family.name in found:
                raise ValueError(f"model family {family.name!r} is declared twice")
            found[family.name] = family
        _FAMILIES = found
    return _FAMILIES


def get_family(name: str) -> ModelFamily:
    """The family called ``name``; a ValueError lists the known ones."""
    known = families()
    if name not in known:
        raise ValueError(f"unknown model family {name!r}; known families: {sorted(known)}")
    return known[name]


def text_family() -> ModelFamily:
    """The family of the project's text model (the one family of kind ``text``)."""
    found = [family for family in families().values() if family.kind == "text"]
    if len(found) != 1:
        raise ValueError(f"expected one text family, found {[f.name for f in found]}")
    return found[0]


def family_of_model_type(model_type: str) -> ModelFamily | None:
    """The family that declares ``model_type``, or None."""
    return next((f for f in families().values() if model_type in f.model_types), None)


def input_presets() -> dict[str, dict[str, Any]]:
    """Every family's feature-extractor presets by name (a preset name belongs to one family)."""
    presets: dict[str, dict[str, Any]] = {}
    for family in families().values():
        for name, values in family.input_presets.items():
            if name in presets:
                raise ValueError(f"input preset {name!r} is declared by two families")
            presets[name] = values
    return presets


def input_preset(name: str) -> dict[str, Any]:
    """A copy of the keyword arguments of preset ``name``; a ValueError lists the known presets."""
    presets = input_presets()
    if name not in presets:
        raise ValueError(f"unknown feature-extractor preset {name!r}; known presets: {sorted(presets)}")
    return {key: list(value) if isinstance(value, list) else value for key, value in presets[name].items()}


def resolve_class(reference: str):
    """The class of a ``"module.ClassName"`` reference relative to this package."""
    module_name, _, class_name = reference.rpartition(".")
    return getattr(importlib.import_module(f"{__package__}.{module_name}"), class_name)


def register_families() -> None:
    """Register every family's configs, models, feature extractor and processors with the transformers
    Auto classes (idempotent: ``exist_ok=True``), and each class *for* its Auto class
    (``register_for_auto_class``), so that a plain ``save_pretrained`` / ``push_to_hub`` /
    ``Trainer(push_to_hub=True)`` folder holds the code files and ``auto_map`` that load it with
    ``trust_remote_code=True`` where ecg-hub is not installed (see :class:`RemoteCodeConfigMixin`)."""
    import transformers

    from .feature_extraction_ecg import EcgFeatureExtractor

    EcgFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
    for family in families().values():
        for model_type, spec in family.model_types.items():
            config_class = resolve_class(spec.config)
            transformers.AutoConfig.register(model_type, config_class, exist_ok=True)
            config_class.register_for_auto_class("AutoConfig")
            for auto_name, reference in spec.models.items():
                model_class = resolve_class(reference)
                getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)
                model_class.register_for_auto_class(auto_name)
            transformers.AutoFeatureExtractor.register(config_class, EcgFeatureExtractor, exist_ok=True)
            if spec.processor is not None:
                processor_class = resolve_class(spec.processor)
                transformers.AutoProcessor.register(config_class, processor_class, exist_ok=True)
                processor_class.register_for_auto_class("AutoProcessor")


def complete_auto_map(config_class: type, auto_map: dict[str, Any]) -> dict[str, Any]:
    """``auto_map`` as a saved ecg-hub config needs it to load by every Auto class of its family:

    - transformers writes a ``[slow, fast]`` pair for any class whose name contains "Tokenizer"
      (it takes it for a text tokenizer), so ECG2TOK's ``Ecg2TokTokenizerConfig`` / ``...Model``
      would come out as lists that ``AutoConfig`` cannot read; only ``AutoTokenizer`` takes a pair;
    - saving one model class names only its own Auto class; the family's other heads live in the
      same copied modeling file, so they are added (``AutoModel`` for a classifier's folder, say).
    """
    completed = {
        name: next(item for item in reference if item is not None)
        if isinstance(reference, (list, tuple)) and name != "AutoTokenizer"
        else reference
        for name, reference in auto_map.items()
    }
    saved_modules = {
        reference.split(".")[0]
        for name, reference in completed.items()
        if name in AUTO_MODEL_CLASSES and isinstance(reference, str)
    }
    if not saved_modules:
        return completed
    import transformers

    for auto_name in AUTO_MODEL_CLASSES:
        try:
            model_class = getattr(transformers, auto_name)._model_mapping[config_class]
        except (KeyError, ValueError):  # not registered (e.g. loaded as remote code): nothing to add
            continue
        module = model_class.__module__.rsplit(".", 1)[-1]
        if module in saved_modules:
            completed.setdefault(auto_name, f"{module}.{model_class.__name__}")
    return completed


class RemoteCodeConfigMixin:
    """Mixed into every ecg-hub config: the ``auto_map`` it saves is :func:`complete_auto_map`'s."""

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        if output.get("auto_map"):
            output["auto_map"] = complete_auto_map(type(self), output["auto_map"])
        return output


__all__ = [
    "AUTO_MODEL_CLASSES",
    "CHECKPOINT_STATUSES",
    "FAMILY_KINDS",
    "FAMILY_MODULES",
    "CheckpointEntry",
    "ModelFamily",
    "ModelType",
    "RemoteCodeConfigMixin",
    "complete_auto_map",
    "families",
    "family_of_model_type",
    "get_family",
    "input_preset",
    "input_presets",
    "register_families",
    "resolve_class",
    "text_family",
]
