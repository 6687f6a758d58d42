"""Label columns and splits of ecg-hub datasets.

A label column is named by its label set (``superclass``, ``rhythm``, ``dx`` ...) and typed
``datasets.Sequence(datasets.ClassLabel(names=[...]))``: each row holds the list of its positive class
indices (the Hugging Face multi-label idiom), and the class names travel with the dataset through
``save_to_disk`` / ``push_to_hub``. :func:`multi_hot` turns such a column into the ``(N, C)`` float32
matrix that ``BCEWithLogitsLoss`` and the metrics expect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: The values of the ``split`` column, in the order :func:`split_dataset` returns them.
SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")


def label_feature(names: Sequence[str]):
    """The ``datasets`` feature of a label column: ``Sequence(ClassLabel(names))``."""
    import datasets

    return datasets.Sequence(datasets.ClassLabel(names=list(names)))


def _class_label(dataset: Any, column: str):
    import datasets

    features = getattr(dataset, "features", None)
    if features is None:
        raise ValueError(f"{type(dataset).__name__} has no features; expected a datasets.Dataset")
    if column not in features:
        label_columns = [name for name, feature in features.items() if isinstance(getattr(feature, "feature", None), datasets.ClassLabel)]
        raise ValueError(f"dataset has no label column {column!r}; its label columns are {label_columns}")
    feature = features[column]
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.ClassLabel):
        return inner
    if isinstance(feature, datasets.ClassLabel):
        return feature
    raise ValueError(f"column {column!r} is {feature}; expected Sequence(ClassLabel(names=[...]))")


def label_names(dataset: Any, column: str) -> list[str]:
    """Class names of the label column ``column`` of a ``datasets.Dataset`` (index order)."""
    return list(_class_label(dataset, column).names)


def label_columns(dataset: Any) -> list[str]:
    """Names of every ``Sequence(ClassLabel)`` column of a dataset (or of a ``datasets.Features``)."""
    import datasets

    features = getattr(dataset, "features", dataset)
    return [
        name for name, feature in features.items()
        if isinstance(getattr(feature, "feature", None), datasets.ClassLabel)
    ]


def multi_hot(dataset_or_rows: Any, column: str, num_classes: int | None = None) -> np.ndarray:
    """``(N, C)`` float32 multi-hot matrix of a label column.

    Args:
        dataset_or_rows: a ``datasets.Dataset`` (C comes from its ``ClassLabel``), a list of row dicts,
            or a batch dict ``{column: [[indices], ...]}`` (then pass ``num_classes``).
        column: the label column (lists of positive class indices).
        num_classes: C; required for rows/batches, checked against the dataset otherwise.
    """
    if hasattr(dataset_or_rows, "features"):
        names = label_names(dataset_or_rows, column)
        if num_classes is not None and num_classes != len(names):
            raise ValueError(f"num_classes={num_classes} but column {column!r} has {len(names)} classes")
        num_classes = len(names)
        positives: Iterable[Sequence[int]] = dataset_or_rows[column]
    elif isinstance(dataset_or_rows, Mapping):
        positives = dataset_or_rows[column]
    else:
        positives = [row[column] for row in dataset_or_rows]
    if num_classes is None:
        raise ValueError(f"num_classes is required to build multi-hot labels of {column!r} from rows")
    positives = list(positives)
    matrix = np.zeros((len(positives), num_classes), dtype=np.float32)
    for row, indices in enumerate(positives):
        indices = np.asarray(indices if indices is not None else [], dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= num_classes):
            raise ValueError(f"row {row}: column {column!r} has class index {indices.tolist()} outside [0, {num_classes})")
        matrix[row, indices] = 1.0
    return matrix


def label_counts(dataset_or_rows: Any, column: str, names: Sequence[str] | None = None) -> dict[str, int]:
    """Number of records with each class positive: ``{class_name: count}`` in class order."""
    if names is None:
        names = label_names(dataset_or_rows, column)
    counts = multi_hot(dataset_or_rows, column, num_classes=len(names)).sum(axis=0).astype(int)
    return {name: int(count) for name, count in zip(names, counts)}


def assign_random_split(
    keys: Sequence[str],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 42,
) -> dict[str, str]:
    """Seeded random train/validation/test assignment of ``keys`` (e.g. patient ids, so that every
    record of one patient lands in one split). Returns ``{key: split}``.

    Fractions are of unique keys; the generator is numpy's PCG64 with ``seed``, so the assignment is
    the same on every machine.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions {list(fractions)}: expected three non-negative numbers summing to 1")
    unique = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(unique))
    bounds = np.round(np.cumsum(fractions) * len(unique)).astype(int)
    assignment = {}
    for rank, index in enumerate(order):
        split = SPLIT_NAMES[int(np.searchsorted(bounds, rank, side="right"))] if rank < bounds[-1] else SPLIT_NAMES[-1]
        assignment[unique[index]] = split
    return assignment
