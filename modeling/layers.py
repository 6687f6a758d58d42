"""Transformer building blocks shared by the ViT-style ECG families (ECG-JEPA, ECG2TOK).

Everything here works on token sequences cut from ``(batch, leads, samples)`` ECGs:

* ``EcgPatchEmbeddings``: one shared ``Linear(patch_size -> hidden)`` per non-overlapping patch of
  ``patch_size`` samples of each lead (lead-major token order: token ``l * patches + p``);
* fixed sin-cos tables: 1-D over any index (time patches) and ECG-JEPA's 2-D (time, lead) grid;
* a pre-LN transformer block (``EcgVitLayer``) through the transformers attention interface
  (``eager`` / ``sdpa``), with stochastic depth and an optional position term added to the block input;
* ``build_attention_mask``: turns an index-based ``mask_function`` into the mask the selected
  attention implementation takes.

Attribute names (``q_proj``, ``fc1``, ``layernorm_before``, ...) are part of every checkpoint built
from these blocks: renaming one breaks loading.

Imports torch and transformers only (Hub remote-code bundle).
"""

from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

# ----------------------------------------------------------------------------------------------
# Fixed sin-cos position tables
# ----------------------------------------------------------------------------------------------


def sincos_1d(width: int, positions: torch.Tensor) -> torch.Tensor:
    """``(len(positions), width)`` float64 table: ``sin(p * w_k)`` then ``cos(p * w_k)``,
    ``w_k = 10000^(-2k/width)`` (the MAE / I-JEPA numpy table)."""
    omega = 1.0 / 10000 ** (torch.arange(width // 2, dtype=torch.float64, device="cpu") / (width / 2))
    angles = positions.to(device="cpu", dtype=torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


@lru_cache(maxsize=32)
def sincos_time_table(width: int, num_patches: int) -> torch.Tensor:
    """``(num_patches, width)`` float32 1-D sin-cos table of time-patch indices ``0 .. num_patches - 1``.

    Cached per shape: callers must not modify the returned tensor in place.
    """
    return sincos_1d(width, torch.arange(num_patches, device="cpu")).to(torch.float32)


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
    table = torch.cat([sincos_1d(width // 2, time_index), sincos_1d(width // 2, lead_index)], dim=1)
    return table.to(torch.float32)


# ----------------------------------------------------------------------------------------------
# Attention masks
# ----------------------------------------------------------------------------------------------


def build_attention_mask(config, embeddings: torch.Tensor, mask_function: Callable):
    """The ``(batch, 1, tokens, tokens)`` mask for ``config._attn_implementation`` (boolean for SDPA,
    additive 0 / dtype-minimum for eager) from an index-based
    ``mask_function(batch_idx, head_idx, q_idx, kv_idx) -> bool``.

    ``create_bidirectional_mask(and_mask_function=...)`` builds the same mask but through ``torch.vmap``,
    which costs tens of milliseconds per call on a CPU; a function that only indexes and compares can
    be broadcast by the implementation's mask builder directly (``use_vmap=False``).
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


def cross_pattern_mask_function(
    lead_ids: torch.Tensor,
    time_ids: torch.Tensor,
    token_valid: torch.Tensor | None,
    cross_pattern: bool = True,
) -> Callable:
    """A ``mask_function(batch_idx, head_idx, q_idx, kv_idx) -> bool`` for ``create_bidirectional_mask``.

    Args:
        lead_ids: ``(tokens,)`` lead index of each token; a negative index marks a global token
            (ECG2TOK's [CLS]) that attends to and is seen by every token under CroPA.
        time_ids: ``(tokens,)`` time-patch index of each token.
        token_valid: ``(batch, tokens)`` bool, False for tokens of missing leads or padded time; None if
            all are valid.
        cross_pattern: CroPA (same lead or same time slot); False gives full attention.

    A query sees a key if the pattern allows it and the key is valid. An invalid query also sees
    itself, so that no row is empty: eager and SDPA then agree everywhere (an empty row is NaN or
    uniform depending on the kernel), and valid tokens never see invalid ones.
    """

    has_global_tokens = cross_pattern and bool((lead_ids < 0).any())

    def mask_function(batch_idx, head_idx, q_idx, kv_idx):
        allowed = q_idx >= 0  # an all-True boolean of the right shape
        if cross_pattern:
            allowed = (lead_ids[q_idx] == lead_ids[kv_idx]) | (time_ids[q_idx] == time_ids[kv_idx])
            if has_global_tokens:
                allowed = allowed | (lead_ids[q_idx] < 0) | (lead_ids[kv_idx] < 0)
        if token_valid is not None:
            allowed = allowed & (token_valid[batch_idx, kv_idx] | (q_idx == kv_idx))
        return allowed

    return mask_function


def check_patch_inputs(name: str, config, input_values, attention_mask, lead_mask, bool_masked_pos=None) -> None:
    """The input contract of the per-lead patch models (ECG-JEPA, ECG2TOK): ``input_values``
    ``(batch, leads, samples)`` with the config's leads and a multiple of ``patch_size`` samples up to
    ``num_samples``, masks of matching shapes; ``bool_masked_pos``, when given, ``(batch, leads *
    patches)``. A ValueError names the model, the argument and the expectation."""
    if input_values is None:
        raise ValueError(f"{name}: input_values (batch, leads, samples) is required")
    if input_values.ndim != 3 or input_values.shape[1] != config.num_leads:
        raise ValueError(
            f"{name}: input_values must be (batch, leads, samples) with leads = {config.num_leads} "
            f"({', '.join(config.lead_names)}), got shape {tuple(input_values.shape)}; the feature "
            "extractor puts records in this lead order and zero-fills missing leads (lead_mask = 0)"
        )
    batch_size, _, num_samples = input_values.shape
    if num_samples % config.patch_size or not 0 < num_samples <= config.num_samples:
        raise ValueError(
            f"{name}: input_values has {num_samples} samples; expected a positive multiple of "
            f"patch_size={config.patch_size} up to num_samples={config.num_samples} "
            f"({config.num_samples / config.sampling_rate:g} s at {config.sampling_rate} Hz)"
        )
    if lead_mask is not None and tuple(lead_mask.shape) != (batch_size, config.num_leads):
        raise ValueError(f"{name}: lead_mask must be (batch, leads) = ({batch_size}, {config.num_leads}), got {tuple(lead_mask.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != (batch_size, num_samples):
        raise ValueError(f"{name}: attention_mask must be (batch, samples) = ({batch_size}, {num_samples}), got {tuple(attention_mask.shape)}")
    num_tokens = config.num_leads * (num_samples // config.patch_size)
    if bool_masked_pos is not None and tuple(bool_masked_pos.shape) != (batch_size, num_tokens):
        raise ValueError(
            f"{name}: bool_masked_pos must be (batch, leads * patches) = ({batch_size}, {num_tokens}), "
            f"got {tuple(bool_masked_pos.shape)}"
        )


def token_validity(
    batch_size: int,
    num_leads: int,
    num_patches: int,
    attention_mask: torch.Tensor | None,
    lead_mask: torch.Tensor | None,
) -> torch.Tensor | None:
    """``(batch, leads * patches)`` bool for lead-major patch tokens: True for tokens of present leads
    (``lead_mask != 0``) and real time (a patch is real if any of its samples has ``attention_mask != 0``),
    or None when both masks are None."""
    if attention_mask is None and lead_mask is None:
        return None
    device = (attention_mask if attention_mask is not None else lead_mask).device
    leads_ok = torch.ones(batch_size, num_leads, dtype=torch.bool, device=device)
    time_ok = torch.ones(batch_size, num_patches, dtype=torch.bool, device=device)
    if lead_mask is not None:
        leads_ok = lead_mask != 0
    if attention_mask is not None:
        time_ok = (attention_mask != 0).reshape(batch_size, num_patches, -1).any(dim=-1)
    return (leads_ok[:, :, None] & time_ok[:, None, :]).reshape(batch_size, -1)


def masked_mean(hidden_states: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``(batch, tokens, dim)`` over the tokens where ``valid`` ``(batch, tokens)`` is true
    (all tokens when None); a row with no valid token gives zeros."""
    if valid is None:
        return hidden_states.mean(dim=1)
    weights = valid.to(hidden_states.dtype)[:, :, None]
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------


class EcgPatchEmbeddings(nn.Module):
    """``(batch, leads, samples)`` -> ``(batch, leads * patches, hidden_size)`` by one shared
    ``Linear(patch_size -> hidden_size)`` per patch of ``patch_size`` samples (ECG-JEPA's ``W_P``;
    no convolution)."""

    def __init__(self, patch_size: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Linear(patch_size, hidden_size)

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


class EcgDropPath(nn.Module):
    """Stochastic depth of one residual branch (see `drop_path`)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return drop_path(hidden_states, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate per block, rising linearly from 0 to ``max_rate`` (plain Python: this
    runs in ``__init__``, where tensors may live on the meta device)."""
    return [max_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]


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


class EcgVitAttention(nn.Module):
    """Multi-head self-attention through the transformers attention interface (``eager``/``sdpa``).

    ``config`` supplies ``_attn_implementation``, ``attention_dropout`` and ``qkv_bias``.
    """

    def __init__(self, config, hidden_size: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = False
        # ECG-JEPA's official checkpoint fuses these three as `qkv` (rows q, k, v); its converter splits it.
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


class EcgVitMLP(nn.Module):
    """``Linear -> activation -> dropout -> Linear -> dropout`` (timm's ``Mlp``).

    ``config`` supplies ``hidden_act`` and ``hidden_dropout_prob``.
    """

    def __init__(self, config, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.activation_fn(self.fc1(hidden_states)))
        return self.dropout(self.fc2(hidden_states))


class EcgVitLayer(GradientCheckpointingLayer):
    """Pre-LN transformer block ``x + DropPath(Attn(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``.

    If ``position_embeddings`` is given it is added to the block input first, and the residual
    stream carries it on (ECG-JEPA's ``block(x + pos)``). ``config`` supplies ``layer_norm_eps``,
    ``hidden_dropout_prob`` and what `EcgVitAttention` / `EcgVitMLP` read.
    """

    def __init__(
        self,
        config,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        drop_path_rate: float,
        layer_index: int,
    ):
        super().__init__()
        # 0-based depth of this block; ECG-JEPA's init scales its output projections by 1/sqrt(2 (index + 1)).
        self.layer_index = layer_index
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = EcgVitAttention(config, hidden_size, num_heads)
        self.attention_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = EcgVitMLP(config, hidden_size, intermediate_size)
        self.drop_path = EcgDropPath(drop_path_rate)
        # LayerScale (CaiT / BEiT): learned per-channel gains on both residual branches, only when the
        # config asks for it (``layer_scale_init_value > 0``), so blocks without it keep their keys.
        layer_scale = float(getattr(config, "layer_scale_init_value", 0.0) or 0.0)
        self.layer_scale_attention = nn.Parameter(torch.full((hidden_size,), layer_scale)) if layer_scale > 0 else None
        self.layer_scale_mlp = nn.Parameter(torch.full((hidden_size,), layer_scale)) if layer_scale > 0 else None

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
        attn_output = self.attention_dropout(attn_output)
        if self.layer_scale_attention is not None:
            attn_output = attn_output * self.layer_scale_attention
        hidden_states = hidden_states + self.drop_path(attn_output)
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        if self.layer_scale_mlp is not None:
            mlp_output = mlp_output * self.layer_scale_mlp
        return hidden_states + self.drop_path(mlp_output)


def build_vit_layers(
    config, hidden_size: int, num_heads: int, intermediate_size: int, num_layers: int, drop_path_rate: float
) -> nn.ModuleList:
    """``num_layers`` `EcgVitLayer` blocks with linearly rising stochastic depth."""
    return nn.ModuleList(
        EcgVitLayer(config, hidden_size, num_heads, intermediate_size, rate, index)
        for index, rate in enumerate(drop_path_rates(drop_path_rate, num_layers))
    )


__all__ = [
    "EcgDropPath",
    "EcgPatchEmbeddings",
    "EcgVitAttention",
    "EcgVitLayer",
    "EcgVitMLP",
    "build_attention_mask",
    "build_vit_layers",
    "check_patch_inputs",
    "cross_pattern_mask_function",
    "drop_path",
    "drop_path_rates",
    "eager_attention_forward",
    "masked_mean",
    "sincos_1d",
    "sincos_position_table",
    "sincos_time_table",
    "token_validity",
]
