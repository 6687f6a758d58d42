"""Writing ECG records into an on-disk Hugging Face ``datasets.Dataset`` (Arrow, memory-mapped).

Every ``prepare_*`` function lists its records as small picklable *tasks* (paths + metadata), and
gives a function that turns one task into a dataset row or raises ``ValueError``/``OSError``.
:func:`build_dataset` reads the tasks (optionally in worker processes), skips and reports bad records
with their reasons, streams rows into an Arrow file, and saves the dataset with ``save_to_disk``
into a temporary folder that is renamed to the output folder only when complete, so an interrupted
run never leaves a half-written dataset behind.

Signal storage (measured with ``benchmarks/data_pipeline.py``): when every record has the same
shape the ``signal`` column is ``Array2D((leads, samples), float32)``, which reads contiguous batches
of the signal column several times faster than nested lists (about 20,000 vs 4,500 rows/s for
12 x 5000 on one core); with all columns, per-row access, or ``Dataset.__getitems__`` (the
``DataLoader`` path) the two layouts are within about 20 %. When lengths vary (CinC, CODE-15, user
folders) it is ``List(List(float32))``. Both give ``(leads, samples)`` float32 arrays under
``dataset.with_format("numpy")``.

Masked leads: readers zero flat, clipped and absent leads instead of losing the record
(``ecg_hub.data.records``); sources built with ``record_features(..., masked_leads=True)`` store them
in the columns ``masked_leads`` (lead names, in ``leads`` order) and ``masked_lead_reasons``
(``"flat"``, ``"clipped"``, ``"absent"``, one per masked lead), both empty lists for a clean
record, and the summary counts the records kept with masked leads by reason and by lead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ecg_hub.modeling.leads import STANDARD_LEADS
from ecg_hub.utils import explain_disk_errors

#: Name of the JSON file, inside a prepared dataset folder, that holds the prepare summary.
SUMMARY_FILE = "ecg_hub_summary.json"


@dataclass
class SkippedRecord:
    """A record left out of a dataset and why (``reason`` is the reader's ``ValueError`` text)."""

    record_id: str
    reason: str


@dataclass
class MaskedRecord:
    """A record kept with some leads zeroed and masked, the leads and why (``"flat"`` ...)."""

    record_id: str
    leads: list[str]
    reasons: list[str]


@dataclass
class PrepareSummary:
    """What a ``prepare_*`` call wrote: counts, label counts, skipped records with reasons, records
    kept with masked leads, timing.

    Masked leads: ``num_with_masked_leads`` records were kept with at least one lead masked;
    ``masked_record_counts`` is ``{reason: records with a lead masked for it}`` and
    ``masked_lead_counts`` ``{reason: {lead: records}}``; ``masked`` lists the records.
    """

    source: str
    out_dir: str
    num_records: int = 0
    num_skipped: int = 0
    skipped: list[SkippedRecord] = field(default_factory=list)
    num_with_masked_leads: int = 0
    masked_record_counts: dict[str, int] = field(default_factory=dict)
    masked_lead_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    masked: list[MaskedRecord] = field(default_factory=list)
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    split_counts: dict[str, int] = field(default_factory=dict)
    sampling_rates: dict[str, int] = field(default_factory=dict)
    num_samples_min: int = 0
    num_samples_max: int = 0
    signal_storage: str = ""
    elapsed_s: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def records_per_s(self) -> float:
        return (self.num_records + self.num_skipped) / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    def skip_reasons(self) -> dict[str, int]:
        """Skipped records grouped by reason kind (the text after the record name), most common first."""
        kinds = Counter(_reason_kind(item.reason) for item in self.skipped)
        return dict(kinds.most_common())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["records_per_s"] = round(self.records_per_s, 1) if self.elapsed_s > 0 else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrepareSummary:
        data = dict(data)
        data.pop("records_per_s", None)
        data["skipped"] = [SkippedRecord(**item) for item in data.get("skipped", [])]
        data["masked"] = [MaskedRecord(**item) for item in data.get("masked", [])]  # absent before masking
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})

    @property
    def summary_path(self) -> str:
        """The JSON file in the dataset folder that holds this summary, every skipped and masked
        record included."""
        return os.path.join(self.out_dir, SUMMARY_FILE)

    def format(self, max_skipped: int = 5) -> str:
        """Plain-text summary: records, splits, sampling rates, label counts, skipped records.

        Skipped (and masked) records are counted by reason, then the first ``max_skipped`` are
        named, each once; the rest are only in :attr:`summary_path`. A subset of a corpus (e.g. 488
        of the 1,787 PTB-XL records of a metadata file on disk) would otherwise print a line per
        absent file.
        """
        lines = [
            (f"{self.source}: {self.num_records} records written to {self.out_dir}, {self.num_skipped} skipped "
             f"({self.elapsed_s:.1f} s, {self.records_per_s:.0f} records/s)"),
            (f"signal: {self.signal_storage}; samples per record {self.num_samples_min}-{self.num_samples_max}; "
             f"sampling rates (Hz: records) {self.sampling_rates}"),
        ]
        if self.split_counts:
            lines.append("splits: " + ", ".join(f"{name} {count}" for name, count in self.split_counts.items()))
        for column, counts in self.label_counts.items():
            shown = ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda kv: -kv[1]))
            lines.append(f"labels {column} ({len(counts)} classes): {shown}")
        if self.num_with_masked_leads:
            lines.append(
                f"kept {self.num_with_masked_leads} records with masked leads (zeroed, lead_mask 0; "
                "column masked_leads):"
            )
            for reason, records in self.masked_record_counts.items():
                per_lead = ", ".join(f"{lead} {n}" for lead, n in self.masked_lead_counts.get(reason, {}).items())
                lines.append(f"  {records} x {reason} (records per lead: {per_lead})")
            for item in self.masked[:max_skipped]:
                lines.append(f"  - {item.record_id}: " + ", ".join(f"{lead} {why}" for lead, why in zip(item.leads, item.reasons)))
            if len(self.masked) > max_skipped:
                lines.append(
                    f"  ... and {len(self.masked) - max_skipped} more; all {len(self.masked)} are listed "
                    f"under \"masked\" in {self.summary_path}"
                )
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} records:")
            for kind, count in self.skip_reasons().items():
                lines.append(f"  {count} x {kind}")
            for item in self.skipped[:max_skipped]:
                lines.append(f"  - {item.record_id}: {_without_record_prefix(item.reason)}")
            if len(self.skipped) > max_skipped:
                lines.append(
                    f"  ... and {len(self.skipped) - max_skipped} more; all {len(self.skipped)} are listed "
                    f"under \"skipped\" in {self.summary_path}"
                )
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass
class PrepareResult:
    """A prepared dataset, opened memory-mapped from ``summary.out_dir``, and its summary."""

    dataset: Any
    summary: PrepareSummary


#: A file path inside a skip reason (anything with a path separator, or a name with an ECG file
#: extension), optionally quoted: `_reason_kind` replaces it by <file> so that one missing-file reason
#: counts once, not once per file.
_PATH_IN_REASON = re.compile(
    r"""(?P<q>['"]?)(?:[^\s'"]*[/\\][^\s'"]*|[^\s'"/\\]+\.(?:hea|mat|dat|h5|hdf5|csv|npy|edf|xml))(?P=q)"""
)


def _without_record_prefix(reason: str) -> str:
    # "record '501': field ..." -> "field ...": the record id is printed beside it already.
    return reason.split(": ", 1)[1] if reason.startswith("record ") and ": " in reason else reason


def _reason_kind(reason: str) -> str:
    # "record 'X': field 'signal' has flat lead V4 ..." -> "field 'signal' has flat lead";
    # "record '501': field 'filename_hr' file /d/00501_hr.hea not found" -> "... file <file> not found".
    text = _PATH_IN_REASON.sub("<file>", _without_record_prefix(reason))
    for stop in (" (", ";", " in lead", " lead "):
        index = text.find(stop)
        if index > 0:
            text = text[:index]
    return text.strip()


def signal_feature(num_leads: int | None = None, num_samples: int | None = None):
    """``Array2D((num_leads, num_samples), float32)`` when both are fixed, else ``List(List(float32))``."""
    import datasets

    if num_leads and num_samples:
        return datasets.Array2D(shape=(int(num_leads), int(num_samples)), dtype="float32")
    return datasets.Sequence(datasets.Sequence(datasets.Value("float32")))


#: The columns of a record's masked leads (see the module docstring).
MASK_COLUMNS: tuple[str, ...] = ("masked_leads", "masked_lead_reasons")


def record_features(
    signal: Any,
    label_sets: dict[str, Sequence[str]] | None = None,
    extra: dict[str, Any] | None = None,
    *,
    masked_leads: bool = False,
):
    """The common columns (``signal``, ``sampling_rate``, ``leads``, [``masked_leads``,
    ``masked_lead_reasons``], ``record_id``, ``patient_id``), then one ``Sequence(ClassLabel)``
    column per label set, then ``extra`` columns.

    ``masked_leads``: add the two mask columns (every source read through ``ecg_hub.data.records``
    does; off by default so that sources whose rows never mask a lead, e.g. synthetic, keep
    their columns)."""
    import datasets

    from .labels import label_feature

    columns: dict[str, Any] = {
        "signal": signal,
        "sampling_rate": datasets.Value("int32"),
        "leads": datasets.Sequence(datasets.Value("string")),
    }
    if masked_leads:
        columns.update({name: datasets.Sequence(datasets.Value("string")) for name in MASK_COLUMNS})
    columns.update({
        "record_id": datasets.Value("string"),
        "patient_id": datasets.Value("string"),
    })
    for name, classes in (label_sets or {}).items():
        columns[name] = label_feature(classes)
    columns.update(extra or {})
    return datasets.Features(columns)


def record_columns(record: Any) -> dict[str, Any]:
    """The signal columns of a row from an ``EcgRecord``: ``signal``, ``sampling_rate``, ``leads``,
    ``masked_leads``, ``masked_lead_reasons`` (pair with ``record_features(..., masked_leads=True)``)."""
    return {
        "signal": record.signal,
        "sampling_rate": record.sampling_rate,
        "leads": list(record.leads),
        "masked_leads": list(record.masked_leads),
        "masked_lead_reasons": list(record.masked_lead_reasons),
    }


def _load_safely(load_row: Callable[[Any], dict[str, Any]], task: dict[str, Any]) -> tuple[bool, Any]:
    try:
        return True, load_row(task)
    except (ValueError, OSError, KeyError) as error:
        reason = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        if isinstance(error, KeyError):
            reason = f"missing field {error}"
        if not reason.startswith("record "):
            reason = f"record {task['record_id']!r}: {reason}"
        return False, SkippedRecord(str(task["record_id"]), reason)


class _Loader:
    """Picklable ``task -> (ok, row | SkippedRecord)`` for worker processes."""

    def __init__(self, load_row: Callable[[Any], dict[str, Any]]):
        self.load_row = load_row

    def __call__(self, task: dict[str, Any]) -> tuple[bool, Any]:
        return _load_safely(self.load_row, task)


def _iterate(tasks: Sequence[dict[str, Any]], load_row: Callable, num_proc: int) -> Iterator[tuple[bool, Any]]:
    loader = _Loader(load_row)
    if num_proc <= 1 or len(tasks) < 2 * num_proc:
        for task in tasks:
            yield loader(task)
        return
    with ProcessPoolExecutor(max_workers=num_proc) as pool:
        yield from pool.map(loader, tasks, chunksize=max(1, min(64, len(tasks) // (8 * num_proc))))


def _replace_dir(source: str, target: str, overwrite: bool) -> None:
    """Move the finished ``source`` folder to ``target``; an existing ``target`` is replaced only
    after the new one is complete."""
    if os.path.exists(target):
        if not overwrite:
            raise FileExistsError(f"{target} already exists; pass overwrite=True (--overwrite) to replace it")
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(target) or ".")
        os.rename(target, os.path.join(old, "dataset"))
        os.rename(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(source, target)


def build_dataset(
    tasks: Sequence[dict[str, Any]],
    load_row: Callable[[dict[str, Any]], dict[str, Any]],
    features: Any,
    out_dir: str | os.PathLike,
    *,
    source: str,
    description: str = "",
    citation: str = "",
    license: str = "",
    homepage: str = "",
    skipped: Sequence[SkippedRecord] = (),
    options: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    writer_batch_size: int = 100,
) -> PrepareResult:
    """Read ``tasks`` with ``load_row`` and save the rows as a dataset at ``out_dir``.

    Args:
        tasks: one dict per record, each with at least ``record_id``.
        load_row: ``task -> row`` (a dict with every column of ``features``), raising ``ValueError``
            (or ``OSError``) for a bad record, which is then skipped and reported. Must be picklable
            (a module-level function or ``functools.partial`` of one) when ``num_proc > 1``.
        features: the ``datasets.Features`` of the rows (see :func:`record_features`).
        out_dir: output folder; written to a temporary sibling first, then renamed.
        skipped: records already rejected while listing tasks (e.g. missing files).
        num_proc: worker processes reading records (1 reads in this process).

    Returns:
        :class:`PrepareResult` with the dataset opened with ``datasets.load_from_disk(out_dir)``.

    Raises:
        ValueError: if no record could be read (the first reasons are in the message).
        FileExistsError: if ``out_dir`` exists and ``overwrite`` is false.
    """
    import datasets
    from datasets.arrow_writer import ArrowWriter
    from tqdm.auto import tqdm

    from .labels import label_columns as _label_columns

    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    start = time.perf_counter()
    summary = PrepareSummary(source=source, out_dir=out_dir, skipped=list(skipped), options=dict(options or {}), notes=list(notes))
    signal_type = features["signal"]
    fixed_shape = tuple(signal_type.shape) if isinstance(signal_type, datasets.Array2D) else None
    summary.signal_storage = (
        f"Array2D{fixed_shape} float32" if fixed_shape else "List(List(float32)) (lengths vary)"
    )
    label_cols = _label_columns(features)
    counts = {name: np.zeros(len(features[name].feature.names), dtype=np.int64) for name in label_cols}
    split_counts: Counter[str] = Counter()
    rates: Counter[str] = Counter()
    lengths: list[int] = []
    masked_records: Counter[str] = Counter()
    masked_leads: dict[str, Counter[str]] = {}

    keeps = f"the previous dataset at {out_dir} is intact" if os.path.exists(out_dir) else f"nothing was written to {out_dir}"
    with explain_disk_errors(f"writing the dataset {out_dir}", keeps):
        work_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        with explain_disk_errors(f"writing the dataset {out_dir}", keeps):
            arrow_path = os.path.join(work_dir, "records.arrow")
            bar = tqdm(total=len(tasks), desc=f"prepare {source}", unit="rec", disable=not progress, dynamic_ncols=True)
            with ArrowWriter(features=features, path=arrow_path, writer_batch_size=writer_batch_size) as writer:
                for ok, item in _iterate(tasks, load_row, num_proc):
                    bar.update(1)
                    if not ok:
                        summary.skipped.append(item)
                        bar.set_postfix(skipped=len(summary.skipped), refresh=False)
                        continue
                    signal = item["signal"]
                    if fixed_shape is not None and tuple(signal.shape) != fixed_shape:
                        summary.skipped.append(SkippedRecord(
                            str(item["record_id"]),
                            f"record {item['record_id']!r}: field 'signal' has shape {tuple(signal.shape)}; "
                            f"expected {fixed_shape} (leads, samples) like the rest of this dataset",
                        ))
                        continue
                    writer.write(item)
                    summary.num_records += 1
                    for name in label_cols:
                        counts[name][np.asarray(item[name], dtype=np.int64)] += 1
                    if "split" in item and item["split"] is not None:
                        split_counts[item["split"]] += 1
                    rates[str(item["sampling_rate"])] += 1
                    lengths.append(int(signal.shape[-1]))
                    masked = list(item.get("masked_leads") or ())
                    if masked:
                        reasons = list(item.get("masked_lead_reasons") or ())
                        if len(reasons) != len(masked):
                            raise ValueError(
                                f"record {item['record_id']!r}: field 'masked_lead_reasons' has {len(reasons)} entries; "
                                f"expected one per masked lead ({len(masked)}: {masked})"
                            )
                        summary.masked.append(MaskedRecord(str(item["record_id"]), masked, reasons))
                        for reason in dict.fromkeys(reasons):
                            masked_records[reason] += 1
                        for lead, reason in zip(masked, reasons):
                            masked_leads.setdefault(reason, Counter())[lead] += 1
                bar.close()
                if summary.num_records == 0:
                    first = "; ".join(s.reason for s in summary.skipped[:3])
                    raise ValueError(f"{source}: no usable record among {len(tasks)} (first reasons: {first or 'no records found'})")
                writer.finalize()
            summary.num_skipped = len(summary.skipped)
            summary.num_with_masked_leads = len(summary.masked)
            summary.masked_record_counts = dict(masked_records.most_common())
            lead_order = {lead: i for i, lead in enumerate(STANDARD_LEADS)}
            summary.masked_lead_counts = {
                reason: dict(sorted(masked_leads[reason].items(), key=lambda kv: lead_order.get(kv[0], len(lead_order))))
                for reason in summary.masked_record_counts
            }
            summary.label_counts = {
                name: {cls: int(c) for cls, c in zip(features[name].feature.names, counts[name])} for name in label_cols
            }
            absent = {name: [c for c, n in found.items() if n == 0] for name, found in summary.label_counts.items()}
            absent = {name: classes for name, classes in absent.items() if classes}
            if absent:
                summary.notes.append(
                    "classes with no record here: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in absent.items())
                )
            summary.split_counts = {name: split_counts[name] for name in ("train", "validation", "test") if name in split_counts}
            summary.split_counts.update({k: v for k, v in split_counts.items() if k not in summary.split_counts})
            summary.sampling_rates = dict(sorted(rates.items(), key=lambda kv: int(kv[0])))
            summary.num_samples_min, summary.num_samples_max = min(lengths), max(lengths)
            info = datasets.DatasetInfo(description=description, citation=citation, license=license, homepage=homepage, features=features)
            dataset = datasets.Dataset.from_file(arrow_path, info=info)
            final_tmp = os.path.join(work_dir, "dataset")
            # Our own bar already covered the records; datasets' "Saving the dataset" bar would repeat it.
            bars_were_on = datasets.utils.are_progress_bars_disabled() is False
            datasets.utils.disable_progress_bars()
            try:
                dataset.save_to_disk(final_tmp)
            finally:
                if bars_were_on:
                    datasets.utils.enable_progress_bars()
            del dataset
            summary.elapsed_s = time.perf_counter() - start
            with open(os.path.join(final_tmp, SUMMARY_FILE), "w") as handle:
                json.dump(summary.to_dict(), handle, indent=1)
            _replace_dir(final_tmp, out_dir, overwrite)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return PrepareResult(dataset=datasets.load_from_disk(out_dir), summary=summary)


def load_summary(dataset_dir: str | os.PathLike) -> PrepareSummary | None:
    """The :class:`PrepareSummary` saved beside a prepared dataset, or ``None`` if there is none."""
    path = os.path.join(os.fspath(dataset_dir), SUMMARY_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return PrepareSummary.from_dict(json.load(handle))
