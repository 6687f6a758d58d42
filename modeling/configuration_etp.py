"""Configuration of ETP (ECG-Text Pre-training, Liu et al., ICASSP 2024): a CLIP-style ECG-report model.

ETP's own code is not public; the defaults follow MERL (same authors), see ``reference/ETP.md``:
MERL's ResNet18-1D ECG tower, a BERT-like text tower (BioClinicalBERT by default), 256-d
projections and a symmetric InfoNCE loss.

Imports torch-free transformers / huggingface_hub only (Hub remote-code bundle).
"""


import math
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_ecg_resnet import EcgResNetConfig
from .leads import MIMIC_LEADS
from .registry import CheckpointEntry, ModelFamily, ModelType, RemoteCodeConfigMixin

#: The ECG towers an ETP model can hold, by ``model_type``. Resolved here rather than through the
#: Auto registry so that Hub remote code (where ecg-hub is not installed) resolves them too. A new
#: tower adds its config here and its model to ``modeling_etp.ECG_TOWER_MODELS``.
ECG_TOWER_CONFIGS: dict[str, type[PreTrainedConfig]] = {"ecg_resnet": EcgResNetConfig}

#: The text tower users get by default (the ETP paper's text encoder). Its config is built from the
#: numbers below, so ``EtpConfig()`` never touches the network; weights and tokenizer come from the
#: Hub only when the user asks (``EtpModel.from_ecg_text_pretrained`` / ``AutoTokenizer``).
DEFAULT_TEXT_MODEL = "emilyalsentzer/Bio_ClinicalBERT"

#: ``emilyalsentzer/Bio_ClinicalBERT``'s config.json: BERT-base cased with BioBERT's 28,996-token vocabulary.
BIO_CLINICAL_BERT_CONFIG: dict = {
    "vocab_size": 28996,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


class EcgTowerConfigSpec(SubConfigSpec):
    """``ecg_config`` sub-config: a config instance, or a dict whose ``model_type`` (default
    ``ecg_resnet``) names one of :data:`ECG_TOWER_CONFIGS`."""

    def create_subconfig(self, key, subconfig=None, **kwargs):
        if isinstance(subconfig, dict):
            model_type = subconfig.get("model_type", self.model_type)
            if model_type not in ECG_TOWER_CONFIGS:
                raise ValueError(
                    f"EtpConfig.{key}: model_type {model_type!r} is not an ECG tower ETP knows; "
                    f"known: {sorted(ECG_TOWER_CONFIGS)}"
                )
            spec = SubConfigSpec(config_class=ECG_TOWER_CONFIGS[model_type], init_kwargs=self.init_kwargs)
            return spec.create_subconfig(key, subconfig, **kwargs)
        return super().create_subconfig(key, subconfig, **kwargs)


@strict
class EtpConfig(RemoteCodeConfigMixin, PreTrainedConfig):
    r"""Configuration of [`EtpModel`] (ECG tower + text tower + projections + temperature).

    Args:
        ecg_config: [`EcgResNetConfig`] (or its dict) of the ECG tower. Default: ResNet18-1D,
            12 leads in MERL's MIMIC order (I, II, III, aVR, aVF, aVL, V1-V6), 500 Hz, 5000 samples,
            matching ``EcgFeatureExtractor.from_preset("etp")``.
        text_config: any ``AutoConfig`` (or dict with ``model_type``) of a BERT-like text encoder.
            Default: a ``BertConfig`` with ``emilyalsentzer/Bio_ClinicalBERT``'s dimensions
            (:data:`BIO_CLINICAL_BERT_CONFIG`), built offline.
        projection_dim: size of the shared ECG-text embedding space (MERL: 256).
        text_projection_hidden_dim: hidden width of the text projection MLP
            ``Linear(text_hidden -> hidden) -> GELU -> Linear(hidden -> projection_dim)`` (MERL: 256).
        ecg_pooling: ``"avg"`` (ETP default: masked mean of the last ResNet map, then
            ``Linear(hidden -> projection_dim)``) or ``"attention"`` (MERL: 1x1 ``downconv`` to
            ``projection_dim`` channels, then a CLIP-style attention pool with a CLS query and
            learned positions; needs inputs of exactly ``ecg_config.num_samples`` samples).
        attention_pool_heads: heads of the attention pool (MERL: 4).
        text_pooling: how one text vector is read from the text tower: ``"cls"`` (hidden state of
            the first token), ``"pooler"`` (BERT pooler: CLS through dense + tanh, as MERL with MedCPT)
            or ``"mean"`` (masked mean over tokens, as sentence-transformers models).
        freeze_text_layers: number of bottom text-encoder layers (plus the embeddings) kept frozen
            during pretraining (MERL/ETP design: 6). ``0`` trains everything; ``-1`` freezes the whole
            text tower (MERL's code runs the text encoder under ``no_grad``); a fully frozen tower
            also runs without dropout (a fixed feature map, as in LiT).
        temperature: initial (or fixed) softmax temperature of the contrastive logits (CLIP: 0.07).
        learnable_temperature: learn ``logit_scale = log(1 / temperature)`` (CLIP) or keep it fixed
            (MERL's fixed tau = 0.07).
        max_logit_scale: the learned scale ``exp(logit_scale)`` is clamped to at most this (CLIP: 100).
        initializer_range: std of the normal init of the projection layers.
        cache_text_features: with a fully frozen text tower (``freeze_text_layers=-1``), memoise the
            pooled text feature of every distinct token sequence (in memory, never saved). The frozen
            tower is a fixed function (it runs without dropout), so this is exact; it makes epochs
            after the first skip the text encoder, which dominates CPU pretraining cost.
    """

    model_type = "etp"
    sub_configs_defaults = {
        # MERL's lead order (aVF before aVL), which the "etp"/"merl" feature-extractor preset produces.
        "ecg_config": EcgTowerConfigSpec(config_class=EcgResNetConfig, init_kwargs={"lead_names": list(MIMIC_LEADS)}),
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="bert", init_kwargs=dict(BIO_CLINICAL_BERT_CONFIG)
        ),
    }

    ecg_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    projection_dim: int = 256
    text_projection_hidden_dim: int = 256
    ecg_pooling: Literal["avg", "attention"] = "avg"
    attention_pool_heads: int = 4
    text_pooling: Literal["cls", "pooler", "mean"] = "cls"
    freeze_text_layers: int = 6
    temperature: float = 0.07
    learnable_temperature: bool = True
    max_logit_scale: float = 100.0
    initializer_range: float = 0.02
    cache_text_features: bool = False

    def validate_architecture(self):
        """Part of ``@strict`` validation."""
        if self.ecg_config is not None and not isinstance(self.ecg_config, tuple(ECG_TOWER_CONFIGS.values())):
            raise ValueError(
                f"EtpConfig: ecg_config is a {type(self.ecg_config).__name__}; an ECG tower config "
                f"({', '.join(c.__name__ for c in ECG_TOWER_CONFIGS.values())}) is expected"
            )
        if self.cache_text_features and self.freeze_text_layers != -1:
            raise ValueError(
                "EtpConfig: cache_text_features needs a fully frozen text tower (freeze_text_layers=-1), "
                f"got freeze_text_layers={self.freeze_text_layers}"
            )
        if not 0.0 < self.temperature:
            raise ValueError(f"EtpConfig: temperature must be > 0, got {self.temperature}")
        if self.max_logit_scale < 1.0 / self.temperature:
            raise ValueError(
                f"EtpConfig: max_logit_scale={self.max_logit_scale} is below the initial scale "
                f"1/temperature={1.0 / self.temperature:.3f}"
            )
        if self.projection_dim % self.attention_pool_heads != 0 and self.ecg_pooling == "attention":
            raise ValueError(
                f"EtpConfig: projection_dim={self.projection_dim} must be divisible by "
                f"attention_pool_heads={self.attention_pool_heads}"
            )
        if self.freeze_text_layers < -1:
            raise ValueError(f"EtpConfig: freeze_text_layers must be >= -1, got {self.freeze_text_layers}")

    @property
    def logit_scale_init_value(self) -> float:
        """``log(1 / temperature)``: the stored value of the (learnable) logit scale."""
        return math.log(1.0 / self.temperature)


#: MERL's input (same authors as ETP): 12 leads in MIMIC order (aVF before aVL), 10 s at 500 Hz,
#: one min-max over the record to [0, 1].
MERL_INPUT = {
    "sampling_rate": 500,
    "leads": list(MIMIC_LEADS),
    "num_samples": 5000,
    "normalization": "minmax_record",
    "bandpass": None,
}

#: The ETP family (the dual encoder and its ResNet18-1D ECG tower on its own; see ``registry``).
FAMILY = ModelFamily(
    name="etp",
    title="ETP",
    paper="Liu et al., ETP: learning transferable ECG representations via ECG-text pre-training (ICASSP 2024)",
    model_types={
        "etp": ModelType(
            config="configuration_etp.EtpConfig",
            models={
                "AutoModel": "modeling_etp.EtpModel",
                "AutoModelForSequenceClassification": "modeling_etp.EtpForSequenceClassification",
            },
            processor="processing_etp.EtpProcessor",
        ),
        "ecg_resnet": ModelType(
            config="configuration_ecg_resnet.EcgResNetConfig",
            models={
                "AutoModel": "modeling_ecg_resnet.EcgResNetModel",
                "AutoModelForSequenceClassification": "modeling_ecg_resnet.EcgResNetForSequenceClassification",
            },
        ),
    },
    # "merl" names the same contract for MERL checkpoints.
    input_presets={"etp": MERL_INPUT, "merl": MERL_INPUT},
    pipelines=("ecg-feature-extraction", "zero-shot-ecg-classification"),
    checkpoints=(
        CheckpointEntry(
            "ecg-hub/etp-resnet18",
            "EtpModel",
            "etp",
            "ETP ECG-text dual encoder: ResNet18-1D ECG tower + BERT text tower, zero-shot by prompts, 12 leads at 500 Hz",
        ),
    ),
)

__all__ = ["BIO_CLINICAL_BERT_CONFIG", "DEFAULT_TEXT_MODEL", "ECG_TOWER_CONFIGS", "FAMILY", "EtpConfig"]
