"""ecg-hub: ECG foundation models as first-class Hugging Face ``transformers`` models.

Importing ``ecg_hub`` registers every ecg-hub config, model, feature extractor, processor and
pipeline with the ``transformers`` Auto classes (as the families declare them in
``ecg_hub.modeling.registry``), and every public class is importable from here:
``from ecg_hub import EcgJepaConfig, EcgJepaModel, EcgClassificationPipeline, EcgCollator``.

The model classes are imported at once (registration needs them); everything else (data, training,
evaluation, the Hub, export, saliency, the demo) is imported on first access, as transformers'
``_LazyModule`` does, so ``import ecg_hub`` costs little more than transformers' own model and
pipeline machinery (README, "Import time").
"""

import importlib
from typing import Any

from .modeling import *  # noqa: F403  (the public model classes, configs and processors)
from .modeling import __all__ as _modeling_all
from .modeling import register_all
from .version import __version__

register_all()

from .pipelines import register_pipelines  # noqa: E402

register_pipelines()

#: Public names of the library layer -> the module that defines them, imported on first access.
_LAZY_ATTRIBUTES: dict[str, str] = {
    # pipelines (registered above; the classes themselves are cheap to reach)
    "EcgPipeline": "ecg_hub.pipelines",
    "EcgClassificationPipeline": "ecg_hub.pipelines",
    "EcgFeatureExtractionPipeline": "ecg_hub.pipelines",
    "EcgReportGenerationPipeline": "ecg_hub.pipelines",
    "ZeroShotEcgClassificationPipeline": "ecg_hub.pipelines",
    # data
    "EcgCollator": "ecg_hub.data.collators",
    "EcgRecord": "ecg_hub.data.records",
    "read_record": "ecg_hub.data.records",
    "MaskedTextCollator": "ecg_hub.data.masked_text",
    "prepare_text_corpus": "ecg_hub.data.text_corpus",
    "load_text_corpus": "ecg_hub.data.text_corpus",
    "plot_ecg": "ecg_hub.data.plot",
    # many records at once
    "embed_records": "ecg_hub.batch_inference",
    "predict_records": "ecg_hub.batch_inference",
    # the Hub
    "list_checkpoints": "ecg_hub.hub",
    "list_pretrained_checkpoints": "ecg_hub.hub",
    "publish": "ecg_hub.hub",
    "download": "ecg_hub.hub",
    # explaining and exporting
    "EcgExplanation": "ecg_hub.explain",
    "export_onnx": "ecg_hub.export",
    "build_demo": "ecg_hub.demo",
    # recipes
    "load_recipe": "ecg_hub.recipe",
    "instantiate": "ecg_hub.recipe",
}


def __getattr__(name: str) -> Any:
    module = _LAZY_ATTRIBUTES.get(name)
    if module is None:
        raise AttributeError(f"module 'ecg_hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))


__all__ = [*_modeling_all, "__version__", *_LAZY_ATTRIBUTES]
