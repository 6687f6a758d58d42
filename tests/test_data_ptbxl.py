"""PTB-XL: `ecg-hub data prepare ptbxl` on the real 1,787-record subset, label sets, folds, MERL splits."""

from __future__ import annotations

import ast
import json
import os
import shutil

import datasets
import numpy as np
import pandas as pd
import pytest
import wfdb

from ecg_hub.cli import main as cli_main
from ecg_hub.data import label_names, load_summary, multi_hot, prepare_ptbxl, split_dataset


@pytest.fixture(scope="module")
def ptbxl_root(shared_data):
    return shared_data / "ptbxl"


@pytest.fixture(scope="module")
def ptbxl_dir(ptbxl_root, tmp_path_factory):
    """The full subset prepared once through the command line, as a user would."""
    out = tmp_path_factory.mktemp("ptbxl") / "ptbxl100"
    code = cli_main(["data", "prepare", "ptbxl", "--root", str(ptbxl_root), "--out", str(out), "--no-progress"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def ptbxl(ptbxl_dir):
    return datasets.load_from_disk(str(ptbxl_dir))


@pytest.fixture(scope="module")
def rows(ptbxl):
    return {row["record_id"]: row for row in ptbxl.remove_columns(["signal"])}


_NAME_CACHE: dict[tuple[int, str], list[str]] = {}


def _names(ds, column, row):
    key = (id(ds), column)
    if key not in _NAME_CACHE:  # Dataset.features deep-copies on every access
        _NAME_CACHE[key] = label_names(ds, column)
    return [_NAME_CACHE[key][i] for i in row[column]]


def test_all_records_with_labels_reports_and_folds(ptbxl, ptbxl_dir):
    assert len(ptbxl) == 1787
    for column in ("signal", "sampling_rate", "leads", "record_id", "patient_id", "report", "fold", "split", "age", "sex"):
        assert column in ptbxl.column_names
    assert label_names(ptbxl, "superclass") == ["CD", "HYP", "MI", "NORM", "STTC"]
    sizes = {name: len(label_names(ptbxl, name)) for name in ("superclass", "subclass", "form", "rhythm", "all", "diagnostic")}
    assert sizes == {"superclass": 5, "subclass": 23, "form": 19, "rhythm": 12, "all": 71, "diagnostic": 44}
    assert isinstance(ptbxl.features["superclass"].feature, datasets.ClassLabel)
    folds = pd.Series(ptbxl["fold"]).value_counts().sort_index().to_dict()
    assert folds == {1: 188, 2: 157, 3: 159, 4: 176, 5: 186, 6: 143, 7: 179, 8: 158, 9: 215, 10: 226}
    splits = split_dataset(ptbxl)
    assert list(splits) == ["train", "validation", "test"]
    assert {k: len(v) for k, v in splits.items()} == {"train": 1346, "validation": 215, "test": 226}
    assert set(splits["test"]["fold"]) == {10} and set(splits["validation"]["fold"]) == {9}
    reports = ptbxl["report"]
    assert all(isinstance(r, str) for r in reports)
    assert sum(bool(r) for r in reports) == 1786  # ecg_id 443's report is blank in the metadata
    superclass = multi_hot(ptbxl, "superclass")
    assert superclass.shape == (1787, 5) and superclass.dtype == np.float32
    assert dict(zip(label_names(ptbxl, "superclass"), superclass.sum(0).astype(int).tolist())) == {
        "CD": 363, "HYP": 194, "MI": 321, "NORM": 953, "STTC": 411}
    summary = load_summary(ptbxl_dir)
    assert summary.num_records == 1787 and summary.num_skipped == 0
    assert summary.label_counts["superclass"]["NORM"] == 953


def test_known_records(ptbxl, rows):
    first = rows["1"]
    assert _names(ptbxl, "superclass", first) == ["NORM"]
    assert _names(ptbxl, "form", first) == ["LVOLT"]  # likelihood 0 counts, as in the benchmark code
    assert _names(ptbxl, "rhythm", first) == ["SR"]
    assert _names(ptbxl, "all", first) == ["LVOLT", "NORM", "SR"]
    assert first["report"] == "sinusrhythmus periphere niederspannung"
    assert (first["fold"], first["split"], first["patient_id"], first["sex"]) == (3, "train", "15709", "female")
    assert _names(ptbxl, "rhythm", rows["2"]) == ["SBRAD"]
    record_39 = rows["39"]
    assert _names(ptbxl, "superclass", record_39) == ["MI", "STTC"]
    assert _names(ptbxl, "subclass", record_39) == ["IMI", "NST_", "STTC"]
    assert (record_39["fold"], record_39["split"]) == (9, "validation")
    assert rows["9"]["split"] == "test"


def test_signals_match_wfdb_and_numpy_format(ptbxl, ptbxl_root):
    as_numpy = ptbxl.with_format("numpy")
    index = ptbxl["record_id"].index("39")
    signal = as_numpy[index]["signal"]
    assert signal.dtype == np.float32 and signal.shape == (12, 1000)
    raw = wfdb.rdrecord(str(ptbxl_root / "records100" / "00000" / "00039_lr"))
    np.testing.assert_array_equal(signal, raw.p_signal.T.astype(np.float32))
    batch = as_numpy[:8]["signal"]
    assert batch.shape == (8, 12, 1000)
    assert ptbxl[index]["leads"] == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    assert ptbxl[index]["sampling_rate"] == 100


def test_labels_agree_with_merl_split_files(ptbxl_root, ptbxl, rows):
    # MERL writes codes without PTB-XL's padding underscores (ISC_ -> ISC, _AVB -> AVB).
    for task, column in (("super_class", "superclass"), ("sub_class", "subclass"), ("form", "form"), ("rhythm", "rhythm")):
        shared = mismatched = 0
        for split in ("train", "val", "test"):
            table = pd.read_csv(ptbxl_root / "merl_splits" / task / f"ptbxl_{task}_{split}.csv")
            for ecg_id, labels in zip(table["ecg_id"], table[task]):
                row = rows.get(str(ecg_id))
                if row is None:
                    continue
                shared += 1
                ours = sorted(name.strip("_") for name in _names(ptbxl, column, row))
                mismatched += ours != sorted(name.strip("_") for name in ast.literal_eval(labels))
        assert shared > 500, task
        assert mismatched <= 1, (task, mismatched)


def test_merl_split_option(ptbxl_root, tmp_path):
    result = prepare_ptbxl(ptbxl_root, tmp_path / "merl", split="merl", merl_task="super_class", limit=300, progress=False)
    ds = result.dataset
    assert label_names(ds, "merl_super_class") == ["HYP", "NORM", "MI", "CD", "STTC"]  # MERL's column order
    table = pd.concat([
        pd.read_csv(ptbxl_root / "merl_splits" / "super_class" / f"ptbxl_super_class_{s}.csv").assign(split=n)
        for s, n in (("train", "train"), ("val", "validation"), ("test", "test"))
    ]).set_index("ecg_id")
    first_ids = pd.read_csv(ptbxl_root / "ptbxl_database.csv")["ecg_id"].head(300)
    assert len(ds) == int(first_ids.isin(table.index).sum())
    assert result.summary.num_skipped == 300 - len(ds)
    assert all("not in the MERL super_class split" in s.reason for s in result.summary.skipped)
    for row in ds.remove_columns("signal"):
        assert row["split"] == table.loc[int(row["record_id"]), "split"]
        assert sorted(_names(ds, "merl_super_class", row)) == sorted(ast.literal_eval(table.loc[int(row["record_id"]), "super_class"]))


def test_500hz_records(ptbxl_root, tmp_path):
    result = prepare_ptbxl(ptbxl_root, tmp_path / "hr", sampling_rate=500, limit=12, progress=False)
    ds = result.dataset.with_format("numpy")
    assert len(ds) == 12 and ds[0]["signal"].shape == (12, 5000) and int(ds[0]["sampling_rate"]) == 500


def test_missing_and_bad_records_are_skipped_with_reasons(ptbxl_root, tmp_path, capsys):
    """A partial download: two listed records are absent and one .dat is truncated. Not fatal."""
    root = tmp_path / "partial"
    (root / "records100" / "00000").mkdir(parents=True)
    shutil.copy(ptbxl_root / "scp_statements.csv", root)
    database = pd.read_csv(ptbxl_root / "ptbxl_database.csv").head(12)
    database.to_csv(root / "ptbxl_database.csv", index=False)
    for name in database["filename_lr"][:10]:  # the last two are "not downloaded"
        for ext in (".hea", ".dat"):
            shutil.copy(ptbxl_root / f"{name}{ext}", root / f"{name}{ext}")
    truncated = root / f"{database['filename_lr'][4]}.dat"
    os.chmod(truncated, 0o644)
    with open(truncated, "r+b") as handle:
        handle.truncate(5000)
    out = tmp_path / "out"
    code = cli_main(["data", "prepare", "ptbxl", "--root", str(root), "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "9 records written" in printed and "3 skipped" in printed
    assert datasets.load_from_disk(str(out)).num_rows == 9
    summary = json.loads((out / "ecg_hub_summary.json").read_text())
    reasons = {item["record_id"]: item["reason"] for item in summary["skipped"]}
    assert set(reasons) == {str(database["ecg_id"][4]), str(database["ecg_id"][10]), str(database["ecg_id"][11])}
    assert "truncated" in reasons[str(database["ecg_id"][4])]
    assert "not found on disk" in reasons[str(database["ecg_id"][10])]
    assert any("not on disk" in note for note in summary["notes"])
    # Nothing half-written beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "partial"]


def test_existing_output_needs_overwrite(ptbxl_root, tmp_path):
    out = tmp_path / "once"
    prepare_ptbxl(ptbxl_root, out, limit=3, progress=False)
    with pytest.raises(FileExistsError):
        prepare_ptbxl(ptbxl_root, out, limit=3, progress=False)
    result = prepare_ptbxl(ptbxl_root, out, limit=5, progress=False, overwrite=True)
    assert len(result.dataset) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["once"]


def test_missing_files_of_a_subset_are_counted_once_not_listed(ptbxl_root, tmp_path, capsys):
    """The shared subset at 500 Hz: 1,299 of the 1,787 listed records have no records500 file. The
    console gets one count line and the first five files; the summary JSON keeps every one."""
    database = pd.read_csv(ptbxl_root / "ptbxl_database.csv")
    absent = [int(i) for i, name in zip(database["ecg_id"], database["filename_hr"])
              if not (ptbxl_root / f"{name}.hea").exists()]
    assert len(absent) == 1299  # the records500 folder holds ecg_id <= 500 only
    out = tmp_path / "hr"
    assert cli_main(["data", "prepare", "ptbxl", "--root", str(ptbxl_root), "--out", str(out),
                     "--sampling-rate", "500", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert len(lines) < 25, printed[:3000]
    assert "488 records written" in lines[0] and "1299 skipped" in lines[0]
    assert "  1299 x field 'filename_hr' file <file> not found on disk" in lines
    # Each named file appears once: five of them, on their own record line.
    named = [line for line in lines if "_hr.hea" in line]
    assert named == [
        f"  - {i}: field 'filename_hr' file {ptbxl_root}/records500/00000/{i:05d}_hr.hea not found on disk"
        for i in absent[:5]
    ]
    summary_path = out / "ecg_hub_summary.json"
    assert f'  ... and 1294 more; all 1299 are listed under "skipped" in {summary_path}' in lines
    summary = json.loads(summary_path.read_text())
    assert summary["num_skipped"] == 1299
    assert [item["record_id"] for item in summary["skipped"]] == [str(i) for i in absent]
    assert all(item["reason"].endswith("_hr.hea not found on disk") for item in summary["skipped"])
    # `data show` counts the same reasons: one line, not one per file.
    assert cli_main(["data", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "1299 x field 'filename_hr' file <file> not found on disk" in shown and "_hr.hea" not in shown


def test_summary_groups_skip_reasons_whatever_the_path(tmp_path):
    """Reasons differing only in a file path (unquoted, quoted, Windows, a bare .mat name) are one
    kind; other reasons keep their own count. No shared data needed."""
    from ecg_hub.data.builder import PrepareSummary, SkippedRecord

    def skip(record_id: str, problem: str) -> SkippedRecord:
        return SkippedRecord(record_id, f"record '{record_id}': field {problem}")

    skipped = [skip(str(i), f"'filename_lr' file /data/records100/{i:05d}_lr.hea not found on disk")
               for i in range(1, 41)]
    skipped += [
        skip("q1", "'header' file '/d/q1.hea' does not exist; expected a WFDB .hea header"),
        skip("q2", "'header' file 'C:\\d\\q2.hea' does not exist; expected a WFDB .hea header"),
        skip("m1", "'signal file' m1.mat does not exist next to the header; expected /d/m1.mat"),
        skip("t1", "'signal' has 400 samples; expected 5000 as the header says (truncated file?)"),
    ]
    out_dir = tmp_path / "ds"
    summary = PrepareSummary(source="test", out_dir=str(out_dir), skipped=skipped, num_skipped=len(skipped))
    assert summary.skip_reasons() == {
        "field 'filename_lr' file <file> not found on disk": 40,
        "field 'header' file <file> does not exist": 2,
        "field 'signal file' <file> does not exist next to the header": 1,
        "field 'signal' has 400 samples": 1,
    }
    lines = summary.format().splitlines()
    assert lines[lines.index("skipped 44 records:") + 5:] == [
        *(f"  - {i}: field 'filename_lr' file /data/records100/{i:05d}_lr.hea not found on disk"
          for i in range(1, 6)),
        f'  ... and 39 more; all 44 are listed under "skipped" in {out_dir / "ecg_hub_summary.json"}',
    ]
