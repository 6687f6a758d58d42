"""MELP (Wang, Xu, Yu, ICML 2025, arXiv 2506.21803) as ``transformers`` models.

* [`MelpEcgModel`]: the ECG tower, a fairseq-signals wav2vec2 trunk ("small": conv front-end,
  convolutional positions, 8 post-LN layers) with MELP's two open_clip attentional poolers: beat
  embeddings ``(batch, n_q, 256)``, their mean (the rhythm embedding), the linear-probe feature and
  the 128 ECG tokens the caption decoder reads. Usable alone (the scope of ``fuyingw/MELP_Encoder``).
* [`MelpModel`]: ECG tower + BERT text tower (causal mask by default, as MELP loads it) + ``proj_t``,
  ``sent_proj``, the CoCa caption decoder and the temperature; ``forward(return_loss=True)`` gives
  ``loss = 1.0 L_clip + 2.0 L_caption + 0.2 L_local`` and the three terms.
* [`MelpForConditionalGeneration`]: ECG tower + text tower + caption decoder with ``generate()``
  (report writing, starting from ``[BOS]``).
* [`MelpForSequenceClassification`] / [`MelpEcgForSequenceClassification`]: the ECG tower with a
  linear head on the probe feature (the MELP linear probe), from a ``melp`` / ``melp_ecg`` checkpoint.

Module names follow the official checkpoints (``reference/MELP.md`` section 8), so a converter only
strips prefixes: ``ecg_encoder.ecg_encoder.<trunk>`` -> ``ecg_encoder.<trunk>``, ``ecg_encoder.<pooler>``
-> ``ecg_encoder.<pooler>``, ``lm_model.bert.*`` -> ``text_model.*``; ``proj_t``, ``sent_proj``,
``text_decoder`` and ``logit_scale`` keep their names.

Deviations from the official code, all in behaviour it never exercises or gets wrong:

* padded time (``attention_mask``) and missing leads (``lead_mask``) are handled (the official code
  always sees full 10-s, 12-lead inputs): missing leads and padded samples are zero-filled, the
  GroupNorm statistics use the valid frames only, padded frames are zeroed before the positional
  convolution (the official code zeroes them only after it) and masked as attention keys everywhere;
* the beat-level loss skips pairs whose report has no sentence (the official code drops them from the
  sentence list only, which shifts the batch indices);
* the decoder's ``text_projection`` is initialised (upstream leaves it ``torch.empty``).

Imports torch and transformers only (Hub remote-code bundle).
"""

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput, SequenceClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_melp import DEFAULT_TEXT_MODEL, MelpConfig, MelpDecoderConfig, MelpEcgConfig
from .contrastive import contrastive_loss
from .heads import SequenceClassificationHeadMixin
from .layers import eager_attention_forward
from .text_tower import TextTowerMixin, freeze_text_tower, load_text_tower, split_tower_kwargs

logger = logging.get_logger(__name__)


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


@dataclass
class MelpEcgModelOutput(ModelOutput):
    """Output of [`MelpEcgModel`].

    Args:
        last_hidden_state: ``(batch, frames, hidden_size)`` transformer output per frame (312 frames of
            16 samples for 5000 samples); values at padded frames are computed but meaningless.
        pooler_output: ``(batch, beat_hidden_size)`` the linear-probe feature: mean of the beat
            queries after ``ln_contrast``, before ``proj_contrast`` (MELP's ``ext_ecg_emb``).
        beat_embeds: ``(batch, n_beat_queries, beat_hidden_size)`` beat embeddings (after
            ``proj_contrast``): what the beat-level loss aligns with report sentences.
        rhythm_embeds: ``(batch, beat_hidden_size)`` their mean, the global (zero-shot / CLIP) ECG
            embedding, not normalised.
        ecg_tokens: ``(batch, n_token_queries, token_hidden_size)`` the caption decoder's context.
        frame_mask: ``(batch, frames)`` bool, True for frames of real samples (None without masks).
        hidden_states / attentions: per transformer layer, when requested.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    beat_embeds: torch.FloatTensor | None = None
    rhythm_embeds: torch.FloatTensor | None = None
    ecg_tokens: torch.FloatTensor | None = None
    frame_mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MelpOutput(ModelOutput):
    """Output of [`MelpModel.forward`].

    Args:
        loss: ``clip_loss_weight * loss_clip + caption_loss_weight * loss_caption + local_loss_weight
            * loss_local``, when ``return_loss``.
        loss_clip: rhythm level, symmetric InfoNCE between ECG and report embeddings (gathered
            across processes).
        loss_caption: token level, teacher-forced next-token cross-entropy of the decoder (pad ignored).
        loss_local: beat level, the GLoRIA-style beat-sentence loss ([`melp_local_loss`]).
        logits_per_ecg: ``(n_ecg, n_text)`` = ``exp(logit_scale) * cosine``.
        logits_per_text: its transpose.
        ecg_embeds / text_embeds: L2-normalised rhythm and report embeddings ``(batch, projection_dim)``.
        caption_logits: ``(batch, tokens, vocab)``; position ``t`` predicts token ``t + 1``.
        beat_embeds: ``(batch, n_q, projection_dim)``.
        sentence_embeds: ``(batch, max_sentences, projection_dim)`` (``sent_proj`` of the mean token
            state of each sentence) and ``sentence_mask`` ``(batch, max_sentences)``, when the loss is computed.
        ecg_model_output / text_model_output: the towers' outputs.
        losses: ``{"clip", "caption", "local"}`` unweighted, for logging.
    """

    loss: torch.FloatTensor | None = None
    loss_clip: torch.FloatTensor | None = None
    loss_caption: torch.FloatTensor | None = None
    loss_local: torch.FloatTensor | None = None
    logits_per_ecg: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    ecg_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    caption_logits: torch.FloatTensor | None = None
    beat_embeds: torch.FloatTensor | None = None
    sentence_embeds: torch.FloatTensor | None = None
    sentence_mask: torch.BoolTensor | None = None
    ecg_model_output: ModelOutput | None = None
    text_model_output: ModelOutput | None = None
    losses: dict[str, torch.FloatTensor] | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


@dataclass
class MelpCaptionOutput(ModelOutput):
    """Output of [`MelpForConditionalGeneration.forward`].

    Args:
        loss: caption cross-entropy (labels shifted by one inside; pad and -100 ignored), with ``labels``.
        logits: ``(batch, tokens, vocab)``; position ``t`` predicts token ``t + 1``.
        ecg_tokens: ``(batch, n_token_queries, width)`` the decoder's ECG context (reusable).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    ecg_tokens: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------------
# ECG tower: conv front-end, positions, post-LN transformer (fairseq-signals), attentional poolers
# --------------------------------------------------------------------------------------------------


class MelpGradMultiply(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward (fairseq ``GradMultiply``, ``feature_grad_mult``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class MelpGroupNorm(nn.GroupNorm):
    """fairseq ``Fp32GroupNorm(dim, dim)`` (one group per channel, statistics over time, in float32).
    With ``frame_mask`` ``(batch, frames)`` the statistics use the valid frames only."""

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = self.weight.float(), self.bias.float()
        if frame_mask is None:
            return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type_as(x)
        x32 = x.float()
        keep = frame_mask[:, None, :].to(torch.float32)
        count = keep.sum(-1, keepdim=True).clamp(min=1.0)
        mean = (x32 * keep).sum(-1, keepdim=True) / count
        var = ((x32 - mean) ** 2 * keep).sum(-1, keepdim=True) / count
        out = (x32 - mean) * torch.rsqrt(var + self.eps)
        return (out * weight[None, :, None] + bias[None, :, None]).type_as(x)


class MelpConvLayer(nn.Sequential):
    """One fairseq conv block: ``0`` Conv1d (no bias), ``1`` Dropout(0), ``2`` GroupNorm (first block
    only), then GELU. Keys ``conv_layers.N.0.weight`` and ``conv_layers.0.2.{weight,bias}``."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, bias: bool, group_norm: bool, eps: float):
        modules: list[nn.Module] = [nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias), nn.Dropout(0.0)]
        if group_norm:
            modules.append(MelpGroupNorm(out_dim, out_dim, eps=eps, affine=True))
        modules.append(nn.GELU())
        super().__init__(*modules)
        self.kernel_size, self.stride = kernel, stride

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        for module in self:
            x = module(x, frame_mask) if isinstance(module, MelpGroupNorm) else module(x)
        return x


class MelpConvFeatureExtractor(nn.Module):
    """fairseq ``ConvFeatureExtraction`` in ``"default"`` mode: ``(batch, leads, samples)`` ->
    ``(batch, conv_dim[-1], frames)``. A frame is valid when every sample it reads is."""

    def __init__(self, config: MelpEcgConfig):
        super().__init__()
        dims = [config.num_leads, *config.conv_dim]
        self.conv_layers = nn.ModuleList(
            MelpConvLayer(dims[i], dims[i + 1], k, s, config.conv_bias, i == 0, config.layer_norm_eps)
            for i, (k, s) in enumerate(zip(config.conv_kernel, config.conv_stride))
        )

    def forward(
        self, input_values: torch.Tensor, sample_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden, mask = input_values, sample_mask
        for layer in self.conv_layers:
            if mask is not None:  # a frame reading any padded sample is padding
                padded = F.max_pool1d((~mask)[:, None].to(hidden.dtype), layer.kernel_size, layer.stride)
                mask = padded[:, 0] == 0
            hidden = layer(hidden, mask)
        return hidden, mask


class MelpSamePad(nn.Module):
    """fairseq ``SamePad``: drop the last frame after an even-kernel convolution."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove else x


class MelpConvPositionalEncoding(nn.Module):
    """fairseq-signals ``ConvPositionalEncoding``: ``pos_conv`` = ``0`` weight-normed (``dim=2``)
    ``Conv1d(hidden, hidden, 128, groups 16)``, ``1`` SamePad, ``2`` GELU; ``(batch, frames, hidden)``
    in and out. Keys ``conv_pos.pos_conv.0.parametrizations.weight.original{0,1}`` and ``.bias``."""

    def __init__(self, config: MelpEcgConfig):
        super().__init__()
        kernel = config.num_conv_pos_embeddings
        conv = nn.Conv1d(
            config.hidden_size, config.hidden_size, kernel_size=kernel, padding=kernel // 2,
            groups=config.num_conv_pos_embedding_groups,
        )
        conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.pos_conv = nn.Sequential(conv, MelpSamePad(kernel), nn.GELU())

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.pos_conv(hidden_states.transpose(1, 2)).transpose(1, 2)


class MelpEcgAttention(nn.Module):
    """fairseq ``MultiHeadAttention`` (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, with biases)
    through the transformers attention interface (``eager`` / ``sdpa``)."""

    def __init__(self, config: MelpEcgConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        width = config.hidden_size
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Unpack[TransformersKwargs]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0, scaling=self.scaling, **kwargs,
        )
        return self.out_proj(attn_output.reshape(*input_shape, -1).contiguous()), attn_weights


def gelu_fp32(x: torch.Tensor) -> torch.Tensor:
    """GELU computed in float32 (fairseq-signals' encoder layers)."""
    return F.gelu(x.float()).type_as(x)


class MelpEcgEncoderLayer(GradientCheckpointingLayer):
    """fairseq ``TransformerEncoderLayer`` with ``layer_norm_first=False`` (post-LN):
    ``x = LN(x + Drop(Attn(x)))``, then ``x = LN(x + Drop(fc2(Drop(GELU(fc1(x))))))``."""

    def __init__(self, config: MelpEcgConfig):
        super().__init__()
        self.self_attn = MelpEcgAttention(config)
        self.dropout1 = nn.Dropout(config.hidden_dropout)
        self.dropout2 = nn.Dropout(config.activation_dropout)
        self.dropout3 = nn.Dropout(config.hidden_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Unpack[TransformersKwargs]
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(hidden_states, attention_mask, **kwargs)
        hidden_states = self.self_attn_layer_norm(hidden_states + self.dropout1(attn_output))
        ffn = self.fc2(self.dropout2(gelu_fp32(self.fc1(hidden_states))))
        return self.final_layer_norm(hidden_states + self.dropout3(ffn))


class MelpEcgEncoder(nn.Module):
    """fairseq ``TransformerEncoder`` (post-LN): ``layer_norm`` on the input, dropout, ``layers``."""

    def __init__(self, config: MelpEcgConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layerdrop = config.layerdrop
        self.layers = nn.ModuleList(MelpEcgEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Unpack[TransformersKwargs]
    ) -> torch.Tensor:
        hidden_states = self.dropout(self.layer_norm(hidden_states))
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and float(torch.rand(())) < self.layerdrop:
                continue
            hidden_states = layer(hidden_states, attention_mask, **kwargs)
        return hidden_states


class MelpAttentionalPooler(nn.Module):
    """open_clip CoCa ``AttentionalPooler``: ``n_queries`` learned ``query`` vectors (``ln_q``) attend to
    the context (``ln_k``) through ``attn``, a torch ``nn.MultiheadAttention`` with ``kdim = vdim =
    context_dim`` (separate ``q/k/v_proj_weight`` when the widths differ, the packed
    ``in_proj_weight`` when they agree, as in the official checkpoints). Padded frames are masked keys."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, context: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        context = self.ln_k(context)
        query = self.ln_q(self.query).unsqueeze(0).expand(context.shape[0], -1, -1)
        key_padding_mask = ~frame_mask if frame_mask is not None else None
        return self.attn(query, context, context, key_padding_mask=key_padding_mask, need_weights=False)[0]


# --------------------------------------------------------------------------------------------------
# Caption decoder (open_clip MultimodalTransformer)
# --------------------------------------------------------------------------------------------------


class MelpResidualAttentionBlock(nn.Module):
    """open_clip ``ResidualAttentionBlock`` (pre-LN): ``x + Attn(ln_1(x), kv)``, then ``x +
    MLP(ln_2(x))``; a cross-attention block normalises its context with ``ln_1_kv``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float, is_cross_attention: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        if is_cross_attention:
            self.ln_1_kv = nn.LayerNorm(width, eps=eps)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        mlp_width = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, mlp_width)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(mlp_width, width))])
        )

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        query = self.ln_1(x)
        kv = self.ln_1_kv(context) if context is not None else query
        x = x + self.attn(query, kv, kv, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class MelpCaptionDecoder(nn.Module):
    """The CoCa multimodal decoder: per layer a causal self-attention block (``resblocks.N``) then a
    cross-attention block to the ECG tokens (``cross_attn.N``), then ``ln_final`` and
    ``text_projection`` ``(width, vocab)``. It reads the text tower's token states (no embeddings of
    its own). ``(ecg_tokens (B, Q, W), text_states (B, L, W))`` -> logits ``(B, L, vocab)``."""

    def __init__(self, config: MelpDecoderConfig):
        super().__init__()
        width, heads, ratio, eps = config.hidden_size, config.num_attention_heads, config.mlp_ratio, config.layer_norm_eps
        self.resblocks = nn.ModuleList(
            MelpResidualAttentionBlock(width, heads, ratio, eps) for _ in range(config.num_hidden_layers)
        )
        self.cross_attn = nn.ModuleList(
            MelpResidualAttentionBlock(width, heads, ratio, eps, is_cross_attention=True)
            for _ in range(config.num_hidden_layers)
        )
        self.ln_final = nn.LayerNorm(width, eps=eps)
        self.text_projection = nn.Parameter(torch.empty(width, config.vocab_size))

    def forward(self, ecg_tokens: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
        length = text_states.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=text_states.device).triu(1)
        hidden = text_states
        for self_block, cross_block in zip(self.resblocks, self.cross_attn):
            hidden = self_block(hidden, attn_mask=causal)
            hidden = cross_block(hidden, context=ecg_tokens)
        return self.ln_final(hidden) @ self.text_projection


# --------------------------------------------------------------------------------------------------
# Losses and sentences
# --------------------------------------------------------------------------------------------------


def sentence_index_from_ids(
    input_ids: torch.Tensor,
    separator_token_id: int,
    special_token_ids: Sequence[int],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(batch, tokens)`` long: the sentence of every token, ``-1`` for none (MELP's
    ``aggregate_sentence_emb``). A sentence runs up to and including a separator token; tokens after
    the last separator belong to none; special tokens (and masked positions) are in none; sentences
    with no other token are skipped, and the rest numbered 0, 1, ... per row."""
    is_separator = input_ids == separator_token_id
    segment = torch.cumsum(is_separator.long(), dim=1) - is_separator.long()
    in_sentence = segment < is_separator.sum(dim=1, keepdim=True)
    special = torch.tensor(sorted({int(i) for i in special_token_ids}), device=input_ids.device, dtype=input_ids.dtype)
    content = in_sentence & ~torch.isin(input_ids, special)
    if attention_mask is not None:
        content &= attention_mask != 0
    has_content = torch.zeros(input_ids.shape[0], input_ids.shape[1] + 1, dtype=torch.long, device=input_ids.device)
    has_content.scatter_add_(1, segment, content.long())
    numbering = torch.cumsum((has_content > 0).long(), dim=1) - 1
    return torch.where(content, numbering.gather(1, segment), torch.full_like(segment, -1))


def sentence_means(token_states: torch.Tensor, sentence_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch, max_sentences, hidden)`` mean token state of every sentence and the ``(batch,
    max_sentences)`` bool mask of sentences that exist, from ``sentence_index`` (``-1`` = none)."""
    num_sentences = max(int(sentence_index.max()) + 1, 1) if sentence_index.numel() else 1
    member = F.one_hot(sentence_index.clamp(min=0), num_sentences) * (sentence_index >= 0)[..., None]
    member = member.to(token_states.dtype)  # (batch, tokens, sentences)
    counts = member.sum(dim=1)
    sums = member.transpose(1, 2) @ token_states
    return sums / counts.clamp(min=1.0)[..., None], counts > 0


def _cosine(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """GLoRIA's cosine over the last axis: ``x . y / max(|x| |y|, eps)``."""
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp(min=eps)


def melp_local_loss(
    beat_embeds: torch.Tensor,
    sentence_embeds: torch.Tensor,
    sentence_mask: torch.Tensor,
    temperatures: Sequence[float] = (4.0, 5.0, 10.0),
) -> torch.Tensor:
    """MELP's beat-level loss (``BeatAlignmentModule``, GLoRIA style), exactly as the official code:

    for ECG ``i`` and report ``j``: ``a = softmax_beats(t1 * softmax_sentences(B_i S_j^T)^T)`` (a double
    softmax on the raw beat . sentence products), ``c = a B_i`` (a context vector per sentence),
    ``s(i, j) = t3 * log sum_k exp(t2 * cos(S_jk, c_k))``; the loss is the symmetric cross-entropy of
    ``s`` over the batch with matched pairs as positives, divided by 2. ``t1, t2, t3 = 4, 5, 10``.

    Args:
        beat_embeds: ``(batch, n_q, dim)`` beat embeddings (after ``proj_contrast``).
        sentence_embeds: ``(batch, max_sentences, dim)`` sentence embeddings (after ``sent_proj``).
        sentence_mask: ``(batch, max_sentences)`` bool, the sentences that exist.

    Pairs whose report has no sentence are left out (the official code's index shift is not kept);
    with none left the loss is 0.
    """
    temp1, temp2, temp3 = temperatures
    keep = sentence_mask.any(dim=1)
    if not bool(keep.any()):
        return beat_embeds.sum() * 0.0 + sentence_embeds.sum() * 0.0
    beats, sentences, mask = beat_embeds[keep], sentence_embeds[keep], sentence_mask[keep]
    columns = []
    for j in range(beats.shape[0]):  # report j against every ECG
        sentence = sentences[j][mask[j]]  # (n_j, dim)
        attn = torch.einsum("bqd,sd->bqs", beats, sentence).softmax(dim=-1)  # over sentences
        attn = (attn.transpose(1, 2) * temp1).softmax(dim=-1)  # (batch, n_j, n_q), over beats
        context = attn @ beats  # (batch, n_j, dim)
        similarity = _cosine(sentence.unsqueeze(0).expand_as(context), context)
        columns.append(torch.log(torch.exp(similarity * temp2).sum(dim=1)))
    similarities = torch.stack(columns, dim=1) * temp3  # (ECG, report)
    targets = torch.arange(similarities.shape[0], device=similarities.device)
    return (F.cross_entropy(similarities, targets) + F.cross_entropy(similarities.t(), targets)) / 2


def caption_loss(
    logits: torch.Tensor, labels: torch.Tensor, pad_token_id: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Teacher-forced next-token cross-entropy: ``logits[:, t]`` against ``labels[:, t + 1]``, with pad
    tokens, ``-100`` and (when given) masked positions ignored (open_clip ``CoCaLoss``, pad id 0)."""
    targets = labels[:, 1:].clone()
    ignore = targets == pad_token_id
    if attention_mask is not None:
        ignore |= attention_mask[:, 1:] == 0
    targets[ignore] = -100
    if not bool((targets != -100).any()):
        return logits.sum() * 0.0
    predicted = logits[:, :-1]
    return F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


# --------------------------------------------------------------------------------------------------
# Weight init (shared by the ECG-only and the composite models)
# --------------------------------------------------------------------------------------------------


def _init_melp_conv_layer(module: "MelpConvLayer") -> None:
    """fairseq's conv front-end init: kaiming-normal conv weights (zero bias)."""
    init.kaiming_normal_(module[0].weight)
    if module[0].bias is not None:
        init.zeros_(module[0].bias)


def _init_melp_positional_conv(module: "MelpConvPositionalEncoding") -> None:
    """fairseq's positional conv init: direction ``v`` normal with std sqrt(4 / (kernel * hidden)),
    magnitude ``g = |v|`` (per kernel position, ``dim=2``), zero bias."""
    conv = module.pos_conv[0]
    std = math.sqrt(4.0 / (conv.kernel_size[0] * conv.in_channels))
    direction = conv.parametrizations.weight.original1
    init.normal_(direction, mean=0.0, std=std)
    init.copy_(conv.parametrizations.weight.original0, torch.norm_except_dim(direction, 2, 2))
    init.zeros_(conv.bias)


def _init_melp_module(module: nn.Module) -> None:
    """MELP-specific init, after transformers' generic one (normal linear weights, zero biases, unit
    norms, torch's MultiheadAttention init): kaiming conv front-end, the weight-normed positional
    conv (std sqrt(4 / (kernel * hidden))), unit-normal pooler queries, ``proj_contrast`` with std
    ``hidden ** -0.5`` and the decoder's ``text_projection`` with std ``width ** -0.5``.

    The conv blocks and the positional encoding own no parameter directly (only their ``Conv1d``
    children do), and transformers' init of custom-code models skips such modules; so the ECG tower
    initialises them itself (it runs after its children: the generic ``normal(0.02)`` of the convs
    is overwritten, while weights loaded by ``from_pretrained`` are flagged and left alone). Without
    this the conv front-end kept std 0.02 and its output was ~1e-4: every LayerNorm after it divided
    by ~sqrt(eps), the gradients into the trunk reached ~1e4 and both towers collapsed to one vector
    within a few steps (CLIP loss stuck at ln(batch))."""
    if isinstance(module, MelpConvLayer):
        _init_melp_conv_layer(module)
    elif isinstance(module, MelpConvPositionalEncoding):
        _init_melp_positional_conv(module)
    elif isinstance(module, MelpAttentionalPooler):
        init.normal_(module.query, mean=0.0, std=1.0)
    elif isinstance(module, MelpEcgModel):
        init.normal_(module.proj_contrast, mean=0.0, std=module.config.hidden_size**-0.5)
        for layer in module.feature_extractor.conv_layers:
            _init_melp_conv_layer(layer)
        _init_melp_positional_conv(module.conv_pos)
    elif isinstance(module, MelpCaptionDecoder):
        init.normal_(module.text_projection, mean=0.0, std=module.text_projection.shape[0] ** -0.5)


# --------------------------------------------------------------------------------------------------
# The ECG tower
# --------------------------------------------------------------------------------------------------


class MelpEcgPreTrainedModel(PreTrainedModel):
    """Config class, input names, attention flags and init of the MELP ECG-tower models."""

    config: MelpEcgConfig
    base_model_prefix = "ecg_encoder"
    main_input_name = "input_values"
    input_modalities = ("time",)
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["MelpEcgEncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_record_outputs: ClassVar[dict] = {"hidden_states": MelpEcgEncoderLayer, "attentions": MelpEcgAttention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        _init_melp_module(module)


class MelpEcgModel(MelpEcgPreTrainedModel):
    """MELP's ECG tower: the fairseq-signals wav2vec2 trunk plus the beat and token poolers.

    Submodule names (stable: the converter from the official checkpoints maps onto them)::

        feature_extractor.conv_layers.{0..3}.0          Conv1d(in, 256, 2, stride 2, bias=False)
        feature_extractor.conv_layers.0.2               GroupNorm(256, 256) (first block only)
        layer_norm                                      LayerNorm(256)
        post_extract_proj                               Linear(256 -> 768)
        conv_pos.pos_conv.0                             weight-normed Conv1d(768, 768, 128, groups=16)
                                                        (parametrizations.weight.original0/1, bias)
        encoder.layer_norm                              LayerNorm(768), applied to the encoder input
        encoder.layers.{0..7}.self_attn.{q,k,v,out}_proj
        encoder.layers.{0..7}.self_attn_layer_norm
        encoder.layers.{0..7}.fc1 / fc2 / final_layer_norm
        attn_pool_contrast.query                        (n_q, 256)
        attn_pool_contrast.attn                         nn.MultiheadAttention(256, 8, kdim=vdim=768):
                                                        q_proj_weight, k_proj_weight, v_proj_weight,
                                                        in_proj_bias, out_proj
        attn_pool_contrast.ln_q / ln_k                  LayerNorm(256) / LayerNorm(768)
        ln_contrast                                     LayerNorm(256)
        proj_contrast                                   Parameter (256, 256), used as beats @ proj
        attn_pool_caption.{query, attn, ln_q, ln_k}     (128, 768); packed in_proj_weight (2304, 768)
        ln_caption                                      LayerNorm(768)

    Official key ``ecg_encoder.ecg_encoder.<trunk key>`` is ``<trunk key>`` here and
    ``ecg_encoder.<pooler key>`` is ``<pooler key>`` (inside a composite, both under ``ecg_encoder.``).
    """

    def __init__(self, config: MelpEcgConfig):
        super().__init__(config)
        self.config = config
        self.feature_extractor = MelpConvFeatureExtractor(config)
        embed = config.conv_dim[-1]
        self.layer_norm = nn.LayerNorm(embed, eps=config.layer_norm_eps)
        self.post_extract_proj = nn.Linear(embed, config.hidden_size) if embed != config.hidden_size else None
        self.dropout_input = nn.Dropout(config.input_dropout)
        self.conv_pos = MelpConvPositionalEncoding(config)
        self.encoder = MelpEcgEncoder(config)
        heads = config.pooler_num_attention_heads
        self.attn_pool_contrast = MelpAttentionalPooler(config.beat_hidden_size, config.hidden_size, heads, config.n_beat_queries)
        self.ln_contrast = nn.LayerNorm(config.beat_hidden_size)
        self.proj_contrast = nn.Parameter(torch.empty(config.beat_hidden_size, config.beat_hidden_size))
        self.attn_pool_caption = MelpAttentionalPooler(config.token_hidden_size, config.hidden_size, heads, config.n_token_queries)
        self.ln_caption = nn.LayerNorm(config.token_hidden_size)
        self.post_init()

    def freeze_feature_encoder(self) -> None:
        """No gradients into the conv front-end (the HuBERT / wav2vec2 fine-tuning convention)."""
        self.feature_extractor.requires_grad_(False)

    def _check_inputs(self, input_values, attention_mask, lead_mask) -> None:
        config, name = self.config, type(self).__name__
        if input_values is None or input_values.ndim != 3 or input_values.shape[1] != config.num_leads:
            shape = None if input_values is None else tuple(input_values.shape)
            raise ValueError(
                f"{name}: input_values must be (batch, leads, samples) with leads = {config.num_leads} "
                f"({', '.join(config.lead_names or [])}), got {shape}; EcgFeatureExtractor.from_preset('melp') "
                "puts records in this order and zero-fills missing leads (lead_mask = 0)"
            )
        batch_size, _, num_samples = input_values.shape
        if config.num_frames(num_samples) < 1:
            raise ValueError(f"{name}: {num_samples} samples give no frame through the conv front-end")
        if lead_mask is not None and tuple(lead_mask.shape) != (batch_size, config.num_leads):
            raise ValueError(f"{name}: lead_mask must be (batch, leads) = ({batch_size}, {config.num_leads}), got {tuple(lead_mask.shape)}")
        if attention_mask is not None and tuple(attention_mask.shape) != (batch_size, num_samples):
            raise ValueError(f"{name}: attention_mask must be (batch, samples) = ({batch_size}, {num_samples}), got {tuple(attention_mask.shape)}")

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MelpEcgModelOutput:
        r"""
        Args:
            input_values: ``(batch, leads, samples)`` ECG as ``EcgFeatureExtractor.from_preset("melp")``
                returns it (MIMIC lead order, record min-max to [0, 1], 500 Hz).
            attention_mask: ``(batch, samples)``, 1 for real samples, 0 for padding. A frame that reads
                any padded sample is padding: hidden from attention and from the poolers.
            lead_mask: ``(batch, leads)``, 1 for recorded leads; missing leads are zero-filled (as
                MELP's random lead masking zeroes them).

        Returns:
            [`MelpEcgModelOutput`]: frame states, the probe feature (``pooler_output``), beat and
            rhythm embeddings and the ECG tokens.
        """
        self._check_inputs(input_values, attention_mask, lead_mask)
        values = input_values
        if lead_mask is not None:
            values = values * (lead_mask != 0)[:, :, None].to(values.dtype)
        sample_mask = None
        if attention_mask is not None:
            sample_mask = attention_mask != 0
            values = torch.where(sample_mask[:, None, :], values, torch.zeros((), dtype=values.dtype, device=values.device))
            tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
            if not tracing and bool(sample_mask.all()):
                sample_mask = None  # nothing padded: the exact official computation (no data-dependent branch when traced)

        multiplier = self.config.feature_grad_mult
        if multiplier > 0:
            features, frame_mask = self.feature_extractor(values, sample_mask)
            if multiplier != 1.0 and torch.is_grad_enabled():
                features = MelpGradMultiply.apply(features, multiplier)
        else:
            with torch.no_grad():
                features, frame_mask = self.feature_extractor(values, sample_mask)

        features = self.layer_norm(features.transpose(1, 2))
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        features = self.dropout_input(features)
        if frame_mask is not None:
            # A record with no valid frame keeps them all (no empty attention row; its output is meaningless).
            frame_mask = frame_mask | ~frame_mask.any(dim=1, keepdim=True)
            features = torch.where(frame_mask[:, :, None], features, torch.zeros((), dtype=features.dtype, device=features.device))
        hidden_states = features + self.conv_pos(features)
        attention_bias = None
        if frame_mask is not None:
            hidden_states = torch.where(frame_mask[:, :, None], hidden_states, torch.zeros((), dtype=hidden_states.dtype, device=hidden_states.device))
            attention_bias = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=frame_mask)
        hidden_states = self.encoder(hidden_states, attention_bias, **kwargs)

        beats = self.ln_contrast(self.attn_pool_contrast(hidden_states, frame_mask))
        beat_embeds = beats @ self.proj_contrast
        tokens = self.ln_caption(self.attn_pool_caption(hidden_states, frame_mask))
        return MelpEcgModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=beats.mean(dim=1),
            beat_embeds=beat_embeds,
            rhythm_embeds=beat_embeds.mean(dim=1),
            ecg_tokens=tokens,
            frame_mask=frame_mask,
        )


class MelpEcgForSequenceClassification(SequenceClassificationHeadMixin, MelpEcgPreTrainedModel):
    """The MELP linear probe on an ECG-tower (``melp_ecg``) checkpoint: ``Dropout(classifier_dropout)``
    and ``Linear(beat_hidden_size -> num_labels)`` on the probe feature (mean of the beat queries
    after ``ln_contrast``, before ``proj_contrast``). ``freeze_base_model()`` gives MELP's frozen probe."""

    def __init__(self, config: MelpEcgConfig):
        super().__init__(config)
        self.ecg_encoder = MelpEcgModel(config)
        self.init_classification_head(config.beat_hidden_size, config.classifier_dropout)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        r"""``input_values`` ``(batch, leads, samples)``, masks as [`MelpEcgModel`]; ``labels``
        ``(batch, num_labels)`` float multi-hot (BCE) or ``(batch,)`` class ids (CE)."""
        return self.classify_ecg(input_values, attention_mask, lead_mask, labels, **kwargs)


# --------------------------------------------------------------------------------------------------
# The composite models
# --------------------------------------------------------------------------------------------------


class MelpPreTrainedModel(PreTrainedModel):
    """Config class, input names and init of the MELP models built from a [`MelpConfig`]."""

    config: MelpConfig
    # The ECG tower is the base model: a classifier's keys share its ``ecg_encoder.*`` and a
    # ``melp_ecg`` checkpoint loads into it.
    base_model_prefix = "ecg_encoder"
    main_input_name = "input_values"
    input_modalities = ("time", "text")
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["MelpEcgEncoderLayer", "MelpResidualAttentionBlock"]
    _supports_sdpa = True
    _supports_flash_attn = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        _init_melp_module(module)
        if isinstance(module, (MelpModel, MelpForConditionalGeneration)) and hasattr(module, "logit_scale"):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class MelpTextMixin(TextTowerMixin):
    """MELP's text side shared by [`MelpModel`] and [`MelpForConditionalGeneration`]: the text tower
    (``text_model``, built by ``TextTowerMixin``; BERT's unused pooler is dropped, as MELP's
    ``BertForCausalLM`` has none), its freezing, and one text pass that appends ``[CLS]``."""

    def init_melp_text_tower(self, text_model: PreTrainedModel | None) -> None:
        config = self.config
        causal = config.text_mode == "causal"
        if text_model is not None and bool(getattr(text_model.config, "is_decoder", causal)) != causal:
            raise ValueError(
                f"MELP text_mode={config.text_mode!r} needs a text tower built with is_decoder={causal} "
                f"(its attention layers fix causality when built); got is_decoder={text_model.config.is_decoder}. "
                "Load it with is_decoder=... or use MelpModel.from_ecg_text_pretrained."
            )
        self.init_text_tower(text_model)
        if getattr(self.text_model, "pooler", None) is not None:
            self.text_model.pooler = None

    def apply_freezing(self) -> None:
        """MELP's freezing: the bottom ``num_frozen_text_layers`` text layers (the embeddings stay
        trainable: the added ``[BOS]`` row must learn); ``-1`` freezes the whole text tower. The
        pooler was dropped (`init_melp_text_tower`)."""
        freeze_text_tower(
            self.text_model,
            self.config.num_frozen_text_layers,
            pooling="cls",
            freeze_embeddings=False,
            setting="num_frozen_text_layers",
        )

    def encode_text_tokens(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, ModelOutput]:
        """One text pass over ``input_ids`` + an appended ``[CLS]`` (MELP's ``_encode_text``).

        Returns ``(token_states (batch, tokens, hidden), global (batch, hidden), text_output)``: the
        states of the given tokens and the state at the appended last position (the global feature).
        The attention mask defaults to ``input_ids != pad_token_id`` (as MELP derives it)."""
        config = self.config
        if attention_mask is None:
            attention_mask = (input_ids != config.pad_token_id).long()
        batch_size = input_ids.shape[0]
        cls = torch.full((batch_size, 1), config.cls_token_id, dtype=input_ids.dtype, device=input_ids.device)
        text_kwargs = {
            "input_ids": torch.cat([input_ids, cls], dim=1),
            "attention_mask": torch.cat([attention_mask, attention_mask.new_ones(batch_size, 1)], dim=1),
        }
        if token_type_ids is not None:
            text_kwargs["token_type_ids"] = torch.cat([token_type_ids, token_type_ids.new_zeros(batch_size, 1)], dim=1)
        text_output = self.text_model(**text_kwargs, use_cache=False, return_dict=True)
        hidden = text_output.last_hidden_state
        return hidden[:, :-1], hidden[:, -1], text_output

    def special_token_ids(self) -> list[int]:
        """The text special tokens left out of sentence means when no ``sentence_index`` is given."""
        config = self.config
        return [config.pad_token_id, config.cls_token_id, config.eos_token_id, config.bos_token_id]


class MelpModel(MelpTextMixin, MelpPreTrainedModel):
    """MELP: ECG tower + text tower + projections + caption decoder, trained by three losses.

    Inputs use distinct names for the two modalities (as [`MelpProcessor`] returns them):
    ``input_values`` / ``ecg_attention_mask`` / ``lead_mask`` for the ECG; ``input_ids`` ("[BOS]
    report [SEP] [PAD]...", the model appends ``[CLS]``) / ``attention_mask`` / ``sentence_index`` for
    the text.

    Example:
        >>> model = MelpModel.from_ecg_text_pretrained(MelpEcgConfig(), "fuyingw/heart_bert")
        >>> batch = processor(ecg=signals, text=reports, sampling_rate=500, return_tensors="pt")
        >>> out = model(**batch, return_loss=True)
        >>> out.loss, out.loss_clip, out.loss_caption, out.loss_local
    """

    def __init__(
        self,
        config: MelpConfig,
        ecg_model: MelpEcgModel | None = None,
        text_model: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        ecg_model = ecg_model if ecg_model is not None else MelpEcgModel(config.ecg_config)
        ecg_model.config = config.ecg_config
        self.ecg_encoder = ecg_model
        self.init_melp_text_tower(text_model)
        text_hidden = config.text_config.hidden_size
        self.proj_t = nn.Sequential(
            nn.Linear(text_hidden, config.text_projection_hidden_dim),
            nn.GELU(),
            nn.Linear(config.text_projection_hidden_dim, config.projection_dim),
        )
        self.sent_proj = nn.Linear(text_hidden, config.projection_dim)
        self.text_decoder = MelpCaptionDecoder(config.decoder_config)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()
        self.apply_freezing()

    @classmethod
    def from_ecg_text_pretrained(
        cls,
        ecg_model_name_or_path: str | MelpEcgConfig | None = None,
        text_model_name_or_path: str = DEFAULT_TEXT_MODEL,
        tokenizer=None,
        **kwargs,
    ) -> "MelpModel":
        """Pair an ECG tower with a pretrained BERT text encoder, as MELP builds its model.

        The text tower is loaded with ``is_decoder`` set from ``text_mode`` (causal by default, as
        MELP's ``AutoModelForCausalLM(..., is_decoder=True)``), ``[BOS]`` is added to the tokenizer
        (``MelpProcessor`` does the same) and the token embeddings are resized to it; the special
        token ids and the separator ("." id) are read from the tokenizer unless given.

        Args:
            ecg_model_name_or_path: a [`MelpEcgConfig`] (random tower), a path / Hub id of a saved
                [`MelpEcgModel`], or ``None`` for the default tower.
            text_model_name_or_path: path or Hub id of a BERT-like text encoder (default ``fuyingw/heart_bert``).
            tokenizer: its tokenizer (default: loaded from ``text_model_name_or_path``).
            **kwargs: [`MelpConfig`] fields; other ``ecg_*`` / ``text_*`` keys go to the towers'
                ``from_pretrained`` without the prefix.

        The projections, the decoder and the logit scale are newly initialised.
        """
        from transformers import AutoTokenizer

        from .processing_melp import add_bos_token

        towers = split_tower_kwargs(kwargs, (f.name for f in dataclasses.fields(MelpConfig)), ("ecg_", "text_"))
        ecg_kwargs, text_kwargs = towers["ecg_"], towers["text_"]
        if isinstance(ecg_model_name_or_path, MelpEcgConfig):
            ecg_model = MelpEcgModel(ecg_model_name_or_path)
        elif ecg_model_name_or_path is None:
            ecg_model = MelpEcgModel(MelpEcgConfig(**ecg_kwargs))
        else:
            ecg_model = MelpEcgModel.from_pretrained(ecg_model_name_or_path, **ecg_kwargs)
        causal = kwargs.get("text_mode", "causal") == "causal"
        text_model = load_text_tower(text_model_name_or_path, is_decoder=causal, **text_kwargs)
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer or text_model_name_or_path)
        add_bos_token(tokenizer)
        if len(tokenizer) > text_model.config.vocab_size:
            text_model.resize_token_embeddings(len(tokenizer))
        separator = tokenizer.convert_tokens_to_ids(".")
        defaults = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "cls_token_id": tokenizer.cls_token_id,
            "sentence_separator_token_id": separator if separator != tokenizer.unk_token_id else None,
        }
        for key, value in defaults.items():
            if value is not None:
                kwargs.setdefault(key, value)
        text_attention = text_model.config._attn_implementation
        ecg_attention = ecg_model.config._attn_implementation
        kwargs.setdefault("projection_dim", ecg_model.config.beat_hidden_size)
        kwargs.setdefault(
            "decoder_config",
            MelpDecoderConfig(hidden_size=text_model.config.hidden_size, vocab_size=text_model.config.vocab_size),
        )
        config = MelpConfig(ecg_config=ecg_model.config, text_config=text_model.config, **kwargs)
        config.text_config._attn_implementation = text_attention
        # The composite config holds a new ECG sub-config: keep the tower's attention implementation
        # (otherwise it is None and every ECG attention layer falls back to eager, with a warning).
        config.ecg_config._attn_implementation = ecg_attention
        logger.info("MELP projections, caption decoder and logit scale are newly initialised; pretrain before use.")
        return cls(config, ecg_model=ecg_model, text_model=text_model)

    # ---- features ---------------------------------------------------------------------------------

    def get_ecg_features(
        self,
        input_values: torch.Tensor,
        ecg_attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """The ECG in the shared space: ``pooler_output`` ``(batch, projection_dim)`` is the rhythm
        embedding (mean of the projected beats; not yet normalised); ``last_hidden_state`` the frames.
        ``ecg_attention_mask`` (or ``attention_mask``) ``(batch, samples)``; ``lead_mask`` ``(batch, leads)``."""
        if ecg_attention_mask is None:
            ecg_attention_mask = kwargs.pop("attention_mask", None)
        output = self.ecg_encoder(input_values, attention_mask=ecg_attention_mask, lead_mask=lead_mask, return_dict=True)
        return BaseModelOutputWithPooling(
            last_hidden_state=output.last_hidden_state, pooler_output=output.rhythm_embeds,
            hidden_states=output.hidden_states, attentions=output.attentions,
        )

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Tokenised text (``MelpProcessor``: ``[BOS] text [SEP] [PAD]...``) in the shared space:
        ``pooler_output`` ``(batch, projection_dim)`` = ``proj_t`` of the state at the appended
        ``[CLS]`` (not yet normalised); ``last_hidden_state`` the token states. Other keys of the
        processor's output (``sentence_index``) are accepted and ignored."""
        token_states, global_state, text_output = self.encode_text_tokens(input_ids, attention_mask, token_type_ids)
        return BaseModelOutputWithPooling(
            last_hidden_state=token_states,
            pooler_output=self.proj_t(global_state),
            hidden_states=getattr(text_output, "hidden_states", None),
            attentions=getattr(text_output, "attentions", None),
        )

    # ---- temperature ------------------------------------------------------------------------------

    def scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` with ``logit_scale`` clamped to [0, ln max_logit_scale] (MELP clamps the
        parameter after every step; clamping here keeps the forward within the range too)."""
        return self.logit_scale.clamp(0.0, math.log(self.config.max_logit_scale)).exp()

    @torch.no_grad()
    def post_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        """After each optimizer step: clamp ``logit_scale`` to [0, ln 100] in place (the official
        ``on_train_batch_end``). Returns ``{"logit_scale": exp(logit_scale)}`` for logging."""
        self.logit_scale.clamp_(0.0, math.log(self.config.max_logit_scale))
        return {"logit_scale": float(self.logit_scale.exp())}

    # ---- losses -----------------------------------------------------------------------------------

    def local_loss(self, beat_embeds, sentence_embeds, sentence_mask) -> torch.Tensor:
        """The beat-level loss of [`melp_local_loss`] with ``config.local_loss_temperatures``."""
        return melp_local_loss(beat_embeds, sentence_embeds, sentence_mask, self.config.local_loss_temperatures)

    # ---- forward ----------------------------------------------------------------------------------

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        ecg_attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        sentence_index: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MelpOutput | tuple:
        r"""Embed both modalities, compare every ECG with every report, caption the reports.

        Args:
            input_values: ``(n_ecg, leads, samples)`` ECG.
            input_ids: ``(n_text, tokens)`` text as [`MelpProcessor`] returns it.
            attention_mask: ``(n_text, tokens)`` the **text** mask (default: ``input_ids != pad``).
            ecg_attention_mask: ``(n_ecg, samples)`` ECG time mask; ``lead_mask`` ``(n_ecg, leads)``.
            sentence_index: ``(n_text, tokens)`` sentence of each token (``-1``: none), from the
                processor; default: computed from ``input_ids`` with ``sentence_separator_token_id``.
            return_loss: compute the three losses (needs paired inputs, row ``i`` of each a pair);
                ``None`` means "when training".

        Returns:
            [`MelpOutput`].
        """
        if input_values is None or input_ids is None:
            raise ValueError("MelpModel.forward needs both input_values (ECG) and input_ids (text)")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if return_loss is None:
            return_loss = self.training
        config = self.config
        if attention_mask is None:
            attention_mask = (input_ids != config.pad_token_id).long()
        ecg_output = self.ecg_encoder(input_values, attention_mask=ecg_attention_mask, lead_mask=lead_mask, return_dict=True)
        token_states, global_state, text_output = self.encode_text_tokens(input_ids, attention_mask, token_type_ids)
        ecg_embeds = F.normalize(ecg_output.rhythm_embeds, dim=-1)
        text_embeds = F.normalize(self.proj_t(global_state), dim=-1)
        scale = self.scale()
        logits_per_ecg = scale * ecg_embeds @ text_embeds.t()
        caption_logits = self.text_decoder(ecg_output.ecg_tokens, token_states)

        loss = loss_clip = loss_caption = loss_local = losses = None
        sentence_embeds = sentence_mask = None
        if return_loss:
            if ecg_embeds.shape[0] != text_embeds.shape[0]:
                raise ValueError(
                    f"return_loss needs paired inputs: got {ecg_embeds.shape[0]} ECGs and {text_embeds.shape[0]} texts"
                )
            if sentence_index is None:
                sentence_index = sentence_index_from_ids(
                    input_ids, config.sentence_separator_token_id, self.special_token_ids(), attention_mask
                )
            means, sentence_mask = sentence_means(token_states, sentence_index.to(token_states.device))
            sentence_embeds = self.sent_proj(means)
            loss_clip = contrastive_loss(ecg_embeds, text_embeds, scale)
            loss_caption = caption_loss(caption_logits, input_ids, config.pad_token_id, attention_mask)
            loss_local = self.local_loss(ecg_output.beat_embeds, sentence_embeds, sentence_mask)
            loss = (
                config.clip_loss_weight * loss_clip
                + config.caption_loss_weight * loss_caption
                + config.local_loss_weight * loss_local
            )
            losses = {"clip": loss_clip, "caption": loss_caption, "local": loss_local}
        output = MelpOutput(
            loss=loss,
            loss_clip=loss_clip,
            loss_caption=loss_caption,
            loss_local=loss_local,
            logits_per_ecg=logits_per_ecg,
            logits_per_text=logits_per_ecg.t(),
            ecg_embeds=ecg_embeds,
            text_embeds=text_embeds,
            caption_logits=caption_logits,
            beat_embeds=ecg_output.beat_embeds,
            sentence_embeds=sentence_embeds,
            sentence_mask=sentence_mask,
            ecg_model_output=ecg_output,
            text_model_output=text_output,
            losses=losses,
        )
        return output if return_dict else output.to_tuple()


class MelpForConditionalGeneration(MelpTextMixin, MelpPreTrainedModel, GenerationMixin):
    """MELP's report writer: ECG tower -> 128 ECG tokens; text tower + caption decoder predict the
    next token. ``generate(input_values=..., max_new_tokens=...)`` starts from ``[BOS]`` and stops at
    ``[SEP]`` (``eos_token_id``). Without a KV cache: every step re-encodes the prefix (the text tower
    is causal, so this is exact; the ECG tokens are computed once per call).

    Loads a [`MelpModel`] checkpoint (its ``proj_t``, ``sent_proj`` and ``logit_scale`` are ignored).

    Example:
        >>> model = MelpForConditionalGeneration.from_pretrained("path/to/melp")
        >>> ids = model.generate(**processor(ecg=signal, sampling_rate=500, return_tensors="pt"), max_new_tokens=64)
        >>> processor.batch_decode(ids)
    """

    # generate() builds the text from [BOS]; the ECG comes as a keyword (input_values).
    main_input_name = "input_ids"
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^proj_t\.", r"^sent_proj\.", r"^logit_scale$"]

    def __init__(self, config: MelpConfig):
        super().__init__(config)
        self.ecg_encoder = MelpEcgModel(config.ecg_config)
        self.ecg_encoder.config = config.ecg_config
        self.init_melp_text_tower(None)
        self.text_decoder = MelpCaptionDecoder(config.decoder_config)
        self.post_init()
        self.apply_freezing()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # no KV cache: each step re-encodes the prefix

    def get_ecg_tokens(
        self,
        input_values: torch.Tensor,
        ecg_attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(batch, n_token_queries, width)`` ECG tokens the decoder attends to."""
        return self.ecg_encoder(input_values, attention_mask=ecg_attention_mask, lead_mask=lead_mask, return_dict=True).ecg_tokens

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        ecg_attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        ecg_tokens: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MelpCaptionOutput | tuple:
        r"""Next-token logits of the report given the ECG.

        Args:
            input_ids: ``(batch, tokens)`` text so far (``[BOS] ...``).
            input_values / ecg_attention_mask / lead_mask: the ECG (not needed with ``ecg_tokens``).
            attention_mask: ``(batch, tokens)`` text mask (default ``input_ids != pad``).
            labels: ``(batch, tokens)`` target ids aligned with ``input_ids`` (usually ``input_ids``
                itself); shifted inside, pad and ``-100`` ignored.
            ecg_tokens: precomputed ``get_ecg_tokens(...)``.

        Returns:
            [`MelpCaptionOutput`] with ``logits`` ``(batch, tokens, vocab)``.
        """
        if input_ids is None:
            raise ValueError("MelpForConditionalGeneration.forward needs input_ids (start with [BOS])")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if ecg_tokens is None:
            if input_values is None:
                raise ValueError("MelpForConditionalGeneration.forward needs input_values (ECG) or ecg_tokens")
            ecg_tokens = self.get_ecg_tokens(input_values, ecg_attention_mask, lead_mask)
        token_states, _, _ = self.encode_text_tokens(input_ids, attention_mask, token_type_ids)
        logits = self.text_decoder(ecg_tokens, token_states)
        loss = None
        if labels is not None:
            loss = caption_loss(logits, labels, self.config.pad_token_id, attention_mask)
        output = MelpCaptionOutput(loss=loss, logits=logits, ecg_tokens=ecg_tokens)
        return output if return_dict else output.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, ecg_tokens=None, **kwargs):
        """Every step gets the whole prefix (no cache) and the ECG tokens computed once."""
        return {"input_ids": input_ids, "attention_mask": attention_mask, "ecg_tokens": ecg_tokens}

    @torch.no_grad()
    def generate(
        self,
        input_values: torch.Tensor | None = None,
        ecg_attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        ecg_tokens: torch.Tensor | None = None,
        **kwargs,
    ):
        """Write reports: ``GenerationMixin.generate`` (greedy by default; ``num_beams``, ``do_sample``,
        ``max_new_tokens``... as usual) from ``[BOS]`` (or the given ``input_ids`` prefix) on the ECG
        tokens of ``input_values``. The feature extractor's ``attention_mask`` may be passed as
        ``ecg_attention_mask`` (or ``attention_mask`` when no ``input_ids`` are given). Returns the
        token ids (``[BOS]`` first), as ``generate`` does; without ``max_length`` / ``max_new_tokens``
        anywhere, reports run to ``decoder_config.context_length`` (128) tokens at most."""
        if ecg_tokens is None:
            if input_values is None:
                raise ValueError("MelpForConditionalGeneration.generate needs input_values (ECG) or ecg_tokens")
            if ecg_attention_mask is None and input_ids is None:
                ecg_attention_mask = kwargs.pop("attention_mask", None)
            ecg_tokens = self.get_ecg_tokens(input_values, ecg_attention_mask, lead_mask)
        if input_ids is None:
            input_ids = torch.full(
                (ecg_tokens.shape[0], 1), self.config.bos_token_id, dtype=torch.long, device=ecg_tokens.device
            )
        kwargs["use_cache"] = False
        generation = kwargs.get("generation_config") or self.generation_config
        asked = any(kwargs.get(key) is not None for key in ("max_length", "max_new_tokens"))
        if not asked and generation is not None and generation.max_length is None and generation.max_new_tokens is None:
            # Reports up to the decoder's context (MELP: 128 tokens), not the library's default of 20.
            kwargs["max_length"] = self.config.decoder_config.context_length
        return super().generate(input_ids=input_ids, ecg_tokens=ecg_tokens, **kwargs)


class MelpForSequenceClassification(SequenceClassificationHeadMixin, MelpPreTrainedModel):
    """MELP's linear probe from a full ``melp`` checkpoint: the ECG tower (``ecg_encoder.*``; the text
    tower, projections and decoder of a [`MelpModel`] checkpoint are ignored) and ``Dropout`` +
    ``Linear(beat_hidden_size -> num_labels)`` on the probe feature."""

    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [
        r"^text_model\.", r"^proj_t\.", r"^sent_proj\.", r"^text_decoder\.", r"^logit_scale$"
    ]

    def __init__(self, config: MelpConfig):
        super().__init__(config)
        self.ecg_encoder = MelpEcgModel(config.ecg_config)
        self.ecg_encoder.config = config.ecg_config
        self.init_classification_head(config.ecg_config.beat_hidden_size, config.ecg_config.classifier_dropout)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        ecg_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        r"""``input_values`` ``(batch, leads, samples)``; the time mask as ``attention_mask`` or
        ``ecg_attention_mask``; ``lead_mask``; ``labels`` float multi-hot or class ids."""
        mask = ecg_attention_mask if ecg_attention_mask is not None else attention_mask
        return self.classify_ecg(input_values, mask, lead_mask, labels, **kwargs)


__all__ = [
    "MelpCaptionDecoder",
    "MelpCaptionOutput",
    "MelpEcgForSequenceClassification",
    "MelpEcgModel",
    "MelpEcgModelOutput",
    "MelpEcgPreTrainedModel",
    "MelpForConditionalGeneration",
    "MelpForSequenceClassification",
    "MelpModel",
    "MelpOutput",
    "MelpPreTrainedModel",
    "caption_loss",
    "melp_local_loss",
    "sentence_index_from_ids",
    "sentence_means",
]
