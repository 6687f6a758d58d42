"""Learning-health diagnostics (ecg_hub.training.diagnostics): the figures on hand-made tensors,
the family adapters on tiny ECG-JEPA / ECG2TOK models, the positions-only warning, the monitor and
the validation probe inside tiny in-process pretraining runs (which must not change the training
stream), and --keep-best-probe.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from ecg_hub.modeling import EcgJepaForPreTraining
from ecg_hub.modeling.modeling_ecg2tok import Ecg2TokForMaskedSignalModeling, Ecg2TokTokenizerModel
from model_battery import tiny_ecg2tok_config, tiny_ecg2tok_tokenizer_config, tiny_ecg_jepa_config
from safetensors.torch import load_file

from ecg_hub.cli import main as cli_main
from ecg_hub.recipe import load_recipe
from ecg_hub.training.diagnostics import (
    DiagnosticsSettings,
    HealthInputs,
    LearningHealthMonitor,
    health_metrics,
    learning_health_inputs,
    per_dimension_std,
    pooled_record_share,
    positions_only,
    rankme,
    record_share,
    replaced_losses,
)
from ecg_hub.training.pretrain import PretrainRecipe, pretrain

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_RECIPE = REPO_ROOT / "recipes" / "ecg_jepa" / "pretrain_tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each in-process run builds its own Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _smooth_l1(predictions, targets, weights):
    per_token = torch.nn.functional.smooth_l1_loss(predictions, targets, reduction="none").mean(-1)
    if weights is None:
        return per_token.mean()
    return (per_token * weights).sum() / weights.sum()


# ------------------------------------------------------------------------------------------------
# The figures on hand-made tensors.
# ------------------------------------------------------------------------------------------------


def _records(num_records=64, num_tokens=20, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_records, num_tokens, dim, generator=generator)
    positions = 5.0 * torch.randn(num_tokens, dim, generator=generator)
    return inputs, positions


def test_a_model_that_ignores_its_input_is_record_independent():
    inputs, positions = _records()
    ignoring = positions.expand_as(inputs) + 3.0  # the same output for every record
    assert record_share(ignoring) == pytest.approx(0.0, abs=1e-12)
    assert pooled_record_share(ignoring.mean(1)) == pytest.approx(0.0, abs=1e-12)
    # Its predictions are their own across-record mean: the mean-replaced loss is the model's loss.
    targets = positions + 0.1 * inputs
    losses = replaced_losses(HealthInputs(pooled=ignoring.mean(1), predictions=ignoring, targets=targets,
                                          loss_fn=_smooth_l1))
    assert losses["loss_mean_replaced"] == losses["loss"]
    # The record-mean oracle knows the positions: far lower than a predictor off by a constant.
    assert losses["loss_oracle"] < losses["loss"] / 100


def test_a_model_that_copies_its_input_is_record_dependent():
    inputs, _ = _records()
    # Near 1: the 64 records' own mean is the only position part of zero-mean noise (1 - 1/R).
    assert record_share(inputs) == pytest.approx(1 - 1 / 64, abs=0.01)
    assert pooled_record_share(inputs.mean(1)) == pytest.approx(1 - 1 / 64, abs=0.02)
    # A constant shift of every entry changes nothing; a constant vector is record-independent.
    assert record_share(inputs + 7.0) == pytest.approx(record_share(inputs), rel=1e-9)
    assert record_share(inputs + torch.arange(16.0)) < record_share(inputs) / 10
    # Layer-normed tokens (zero mean over dims): the total is the energy.
    normed = torch.nn.functional.layer_norm(inputs + torch.arange(16.0), (16,))
    record_part = ((normed - normed.mean(0)) ** 2).sum()
    assert record_share(normed) == pytest.approx(float(record_part / (normed**2).sum()), rel=1e-6)
    # Predictions that copy the (record-dependent) targets lose a lot when replaced by their mean.
    losses = replaced_losses(HealthInputs(pooled=inputs.mean(1), predictions=inputs, targets=inputs,
                                          loss_fn=_smooth_l1))
    assert losses["loss"] == 0.0 and losses["loss_mean_replaced"] > 0.3


def test_positions_plus_a_small_record_part_give_that_part_share():
    inputs, positions = _records()
    mixed = positions + 0.1 * inputs  # record variance 0.01 against position variance 25
    share = record_share(mixed)
    assert 0.01 / 25.01 * 0.9 < share < 0.01 / 25.01 * 1.1
    # Tokens no record weights are left out; weighted-out entries do not count.
    weights = torch.ones(64, 20)
    weights[:, 10:] = 0
    assert record_share(mixed, weights) == pytest.approx(record_share(mixed[:, :10]), rel=1e-9)


def test_rankme_of_identity_like_and_rank_one_features():
    assert rankme(torch.eye(32)) == pytest.approx(32, rel=1e-4)
    q, _ = torch.linalg.qr(torch.randn(64, 32, generator=torch.Generator().manual_seed(0)))
    assert rankme(q) == pytest.approx(32, rel=1e-4)  # orthonormal columns: identity-like
    rank_one = torch.randn(64, 1) @ torch.randn(1, 32)
    assert rankme(rank_one) == pytest.approx(1.0, abs=1e-3)
    # A large shared vector plus small record noise: uncentred ~1, centred sees the noise's rank.
    shared = 100 * torch.ones(64, 32) + 0.01 * torch.randn(64, 32)
    assert rankme(shared) < 1.1 and rankme(shared, center=True) > 20


def test_per_dimension_std_finds_collapsed_dims():
    features = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    features[:, 3] = 2.0
    low, median = per_dimension_std(features)
    assert low == 0.0 and 0.7 < median < 1.3


def test_positions_only_needs_both_conditions():
    measured = {"target_record_share": 3.5e-4, "mean_replaced_change": 0.0}  # issue 17's run
    assert positions_only(measured)
    assert not positions_only({**measured, "mean_replaced_change": 0.05})  # the predictor uses the record
    assert not positions_only({**measured, "target_record_share": 0.2})  # the targets carry the record
    assert not positions_only({"pooled_record_share": 0.0})  # no targets: no verdict


# ------------------------------------------------------------------------------------------------
# Families.
# ------------------------------------------------------------------------------------------------


def _ecg_batch(num_records=6, num_samples=500, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_values": torch.randn(num_records, 8, num_samples, generator=generator),
        "lead_mask": torch.ones(num_records, 8, dtype=torch.long),
    }


def test_ecg_jepa_inputs_reproduce_the_forward_loss():
    torch.manual_seed(0)
    model = EcgJepaForPreTraining(tiny_ecg_jepa_config()).train()
    batch = _ecg_batch()
    inputs = learning_health_inputs(model, batch, seed=3)
    assert model.training  # the mode is restored
    assert inputs.family == "ecg_jepa" and inputs.pooled.shape == (6, 32) and inputs.tokens.shape == (6, 80, 32)
    assert inputs.predictions.shape == inputs.targets.shape and inputs.predictions.shape[0] == 6
    metrics = health_metrics(inputs)
    assert metrics["loss"] == pytest.approx(inputs.model_loss, rel=1e-5)
    # Chunks of 4 and 2 records share the mask: the same figures.
    chunked = health_metrics(learning_health_inputs(model, batch, seed=3, chunk_size=4))
    for key, value in metrics.items():
        assert chunked[key] == pytest.approx(value, rel=1e-4, abs=1e-9), key
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert metrics["position_signal_ratio"] > 1  # the sin-cos table dominates a 1-mV input


def test_ecg2tok_stage_b_inputs_reproduce_the_forward_loss():
    torch.manual_seed(0)
    model = Ecg2TokForMaskedSignalModeling(tiny_ecg2tok_config())
    labels = torch.randint(0, 16, (6, 80), generator=torch.Generator().manual_seed(2))
    inputs = learning_health_inputs(model, {**_ecg_batch(), "labels": labels}, seed=1)
    assert inputs.targets.shape == (6, 80, 16) and bool(inputs.weights.any())
    metrics = health_metrics(inputs)
    assert metrics["loss"] == pytest.approx(inputs.model_loss, rel=1e-5)
    assert metrics["loss_oracle"] < metrics["loss"]  # the per-position label frequencies beat a random head
    assert 0.5 < metrics["target_record_share"] <= 1  # random ids do not depend on the position


def test_ecg2tok_tokenizer_inputs_reproduce_the_patch_loss():
    torch.manual_seed(0)
    model = Ecg2TokTokenizerModel(tiny_ecg2tok_tokenizer_config())
    inputs = learning_health_inputs(model, _ecg_batch(), seed=1)
    metrics = health_metrics(inputs)
    assert metrics["loss"] == pytest.approx(inputs.model_loss, rel=1e-5)
    assert inputs.pooled.shape == (6, 32) and 0 <= metrics["target_record_share"] <= 1


# ------------------------------------------------------------------------------------------------
# The monitor and the warning.
# ------------------------------------------------------------------------------------------------


class _Accelerator:
    """What the monitor uses of an Accelerator."""

    device = torch.device("cpu")
    is_main_process = True
    num_processes = 1

    def __init__(self):
        self.logged, self.printed = [], []

    def autocast(self):
        return contextlib.nullcontext()

    def log(self, values, step):
        self.logged.append((step, values))

    def print(self, message):
        self.printed.append(message)


class CraftedModel(torch.nn.Module):
    """A model with its own ``learning_health_inputs``: targets and predictions that are the
    position pattern (positions only) or the record (healthy)."""

    def __init__(self, healthy: bool):
        super().__init__()
        self.healthy = healthy

    def learning_health_inputs(self, batch, generator):
        records = batch["input_values"].shape[0]
        noise = torch.randn(records, 10, 8, generator=generator)
        positions = torch.randn(10, 8, generator=generator).expand(records, -1, -1)
        targets = noise if self.healthy else positions + 1e-3 * noise
        predictions = targets if self.healthy else positions
        return HealthInputs(pooled=predictions.mean(1), predictions=predictions, targets=targets, loss_fn=_smooth_l1)


def _rows(count):
    return [{"signal": torch.zeros(8, 500).numpy(), "sampling_rate": 250, "leads": ["I"]} for _ in range(count)]


def _collate(rows, generator=None):
    return {"input_values": torch.zeros(len(rows), 8, 500)}


@pytest.mark.parametrize("healthy", [False, True])
def test_monitor_warns_once_on_a_positions_only_run(tmp_path, healthy):
    accelerator = _Accelerator()
    monitor = LearningHealthMonitor(DiagnosticsSettings(every_steps=2, records=16), _rows(40), _collate, 8,
                                    accelerator, tmp_path)
    assert monitor.batch["input_values"].shape[0] == 16
    model = CraftedModel(healthy)
    for step in (0, 2, 4):
        monitor.run(model, step)
    warnings = [line for line in accelerator.printed if line.startswith("WARNING")]
    history = json.loads((tmp_path / "learning_health.json").read_text())
    assert [entry["step"] for entry in history] == [0, 2, 4]
    if healthy:
        assert warnings == [] and monitor.summary()["positions_only_steps"] == []
    else:
        # Flagged at every step, said once, and only after training started.
        assert len(warnings) == 1 and "at step 2" in warnings[0] and "learning positions only" in warnings[0]
        assert monitor.summary()["positions_only_steps"] == [0, 2, 4]
        assert history[1]["warning"] == warnings[0]
    assert {"health/target_record_share", "health/oracle_gap", "health/rankme"} <= set(accelerator.logged[0][1])


# ------------------------------------------------------------------------------------------------
# In-process pretraining runs.
# ------------------------------------------------------------------------------------------------

# 2 leads x 2 s at 50 Hz (100 samples) in 10-sample patches: 20 tokens; synthetic records with a
# rhythm label column and train / validation / test splits.
SMALL_RUN = [
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
    "dataset.num_records=80",
    "dataset.sampling_rate=50",
    "dataset.duration_s=3",
    "data.batch_size=4",
    "training.max_steps=4",
    "training.log_every_steps=2",
    "training.progress_bar=false",
]


def _recipe(output_dir: Path, *overrides: str) -> PretrainRecipe:
    return load_recipe(
        TINY_RECIPE, [*SMALL_RUN, f"output_dir={output_dir}", "tracking.log_with=[]", *overrides],
        schema=PretrainRecipe,
    )


def test_monitor_and_probe_in_a_run_log_finite_figures_and_leave_training_unchanged(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain = pretrain(_recipe(tmp_path / "plain"))
    run = tmp_path / "diagnosed"
    result = pretrain(
        _recipe(
            run,
            "diagnostics.every_steps=2",
            "diagnostics.records=16",
            "diagnostics.probe.every_steps=2",
            "diagnostics.probe.records=32",
            "tracking.log_with=[tensorboard]",
        )
    )
    # Same seeds, same stream: diagnostics fork the random state and change no weight.
    assert result.summary["replicas"][0]["weights_sha256"] == plain.summary["replicas"][0]["weights_sha256"]

    history = json.loads((run / "learning_health.json").read_text())
    assert [entry["step"] for entry in history] == [0, 2, 4]
    for entry in history:
        for key in ("target_record_share", "pooled_record_share", "token_record_share", "loss",
                    "loss_mean_replaced", "loss_oracle", "oracle_gap", "rankme", "pooled_std_min"):
            assert torch.isfinite(torch.tensor(entry[key])), key
        assert 0 <= entry["target_record_share"] <= 1 and entry["records"] == 16
    health = result.summary["learning_health"]
    assert health["initial"]["step"] == 0 and health["final"]["step"] == 4 and len(health["history"]) == 3

    probe = result.summary["probe"]
    assert probe["label_column"] == "rhythm" and probe["model_step"] == 4 and probe["last_model_dir"] is None
    assert [entry["step"] for entry in probe["history"]] == [0, 2, 4]
    assert all(0 <= entry["val_macro_auroc"] <= 1 for entry in probe["history"])
    events = [EventAccumulator(str(p.parent)).Reload() for p in (run / "logs").rglob("events.out.*")]
    scalars = {tag: acc.Scalars(tag) for acc in events for tag in acc.Tags()["scalars"]}
    assert [event.step for event in scalars["probe/val_macro_auroc"]] == [0, 2, 4]
    assert [event.step for event in scalars["health/target_record_share"]] == [0, 2, 4]


def test_a_resumed_run_continues_the_health_history_and_the_training_stream(tmp_path):
    health = ["diagnostics.every_steps=2", "diagnostics.records=8", "training.checkpoint_every_steps=2"]
    whole = pretrain(_recipe(tmp_path / "whole", *health))
    pretrain(_recipe(tmp_path / "split", *health, "training.stop_after_steps=3"))
    resumed = pretrain(_recipe(tmp_path / "split", *health, "training.resume_from_checkpoint=latest"))
    assert resumed.summary["replicas"][0]["weights_sha256"] == whole.summary["replicas"][0]["weights_sha256"]
    # The session stopped at step 3 after measuring step 2; the resumed one starts after it.
    steps = [entry["step"] for entry in resumed.summary["learning_health"]["history"]]
    assert steps == [0, 2, 4]
    assert resumed.summary["learning_health"]["final"] == pytest.approx(
        whole.summary["learning_health"]["final"], rel=1e-5
    )


class ScriptedHead:
    """A probe head whose validation AUROCs are given (the probe at steps 0, 2, 4 gets them in order)."""

    def __init__(self, aurocs):
        self.aurocs = list(aurocs)

    def __call__(self, train_features, train_labels, val_features, val_labels, problem_type):
        assert train_features.shape[0] == len(train_labels) and val_features.shape[0] == len(val_labels)
        result = type("Result", (), {})()
        result.val_metrics, result.best_epoch = {"macro_auroc": self.aurocs.pop(0)}, 1
        return result


def test_keep_best_probe_makes_the_best_step_the_model(tmp_path):
    run = tmp_path / "run"
    code = cli_main(
        [
            "pretrain", str(TINY_RECIPE), *SMALL_RUN, f"output_dir={run}", "tracking.log_with=[]",
            "training.checkpoint_every_steps=2", "training.keep_last_checkpoints=null",
            f"diagnostics.probe.head={{_component_: {__name__}.ScriptedHead, aurocs: [0.9, 0.7, 0.6]}}",
            "--probe-every", "2", "--probe-records", "16", "--probe-label", "rhythm", "--keep-best-probe",
            "--trust-recipe",
        ]
    )
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    probe = summary["probe"]
    # Step 0 (0.9) is the baseline, not a candidate: step 2 (0.7) is the best trained step.
    assert probe["best"]["step"] == 2 and probe["model_step"] == 2
    assert probe["last_model_dir"] == str(run / "model_last")
    saved = load_file(run / "model" / "model.safetensors")
    step_2 = load_file(run / "checkpoints" / "step_00000002" / "model.safetensors")
    last = load_file(run / "model_last" / "model.safetensors")
    name = "ecg_jepa.patch_embeddings.projection.weight"
    assert torch.equal(saved[name], step_2[name]) and not torch.equal(saved[name], last[name])
    assert not (run / "best_probe_model").exists()


def test_probe_needs_a_labelled_dataset(tmp_path):
    recipe = _recipe(tmp_path / "run", "diagnostics.probe.every_steps=2", "diagnostics.probe.label_column=nope")
    with pytest.raises(ValueError, match=r"'nope' is not a label column.*rhythm"):
        pretrain(recipe)
