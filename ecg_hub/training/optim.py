"""Optimizer parameter groups and learning-rate schedules for the pretraining loop."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from transformers import get_scheduler

__all__ = ["DEFAULT_NO_DECAY_NAMES", "WARM_RESTARTS", "build_lr_scheduler", "build_param_groups"]

#: The schedule name of :func:`build_lr_scheduler` for torch's ``CosineAnnealingWarmRestarts`` (MELP).
WARM_RESTARTS = "cosine_warm_restarts"

#: Parameter-name fragments exempt from weight decay besides every 1-D tensor (biases and
#: norm weights): positional tables and learned special tokens (the timm / I-JEPA convention).
DEFAULT_NO_DECAY_NAMES: tuple[str, ...] = (
    "pos_embed",
    "position_embedding",
    "positional",
    "mask_token",
    "cls_token",
)


def build_param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    no_decay_names: Sequence[str] = DEFAULT_NO_DECAY_NAMES,
) -> list[dict]:
    """Split the trainable parameters into a decayed group and a group without weight decay.

    Without decay: biases and every other tensor with at most one dimension (LayerNorm /
    BatchNorm weights), parameters whose name contains one of ``no_decay_names``, and the names the
    model returns from an optional ``no_weight_decay()`` method (timm's convention). Frozen
    parameters (``requires_grad=False``, e.g. an EMA target encoder or a fixed sin-cos table) are
    left out of the optimizer altogether.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay, "names": [...]},
        {"params": [...], "weight_decay": 0.0, "names": [...]}]`` (empty groups are dropped).
    """
    declared: set[str] = set()
    if callable(getattr(model, "no_weight_decay", None)):
        declared = set(model.no_weight_decay())
    decay, no_decay = ([], []), ([], [])
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = (
            param.ndim <= 1
            or name.endswith(".bias")
            or any(fragment in name for fragment in no_decay_names)
            or name in declared
            or name.split(".")[-1] in declared
        )
        params, names = no_decay if exempt else decay
        params.append(param)
        names.append(name)
    groups = [
        {"params": decay[0], "weight_decay": float(weight_decay), "names": decay[1]},
        {"params": no_decay[0], "weight_decay": 0.0, "names": no_decay[1]},
    ]
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return groups


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    num_training_steps: int,
    name: str = "cosine",
    warmup_steps: int | None = None,
    warmup_ratio: float = 0.0,
    min_lr: float | None = None,
    warmup_start_lr: float | None = None,
    **scheduler_specific_kwargs,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-optimizer-step schedule from ``transformers.get_scheduler``.

    Args:
        optimizer: the optimizer (its ``lr`` is the peak learning rate).
        num_training_steps: optimizer steps of the whole run (the loop passes it).
        name: any ``transformers`` scheduler name (``"cosine"``, ``"linear"``, ``"constant_with_warmup"``,
            ...). With ``min_lr`` or ``warmup_start_lr`` the cosine becomes
            ``"cosine_warmup_with_min_lr"``: linear warmup from ``warmup_start_lr`` to the peak, then
            half-cosine down to ``min_lr`` (the ECG-JEPA / timm ``CosineLRScheduler`` shape).
            ``"cosine_warm_restarts"``: torch's ``CosineAnnealingWarmRestarts`` (``T_mult=1``,
            ``eta_min=min_lr``, default 0) stepped per optimizer step, with cycles of
            ``ceil(cycle_ratio * (num_training_steps - warmup_steps))`` steps (keyword ``cycle_ratio``,
            default 0.5: MELP's two cycles, ``T_0`` = half the run) or ``cycle_steps``, after an
            optional linear warmup from ``warmup_start_lr`` (default 0) to the peak. See
            :func:`_cosine_warm_restarts`.
        warmup_steps: warmup length in optimizer steps; wins over ``warmup_ratio``.
        warmup_ratio: warmup length as a fraction of ``num_training_steps`` (rounded up).
        min_lr: learning rate at the end of the cosine.
        warmup_start_lr: learning rate at the first step of the warmup.
    """
    if warmup_steps is None:
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        warmup_steps = math.ceil(warmup_ratio * num_training_steps)
    peak_lr = optimizer.defaults["lr"]
    if name == WARM_RESTARTS:
        return _cosine_warm_restarts(
            optimizer, num_training_steps, warmup_steps, min_lr, warmup_start_lr, **scheduler_specific_kwargs
        )
    if name == "cosine" and (min_lr is not None or warmup_start_lr is not None):
        name = "cosine_warmup_with_min_lr"
    if name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        scheduler_specific_kwargs.setdefault("min_lr", min_lr if min_lr is not None else 0.0)
    elif min_lr is not None:
        raise ValueError(f"min_lr is not supported by the {name!r} schedule")
    if warmup_start_lr is not None:
        if name != "cosine_warmup_with_min_lr":
            raise ValueError(f"warmup_start_lr is not supported by the {name!r} schedule")
        scheduler_specific_kwargs["warmup_lr_rate"] = warmup_start_lr / peak_lr
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=num_training_steps,
        scheduler_specific_kwargs=scheduler_specific_kwargs or None,
    )


def _cosine_warm_restarts(
    optimizer: torch.optim.Optimizer,
    num_training_steps: int,
    warmup_steps: int,
    min_lr: float | None = None,
    warmup_start_lr: float | None = None,
    cycle_ratio: float = 0.5,
    cycle_steps: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """MELP's schedule: ``CosineAnnealingWarmRestarts(optimizer, T_0, T_mult=1, eta_min)`` stepped
    every optimizer step (``T_0`` = 50 % of the steps, ``eta_min`` 1e-8: two cosine cycles, no
    warmup), as a ``LambdaLR`` (a pure function of the step, so resumes continue it exactly), with
    an optional linear warmup first (the official code has none; a public reproduction saw both towers
    collapse within ~25 steps without one).

    After ``warmup_steps`` steps (rate rising linearly from ``warmup_start_lr``, default 0, to each
    group's peak), step ``s`` of the rest has ``min_lr + (peak - min_lr) * (1 + cos(pi * (s mod
    T_0) / T_0)) / 2``, with ``T_0 = cycle_steps`` or ``ceil(cycle_ratio * (num_training_steps -
    warmup_steps))``. Without warmup this equals torch's ``CosineAnnealingWarmRestarts`` step for step.
    """
    if num_training_steps < 1:
        raise ValueError(f"num_training_steps must be >= 1, got {num_training_steps}")
    if not 0 <= warmup_steps < num_training_steps:
        raise ValueError(f"warmup_steps must be in [0, num_training_steps={num_training_steps}), got {warmup_steps}")
    if cycle_steps is None:
        if not 0.0 < cycle_ratio <= 1.0:
            raise ValueError(f"cycle_ratio must be in (0, 1], got {cycle_ratio}")
        cycle_steps = max(1, math.ceil(cycle_ratio * (num_training_steps - warmup_steps)))
    if int(cycle_steps) < 1:
        raise ValueError(f"cycle_steps must be >= 1, got {cycle_steps}")
    cycle_steps = int(cycle_steps)
    floor = 0.0 if min_lr is None else float(min_lr)
    start = 0.0 if warmup_start_lr is None else float(warmup_start_lr)

    def factor(step: int, peak: float) -> float:
        if step < warmup_steps:
            return (start + (peak - start) * step / warmup_steps) / peak
        position = (step - warmup_steps) % cycle_steps
        return (floor + (peak - floor) * (1.0 + math.cos(math.pi * position / cycle_steps)) / 2.0) / peak

    peaks = [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]
    if any(peak <= 0 for peak in peaks):
        raise ValueError(f"cosine_warm_restarts needs a positive learning rate in every group, got {peaks}")
    if any(floor > peak for peak in peaks):
        raise ValueError(f"min_lr={floor} is above a group's learning rate {min(peaks)}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [functools.partial(factor, peak=peak) for peak in peaks]
    )
