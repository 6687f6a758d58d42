"""A user's own folder of WFDB records plus a CSV of labels, as a Hugging Face dataset.

CSV format (one row per record; UTF-8, header row):

* ``record_id`` (or the column named by ``id_column``): the record's path relative to the folder
  without extension (``sub/rec001``), or just its file stem (``rec001``) when that is unique;
* labels, either
    - a ``labels`` column (``label_column``) with class names separated by ``;`` (``AF;RBBB``;
      empty = no positive class), or
    - one 0/1 (or true/false) column per class, listed with ``label_columns``; when there is no
      ``labels`` column and none are listed, every column other than the id and the optional
      columns below is a class column;
* optional: ``patient_id``, ``split`` (``train``/``validation``/``test``; ``val``/``valid`` accepted),
  ``fold`` (an integer in the int32 range; ``2.0`` is 2, ``2.5``/``inf``/``nan`` are errors),
  ``report`` (free text), ``age`` (years: a finite number >= 0), ``sex``. An empty cell is a
  missing value.

Each record is listed once: a record named by two rows (also as ``rec001`` and ``sub/rec001``) is a
``ValueError`` naming the record and both rows, because the two rows may disagree on labels or split
and neither can be preferred. A trailing comma on every line is tolerated (``index_col=False``);
columns without a header name must be empty.

Without a ``split`` column, ``split`` is a seeded random 80/10/10 split by patient (by record when
there is no ``patient_id``). Records listed but not on disk, records on disk but not listed, and
records failing the reader's record checks, and rows with a bad cell (split, fold, age, class value:
the reason names the record, the field, the data row and the CSV) are skipped and reported; flat,
clipped or absent leads are zeroed and listed in ``masked_leads`` instead (``ecg_hub.data.records``).
"""

from __future__ import annotations

import csv
import glob
import math
import os
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any

from .builder import (
    PrepareResult,
    SkippedRecord,
    build_dataset,
    record_columns,
    record_features,
    signal_feature,
)
from .labels import assign_random_split
from .records import SignalChecks, read_wfdb_record

#: CSV columns with a meaning of their own (never class columns).
OPTIONAL_COLUMNS: tuple[str, ...] = ("patient_id", "split", "fold", "report", "age", "sex")

_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                  "valid": "validation", "dev": "validation", "test": "test", "testing": "test"}


def _truthy(value: Any, record_id: str, column: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true", "yes", "y"):
        return True
    if text in ("0", "0.0", "false", "no", "n", "", "nan"):
        return False
    raise ValueError(f"record {record_id!r}: field {column!r} is {value!r}; expected 0/1 or true/false")


def _number_cell(value: Any) -> float | None:
    """A numeric CSV cell as a float (``""`` -> ``None``; text that is not a number -> NaN, which
    the callers' finiteness checks refuse with their own message)."""
    text = str(value).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return math.nan


def _parse_fold(value: Any, record_id: str, where: str) -> int | None:
    """A fold cell as an int32 (``""`` -> ``None``), or a ``ValueError`` naming record, field and row."""
    number = _number_cell(value)
    if number is None:
        return None
    if not math.isfinite(number) or number != int(number) or not -(2**31) <= number < 2**31:
        raise ValueError(
            f"record {record_id!r}: field 'fold' is {value!r} {where}; expected an integer between "
            f"{-(2**31)} and {2**31 - 1} (or an empty cell)"
        )
    return int(number)


def _parse_age(value: Any, record_id: str, where: str) -> float | None:
    """An age cell in years (``""`` -> ``None``), or a ``ValueError`` naming record, field and row."""
    number = _number_cell(value)
    if number is None:
        return None
    if not math.isfinite(number) or not 0 <= number <= 3.0e38:  # stored as float32
        raise ValueError(
            f"record {record_id!r}: field 'age' is {value!r} {where}; expected a finite number of years >= 0 "
            "(or an empty cell)"
        )
    return number


def _read_labels_csv(labels_csv: str | os.PathLike):
    """The labels CSV as a table of strings, or a ``ValueError`` naming the CSV."""
    import pandas as pd

    name = os.fspath(labels_csv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            # index_col=False: a trailing comma on each data line must not shift the columns (pandas
            # would otherwise take the first column as the index).
            table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False, index_col=False)
        except pd.errors.EmptyDataError as error:
            raise ValueError(f"labels CSV {name!r} is empty ({error}); expected a CSV with a header row") from error
        except (OSError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
            raise ValueError(f"labels CSV {name!r} could not be read ({error}); expected a CSV with a header row") from error
    for warning in caught:  # pass the others on
        if not issubclass(warning.category, pd.errors.ParserWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
        _check_extra_fields(name, len(table.columns))
    # A trailing comma on the header line makes an unnamed column: harmless when it is empty.
    unnamed = [c for c in table.columns if str(c).startswith("Unnamed: ")]
    for column in unnamed:
        if table[column].str.strip().astype(bool).any():
            raise ValueError(
                f"labels CSV {name!r}: column {list(table.columns).index(column) + 1} has no header name but "
                "holds values; expected a name for every column in the header row"
            )
    return table.drop(columns=unnamed)


def _check_extra_fields(name: str, num_columns: int) -> None:
    """Raise if a data row has more non-empty fields than the header names (pandas drops them)."""
    with open(name, encoding="utf-8-sig", newline="") as handle:
        for number, fields in enumerate(csv.reader(handle)):
            if number and len(fields) > num_columns and any(f.strip() for f in fields[num_columns:]):
                raise ValueError(
                    f"labels CSV {name!r}: data row {number} has {len(fields)} fields but the header names "
                    f"{num_columns} columns; expected at most a trailing empty field"
                )


def _load_folder_row(task: dict[str, Any], checks: SignalChecks, label_set: str, extra_columns: Sequence[str]) -> dict[str, Any]:
    record = read_wfdb_record(task["path"], record_id=task["record_id"], checks=checks)
    row = {
        **record_columns(record),
        "record_id": task["record_id"],
        "patient_id": task["patient_id"],
        label_set: task["labels"],
        "split": task["split"],
    }
    for column in extra_columns:
        row[column] = task[column]
    return row


def prepare_folder(
    root: str | os.PathLike,
    labels_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    id_column: str = "record_id",
    label_column: str = "labels",
    label_columns: Sequence[str] | None = None,
    label_set: str = "labels",
    separator: str = ";",
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 42,
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    checks: SignalChecks | None = None,
) -> PrepareResult:
    """Write the WFDB records under ``root`` with the labels of ``labels_csv`` as a dataset.

    Args:
        root: folder searched recursively for ``*.hea`` (signals as ``.dat`` or CinC ``.mat``).
        labels_csv: the CSV described in the module docstring.
        id_column: CSV column with the record ids.
        label_column: CSV column with ``separator``-separated class names (used when present).
        label_columns: 0/1 class columns (used when ``label_column`` is absent).
        label_set: name of the dataset's label column.
        checks: reader checks, e.g. ``SignalChecks(expected_sampling_rate=500)``.

    Columns: ``signal`` (leads, samples) float32 mV, ``sampling_rate``, ``leads``, ``record_id``,
    ``patient_id``, ``<label_set>`` (classes sorted by name for a ``labels`` column, in CSV order for
    class columns), ``split``, ``masked_leads`` / ``masked_lead_reasons`` (flat, clipped or absent leads,
    zeroed: ``ecg_hub.data.records``), and ``fold``/``report``/``age``/``sex`` when the CSV has them.
    """
    import datasets

    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"folder {root!r}: field 'root' is not a folder; expected a folder of WFDB records")
    table = _read_labels_csv(labels_csv)
    if id_column not in table.columns:
        raise ValueError(f"labels CSV {os.fspath(labels_csv)!r}: field {id_column!r} is missing (columns {list(table.columns)}); expected a record id column")
    use_label_column = label_columns is None and label_column in table.columns
    if not use_label_column:
        if label_columns is None:
            label_columns = [c for c in table.columns if c not in (id_column, label_column, *OPTIONAL_COLUMNS)]
        missing = [c for c in label_columns if c not in table.columns]
        if missing:
            raise ValueError(f"labels CSV {os.fspath(labels_csv)!r}: field(s) {missing} missing; expected class columns {list(label_columns)}")
        if not label_columns:
            raise ValueError(f"labels CSV {os.fspath(labels_csv)!r}: no label column; expected a {label_column!r} column or 0/1 class columns")
        class_names = list(label_columns)
    else:
        class_names = sorted({name.strip() for value in table[label_column] for name in str(value).split(separator) if name.strip()})
    class_index = {name: i for i, name in enumerate(class_names)}

    headers = sorted(glob.glob(os.path.join(root, "**", "*.hea"), recursive=True))
    by_relpath = {os.path.relpath(h, root)[:-4].replace(os.sep, "/"): h[:-4] for h in headers}
    by_stem: dict[str, list[str]] = {}
    for relpath, path in by_relpath.items():
        by_stem.setdefault(relpath.rsplit("/", 1)[-1], []).append(path)

    extra_columns = [c for c in ("fold", "report", "age", "sex") if c in table.columns]
    tasks: list[dict[str, Any]] = []
    skipped: list[SkippedRecord] = []
    used_paths: set[str] = set()
    first_row: dict[str, tuple[int, str]] = {}  # record path -> (data row, record id) that listed it
    csv_name = os.fspath(labels_csv)
    for number, row in enumerate(table.to_dict("records"), start=1):
        record_id = str(row[id_column]).strip()
        where = f"in data row {number} of labels CSV {csv_name!r}"
        path = by_relpath.get(record_id.replace("\\", "/"))
        if path is None:
            candidates = by_stem.get(record_id, [])
            if len(candidates) > 1:
                skipped.append(SkippedRecord(record_id, f"record {record_id!r}: field {id_column!r} matches {len(candidates)} records; expected a unique relative path"))
                continue
            path = candidates[0] if candidates else None
        if path is None:
            skipped.append(SkippedRecord(record_id, f"record {record_id!r}: field {id_column!r} has no WFDB header {record_id}.hea under {root}"))
            continue
        if path in first_row:
            earlier, earlier_id = first_row[path]
            spelled = "" if earlier_id == record_id else f" (as {earlier_id!r} and {record_id!r})"
            raise ValueError(
                f"labels CSV {csv_name!r}: field {id_column!r} lists record {record_id!r} twice, in data rows "
                f"{earlier} and {number}{spelled}; expected each record once (remove or merge the duplicate row)"
            )
        first_row[path] = (number, record_id)
        try:
            if use_label_column:
                labels = sorted(class_index[n.strip()] for n in str(row[label_column]).split(separator) if n.strip())
            else:
                labels = [i for i, c in enumerate(class_names) if _truthy(row[c], record_id, c)]
            task = {"record_id": record_id, "path": path, "patient_id": str(row.get("patient_id", "")).strip() or record_id, "labels": labels}
            if "split" in table.columns:
                value = str(row["split"]).strip().lower()
                if value not in _SPLIT_ALIASES:
                    raise ValueError(f"record {record_id!r}: field 'split' is {row['split']!r}; expected train, validation or test")
                task["split"] = _SPLIT_ALIASES[value]
            if "fold" in extra_columns:
                task["fold"] = _parse_fold(row["fold"], record_id, where)
            if "report" in extra_columns:
                task["report"] = str(row["report"])
            if "age" in extra_columns:
                task["age"] = _parse_age(row["age"], record_id, where)
            if "sex" in extra_columns:
                task["sex"] = str(row["sex"]).strip() or None
        except ValueError as error:
            skipped.append(SkippedRecord(record_id, str(error) if str(error).startswith("record ") else f"record {record_id!r}: {error}"))
            continue
        used_paths.add(path)
        tasks.append(task)
    skipped_ids = {item.record_id for item in skipped}
    for relpath, path in by_relpath.items():
        if path not in used_paths and relpath not in skipped_ids and relpath.rsplit("/", 1)[-1] not in skipped_ids:
            skipped.append(SkippedRecord(relpath, f"record {relpath!r}: field {id_column!r} has no row for it in {os.fspath(labels_csv)}"))
    if "split" not in table.columns:
        split_of = assign_random_split([t["patient_id"] for t in tasks], split_fractions, split_seed)
        for task in tasks:
            task["split"] = split_of[task["patient_id"]]

    extra_features = {"split": datasets.Value("string")}
    types = {"fold": datasets.Value("int32"), "report": datasets.Value("string"), "age": datasets.Value("float32"), "sex": datasets.Value("string")}
    extra_features.update({c: types[c] for c in extra_columns})
    features = record_features(signal_feature(None, None), {label_set: class_names}, extra_features, masked_leads=True)
    checks = checks or SignalChecks()
    return build_dataset(
        tasks,
        partial(_load_folder_row, checks=checks, label_set=label_set, extra_columns=tuple(extra_columns)),
        features,
        out_dir,
        source="folder",
        description=f"WFDB records from {os.path.abspath(root)} with labels from {os.fspath(labels_csv)}, prepared by ecg-hub.",
        skipped=skipped,
        options={"root": os.path.abspath(root), "labels_csv": os.path.abspath(os.fspath(labels_csv)), "id_column": id_column,
                 "label_column": label_column if use_label_column else None, "label_columns": None if use_label_column else class_names,
                 "label_set": label_set, "split_fractions": list(split_fractions), "split_seed": split_seed,
                 "checks": checks.to_dict()},
        num_proc=num_proc,
        overwrite=overwrite,
        progress=progress,
    )
