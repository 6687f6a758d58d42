"""Tiny configs and inputs of every ecg-hub model class, for the shared battery in
``test_model_battery.py`` (in the spirit of transformers' ``ModelTesterMixin``).

A new family adds one `ModelSpec` per model class to :data:`MODEL_SPECS`; the battery then runs
every check on it, and fails while a model type declared in the registry has no spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from ecg_hub.modeling import (
    Ecg2TokConfig,
    Ecg2TokForMaskedSignalModeling,
    Ecg2TokForSequenceClassification,
    Ecg2TokModel,
    Ecg2TokTokenizerConfig,
    Ecg2TokTokenizerModel,
    EcgFeatureExtractor,
    EcgJepaConfig,
    EcgJepaForPreTraining,
    EcgJepaForSequenceClassification,
    EcgJepaModel,
    EcgResNetConfig,
    EcgResNetForSequenceClassification,
    EcgResNetModel,
    EtpConfig,
    EtpForSequenceClassification,
    EtpModel,
    MelpConfig,
    MelpDecoderConfig,
    MelpEcgConfig,
    MelpEcgForSequenceClassification,
    MelpEcgModel,
    MelpForConditionalGeneration,
    MelpForSequenceClassification,
    MelpModel,
)
from transformers import BertConfig

BATCH = 3


def tiny_ecg_jepa_config(**overrides) -> EcgJepaConfig:
    """Width 32, depth 2, 8 leads x 10 patches of 50 samples (2 s at 250 Hz)."""
    values = {
        "num_samples": 500, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "predictor_hidden_size": 16, "predictor_num_hidden_layers": 2, "predictor_num_attention_heads": 2,
        "predictor_intermediate_size": 32, "num_labels": 3,
    }
    values.update(overrides)
    return EcgJepaConfig(**values)


def tiny_ecg_resnet_config(**overrides) -> EcgResNetConfig:
    """Three stages of 8/16/32 channels, 12 leads, 4 s at 100 Hz."""
    values = {
        "hidden_sizes": [8, 16, 32], "depths": [1, 1, 1], "embedding_size": 8, "sampling_rate": 100, "num_samples": 400, "num_labels": 3
    }
    values.update(overrides)
    return EcgResNetConfig(**values)


def tiny_etp_config(**overrides) -> EtpConfig:
    values = {
        "ecg_config": tiny_ecg_resnet_config(),
        "text_config": BertConfig(
            vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=32,
        ),
        "projection_dim": 16,
        "text_projection_hidden_dim": 16,
        "freeze_text_layers": 1,
        "text_pooling": "mean",
        "num_labels": 3,
    }
    values.update(overrides)
    return EtpConfig(**values)


def tiny_ecg2tok_tokenizer_config(**overrides) -> Ecg2TokTokenizerConfig:
    """Width 32, depth 2, head 64 -> 16, K = 16 codes, 8 leads x 10 patches (2 s at 250 Hz)."""
    values = {
        "num_samples": 500, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "head_hidden_size": 64, "head_bottleneck_size": 16, "codebook_size": 16,
    }
    values.update(overrides)
    return Ecg2TokTokenizerConfig(**values)


def tiny_ecg2tok_config(**overrides) -> Ecg2TokConfig:
    """Width 32, depth 2, K = 16, LayerScale on, 8 leads x 10 patches."""
    values = {
        "num_samples": 500, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "codebook_size": 16, "num_labels": 3,
    }
    values.update(overrides)
    return Ecg2TokConfig(**values)


def _ecg2tok_masks() -> torch.Tensor:
    """(batch, 8 leads x 10 patches): time slots 3-5 masked in every lead, record 2 unmasked."""
    time_mask = torch.zeros(BATCH, 10, dtype=torch.bool)
    time_mask[:2, 3:6] = True
    return time_mask.repeat(1, 8)


def _ecg2tok_labels() -> torch.Tensor:
    return torch.randint(0, 16, (BATCH, 80), generator=torch.Generator().manual_seed(2))


#: Special tokens of the tiny MELP text side: [PAD] 0, [CLS] 2, [SEP] 3, sentence separator 7, [BOS] 59.
MELP_TOKENS = {"pad": 0, "cls": 2, "sep": 3, "period": 7, "bos": 59}


def tiny_melp_ecg_config(**overrides) -> MelpEcgConfig:
    """Width 32, depth 2, 4 conv blocks of 16 channels (500 samples -> 31 frames), 4 beats of 16, 8 tokens of 32."""
    values = {
        "num_samples": 500, "conv_dim": [16] * 4, "conv_kernel": [2] * 4, "conv_stride": [2] * 4, "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4, "n_beat_queries": 4, "beat_hidden_size": 16, "n_token_queries": 8,
        "token_hidden_size": 32, "pooler_num_attention_heads": 2, "num_labels": 3,
    }
    values.update(overrides)
    return MelpEcgConfig(**values)


def tiny_melp_config(**overrides) -> MelpConfig:
    """The tiny ECG tower + a 2-layer BERT of width 32 (60 tokens) + a 1-layer decoder, causal text."""
    values = {
        "ecg_config": tiny_melp_ecg_config(),
        "text_config": BertConfig(
            vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=32,
        ),
        "decoder_config": MelpDecoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2),
        "projection_dim": 16,
        "text_projection_hidden_dim": 16,
        "num_frozen_text_layers": 1,
        "pad_token_id": MELP_TOKENS["pad"],
        "cls_token_id": MELP_TOKENS["cls"],
        "eos_token_id": MELP_TOKENS["sep"],
        "bos_token_id": MELP_TOKENS["bos"],
        "sentence_separator_token_id": MELP_TOKENS["period"],
        "num_labels": 3,
    }
    values.update(overrides)
    return MelpConfig(**values)


def _melp_text_inputs() -> dict[str, torch.Tensor]:
    """Three "[BOS] report [SEP] [PAD]..." rows with two, one and two (+ an unfinished) sentences."""
    ids = torch.tensor(
        [
            [59, 10, 11, 7, 12, 13, 7, 3, 0, 0],
            [59, 14, 15, 16, 7, 3, 0, 0, 0, 0],
            [59, 20, 21, 7, 22, 23, 24, 7, 25, 3],
        ]
    )
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def _ecg_inputs(num_leads: int, num_samples: int, scale: float) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"input_values": scale * torch.randn(BATCH, num_leads, num_samples, generator=generator)}


def _text_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 60, (BATCH, 9), generator=generator)
    mask = torch.ones(BATCH, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@dataclass
class ModelSpec:
    """How the battery builds, feeds and reads one model class.

    Attributes:
        name: test id.
        model_class / config: the class and its tiny config factory.
        auto_class: the Auto class that must load its saved folder.
        inputs: fixed inputs (ECG in mV or as the family's scaling, plus text where needed).
        output: the tensor the checks compare (``pooler_output``, ``logits``, ``loss``, ...).
        ecg_time_mask: the name of the ECG ``(batch, samples)`` mask argument.
        preset: the feature-extractor preset saved next to the model (export check).
        has_attention: whether sdpa and eager must agree.
        labels: labels for a classifier's loss.
        extra: more forward keyword arguments (fixed masks of pretraining models).
    """

    name: str
    model_class: type
    config: Callable[..., Any]
    auto_class: str
    inputs: Callable[[], dict[str, torch.Tensor]]
    output: str
    preset: dict[str, Any]
    ecg_time_mask: str = "attention_mask"
    has_attention: bool = False
    labels: Callable[[], torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_classifier(self) -> bool:
        return self.labels is not None

    @property
    def trains_by_its_own_loss(self) -> bool:
        return self.output == "loss"


def _jepa_mask() -> torch.Tensor:
    mask = torch.zeros(10, dtype=torch.bool)
    mask[3:6] = True
    return mask


def _multi_hot() -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


JEPA_PRESET = {"name": "ecg_jepa", "num_samples": 500}
ECG2TOK_PRESET = {"name": "ecg2tok", "num_samples": 500}
RESNET_PRESET = {"name": "etp", "sampling_rate": 100, "num_samples": 400}
MELP_PRESET = {"name": "melp", "num_samples": 500}

MODEL_SPECS: list[ModelSpec] = [
    ModelSpec(
        "ecg_jepa_model", EcgJepaModel, tiny_ecg_jepa_config, "AutoModel",
        lambda: _ecg_inputs(8, 500, 0.2), "pooler_output", JEPA_PRESET, has_attention=True,
    ),
    ModelSpec(
        "ecg_jepa_pretraining", EcgJepaForPreTraining, tiny_ecg_jepa_config, "AutoModelForPreTraining",
        lambda: _ecg_inputs(8, 500, 0.2), "loss", JEPA_PRESET, has_attention=True,
        extra={"masked_time_patches": _jepa_mask()},
    ),
    ModelSpec(
        "ecg_jepa_classifier", EcgJepaForSequenceClassification, tiny_ecg_jepa_config,
        "AutoModelForSequenceClassification", lambda: _ecg_inputs(8, 500, 0.2), "logits", JEPA_PRESET,
        has_attention=True, labels=_multi_hot,
    ),
    ModelSpec(
        "ecg2tok_tokenizer", Ecg2TokTokenizerModel, tiny_ecg2tok_tokenizer_config, "AutoModelForPreTraining",
        lambda: _ecg_inputs(8, 500, 0.2), "loss", ECG2TOK_PRESET, has_attention=True,
        extra={"bool_masked_pos": _ecg2tok_masks()},
    ),
    ModelSpec(
        "ecg2tok_model", Ecg2TokModel, tiny_ecg2tok_config, "AutoModel",
        lambda: _ecg_inputs(8, 500, 0.2), "pooler_output", ECG2TOK_PRESET, has_attention=True,
    ),
    ModelSpec(
        "ecg2tok_masked_signal_modeling", Ecg2TokForMaskedSignalModeling, tiny_ecg2tok_config,
        "AutoModelForPreTraining", lambda: _ecg_inputs(8, 500, 0.2), "loss", ECG2TOK_PRESET, has_attention=True,
        extra={"bool_masked_pos": _ecg2tok_masks(), "labels": _ecg2tok_labels()},
    ),
    ModelSpec(
        "ecg2tok_classifier", Ecg2TokForSequenceClassification, tiny_ecg2tok_config,
        "AutoModelForSequenceClassification", lambda: _ecg_inputs(8, 500, 0.2), "logits", ECG2TOK_PRESET,
        has_attention=True, labels=_multi_hot,
    ),
    ModelSpec(
        "ecg_resnet_model", EcgResNetModel, tiny_ecg_resnet_config, "AutoModel",
        lambda: _ecg_inputs(12, 400, 1.0), "pooler_output", RESNET_PRESET,
    ),
    ModelSpec(
        "ecg_resnet_classifier", EcgResNetForSequenceClassification, tiny_ecg_resnet_config,
        "AutoModelForSequenceClassification", lambda: _ecg_inputs(12, 400, 1.0), "logits", RESNET_PRESET,
        labels=_multi_hot,
    ),
    ModelSpec(
        "etp_model", EtpModel, tiny_etp_config, "AutoModel",
        lambda: {**_ecg_inputs(12, 400, 1.0), **_text_inputs(), "return_loss": True}, "loss", RESNET_PRESET,
        ecg_time_mask="ecg_attention_mask", has_attention=True,
    ),
    ModelSpec(
        "etp_classifier", EtpForSequenceClassification, tiny_etp_config, "AutoModelForSequenceClassification",
        lambda: _ecg_inputs(12, 400, 1.0), "logits", RESNET_PRESET, labels=_multi_hot,
    ),
    ModelSpec(
        "melp_ecg_model", MelpEcgModel, tiny_melp_ecg_config, "AutoModel",
        lambda: _ecg_inputs(12, 500, 0.5), "pooler_output", MELP_PRESET, has_attention=True,
    ),
    ModelSpec(
        "melp_ecg_classifier", MelpEcgForSequenceClassification, tiny_melp_ecg_config,
        "AutoModelForSequenceClassification", lambda: _ecg_inputs(12, 500, 0.5), "logits", MELP_PRESET,
        has_attention=True, labels=_multi_hot,
    ),
    ModelSpec(
        "melp_model", MelpModel, tiny_melp_config, "AutoModel",
        lambda: {**_ecg_inputs(12, 500, 0.5), **_melp_text_inputs(), "return_loss": True}, "loss", MELP_PRESET,
        ecg_time_mask="ecg_attention_mask", has_attention=True,
    ),
    ModelSpec(
        "melp_conditional_generation", MelpForConditionalGeneration, tiny_melp_config, "AutoModelForMultimodalLM",
        lambda: {**_ecg_inputs(12, 500, 0.5), **_melp_text_inputs()}, "loss", MELP_PRESET,
        ecg_time_mask="ecg_attention_mask", has_attention=True, extra={"labels": _melp_text_inputs()["input_ids"]},
    ),
    ModelSpec(
        "melp_classifier", MelpForSequenceClassification, tiny_melp_config, "AutoModelForSequenceClassification",
        lambda: _ecg_inputs(12, 500, 0.5), "logits", MELP_PRESET, has_attention=True, labels=_multi_hot,
    ),
]


def feature_extractor_for(spec: ModelSpec) -> EcgFeatureExtractor:
    preset = dict(spec.preset)
    return EcgFeatureExtractor.from_preset(preset.pop("name"), **preset)


__all__ = [
    "MELP_TOKENS",
    "MODEL_SPECS",
    "ModelSpec",
    "feature_extractor_for",
    "tiny_ecg2tok_config",
    "tiny_ecg2tok_tokenizer_config",
    "tiny_ecg_jepa_config",
    "tiny_ecg_resnet_config",
    "tiny_etp_config",
    "tiny_melp_config",
    "tiny_melp_ecg_config",
]
