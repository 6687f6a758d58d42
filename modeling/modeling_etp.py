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
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput, SequenceClassifierOutput
from transformers.utils import logging

from .configuration_ecg_resnet import EcgResNetConfig
from .configuration_etp import DEFAULT_TEXT_MODEL, EtpConfig
from .contrastive import average_batchnorm_statistics, contrastive_loss
from .heads import SequenceClassificationHeadMixin
from .modeling_ecg_resnet import EcgResNetModel, init_relu_conv_
from .text_tower import TextTowerMixin, load_text_tower, split_tower_kwargs

logger = logging.get_logger(__name__)


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
        losses: the named terms of ``loss`` for logging, ``{"contrastive": loss}``, when computed.
    """

    loss: torch.FloatTensor | None = None
    logits_per_ecg: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    ecg_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    ecg_model_output: ModelOutput | None = None
    text_model_output: ModelOutput | None = None
    losses: dict[str, torch.FloatTensor] | None = None

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
        init_relu_conv_(module)
        if isinstance(module, EtpAttentionPool):
            embed_dim = module.positional_embedding.shape[-1]
            init.normal_(module.positional_embedding, std=embed_dim**-1)  # MERL: randn / embed_dim
            init.normal_(module.cls_token, std=1.0)
        elif isinstance(module, EtpModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


#: ECG tower model class by ``config.ecg_config.model_type`` (see ``configuration_etp.ECG_TOWER_CONFIGS``).
ECG_TOWER_MODELS: dict[str, type[PreTrainedModel]] = {"ecg_resnet": EcgResNetModel}


def ecg_tower_class(ecg_config) -> type[PreTrainedModel]:
    """The model class of an ECG tower config."""
    return ECG_TOWER_MODELS[ecg_config.model_type]


def _num_frames(ecg_config: EcgResNetConfig) -> int:
    """Frames of the last ResNet map for ``num_samples`` input samples (each stride-2 stage: ceil(n / 2))."""
    return math.ceil(ecg_config.num_samples / ecg_config.total_stride)


class EtpModel(TextTowerMixin, EtpPreTrainedModel):
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
        ecg_model = ecg_model if ecg_model is not None else ecg_tower_class(config.ecg_config)(config.ecg_config)
        # Share one config object between the composite and its towers, so edits stay in sync (as
        # VisionTextDualEncoder does).
        ecg_model.config = config.ecg_config
        self.ecg_encoder = ecg_model
        self.init_text_tower(text_model)

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

    # ---- construction helpers ---------------------------------------------------------------------

    def apply_freezing(self) -> None:
        """Set ``requires_grad`` from the config: the text tower's frozen layers (see
        `TextTowerMixin.apply_freezing`) and ``logit_scale`` unless ``config.learnable_temperature``."""
        self.logit_scale.requires_grad = self.config.learnable_temperature
        super().apply_freezing()

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
        towers = split_tower_kwargs(kwargs, (f.name for f in dataclasses.fields(EtpConfig)), ("ecg_", "text_"))
        ecg_kwargs, text_kwargs = towers["ecg_"], towers["text_"]
        if isinstance(ecg_model_name_or_path, EcgResNetConfig):
            ecg_model = EcgResNetModel(ecg_model_name_or_path)
        elif ecg_model_name_or_path is None:
            ecg_model = EcgResNetModel(EcgResNetConfig(**ecg_kwargs))
        else:
            ecg_model = EcgResNetModel.from_pretrained(ecg_model_name_or_path, **ecg_kwargs)
        text_model = load_text_tower(text_model_name_or_path, **text_kwargs)
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
        text_output, pooled = self.encode_text(input_ids, attention_mask, token_type_ids, position_ids)
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
            losses={"contrastive": loss} if loss is not None else None,
        )
        return output if return_dict else output.to_tuple()


class EtpForSequenceClassification(SequenceClassificationHeadMixin, EtpPreTrainedModel):
    """ETP's ECG tower with a linear head, for linear probing and fine-tuning.

    The head reads the 512-d masked mean of the last ResNet map (MERL's probe feature, before the
    contrastive projection). Loading an [`EtpModel`] checkpoint keeps its ``ecg_encoder.*`` weights
    and drops the text tower.
    """

    def __init__(self, config: EtpConfig):
        super().__init__(config)
        self.ecg_encoder = ecg_tower_class(config.ecg_config)(config.ecg_config)
        self.init_classification_head(config.ecg_config.hidden_size, config.ecg_config.classifier_dropout)
        self.post_init()

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
        logits, loss = self.classify(outputs.pooler_output, labels)
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return SequenceClassifierOutput(loss=loss, logits=logits)


__all__ = [
    "EtpForSequenceClassification",
    "EtpModel",
    "EtpOutput",
    "EtpPreTrainedModel",
]
