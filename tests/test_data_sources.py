"""CinC 2020-21, CODE-15, a user's WFDB folder + labels CSV, and the label/split helpers."""

from __future__ import annotations

import datasets
import h5py
import numpy as np
import pytest
import wfdb
from ecg_hub.modeling.leads import STANDARD_LEADS

from ecg_hub.cli import main as cli_main
from ecg_hub.data import (
    assign_random_split,
    label_names,
    load_summary,
    multi_hot,
    prepare_cinc,
    prepare_code15,
    prepare_folder,
    split_dataset,
    synthesize_ecg,
)


def _by_id(ds):
    return {row["record_id"]: row for row in ds.remove_columns("signal")}


@pytest.fixture(scope="module")
def cinc(shared_data, tmp_path_factory):
    return prepare_cinc(shared_data / "cinc2021_sample", tmp_path_factory.mktemp("cinc") / "ds", progress=False)


def test_cinc_records_labels_and_skips(cinc, shared_data):
    ds, summary = cinc.dataset, cinc.summary
    # The three Chapman/Ningbo records with flat precordial leads are kept, those leads masked.
    assert len(ds) == 79 and summary.num_skipped == 1
    reasons = {item.record_id: item.reason for item in summary.skipped}
    assert set(reasons) == {"SPH00005"}
    assert "no row for SPH00005.h5" in reasons["SPH00005"]
    masked = {item.record_id: item.leads for item in summary.masked}
    assert set(masked) == {"JS45542", "JS45544", "JS45551"} and masked["JS45551"] == ["V4", "V5", "V6"]
    assert summary.masked_record_counts == {"flat": 3}
    scored = label_names(ds, "dx_scored")
    assert len(scored) == 26 and {"AF", "CRBBB", "IAVB", "NSR", "PVC", "SB", "STach"} <= set(scored)
    rows = _by_id(ds)
    names = lambda row, col: sorted(label_names(ds, col)[i] for i in row[col])
    assert names(rows["A0001"], "dx") == ["59118001"]
    assert names(rows["A0001"], "dx_scored") == ["CRBBB"]  # 59118001 (RBBB) is scored as CRBBB
    assert names(rows["JS00001"], "dx_scored") == ["AF", "CRBBB", "TAb"]
    assert rows["JS00001"]["dx_names"] == "atrial fibrillation; right bundle branch block; t wave abnormal"
    assert (rows["A0001"]["age"], rows["A0001"]["sex"], rows["A0001"]["source"]) == (74.0, "male", "CPSC_CPSC-Extra")
    assert names(rows["SPH00001"], "dx_scored") == ["SA", "SB"] and rows["SPH00001"]["patient_id"] == "S00001"
    assert rows["S0001"]["sampling_rate"] == 1000
    as_numpy = ds.with_format("numpy")
    index = ds["record_id"].index("S0001")
    assert as_numpy[index]["signal"].shape == (12, 38400)  # 1000 Hz records keep their length
    sph = as_numpy[ds["record_id"].index("SPH00001")]["signal"]
    with h5py.File(shared_data / "cinc2021_sample" / "SPH" / "SPH00001.h5") as handle:
        np.testing.assert_array_equal(sph, handle["ecg"][()].astype(np.float32))
    assert {row["split"] for row in rows.values()} == {"train", "validation", "test"}


def test_cinc_signal_matches_wfdb(cinc, shared_data):
    ds = cinc.dataset.with_format("numpy")
    signal = ds[cinc.dataset["record_id"].index("E00001")]["signal"]
    raw = wfdb.rdrecord(str(shared_data / "cinc2021_sample" / "G12EC" / "E00001"))
    np.testing.assert_array_equal(signal, raw.p_signal.T.astype(np.float32))


def test_code15_sample(shared_data, tmp_path):
    result = prepare_code15(shared_data / "code15_sample", tmp_path / "code15", progress=False)
    ds = result.dataset
    assert len(ds) == 10 and result.summary.num_skipped == 0
    assert label_names(ds, "dx") == ["1dAVb", "RBBB", "LBBB", "SB", "ST", "AF"]
    rows = _by_id(ds)
    assert [label_names(ds, "dx")[i] for i in rows["438277"]["dx"]] == ["1dAVb"]
    assert [label_names(ds, "dx")[i] for i in rows["358121"]["dx"]] == ["RBBB"]
    assert rows["438277"]["sampling_rate"] == 400 and rows["438277"]["age"] == 46.0 and rows["438277"]["sex"] == "male"
    lengths = {len(row["signal"][0]) for row in ds}
    assert lengths == {2934, 4096}


# ---------------------------------------------------------------------------------- user folder


def _write(directory, name, signal, fs=500):
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(signal), sig_name=list(STANDARD_LEADS), p_signal=np.asarray(signal, np.float64).T,
                fmt=["16"] * len(signal), write_dir=str(directory))


@pytest.fixture()
def user_folder(tmp_path):
    root = tmp_path / "my_ecgs"
    (root / "ward_b").mkdir(parents=True)
    for index, rhythm in enumerate(["SR", "AF", "SB", "ST"]):
        _write(root if index < 2 else root / "ward_b", f"rec{index}", synthesize_ecg(rhythm, seed=index).signal)
    flat = synthesize_ecg("SR", seed=9).signal.copy()
    flat[0] = 0.0
    flat[1] = 0.0
    _write(root, "broken", flat)  # leads I and II disconnected
    _write(root, "unlisted", synthesize_ecg("SR", seed=10).signal)
    return root


def test_folder_with_labels_column(user_folder, tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "record_id,labels,patient_id,report\n"
        "rec0,NORM,p1,normal ecg\n"
        "rec1,AF;RBBB,p1,afib\n"
        "ward_b/rec2,SB,p2,\n"
        "rec3,,p3,no finding\n"
        "broken,NORM,p4,\n"
        "missing,AF,p5,\n"
    )
    out = tmp_path / "ds"
    assert cli_main(["data", "prepare", "folder", "--root", str(user_folder), "--labels", str(csv), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "5 records written" in printed and "2 skipped" in printed  # broken is kept, I and II masked
    ds = datasets.load_from_disk(str(out))
    assert label_names(ds, "labels") == ["AF", "NORM", "RBBB", "SB"]
    rows = _by_id(ds)
    assert set(rows) == {"rec0", "rec1", "ward_b/rec2", "rec3", "broken"}
    assert rows["broken"]["masked_leads"] == ["I", "II"] and rows["rec0"]["masked_leads"] == []
    assert sorted(label_names(ds, "labels")[i] for i in rows["rec1"]["labels"]) == ["AF", "RBBB"]
    assert rows["rec3"]["labels"] == [] and rows["rec0"]["report"] == "normal ecg"
    assert rows["rec0"]["split"] == rows["rec1"]["split"]  # same patient, same split
    reasons = {item.record_id: item.reason for item in load_summary(out).skipped}
    assert "no WFDB header" in reasons["missing"]
    assert "no row for it" in reasons["unlisted"]
    # Skipping records with bad leads, as before lead masking, stays available.
    strict = tmp_path / "strict"
    assert cli_main(["data", "prepare", "folder", "--root", str(user_folder), "--labels", str(csv), "--out", str(strict),
                     "--no-progress", "--drop-records-with-bad-leads"]) == 0
    assert "4 records written" in capsys.readouterr().out
    assert "flat lead I, II" in {item.record_id: item.reason for item in load_summary(strict).skipped}["broken"]


def test_folder_with_class_columns_and_split(user_folder, tmp_path):
    csv = tmp_path / "onehot.csv"
    csv.write_text("id,AF,SB,split\nrec0,0,0,train\nrec1,1,0,val\nrec2,0,1,test\nrec3,false,false,train\n")
    result = prepare_folder(user_folder, csv, tmp_path / "ds", id_column="id", label_set="rhythm_flags", progress=False)
    ds = result.dataset
    assert label_names(ds, "rhythm_flags") == ["AF", "SB"]
    np.testing.assert_array_equal(multi_hot(ds, "rhythm_flags"), [[0, 0], [1, 0], [0, 1], [0, 0]])
    assert ds["split"] == ["train", "validation", "test", "train"]
    assert result.summary.num_skipped == 2  # broken (flat) and unlisted


def test_folder_csv_errors(user_folder, tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("name,labels\nrec0,NORM\n")
    with pytest.raises(ValueError, match="field 'record_id' is missing"):
        prepare_folder(user_folder, csv, tmp_path / "ds", progress=False)
    nothing = tmp_path / "nothing.csv"
    nothing.write_text("record_id,labels\nghost,NORM\n")
    with pytest.raises(ValueError, match="no usable record"):
        prepare_folder(user_folder, nothing, tmp_path / "ds2", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "my_ecgs", "nothing.csv"]  # no leftovers


# ---------------------------------------------------------------------------------- helpers


def test_multi_hot_rows_and_split_helpers():
    rows = [{"y": [0, 2]}, {"y": []}, {"y": [1]}]
    np.testing.assert_array_equal(multi_hot(rows, "y", num_classes=3), [[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(multi_hot({"y": [[1], [0, 1]]}, "y", num_classes=2), [[0, 1], [1, 1]])
    with pytest.raises(ValueError, match="num_classes is required"):
        multi_hot(rows, "y")
    with pytest.raises(ValueError, match="outside"):
        multi_hot(rows, "y", num_classes=2)
    assignment = assign_random_split([f"p{i}" for i in range(100)], (0.8, 0.1, 0.1), seed=42)
    counts = {name: sum(v == name for v in assignment.values()) for name in ("train", "validation", "test")}
    assert counts == {"train": 80, "validation": 10, "test": 10}
    assert assignment == assign_random_split([f"p{i}" for i in reversed(range(100))], (0.8, 0.1, 0.1), seed=42)
    ds = datasets.Dataset.from_dict({"split": ["test", "train", "train", "validation"], "x": [0, 1, 2, 3]})
    parts = split_dataset(ds)
    assert list(parts) == ["train", "validation", "test"] and parts["train"]["x"] == [1, 2]
    with pytest.raises(ValueError, match="no label column 'rhythm'"):
        label_names(ds, "rhythm")
