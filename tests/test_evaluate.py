"""Evaluation protocol: linear probe on cached features, results JSON, zero-shot hook, CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from ecg_hub.modeling import STANDARD_LEADS, EcgFeatureExtractor
from sklearn.metrics import roc_auc_score

from ecg_hub.evaluation.linear_probe import (
    LinearProbeConfig,
    cached_features,
    extract_features,
    head_scores,
    train_linear_probe,
)
from ecg_hub.evaluation.metrics import classification_metrics
from ecg_hub.evaluation.zero_shot import zero_shot_evaluate

CLASSES = ["I_HIGH", "II_HIGH", "III_HIGH"]


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def toy_dataset(num_records=90, seed=0, num_samples=600, sampling_rate=100):
    """Contract-format dataset (signal mV, sampling_rate, leads, record_id, split, a
    Sequence(ClassLabel) column) whose class c has a large 5-Hz oscillation on lead c."""
    import datasets

    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sampling_rate
    rows = {k: [] for k in ("signal", "sampling_rate", "leads", "record_id", "patient_id", "toy", "split")}
    for i in range(num_records):
        label = i % 3
        signal = rng.normal(0, 0.1, (12, num_samples)).astype(np.float32)
        signal[label] += np.sin(2 * np.pi * 5 * t + rng.uniform(0, 6)).astype(np.float32)
        rows["signal"].append(signal)
        rows["sampling_rate"].append(sampling_rate)
        rows["leads"].append(list(STANDARD_LEADS))
        rows["record_id"].append(f"toy{i:04d}")
        rows["patient_id"].append(f"p{i:04d}")
        rows["toy"].append([label])
        rows["split"].append(["train", "train", "train", "validation", "test"][(i // 3) % 5])
    features = datasets.Features(
        {
            "signal": datasets.Array2D((12, num_samples), "float32"),
            "sampling_rate": datasets.Value("int32"),
            "leads": datasets.Sequence(datasets.Value("string")),
            "record_id": datasets.Value("string"),
            "patient_id": datasets.Value("string"),
            "toy": datasets.Sequence(datasets.ClassLabel(names=CLASSES)),
            "split": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def tiny_feature_extractor():
    return EcgFeatureExtractor(sampling_rate=100, leads=STANDARD_LEADS, num_samples=500)


def tiny_resnet_dir(tmp_path, seed=0):
    """A saved tiny EcgResNet encoder + feature extractor (a checkpoint folder)."""
    from ecg_hub.modeling.configuration_ecg_resnet import EcgResNetConfig
    from ecg_hub.modeling.modeling_ecg_resnet import EcgResNetModel

    import ecg_hub  # noqa: F401

    torch.manual_seed(seed)
    config = EcgResNetConfig(
        sampling_rate=100, num_samples=500, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1]
    )
    path = tmp_path / "tiny-resnet"
    EcgResNetModel(config).save_pretrained(path)
    tiny_feature_extractor().save_pretrained(path)
    return path


def _cluster_splits(num_features=64, num_classes=3, noise=1.5):
    """Train / val / test features drawn around the same class centres."""
    centres = np.random.default_rng(0).normal(0, 1.0, (num_classes, num_features))

    def draw(num_records, seed):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, num_classes, num_records)
        return (centres[y] + rng.normal(0, noise, (num_records, num_features))).astype(np.float32), np.eye(num_classes)[y]

    return draw(300, 1), draw(100, 2), draw(100, 3)


def test_linear_probe_on_cached_features_selects_on_validation():
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = _cluster_splits()
    config = LinearProbeConfig(max_epochs=60, patience=5, seed=3)
    probe = train_linear_probe(x_train, y_train, x_val, y_val, config=config)
    again = train_linear_probe(x_train, y_train, x_val, y_val, config=config)
    assert torch.equal(probe.head.weight, again.head.weight)  # seeded: reproducible
    best = max(h["val_macro_auroc"] for h in probe.history)
    assert probe.val_metrics["macro_auroc"] == pytest.approx(best)
    assert probe.history[probe.best_epoch - 1]["val_macro_auroc"] == pytest.approx(best)
    test_scores = head_scores(probe.head, x_test, "multi_label_classification")
    assert roc_auc_score(y_test, test_scores, average="macro") > 0.95
    # Single-label (cross-entropy) on the same features.
    single = train_linear_probe(
        x_train, y_train.argmax(1), x_val, y_val.argmax(1), problem_type="single_label_classification", config=config
    )
    scores = head_scores(single.head, x_test, "single_label_classification")
    assert np.allclose(scores.sum(1), 1) and classification_metrics(y_test.argmax(1), scores)["macro_auroc"] > 0.95


def test_features_extracted_once_and_cached(tmp_path, monkeypatch):
    from transformers import AutoModel

    from ecg_hub.evaluation import linear_probe

    dataset = toy_dataset(30)
    model = AutoModel.from_pretrained(tiny_resnet_dir(tmp_path))
    fe = tiny_feature_extractor()
    direct = extract_features(model, dataset, fe, batch_size=8)
    assert direct.shape == (30, 32) and direct.dtype == np.float32
    first = cached_features(model, dataset, fe, cache_dir=tmp_path / "cache", batch_size=8)
    assert np.allclose(first, direct, atol=1e-6)
    assert len(list((tmp_path / "cache").glob("features-*.safetensors"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("features recomputed despite the cache")

    monkeypatch.setattr(linear_probe, "extract_features", fail)
    assert np.array_equal(cached_features(model, dataset, fe, cache_dir=tmp_path / "cache", batch_size=8), first)
    with torch.no_grad():  # other weights -> another cache key -> recomputed
        next(model.parameters()).add_(1.0)
    with pytest.raises(AssertionError, match="recomputed"):
        cached_features(model, dataset, fe, cache_dir=tmp_path / "cache", batch_size=8)


def _run_cli(argv):
    from ecg_hub.commands import evaluate

    parser = argparse.ArgumentParser(prog="ecg-hub")
    evaluate.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_evaluate_cli_linear_probe_writes_results_json(tmp_path, capsys):
    from ecg_hub.hub import load_results

    data_dir = tmp_path / "toy-data"
    toy_dataset(120).save_to_disk(str(data_dir))
    model_dir = tiny_resnet_dir(tmp_path)
    out = tmp_path / "results.json"
    argv = [
        "evaluate", str(model_dir), "--dataset", str(data_dir), "--labels", "toy", "--protocol", "linear-probe",
        "--fractions", "0.25,1", "--seeds", "1,2", "--bootstrap", "50", "--probe-epochs", "40",
        "--out", str(out), "--dataset-name", "toy",
    ]
    assert _run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "linear-probe" in printed and "25%" in printed and "100%" in printed
    document = json.loads(out.read_text())
    assert load_results(out)["model"] == str(model_dir)  # the Hub publisher accepts it
    assert document["dataset"]["label_set"] == "toy" and document["dataset"]["class_names"] == CLASSES
    assert document["dataset"]["split_records"] == {"train": 72, "validation": 24, "test": 24}
    assert [(r["protocol"], r["fraction"], r["seeds"]) for r in document["results"]] == [
        ("linear-probe", 0.25, [1, 2]),
        ("linear-probe", 1.0, [1]),
    ]
    full = document["results"][1]
    assert set(full["metrics"]) == {"macro_auroc", "macro_auprc", "fmax", "macro_f1"}
    assert full["metrics_std"]["macro_auroc"] == 0.0 and set(full["per_class_auroc"]) == set(CLASSES)
    low, high = full["metrics_ci95"]["macro_auroc"]
    assert low <= full["metrics"]["macro_auroc"] <= high
    # Even a random tiny CNN's pooled features separate "which lead oscillates" linearly.
    assert full["metrics"]["macro_auroc"] > 0.9
    quarter = document["results"][0]
    assert [r["train_records"] for r in quarter["runs"]] == [18, 18]
    assert quarter["metrics_std"]["macro_auroc"] == pytest.approx(
        np.std([r["metrics"]["macro_auroc"] for r in quarter["runs"]])
    )


def test_random_init_baseline_changes_features(tmp_path):
    from ecg_hub.loading import load_backbone

    model_dir = tiny_resnet_dir(tmp_path)
    pretrained = load_backbone(str(model_dir))
    random = load_backbone(str(model_dir), random_init=True, seed=5)
    assert type(random) is type(pretrained)
    assert not torch.equal(next(random.parameters()), next(pretrained.parameters()))


# --- zero-shot --------------------------------------------------------------------------------


def test_zero_shot_with_score_function_equals_sklearn():
    dataset = toy_dataset(30).filter(lambda r: r["split"] == "test" or True)

    def lead_power(rows, prompts):
        # Prompt "lead k" -> the record's power on lead k-1.
        leads = [int(p[0].split()[-1]) - 1 for p in prompts]
        return np.stack([np.asarray(r["signal"])[leads].std(axis=1) for r in rows]) / 2.0

    metrics = zero_shot_evaluate(
        lead_power, dataset=dataset, label_column="toy",
        class_prompts={"I_HIGH": "lead 1", "II_HIGH": ["lead 2"], "iii_high": "lead 3"}, return_scores=True,
    )
    labels = np.eye(3)[[row[0] for row in dataset["toy"]]]
    assert metrics["macro_auroc"] == pytest.approx(roc_auc_score(labels, metrics["scores"], average="macro"))
    assert metrics["macro_auroc"] == 1.0
    with pytest.raises(ValueError, match="II_HIGH"):
        zero_shot_evaluate(lead_power, dataset=dataset, label_column="toy", class_prompts={"I_HIGH": "lead 1"})


class _ToyClipModel(torch.nn.Module):
    """CLIP-style toy: text = embedding of the last prompt word; ECG = per-lead power of leads I-III."""

    def __init__(self, vocab_size):
        super().__init__()
        self.words = torch.nn.Embedding(vocab_size, 3)
        with torch.no_grad():
            self.words.weight.zero_()
            self.words.weight[3:6] = torch.eye(3)  # ids 3, 4, 5 = "one", "two", "three"
        self.logit_scale = torch.nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))

    def get_text_features(self, input_ids, attention_mask=None):
        mask = attention_mask.unsqueeze(-1).float()
        return (self.words(input_ids) * mask).sum(1)

    def get_ecg_features(self, input_values, attention_mask=None, lead_mask=None):
        return input_values[:, :3].std(dim=-1)


def _toy_processor():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "lead": 2, "one": 3, "two": 4, "three": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]")
    return argparse.Namespace(tokenizer=fast, feature_extractor=tiny_feature_extractor()), len(vocab)


def test_zero_shot_with_model_and_processor_prompt_ensembles():
    processor, vocab_size = _toy_processor()
    model = _ToyClipModel(vocab_size)
    dataset = toy_dataset(24)
    prompts = {"I_HIGH": ["lead one", "one"], "II_HIGH": "lead two", "III_HIGH": ["three", "lead three"]}
    cosine = zero_shot_evaluate(model=model, processor=processor, dataset=dataset, label_column="toy",
                                class_prompts=prompts, return_scores=True)
    assert cosine["scoring"] == "cosine" and cosine["macro_auroc"] == 1.0
    assert cosine["scores"].shape == (24, 3) and np.all(np.abs(cosine["scores"]) <= 1 + 1e-6)
    assert cosine["prompts"]["II_HIGH"] == ["lead two"]
    softmax = zero_shot_evaluate(model=model, processor=processor, dataset=dataset, label_column="toy",
                                 class_prompts=prompts, scoring="softmax", return_scores=True)
    assert np.allclose(softmax["scores"].sum(1), 1.0, atol=1e-5) and softmax["macro_auroc"] == 1.0
    with pytest.raises(ValueError, match="get_ecg_features"):
        zero_shot_evaluate(model=torch.nn.Linear(1, 1), processor=processor, dataset=dataset,
                           label_column="toy", class_prompts=prompts)


def test_evaluate_cli_finetune_protocol_random_init(tmp_path):
    data_dir = tmp_path / "toy-data"
    toy_dataset(60).save_to_disk(str(data_dir))
    model_dir = tiny_resnet_dir(tmp_path)
    out = tmp_path / "ft.json"
    argv = [
        "evaluate", str(model_dir), "--dataset", str(data_dir), "--labels", "toy", "--protocol", "finetune",
        "--fractions", "1", "--random-init", "--bootstrap", "0", "--work-dir", str(tmp_path / "work"),
        "--finetune-arg", "num_train_epochs=2", "--finetune-arg", "per_device_train_batch_size=8",
        "--finetune-arg", "learning_rate=1e-3", "--out", str(out),
    ]
    assert _run_cli(argv) == 0
    document = json.loads(out.read_text())
    assert document["init"] == "random"
    (entry,) = document["results"]
    assert entry["protocol"] == "finetune" and entry["seeds"] == [42] and entry["runs"][0]["epochs"] == 2.0
    assert 0.0 <= entry["metrics"]["macro_auroc"] <= 1.0 and "metrics_ci95" not in entry
    assert (tmp_path / "work" / "finetune-f1-s42").is_dir()


def test_quickstart_pretrains_then_probes(tmp_path, capsys):
    from ecg_hub.commands import quickstart

    parser = argparse.ArgumentParser(prog="ecg-hub")
    quickstart.register(parser.add_subparsers())
    args = parser.parse_args(
        ["quickstart", "--out", str(tmp_path / "qs"), "--num-records", "60", "--steps", "2", "--fractions", "1"]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "linear probe on rhythm" in printed and "results_pretrained.json" in printed.replace("\n", "")
    for init in ("random", "pretrained"):
        document = json.loads((tmp_path / "qs" / f"results_{init}.json").read_text())
        assert document["init"] == init and document["dataset"]["label_set"] == "rhythm"
        assert document["model"] == str(tmp_path / "qs" / "pretrain" / "model")
        assert 0.0 <= document["results"][0]["metrics"]["macro_auroc"] <= 1.0


def test_zero_shot_plugs_into_etp_model_and_processor():
    """A (tiny, random) ETP dual encoder + EtpProcessor: scores are the cosines of its own embeddings."""
    from ecg_hub.modeling.configuration_ecg_resnet import EcgResNetConfig
    from ecg_hub.modeling.configuration_etp import EtpConfig
    from ecg_hub.modeling.modeling_etp import EtpModel
    from ecg_hub.modeling.processing_etp import EtpProcessor
    from transformers import BertConfig

    from ecg_hub.data.text_collators import train_report_tokenizer

    prompts = {"I_HIGH": ["oscillation in lead one", "lead one"], "II_HIGH": "lead two", "III_HIGH": "lead three"}
    tokenizer = train_report_tokenizer(["oscillation in lead one two three"] * 3, vocab_size=60)
    torch.manual_seed(0)
    config = EtpConfig(
        ecg_config=EcgResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8, sampling_rate=100, num_samples=500),
        text_config=BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=32),
        projection_dim=8, text_projection_hidden_dim=8, text_pooling="mean",
    )
    model = EtpModel(config).eval()
    processor = EtpProcessor(tiny_feature_extractor(), tokenizer, max_text_length=16)
    dataset = toy_dataset(12)
    metrics = zero_shot_evaluate(model=model, processor=processor, dataset=dataset, label_column="toy",
                                 class_prompts=prompts, return_scores=True, batch_size=5)
    with torch.no_grad():
        ecg = processor(ecg=list(dataset), return_tensors="pt")
        ecg_embeds = torch.nn.functional.normalize(
            model.get_ecg_features(ecg["input_values"], ecg_attention_mask=ecg["ecg_attention_mask"]).pooler_output, dim=-1
        )
        classes = []
        for name in CLASSES:
            texts = prompts[name] if isinstance(prompts[name], list) else [prompts[name]]
            tokens = processor(text=texts, return_tensors="pt")
            text = model.get_text_features(tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
            classes.append(torch.nn.functional.normalize(torch.nn.functional.normalize(text, dim=-1).mean(0), dim=-1))
    expected = (ecg_embeds @ torch.stack(classes).T).numpy()
    np.testing.assert_allclose(metrics["scores"], expected, atol=1e-5)
    assert set(metrics) >= {"macro_auroc", "macro_auprc", "fmax", "per_class_auroc"}


# --- shared helpers: results schema, atomic JSON, keyword filter ---------------------------------


def test_results_writer_checks_the_schema_and_the_reader_reads_it(tmp_path):
    from ecg_hub.results import ResultsDocument, aggregate_runs, load_results, score_run, write_results

    _, (_, y_val), (_, y_test) = _cluster_splits()
    rng = np.random.default_rng(0)
    val_scores, test_scores = rng.random(y_val.shape), rng.random(y_test.shape)
    run = score_run(7, 300, y_val, val_scores, y_test, test_scores, CLASSES, bootstrap=20, epochs=3.0)
    assert run["seed"] == 7 and run["epochs"] == 3.0 and set(run["ci95"]) >= {"macro_auroc"}
    entry = aggregate_runs("finetune", 1.0, [run], CLASSES)
    assert entry["train_records"] == 300 and entry["metrics_std"]["macro_auroc"] == 0.0
    assert entry["metrics_ci95"] == run["ci95"] and entry["runs"][0]["epochs"] == 3.0
    dataset = {"name": "toy", "label_set": "toy", "class_names": CLASSES}
    document = ResultsDocument(model="m", dataset=dataset, init="random", results=[entry])
    written = document.write(tmp_path / "sub" / "results.json")
    assert load_results(tmp_path / "sub" / "results.json") == written == document.to_dict()
    assert list(written) == ["ecg_hub_version", "model", "init", "dataset", "results"]
    assert not list((tmp_path / "sub").glob(".*.tmp"))  # the temporary file is gone
    bad = dict(written, results=[dict(entry, metrics={"macro_auroc": "high"})])
    with pytest.raises(ValueError, match=r"results\[0\].metrics.macro_auroc"):
        write_results(tmp_path / "bad.json", bad)
    assert not (tmp_path / "bad.json").exists()
    with pytest.raises(ValueError, match="init"):
        ResultsDocument(model="m", dataset=dataset, init="warm")


def test_write_json_atomic_and_accepted_kwargs(tmp_path):
    from ecg_hub.utils import accepted_kwargs, accepts_var_kwargs, write_json_atomic

    path = tmp_path / "a" / "b.json"
    write_json_atomic(path, {"b": 1, "a": [1.5]})
    assert path.read_text() == '{\n  "b": 1,\n  "a": [\n    1.5\n  ]\n}\n'
    write_json_atomic(path, {"b": 1, "a": 2}, sort_keys=True)
    assert list(json.loads(path.read_text())) == ["a", "b"] and [p.name for p in path.parent.iterdir()] == ["b.json"]

    def named(input_values, lead_mask=None):
        return input_values

    def anything(input_values, **kwargs):
        return kwargs

    inputs = {"input_values": 1, "lead_mask": 2, "attention_mask": 3}
    assert accepted_kwargs(named, inputs) == {"input_values": 1, "lead_mask": 2}
    assert accepted_kwargs(anything, inputs) == inputs
    assert accepted_kwargs(anything, inputs, explicit_only=("lead_mask",)) == {"input_values": 1, "attention_mask": 3}
    assert accepted_kwargs(named, inputs, explicit_only=("lead_mask",)) == {"input_values": 1, "lead_mask": 2}
    assert accepts_var_kwargs(anything) and not accepts_var_kwargs(named)
