"""ecg-hub: ECG foundation models as first-class Hugging Face ``transformers`` models.

Importing ``ecg_hub`` registers every ecg-hub config, model, feature extractor, processor and
pipeline with the ``transformers`` Auto classes.
"""

from .modeling import STANDARD_LEADS, EcgFeatureExtractor, register_all

__version__ = "0.1.0"

register_all()

from .pipelines import register_pipelines  # noqa: E402

register_pipelines()

from .hub import list_checkpoints  # noqa: E402  (standard library only at import time)

__all__ = ["STANDARD_LEADS", "EcgFeatureExtractor", "__version__", "list_checkpoints"]
