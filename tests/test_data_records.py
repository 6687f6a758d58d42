"""Reading single records: real WFDB / MATLAB / HDF5 files, and a clear ValueError for each kind of bad input."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import wfdb
from ecg_hub.modeling.leads import STANDARD_LEADS

from ecg_hub.data.records import (
    SignalChecks,
    make_record,
    read_code15_mat,
    read_hdf5_record,
    read_record,
    read_wfdb_record,
    validate_signal,
)
from ecg_hub.data.synthetic import synthesize_ecg


def _write_wfdb(directory, name, signal_mv, fs=500, leads=STANDARD_LEADS, units="mV", fmt="16"):
    """Write (leads, samples) mV as a WFDB record with wfdb.wrsamp; returns the record path."""
    signal_mv = np.asarray(signal_mv, dtype=np.float64)
    scale = {"mV": 1.0, "uV": 1000.0}[units]
    wfdb.wrsamp(
        name, fs=fs, units=[units] * len(leads), sig_name=list(leads), p_signal=(signal_mv * scale).T,
        fmt=[fmt] * len(leads), write_dir=str(directory),
    )
    return os.path.join(str(directory), name)


@pytest.fixture()
def ecg():
    return synthesize_ecg("SR", seed=[7, 0], sampling_rate=500, duration_s=10.0)


def _assert_names(error: pytest.ExceptionInfo, record: str, field: str, *expected: str) -> None:
    message = str(error.value)
    assert f"record {record!r}" in message, message
    assert f"field {field!r}" in message, message
    for text in expected:
        assert text in message, message


def test_wfdb_roundtrip_in_mv(tmp_path, ecg):
    path = _write_wfdb(tmp_path, "good", ecg.signal)
    record = read_wfdb_record(path)
    assert record.record_id == "good"
    assert record.sampling_rate == 500
    assert record.leads == list(STANDARD_LEADS)
    assert record.signal.dtype == np.float32 and record.signal.shape == (12, 5000)
    # Format 16 at wfdb's chosen gain quantizes to a few microvolts at most.
    np.testing.assert_allclose(record.signal, ecg.signal, atol=5e-3)


def test_microvolt_units_are_converted_to_mv(tmp_path, ecg):
    path = _write_wfdb(tmp_path, "micro", ecg.signal, units="uV")
    record = read_wfdb_record(path)
    np.testing.assert_allclose(record.signal, ecg.signal, atol=5e-3)


def test_lead_names_are_canonicalized_reordered_and_limb_leads_derived(tmp_path, ecg):
    # Eight independent leads, upper-case, V-leads first: III, aVR, aVL, aVF are derived.
    order = ["V1", "V2", "V3", "V4", "V5", "V6", "I", "II"]
    rows = [STANDARD_LEADS.index(name) for name in order]
    path = _write_wfdb(tmp_path, "eight", ecg.signal[rows], leads=[n.upper() for n in order])
    record = read_wfdb_record(path)
    assert record.leads == list(STANDARD_LEADS)
    lead = {name: record.signal[i] for i, name in enumerate(record.leads)}
    np.testing.assert_allclose(lead["III"], lead["II"] - lead["I"], atol=1e-6)
    np.testing.assert_allclose(lead["aVR"], -(lead["I"] + lead["II"]) / 2, atol=1e-6)


def test_ptb_diagnostic_frank_leads_are_dropped(shared_data):
    record = read_wfdb_record(shared_data / "ptb_diagnostic" / "s0010_re")
    assert record.sampling_rate == 1000
    assert record.signal.shape == (12, 38400)
    assert record.leads == list(STANDARD_LEADS)
    assert record.metadata["dropped_channels"] == ["vx", "vy", "vz"]
    assert record.metadata["reason for admission"] == "Myocardial infarction"


def test_real_ptbxl_record_matches_wfdb(shared_data):
    path = shared_data / "ptbxl" / "records100" / "00000" / "00001_lr"
    record = read_wfdb_record(path, record_id="1")
    raw = wfdb.rdrecord(str(path))
    assert raw.sig_name[3] == "AVR" and record.leads[3] == "aVR"
    np.testing.assert_array_equal(record.signal, raw.p_signal.T.astype(np.float32))


def test_cinc_mat_code15_mat_and_sph_hdf5(shared_data):
    cinc = read_record(shared_data / "cinc2021_sample" / "G12EC" / "E00001.hea")
    assert cinc.signal.shape == (12, 5000) and cinc.metadata["dx"] == "426783006"
    code15 = read_code15_mat(shared_data / "code15_sample" / "records" / "code_15_438277.mat")
    assert code15.sampling_rate == 400 and code15.signal.shape == (12, 2934)
    import h5py

    sph_path = shared_data / "cinc2021_sample" / "SPH" / "SPH00001.h5"
    sph = read_hdf5_record(sph_path, sampling_rate=500)
    with h5py.File(sph_path) as handle:
        np.testing.assert_array_equal(sph.signal, handle["ecg"][()].astype(np.float32))


# ------------------------------------------------------------------ bad input: one test per check


def test_truncated_signal_file(tmp_path, ecg):
    path = _write_wfdb(tmp_path, "cut", ecg.signal)
    with open(path + ".dat", "r+b") as handle:
        handle.truncate(10_000)
    with pytest.raises(ValueError) as error:
        read_wfdb_record(path)
    _assert_names(error, "cut", "signal file", "cut.dat has 10000 bytes", "expected at least 120000 bytes", "truncated")


def test_truncated_cinc_mat_file(tmp_path, shared_data):
    for ext in (".hea", ".mat"):
        shutil.copy(shared_data / "cinc2021_sample" / "G12EC" / f"E00001{ext}", tmp_path / f"E00001{ext}")
    os.chmod(tmp_path / "E00001.mat", 0o644)
    with open(tmp_path / "E00001.mat", "r+b") as handle:
        handle.truncate(50_000)
    with pytest.raises(ValueError) as error:
        read_wfdb_record(tmp_path / "E00001")
    _assert_names(error, "E00001", "signal file", "truncated")


def test_missing_signal_file(tmp_path, ecg):
    path = _write_wfdb(tmp_path, "nodat", ecg.signal)
    os.remove(path + ".dat")
    with pytest.raises(ValueError) as error:
        read_wfdb_record(path)
    _assert_names(error, "nodat", "signal file", "does not exist")


def test_nan_samples(tmp_path, ecg):
    signal = ecg.signal.copy()
    signal[7, 100:130] = np.nan  # wfdb stores NaN as the format's invalid value and reads it back as NaN
    path = _write_wfdb(tmp_path, "gaps", signal)
    with pytest.raises(ValueError) as error:
        read_wfdb_record(path)
    _assert_names(error, "gaps", "signal", "NaN", "V2 (30 samples)", "expected finite values in mV")


def test_flat_lead(tmp_path, ecg):
    signal = ecg.signal.copy()
    signal[9] = 0.0  # V4 disconnected
    path = _write_wfdb(tmp_path, "flat", signal)
    # By default the record is kept and V4 masked (zeroed, listed with its reason) ...
    record = read_wfdb_record(path)
    assert record.masked_leads == ["V4"] and record.masked_lead_reasons == ["flat"]
    assert not record.signal[9].any() and record.signal.shape == (12, 5000)
    # ... skipping the record stays available, with the reason it had before masking ...
    with pytest.raises(ValueError) as error:
        read_wfdb_record(path, checks=SignalChecks(drop_records_with_bad_leads=True))
    _assert_names(error, "flat", "signal", "flat lead V4", "expected a recorded ECG in every lead")
    # ... and the check can be turned off.
    kept = read_wfdb_record(path, checks=SignalChecks(allow_flat_leads=True))
    assert kept.signal.shape == (12, 5000) and kept.masked_leads == []


def test_clipped_lead(tmp_path, ecg):
    signal = ecg.signal.copy()
    signal[1] = np.clip(signal[1] * 4, -0.5, 0.5)  # lead II saturating at +-0.5 mV
    path = _write_wfdb(tmp_path, "sat", signal)
    record = read_wfdb_record(path)
    assert record.masked_leads == ["II"] and record.masked_lead_reasons == ["clipped"]
    assert not record.signal[1].any()
    with pytest.raises(ValueError) as error:
        read_wfdb_record(path, checks=SignalChecks(drop_records_with_bad_leads=True))
    _assert_names(error, "sat", "signal", "clipped lead II", "maximum or minimum")


def test_wrong_sampling_rate(tmp_path, ecg):
    path = _write_wfdb(tmp_path, "rate", ecg.signal, fs=500)
    with pytest.raises(ValueError) as error:
        read_wfdb_record(path, checks=SignalChecks(expected_sampling_rate=100))
    _assert_names(error, "rate", "sampling_rate", "is 500 Hz; expected 100 Hz")
    with pytest.raises(ValueError) as error:
        make_record(ecg.signal, 5, STANDARD_LEADS, "slow")
    _assert_names(error, "slow", "sampling_rate", "expected between 50 and 20000 Hz")


def test_missing_sampling_rate(tmp_path, ecg):
    path = _write_wfdb(tmp_path, "nofs", ecg.signal)
    with open(path + ".hea") as handle:
        header = handle.read().splitlines()
    header[0] = "nofs 12"  # record line without frequency: wfdb would silently assume 250 Hz
    with open(path + ".hea", "w") as handle:
        handle.write("\n".join(header) + "\n")
    with pytest.raises(ValueError) as error:
        read_wfdb_record(path)
    _assert_names(error, "nofs", "sampling_rate", "missing", "expected e.g. 'NAME 12 500 5000'")
    with pytest.raises(ValueError) as error:
        make_record(ecg.signal, None, STANDARD_LEADS, "nofs2")
    _assert_names(error, "nofs2", "sampling_rate", "missing")


def test_missing_leads(tmp_path, ecg):
    keep = [0, 1, 6, 7, 8]  # I, II, V1-V3: V4-V6 missing
    path = _write_wfdb(tmp_path, "few", ecg.signal[keep], leads=[STANDARD_LEADS[i] for i in keep])
    absent = read_wfdb_record(path)  # default: zero-filled and masked as absent
    assert absent.leads == list(STANDARD_LEADS) and absent.masked_leads == ["V4", "V5", "V6"]
    assert absent.masked_lead_reasons == ["absent"] * 3 and not absent.signal[9:].any()
    with pytest.raises(ValueError) as error:
        read_wfdb_record(path, checks=SignalChecks(drop_records_with_bad_leads=True))
    _assert_names(error, "few", "leads", "missing V4, V5, V6")
    record = read_wfdb_record(path, checks=SignalChecks(required_leads=None))
    assert record.leads == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3"]


def test_wrong_units_and_short_record():
    signal = synthesize_ecg("SB", seed=1, sampling_rate=100).signal
    with pytest.raises(ValueError) as error:
        validate_signal(signal * 1000, 100, STANDARD_LEADS, "microvolts")
    _assert_names(error, "microvolts", "signal", "expected |values| <= 50 mV")
    with pytest.raises(ValueError) as error:
        validate_signal(signal[:, :50], 100, STANDARD_LEADS, "short")
    _assert_names(error, "short", "signal", "0.50 s", "expected at least 1 s")
