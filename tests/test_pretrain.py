"""The pretraining loop (ecg_hub.training): exact resume, two real processes, bf16 on CPU,
streaming, save_pretrained round trip, parameter groups, schedules and FLOP / MFU accounting.

Runs use the tiny recipe (recipes/ecg_jepa/pretrain_tiny.yaml) shrunk further by overrides: a
2-lead, 2-second ECG-JEPA (2 x 10 tokens, width 32) on a small on-disk Arrow dataset.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ecg_hub.recipe import load_recipe
from ecg_hub.training.dataloading import EpochBatchSampler, SeededCollate, build_train_dataloader
from ecg_hub.training.optim import build_lr_scheduler, build_param_groups
from ecg_hub.training.pretrain import PretrainRecipe, pretrain
from ecg_hub.training.throughput import count_flops, model_flops_utilization, peak_flops_per_second

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_RECIPE = REPO_ROOT / "recipes" / "ecg_jepa" / "pretrain_tiny.yaml"
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]

# 2 leads x 2 s at 50 Hz (100 samples) in 10-sample patches: 20 tokens.
SMALL_MODEL = [
    "model.config.lead_names=[I, II]",
    "model.config.sampling_rate=50",
    "model.config.num_samples=100",
    "model.config.patch_size=10",
    "model.config.hidden_size=32",
    "model.config.num_attention_heads=2",
    "model.config.intermediate_size=64",
    "model.config.predictor_hidden_size=16",
    "model.config.predictor_intermediate_size=32",
    "preprocessor.leads=[I, II]",
    "preprocessor.sampling_rate=50",
    "preprocessor.num_samples=100",
    "preprocessor.min_samples=100",
    "tracking.log_with=[]",
    "training.progress_bar=false",
]


def _write_dataset(path: Path, num_records: int, seed: int = 0) -> Path:
    """Real 12-lead-shaped records (3 s at 100 Hz, mV) saved as Arrow, so crops are random."""
    import datasets

    rng = np.random.default_rng(seed)
    t = np.arange(300) / 100.0
    signals = []
    for _ in range(num_records):
        rate_hz = rng.uniform(0.8, 1.8)
        phase = rng.uniform(0, 2 * np.pi, size=(12, 1))
        amplitude = rng.uniform(0.2, 1.5, size=(12, 1))
        noise = 0.05 * rng.standard_normal((12, t.size))
        signals.append((amplitude * np.sin(2 * np.pi * rate_hz * t + phase) + noise).astype(np.float32))
    features = datasets.Features(
        {
            "signal": datasets.Array2D((12, t.size), "float32"),
            "sampling_rate": datasets.Value("int32"),
            "leads": datasets.List(datasets.Value("string")),
            "record_id": datasets.Value("string"),
            "split": datasets.Value("string"),
        }
    )
    data = {
        "signal": signals,
        "sampling_rate": [100] * num_records,
        "leads": [LEADS] * num_records,
        "record_id": [f"rec-{i}" for i in range(num_records)],
        "split": ["test" if i % 10 == 9 else "train" for i in range(num_records)],
    }
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def arrow_dataset(tmp_path_factory) -> Path:
    # 40 records, 36 in the train split: 9 batches of 4 per epoch.
    return _write_dataset(tmp_path_factory.mktemp("data") / "ecgs", num_records=40)


def _recipe(output_dir: Path, dataset: Path, *overrides: str) -> PretrainRecipe:
    # Trusted where a test names its own model class (an untrusted recipe may not).
    trust = any("_component_=test_pretrain." in override for override in overrides)
    return load_recipe(
        TINY_RECIPE,
        [
            *SMALL_MODEL,
            f"output_dir={output_dir}",
            f"dataset={{_component_: datasets.load_from_disk, dataset_path: {dataset}}}",
            "data.batch_size=4",
            *overrides,
        ],
        schema=PretrainRecipe,
        trust=trust,
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each in-process run builds its own Accelerator (mixed precision differs between tests)."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# ------------------------------------------------------------------------------------------------
# The loop.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["memory_mapped", "streaming"])
def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path, arrow_dataset, source):
    # 12 optimizer steps of 2 micro-batches (9 batches per epoch: epochs end mid-step, twice);
    # stopped after step 5 (mid-epoch, batch 10 of the stream) and resumed. Streaming: an
    # IterableDataset in 4 shards read by a DataLoader worker.
    common = [
        "training.max_steps=12",
        "training.gradient_accumulation_steps=2",
        "training.checkpoint_every_steps=4",
        "training.log_every_steps=1",
    ]
    if source == "streaming":
        common += ["data.streaming=true", "data.num_shards=4", "data.num_workers=1"]
    full = pretrain(_recipe(tmp_path / "full", arrow_dataset, *common))
    first = pretrain(_recipe(tmp_path / "split", arrow_dataset, *common, "training.stop_after_steps=5"))
    assert first.summary["stopped_early"] and first.summary["steps"] == 5
    assert not (tmp_path / "split" / "model").exists()  # no final export for a stopped run
    checkpoints = sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir())
    assert checkpoints == ["step_00000004", "step_00000005"]
    progress = json.loads((tmp_path / "split/checkpoints/step_00000005/progress_rank0.json").read_text())
    assert progress == {
        "step": 5,
        "epoch": 1,
        "batch_in_epoch": 1,
        "examples": 40,
        "num_processes": 1,
        "total_steps": 12,
    }

    with pytest.raises(FileExistsError, match="--resume"):  # a fresh run would mix with the old checkpoints
        pretrain(_recipe(tmp_path / "split", arrow_dataset, *common))
    with pytest.raises(ValueError, match="run of 12 optimizer steps"):  # the schedules depend on the length
        pretrain(
            _recipe(
                tmp_path / "split",
                arrow_dataset,
                *common,
                "training.max_steps=20",
                "training.resume_from_checkpoint=latest",
            )
        )
    resumed = pretrain(
        _recipe(tmp_path / "split", arrow_dataset, *common, "training.resume_from_checkpoint=latest")
    )
    assert resumed.summary["steps"] == 12 and not resumed.summary["stopped_early"]

    expected = load_file(tmp_path / "full" / "model" / "model.safetensors")
    got = load_file(tmp_path / "split" / "model" / "model.safetensors")
    assert expected.keys() == got.keys()
    assert any(key.startswith("target_encoder.") for key in expected)  # the EMA target is saved and compared
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)
    # The model really trained: the context encoder moved away from its initialisation.
    assert full.summary["final_loss"] is not None and np.isfinite(full.summary["final_loss"])
    assert full.summary["examples"] == 12 * 2 * 4
    # The last 7 steps and their logged loss are the same in both runs.
    assert resumed.summary["final_loss"] == pytest.approx(full.summary["final_loss"], abs=1e-6)


def test_saved_model_loads_with_auto_classes_and_matches_the_trained_model(tmp_path, arrow_dataset):
    from transformers import AutoFeatureExtractor, AutoModel, AutoModelForPreTraining

    result = pretrain(
        _recipe(
            tmp_path / "run",
            arrow_dataset,
            "training.max_steps=3",
            "data.streaming=true",
            "data.num_shards=4",
            "data.num_workers=1",
        )
    )
    model_dir = Path(result.summary["model_dir"])
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "preprocessor_config.json").is_file()
    assert not list(model_dir.parent.glob(".*tmp*"))  # nothing half-written left behind

    feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir)
    assert feature_extractor.leads == ["I", "II"] and feature_extractor.sampling_rate == 50
    rng = np.random.default_rng(1)
    inputs = feature_extractor(
        rng.standard_normal((3, 2, 100)).astype(np.float32),
        sampling_rate=50,
        leads=["I", "II"],
        return_tensors="pt",
    )
    trained = result.model.eval()
    encoder = AutoModel.from_pretrained(model_dir).eval()
    assert type(encoder).__name__ == "EcgJepaModel"
    with torch.no_grad():
        expected = trained.ecg_jepa(**inputs).last_hidden_state
        torch.testing.assert_close(encoder(**inputs).last_hidden_state, expected, rtol=0, atol=1e-6)
        pretraining = AutoModelForPreTraining.from_pretrained(model_dir).eval()
        mask = torch.zeros(10, dtype=torch.bool)
        mask[3:6] = True
        torch.testing.assert_close(
            pretraining(**inputs, masked_time_patches=mask).loss,
            trained(**inputs, masked_time_patches=mask).loss,
        )
    recipe_copy = (tmp_path / "run" / "recipe.yaml").read_text()
    assert "streaming: true" in recipe_copy


def test_bf16_autocast_on_cpu(tmp_path, arrow_dataset):
    result = pretrain(
        _recipe(
            tmp_path / "bf16",
            arrow_dataset,
            "training.max_steps=4",
            "training.mixed_precision=bf16",
            "training.log_every_steps=2",
            "training.peak_tflops=1.0",
        )
    )
    summary = result.summary
    assert summary["mixed_precision"] == "bf16" and summary["device"] == "cpu"
    assert np.isfinite(summary["final_loss"])
    # Parameters stay float32 (autocast computes in bf16).
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    # FLOPs are counted on the first micro-batch and feed ECG/s, tokens/s and MFU.
    assert summary["flops_per_example"] > 0
    assert summary["tokens_per_second"] == pytest.approx(summary["ecg_per_second"] * 20)
    assert summary["mfu"] == pytest.approx(summary["flops_per_example"] * summary["ecg_per_second"] / 1e12)
    assert summary["replicas"][0]["world_size"] == 1


def test_two_cpu_processes_under_accelerate_launch_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    with socket.socket() as sock:  # a free port: other test sessions may run at the same time
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO_ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"),
        "--main_process_port",
        str(port),
        "-m",
        "ecg_hub",
        "pretrain",
        "ecg_jepa/pretrain_tiny",
        *SMALL_MODEL,
        f"output_dir={out}",
        "dataset.num_records=24",
        "data.batch_size=2",
        "training.max_steps=3",
        "training.checkpoint_every_steps=2",
    ]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=280, check=False
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]

    summary = json.loads((out / "summary.json").read_text())
    # Each process reports from inside: rank, the world size it saw, the digest of its weights.
    replicas = summary["replicas"]
    assert [r["rank"] for r in replicas] == [0, 1]
    assert all(r["world_size"] == 2 for r in replicas)
    assert replicas[0]["weights_sha256"] == replicas[1]["weights_sha256"]
    assert summary["num_processes"] == 2 and summary["examples"] == 3 * 2 * 2
    for rank in (0, 1):
        progress = json.loads(
            (out / "checkpoints" / "step_00000003" / f"progress_rank{rank}.json").read_text()
        )
        assert progress["num_processes"] == 2 and progress["step"] == 3
    assert (out / "model" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------
# Building blocks.
# ------------------------------------------------------------------------------------------------


def test_requested_trackers_must_exist():
    import importlib.util

    from ecg_hub.training.pretrain import _check_trackers

    _check_trackers(["tensorboard"])
    with pytest.raises(ValueError, match="unknown tracker 'tensorbored'"):
        _check_trackers(["tensorbored"])
    missing = [name for name in ("wandb", "trackio") if importlib.util.find_spec(name) is None]
    for name in missing:  # Accelerate alone would drop them silently
        with pytest.raises(ValueError, match=f"'{name}' is not installed"):
            _check_trackers([name])


def test_epoch_batch_sampler_shards_resumes_and_reshuffles():
    ranks = [EpochBatchSampler(50, batch_size=4, num_replicas=2, rank=r, seed=3) for r in range(2)]
    assert len(ranks[0]) == 6  # 50 // (4 * 2): the tail is dropped so both ranks take 6 steps
    epoch0 = [list(ranks[r]) for r in range(2)]
    seen = [i for batches in epoch0 for batch in batches for i in batch]
    assert len(seen) == len(set(seen)) == 48  # disjoint across ranks, no repeats
    single = EpochBatchSampler(50, batch_size=8, num_replicas=1, rank=0, seed=3)
    # One process with batch 8 sees at each step the same 8 records as 2 processes with batch 4.
    for step, batch in enumerate(single):
        assert sorted(batch) == sorted(epoch0[0][step] + epoch0[1][step])
    ranks[0].set_epoch(0, start_batch=4)
    assert [list(b) for b in ranks[0]] == epoch0[0][4:]  # a resume starts where the run stopped
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != epoch0[0]  # a new permutation each epoch
    assert [b.seed for b in ranks[0]] != [b.seed for b in epoch0[0]]
    with pytest.raises(ValueError, match="not enough for one batch"):
        EpochBatchSampler(5, batch_size=4, num_replicas=2)


def test_collator_randomness_is_keyed_by_batch_not_by_worker(arrow_dataset):
    import datasets
    from ecg_hub.modeling import EcgFeatureExtractor

    from ecg_hub.data.collators import EcgCollator

    dataset = datasets.load_from_disk(str(arrow_dataset)).with_format(
        "numpy", columns=["signal"], output_all_columns=True
    )
    fe = EcgFeatureExtractor(sampling_rate=100, leads=["I", "II"], num_samples=100, min_samples=100)
    collator = EcgCollator(fe, training=True)  # random 1-s crops out of 3-s records
    runs = {}
    for workers in (0, 2):
        loader = build_train_dataloader(dataset, collator, 4, seed=7, num_workers=workers)
        runs[workers] = [b["input_values"] for b in loader.epoch_batches(epoch=0)]
        resumed = [b["input_values"] for b in loader.epoch_batches(epoch=0, start_batch=3)]
        for a, b in zip(runs[workers][3:], resumed, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(runs[0], runs[2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The crops are random: the same rows under two batch seeds give different windows.
    rows = type("Rows", (list,), {})(dataset.__getitems__([0, 1, 2]))
    seeded = SeededCollate(collator)
    rows.seed = 1
    first = seeded(rows)["input_values"]
    torch.testing.assert_close(seeded(rows)["input_values"], first, rtol=0, atol=0)
    rows.seed = 2
    assert not torch.equal(seeded(rows)["input_values"], first)
    # A collator without a `seed` attribute gets seeded global generators instead.
    draw = SeededCollate(lambda batch: {"x": torch.rand(len(batch))})
    torch.testing.assert_close(draw(rows)["x"], draw(rows)["x"])


def test_param_groups_exempt_biases_norms_positions_and_frozen_targets():
    from ecg_hub.recipe import instantiate

    recipe = load_recipe(TINY_RECIPE, SMALL_MODEL, schema=PretrainRecipe)
    model = instantiate(recipe.model)
    groups = build_param_groups(model, weight_decay=0.05)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(name.endswith("weight") and "norm" not in name for name in decay["names"])
    assert any(name.endswith(".bias") for name in no_decay["names"])
    assert any("layernorm" in name or "norm" in name for name in no_decay["names"])
    assert any("mask_token" in name for name in no_decay["names"])
    names = decay["names"] + no_decay["names"]
    assert not any(name.startswith("target_encoder.") for name in names)  # EMA target: not optimised
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(names) == trainable


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = build_lr_scheduler(
        optimizer, num_training_steps=20, warmup_ratio=0.2, warmup_start_lr=1e-5, min_lr=1e-6
    )
    rates = []
    for _ in range(20):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(1e-5)
    assert rates[3] == pytest.approx(1e-3)  # 4 warmup steps: 1e-5 ... 1e-3
    assert all(a >= b for a, b in itertools.pairwise(rates[3:]))
    assert rates[-1] == pytest.approx(1e-6)


def test_flop_count_of_a_known_network_and_mfu():
    torch.manual_seed(0)
    batch, d_in, hidden, d_out = 5, 8, 16, 4
    mlp = torch.nn.Sequential(
        torch.nn.Linear(d_in, hidden, bias=False), torch.nn.ReLU(), torch.nn.Linear(hidden, d_out, bias=False)
    )
    x = torch.randn(batch, d_in)
    flops = count_flops(lambda: mlp(x).square().mean().backward())
    # Forward 2*B*in*out per layer; backward: weight gradients (2*B*in*out each) and the input
    # gradient of the second layer only (the first layer's input needs none).
    assert (
        flops
        == 2 * batch * (d_in * hidden + hidden * d_out)
        + 2 * batch * (d_in * hidden + hidden * d_out)
        + 2 * batch * hidden * d_out
    )
    # Attention on the CPU kernel is counted too: 4 * B * H * L * S * E forward, 2.5x that backward.
    q = torch.randn(2, 4, 10, 8, requires_grad=True)
    mask = torch.ones(10, 10, dtype=torch.bool)
    sdpa = count_flops(
        lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask).sum().backward()
    )
    assert sdpa == 4 * 2 * 4 * 10 * 10 * 8 * 3.5
    # MFU: ECG-JEPA-base's ~175 GFLOP per ECG at 2,000 ECG/s on one H100 SXM (989.4 TFLOP/s bf16).
    assert model_flops_utilization(175e9, 2000, 989.4e12) == pytest.approx(0.35375, rel=1e-4)
    assert model_flops_utilization(175e9, 4000, 989.4e12, num_devices=2) == pytest.approx(0.35375, rel=1e-4)
    assert peak_flops_per_second("cpu", "bf16") is None


class TwoTermJepa:
    """A pretraining model with two loss terms (ECG-JEPA's latent prediction plus a weighted spread
    penalty on the predictions), to check that the loop logs every named term."""

    def __new__(cls, config):
        from ecg_hub.modeling import EcgJepaForPreTraining

        class _TwoTerm(EcgJepaForPreTraining):
            def forward(self, input_values=None, attention_mask=None, lead_mask=None, masked_time_patches=None, **kwargs):
                output = super().forward(input_values, attention_mask, lead_mask, masked_time_patches, **kwargs)
                spread = torch.relu(1.0 - output.predicted_features.std(dim=0)).mean()
                output.losses = {"latent_prediction": output.loss, "spread": 0.1 * spread}
                output.loss = output.loss + 0.1 * spread
                return output

        return _TwoTerm(config)


def test_named_loss_terms_reach_the_summary_and_tensorboard(tmp_path, arrow_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = pretrain(
        _recipe(
            tmp_path / "run",
            arrow_dataset,
            f"model._component_={__name__}.TwoTermJepa",
            "training.max_steps=4",
            "training.log_every_steps=2",
            "tracking.log_with=[tensorboard]",
        )
    )
    terms = result.summary["final_losses"]
    assert set(terms) == {"latent_prediction", "spread"}
    assert terms["latent_prediction"] + terms["spread"] == pytest.approx(result.summary["final_loss"], rel=1e-5)
    assert terms["spread"] > 0
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["final_losses"] == pytest.approx(terms)
    events = [EventAccumulator(str(p.parent)).Reload() for p in (tmp_path / "run" / "logs").rglob("events.out.*")]
    scalars = {tag: acc.Scalars(tag) for acc in events for tag in acc.Tags()["scalars"]}
    assert {"train/loss", "train/loss/latent_prediction", "train/loss/spread", "train/ema_momentum"} <= set(scalars)
    assert [event.step for event in scalars["train/loss/spread"]] == [2, 4]


class NoLeadMaskJepa:
    """ECG-JEPA whose forward does not take ``lead_mask`` (which the collator produces)."""

    def __new__(cls, config):
        from ecg_hub.modeling import EcgJepaForPreTraining

        class _NoLeadMask(EcgJepaForPreTraining):
            def forward(self, input_values=None, attention_mask=None, masked_time_patches=None):
                return super().forward(input_values, attention_mask, None, masked_time_patches)

        return _NoLeadMask(config)


def test_batch_keys_the_forward_does_not_take_are_an_error(tmp_path, arrow_dataset):
    """A collator key the model's forward does not name is refused with the names, not dropped."""
    recipe = _recipe(
        tmp_path / "run", arrow_dataset, "training.max_steps=1", f"model._component_={__name__}.NoLeadMaskJepa"
    )
    with pytest.raises(ValueError, match=r"batch keys \['lead_mask'\].*does not take"):
        pretrain(recipe)


def test_feature_extractor_that_does_not_match_the_model_is_an_error(tmp_path, arrow_dataset):
    recipe = _recipe(tmp_path / "run", arrow_dataset, "training.max_steps=1", "preprocessor.sampling_rate=100")
    with pytest.raises(ValueError, match=r"sampling_rate is 100 but model.config.sampling_rate is 50"):
        pretrain(recipe)
