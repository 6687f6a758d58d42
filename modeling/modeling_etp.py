"""ETP (ECG-Text Pre-training): a CLIP-style dual encoder aligning 12-lead ECG with free-text reports.

* ECG tower: [`EcgResNetModel`] (MERL's ResNet18-1D) + pooling/projection to ``projection_dim``.
* Text tower: any ``AutoModel`` text encoder (BioClinicalBERT by default) + an MLP projection.
* Loss: symmetric InfoNCE over L2-normalised embeddings with a learnable (or fixed) temperature;
  under ``torch.distributed`` the features of every process are gathered (open_clip ``ClipLoss``
  without ``gather_with_grad``: the gathered copies carry no gradient, the local slice is replaced by
  the local tensor, so each process back-propagates the full-batch loss into its own features).

Module names match MERL's checkpoints where the parts exist there (``ecg_encoder.*``, ``downconv``,
``att_pool_head.*``), so converted MERL encoders load without renaming.

Imports torch and transformers only (Hub remote-code bundle).
"""


import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput, SequenceClassifierOutput
from transformers.utils import logging

from .configuration_ecg_resnet import EcgResNetConfig
from .configuration_etp import DEFAULT_TEXT_MODEL, EtpConfig
from .modeling_ecg_resnet import EcgResNetModel, average_batchnorm_statistics

logger = logging.get_logger(__name__)


# --------------------------------------------------------------------------------------------------
# Contrastive loss
# --------------------------------------------------------------------------------------------------


def _distributed_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(features: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather ``(local_batch, dim)`` features from every process; the local slice keeps its gradient.

    The gathered copies are plain tensors (``all_gather`` has no autograd); putting the local tensor
    back in its slot makes the loss differentiable w.r.t. this process's features, which is all each
    process needs, since the data-parallel wrapper averages parameter gradients (open_clip
    ``gather_features(gather_with_grad=False)``). Local batches of different sizes (a short last
    batch) are padded for the collective and trimmed afterwards.

    Returns:
        ``(all_features (global_batch, dim), offset)`` where ``offset`` is the index of this process's
        first row in ``all_features``. Without a process group: ``(features, 0)``.
    """
    rank, world_size = _distributed_world()
    if world_size == 1:
        return features, 0
    local_size = torch.tensor([features.shape[0]], device=features.device, dtype=torch.long)
    sizes = [torch.zeros_like(local_size) for _ in range(world_size)]
    dist.all_gather(sizes, local_size)
    sizes = [int(s.item()) for s in sizes]
    max_size = max(sizes)
    padded = features.detach()
    if features.shape[0] < max_size:
        padded = torch.cat([padded, padded.new_zeros(max_size - features.shape[0], *features.shape[1:])])
    buckets = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(buckets, padded.contiguous())
    chunks = [bucket[:size] for bucket, size in zip(buckets, sizes)]
    chunks[rank] = features
    return torch.cat(chunks, dim=0), sum(sizes[:rank])


def contrastive_loss(
    ecg_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor, gather: bool = True
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) loss between matched rows of L2-normalised embeddings.

    Args:
        ecg_embeds: ``(batch, dim)`` L2-normalised ECG embeddings of this process.
        text_embeds: ``(batch, dim)`` L2-normalised report embeddings; row ``i`` describes ECG ``i``.
        logit_scale: scalar ``1 / temperature`` (already exponentiated and clamped).
        gather: use the features of all processes as negatives (see [`gather_features`]).

    Returns:
        scalar: ``(CE(ecg -> text) + CE(text -> ecg)) / 2`` averaged over the global batch.
    """
    if gather:
        all_ecg, offset = gather_features(ecg_embeds)
        all_text, _ = gather_features(text_embeds)
    else:
        all_ecg, all_text, offset = ecg_embeds, text_embeds, 0
    # Full global-batch logits on every process (open_clip local_loss=False): each process holds the
    # complete loss, and its gradient reaches the local features through the replaced slice.
    logits_per_ecg = logit_scale * all_ecg @ all_text.t()
    targets = torch.arange(all_ecg.shape[0], device=all_ecg.device)
    del offset  # every process computes the same global loss; the offset only matters for local_loss
    return (F.cross_entropy(logits_per_ecg, targets) + F.cross_entropy(logits_per_ecg.t(), targets)) / 2


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


@dataclass
class EtpOutput(ModelOutput):
    """Output of [`EtpModel.forward`].

    Args:
        loss: scalar symmetric InfoNCE loss, when ``return_loss=True``.
        logits_per_ecg: ``(ecg_batch, text_batch)`` scaled cosine similarities ``exp(logit_scale) * cos``.
        logits_per_text: ``(text_batch, ecg_batch)``, the transpose.
        ecg_embeds: ``(ecg_batch, projection_dim)`` L2-normalised ECG embeddings.
        text_embeds: ``(text_batch, projection_dim)`` L2-normalised text embeddings.
        ecg_model_output: output of the ECG tower ([`EcgResNetModelOutput`]).
        text_model_output: output of the text tower (``BaseModelOutputWithPooling``).
    """

    loss: torch.FloatTensor | None = None
    logits_per_ecg: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    ecg_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    ecg_model_output: ModelOutput | None = None
    text_model_output: ModelOutput | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


# --------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------


class EtpAttentionPool(nn.Module):
    """MERL's ``AttentionPool2d`` over a 1-D feature map: one CLS query attends to all frames.

    Parameter names (``positional_embedding``, ``cls_token``, ``mhsa``, ``c_proj``) match MERL's
    ``att_pool_head`` so converted checkpoints load as they are.
    """

    def __init__(self, num_frames: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.num_frames = num_frames
        self.positional_embedding = nn.Parameter(torch.zeros(1, num_frames + 1, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mhsa = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.c_proj = nn.Linear(embed_dim, output_dim)

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``features`` ``(batch, channels, frames)`` -> ``(batch, output_dim)``."""
        if features.shape[-1] != self.num_frames:
            raise ValueError(
                f"ETP attention pooling was built for {self.num_frames} frames (the config's num_samples) "
                f"but got {features.shape[-1]}; crop/pad the ECG to the configured length"
            )
        tokens = features.transpose(1, 2)
        cls = (self.cls_token + self.positional_embedding[:, :1]).expand(tokens.shape[0], -1, -1)
        # As in MERL, the positional table is added after concatenation too, so the CLS query carries
        # its position twice; kept for checkpoint parity.
        tokens = torch.cat([cls, tokens], dim=1) + self.positional_embedding.to(tokens.dtype)
        key_padding_mask = None
        if frame_mask is not None:
            keep = torch.cat([frame_mask.new_ones(frame_mask.shape[0], 1), frame_mask], dim=1)
            key_padding_mask = keep == 0
        pooled, _ = self.mhsa(tokens[:, :1], tokens, tokens, key_padding_mask=key_padding_mask, need_weights=False)
        return self.c_proj(pooled[:, 0])


class EtpTextProjection(nn.Sequential):
    """``Linear(text_hidden -> hidden) -> GELU -> Linear(hidden -> projection_dim)`` (MERL ``proj_t``)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class EtpPreTrainedModel(PreTrainedModel):
    """Base class of the ETP models: config class, input names and weight init."""

    config: EtpConfig
    # The ECG tower is the "base model": ``model.base_model`` is the encoder whose 512-d pooled
    # output is the linear-probe feature (MERL's probe), and classifier checkpoints share its keys.
    base_model_prefix = "ecg_encoder"
    main_input_name = "input_values"
    input_modalities = ("time", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, nn.Conv1d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, EtpAttentionPool):
            embed_dim = module.positional_embedding.shape[-1]
            init.normal_(module.positional_embedding, std=embed_dim**-1)  # MERL: randn / embed_dim
            init.normal_(module.cls_token, std=1.0)
        elif isinstance(module, EtpModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


def _num_frames(ecg_config: EcgResNetConfig) -> int:
    """Frames of the last ResNet map for ``num_samples`` input samples (each stride-2 stage: ceil(n / 2))."""
    return math.ceil(ecg_config.num_samples / ecg_config.total_stride)


class EtpModel(EtpPreTrainedModel):
    """ETP dual encoder: ECG tower + text tower projected into one space, compared by cosine similarity.

    Inputs use distinct names for the two modalities (as [`EtpProcessor`] returns them):
    ``input_values`` / ``ecg_attention_mask`` / ``lead_mask`` for the ECG, ``input_ids`` /
    ``attention_mask`` / ``token_type_ids`` for the text.

    Example:
        >>> model = EtpModel.from_ecg_text_pretrained(EcgResNetConfig(), "emilyalsentzer/Bio_ClinicalBERT")
        >>> inputs = processor(ecg=signals, text=reports, sampling_rate=500, return_tensors="pt", padding=True)
        >>> out = model(**inputs, return_loss=True)
        >>> out.loss, out.logits_per_ecg.shape   # (n_ecg, n_text)
    """

    def __init__(
        self,
        config: EtpConfig,
        ecg_model: EcgResNetModel | None = None,
        text_model: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        ecg_model = ecg_model if ecg_model is not None else EcgResNetModel(config.ecg_config)
        text_model = text_model if text_model is not None else AutoModel.from_config(config.text_config)
        # Share one config object between the composite and its towers, so edits stay in sync (as
        # VisionTextDualEncoder does).
        if text_model.config._attn_implementation is None:
            text_model.config._attn_implementation = "sdpa" if getattr(text_model, "_supports_sdpa", False) else "eager"
        config.text_config._attn_implementation = text_model.config._attn_implementation
        ecg_model.config = config.ecg_config
        text_model.config = config.text_config
        self.ecg_encoder = ecg_model
        self.text_model = text_model

        ecg_hidden = config.ecg_config.hidden_size
        text_hidden = config.text_config.hidden_size
        if config.ecg_pooling == "attention":
            self.downconv = nn.Conv1d(ecg_hidden, config.projection_dim, kernel_size=1)
            self.att_pool_head = EtpAttentionPool(
                _num_frames(config.ecg_config),
                config.projection_dim,
                config.attention_pool_heads,
                config.projection_dim,
            )
        else:
            self.ecg_projection = nn.Linear(ecg_hidden, config.projection_dim)
        self.text_projection = EtpTextProjection(
            text_hidden, config.text_projection_hidden_dim, config.projection_dim
        )
        self.logit_scale = nn.Parameter(
            torch.tensor(config.logit_scale_init_value), requires_grad=config.learnable_temperature
        )
        self.post_init()
        self.apply_freezing()
        # Pooled features of the frozen text tower by token sequence (config.cache_text_features).
        self._text_feature_cache: dict[tuple, torch.Tensor] = {}

    # ---- construction helpers ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        # Loading replaces every parameter by a new one with requires_grad=True: re-apply the
        # config's frozen text layers and fixed temperature. With output_loading_info=True the
        # result is (model, loading_info).
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.apply_freezing()
        return loaded

    def apply_freezing(self) -> None:
        """Set ``requires_grad`` from the config: fixed temperature, frozen text layers, unused poolers.

        Frozen: the bottom ``config.freeze_text_layers`` text layers and the text embeddings (all of the
        text tower with ``-1``), a text pooler the chosen ``text_pooling`` does not use, and
        ``logit_scale`` unless ``config.learnable_temperature``.
        """
        self.logit_scale.requires_grad = self.config.learnable_temperature
        n_frozen = self.config.freeze_text_layers
        if n_frozen == -1:
            for param in self.text_model.parameters():
                param.requires_grad = False
            return
        # A BERT pooler that the chosen text pooling does not use would leave parameters without
        # gradient, which DistributedDataParallel rejects: freeze it.
        pooler = getattr(self.text_model, "pooler", None)
        if pooler is not None and self.config.text_pooling != "pooler":
            for param in pooler.parameters():
                param.requires_grad = False
        if n_frozen == 0:
            return
        embeddings = getattr(self.text_model, "embeddings", None)
        layers = getattr(getattr(self.text_model, "encoder", None), "layer", None)
        if embeddings is None or layers is None:
            raise ValueError(
                f"EtpConfig.freeze_text_layers={n_frozen} needs a BERT-like text model with `embeddings` and "
                f"`encoder.layer`; {type(self.text_model).__name__} has not. Set freeze_text_layers to 0 or -1."
            )
        for module in [embeddings, *list(layers)[:n_frozen]]:
            for param in module.parameters():
                param.requires_grad = False

    @classmethod
    def from_ecg_text_pretrained(
        cls,
        ecg_model_name_or_path: str | EcgResNetConfig | None = None,
        text_model_name_or_path: str | None = DEFAULT_TEXT_MODEL,
        **kwargs,
    ) -> "EtpModel":
        """Pair an ECG tower with a pretrained text encoder (as ``VisionTextDualEncoderModel.from_vision_text_pretrained``).

        Args:
            ecg_model_name_or_path: an [`EcgResNetConfig`] (random ECG tower), a path or Hub id of a saved
                [`EcgResNetModel`], or ``None`` for the default ResNet18-1D.
            text_model_name_or_path: path or Hub id of any ``AutoModel`` text encoder
                (default ``emilyalsentzer/Bio_ClinicalBERT``, downloaded from the Hub).
            **kwargs: [`EtpConfig`] fields (``projection_dim``, ``temperature``, ``text_pooling``, ...);
                other ``ecg_*`` / ``text_*`` keys go to the towers' ``from_pretrained`` without the
                prefix (e.g. ``text_revision="..."``).

        The projections and the logit scale are newly initialised; train before using the model.
        """
        # EtpConfig's own fields (text_pooling, ecg_pooling, ...) are not tower arguments.
        config_fields = {f.name for f in dataclasses.fields(EtpConfig)}
        tower_keys = [k for k in kwargs if k not in config_fields]
        ecg_kwargs = {k[len("ecg_") :]: kwargs.pop(k) for k in tower_keys if k.startswith("ecg_")}
        text_kwargs = {k[len("text_") :]: kwargs.pop(k) for k in tower_keys if k.startswith("text_")}
        if isinstance(ecg_model_name_or_path, EcgResNetConfig):
            ecg_model = EcgResNetModel(ecg_model_name_or_path)
        elif ecg_model_name_or_path is None:
            ecg_model = EcgResNetModel(EcgResNetConfig(**ecg_kwargs))
        else:
            ecg_model = EcgResNetModel.from_pretrained(ecg_model_name_or_path, **ecg_kwargs)
        if text_model_name_or_path is None:
            raise ValueError("from_ecg_text_pretrained needs text_model_name_or_path (a path or Hub id)")
        text_model = AutoModel.from_pretrained(text_model_name_or_path, **text_kwargs)
        # Building the composite config resets the sub-config's attention implementation: keep the loaded one.
        text_attention = text_model.config._attn_implementation
        config = EtpConfig(ecg_config=ecg_model.config, text_config=text_model.config, **kwargs)
        config.text_config._attn_implementation = text_attention
        logger.info("ETP projections and logit scale are newly initialised; pretrain before use.")
        return cls(config, ecg_model=ecg_model, text_model=text_model)

    # ---- features ---------------------------------------------------------------------------------

    def _project_ecg(self, ecg_output) -> torch.Tensor:
        if self.config.ecg_pooling == "attention":
            return self.att_pool_head(self.downconv(ecg_output.last_hidden_state), ecg_output.frame_mask)
        return self.ecg_projection(ecg_output.pooler_output)

    def get_ecg_features(
        self,
        input_values: torch.Tensor,
        ecg_attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Project ECG into the shared space.

        Args:
            input_values: ``(batch, leads, samples)`` ECG from the feature extractor.
            ecg_attention_mask: ``(batch, samples)`` 1 for real samples (``attention_mask`` also accepted).
            lead_mask: ``(batch, leads)`` 1 for recorded leads.

        Returns:
            ``BaseModelOutputWithPooling``: ``pooler_output`` ``(batch, projection_dim)`` is the projected
            (not yet normalised) embedding; ``last_hidden_state`` ``(batch, channels, frames)`` the ResNet map.
        """
        if ecg_attention_mask is None:
            ecg_attention_mask = kwargs.pop("attention_mask", None)
        ecg_output = self.ecg_encoder(
            input_values, attention_mask=ecg_attention_mask, lead_mask=lead_mask, return_dict=True
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=ecg_output.last_hidden_state,
            pooler_output=self._project_ecg(ecg_output),
            hidden_states=ecg_output.hidden_states,
        )

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_text_layers == -1:
            # A fully frozen text tower is a fixed feature map: no dropout in it while training.
            self.text_model.eval()
        # Cached text features belong to the weights at hand; a mode switch is when they may change
        # (loading another checkpoint, a new training phase), so start afresh.
        self._text_feature_cache = {}
        return self

    def _text_pooled(self, text_kwargs: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """``(text_output or None, pooled (batch, text_hidden))``, through the cache when enabled."""
        use_cache = self.config.cache_text_features and "position_ids" not in text_kwargs
        if not use_cache:
            text_output = self.text_model(input_ids=input_ids, return_dict=True, **text_kwargs)
            return text_output, self._pool_text(text_output, attention_mask)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        token_types = text_kwargs.get("token_type_ids")
        keys = []
        for row in range(input_ids.shape[0]):
            valid = mask[row].bool()
            ids = tuple(input_ids[row][valid].tolist())
            types = tuple(token_types[row][valid].tolist()) if token_types is not None else ()
            keys.append((ids, types))
        missing = sorted({i for i, key in enumerate(keys) if key not in self._text_feature_cache})
        text_output = None
        if missing:
            index = torch.tensor(missing, device=input_ids.device)
            sub_kwargs = {k: v.index_select(0, index) for k, v in text_kwargs.items() if v is not None}
            with torch.no_grad():
                text_output = self.text_model(input_ids=input_ids.index_select(0, index), return_dict=True, **sub_kwargs)
                pooled = self._pool_text(text_output, sub_kwargs.get("attention_mask"))
            for row, vector in zip(missing, pooled):
                self._text_feature_cache[keys[row]] = vector.detach()
            if len(missing) < input_ids.shape[0]:
                text_output = None  # token states exist for the uncached rows only
        pooled = torch.stack([self._text_feature_cache[key] for key in keys]).to(input_ids.device)
        return text_output, pooled

    def _pool_text(self, text_output, attention_mask: torch.Tensor | None) -> torch.Tensor:
        pooling = self.config.text_pooling
        if pooling == "pooler":
            if getattr(text_output, "pooler_output", None) is None:
                raise ValueError("text_pooling='pooler' but the text model returns no pooler_output")
            return text_output.pooler_output
        hidden = text_output.last_hidden_state
        if pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        weights = attention_mask[:, :, None].to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Project tokenised text into the shared space.

        Args:
            input_ids: ``(batch, tokens)`` token ids from the processor's tokenizer.
            attention_mask: ``(batch, tokens)`` 1 for real tokens.

        Returns:
            ``BaseModelOutputWithPooling``: ``pooler_output`` ``(batch, projection_dim)`` is the projected
            (not yet normalised) embedding; ``last_hidden_state`` the text tower's token states (``None``
            when ``config.cache_text_features`` served some rows from the cache).
        """
        text_kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            text_kwargs["token_type_ids"] = token_type_ids
        if position_ids is not None:
            text_kwargs["position_ids"] = position_ids
        text_output, pooled = self._text_pooled(text_kwargs, input_ids, attention_mask)
        return BaseModelOutputWithPooling(
            last_hidden_state=getattr(text_output, "last_hidden_state", None),
            pooler_output=self.text_projection(pooled),
            hidden_states=getattr(text_output, "hidden_states", None),
            attentions=getattr(text_output, "attentions", None),
        )

    # ---- temperature ------------------------------------------------------------------------------

    def scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` clamped to ``config.max_logit_scale`` (= 1 / temperature)."""
        return self.logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()

    @torch.no_grad()
    def post_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called by the pretraining loop after each optimizer step: clamp the learned scale (open_clip)
        and, under data parallelism, average the ECG tower's BatchNorm statistics over the processes
        (so the replicas stay identical; see ``average_batchnorm_statistics``).

        Returns the values to log: ``{"logit_scale": exp(logit_scale)}``.
        """
        self.logit_scale.clamp_(0.0, math.log(self.config.max_logit_scale))
        average_batchnorm_statistics(self.ecg_encoder)
        return {"logit_scale": float(self.logit_scale.exp())}

    # ---- forward ----------------------------------------------------------------------------------

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        ecg_attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> EtpOutput | tuple:
        r"""Embed both modalities and compare every ECG with every text.

        Args:
            input_values: ``(n_ecg, leads, samples)`` ECG.
            input_ids: ``(n_text, tokens)`` text token ids.
            attention_mask: ``(n_text, tokens)`` **text** mask.
            ecg_attention_mask: ``(n_ecg, samples)`` ECG time mask.
            lead_mask: ``(n_ecg, leads)`` ECG lead mask.
            return_loss: also return the symmetric InfoNCE loss (needs ``n_ecg == n_text``, row ``i``
                of each being a pair); ``None`` means "when training".

        Returns:
            [`EtpOutput`] with ``logits_per_ecg`` ``(n_ecg, n_text)`` = ``exp(logit_scale) * cosine``.
        """
        if input_values is None or input_ids is None:
            raise ValueError("EtpModel.forward needs both input_values (ECG) and input_ids (text)")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if return_loss is None:
            return_loss = self.training
        ecg_features = self.get_ecg_features(input_values, ecg_attention_mask=ecg_attention_mask, lead_mask=lead_mask)
        text_features = self.get_text_features(
            input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids
        )
        ecg_embeds = F.normalize(ecg_features.pooler_output, dim=-1)
        text_embeds = F.normalize(text_features.pooler_output, dim=-1)
        scale = self.scale()
        logits_per_ecg = scale * ecg_embeds @ text_embeds.t()
        loss = None
        if return_loss:
            if ecg_embeds.shape[0] != text_embeds.shape[0]:
                raise ValueError(
                    f"return_loss needs paired inputs: got {ecg_embeds.shape[0]} ECGs and {text_embeds.shape[0]} texts"
                )
            loss = contrastive_loss(ecg_embeds, text_embeds, scale)
        output = EtpOutput(
            loss=loss,
            logits_per_ecg=logits_per_ecg,
            logits_per_text=logits_per_ecg.t(),
            ecg_embeds=ecg_embeds,
            text_embeds=text_embeds,
            ecg_model_output=ecg_features,
            text_model_output=text_features,
        )
        return output if return_dict else output.to_tuple()


class EtpForSequenceClassification(EtpPreTrainedModel):
    """ETP's ECG tower with a linear head, for linear probing and fine-tuning.

    The head reads the 512-d masked mean of the last ResNet map (MERL's probe feature, before the
    contrastive projection). Loading an [`EtpModel`] checkpoint keeps its ``ecg_encoder.*`` weights
    and drops the text tower.
    """

    def __init__(self, config: EtpConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ecg_encoder = EcgResNetModel(config.ecg_config)
        self.dropout = nn.Dropout(config.ecg_config.classifier_dropout)
        self.classifier = nn.Linear(config.ecg_config.hidden_size, config.num_labels)
        self.post_init()

    def freeze_base_model(self) -> None:
        """Freeze the ECG tower (weights and BatchNorm statistics) for linear probing."""
        for param in self.ecg_encoder.parameters():
            param.requires_grad = False
        self._base_frozen = True
        self.ecg_encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "_base_frozen", False):
            self.ecg_encoder.eval()
        return self

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        ecg_attention_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        Args:
            input_values: ``(batch, leads, samples)`` ECG.
            attention_mask / ecg_attention_mask: ``(batch, samples)`` ECG time mask (either name).
            lead_mask: ``(batch, leads)``.
            labels: ``(batch, num_labels)`` float multi-hot (BCE) or ``(batch,)`` class ids (CE).

        Returns:
            ``SequenceClassifierOutput`` with ``logits`` ``(batch, num_labels)``.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        mask = ecg_attention_mask if ecg_attention_mask is not None else attention_mask
        outputs = self.ecg_encoder(input_values, attention_mask=mask, lead_mask=lead_mask, return_dict=True)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return SequenceClassifierOutput(loss=loss, logits=logits)


__all__ = [
    "EtpForSequenceClassification",
    "EtpModel",
    "EtpOutput",
    "EtpPreTrainedModel",
    "contrastive_loss",
    "gather_features",
]
