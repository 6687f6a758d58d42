"""ecg-hub: ECG foundation models as first-class Hugging Face ``transformers`` models.

Importing ``ecg_hub`` registers every ecg-hub config, model, feature extractor, processor and
pipeline with the ``transformers`` Auto classes (as the families declare them in
``ecg_hub.modeling.registry``), and every public model class is importable from here:
``from ecg_hub import EcgJepaConfig, EcgJepaModel``.
"""

from .modeling import *  # noqa: F403  (the public model classes, configs and processors)
from .modeling import __all__ as _modeling_all
from .modeling import register_all
from .version import __version__

register_all()

from .pipelines import register_pipelines  # noqa: E402

register_pipelines()

from .hub import list_checkpoints, list_pretrained_checkpoints  # noqa: E402

__all__ = [*_modeling_all, "__version__", "list_checkpoints", "list_pretrained_checkpoints"]
