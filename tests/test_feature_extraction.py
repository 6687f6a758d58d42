"""EcgFeatureExtractor: real-record parity with scipy, presets, save/load, every bad-input class."""

import numpy as np
import pytest
import torch
import wfdb
from ecg_hub.modeling import EcgFeatureExtractor, canonical_lead_name, derive_limb_leads
from ecg_hub.modeling.leads import INDEPENDENT_LEADS, MIMIC_LEADS, STANDARD_LEADS
from scipy import signal as scipy_signal
from transformers import AutoFeatureExtractor

import ecg_hub  # noqa: F401  (registers the Auto classes)
from ecg_hub.data.collators import EcgCollator


def _sine_record(num_leads=12, seconds=10.0, rate=500, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    freqs = rng.uniform(0.8, 3.0, size=(num_leads, 1))
    return (np.sin(2 * np.pi * freqs * t) + 0.05 * rng.standard_normal((num_leads, t.size))).astype(np.float32)


@pytest.fixture(scope="module")
def ptbxl_500hz_record(shared_data):
    record = wfdb.rdrecord(str(shared_data / "ptbxl" / "records500" / "00000" / "00001_hr"))
    return record.p_signal.T.astype(np.float64), record.sig_name, record.fs


def test_ecg_jepa_preset_equals_scipy_polyphase_on_real_ptbxl_record(ptbxl_500hz_record):
    signal, names, rate = ptbxl_500hz_record
    assert rate == 500 and signal.shape == (12, 5000)
    fe = EcgFeatureExtractor.from_preset("ecg_jepa")
    out = fe(signal, sampling_rate=rate, leads=names, return_tensors="np")
    assert out["input_values"].shape == (1, 8, 2500)
    assert out["input_values"].dtype == np.float32
    rows = [[canonical_lead_name(n) for n in names].index(lead) for lead in INDEPENDENT_LEADS]
    expected = scipy_signal.resample_poly(signal[rows], 1, 2, axis=-1)
    np.testing.assert_allclose(out["input_values"][0], expected, rtol=0, atol=1e-6)
    assert out["lead_mask"].tolist() == [[1] * 8]
    assert out["attention_mask"].sum() == 2500


def test_merl_preset_reorders_to_mimic_and_minmax_scales(ptbxl_500hz_record):
    signal, names, rate = ptbxl_500hz_record
    fe = EcgFeatureExtractor.from_preset("merl")
    x = fe(signal, sampling_rate=rate, leads=names)["input_values"][0]
    assert x.shape == (12, 5000)
    assert x.min() == pytest.approx(0.0, abs=1e-6) and x.max() == pytest.approx(1.0, abs=1e-6)
    canonical = [canonical_lead_name(n) for n in names]
    # aVF comes before aVL in MIMIC order: row 4 of the output is the record's aVF.
    low, high = signal.min(), signal.max()
    np.testing.assert_allclose(x[4], (signal[canonical.index("aVF")] - low) / (high - low), atol=1e-6)
    assert list(fe.leads) == list(MIMIC_LEADS)


def test_save_load_roundtrip_is_exact(tmp_path):
    fe = EcgFeatureExtractor(
        sampling_rate=250, leads=["I", "II", "V1"], num_samples=1000, crop="center",
        bandpass=[0.5, 40.0], filter_order=3, normalization="zscore_lead", min_samples=400,
    )
    fe.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = EcgFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == fe.to_dict()
    x = _sine_record(3, seconds=6, rate=500)
    np.testing.assert_array_equal(
        fe(x, sampling_rate=500, leads=["I", "II", "V1"])["input_values"],
        loaded(x, sampling_rate=500, leads=["I", "II", "V1"])["input_values"],
    )


def test_auto_feature_extractor_loads_saved_extractor(tmp_path):
    EcgFeatureExtractor.from_preset("ecg_jepa").save_pretrained(tmp_path)
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert type(loaded) is EcgFeatureExtractor
    saved = loaded.to_dict()
    # The saved file names the extractor's code for trust_remote_code users (auto_map); the rest equals.
    assert saved.pop("auto_map") == {"AutoFeatureExtractor": "feature_extraction_ecg.EcgFeatureExtractor"}
    assert saved == EcgFeatureExtractor.from_preset("ecg_jepa").to_dict()


def test_missing_limb_leads_are_derived_and_other_leads_zero_filled():
    x = _sine_record(3)
    fe = EcgFeatureExtractor(sampling_rate=500, leads=STANDARD_LEADS, num_samples=5000)
    out = fe(x, sampling_rate=500, leads=["DI", "dii", "V1"])
    values, mask = out["input_values"][0], out["lead_mask"][0]
    assert mask.tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(values[2], x[1] - x[0], atol=1e-6)  # III = II - I
    np.testing.assert_allclose(values[3], -(x[0] + x[1]) / 2, atol=1e-6)  # aVR
    assert np.all(values[7:] == 0)


def test_derive_limb_leads_satisfies_einthoven_and_goldberger():
    x = _sine_record(2).astype(np.float64)
    full, names = derive_limb_leads(x, ["I", "II"])
    lead = dict(zip(names, full))
    np.testing.assert_allclose(lead["I"] + lead["III"], lead["II"], atol=1e-12)
    np.testing.assert_allclose(lead["aVR"] + lead["aVL"] + lead["aVF"], 0, atol=1e-12)


def test_crop_pad_and_attention_mask_on_mixed_lengths_and_rates():
    fe = EcgFeatureExtractor(sampling_rate=250, leads=["I", "II"], num_samples=2500, crop="center")
    long = _sine_record(2, seconds=12, rate=1000)  # 12 s at 1000 Hz -> 3000 samples -> centre 2500
    short = _sine_record(2, seconds=6, rate=500)  # 6 s -> 1500 samples, padded
    out = fe([long, short], sampling_rate=[1000, 500], leads=["I", "II"], return_tensors="pt")
    assert out["input_values"].shape == (2, 2, 2500)
    assert out["attention_mask"].sum(dim=1).tolist() == [2500, 1500]
    assert torch.all(out["input_values"][1, :, 1500:] == 0)
    full = scipy_signal.resample_poly(long.astype(np.float64), 1, 4, axis=-1)
    np.testing.assert_allclose(out["input_values"][0].numpy(), full[:, 250:2750], atol=1e-5)


def test_random_crop_is_reproducible_with_a_generator_and_varies_between_draws():
    fe = EcgFeatureExtractor(sampling_rate=100, leads=["I"], num_samples=200)
    x = np.arange(1000, dtype=np.float32)[None]  # a ramp: the first value names the crop start
    a = fe(x, sampling_rate=100, leads=["I"], training=True, generator=np.random.default_rng(3))
    b = fe(x, sampling_rate=100, leads=["I"], training=True, generator=np.random.default_rng(3))
    np.testing.assert_array_equal(a["input_values"], b["input_values"])
    starts = {
        float(fe(x, sampling_rate=100, leads=["I"], training=True, generator=np.random.default_rng(s))["input_values"][0, 0, 0])
        for s in range(10)
    }
    assert len(starts) > 3
    assert fe(x, sampling_rate=100, leads=["I"])["input_values"][0, 0, 0] == 0.0  # eval: start crop


def test_bandpass_removes_baseline_wander_and_keeps_qrs_band():
    rate = 250
    t = np.arange(10 * rate) / rate
    wander, qrs_band = np.sin(2 * np.pi * 0.1 * t), np.sin(2 * np.pi * 10 * t)
    fe = EcgFeatureExtractor.from_preset("ecg_jepa_finetune", leads=["I"])
    out = fe((wander + qrs_band)[None], sampling_rate=rate, leads=["I"])["input_values"][0, 0]
    middle = slice(500, 2000)  # away from the edges of the zero-phase filter
    residual = out[middle] - qrs_band[middle]
    # The 0.1 Hz wander (RMS 0.71 mV) is gone to within 3 % of the 10 Hz component's amplitude.
    assert np.sqrt(np.mean(residual**2)) < 0.03
    assert np.sqrt(np.mean(out[middle] ** 2)) == pytest.approx(np.sqrt(0.5), rel=0.03)


def test_zscore_and_dataset_rows_and_column_batches():
    fe = EcgFeatureExtractor(sampling_rate=500, leads=["I", "II"], num_samples=5000, normalization="zscore_lead")
    x = _sine_record(2) * 3 + 1
    rows = [{"signal": x, "sampling_rate": 500, "leads": ["I", "II"], "record_id": "r1"}] * 2
    out = fe(rows)["input_values"]
    np.testing.assert_allclose(out.mean(axis=-1), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=-1), 1, atol=1e-4)
    columns = {"signal": [x, x], "sampling_rate": [500, 500], "leads": [["I", "II"]] * 2}
    np.testing.assert_array_equal(fe(columns)["input_values"], out)


def test_collator_gives_multi_hot_labels_and_model_inputs():
    fe = EcgFeatureExtractor(sampling_rate=100, leads=["I", "II"], num_samples=500)
    rows = [
        {"signal": _sine_record(2, rate=100, seed=i), "sampling_rate": 100, "leads": ["I", "II"], "dx": pos}
        for i, pos in enumerate([[0], [1, 2], []])
    ]
    batch = EcgCollator(fe, label_column="dx", num_classes=3)(rows)
    assert batch["input_values"].shape == (3, 2, 500) and batch["input_values"].dtype == torch.float32
    assert batch["labels"].tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert set(batch) == {"input_values", "attention_mask", "lead_mask", "labels"}


# --- bad input: one test per class, each error names the problem -----------------------------


@pytest.fixture
def fe12():
    return EcgFeatureExtractor(sampling_rate=500, leads=STANDARD_LEADS, num_samples=5000)


def test_nan_names_lead_and_sample(fe12):
    x = _sine_record()
    x[4, 1234] = np.nan
    with pytest.raises(ValueError, match=r"record rec-7: .*NaN in lead aVL at sample 1234"):
        fe12(x, sampling_rate=500, leads=STANDARD_LEADS, record_ids=["rec-7"])


def test_inf_names_lead_and_sample(fe12):
    x = _sine_record()
    x[0, 10] = np.inf
    with pytest.raises(ValueError, match=r"inf in lead I at sample 10"):
        fe12(x, sampling_rate=500, leads=STANDARD_LEADS)


def test_unknown_lead_name(fe12):
    with pytest.raises(ValueError, match=r"unknown lead name 'X7'"):
        fe12(_sine_record(2), sampling_rate=500, leads=["I", "X7"])


def test_too_few_samples_says_how_many(fe12):
    with pytest.raises(ValueError, match=r"has 300 samples at 500 Hz .*at least 500 samples are needed"):
        fe12(_sine_record(seconds=0.6), sampling_rate=500, leads=STANDARD_LEADS)


def test_wrong_rank(fe12):
    with pytest.raises(ValueError, match=r"rank 2 \(leads, samples\) or 3"):
        fe12(np.zeros(5000), sampling_rate=500, leads=["I"])


@pytest.mark.parametrize(
    ("signal", "dtype_name"),
    [(np.full((12, 5000), "a"), "<U1"), (np.ones((12, 5000), bool), "bool"), (np.ones((12, 5000), complex), "complex128")],
)
def test_non_numeric_dtype(fe12, signal, dtype_name):
    with pytest.raises(ValueError, match=rf"must be numeric, got dtype {dtype_name}"):
        fe12(signal, sampling_rate=500, leads=STANDARD_LEADS)


@pytest.mark.parametrize("rate", [None, 0, -250])
def test_missing_or_non_positive_sampling_rate(fe12, rate):
    with pytest.raises(ValueError, match=r"sampling_rate"):
        fe12(_sine_record(), sampling_rate=rate, leads=STANDARD_LEADS)


def test_leads_list_not_matching_array(fe12):
    with pytest.raises(ValueError, match=r"names 12 leads .* but the signal has 11 rows"):
        fe12(_sine_record(11), sampling_rate=500, leads=STANDARD_LEADS)
    with pytest.raises(ValueError, match=r"must be \(leads, samples\)"):
        fe12(_sine_record(12).T, sampling_rate=500, leads=STANDARD_LEADS)


def test_missing_leads_can_be_an_error():
    fe = EcgFeatureExtractor(sampling_rate=500, leads=["I", "V1"], missing_leads="error")
    with pytest.raises(ValueError, match=r"missing leads \['V1'\]"):
        fe(_sine_record(2), sampling_rate=500, leads=["I", "II"])


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="normalization"):
        EcgFeatureExtractor(normalization="l2")
    with pytest.raises(ValueError, match="Nyquist"):
        EcgFeatureExtractor(sampling_rate=100, bandpass=[0.5, 60])
    with pytest.raises(ValueError, match="unknown feature-extractor preset"):
        EcgFeatureExtractor.from_preset("nope")
