"""The ecg-classification pipeline (fine-tuned classifiers: names, scores, top_k, saved thresholds),
and what every ECG pipeline shares: record paths, sliding windows over long records, the
once-per-call warnings for cropped records and zero-filled leads, batching (with a worker)."""

import warnings

import numpy as np
import pytest
import torch
import wfdb
from ecg_hub.modeling import (
    EcgFeatureExtractor,
    EcgInputReducedWarning,
    EcgJepaForSequenceClassification,
    EcgResNetForSequenceClassification,
)
from ecg_hub.modeling.leads import STANDARD_LEADS
from model_battery import tiny_ecg_jepa_config, tiny_ecg_resnet_config
from transformers import pipeline

import ecg_hub  # noqa: F401  (registers the pipelines)
from ecg_hub.data.records import read_record
from ecg_hub.pipelines import EcgClassificationPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

JEPA_LEADS = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
NAMES = {0: "NORM", 1: "MI", 2: "AF"}
THRESHOLDS = {"NORM": 0.3, "MI": 0.9, "AF": 0.5}


@pytest.fixture(scope="module")
def multi_label_dir(tmp_path_factory):
    """A tiny multi-label ECG-JEPA classifier (8 leads, 2 s at 250 Hz) with names and tuned thresholds."""
    torch.manual_seed(0)
    config = tiny_ecg_jepa_config(
        id2label=NAMES, label2id={v: k for k, v in NAMES.items()}, problem_type="multi_label_classification"
    )
    config.classification_thresholds = THRESHOLDS
    path = tmp_path_factory.mktemp("jepa_classifier")
    EcgJepaForSequenceClassification(config).save_pretrained(path)
    EcgFeatureExtractor.from_preset("ecg_jepa", num_samples=500).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def single_label_dir(tmp_path_factory):
    """A tiny single-label ResNet classifier (12 leads, 4 s at 100 Hz)."""
    torch.manual_seed(1)
    config = tiny_ecg_resnet_config(
        id2label=NAMES, label2id={v: k for k, v in NAMES.items()}, problem_type="single_label_classification"
    )
    path = tmp_path_factory.mktemp("resnet_classifier")
    EcgResNetForSequenceClassification(config).save_pretrained(path)
    EcgFeatureExtractor.from_preset("etp", sampling_rate=100, num_samples=400).save_pretrained(path)
    return str(path)


def _records(n, leads=12, samples=400, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(leads, samples)) * 0.3).astype(np.float32) for _ in range(n)]


def _direct_scores(path, signal, rate, leads, activation):
    model = EcgJepaForSequenceClassification if "jepa" in path else EcgResNetForSequenceClassification
    model = model.from_pretrained(path).eval()
    inputs = EcgFeatureExtractor.from_pretrained(path)(signal, sampling_rate=rate, leads=leads, return_tensors="pt")
    with torch.no_grad():
        return activation(model(**inputs).logits)[0].numpy()


def test_classification_pipeline_names_scores_and_saved_thresholds(multi_label_dir):
    classifier = pipeline("ecg-classification", model=multi_label_dir)
    assert isinstance(classifier, EcgClassificationPipeline)
    signal = _records(1, leads=8, samples=500)[0]
    result = classifier(signal, sampling_rate=250, leads=JEPA_LEADS)
    expected = _direct_scores(multi_label_dir, signal, 250, JEPA_LEADS, torch.sigmoid)
    assert [item["label"] for item in result] == [NAMES[i] for i in np.argsort(-expected)]
    np.testing.assert_allclose([item["score"] for item in result], np.sort(expected)[::-1], atol=1e-6)
    for item in result:  # "positive" at the thresholds fine-tuning saved, not at 0.5
        assert item["positive"] == (item["score"] >= THRESHOLDS[item["label"]])
    top = classifier(signal, sampling_rate=250, leads=JEPA_LEADS, top_k=1)
    assert top == result[:1]
    logits = classifier(signal, sampling_rate=250, leads=JEPA_LEADS, function_to_apply="none")
    np.testing.assert_allclose(
        sorted(item["score"] for item in logits), sorted(torch.logit(torch.tensor(expected)).tolist()), atol=1e-5
    )
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        classifier(signal, sampling_rate=250, leads=JEPA_LEADS, top_k=0)


def test_single_label_classifier_softmaxes(single_label_dir):
    classifier = pipeline("ecg-classification", model=single_label_dir)
    signal = _records(1)[0]
    result = classifier(signal, sampling_rate=100, leads=list(STANDARD_LEADS))
    expected = _direct_scores(single_label_dir, signal, 100, list(STANDARD_LEADS), lambda x: x.softmax(-1))
    np.testing.assert_allclose(sorted(item["score"] for item in result), sorted(expected), atol=1e-6)
    assert sum(item["score"] for item in result) == pytest.approx(1.0, abs=1e-5)
    assert all("positive" not in item for item in result)


def test_classification_pipeline_refuses_a_model_without_a_classifier_head(tmp_path):
    from ecg_hub.modeling import EcgJepaModel

    EcgJepaModel(tiny_ecg_jepa_config()).save_pretrained(tmp_path)
    EcgFeatureExtractor.from_preset("ecg_jepa", num_samples=500).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="ForSequenceClassification"):
        pipeline("ecg-classification", model=str(tmp_path))  # would otherwise load with a random head


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_classification_batched_equals_unbatched_with_a_worker(single_label_dir, batch_size):
    classifier = pipeline("ecg-classification", model=single_label_dir)
    signals = _records(5, seed=3)
    kwargs = {"sampling_rate": 100, "leads": list(STANDARD_LEADS)}
    one = [classifier(signal, **kwargs) for signal in signals]
    batched = classifier(signals, batch_size=batch_size, num_workers=1, **kwargs)
    assert len(batched) == 5
    for single, together in zip(one, batched):
        assert [item["label"] for item in together] == [item["label"] for item in single]
        np.testing.assert_allclose([item["score"] for item in together], [item["score"] for item in single], atol=1e-5)


def test_windows_aggregate_a_30_s_record(single_label_dir):
    """window_stride scores every 4 s window of a 30 s record (the last one aligned to the end) and
    averages (or maxes) the probabilities; without it the record is cropped, with one warning."""
    classifier = pipeline("ecg-classification", model=single_label_dir)
    leads = list(STANDARD_LEADS)
    record = _records(1, samples=3000, seed=7)[0]  # 30 s at 100 Hz; the model sees 4 s (400 samples)
    starts = [*range(0, 2601, 400), 2600]  # 0, 400, ..., 2400, then 2600 so the last 2 s are covered
    starts = sorted(set(starts))
    per_window = np.stack(
        [_direct_scores(single_label_dir, record[:, s : s + 400], 100, leads, lambda x: x.softmax(-1)) for s in starts]
    )
    for aggregate, expected in (("mean", per_window.mean(0)), ("max", per_window.max(0))):
        with warnings.catch_warnings():
            warnings.simplefilter("error", EcgInputReducedWarning)  # covering the whole record: no warning
            result = classifier(record, sampling_rate=100, leads=leads, window_stride=400, aggregate=aggregate)
        scores = {item["label"]: item["score"] for item in result}
        np.testing.assert_allclose([scores[NAMES[i]] for i in range(3)], expected, atol=1e-6)
    # Batched windows (records with different numbers of windows) give the same answers.
    short = _records(1, samples=500, seed=8)[0]
    batched = classifier([record, short, record], sampling_rate=100, leads=leads, window_stride=400, batch_size=4)
    alone = [classifier(x, sampling_rate=100, leads=leads, window_stride=400) for x in (record, short, record)]
    for together, single in zip(batched, alone):
        np.testing.assert_allclose([i["score"] for i in together], [i["score"] for i in single], atol=1e-6)

    with pytest.warns(EcgInputReducedWarning, match=r"3 of 3 record\(s\) were cropped") as caught:
        classifier([record, record, record], sampling_rate=100, leads=leads)
    reduced = [w for w in caught if issubclass(w.category, EcgInputReducedWarning)]
    assert len(reduced) == 1  # once per call, naming the records
    assert "#0 of the call, #1 of the call, #2 of the call" in str(reduced[0].message)
    assert "30 s -> 4 s" in str(reduced[0].message)


def test_zero_filled_leads_warn_once_per_call(multi_label_dir):
    classifier = pipeline("ecg-classification", model=multi_label_dir)
    one_lead = _records(2, leads=1, samples=500, seed=9)
    with pytest.warns(EcgInputReducedWarning, match=r"2 of 2 record\(s\) lack more than half") as caught:
        classifier(one_lead, sampling_rate=250, leads=["II"])
    assert len([w for w in caught if issubclass(w.category, EcgInputReducedWarning)]) == 1
    with warnings.catch_warnings():  # five of eight leads present: no warning
        warnings.simplefilter("error", EcgInputReducedWarning)
        classifier(_records(1, leads=5, samples=500)[0], sampling_rate=250, leads=JEPA_LEADS[:5])


def test_feature_extractor_windows_and_warning_switch():
    extractor = EcgFeatureExtractor(sampling_rate=100, num_samples=400, leads=["I", "II"])
    record = np.arange(2 * 1000, dtype=np.float32).reshape(2, 1000) / 1000
    features = extractor([record, record[:, :300]], sampling_rate=100, leads=["I", "II"], window_stride=350)
    # starts 0, 350, then 600 (not 700: the last window ends at the record's end); the short record
    # is one padded window.
    assert features["input_values"].shape == (4, 2, 400)
    np.testing.assert_array_equal(features["window_record_index"], [0, 0, 0, 1])
    np.testing.assert_allclose(features["input_values"][1], record[:, 350:750])
    np.testing.assert_allclose(features["input_values"][2], record[:, 600:1000])
    assert features["attention_mask"][:3].all() and features["attention_mask"][3].sum() == 300
    with pytest.raises(ValueError, match="window_stride must be a positive number of samples"):
        extractor(record, sampling_rate=100, leads=["I", "II"], window_stride=0)
    with pytest.raises(ValueError, match="window_stride is for inference"):
        extractor(record, sampling_rate=100, leads=["I", "II"], window_stride=100, training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EcgInputReducedWarning)
        extractor(record, sampling_rate=100, leads=["I", "II"], training=True)  # augmentation crops quietly
        extractor(record, sampling_rate=100, leads=["I", "II"], warn_on_reduction=False)
    with pytest.warns(EcgInputReducedWarning, match="10 s -> 4 s") as caught:
        extractor([record, record[:, :300]], sampling_rate=100, leads=["I", "II"], record_ids=["long", "short"])
    assert caught[0].message.kind == "cropped" and caught[0].message.record_ids == ["long"]


def test_pipelines_read_record_paths(single_label_dir, shared_data, tmp_path):
    """A WFDB record stem (PTB-XL), a PhysioNet CinC .mat with its header, and a list of them, give
    what the arrays read from those files give."""
    classifier = pipeline("ecg-classification", model=single_label_dir)
    paths = [
        str(shared_data / "ptbxl" / "records500" / "00000" / "00001_hr"),
        str(shared_data / "cinc2021_sample" / "G12EC" / "E00001.mat"),
    ]
    for path, result in zip(paths, classifier(paths)):
        record = read_record(path)
        expected = classifier(record.signal, sampling_rate=record.sampling_rate, leads=record.leads)
        assert [i["label"] for i in result] == [i["label"] for i in expected]
        np.testing.assert_allclose([i["score"] for i in result], [i["score"] for i in expected], atol=1e-6)
    # A record a user wrote with wfdb: one lead, so the zero-fill warning names the file's record.
    wfdb.wrsamp("wearable", fs=100, units=["mV"], sig_name=["I"], p_signal=_records(1, 1, 1000)[0].T.astype(np.float64),
                fmt=["16"], write_dir=str(tmp_path))
    with pytest.warns(EcgInputReducedWarning, match="wearable"):
        classifier(str(tmp_path / "wearable"), window_stride=400)
    with pytest.raises(ValueError, match="no known ECG format"):
        classifier(str(tmp_path / "missing.txt"))
