"""CODE-15% (Ribeiro et al., 2021) in the per-exam MATLAB packaging as a Hugging Face dataset.

Layout (as packaged by the ECG-FM project, and in ``shared/data/code15_sample``)::

    meta.csv        exam_id, patient_id, age, is_male, save_file, lead_order, sample_rate, labels ...
    labels.csv      idx, 1dAVb, RBBB, LBBB, SB, ST, AF, normal_ecg (optional; else taken from meta.csv)
    records/*.mat   feats (12 x N, mV, 400 Hz), curr_sample_rate

Label column ``dx``: the six CODE abnormalities (1dAVb, RBBB, LBBB, SB, ST, AF; the CODE-test classes
used by MELP), plus a boolean ``normal_ecg`` column. ``split`` is a seeded random 80/10/10 split
by patient (CODE-15 has no official split).

Bad input raises a ``ValueError`` naming the file and the field: an unreadable or empty ``meta.csv``
or ``labels.csv``, an exam listed twice. A row with a bad cell (``exam_id``, ``patient_id``,
``sample_rate``, ``age``, ``lead_order``) or a bad ``.mat`` file (non-numeric or complex ``feats``,
an empty ``curr_sample_rate``: ``ecg_hub.data.records.read_code15_mat``) skips that exam, with a
reason naming the exam, the field, the row and the file.
"""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Sequence
from functools import partial
from typing import Any

from ecg_hub.modeling.leads import STANDARD_LEADS

from .builder import (
    PrepareResult,
    SkippedRecord,
    build_dataset,
    record_columns,
    record_features,
    signal_feature,
)
from .labels import assign_random_split
from .records import SignalChecks, read_code15_mat

#: The CODE abnormality classes, in ``dx`` column order.
CODE15_CLASSES: tuple[str, ...] = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")

CODE15_CITATION = (
    "Ribeiro, A.H., Paixao, G.M.M., Lima, E.M., et al. (2021). CODE-15%: a large scale annotated dataset "
    "of 12-lead ECGs. Zenodo, doi:10.5281/zenodo.4916206."
)


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0", "yes")


def _read_csv(path: str, what: str):
    """A CODE-15 CSV as a table, or a ``ValueError`` naming the CSV."""
    import pandas as pd

    try:
        # index_col=False: a trailing comma on each data line must not shift the columns.
        return pd.read_csv(path, index_col=False)
    except pd.errors.EmptyDataError as error:
        raise ValueError(f"CODE-15 {what} {path!r} is empty ({error}); expected a CSV with a header row") from error
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"CODE-15 {what} {path!r} could not be read ({error}); expected a CSV with a header row") from error


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _identifier(value: Any, field: str, where: str) -> str:
    """An id cell (``438277``, ``438277.0``, ``"p1"``) as text, or a ``ValueError`` naming the field."""
    if isinstance(value, str):
        return value.strip()
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"field {field!r} is {value!r} {where}; expected an integer id")
    return str(int(number))


def _number(value: Any, field: str, where: str, expected: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"field {field!r} is {value!r} {where}; expected {expected}")
    return number


def _parse_meta_row(row: dict[str, Any], number: int, meta_path: str, records_dir: str) -> dict[str, Any]:
    """One ``meta.csv`` row as a task; ``ValueError`` (without the record prefix) on a bad cell."""
    where = f"in data row {number} of {meta_path}"
    if not _is_missing(row.get("exam_id")):
        exam_id = _identifier(row["exam_id"], "exam_id", where)
    elif not _is_missing(row.get("idx")):
        exam_id = _identifier(row["idx"], "idx", where)
    else:
        raise ValueError(f"field 'exam_id' is empty {where}; expected an exam id")
    file_name = row.get("save_file") if isinstance(row.get("save_file"), str) else f"code_15_{exam_id}.mat"
    leads = STANDARD_LEADS
    if isinstance(row.get("lead_order"), str):
        try:
            leads = tuple(ast.literal_eval(row["lead_order"]))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            leads = None
        if leads is None or not leads or not all(isinstance(lead, str) for lead in leads):
            raise ValueError(f"field 'lead_order' {row['lead_order']!r} {where} is not a list of lead names")
    sample_rate = row.get("sample_rate")
    return {
        "record_id": exam_id,
        "path": os.path.join(records_dir, file_name),
        "patient_id": exam_id if _is_missing(row.get("patient_id")) else _identifier(row["patient_id"], "patient_id", where),
        "leads": leads,
        "sample_rate": None if _is_missing(sample_rate) else int(_number(sample_rate, "sample_rate", where, "a number of Hz (e.g. 400)", 1, 1e6)),
        "dx": [i for i, c in enumerate(CODE15_CLASSES) if _truthy(row[c])],
        "normal_ecg": _truthy(row.get("normal_ecg", False)),
        "age": None if _is_missing(row.get("age")) else _number(row["age"], "age", where, "a finite number of years >= 0", 0, 3.0e38),
        "sex": None if _is_missing(row.get("is_male")) else ("male" if _truthy(row["is_male"]) else "female"),
    }


def _load_code15_row(task: dict[str, Any], checks: SignalChecks) -> dict[str, Any]:
    record = read_code15_mat(task["path"], record_id=task["record_id"], lead_names=task["leads"], checks=checks)
    if task["sample_rate"] is not None and record.sampling_rate != task["sample_rate"]:
        raise ValueError(
            f"record {task['record_id']!r}: field 'curr_sample_rate' is {record.sampling_rate} Hz; "
            f"expected {task['sample_rate']} Hz as meta.csv says"
        )
    return {
        **record_columns(record),
        "record_id": task["record_id"],
        "patient_id": task["patient_id"],
        "dx": task["dx"],
        "normal_ecg": task["normal_ecg"],
        "age": task["age"],
        "sex": task["sex"],
        "split": task["split"],
    }


def prepare_code15(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 42,
    limit: int | None = None,
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    checks: SignalChecks | None = None,
) -> PrepareResult:
    """Write a CODE-15 MATLAB packaging folder (``meta.csv``, ``labels.csv``, ``records/*.mat``) as a dataset.

    Columns: ``signal`` (12, samples) float32 mV (zero padding removed, so lengths vary), ``sampling_rate``
    (400), ``leads``, ``record_id`` (exam_id), ``patient_id``, ``dx`` (:data:`CODE15_CLASSES`),
    ``normal_ecg``, ``age``, ``sex``, ``split``, ``masked_leads`` / ``masked_lead_reasons`` (flat, clipped
    or absent leads, zeroed: ``ecg_hub.data.records``).
    """
    import datasets

    root = os.fspath(root)
    meta_path = os.path.join(root, "meta.csv")
    if not os.path.exists(meta_path):
        raise ValueError(f"CODE-15 root {root!r}: field 'meta.csv' not found; expected meta.csv, labels.csv and records/*.mat")
    meta = _read_csv(meta_path, "meta.csv")
    labels_path = os.path.join(root, "labels.csv")
    if os.path.exists(labels_path) and "idx" in meta.columns:
        labels = _read_csv(labels_path, "labels.csv")
        if "idx" not in labels.columns:
            raise ValueError(f"CODE-15 labels.csv {labels_path!r}: field 'idx' is missing (columns {list(labels.columns)}); expected idx and the class columns")
        repeated = labels["idx"][labels["idx"].duplicated()]
        if len(repeated):
            raise ValueError(f"CODE-15 labels.csv {labels_path!r}: field 'idx' lists {repeated.iloc[0]!r} twice; expected each exam once")
        keep = ["idx", *[c for c in (*CODE15_CLASSES, "normal_ecg") if c in labels.columns]]
        meta = meta.drop(columns=[c for c in keep[1:] if c in meta.columns]).merge(labels[keep], on="idx", how="left")
    missing_classes = [c for c in CODE15_CLASSES if c not in meta.columns]
    if missing_classes:
        raise ValueError(f"CODE-15 root {root!r}: field 'labels' lacks columns {missing_classes}; expected {list(CODE15_CLASSES)}")
    if limit is not None:
        meta = meta.head(limit)
    records_dir = os.path.join(root, "records") if os.path.isdir(os.path.join(root, "records")) else root

    tasks: list[dict[str, Any]] = []
    skipped: list[SkippedRecord] = []
    first_row: dict[str, int] = {}
    for number, row in enumerate(meta.to_dict("records"), start=1):
        try:
            task = _parse_meta_row(row, number, meta_path, records_dir)
        except ValueError as error:
            try:
                exam_id = _identifier(row.get("exam_id"), "exam_id", "")
            except ValueError:
                exam_id = str(row.get("exam_id")).strip() if not _is_missing(row.get("exam_id")) else f"row {number}"
            skipped.append(SkippedRecord(exam_id, f"record {exam_id!r}: {error}"))
            continue
        exam_id, path = task["record_id"], task["path"]
        if exam_id in first_row:
            raise ValueError(
                f"CODE-15 meta.csv {meta_path!r}: field 'exam_id' lists exam {exam_id!r} twice, in data rows "
                f"{first_row[exam_id]} and {number}; expected each exam once"
            )
        first_row[exam_id] = number
        if not os.path.exists(path):
            skipped.append(SkippedRecord(exam_id, f"record {exam_id!r}: field 'save_file' {path} not found on disk"))
            continue
        tasks.append(task)
    split_of = assign_random_split([t["patient_id"] for t in tasks], split_fractions, split_seed)
    for task in tasks:
        task["split"] = split_of[task["patient_id"]]
    features = record_features(
        signal_feature(None, None),
        {"dx": CODE15_CLASSES},
        {
            "normal_ecg": datasets.Value("bool"),
            "age": datasets.Value("float32"),
            "sex": datasets.Value("string"),
            "split": datasets.Value("string"),
        },
        masked_leads=True,
    )
    checks = checks or SignalChecks()
    return build_dataset(
        tasks,
        partial(_load_code15_row, checks=checks),
        features,
        out_dir,
        source="code15",
        description="CODE-15% exams (MATLAB packaging) prepared by ecg-hub: 12-lead ECGs at 400 Hz in mV, "
        "labels 1dAVb, RBBB, LBBB, SB, ST, AF and normal_ecg.",
        citation=CODE15_CITATION,
        license="CC-BY-4.0",
        homepage="https://zenodo.org/records/4916206",
        skipped=skipped,
        options={"root": os.path.abspath(root), "split_fractions": list(split_fractions), "split_seed": split_seed, "limit": limit,
                 "checks": checks.to_dict()},
        notes=["split: seeded random split by patient (CODE-15 has no official split)"],
        num_proc=num_proc,
        overwrite=overwrite,
        progress=progress,
    )
