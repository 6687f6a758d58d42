"""Masks over the (lead, time-patch) token grid of per-lead patch models (ECG-JEPA, ECG2TOK).

Conventions: True = hidden. A *time mask* is ``(patches,)`` (shared by the batch) or ``(batch,
patches)`` (one per record); it hides the same time slots in every lead ("time-synchronised"
masking, so a hidden patch cannot be copied from another lead at the same instant). A *lead mask*
here is ``(batch, leads)``. `time_mask_to_tokens` turns a time mask into a mask over lead-major
tokens (token ``l * patches + p``).

Every sampler draws from ``generator`` (the global torch RNG when None) with a fixed sequence of
calls, so a seeded run draws the same masks.

Imports torch only (Hub remote-code bundle).
"""

import torch


def _uniform(low_high, generator: torch.Generator | None) -> float:
    low, high = low_high
    return low + (high - low) * torch.rand(1, generator=generator).item()


def _clamp_count(count: int, num_patches: int) -> int:
    """At least one slot hidden and one visible."""
    return min(max(count, 1), num_patches - 1)


def _check_num_patches(num_patches: int) -> None:
    if num_patches < 2:
        raise ValueError(f"masking needs at least 2 time patches (one hidden, one visible), got {num_patches}")


def sample_time_block_mask(
    num_patches: int,
    num_blocks: int,
    scale: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.BoolTensor:
    """``(num_patches,)`` bool: the union of ``num_blocks`` runs of consecutive slots, each of
    ``int(num_patches * u)`` slots with ``u ~ U(scale)``, starting uniformly in
    ``[0, num_patches - length)`` (ECG-JEPA's multi-block mask). Run lengths are clamped to
    ``[1, num_patches - 1]``."""
    _check_num_patches(num_patches)
    mask = torch.zeros(num_patches, dtype=torch.bool)
    for _ in range(num_blocks):
        length = _clamp_count(int(num_patches * _uniform(scale, generator)), num_patches)
        start = int(torch.randint(0, num_patches - length, (1,), generator=generator))
        mask[start : start + length] = True
    return mask


def sample_time_random_mask(
    num_patches: int, scale: tuple[float, float], generator: torch.Generator | None = None
) -> torch.BoolTensor:
    """``(num_patches,)`` bool: ``int(num_patches * r)`` slots with ``r ~ U(scale)``, uniformly
    without replacement (clamped to ``[1, num_patches - 1]``)."""
    _check_num_patches(num_patches)
    count = _clamp_count(int(num_patches * _uniform(scale, generator)), num_patches)
    mask = torch.zeros(num_patches, dtype=torch.bool)
    mask[torch.randperm(num_patches, generator=generator)[:count]] = True
    return mask


def sample_time_mask(
    num_patches: int,
    mask_type: str,
    *,
    num_blocks: int = 4,
    block_scale: tuple[float, float] = (0.15, 0.2),
    random_scale: tuple[float, float] = (0.4, 0.6),
    generator: torch.Generator | None = None,
) -> torch.BoolTensor:
    """One shared ``(num_patches,)`` time mask of ``mask_type`` ``"block"`` or ``"random"``."""
    if mask_type == "block":
        return sample_time_block_mask(num_patches, num_blocks, block_scale, generator)
    if mask_type == "random":
        return sample_time_random_mask(num_patches, random_scale, generator)
    raise ValueError(f"mask_type must be 'block' or 'random', got {mask_type!r}")


def sample_time_masks(batch_size: int, num_patches: int, mask_type: str, **kwargs) -> torch.BoolTensor:
    """``(batch, num_patches)``: an independent `sample_time_mask` per record (same keyword arguments)."""
    return torch.stack([sample_time_mask(num_patches, mask_type, **kwargs) for _ in range(batch_size)])


def sample_time_span_mask(
    num_patches: int,
    ratio: float,
    block_range: tuple[int, int],
    generator: torch.Generator | None = None,
) -> torch.BoolTensor:
    """``(num_patches,)`` bool: blocks of ``U{block_range}`` consecutive slots at uniform starts are
    added until at least ``round(ratio * num_patches)`` slots are hidden (BEiT's block-wise masking
    on the time axis; ECG2TOK's student and stage-B masks). ``ratio = 0`` hides nothing; otherwise
    at least one slot is hidden and at least one visible (the last block is cut to keep it so)."""
    _check_num_patches(num_patches)
    mask = torch.zeros(num_patches, dtype=torch.bool)
    target = round(ratio * num_patches)
    if target <= 0:
        return mask
    target = _clamp_count(target, num_patches)
    low, high = block_range
    while int(mask.sum()) < target:
        length = min(int(torch.randint(low, high + 1, (1,), generator=generator)), num_patches)
        start = int(torch.randint(0, num_patches - length + 1, (1,), generator=generator))
        block = torch.zeros_like(mask)
        block[start : start + length] = True
        new = block & ~mask
        overshoot = int(mask.sum()) + int(new.sum()) - (num_patches - 1)
        if overshoot > 0:  # keep one slot visible
            new[new.nonzero(as_tuple=True)[0][-overshoot:]] = False
        mask |= new
    return mask


def sample_lead_drop_mask(
    batch_size: int,
    num_leads: int,
    drop_probability: float,
    generator: torch.Generator | None = None,
    min_kept: int = 1,
) -> torch.BoolTensor:
    """``(batch, leads)`` bool, True = lead hidden: each lead independently with ``drop_probability``,
    then the first hidden leads of a record are revealed again until ``min_kept`` remain."""
    if not 0.0 <= drop_probability < 1.0:
        raise ValueError(f"drop_probability must be in [0, 1), got {drop_probability}")
    if not 1 <= min_kept <= num_leads:
        raise ValueError(f"min_kept must be in [1, {num_leads}], got {min_kept}")
    hidden = torch.rand(batch_size, num_leads, generator=generator) < drop_probability
    for row in range(batch_size):
        shortfall = min_kept - int((~hidden[row]).sum())
        if shortfall > 0:
            hidden[row, hidden[row].nonzero(as_tuple=True)[0][:shortfall]] = False
    return hidden


def time_mask_to_tokens(time_mask: torch.Tensor, num_leads: int) -> torch.BoolTensor:
    """``(patches,)`` or ``(batch, patches)`` time mask -> ``(leads * patches,)`` or ``(batch, leads *
    patches)`` over lead-major tokens: token ``l * patches + p`` is hidden iff slot ``p`` is."""
    if time_mask.ndim == 1:
        return time_mask.repeat(num_leads)
    return time_mask.repeat(1, num_leads)


__all__ = [
    "sample_lead_drop_mask",
    "sample_time_block_mask",
    "sample_time_mask",
    "sample_time_masks",
    "sample_time_random_mask",
    "sample_time_span_mask",
    "time_mask_to_tokens",
]
