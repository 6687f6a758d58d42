"""``ecg-hub tokenize`` (precomputed ECG2TOK token ids as a dataset column) and
``EcgCollator(token_column=...)`` (those ids as stage-B ``labels``), with the tiny tokenizer of the
session fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecg_hub.cli import main as cli_main
from ecg_hub.commands.tokenize import TOKENS_FILE, load_tokenizer, tokenize_dataset
from ecg_hub.data.collators import EcgCollator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLUMN = "ecg2tok_labels"


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory):
    """A prepared-style dataset folder: 5 synthetic 12-lead records (10 s at 500 Hz), one of them
    without V3 (a lead the tokenizer uses) and one only 6 s long (padded time)."""
    import datasets

    from ecg_hub.data.synthetic import make_synthetic_dataset

    rows = list(make_synthetic_dataset(num_records=5, seed=1).with_format("numpy"))
    columns = {"signal": [], "sampling_rate": [], "leads": [], "record_id": [], "split": []}
    for i, row in enumerate(rows):
        signal, leads = np.asarray(row["signal"], dtype=np.float32), [str(name) for name in row["leads"]]
        if i == 1:
            keep = [k for k, name in enumerate(leads) if name != "V3"]
            signal, leads = signal[keep], [leads[k] for k in keep]
        if i == 3:
            signal = signal[:, : 6 * int(row["sampling_rate"])]
        columns["signal"].append(signal.tolist())
        columns["sampling_rate"].append(int(row["sampling_rate"]))
        columns["leads"].append(leads)
        columns["record_id"].append(str(row["record_id"]))
        columns["split"].append("train" if i < 3 else "test")
    path = tmp_path_factory.mktemp("tokenize_source") / "data"
    datasets.Dataset.from_dict(columns).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def tokenized(source_folder, tiny_ecg2tok_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenize_out") / "tokenized"
    assert tokenize_dataset(source_folder, tiny_ecg2tok_tokenizer / "model", out, batch_size=2) == out
    return out


def _loader_rows(dataset):
    """The rows as the training / inference loaders give them to the collator."""
    view = dataset.with_format("numpy", columns=["signal"], output_all_columns=True)
    return [view[i] for i in range(len(view))]


def test_column_equals_encode_of_the_feature_extractors_deterministic_crop(
    tokenized, source_folder, tiny_ecg2tok_tokenizer
):
    import datasets
    import torch

    tokenizer, feature_extractor = load_tokenizer(tiny_ecg2tok_tokenizer / "model")
    source, result = datasets.load_from_disk(str(source_folder)), datasets.load_from_disk(str(tokenized))
    assert result.column_names == [*source.column_names, COLUMN] and len(result) == len(source)
    assert result.features[COLUMN].feature.dtype == "int16"
    num_leads, num_patches = (
        len(feature_extractor.leads),
        feature_extractor.num_samples // tokenizer.config.patch_size,
    )
    features = feature_extractor(list(source.with_format("numpy")), training=False, return_tensors="pt")
    with torch.no_grad():
        expected = tokenizer.encode(
            features["input_values"],
            lead_mask=features["lead_mask"],
            attention_mask=features["attention_mask"],
        )
    got = torch.tensor(result[COLUMN]).reshape(len(result), num_leads, num_patches)
    assert torch.equal(got, expected)
    # -100 exactly where a lead is missing or time is padded; codes everywhere else.
    v3 = feature_extractor.leads.index("V3")
    assert (got[1, v3] == -100).all() and (got[1, :v3] >= 0).all()
    assert (got[3, :, 30:] == -100).all() and (got[3, :, :30] >= 0).all()  # 6 of 10 s recorded
    assert ((got[[0, 2, 4]] >= 0) & (got[[0, 2, 4]] < tokenizer.config.codebook_size)).all()
    # The other columns are copied unchanged.
    assert result["record_id"] == source["record_id"] and result["leads"] == source["leads"]
    # What is needed to regenerate the labels travels with them.
    info = json.loads((tokenized / TOKENS_FILE).read_text())[COLUMN]
    assert info["tokenizer_name_or_path"] == str((tiny_ecg2tok_tokenizer / "model").resolve())
    assert info["codebook_size"] == tokenizer.config.codebook_size and info["ignore_index"] == -100
    assert info["feature_extractor"] == {
        k: v for k, v in feature_extractor.to_dict().items() if k != "auto_map"
    }
    assert "tokenizer_revision" in info and "tokenizer_commit" in info


def test_collator_gives_labels_and_the_stage_b_loss_equals_on_the_fly_labelling(
    tokenized, tiny_ecg2tok_tokenizer
):
    import datasets
    import torch
    from ecg_hub.modeling import Ecg2TokConfig, Ecg2TokForMaskedSignalModeling

    tokenizer, feature_extractor = load_tokenizer(tiny_ecg2tok_tokenizer / "model")
    rows = _loader_rows(datasets.load_from_disk(str(tokenized)))
    batch = EcgCollator(feature_extractor, token_column=COLUMN)(rows)
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (len(rows), 8 * 50)
    assert set(batch) == {"input_values", "attention_mask", "lead_mask", "labels"}
    config = Ecg2TokConfig(
        num_samples=2500,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        codebook_size=tokenizer.config.codebook_size,
    )
    torch.manual_seed(0)
    model = Ecg2TokForMaskedSignalModeling(config).eval()
    masked = model.sample_bool_masked_pos(len(rows), 50)
    with torch.no_grad():
        loss = model(**batch, bool_masked_pos=masked).loss
        assert torch.isfinite(loss)
        model.set_label_tokenizer(tokenizer)  # the same labels, computed on the fly
        unlabelled = {k: v for k, v in batch.items() if k != "labels"}
        assert torch.equal(model(**unlabelled, bool_masked_pos=masked).loss, loss)


def test_collator_refuses_token_column_with_random_training_crops(tiny_ecg2tok_tokenizer):
    _, feature_extractor = load_tokenizer(tiny_ecg2tok_tokenizer / "model")
    with pytest.raises(ValueError, match="training=True.*deterministic crop"):
        EcgCollator(feature_extractor, token_column=COLUMN, training=True)
    with pytest.raises(ValueError, match="both give `labels`"):
        EcgCollator(feature_extractor, token_column=COLUMN, label_column="rhythm", num_classes=3)


def test_cli_tokenizes_each_split_and_refuses_an_existing_output(
    source_folder, tiny_ecg2tok_tokenizer, tmp_path, capsys
):
    import datasets

    from ecg_hub.data.splits import dataset_split

    source = datasets.load_from_disk(str(source_folder))
    dict_folder = tmp_path / "dict"
    datasets.DatasetDict({k: dataset_split(source, k) for k in ("train", "test")}).save_to_disk(
        str(dict_folder)
    )
    out = tmp_path / "out"
    argv = [
        "tokenize",
        str(dict_folder),
        "--tokenizer",
        str(tiny_ecg2tok_tokenizer / "model"),
        "--out",
        str(out),
        "--column",
        "codes",
        "--batch-size",
        "4",
    ]
    assert cli_main(argv) == 0
    assert f"written to {out}" in capsys.readouterr().out
    result = datasets.load_from_disk(str(out))
    assert isinstance(result, datasets.DatasetDict) and set(result) == set(
        datasets.load_from_disk(str(dict_folder))
    )
    for split in result.values():
        assert all(len(ids) == 8 * 50 for ids in split["codes"])
    assert "codes" in json.loads((out / TOKENS_FILE).read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    # An existing output folder is refused, and left as it was.
    before = sorted(p.name for p in out.iterdir())
    assert cli_main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    # Not a stage-A tokenizer: a clear error.
    stage_b = tmp_path / "stage_b"
    from ecg_hub.modeling import Ecg2TokConfig, Ecg2TokModel

    Ecg2TokModel(
        Ecg2TokConfig(
            num_samples=2500, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
        )
    ).save_pretrained(stage_b)
    assert (
        cli_main(["tokenize", str(dict_folder), "--tokenizer", str(stage_b), "--out", str(tmp_path / "x")])
        == 2
    )
    assert "not 'ecg2tok_tokenizer'" in capsys.readouterr().err
