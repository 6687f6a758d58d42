"""`ecg-hub benchmark --suite synthetic`: pretraining, evaluation of every model and its random-init twin
against the hand-crafted baseline, the leaderboard files, and the stage cache (resume, recompute only
what a changed setting touches)."""

from __future__ import annotations

import argparse
import json
import math
import os
import stat

import pytest

from ecg_hub import benchmark
from ecg_hub.commands import benchmark as benchmark_command

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Two families: ECG-JEPA (linear probe + fine-tune) and ETP (also zero-shot: text-aligned).
FAMILIES = "ecg_jepa,etp"


def _run(out, capsys, *extra):
    parser = argparse.ArgumentParser(prog="ecg-hub")
    benchmark_command.register(parser.add_subparsers())
    args = parser.parse_args(
        ["benchmark", "--suite", "synthetic", "--out", str(out), "--families", FAMILIES, "--num-records", "80",
         "--steps", "2", "--bootstrap", "20", "--probe-epochs", "20", *extra]
    )
    code = args.func(args)
    printed = capsys.readouterr().out
    document = json.loads((out / "leaderboard.json").read_text())
    return code, printed, document


def _statuses(document):
    return {stage["stage"]: stage["status"] for stage in document["stages"]}


def _forbid(monkeypatch, *names):
    def refuse(*args, **kwargs):
        raise AssertionError("a cached stage was recomputed")

    for name in names:
        monkeypatch.setattr(benchmark, name, refuse)


def test_synthetic_suite_leaderboard_then_resume_then_recompute_only_what_changed(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"

    # A first run whose ECG-JEPA pretraining stops after its first step (as if killed after a checkpoint):
    # that stage fails, the others finish, and the leaderboard is written without ECG-JEPA.
    pretrain = benchmark.run_pretraining

    def interrupted(recipe):
        if "ecg_jepa" in recipe.output_dir:
            recipe.training.stop_after_steps = 1
        return pretrain(recipe)

    monkeypatch.setattr(benchmark, "run_pretraining", interrupted)
    code, printed, document = _run(out, capsys)
    assert code == 1, printed
    stages = _statuses(document)
    assert stages["pretrain:ecg_jepa"] == "failed" and "evaluate:ecg_jepa:pretrained" not in stages
    assert {s for s, status in stages.items() if status == "ran"} == {
        "data", "evaluate:baseline", "pretrain:etp", "evaluate:etp:pretrained", "evaluate:etp:random-init"}
    assert "failed: pretrain:ecg_jepa" in printed
    monkeypatch.undo()

    # The rerun continues the pretraining from its checkpoint and scores ECG-JEPA; the rest is cached.
    code, printed, document = _run(out, capsys)
    assert code == 0, printed
    assert "resuming the interrupted pretraining" in printed and "resumed from" in printed
    assert json.loads((out / "stages" / "pretrain-ecg_jepa" / "pretrain.json").read_text())["steps"] == 2
    stages = _statuses(document)
    assert {s for s, status in stages.items() if status == "ran"} == {
        "pretrain:ecg_jepa", "evaluate:ecg_jepa:pretrained", "evaluate:ecg_jepa:random-init"}
    # The families outside --families were skipped with a reason.
    assert set(stages) == {
        "data", "evaluate:baseline",
        "pretrain:ecg_jepa", "evaluate:ecg_jepa:pretrained", "evaluate:ecg_jepa:random-init",
        "pretrain:etp", "evaluate:etp:pretrained", "evaluate:etp:random-init",
    }
    skipped = {f["family"]: f["skipped"] for f in document["families"]}
    assert skipped["ecg_jepa"] is None and skipped["etp"] is None
    assert skipped["ecg2tok"] == "not in --families"
    assert all(f["recipe"] in ("ecg_jepa/pretrain_tiny", "etp/pretrain_synthetic_tiny") for f in document["families"]
               if f["skipped"] is None)

    # The rows: each model under each protocol it supports, at 100 % labels; zero-shot only for the
    # pretrained text-aligned family; finite AUROCs with their bootstrap intervals; gaps to the baseline.
    rows = {(r["model"], r["protocol"]): r for r in document["rows"]}
    assert set(rows) == {
        ("hand-crafted features", "handcrafted-features"),
        ("ECG-JEPA pretrained", "linear-probe"), ("ECG-JEPA pretrained", "finetune"),
        ("ECG-JEPA random-init", "linear-probe"), ("ECG-JEPA random-init", "finetune"),
        ("ETP pretrained", "linear-probe"), ("ETP pretrained", "finetune"), ("ETP pretrained", "zero-shot"),
        ("ETP random-init", "linear-probe"), ("ETP random-init", "finetune"),
    }
    baseline = rows[("hand-crafted features", "handcrafted-features")]["metrics"]["macro_auroc"]
    for (model, protocol), row in rows.items():
        auroc = row["metrics"]["macro_auroc"]
        assert math.isfinite(auroc) and 0.0 <= auroc <= 1.0, (model, protocol)
        low, high = row["ci95"]["macro_auroc"]
        assert low <= auroc <= high, (model, protocol)
        assert row["fraction"] == (0.0 if protocol == "zero-shot" else 1.0)
        if protocol in ("linear-probe", "finetune"):
            assert row["gap_to_baseline"] == pytest.approx(auroc - baseline)
        else:
            assert row["gap_to_baseline"] is None
    assert document["rows"][0]["protocol"] == "zero-shot"  # sorted: no labels first

    # The files: Markdown table, figures from the stored test predictions.
    markdown = (out / "leaderboard.md").read_text()
    assert "| model | protocol | labels |" in markdown and "ETP pretrained" in markdown
    assert markdown.count("hand-crafted features") >= 1 and "leaderboard.png" in markdown
    for name in ("leaderboard.png", "roc_ecg_jepa-pretrained.png", "roc_ecg_jepa-random-init.png",
                 "roc_etp-pretrained.png", "roc_etp-random-init.png", "roc_features-baseline.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name  # not mkstemp's 0600
    class_names, predictions = benchmark.load_predictions(out / "stages" / "evaluate-etp-pretrained" / "predictions.npz")
    assert class_names == document["dataset"]["class_names"]
    assert {(p["protocol"], p["seed"]) for p in predictions} == {("linear-probe", 42), ("finetune", 42), ("zero-shot", 0)}
    assert all(p["y_true"].shape == p["y_score"].shape for p in predictions)
    assert "[run] pretrain:ecg_jepa" in printed and "ecg-hub benchmark synthetic" in printed

    # Another rerun: nothing is computed again.
    _forbid(monkeypatch, "run_pretraining", "run_model_evaluation", "run_baseline_evaluation", "prepare_data")
    results = out / "stages" / "evaluate-ecg_jepa-pretrained" / "results.json"
    written = results.stat().st_mtime_ns
    code, printed, again = _run(out, capsys)
    assert code == 0, printed
    assert set(_statuses(again).values()) == {"cached"}
    assert printed.count("[cached]") == len(stages) and "[run]" not in printed
    assert results.stat().st_mtime_ns == written
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in document["rows"]]
    monkeypatch.undo()

    # More pretraining steps for one family: its pretraining and its pretrained model's evaluation run
    # again; its random-init twin (same architecture), the other family, the data and the baseline do not.
    code, printed, changed = _run(out, capsys, "--pretrain-arg", "ecg_jepa:training.max_steps=3")
    assert code == 0, printed
    recomputed = {stage for stage, status in _statuses(changed).items() if status == "ran"}
    assert recomputed == {"pretrain:ecg_jepa", "evaluate:ecg_jepa:pretrained"}
    assert json.loads((out / "stages" / "pretrain-ecg_jepa" / "pretrain.json").read_text())["steps"] == 3

    # --force names stages by id or prefix; an unknown one is refused with the list of stages.
    with pytest.raises(SystemExit, match="no such stage"):
        _run(out, capsys, "--force", "pretrain:ecg2tok")


def test_families_and_their_protocols_come_from_the_registry_and_recipes():
    suite = benchmark.SUITES["ptbxl-subset"]
    plans = {p.name: p for p in benchmark.plan_families(suite, benchmark.MODEL_PROTOCOLS, None, {}, True)}
    assert plans["ecg_jepa"].recipe == "ecg_jepa/pretrain_ptbxl_subset"
    assert plans["ecg_jepa"].protocols == ["linear-probe", "finetune"]
    assert plans["etp"].protocols == ["linear-probe", "finetune", "zero-shot"]
    # ECG2TOK's recipe reads the tokenizer's output folder: that recipe runs first.
    assert plans["ecg2tok"].prerequisites == ["ecg2tok/tokenizer_ptbxl_subset"]
    # A text family has no ECG encoder to score.
    text = [p for p in plans.values() if p.skipped and "text family" in p.skipped]
    assert text, {name: p.skipped for name, p in plans.items()}
    # A checkpoint stands in for a missing recipe.
    with_checkpoint = benchmark.plan_families(suite, ["linear-probe"], ["etp"], {"etp": "some/dir"}, False)
    etp = next(p for p in with_checkpoint if p.name == "etp")
    assert etp.recipe is None and etp.checkpoint == "some/dir" and etp.protocols == ["linear-probe"]
    with pytest.raises(ValueError, match="unknown model family"):
        benchmark.plan_families(suite, ["linear-probe"], ["nope"], {}, False)


def test_table_cells():
    document = {
        "results": [
            {"protocol": "linear-probe", "fraction": 0.1, "seeds": [42, 43, 44], "metrics": {"macro_auroc": 0.8},
             "metrics_std": {"macro_auroc": 0.01},
             "runs": [{"ci95": {"macro_auroc": [0.7, 0.85]}}, {"ci95": {"macro_auroc": [0.72, 0.9]}},
                      {"ci95": {"macro_auroc": [0.71, 0.88]}}]},
            {"protocol": "zero-shot", "fraction": 0.0, "seeds": [0], "metrics": {"macro_auroc": 0.6},
             "metrics_ci95": {"macro_auroc": [0.5, 0.7]}},
        ]
    }
    rows = benchmark.result_rows(document, model="m")
    assert benchmark.cell(rows[0], "macro_auroc_ci") == "0.800±0.010 [0.700, 0.900]"
    assert benchmark.cell(rows[1], "macro_auroc_ci") == "0.600 [0.500, 0.700]"
    assert benchmark.cell(rows[0], "labels") == "10%" and benchmark.cell(rows[1], "labels") == "none"
    assert benchmark.cell(rows[0], "macro_auprc") == "-"
    table = benchmark.markdown_table(benchmark.sort_rows(rows), benchmark.LEADERBOARD_COLUMNS)
    assert table.splitlines()[2].startswith("| m | zero-shot | none |")
