"""Online clustering of token features into a codebook, over the data-parallel batch.

* `sinkhorn_knopp`: SwAV / DINOv2 equipartition. Scores ``(tokens, K)`` become soft assignments
  whose rows sum to 1 and whose per-code mass over the batch is (nearly) uniform, so every code is
  used and the codebook cannot collapse. The sums run over the tokens of **every process**
  (``all_reduce``), so two processes give exactly the assignments one process gives on the
  concatenated batch.
* `EmaKMeansCodebook` helpers (`kmeans`, `ema_kmeans_update_`): BEiT-v2 / HuBERT-style cluster
  centres updated by exponential moving averages of code sums and sizes, initialised by k-means
  and with dead codes restarted.

Imports torch only (Hub remote-code bundle).
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .contrastive import distributed_world, gather_features


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if distributed_world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, temperature: float, num_iterations: int = 3) -> torch.Tensor:
    """Balanced soft assignments of ``(tokens, K)`` scores (cosines to the prototypes).

    ``Q = exp(scores / temperature)`` is alternately scaled so that every code gets mass
    ``1 / K`` and every token mass ``1 / N`` (``N`` = tokens over all processes); the last scaling
    is over tokens, so each returned row sums to 1 exactly and the per-code mass is uniform up to
    the convergence of ``num_iterations`` (DINOv2's ``sinkhorn_knopp_teacher``). Computed in
    float32, shifted by the global maximum for stability (the shift cancels in the scaling).

    Returns ``(tokens, K)`` float32, rows summing to 1. An empty local batch is allowed (a process
    whose tokens are all padding) and still joins the collectives.
    """
    scores = scores.float()
    local_max = scores.max() if scores.numel() else scores.new_tensor(-torch.inf)
    global_max = local_max.clone()
    if distributed_world()[1] > 1:
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX)
    q = torch.exp((scores - global_max) / temperature).t()  # (K, N_local)
    num_codes = q.shape[0]
    num_tokens = _all_reduce_sum(torch.tensor(float(q.shape[1]), device=q.device))
    q /= _all_reduce_sum(q.sum()).clamp(min=torch.finfo(q.dtype).tiny)
    for _ in range(num_iterations):
        code_mass = _all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= code_mass.clamp(min=torch.finfo(q.dtype).tiny)
        q /= num_codes
        q /= q.sum(dim=0, keepdim=True).clamp(min=torch.finfo(q.dtype).tiny)
        q /= num_tokens
    return (q * num_tokens).t()


@torch.no_grad()
def kmeans(features: torch.Tensor, num_codes: int, num_iterations: int) -> torch.Tensor:
    """Spherical k-means (cosine) of ``(N, D)`` l2-normalised features into ``(num_codes, D)`` unit
    centres. Deterministic: centres start at evenly spaced rows; an empty cluster keeps its centre."""
    if features.shape[0] == 0:
        raise ValueError("kmeans: no features to cluster")
    start = torch.linspace(0, features.shape[0] - 1, num_codes, device=features.device).long()
    centres = features[start].clone()
    for _ in range(num_iterations):
        assignment = (features @ centres.t()).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, features)
        counts = torch.bincount(assignment, minlength=num_codes)
        centres = torch.where(counts[:, None] > 0, F.normalize(sums, dim=1), centres)
    return centres


@torch.no_grad()
def ema_kmeans_update_(
    codebook: torch.Tensor,
    code_sums: torch.Tensor,
    cluster_sizes: torch.Tensor,
    features: torch.Tensor,
    decay: float,
    dead_code_threshold: float,
) -> int:
    """One EMA k-means step in place over every process's tokens.

    ``codebook`` ``(K, D)`` unit centres, ``code_sums`` ``(K, D)`` and ``cluster_sizes`` ``(K,)`` the
    EMA statistics, ``features`` ``(N_local, D)`` l2-normalised. Code sums and sizes of the batch
    (all-reduced) are blended with ``decay``; each centre becomes its normalised EMA sum. A code
    whose EMA share of the tokens is below ``dead_code_threshold / K`` restarts at the gathered
    feature least similar to every centre (identical on every process, since all see the same
    gathered features). Returns the number of restarted codes.
    """
    num_codes = codebook.shape[0]
    assignment = (features.float() @ codebook.float().t()).argmax(dim=1)
    batch_sums = torch.zeros_like(code_sums).index_add_(0, assignment, features.to(code_sums.dtype))
    batch_sizes = torch.bincount(assignment, minlength=num_codes).to(cluster_sizes.dtype)
    _all_reduce_sum(batch_sums)
    _all_reduce_sum(batch_sizes)
    code_sums.mul_(decay).add_(batch_sums, alpha=1 - decay)
    cluster_sizes.mul_(decay).add_(batch_sizes, alpha=1 - decay)
    updated = F.normalize(code_sums, dim=1)
    codebook.copy_(torch.where(cluster_sizes[:, None] > 0, updated, codebook.to(updated.dtype)).to(codebook.dtype))

    share = cluster_sizes / cluster_sizes.sum().clamp(min=1e-12)
    dead = (share < dead_code_threshold / num_codes).nonzero(as_tuple=True)[0]
    if dead.numel() == 0:
        return 0
    everyone, _ = gather_features(features.detach())
    if everyone.shape[0] == 0:
        return 0
    nearest = (everyone.float() @ codebook.float().t()).max(dim=1).values
    replacements = everyone[nearest.argsort()[: dead.numel()]]
    count = replacements.shape[0]
    codebook[dead[:count]] = replacements.to(codebook.dtype)
    code_sums[dead[:count]] = replacements.to(code_sums.dtype) * cluster_sizes.mean()
    cluster_sizes[dead[:count]] = cluster_sizes.mean()
    return count


__all__ = ["ema_kmeans_update_", "kmeans", "sinkhorn_knopp"]
