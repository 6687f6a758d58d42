"""PTB-XL (Wagner et al., 2020) as a Hugging Face dataset with the standard benchmark label sets.

Label sets follow the PTB-XL benchmarking code (Strodthoff et al., 2020, "Deep learning for ECG
analysis: benchmarks and insights from PTB-XL"): every SCP statement of a record's ``scp_codes``
counts, then

* ``all`` (71): every statement;
* ``diagnostic`` (44): statements with ``diagnostic == 1`` in ``scp_statements.csv``;
* ``subclass`` (23): their ``diagnostic_subclass``;
* ``superclass`` (5): their ``diagnostic_class`` (NORM, MI, STTC, CD, HYP);
* ``form`` (19) and ``rhythm`` (12): statements flagged ``form`` / ``rhythm``.

Class lists come from ``scp_statements.csv`` (sorted, as the benchmark's ``MultiLabelBinarizer``
orders them), not from the records at hand, so a dataset prepared from a subset has the same classes
as one prepared from the full release; classes with no record are listed in the summary.

Likelihoods: ``scp_codes`` maps each statement to a likelihood (0-100). The benchmark code and
MERL/MELP count every listed statement, including likelihood 0, and so does ecg-hub by default
(``min_likelihood=0``). A likelihood of 0 is what every form and rhythm statement carries (their
likelihood is not recorded), so only diagnostic statements are filtered when ``min_likelihood > 0``.
With the default, labels agree with MERL's split files on all but one record of the shared subset.

Splits: ``fold`` is ``strat_fold`` (1-10); ``split`` is train for folds 1-8, validation for 9, test
for 10 (the benchmark's recommendation), or, with ``split="merl"``, the MERL/MELP split files of one
task, which also adds that task's label column ``merl_<task>`` with MERL's class order.
"""

from __future__ import annotations

import ast
import json
import os
from functools import partial
from typing import Any

import numpy as np

from .builder import (
    PrepareResult,
    SkippedRecord,
    build_dataset,
    record_columns,
    record_features,
    signal_feature,
)
from .records import SignalChecks, read_wfdb_record

#: The label sets every PTB-XL dataset gets, in column order.
PTBXL_LABEL_SETS: tuple[str, ...] = ("superclass", "subclass", "diagnostic", "form", "rhythm", "all")

#: MERL/MELP split tasks and their folders under ``merl_splits/``.
MERL_TASKS: tuple[str, ...] = ("super_class", "sub_class", "form", "rhythm")

PTBXL_CITATION = (
    "Wagner, P., Strodthoff, N., Bousseljot, R.-D., Kreiseler, D., Lunze, F.I., Samek, W., Schaeffter, T. "
    "(2020). PTB-XL, a large publicly available electrocardiography dataset. Scientific Data 7, 154. "
    "Strodthoff, N., Wagner, P., Schaeffter, T., Samek, W. (2021). Deep learning for ECG analysis: "
    "benchmarks and insights from PTB-XL. IEEE JBHI 25(5)."
)

_FOLD_SPLIT = {**{fold: "train" for fold in range(1, 9)}, 9: "validation", 10: "test"}


def _read_statements(root: str):
    import pandas as pd

    path = os.path.join(root, "scp_statements.csv")
    if not os.path.exists(path):
        raise ValueError(f"PTB-XL root {root!r}: field 'scp_statements.csv' not found; expected the PTB-XL release folder")
    return pd.read_csv(path, index_col=0)


def ptbxl_class_names(statements) -> dict[str, list[str]]:
    """Class names of every label set, from the ``scp_statements.csv`` table (a pandas DataFrame
    indexed by statement code). Sorted alphabetically, as in the benchmark code."""
    diagnostic = statements[statements["diagnostic"] == 1]
    return {
        "superclass": sorted(diagnostic["diagnostic_class"].dropna().unique().tolist()),
        "subclass": sorted(diagnostic["diagnostic_subclass"].dropna().unique().tolist()),
        "diagnostic": sorted(diagnostic.index.tolist()),
        "form": sorted(statements[statements["form"] == 1].index.tolist()),
        "rhythm": sorted(statements[statements["rhythm"] == 1].index.tolist()),
        "all": sorted(statements.index.tolist()),
    }


def aggregate_scp_codes(scp_codes: dict[str, float], statements, min_likelihood: float = 0.0) -> dict[str, list[str]]:
    """Labels of one record in every label set (class names, sorted), from its ``scp_codes``.

    Args:
        scp_codes: ``{statement: likelihood}`` as in ``ptbxl_database.csv``.
        statements: the ``scp_statements.csv`` table indexed by statement code.
        min_likelihood: diagnostic statements below it are dropped (0 keeps all, the benchmark rule).
    """
    kept = []
    for code, likelihood in scp_codes.items():
        if code not in statements.index:
            continue
        is_diagnostic = statements.at[code, "diagnostic"] == 1
        if is_diagnostic and min_likelihood > 0 and float(likelihood) < min_likelihood:
            continue
        kept.append(code)
    labels: dict[str, set[str]] = {name: set() for name in PTBXL_LABEL_SETS}
    for code in kept:
        row = statements.loc[code]
        labels["all"].add(code)
        if row["diagnostic"] == 1:
            labels["diagnostic"].add(code)
            if isinstance(row["diagnostic_class"], str):
                labels["superclass"].add(row["diagnostic_class"])
            if isinstance(row["diagnostic_subclass"], str):
                labels["subclass"].add(row["diagnostic_subclass"])
        if row["form"] == 1:
            labels["form"].add(code)
        if row["rhythm"] == 1:
            labels["rhythm"].add(code)
    return {name: sorted(values) for name, values in labels.items()}


def read_merl_split(root: str, task: str) -> tuple[dict[int, str], dict[int, list[str]], list[str]]:
    """MERL's split files for one task: ``({ecg_id: split}, {ecg_id: [class, ...]}, class_names)``.

    Looks in ``<root>/merl_splits/<task>/ptbxl_<task>_{train,val,test}.csv``; ``val`` becomes
    ``validation``. Class names are the one-hot columns in file order.
    """
    import pandas as pd

    if task not in MERL_TASKS:
        raise ValueError(f"merl_task {task!r}: expected one of {', '.join(MERL_TASKS)}")
    split_of: dict[int, str] = {}
    labels_of: dict[int, list[str]] = {}
    class_names: list[str] | None = None
    for file_split, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        path = os.path.join(root, "merl_splits", task, f"ptbxl_{task}_{file_split}.csv")
        if not os.path.exists(path):
            raise ValueError(f"MERL split file {path} not found; expected merl_splits/{task}/ptbxl_{task}_{file_split}.csv under the PTB-XL root")
        table = pd.read_csv(path)
        names = [c for c in table.columns if c not in ("ecg_id", "patient_id", "strat_fold", "filename_lr", "filename_hr", task)]
        if class_names is None:
            class_names = names
        elif names != class_names:
            raise ValueError(f"{path}: class columns {names} differ from the train file's {class_names}")
        onehot = table[names].to_numpy()
        for ecg_id, row in zip(table["ecg_id"].astype(int), onehot):
            split_of[int(ecg_id)] = split
            labels_of[int(ecg_id)] = [names[i] for i in np.flatnonzero(row)]
    return split_of, labels_of, class_names or []


def _load_ptbxl_row(task: dict[str, Any], checks: SignalChecks, indices: dict[str, dict[str, int]]) -> dict[str, Any]:
    record = read_wfdb_record(task["path"], record_id=task["record_id"], checks=checks)
    row = {
        **record_columns(record),
        "record_id": task["record_id"],
        "patient_id": task["patient_id"],
    }
    for name, classes in task["labels"].items():
        row[name] = [indices[name][c] for c in classes]
    for key in ("report", "scp_codes", "fold", "split", "age", "sex"):
        row[key] = task[key]
    return row


def prepare_ptbxl(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    sampling_rate: int = 100,
    split: str = "folds",
    merl_task: str | None = None,
    min_likelihood: float = 0.0,
    limit: int | None = None,
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    checks: SignalChecks | None = None,
) -> PrepareResult:
    """Write PTB-XL as a dataset at ``out_dir``.

    Args:
        root: the PTB-XL folder (``ptbxl_database.csv``, ``scp_statements.csv``, ``records100/``,
            ``records500/``, optionally ``merl_splits/``).
        sampling_rate: 100 (``records100``, 1000 samples) or 500 (``records500``, 5000 samples), Hz.
        split: ``"folds"`` (folds 1-8 train, 9 validation, 10 test) or ``"merl"`` (MERL's files).
        merl_task: with ``split="merl"``: ``super_class``, ``sub_class``, ``form`` or ``rhythm``.
            Records outside that task's files are skipped (MERL drops records without a label of the task).
        min_likelihood: drop diagnostic statements with a lower likelihood (0 keeps all; module doc).
        limit: only the first ``limit`` records of the database (quick tries).
        num_proc: worker processes reading WFDB files.

    Columns: ``signal`` (12, 10*rate) float32 mV, ``sampling_rate``, ``leads``, ``record_id`` (ecg_id),
    ``patient_id``, the label sets of :data:`PTBXL_LABEL_SETS`, ``report`` (mostly German free text),
    ``scp_codes`` (JSON of statement -> likelihood), ``fold``, ``split``, ``age`` (years, ages >= 90 as
    in the metadata), ``sex`` (``male``/``female``), ``masked_leads`` / ``masked_lead_reasons`` (flat,
    clipped or absent leads, zeroed: ``ecg_hub.data.records``), plus ``merl_<task>`` with ``split="merl"``.

    Records listed in the database but missing on disk, or failing the reader's record checks, are
    skipped and reported in the summary, never fatal.
    """
    import datasets
    import pandas as pd

    root = os.fspath(root)
    if sampling_rate not in (100, 500):
        raise ValueError(f"sampling_rate {sampling_rate}: expected 100 (records100) or 500 (records500)")
    if split not in ("folds", "merl"):
        raise ValueError(f"split {split!r}: expected 'folds' or 'merl'")
    if split == "merl" and merl_task is None:
        raise ValueError("split='merl' needs merl_task: one of " + ", ".join(MERL_TASKS))
    database_path = os.path.join(root, "ptbxl_database.csv")
    if not os.path.exists(database_path):
        raise ValueError(f"PTB-XL root {root!r}: field 'ptbxl_database.csv' not found; expected the PTB-XL release folder")
    database = pd.read_csv(database_path)
    if limit is not None:
        database = database.head(limit)
    statements = _read_statements(root)
    class_names = ptbxl_class_names(statements)
    merl_split = merl_labels = None
    if split == "merl":
        merl_split, merl_labels, merl_names = read_merl_split(root, merl_task)
        class_names[f"merl_{merl_task}"] = merl_names
    filename_column = "filename_lr" if sampling_rate == 100 else "filename_hr"

    tasks: list[dict[str, Any]] = []
    skipped: list[SkippedRecord] = []
    missing = 0
    for row in database.itertuples(index=False):
        ecg_id = int(row.ecg_id)
        record_id = str(ecg_id)
        path = os.path.join(root, str(getattr(row, filename_column)))
        if not os.path.exists(path + ".hea"):
            missing += 1
            skipped.append(SkippedRecord(record_id, f"record {record_id!r}: field '{filename_column}' file {path}.hea not found on disk"))
            continue
        scp_codes = ast.literal_eval(row.scp_codes) if isinstance(row.scp_codes, str) else {}
        labels = aggregate_scp_codes(scp_codes, statements, min_likelihood)
        fold = int(row.strat_fold)
        if merl_split is not None:
            if ecg_id not in merl_split:
                skipped.append(SkippedRecord(record_id, f"record {record_id!r}: field 'ecg_id' is not in the MERL {merl_task} split files (MERL drops records without a {merl_task} label)"))
                continue
            record_split = merl_split[ecg_id]
            labels[f"merl_{merl_task}"] = merl_labels[ecg_id]
        else:
            record_split = _FOLD_SPLIT[fold]
        age = None if pd.isna(row.age) else float(row.age)
        sex = {0: "male", 1: "female"}.get(None if pd.isna(row.sex) else int(row.sex))
        tasks.append({
            "record_id": record_id,
            "path": path,
            "patient_id": "" if pd.isna(row.patient_id) else str(int(row.patient_id)),
            "labels": labels,
            "report": "" if not isinstance(row.report, str) else row.report.strip(),
            "scp_codes": json.dumps(scp_codes),
            "fold": fold,
            "split": record_split,
            "age": age,
            "sex": sex,
        })

    features = record_features(
        signal_feature(12, 10 * sampling_rate),
        class_names,
        {
            "report": datasets.Value("string"),
            "scp_codes": datasets.Value("string"),
            "fold": datasets.Value("int32"),
            "split": datasets.Value("string"),
            "age": datasets.Value("float32"),
            "sex": datasets.Value("string"),
        },
        masked_leads=True,
    )
    checks = checks or SignalChecks(expected_sampling_rate=sampling_rate)
    indices = {name: {c: i for i, c in enumerate(names)} for name, names in class_names.items()}
    notes = []
    if missing:
        notes.append(f"{missing} of {len(database)} records listed in ptbxl_database.csv are not on disk under {root}")
    return build_dataset(
        tasks,
        partial(_load_ptbxl_row, checks=checks, indices=indices),
        features,
        out_dir,
        source=f"ptbxl ({sampling_rate} Hz, split={split}{'/' + merl_task if merl_task else ''})",
        description=(
            f"PTB-XL at {sampling_rate} Hz prepared by ecg-hub: 12-lead 10 s ECGs in mV, benchmark label sets "
            f"{', '.join(class_names)}; split={split}{' ' + merl_task if merl_task else ''}."
        ),
        citation=PTBXL_CITATION,
        license="CC-BY-4.0",
        homepage="https://physionet.org/content/ptb-xl/",
        skipped=skipped,
        options={"root": os.path.abspath(root), "sampling_rate": sampling_rate, "split": split,
                 "merl_task": merl_task, "min_likelihood": min_likelihood, "limit": limit, "checks": checks.to_dict()},
        notes=notes,
        num_proc=num_proc,
        overwrite=overwrite,
        progress=progress,
    )
