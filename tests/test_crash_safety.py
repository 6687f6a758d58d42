"""Nothing run that the user did not ask for, nothing lost: recipes are data unless trusted,
checkpoints carry a checksum manifest (corrupt ones are skipped, foreign ones refused), a full disk
or a read-only folder is a clear error that keeps the previous state, and a run killed at a bad
moment resumes to the same weights as an uninterrupted one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_pretrain import SMALL_MODEL, TINY_RECIPE, _write_dataset

from ecg_hub.recipe import RecipeError, load_recipe
from ecg_hub.training.checkpointing import MANIFEST_FILE, CheckpointError, verify_checkpoint
from ecg_hub.training.pretrain import PretrainRecipe, pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMON = [
    "training.max_steps=12",
    "training.checkpoint_every_steps=4",
    "training.keep_last_checkpoints=3",
    "training.log_every_steps=2",
]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def arrow_dataset(tmp_path_factory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("data") / "ecgs", num_records=40)


def _overrides(output_dir: Path, dataset: Path, *extra: str) -> list[str]:
    return [
        *SMALL_MODEL,
        f"output_dir={output_dir}",
        f"dataset={{_component_: datasets.load_from_disk, dataset_path: {dataset}}}",
        "data.batch_size=4",
        *COMMON,
        *extra,
    ]


def _recipe(output_dir: Path, dataset: Path, *extra: str) -> PretrainRecipe:
    return load_recipe(TINY_RECIPE, _overrides(output_dir, dataset, *extra), schema=PretrainRecipe)


@pytest.fixture(scope="module")
def reference(arrow_dataset, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of the uninterrupted run."""
    from accelerate.state import AcceleratorState, GradientState

    out = tmp_path_factory.mktemp("reference") / "run"
    try:
        pretrain(_recipe(out, arrow_dataset))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return load_file(out / "model" / "model.safetensors")


def _assert_same_weights(model_dir: Path, expected: dict[str, torch.Tensor]) -> None:
    got = load_file(model_dir / "model.safetensors")
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)


# ------------------------------------------------------------------------------------------------
# Recipes are data unless trusted.
# ------------------------------------------------------------------------------------------------

DANGEROUS = ["os.system", "subprocess.run", "builtins.eval", "builtins.exec", "shutil.rmtree"]


def _write_recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _packaged_recipe_text() -> str:
    from ecg_hub.recipe import resolve_recipe_path

    return resolve_recipe_path(TINY_RECIPE).read_text(encoding="utf-8")


@pytest.mark.parametrize("target", DANGEROUS)
def test_a_recipe_naming_a_dangerous_callable_is_refused_without_trust(tmp_path, target):
    text = _packaged_recipe_text().replace("ecg_hub.data.synthetic.make_synthetic_dataset", target, 1)
    assert target in text
    path = _write_recipe(tmp_path, text)
    with pytest.raises(RecipeError, match=rf"'dataset._component_': '{target}' is outside the allowed .*--trust-recipe"):
        load_recipe(path)
    # The same through an override of a packaged recipe, and through the schema key.
    with pytest.raises(RecipeError, match=rf"'{target}' is outside the allowed"):
        load_recipe(TINY_RECIPE, [f"collator._component_={target}"])
    with pytest.raises(RecipeError, match=rf"unknown recipe kind '{target}'.*outside the allowed"):
        load_recipe(TINY_RECIPE, [f"recipe={target}"])


def test_the_allow_list_follows_the_object_not_the_string(tmp_path):
    # Allowed prefixes that walk into another module or reach a foreign object.
    for dotted, why in [
        ("ecg_hub.data.ptbxl.os.system", "walks into module 'os'"),
        ("ecg_hub.training.pretrain.shutil.rmtree", "walks into module 'shutil'"),
        ("ecg_hub.recipe.get_component", "outside the allowed"),  # ecg_hub itself is not all allowed
        ("transformers.dynamic_module_utils.get_class_from_dynamic_module", "outside the allowed"),
    ]:
        with pytest.raises(RecipeError, match=why):
            load_recipe(TINY_RECIPE, [f"collator._component_={dotted}"])
    # An object re-exported into an allowed module from a foreign one is refused by its origin.
    with pytest.raises(RecipeError, match="is defined in 'pathlib"):
        load_recipe(TINY_RECIPE, ["collator._component_=ecg_hub.data.splits.Path"])


def test_trust_remote_code_needs_trust(tmp_path):
    override = "preprocessor={_component_: transformers.AutoFeatureExtractor.from_pretrained, pretrained_model_name_or_path: x, trust_remote_code: true}"
    with pytest.raises(RecipeError, match="'preprocessor.trust_remote_code' is true.*--trust-recipe"):
        load_recipe(TINY_RECIPE, [override])
    load_recipe(TINY_RECIPE, [override], trust=True)  # validated; nothing is built at load time


def test_yaml_tags_and_interpolation_cannot_evaluate_python(tmp_path):
    marker = tmp_path / "ran"
    text = _packaged_recipe_text().replace(
        "seed: 0", f"seed: !!python/object/apply:os.system ['touch {marker}']", 1
    )
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(_write_recipe(tmp_path, text))
    with pytest.raises(RecipeError):
        load_recipe(TINY_RECIPE, [f"seed=!!python/object/apply:os.system ['touch {marker}']"])
    with pytest.raises(RecipeError, match="os.system"):
        load_recipe(TINY_RECIPE, ["tracking.project_name=${os.system}"])  # a key lookup, not an evaluation
    assert not marker.exists()


def test_trusted_recipes_may_name_anything_and_every_packaged_recipe_needs_no_trust():
    from ecg_hub.recipe import packaged_recipes_dir, validate_recipe_file

    override = "collator={_component_: torch.utils.data.default_collate, _partial_: true}"
    recipe = load_recipe(TINY_RECIPE, [override], trust=True)
    assert recipe.collator.target == "torch.utils.data.default_collate"
    with pytest.raises(RecipeError, match="torch.utils.data.default_collate"):
        load_recipe(TINY_RECIPE, [override])
    for path in sorted(packaged_recipes_dir().rglob("*.yaml")):
        validate_recipe_file(path)  # untrusted


def test_cli_names_the_flag(tmp_path):
    from ecg_hub.recipe import resolve_recipe_path

    for command, name, target in (
        ("pretrain", TINY_RECIPE, "ecg_hub.data.synthetic.make_synthetic_dataset"),
        ("finetune", "finetune/ptbxl", "ecg_hub.loading.load_classification_model"),
    ):
        text = resolve_recipe_path(name).read_text(encoding="utf-8")
        assert target in text
        path = _write_recipe(tmp_path, text.replace(target, "os.system", 1))
        process = subprocess.run(
            [sys.executable, "-m", "ecg_hub", command, str(path), "--validate-only"],
            capture_output=True, text=True, check=False, cwd=tmp_path,
        )
        assert process.returncode != 0 and "os.system" in process.stderr and "--trust-recipe" in process.stderr
        assert "Traceback" not in process.stderr


# ------------------------------------------------------------------------------------------------
# Checkpoints: manifest, corruption, foreign folders, full disk.
# ------------------------------------------------------------------------------------------------


def test_a_corrupt_latest_checkpoint_is_skipped_and_the_run_still_ends_the_same(
    tmp_path, arrow_dataset, reference, caplog
):
    out = tmp_path / "run"
    pretrain(_recipe(out, arrow_dataset, "training.stop_after_steps=9"))
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000004", "step_00000008", "step_00000009"]
    assert all(verify_checkpoint(p) is None for p in checkpoints.iterdir())
    manifest = json.loads((checkpoints / "step_00000009" / MANIFEST_FILE).read_text())
    assert manifest["step"] == 9 and "progress_rank0.json" in manifest["files"]
    weights = checkpoints / "step_00000009" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated on disk
    assert "model.safetensors has" in verify_checkpoint(weights.parent)

    with caplog.at_level("WARNING"):
        resumed = pretrain(_recipe(out, arrow_dataset, "training.resume_from_checkpoint=latest"))
    assert "step_00000009 is corrupt: file model.safetensors" in caplog.text and "falling back to step_00000008" in caplog.text
    assert resumed.summary["steps"] == 12
    _assert_same_weights(out / "model", reference)
    # Named explicitly, the corrupt folder is an error.
    with pytest.raises(CheckpointError, match="step_00000009 is corrupt"):
        pretrain(_recipe(tmp_path / "other", arrow_dataset, f"training.resume_from_checkpoint={weights.parent}"))


def test_a_folder_without_the_manifest_is_refused_unless_trusted(tmp_path, arrow_dataset, reference):
    out = tmp_path / "run"
    pretrain(_recipe(out, arrow_dataset, "training.stop_after_steps=4"))
    foreign = tmp_path / "downloaded_checkpoint"
    shutil.copytree(out / "checkpoints" / "step_00000004", foreign)
    (foreign / MANIFEST_FILE).unlink()
    resume = f"training.resume_from_checkpoint={foreign}"
    with pytest.raises(CheckpointError, match=r"no ecg_hub_manifest.json .*pickles.*--trust-checkpoint"):
        pretrain(_recipe(tmp_path / "resumed", arrow_dataset, resume))
    assert not (tmp_path / "resumed").exists()
    pretrain(_recipe(tmp_path / "resumed", arrow_dataset, resume, "training.trust_checkpoint=true"))
    _assert_same_weights(tmp_path / "resumed" / "model", reference)


def _raise_on_step(monkeypatch, step: int, error: OSError):
    from ecg_hub.training import checkpointing

    original = checkpointing.write_manifest

    def write_manifest(folder, at_step):
        if at_step == step:
            raise error
        return original(folder, at_step)

    monkeypatch.setattr(checkpointing, "write_manifest", write_manifest)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, arrow_dataset, reference, monkeypatch):
    out = tmp_path / "run"
    _raise_on_step(monkeypatch, 8, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError, match=r"writing checkpoint .*step_00000008 failed: No space left on device \(ENOSPC\); "
                       r"the previous checkpoint .*step_00000004 is intact\. Free some space"):
        pretrain(_recipe(out, arrow_dataset))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000004"]  # no temporary folder left
    assert verify_checkpoint(out / "checkpoints" / "step_00000004") is None
    monkeypatch.undo()
    pretrain(_recipe(out, arrow_dataset, "training.resume_from_checkpoint=latest"))
    _assert_same_weights(out / "model", reference)


def test_a_read_only_model_folder_is_a_clear_error_and_resume_writes_the_model(tmp_path, arrow_dataset, reference, monkeypatch):
    from ecg_hub.modeling import EcgFeatureExtractor

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    out = tmp_path / "run"
    monkeypatch.setattr(EcgFeatureExtractor, "save_pretrained", read_only)
    with pytest.raises(OSError, match=r"saving the trained model to .*model failed: Read-only file system \(EROFS\); "
                       r"nothing was written to .*; the run's last checkpoint is saved: --resume"):
        pretrain(_recipe(out, arrow_dataset))
    assert not (out / "model").exists() and not (out / ".model.tmp").exists()
    monkeypatch.undo()
    pretrain(_recipe(out, arrow_dataset, "training.resume_from_checkpoint=latest"))
    _assert_same_weights(out / "model", reference)


def test_text_corpus_rewrite_on_a_full_disk_keeps_the_old_corpus(tmp_path, monkeypatch):
    import datasets

    from ecg_hub.data.text_corpus import load_text_corpus, prepare_text_corpus

    source = tmp_path / "notes.txt"
    source.write_text("sinus rhythm normal ecg\natrial fibrillation with rapid response\n", encoding="utf-8")
    out = tmp_path / "corpus"
    prepare_text_corpus(out, text_files=[source], min_words=1)
    before = load_text_corpus(out)["text"]

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full_disk)
    with pytest.raises(OSError, match=rf"writing the text corpus {out} failed: No space left on device \(ENOSPC\); "
                       rf"the previous corpus at {out} is intact"):
        prepare_text_corpus(out, text_files=[source], min_words=1, overwrite=True)
    monkeypatch.undo()
    assert load_text_corpus(out)["text"] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "notes.txt"]


# ------------------------------------------------------------------------------------------------
# kill -9 at bad moments, then --resume.
# ------------------------------------------------------------------------------------------------

_KILLER = r"""
import os, signal, sys

moment = sys.argv[1]
if moment == "before_manifest":
    # Every file of the second checkpoint is written, its manifest is not: as a kill inside save_state.
    import ecg_hub.training.checkpointing as checkpointing
    original = checkpointing.write_manifest
    def write_manifest(folder, step):
        if step == 8:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(folder, step)
    checkpointing.write_manifest = write_manifest
elif moment == "before_model_rename":
    # The final model is fully written to its temporary folder, not yet renamed into place.
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        if os.path.basename(str(dst)) == "model":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
from ecg_hub.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _cli_run(tmp_path: Path, arguments: list[str], moment: str = "none") -> subprocess.CompletedProcess:
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(script), moment, "pretrain", *arguments],
        capture_output=True, text=True, env=env, check=False, cwd=REPO_ROOT, timeout=600,
    )


@pytest.fixture(scope="module")
def subprocess_reference(arrow_dataset, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("cli_reference")
    process = _cli_run(out, [TINY_RECIPE, *_overrides(out / "run", arrow_dataset)])
    assert process.returncode == 0, process.stderr[-3000:]
    return load_file(out / "run" / "model" / "model.safetensors")


@pytest.mark.parametrize("moment", ["before_manifest", "before_model_rename"])
def test_kill_9_at_a_bad_moment_then_resume_ends_with_the_same_weights(
    tmp_path, arrow_dataset, subprocess_reference, moment
):
    arguments = [TINY_RECIPE, *_overrides(tmp_path / "run", arrow_dataset)]
    killed = _cli_run(tmp_path, arguments, moment)
    assert killed.returncode == -9, killed.stderr[-3000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    if moment == "before_manifest":
        assert sorted(p.name for p in checkpoints.iterdir()) == [".tmp_step_00000008", "step_00000004"]
        expected_start = "step_00000004"
    else:
        assert (tmp_path / "run" / ".model.tmp").is_dir() and not (tmp_path / "run" / "model").exists()
        expected_start = "step_00000012"
    resumed = _cli_run(tmp_path, [*arguments, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoints / expected_start}" in resumed.stdout + resumed.stderr
    _assert_same_weights(tmp_path / "run" / "model", subprocess_reference)
    assert not (tmp_path / "run" / ".model.tmp").exists()


# ------------------------------------------------------------------------------------------------
# Dataset preparation: full disk, read-only folder, kill -9.
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ptbxl_root(shared_data) -> Path:
    return shared_data / "ptbxl"


def test_prepare_on_a_full_disk_or_read_only_folder_keeps_the_previous_dataset(ptbxl_root, tmp_path, monkeypatch):
    import datasets

    from ecg_hub.data import prepare_ptbxl

    out = tmp_path / "ptbxl"
    prepare_ptbxl(ptbxl_root, out, limit=4, progress=False)
    before = datasets.load_from_disk(str(out))["record_id"]

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full_disk)
    with pytest.raises(OSError, match=rf"writing the dataset {out} failed: No space left on device \(ENOSPC\); "
                       rf"the previous dataset at {out} is intact"):
        prepare_ptbxl(ptbxl_root, out, limit=6, progress=False, overwrite=True)
    monkeypatch.undo()
    assert datasets.load_from_disk(str(out))["record_id"] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ptbxl"]  # no temporary folder left

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkdtemp", read_only)
    with pytest.raises(OSError, match=r"Read-only file system \(EROFS\).*Make the folder writable"):
        prepare_ptbxl(ptbxl_root, tmp_path / "elsewhere", limit=2, progress=False)


_PREPARE_KILLER = r"""
import os, signal, sys
import datasets
original = datasets.Dataset.save_to_disk
def save_to_disk(self, path, *args, **kwargs):
    original(self, path, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # the dataset is written to its temporary folder, not renamed
datasets.Dataset.save_to_disk = save_to_disk
from ecg_hub.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_prepare_killed_before_the_rename_leaves_no_dataset_and_a_rerun_completes(ptbxl_root, tmp_path):
    import datasets

    script = tmp_path / "killer.py"
    script.write_text(_PREPARE_KILLER)
    out = tmp_path / "data" / "ptbxl"
    out.parent.mkdir()
    command = ["data", "prepare", "ptbxl", "--root", str(ptbxl_root), "--out", str(out), "--no-progress", "--limit", "40"]
    killed = subprocess.run([sys.executable, str(script), *command], capture_output=True, text=True, check=False, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists()  # only a temporary folder beside it
    rerun = subprocess.run([sys.executable, "-m", "ecg_hub", *command], capture_output=True, text=True, check=False, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(datasets.load_from_disk(str(out))) == 40
