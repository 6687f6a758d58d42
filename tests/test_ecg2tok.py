"""ECG2TOK: Sinkhorn-Knopp (one process and two gloo processes), deterministic ``encode``, the
masked-label loss, codebook health through the loop, stage A and stage B through ``ecg-hub
pretrain``, and the EMA k-means option. The shared battery (test_model_battery.py) covers
save/load, sdpa = eager, masks and freezing for every ECG2TOK class."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from ecg_hub.modeling.clustering import sinkhorn_knopp
from ecg_hub.modeling.modeling_ecg2tok import IGNORE_INDEX, sample_masked_positions
from model_battery import tiny_ecg2tok_config, tiny_ecg2tok_tokenizer_config
from safetensors import safe_open

from ecg_hub import (
    Ecg2TokConfig,
    Ecg2TokForMaskedSignalModeling,
    Ecg2TokModel,
    Ecg2TokTokenizerConfig,
    Ecg2TokTokenizerModel,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parent.parent


def _scores(num_tokens: int, num_codes: int, seed: int = 0) -> torch.Tensor:
    """Cosine-like scores: unit features against unit prototypes, as the head produces them."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(num_tokens, 16, generator=generator), dim=1)
    prototypes = torch.nn.functional.normalize(torch.randn(num_codes, 16, generator=generator), dim=1)
    return features @ prototypes.t()


# ------------------------------------------------------------------------------------------------
# Sinkhorn-Knopp
# ------------------------------------------------------------------------------------------------


def test_sinkhorn_rows_sum_to_one_and_codes_get_equal_mass():
    # The design's shape: K = 512 codes, a per-GPU batch of 64 x 400 = 25,600 patch tokens.
    scores = _scores(25_600, 512)
    q = sinkhorn_knopp(scores, temperature=0.05, num_iterations=3)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(25_600), rtol=0, atol=1e-5)
    code_share = q.sum(dim=0) / q.shape[0]  # share of the batch each code receives
    assert float((code_share - 1 / 512).abs().max()) < 1e-3
    # Three iterations (the default) leave each code within 10 % of its equal share; the scaling
    # converges: 20 iterations give equal shares to 1e-3 relative.
    assert float((code_share * 512 - 1).abs().max()) < 0.1
    converged = sinkhorn_knopp(scores[:4096], temperature=0.05, num_iterations=20).sum(dim=0) / 4096
    assert float((converged * 512 - 1).abs().max()) < 1e-3
    # Without balancing, the same scores give a far from uniform usage.
    plain = torch.softmax(scores / 0.05, dim=1).sum(dim=0) / 25_600
    assert float((plain * 512 - 1).abs().max()) > 0.5


_SINKHORN_WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from ecg_hub.modeling.clustering import sinkhorn_knopp
    rank, world, port, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    scores = torch.load(path)
    sizes = [700, 324]  # unequal local batches
    start = sum(sizes[:rank])
    q = sinkhorn_knopp(scores[start:start + sizes[rank]], temperature=0.05, num_iterations=3)
    torch.save(q, path + f".rank{rank}")
    dist.barrier()
    dist.destroy_process_group()
    """
)


def test_two_gloo_processes_give_the_assignments_of_one_process_over_the_whole_batch(tmp_path):
    scores = _scores(1024, 32, seed=3)
    torch.save(scores, tmp_path / "scores.pt")
    (tmp_path / "worker.py").write_text(_SINKHORN_WORKER)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "worker.py"), str(rank), "2", str(port), str(tmp_path / "scores.pt")],
            env=env,
        )
        for rank in range(2)
    ]
    assert [w.wait(timeout=240) for w in workers] == [0, 0]
    distributed = torch.cat([torch.load(tmp_path / f"scores.pt.rank{rank}") for rank in range(2)])
    single = sinkhorn_knopp(scores, temperature=0.05, num_iterations=3)
    torch.testing.assert_close(distributed, single, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# encode
# ------------------------------------------------------------------------------------------------


def _records(count: int, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(count, 8, 500, generator=torch.Generator().manual_seed(seed))


def test_encode_is_the_same_alone_in_a_batch_and_after_save_load(tmp_path):
    torch.manual_seed(0)
    model = Ecg2TokTokenizerModel(tiny_ecg2tok_tokenizer_config()).eval()
    batch = _records(8)
    ids = model.encode(batch)
    assert ids.shape == (8, 8, 10) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < 16
    alone = model.encode(batch[3:4])
    assert torch.equal(alone[0], ids[3])
    model.train()  # encode runs the teacher in eval mode whatever the module's mode
    assert torch.equal(model.encode(batch), ids)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = Ecg2TokTokenizerModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.encode(batch), ids)
    torch.testing.assert_close(loaded.get_codebook(), model.get_codebook(), rtol=0, atol=0)


def test_missing_leads_and_padded_time_get_minus_100_and_leave_other_ids_alone():
    torch.manual_seed(0)
    model = Ecg2TokTokenizerModel(tiny_ecg2tok_tokenizer_config()).eval()
    batch = _records(4, seed=1)
    lead_mask = torch.ones(4, 8, dtype=torch.long)
    lead_mask[1, 2] = 0
    attention_mask = torch.ones(4, 500, dtype=torch.long)
    attention_mask[2, 400:] = 0  # the last two 50-sample patches of record 2 are padding
    garbage = batch.clone()
    garbage[1, 2] = 40.0
    garbage[2, :, 400:] = -40.0
    ids = model.encode(garbage, lead_mask=lead_mask, attention_mask=attention_mask)
    assert (ids[1, 2] == IGNORE_INDEX).all() and (ids[2, :, 8:] == IGNORE_INDEX).all()
    assert int((ids == IGNORE_INDEX).sum()) == 10 + 8 * 2
    # Record 1's other leads get the ids of the 7-lead record, whatever the missing lead held.
    clean = batch.clone()
    clean[1, 2] = 0.0
    clean[2, :, 400:] = 0.0
    assert torch.equal(model.encode(clean, lead_mask=lead_mask, attention_mask=attention_mask), ids)
    # And records without missing parts are untouched by the others' masks.
    assert torch.equal(ids[[0, 3]], model.encode(batch[[0, 3]]))


# ------------------------------------------------------------------------------------------------
# Stage B: the masked-label loss
# ------------------------------------------------------------------------------------------------


def test_masked_loss_starts_near_ln_k_and_ignores_labels_outside_the_mask():
    torch.manual_seed(0)
    model = Ecg2TokForMaskedSignalModeling(tiny_ecg2tok_config(codebook_size=64)).eval()
    batch = _records(6)
    torch.manual_seed(1)
    masked = model.sample_bool_masked_pos(6, 10)
    assert masked.shape == (6, 80)
    # Time-synchronised: every lead hides the same slots.
    grid = masked.reshape(6, 8, 10)
    assert (grid == grid[:, :1]).all()
    labels = torch.randint(0, 64, (6, 80), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        loss = model(batch, bool_masked_pos=masked, labels=labels).loss
        assert abs(float(loss) - math.log(64)) < 0.1 * math.log(64), float(loss)
        changed = labels.clone()
        changed[~masked] = torch.randint(0, 64, (int((~masked).sum()),))
        changed_loss = model(batch, bool_masked_pos=masked, labels=changed).loss
        assert float(changed_loss) == float(loss)
        changed[masked] = (changed[masked] + 1) % 64
        assert float(model(batch, bool_masked_pos=masked, labels=changed).loss) != float(loss)


def test_stage_b_masks_cover_about_half_of_the_time_slots_in_long_blocks():
    torch.manual_seed(0)
    masks = sample_masked_positions(64, 8, 50, (0.5, 0.5), (5, 10)).reshape(64, 8, 50)[:, 0]
    ratios = masks.float().mean(dim=1)
    assert float(ratios.min()) >= 0.5 and float(ratios.max()) <= 0.5 + 10 / 50
    runs = []
    for row in masks:
        length = 0
        for hidden in row.tolist() + [False]:
            if hidden:
                length += 1
            elif length:
                runs.append(length)
                length = 0
    assert min(runs) >= 1 and sum(runs) / len(runs) >= 5  # blocks merge; mean run at least one block


def test_stage_b_labels_come_from_the_frozen_tokenizer_and_are_not_saved(tmp_path):
    torch.manual_seed(0)
    tokenizer = Ecg2TokTokenizerModel(tiny_ecg2tok_tokenizer_config()).eval()
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    model = Ecg2TokForMaskedSignalModeling(
        tiny_ecg2tok_config(tokenizer_name_or_path=str(tmp_path / "tokenizer"))
    ).eval()
    batch = _records(3)
    torch.manual_seed(2)
    masked = model.sample_bool_masked_pos(3, 10)
    with torch.no_grad():
        on_the_fly = model(batch, bool_masked_pos=masked).loss
        given = model(batch, bool_masked_pos=masked, labels=tokenizer.encode(batch).reshape(3, -1)).loss
    assert float(on_the_fly) == float(given)
    assert not any(p.requires_grad for p in model._label_tokenizer.parameters())
    model.save_pretrained(tmp_path / "stage_b")
    with safe_open(tmp_path / "stage_b" / "model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert keys and all(key.startswith(("ecg2tok.", "lm_head")) for key in keys), keys
    config = json.loads((tmp_path / "stage_b" / "config.json").read_text())
    assert config["tokenizer_name_or_path"] == str(tmp_path / "tokenizer")
    # The encoder and the classifier load the stage-B checkpoint's encoder.
    encoder = Ecg2TokModel.from_pretrained(tmp_path / "stage_b")
    torch.testing.assert_close(
        encoder.encoder.embeddings.patch_embeddings.projection.weight,
        model.ecg2tok.encoder.embeddings.patch_embeddings.projection.weight,
    )


def test_tokenizer_that_does_not_match_the_model_is_an_error():
    tokenizer = Ecg2TokTokenizerModel(tiny_ecg2tok_tokenizer_config(codebook_size=32))
    model = Ecg2TokForMaskedSignalModeling(tiny_ecg2tok_config(codebook_size=16))
    with pytest.raises(ValueError, match="codebook_size"):
        model.set_label_tokenizer(tokenizer)
    with pytest.raises(ValueError, match="tokenizer_name_or_path"):
        model(_records(2))


def test_configs_reject_bad_values():
    from huggingface_hub.errors import StrictDataclassClassValidationError

    with pytest.raises(StrictDataclassClassValidationError, match="refinement_rounds"):
        Ecg2TokConfig(refinement_rounds=1)
    with pytest.raises(StrictDataclassClassValidationError, match="num_samples"):
        Ecg2TokTokenizerConfig(num_samples=510)
    with pytest.raises(ValueError, match="input_values"):
        Ecg2TokTokenizerModel(tiny_ecg2tok_tokenizer_config()).encode(torch.zeros(2, 12, 500))


# ------------------------------------------------------------------------------------------------
# Stage A: health, EMA k-means, and both stages through the loop
# ------------------------------------------------------------------------------------------------


def test_post_optimizer_step_reports_codebook_health_and_follows_the_schedules():
    torch.manual_seed(0)
    model = Ecg2TokTokenizerModel(tiny_ecg2tok_tokenizer_config(health_window_steps=2)).train()
    batch = _records(4)
    model(batch).loss.backward()
    first = model.post_optimizer_step(0, 10)
    assert set(first) == {
        "ema_momentum", "code_perplexity", "codes_unused_fraction", "argmax_sinkhorn_agreement", "teacher_temperature",
    }
    assert 1.0 <= first["code_perplexity"] <= 16.0 and 0.0 <= first["codes_unused_fraction"] < 1.0
    assert 0.0 <= first["argmax_sinkhorn_agreement"] <= 1.0
    assert first["ema_momentum"] == pytest.approx(0.996)
    # 0.04 -> 0.07 over the first 30 % of 10 steps: 0.05 after one step.
    assert first["teacher_temperature"] == pytest.approx(0.05)
    model(batch).loss.backward()
    model.post_optimizer_step(1, 10)
    model.post_optimizer_step(4, 10)
    assert model.teacher_temperature() == pytest.approx(0.07)


def test_ema_kmeans_codebook_initialises_updates_and_restarts_dead_codes():
    torch.manual_seed(0)
    model = Ecg2TokTokenizerModel(tiny_ecg2tok_tokenizer_config(clustering="ema_kmeans")).train()
    assert not model.student_head.prototypes.requires_grad
    batch = _records(4)
    out = model(batch)
    assert bool(model.kmeans_initialized)
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.targets.sum(-1)[out.targets.sum(-1) > 0], torch.ones(int((out.targets.sum(-1) > 0).sum())))
    before = model.teacher_head.prototypes.detach().clone()
    model.kmeans_cluster_sizes[0] = 0.0  # a dead code
    model(batch).loss.backward()
    after = model.teacher_head.prototypes.detach()
    assert not torch.equal(before, after)
    assert float(model.kmeans_cluster_sizes[0]) > 0  # restarted
    # [CLS] features are assigned to codes but never move the patch codebook.
    features = torch.nn.functional.normalize(torch.randn(5, 16), dim=1)
    before = model.teacher_head.prototypes.detach().clone()
    targets = model._teacher_targets(features @ model.teacher_head.codebook().t(), features, update_codebook=False)
    assert torch.equal(model.teacher_head.prototypes.detach(), before) and targets.shape == (5, 16)
    model._teacher_targets(features @ model.teacher_head.codebook().t(), features, update_codebook=True)
    assert not torch.equal(model.teacher_head.prototypes.detach(), before)


def test_prototypes_get_no_gradient_during_the_freeze_steps_and_the_schedule_survives_save_load(tmp_path):
    torch.manual_seed(0)
    model = Ecg2TokTokenizerModel(tiny_ecg2tok_tokenizer_config(prototype_freeze_steps=2)).train()
    batch = _records(3)
    grad_norms = []
    for step in range(3):
        model.zero_grad()
        model(batch).loss.backward()
        grad_norms.append(float(model.student_head.prototypes.grad.abs().sum()))
        model.post_optimizer_step(step, 10)
    assert grad_norms[0] == 0.0 and grad_norms[1] == 0.0 and grad_norms[2] > 0.0
    model.save_pretrained(tmp_path)
    loaded = Ecg2TokTokenizerModel.from_pretrained(tmp_path)
    assert loaded.training_progress == pytest.approx(0.3)
    assert loaded.teacher_temperature() == pytest.approx(model.teacher_temperature())


def _scalars(log_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(p.parent)).Reload() for p in log_dir.rglob("events.out.*")]
    return {tag: acc.Scalars(tag) for acc in events for tag in acc.Tags()["scalars"]}


def test_stage_a_through_ecg_hub_pretrain_lowers_the_loss_and_logs_codebook_health(tiny_ecg2tok_tokenizer):
    summary = json.loads((tiny_ecg2tok_tokenizer / "summary.json").read_text())
    assert set(summary["final_losses"]) == {"cls", "patch"}
    scalars = _scalars(tiny_ecg2tok_tokenizer / "logs")
    losses = [event.value for event in scalars["train/loss"]]
    assert losses[-1] < losses[0], losses
    patch = [event.value for event in scalars["train/loss/patch"]]
    assert patch[-1] < patch[0], patch
    for tag in ("code_perplexity", "codes_unused_fraction", "argmax_sinkhorn_agreement", "teacher_temperature", "ema_momentum"):
        assert f"train/{tag}" in scalars, sorted(scalars)
    model = Ecg2TokTokenizerModel.from_pretrained(tiny_ecg2tok_tokenizer / "model")
    assert model.config.codebook_size == 32 and (tiny_ecg2tok_tokenizer / "model" / "preprocessor_config.json").exists()


def test_stage_b_through_ecg_hub_pretrain_lowers_the_masked_loss(tiny_ecg2tok_tokenizer, tmp_path):
    from accelerate.state import AcceleratorState, GradientState

    from ecg_hub.recipe import load_recipe
    from ecg_hub.training.pretrain import PretrainRecipe, pretrain

    recipe = load_recipe(
        "ecg2tok/pretrain_tiny",
        [
            f"output_dir={tmp_path / 'stage_b'}",
            f"model.config.tokenizer_name_or_path={tiny_ecg2tok_tokenizer / 'model'}",
            "training.progress_bar=false",
            "training.max_steps=20",
        ],
        schema=PretrainRecipe,
    )
    try:
        result = pretrain(recipe)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    losses = [event.value for event in _scalars(tmp_path / "stage_b" / "logs")["train/loss"]]
    assert losses[-1] < 0.9 * losses[0], losses
    assert abs(losses[0] - math.log(32)) < 0.15 * math.log(32), losses
    assert isinstance(result.model, Ecg2TokForMaskedSignalModeling)


def test_both_stages_run_under_accelerate_launch_with_two_cpu_processes(tmp_path):
    """Stage A (Sinkhorn sums all-reduced over the two processes) then stage B labelled by it;
    the replicas end with identical weights."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    common = ["dataset.num_records=16", "data.batch_size=2", "training.max_steps=3", "training.progress_bar=false"]
    for recipe, extra in (
        ("ecg2tok/tokenizer_tiny", []),
        ("ecg2tok/pretrain_tiny", [f"model.config.tokenizer_name_or_path={tmp_path / 'a' / 'model'}"]),
    ):
        out = tmp_path / ("a" if "tokenizer" in recipe else "b")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(REPO_ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"),
            "--main_process_port", str(port),
            "-m", "ecg_hub", "pretrain", recipe, f"output_dir={out}", *common, *extra,
        ]
        completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=280, check=False)
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
        summary = json.loads((out / "summary.json").read_text())
        replicas = summary["replicas"]
        assert [r["world_size"] for r in replicas] == [2, 2]
        assert replicas[0]["weights_sha256"] == replicas[1]["weights_sha256"]
        assert (out / "model" / "model.safetensors").is_file()


def test_tiny_tokenizer_codes_separate_qrs_from_the_isoelectric_baseline(tiny_ecg2tok_tokenizer):
    """The abstract's claim that the labels carry clinical meaning, at the smallest scale: after
    ``ecg2tok/tokenizer_tiny`` (40 steps on synthetic ECGs), R-peak patches (neurokit2 on lead II)
    and patches without any wave have different majority codes, and the code carries information
    about "patch holds an R peak".

    Threshold: at least 0.05 bits. The indicator's entropy is about 0.88 bits at the 29.5 % R-peak
    share of these records, so 0.05 bits is 6 % of it; codes of time position (the failure this
    guards against: a full-scale sin-cos table drowning the patch content, ``time_position_scale=1``)
    gave 0.011 bits and one code on 71 % of patches; this recipe gives about 0.136 bits with 30 of 32
    codes used. Measured, not asserted: the same architecture at random init gives about 0.14 bits
    too (random prototypes already split high-amplitude from flat patches), so at this size the
    training keeps, and balances, the waveform split rather than creating it."""
    from ecg_hub import EcgFeatureExtractor
    from ecg_hub.data.synthetic import make_synthetic_dataset
    from ecg_hub.tokens import token_report

    records = make_synthetic_dataset(num_records=16, seed=1)  # records the tokenizer never saw
    folder = tiny_ecg2tok_tokenizer / "model"
    trained = Ecg2TokTokenizerModel.from_pretrained(folder).eval()
    report = token_report(trained, records, EcgFeatureExtractor.from_pretrained(folder))
    assert report["num_skipped"] == 0
    assert report["r_peak_majority_code"]["code"] != report["isoelectric_majority_code"]["code"], report
    assert report["mutual_information_bits"] >= 0.05, report["mutual_information_bits"]
    assert report["codes_used"] >= trained.config.codebook_size // 2, report["codes_used"]
