"""Embeddings and predictions for many ECGs, written to one file: ``ecg-hub embed`` / ``ecg-hub predict``.

>>> from ecg_hub.batch_inference import embed_records, predict_records
>>> embed_records("runs/jepa/model", dataset="data/ptbxl", out="embeddings.parquet")
>>> predict_records("runs/finetune/best", folder="my_wfdb_records", out="predictions.csv")
>>> predict_records("runs/etp/model", dataset="data/ptbxl", out="zero_shot.csv",
...                 labels=["NORM", "MI", "STTC", "CD", "HYP"], prompts="CKEPE_prompt.json")

Why a module of its own: the pipelines (:mod:`ecg_hub.pipelines`) answer one call in memory; a
dataset of 100 k ECGs needs streaming, bounded memory, a file that is either complete or absent,
a run that survives being killed, and an account of every record that could not be scored. The
numbers themselves are the pipelines' (``ecg_embeddings``, ``ecg_text_cosine``,
``apply_score_function``, ``class_text_embeddings``), computed on batches.

Input: a prepared dataset folder (``datasets.load_from_disk``; ``split=`` picks a split, the
``split`` column's value or a ``DatasetDict`` key) or a folder of WFDB records (every ``*.hea``
under it, in sorted order, read with :func:`ecg_hub.data.records.read_wfdb_record`; the record id is
the path relative to the folder without ``.hea``). Rows go through
:class:`~ecg_hub.data.collators.EcgCollator` with the model's feature extractor (deterministic
crop), so a row's ``masked_leads`` reach the model as missing leads.

Records the reader or the feature extractor rejects (a ``ValueError``: truncated file, NaN, too
short, ...) are listed with the reason in ``<out>.skipped.json`` and logged when they are met;
every other record is written. Nothing is dropped silently.

Outputs (all written to a temporary file beside the target, then ``os.replace``-d):

- embed: Parquet with columns ``record_id`` (string), ``source_index`` (int64: the row of the
  dataset, or the position in the folder's sorted ``.hea`` list) and ``embedding``
  (``fixed_size_list<float32>[dim]``), in input order; row groups of :data:`ROW_GROUP_RECORDS`
  rows; the run's metadata as JSON under the schema metadata key ``ecg_hub``.
- predict: CSV with ``record_id``, ``source_index``, ``score_<class>`` per class (``config.id2label``
  order, or ``labels`` order for zero-shot), ``predicted_labels`` (``;``-separated classes whose
  score is ``>= threshold``, empty for none) and ``top_label`` (the best class); the metadata in
  ``<out>.meta.json``.
- both: ``<out>.skipped.json`` (``num_records``, ``num_written``, ``num_skipped``, ``skipped``: a
  list of ``{record_id, source_index, reason}``).

The metadata holds no times and no process count, so a resumed or a multi-process run writes the
same file as an uninterrupted single-process one.

Resuming: records are written as chunks (:data:`CHUNK_RECORDS` records, each a Parquet file and a
JSON manifest written after it) under ``<out>.partial/``, next to ``state.json`` (the run's
settings). A rerun with the same settings skips the records its chunks cover; other settings are
an error naming them (``overwrite=True`` starts again). Once every record is covered, the chunks
are merged in record order into the output and ``<out>.partial/`` is removed. A chunk is never
half-written: the manifest is written after the data, and a chunk without one is recomputed.

Several processes (``accelerate launch --num_processes N``; on CPUs ``ACCELERATE_USE_CPU=1
accelerate launch --multi_gpu --num_processes N -m ecg_hub embed ...``): the records not yet
covered are cut into N contiguous shards, one per process, so a resumed run is balanced too; each
process writes its own chunks, and after a barrier the main process merges them. The caller ends
the process group (``ecg-hub embed`` / ``predict`` do, as ``ecg-hub finetune``).

Precision (``dtype``): ``"float32"``, ``"bfloat16"`` (autocast; the weights stay float32) or
``"auto"``: bfloat16 on a CUDA device that supports it and on CPUs with native bfloat16
instructions (``avx512_bf16`` / ``amx_bf16`` in ``/proc/cpuinfo``; without that file, a torch CPU
capability of AVX512 or AMX), float32 otherwise. The metadata records the dtype used and why
(``dtype``, ``dtype_reason``).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecg_hub.data.builder import record_columns
from ecg_hub.data.collators import COLLATOR_COLUMNS, EcgCollator
from ecg_hub.data.records import read_wfdb_record
from ecg_hub.inference import inference_autocast, resolve_inference_dtype
from ecg_hub.modeling.feature_extraction_ecg import EcgInputReducedWarning
from ecg_hub.utils import accepted_kwargs, explain_disk_errors, write_json_atomic
from ecg_hub.version import __version__

__all__ = [
    "CHUNK_RECORDS",
    "FORMAT_VERSION",
    "ROW_GROUP_RECORDS",
    "BatchInferenceResult",
    "embed_records",
    "partial_dir",
    "predict_records",
    "skipped_path",
]

logger = logging.getLogger(__name__)

#: Version of the output layout (columns and metadata), recorded in the metadata.
FORMAT_VERSION = 1
#: Records per chunk in ``<out>.partial/``: what a killed run loses at most (per process).
CHUNK_RECORDS = 1024
#: Rows per Parquet row group of the final embeddings file (independent of chunks and processes,
#: so every run of the same settings writes the same bytes).
ROW_GROUP_RECORDS = 4096
#: Seconds a process waits at a barrier for the others (a process group's default is 30 min; the
#: shards are balanced, but a slow file system or a long shard must not time out).
BARRIER_TIMEOUT_S = 24 * 3600

_STATE_FILE = "state.json"


def partial_dir(out: str | os.PathLike) -> Path:
    """``<out>.partial``: the resumable state of an unfinished run."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def skipped_path(out: str | os.PathLike) -> Path:
    """``<out>.skipped.json``: the records that were not written, with the reason."""
    out = Path(out)
    return out.with_name(out.name + ".skipped.json")


def _meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


@dataclasses.dataclass
class BatchInferenceResult:
    """What a run did.

    Attributes:
        out: the output file.
        complete: the output is written (False: stopped by ``max_batches`` or an interrupted
            shard; ``<out>.partial`` holds the state, rerun to resume).
        num_records: records in the input.
        num_written / num_skipped: rows in the output / records in ``<out>.skipped.json``
            (known when ``complete``).
        skipped: ``{record_id, source_index, reason}`` per skipped record (when ``complete``).
        processed: records this process computed in this run (written or skipped).
        resumed: records found already done in ``<out>.partial`` when the run started.
        seconds: wall time of this call (loading included).
        compute_seconds: time this process spent in the records loop.
        metadata: the metadata written with the output.
        is_main_process: this is the process that wrote the output (the only one of a
            single-process run).
    """

    out: Path
    complete: bool
    num_records: int
    num_written: int
    num_skipped: int
    skipped: list[dict[str, Any]]
    processed: int
    resumed: int
    seconds: float
    compute_seconds: float
    metadata: dict[str, Any]
    is_main_process: bool = True

    @property
    def records_per_second(self) -> float:
        """ECG/s of this process's records loop."""
        return self.processed / self.compute_seconds if self.compute_seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Processes:
    rank: int
    world_size: int
    device: torch.device
    barrier: Callable[[], None]

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _processes(device: str | torch.device | None) -> _Processes:
    """This process's rank, the world size and the device: Accelerate's under ``accelerate
    launch`` (``WORLD_SIZE`` > 1), else one process on ``device`` (default: CUDA if available)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched <= 1:
        chosen = (
            torch.device(device)
            if device is not None
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        return _Processes(0, 1, chosen, lambda: None)
    if not torch.cuda.is_available() and "ACCELERATE_USE_CPU" not in os.environ:
        # Without GPUs, `accelerate launch --multi_gpu` processes must join a gloo group (as pretrain).
        os.environ["ACCELERATE_USE_CPU"] = "1"
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(
        cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=timedelta(seconds=BARRIER_TIMEOUT_S)
    )
    if state.num_processes != launched:
        raise RuntimeError(
            f"{launched} processes were launched (WORLD_SIZE) but Accelerate sees a world of {state.num_processes}: "
            "every process would do all the work. On CPU, launch with "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...`"
        )
    return _Processes(
        state.process_index,
        state.num_processes,
        torch.device(device) if device else state.device,
        state.wait_for_everyone,
    )


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


class _DatasetRecords(torch.utils.data.Dataset):
    """Positions -> dataset rows (with the collator's columns, ``masked_leads`` included)."""

    def __init__(self, dataset, source_indices: np.ndarray):
        columns = [c for c in COLLATOR_COLUMNS if c in dataset.column_names]
        self.view = dataset.select_columns(columns).with_format(
            "numpy", columns=["signal"], output_all_columns=True
        )
        self.source_indices = source_indices
        self.record_ids = (
            [str(r) for r in dataset.select_columns(["record_id"]).with_format(None)["record_id"]]
            if "record_id" in dataset.column_names
            else None
        )

    def __len__(self) -> int:
        return len(self.source_indices)

    def record_id(self, position: int) -> str:
        index = int(self.source_indices[position])
        return self.record_ids[index] if self.record_ids is not None else str(index)

    def __getitems__(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        # One Arrow read per batch instead of one per row.
        indices = [int(self.source_indices[p]) for p in positions]
        columns = self.view[indices]
        items = []
        for k, (position, index) in enumerate(zip(positions, indices)):
            row = {name: values[k] for name, values in columns.items()}
            row["record_id"] = self.record_id(position)
            items.append(
                {"position": int(position), "source_index": index, "record_id": row["record_id"], "row": row}
            )
        return items

    def __getitem__(self, position: int) -> dict[str, Any]:
        return self.__getitems__([position])[0]


class _FolderRecords(torch.utils.data.Dataset):
    """Positions -> WFDB records read from disk (a failed read is an item with its reason)."""

    def __init__(self, root: Path, relpaths: list[str]):
        self.root = root
        self.relpaths = relpaths
        self.source_indices = np.arange(len(relpaths), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.relpaths)

    def record_id(self, position: int) -> str:
        return self.relpaths[position]

    def __getitem__(self, position: int) -> dict[str, Any]:
        record_id = self.relpaths[position]
        item = {"position": int(position), "source_index": int(position), "record_id": record_id}
        try:
            record = read_wfdb_record(self.root / record_id, record_id=record_id)
        except (ValueError, OSError) as error:
            reason = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            item["error"] = reason if reason.startswith("record ") else f"record {record_id!r}: {reason}"
            return item
        item["row"] = {**record_columns(record), "record_id": record_id}
        return item


def _open_records(dataset, folder, split: str | None):
    """``(records, input description)`` for a dataset folder or a WFDB folder."""
    if (dataset is None) == (folder is None):
        raise ValueError(
            "give either dataset= (a prepared dataset folder) or folder= (a folder of WFDB records), not both"
        )
    if folder is not None:
        root = Path(folder)
        if not root.is_dir():
            raise ValueError(
                f"folder {str(root)!r}: field 'folder' is not a folder; expected a folder of WFDB records (*.hea)"
            )
        if split is not None:
            raise ValueError(f"split={split!r}: a WFDB folder has no splits; give split= with dataset= only")
        headers = sorted(glob.glob(os.path.join(glob.escape(str(root)), "**", "*.hea"), recursive=True))
        relpaths = [os.path.relpath(h, root)[: -len(".hea")].replace(os.sep, "/") for h in headers]
        if not relpaths:
            raise ValueError(f"folder {str(root)!r}: no *.hea header under it; expected WFDB records")
        return _FolderRecords(root, relpaths), {"folder": str(root.resolve()), "split": None}
    import datasets

    if isinstance(dataset, (str, os.PathLike)):
        path = Path(dataset)
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError as error:
            raise ValueError(
                f"dataset {str(path)!r}: not a dataset folder ({error}); expected the output of `ecg-hub data prepare`"
            ) from error
        description = str(path.resolve())
    else:
        loaded, description = (
            dataset,
            f"<in-memory {type(dataset).__name__} of {getattr(dataset, 'num_rows', '?')} rows>",
        )
    if isinstance(loaded, datasets.DatasetDict):
        if split is None or split not in loaded:
            raise ValueError(
                f"dataset {description!r} has splits {sorted(loaded)}; pass split= (--split) naming one"
            )
        loaded = loaded[split]
        indices = np.arange(len(loaded), dtype=np.int64)
    elif split is not None:
        if "split" not in loaded.column_names:
            raise ValueError(f"dataset {description!r}: split={split!r} but it has no 'split' column")
        values = np.asarray(loaded.select_columns(["split"]).with_format(None)["split"], dtype=object)
        indices = np.flatnonzero(values == split).astype(np.int64)
        if not len(indices):
            raise ValueError(
                f"dataset {description!r}: no row has split {split!r} (found {sorted(set(values.tolist()))})"
            )
    else:
        indices = np.arange(len(loaded), dtype=np.int64)
    missing = [c for c in ("signal", "sampling_rate", "leads") if c not in loaded.column_names]
    if missing:
        raise ValueError(
            f"dataset {description!r}: field(s) {missing} missing; expected signal, sampling_rate, leads columns"
        )
    if not len(indices):
        raise ValueError(f"dataset {description!r} has no rows")
    return _DatasetRecords(loaded, indices), {"dataset": description, "split": split}


class _BatchCollator:
    """Items -> one batch of the model's inputs plus the records that failed.

    A batch with a bad record is collated again without it, so one record costs only itself;
    the good records are collated together, as :class:`EcgCollator` would."""

    def __init__(self, feature_extractor):
        self.collator = EcgCollator(feature_extractor, training=False, warn_on_reduction=True)
        self._warned: set[str] = set()

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        # The extractor warns per batch when it crops records or zero-fills most leads; a run says
        # it once per kind (per process), with the first batch's example, not once per batch.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EcgInputReducedWarning)
            collated = self._collate(items)
        for item in caught:
            kind = getattr(item.message, "kind", None)
            if kind is None:
                warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
            elif kind not in self._warned:
                self._warned.add(kind)
                warnings.warn(f"{item.message} (said once per run)", EcgInputReducedWarning, stacklevel=2)
        return collated

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        failed = {item["position"]: item["error"] for item in items if "error" in item}
        good = [item for item in items if "row" in item]
        inputs = None
        if good:
            try:
                inputs = dict(self.collator([item["row"] for item in good]))
            except ValueError:
                kept = []
                for item in good:
                    try:
                        self.collator([item["row"]])
                    except ValueError as error:
                        failed[item["position"]] = str(error)
                    else:
                        kept.append(item)
                good = kept
                inputs = dict(self.collator([item["row"] for item in good])) if good else None
        return {
            "items": [
                {
                    "position": item["position"],
                    "source_index": item["source_index"],
                    "record_id": item["record_id"],
                    "error": failed.get(item["position"]),
                }
                for item in items
            ],
            "inputs": inputs,
        }


# --------------------------------------------------------------------------------------------------
# Chunks under <out>.partial
# --------------------------------------------------------------------------------------------------


def _values_type(width: int | None):
    import pyarrow as pa

    return pa.list_(pa.float32(), width) if width else pa.list_(pa.float32())


def _chunk_table(rows: list[tuple[int, str, np.ndarray]]):
    """``record_id``, ``source_index``, ``values`` (``fixed_size_list<float32>``) of a chunk's rows."""
    import pyarrow as pa

    width = len(rows[0][2]) if rows else 1
    values = (
        np.stack([r[2] for r in rows]).astype(np.float32, copy=False).reshape(-1)
        if rows
        else np.zeros(0, np.float32)
    )
    return pa.table(
        {
            "record_id": pa.array([r[1] for r in rows], type=pa.string()),
            "source_index": pa.array([r[0] for r in rows], type=pa.int64()),
            "values": pa.FixedSizeListArray.from_arrays(pa.array(values, type=pa.float32()), width),
        }
    )


class _ChunkWriter:
    """Buffers results of contiguous positions and writes them as one chunk: the data
    (``chunk-<start>-<end>.parquet``) first, then its manifest (``.json``), each atomically."""

    def __init__(self, directory: Path, rank: int):
        self.directory = directory
        self.rank = rank
        self.start: int | None = None
        self.end: int | None = None
        self.rows: list[tuple[int, str, np.ndarray]] = []
        self.skipped: list[dict[str, Any]] = []
        self.width: int | None = None

    def __len__(self) -> int:
        return 0 if self.start is None else self.end - self.start

    def add(
        self, position: int, source_index: int, record_id: str, values: np.ndarray | None, reason: str | None
    ):
        if self.start is not None and position != self.end:
            self.flush()  # a chunk covers one contiguous range of positions
        if self.start is None:
            self.start = self.end = position
        self.end = position + 1
        if reason is not None:
            self.skipped.append({"record_id": record_id, "source_index": source_index, "reason": reason})
        else:
            self.width = self.width or int(values.shape[-1])
            self.rows.append((source_index, record_id, values))

    def flush(self) -> None:
        if self.start is None:
            return
        import pyarrow.parquet as pq

        name = f"chunk-{self.start:012d}-{self.end:012d}"
        table = _chunk_table(self.rows)
        with explain_disk_errors(
            f"writing chunk {name} to {self.directory}",
            "the chunks written before are intact; rerun the same command to resume",
        ):
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            try:
                pq.write_table(table, tmp)
                os.replace(tmp, self.directory / f"{name}.parquet")
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            write_json_atomic(
                self.directory / f"{name}.json",
                {
                    "start": self.start,
                    "end": self.end,
                    "rank": self.rank,
                    "num_rows": len(self.rows),
                    "width": self.width,
                    "data": f"{name}.parquet",
                    "skipped": self.skipped,
                },
            )
        self.start = self.end = None
        self.rows, self.skipped = [], []


def _manifests(directory: Path) -> list[dict[str, Any]]:
    """The complete chunks of ``directory``, sorted by start position."""
    found = []
    for path in sorted(directory.glob("chunk-*.json")):
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        if not (directory / manifest["data"]).is_file():
            raise ValueError(
                f"{path}: names data file {manifest['data']!r}, which is missing; delete {directory} and rerun"
            )
        found.append(manifest)
    return sorted(found, key=lambda m: m["start"])


def _covered(manifests: list[dict[str, Any]], num_records: int) -> np.ndarray:
    done = np.zeros(num_records, dtype=bool)
    for manifest in manifests:
        if done[manifest["start"] : manifest["end"]].any():
            raise ValueError(
                f"chunk {manifest['data']} overlaps another chunk (positions {manifest['start']}-{manifest['end']}); "
                "the .partial folder was written by different runs: delete it and rerun"
            )
        done[manifest["start"] : manifest["end"]] = True
    return done


def _my_share(todo: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The ``rank``-th of ``world_size`` contiguous, near-equal slices of ``todo``."""
    bounds = [len(todo) * k // world_size for k in range(world_size + 1)]
    return todo[bounds[rank] : bounds[rank + 1]]


# --------------------------------------------------------------------------------------------------
# Model loading and fingerprints
# --------------------------------------------------------------------------------------------------


def _weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names and bytes): the run's identity for resuming."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        data = tensor.detach().cpu().contiguous()
        digest.update(str(data.dtype).encode() + str(tuple(data.shape)).encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _sha256_lines(values: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for value in values:
        digest.update(value.encode("utf-8") + b"\n")
    return digest.hexdigest()


def _feature_extractor_for(model, model_or_path, feature_extractor):
    """The feature extractor given, else the one saved with the model (folder or Hub id)."""
    if feature_extractor is not None:
        return getattr(feature_extractor, "feature_extractor", feature_extractor)  # a processor gives its own
    from ecg_hub.loading import load_feature_extractor

    source = (
        model_or_path
        if isinstance(model_or_path, (str, os.PathLike))
        else getattr(model, "name_or_path", None)
    )
    if not source:
        raise ValueError(
            f"{type(model).__name__}: no feature extractor; pass feature_extractor= (the model's EcgFeatureExtractor)"
        )
    return load_feature_extractor(str(source))


def _model_name(model, model_or_path) -> str:
    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        return str(path.resolve()) if path.exists() else str(model_or_path)
    return getattr(model, "name_or_path", "") or type(model).__name__


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Task:
    """What differs between embed and predict: the step, the output writer, the metadata."""

    kind: str
    model: torch.nn.Module
    feature_extractor: Any
    step: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    settings: dict[str, Any]
    write_output: Callable[[Path, list[Path], dict[str, Any]], int]
    #: the metadata goes to ``<out>.meta.json`` (a CSV has no place for it)
    metadata_sidecar: bool = False


def _run(
    task: _Task,
    model_or_path,
    *,
    dataset,
    folder,
    split,
    out,
    batch_size: int,
    num_workers: int,
    dtype: str,
    progress: bool,
    overwrite: bool,
    max_batches: int | None,
    chunk_records: int,
    device,
) -> BatchInferenceResult:
    started = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive number of records, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers: expected 0 or more DataLoader workers, got {num_workers}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches: expected a positive number of batches or None, got {max_batches}")
    if chunk_records < 1:
        raise ValueError(f"chunk_records: expected a positive number of records, got {chunk_records}")
    out = Path(out)
    records, input_description = _open_records(dataset, folder, split)
    num_records = len(records)
    procs = _processes(device)
    autocast_dtype, dtype_reason = resolve_inference_dtype(dtype, procs.device)
    model = task.model.to(procs.device).eval()

    metadata = {
        "format_version": FORMAT_VERSION,
        "task": task.kind,
        "model": _model_name(model, model_or_path),
        "model_class": type(model).__name__,
        "model_type": getattr(model.config, "model_type", None),
        "weights_sha256": _weights_sha256(model),
        "input": {
            **input_description,
            "num_records": num_records,
            "record_ids_sha256": _sha256_lines([records.record_id(p) for p in range(num_records)]),
        },
        "feature_extractor": json.loads(task.feature_extractor.to_json_string()),
        **task.settings,
        "device_type": procs.device.type,
        "dtype": str(autocast_dtype).removeprefix("torch."),
        "dtype_requested": dtype,
        "dtype_reason": dtype_reason,
        "ecg_hub_version": __version__,
    }

    state_dir = partial_dir(out)
    # Every process checks (read-only) before anyone writes, so a refusal is the same everywhere.
    if not overwrite:
        if out.exists() and not state_dir.exists():
            raise ValueError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
        if (state_dir / _STATE_FILE).exists():
            with open(state_dir / _STATE_FILE, encoding="utf-8") as handle:
                previous = json.load(handle)
            differs = sorted(k for k in set(previous) | set(metadata) if previous.get(k) != metadata.get(k))
            if differs:
                raise ValueError(
                    f"{state_dir}: an unfinished run with other settings ({', '.join(differs)} differ); "
                    "rerun it with the same settings to resume, or pass overwrite=True (--overwrite) to start again"
                )
    if procs.is_main:
        with explain_disk_errors(f"preparing {state_dir}", f"{out} is untouched"):
            if overwrite:
                shutil.rmtree(state_dir, ignore_errors=True)
                for stale in (out, skipped_path(out), _meta_path(out)):
                    if stale.exists():
                        stale.unlink()
            state_dir.mkdir(parents=True, exist_ok=True)
            if not (state_dir / _STATE_FILE).exists():
                write_json_atomic(state_dir / _STATE_FILE, metadata)
    procs.barrier()
    done = _covered(_manifests(state_dir), num_records)
    procs.barrier()  # everyone has read the chunks before anyone writes new ones
    resumed = int(done.sum())
    share = _my_share(np.flatnonzero(~done), procs.rank, procs.world_size)

    loop_started = time.perf_counter()
    processed = _compute(
        task,
        records,
        share,
        state_dir,
        procs,
        autocast_dtype,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        max_batches=max_batches,
        chunk_records=chunk_records,
    )

    compute_seconds = time.perf_counter() - loop_started
    procs.barrier()
    complete, num_written, skipped, final = False, 0, [], metadata
    if procs.is_main:
        manifests = _manifests(state_dir)
        if bool(_covered(manifests, num_records).all()):
            num_written, skipped, final = _finish(task, out, state_dir, manifests, metadata, num_records)
            complete = True
    procs.barrier()  # the output exists before any process returns
    if not procs.is_main and out.exists() and not state_dir.exists():
        complete = True
        with open(skipped_path(out), encoding="utf-8") as handle:
            summary = json.load(handle)
        num_written, skipped = summary["num_written"], summary["skipped"]
        final = {**metadata, "num_written": num_written, "num_skipped": len(skipped)}
    return BatchInferenceResult(
        out=out,
        complete=complete,
        num_records=num_records,
        num_written=num_written,
        num_skipped=len(skipped),
        skipped=skipped,
        processed=processed,
        resumed=resumed,
        seconds=time.perf_counter() - started,
        compute_seconds=compute_seconds,
        metadata=final,
        is_main_process=procs.is_main,
    )


def _compute(
    task,
    records,
    share,
    state_dir,
    procs,
    autocast_dtype,
    *,
    batch_size,
    num_workers,
    progress,
    max_batches,
    chunk_records,
) -> int:
    """Run the model over this process's positions, writing chunks; the number of records done."""
    from tqdm.auto import tqdm

    writer = _ChunkWriter(state_dir, procs.rank)
    processed = 0
    if not len(share):
        return 0
    loader = torch.utils.data.DataLoader(
        records,
        batch_size=batch_size,
        sampler=[int(p) for p in share],
        collate_fn=_BatchCollator(task.feature_extractor),
        num_workers=num_workers,
    )
    bar = tqdm(
        total=len(share),
        desc=f"{task.kind}" + (f" [process {procs.rank}]" if procs.world_size > 1 else ""),
        unit="ECG",
        disable=not progress or not procs.is_main,
        dynamic_ncols=True,
    )
    skipped_here = 0
    failure = None
    try:
        with torch.no_grad():
            for number, batch in enumerate(loader, start=1):
                values = None
                if batch["inputs"] is not None:
                    inputs = {k: v.to(procs.device) for k, v in batch["inputs"].items()}
                    with inference_autocast(autocast_dtype, procs.device):
                        values = task.step(inputs)
                    values = values.float().cpu().numpy()
                k = 0
                for item in batch["items"]:
                    if item["error"] is not None:
                        skipped_here += 1
                        logger.warning("skipped %s", item["error"])
                        writer.add(
                            item["position"], item["source_index"], item["record_id"], None, item["error"]
                        )
                    else:
                        writer.add(item["position"], item["source_index"], item["record_id"], values[k], None)
                        k += 1
                processed += len(batch["items"])
                bar.update(len(batch["items"]))
                if skipped_here:
                    bar.set_postfix(skipped=skipped_here, refresh=False)
                if len(writer) >= chunk_records:
                    writer.flush()
                if max_batches is not None and number >= max_batches:
                    break
    except BaseException as error:  # keep what is done (Ctrl-C included); then re-raise
        failure = error
        raise
    finally:
        bar.close()
        try:
            writer.flush()
        except Exception:
            if failure is None:
                raise
            logger.exception("could not save the last chunk after %s", type(failure).__name__)
    return processed


def _finish(
    task, out, state_dir, manifests, metadata, num_records
) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """Merge the chunks in record order into ``out``, write the sidecars, remove the state;
    ``(rows written, skipped records, the output's metadata)``."""
    skipped = [entry for manifest in manifests for entry in manifest["skipped"]]
    num_written = sum(manifest["num_rows"] for manifest in manifests)
    widths = {manifest["width"] for manifest in manifests if manifest["num_rows"]}
    if len(widths) > 1:
        raise ValueError(f"{state_dir}: chunks of different widths {sorted(widths)}; delete it and rerun")
    final = {
        **metadata,
        "num_written": num_written,
        "num_skipped": len(skipped),
        "skipped_file": skipped_path(out).name,
    }
    if task.kind == "embed":
        final["dim"] = widths.pop() if widths else None  # None: every record was skipped
    keeps = f"the computed chunks in {state_dir} are intact; rerun the same command to write {out}"
    with explain_disk_errors(f"writing {out}", keeps):
        write_json_atomic(
            skipped_path(out),
            {
                "output": out.name,
                "num_records": num_records,
                "num_written": num_written,
                "num_skipped": len(skipped),
                "skipped": skipped,
            },
        )
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        try:
            task.write_output(Path(tmp), [state_dir / m["data"] for m in manifests if m["num_rows"]], final)
            if task.metadata_sidecar:
                write_json_atomic(_meta_path(out), final)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    shutil.rmtree(state_dir, ignore_errors=True)
    return num_written, skipped, final


def _chunk_tables(paths: list[Path]):
    import pyarrow.parquet as pq

    for path in paths:
        yield pq.read_table(path)


# --------------------------------------------------------------------------------------------------
# embed
# --------------------------------------------------------------------------------------------------


def _write_parquet(tmp: Path, chunk_paths: list[Path], metadata: dict[str, Any]) -> int:
    """Chunks -> one Parquet file with row groups of exactly :data:`ROW_GROUP_RECORDS` rows (the
    last one shorter), whatever the chunks were: a resumed or multi-process run writes the same bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    width = metadata.get("dim")
    schema = pa.schema(
        [("record_id", pa.string()), ("source_index", pa.int64()), ("embedding", _values_type(width))],
        metadata={"ecg_hub": json.dumps(metadata, sort_keys=True)},
    )
    pending, pending_rows, written = [], 0, 0
    with pq.ParquetWriter(tmp, schema) as writer:

        def emit(table):
            # One contiguous table per row group: the bytes do not depend on how chunks were cut.
            writer.write_table(table.combine_chunks(), row_group_size=ROW_GROUP_RECORDS)

        for table in _chunk_tables(chunk_paths):
            table = table.rename_columns(["record_id", "source_index", "embedding"]).cast(schema, safe=True)
            pending.append(table)
            pending_rows += table.num_rows
            while pending_rows >= ROW_GROUP_RECORDS:
                merged = pa.concat_tables(pending)
                emit(merged.slice(0, ROW_GROUP_RECORDS))
                rest = merged.slice(ROW_GROUP_RECORDS)
                pending, pending_rows = [rest], rest.num_rows
                written += ROW_GROUP_RECORDS
        if pending_rows or not written:
            merged = pa.concat_tables(pending) if pending else schema.empty_table()
            emit(merged)
            written += merged.num_rows
    return written


def embed_records(
    model_or_path,
    *,
    dataset=None,
    folder=None,
    out,
    embedding: str | None = None,
    normalize: bool | None = None,
    split: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    dtype: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    feature_extractor=None,
    max_batches: int | None = None,
    chunk_records: int = CHUNK_RECORDS,
    device: str | torch.device | None = None,
) -> BatchInferenceResult:
    """One embedding per record, as the ``ecg-feature-extraction`` pipeline computes it, to Parquet.

    Args:
        model_or_path: a checkpoint folder or Hub id (loaded with ``AutoModel``, as the pipeline
            does: a classifier gives its encoder), or a model (then pass ``feature_extractor``
            unless its ``name_or_path`` has one).
        dataset: a prepared dataset folder (or a ``datasets.Dataset``); or
        folder: a folder of WFDB records (every ``*.hea`` under it).
        out: the Parquet file (module docstring: columns and metadata).
        embedding: ``"projection"`` (ECG-text models: the projected embedding, the default for
            them) or ``"pooled"`` (the ECG encoder's ``pooler_output``; the default otherwise).
        normalize: L2-normalise (default: for ``"projection"`` only).
        split: only the rows of this split (``split`` column value or ``DatasetDict`` key).
        batch_size: records per forward pass.
        num_workers: DataLoader worker processes reading and preprocessing records.
        dtype: ``"auto"``, ``"float32"`` or ``"bfloat16"`` (module docstring).
        progress: a tqdm bar (ECG/s) on the main process.
        overwrite: replace an existing output, or drop an unfinished run's state.
        feature_extractor: the model's ``EcgFeatureExtractor`` (or a processor holding one);
            default: the one saved with the model.
        max_batches: stop after this many batches of this process (the state stays in
            ``<out>.partial``; a rerun resumes): for trying a setting or spreading work over runs.
        chunk_records: records per resumable chunk (:data:`CHUNK_RECORDS`).
        device: where the model runs (default: CUDA if available; Accelerate's under ``accelerate launch``).

    Returns:
        A :class:`BatchInferenceResult`. Raises ``ValueError`` for bad arguments, an input that is
        neither a dataset nor a WFDB folder, or a ``.partial`` state of other settings.
    """
    from ecg_hub.pipelines import ecg_embeddings, resolve_embedding

    if isinstance(model_or_path, (str, os.PathLike)):
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(model_or_path))
    else:
        model = model_or_path
    extractor = _feature_extractor_for(model, model_or_path, feature_extractor)
    kind = resolve_embedding(model, embedding)
    normalized = bool(normalize) if normalize is not None else kind == "projection"
    task = _Task(
        kind="embed",
        model=model,
        feature_extractor=extractor,
        step=lambda inputs: ecg_embeddings(model, inputs, kind, normalized),
        settings={"embedding": kind, "normalize": normalized},
        write_output=_write_parquet,
    )
    return _run(
        task,
        model_or_path,
        dataset=dataset,
        folder=folder,
        split=split,
        out=out,
        batch_size=batch_size,
        num_workers=num_workers,
        dtype=dtype,
        progress=progress,
        overwrite=overwrite,
        max_batches=max_batches,
        chunk_records=chunk_records,
        device=device,
    )


# --------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------


def _format_score(value: float) -> str:
    return str(np.float32(value))  # the shortest text that reads back as the same float32


def _csv_writer(class_names: list[str], thresholds: list[float]):
    """``thresholds``: one per class, in ``class_names`` order."""

    def write(tmp: Path, chunk_paths: list[Path], metadata: dict[str, Any]) -> int:
        import csv

        written = 0
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(
                [
                    "record_id",
                    "source_index",
                    *[f"score_{c}" for c in class_names],
                    "predicted_labels",
                    "top_label",
                ]
            )
            for table in _chunk_tables(chunk_paths):  # one chunk in memory at a time, appended
                ids = table.column("record_id").to_pylist()
                indices = table.column("source_index").to_pylist()
                scores = (
                    table.column("values")
                    .combine_chunks()
                    .flatten()
                    .to_numpy()
                    .reshape(len(ids), len(class_names))
                )
                for record_id, index, row in zip(ids, indices, scores):
                    labels = [c for c, s, t in zip(class_names, row, thresholds) if s >= t]
                    writer.writerow(
                        [
                            record_id,
                            index,
                            *[_format_score(s) for s in row],
                            ";".join(labels),
                            class_names[int(np.argmax(row))],
                        ]
                    )
                written += len(ids)
            handle.flush()
            os.fsync(handle.fileno())
        return written

    return write


def predict_records(
    model_or_path,
    *,
    dataset=None,
    folder=None,
    out,
    labels: Sequence[str] | None = None,
    prompts: str | os.PathLike | Mapping[str, str | Sequence[str]] | None = None,
    prompt_templates: Sequence[str] | None = None,
    function_to_apply: str | None = None,
    threshold: float | None = None,
    split: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    dtype: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    feature_extractor=None,
    processor=None,
    max_batches: int | None = None,
    chunk_records: int = CHUNK_RECORDS,
    device: str | torch.device | None = None,
) -> BatchInferenceResult:
    """Per-class scores and thresholded labels for every record, to CSV.

    Two kinds of model:

    - a fine-tuned ``...ForSequenceClassification`` (``labels`` not given): probabilities by the
      config's ``problem_type``, sigmoid for ``multi_label_classification``, softmax for
      ``single_label_classification``; class names from ``config.id2label``;
    - a text-aligned model (ETP, MELP: ``get_ecg_features`` / ``get_text_features``) with
      ``labels``: zero-shot, scored as the ``zero-shot-ecg-classification`` pipeline scores
      (prompt ensemble of ``prompt_templates`` x descriptions; ``function_to_apply`` ``"softmax"``
      (default), ``"sigmoid"`` or ``"none"`` = cosine).

    Args:
        model_or_path: checkpoint folder / Hub id, or a model (with ``feature_extractor`` /
            ``processor``).
        dataset, folder, out, split, batch_size, num_workers, dtype, progress, overwrite,
        max_batches, chunk_records, device: as :func:`embed_records`; ``out`` is a CSV file.
        labels: zero-shot class names (e.g. ``["NORM", "MI"]``).
        prompts: zero-shot class descriptions: a CKEPE-style JSON file ``{class: description}``
            (lower-cased, keys matched case-insensitively, as the evaluation protocol reads it) or
            a mapping; every label needs one. Without it, a label describes itself.
        prompt_templates: format strings with ``{}``; default the pipeline's
            (:data:`ecg_hub.pipelines.DEFAULT_PROMPT_TEMPLATES`).
        function_to_apply: zero-shot scoring (see above); not for classifiers (their
            ``problem_type`` decides).
        threshold: a class is in ``predicted_labels`` when its score is ``>= threshold``. Default: a
            classifier's per-class thresholds that fine-tuning tuned on validation
            (``config.classification_thresholds``), else 0.5.
        processor: zero-shot: the model's processor (feature extractor + tokenizer); default the
            one saved with the model.
    """
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold: expected a finite number, got {threshold!r}")
    if labels is not None:
        task = _zero_shot_task(
            model_or_path,
            labels,
            prompts,
            prompt_templates,
            function_to_apply,
            threshold,
            feature_extractor,
            processor,
        )
    else:
        if prompts is not None or prompt_templates is not None:
            raise ValueError("prompts / prompt_templates are for zero-shot: pass labels=[...] (--labels) too")
        if function_to_apply is not None:
            raise ValueError(
                "function_to_apply is for zero-shot; a classifier's config.problem_type decides sigmoid or softmax"
            )
        task = _classifier_task(model_or_path, threshold, feature_extractor)
    task.metadata_sidecar = True
    return _run(
        task,
        model_or_path,
        dataset=dataset,
        folder=folder,
        split=split,
        out=out,
        batch_size=batch_size,
        num_workers=num_workers,
        dtype=dtype,
        progress=progress,
        overwrite=overwrite,
        max_batches=max_batches,
        chunk_records=chunk_records,
        device=device,
    )


def _classifier_task(model_or_path, threshold: float | None, feature_extractor) -> _Task:
    from ecg_hub.evaluation.metrics import scores_from_logits
    from ecg_hub.pipelines import classifier_labels, classifier_thresholds

    if isinstance(model_or_path, (str, os.PathLike)):
        from transformers import AutoConfig, AutoModelForSequenceClassification

        config = AutoConfig.from_pretrained(str(model_or_path))
        architectures = list(getattr(config, "architectures", None) or [])
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise ValueError(
                f"model {str(model_or_path)!r}: config.architectures is {architectures}; expected a fine-tuned "
                "...ForSequenceClassification. For zero-shot with a text-aligned model, pass labels (--labels)"
            )
        model = AutoModelForSequenceClassification.from_pretrained(str(model_or_path))
    else:
        model = model_or_path
        if not type(model).__name__.endswith("ForSequenceClassification"):
            raise ValueError(
                f"{type(model).__name__} is not a ...ForSequenceClassification; pass labels= for zero-shot"
            )
    problem_type, class_names = classifier_labels(model, _model_name(model, model_or_path))
    if threshold is None:
        thresholds = classifier_thresholds(model, class_names)
    else:
        thresholds = [float(threshold)] * len(class_names)

    def step(inputs):
        return scores_from_logits(model(**accepted_kwargs(model.forward, inputs)).logits, problem_type)

    return _Task(
        kind="predict",
        model=model,
        feature_extractor=_feature_extractor_for(model, model_or_path, feature_extractor),
        step=step,
        settings={
            "mode": "classifier",
            "class_names": class_names,
            "problem_type": problem_type,
            "scoring": "sigmoid" if problem_type == "multi_label_classification" else "softmax",
            "thresholds": dict(zip(class_names, thresholds)),
            "thresholds_from": "argument" if threshold is not None else (
                "config.classification_thresholds" if getattr(model.config, "classification_thresholds", None)
                else "default 0.5"
            ),
        },
        write_output=_csv_writer(class_names, thresholds),
    )


def _zero_shot_task(
    model_or_path,
    labels,
    prompts,
    prompt_templates,
    function_to_apply,
    threshold,
    feature_extractor,
    processor,
) -> _Task:
    from ecg_hub.evaluation.zero_shot import load_class_prompts
    from ecg_hub.pipelines import (
        SCORE_FUNCTIONS,
        apply_score_function,
        build_class_prompts,
        class_text_embeddings,
        ecg_text_cosine,
    )

    labels = [labels] if isinstance(labels, str) else [str(label) for label in labels]
    function_to_apply = function_to_apply or "softmax"
    if function_to_apply not in SCORE_FUNCTIONS:
        raise ValueError(f"function_to_apply: expected one of {SCORE_FUNCTIONS}, got {function_to_apply!r}")
    if isinstance(model_or_path, (str, os.PathLike)):
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained(str(model_or_path))
        processor = processor or AutoProcessor.from_pretrained(str(model_or_path))
    else:
        model = model_or_path
        if processor is None:
            raise ValueError(
                f"{type(model).__name__}: zero-shot needs processor= (feature extractor + tokenizer)"
            )
    for method in ("get_ecg_features", "get_text_features"):
        if not hasattr(model, method):
            raise ValueError(
                f"{type(model).__name__} has no {method}(); zero-shot (labels=...) needs a text-aligned model such as ETP"
            )
    descriptions = None
    prompts_source = None
    if prompts is not None:
        if isinstance(prompts, Mapping):
            raw = {str(k): v for k, v in prompts.items()}
            prompts_source = "<mapping>"
        else:
            raw = load_class_prompts(prompts)
            prompts_source = str(Path(prompts).resolve())
        by_lower = {k.lower(): v for k, v in raw.items()}
        missing = [label for label in labels if label not in raw and label.lower() not in by_lower]
        if missing:
            raise ValueError(
                f"prompts {prompts_source}: no description for label(s) {missing}; expected a key per label "
                f"(case-insensitive; the file has {sorted(raw)[:20]}{' ...' if len(raw) > 20 else ''})"
            )
        descriptions = {label: raw[label] if label in raw else by_lower[label.lower()] for label in labels}
    class_prompts = build_class_prompts(labels, descriptions, prompt_templates)
    model.eval()
    class_embeddings = class_text_embeddings(model, processor, class_prompts)
    zero_shot_threshold = 0.5 if threshold is None else float(threshold)

    def step(inputs):
        cosine, scale = ecg_text_cosine(model, inputs, class_embeddings.to(inputs["input_values"].device))
        return apply_score_function(cosine, scale, function_to_apply)

    return _Task(
        kind="predict",
        model=model,
        feature_extractor=_feature_extractor_for(model, model_or_path, feature_extractor or processor),
        step=step,
        settings={
            "mode": "zero-shot",
            "class_names": labels,
            "scoring": function_to_apply,
            "thresholds": dict.fromkeys(labels, zero_shot_threshold),
            "thresholds_from": "argument" if threshold is not None else "default 0.5",
            "prompts_file": prompts_source,
            "class_prompts": dict(zip(labels, class_prompts)),
        },
        write_output=_csv_writer(labels, [zero_shot_threshold] * len(labels)),
    )
