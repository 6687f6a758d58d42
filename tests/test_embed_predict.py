"""``ecg-hub embed`` / ``ecg-hub predict`` (ecg_hub.batch_inference): the pipelines' numbers for
whole datasets and WFDB folders, resumable, multi-process, with every unusable record accounted for.

Tiny random models of every family that embeds (tests/model_battery.py configs); synthetic records
for everything that does not need real ECGs, PTB-XL records from ../shared/data for the truncated
file and the bfloat16 check.
"""

import argparse
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from ecg_hub.modeling import (
    Ecg2TokModel,
    EcgFeatureExtractor,
    EcgJepaForSequenceClassification,
    EcgJepaModel,
    EcgResNetForSequenceClassification,
    EtpModel,
    EtpProcessor,
)
from model_battery import tiny_ecg2tok_config, tiny_ecg_jepa_config, tiny_ecg_resnet_config, tiny_etp_config
from transformers import BertConfig, pipeline

import ecg_hub  # noqa: F401  (registers models, processors and pipelines)
from ecg_hub.batch_inference import embed_records, partial_dir, predict_records, skipped_path
from ecg_hub.data.synthetic import make_synthetic_dataset
from ecg_hub.data.text_collators import train_report_tokenizer
from ecg_hub.inference import resolve_inference_dtype as resolve_dtype

REPO_ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: bfloat16 autocast against float32, per record: cosine of the two embeddings at least this.
#: bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 % per operation); on 24 PTB-XL
#: records and three random seeds per family the lowest cosine measured was 0.99997 (ECG-JEPA
#: 0.999995, ECG2TOK 0.999999, ETP projection 0.99997, ETP pooled 0.99998), so 0.999 leaves a
#: 30-fold margin on the gap to 1. (Random-init ECG-JEPA pools to nearly the same vector for every
#: record, README "Fine-tuning and evaluation", so its cosine says little about record-to-record
#: differences; ECG2TOK's and ETP's embeddings do vary by record.)
BF16_MIN_COSINE = 0.999


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


def _save(model, extractor, path: Path) -> str:
    model.save_pretrained(path)
    extractor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny random checkpoints, each saved with its feature extractor."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    jepa_fe = EcgFeatureExtractor.from_preset("ecg_jepa", num_samples=500)
    resnet_fe = EcgFeatureExtractor.from_preset("etp", sampling_rate=100, num_samples=400)
    labels = {"id2label": {0: "AF", 1: "SB", 2: "SR"}, "label2id": {"AF": 0, "SB": 1, "SR": 2}}
    paths = {
        "jepa": _save(EcgJepaModel(tiny_ecg_jepa_config()), jepa_fe, root / "jepa"),
        "ecg2tok": _save(
            Ecg2TokModel(tiny_ecg2tok_config()),
            EcgFeatureExtractor.from_preset("ecg2tok", num_samples=500),
            root / "ecg2tok",
        ),
        "jepa_multi_label": _save(
            EcgJepaForSequenceClassification(
                tiny_ecg_jepa_config(problem_type="multi_label_classification", **labels)
            ),
            jepa_fe,
            root / "jepa_multi_label",
        ),
        "resnet_single_label": _save(
            EcgResNetForSequenceClassification(
                tiny_ecg_resnet_config(problem_type="single_label_classification", **labels)
            ),
            resnet_fe,
            root / "resnet_single_label",
        ),
    }
    # ETP with a real (tiny) tokenizer, as tests/test_pipelines.py's etp_dir.
    tokenizer = train_report_tokenizer(
        [
            "sinus rhythm",
            "sinus bradycardia slow heart rate",
            "atrial fibrillation irregular",
            "an ECG showing",
            "electrocardiogram with",
            "SR SB AF",
        ]
        * 3,
        vocab_size=100,
    )
    config = tiny_etp_config(
        text_config=BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
    )
    etp = root / "etp"
    EtpModel(config).save_pretrained(etp)
    EtpProcessor(resnet_fe, tokenizer).save_pretrained(etp)
    paths["etp"] = str(etp)
    return paths


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> str:
    """13 synthetic records (5 s at 250 Hz) saved as a prepared dataset; record 3 masks V2 and
    record 8 masks I (leads the models must see as missing)."""
    dataset = make_synthetic_dataset(num_records=13, seed=3, sampling_rate=250, duration_s=5.0)
    masks = [["V2"] if i == 3 else ["I"] if i == 8 else [] for i in range(len(dataset))]
    dataset = dataset.add_column("masked_leads", masks, feature=datasets.Sequence(datasets.Value("string")))
    path = tmp_path_factory.mktemp("records") / "synthetic"
    dataset.save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def ptbxl(shared_data, tmp_path_factory) -> str:
    from ecg_hub.data import prepare_ptbxl

    out = tmp_path_factory.mktemp("ptbxl") / "ptbxl"
    prepare_ptbxl(shared_data / "ptbxl", out, limit=24, progress=False)
    return str(out)


def _rows(path: str) -> list[dict]:
    return list(
        datasets.load_from_disk(path).with_format("numpy", columns=["signal"], output_all_columns=True)
    )


def _embeddings(path) -> np.ndarray:
    return np.stack(pq.read_table(path)["embedding"].to_numpy(zero_copy_only=False))


def _metadata(path) -> dict:
    return json.loads(pq.read_schema(path).metadata[b"ecg_hub"])


def _cli(argv: list[str]) -> int:
    """The command through ``ecg-hub`` when ecg_hub/cli.py registers it, else through a parser
    built with the command module's ``register`` (the same parser and ``run``)."""
    from ecg_hub import cli
    from ecg_hub.commands import embed, predict

    if argv[0] in cli.COMMAND_MODULES:
        return cli.main(argv)
    parser = argparse.ArgumentParser(prog="ecg-hub")
    subparsers = parser.add_subparsers(dest="command")
    embed.register(subparsers)
    predict.register(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


# --------------------------------------------------------------------------------------------------
# Same numbers as the pipelines
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "embedding"), [("jepa", None), ("ecg2tok", None), ("etp", None), ("etp", "pooled")]
)
def test_embed_equals_the_feature_extraction_pipeline(models, records, tmp_path, family, embedding):
    out = tmp_path / "embeddings.parquet"
    result = embed_records(
        models[family], dataset=records, out=out, embedding=embedding, batch_size=5, progress=False
    )
    assert result.complete and result.num_written == 13 and result.num_skipped == 0
    assert not partial_dir(out).exists()
    assert json.loads(skipped_path(out).read_text())["skipped"] == []

    table = pq.read_table(out)
    assert table.column_names == ["record_id", "source_index", "embedding"]
    rows = _rows(records)
    assert table["record_id"].to_pylist() == [row["record_id"] for row in rows]
    assert table["source_index"].to_pylist() == list(range(13))
    embedder = pipeline("ecg-feature-extraction", model=models[family])
    kwargs = {"embedding": embedding} if embedding else {}
    expected = np.array(embedder(rows, **kwargs))  # rows carry masked_leads: the pipeline honours them too
    np.testing.assert_allclose(_embeddings(out), expected, rtol=0, atol=2e-6)

    meta = _metadata(out)
    kind = embedding or ("projection" if family == "etp" else "pooled")
    assert (
        meta["embedding"] == kind
        and meta["normalize"] == (kind == "projection")
        and meta["dim"] == expected.shape[1]
    )
    assert meta["task"] == "embed" and meta["num_written"] == 13 and meta["input"]["num_records"] == 13
    assert meta["dtype_requested"] == "auto" and meta["dtype_reason"].startswith("auto:")
    assert meta["feature_extractor"]["sampling_rate"] == embedder.feature_extractor.sampling_rate


def test_embed_honours_masked_leads(models, records, tmp_path):
    """Record 3 masks V2: its embedding equals the record with V2 absent, not the one with V2."""
    out = tmp_path / "e.parquet"
    embed_records(models["jepa"], dataset=records, out=out, progress=False)
    row = _rows(records)[3]
    embedder = pipeline("ecg-feature-extraction", model=models["jepa"])
    keep = [i for i, lead in enumerate(row["leads"]) if lead != "V2"]
    without_v2 = embedder(
        row["signal"][keep], sampling_rate=row["sampling_rate"], leads=[row["leads"][i] for i in keep]
    )
    with_v2 = embedder(row["signal"], sampling_rate=row["sampling_rate"], leads=row["leads"])
    np.testing.assert_allclose(_embeddings(out)[3], without_v2, atol=2e-6)
    assert np.abs(_embeddings(out)[3] - np.array(with_v2)).max() > 1e-4


def test_predict_classifier_probabilities_and_labels(models, records, tmp_path):
    rows = _rows(records)
    for name, activation in (
        ("jepa_multi_label", torch.sigmoid),
        ("resnet_single_label", lambda x: x.softmax(-1)),
    ):
        out = tmp_path / f"{name}.csv"
        # One DataLoader worker: records are read and preprocessed in another process.
        result = predict_records(
            models[name],
            dataset=records,
            out=out,
            threshold=0.34,
            batch_size=4,
            num_workers=1,
            progress=False,
        )
        assert result.complete and result.num_written == 13
        frame = pd.read_csv(out, keep_default_na=False)
        assert list(frame.columns) == [
            "record_id",
            "source_index",
            "score_AF",
            "score_SB",
            "score_SR",
            "predicted_labels",
            "top_label",
        ]
        model = (
            EcgJepaForSequenceClassification
            if name.startswith("jepa")
            else EcgResNetForSequenceClassification
        )
        model = model.from_pretrained(models[name]).eval()
        extractor = EcgFeatureExtractor.from_pretrained(models[name])
        with torch.no_grad():
            expected = torch.cat(
                [activation(model(**extractor(row, return_tensors="pt")).logits) for row in rows]
            ).numpy()
        scores = frame[["score_AF", "score_SB", "score_SR"]].to_numpy()
        np.testing.assert_allclose(scores, expected, rtol=0, atol=2e-6)
        classes = np.array(["AF", "SB", "SR"])
        assert frame["predicted_labels"].tolist() == [";".join(classes[s >= 0.34]) for s in scores]
        assert frame["top_label"].tolist() == classes[scores.argmax(1)].tolist()
        meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
        assert meta["class_names"] == ["AF", "SB", "SR"]
        assert meta["thresholds"] == {"AF": 0.34, "SB": 0.34, "SR": 0.34} and meta["thresholds_from"] == "argument"
        if name == "resnet_single_label":
            assert meta["scoring"] == "softmax"
            np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
        else:
            assert meta["scoring"] == "sigmoid" and meta["problem_type"] == "multi_label_classification"

    # An encoder is no classifier: say so, and point at zero-shot.
    with pytest.raises(ValueError, match="ForSequenceClassification.*labels"):
        predict_records(models["jepa"], dataset=records, out=tmp_path / "x.csv", progress=False)


def test_predict_zero_shot_equals_the_pipeline(models, records, tmp_path, capsys):
    prompts = tmp_path / "prompts.json"  # CKEPE style: {class: description}; keys matched case-insensitively
    prompts.write_text(
        json.dumps(
            {
                "sr": "Sinus rhythm",
                "SB": "sinus bradycardia, slow heart rate",
                "AF": "atrial fibrillation, irregular",
                "MI": "not asked for",
            }
        )
    )
    labels = ["SR", "SB", "AF"]
    rows = _rows(records)
    classifier = pipeline("zero-shot-ecg-classification", model=models["etp"])
    descriptions = {
        "SR": "sinus rhythm",
        "SB": "sinus bradycardia, slow heart rate",
        "AF": "atrial fibrillation, irregular",
    }
    for scoring, function in (("softmax", "softmax"), ("none", "none")):
        out = tmp_path / f"zero_shot_{scoring}.csv"
        argv = [
            "predict",
            models["etp"],
            "--dataset",
            records,
            "--out",
            str(out),
            "--labels",
            ",".join(labels),
            "--prompts",
            str(prompts),
            "--batch-size",
            "6",
            "--no-progress",
            "--threshold",
            "0.3",
        ]
        assert _cli(argv + ["--scoring", scoring]) == 0
        frame = pd.read_csv(out, keep_default_na=False)
        results = classifier(
            rows, candidate_labels=labels, class_descriptions=descriptions, function_to_apply=function
        )
        expected = np.array(
            [[{r["label"]: r["score"] for r in result}[label] for label in labels] for result in results]
        )
        np.testing.assert_allclose(
            frame[[f"score_{label}" for label in labels]].to_numpy(), expected, rtol=0, atol=2e-6
        )
        meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
        assert meta["mode"] == "zero-shot" and meta["scoring"] == scoring and meta["class_names"] == labels
        assert meta["class_prompts"]["SB"][1] == "an ECG showing sinus bradycardia, slow heart rate"
    assert "wrote 13 predictions" in capsys.readouterr().out

    # A label the prompts file does not describe is an error naming it (nothing written).
    code = _cli(
        [
            "predict",
            models["etp"],
            "--dataset",
            records,
            "--out",
            str(tmp_path / "bad.csv"),
            "--labels",
            "SR,STTC",
            "--prompts",
            str(prompts),
            "--no-progress",
        ]
    )
    assert code == 2 and "STTC" in capsys.readouterr().err and not (tmp_path / "bad.csv").exists()


# --------------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------------


def test_a_resumed_embed_equals_an_uninterrupted_one(models, records, tmp_path, monkeypatch):
    settings = {"dataset": records, "batch_size": 3, "chunk_records": 3, "progress": False}
    (tmp_path / "whole").mkdir()
    whole = tmp_path / "whole" / "e.parquet"
    embed_records(models["jepa"], out=whole, **settings)

    # Stopped after 2 batches (as a kill between chunks would leave it), then rerun.
    (tmp_path / "stopped").mkdir()
    out = tmp_path / "stopped" / "e.parquet"
    first = embed_records(models["jepa"], out=out, max_batches=2, **settings)
    assert not first.complete and not out.exists() and first.processed == 6
    assert len(list(partial_dir(out).glob("chunk-*.json"))) == 2
    with pytest.raises(ValueError, match="normalize"):  # other settings do not mix with the saved chunks
        embed_records(models["jepa"], out=out, normalize=True, **settings)
    second = embed_records(models["jepa"], out=out, **settings)
    assert second.complete and second.resumed == 6 and second.processed == 7
    assert out.read_bytes() == whole.read_bytes()
    assert not partial_dir(out).exists()

    # Killed by an error inside the model's forward in the fourth batch: the three batches before
    # it are kept, the rerun computes the rest.
    (tmp_path / "crashed").mkdir()
    out = tmp_path / "crashed" / "e.parquet"
    model = EcgJepaModel.from_pretrained(models["jepa"])
    original = model.forward
    calls = []

    @functools.wraps(original)
    def failing_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", failing_forward)
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed_records(model, out=out, **settings)
    assert len(list(partial_dir(out).glob("chunk-*.json"))) == 3
    monkeypatch.undo()
    resumed = embed_records(model, out=out, **settings)
    assert resumed.complete and resumed.resumed == 9 and resumed.processed == 4
    np.testing.assert_array_equal(_embeddings(out), _embeddings(whole))
    assert pq.read_table(out)["record_id"].to_pylist() == pq.read_table(whole)["record_id"].to_pylist()

    with pytest.raises(ValueError, match="overwrite"):  # a finished output is not silently replaced
        embed_records(model, out=out, **settings)
    assert embed_records(model, out=out, overwrite=True, **settings).resumed == 0


# --------------------------------------------------------------------------------------------------
# Bad records
# --------------------------------------------------------------------------------------------------


def test_a_bad_record_in_a_wfdb_folder_is_listed_and_the_others_are_written(
    models, shared_data, tmp_path, capsys, caplog
):
    source = shared_data / "ptbxl" / "records100" / "00000"
    folder = tmp_path / "wfdb"
    (folder / "ward").mkdir(parents=True)
    for name, target in (
        ("00001_lr", folder),
        ("00002_lr", folder),
        ("00003_lr", folder / "ward"),
        ("00004_lr", folder),
    ):
        for ext in (".hea", ".dat"):
            shutil.copy(source / f"{name}{ext}", target / f"{name}{ext}")
    data = (folder / "00002_lr.dat").read_bytes()
    (folder / "00002_lr.dat").write_bytes(data[: len(data) // 2])  # truncated signal file

    out = tmp_path / "e.parquet"
    assert (
        _cli(
            [
                "embed",
                models["ecg2tok"],
                "--folder",
                str(folder),
                "--out",
                str(out),
                "--batch-size",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    table = pq.read_table(out)
    assert table["record_id"].to_pylist() == ["00001_lr", "00004_lr", "ward/00003_lr"]  # sorted .hea paths
    assert table["source_index"].to_pylist() == [0, 2, 3]
    skipped = json.loads(skipped_path(out).read_text())
    assert skipped["num_records"] == 4 and skipped["num_written"] == 3 and skipped["num_skipped"] == 1
    [entry] = skipped["skipped"]
    assert entry["record_id"] == "00002_lr" and entry["source_index"] == 1
    assert "00002_lr" in entry["reason"] and "truncated" in entry["reason"], entry["reason"]
    assert "00002_lr" in capsys.readouterr().err  # the closing summary lists it
    assert any("00002_lr" in message for message in caplog.messages)  # logged when met

    # The good records equal the same records embedded one by one by the pipeline.
    from ecg_hub.data.records import read_wfdb_record

    embedder = pipeline("ecg-feature-extraction", model=models["ecg2tok"])
    for record_id, vector in zip(table["record_id"].to_pylist(), _embeddings(out)):
        record = read_wfdb_record(folder / record_id, record_id=record_id)
        expected = embedder(record.signal, sampling_rate=record.sampling_rate, leads=record.leads)
        np.testing.assert_allclose(vector, expected, atol=2e-6)


def test_a_record_the_feature_extractor_rejects_is_listed_and_its_batch_is_written(models, tmp_path):
    rng = np.random.default_rng(0)
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    signals = [rng.normal(0, 0.1, (12, 1250)).astype("float32") for _ in range(5)]
    signals[1] = signals[1][:, :100]  # 0.4 s: too short
    signals[3][4, 17] = np.nan
    rows = [
        {"signal": s, "sampling_rate": 250, "leads": leads, "record_id": f"r{i}"}
        for i, s in enumerate(signals)
    ]
    path = tmp_path / "rows"
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    out = tmp_path / "e.parquet"
    result = embed_records(models["jepa"], dataset=str(path), out=out, batch_size=5, progress=False)
    assert pq.read_table(out)["record_id"].to_pylist() == ["r0", "r2", "r4"]
    reasons = {entry["record_id"]: entry["reason"] for entry in result.skipped}
    assert set(reasons) == {"r1", "r3"}
    assert "samples" in reasons["r1"] and "NaN" in reasons["r3"] and "aVL" in reasons["r3"]
    embedder = pipeline("ecg-feature-extraction", model=models["jepa"])
    np.testing.assert_allclose(_embeddings(out), np.array(embedder([rows[0], rows[2], rows[4]])), atol=2e-6)


# --------------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "embedding"), [("jepa", None), ("ecg2tok", None), ("etp", "projection"), ("etp", "pooled")]
)
def test_bfloat16_and_float32_agree_on_real_records(models, ptbxl, tmp_path, family, embedding):
    common = {"dataset": ptbxl, "embedding": embedding, "batch_size": 8, "progress": False}
    embed_records(models[family], out=tmp_path / "f32.parquet", dtype="float32", **common)
    result = embed_records(models[family], out=tmp_path / "bf16.parquet", dtype="bfloat16", **common)
    assert result.metadata["dtype"] == "bfloat16" and result.metadata["dtype_reason"] == "bfloat16 requested"
    a, b = _embeddings(tmp_path / "f32.parquet"), _embeddings(tmp_path / "bf16.parquet")
    assert len(a) == 24
    assert not np.array_equal(a, b)  # the autocast did run in bfloat16
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= BF16_MIN_COSINE, cosine.min()


def test_auto_dtype_follows_the_hardware(monkeypatch):
    from ecg_hub import inference

    monkeypatch.setattr(inference, "cpu_bf16_flags", lambda: ["amx_bf16"])
    dtype, reason = resolve_dtype("auto", "cpu")
    assert dtype == torch.bfloat16 and "amx_bf16" in reason
    monkeypatch.setattr(inference, "cpu_bf16_flags", list)
    dtype, reason = resolve_dtype("auto", "cpu")
    assert dtype == torch.float32 and "without native bfloat16" in reason
    assert resolve_dtype("float32", "cpu") == (torch.float32, "float32 requested")
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float16", "cpu")


# --------------------------------------------------------------------------------------------------
# Two processes
# --------------------------------------------------------------------------------------------------


def test_two_process_embed_equals_one_process(models, records, tmp_path):
    """Two CPU processes (gloo), each a contiguous shard; stopped after one batch per process and
    resumed (both shards), the merged file equals a single process's."""
    from ecg_hub import cli

    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = tmp_path / "one" / "e.parquet"
    embed_records(models["jepa"], dataset=records, out=single, batch_size=4, progress=False)
    double = tmp_path / "two" / "e.parquet"
    registered = "embed" in cli.COMMAND_MODULES
    program = ["-m", "ecg_hub", "embed"] if registered else ["-m", "ecg_hub.commands.embed"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def launch(*extra: str) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port),
            *program, models["jepa"], "--dataset", records, "--out", str(double), "--batch-size", "4",
            "--no-progress", *extra,
        ]  # fmt: skip
        completed = subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
        )
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
        return completed.stdout

    stdout = launch("--max-batches", "1")
    assert "stopped" in stdout and not double.exists()
    manifests = [json.loads(path.read_text()) for path in partial_dir(double).glob("chunk-*.json")]
    # Shards 0-5 and 6-12, one batch of 4 done in each.
    assert sorted((m["rank"], m["start"], m["end"]) for m in manifests) == [(0, 0, 4), (1, 6, 10)]

    stdout = launch()
    # Reported once (by the main process), with what the first run had done.
    assert stdout.count("wrote 13 embeddings") == 1 and "8 done by an earlier run" in stdout
    assert not partial_dir(double).exists()
    assert pq.read_table(double)["record_id"].to_pylist() == pq.read_table(single)["record_id"].to_pylist()
    assert pq.read_table(double)["source_index"].to_pylist() == list(range(13))
    np.testing.assert_allclose(_embeddings(double), _embeddings(single), rtol=0, atol=1e-6)
    assert _metadata(double) == _metadata(single)
    assert json.loads(skipped_path(double).read_text()) == json.loads(skipped_path(single).read_text())
