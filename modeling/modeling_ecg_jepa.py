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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_ecg_jepa import EcgJepaConfig
from .ema import EmaTeacherMixin
from .heads import SequenceClassificationHeadMixin
from .layers import (
    EcgPatchEmbeddings,
    EcgVitAttention,
    EcgVitLayer,
    build_attention_mask,
    build_vit_layers,
    check_patch_inputs,
    cross_pattern_mask_function,
    masked_mean,
    sincos_position_table,
    token_validity,
)
from .masking import sample_time_mask

# ----------------------------------------------------------------------------------------------
# Positions and the CroPA mask: pure functions of the token grid, built per call (the table is cached
# per shape) so that any lead subset and any length up to the configured one work.
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# The predictor
# ----------------------------------------------------------------------------------------------


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
        self.layers = build_vit_layers(
            config,
            width,
            config.predictor_num_attention_heads,
            config.predictor_intermediate_size,
            config.predictor_num_hidden_layers,
            config.predictor_drop_path_rate,
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
        table = table * self.config.predictor_position_scale
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
    _no_split_modules = ["EcgVitLayer"]
    # CroPA is an arbitrary boolean mask: SDPA and eager take it, plain flash kernels cannot.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_record_outputs = {"hidden_states": EcgVitLayer, "attentions": EcgVitAttention}
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
        elif isinstance(module, EcgVitLayer):
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
        self.patch_embeddings = EcgPatchEmbeddings(config.patch_size, config.hidden_size)
        self.layers = build_vit_layers(
            config,
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            config.num_hidden_layers,
            config.drop_path_rate,
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> EcgPatchEmbeddings:
        return self.patch_embeddings

    def _check_inputs(self, input_values, attention_mask, lead_mask, masked_time_patches) -> None:
        config = self.config
        check_patch_inputs(type(self).__name__, config, input_values, attention_mask, lead_mask)
        num_samples = input_values.shape[2]
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
        return token_validity(batch_size, self.config.num_leads, num_patches, attention_mask, lead_mask)

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
        position_embeddings = table.to(device=device, dtype=embeddings.dtype)[None] * self.config.position_scale
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

        pooled = masked_mean(last_hidden_state, token_valid)
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
        losses: the named terms of ``loss`` for logging, ``{"latent_prediction": loss}``.
    """

    loss: torch.FloatTensor | None = None
    predicted_features: torch.FloatTensor | None = None
    target_features: torch.FloatTensor | None = None
    masked_time_patches: torch.BoolTensor | None = None
    context_last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    losses: dict[str, torch.FloatTensor] | None = None


class EcgJepaForPreTraining(EmaTeacherMixin, EcgJepaPreTrainedModel):
    """ECG-JEPA self-supervised pretraining: context encoder (``self.ecg_jepa``), EMA target encoder
    (``self.target_encoder``, no gradients) and predictor.

    One mask of time slots is drawn per call and shared by every record and every lead ("synchronised
    cross-lead masking", so a hidden patch cannot be copied from another lead at the same time). The
    target encoder sees the whole ECG; the context encoder sees the visible slots; the predictor
    predicts the layer-normed target features of the hidden slots, lead by lead; loss is SmoothL1.

    Training loop contract: after every optimizer step call ``post_optimizer_step(step, total_steps)``
    (`EmaTeacherMixin`: EMA momentum linear from ``config.ema_momentum_start`` to
    ``config.ema_momentum_end``; the pair is ``ecg_jepa`` -> ``target_encoder``).
    The saved weights load into ``EcgJepaModel.from_pretrained`` as the context encoder. Like the
    official code, the target encoder follows the module's train / eval mode (its stochastic depth is
    active in training).
    """

    _ema_pairs = (("ecg_jepa", "target_encoder"),)

    def __init__(self, config: EcgJepaConfig):
        super().__init__(config)
        self.ecg_jepa = EcgJepaModel(config)
        self.target_encoder = EcgJepaModel(config)
        self.predictor = EcgJepaPredictor(config)
        self.post_init()
        # The target starts as an exact, frozen copy of the context encoder (the official deepcopy).
        self.init_ema_teacher()

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
        config = self.config
        mask = sample_time_mask(
            num_patches,
            config.mask_type,
            num_blocks=config.num_mask_blocks,
            block_scale=config.block_mask_scale,
            random_scale=config.random_mask_scale,
            generator=generator,
        )
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
            losses={"latent_prediction": loss},
        )


class EcgJepaForSequenceClassification(SequenceClassificationHeadMixin, EcgJepaPreTrainedModel):
    """ECG-JEPA encoder + a linear head on the pooled features (the official linear probe / fine-tune
    head). Multi-label (float multi-hot labels, BCE), single-label (int labels, CE) and regression
    follow ``config.problem_type`` through the transformers classification loss, so it is Trainer-ready.
    Call `freeze_base_model` for linear probing."""

    def __init__(self, config: EcgJepaConfig):
        super().__init__(config)
        self.ecg_jepa = EcgJepaModel(config)
        self.init_classification_head(config.hidden_size, config.classifier_dropout)
        self.post_init()

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
        return self.classify_ecg(input_values, attention_mask, lead_mask, labels, **kwargs)


__all__ = [
    "EcgJepaForPreTraining",
    "EcgJepaForSequenceClassification",
    "EcgJepaModel",
    "EcgJepaPreTrainedModel",
    "EcgJepaPreTrainingOutput",
    "sincos_position_table",
]
