"""Publishing to and loading from the Hub over real HTTP, against the loopback Hub-API server of
``tests/hub_server.py`` (``HF_ENDPOINT`` is set at the top of ``conftest.py``).

Starting a fresh Python process costs seconds (torch + transformers imports), so every check that
needs a fresh process is batched into three child runs of ``_CHILD_SCRIPT``:

- ``registered``: ``import ecg_hub``, empty cache: loads by repo id at ``main``, at a pinned commit
  and at a branch;
- ``remote``: ``ecg_hub`` made unimportable, empty cache: refused without ``trust_remote_code``,
  then loaded with ``trust_remote_code=True`` from the repo's own code;
- ``offline``: ``HF_HUB_OFFLINE=1`` on a cache filled by ``ecg_hub.hub.download``, with no request
  reaching its endpoint (a second, empty server).

The three run at the same time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.hub

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_server import HubServer

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "ecg-hub-test/ecg-jepa-tiny"
ETP_REPO_ID = "ecg-hub-test/etp-tiny"  # an ECG-text model: a processor instead of a feature extractor
#: ECG2TOK: the stage-A tokenizer (compared by `encode` ids), a stage-B masked-label model labelled
#: by it and a stage-B classifier (compared by logits), with the Auto class each is loaded by.
ECG2TOK_REPO_IDS = {
    "ecg2tok_tokenizer": "ecg-hub-test/ecg2tok-tokenizer-tiny",
    "ecg2tok": "ecg-hub-test/ecg2tok-tiny",
    "ecg2tok_classifier": "ecg-hub-test/ecg2tok-classifier-tiny",
}
ECG2TOK_AUTO_CLASSES = {
    "ecg2tok_tokenizer": ("AutoModel", "Ecg2TokTokenizerModel"),
    "ecg2tok": ("AutoModelForMaskedLM", "Ecg2TokForMaskedSignalModeling"),
    "ecg2tok_classifier": ("AutoModelForSequenceClassification", "Ecg2TokForSequenceClassification"),
}
ETP_TEXTS = ["sinus rhythm, normal axis", "atrial fibrillation with rapid ventricular response"]
SIGNAL_LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
SIGNAL_RATE = 500  # Hz of the raw test signal; the extractor resamples it to the model's 250 Hz


# --------------------------------------------------------------------------------------------
# Fixtures: server, tiny ECG-JEPA checkpoints, results JSON, published repo
# --------------------------------------------------------------------------------------------


def _tiny_jepa(seed: int):
    import torch
    from ecg_hub.modeling import EcgJepaConfig, EcgJepaModel

    config = EcgJepaConfig(
        num_samples=500,  # 2 s at 250 Hz: 8 leads x 10 patches of 50 samples
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        predictor_hidden_size=32,
        predictor_num_hidden_layers=1,
        predictor_num_attention_heads=2,
        predictor_intermediate_size=64,
    )
    torch.manual_seed(seed)
    return EcgJepaModel(config).eval()


def _evaluate(model_dir: Path, data_dir: Path, results_path: Path) -> None:
    """A real `ecg-hub evaluate` run (linear probe, two label fractions) writing the results JSON."""
    from ecg_hub.evaluation.linear_probe import LinearProbeConfig
    from ecg_hub.evaluation.protocol import EvaluationSettings, evaluate_model

    settings = EvaluationSettings(
        protocols=["linear-probe"],
        fractions=[0.5, 1.0],
        seeds=[1, 2],
        bootstrap=20,
        probe=LinearProbeConfig(max_epochs=5),
    )
    evaluate_model(
        str(model_dir), str(data_dir), "rhythm", settings, output_json=results_path, dataset_name="synthetic"
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny ECG-JEPA checkpoints (different weights) with the ECG-JEPA feature extractor, a
    raw 12-lead signal, the model inputs it gives, and the reference outputs of both models."""
    import numpy as np
    import torch
    from ecg_hub.modeling import EcgFeatureExtractor

    root = tmp_path_factory.mktemp("checkpoints")
    feature_extractor = EcgFeatureExtractor.from_preset("ecg_jepa", num_samples=500)
    signal = np.random.default_rng(0).normal(scale=0.3, size=(12, 2 * SIGNAL_RATE)).astype(np.float32)  # mV
    inputs = feature_extractor(signal, sampling_rate=SIGNAL_RATE, leads=SIGNAL_LEADS, return_tensors="pt")
    dirs, outputs = {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the child processes use 1 thread too: identical float reductions
    try:
        # v2 sits in the `ecg-hub pretrain` output layout: <run>/model + <run>/recipe.yaml.
        for name, seed, model_dir in (("v1", 1, root / "v1"), ("v2", 2, root / "v2-run" / "model")):
            model = _tiny_jepa(seed)
            dirs[name] = model_dir
            model.save_pretrained(dirs[name])
            feature_extractor.save_pretrained(dirs[name])
            with torch.no_grad():
                outputs[name] = {k: v for k, v in model(**inputs).items() if isinstance(v, torch.Tensor)}
    finally:
        torch.set_num_threads(threads)
    shutil.copyfile(
        REPO_ROOT / "recipes" / "ecg_jepa" / "pretrain_tiny.yaml", root / "v2-run" / "recipe.yaml"
    )
    # The card's numbers come from evaluating v2 on synthetic 12-lead ECGs (2 s at 250 Hz).
    from ecg_hub.data.synthetic import make_synthetic_dataset

    dataset = make_synthetic_dataset(num_records=60, seed=0, sampling_rate=250, duration_s=2.0)
    dataset.save_to_disk(str(root / "data"))
    results_path = root / "results.json"
    _evaluate(dirs["v2"], root / "data", results_path)
    return {
        "dirs": dirs,
        "outputs": outputs,
        "signal": signal,
        "inputs": dict(inputs),
        "feature_extractor": feature_extractor,
        "results_path": results_path,
        "root": root,
    }


@pytest.fixture(scope="module")
def etp_checkpoint(checkpoints):
    """A tiny ETP dual encoder + EtpProcessor (trained WordPiece tokenizer), and its reference outputs."""
    import torch
    from ecg_hub.modeling import EcgFeatureExtractor
    from ecg_hub.modeling.configuration_ecg_resnet import EcgResNetConfig
    from ecg_hub.modeling.configuration_etp import EtpConfig
    from ecg_hub.modeling.modeling_etp import EtpModel
    from ecg_hub.modeling.processing_etp import EtpProcessor
    from transformers import BertConfig

    from ecg_hub.data.text_collators import train_report_tokenizer

    tokenizer = train_report_tokenizer(ETP_TEXTS * 3, vocab_size=80)
    config = EtpConfig(
        ecg_config=EcgResNetConfig(
            hidden_sizes=[8, 16, 32], depths=[1, 1, 1], embedding_size=8, sampling_rate=100, num_samples=400
        ),
        text_config=BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
        ),
        projection_dim=16,
        text_projection_hidden_dim=16,
        text_pooling="mean",
    )
    torch.manual_seed(3)
    model = EtpModel(config).eval()
    processor = EtpProcessor(
        EcgFeatureExtractor.from_preset("etp", sampling_rate=100, num_samples=400), tokenizer
    )
    model_dir = checkpoints["root"] / "etp"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    batch = processor(
        ecg=[checkpoints["signal"]],
        text=ETP_TEXTS,
        sampling_rate=SIGNAL_RATE,
        leads=SIGNAL_LEADS,
        return_tensors="pt",
    )
    # Reference: the saved checkpoint loaded with the installed classes (attention implementation
    # and all, as from_pretrained sets them), on one thread like the child.
    reloaded = EtpModel.from_pretrained(model_dir).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            outputs = {k: v for k, v in reloaded(**batch).items() if isinstance(v, torch.Tensor)}
    finally:
        torch.set_num_threads(threads)
    return {"dir": model_dir, "batch": dict(batch), "outputs": outputs}


@pytest.fixture(scope="module")
def ecg2tok_checkpoints(checkpoints):
    """The three ECG2TOK checkpoints, saved with the ECG2TOK feature extractor (8 leads, 2 s at 250
    Hz here): the stage-A tokenizer, a stage-B masked-label model naming it by repo id (with the
    tokenizer attached while saved, which must not put its weights in the checkpoint) and a stage-B
    classifier; their reference outputs on the shared inputs (ids, logits + loss, logits); and the
    results JSON of a real `ecg-hub evaluate` of the stage-B model, for its card."""
    import torch
    from ecg_hub.modeling import (
        Ecg2TokForMaskedSignalModeling,
        Ecg2TokForSequenceClassification,
        Ecg2TokTokenizerModel,
        EcgFeatureExtractor,
    )
    from model_battery import tiny_ecg2tok_config, tiny_ecg2tok_tokenizer_config

    feature_extractor = EcgFeatureExtractor.from_preset("ecg2tok", num_samples=500)
    root = checkpoints["root"]
    names_tokenizer = {
        "tokenizer_name_or_path": ECG2TOK_REPO_IDS["ecg2tok_tokenizer"],
        "tokenizer_revision": "main",
    }
    torch.manual_seed(4)
    tokenizer = Ecg2TokTokenizerModel(tiny_ecg2tok_tokenizer_config())
    stage_b = Ecg2TokForMaskedSignalModeling(tiny_ecg2tok_config(**names_tokenizer))
    stage_b.set_label_tokenizer(tokenizer)
    classifier = Ecg2TokForSequenceClassification(tiny_ecg2tok_config(**names_tokenizer))
    models = {"ecg2tok_tokenizer": tokenizer, "ecg2tok": stage_b, "ecg2tok_classifier": classifier}
    dirs = {name: root / name for name in models}
    for name, model in models.items():
        model.save_pretrained(dirs[name])
        feature_extractor.save_pretrained(dirs[name])
    # The child processes prepare the same signal with the repo's own feature extractor.
    inputs = dict(
        feature_extractor(
            checkpoints["signal"], sampling_rate=SIGNAL_RATE, leads=SIGNAL_LEADS, return_tensors="pt"
        )
    )
    # Stage B: time slots 3-5 masked in every lead; its labels come from the tokenizer (by repo id
    # in the child processes, so their loss equals this one only if they labelled with it).
    bool_masked_pos = torch.zeros(1, 10, dtype=torch.bool)
    bool_masked_pos[:, 3:6] = True
    extra = {"ecg2tok": {"bool_masked_pos": bool_masked_pos.repeat(1, 8)}}
    # Reference: the saved checkpoints loaded with the installed classes, on one thread like the child.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            reloaded_tokenizer = Ecg2TokTokenizerModel.from_pretrained(dirs["ecg2tok_tokenizer"]).eval()
            reloaded_stage_b = Ecg2TokForMaskedSignalModeling.from_pretrained(dirs["ecg2tok"]).eval()
            reloaded_stage_b.set_label_tokenizer(reloaded_tokenizer)
            reloaded_classifier = Ecg2TokForSequenceClassification.from_pretrained(
                dirs["ecg2tok_classifier"]
            ).eval()
            outputs = {
                "ecg2tok_tokenizer": {"ids": reloaded_tokenizer.encode(**inputs)},
                "ecg2tok": {
                    k: v
                    for k, v in reloaded_stage_b(**inputs, **extra["ecg2tok"]).items()
                    if isinstance(v, torch.Tensor)
                },
                "ecg2tok_classifier": {
                    k: v for k, v in reloaded_classifier(**inputs).items() if isinstance(v, torch.Tensor)
                },
            }
    finally:
        torch.set_num_threads(threads)
    results_path = root / "ecg2tok_results.json"
    _evaluate(dirs["ecg2tok"], root / "data", results_path)
    return {
        "dirs": dirs,
        "outputs": outputs,
        "extra": extra,
        "results_path": results_path,
        "tokenizer_keys": set(tokenizer.state_dict()),
        "stage_b_keys": set(Ecg2TokForMaskedSignalModeling(tiny_ecg2tok_config()).state_dict()),
    }


@pytest.fixture(scope="module")
def published(hub_server, checkpoints, etp_checkpoint, ecg2tok_checkpoints):
    """v1 published to main, then v2 (with results) to main, then v1 to branch "v1-branch"; and ETP."""
    from ecg_hub.hub import publish

    dirs = checkpoints["dirs"]
    first = publish(dirs["v1"], REPO_ID)
    second = publish(dirs["v2"], REPO_ID, results=checkpoints["results_path"])
    branch = publish(dirs["v1"], REPO_ID, revision="v1-branch")
    etp = publish(etp_checkpoint["dir"], ETP_REPO_ID)
    ecg2tok = {
        name: publish(
            ecg2tok_checkpoints["dirs"][name],
            repo_id,
            results=ecg2tok_checkpoints["results_path"] if name == "ecg2tok" else None,
        ).oid
        for name, repo_id in ECG2TOK_REPO_IDS.items()
    }
    return {"v1": first.oid, "v2": second.oid, "branch": branch.oid, "etp": etp.oid, **ecg2tok}


# --------------------------------------------------------------------------------------------
# The repo after publishing
# --------------------------------------------------------------------------------------------


def test_each_publish_is_one_commit_with_weights_preprocessing_remote_code_and_card(hub_server, published):
    repo = hub_server.state.repos[("model", REPO_ID)]
    v1, v2 = repo.commits[published["v1"]], repo.commits[published["v2"]]
    initial = repo.commits[v1.parent]
    assert initial.parent is None and set(initial.files) == {".gitattributes"}  # create_repo's commit
    assert v2.parent == v1.oid and repo.branches["main"] == v2.oid  # one commit per publish
    assert repo.commits[repo.branches["v1-branch"]].parent == v2.oid  # branched from main
    assert set(v2.files) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "requirements.txt",
        "configuration_ecg_jepa.py",
        "modeling_ecg_jepa.py",
        "feature_extraction_ecg.py",
        "leads.py",
        # the shared components ECG-JEPA imports, and the (standard-library) family registry;
        # nothing of the other families (no ETP, ResNet, contrastive or text-tower code)
        "layers.py",
        "masking.py",
        "ema.py",
        "heads.py",
        "registry.py",
        "recipe.yaml",  # found beside the pretraining output's model folder
    }
    assert "recipe.yaml" not in v1.files  # v1 was saved without one
    assert v2.files["recipe.yaml"] == (REPO_ROOT / "recipes" / "ecg_jepa" / "pretrain_tiny.yaml").read_bytes()
    config = json.loads(v2.files["config.json"])
    assert config["model_type"] == "ecg_jepa" and config["architectures"] == ["EcgJepaModel"]
    assert config["auto_map"]["AutoConfig"] == "configuration_ecg_jepa.EcgJepaConfig"
    assert config["auto_map"]["AutoModel"] == "modeling_ecg_jepa.EcgJepaModel"
    assert (
        config["auto_map"]["AutoModelForSequenceClassification"]
        == "modeling_ecg_jepa.EcgJepaForSequenceClassification"
    )
    preprocessor = json.loads(v2.files["preprocessor_config.json"])
    assert preprocessor["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_ecg.EcgFeatureExtractor"}
    requirements = v2.files["requirements.txt"].decode().split("\n")
    assert {"torch>=2.4", "transformers>=5.0", "numpy>=1.26", "scipy>=1.11"} <= set(requirements)
    # The repo's copy of the code is the installed code, byte for byte.
    from ecg_hub import modeling

    for name in (
        "modeling_ecg_jepa.py",
        "configuration_ecg_jepa.py",
        "feature_extraction_ecg.py",
        "leads.py",
    ):
        assert v2.files[name] == (Path(modeling.__file__).parent / name).read_bytes()
    # Every class stays registered for its Auto class (import ecg_hub does it), so any plain
    # save_pretrained carries the code too (tests/test_push_to_hub.py).
    assert modeling.EcgJepaModel.__dict__.get("_auto_class") == "AutoModel"


def _assert_card_metrics_equal_results(card, results: dict) -> None:
    """Every (protocol and fraction, metric) value of a results JSON is in the card's metadata, and nothing else."""
    parsed = {(r.metric_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    expected = {
        (f"{entry['protocol']}, fraction={entry['fraction']}", metric): value
        for entry in results["results"]
        for metric, value in entry["metrics"].items()
    }
    assert parsed == expected


def test_model_card_parses_and_its_metrics_equal_the_results_json(published, checkpoints):
    from huggingface_hub import ModelCard

    card = ModelCard.load(REPO_ID)  # README.md at main, over HTTP
    results = json.loads(checkpoints["results_path"].read_text())
    _assert_card_metrics_equal_results(card, results)
    for result in card.data.eval_results:
        assert (result.dataset_type, result.dataset_config, result.dataset_split) == (
            "synthetic",
            "rhythm",
            "test",
        )
        entry = next(
            e
            for e in results["results"]
            if f"{e['protocol']}, fraction={e['fraction']}" == result.metric_config
        )
        assert result.metric_args["seeds"] == entry["seeds"]
        assert result.metric_args["std"] == entry["metrics_std"][result.metric_type]
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert "ecg-hub" in card.data.tags and "ecg-jepa" in card.data.tags
    # The input contract in the text comes from the saved feature extractor.
    fe = checkpoints["feature_extractor"]
    assert f"{fe.sampling_rate} Hz" in card.text
    assert ", ".join(fe.leads) in card.text
    assert f"{fe.num_samples} samples ({fe.num_samples / fe.sampling_rate:g} s)" in card.text
    assert "physical units (mV) go in unscaled" in card.text  # normalization "none"
    # The rest of the contract: what it is, paper, limits, licence, the numbers' table.
    assert "not a medical device" in card.text and "arXiv:2410.08559" in card.text
    assert "@article{kim2024ecgjepa" in card.text
    half, full = results["results"]  # fractions 0.5 (seeds 1, 2) and 1.0 (seed 1, with a bootstrap CI)
    low, high = full["metrics_ci95"]["macro_auroc"]
    row = f"| linear-probe | 100% | test | 1 | {full['metrics']['macro_auroc']:.4f} [{low:.4f}, {high:.4f}]"
    assert row in card.text
    mean, std = half["metrics"]["macro_auroc"], half["metrics_std"]["macro_auroc"]
    assert f"| linear-probe | 50% | test | 1, 2 | {mean:.4f} ± {std:.4f}" in card.text
    split = results["dataset"]
    assert (
        f"test {split['split_records']['test']}" in card.text
        and split["split_sha256"]["test"][:16] in card.text
    )
    assert 'AutoModel.from_pretrained("ecg-hub-test/ecg-jepa-tiny", trust_remote_code=True' in card.text
    assert "_component_: ecg_hub.modeling.modeling_ecg_jepa.EcgJepaForPreTraining" in card.text  # the recipe


# --------------------------------------------------------------------------------------------
# Loading in fresh processes (batched)
# --------------------------------------------------------------------------------------------

_CHILD_SCRIPT = r'''
import json, sys

args = json.loads(sys.argv[1])
blocked = []
if args["block_ecg_hub"]:
    import importlib.abc
    import traceback

    class HideEcgHub(importlib.abc.MetaPathFinder):
        """First on sys.meta_path: any attempt to import ecg_hub fails and is recorded."""

        def find_spec(self, name, path=None, target=None):
            if name == "ecg_hub" or name.startswith("ecg_hub."):
                blocked.append(f"{name} from:\n" + "".join(traceback.format_stack(limit=12)))
                raise ModuleNotFoundError(f"ecg_hub is hidden from this process ({name})")
            return None

    sys.meta_path.insert(0, HideEcgHub())

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoFeatureExtractor, AutoModel

torch.set_num_threads(1)
if args["import_ecg_hub"]:
    import ecg_hub  # registers the ecg-hub classes with the Auto classes
report = {}
if args["check_refusal"]:
    try:
        AutoModel.from_pretrained(args["repo_id"])
        report["refusal"] = None
    except Exception as err:
        report["refusal"] = f"{type(err).__name__}: {err}"
inputs = load_file(args["inputs"])
signal = load_file(args["signal"])["signal"].numpy()
extra = {"trust_remote_code": True} if args["trust_remote_code"] else {}
for name, revision in args["loads"].items():
    model = AutoModel.from_pretrained(args["repo_id"], revision=revision, **extra).eval()
    fe = AutoFeatureExtractor.from_pretrained(args["repo_id"], revision=revision, **extra)
    with torch.no_grad():
        tensors = {k: v.clone() for k, v in model(**inputs).items() if isinstance(v, torch.Tensor)}
    features = fe(signal, sampling_rate=args["signal_rate"], leads=args["signal_leads"], return_tensors="pt")
    tensors.update({f"fe.{k}": v.contiguous() for k, v in features.items()})
    save_file(tensors, f"{args['out']}/{name}.safetensors")
    report[name] = {
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "fe_class": f"{type(fe).__module__}.{type(fe).__qualname__}",
        "fe_config": {k: v for k, v in fe.to_dict().items() if k != "auto_map"},
    }
for name, repo_id in args.get("processor_repos", {}).items():  # ECG-text models: AutoProcessor
    from transformers import AutoProcessor

    model = AutoModel.from_pretrained(repo_id, **extra).eval()
    processor = AutoProcessor.from_pretrained(repo_id, **extra)
    batch = processor(
        ecg=[signal], text=args["texts"], sampling_rate=args["signal_rate"], leads=args["signal_leads"],
        return_tensors="pt",
    )
    with torch.no_grad():
        tensors = {k: v.clone() for k, v in model(**batch).items() if isinstance(v, torch.Tensor)}
    tensors.update({f"fe.{k}": v.contiguous() for k, v in batch.items()})
    save_file(tensors, f"{args['out']}/{name}.safetensors")
    report[name] = {
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "processor_class": f"{type(processor).__module__}.{type(processor).__qualname__}",
    }
for name, spec in args.get("model_repos", {}).items():  # more families, by repo id and Auto class
    import transformers

    auto_class = getattr(transformers, spec["auto_class"])
    model = auto_class.from_pretrained(spec["repo_id"], **extra).eval()
    fe = AutoFeatureExtractor.from_pretrained(spec["repo_id"], **extra)
    model_inputs = fe(signal, sampling_rate=args["signal_rate"], leads=args["signal_leads"], return_tensors="pt")
    model_extra = load_file(spec["extra"]) if spec.get("extra") else {}
    with torch.no_grad():
        if spec.get("method") == "encode":  # a tokenizer: its ids are the output
            tensors = {"ids": model.encode(**model_inputs)}
        else:
            outputs = model(**model_inputs, **model_extra)
            tensors = {k: v.clone() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
    save_file(tensors, f"{args['out']}/{name}.safetensors")
    label_tokenizer = getattr(model, "_label_tokenizer", None)  # ECG2TOK stage B: loaded by repo id
    report[name] = {
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "fe_class": f"{type(fe).__module__}.{type(fe).__qualname__}",
        "label_tokenizer_class": (
            None if label_tokenizer is None else f"{type(label_tokenizer).__module__}.{type(label_tokenizer).__qualname__}"
        ),
    }
report["ecg_hub_modules"] = sorted(m for m in sys.modules if m == "ecg_hub" or m.startswith("ecg_hub."))
report["blocked_imports"] = list(blocked)  # before the check below adds its own attempt
if args["block_ecg_hub"]:
    try:
        import ecg_hub  # noqa: F401
        report["hiding_works"] = False
    except ModuleNotFoundError:
        report["hiding_works"] = True
with open(f"{args['out']}/report.json", "w") as handle:
    json.dump(report, handle)
'''


def _ecg2tok_model_repos(root: Path) -> dict:
    """The child's ECG2TOK loads: repo id, Auto class, method, extra inputs (a safetensors file)."""
    specs = {}
    for name, repo_id in ECG2TOK_REPO_IDS.items():
        extra = root / f"{name}-extra.safetensors"
        specs[name] = {
            "repo_id": repo_id,
            "auto_class": ECG2TOK_AUTO_CLASSES[name][0],
            "method": "encode" if name == "ecg2tok_tokenizer" else "forward",
            "extra": str(extra) if extra.is_file() else None,
        }
    return specs


def _start_child(
    workdir: Path, hf_home: Path, *, loads, offline_endpoint=None, remote=False
) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "child.py"
    script.write_text(_CHILD_SCRIPT)
    args = {
        "repo_id": REPO_ID,
        "loads": loads,
        "inputs": str(workdir.parent / "inputs.safetensors"),
        "signal": str(workdir.parent / "signal.safetensors"),
        "signal_rate": SIGNAL_RATE,
        "signal_leads": SIGNAL_LEADS,
        "out": str(workdir),
        "import_ecg_hub": not remote,
        "block_ecg_hub": remote,
        "trust_remote_code": remote,
        "check_refusal": remote,
        "processor_repos": {"etp": ETP_REPO_ID} if remote else {},
        "model_repos": {} if offline_endpoint is not None else _ecg2tok_model_repos(workdir.parent),
        "texts": ETP_TEXTS,
    }
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "PYTHONPATH")}
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        OMP_NUM_THREADS="1",
    )
    if offline_endpoint is not None:
        env.update(HF_HUB_OFFLINE="1", HF_ENDPOINT=offline_endpoint)
    with (workdir / "log.txt").open("w") as log:
        return subprocess.Popen(
            [sys.executable, str(script), json.dumps(args)],
            cwd=workdir,  # the checkout is not on sys.path: only the installed packages are
            env=env,
            stdin=subprocess.DEVNULL,  # transformers' trust_remote_code prompt gets EOF, never blocks
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _finish(process: subprocess.Popen, workdir: Path) -> dict:
    process.wait(timeout=300)
    output = (workdir / "log.txt").read_text()
    assert process.returncode == 0, f"child process failed:\n{output[-6000:]}"
    return json.loads((workdir / "report.json").read_text())


@pytest.fixture(scope="module")
def fresh_processes(hub_server, published, checkpoints, ecg2tok_checkpoints, tmp_path_factory):
    """Run the three child processes at once; returns their reports, outputs and requests."""
    import torch
    from safetensors.torch import load_file, save_file

    from ecg_hub.hub import download

    root = tmp_path_factory.mktemp("children")
    save_file({k: v.contiguous() for k, v in checkpoints["inputs"].items()}, root / "inputs.safetensors")
    save_file({"signal": torch.from_numpy(checkpoints["signal"])}, root / "signal.safetensors")
    for name, tensors in ecg2tok_checkpoints["extra"].items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, root / f"{name}-extra.safetensors")
    # `ecg-hub download` of main and of the pinned v1 commit fills the cache the offline child uses.
    offline_home = root / "hf-home-offline"
    for revision in (None, published["v1"]):
        download(REPO_ID, revision=revision, cache_dir=offline_home / "hub")
    requests_before = len(hub_server.state.requests)
    # The offline child's HF_ENDPOINT is a second, empty server: any request it made would land there.
    tripwire = HubServer().start()
    running = {
        "registered": _start_child(
            root / "registered",
            root / "hf-home-registered",  # empty cache
            loads={"main": None, "pinned_v1": published["v1"], "branch": "v1-branch"},
        ),
        "remote": _start_child(root / "remote", root / "hf-home-remote", loads={"main": None}, remote=True),
        "offline": _start_child(
            root / "offline",
            offline_home,
            loads={"main": None, "pinned_v1": published["v1"]},
            offline_endpoint=tripwire.url,
        ),
    }
    try:
        runs = {name: _finish(process, root / name) for name, process in running.items()}
    finally:
        tripwire.stop()
    outputs = {
        (run, load): load_file(root / run / f"{load}.safetensors")
        for run, report in runs.items()
        for load in report
        if isinstance(report[load], dict)
    }
    return {
        "reports": runs,
        "outputs": outputs,
        "requests": hub_server.state.requests[requests_before:],
        "offline_requests": tripwire.state.requests,
    }


def _assert_same_outputs(got: dict, expected: dict) -> None:
    import torch

    model_keys = {k for k in got if not k.startswith("fe.")}
    assert model_keys == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{key} differs"


def _assert_same_features(got: dict, checkpoints: dict) -> None:
    import torch

    expected = checkpoints["feature_extractor"](
        checkpoints["signal"], sampling_rate=SIGNAL_RATE, leads=SIGNAL_LEADS, return_tensors="pt"
    )
    for key, value in expected.items():
        assert torch.equal(got[f"fe.{key}"], value), f"feature extractor output {key} differs"


def _expected_fe_config(checkpoints) -> dict:
    return {k: v for k, v in checkpoints["feature_extractor"].to_dict().items() if k != "auto_map"}


def test_fresh_process_loads_by_repo_id_with_installed_classes(fresh_processes, published, checkpoints):
    report = fresh_processes["reports"]["registered"]
    outputs, expected = fresh_processes["outputs"], checkpoints["outputs"]
    _assert_same_outputs(outputs[("registered", "main")], expected["v2"])  # main = latest publish
    _assert_same_features(outputs[("registered", "main")], checkpoints)
    assert report["main"]["fe_config"] == _expected_fe_config(checkpoints)
    # The installed ecg-hub classes were used, not the repo's code.
    assert report["main"]["model_class"] == "ecg_hub.modeling.modeling_ecg_jepa.EcgJepaModel"
    assert report["main"]["fe_class"] == "ecg_hub.modeling.feature_extraction_ecg.EcgFeatureExtractor"
    # It downloaded over HTTP from the test server (its cache started empty).
    paths = {path for _, path in fresh_processes["requests"]}
    assert f"/{REPO_ID}/resolve/{published['v2']}/model.safetensors" in paths


def test_revision_pinning_by_commit_and_branch(fresh_processes, checkpoints):
    outputs, expected = fresh_processes["outputs"], checkpoints["outputs"]
    _assert_same_outputs(outputs[("registered", "pinned_v1")], expected["v1"])
    _assert_same_outputs(outputs[("registered", "branch")], expected["v1"])


def test_trust_remote_code_loads_without_ecg_hub(fresh_processes, checkpoints):
    report = fresh_processes["reports"]["remote"]
    # Without trust_remote_code, nothing from the repo runs: transformers refuses.
    assert report["refusal"] is not None and "trust_remote_code" in report["refusal"]
    # ecg_hub was never imported nor even looked for, and the hiding really worked.
    assert report["blocked_imports"] == [], "\n".join(report["blocked_imports"])
    assert report["ecg_hub_modules"] == [] and report["hiding_works"]
    assert report["main"]["model_class"].startswith("transformers_modules.")
    assert report["main"]["model_class"].endswith("modeling_ecg_jepa.EcgJepaModel")
    assert report["main"]["fe_class"].endswith("feature_extraction_ecg.EcgFeatureExtractor")
    assert report["main"]["fe_config"] == _expected_fe_config(checkpoints)
    _assert_same_outputs(fresh_processes["outputs"][("remote", "main")], checkpoints["outputs"]["v2"])
    _assert_same_features(fresh_processes["outputs"][("remote", "main")], checkpoints)


def test_trust_remote_code_loads_a_processor_checkpoint_without_ecg_hub(
    fresh_processes, etp_checkpoint, published, hub_server
):
    import torch

    report = fresh_processes["reports"]["remote"]
    assert report["etp"]["model_class"].startswith("transformers_modules.")
    assert report["etp"]["model_class"].endswith("modeling_etp.EtpModel")
    assert report["etp"]["processor_class"].endswith("processing_etp.EtpProcessor")
    got = fresh_processes["outputs"][("remote", "etp")]
    for key, value in etp_checkpoint["batch"].items():  # the repo's processor prepares the same batch
        assert torch.equal(got[f"fe.{key}"], value), key
    _assert_same_outputs(got, etp_checkpoint["outputs"])
    files = set(hub_server.state.repos[("model", ETP_REPO_ID)].commits[published["etp"]].files)
    assert {
        "processor_config.json",
        "tokenizer.json",
        "processing_etp.py",
        "modeling_etp.py",
        "modeling_ecg_resnet.py",
    } <= files


@pytest.mark.parametrize("name", list(ECG2TOK_REPO_IDS))
@pytest.mark.parametrize("run", ["registered", "remote"])
def test_ecg2tok_loads_by_repo_id_in_a_fresh_process(fresh_processes, ecg2tok_checkpoints, run, name):
    """Each ECG2TOK checkpoint, with ``import ecg_hub`` (installed classes) and with
    ``trust_remote_code`` while ecg_hub is import-blocked (the repo's code), prepared by the repo's
    feature extractor: the same token ids (tokenizer) or logits (stage B: and the same loss, its
    labels coming from the tokenizer it names, loaded by repo id)."""
    report = fresh_processes["reports"][run]
    prefix = "ecg_hub.modeling." if run == "registered" else "transformers_modules."
    class_name = ECG2TOK_AUTO_CLASSES[name][1]
    assert report[name]["model_class"].startswith(prefix)
    assert report[name]["model_class"].endswith(f"modeling_ecg2tok.{class_name}")
    assert report[name]["fe_class"].startswith(prefix)
    if name == "ecg2tok":  # labelled on the fly by the tokenizer of config.tokenizer_name_or_path
        assert report[name]["label_tokenizer_class"].startswith(prefix)
        assert report[name]["label_tokenizer_class"].endswith("modeling_ecg2tok.Ecg2TokTokenizerModel")
    expected = ecg2tok_checkpoints["outputs"][name]
    assert set(expected) == (
        {"ids"} if name == "ecg2tok_tokenizer" else {"logits"} | ({"loss"} if name == "ecg2tok" else set())
    )
    _assert_same_outputs(fresh_processes["outputs"][(run, name)], expected)
    if run == "remote":
        assert report["blocked_imports"] == [], "\n".join(report["blocked_imports"])
        assert report["ecg_hub_modules"] == [] and report["hiding_works"]


#: What an ECG2TOK repo holds: its two modules, the shared components they import (and the
#: standard-library registry), the feature extractor; nothing of another family.
ECG2TOK_REPO_FILES = {
    ".gitattributes",
    "README.md",
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "requirements.txt",
    "configuration_ecg2tok.py",
    "modeling_ecg2tok.py",
    "feature_extraction_ecg.py",
    "leads.py",
    "clustering.py",
    "contrastive.py",
    "ema.py",
    "heads.py",
    "layers.py",
    "masking.py",
    "registry.py",
}


@pytest.mark.parametrize("name", list(ECG2TOK_REPO_IDS))
def test_ecg2tok_repo_carries_its_code_and_no_other_familys(hub_server, published, name):
    from ecg_hub import modeling

    files = hub_server.state.repos[("model", ECG2TOK_REPO_IDS[name])].commits[published[name]].files
    assert set(files) == ECG2TOK_REPO_FILES
    for file in ECG2TOK_REPO_FILES:
        if file.endswith(".py"):  # the installed code, byte for byte
            assert files[file] == (Path(modeling.__file__).parent / file).read_bytes(), file
    config = json.loads(files["config.json"])
    config_class = "Ecg2TokTokenizerConfig" if name == "ecg2tok_tokenizer" else "Ecg2TokConfig"
    assert config["auto_map"]["AutoConfig"] == f"configuration_ecg2tok.{config_class}"
    auto_class, class_name = ECG2TOK_AUTO_CLASSES[name]
    assert config["auto_map"][auto_class] == f"modeling_ecg2tok.{class_name}"
    assert config["architectures"] == [class_name]
    assert all(isinstance(v, str) for v in config["auto_map"].values())  # no [slow, fast] pairs
    requirements = files["requirements.txt"].decode().split("\n")
    assert "torch>=2.4" in requirements and not any(
        "ecg_hub" in line or "ecg-hub" in line for line in requirements
    )


def test_ecg2tok_stage_b_checkpoint_names_its_tokenizer_and_holds_none_of_its_weights(
    hub_server, published, ecg2tok_checkpoints
):
    from safetensors.torch import load

    files = hub_server.state.repos[("model", ECG2TOK_REPO_IDS["ecg2tok"])].commits[published["ecg2tok"]].files
    keys = set(load(files["model.safetensors"]))
    # Exactly the stage-B model's own weights (encoder, masked-label head), although the tokenizer
    # was attached (set_label_tokenizer) when it was saved.
    assert keys == ecg2tok_checkpoints["stage_b_keys"]
    assert all(k.startswith(("ecg2tok.", "lm_head")) for k in keys)
    assert not any("teacher" in k or "student" in k or "label_tokenizer" in k for k in keys)
    assert not keys & ecg2tok_checkpoints["tokenizer_keys"]
    for name in ("ecg2tok", "ecg2tok_classifier"):
        config = json.loads(
            hub_server.state.repos[("model", ECG2TOK_REPO_IDS[name])]
            .commits[published[name]]
            .files["config.json"]
        )
        assert config["tokenizer_name_or_path"] == ECG2TOK_REPO_IDS["ecg2tok_tokenizer"]
        assert config["tokenizer_revision"] == "main"


@pytest.mark.parametrize("name", list(ECG2TOK_REPO_IDS))
def test_ecg2tok_model_cards_render_for_both_model_types(published, ecg2tok_checkpoints, name):
    from huggingface_hub import ModelCard

    repo_id = ECG2TOK_REPO_IDS[name]
    card = ModelCard.load(repo_id)  # README.md at main, over HTTP
    text = card.text
    assert "{{" not in text and "{%" not in text
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert {"ecg-hub", "ecg2tok"} <= set(card.data.tags)
    assert f"# {repo_id}" in text and "not a medical device" in text and "10.24963/ijcai.2025/1110" in text
    assert f"`{ECG2TOK_AUTO_CLASSES[name][1]}`" in text
    assert "Codebook size | 16" in text  # tiny configs: K = 16
    assert "| Leads | 8, in this order: I, II, V1, V2, V3, V4, V5, V6 |" in text
    assert "Butterworth band-pass 0.67–40 Hz, order 5, zero-phase" in text
    if name == "ecg2tok_tokenizer":
        assert "stage-A semantic tokenizer" in text and "ids = tokenizer.encode(**inputs)" in text
        assert "ecg-hub tokenize DATASET --tokenizer" in text
        assert "Label tokenizer" not in text
    else:
        assert "stage-B" in text
        assert f"`{ECG2TOK_REPO_IDS['ecg2tok_tokenizer']}` at revision `main`" in text
    if name == "ecg2tok_classifier":
        assert f'AutoModelForSequenceClassification.from_pretrained("{repo_id}")' in text
        assert "Output classes | 3" in text
    if name != "ecg2tok":
        assert card.data.eval_results is None and "No evaluation results were published" in text
        return
    # The stage-B card's numbers are the results JSON's, in the metadata and in the table.
    results = json.loads(ecg2tok_checkpoints["results_path"].read_text())
    _assert_card_metrics_equal_results(card, results)
    half, full = results["results"]
    low, high = full["metrics_ci95"]["macro_auroc"]
    assert (
        f"| linear-probe | 100% | test | 1 | {full['metrics']['macro_auroc']:.4f} [{low:.4f}, {high:.4f}]"
        in text
    )
    mean, std = half["metrics"]["macro_auroc"], half["metrics_std"]["macro_auroc"]
    assert f"| linear-probe | 50% | test | 1, 2 | {mean:.4f} ± {std:.4f}" in text


def test_ecg2tok_card_template_uses_only_what_render_model_card_fills(ecg2tok_checkpoints, monkeypatch):
    """Every variable of ``model_cards/ecg2tok.md`` is one ``render_model_card`` passes (jinja would
    render a misspelt one as an empty string, silently), for each ECG2TOK model type."""
    import jinja2
    import jinja2.meta
    from huggingface_hub import ModelCard

    from ecg_hub import hub
    from ecg_hub.hub import _load_checkpoint

    template = hub._card_template("ecg2tok")
    used = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template))
    original = ModelCard.from_template.__func__
    filled = []

    def recording(cls, card_data, template_path=None, template_str=None, **kwargs):
        filled.append(set(kwargs) | {"card_data"})
        return original(cls, card_data, template_path=template_path, template_str=template_str, **kwargs)

    monkeypatch.setattr(ModelCard, "from_template", classmethod(recording))
    for name in ECG2TOK_REPO_IDS:
        model, preprocessor, family = _load_checkpoint(ecg2tok_checkpoints["dirs"][name])
        assert family == "ecg2tok"
        hub.render_model_card(repo_id="ecg-hub-test/x", family=family, model=model, preprocessor=preprocessor)
    assert len(filled) == len(ECG2TOK_REPO_IDS)
    for names in filled:
        assert used <= names, f"template variables not filled by render_model_card: {sorted(used - names)}"


def test_offline_mode_loads_from_the_cache_without_any_request(fresh_processes, checkpoints):
    assert fresh_processes["offline_requests"] == []  # its endpoint, a second server, saw nothing
    outputs, expected = fresh_processes["outputs"], checkpoints["outputs"]
    _assert_same_outputs(outputs[("offline", "main")], expected["v2"])
    _assert_same_outputs(outputs[("offline", "pinned_v1")], expected["v1"])
    assert fresh_processes["reports"]["offline"]["main"]["fe_config"] == _expected_fe_config(checkpoints)


# --------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault_status", [None, 500], ids=["dropped-connection", "http-500"])
def test_failed_publish_leaves_the_remote_repo_unchanged_and_says_what_failed(
    hub_server, published, checkpoints, fault_status
):
    from ecg_hub.hub import PublishError, publish

    repo = hub_server.state.repos[("model", REPO_ID)]
    before = (dict(repo.branches), len(repo.commits), dict(repo.commits[repo.branches["main"]].files))
    hub_server.state.inject_fault("commit", status=fault_status)
    try:
        with pytest.raises(PublishError) as failure:
            publish(checkpoints["dirs"]["v1"], REPO_ID)
    finally:
        hub_server.state.faults.pop("commit", None)
    message = str(failure.value)
    assert f"to {REPO_ID}@main failed while committing 14 files" in message
    assert f"The remote repo is unchanged: main is still at {published['v2']}" in message
    after = (dict(repo.branches), len(repo.commits), dict(repo.commits[repo.branches["main"]].files))
    assert after == before


def test_publish_refuses_a_checkpoint_without_its_feature_extractor(hub_server, checkpoints, tmp_path):
    from ecg_hub.hub import publish

    model_dir = tmp_path / "no-preprocessor"
    _tiny_jepa(0).save_pretrained(model_dir)
    with pytest.raises(ValueError, match="no preprocessor_config.json or processor_config.json"):
        publish(model_dir, "ecg-hub-test/never-created")
    with pytest.raises(ValueError, match="looks like a commit id; publish commits to a branch name"):
        publish(checkpoints["dirs"]["v1"], "ecg-hub-test/never-created", revision="a" * 40)
    assert ("model", "ecg-hub-test/never-created") not in hub_server.state.repos


def test_publish_refuses_results_of_another_model_or_malformed_results(hub_server, checkpoints, tmp_path):
    from ecg_hub.hub import publish

    other = json.loads(checkpoints["results_path"].read_text())
    other["model"] = str(checkpoints["dirs"]["v1"])  # as if v1 had been evaluated, publishing v2
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="field 'model'"):
        publish(checkpoints["dirs"]["v2"], "ecg-hub-test/never-created", results=tmp_path / "other.json")
    broken = json.loads(checkpoints["results_path"].read_text())
    broken["results"][1]["metrics"]["fmax"] = "0.65"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"results\[1\]\.metrics\.fmax.*must be a number"):
        publish(checkpoints["dirs"]["v2"], "ecg-hub-test/never-created", results=tmp_path / "broken.json")
    assert ("model", "ecg-hub-test/never-created") not in hub_server.state.repos


def test_remote_code_may_only_import_what_a_plain_transformers_install_has(tmp_path):
    from ecg_hub.hub import _check_remote_code_imports

    (tmp_path / "modeling_x.py").write_text(
        "import torch\nfrom .leads import STANDARD_LEADS\nimport json\ntry:\n    import flash_attn\nexcept ImportError:\n    pass\n"
    )
    assert _check_remote_code_imports(tmp_path) == ["torch>=2.4"]
    (tmp_path / "modeling_y.py").write_text("from ecg_hub.data import records\n")
    with pytest.raises(ValueError, match="modeling_y.py imports 'ecg_hub.data'"):
        _check_remote_code_imports(tmp_path)


# --------------------------------------------------------------------------------------------
# CLI and catalogue
# --------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    """Run the publish/download subcommands through their own register() functions."""
    from ecg_hub.commands import download, publish

    parser = argparse.ArgumentParser(prog="ecg-hub")
    subparsers = parser.add_subparsers()
    publish.register(subparsers)
    download.register(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_publish_private_to_a_branch_then_download_reads_only_safetensors(
    hub_server, checkpoints, capsys
):
    from huggingface_hub import HfApi

    repo_id = "ecg-hub-test/cli"
    argv = ["publish", str(checkpoints["dirs"]["v2"]), "--repo-id", repo_id, "--private", "--revision", "dev"]
    assert _cli([*argv, "--results", str(checkpoints["results_path"])]) == 0
    commit = capsys.readouterr().out.split("commit: ")[1].split()[0]
    repo = hub_server.state.repos[("model", repo_id)]
    assert repo.private and repo.branches["dev"] == commit
    assert set(repo.commits[repo.branches["main"]].files) == {".gitattributes"}  # main untouched
    # A pickle pushed by someone else is never downloaded.
    HfApi().upload_file(
        path_or_fileobj=b"not a pickle", path_in_repo="pytorch_model.bin", repo_id=repo_id, revision="dev"
    )
    upload_head = repo.branches["dev"]
    assert _cli(["download", repo_id, "--revision", "dev"]) == 0
    local = Path(capsys.readouterr().out.strip())
    assert local.is_dir() and local.name == repo.branches["dev"]
    files = {p.name for p in local.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= files
    assert "pytorch_model.bin" not in files
    # Publishing again removes files the new checkpoint does not have (one commit, adds + deletes).
    assert _cli(argv) == 0
    head = repo.commits[repo.branches["dev"]]
    assert "pytorch_model.bin" not in head.files and head.parent == upload_head


def test_cli_reports_failures_with_a_message_and_exit_code(hub_server, tmp_path, capsys):
    assert _cli(["download", "ecg-hub-test/does-not-exist"]) == 1
    assert "ecg-hub-test/does-not-exist" in capsys.readouterr().err
    assert _cli(["publish", str(tmp_path), "--repo-id", "ecg-hub-test/never-created"]) == 1
    assert "no config.json" in capsys.readouterr().err


def test_import_ecg_hub_registers_every_family_with_the_auto_classes():
    """After ``import ecg_hub`` every ecg-hub config type maps to a model and a feature extractor or
    processor (what loading by repo id without remote code needs), and ``publish`` knows its family."""
    from ecg_hub.modeling.registry import family_of_model_type
    from transformers import AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    import ecg_hub  # noqa: F401

    registered = {
        t: c for t, c in CONFIG_MAPPING._extra_content.items() if c.__module__.startswith("ecg_hub.")
    }
    assert {"ecg_jepa", "etp", "ecg_resnet"} <= set(registered)
    for model_type, config_class in registered.items():
        assert family_of_model_type(model_type) is not None, f"{model_type}: no model family (and card) for publishing"
        assert config_class in AutoModel._model_mapping, f"{model_type}: not registered with AutoModel"
        assert config_class in FEATURE_EXTRACTOR_MAPPING or config_class in PROCESSOR_MAPPING, (
            f"{model_type}: no AutoFeatureExtractor / AutoProcessor registration"
        )


def test_list_checkpoints_names_family_and_a_real_input_preset(capsys):
    from ecg_hub.modeling.registry import families, input_presets

    import ecg_hub
    from ecg_hub import hub

    checkpoints = ecg_hub.list_pretrained_checkpoints()
    assert len({c.repo_id for c in checkpoints}) == len(checkpoints) >= 4
    assert {c.family for c in checkpoints} == set(families())
    for checkpoint in checkpoints:
        assert checkpoint.repo_id.startswith("ecg-hub/")
        is_text = families()[checkpoint.family].kind == "text"
        assert checkpoint.input_preset is None if is_text else checkpoint.input_preset in input_presets()
        assert checkpoint.status in ("published", "planned")
        assert hub._card_template(checkpoint.family).startswith("---\n{{ card_data }}\n---")
    assert hub.list_pretrained_checkpoints("ecg_jepa")[0].repo_id == "ecg-hub/ecg-jepa-multiblock"
    with pytest.raises(ValueError, match="unknown model family"):
        hub.list_pretrained_checkpoints("resnet")
    assert _cli(["download", "--list"]) == 0
    assert "ecg-hub/etp-resnet18\tetp\tetp\tplanned\t" in capsys.readouterr().out
