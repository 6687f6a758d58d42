"""ECG-JEPA (Kim 2024, arXiv 2410.08559) as ``transformers`` models.

The encoder cuts every lead of a ``(batch, leads, samples)`` ECG into non-overlapping patches of
``patch_size`` samples, embeds each patch with one shared linear layer, and runs a pre-LN ViT over the
``leads x patches`` tokens (lead-major: token ``l * num_patches + p`` is patch ``p`` of lead ``l``).
Two details of the released model are kept because its weights only reproduce with them:

* a fixed 2-D sin-cos position table (first half of the width encodes the time patch, second half the
  lead) is **re-added to the input of every block**, not only once;
* **Cross-Pattern Attention (CroPA)**: a token attends only to tokens of its own lead (any time) and
  of its own time slot (any lead), 57 of 400 keys for the released shape. It is an attention mask,
  built by the transformers mask builder of the selected attention implementation (``"sdpa"`` by
  default, or ``"eager"``) and consumed through the transformers attention interface.

Missing leads and padded time (``lead_mask`` / ``attention_mask`` from ``EcgFeatureExtractor``) are
removed from attention as keys and from the mean pooling, so a record with missing leads gets exactly
the output that the official code gives when it is run on the subset of leads.

This file imports torch, transformers and its sibling modules only, so it can travel as Hub remote code.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_ecg_jepa import EcgJepaConfig

# ----------------------------------------------------------------------------------------------
# Positions and the CroPA mask: pure functions of the token grid, built per call (the table is cached
# per shape) so that any lead subset and any length up to the configured one work.
# ----------------------------------------------------------------------------------------------


def _sincos_1d(width: int, positions: torch.Tensor) -> torch.Tensor:
    """``(len(positions), width)`` table: ``sin(p * w_k)`` then ``cos(p * w_k)``, ``w_k = 10000^(-2k/width)``."""
    omega = 1.0 / 10000 ** (torch.arange(width // 2, dtype=torch.float64, device="cpu") / (width / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


@lru_cache(maxsize=32)
def sincos_position_table(width: int, num_leads: int, num_patches: int) -> torch.Tensor:
    """The fixed 2-D sin-cos position table of ECG-JEPA, ``(num_leads * num_patches, width)`` float32.

    Rows are lead-major (row ``l * num_patches + p`` is lead ``l``, time patch ``p``). Columns
    ``[0, width/2)`` encode the time patch index, ``[width/2, width)`` the lead index. Computed in
    float64 and rounded once, like the official numpy table, so the two agree to the last bit.
    Cached per shape: callers must not modify the returned tensor in place.
    """
    # Explicit CPU: the table is cached, and must not be created on a default (e.g. meta) device.
    time_index = torch.arange(num_patches, device="cpu").repeat(num_leads)
    lead_index = torch.arange(num_leads, device="cpu").repeat_interleave(num_patches)
    table = torch.cat([_sincos_1d(width // 2, time_index), _sincos_1d(width // 2, lead_index)], dim=1)
    return table.to(torch.float32)


def cross_pattern_mask_function(
    lead_ids: torch.Tensor,
    time_ids: torch.Tensor,
    token_valid: torch.Tensor | None,
    cross_pattern: bool = True,
) -> Callable:
    """A ``mask_function(batch_idx, head_idx, q_idx, kv_idx) -> bool`` for ``create_bidirectional_mask``.

    Args:
        lead_ids: ``(tokens,)`` lead index of each token.
        time_ids: ``(tokens,)`` time-patch index of each token.
        token_valid: ``(batch, tokens)`` bool, False for tokens of missing leads or padded time; None if
            all are valid.
        cross_pattern: CroPA (same lead or same time slot); False gives full attention.

    A query sees a key if the pattern allows it and the key is valid. An invalid query also sees
    itself, so that no row is empty: eager and SDPA then agree everywhere (an empty row is NaN or
    uniform depending on the kernel), and valid tokens never see invalid ones.
    """

    def mask_function(batch_idx, head_idx, q_idx, kv_idx):
        allowed = q_idx >= 0  # an all-True boolean of the right shape
        if cross_pattern:
            allowed = (lead_ids[q_idx] == lead_ids[kv_idx]) | (time_ids[q_idx] == time_ids[kv_idx])
        if token_valid is not None:
            allowed = allowed & (token_valid[batch_idx, kv_idx] | (q_idx == kv_idx))
        return allowed

    return mask_function


def build_attention_mask(config: EcgJepaConfig, embeddings: torch.Tensor, mask_function: Callable):
    """The ``(batch, 1, tokens, tokens)`` mask for the selected attention implementation (boolean for
    SDPA, additive 0 / dtype-minimum for eager) from an index-based ``mask_function``.

    ``create_bidirectional_mask(and_mask_function=...)`` builds the same mask but through ``torch.vmap``,
    which costs tens of milliseconds per call on a CPU; the CroPA function only indexes and compares,
    so the implementation's mask builder can broadcast it directly (``use_vmap=False``).
    """
    implementation = config._attn_implementation
    if implementation not in ALL_MASK_ATTENTION_FUNCTIONS:
        return create_bidirectional_mask(
            config=config, inputs_embeds=embeddings, attention_mask=None, and_mask_function=mask_function
        )
    batch_size, num_tokens = embeddings.shape[:2]
    return ALL_MASK_ATTENTION_FUNCTIONS[implementation](
        batch_size=batch_size,
        q_length=num_tokens,
        kv_length=num_tokens,
        mask_function=mask_function,
        attention_mask=None,
        allow_is_causal_skip=False,
        allow_is_bidirectional_skip=False,
        dtype=embeddings.dtype,
        config=config,
        use_vmap=False,
        device=embeddings.device,
    )


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


class EcgJepaPatchEmbeddings(nn.Module):
    """``(batch, leads, samples)`` mV -> ``(batch, leads * patches, hidden_size)`` by one shared
    ``Linear(patch_size -> hidden_size)`` per patch (the official ``W_P``; no convolution)."""

    def __init__(self, config: EcgJepaConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.projection = nn.Linear(config.patch_size, config.hidden_size)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        batch_size, num_leads, num_samples = input_values.shape
        patches = input_values.reshape(
            batch_size, num_leads * (num_samples // self.patch_size), self.patch_size
        )
        return self.projection(patches)


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability ``drop_prob``
    and rescale the kept ones by ``1 / (1 - drop_prob)``."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1.0 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    keep = hidden_states.new_empty(shape).bernoulli_(keep_prob)
    return hidden_states * keep / keep_prob


class EcgJepaDropPath(nn.Module):
    """Stochastic depth of one residual branch (see `drop_path`)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return drop_path(hidden_states, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention. ``query/key/value``: ``(batch, heads, tokens, head_dim)``;
    ``attention_mask``: additive ``(batch, 1, tokens, tokens)`` (0 allowed, dtype minimum blocked).
    Returns ``(batch, tokens, heads, head_dim)`` and the ``(batch, heads, tokens, tokens)`` weights."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class EcgJepaAttention(nn.Module):
    """Multi-head self-attention through the transformers attention interface (``eager``/``sdpa``)."""

    def __init__(self, config: EcgJepaConfig, hidden_size: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = False
        # The official checkpoint fuses these three as `qkv` (rows q, k, v); the converter splits it.
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
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
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1).contiguous())
        return attn_output, attn_weights


class EcgJepaMLP(nn.Module):
    """``Linear -> GELU -> dropout -> Linear -> dropout`` (the official ``Mlp``)."""

    def __init__(self, config: EcgJepaConfig, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.activation_fn(self.fc1(hidden_states)))
        return self.dropout(self.fc2(hidden_states))


class EcgJepaLayer(GradientCheckpointingLayer):
    """Pre-LN transformer block, used by the encoder and (with the predictor's sizes) the predictor.

    If ``position_embeddings`` is given it is added to the block input first, and the residual
    stream carries it on (the official ``block(x + pos)``).
    """

    def __init__(
        self,
        config: EcgJepaConfig,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        drop_path_rate: float,
        layer_index: int,
    ):
        super().__init__()
        # 0-based depth of this block; the init scales its output projections by 1/sqrt(2 (index + 1)).
        self.layer_index = layer_index
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = EcgJepaAttention(config, hidden_size, num_heads)
        self.attention_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = EcgJepaMLP(config, hidden_size, intermediate_size)
        self.drop_path = EcgJepaDropPath(drop_path_rate)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        if position_embeddings is not None:
            hidden_states = hidden_states + position_embeddings
        attn_output, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + self.drop_path(self.attention_dropout(attn_output))
        hidden_states = hidden_states + self.drop_path(self.mlp(self.layernorm_after(hidden_states)))
        return hidden_states


def _drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate per block, rising linearly from 0 to ``max_rate`` (plain Python: this
    runs in ``__init__``, where tensors may live on the meta device)."""
    return [max_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]


class EcgJepaPredictor(nn.Module):
    """The JEPA predictor: runs on each lead independently (no CroPA, no lead position).

    Visible context tokens of one lead are projected to ``predictor_hidden_size``, one learned
    ``mask_token`` is appended per masked time slot, a 1-D sin-cos time position is (re-)added before
    every block, and the outputs at the mask tokens are projected back to ``hidden_size``.
    """

    def __init__(self, config: EcgJepaConfig):
        super().__init__()
        self.config = config
        width = config.predictor_hidden_size
        self.embed = nn.Linear(config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        rates = _drop_path_rates(config.predictor_drop_path_rate, config.predictor_num_hidden_layers)
        self.layers = nn.ModuleList(
            EcgJepaLayer(
                config,
                width,
                config.predictor_num_attention_heads,
                config.predictor_intermediate_size,
                rate,
                i,
            )
            for i, rate in enumerate(rates)
        )
        self.layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.proj = nn.Linear(width, config.hidden_size)

    def forward(
        self,
        context: torch.Tensor,
        visible_time_ids: torch.Tensor,
        masked_time_ids: torch.Tensor,
        num_patches: int,
        visible_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            context: ``(batch, leads, visible, hidden_size)`` context-encoder output.
            visible_time_ids / masked_time_ids: ``(visible,)`` / ``(masked,)`` time-patch indices.
            num_patches: time patches per lead of the full input.
            visible_valid: ``(batch, leads, visible)`` bool; False keys (missing lead, padded time)
                are hidden from attention. None if all are valid.

        Returns:
            ``(batch, leads, masked, hidden_size)`` predicted target features of the masked slots.
        """
        batch_size, num_leads, num_visible, _ = context.shape
        num_masked = masked_time_ids.numel()
        hidden_states = self.embed(context).reshape(batch_size * num_leads, num_visible, -1)
        mask_tokens = self.mask_token.expand(batch_size * num_leads, num_masked, -1)
        hidden_states = torch.cat([hidden_states, mask_tokens], dim=1)

        # Predictor positions: the 2-D table with a single "lead" row, i.e. time encoded in the first
        # half of the width and the constant lead-0 code in the second (as the official code builds it).
        table = sincos_position_table(hidden_states.shape[-1], 1, num_patches).to(hidden_states)
        positions = table[torch.cat([visible_time_ids, masked_time_ids]).to(table.device)][None]

        padding_mask = None
        if visible_valid is not None:
            mask_tokens_valid = visible_valid.new_ones(batch_size, num_leads, num_masked)
            padding_mask = torch.cat([visible_valid, mask_tokens_valid], dim=2).reshape(
                batch_size * num_leads, -1
            )
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=padding_mask
        )

        every_layer = self.config.add_position_every_layer
        if not every_layer:
            hidden_states = hidden_states + positions
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, positions if every_layer else None)
        predictions = self.proj(self.layernorm(hidden_states[:, num_visible:]))
        return predictions.reshape(batch_size, num_leads, num_masked, -1)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class EcgJepaPreTrainedModel(PreTrainedModel):
    """Weight init, attention-implementation flags and output capture shared by the ECG-JEPA models."""

    config: EcgJepaConfig
    base_model_prefix = "ecg_jepa"
    main_input_name = "input_values"
    input_modalities = ("time",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["EcgJepaLayer"]
    # CroPA is an arbitrary boolean mask: SDPA and eager take it, plain flash kernels cannot.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_record_outputs = {"hidden_states": EcgJepaLayer, "attentions": EcgJepaAttention}
    # A pretraining checkpoint also holds the EMA target encoder and the predictor; the encoder and
    # the classifier load its context encoder and ignore the rest.
    _keys_to_ignore_on_load_unexpected = [r"^target_encoder\.", r"^predictor\."]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """The official init: truncated normal (std ``initializer_range``) for linear weights, zero
        biases, unit LayerNorms, and the two residual output projections of block ``i`` (0-based)
        scaled down by ``sqrt(2 (i + 1))``."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
        elif isinstance(module, EcgJepaLayer):
            # Runs after the children (smart_apply is post-order), so this overrides the plain init.
            scaled_std = std / math.sqrt(2.0 * (module.layer_index + 1))
            init.trunc_normal_(module.attention.o_proj.weight, std=scaled_std)
            init.trunc_normal_(module.mlp.fc2.weight, std=scaled_std)
        elif isinstance(module, EcgJepaPredictor):
            init.trunc_normal_(module.mask_token, std=std)


class EcgJepaModel(EcgJepaPreTrainedModel):
    """The ECG-JEPA encoder (the official ``MaskTransformer``), returning per-token features and their
    mean (the official ``representation``)."""

    def __init__(self, config: EcgJepaConfig):
        super().__init__(config)
        self.config = config
        self.patch_embeddings = EcgJepaPatchEmbeddings(config)
        rates = _drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
        self.layers = nn.ModuleList(
            EcgJepaLayer(
                config, config.hidden_size, config.num_attention_heads, config.intermediate_size, rate, i
            )
            for i, rate in enumerate(rates)
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> EcgJepaPatchEmbeddings:
        return self.patch_embeddings

    def _check_inputs(self, input_values, attention_mask, lead_mask, masked_time_patches) -> None:
        config = self.config
        if input_values is None:
            raise ValueError("EcgJepaModel: input_values (batch, leads, samples) is required")
        if input_values.ndim != 3 or input_values.shape[1] != config.num_leads:
            raise ValueError(
                f"EcgJepaModel: input_values must be (batch, leads, samples) with leads = {config.num_leads} "
                f"({', '.join(config.lead_names)}), got shape {tuple(input_values.shape)}; the feature "
                "extractor puts records in this lead order and zero-fills missing leads (lead_mask = 0)"
            )
        num_samples = input_values.shape[2]
        if num_samples % config.patch_size or not 0 < num_samples <= config.num_samples:
            raise ValueError(
                f"EcgJepaModel: input_values has {num_samples} samples; expected a positive multiple of "
                f"patch_size={config.patch_size} up to num_samples={config.num_samples} "
                f"({config.num_samples / config.sampling_rate:g} s at {config.sampling_rate} Hz)"
            )
        batch_size = input_values.shape[0]
        if lead_mask is not None and tuple(lead_mask.shape) != (batch_size, config.num_leads):
            raise ValueError(
                f"EcgJepaModel: lead_mask must be (batch, leads) = ({batch_size}, {config.num_leads}), "
                f"got {tuple(lead_mask.shape)}"
            )
        if attention_mask is not None and tuple(attention_mask.shape) != (batch_size, num_samples):
            raise ValueError(
                f"EcgJepaModel: attention_mask must be (batch, samples) = ({batch_size}, {num_samples}), "
                f"got {tuple(attention_mask.shape)}"
            )
        if masked_time_patches is not None:
            num_patches = num_samples // config.patch_size
            if masked_time_patches.dtype != torch.bool or tuple(masked_time_patches.shape) != (num_patches,):
                raise ValueError(
                    f"EcgJepaModel: masked_time_patches must be a bool tensor of shape ({num_patches},), got "
                    f"{masked_time_patches.dtype} {tuple(masked_time_patches.shape)}"
                )
            if bool(masked_time_patches.all()):
                raise ValueError(
                    "EcgJepaModel: masked_time_patches hides every time patch; keep at least one"
                )

    def token_validity(
        self,
        batch_size: int,
        num_patches: int,
        attention_mask: torch.Tensor | None,
        lead_mask: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """``(batch, leads * patches)`` bool, True for tokens of present leads and real time (a patch
        counts as real if any of its samples is), or None when everything is valid."""
        if attention_mask is None and lead_mask is None:
            return None
        device = (attention_mask if attention_mask is not None else lead_mask).device
        leads_ok = torch.ones(batch_size, self.config.num_leads, dtype=torch.bool, device=device)
        time_ok = torch.ones(batch_size, num_patches, dtype=torch.bool, device=device)
        if lead_mask is not None:
            leads_ok = lead_mask != 0
        if attention_mask is not None:
            time_ok = (attention_mask != 0).reshape(batch_size, num_patches, -1).any(dim=-1)
        return (leads_ok[:, :, None] & time_ok[:, None, :]).reshape(batch_size, -1)

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        masked_time_patches: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            input_values: ``(batch, leads, samples)`` float ECG in mV, leads in ``config.lead_names``
                order; ``samples`` is a multiple of ``config.patch_size`` up to ``config.num_samples``.
            attention_mask: ``(batch, samples)``, 1 for real samples and 0 for padding. Patches with
                no real sample are hidden from attention and from pooling.
            lead_mask: ``(batch, leads)``, 1 for recorded leads and 0 for zero-filled missing ones.
                Tokens of missing leads are hidden from attention (as keys) and from pooling, so the
                present leads get exactly the features of a model run on that lead subset.
            masked_time_patches: ``(patches,)`` bool, time slots to drop from the input in every lead
                and record (the JEPA context view). The output then has ``leads * visible`` tokens.
            output_hidden_states / output_attentions: also return every block's output / attention
                weights (attention weights need ``attn_implementation="eager"``).

        Returns:
            ``BaseModelOutputWithPooling`` with ``last_hidden_state`` ``(batch, leads * patches,
            hidden_size)`` after the final LayerNorm (lead-major token order) and ``pooler_output``
            ``(batch, hidden_size)``, the mean over the valid tokens. Features of hidden tokens
            (missing leads, padded time) are computed but meaningless.
        """
        self._check_inputs(input_values, attention_mask, lead_mask, masked_time_patches)
        batch_size, num_leads, num_samples = input_values.shape
        num_patches = num_samples // self.config.patch_size
        device = input_values.device

        embeddings = self.patch_embeddings(input_values)
        table = sincos_position_table(self.config.hidden_size, num_leads, num_patches)
        position_embeddings = table.to(device=device, dtype=embeddings.dtype)[None]
        lead_ids = torch.arange(num_leads, device=device).repeat_interleave(num_patches)
        time_ids = torch.arange(num_patches, device=device).repeat(num_leads)
        token_valid = self.token_validity(batch_size, num_patches, attention_mask, lead_mask)

        if masked_time_patches is not None:
            # The context view: keep the tokens of visible time slots (in every lead), with their
            # positions and pattern, exactly as the official encoder slices x, pos and the mask.
            keep = ~masked_time_patches.to(device)[time_ids]
            embeddings, position_embeddings = embeddings[:, keep], position_embeddings[:, keep]
            lead_ids, time_ids = lead_ids[keep], time_ids[keep]
            token_valid = token_valid[:, keep] if token_valid is not None else None

        cross_pattern = self.config.attention_pattern == "cropa"
        attention_bias = None
        if cross_pattern or token_valid is not None:
            attention_bias = build_attention_mask(
                self.config,
                embeddings,
                cross_pattern_mask_function(lead_ids, time_ids, token_valid, cross_pattern),
            )

        every_layer = self.config.add_position_every_layer
        hidden_states = embeddings if every_layer else embeddings + position_embeddings
        for layer in self.layers:
            hidden_states = layer(
                hidden_states, attention_bias, position_embeddings if every_layer else None, **kwargs
            )
        last_hidden_state = self.layernorm(hidden_states)

        if token_valid is None:
            pooled = last_hidden_state.mean(dim=1)
        else:
            weights = token_valid.to(last_hidden_state.dtype)[:, :, None]
            pooled = (last_hidden_state * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled)


@dataclass
class EcgJepaPreTrainingOutput(ModelOutput):
    r"""Output of [`EcgJepaForPreTraining`].

    Args:
        loss: scalar SmoothL1 between ``predicted_features`` and ``target_features`` (mean over
            valid masked tokens and features).
        predicted_features: ``(batch, leads, masked, hidden_size)`` predictor outputs at the masked slots.
        target_features: ``(batch, leads, masked, hidden_size)`` target-encoder features there,
            layer-normed over the feature axis (no affine).
        masked_time_patches: ``(patches,)`` bool, the time slots hidden from the context encoder.
        context_last_hidden_state: ``(batch, leads * visible, hidden_size)`` context-encoder output.
        hidden_states / attentions: of the context encoder, when requested.
    """

    loss: torch.FloatTensor | None = None
    predicted_features: torch.FloatTensor | None = None
    target_features: torch.FloatTensor | None = None
    masked_time_patches: torch.BoolTensor | None = None
    context_last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class EcgJepaForPreTraining(EcgJepaPreTrainedModel):
    """ECG-JEPA self-supervised pretraining: context encoder (``self.ecg_jepa``), EMA target encoder
    (``self.target_encoder``, no gradients) and predictor.

    One mask of time slots is drawn per call and shared by every record and every lead ("synchronised
    cross-lead masking", so a hidden patch cannot be copied from another lead at the same time). The
    target encoder sees the whole ECG; the context encoder sees the visible slots; the predictor
    predicts the layer-normed target features of the hidden slots, lead by lead; loss is SmoothL1.

    Training loop contract: after every optimizer step call ``post_optimizer_step(step, total_steps)``
    (EMA momentum linear from ``config.ema_momentum_start`` to ``config.ema_momentum_end``).
    The saved weights load into ``EcgJepaModel.from_pretrained`` as the context encoder. Like the
    official code, the target encoder follows the module's train / eval mode (its stochastic depth is
    active in training).
    """

    def __init__(self, config: EcgJepaConfig):
        super().__init__(config)
        self.ecg_jepa = EcgJepaModel(config)
        self.target_encoder = EcgJepaModel(config)
        self.target_encoder.requires_grad_(False)
        self.predictor = EcgJepaPredictor(config)
        self.post_init()
        # The target starts as an exact copy of the context encoder (the official deepcopy).
        self.update_target_encoder(0.0)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As ``PreTrainedModel.from_pretrained``; when the checkpoint has no target encoder (e.g. an
        ``EcgJepaModel`` or a converted official encoder), the target starts as a copy of the loaded
        context encoder instead of random weights."""
        return_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        if any(key.startswith("target_encoder.") for key in info["missing_keys"]):
            model.update_target_encoder(0.0)
        return (model, info) if return_info else model

    @torch.no_grad()
    def update_target_encoder(self, momentum: float) -> None:
        """EMA step ``target = momentum * target + (1 - momentum) * context`` over all parameters;
        ``momentum=0`` copies the context encoder exactly."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"EcgJepaForPreTraining.update_target_encoder: momentum must be in [0, 1], got {momentum}"
            )
        for context_param, target_param in zip(self.ecg_jepa.parameters(), self.target_encoder.parameters()):
            if momentum == 0.0:
                target_param.copy_(context_param)
            else:
                target_param.mul_(momentum).add_(context_param.detach(), alpha=1.0 - momentum)

    def ema_momentum(self, step: int, total_steps: int) -> float:
        """Momentum after optimizer step ``step`` (0-based) of ``total_steps``: linear from
        ``ema_momentum_start`` at step 0 to ``ema_momentum_end`` at ``total_steps`` (official schedule)."""
        if total_steps <= 0:
            raise ValueError(f"EcgJepaForPreTraining: total_steps must be positive, got {total_steps}")
        start, end = self.config.ema_momentum_start, self.config.ema_momentum_end
        return start + (end - start) * min(max(step, 0), total_steps) / total_steps

    def post_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called by the training loop after every optimizer step: one EMA update of the target
        encoder with the scheduled momentum. Returns ``{"ema_momentum": m}`` for logging."""
        momentum = self.ema_momentum(step, total_steps)
        self.update_target_encoder(momentum)
        return {"ema_momentum": momentum}

    def sample_masked_time_patches(
        self, num_patches: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> torch.BoolTensor:
        """Draw one ``(num_patches,)`` bool mask (True = hidden) as the official code does.

        ``"block"``: the union of ``num_mask_blocks`` runs, each of ``int(num_patches * u)`` patches,
        ``u ~ U(block_mask_scale)``, starting uniformly in ``[0, num_patches - length)``.
        ``"random"``: ``int(num_patches * r)`` slots, ``r ~ U(random_mask_scale)``, uniformly without
        replacement. Lengths are clamped so that at least one slot is hidden and one visible.
        Uses the global torch RNG unless a ``generator`` is given.
        """
        if num_patches < 2:
            raise ValueError(
                f"EcgJepaForPreTraining: need at least 2 time patches to mask, got {num_patches}"
            )

        def uniform(low_high) -> float:
            low, high = low_high
            return low + (high - low) * torch.rand(1, generator=generator).item()

        def clamp(count: int) -> int:
            return min(max(count, 1), num_patches - 1)

        mask = torch.zeros(num_patches, dtype=torch.bool)
        if self.config.mask_type == "block":
            for _ in range(self.config.num_mask_blocks):
                length = clamp(int(num_patches * uniform(self.config.block_mask_scale)))
                start = int(torch.randint(0, num_patches - length, (1,), generator=generator))
                mask[start : start + length] = True
        else:
            count = clamp(int(num_patches * uniform(self.config.random_mask_scale)))
            mask[torch.randperm(num_patches, generator=generator)[:count]] = True
        return mask.to(device) if device is not None else mask

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        masked_time_patches: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> EcgJepaPreTrainingOutput:
        r"""
        Args:
            input_values, attention_mask, lead_mask: as in [`EcgJepaModel.forward`].
            masked_time_patches: ``(patches,)`` bool time slots to hide; drawn with
                `sample_masked_time_patches` (global torch RNG) when None.

        Returns:
            [`EcgJepaPreTrainingOutput`]. Masked tokens of missing leads or padded time do not count
            in the loss.
        """
        self.ecg_jepa._check_inputs(input_values, attention_mask, lead_mask, masked_time_patches)
        batch_size, num_leads, num_samples = input_values.shape
        num_patches = num_samples // self.config.patch_size
        device = input_values.device
        if masked_time_patches is None:
            masked_time_patches = self.sample_masked_time_patches(num_patches, device=device)
        elif not masked_time_patches.any():
            raise ValueError(
                "EcgJepaForPreTraining: masked_time_patches hides no time patch; hide at least one"
            )

        with torch.no_grad():
            target = self.target_encoder(
                input_values, attention_mask=attention_mask, lead_mask=lead_mask, masked_time_patches=None
            ).last_hidden_state
            target = F.layer_norm(target, (target.shape[-1],))
            target = target.reshape(batch_size, num_leads, num_patches, -1)[
                :, :, masked_time_patches.to(device)
            ]

        context = self.ecg_jepa(
            input_values,
            attention_mask=attention_mask,
            lead_mask=lead_mask,
            masked_time_patches=masked_time_patches,
            **kwargs,
        )
        masked = masked_time_patches.to(device)
        visible_time_ids = (~masked).nonzero(as_tuple=True)[0]
        masked_time_ids = masked.nonzero(as_tuple=True)[0]
        num_visible = visible_time_ids.numel()

        token_valid = self.ecg_jepa.token_validity(batch_size, num_patches, attention_mask, lead_mask)
        grid_valid = (
            token_valid.reshape(batch_size, num_leads, num_patches) if token_valid is not None else None
        )
        predictions = self.predictor(
            context.last_hidden_state.reshape(batch_size, num_leads, num_visible, -1),
            visible_time_ids,
            masked_time_ids,
            num_patches,
            visible_valid=grid_valid[:, :, visible_time_ids] if grid_valid is not None else None,
        )

        per_token = F.smooth_l1_loss(
            predictions, target, beta=self.config.smooth_l1_beta, reduction="none"
        ).mean(-1)
        if grid_valid is None:
            loss = per_token.mean()
        else:
            weights = grid_valid[:, :, masked_time_ids].to(per_token.dtype)
            loss = (per_token * weights).sum() / weights.sum().clamp(min=1.0)

        return EcgJepaPreTrainingOutput(
            loss=loss,
            predicted_features=predictions,
            target_features=target,
            masked_time_patches=masked,
            context_last_hidden_state=context.last_hidden_state,
            hidden_states=context.hidden_states,
            attentions=context.attentions,
        )


class EcgJepaForSequenceClassification(EcgJepaPreTrainedModel):
    """ECG-JEPA encoder + a linear head on the pooled features (the official linear probe / fine-tune
    head). Multi-label (float multi-hot labels, BCE), single-label (int labels, CE) and regression
    follow ``config.problem_type`` through the transformers classification loss, so it is Trainer-ready.
    Call `freeze_base_model` for linear probing."""

    def __init__(self, config: EcgJepaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ecg_jepa = EcgJepaModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = (
            nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.base_model_frozen = False
        self.post_init()

    def freeze_base_model(self) -> None:
        """Linear probing: no gradients into the encoder, and the encoder stays in eval mode (no
        stochastic depth, like the official precomputed features) even when the model trains."""
        self.ecg_jepa.requires_grad_(False)
        self.base_model_frozen = True
        self.ecg_jepa.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.base_model_frozen:
            self.ecg_jepa.eval()
        return self

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        r"""
        Args:
            input_values, attention_mask, lead_mask: as in [`EcgJepaModel.forward`].
            labels: ``(batch, num_labels)`` float multi-hot (multi-label), ``(batch,)`` int class
                indices (single-label) or float targets (regression, ``num_labels == 1``).

        Returns:
            ``SequenceClassifierOutput`` with ``logits`` ``(batch, num_labels)`` and ``loss`` when
            labels are given.
        """
        outputs = self.ecg_jepa(input_values, attention_mask=attention_mask, lead_mask=lead_mask, **kwargs)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "EcgJepaForPreTraining",
    "EcgJepaForSequenceClassification",
    "EcgJepaModel",
    "EcgJepaPreTrainedModel",
    "EcgJepaPreTrainingOutput",
    "sincos_position_table",
]
