"""ECG2TOK (Yuan et al., IJCAI 2025) as ``transformers`` models, after ecg-hub's design
(``reference/ECG2TOK.md`` sections 4-6; only the paper's abstract is public).

Stage A, `Ecg2TokTokenizerModel`: a student and an EMA-teacher ViT over per-lead patches learn
patch features by self-distillation (iBOT); a projection head whose l2-normalised prototype matrix
**is the codebook** scores every patch against K codes; the teacher's scores of the unmasked view
are turned into balanced targets by Sinkhorn-Knopp over the batch of every process (or assigned to
an EMA k-means codebook); the student predicts them at its masked patches (``patch``) and across
views at [CLS] (``cls``). ``encode`` gives each patch the argmax code of the teacher, with no
Sinkhorn, so ids depend on the record alone.

Stage B, `Ecg2TokForMaskedSignalModeling`: a BEiT-style encoder sees the ECG with blocks of time
slots replaced by a learned [M] embedding (the same slots in every lead) and predicts, at masked
patches only, the ids the frozen stage-A tokenizer gives the unmasked signal.

Token grid: patch token ``l * patches + p`` is patch ``p`` of lead ``lead_names[l]`` (lead-major,
as in ECG-JEPA); the encoder's sequence is ``[CLS]`` followed by those tokens. Positions: a fixed
1-D sin-cos table over time plus a learned lead embedding, added once, so any lead subset works.

Imports torch, transformers and its sibling modules only (Hub remote-code bundle).
"""

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, MaskedLMOutput, SequenceClassifierOutput
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .clustering import ema_kmeans_update_, kmeans, sinkhorn_knopp
from .configuration_ecg2tok import Ecg2TokConfig, Ecg2TokTokenizerConfig
from .contrastive import distributed_world, gather_features
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
    sincos_time_table,
    token_validity,
)
from .masking import sample_time_span_mask, time_mask_to_tokens

#: Token id of a patch with no label: a missing lead or padded time (``encode``), or a patch outside
#: the mask (stage-B ``labels``); the ``ignore_index`` of ``torch.nn.functional.cross_entropy``.
IGNORE_INDEX = -100


def sample_masked_positions(
    batch_size: int,
    num_leads: int,
    num_patches: int,
    ratio_range: tuple[float, float],
    block_range: tuple[int, int],
    mask_probability: float = 1.0,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> torch.BoolTensor:
    """``(batch, leads * patches)`` bool, True = masked: per record, with probability
    ``mask_probability``, time blocks covering a share ``U(ratio_range)`` of the slots, the same slots
    in every lead (`sample_time_span_mask`); the other records are not masked."""
    rows = []
    for _ in range(batch_size):
        masked = bool(torch.rand(1, generator=generator) < mask_probability)
        low, high = ratio_range
        ratio = low + (high - low) * float(torch.rand(1, generator=generator)) if masked else 0.0
        rows.append(sample_time_span_mask(num_patches, ratio, tuple(block_range), generator))
    return time_mask_to_tokens(torch.stack(rows), num_leads).to(device)


# ----------------------------------------------------------------------------------------------
# The shared encoder (section 4)
# ----------------------------------------------------------------------------------------------


class Ecg2TokEmbeddings(nn.Module):
    """Patch embedding, [M] replacement, 1-D sin-cos time position + learned lead embedding, [CLS]."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.patch_embeddings = EcgPatchEmbeddings(config.patch_size, config.hidden_size)
        self.lead_embeddings = nn.Embedding(config.num_leads, config.hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))

    def forward(self, input_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        batch_size, num_leads, num_samples = input_values.shape
        num_patches = num_samples // self.config.patch_size
        embeddings = self.patch_embeddings(input_values)
        if bool_masked_pos is not None:
            # [M] replaces the patch content before positions are added (BEiT), so the model knows
            # where the masked patch is but not what it holds.
            masked = bool_masked_pos.to(embeddings.device)[:, :, None]
            embeddings = torch.where(masked, self.mask_token.to(embeddings.dtype), embeddings)
        time_table = sincos_time_table(self.config.hidden_size, num_patches).to(embeddings) * self.config.time_position_scale
        lead_ids = torch.arange(num_leads, device=embeddings.device)
        positions = time_table[None, :, :] + self.lead_embeddings(lead_ids)[:, None, :]
        embeddings = embeddings + positions.reshape(1, num_leads * num_patches, -1)
        cls = self.cls_token.to(embeddings.dtype).expand(batch_size, -1, -1)
        return torch.cat([cls, embeddings], dim=1)


class Ecg2TokEncoder(nn.Module):
    """Embeddings -> pre-LN blocks -> LayerNorm over ``[CLS] + leads * patches`` tokens."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = Ecg2TokEmbeddings(config)
        self.layers = build_vit_layers(
            config,
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
            config.num_hidden_layers,
            config.drop_path_rate,
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        output_layer: int | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(hidden (batch, 1 + leads * patches, hidden_size), patch validity (batch, leads * patches)
        or None)``. Hidden states are after the final LayerNorm, or the raw output of block
        ``output_layer`` (1-based) when given."""
        batch_size, num_leads, num_samples = input_values.shape
        num_patches = num_samples // self.config.patch_size
        device = input_values.device
        hidden_states = self.embeddings(input_values, bool_masked_pos)
        patch_valid = token_validity(batch_size, num_leads, num_patches, attention_mask, lead_mask)

        cross_pattern = self.config.attention_pattern == "cropa"
        attention_bias = None
        if cross_pattern or patch_valid is not None:
            # [CLS] is lead -1 / time -1: a global token under CroPA, and always a valid key.
            lead_ids = torch.cat([torch.tensor([-1], device=device), torch.arange(num_leads, device=device).repeat_interleave(num_patches)])
            time_ids = torch.cat([torch.tensor([-1], device=device), torch.arange(num_patches, device=device).repeat(num_leads)])
            token_valid = None
            if patch_valid is not None:
                token_valid = torch.cat([patch_valid.new_ones(batch_size, 1), patch_valid], dim=1)
            attention_bias = build_attention_mask(
                self.config, hidden_states, cross_pattern_mask_function(lead_ids, time_ids, token_valid, cross_pattern)
            )
        for index, layer in enumerate(self.layers, start=1):
            hidden_states = layer(hidden_states, attention_bias, **kwargs)
            if output_layer == index:
                return hidden_states, patch_valid
        return self.layernorm(hidden_states), patch_valid


class Ecg2TokPreTrainedModel(PreTrainedModel):
    """Weight init and attention flags shared by the ECG2TOK models."""

    config: Ecg2TokConfig
    base_model_prefix = "ecg2tok"
    main_input_name = "input_values"
    input_modalities = ("time",)
    supports_gradient_checkpointing = True
    _no_split_modules = ("EcgVitLayer",)
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_record_outputs = {"hidden_states": EcgVitLayer, "attentions": EcgVitAttention}  # noqa: RUF012
    # A stage-B pretraining checkpoint also holds the masked-label head; the encoder and the
    # classifier ignore it.
    _keys_to_ignore_on_load_unexpected = (r"^lm_head",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """Truncated normal (std ``initializer_range``) for linear weights, [CLS], [M] and lead
        embeddings; zero biases; unit LayerNorms; LayerScale at its configured value; unit
        prototype rows (BEiT / iBOT)."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, Ecg2TokEmbeddings):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.mask_token, std=std)
            init.trunc_normal_(module.lead_embeddings.weight, std=std)
        elif isinstance(module, EcgVitLayer) and module.layer_scale_attention is not None:
            init.constant_(module.layer_scale_attention, self.config.layer_scale_init_value)
            init.constant_(module.layer_scale_mlp, self.config.layer_scale_init_value)
        elif isinstance(module, Ecg2TokProjectionHead):
            init.trunc_normal_(module.prototypes, std=1.0)


# ----------------------------------------------------------------------------------------------
# Stage A: the semantic tokenizer (section 5)
# ----------------------------------------------------------------------------------------------


class Ecg2TokProjectionHead(nn.Module):
    """DINO / iBOT head: MLP -> l2-normalised bottleneck; scores are cosines to the l2-normalised
    prototype rows (the weight-normalised last layer with unit gain), i.e. the codebook."""

    def __init__(self, config: Ecg2TokTokenizerConfig):
        super().__init__()
        widths = [config.hidden_size] + [config.head_hidden_size] * (config.head_num_layers - 1) + [config.head_bottleneck_size]
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(width_in, width_out))
            if index < len(widths) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(config.codebook_size, config.head_bottleneck_size))

    def features(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """l2-normalised bottleneck features ``(..., bottleneck)``."""
        return F.normalize(self.mlp(hidden_states), dim=-1)

    def codebook(self) -> torch.Tensor:
        """``(K, bottleneck)`` unit code vectors."""
        return F.normalize(self.prototypes, dim=-1)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(bottleneck features, cosine scores (..., K))``."""
        features = self.features(hidden_states)
        return features, features @ self.codebook().to(features.dtype).t()


def augment_view(
    input_values: torch.Tensor, lead_valid: torch.Tensor, config: Ecg2TokTokenizerConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented view (section 5), drawn from the global torch RNG, in mV: per-lead amplitude
    scale, Gaussian noise (per-record sigma up to ``noise_std_max_mv``), a baseline-wander sine, 50 or
    60 Hz hum, and lead dropout (the dropped lead is zeroed and marked missing, never silently
    kept). No time shift. Returns ``(view, lead_valid of the view)``; at least one lead stays."""
    batch_size, num_leads, num_samples = input_values.shape
    device, dtype = input_values.device, input_values.dtype
    low, high = config.amplitude_scale_range
    scale = low + (high - low) * torch.rand(batch_size, num_leads, 1, device=device, dtype=dtype)
    view = input_values * scale
    noise_std = config.noise_std_max_mv * torch.rand(batch_size, 1, 1, device=device, dtype=dtype)
    view = view + noise_std * torch.randn_like(view)
    seconds = torch.arange(num_samples, device=device, dtype=dtype) / config.sampling_rate
    f_low, f_high = config.wander_frequency_range_hz
    wander_hz = f_low + (f_high - f_low) * torch.rand(batch_size, 1, 1, device=device, dtype=dtype)
    phase = 2 * math.pi * torch.rand(batch_size, num_leads, 1, device=device, dtype=dtype)
    wander = config.wander_max_mv * torch.rand(batch_size, num_leads, 1, device=device, dtype=dtype)
    view = view + wander * torch.sin(2 * math.pi * wander_hz * seconds + phase)
    mains_hz = torch.where(torch.rand(batch_size, 1, 1, device=device) < 0.5, 50.0, 60.0).to(dtype)
    if float(mains_hz.max()) < config.sampling_rate / 2:  # hum above Nyquist would alias
        hum = config.powerline_max_mv * torch.rand(batch_size, num_leads, 1, device=device, dtype=dtype)
        view = view + hum * torch.sin(2 * math.pi * mains_hz * seconds + phase)
    drop = torch.rand(batch_size, num_leads, device=device) < config.lead_dropout_probability
    view_valid = lead_valid & ~drop
    empty = ~view_valid.any(dim=1)
    view_valid[empty] = lead_valid[empty]  # never drop the last lead of a record
    view = view * view_valid[:, :, None].to(dtype)
    return view, view_valid


@dataclass
class Ecg2TokTokenizerOutput(ModelOutput):
    r"""Output of [`Ecg2TokTokenizerModel`] pretraining.

    Args:
        loss: ``losses["cls"] + losses["patch"]``.
        losses: ``{"cls": cross-view [CLS] distillation, "patch": masked-patch distillation}``.
        teacher_scores: ``(views, batch, leads * patches, K)`` teacher cosine scores of the unmasked views.
        targets: ``(views, batch, leads * patches, K)`` teacher assignments (Sinkhorn or k-means one-hot).
        student_scores: ``(views, batch, leads * patches, K)`` student cosine scores of the masked views.
        bool_masked_pos: ``(views, batch, leads * patches)`` the student masks.
    """

    loss: torch.FloatTensor | None = None
    losses: dict[str, torch.FloatTensor] | None = None
    teacher_scores: torch.FloatTensor | None = None
    targets: torch.FloatTensor | None = None
    student_scores: torch.FloatTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None


class Ecg2TokTokenizerModel(EmaTeacherMixin, Ecg2TokPreTrainedModel):
    """Stage A: the self-distilled semantic ECG tokenizer (see the module docstring).

    ``forward`` is the pretraining step (two views, student masking, targets, ``loss`` and its
    terms); ``encode`` gives token ids; ``post_optimizer_step`` (the loop's hook) updates the EMA
    teacher and returns the codebook-health figures.
    """

    config: Ecg2TokTokenizerConfig
    base_model_prefix = "student"
    _ema_pairs = (("student", "teacher"), ("student_head", "teacher_head"))

    def __init__(self, config: Ecg2TokTokenizerConfig):
        super().__init__(config)
        self.student = Ecg2TokEncoder(config)
        self.teacher = Ecg2TokEncoder(config)
        self.student_head = Ecg2TokProjectionHead(config)
        self.teacher_head = Ecg2TokProjectionHead(config)
        # Training state: [optimizer steps done, steps of the run], set by `post_optimizer_step`; the
        # teacher-temperature and prototype-freeze schedules read it, and it is saved so that a
        # resumed run continues both. The k-means statistics exist in every mode (one layout).
        self.register_buffer("training_steps", torch.zeros(2), persistent=True)
        self.register_buffer("kmeans_code_sums", torch.zeros(config.codebook_size, config.head_bottleneck_size))
        self.register_buffer("kmeans_cluster_sizes", torch.zeros(config.codebook_size))
        self.register_buffer("kmeans_initialized", torch.zeros((), dtype=torch.bool))
        # Health counters of the current optimizer step and of the last `health_window_steps` steps.
        self.register_buffer("_step_code_counts", torch.zeros(config.codebook_size), persistent=False)
        self.register_buffer("_step_agreement", torch.zeros(2), persistent=False)
        self.register_buffer(
            "_window_code_counts", torch.zeros(config.health_window_steps, config.codebook_size), persistent=False
        )
        self._window_position = 0
        self._window_filled = 0
        self.post_init()
        self.init_ema_teacher()
        if config.clustering == "ema_kmeans":
            # The codebook follows the teacher's features by EMA, not by gradients.
            self.student_head.prototypes.requires_grad_(False)
        elif config.prototype_freeze_steps > 0:
            self.student_head.prototypes.register_hook(self._freeze_prototypes_hook)

    def _freeze_prototypes_hook(self, grad: torch.Tensor) -> torch.Tensor:
        steps_done = float(self.training_steps[0])
        return torch.zeros_like(grad) if steps_done < self.config.prototype_freeze_steps else grad

    @property
    def training_progress(self) -> float:
        """Share of the run's optimizer steps done (0 before the first step)."""
        steps_done, total_steps = (float(v) for v in self.training_steps)
        return steps_done / total_steps if total_steps > 0 else 0.0

    # -- schedules ---------------------------------------------------------------------------

    def teacher_temperature(self) -> float:
        """Teacher (and Sinkhorn) temperature at the current `training_progress`: linear from
        ``teacher_temperature_start`` to ``_end`` over the first ``teacher_temperature_warmup_fraction``."""
        config = self.config
        warmup = config.teacher_temperature_warmup_fraction
        share = 1.0 if warmup <= 0 else min(self.training_progress / warmup, 1.0)
        return config.teacher_temperature_start + share * (config.teacher_temperature_end - config.teacher_temperature_start)

    # -- inference ---------------------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self,
        input_values: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.LongTensor:
        """Token ids ``(batch, leads, patches)``: the argmax over the codebook of the teacher's
        l2-normalised bottleneck feature of each patch (no Sinkhorn, so ids depend on the record
        alone, not on the batch). Patches of missing leads (``lead_mask == 0``) or with no real
        sample (``attention_mask``) get ``-100`` (`IGNORE_INDEX`); they are hidden from attention,
        so they do not change the other leads' ids. Runs the teacher in eval mode (no stochastic depth)."""
        check_patch_inputs(type(self).__name__ + ".encode", self.config, input_values, attention_mask, lead_mask)
        batch_size, num_leads, num_samples = input_values.shape
        was_training = self.teacher.training
        self.teacher.eval()
        try:
            hidden, patch_valid = self.teacher(input_values, attention_mask=attention_mask, lead_mask=lead_mask)
        finally:
            self.teacher.train(was_training)
        _, scores = self.teacher_head(hidden[:, 1:])
        ids = scores.float().argmax(dim=-1)
        if patch_valid is not None:
            ids = ids.masked_fill(~patch_valid, IGNORE_INDEX)
        return ids.reshape(batch_size, num_leads, num_samples // self.config.patch_size)

    def get_codebook(self) -> torch.Tensor:
        """``(K, bottleneck)`` unit code vectors of the teacher (the published codebook)."""
        return self.teacher_head.codebook().detach()

    # -- pretraining -------------------------------------------------------------------------

    def _teacher_targets(self, scores: torch.Tensor, features: torch.Tensor, update_codebook: bool) -> torch.Tensor:
        """``(tokens, K)`` targets of ``(tokens, K)`` teacher scores over the batch of every process.
        ``update_codebook``: in ``ema_kmeans`` mode and training, these features move the codebook
        (patch tokens only: [CLS] features are assigned, never clustered)."""
        config = self.config
        if config.clustering == "sinkhorn":
            return sinkhorn_knopp(scores, self.teacher_temperature(), config.sinkhorn_iterations)
        if update_codebook and self.training:
            self._update_kmeans(features)
        codes = features.float() @ self.teacher_head.codebook().float().t()
        return F.one_hot(codes.argmax(dim=-1), config.codebook_size).float()

    @torch.no_grad()
    def _update_kmeans(self, features: torch.Tensor) -> None:
        config = self.config
        if not bool(self.kmeans_initialized):
            everyone, _ = gather_features(features.float())
            centres = kmeans(everyone, config.codebook_size, config.kmeans_init_iterations)
            for head in (self.student_head, self.teacher_head):
                head.prototypes.copy_(centres.to(head.prototypes.dtype))
            self.kmeans_code_sums.copy_(centres)
            self.kmeans_cluster_sizes.fill_(everyone.shape[0] / config.codebook_size)
            self.kmeans_initialized.fill_(True)
            return
        ema_kmeans_update_(
            self.teacher_head.prototypes, self.kmeans_code_sums, self.kmeans_cluster_sizes,
            features, config.kmeans_decay, config.kmeans_dead_code_threshold,
        )
        self.student_head.prototypes.copy_(self.teacher_head.prototypes)

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        augment: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Ecg2TokTokenizerOutput:
        r"""One self-distillation step.

        Args:
            input_values / attention_mask / lead_mask: ``(batch, leads, samples)`` ECG in mV and its
                masks, as every ecg-hub ECG model takes them.
            bool_masked_pos: ``(batch, leads * patches)`` or ``(2, batch, leads * patches)`` student
                masks (True = [M]); drawn per record and view from the global RNG when None
                (``mask_probability`` of the records get time-synchronised blocks).
            augment: draw two augmented views (default: in training mode); otherwise both views are
                the input itself (deterministic, for evaluation).

        Returns:
            [`Ecg2TokTokenizerOutput`]: ``loss = cls + patch`` (weights 1 : 1). ``patch`` is the
            cross-entropy between the teacher targets of a view and the student softmax
            (``student_temperature``) at the student's masked, valid patches of the same view,
            averaged per record over its masked patches, then over records, then over views;
            ``cls`` the cross-entropy between one view's teacher [CLS] target and the other view's
            student [CLS], both directions.
        """
        config = self.config
        name = type(self).__name__
        check_patch_inputs(name, config, input_values, attention_mask, lead_mask)
        batch_size, num_leads, num_samples = input_values.shape
        num_patches = num_samples // config.patch_size
        device = input_values.device
        num_tokens = num_leads * num_patches
        augment = self.training if augment is None else augment

        lead_valid = lead_mask != 0 if lead_mask is not None else torch.ones(batch_size, num_leads, dtype=torch.bool, device=device)
        views, view_lead_masks = [], []
        for _ in range(2):
            if augment:
                view, view_valid = augment_view(input_values, lead_valid, config)
            else:
                view, view_valid = input_values, lead_valid
            views.append(view)
            view_lead_masks.append(view_valid.long() if (lead_mask is not None or augment) else None)

        if bool_masked_pos is None:
            masks = [
                sample_masked_positions(
                    batch_size, num_leads, num_patches, config.mask_ratio_range, config.mask_block_range,
                    config.mask_probability, device,
                )
                for _ in range(2)
            ]
        else:
            masks = list(bool_masked_pos) if bool_masked_pos.ndim == 3 else [bool_masked_pos, bool_masked_pos]
            for mask in masks:
                check_patch_inputs(name, config, input_values, attention_mask, lead_mask, mask)
            masks = [mask.to(device=device, dtype=torch.bool) for mask in masks]

        teacher_scores, targets, student_scores = [], [], []
        teacher_cls_targets, student_cls_logp, patch_terms = [], [], []
        temperature = config.student_temperature
        for view, view_lead_mask, mask in zip(views, view_lead_masks, masks):
            with torch.no_grad():
                hidden, patch_valid = self.teacher(view, attention_mask=attention_mask, lead_mask=view_lead_mask)
                features, scores = self.teacher_head(hidden)
                valid = patch_valid if patch_valid is not None else torch.ones(batch_size, num_tokens, dtype=torch.bool, device=device)
                patch_scores, patch_features = scores[:, 1:], features[:, 1:]
                target = torch.zeros(batch_size, num_tokens, config.codebook_size, device=device)
                target[valid] = self._teacher_targets(patch_scores[valid], patch_features[valid], update_codebook=True)
                cls_target = self._teacher_targets(scores[:, 0], features[:, 0], update_codebook=False)
                if self.training:
                    self._record_health(patch_scores[valid], target[valid])
            student_hidden, _ = self.student(
                view, attention_mask=attention_mask, lead_mask=view_lead_mask, bool_masked_pos=mask, **kwargs
            )
            _, s_scores = self.student_head(student_hidden)
            s_logp = F.log_softmax(s_scores.float() / temperature, dim=-1)
            per_patch = -(target * s_logp[:, 1:]).sum(dim=-1)
            weights = (mask & valid).to(per_patch.dtype)
            patch_terms.append(((per_patch * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)).mean())
            teacher_scores.append(patch_scores)
            targets.append(target)
            student_scores.append(s_scores[:, 1:])
            teacher_cls_targets.append(cls_target)
            student_cls_logp.append(s_logp[:, 0])

        cls_loss = (
            -(teacher_cls_targets[0] * student_cls_logp[1]).sum(dim=-1).mean()
            - (teacher_cls_targets[1] * student_cls_logp[0]).sum(dim=-1).mean()
        ) / 2
        patch_loss = (patch_terms[0] + patch_terms[1]) / 2
        return Ecg2TokTokenizerOutput(
            loss=cls_loss + patch_loss,
            losses={"cls": cls_loss, "patch": patch_loss},
            teacher_scores=torch.stack(teacher_scores),
            targets=torch.stack(targets),
            student_scores=torch.stack(student_scores),
            bool_masked_pos=torch.stack(masks),
        )

    # -- codebook health and the loop's hook -------------------------------------------------

    @torch.no_grad()
    def _record_health(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Count argmax code usage and argmax-vs-target agreement of this micro-batch's valid patches."""
        argmax = scores.argmax(dim=-1)
        self._step_code_counts += torch.bincount(argmax, minlength=self.config.codebook_size).to(self._step_code_counts)
        self._step_agreement[0] += (argmax == targets.argmax(dim=-1)).sum()
        self._step_agreement[1] += argmax.numel()

    def codebook_health(self) -> dict[str, float]:
        """Figures over the last ``health_window_steps`` optimizer steps of training: ``code_perplexity``
        (exp of the entropy of argmax code usage; K when uniform, 1 when collapsed),
        ``codes_unused_fraction`` (share of the K codes no patch took), and the current
        ``teacher_temperature``."""
        counts = self._window_code_counts[: max(self._window_filled, 1)].sum(dim=0)
        total = counts.sum()
        if float(total) == 0:
            return {"teacher_temperature": self.teacher_temperature()}
        p = counts / total
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        return {
            "code_perplexity": float(entropy.exp()),
            "codes_unused_fraction": float((counts == 0).float().mean()),
            "teacher_temperature": self.teacher_temperature(),
        }

    def post_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        """The loop's hook after optimizer step ``step`` (0-based) of ``total_steps``: EMA update of the
        teacher and its head, progress of the temperature schedule, and the health figures
        (``ema_momentum``, ``code_perplexity``, ``codes_unused_fraction``, ``argmax_sinkhorn_agreement``,
        ``teacher_temperature``), summed over every process."""
        logs = super().post_optimizer_step(step, total_steps)
        self.training_steps.copy_(torch.tensor([step + 1, total_steps], dtype=self.training_steps.dtype))
        counts, agreement = self._step_code_counts.clone(), self._step_agreement.clone()
        if distributed_world()[1] > 1:
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(agreement)
        self._window_code_counts[self._window_position] = counts
        self._window_position = (self._window_position + 1) % self.config.health_window_steps
        self._window_filled = min(self._window_filled + 1, self.config.health_window_steps)
        self._step_code_counts.zero_()
        self._step_agreement.zero_()
        logs.update(self.codebook_health())
        if float(agreement[1]) > 0:
            logs["argmax_sinkhorn_agreement"] = float(agreement[0] / agreement[1])
        return logs


# ----------------------------------------------------------------------------------------------
# Stage B: the masked-label model (section 6)
# ----------------------------------------------------------------------------------------------


class Ecg2TokModel(Ecg2TokPreTrainedModel):
    """The stage-B encoder; ``pooler_output`` is the mean over valid patch tokens after the final
    LayerNorm ([CLS] excluded), the same pooling as ECG-JEPA, so linear probes compare."""

    def __init__(self, config: Ecg2TokConfig):
        super().__init__(config)
        self.encoder = Ecg2TokEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> EcgPatchEmbeddings:
        return self.encoder.embeddings.patch_embeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            input_values: ``(batch, leads, samples)`` ECG in mV, leads in ``config.lead_names`` order.
            attention_mask: ``(batch, samples)``, 1 = real sample, 0 = padding.
            lead_mask: ``(batch, leads)``, 1 = recorded lead, 0 = missing (zero-filled).
            bool_masked_pos: ``(batch, leads * patches)`` bool, patches replaced by [M].

        Returns:
            ``BaseModelOutputWithPooling``: ``last_hidden_state`` ``(batch, 1 + leads * patches,
            hidden_size)`` ([CLS] first), ``pooler_output`` ``(batch, hidden_size)``.
        """
        check_patch_inputs(type(self).__name__, self.config, input_values, attention_mask, lead_mask, bool_masked_pos)
        hidden, patch_valid = self.encoder(
            input_values, attention_mask=attention_mask, lead_mask=lead_mask, bool_masked_pos=bool_masked_pos, **kwargs
        )
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=masked_mean(hidden[:, 1:], patch_valid))


class Ecg2TokForMaskedSignalModeling(Ecg2TokPreTrainedModel):
    """Stage B (BEiT / HuBERT style): predict the frozen tokenizer's ids at [M]-masked patches.

    Labels come from ``labels`` (precomputed ids; positions outside the mask are ignored whatever
    they hold) or, when None, from the frozen stage-A tokenizer of ``config.tokenizer_name_or_path``
    (``config.tokenizer_revision``) under ``no_grad`` on the unmasked signal. The tokenizer is not a
    submodule: its weights are never saved into this model's checkpoints (`set_label_tokenizer`).
    """

    def __init__(self, config: Ecg2TokConfig):
        super().__init__(config)
        self.ecg2tok = Ecg2TokModel(config)
        self.lm_head_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.codebook_size)
        self._label_tokenizer = None
        self.post_init()

    def __setattr__(self, name, value):
        if name == "_label_tokenizer":  # keep it out of the module tree (and the state dict)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def set_label_tokenizer(self, tokenizer: "Ecg2TokTokenizerModel") -> None:
        """Use this (frozen) stage-A tokenizer for labels; its grid and codebook size must match."""
        tok, own = tokenizer.config, self.config
        for field in ("lead_names", "patch_size", "sampling_rate", "codebook_size"):
            if getattr(tok, field) != getattr(own, field):
                raise ValueError(
                    f"Ecg2TokForMaskedSignalModeling: tokenizer {field}={getattr(tok, field)!r} does not match "
                    f"the model's {field}={getattr(own, field)!r}"
                )
        tokenizer.requires_grad_(False).eval()
        self._label_tokenizer = tokenizer

    def label_tokenizer(self, device: torch.device) -> "Ecg2TokTokenizerModel":
        """The frozen tokenizer, loaded from ``config.tokenizer_name_or_path`` on first use."""
        if self._label_tokenizer is None:
            if self.config.tokenizer_name_or_path is None:
                raise ValueError(
                    "Ecg2TokForMaskedSignalModeling: no labels given and config.tokenizer_name_or_path is None; "
                    "pass labels, call set_label_tokenizer, or name a stage-A tokenizer in the config"
                )
            self.set_label_tokenizer(
                Ecg2TokTokenizerModel.from_pretrained(
                    self.config.tokenizer_name_or_path, revision=self.config.tokenizer_revision
                )
            )
        if next(self._label_tokenizer.parameters()).device != device:
            self._label_tokenizer.to(device)
        return self._label_tokenizer

    def sample_bool_masked_pos(self, batch_size: int, num_patches: int, device=None) -> torch.BoolTensor:
        """``(batch, leads * patches)``: per record, blocks of ``mask_block_range`` slots until about
        ``mask_ratio`` of the time slots are masked, the same slots in every lead (global torch RNG)."""
        config = self.config
        return sample_masked_positions(
            batch_size, config.num_leads, num_patches, (config.mask_ratio, config.mask_ratio),
            config.mask_block_range, 1.0, device,
        )

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lead_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        r"""
        Args:
            input_values / attention_mask / lead_mask: as [`Ecg2TokModel.forward`].
            bool_masked_pos: ``(batch, leads * patches)`` bool; drawn with `sample_bool_masked_pos`
                when None.
            labels: ``(batch, leads * patches)`` int token ids (``-100`` = none); only masked, valid
                positions count. None: the label tokenizer computes them.

        Returns:
            ``MaskedLMOutput``: ``logits`` ``(batch, leads * patches, K)``; ``loss``: cross-entropy at
            masked positions (computed here: transformers' ``loss_function`` table has no entry for
            this head).
        """
        check_patch_inputs(type(self).__name__, self.config, input_values, attention_mask, lead_mask, labels)
        batch_size, _, num_samples = input_values.shape
        num_patches = num_samples // self.config.patch_size
        device = input_values.device
        if bool_masked_pos is None:
            bool_masked_pos = self.sample_bool_masked_pos(batch_size, num_patches, device)
        bool_masked_pos = bool_masked_pos.to(device=device, dtype=torch.bool)
        if labels is None:
            with torch.no_grad():
                labels = self.label_tokenizer(device).encode(input_values, lead_mask=lead_mask, attention_mask=attention_mask)
            labels = labels.reshape(batch_size, -1)
        outputs = self.ecg2tok(
            input_values, attention_mask=attention_mask, lead_mask=lead_mask, bool_masked_pos=bool_masked_pos, **kwargs
        )
        logits = self.lm_head(self.lm_head_layernorm(outputs.last_hidden_state[:, 1:]))
        targets = labels.to(device).long().masked_fill(~bool_masked_pos, IGNORE_INDEX)
        if bool((targets != IGNORE_INDEX).any()):
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        else:
            loss = logits.sum() * 0.0  # nothing masked and labelled: a zero that keeps the graph
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class Ecg2TokForSequenceClassification(SequenceClassificationHeadMixin, Ecg2TokPreTrainedModel):
    """Stage-B encoder + a linear head on ``pooler_output`` (linear probe with `freeze_base_model`,
    or fine-tuning); problem types as every ecg-hub classifier."""

    def __init__(self, config: Ecg2TokConfig):
        super().__init__(config)
        self.ecg2tok = Ecg2TokModel(config)
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
        return self.classify_ecg(input_values, attention_mask, lead_mask, labels, **kwargs)


__all__ = [
    "IGNORE_INDEX",
    "Ecg2TokForMaskedSignalModeling",
    "Ecg2TokForSequenceClassification",
    "Ecg2TokModel",
    "Ecg2TokPreTrainedModel",
    "Ecg2TokTokenizerModel",
    "Ecg2TokTokenizerOutput",
    "sample_masked_positions",
]
