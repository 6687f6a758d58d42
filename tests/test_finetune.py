"""Trainer fine-tuning: a tiny model learns the synthetic rhythms; selection on validation; recipes."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from ecg_hub.modeling import STANDARD_LEADS, EcgFeatureExtractor

from ecg_hub.data.splits import load_splits
from ecg_hub.loading import load_classification_model
from ecg_hub.training.finetune import (
    EcgTrainer,
    finetune,
    load_finetune_recipe,
)

RHYTHMS = ["SR", "SB", "ST", "AF"]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    """240 synthetic 12-lead records (100 Hz, 10 s; rhythm labels; 70/15/15 splits) on disk."""
    from ecg_hub.data.synthetic import prepare_synthetic

    path = tmp_path_factory.mktemp("synthetic") / "rhythm"
    prepare_synthetic(path, num_records=240, seed=0, sampling_rate=100, duration_s=10.0, progress=False)
    return path


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_resnet(class_names, problem_type="multi_label_classification"):
    torch.manual_seed(0)
    return load_classification_model(
        config={
            "model_type": "ecg_resnet",
            "sampling_rate": 100,
            "num_samples": 800,
            "embedding_size": 16,
            "hidden_sizes": [16, 32, 64],
            "depths": [1, 1, 1],
        },
        class_names=class_names,
        problem_type=problem_type,
    )


def test_trainer_finetuning_reaches_auroc_on_held_out_synthetic(synthetic_dir, tmp_path):
    splits = load_splits(synthetic_dir)
    # 8-s windows: random crops for training, the first 8 s for validation / test.
    fe = EcgFeatureExtractor(sampling_rate=100, leads=STANDARD_LEADS, num_samples=800, normalization="zscore_lead")
    model = tiny_resnet(RHYTHMS)
    result = finetune(
        model, fe, splits, "rhythm", output_dir=str(tmp_path / "run"), seed=0, warmup_epochs=1,
        num_train_epochs=12, per_device_train_batch_size=16, learning_rate=3e-3, weight_decay=0.01,
        early_stopping_patience=4, save_total_limit=1,
    )
    assert result.class_names == RHYTHMS
    assert result.test_metrics["macro_auroc"] >= 0.9, result.test_metrics
    assert result.test_labels.shape == (len(splits["test"]), 4) and result.test_scores.shape == result.test_labels.shape
    # The kept weights are the best on validation (never test): the log's best eval AUROC.
    evals = [e["eval_macro_auroc"] for e in result.trainer.state.log_history if "eval_macro_auroc" in e]
    assert result.trainer.state.best_metric == pytest.approx(max(evals))
    assert result.val_metrics["macro_auroc"] == pytest.approx(max(evals), abs=1e-6)
    # Evaluation batches use the deterministic crop: scoring twice gives identical numbers.
    again = result.trainer.evaluate()
    assert again["eval_macro_auroc"] == pytest.approx(result.val_metrics["macro_auroc"], abs=1e-9)
    assert {k for k in again if k.startswith("eval_auroc_")} == {f"eval_auroc_{c}" for c in RHYTHMS}


def test_single_label_cross_entropy_and_label_mismatch(synthetic_dir, tmp_path):
    splits = load_splits(synthetic_dir)
    fe = EcgFeatureExtractor(sampling_rate=100, leads=STANDARD_LEADS, num_samples=800, normalization="zscore_lead")
    model = tiny_resnet(RHYTHMS, "single_label_classification")
    result = finetune(
        model, fe, splits, "rhythm", output_dir=str(tmp_path / "ce"), problem_type="single_label_classification",
        num_train_epochs=1, per_device_train_batch_size=32, warmup_epochs=0, early_stopping_patience=None,
    )
    assert result.test_labels.ndim == 1 and result.test_labels.dtype.kind == "i"  # class indices -> CE
    assert np.allclose(result.test_scores.sum(1), 1.0, atol=1e-5)  # softmax
    with pytest.raises(ValueError, match="differ from the 'rhythm' classes"):
        finetune(tiny_resnet(["A", "B"]), fe, splits, "rhythm", output_dir=str(tmp_path / "x"))


def test_eval_collator_swap_is_scoped():
    sentinel_train, sentinel_eval = object(), object()
    trainer = EcgTrainer.__new__(EcgTrainer)
    trainer.data_collator, trainer.eval_data_collator = sentinel_train, sentinel_eval
    with trainer._eval_collator():
        assert trainer.data_collator is sentinel_eval
    assert trainer.data_collator is sentinel_train


def test_tiny_recipe_via_cli_writes_model_and_results(synthetic_dir, tmp_path, capsys):
    from ecg_hub.commands import finetune as finetune_command
    from ecg_hub.hub import load_results

    parser = argparse.ArgumentParser(prog="ecg-hub")
    finetune_command.register(parser.add_subparsers())
    out = tmp_path / "jepa"
    args = parser.parse_args(
        ["finetune", "ecg_jepa/finetune_synthetic_tiny", f"data.path={synthetic_dir}", f"output_dir={out}",
         "training.num_train_epochs=1", "data.fraction=0.5"]
    )
    assert args.func(args) == 0
    assert "finetune" in capsys.readouterr().out
    document = load_results(out / "results.json")
    entry = document["results"][0]
    assert entry["protocol"] == "finetune" and entry["fraction"] == 0.5 and entry["split"] == "test"
    assert set(entry["per_class_auroc"]) <= set(RHYTHMS)
    assert entry["train_records"] == round(0.5 * load_splits(synthetic_dir)["train"].num_rows)
    from transformers import AutoFeatureExtractor, AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(out / "best")
    assert reloaded.config.id2label == dict(enumerate(RHYTHMS))
    assert reloaded.config.problem_type == "multi_label_classification"
    assert AutoFeatureExtractor.from_pretrained(out / "best").num_samples == 800


def test_recipe_errors_name_the_key():
    from ecg_hub.recipe import RecipeError

    with pytest.raises(RecipeError, match="training.num_epochs"):
        load_finetune_recipe("ecg_jepa/finetune_synthetic_tiny", ["training.num_epochs=3"])
    with pytest.raises(RecipeError, match="training.output_dir"):
        load_finetune_recipe("ecg_jepa/finetune_synthetic_tiny", ["training.output_dir=x"])
    with pytest.raises(RecipeError, match="data.fraction"):
        load_finetune_recipe("ecg_jepa/finetune_synthetic_tiny", ["data.fraction=0"])


@pytest.mark.parametrize("task", ["superclass", "subclass", "form", "rhythm"])
def test_one_model_agnostic_ptbxl_recipe_serves_every_task_and_model(task):
    recipe = load_finetune_recipe(
        "finetune/ptbxl", [f"data.label_column={task}", "model.pretrained=runs/etp_ptbxl_subset/model"]
    )
    assert recipe.recipe == "finetune" and recipe.data.label_column == task
    # The preprocessor is the checkpoint's own: it follows model.pretrained.
    assert recipe.preprocessor["pretrained"] == recipe.model["pretrained"] == "runs/etp_ptbxl_subset/model"
    assert recipe.data.problem_type == "multi_label_classification"
    json.dumps(recipe.training)  # plain values only


def test_dataset_split_is_the_one_way_to_take_a_split(synthetic_dir):
    import datasets

    from ecg_hub.data.splits import dataset_split

    full = datasets.load_from_disk(str(synthetic_dir))
    splits = load_splits(synthetic_dir)
    column = np.asarray(full["split"])
    for name in ("train", "validation", "test"):
        taken = dataset_split(full, name)
        # The same rows, in order, and the same fingerprint as a plain Dataset.select (feature caches key on it).
        expected = full.select(np.flatnonzero(column == name))
        assert taken["record_id"] == expected["record_id"] == splits[name]["record_id"]
        assert taken._fingerprint == expected._fingerprint == splits[name]._fingerprint
        assert dataset_split(full, name, keep_in_memory=True)["record_id"] == expected["record_id"]
        assert dataset_split(datasets.DatasetDict(splits), name) is splits[name]
        streamed = dataset_split(full.select_columns(["record_id", "split"]).to_iterable_dataset(), name)
        assert [row["record_id"] for row in streamed] == expected["record_id"]
    with pytest.raises(ValueError, match="no split 'dev'"):
        dataset_split(datasets.DatasetDict(splits), "dev")
    with pytest.raises(ValueError, match="no 'fold' column"):
        dataset_split(full, "train", column="fold")
