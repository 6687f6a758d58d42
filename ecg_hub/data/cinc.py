"""PhysioNet/Computing in Cardiology Challenge 2020-21 data as a Hugging Face dataset.

The Challenge distributes CPSC2018 (+ CPSC-Extra), St Petersburg INCART, PTB, PTB-XL, Georgia
(G12EC), Chapman-Shaoxing and Ningbo as WFDB headers (``.hea``) with MATLAB v4 signals (``.mat``),
diagnoses as SNOMED-CT codes in a ``# Dx:`` header comment, and ``# Age:`` / ``# Sex:``. Records come
at 257, 500 or 1000 Hz and of any length; all are read at their native rate and length, so the
``signal`` column is ``List(List(float32))``. Shandong Provincial Hospital (SPH) records are HDF5
files (``ecg`` 12 x N in mV, 500 Hz) described by a ``metadata.csv`` next to them; they are read too.

Label columns:
  * ``dx``: every SNOMED-CT code found in the prepared records (class names are the codes);
  * ``dx_scored``: the 26 classes scored by the 2021 Challenge, with its equivalent codes merged
    (e.g. 713427006|59118001 complete/any RBBB), named by their abbreviation (``AF``, ``IAVB`` ...),
    when ``physionet2021_weights.csv`` / ``scored_diagnoses_2021.csv`` are found or passed.

Code names (``atrial fibrillation`` ...) come from the Challenge mapping tables found in the root
folder (any CSV with ``SNOMEDCTCode`` and ``Dx`` columns, e.g. ``dx_mapping_scored.csv``,
``dx_mapping_unscored.csv``) or passed as ``mapping_files``; they go into the column ``dx_names``
(the names of a record's codes, ``; ``-separated) and the summary.

There is no official split: ``split`` is a seeded random 80/10/10 split by patient (by record where
the source has no patient id), for quick experiments, not a benchmark split.
"""

from __future__ import annotations

import glob
import math
import os
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
from .records import SignalChecks, read_hdf5_record, read_wfdb_record

CINC_CITATION = (
    "Reyna, M.A., Sadr, N., Perez Alday, E.A., et al. (2021). Will Two Do? Varying Dimensions in "
    "Electrocardiography: the PhysioNet/Computing in Cardiology Challenge 2021. Computing in Cardiology 48."
)


def read_snomed_names(paths: Sequence[str | os.PathLike]) -> dict[str, dict[str, str]]:
    """``{code: {"name": ..., "abbreviation": ...}}`` from Challenge mapping CSVs.

    Each CSV needs ``SNOMEDCTCode`` and ``Dx`` (the name) columns; ``Abbreviation`` is optional. Files
    without those columns are ignored. For a code listed twice, the first name and the first
    abbreviation found win.
    """
    import pandas as pd

    names: dict[str, dict[str, str]] = {}
    for path in paths:
        try:
            table = pd.read_csv(path, dtype=str, encoding="utf-8-sig")
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        if "SNOMEDCTCode" not in table.columns or "Dx" not in table.columns:
            continue
        for _, row in table.iterrows():
            code = str(row["SNOMEDCTCode"]).strip()
            if not code or code == "nan":
                continue
            entry = names.setdefault(code, {})
            name = str(row["Dx"]).strip()
            if name and name != "nan":
                entry.setdefault("name", name)
            abbreviation = row.get("Abbreviation")
            if isinstance(abbreviation, str) and abbreviation.strip():
                entry.setdefault("abbreviation", abbreviation.strip())
    return names


def read_scored_classes(weights_file: str | os.PathLike, names: dict[str, dict[str, str]]) -> list[tuple[str, list[str]]]:
    """The Challenge's scored classes from the header of ``physionet2021_weights.csv``:
    ``[(class_name, [equivalent codes]), ...]``; the name is the first code's abbreviation."""
    with open(weights_file, encoding="utf-8-sig") as handle:
        header = handle.readline().strip().split(",")
    classes = []
    for entry in header[1:]:
        codes = [code.strip() for code in entry.split("|") if code.strip()]
        if not codes:
            continue
        info = names.get(codes[0], {})
        classes.append((info.get("abbreviation") or info.get("name") or codes[0], codes))
    return classes


def _split_codes(text: Any) -> list[str]:
    if not isinstance(text, str):
        return []
    return [code.strip() for code in text.replace(";", ",").split(",") if code.strip() and code.strip().lower() != "nan"]


def _header_fields(header_path: str) -> dict[str, str]:
    """The ``# Key: value`` comments of a WFDB header, keys lower-cased (read as text: no signal)."""
    fields: dict[str, str] = {}
    with open(header_path, encoding="latin-1") as handle:
        for line in handle:
            if line.startswith("#"):
                key, sep, value = line[1:].partition(":")
                if sep:
                    fields[key.strip().lower()] = value.strip()
    return fields


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) and value.strip().lower() != "nan" else ""


def _age(value: Any) -> float | None:
    try:
        age = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(age) or age < 0 else age


def _sex(value: Any) -> str | None:
    text = str(value).strip().lower()
    return {"male": "male", "m": "male", "female": "female", "f": "female"}.get(text)


def _load_cinc_row(task: dict[str, Any], checks: SignalChecks, dx_index: dict[str, int], scored: list[tuple[str, list[str]]] | None) -> dict[str, Any]:
    if task["kind"] == "hdf5":
        record = read_hdf5_record(task["path"], task["sampling_rate"], record_id=task["record_id"], checks=checks)
    else:
        record = read_wfdb_record(task["path"], record_id=task["record_id"], checks=checks)
    codes = task["dx"]
    row = {
        **record_columns(record),
        "record_id": task["record_id"],
        "patient_id": task["patient_id"],
        "dx": sorted(dx_index[code] for code in codes),
        "dx_names": task["dx_names"],
        "source": task["source"],
        "age": task["age"],
        "sex": task["sex"],
        "split": task["split"],
    }
    if scored is not None:
        row["dx_scored"] = [i for i, (_, equivalent) in enumerate(scored) if any(code in codes for code in equivalent)]
    return row


def prepare_cinc(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    mapping_files: Sequence[str | os.PathLike] = (),
    weights_file: str | os.PathLike | None = None,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 42,
    limit: int | None = None,
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    checks: SignalChecks | None = None,
) -> PrepareResult:
    """Write every CinC 2020-21 record under ``root`` (searched recursively) as a dataset.

    Args:
        root: a folder of Challenge records (``*.hea`` + ``*.mat``, any depth; SPH ``*.h5`` with a
            ``metadata.csv`` beside them). The mapping CSVs are looked for at its top level.
        mapping_files: extra SNOMED-CT name tables (``Dx``, ``SNOMEDCTCode``[, ``Abbreviation``]).
        weights_file: the Challenge 2021 weights CSV that defines the scored classes (default: a
            ``*weights*.csv`` at the top of ``root``); without one there is no ``dx_scored`` column.
        split_fractions, split_seed: the random patient-level train/validation/test split.
        limit: only the first ``limit`` records (sorted by path).

    Columns: ``signal`` (12, samples) float32 mV, ``sampling_rate``, ``leads``, ``record_id``,
    ``patient_id``, ``dx``, [``dx_scored``], ``dx_names``, ``source`` (sub-folder, e.g. ``G12EC``),
    ``age``, ``sex``, ``split``, ``masked_leads`` / ``masked_lead_reasons`` (flat, clipped or absent
    leads, zeroed: ``ecg_hub.data.records``). Records without ``# Dx:``, unreadable or failing the
    record checks (NaN, wrong units, no usable lead ...; bad leads too with
    ``SignalChecks(drop_records_with_bad_leads=True)``) are skipped and reported.
    """
    import datasets
    import pandas as pd

    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"CinC root {root!r}: field 'root' is not a folder; expected a folder of .hea/.mat records")
    top_csvs = sorted(glob.glob(os.path.join(root, "*.csv")))
    names = read_snomed_names([*map(os.fspath, mapping_files), *top_csvs])
    if weights_file is None:
        candidates = [path for path in top_csvs if "weights" in os.path.basename(path).lower()]
        weights_file = candidates[0] if candidates else None
    scored = read_scored_classes(weights_file, names) if weights_file else None

    tasks: list[dict[str, Any]] = []
    skipped: list[SkippedRecord] = []
    for header in sorted(glob.glob(os.path.join(root, "**", "*.hea"), recursive=True)):
        record_id = os.path.splitext(os.path.basename(header))[0]
        fields = _header_fields(header)
        if "dx" not in fields:
            skipped.append(SkippedRecord(record_id, f"record {record_id!r}: field 'Dx' is missing from {header}; expected a '# Dx: <SNOMED codes>' comment"))
            continue
        source = os.path.relpath(os.path.dirname(header), root)
        tasks.append({
            "kind": "wfdb", "path": header[:-4], "record_id": record_id, "patient_id": record_id,
            "dx": _split_codes(fields["dx"]), "source": source,
            "age": _age(fields.get("age")), "sex": _sex(fields.get("sex")),
        })
    for metadata_path in sorted(glob.glob(os.path.join(root, "**", "metadata.csv"), recursive=True)):
        folder = os.path.dirname(metadata_path)
        h5_files = {os.path.basename(p): p for p in glob.glob(os.path.join(folder, "*.h5"))}
        if not h5_files:
            continue
        table = pd.read_csv(metadata_path, dtype=str)
        required = {"ECG_ID", "SNOMEDCTCode", "fs"}
        if not required.issubset(table.columns):
            skipped.append(SkippedRecord(metadata_path, f"record {metadata_path!r}: field 'columns' lacks {sorted(required - set(table.columns))}; expected SPH metadata.csv columns ECG_ID, SNOMEDCTCode, fs"))
            continue
        described = set()
        source = os.path.relpath(folder, root)
        for row in table.itertuples(index=False):
            file_name = str(row.ECG_ID)
            if not file_name.endswith(".h5"):
                file_name += ".h5"
            record_id = file_name[:-3]
            described.add(file_name)
            if file_name not in h5_files:
                skipped.append(SkippedRecord(record_id, f"record {record_id!r}: field 'ECG_ID' file {os.path.join(folder, file_name)} not found on disk"))
                continue
            tasks.append({
                "kind": "hdf5", "path": h5_files[file_name], "record_id": record_id,
                "patient_id": _text(getattr(row, "Patient_ID", None)) or record_id,
                "dx": _split_codes(row.SNOMEDCTCode), "source": source,
                "sampling_rate": float(row.fs) if str(row.fs) not in ("", "nan") else None,
                "age": _age(getattr(row, "Age", None)), "sex": _sex(getattr(row, "Sex", None)),
            })
        for file_name in sorted(set(h5_files) - described):
            record_id = file_name[:-3]
            skipped.append(SkippedRecord(record_id, f"record {record_id!r}: field 'metadata' has no row for {file_name} in {metadata_path}; expected its sampling rate and SNOMED codes there"))
    tasks.sort(key=lambda task: task["path"])
    if limit is not None:
        tasks = tasks[:limit]
    if not tasks and not skipped:
        raise ValueError(f"CinC root {root!r}: no .hea records or SPH metadata.csv found")

    codes = sorted({code for task in tasks for code in task["dx"]}, key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))
    dx_index = {code: i for i, code in enumerate(codes)}
    split_of = assign_random_split([task["patient_id"] for task in tasks], split_fractions, split_seed)
    for task in tasks:
        task["split"] = split_of[task["patient_id"]]
        task["dx_names"] = "; ".join(names.get(code, {}).get("name", f"SNOMED-CT {code}") for code in task["dx"])

    label_sets: dict[str, list[str]] = {"dx": codes}
    if scored is not None:
        label_sets["dx_scored"] = [name for name, _ in scored]
    features = record_features(
        signal_feature(None, None),
        label_sets,
        {
            "dx_names": datasets.Value("string"),
            "source": datasets.Value("string"),
            "age": datasets.Value("float32"),
            "sex": datasets.Value("string"),
            "split": datasets.Value("string"),
        },
        masked_leads=True,
    )
    checks = checks or SignalChecks()
    unnamed = [code for code in codes if code not in names]
    notes = []
    if unnamed:
        notes.append(f"{len(unnamed)} SNOMED-CT codes have no name in the mapping tables (pass --mapping dx_mapping_unscored.csv): {', '.join(unnamed[:20])}")
    if scored is None:
        notes.append("no Challenge weights CSV found: no dx_scored column")
    notes.append("split: seeded random 80/10/10 by patient (not a benchmark split)" if tuple(split_fractions) == (0.8, 0.1, 0.1)
                 else f"split: seeded random {list(split_fractions)} by patient (not a benchmark split)")
    description = "PhysioNet/CinC Challenge 2020-21 format records prepared by ecg-hub. SNOMED-CT code names: " + "; ".join(
        f"{code}={names[code]['name']}" for code in codes if code in names
    )
    return build_dataset(
        tasks,
        partial(_load_cinc_row, checks=checks, dx_index=dx_index, scored=scored),
        features,
        out_dir,
        source="cinc",
        description=description,
        citation=CINC_CITATION,
        license="CC-BY-4.0",
        homepage="https://physionet.org/content/challenge-2021/",
        skipped=skipped,
        options={"root": os.path.abspath(root), "mapping_files": [os.fspath(p) for p in mapping_files],
                 "weights_file": os.fspath(weights_file) if weights_file else None,
                 "split_fractions": list(split_fractions), "split_seed": split_seed, "limit": limit,
                 "checks": checks.to_dict()},
        notes=notes,
        num_proc=num_proc,
        overwrite=overwrite,
        progress=progress,
    )
