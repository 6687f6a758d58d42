"""Configuration of MELP (Wang, Xu, Yu, "From Token to Rhythm: A Multi-Scale Approach for ECG-Language
Pretraining", ICML 2025, arXiv 2506.21803): a wav2vec2-style ECG tower with two attentional poolers,
a BERT text tower and a CoCa-style caption decoder, trained at three levels (token: captioning;
beat: beat queries aligned with report sentences; rhythm: a CLIP loss).

Defaults follow the official code (github.com/HKU-MedAI/MELP at ``088741d``, the ECG backbone from
fuying-wang/fairseq-signals at ``27d94ba``); see ``reference/MELP.md`` (section 11 takes precedence).

* [`MelpEcgConfig`] (``model_type="melp_ecg"``): the ECG tower alone (the scope of the released
  ``fuyingw/MELP_Encoder``), usable for linear probing on its own.
* [`MelpDecoderConfig`]: the multimodal caption decoder (a sub-config only, no model type of its own).
* [`MelpConfig`] (``model_type="melp"``): the whole model: ``ecg_config``, ``text_config`` (any BERT
  config), ``decoder_config``, the text mode, the projections, the temperature and the loss weights.

Imports torch-free transformers / huggingface_hub only (Hub remote-code bundle).
"""

import math
from typing import ClassVar, Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .leads import MIMIC_LEADS
from .registry import CheckpointEntry, ModelFamily, ModelType, RemoteCodeConfigMixin

#: The text tower of the paper (MedCPT-Query-Encoder further pretrained by MLM on cardiology text).
#: Its config is built from :data:`HEART_BERT_CONFIG`, so ``MelpConfig()`` never touches the network.
DEFAULT_TEXT_MODEL = "fuyingw/heart_bert"

#: ``fuyingw/heart_bert`` / ``ncbi/MedCPT-Query-Encoder``: BERT-base uncased with the PubMedBERT
#: vocabulary (30,522 tokens) plus MELP's added ``[BOS]`` (id 30522), as the official code resizes it.
HEART_BERT_CONFIG: dict = {
    "vocab_size": 30523,
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

#: Special tokens of the PubMedBERT vocabulary (MedCPT / heart_bert) as MELP uses them.
MEDCPT_TOKEN_IDS = {"pad": 0, "cls": 2, "sep": 3, "period": 18, "bos": 30522}


@strict
class MelpEcgConfig(RemoteCodeConfigMixin, PreTrainedConfig):
    r"""Configuration of [`MelpEcgModel`]: MELP's ECG tower, the fairseq-signals ``Wav2Vec2CMSCModel``
    "small" trunk (the ECG-FM architecture) plus MELP's two attentional poolers.

    Trunk (defaults = official): 12 leads in; 4 conv blocks of 256 channels, kernel 2, stride 2, no
    bias, GroupNorm(256, 256) on the first block only, GELU (5000 samples -> 312 frames); LayerNorm(256)
    and ``Linear(256 -> 768)``; a convolutional position embedding (``Conv1d(768, 768, kernel 128,
    groups 16)`` with weight norm over ``dim=2``, SamePad, GELU) added to the frames; a LayerNorm, then
    8 **post-LN** transformer layers of width 768, 12 heads, FFN 3072 (GELU in float32).

    Poolers (open_clip CoCa ``AttentionalPooler``: learned queries, LayerNorm on queries and context,
    one multi-head cross-attention):

    * beat pooler ``attn_pool_contrast``: ``n_beat_queries`` queries of width ``beat_hidden_size``
      (256) attending to the 768-d frames (``kdim = vdim = hidden_size``), then ``ln_contrast`` and the
      matrix ``proj_contrast`` (256 x 256): the **beat embeddings** ``(batch, n_q, 256)``. Their mean is
      the **rhythm embedding** (the zero-shot / CLIP feature, L2-normalised by the caller); the mean
      after ``ln_contrast`` but before ``proj_contrast`` is the linear-probe feature (``pooler_output``).
    * token pooler ``attn_pool_caption``: ``n_token_queries`` (128) queries of width
      ``token_hidden_size`` (768), then ``ln_caption``: the ECG tokens the caption decoder attends to.

    **Beat queries.** "Beats" are learned queries, not detected heartbeats, and the sources disagree
    on their number: the released ``fuyingw/MELP_Encoder`` config says **14** (the default here);
    ``MELPModel``'s own default is 13; the ``main_pretrain.py`` argparse default (used by the README
    command, which trains from scratch: the only path that passes it) is 12; with an ECG-FM init
    checkpoint (``--ecg_encoder_weight``) the encoder is built without the argument, so ``ECGFMModel``'s
    default **10** is used (the init checkpoint itself has 10 queries, which MELP does not load); the
    paper's ablation (secondary source) finds 16 best. A converted checkpoint must take ``n_q`` from the
    shape of its ``attn_pool_contrast.query``, never from this default.

    Args:
        num_leads: input leads (input channels of the first conv).
        lead_names: the leads in model order; default MIMIC-IV-ECG order (I, II, III, aVR, aVF, aVL,
            V1-V6), as ``EcgFeatureExtractor.from_preset("melp")`` produces it.
        sampling_rate: expected sampling rate in Hz (the input contract; the extractor resamples).
        num_samples: expected input length (10 s at 500 Hz); any length giving at least one frame works.
        conv_dim / conv_kernel / conv_stride: channels, kernel and stride of each conv block.
        conv_bias: bias in the conv blocks (official: none).
        hidden_size: transformer width.
        num_hidden_layers: transformer layers.
        num_attention_heads: attention heads of the transformer.
        intermediate_size: FFN width.
        layer_norm_eps: epsilon of every LayerNorm and of the GroupNorm (torch's default, as fairseq).
        num_conv_pos_embeddings: kernel of the convolutional position embedding.
        num_conv_pos_embedding_groups: groups of that convolution.
        hidden_dropout: dropout after attention and FFN outputs and on the encoder input (0.1).
        attention_dropout: dropout on the attention probabilities (0.1).
        activation_dropout: dropout after the FFN activation (0.0).
        input_dropout: fairseq's ``dropout_input``, after ``post_extract_proj`` (0.1). (fairseq's
            ``dropout_features`` = 0.1 only feeds the unused wav2vec2 quantiser targets: not kept.)
        layerdrop: probability of skipping a transformer layer while training (0.0).
        feature_grad_mult: gradients into the conv front-end are scaled by this (0.1 in pretraining;
            fairseq fine-tuning uses 0.0, which runs the front-end without gradients).
        n_beat_queries: beat queries of ``attn_pool_contrast`` (see above; 14 = released encoder).
        beat_hidden_size: width of the beat queries / beat embeddings (= MELP's shared space, 256).
        n_token_queries: queries of ``attn_pool_caption`` (128).
        token_hidden_size: width of the ECG tokens (= the caption decoder's width, 768).
        pooler_num_attention_heads: heads of both poolers (8).
        classifier_dropout: dropout before the linear probe head (MELP: 0).
        initializer_range: std of the normal init of linear layers (fairseq ``init_bert_params``: 0.02).
    """

    model_type = "melp_ecg"

    num_leads: int = 12
    lead_names: list[str] | tuple[str, ...] | None = None
    sampling_rate: int = 500
    num_samples: int = 5000
    conv_dim: list[int] | tuple[int, ...] = (256, 256, 256, 256)
    conv_kernel: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    conv_stride: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    conv_bias: bool = False
    hidden_size: int = 768
    num_hidden_layers: int = 8
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-5
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    input_dropout: float = 0.1
    layerdrop: float = 0.0
    feature_grad_mult: float = 0.1
    n_beat_queries: int = 14
    beat_hidden_size: int = 256
    n_token_queries: int = 128
    token_hidden_size: int = 768
    pooler_num_attention_heads: int = 8
    classifier_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.lead_names is None and self.num_leads == len(MIMIC_LEADS):
            self.lead_names = list(MIMIC_LEADS)
        if self.lead_names is not None:
            self.lead_names = list(self.lead_names)
        self.conv_dim = list(self.conv_dim)
        self.conv_kernel = list(self.conv_kernel)
        self.conv_stride = list(self.conv_stride)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation: shapes that must agree."""
        name = "MelpEcgConfig"
        if self.lead_names is not None and len(self.lead_names) != self.num_leads:
            raise ValueError(f"{name}: lead_names has {len(self.lead_names)} entries but num_leads={self.num_leads}")
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) > 0):
            raise ValueError(
                f"{name}: conv_dim {self.conv_dim}, conv_kernel {self.conv_kernel} and conv_stride "
                f"{self.conv_stride} need one entry per conv block (at least one)"
            )
        for width, heads, what in (
            (self.hidden_size, self.num_attention_heads, "hidden_size / num_attention_heads"),
            (self.beat_hidden_size, self.pooler_num_attention_heads, "beat_hidden_size / pooler_num_attention_heads"),
            (self.token_hidden_size, self.pooler_num_attention_heads, "token_hidden_size / pooler_num_attention_heads"),
            (self.hidden_size, self.num_conv_pos_embedding_groups, "hidden_size / num_conv_pos_embedding_groups"),
        ):
            if heads < 1 or width % heads:
                raise ValueError(f"{name}: {what} = {width} / {heads} is not a whole number")
        if self.n_beat_queries < 1 or self.n_token_queries < 1:
            raise ValueError(f"{name}: n_beat_queries and n_token_queries must be >= 1")
        if self.num_frames(self.num_samples) < 1:
            raise ValueError(f"{name}: num_samples={self.num_samples} gives no frame through the conv blocks")

    def num_frames(self, num_samples: int) -> int:
        """Frames the conv front-end makes of ``num_samples`` samples (312 for 5000 with the defaults)."""
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            num_samples = (num_samples - kernel) // stride + 1 if num_samples >= kernel else 0
        return num_samples


@strict
class MelpDecoderConfig(PreTrainedConfig):
    r"""The CoCa multimodal caption decoder of [`MelpModel`] (open_clip ``MultimodalTransformer``).

    Each layer is a causal self-attention block followed by a separate cross-attention block to the
    ECG tokens, each pre-LN with its own MLP (``mlp_ratio`` x width, GELU); the cross-attention block
    normalises the ECG tokens with its own ``ln_1_kv``. Then ``ln_final`` and ``text_projection``
    (width x vocabulary). It has no token or position embeddings of its own: it consumes the text
    encoder's token states. No dropout.

    Args:
        hidden_size: width (= text tower width = ECG token width; 768).
        num_hidden_layers: decoder layers (6).
        num_attention_heads: heads of every attention (8).
        mlp_ratio: MLP width / hidden_size (4).
        vocab_size: output vocabulary; ``None`` takes the text tower's (``text_config.vocab_size``).
        context_length: the longest text the official decoder's causal mask covers (128); documented
            only (the mask is built per call).
        layer_norm_eps: epsilon of its LayerNorms.
    """

    model_type = "melp_decoder"

    hidden_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    mlp_ratio: float = 4.0
    vocab_size: int | None = None
    context_length: int = 128
    layer_norm_eps: float = 1e-5

    def validate_architecture(self):
        """Part of ``@strict`` validation."""
        if self.num_attention_heads < 1 or self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"MelpDecoderConfig: hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )


@strict
class MelpConfig(RemoteCodeConfigMixin, PreTrainedConfig):
    r"""Configuration of [`MelpModel`], [`MelpForConditionalGeneration`] and [`MelpForSequenceClassification`].

    Args:
        ecg_config: [`MelpEcgConfig`] (or its dict) of the ECG tower.
        text_config: any ``AutoConfig`` (or dict with ``model_type``) of a BERT-like text encoder.
            Default: a ``BertConfig`` with ``fuyingw/heart_bert``'s dimensions plus ``[BOS]``
            (:data:`HEART_BERT_CONFIG`), built offline. ``is_decoder`` is set from ``text_mode``.
        decoder_config: [`MelpDecoderConfig`] (or its dict) of the caption decoder.
        text_mode: ``"causal"`` (official: the text tower runs with a causal mask, as
            ``AutoModelForCausalLM(..., is_decoder=True)``; MELP trains it so although heart_bert is an
            MLM) or ``"bidirectional"`` (a plain BERT mask, the community fork's switch). In both
            modes the text input is ``[BOS] report [SEP] [PAD]...`` (the processor's output) and the
            model appends ``[CLS]`` after the padding: the **hidden state at that last position is
            the global text feature** (with fixed padding to 127 + 1 tokens it sits at position 127,
            as in the official code). Caveat: in ``"bidirectional"`` mode the decoder's inputs see
            the tokens they predict, so the caption loss is not a real objective there.
        num_frozen_text_layers: bottom text layers kept frozen (official: 6 of 12; the embeddings
            stay trainable, as the new ``[BOS]`` row must learn). ``0`` trains all; ``-1`` freezes the
            whole text tower, embeddings included.
        sentence_separator_token_id: the token that ends a report sentence for the beat-level loss
            (official: 18, "." in the MedCPT / PubMedBERT vocabulary). The processor's
            ``sentence_index`` is used when given; this id is the fallback for raw ``input_ids``.
        pad_token_id / bos_token_id / eos_token_id / cls_token_id: the text special tokens
            (``[PAD]`` 0, MELP's added ``[BOS]`` 30522, ``[SEP]`` 3 ends a generated report,
            ``[CLS]`` 2 is appended for the global feature).
        projection_dim: the shared space (256); must equal ``ecg_config.beat_hidden_size``.
        text_projection_hidden_dim: hidden width of ``proj_t`` = ``Linear(text -> 256) -> GELU ->
            Linear(256 -> projection_dim)``.
        logit_scale_init_value: initial ``logit_scale`` = ``ln(1 / 0.07)``.
        max_logit_scale: the scale ``exp(logit_scale)`` is kept within [1, ``max_logit_scale``]: the
            official code clamps the parameter to [0, ln 100] after every optimizer step; here the
            forward clamps it (so the loss never sees a value outside), and
            ``post_optimizer_step`` clamps the stored parameter as the official code does.
        clip_loss_weight / caption_loss_weight / local_loss_weight: ``loss = 1.0 L_clip + 2.0
            L_caption + 0.2 L_local`` (the README's pretraining command).
        local_loss_temperatures: the beat-level loss's three factors (GLoRIA's temp1, temp2, temp3:
            4, 5, 10; see ``MelpModel.local_loss``).
        initializer_range: std of the normal init of the projections and the decoder's linear layers.
    """

    model_type = "melp"
    sub_configs_defaults: ClassVar[dict] = {
        "ecg_config": SubConfigSpec(config_class=MelpEcgConfig),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", init_kwargs=dict(HEART_BERT_CONFIG)),
        "decoder_config": SubConfigSpec(config_class=MelpDecoderConfig),
    }

    ecg_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    decoder_config: PreTrainedConfig | dict | None = None
    text_mode: Literal["causal", "bidirectional"] = "causal"
    num_frozen_text_layers: int = 6
    sentence_separator_token_id: int = MEDCPT_TOKEN_IDS["period"]
    pad_token_id: int = MEDCPT_TOKEN_IDS["pad"]
    bos_token_id: int = MEDCPT_TOKEN_IDS["bos"]
    eos_token_id: int = MEDCPT_TOKEN_IDS["sep"]
    cls_token_id: int = MEDCPT_TOKEN_IDS["cls"]
    projection_dim: int = 256
    text_projection_hidden_dim: int = 256
    logit_scale_init_value: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    clip_loss_weight: float = 1.0
    caption_loss_weight: float = 2.0
    local_loss_weight: float = 0.2
    local_loss_temperatures: list[float] | tuple[float, ...] = (4.0, 5.0, 10.0)
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.local_loss_temperatures = [float(t) for t in self.local_loss_temperatures]
        if self.text_config is not None and self.text_mode in ("causal", "bidirectional"):
            # MELP loads its text tower with is_decoder=True: BertModel then builds a causal mask.
            self.text_config.is_decoder = self.text_mode == "causal"
        if self.decoder_config is not None and self.decoder_config.vocab_size is None and self.text_config is not None:
            self.decoder_config.vocab_size = self.text_config.vocab_size

    def validate_architecture(self):
        """Part of ``@strict`` validation: the parts must fit together."""
        name = "MelpConfig"
        ecg, text, decoder = self.ecg_config, self.text_config, self.decoder_config
        if ecg is not None and not isinstance(ecg, MelpEcgConfig):
            raise ValueError(f"{name}: ecg_config must be a MelpEcgConfig, got {type(ecg).__name__}")
        if decoder is not None and not isinstance(decoder, MelpDecoderConfig):
            raise ValueError(f"{name}: decoder_config must be a MelpDecoderConfig, got {type(decoder).__name__}")
        if ecg is not None and ecg.beat_hidden_size != self.projection_dim:
            raise ValueError(
                f"{name}: projection_dim={self.projection_dim} must equal ecg_config.beat_hidden_size="
                f"{ecg.beat_hidden_size} (the beat embeddings live in the shared space)"
            )
        if decoder is not None and text is not None and ecg is not None:
            widths = {"decoder_config.hidden_size": decoder.hidden_size, "text_config.hidden_size": text.hidden_size,
                      "ecg_config.token_hidden_size": ecg.token_hidden_size}
            if len(set(widths.values())) != 1:
                raise ValueError(f"{name}: the caption decoder, the text tower and the ECG tokens need one width, got {widths}")
        if decoder is not None and text is not None and decoder.vocab_size is not None and decoder.vocab_size != text.vocab_size:
            raise ValueError(
                f"{name}: decoder_config.vocab_size={decoder.vocab_size} must equal text_config.vocab_size={text.vocab_size}"
            )
        if self.num_frozen_text_layers < -1:
            raise ValueError(f"{name}: num_frozen_text_layers must be >= -1, got {self.num_frozen_text_layers}")
        if self.max_logit_scale < 1.0 or self.logit_scale_init_value > math.log(self.max_logit_scale):
            raise ValueError(
                f"{name}: need 1 <= exp(logit_scale_init_value) <= max_logit_scale, got "
                f"{math.exp(self.logit_scale_init_value):.3f} and {self.max_logit_scale}"
            )
        if len(self.local_loss_temperatures) != 3:
            raise ValueError(f"{name}: local_loss_temperatures must be 3 numbers, got {self.local_loss_temperatures}")

    # TextTowerMixin (text_tower.py) reads these two names.
    @property
    def freeze_text_layers(self) -> int:
        """``num_frozen_text_layers`` under the name ``TextTowerMixin`` reads."""
        return self.num_frozen_text_layers

    @property
    def cache_text_features(self) -> bool:
        """MELP never caches text features (its text tower is trained)."""
        return False


#: MELP's input: 12 leads in MIMIC-IV-ECG order (aVF before aVL), 10 s at 500 Hz, one min-max over
#: the whole record to [0, 1] (with 1e-8 in the denominator), no filter (the released training
#: dataset reads raw WFDB; the emrich2023 cleaning of the preprocessing script is not applied).
MELP_INPUT = {
    "sampling_rate": 500,
    "leads": list(MIMIC_LEADS),
    "num_samples": 5000,
    "normalization": "minmax_record",
    "bandpass": None,
}

#: The MELP family (see ``registry``). ``embeddings``: what ``ecg-feature-extraction`` can return, by
#: name -> the attribute of the ECG tower's output.
FAMILY = ModelFamily(
    name="melp",
    title="MELP",
    paper="Wang, Xu, Yu, From Token to Rhythm: a multi-scale approach for ECG-language pretraining (ICML 2025, arXiv 2506.21803)",
    model_types={
        "melp": ModelType(
            config="configuration_melp.MelpConfig",
            models={
                "AutoModel": "modeling_melp.MelpModel",
                "AutoModelForSequenceClassification": "modeling_melp.MelpForSequenceClassification",
                "AutoModelForMultimodalLM": "modeling_melp.MelpForConditionalGeneration",
            },
            processor="processing_melp.MelpProcessor",
        ),
        "melp_ecg": ModelType(
            config="configuration_melp.MelpEcgConfig",
            models={
                "AutoModel": "modeling_melp.MelpEcgModel",
                "AutoModelForSequenceClassification": "modeling_melp.MelpEcgForSequenceClassification",
            },
        ),
    },
    input_presets={"melp": MELP_INPUT},
    pipelines=("ecg-feature-extraction", "zero-shot-ecg-classification", "ecg-report-generation"),
    embeddings={"rhythm": "rhythm_embeds", "beats": "beat_embeds", "probe": "pooler_output"},
    checkpoints=(
        CheckpointEntry(
            "ecg-hub/melp-base",
            "MelpModel",
            "melp",
            "MELP ECG-language model: wav2vec2 ECG tower (8 layers, 14 beat queries) + heart_bert text tower "
            "+ caption decoder; zero-shot, probing and report generation, 12 leads at 500 Hz",
        ),
    ),
)

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "FAMILY",
    "HEART_BERT_CONFIG",
    "MEDCPT_TOKEN_IDS",
    "MELP_INPUT",
    "MelpConfig",
    "MelpDecoderConfig",
    "MelpEcgConfig",
]
