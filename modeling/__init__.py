"""ecg-hub model code: configs, models, feature extractor and processors.

This package imports torch, transformers, numpy and scipy only (never the rest of ``ecg_hub``), so
each family's files can also be published as Hub remote code.
"""

from .configuration_ecg2tok import Ecg2TokConfig, Ecg2TokTokenizerConfig
from .configuration_ecg_jepa import EcgJepaConfig
from .configuration_ecg_resnet import EcgResNetConfig
from .configuration_etp import EtpConfig
from .configuration_melp import MelpConfig, MelpDecoderConfig, MelpEcgConfig
from .feature_extraction_ecg import EcgFeatureExtractor, EcgInputReducedWarning
from .heads import PROBLEM_TYPES
from .leads import STANDARD_LEADS, canonical_lead_name, canonicalize_leads, derive_limb_leads
from .modeling_ecg2tok import (
    Ecg2TokForMaskedSignalModeling,
    Ecg2TokForSequenceClassification,
    Ecg2TokModel,
    Ecg2TokPreTrainedModel,
    Ecg2TokTokenizerModel,
)
from .modeling_ecg_jepa import (
    EcgJepaForPreTraining,
    EcgJepaForSequenceClassification,
    EcgJepaModel,
    EcgJepaPreTrainedModel,
)
from .modeling_ecg_resnet import EcgResNetForSequenceClassification, EcgResNetModel, EcgResNetPreTrainedModel
from .modeling_etp import EtpForSequenceClassification, EtpModel, EtpPreTrainedModel
from .modeling_melp import (
    MelpEcgForSequenceClassification,
    MelpEcgModel,
    MelpEcgPreTrainedModel,
    MelpForConditionalGeneration,
    MelpForSequenceClassification,
    MelpModel,
    MelpPreTrainedModel,
)
from .processing_ecg_text import EcgTextProcessor
from .processing_etp import EtpProcessor
from .processing_melp import MelpProcessor
from .registry import (
    CheckpointEntry,
    ModelFamily,
    ModelType,
    families,
    family_of_model_type,
    get_family,
    register_families,
)

__all__ = [
    "PROBLEM_TYPES",
    "STANDARD_LEADS",
    "CheckpointEntry",
    "Ecg2TokConfig",
    "Ecg2TokForMaskedSignalModeling",
    "Ecg2TokForSequenceClassification",
    "Ecg2TokModel",
    "Ecg2TokPreTrainedModel",
    "Ecg2TokTokenizerConfig",
    "Ecg2TokTokenizerModel",
    "EcgFeatureExtractor",
    "EcgInputReducedWarning",
    "EcgJepaConfig",
    "EcgJepaForPreTraining",
    "EcgJepaForSequenceClassification",
    "EcgJepaModel",
    "EcgJepaPreTrainedModel",
    "EcgResNetConfig",
    "EcgResNetForSequenceClassification",
    "EcgResNetModel",
    "EcgResNetPreTrainedModel",
    "EcgTextProcessor",
    "EtpConfig",
    "EtpForSequenceClassification",
    "EtpModel",
    "EtpPreTrainedModel",
    "EtpProcessor",
    "MelpConfig",
    "MelpDecoderConfig",
    "MelpEcgConfig",
    "MelpEcgForSequenceClassification",
    "MelpEcgModel",
    "MelpEcgPreTrainedModel",
    "MelpForConditionalGeneration",
    "MelpForSequenceClassification",
    "MelpModel",
    "MelpPreTrainedModel",
    "MelpProcessor",
    "ModelFamily",
    "ModelType",
    "canonical_lead_name",
    "canonicalize_leads",
    "derive_limb_leads",
    "families",
    "family_of_model_type",
    "get_family",
    "register_all",
]


def register_all() -> None:
    """Register every ecg-hub config, model, feature extractor and processor with the Auto classes,
    as the families declare them (``registry``). Idempotent; ``import ecg_hub`` calls it, so
    ``AutoModel.from_pretrained`` works without ``trust_remote_code``."""
    register_families()
