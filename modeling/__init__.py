"""ecg-hub model code: configs, models, feature extractor and processors.

This package imports torch, transformers, numpy and scipy only (never the rest of ``ecg_hub``), so
each family's files can also be published as Hub remote code.
"""

from .configuration_ecg_jepa import EcgJepaConfig
from .configuration_ecg_resnet import EcgResNetConfig
from .configuration_etp import EtpConfig
from .feature_extraction_ecg import EcgFeatureExtractor
from .leads import STANDARD_LEADS, canonical_lead_name, canonicalize_leads, derive_limb_leads
from .modeling_ecg_jepa import (
    EcgJepaForPreTraining,
    EcgJepaForSequenceClassification,
    EcgJepaModel,
    EcgJepaPreTrainedModel,
)
from .modeling_ecg_resnet import EcgResNetForSequenceClassification, EcgResNetModel
from .modeling_etp import EtpForSequenceClassification, EtpModel
from .processing_etp import EtpProcessor

__all__ = [
    "STANDARD_LEADS",
    "EcgFeatureExtractor",
    "EcgJepaConfig",
    "EcgJepaForPreTraining",
    "EcgJepaForSequenceClassification",
    "EcgJepaModel",
    "EcgJepaPreTrainedModel",
    "EcgResNetConfig",
    "EcgResNetForSequenceClassification",
    "EcgResNetModel",
    "EtpConfig",
    "EtpForSequenceClassification",
    "EtpModel",
    "EtpProcessor",
    "canonical_lead_name",
    "canonicalize_leads",
    "derive_limb_leads",
    "register_all",
]

_REGISTERED = False


def register_all() -> None:
    """Register every ecg-hub config, model, feature extractor and processor with the Auto classes.

    Idempotent; ``import ecg_hub`` calls it, so ``AutoModel.from_pretrained`` works without
    ``trust_remote_code``.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoModel,
        AutoModelForPreTraining,
        AutoModelForSequenceClassification,
        AutoProcessor,
    )

    # ECG-JEPA: encoder, JEPA pretraining, classifier; the ECG-JEPA feature-extractor preset.
    AutoConfig.register("ecg_jepa", EcgJepaConfig, exist_ok=True)
    AutoModel.register(EcgJepaConfig, EcgJepaModel, exist_ok=True)
    AutoModelForPreTraining.register(EcgJepaConfig, EcgJepaForPreTraining, exist_ok=True)
    AutoModelForSequenceClassification.register(EcgJepaConfig, EcgJepaForSequenceClassification, exist_ok=True)
    AutoFeatureExtractor.register(EcgJepaConfig, EcgFeatureExtractor, exist_ok=True)

    # ETP: the ResNet18-1D ECG tower on its own, the ECG-text dual encoder and its processor.
    AutoConfig.register("ecg_resnet", EcgResNetConfig, exist_ok=True)
    AutoModel.register(EcgResNetConfig, EcgResNetModel, exist_ok=True)
    AutoModelForSequenceClassification.register(EcgResNetConfig, EcgResNetForSequenceClassification, exist_ok=True)
    AutoFeatureExtractor.register(EcgResNetConfig, EcgFeatureExtractor, exist_ok=True)
    AutoConfig.register("etp", EtpConfig, exist_ok=True)
    AutoModel.register(EtpConfig, EtpModel, exist_ok=True)
    AutoModelForSequenceClassification.register(EtpConfig, EtpForSequenceClassification, exist_ok=True)
    AutoFeatureExtractor.register(EtpConfig, EcgFeatureExtractor, exist_ok=True)
    AutoProcessor.register(EtpConfig, EtpProcessor, exist_ok=True)
