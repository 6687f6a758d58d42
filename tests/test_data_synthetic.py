"""Synthetic 12-lead ECGs: deterministic, physiologically consistent, labelled rhythms a small model can separate."""

from __future__ import annotations

import re

import datasets
import neurokit2 as nk
import numpy as np
import pytest
from ecg_hub.modeling.leads import STANDARD_LEADS

from ecg_hub.cli import main as cli_main
from ecg_hub.data import (
    RHYTHMS,
    label_names,
    make_synthetic_dataset,
    multi_hot,
    split_dataset,
    synthesize_ecg,
)


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic_dataset(num_records=120, seed=3)


def _lead(signal, name):
    return signal[STANDARD_LEADS.index(name)]


def test_dataset_columns_and_types(synthetic):
    assert len(synthetic) == 120
    assert label_names(synthetic, "rhythm") == list(RHYTHMS) == ["SR", "SB", "ST", "AF"]
    assert isinstance(synthetic.features["signal"], datasets.Array2D)
    row = synthetic.with_format("numpy")[0]
    assert row["signal"].dtype == np.float32 and row["signal"].shape == (12, 5000)
    assert int(row["sampling_rate"]) == 500 and list(row["leads"]) == list(STANDARD_LEADS)
    labels = multi_hot(synthetic, "rhythm")
    assert labels.shape == (120, 4) and np.all(labels.sum(1) == 1)
    assert labels.sum(0).tolist() == [30, 30, 30, 30]  # balanced
    splits = split_dataset(synthetic)
    sizes = {name: len(part) for name, part in splits.items()}
    assert set(sizes) == {"train", "validation", "test"} and 70 <= sizes["train"] <= 100


def test_deterministic_by_seed_and_prefix_stable():
    first = make_synthetic_dataset(num_records=8, seed=11, sampling_rate=250).with_format("numpy")
    again = make_synthetic_dataset(num_records=12, seed=11, sampling_rate=250).with_format("numpy")
    other = make_synthetic_dataset(num_records=8, seed=12, sampling_rate=250).with_format("numpy")
    np.testing.assert_array_equal(first["signal"], again["signal"][:8])
    assert list(first["report"]) == list(again["report"][:8])
    assert not np.allclose(first["signal"], other["signal"])


def test_limb_leads_obey_einthoven_and_goldberger(synthetic):
    signals = synthetic.with_format("numpy")[:40]["signal"]
    for signal in signals:
        lead_i, lead_ii, lead_iii = _lead(signal, "I"), _lead(signal, "II"), _lead(signal, "III")
        np.testing.assert_allclose(lead_i + lead_iii, lead_ii, atol=1e-5)
        np.testing.assert_allclose(_lead(signal, "aVR"), -(lead_i + lead_ii) / 2, atol=1e-5)
        np.testing.assert_allclose(_lead(signal, "aVL"), lead_i - lead_ii / 2, atol=1e-5)
        np.testing.assert_allclose(_lead(signal, "aVF"), lead_ii - lead_i / 2, atol=1e-5)
        np.testing.assert_allclose(_lead(signal, "aVR") + _lead(signal, "aVL") + _lead(signal, "aVF"), 0, atol=1e-5)


# Median peak-to-peak amplitude (mV) per lead of the 1,787 PTB-XL records in shared/data (100 Hz,
# 0.5-40 Hz Butterworth band-pass), in STANDARD_LEADS order.
PTBXL_MEDIAN_PEAK_TO_PEAK_MV = [1.02, 1.02, 0.82, 0.94, 0.77, 0.76, 1.18, 1.94, 1.96, 2.02, 1.77, 1.38]


def test_realistic_amplitudes_per_lead(synthetic):
    """Per-lead amplitudes like real resting ECGs: each lead's median peak-to-peak within a factor 1.6
    of PTB-XL's, the largest complexes in V2-V5, and V1's QRS mostly negative (rS)."""
    from scipy.signal import butter, sosfiltfilt

    signals = synthetic.with_format("numpy")[:]["signal"]
    band = butter(2, [0.5, 40.0], btype="band", fs=500, output="sos")
    spans = np.ptp(sosfiltfilt(band, signals, axis=-1), axis=2)  # (records, leads)
    ratio = np.median(spans, axis=0) / np.asarray(PTBXL_MEDIAN_PEAK_TO_PEAK_MV)
    assert np.all((ratio > 1 / 1.6) & (ratio < 1.6)), dict(zip(STANDARD_LEADS, ratio.round(2)))
    assert np.all(spans[:, :6] <= 5.0) and np.all(spans[:, 6:] <= 7.0)  # PTB-XL 99th percentiles: 2.2-3.4, 4.1-6.5
    assert np.all(spans.max(axis=1) > 0.8)  # every record has a clearly visible QRS somewhere
    medians = np.median(spans, axis=0)
    assert medians[[7, 8, 9]].min() > medians[:6].max() * 0.95  # V2-V4 carry the largest deflections
    v1 = signals[:, STANDARD_LEADS.index("V1")]
    v1 = v1 - np.median(v1, axis=1, keepdims=True)
    assert np.mean(np.abs(v1.min(axis=1)) > v1.max(axis=1)) > 0.8


def _rr_intervals(signal, sampling_rate):
    """RR intervals (s) found by neurokit2 on the lead with the tallest upward QRS deflection."""
    upward = (signal - np.median(signal, axis=1, keepdims=True)).max(axis=1)
    lead = signal[int(np.argmax(upward))]
    _, info = nk.ecg_peaks(nk.ecg_clean(lead, sampling_rate=sampling_rate), sampling_rate=sampling_rate)
    return np.diff(np.asarray(info["ECG_R_Peaks"])) / sampling_rate


def test_heart_rate_and_regularity_measured_by_neurokit(synthetic):
    """An independent R-peak detector (neurokit2) recovers the rate the report states, and the
    rhythms separate by rate and RR irregularity."""
    names = label_names(synthetic, "rhythm")
    rows = synthetic.with_format("numpy")[:60]
    agree = 0
    for signal, rhythm, rate, report in zip(rows["signal"], rows["rhythm"], rows["heart_rate"], rows["report"]):
        rhythm = names[int(rhythm[0])]
        low, high = {"SB": (40, 58), "SR": (60, 100), "ST": (102, 155), "AF": (55, 150)}[rhythm]
        assert low < rate < high, (rhythm, rate)
        assert str(int(round(rate))) in report
        rr = _rr_intervals(signal, 500)
        measured, variation = 60.0 / rr.mean(), rr.std() / rr.mean()
        regular = variation > 0.09 if rhythm == "AF" else variation < 0.08
        agree += bool(abs(measured - rate) < 0.08 * rate and regular)
    # A generic detector misses a beat now and then (e.g. inverted QRS, rapid AF); 95 % must agree.
    assert agree >= 57, agree


def test_reports_name_rhythm_and_rate_with_varied_wording(synthetic):
    names = label_names(synthetic, "rhythm")
    words = {"SR": "sinus rhythm", "SB": "bradycardia", "ST": "tachycardia", "AF": ("atrial fibrillation", "af")}
    reports = synthetic["report"]
    for report, rhythm in zip(reports, synthetic["rhythm"]):
        rhythm = names[rhythm[0]]
        text = report.lower()
        expected = words[rhythm]
        assert any(w in text for w in (expected if isinstance(expected, tuple) else (expected,))), report
        if rhythm == "SR":
            assert "brady" not in text and "tachy" not in text and "fibrillation" not in text
        assert re.search(r"\b\d{2,3}\b", report)
    first_sentences = {report.split(".")[0] for report in reports}
    assert len(set(reports)) == len(reports)
    assert len({re.sub(r"\d+", "#", s) for s in first_sentences}) >= 12  # many phrasings, not one template


def test_rhythms_are_learnable_from_rr_features():
    """A tiny classifier on R-peak features (neurokit2 detector) separates the four rhythms."""
    from sklearn.linear_model import LogisticRegression

    train = make_synthetic_dataset(num_records=80, seed=0, sampling_rate=250).with_format("numpy")
    test = make_synthetic_dataset(num_records=40, seed=1, sampling_rate=250).with_format("numpy")

    def features(rows):
        out = []
        for signal in rows["signal"]:
            rr = _rr_intervals(signal, 250)
            out.append([60.0 / rr.mean(), rr.std() / rr.mean(), np.abs(np.diff(rr)).mean() / rr.mean()])
        return np.asarray(out)

    x_train, x_test = features(train[:]), features(test[:])
    y_train = np.array([r[0] for r in train["rhythm"]])
    y_test = np.array([r[0] for r in test["rhythm"]])
    mean, std = x_train.mean(0), x_train.std(0)
    model = LogisticRegression(max_iter=2000, C=10.0).fit((x_train - mean) / std, y_train)
    accuracy = (model.predict((x_test - mean) / std) == y_test).mean()
    assert accuracy >= 0.95, accuracy


def test_other_rates_and_lengths():
    ecg = synthesize_ecg("AF", seed=5, sampling_rate=1000, duration_s=4.0, noise=False)
    assert ecg.signal.shape == (12, 4000) and ecg.pr_interval_ms is None
    sinus = synthesize_ecg("SB", seed=5, sampling_rate=100, heart_rate=45)
    assert sinus.signal.shape == (12, 1000) and abs(sinus.heart_rate - 45) < 3 and sinus.pr_interval_ms > 100
    with pytest.raises(ValueError, match="rhythm 'VT'"):
        synthesize_ecg("VT")


def test_prepare_cli_matches_in_memory_dataset(tmp_path, capsys):
    out = tmp_path / "synthetic"
    code = cli_main(["data", "prepare", "synthetic", "--out", str(out), "--num-records", "16", "--seed", "4",
                     "--sampling-rate", "250", "--no-progress"])
    assert code == 0
    assert "16 records written" in capsys.readouterr().out
    on_disk = datasets.load_from_disk(str(out)).with_format("numpy")
    in_memory = make_synthetic_dataset(num_records=16, seed=4, sampling_rate=250).with_format("numpy")
    np.testing.assert_array_equal(on_disk["signal"], in_memory["signal"])
    assert list(on_disk["report"]) == list(in_memory["report"])
    assert list(on_disk["split"]) == list(in_memory["split"])
    plot = tmp_path / "plot.png"
    assert cli_main(["data", "show", str(out), "--plot", str(plot), "--index", "3"]) == 0
    printed = capsys.readouterr().out
    assert "16 records" in printed and "rhythm" in printed
    assert plot.stat().st_size > 20_000
    from PIL import Image

    width, height = Image.open(plot).size
    assert width > 1.8 * height  # 250 mm (10 s at 25 mm/s) by 120 mm (4 rows of 3 mV at 10 mm/mV) + title
