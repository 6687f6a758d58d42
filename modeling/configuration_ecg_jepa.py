"""Configuration of ECG-JEPA (Kim 2024, arXiv 2410.08559): a ViT over the lead x time patch grid of a
multi-lead ECG with Cross-Pattern Attention, pretrained by predicting the latent features of masked
time patches (joint-embedding predictive architecture).

Imports torch-free transformers / huggingface_hub only, so it can travel as Hub remote code.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .leads import INDEPENDENT_LEADS, canonicalize_leads
from .registry import CheckpointEntry, ModelFamily, ModelType, RemoteCodeConfigMixin


@strict
class EcgJepaConfig(RemoteCodeConfigMixin, PreTrainedConfig):
    r"""Configuration of [`EcgJepaModel`], [`EcgJepaForPreTraining`] and [`EcgJepaForSequenceClassification`].

    The defaults are the released ECG-JEPA encoder (``multiblock_epoch100.pth``): 8 leads (I, II,
    V1-V6) of 10 s at 250 Hz (2500 samples, in mV, unfiltered, unscaled), cut into non-overlapping
    patches of 50 samples (0.2 s), i.e. 8 x 50 = 400 tokens; a pre-LN ViT of width 768, depth 12,
    16 heads, MLP 3072, no qkv bias; about 85.07 M encoder parameters. The predictor (pretraining
    only) is 384 wide, 6 deep, 12 heads (about 11.23 M parameters).

    Args:
        lead_names: the leads in the order the model expects them. Token ``l * num_patches + p`` is
            patch ``p`` of lead ``lead_names[l]`` (lead-major order, as in the official code).
        sampling_rate: sampling rate of the input in Hz (the feature extractor resamples to it).
        num_samples: the longest input in samples (``num_samples / sampling_rate`` seconds); any
            multiple of ``patch_size`` up to it is accepted.
        patch_size: samples per patch; each patch of each lead is one token.
        hidden_size: token width of the encoder.
        num_hidden_layers: encoder blocks.
        num_attention_heads: attention heads of the encoder.
        intermediate_size: hidden width of the encoder MLP (4 x ``hidden_size`` in the release).
        hidden_act: MLP activation (``"gelu"`` is the exact erf GELU of ``torch.nn.GELU``).
        qkv_bias: whether the query / key / value projections have a bias (the release has none).
        layer_norm_eps: epsilon of every LayerNorm (``torch.nn.LayerNorm``'s default, as released).
        hidden_dropout_prob: dropout after the attention output and the MLP (0 in the release).
        attention_dropout: dropout on the attention probabilities (0 in the release).
        drop_path_rate: stochastic-depth rate of the last encoder block; it rises linearly from 0 at
            the first block (0.1 in the release).
        attention_pattern: ``"cropa"`` (Cross-Pattern Attention: a token attends only to tokens of
            its own lead or its own time slot) or ``"full"``.
        add_position_every_layer: re-add the fixed 2-D sin-cos position table to the input of
            every block, as the official code does (the released weights only reproduce with it);
            ``False`` adds it once after the patch embedding.
        position_scale: factor on the encoder's sin-cos position table (1 as released). With mV
            input a 50-sample patch embeds to a norm of about 0.3 while a table row has a norm of
            about 8, so at 1 the tokens carry almost only their position (ECG-JEPA section of the
            README); smaller values let short runs see the signal.
        predictor_position_scale: the same factor on the predictor's time table.
        predictor_hidden_size: token width of the predictor.
        predictor_num_hidden_layers: predictor blocks.
        predictor_num_attention_heads: attention heads of the predictor.
        predictor_intermediate_size: hidden width of the predictor MLP.
        predictor_drop_path_rate: stochastic-depth rate of the last predictor block (the official
            script passes the encoder's rate to the predictor too).
        mask_type: ``"block"`` (multi-block: the union of ``num_mask_blocks`` contiguous runs of
            time patches) or ``"random"`` (time patches drawn uniformly). One mask is drawn per
            forward call and shared by every record of the batch and every lead.
        num_mask_blocks: number of blocks of a multi-block mask.
        block_mask_scale: range of the fraction of the time patches covered by each block
            (each block is ``int(num_patches * u)`` patches, ``u ~ U(low, high)``).
        random_mask_scale: range of the fraction of time patches hidden by a random mask.
        ema_momentum_start: EMA momentum of the target encoder at the first optimizer step.
        ema_momentum_end: EMA momentum at the last optimizer step (linear schedule in between).
        smooth_l1_beta: ``beta`` of the SmoothL1 loss between predictions and targets.
        classifier_dropout: dropout on the pooled features before the classification head.
        initializer_range: std of the truncated-normal init of linear layers.
    """

    model_type = "ecg_jepa"

    lead_names: list[str] | tuple[str, ...] = INDEPENDENT_LEADS
    sampling_rate: int = 250
    num_samples: int = 2500
    patch_size: int = 50

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 16
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    qkv_bias: bool = False
    layer_norm_eps: float | int = 1e-5
    hidden_dropout_prob: float | int = 0.0
    attention_dropout: float | int = 0.0
    drop_path_rate: float | int = 0.1
    attention_pattern: Literal["cropa", "full"] = "cropa"
    add_position_every_layer: bool = True
    position_scale: float | int = 1.0
    predictor_position_scale: float | int = 1.0

    predictor_hidden_size: int = 384
    predictor_num_hidden_layers: int = 6
    predictor_num_attention_heads: int = 12
    predictor_intermediate_size: int = 1536
    predictor_drop_path_rate: float | int = 0.1

    mask_type: Literal["block", "random"] = "block"
    num_mask_blocks: int = 4
    block_mask_scale: list[float | int] | tuple[float | int, float | int] = (0.175, 0.225)
    random_mask_scale: list[float | int] | tuple[float | int, float | int] = (0.6, 0.7)
    ema_momentum_start: float | int = 0.996
    ema_momentum_end: float | int = 1.0
    smooth_l1_beta: float | int = 1.0

    classifier_dropout: float | int = 0.0
    initializer_range: float | int = 0.02

    def __post_init__(self, **kwargs):
        # JSON gives lists back; keep one type so that a save / load round trip compares equal.
        # Canonical spellings ("AVR" -> "aVR") so the feature extractor and the model agree.
        self.lead_names = canonicalize_leads(list(self.lead_names))
        self.block_mask_scale = [float(v) for v in self.block_mask_scale]
        self.random_mask_scale = [float(v) for v in self.random_mask_scale]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation: shapes and ranges that must agree."""
        if len(self.lead_names) < 1:
            raise ValueError("EcgJepaConfig: lead_names must name at least one lead")
        if len(set(self.lead_names)) != len(self.lead_names):
            raise ValueError(f"EcgJepaConfig: lead_names has duplicates: {self.lead_names}")
        for name in ("position_scale", "predictor_position_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")):
                raise ValueError(f"EcgJepaConfig: {name} must be a finite number >= 0, got {value!r}")
        if self.patch_size < 1 or self.num_samples < self.patch_size or self.num_samples % self.patch_size:
            raise ValueError(
                f"EcgJepaConfig: num_samples ({self.num_samples}) must be a positive multiple of "
                f"patch_size ({self.patch_size})"
            )
        for width, heads, name in (
            (self.hidden_size, self.num_attention_heads, ""),
            (self.predictor_hidden_size, self.predictor_num_attention_heads, "predictor_"),
        ):
            if heads < 1 or width % heads:
                raise ValueError(
                    f"EcgJepaConfig: {name}hidden_size ({width}) must be divisible by "
                    f"{name}num_attention_heads ({heads})"
                )
        if self.hidden_size % 4:
            # The 2-D sin-cos table splits the width in two halves, each in sin / cos quarters.
            raise ValueError(f"EcgJepaConfig: hidden_size ({self.hidden_size}) must be a multiple of 4")
        if self.predictor_hidden_size % 4:
            raise ValueError(
                f"EcgJepaConfig: predictor_hidden_size ({self.predictor_hidden_size}) must be a multiple of 4"
            )
        for name in ("block_mask_scale", "random_mask_scale"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or not 0.0 <= low_high[0] <= low_high[1] < 1.0:
                raise ValueError(
                    f"EcgJepaConfig: {name} must be [low, high] with 0 <= low <= high < 1, got {low_high}"
                )
        if not 0.0 <= self.ema_momentum_start <= self.ema_momentum_end <= 1.0:
            raise ValueError(
                "EcgJepaConfig: need 0 <= ema_momentum_start <= ema_momentum_end <= 1, got "
                f"{self.ema_momentum_start}, {self.ema_momentum_end}"
            )

    @property
    def num_leads(self) -> int:
        """Number of leads the model was configured for (8 in the release)."""
        return len(self.lead_names)

    @property
    def num_patches(self) -> int:
        """Time patches per lead at the full length (50 in the release)."""
        return self.num_samples // self.patch_size


#: The ECG-JEPA family: model types, input contract, card, pipelines and catalogue (see ``registry``).
FAMILY = ModelFamily(
    name="ecg_jepa",
    title="ECG-JEPA",
    paper="Kim, ECG-JEPA: learning ECG representations via joint-embedding predictive architecture (arXiv 2410.08559, 2024)",
    model_types={
        "ecg_jepa": ModelType(
            config="configuration_ecg_jepa.EcgJepaConfig",
            models={
                "AutoModel": "modeling_ecg_jepa.EcgJepaModel",
                "AutoModelForPreTraining": "modeling_ecg_jepa.EcgJepaForPreTraining",
                "AutoModelForSequenceClassification": "modeling_ecg_jepa.EcgJepaForSequenceClassification",
            },
        ),
    },
    input_presets={
        # The pretrained encoder: 8 independent leads, 10 s at 250 Hz, physical units (mV), no filter.
        "ecg_jepa": {
            "sampling_rate": 250,
            "leads": list(INDEPENDENT_LEADS),
            "num_samples": 2500,
            "normalization": "none",
            "bandpass": None,
        },
        # The official fine-tuning scripts: the same input plus a 0.67-40 Hz order-5 Butterworth band-pass.
        "ecg_jepa_finetune": {
            "sampling_rate": 250,
            "leads": list(INDEPENDENT_LEADS),
            "num_samples": 2500,
            "normalization": "none",
            "bandpass": [0.67, 40.0],
            "filter_order": 5,
        },
    },
    pipelines=("ecg-feature-extraction",),
    checkpoints=(
        CheckpointEntry(
            "ecg-hub/ecg-jepa-multiblock",
            "EcgJepaModel",
            "ecg_jepa",
            "ECG-JEPA encoder (768/12/16, CroPA) converted from the authors' multi-block checkpoint, 8 leads at 250 Hz",
        ),
        CheckpointEntry(
            "ecg-hub/ecg-jepa-random",
            "EcgJepaModel",
            "ecg_jepa",
            "ECG-JEPA encoder converted from the authors' random-masking checkpoint, 8 leads at 250 Hz",
        ),
        CheckpointEntry(
            "ecg-hub/ecg-jepa-multiblock-ptbxl-superclass",
            "EcgJepaForSequenceClassification",
            "ecg_jepa_finetune",
            "ECG-JEPA multi-block fine-tuned on PTB-XL superclasses (folds 1-8/9/10), multi-label",
        ),
    ),
)

__all__ = ["FAMILY", "EcgJepaConfig"]
