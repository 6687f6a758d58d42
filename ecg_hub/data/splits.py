"""Splits of prepared datasets and the records a task scores, shared by training and evaluation.

- :func:`dataset_split`: the rows of one split, the one way ecg-hub takes a split (a key of a
  ``DatasetDict``, or the rows whose ``split`` column has that value);
- :func:`load_splits`: the train / validation / test splits of a prepared dataset folder;
- :func:`select_task_records` / :func:`keep_single_label_records`: the records of a label set's task;
- :func:`split_fingerprint`: a hash of a split's record ids (recorded in the results JSON).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ecg_hub.data.labels import SPLIT_NAMES

logger = logging.getLogger(__name__)

__all__ = [
    "SPLIT_NAMES",
    "dataset_split",
    "split_dataset",
    "keep_single_label_records",
    "load_dataset_folder",
    "load_splits",
    "select_task_records",
    "split_fingerprint",
]


def _split_indices(dataset, split: str, column: str) -> np.ndarray:
    """Row indices of ``dataset`` whose ``column`` equals ``split``, read from the Arrow column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = dataset.select_columns([column]).with_format("arrow")[:][column]
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        matches = pc.equal(values, split).fill_null(False).to_numpy(zero_copy_only=False)
    else:  # e.g. a ClassLabel column: compare the Python values
        matches = np.asarray(values.to_pylist(), dtype=object) == split
    return np.flatnonzero(matches)


def dataset_split(dataset: Any, split: str, *, column: str = "split", keep_in_memory: bool = False):
    """The rows of one split of ``dataset``.

    Args:
        dataset: a ``DatasetDict`` / ``IterableDatasetDict`` (``dataset[split]``), a ``Dataset``
            with a ``column`` column (the ``ecg-hub data prepare`` layout; the rows are taken with
            ``Dataset.select`` on their indices, which keeps the memory-mapped table and writes no
            cache file), or an ``IterableDataset`` with that column (filtered as it streams).
        split: ``"train"``, ``"validation"``, ``"test"`` (or any other value of the column).
        column: the column holding each row's split.
        keep_in_memory: passed to ``Dataset.select`` (keep the index mapping in memory).

    Raises:
        ValueError: the dataset has no such split, or no ``column`` column.
    """
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in dataset:
            raise ValueError(f"dataset: a DatasetDict with splits {list(dataset)}; it has no split {split!r}")
        return dataset[split]
    names = getattr(dataset, "column_names", None) or []
    if column not in names:
        raise ValueError(f"dataset: no {column!r} column to take the split {split!r} from (columns: {list(names)})")
    if isinstance(dataset, datasets.Dataset):
        return dataset.select(_split_indices(dataset, split, column), keep_in_memory=keep_in_memory)
    return dataset.filter(lambda value: value == split, input_columns=column)


def split_dataset(dataset: Any, column: str = "split"):
    """Split a dataset by its ``split`` column into a ``datasets.DatasetDict``.

    Keys appear in the order train, validation, test (then any other values, sorted). Uses
    ``Dataset.select`` on index lists, which keeps the memory-mapped Arrow table (no copy).
    """
    import datasets

    if column not in dataset.column_names:
        raise ValueError(f"dataset has no {column!r} column; columns are {dataset.column_names}")
    present = list(dict.fromkeys(dataset.unique(column)))
    order = [name for name in SPLIT_NAMES if name in present] + sorted(v for v in present if v not in SPLIT_NAMES and v is not None)
    return datasets.DatasetDict({name: dataset_split(dataset, name, column=column) for name in order})


def load_dataset_folder(path: str | os.PathLike):
    """``datasets.load_from_disk(path)``, with an error that says how to prepare a missing folder."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise ValueError(f"dataset folder {str(path)!r} does not exist (prepare it with `ecg-hub data prepare`)")
    return datasets.load_from_disk(str(path))


def load_splits(path_or_dataset) -> dict:
    """``{"train", "validation", "test"}`` datasets of a prepared dataset folder (or object).

    Accepts a saved ``DatasetDict`` with those splits, or a single ``Dataset`` with a ``split``
    column (the ``ecg-hub data prepare`` layout), which is split by that column
    (:func:`dataset_split`).
    """
    import datasets

    data = path_or_dataset
    if isinstance(path_or_dataset, (str, os.PathLike)):
        data = load_dataset_folder(path_or_dataset)
    if isinstance(data, datasets.DatasetDict):
        splits = dict(data)
    else:
        if "split" not in data.column_names:
            raise ValueError("dataset has no 'split' column; expected values 'train', 'validation', 'test'")
        splits = {name: dataset_split(data, name) for name in SPLIT_NAMES}
    missing = [name for name in SPLIT_NAMES if name not in splits or len(splits[name]) == 0]
    if missing:
        raise ValueError(f"dataset lacks the split(s) {missing}; fine-tuning and evaluation need train, validation and test")
    return {name: splits[name] for name in SPLIT_NAMES}


def select_task_records(dataset, column: str, problem_type: str = "multi_label_classification"):
    """The records a task scores: at least one positive ``column`` class (multi-label; the PTB-XL
    benchmark and MERL drop records without a label of the task), or exactly one (single-label:
    the multi-class task of ECG-JEPA)."""
    counts = np.array([len(v) for v in dataset[column]])
    keep = counts == 1 if problem_type == "single_label_classification" else counts >= 1
    if keep.all():
        return dataset
    logger.info("%s: kept %d of %d records with %s %r class", problem_type, int(keep.sum()), len(dataset),
                "exactly one" if problem_type == "single_label_classification" else "at least one", column)
    return dataset.select(np.flatnonzero(keep))


def keep_single_label_records(dataset, column: str):
    """Records with exactly one positive class in ``column``."""
    return select_task_records(dataset, column, "single_label_classification")


def split_fingerprint(dataset) -> str:
    """SHA-256 of the sorted ``record_id``s of a split (identifies the split's records)."""
    ids = sorted(str(i) for i in dataset["record_id"]) if "record_id" in dataset.column_names else [str(len(dataset))]
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()
