"""Contrastive learning across processes: feature gathering, the CLIP loss, BatchNorm statistics.

Shared by the ECG-text families (ETP, MELP) and anything else that contrasts embeddings over a
data-parallel batch.

* `gather_features`: all-gather ``(local_batch, dim)`` features; the local slice keeps its gradient
  (open_clip ``gather_features(gather_with_grad=False)``), unequal local batches are padded for the
  collective and trimmed afterwards;
* `contrastive_loss`: symmetric InfoNCE over L2-normalised embeddings, over the global batch;
* `average_batchnorm_statistics`: keeps BatchNorm running statistics identical across
  data-parallel replicas (SyncBatchNorm does not run on a CPU).

Imports torch only (Hub remote-code bundle).
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def distributed_world() -> tuple[int, int]:
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
    rank, world_size = distributed_world()
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


@torch.no_grad()
def average_batchnorm_statistics(module: nn.Module) -> int:
    """Average BatchNorm running means and variances over the processes of the default group.

    DistributedDataParallel broadcasts buffers from rank 0 *before* each forward, so after the last
    step every process holds running statistics updated with its own micro-batch only, and the
    replicas differ. Averaging after each optimizer step keeps them identical and uses every
    process's batches (SyncBatchNorm would too, but it does not run on the CPU). A no-op without a
    process group. Returns the number of buffers averaged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0
    buffers = [
        buffer
        for norm in module.modules()
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.track_running_stats
        for buffer in (norm.running_mean, norm.running_var)
        if buffer is not None
    ]
    if not buffers:
        return 0
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for buffer in buffers:
        buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
        offset += buffer.numel()
    return len(buffers)


__all__ = ["average_batchnorm_statistics", "contrastive_loss", "distributed_world", "gather_features"]
