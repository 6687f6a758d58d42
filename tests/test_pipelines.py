"""transformers pipelines: zero-shot-ecg-classification (documented output, prompt ensembles, scoring)
and ecg-feature-extraction, loaded by task name from saved checkpoints."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ecg_hub.modeling import EcgFeatureExtractor
from ecg_hub.modeling.configuration_ecg_resnet import EcgResNetConfig
from ecg_hub.modeling.configuration_etp import EtpConfig
from ecg_hub.modeling.leads import STANDARD_LEADS
from ecg_hub.modeling.modeling_ecg_resnet import EcgResNetModel
from ecg_hub.modeling.modeling_etp import EtpModel
from ecg_hub.modeling.processing_etp import EtpProcessor
from transformers import BertConfig, pipeline
from transformers.pipelines import PIPELINE_REGISTRY

import ecg_hub  # noqa: F401  (registers models, processors and the pipelines)
from ecg_hub.data.text_collators import train_report_tokenizer
from ecg_hub.pipelines import (
    DEFAULT_PROMPT_TEMPLATES,
    EcgFeatureExtractionPipeline,
    ZeroShotEcgClassificationPipeline,
    build_class_prompts,
)

LEADS = list(STANDARD_LEADS)
LABELS = ["SR", "SB", "ST", "AF"]
DESCRIPTIONS = {"SB": ["sinus bradycardia", "slow heart rate"], "AF": "atrial fibrillation"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def etp_dir(tmp_path_factory):
    """A tiny (untrained) ETP checkpoint with its processor, as the pretraining loop saves it."""
    torch.manual_seed(0)
    tokenizer = train_report_tokenizer(
        ["sinus rhythm", "sinus bradycardia slow heart rate", "sinus tachycardia", "atrial fibrillation",
         "an ECG showing", "electrocardiogram with", "SR SB ST AF"] * 3,
        vocab_size=100,
    )
    config = EtpConfig(
        ecg_config=EcgResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8, sampling_rate=100, num_samples=500),
        text_config=BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=64),
        projection_dim=16, text_projection_hidden_dim=16, freeze_text_layers=0,
    )
    path = tmp_path_factory.mktemp("etp")
    EtpModel(config).save_pretrained(path)
    EtpProcessor(EcgFeatureExtractor.from_preset("etp", sampling_rate=100, num_samples=500), tokenizer).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def classifier(etp_dir):
    return pipeline("zero-shot-ecg-classification", model=etp_dir)


@pytest.fixture(scope="module")
def signals():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 12, 700)).astype(np.float32)


def test_tasks_are_registered_and_load_by_name(classifier):
    tasks = PIPELINE_REGISTRY.get_supported_tasks()
    assert "zero-shot-ecg-classification" in tasks and "ecg-feature-extraction" in tasks
    assert isinstance(classifier, ZeroShotEcgClassificationPipeline)
    assert isinstance(classifier.model, EtpModel) and isinstance(classifier.processor, EtpProcessor)


def test_zero_shot_returns_the_documented_structure(classifier, signals):
    one = classifier(signals[0], sampling_rate=100, leads=LEADS, candidate_labels=LABELS, class_descriptions=DESCRIPTIONS)
    assert isinstance(one, list) and len(one) == 4
    assert all(set(item) == {"label", "score"} and isinstance(item["score"], float) for item in one)
    assert sorted(item["label"] for item in one) == sorted(LABELS)
    scores = [item["score"] for item in one]
    assert scores == sorted(scores, reverse=True)  # best first
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)  # softmax (single-label) by default

    # A (batch, leads, samples) array, a list of rows and a Dataset give one list per record, in order.
    batch = classifier(signals, sampling_rate=100, leads=LEADS, candidate_labels=LABELS, top_k=2)
    assert len(batch) == 3 and all(len(result) == 2 for result in batch)
    rows = [{"signal": s, "sampling_rate": 100, "leads": LEADS} for s in signals]
    from_rows = classifier(rows, candidate_labels=LABELS, top_k=2)
    import datasets

    from_dataset = classifier(datasets.Dataset.from_list(rows), candidate_labels=LABELS, top_k=2)
    for a, b, c in zip(batch, from_rows, from_dataset):
        assert [x["label"] for x in a] == [x["label"] for x in b] == [x["label"] for x in c]
        np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in c], atol=1e-6)

    multi = classifier(signals[0], sampling_rate=100, leads=LEADS, candidate_labels=LABELS, multi_label=True)
    multi_scores = [item["score"] for item in multi]
    assert all(0 < s < 1 for s in multi_scores) and multi_scores == sorted(multi_scores, reverse=True)
    assert sum(multi_scores) != pytest.approx(1.0, abs=1e-3)


def test_prompt_ensemble_and_cosine_scores_match_a_manual_computation(classifier, etp_dir, signals):
    templates = ["{}", "an ECG showing {}", "{label}: {description}"]
    result = classifier(signals[1], sampling_rate=100, leads=LEADS, candidate_labels=LABELS,
                        class_descriptions=DESCRIPTIONS, prompt_templates=templates, function_to_apply="none")
    model, processor = classifier.model, classifier.processor
    prompts = build_class_prompts(LABELS, DESCRIPTIONS, templates)
    assert prompts[1] == ["sinus bradycardia", "an ECG showing sinus bradycardia", "SB: sinus bradycardia",
                          "slow heart rate", "an ECG showing slow heart rate", "SB: slow heart rate"]
    with torch.no_grad():
        class_vectors = []
        for class_prompts in prompts:
            text = processor(text=class_prompts, return_tensors="pt")
            embeds = F.normalize(model.get_text_features(**text).pooler_output, dim=-1)
            class_vectors.append(F.normalize(embeds.mean(0), dim=-1))
        inputs = processor(ecg=signals[1], sampling_rate=100, leads=LEADS, return_tensors="pt")
        ecg = F.normalize(model.get_ecg_features(**inputs).pooler_output, dim=-1)[0]
    expected = {label: float(ecg @ vector) for label, vector in zip(LABELS, class_vectors)}
    for item in result:
        assert item["score"] == pytest.approx(expected[item["label"]], abs=1e-5)

    softmax = classifier(signals[1], sampling_rate=100, leads=LEADS, candidate_labels=LABELS,
                         class_descriptions=DESCRIPTIONS, prompt_templates=templates)
    logits = torch.tensor([expected[label] for label in LABELS]) / 0.07
    probabilities = dict(zip(LABELS, logits.softmax(-1).tolist()))
    for item in softmax:
        assert item["score"] == pytest.approx(probabilities[item["label"]], abs=1e-5)


def test_prompt_building_and_bad_arguments(classifier, signals):
    assert build_class_prompts(["AF"]) == [[t.format("AF") for t in DEFAULT_PROMPT_TEMPLATES]]
    with pytest.raises(ValueError, match="placeholder"):
        build_class_prompts(["AF"], prompt_templates=["an ECG"])
    with pytest.raises(ValueError, match="not in candidate_labels"):
        build_class_prompts(["AF"], class_descriptions={"MI": "infarction"})
    with pytest.raises(ValueError, match="duplicates"):
        build_class_prompts(["AF", "AF"])
    with pytest.raises(ValueError, match="candidate_labels"):
        classifier(signals[0], sampling_rate=100, leads=LEADS)
    with pytest.raises(ValueError, match="function_to_apply"):
        classifier(signals[0], sampling_rate=100, leads=LEADS, candidate_labels=LABELS, function_to_apply="tanh")
    with pytest.raises(ValueError, match="sampling_rate"):
        classifier(signals[0], leads=LEADS, candidate_labels=LABELS)


def test_feature_extraction_pipeline(etp_dir, signals, tmp_path):
    embedder = pipeline("ecg-feature-extraction", model=etp_dir)
    assert isinstance(embedder, EcgFeatureExtractionPipeline)
    projected = embedder(signals[0], sampling_rate=100, leads=LEADS)
    assert len(projected) == 16 and np.linalg.norm(projected) == pytest.approx(1.0, abs=1e-5)
    pooled = embedder(signals, sampling_rate=100, leads=LEADS, embedding="pooled", return_tensors=True)
    assert len(pooled) == 3 and pooled[0].shape == (16,)  # the ResNet's last stage width
    model = embedder.model
    inputs = EcgFeatureExtractor.from_pretrained(etp_dir)(signals[2], sampling_rate=100, leads=LEADS, return_tensors="pt")
    with torch.no_grad():
        expected = model.ecg_encoder(inputs["input_values"], attention_mask=inputs["attention_mask"]).pooler_output[0]
    torch.testing.assert_close(pooled[2], expected)

    # Any ECG encoder checkpoint: the pooled feature (no text tower needed).
    EcgResNetModel(EcgResNetConfig(hidden_sizes=[8], depths=[1], embedding_size=8, num_samples=500)).save_pretrained(tmp_path)
    EcgFeatureExtractor.from_preset("etp", sampling_rate=100, num_samples=500).save_pretrained(tmp_path)
    resnet = pipeline("ecg-feature-extraction", model=str(tmp_path))
    assert len(resnet(signals[0], sampling_rate=100, leads=LEADS)) == 8
    with pytest.raises(ValueError, match="get_ecg_features"):
        resnet(signals[0], sampling_rate=100, leads=LEADS, embedding="projection")
    with pytest.raises(ValueError, match="ECG-text model"):
        pipeline("zero-shot-ecg-classification", model=str(tmp_path), processor=EtpProcessor(
            EcgFeatureExtractor.from_pretrained(tmp_path), train_report_tokenizer(["a b"], vocab_size=30)))


@pytest.mark.parametrize(("batch_size", "num_workers"), [(1, 0), (2, 0), (3, 0), (2, 1)])
def test_batched_pipelines_equal_unbatched(etp_dir, classifier, batch_size, num_workers):
    """batch_size > 1 runs records through one forward and unbatches them again: one result per
    record, equal to one-by-one (was: the embedding's dimension taken for the batch, and a crash on
    the float logit scale in zero-shot)."""
    signals = [np.random.default_rng(seed).normal(size=(12, 500)).astype(np.float32) for seed in range(5)]
    embedder = pipeline("ecg-feature-extraction", model=etp_dir)
    one = embedder(signals, sampling_rate=100, leads=LEADS)
    batched = embedder(signals, sampling_rate=100, leads=LEADS, batch_size=batch_size, num_workers=num_workers)
    assert len(batched) == len(signals) and all(len(vector) == 16 for vector in batched)
    np.testing.assert_allclose(np.array(batched), np.array(one), atol=1e-5)

    kwargs = {"sampling_rate": 100, "leads": LEADS, "candidate_labels": LABELS, "class_descriptions": DESCRIPTIONS}
    one = classifier(signals, **kwargs)
    batched = classifier(signals, batch_size=batch_size, num_workers=num_workers, **kwargs)
    assert len(batched) == len(signals)
    for single, together in zip(one, batched):
        assert [item["label"] for item in together] == [item["label"] for item in single]
        np.testing.assert_allclose([item["score"] for item in together], [item["score"] for item in single], atol=1e-5)
