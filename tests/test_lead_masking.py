"""Dead or implausible leads become missing leads, not lost records (issue 18).

A flat, clipped or absent lead is zeroed and listed in ``masked_leads`` / ``masked_lead_reasons``;
the record is kept, the prepare summary counts it, and the lead reaches the model as missing
(``lead_mask`` 0, zero ``input_values``) through ``EcgCollator`` and the feature extractor alike.
``--drop-records-with-bad-leads`` skips such records as before; records too broken to use (no usable
lead, NaN runs, wrong units) are skipped whatever the setting.
"""

from __future__ import annotations

import os

import datasets
import numpy as np
import pytest
import torch
import wfdb
from ecg_hub.modeling.feature_extraction_ecg import EcgFeatureExtractor
from ecg_hub.modeling.leads import STANDARD_LEADS

from ecg_hub.cli import main as cli_main
from ecg_hub.data import load_summary, prepare_cinc
from ecg_hub.data.builder import PrepareSummary
from ecg_hub.data.collators import COLLATOR_COLUMNS, EcgCollator
from ecg_hub.data.records import SignalChecks, find_bad_leads, make_record, read_wfdb_record
from ecg_hub.data.synthetic import synthesize_ecg

CHAPMAN = "cinc2021_sample/ChapmanShaoxing_Ningbo/JS00001"
DEAD = ["V2", "V4", "V6"]  # the pattern of the held-back Chapman records in the issue


def _copy_wfdb(source: str, directory, name: str, edit) -> str:
    """Write a modified copy of a real WFDB record (same rate, units, header comments) with wfdb."""
    record = wfdb.rdrecord(source)
    signal = edit(record.p_signal.copy(), list(record.sig_name))
    wfdb.wrsamp(
        name, fs=record.fs, units=list(record.units), sig_name=list(record.sig_name), p_signal=signal,
        fmt=["16"] * record.n_sig, comments=list(record.comments or []), write_dir=str(directory),
    )
    return os.path.join(str(directory), name)


def _zero(leads):
    def edit(signal, names):
        for lead in leads:
            signal[:, names.index(lead)] = 0.0
        return signal
    return edit


@pytest.fixture(scope="module")
def cinc_root(shared_data, tmp_path_factory):
    """A CinC-style folder of real Chapman records: one clean, one with V2, V4, V6 zeroed, one with
    every lead zeroed (no usable lead), one with a 100-sample NaN run in II."""
    root = tmp_path_factory.mktemp("masking") / "cinc"
    folder = root / "ChapmanShaoxing_Ningbo"
    folder.mkdir(parents=True)
    source = str(shared_data / CHAPMAN)
    _copy_wfdb(source, folder, "JS00001", lambda signal, names: signal)
    _copy_wfdb(source, folder, "JSDEAD3", _zero(DEAD))
    _copy_wfdb(source, folder, "JSDEAD12", _zero(STANDARD_LEADS))

    def nan_run(signal, names):
        signal[1000:1100, names.index("II")] = np.nan
        return signal

    _copy_wfdb(source, folder, "JSNAN", nan_run)
    return root


@pytest.fixture(scope="module")
def masked_dataset(cinc_root, tmp_path_factory):
    return prepare_cinc(cinc_root, tmp_path_factory.mktemp("masked") / "ds", progress=False)


def test_real_record_with_dead_leads_is_kept_and_masked(masked_dataset, shared_data):
    ds, summary = masked_dataset.dataset, masked_dataset.summary
    assert sorted(ds["record_id"]) == ["JS00001", "JSDEAD3"]
    row = ds.with_format("numpy", columns=["signal"], output_all_columns=True)[ds["record_id"].index("JSDEAD3")]
    assert row["masked_leads"] == DEAD and row["masked_lead_reasons"] == ["flat"] * 3
    dead_rows = [STANDARD_LEADS.index(lead) for lead in DEAD]
    assert not row["signal"][dead_rows].any()
    # The other nine leads are the real recording, untouched.
    raw = wfdb.rdrecord(str(shared_data / CHAPMAN)).p_signal.T.astype(np.float32)
    live = [i for i in range(12) if i not in dead_rows]
    np.testing.assert_allclose(row["signal"][live], raw[live], atol=5e-3)  # format 16 requantized
    clean = ds[ds["record_id"].index("JS00001")]
    assert clean["masked_leads"] == [] and clean["masked_lead_reasons"] == []
    # The summary counts records with masked leads by reason and per lead.
    assert summary.num_with_masked_leads == 1
    assert summary.masked_record_counts == {"flat": 1}
    assert summary.masked_lead_counts == {"flat": {"V2": 1, "V4": 1, "V6": 1}}
    assert "kept 1 records with masked leads" in summary.format()
    saved = load_summary(summary.out_dir)
    assert saved.masked[0].record_id == "JSDEAD3" and saved.masked[0].leads == DEAD
    assert saved.options["checks"]["drop_records_with_bad_leads"] is False


def test_broken_records_are_still_skipped(masked_dataset):
    reasons = {item.record_id: item.reason for item in masked_dataset.summary.skipped}
    assert set(reasons) == {"JSDEAD12", "JSNAN"}
    assert "record 'JSDEAD12': field 'signal' has no usable lead (flat: I, II" in reasons["JSDEAD12"]
    assert "NaN or infinite values in lead II (100 samples)" in reasons["JSNAN"]
    assert masked_dataset.summary.skip_reasons()["field 'signal' has no usable lead"] == 1


def test_mask_reaches_the_model_through_the_collator(masked_dataset):
    ds = masked_dataset.dataset
    view = ds.with_format("numpy", columns=["signal"], output_all_columns=True)
    rows = [view[i] for i in range(len(ds))]
    extractor = EcgFeatureExtractor(sampling_rate=500, num_samples=2500, bandpass=[0.5, 40.0], normalization="zscore_lead")
    batch = EcgCollator(extractor, training=False)(rows)
    dead = ds["record_id"].index("JSDEAD3")
    dead_rows = [STANDARD_LEADS.index(lead) for lead in DEAD]
    expected = torch.ones(12, dtype=torch.long)
    expected[dead_rows] = 0
    assert torch.equal(batch["lead_mask"][dead], expected)
    assert torch.equal(batch["lead_mask"][1 - dead], torch.ones(12, dtype=torch.long))
    assert not batch["input_values"][dead, dead_rows].any()
    assert batch["input_values"][dead, [i for i in range(12) if i not in dead_rows]].abs().amax(dim=1).min() > 0
    # Training crops as well.
    train = EcgCollator(extractor, training=True, seed=0)(rows)
    assert torch.equal(train["lead_mask"], batch["lead_mask"])


def test_drop_records_with_bad_leads_skips_and_lists_the_reason(cinc_root, tmp_path, capsys):
    out = tmp_path / "strict"
    assert cli_main(["data", "prepare", "cinc", "--root", str(cinc_root), "--out", str(out), "--no-progress",
                     "--drop-records-with-bad-leads"]) == 0
    printed = capsys.readouterr().out
    assert "1 records written" in printed and "3 skipped" in printed
    summary = load_summary(out)
    reasons = {item.record_id: item.reason for item in summary.skipped}
    assert "field 'signal' has flat lead V2, V4, V6" in reasons["JSDEAD3"]
    assert "JSDEAD12" in reasons and "JSNAN" in reasons
    assert summary.num_with_masked_leads == 0 and summary.options["checks"]["drop_records_with_bad_leads"] is True


# --------------------------------------------------------------------------------- records


@pytest.fixture()
def ecg():
    return synthesize_ecg("SR", seed=[3, 0], sampling_rate=500, duration_s=10.0)


def test_masked_lead_never_feeds_derived_limb_leads(ecg):
    rows = [0, 1, 6, 7, 8, 9, 10, 11]  # I, II, V1-V6: III, aVR, aVL, aVF must be derived
    signal = ecg.signal[rows].copy()
    signal[0] = 0.2  # lead I flat (an offset, not zero)
    record = make_record(signal, 500, [STANDARD_LEADS[i] for i in rows], "flat-i")
    assert record.leads == list(STANDARD_LEADS)
    assert record.masked_leads == ["I", "III", "aVR", "aVL", "aVF"]
    assert record.masked_lead_reasons == ["flat", "absent", "absent", "absent", "absent"]
    assert not record.signal[[0, 2, 3, 4, 5]].any() and record.usable_leads == ["II", "V1", "V2", "V3", "V4", "V5", "V6"]
    # With I and II usable the limb leads are derived as before.
    fine = make_record(ecg.signal[rows], 500, [STANDARD_LEADS[i] for i in rows], "fine")
    assert fine.masked_leads == []
    np.testing.assert_allclose(fine.signal[2], ecg.signal[1] - ecg.signal[0], atol=1e-5)


def test_absent_leads_keep_a_fixed_shape_and_min_usable_leads(ecg):
    record = make_record(ecg.signal[:6], 500, STANDARD_LEADS[:6], "limbs-only")  # no precordial leads
    assert record.signal.shape == (12, 5000) and record.masked_leads == list(STANDARD_LEADS[6:])
    with pytest.raises(ValueError, match=r"record 'limbs-only': field 'leads' has 6 usable leads \(absent: V1, .*expected at least 8"):
        make_record(ecg.signal[:6], 500, STANDARD_LEADS[:6], "limbs-only", checks=SignalChecks(min_usable_leads=8))
    with pytest.raises(ValueError, match="field 'leads' is missing V1, V2"):
        make_record(ecg.signal[:6], 500, STANDARD_LEADS[:6], "limbs-only", checks=SignalChecks(drop_records_with_bad_leads=True))


def test_wrong_units_still_skip_the_record(ecg):
    with pytest.raises(ValueError, match="expected |values| <= 50 mV"):
        make_record(ecg.signal * 1000, 500, STANDARD_LEADS, "microvolts")


def test_find_bad_leads_flags_flat_and_clipped(ecg):
    signal = ecg.signal.copy()
    signal[3] = 0.0
    signal[7] = np.clip(signal[7] * 4, -0.3, 0.3)
    assert find_bad_leads(signal, STANDARD_LEADS) == {"aVR": "flat", "V2": "clipped"}
    assert find_bad_leads(signal, STANDARD_LEADS, SignalChecks(allow_clipped_leads=True)) == {"aVR": "flat"}


def test_real_ptbxl_record_keeps_its_values_when_clean(shared_data):
    path = shared_data / "ptbxl" / "records100" / "00000" / "00001_lr"
    record = read_wfdb_record(path)
    assert record.masked_leads == [] and record.signal.dtype == np.float32
    np.testing.assert_array_equal(record.signal, wfdb.rdrecord(str(path)).p_signal.T.astype(np.float32))


# ------------------------------------------------------------------------- feature extractor


def _row(signal, masked, record_id="r"):
    return {"signal": signal, "sampling_rate": 500, "leads": list(STANDARD_LEADS), "record_id": record_id, "masked_leads": masked}


def test_extractor_treats_masked_leads_as_missing(ecg):
    extractor = EcgFeatureExtractor(sampling_rate=500, num_samples=5000, normalization="minmax_record")
    signal = ecg.signal.copy()
    signal[7] = 40.0  # garbage in a masked lead must not move the record's min-max scaling
    signal[2] = np.nan  # nor fail the finite check
    masked = extractor([_row(signal, ["V2", "III"])])
    reference = extractor(np.delete(ecg.signal, [2, 7], axis=0), sampling_rate=500,
                          leads=[lead for lead in STANDARD_LEADS if lead not in ("III", "V2")], )
    # III is derivable from I and II, but a masked lead stays missing.
    assert masked["lead_mask"][0].tolist() == [1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1]
    assert reference["lead_mask"][0, 2] == 1  # (absent, not masked: derived)
    keep = [i for i in range(12) if i not in (2, 7)]
    np.testing.assert_allclose(masked["input_values"][0, keep], reference["input_values"][0, keep], atol=1e-6)
    assert not masked["input_values"][0, [2, 7]].any()
    # The same through the masked_leads= argument, for arrays.
    direct = extractor(signal, sampling_rate=500, leads=STANDARD_LEADS, masked_leads=["V2", "III"])
    np.testing.assert_array_equal(direct["input_values"], masked["input_values"])
    per_record = extractor([ecg.signal, ecg.signal], sampling_rate=500, leads=STANDARD_LEADS, masked_leads=[[], ["avf"]])
    assert per_record["lead_mask"][:, 5].tolist() == [1, 0]


def test_extractor_masked_leads_errors_name_the_record(ecg):
    with pytest.raises(ValueError, match=r"record r7: masked_leads \['V7'\]"):
        EcgFeatureExtractor()([_row(ecg.signal, ["V7"], "r7")])
    strict = EcgFeatureExtractor(missing_leads="error")
    with pytest.raises(ValueError, match=r"record r2: missing leads \['V2'\].*masked: \['V2'\]"):
        strict([_row(ecg.signal, ["V2"], "r2")])


def test_collator_refuses_an_extractor_that_ignores_masks(ecg):
    class Ignoring(EcgFeatureExtractor):
        def __call__(self, ecg, **kwargs):
            rows = [{k: v for k, v in row.items() if k != "masked_leads"} for row in ecg]
            return super().__call__(rows, **kwargs)

    with pytest.raises(ValueError, match=r"record r: masked lead\(s\) \['V2'\] came out of Ignoring with lead_mask 1"):
        EcgCollator(Ignoring())([_row(ecg.signal, ["V2"])])


def test_evaluation_and_finetune_views_keep_the_mask_column():
    assert "masked_leads" in COLLATOR_COLUMNS


def test_inference_loader_keeps_masks(ecg):
    from ecg_hub.inference import inference_loader

    dataset = datasets.Dataset.from_dict({k: [v] for k, v in _row(ecg.signal, ["V2"]).items()})
    batch = next(iter(inference_loader(dataset, EcgFeatureExtractor(), batch_size=1)))
    assert batch["lead_mask"][0, 7] == 0


def test_old_summaries_still_load(tmp_path):
    legacy = {"source": "cinc", "out_dir": str(tmp_path), "num_records": 3, "num_skipped": 1,
              "skipped": [{"record_id": "x", "reason": "record 'x': field 'signal' has flat lead V1"}]}
    summary = PrepareSummary.from_dict(legacy)
    assert summary.num_with_masked_leads == 0 and summary.masked == [] and "skipped 1 records" in summary.format()


def test_pretraining_reads_datasets_prepared_before_masked_leads_existed(tmp_path):
    """`data.columns: [..., masked_leads]` (the PTB-XL-subset recipes) also reads an older dataset
    without that column; a missing column it needs is still an error."""
    from ecg_hub.recipe import load_recipe
    from ecg_hub.training.pretrain import PretrainRecipe, _load_dataset

    old = datasets.Dataset.from_dict(
        {"signal": [np.zeros((2, 100), np.float32)], "sampling_rate": [100], "leads": [["I", "II"]], "split": ["train"]}
    )
    old.save_to_disk(str(tmp_path / "old"))
    dataset_node = f"dataset={{_component_: datasets.load_from_disk, dataset_path: {tmp_path / 'old'}}}"
    recipe = load_recipe(
        "ecg_jepa/pretrain_tiny", [dataset_node, "data.columns=[signal, sampling_rate, leads, masked_leads]"],
        schema=PretrainRecipe,
    )
    assert _load_dataset(recipe).column_names == ["signal", "sampling_rate", "leads"]
    recipe = load_recipe("ecg_jepa/pretrain_tiny", [dataset_node, "data.columns=[signal, record_id]"], schema=PretrainRecipe)
    with pytest.raises(ValueError, match="record_id"):
        _load_dataset(recipe)
