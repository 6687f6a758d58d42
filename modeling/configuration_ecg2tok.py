"""Configurations of ECG2TOK (Yuan et al., IJCAI 2025): a self-distilled semantic ECG tokenizer
(stage A) and a transformer pretrained by predicting its discrete labels at masked patches (stage B).

Only the paper's abstract is public; every default here is the project's design
(``reference/ECG2TOK.md`` sections 4-6), built from the abstract and the designs it reads onto
(DINO / iBOT self-distillation, SwAV / DINOv2 Sinkhorn-Knopp clustering, BEiT / HuBERT masked
label prediction). Both configs share the input contract and encoder fields of section 4.

Imports torch-free transformers / huggingface_hub only (Hub remote-code bundle).
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .leads import INDEPENDENT_LEADS, canonicalize_leads
from .registry import CheckpointEntry, ModelFamily, ModelType, RemoteCodeConfigMixin


def _check_encoder(config, name: str) -> None:
    """Checks both ECG2TOK configs share (input grid and encoder shape)."""
    if len(config.lead_names) < 1 or len(set(config.lead_names)) != len(config.lead_names):
        raise ValueError(f"{name}: lead_names must name distinct leads, got {config.lead_names}")
    if config.patch_size < 1 or config.num_samples < config.patch_size or config.num_samples % config.patch_size:
        raise ValueError(
            f"{name}: num_samples ({config.num_samples}) must be a positive multiple of patch_size ({config.patch_size})"
        )
    if config.num_attention_heads < 1 or config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"{name}: hidden_size ({config.hidden_size}) must be divisible by num_attention_heads "
            f"({config.num_attention_heads})"
        )
    if config.hidden_size % 2:
        raise ValueError(f"{name}: hidden_size ({config.hidden_size}) must be even (sin-cos time table)")
    if config.codebook_size < 2:
        raise ValueError(f"{name}: codebook_size must be at least 2, got {config.codebook_size}")


class _Ecg2TokGridMixin:
    @property
    def num_leads(self) -> int:
        """Leads the model was configured for (8: I, II, V1-V6)."""
        return len(self.lead_names)

    @property
    def num_patches(self) -> int:
        """Time patches per lead at the full length (2500 / 50 = 50)."""
        return self.num_samples // self.patch_size


@strict
class Ecg2TokTokenizerConfig(RemoteCodeConfigMixin, _Ecg2TokGridMixin, PreTrainedConfig):
    r"""Configuration of [`Ecg2TokTokenizerModel`], the stage-A semantic tokenizer.

    A student and an EMA-teacher ViT over per-lead patches (ViT-S-like by default: 384 wide, 12
    deep, 6 heads) share a DINO/iBOT projection head (MLP -> l2-normalised bottleneck -> cosine
    against ``codebook_size`` prototypes, the codebook). The teacher's prototype scores of the
    patch tokens of the (gathered) batch are turned into balanced soft assignments by Sinkhorn-Knopp
    (``clustering="sinkhorn"``) or assigned to an EMA k-means codebook (``"ema_kmeans"``); the
    student predicts them at masked patches (L_patch) and the other view's [CLS] (L_cls).

    Args:
        lead_names / sampling_rate / num_samples / patch_size: the input grid (8 leads, 250 Hz,
            2500 samples = 10 s, 50-sample = 0.2 s patches: 8 x 50 = 400 patch tokens + [CLS]).
        hidden_size / num_hidden_layers / num_attention_heads / intermediate_size / hidden_act /
        qkv_bias / layer_norm_eps / hidden_dropout_prob / attention_dropout / drop_path_rate /
        layer_scale_init_value: the transformer (pre-LN blocks; LayerScale when the value is > 0).
        attention_pattern: ``"full"`` bidirectional attention, or ``"cropa"`` (a patch attends to
            its own lead and its own time slot; [CLS] attends and is attended everywhere) as an ablation.
        time_position_scale: factor on the fixed sin-cos time table (entries in [-1, 1]) before it is
            added to the patch embeddings (0.02, the std of BEiT's learned positions). At 1.0 the
            table is about 25x the patch embedding of a mV-scale patch at init, and the tiny tokenizer
            learned codes of time position: 71 % of patches took one code and the mutual information
            between code and "patch holds an R peak" was 0.011 bits, against 0.136 bits at 0.02.
        head_hidden_size / head_bottleneck_size / head_num_layers: the projection head MLP.
        codebook_size: K, the number of prototypes = token ids (512).
        clustering: ``"sinkhorn"`` (SwAV / DINOv2 equipartition) or ``"ema_kmeans"`` (BEiT-v2 style).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (3). The Sinkhorn temperature is the teacher
            temperature (DINOv2's ``sinkhorn_knopp_teacher``), so the design's epsilon 0.05 lies in its
            0.04 -> 0.07 warm-up.
        student_temperature: softmax temperature of the student (0.1).
        teacher_temperature_start / teacher_temperature_end / teacher_temperature_warmup_fraction:
            teacher temperature, linear from start to end over the first fraction of the optimizer steps.
        ema_momentum_start / ema_momentum_end / ema_schedule: the teacher's EMA (0.996 -> 1, cosine).
        mask_probability: share of records whose student view is masked (0.5; the others see all).
        mask_ratio_range: per masked record, the share of time slots hidden, ``U(low, high)``.
        mask_block_range: block lengths in patches (at least 3 = 0.6 s), time-synchronised over leads.
        amplitude_scale_range / noise_std_max_mv / wander_max_mv / wander_frequency_range_hz /
        powerline_max_mv / lead_dropout_probability: view augmentations (per lead scale, Gaussian
            noise with a per-record sigma up to the max, a baseline sine, 50/60 Hz hum, lead dropout).
            No time shift, so patch j is the same instant in both views.
        prototype_freeze_steps: optimizer steps during which the prototypes get no gradient (DINO's
            frozen last layer for the first epoch).
        kmeans_decay / kmeans_init_iterations / kmeans_dead_code_threshold: the EMA k-means codebook
            (``clustering="ema_kmeans"``): the prototypes are cluster centres of the teacher's
            l2-normalised bottleneck features (256-d; the design's extra 32-d projection is not built),
            updated by EMA (decay 0.99) of code sums and sizes instead of gradients, initialised by
            k-means on the first batch, and a code whose EMA share of the tokens falls under
            ``threshold / codebook_size`` restarts at the current feature farthest from every code.
        health_window_steps: optimizer steps over which code usage is counted for the health logs.
        initializer_range: std of the truncated-normal init.
    """

    model_type = "ecg2tok_tokenizer"

    lead_names: list[str] | tuple[str, ...] = INDEPENDENT_LEADS
    sampling_rate: int = 250
    num_samples: int = 2500
    patch_size: int = 50

    hidden_size: int = 384
    num_hidden_layers: int = 12
    num_attention_heads: int = 6
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    layer_norm_eps: float | int = 1e-6
    hidden_dropout_prob: float | int = 0.0
    attention_dropout: float | int = 0.0
    drop_path_rate: float | int = 0.1
    layer_scale_init_value: float | int = 0.0
    attention_pattern: Literal["full", "cropa"] = "full"
    time_position_scale: float | int = 0.02

    head_hidden_size: int = 2048
    head_bottleneck_size: int = 256
    head_num_layers: int = 3
    codebook_size: int = 512
    clustering: Literal["sinkhorn", "ema_kmeans"] = "sinkhorn"
    sinkhorn_iterations: int = 3
    student_temperature: float | int = 0.1
    teacher_temperature_start: float | int = 0.04
    teacher_temperature_end: float | int = 0.07
    teacher_temperature_warmup_fraction: float | int = 0.3
    ema_momentum_start: float | int = 0.996
    ema_momentum_end: float | int = 1.0
    ema_schedule: Literal["linear", "cosine"] = "cosine"

    mask_probability: float | int = 0.5
    mask_ratio_range: list[float | int] | tuple[float | int, float | int] = (0.1, 0.5)
    mask_block_range: list[int] | tuple[int, int] = (3, 10)

    amplitude_scale_range: list[float | int] | tuple[float | int, float | int] = (0.8, 1.2)
    noise_std_max_mv: float | int = 0.05
    wander_max_mv: float | int = 0.1
    wander_frequency_range_hz: list[float | int] | tuple[float | int, float | int] = (0.05, 0.5)
    powerline_max_mv: float | int = 0.05
    lead_dropout_probability: float | int = 0.1

    prototype_freeze_steps: int = 0
    kmeans_decay: float | int = 0.99
    kmeans_init_iterations: int = 10
    kmeans_dead_code_threshold: float | int = 1e-3
    health_window_steps: int = 50
    initializer_range: float | int = 0.02

    def __post_init__(self, **kwargs):
        self.lead_names = canonicalize_leads(list(self.lead_names))
        for name in ("mask_ratio_range", "amplitude_scale_range", "wander_frequency_range_hz"):
            setattr(self, name, [float(v) for v in getattr(self, name)])
        self.mask_block_range = [int(v) for v in self.mask_block_range]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        _check_encoder(self, "Ecg2TokTokenizerConfig")
        if self.head_num_layers < 1:
            raise ValueError(f"Ecg2TokTokenizerConfig: head_num_layers must be >= 1, got {self.head_num_layers}")
        low, high = self.mask_ratio_range
        if not 0.0 <= low <= high < 1.0:
            raise ValueError(f"Ecg2TokTokenizerConfig: mask_ratio_range must be 0 <= low <= high < 1, got {[low, high]}")
        if not 1 <= self.mask_block_range[0] <= self.mask_block_range[1]:
            raise ValueError(f"Ecg2TokTokenizerConfig: mask_block_range must be 1 <= low <= high, got {self.mask_block_range}")
        if self.teacher_temperature_start <= 0 or self.teacher_temperature_end <= 0 or self.student_temperature <= 0:
            raise ValueError("Ecg2TokTokenizerConfig: student and teacher temperatures must be positive")
        if not 0.0 <= self.lead_dropout_probability < 1.0:
            raise ValueError(
                f"Ecg2TokTokenizerConfig: lead_dropout_probability must be in [0, 1), got {self.lead_dropout_probability}"
            )


@strict
class Ecg2TokConfig(RemoteCodeConfigMixin, _Ecg2TokGridMixin, PreTrainedConfig):
    r"""Configuration of [`Ecg2TokModel`], [`Ecg2TokForMaskedSignalModeling`] and
    [`Ecg2TokForSequenceClassification`], the stage-B encoder (ViT-B-like: 768 / 12 / 12, LayerScale
    0.1, DropPath 0.1; BEiT Base).

    Args:
        lead_names / sampling_rate / num_samples / patch_size / encoder fields: as
            [`Ecg2TokTokenizerConfig`] (the input grid must equal the tokenizer's).
        codebook_size: K, the vocabulary of the masked-label head; must equal the tokenizer's.
        tokenizer_name_or_path / tokenizer_revision: the frozen stage-A tokenizer that labels masked
            patches on the fly (a local folder or a Hub id, and the commit it was read at, recorded
            so labels can be regenerated exactly). Its weights are never saved into this model.
        mask_ratio: share of time slots hidden per record (about 0.5), in blocks of
            ``mask_block_range`` patches (5-10 = 1-2 s), time-synchronised over leads.
        refinement_rounds: HuBERT-style re-clustering rounds. Only 0 is implemented; the paper's
            schedule is unknown (ECG2TOK.md section 6).
        classifier_dropout: dropout before the classification head.
    """

    model_type = "ecg2tok"

    lead_names: list[str] | tuple[str, ...] = INDEPENDENT_LEADS
    sampling_rate: int = 250
    num_samples: int = 2500
    patch_size: int = 50

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    layer_norm_eps: float | int = 1e-6
    hidden_dropout_prob: float | int = 0.0
    attention_dropout: float | int = 0.0
    drop_path_rate: float | int = 0.1
    layer_scale_init_value: float | int = 0.1
    attention_pattern: Literal["full", "cropa"] = "full"
    time_position_scale: float | int = 0.02

    codebook_size: int = 512
    tokenizer_name_or_path: str | None = None
    tokenizer_revision: str | None = None
    mask_ratio: float | int = 0.5
    mask_block_range: list[int] | tuple[int, int] = (5, 10)
    refinement_rounds: int = 0
    classifier_dropout: float | int = 0.0
    initializer_range: float | int = 0.02

    def __post_init__(self, **kwargs):
        self.lead_names = canonicalize_leads(list(self.lead_names))
        self.mask_block_range = [int(v) for v in self.mask_block_range]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        _check_encoder(self, "Ecg2TokConfig")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"Ecg2TokConfig: mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not 1 <= self.mask_block_range[0] <= self.mask_block_range[1]:
            raise ValueError(f"Ecg2TokConfig: mask_block_range must be 1 <= low <= high, got {self.mask_block_range}")
        if self.refinement_rounds != 0:
            raise ValueError(
                "Ecg2TokConfig: refinement_rounds > 0 (HuBERT-style re-clustering) is not implemented; "
                "ECG2TOK's schedule is unpublished (reference/ECG2TOK.md section 6). Use 0."
            )


#: Section 4's input: 8 independent leads, 10 s at 250 Hz, mV, 0.67-40 Hz order-5 zero-phase
#: Butterworth band-pass (baseline wander and noise would otherwise form clusters of their own),
#: no per-record scaling (absolute voltage carries diagnosis).
ECG2TOK_INPUT = {
    "sampling_rate": 250,
    "leads": list(INDEPENDENT_LEADS),
    "num_samples": 2500,
    "normalization": "none",
    "bandpass": [0.67, 40.0],
    "filter_order": 5,
}

FAMILY = ModelFamily(
    name="ecg2tok",
    title="ECG2TOK",
    paper="Yuan, Wang, Liu, Chen, Hu, ECG2TOK (IJCAI 2025, doi 10.24963/ijcai.2025/1110); design: ecg-hub's",
    model_types={
        "ecg2tok": ModelType(
            config="configuration_ecg2tok.Ecg2TokConfig",
            models={
                "AutoModel": "modeling_ecg2tok.Ecg2TokModel",
                "AutoModelForPreTraining": "modeling_ecg2tok.Ecg2TokForMaskedSignalModeling",
                "AutoModelForMaskedLM": "modeling_ecg2tok.Ecg2TokForMaskedSignalModeling",
                "AutoModelForSequenceClassification": "modeling_ecg2tok.Ecg2TokForSequenceClassification",
            },
        ),
        "ecg2tok_tokenizer": ModelType(
            config="configuration_ecg2tok.Ecg2TokTokenizerConfig",
            models={
                "AutoModel": "modeling_ecg2tok.Ecg2TokTokenizerModel",
                "AutoModelForPreTraining": "modeling_ecg2tok.Ecg2TokTokenizerModel",
            },
        ),
    },
    input_presets={"ecg2tok": ECG2TOK_INPUT},
    pipelines=("ecg-feature-extraction",),
    checkpoints=(
        CheckpointEntry(
            "ecg-hub/ecg2tok-tokenizer-base",
            "Ecg2TokTokenizerModel",
            "ecg2tok",
            "ECG2TOK stage-A semantic tokenizer (ViT-S teacher + 512 prototypes), 8 leads at 250 Hz",
        ),
        CheckpointEntry(
            "ecg-hub/ecg2tok-base",
            "Ecg2TokModel",
            "ecg2tok",
            "ECG2TOK stage-B encoder (ViT-B, masked token prediction), 8 leads at 250 Hz",
        ),
    ),
)

__all__ = ["ECG2TOK_INPUT", "FAMILY", "Ecg2TokConfig", "Ecg2TokTokenizerConfig"]
