"""Label-fraction sampling of a training split (1 %, 10 %, 100 % with fixed seeds).

The draw follows the ecg-hub protocol §3: ``pandas.DataFrame.sample(frac=f, random_state=seed)``,
i.e. the first ``round(f * N)`` entries of ``numpy.random.RandomState(seed).permutation(N)``. On a
training split in the order of MERL's CSV, seed 42 therefore reproduces MERL/MELP's subsets (as long
as no class is missing, see below).

Class coverage: a 1 % draw of a small split can miss a rare class entirely, and a head then never
sees a positive. When the draw misses a class that has positives in the full split, one positive
record of that class (chosen with the same seeded generator) replaces a drawn record whose every
class stays covered without it (the latest such record in draw order); if no record can be spared,
the record is added instead, so the subset is then slightly larger than ``round(f * N)``. Classes
absent from the full split stay absent. The result depends only on (labels, fraction, seed).
"""

from __future__ import annotations

import numpy as np


def num_records_for_fraction(num_records: int, fraction: float) -> int:
    """``round(fraction * num_records)`` as pandas' ``sample(frac=...)`` computes it (at least 1)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: expected a value in (0, 1], got {fraction}")
    return max(1, round(fraction * num_records))


def sample_label_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded ``fraction`` of the records, keeping every class present where possible.

    Args:
        labels: (N, C) multi-hot {0, 1} (or (N,) integer class indices) of the full training split.
        fraction: in (0, 1]; 1.0 returns ``arange(N)``.
        seed: the ``random_state`` of the draw (ecg-hub uses 42, 43, 44).

    Returns:
        Sorted int64 indices into the split, shape (~round(fraction * N),).
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        one_hot = np.zeros((labels.shape[0], int(labels.max()) + 1 if labels.size else 0), dtype=np.int64)
        one_hot[np.arange(labels.shape[0]), labels.astype(np.int64)] = 1
        labels = one_hot
    if labels.ndim != 2:
        raise ValueError(f"labels: expected shape (N, C) or (N,), got {labels.shape}")
    labels = (labels > 0).astype(np.int64)
    num_records = labels.shape[0]
    if num_records == 0:
        raise ValueError("labels: the training split is empty")
    if fraction == 1.0:
        return np.arange(num_records, dtype=np.int64)
    size = num_records_for_fraction(num_records, fraction)

    random_state = np.random.RandomState(seed)
    drawn = list(random_state.permutation(num_records)[:size])  # == DataFrame.sample(frac, random_state)
    in_draw = np.zeros(num_records, dtype=bool)
    in_draw[drawn] = True
    counts = labels[drawn].sum(axis=0)
    protected: set[int] = set()

    # Rarest classes first, so a record added for a rare class can also cover a commoner one.
    available = labels.sum(axis=0)
    for c in np.argsort(available, kind="stable"):
        if counts[c] > 0 or available[c] == 0:
            continue
        candidates = np.flatnonzero((labels[:, c] == 1) & ~in_draw)
        newcomer = int(candidates[random_state.randint(len(candidates))])
        # A record can leave if each of its classes keeps at least one other positive in the draw.
        evictable = [
            i
            for i in drawn
            if i not in protected and np.all(counts[labels[i] == 1] >= 2)
        ]
        if evictable:
            leaving = evictable[-1]
            drawn.remove(leaving)
            in_draw[leaving] = False
            counts -= labels[leaving]
        drawn.append(newcomer)
        in_draw[newcomer] = True
        counts += labels[newcomer]
        protected.add(newcomer)
    return np.sort(np.asarray(drawn, dtype=np.int64))
