"""Optimizer parameter groups and learning-rate schedules for the pretraining loop."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import get_scheduler

__all__ = ["DEFAULT_NO_DECAY_NAMES", "build_lr_scheduler", "build_param_groups"]

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
