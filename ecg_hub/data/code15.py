"""CODE-15% (Ribeiro et al., 2021) in the per-exam MATLAB packaging as a Hugging Face dataset.

Layout (as packaged by the ECG-FM project, and in ``shared/data/code15_sample``)::

    meta.csv        exam_id, patient_id, age, is_male, save_file, lead_order, sample_rate, labels ...
    labels.csv      idx, 1dAVb, RBBB, LBBB, SB, ST, AF, normal_ecg (optional; else taken from meta.csv)
    records/*.mat   feats (12 x N, mV, 400 Hz), curr_sample_rate

Label column ``dx``: the six CODE abnormalities (1dAVb, RBBB, LBBB, SB, ST, AF; the CODE-test classes
used by MELP), plus a boolean ``normal_ecg`` column. ``split`` is a seeded random 80/10/10 split
by patient (CODE-15 has no official split).
"""

from __future__ import annotations

import ast
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
    import pandas as pd

    root = os.fspath(root)
    meta_path = os.path.join(root, "meta.csv")
    if not os.path.exists(meta_path):
        raise ValueError(f"CODE-15 root {root!r}: field 'meta.csv' not found; expected meta.csv, labels.csv and records/*.mat")
    meta = pd.read_csv(meta_path)
    labels_path = os.path.join(root, "labels.csv")
    if os.path.exists(labels_path) and "idx" in meta.columns:
        labels = pd.read_csv(labels_path)
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
    for row in meta.to_dict("records"):
        exam_id = str(int(row["exam_id"])) if pd.notna(row.get("exam_id")) else str(row.get("idx"))
        file_name = row.get("save_file") if isinstance(row.get("save_file"), str) else f"code_15_{exam_id}.mat"
        path = os.path.join(records_dir, file_name)
        if not os.path.exists(path):
            skipped.append(SkippedRecord(exam_id, f"record {exam_id!r}: field 'save_file' {path} not found on disk"))
            continue
        leads = STANDARD_LEADS
        if isinstance(row.get("lead_order"), str):
            try:
                leads = tuple(ast.literal_eval(row["lead_order"]))
            except (ValueError, SyntaxError):
                skipped.append(SkippedRecord(exam_id, f"record {exam_id!r}: field 'lead_order' {row['lead_order']!r} is not a list of lead names"))
                continue
        sample_rate = row.get("sample_rate")
        tasks.append({
            "record_id": exam_id,
            "path": path,
            "patient_id": str(int(row["patient_id"])) if pd.notna(row.get("patient_id")) else exam_id,
            "leads": leads,
            "sample_rate": int(sample_rate) if pd.notna(sample_rate) else None,
            "dx": [i for i, c in enumerate(CODE15_CLASSES) if _truthy(row[c])],
            "normal_ecg": _truthy(row.get("normal_ecg", False)),
            "age": float(row["age"]) if pd.notna(row.get("age")) else None,
            "sex": None if pd.isna(row.get("is_male")) else ("male" if _truthy(row["is_male"]) else "female"),
        })
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
