"""The hand-crafted baseline (`ecg-hub evaluate --baseline features`): features, classifier, CLI."""

from __future__ import annotations

import json
import warnings

import neurokit2 as nk
import numpy as np
import pytest
from ecg_hub.modeling.leads import STANDARD_LEADS
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ecg_hub.data.synthetic import RHYTHMS, synthesize_ecg
from ecg_hub.evaluation import baseline
from ecg_hub.evaluation.baseline import (
    BASELINE_NAME,
    BASELINE_PROTOCOL,
    BaselineConfig,
    dataset_features,
    feature_names,
    handcrafted_features,
    run_feature_baseline,
)

TASK_CLASSES = ["FAST", "IRREGULAR", "NEITHER"]


def _features(signal, sampling_rate, leads=STANDARD_LEADS, **kwargs) -> dict:
    names, values = handcrafted_features(signal, sampling_rate, leads, **kwargs)
    assert names == feature_names() and values.shape == (len(names),)
    return dict(zip(names, values))


# --- features -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling_rate", [100, 500])
def test_vectorised_cleaning_equals_neurokit_ecg_clean(sampling_rate):
    signal = synthesize_ecg("SR", seed=1, sampling_rate=sampling_rate).signal.astype(np.float64)
    cleaned = baseline._clean_leads(signal, sampling_rate)
    for lead in range(12):
        expected = nk.ecg_clean(signal[lead], sampling_rate=sampling_rate, method="neurokit")
        np.testing.assert_allclose(cleaned[lead], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("heart_rate", [60, 90])
def test_rr_mean_of_simulated_ecgs_within_5_percent(heart_rate):
    truth_ms = 60000.0 / heart_rate
    # neurokit2's own simulator, on lead II only: the other leads are flat and must come out NaN.
    ecg = nk.ecg_simulate(duration=10, sampling_rate=500, heart_rate=heart_rate, random_state=0)
    signal = np.zeros((12, ecg.size))
    signal[1] = ecg
    features = _features(signal, 500)
    assert features["rr_mean_ms"] == pytest.approx(truth_ms, rel=0.05)
    assert features["heart_rate_bpm"] == pytest.approx(heart_rate, rel=0.05)
    assert features["peaks_from_lead_ii"] == 1.0
    assert (
        np.isnan(features["std_mv_V1"])
        and np.isnan(features["r_amp_mv_I"])
        and np.isnan(features["qrs_axis_deg"])
    )
    # The RR statistics are neurokit2's HRV definitions (MeanNN, SDNN, RMSSD) of the same peaks.
    cleaned = nk.ecg_clean(ecg, sampling_rate=500)
    peaks = nk.ecg_peaks(cleaned, sampling_rate=500)[1]["ECG_R_Peaks"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hrv_time warns that 10 s is short for HRV
        hrv = nk.hrv_time(peaks, sampling_rate=500)
    assert features["beat_count"] == len(peaks)
    for ours, theirs in (
        ("rr_mean_ms", "HRV_MeanNN"),
        ("rr_std_ms", "HRV_SDNN"),
        ("rr_rmssd_ms", "HRV_RMSSD"),
    ):
        assert features[ours] == pytest.approx(float(hrv[theirs].iloc[0]), rel=1e-9), ours

    # ecg-hub's 12-lead simulator at 100 Hz (PTB-XL's low rate), where the true beats are known.
    record = synthesize_ecg("SR", seed=3, sampling_rate=100, heart_rate=heart_rate)
    features = _features(record.signal, 100, record.leads)
    assert features["rr_mean_ms"] == pytest.approx(truth_ms, rel=0.05)
    assert features["rr_mean_ms"] == pytest.approx(np.diff(record.r_peaks).mean() * 10.0, rel=0.01)
    # The simulator's PR is P peak to R peak; the measured one P onset to QRS onset, at 10 ms per
    # sample: within 30 ms (the wavelet delineator gave 60-90 ms here, half the truth).
    assert features["pr_ms"] == pytest.approx(record.pr_interval_ms, abs=30.0)
    assert 60.0 <= features["qrs_ms"] <= 120.0 and 300.0 <= features["qt_ms"] <= 480.0
    assert not np.isnan(list(features.values())).any()


def test_flat_noisy_short_and_masked_records_give_nans_not_errors():
    flat = _features(np.zeros((12, 1000)), 100)
    assert all(np.isnan(v) for v in flat.values())
    short = _features(np.ones((12, 150)) * np.sin(np.arange(150)), 100)  # 1.5 s: too short to measure
    assert all(np.isnan(v) for v in short.values())
    noise = _features(np.random.default_rng(0).normal(0, 0.2, (12, 1000)), 100)  # no crash; values finite
    assert np.isfinite(noise["std_mv_II"])
    record = synthesize_ecg("AF", seed=2, sampling_rate=100)
    signal = record.signal.copy()
    signal[STANDARD_LEADS.index("V3")] = np.nan  # a broken lead: its features are NaN, the rest measured
    masked = _features(signal, 100, record.leads, masked_leads=["ii"])
    assert masked["peaks_from_lead_ii"] == 0.0  # lead II masked: the beats come from another lead
    assert masked["rr_mean_ms"] == pytest.approx(np.diff(record.r_peaks).mean() * 10.0, rel=0.02)
    nan_names = sorted(n for n, v in masked.items() if np.isnan(v))
    assert nan_names == sorted(f"{f}_{lead}" for f in baseline.LEAD_FEATURES for lead in ("II", "V3"))
    # Leads are found by name, not position; unknown leads (Frank X) are ignored.
    shuffled = _features(record.signal[::-1], 100, [*record.leads[::-1]])
    assert shuffled == pytest.approx(_features(record.signal, 100, record.leads), nan_ok=True)
    _features(np.vstack([record.signal, record.signal[:1]]), 100, [*record.leads, "vx"])
    with pytest.raises(ValueError, match="leads: 11 names"):
        handcrafted_features(record.signal, 100, record.leads[:11])
    with pytest.raises(ValueError, match="sampling_rate"):
        handcrafted_features(record.signal, 0, record.leads)


# --- classifier: the protocol's numbers equal scikit-learn's by hand --------------------------------


def _task_dataset(num_records=90, flat=(0, 4)):
    """Synthetic 100 Hz records with noisy multi-label classes (so AUROC is neither 0.5 nor 1) and
    flat records in train (0) and test (4)."""
    import datasets

    rng = np.random.default_rng(0)
    rows = {k: [] for k in ("signal", "sampling_rate", "leads", "record_id", "split", "task")}
    for i in range(num_records):
        rhythm = RHYTHMS[i % len(RHYTHMS)]
        record = synthesize_ecg(rhythm, seed=[7, i], sampling_rate=100)
        fast = (record.heart_rate > 90) ^ (rng.random() < 0.25)
        irregular = (rhythm == "AF") ^ (rng.random() < 0.25)
        rows["signal"].append(np.zeros_like(record.signal) if i in flat else record.signal)
        rows["sampling_rate"].append(100)
        rows["leads"].append(list(STANDARD_LEADS))
        rows["record_id"].append(f"r{i:03d}")
        rows["split"].append(["train", "train", "train", "validation", "test"][i % 5])
        rows["task"].append([c for c, on in enumerate((fast, irregular)) if on] or [2])
    features = datasets.Features(
        {
            "signal": datasets.Array2D((12, 1000), "float32"),
            "sampling_rate": datasets.Value("int32"),
            "leads": datasets.Sequence(datasets.Value("string")),
            "record_id": datasets.Value("string"),
            "split": datasets.Value("string"),
            "task": datasets.Sequence(datasets.ClassLabel(names=TASK_CLASSES)),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def test_baseline_metrics_equal_a_direct_scikit_learn_computation(tmp_path):
    from ecg_hub.data.fractions import sample_label_fraction
    from ecg_hub.data.labels import multi_hot
    from ecg_hub.data.splits import load_splits
    from ecg_hub.evaluation.protocol import EvaluationSettings

    splits = load_splits(_task_dataset())
    config = BaselineConfig(c_grid=(0.01, 0.1, 1.0), num_workers=1)
    settings = EvaluationSettings(fractions=(0.5, 1.0), seeds=(1, 2), bootstrap=0)
    results = run_feature_baseline(splits, "task", TASK_CLASSES, settings, config, cache_dir=tmp_path)
    assert [(r["protocol"], r["fraction"], r["seeds"]) for r in results] == [
        (BASELINE_PROTOCOL, 0.5, [1, 2]),
        (BASELINE_PROTOCOL, 1.0, [1]),
    ]
    # Features by hand, record by record, equal the dataset's (cached) matrix.
    x, y = {}, {}
    for name, split in splits.items():
        x[name] = np.stack(
            [handcrafted_features(np.asarray(r["signal"]), r["sampling_rate"], r["leads"])[1] for r in split]
        ).astype(np.float32)
        np.testing.assert_array_equal(x[name], dataset_features(split, cache_dir=tmp_path).values)
        y[name] = multi_hot(split, "task")
    # The flat records (train: record 0, test: record 4) are all NaN, and their values are counted as
    # imputed, with the few unmeasured intervals of other records (an AF record has no PR).
    section = results[0]["handcrafted_features"]
    for name, flat_row in (("train", 0), ("test", 0)):
        all_nan = np.isnan(x[name]).all(axis=1)
        assert np.flatnonzero(all_nan).tolist() == [flat_row]
        nan = np.isnan(x[name])
        assert section["imputed"][name] == {"values": int(nan.sum()), "records": int(nan.any(axis=1).sum())}
    assert section["imputed_by_feature"]["heart_rate_bpm"] == 2

    def pipeline(C, class_weight):
        regression = LogisticRegression(C=C, class_weight=class_weight, max_iter=5000)
        return make_pipeline(
            SimpleImputer(strategy="median"), StandardScaler(), OneVsRestClassifier(regression)
        )

    checked = 0
    for result in results:
        for run in result["runs"]:
            index = sample_label_fraction(y["train"], result["fraction"], run["seed"])
            assert run["train_records"] == len(index)
            with warnings.catch_warnings(), baseline.single_blas_thread():  # (speed only)
                warnings.simplefilter("ignore", UserWarning)
                # The selection: the chosen (C, class_weight) has the best validation AUROC of the grid.
                val_auroc = {}
                for class_weight in (None, "balanced"):
                    for C in config.c_grid:
                        model = pipeline(C, class_weight).fit(x["train"][index], y["train"][index])
                        scores = model.predict_proba(x["validation"])
                        val_auroc[C, class_weight] = roc_auc_score(y["validation"], scores, average="macro")
                model = pipeline(run["C"], run["class_weight"]).fit(x["train"][index], y["train"][index])
                test_scores = model.predict_proba(x["test"])
            assert val_auroc[run["C"], run["class_weight"]] >= max(val_auroc.values()) - 1e-12
            assert run["val_macro_auroc"] == pytest.approx(val_auroc[run["C"], run["class_weight"]], abs=1e-9)
            test_auroc = roc_auc_score(y["test"], test_scores, average="macro")
            assert abs(run["metrics"]["macro_auroc"] - test_auroc) < 1e-9
            assert 0.55 < test_auroc < 0.99  # a real, imperfect task: the comparison is not 1.0 == 1.0
            checked += 1
    assert checked == 3
    full = results[1]
    assert full["metrics"]["macro_auroc"] == full["runs"][0]["metrics"]["macro_auroc"]
    assert set(full["per_class_auroc"]) == set(TASK_CLASSES)


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_baseline_on_a_prepared_synthetic_dataset(tmp_path, capsys, monkeypatch):
    from ecg_hub import cli
    from ecg_hub.results import load_results

    data = tmp_path / "synthetic"
    assert (
        cli.main(
            [
                "data",
                "prepare",
                "synthetic",
                "--out",
                str(data),
                "--num-records",
                "60",
                "--sampling-rate",
                "100",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "runs" / "baseline.json"
    argv = [
        "evaluate",
        "--baseline",
        "features",
        "--dataset",
        str(data),
        "--labels",
        "rhythm",
        "--fractions",
        "0.5,1",
        "--seeds",
        "1,2",
        "--bootstrap",
        "20",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{BASELINE_NAME}") and BASELINE_PROTOCOL in printed and "100%" in printed
    assert "120 hand-crafted features per record" in printed
    document = load_results(out)  # the schema the model cards read
    assert document["model"] == BASELINE_NAME and document["dataset"]["label_set"] == "rhythm"
    assert document["processor_config"]["feature_names"] == feature_names()
    assert [(r["fraction"], r["seeds"]) for r in document["results"]] == [(0.5, [1, 2]), (1.0, [1])]
    full = document["results"][1]
    assert set(full["metrics"]) == {"macro_auroc", "macro_auprc", "fmax", "macro_f1"}
    assert full["metrics"]["macro_auroc"] > 0.9  # synthetic rhythms differ in rate and regularity
    low, high = full["metrics_ci95"]["macro_auroc"]
    assert low <= full["metrics"]["macro_auroc"] <= high
    assert len(list(out.parent.glob("handcrafted-features-*.npz"))) == 3  # one per split, beside the JSON

    # Again: the features come from the cache, and the numbers are the same.
    def no_extraction(*args, **kwargs):
        raise AssertionError("features recomputed despite the cache")

    monkeypatch.setattr(baseline, "_compute_features", no_extraction)
    again = tmp_path / "runs" / "again.json"
    assert cli.main([*argv[:-1], str(again)]) == 0
    assert [r["metrics"] for r in json.loads(again.read_text())["results"]] == [
        r["metrics"] for r in document["results"]
    ]


def test_cli_baseline_errors_name_the_problem(tmp_path, capsys):
    from ecg_hub import cli

    base = ["evaluate", "--dataset", str(tmp_path), "--labels", "rhythm"]
    with pytest.raises(SystemExit, match="MODEL_OR_DIR is required .* unless --baseline"):
        cli.main(base)
    with pytest.raises(SystemExit, match="leave out MODEL_OR_DIR"):
        cli.main([*base, "some/model", "--baseline", "features"])
    with pytest.raises(SystemExit, match="--random-init, --protocol|--protocol, --random-init"):
        cli.main([*base, "--baseline", "features", "--random-init", "--protocol", "finetune"])
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main(
            [
                "evaluate",
                "--dataset",
                str(tmp_path / "missing"),
                "--labels",
                "rhythm",
                "--baseline",
                "features",
            ]
        )
    with pytest.raises(SystemExit, match="neither a `Dataset` directory"):  # a folder, but no dataset
        cli.main([*base, "--baseline", "features"])
    with pytest.raises(SystemExit):  # argparse: not a known baseline
        cli.main([*base, "--baseline", "raw"])
    assert "invalid choice" in capsys.readouterr().err
