"""Data loading for the pretraining loop: resumable, sharded, and reproducible across restarts.

Two kinds of dataset are supported:

- **map-style** (``datasets.Dataset``, memory-mapped Arrow from ``load_from_disk``, or any
  ``torch.utils.data.Dataset`` with ``__len__``): the rows stay on disk; the process reads the
  rows of one batch at a time (``Dataset.__getitems__``), so RAM does not grow with the dataset.
  :class:`EpochBatchSampler` draws one permutation per epoch from ``(seed, epoch)`` and deals
  batch ``j * world_size + rank`` to each rank, so resuming at batch ``b`` of an epoch means
  starting the sampler at ``b``: nothing before it is read.
- **iterable** (``datasets.IterableDataset``, e.g. ``Dataset.to_iterable_dataset(num_shards)``
  or ``load_dataset(..., streaming=True)``): each rank reads its own shards
  (``datasets.distributed.split_dataset_by_node``), shuffles with a buffer, and re-shuffles per
  epoch (``set_epoch``). Resuming mid-epoch re-reads and drops the batches already seen in that
  epoch (correct, but it costs reading time).

Randomness in the collator (random crops) is keyed by ``(seed, epoch, batch position)`` rather
than by a per-worker stream, so a resumed run draws the same crops as an uninterrupted one, with
any number of DataLoader workers: see :class:`SeededCollate`.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

__all__ = [
    "EpochBatchSampler",
    "SeededCollate",
    "TrainDataLoader",
    "batch_seed",
    "build_train_dataloader",
    "is_iterable_dataset",
    "load_or_prepare",
]


def batch_seed(base_seed: int, *key: int) -> int:
    """A 63-bit seed derived from ``base_seed`` and a batch key (epoch, position, ...)."""
    state = np.random.SeedSequence([int(base_seed) & 0xFFFFFFFF, *[int(k) for k in key]]).generate_state(2)
    return int((int(state[0]) << 32 | int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF)


class _BatchIndices(list):
    """Dataset indices of one batch, tagged with the seed of its collator randomness."""

    seed: int | None = None


class _Rows(list):
    """Rows of one batch, tagged with the seed of its collator randomness."""

    seed: int | None = None


class EpochBatchSampler:
    """Yields this rank's batches of dataset indices for one epoch.

    The epoch's order is ``torch.randperm(num_examples)`` drawn from ``seed + epoch`` (the same on
    every rank); global batch ``g`` is ``order[g * batch_size:(g + 1) * batch_size]`` and rank ``r``
    of ``R`` takes the global batches ``g = j * R + r``. The tail that does not fill ``R`` batches is
    dropped, so every rank runs the same number of steps (no DDP hang). One run with batch ``B * R``
    sees the same examples per step as ``R`` ranks with batch ``B``.

    Args:
        num_examples: rows in the dataset.
        batch_size: rows per batch on this rank.
        num_replicas, rank: data-parallel world size and this process's index.
        seed: seed of the per-epoch permutations and of the collator randomness.
        shuffle: permute each epoch (``False``: dataset order).
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0
        if len(self) == 0:
            raise ValueError(
                f"the dataset has {num_examples} rows: not enough for one batch of {batch_size} rows on each "
                f"of {num_replicas} process(es); lower data.batch_size or use more data"
            )

    def __len__(self) -> int:
        return self.num_examples // (self.batch_size * self.num_replicas)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and the first batch to yield (to resume mid-epoch)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside 0..{len(self)}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_examples, generator=generator)
        else:
            order = torch.arange(self.num_examples)
        for position in range(self.start_batch, len(self)):
            global_batch = position * self.num_replicas + self.rank
            indices = _BatchIndices(
                order[global_batch * self.batch_size : (global_batch + 1) * self.batch_size].tolist()
            )
            indices.seed = batch_seed(self.seed, self.epoch, global_batch)
            yield indices


class _MapDataset(torch.utils.data.Dataset):
    """Fetch a batch of rows in one read (``__getitems__``) and pass the batch seed along."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> _Rows:
        getitems = getattr(self.dataset, "__getitems__", None)
        rows = _Rows(getitems(list(indices)) if getitems is not None else [self.dataset[i] for i in indices])
        rows.seed = getattr(indices, "seed", None)
        return rows


class _BatchedIterable(torch.utils.data.IterableDataset):
    """Group an iterable dataset into batches of rows (so the collator sees whole batches and each
    batch gets a seed keyed by epoch, worker and position). Incomplete final batches are dropped."""

    def __init__(self, dataset: Any, batch_size: int, seed: int, rank: int):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[_Rows]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rows = _Rows()
        position = 0
        for row in self.dataset:
            rows.append(row)
            if len(rows) == self.batch_size:
                rows.seed = batch_seed(self.seed, self.epoch, self.rank, worker, position)
                yield rows
                rows, position = _Rows(), position + 1


@contextmanager
def _seeded_global_rng(seed: int):
    """Seed Python's, NumPy's and torch's global generators for one call, then restore them."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SeededCollate:
    """Run a collator with randomness keyed by the batch (not by the worker's random stream).

    A collator whose ``__call__`` takes a ``generator`` argument (as ``EcgCollator``) gets
    ``numpy.random.default_rng(batch_seed)``; any other collator runs with Python's, NumPy's and
    torch's global generators seeded by the batch seed. Either way the augmentation of a batch
    depends only on ``(recipe seed, epoch, batch position)``: the same after a resume, with 0 or 8
    workers.
    """

    def __init__(self, collator: Callable[[list], dict]):
        self.collator = collator
        try:
            self.takes_generator = "generator" in inspect.signature(collator).parameters
        except (TypeError, ValueError):
            self.takes_generator = False

    def __call__(self, rows: Sequence[Any]) -> dict:
        seed = getattr(rows, "seed", None)
        rows = list(rows)
        if seed is None:
            return self.collator(rows)
        if self.takes_generator:
            return self.collator(rows, generator=np.random.default_rng(seed))
        with _seeded_global_rng(seed):
            return self.collator(rows)


def is_iterable_dataset(dataset: Any) -> bool:
    """True for datasets without random access (``datasets.IterableDataset`` and torch iterables)."""
    return isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__")


class TrainDataLoader:
    """A DataLoader over one epoch at a time, restartable at ``(epoch, batch)``.

    ``epoch_batches(epoch, start_batch)`` yields this rank's batches of ``epoch`` from
    ``start_batch`` on. ``batches_per_epoch`` is ``None`` for iterable datasets (unknown length).
    """

    def __init__(
        self, loader: DataLoader, sampler: EpochBatchSampler | None, iterable: _BatchedIterable | None
    ):
        self.loader = loader
        self.sampler = sampler
        self.iterable = iterable

    @property
    def batches_per_epoch(self) -> int | None:
        return len(self.sampler) if self.sampler is not None else None

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch, start_batch)
            yield from self.loader
            return
        self.iterable.set_epoch(epoch)
        for position, batch in enumerate(self.loader):
            if position >= start_batch:
                yield batch


def build_train_dataloader(
    dataset: Any,
    collate_fn: Callable[[list], dict],
    batch_size: int,
    *,
    num_replicas: int = 1,
    rank: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    shuffle_buffer_size: int = 1_000,
    num_workers: int = 0,
    prefetch_factor: int | None = None,
    pin_memory: bool = False,
    persistent_workers: bool = True,
) -> TrainDataLoader:
    """A :class:`TrainDataLoader` for a map-style or iterable dataset (see the module docstring).

    The DataLoader gets its own ``torch.Generator``, so creating an epoch's iterator never draws
    from the global torch generator (which the model uses, e.g. for masks): a resumed run and an
    uninterrupted one see the same global random stream.
    """
    generator = torch.Generator().manual_seed(seed)
    common: dict[str, Any] = {
        "collate_fn": SeededCollate(collate_fn),
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "generator": generator,
    }
    if num_workers > 0:
        common["prefetch_factor"] = prefetch_factor
    if not is_iterable_dataset(dataset):
        sampler = EpochBatchSampler(len(dataset), batch_size, num_replicas, rank, seed, shuffle)
        loader = DataLoader(
            _MapDataset(dataset),
            batch_sampler=sampler,
            persistent_workers=persistent_workers and num_workers > 0,
            **common,
        )
        return TrainDataLoader(loader, sampler, None)

    if num_replicas > 1 and hasattr(dataset, "n_shards"):
        from datasets.distributed import split_dataset_by_node

        dataset = split_dataset_by_node(dataset, rank=rank, world_size=num_replicas)
    if shuffle and hasattr(dataset, "shuffle"):
        dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
    iterable = _BatchedIterable(dataset, batch_size, seed, rank)
    # Workers must be re-created each epoch: they hold a copy of the dataset, whose epoch
    # (shuffle seed) is set in the main process.
    loader = DataLoader(iterable, batch_size=None, persistent_workers=False, **common)
    return TrainDataLoader(loader, None, iterable)


def load_or_prepare(
    path: str, prepare: Callable[..., Any] | None = None, out_dir_argument: str = "out_dir"
) -> Any:
    """``datasets.load_from_disk(path)`` (memory-mapped Arrow), preparing the dataset first if the
    folder does not exist yet.

    Args:
        path: folder written by ``Dataset.save_to_disk`` / ``ecg-hub data prepare``.
        prepare: called as ``prepare(**{out_dir_argument: path})`` when ``path`` is missing, on the
            main process only (the others wait); in a recipe, a ``_partial_: true`` component such as
            ``ecg_hub.data.ptbxl.prepare_ptbxl`` with its ``root``.
        out_dir_argument: name of the output-folder parameter of ``prepare``.
    """
    from pathlib import Path

    import datasets
    from accelerate import PartialState

    target = Path(path)
    with PartialState().main_process_first():
        if not target.exists():
            if prepare is None:
                raise FileNotFoundError(
                    f"dataset folder {target} does not exist and the recipe gives no 'prepare' step"
                )
            prepare(**{out_dir_argument: str(target)})
    return datasets.load_from_disk(str(target))
