"""Every model family side by side under the one evaluation protocol: ``ecg-hub benchmark``.

:func:`run_benchmark` runs a *suite* (:data:`SUITES`) as a chain of cached *stages*:

- ``data``: the suite's dataset (PTB-XL prepared into ``outputs/data/ptbxl_100hz``, or the
  quickstart's synthetic records under ``OUT/data/synthetic``);
- ``pretrain:<family>`` (and ``pretrain:<family>:<recipe>`` for a recipe it depends on, such as the
  ECG2TOK tokenizer): the family's suite recipe (``recipes/<family>/pretrain_ptbxl_subset.yaml``;
  for ``synthetic`` its tiny recipe) through :func:`ecg_hub.training.pretrain.pretrain`, skipped for
  a family given as ``--checkpoint FAMILY=PATH``;
- ``evaluate:<family>:pretrained`` and ``evaluate:<family>:random-init``: the protocol runner
  (:func:`ecg_hub.evaluation.protocol.evaluate_model`): linear probe and fine-tune at the suite's
  label fractions, zero-shot for the text-aligned families (the pretrained model only: a random
  text tower has nothing to align with);
- ``evaluate:baseline``: the hand-crafted features (:func:`ecg_hub.evaluation.baseline.evaluate_baseline`).

The families come from the registry (:mod:`ecg_hub.modeling.registry`): every family of kind
``ecg``; a family without the suite's recipe (and no ``--checkpoint``) is skipped with the reason
printed. What a family is evaluated with follows from its declaration: fine-tune where it maps
``AutoModelForSequenceClassification``, zero-shot where it serves ``zero-shot-ecg-classification``.
A recipe the suite recipe depends on is found, not named: a recipe of the same folder whose
``output_dir`` the suite recipe refers to (``tokenizer_name_or_path: runs/ecg2tok_tokenizer_.../model``)
runs first, and the reference is pointed at its new output folder.

Caching: each stage writes its outputs under ``OUT/stages/<stage>/`` (results JSON, test
predictions; JSON atomically) and then ``manifest.json``: the hash of its inputs (the resolved
recipe with every override, the checkpoint's file contents, the dataset's fingerprint, the
protocol settings, the ecg-hub version), its wall time and its outputs. A rerun skips a stage whose
manifest hash matches (printed ``cached``); ``force`` (stage ids or prefixes: ``pretrain``,
``evaluate:ecg_jepa``, ``all``) or a changed input recomputes it, and only the stages downstream of
what changed: the random-init twin depends on the checkpoint's configuration files, not on its
weights, so more pretraining steps re-score the pretrained model only. An interrupted pretraining
continues from its last checkpoint when the rerun's recipe is the same.

Outputs in ``OUT``: ``leaderboard.md``, ``leaderboard.json`` (everything: settings, stages and wall
times, rows with per-class AUROC), ``leaderboard.png`` (test macro AUROC per model, one group per
protocol and label fraction, 95 % bootstrap intervals as error bars) and ``roc_<model>.png``
(per-class ROC curves of every protocol and fraction, from the stored test predictions).

The table code (:func:`result_rows`, :func:`rich_table`, :func:`markdown_table`) is shared with
``ecg-hub quickstart``, whose final table it prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ecg_hub.utils import save_figure_atomic, write_json_atomic
from ecg_hub.version import __version__

logger = logging.getLogger(__name__)

__all__ = [
    "LEADERBOARD_COLUMNS",
    "SUITES",
    "BenchmarkOptions",
    "Suite",
    "markdown_table",
    "result_rows",
    "rich_table",
    "run_benchmark",
    "sort_rows",
    "write_leaderboard",
]

# ------------------------------------------------------------------------------------------------
# Suites
# ------------------------------------------------------------------------------------------------

#: Protocol ids of the evaluation protocol, in leaderboard order, and the baseline's.
MODEL_PROTOCOLS = ("linear-probe", "finetune", "zero-shot")
BASELINE_PROTOCOL = "handcrafted-features"  # = ecg_hub.evaluation.baseline.BASELINE_PROTOCOL (imported lazily)
PROTOCOL_TITLES = {
    "zero-shot": "zero-shot",
    "linear-probe": "linear probe",
    "finetune": "fine-tune",
    BASELINE_PROTOCOL: "features + logistic regression",
}
INIT_TITLES = {"pretrained": "pretrained", "random": "random-init", "baseline": "features baseline"}
ZERO_SHOT_PIPELINE = "zero-shot-ecg-classification"
CLASSIFICATION_AUTO_CLASS = "AutoModelForSequenceClassification"
DEFAULT_PTBXL_DIR = "outputs/data/ptbxl_100hz"
DEFAULT_PTBXL_ROOT = "../shared/data/ptbxl"


@dataclass(frozen=True)
class Suite:
    """What one ``--suite`` runs.

    Attributes:
        name: the ``--suite`` value.
        data: ``"ptbxl"`` (PTB-XL at 100 Hz, folds 1-8 / 9 / 10) or ``"synthetic"`` (the quickstart's
            records, :func:`ecg_hub.data.synthetic.prepare_synthetic`).
        recipe_names: the recipe stem looked for in ``recipes/<family>/``, first found wins.
        dataset_name: recorded in the results JSON.
        label_column: the label set scored.
        fractions: label fractions of the probe and fine-tune protocols.
        bootstrap: bootstrap resamples of the 95 % intervals.
        protocols: the protocols run (each where the family supports it).
        steps: pretraining optimizer steps of every recipe run (``None``: the recipe's own).
        finetune: fine-tune protocol overrides (``TrainingArguments`` fields).
        recipe_overrides: overrides applied to every pretraining recipe of the suite.
    """

    name: str
    data: str
    recipe_names: tuple[str, ...]
    dataset_name: str
    label_column: str
    fractions: tuple[float, ...]
    bootstrap: int
    protocols: tuple[str, ...] = MODEL_PROTOCOLS
    steps: int | None = None
    finetune: Mapping[str, Any] = field(default_factory=dict)
    recipe_overrides: tuple[str, ...] = ()


SUITES: dict[str, Suite] = {
    "ptbxl-subset": Suite(
        name="ptbxl-subset",
        data="ptbxl",
        recipe_names=("pretrain_ptbxl_subset",),
        dataset_name="ptbxl",
        label_column="superclass",
        fractions=(0.01, 0.1, 1.0),
        bootstrap=1000,
    ),
    "synthetic": Suite(
        name="synthetic",
        data="synthetic",
        recipe_names=("pretrain_synthetic_tiny", "pretrain_tiny"),
        dataset_name="synthetic",
        label_column="rhythm",
        fractions=(1.0,),
        bootstrap=200,
        steps=10,
        finetune={"num_train_epochs": 1},
        recipe_overrides=("tracking.log_with=[]",),
    ),
}


@dataclass
class BenchmarkOptions:
    """The settings of one benchmark run (``ecg-hub benchmark``'s flags); ``None`` = the suite's.

    Attributes:
        suite: a key of :data:`SUITES`.
        out_dir: where stages, figures and the leaderboard go (default ``outputs/benchmark/<suite>``).
        families: family names to run (default: every ECG family with the suite's recipe or a checkpoint).
        checkpoints: family -> checkpoint folder or Hub id to evaluate instead of pretraining.
        force: stage ids or prefixes to recompute (``all``, ``data``, ``pretrain``, ``evaluate:baseline``, ...).
        protocols, fractions, seeds, bootstrap, label_column: the protocol settings.
        probe_epochs: linear probe maximum epochs.
        finetune: fine-tune protocol overrides (merged over the suite's).
        steps: pretraining optimizer steps of every recipe run.
        pretrain_overrides: recipe overrides, ``key=value`` for every family or ``FAMILY:key=value``.
        data: a prepared dataset folder instead of the suite's.
        data_root: the PTB-XL release folder the ``ptbxl`` data is prepared from.
        num_records: records of the synthetic data (the quickstart's default, 200).
        prompts: zero-shot prompts JSON ``{class: prompt}`` (default: the suite's).
        batch_size: feature-extraction batch size.
        dtype: inference precision (``float32`` for comparable numbers across machines).
        baseline: score the hand-crafted baseline.
        random_init: score each family's random-init twin.
    """

    suite: str = "synthetic"
    out_dir: str | os.PathLike | None = None
    families: Sequence[str] | None = None
    checkpoints: Mapping[str, str] = field(default_factory=dict)
    force: Sequence[str] = ()
    protocols: Sequence[str] | None = None
    fractions: Sequence[float] | None = None
    seeds: Sequence[int] = (42, 43, 44)
    bootstrap: int | None = None
    label_column: str | None = None
    probe_epochs: int = 100
    finetune: Mapping[str, Any] = field(default_factory=dict)
    steps: int | None = None
    pretrain_overrides: Sequence[str] = ()
    data: str | os.PathLike | None = None
    data_root: str | os.PathLike = DEFAULT_PTBXL_ROOT
    num_records: int = 200
    prompts: str | os.PathLike | None = None
    batch_size: int = 64
    dtype: str = "float32"
    baseline: bool = True
    random_init: bool = True


# ------------------------------------------------------------------------------------------------
# Stages and their cache
# ------------------------------------------------------------------------------------------------


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]


def stage_slug(stage: str) -> str:
    """The folder name of a stage id (``evaluate:ecg_jepa:pretrained`` -> ``evaluate-ecg_jepa-pretrained``)."""
    return stage.replace(":", "-").replace("/", "-")


@dataclass
class StageRecord:
    """One stage of this run: ``status`` is ``ran``, ``cached`` or ``failed``; ``seconds`` the wall time
    of the run that computed it (a cached stage keeps the time it took when it ran)."""

    stage: str
    status: str
    seconds: float
    hash: str
    result: dict
    error: str | None = None


class StageCache:
    """Runs stages under ``OUT/stages/<stage>/``, skipping those whose manifest matches (see the
    module docstring)."""

    def __init__(self, root: Path, force: Iterable[str] = (), echo: Callable[[str], None] = print):
        self.root = Path(root)
        self.force = list(force)
        self.echo = echo
        self.records: list[StageRecord] = []

    def forced(self, stage: str) -> bool:
        return any(f == "all" or stage == f or stage.startswith(f + ":") for f in self.force)

    def directory(self, stage: str) -> Path:
        return self.root / stage_slug(stage)

    def manifest(self, stage: str) -> dict | None:
        path = self.directory(stage) / "manifest.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def run(self, stage: str, inputs: Mapping[str, Any], compute: Callable[[Path, str], dict]) -> StageRecord:
        """``compute(stage_dir, hash) -> result`` (a small JSON-able dict whose ``outputs`` lists the
        files it wrote, relative to the stage folder) unless the stage is cached."""
        digest = _hash({"stage": stage, "ecg_hub_version": __version__, "inputs": inputs})
        directory = self.directory(stage)
        manifest = self.manifest(stage)
        if manifest is not None and manifest.get("hash") == digest and not self.forced(stage):
            result = manifest.get("result", {})
            if all((directory / name).exists() for name in result.get("outputs", [])):
                record = StageRecord(stage, "cached", float(manifest.get("seconds", 0.0)), digest, result)
                self.echo(f"[cached] {stage} (took {record.seconds:.1f} s when it ran)")
                self.records.append(record)
                return record
        why = "forced" if self.forced(stage) else "new" if manifest is None else "inputs changed"
        self.echo(f"[run] {stage} ({why})")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "manifest.json").unlink(missing_ok=True)  # never an old manifest beside new outputs
        start = time.perf_counter()
        try:
            result = compute(directory, digest)
        except Exception as error:  # noqa: BLE001 - recorded, reported, and the run goes on
            seconds = time.perf_counter() - start
            record = StageRecord(stage, "failed", seconds, digest, {}, f"{type(error).__name__}: {error}")
            self.echo(f"[failed] {stage} after {seconds:.1f} s: {record.error}")
            logger.debug("%s", traceback.format_exc())
            self.records.append(record)
            return record
        seconds = time.perf_counter() - start
        write_json_atomic(
            directory / "manifest.json",
            {
                "stage": stage,
                "hash": digest,
                "ecg_hub_version": __version__,
                "inputs": inputs,
                "seconds": seconds,
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "result": result,
            },
        )
        self.echo(f"[done] {stage} in {seconds:.1f} s")
        record = StageRecord(stage, "ran", seconds, digest, result)
        self.records.append(record)
        return record


# ------------------------------------------------------------------------------------------------
# The work of the stages (module-level so that tests can watch them)
# ------------------------------------------------------------------------------------------------


def run_pretraining(recipe) -> dict:
    """:func:`ecg_hub.training.pretrain.pretrain` of a loaded recipe; returns its summary."""
    from ecg_hub.training.pretrain import pretrain

    return pretrain(recipe).summary


def run_model_evaluation(model: str, dataset: str, label_column: str, settings, **kwargs) -> dict:
    """:func:`ecg_hub.evaluation.protocol.evaluate_model`."""
    from ecg_hub.evaluation.protocol import evaluate_model

    return evaluate_model(model, dataset, label_column, settings, **kwargs)


def run_baseline_evaluation(dataset: str, label_column: str, settings, **kwargs) -> dict:
    """:func:`ecg_hub.evaluation.baseline.evaluate_baseline`."""
    from ecg_hub.evaluation.baseline import evaluate_baseline

    return evaluate_baseline(dataset, label_column, settings, **kwargs)


def prepare_data(suite: Suite, target: Path, options: BenchmarkOptions) -> None:
    """Write the suite's dataset to ``target``."""
    if suite.data == "synthetic":
        from ecg_hub.data.synthetic import prepare_synthetic

        prepare_synthetic(target, num_records=options.num_records, seed=0, progress=False, overwrite=True)
    else:
        from ecg_hub.data.ptbxl import prepare_ptbxl

        prepare_ptbxl(options.data_root, target, sampling_rate=100, split="folds", progress=False, overwrite=True)


# ------------------------------------------------------------------------------------------------
# Test predictions, captured from the protocol runner
# ------------------------------------------------------------------------------------------------


class _PredictionCapture:
    """The test labels and scores of every run one evaluation scores
    (:func:`ecg_hub.results.capture_test_scores`), written beside its results for the ROC curves."""

    def __init__(self):
        self.entries: list[dict] = []

    @contextlib.contextmanager
    def active(self):
        from ecg_hub.results import capture_test_scores

        with capture_test_scores() as capture:
            try:
                yield self
            finally:
                self.entries = capture.entries

    def save(self, path: Path, class_names: Sequence[str]) -> int:
        """Write ``predictions.npz`` (atomically): ``class_names``, ``entries`` (JSON: protocol,
        fraction, seed per pair) and ``y_true_<i>`` / ``y_score_<i>``; returns the pairs written."""
        arrays: dict[str, np.ndarray] = {"class_names": np.asarray(list(class_names), dtype=str)}
        index = []
        for entry in self.entries:
            for seed, labels, scores in entry["runs"]:
                i = len(index)
                index.append({"protocol": entry["protocol"], "fraction": entry["fraction"], "seed": seed})
                arrays[f"y_true_{i}"] = labels.astype(np.int8)
                arrays[f"y_score_{i}"] = scores.astype(np.float32)
        arrays["entries"] = np.asarray(json.dumps(index))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez_compressed(handle, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return len(index)


def load_predictions(path: str | os.PathLike) -> tuple[list[str], list[dict]]:
    """``(class_names, [{"protocol", "fraction", "seed", "y_true", "y_score"}])`` of a ``predictions.npz``."""
    with np.load(path, allow_pickle=False) as stored:
        class_names = [str(c) for c in stored["class_names"]]
        index = json.loads(str(stored["entries"]))
        entries = [
            {**meta, "y_true": stored[f"y_true_{i}"], "y_score": stored[f"y_score_{i}"]}
            for i, meta in enumerate(index)
        ]
    return class_names, entries


# ------------------------------------------------------------------------------------------------
# Planning: families, recipes, prerequisites
# ------------------------------------------------------------------------------------------------


@dataclass
class FamilyPlan:
    """One family's part of the run."""

    name: str
    title: str
    recipe: str | None = None
    prerequisites: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    protocols: list[str] = field(default_factory=list)
    skipped: str | None = None


def _strings(node: Any, skip_top: Iterable[str] = ()) -> Iterable[str]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key not in skip_top:
                yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def _refers_to(value: str, output_dir: str) -> bool:
    output_dir = output_dir.rstrip("/")
    return value == output_dir or value.startswith(output_dir + "/")


def recipe_prerequisites(recipe_name: str, _seen: set[str] | None = None) -> list[str]:
    """The recipes of the same folder whose ``output_dir`` ``recipe_name`` refers to (recursively,
    prerequisites first): the runs whose outputs it reads, such as a tokenizer."""
    from ecg_hub.recipe import read_yaml, resolve_recipe_path

    seen = _seen if _seen is not None else {recipe_name}
    path = resolve_recipe_path(recipe_name)
    strings = list(_strings(read_yaml(path), skip_top=("output_dir",)))
    found: list[str] = []
    for candidate in sorted(path.parent.glob("*.yaml")):
        name = f"{path.parent.name}/{candidate.stem}"
        if candidate == path or name in seen:
            continue
        other = read_yaml(candidate)
        output_dir = other.get("output_dir") if isinstance(other, Mapping) else None
        if other.get("recipe") != "pretrain" or not isinstance(output_dir, str):
            continue
        if any(_refers_to(value, output_dir) for value in strings):
            seen.add(name)
            found += [p for p in recipe_prerequisites(name, seen) if p not in found]
            found.append(name)
    return found


def _capabilities(family) -> tuple[bool, bool]:
    """(fine-tune, zero-shot) from the family's registry declaration."""
    finetune = any(CLASSIFICATION_AUTO_CLASS in spec.models for spec in family.model_types.values())
    return finetune, ZERO_SHOT_PIPELINE in family.pipelines


def plan_families(
    suite: Suite, protocols: Sequence[str], families: Sequence[str] | None, checkpoints: Mapping[str, str],
    zero_shot_available: bool,
) -> list[FamilyPlan]:
    """Every registry family's plan (skipped ones with the reason)."""
    from ecg_hub.modeling.registry import families as registry_families
    from ecg_hub.recipe import RecipeError, resolve_recipe_path

    known = registry_families()
    for name in [*(families or []), *checkpoints]:
        if name not in known:
            raise ValueError(f"unknown model family {name!r}; known families: {sorted(known)}")
    plans = []
    for name, family in known.items():
        plan = FamilyPlan(name=name, title=family.title, checkpoint=checkpoints.get(name))
        plans.append(plan)
        if families is not None and name not in families:
            plan.skipped = "not in --families"
            continue
        if family.kind != "ecg":
            plan.skipped = f"a {family.kind} family: no ECG encoder to evaluate"
            continue
        if plan.checkpoint is None:
            for stem in suite.recipe_names:
                try:
                    resolve_recipe_path(f"{name}/{stem}")
                except RecipeError:
                    continue
                plan.recipe = f"{name}/{stem}"
                break
            if plan.recipe is None:
                wanted = " or ".join(f"recipes/{name}/{stem}.yaml" for stem in suite.recipe_names)
                plan.skipped = f"no {wanted} (give --checkpoint {name}=PATH to evaluate a checkpoint)"
                continue
            plan.prerequisites = recipe_prerequisites(plan.recipe)
        can_finetune, can_zero_shot = _capabilities(family)
        for protocol in protocols:
            if protocol == "finetune" and not can_finetune:
                continue
            if protocol == "zero-shot" and not (can_zero_shot and zero_shot_available):
                continue
            plan.protocols.append(protocol)
    return plans


# ------------------------------------------------------------------------------------------------
# Identities of inputs
# ------------------------------------------------------------------------------------------------

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def model_identity(model: str, *, weights: bool = True) -> dict:
    """What a stage's results depend on in a checkpoint: a hash of the folder's files (with or
    without the weight files), or the Hub id as given."""
    path = Path(model)
    if not path.is_dir():
        return {"hub_id": str(model)}
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        if not weights and file.name.endswith(_WEIGHT_SUFFIXES):
            continue
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return {"path": str(path), "sha256": digest.hexdigest()[:20], "weights": weights}


def dataset_fingerprint(path: str | os.PathLike) -> str:
    """A hash of a saved dataset's ``state.json`` / ``dataset_info.json`` files (they hold its
    Arrow fingerprint, its files and its features)."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(root.rglob("*.json")):
        if file.name in ("state.json", "dataset_info.json", "dataset_dict.json"):
            digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:20]


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def _pretrain_recipe(
    name: str, output_dir: Path, dataset: str, suite: Suite, options: BenchmarkOptions, family: str,
    relocated: Mapping[str, str],
) -> dict:
    """The recipe ``name`` as this run trains it: output under ``output_dir``, reading the suite's
    dataset, references to its prerequisites' outputs redirected (``relocated``: old -> new output
    folder), the suite's and the user's overrides applied."""
    from ecg_hub.recipe import apply_overrides, read_yaml, resolve_recipe_path

    data = read_yaml(resolve_recipe_path(name))
    data["output_dir"] = str(output_dir)
    component = data.get("dataset")
    if isinstance(component, Mapping) and "path" in component:
        data["dataset"] = {**component, "path": str(dataset)}
    else:  # a generator (the tiny recipes' synthetic records): the suite's data instead
        data["dataset"] = {"_component_": "datasets.load_from_disk", "dataset_path": str(dataset)}

    def redirect(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: redirect(v) for k, v in node.items()}
        if isinstance(node, list):
            return [redirect(v) for v in node]
        if isinstance(node, str):
            for old, new in relocated.items():
                if _refers_to(node, old):
                    return new + node[len(old.rstrip("/")):]
        return node

    data = redirect(data)
    overrides = list(suite.recipe_overrides)
    steps = options.steps if options.steps is not None else suite.steps
    if steps is not None:
        overrides.append(f"training.max_steps={int(steps)}")
    for item in options.pretrain_overrides:
        target, _, override = item.partition(":") if ":" in item.split("=", 1)[0] else ("", "", item)
        if not target or target == family:
            overrides.append(override)
    return apply_overrides(data, overrides, source=name)


def _pretrain_stage(cache: StageCache, stage: str, recipe: dict, recipe_name: str, extra_inputs: Mapping) -> StageRecord:
    from ecg_hub.recipe import load_recipe
    from ecg_hub.training.checkpointing import find_latest_checkpoint
    from ecg_hub.training.pretrain import PretrainRecipe

    def compute(directory: Path, digest: str) -> dict:
        output_dir = Path(recipe["output_dir"])
        pending = directory / "pending.json"
        resume = False
        try:
            started = json.loads(pending.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            started = None
        if (
            started is not None and started.get("hash") == digest and not cache.forced(stage)
            and find_latest_checkpoint(output_dir / "checkpoints") is not None
        ):
            resume = True
            cache.echo(f"  resuming the interrupted pretraining from {find_latest_checkpoint(output_dir / 'checkpoints')}")
        else:  # a fresh run: the loop refuses to mix a new run into old checkpoints
            shutil.rmtree(output_dir, ignore_errors=True)
            write_json_atomic(pending, {"hash": digest})
        overrides = ["training.resume_from_checkpoint=latest"] if resume else []
        summary = run_pretraining(load_recipe(recipe, overrides, schema=PretrainRecipe))
        if summary.get("stopped_early") or not summary.get("model_dir"):
            raise RuntimeError(f"pretraining {recipe_name} stopped before its last step; rerun to continue")
        pending.unlink(missing_ok=True)
        keep = ("steps", "examples", "elapsed_seconds", "ecg_per_second", "final_loss", "final_losses", "model_dir")
        result = {k: summary.get(k) for k in keep}
        write_json_atomic(directory / "pretrain.json", {"recipe": recipe_name, **result})
        return {**result, "recipe": recipe_name, "outputs": ["pretrain.json"]}

    inputs = {"recipe_name": recipe_name, "recipe": recipe, **extra_inputs}
    record = cache.run(stage, inputs, compute)
    if record.status == "cached" and not Path(record.result.get("model_dir") or "").is_dir():
        # The model folder was removed since: the manifest alone cannot stand in for it.
        (cache.directory(stage) / "manifest.json").unlink(missing_ok=True)
        cache.records.pop()
        return cache.run(stage, inputs, compute)
    return record


def _evaluation_settings(options: BenchmarkOptions, suite: Suite, protocols, random_init, prompts, work_dir):
    from ecg_hub.evaluation.linear_probe import LinearProbeConfig
    from ecg_hub.evaluation.protocol import EvaluationSettings

    return EvaluationSettings(
        protocols=list(protocols),
        fractions=[float(f) for f in (options.fractions or suite.fractions)],
        seeds=[int(s) for s in options.seeds],
        random_init=random_init,
        batch_size=options.batch_size,
        probe=LinearProbeConfig(max_epochs=options.probe_epochs),
        finetune={**suite.finetune, **options.finetune},
        prompts=prompts if "zero-shot" in protocols else None,
        bootstrap=options.bootstrap if options.bootstrap is not None else suite.bootstrap,
        cache_dir=None,
        work_dir=str(work_dir),
        dtype=options.dtype,
    )


def _settings_inputs(settings) -> dict:
    """The protocol settings that change results (not where work files go)."""
    values = asdict(settings)
    values.pop("work_dir", None)
    values.pop("cache_dir", None)
    values.pop("batch_size", None)  # inference batching: the same features
    return values


def _evaluate_stage(
    cache: StageCache, stage: str, model: str, identity: dict, data: dict, options: BenchmarkOptions,
    suite: Suite, protocols: Sequence[str], random_init: bool, prompts,
) -> StageRecord:
    directory = cache.directory(stage)
    settings = _evaluation_settings(options, suite, protocols, random_init, prompts, directory / "work")

    def compute(directory: Path, digest: str) -> dict:
        shutil.rmtree(directory / "work", ignore_errors=True)  # an interrupted run's fine-tuning checkpoints
        capture = _PredictionCapture()
        with capture.active():
            document = run_model_evaluation(
                model, data["path"], data["label_column"], settings,
                output_json=directory / "results.json", dataset_name=suite.dataset_name,
            )
        pairs = capture.save(directory / "predictions.npz", document["dataset"]["class_names"])
        shutil.rmtree(directory / "work", ignore_errors=True)  # fine-tuning checkpoints: the JSON holds the results
        return {"results": "results.json", "predictions": "predictions.npz", "prediction_runs": pairs,
                "outputs": ["results.json", "predictions.npz"]}

    inputs = {"model": identity, "data": data["identity"], "label_column": data["label_column"],
              "settings": _settings_inputs(settings)}
    return cache.run(stage, inputs, compute)


def _baseline_stage(cache: StageCache, data: dict, options: BenchmarkOptions, suite: Suite) -> StageRecord:
    settings = _evaluation_settings(options, suite, ["linear-probe"], False, None, cache.directory("evaluate:baseline"))
    feature_cache = cache.root.parent / "cache" / "handcrafted-features"

    def compute(directory: Path, digest: str) -> dict:
        capture = _PredictionCapture()
        with capture.active():
            document = run_baseline_evaluation(
                data["path"], data["label_column"], settings, output_json=directory / "results.json",
                dataset_name=suite.dataset_name, cache_dir=feature_cache,
            )
        pairs = capture.save(directory / "predictions.npz", document["dataset"]["class_names"])
        return {"results": "results.json", "predictions": "predictions.npz", "prediction_runs": pairs,
                "outputs": ["results.json", "predictions.npz"]}

    used = {k: v for k, v in _settings_inputs(settings).items() if k in ("fractions", "seeds", "problem_type", "bootstrap")}
    inputs = {"data": data["identity"], "label_column": data["label_column"], "settings": used}
    return cache.run("evaluate:baseline", inputs, compute)


def _data_stage(cache: StageCache, suite: Suite, options: BenchmarkOptions, out_dir: Path, label_column: str) -> dict:
    """The dataset folder this run scores, prepared if needed; returns ``{"path", "identity",
    "label_column", "class_names"}`` (``identity`` is read fresh every run)."""
    from ecg_hub.data.labels import label_names
    from ecg_hub.data.splits import load_splits

    if options.data is not None:
        target, inputs = Path(options.data), {"given": str(options.data)}
    elif suite.data == "synthetic":
        target = out_dir / "data" / "synthetic"
        inputs = {"synthetic": {"num_records": options.num_records, "seed": 0}}
    else:
        target = Path(DEFAULT_PTBXL_DIR)
        inputs = {"ptbxl": {"root": str(options.data_root), "sampling_rate": 100, "split": "folds"}}

    def compute(directory: Path, digest: str) -> dict:
        if options.data is not None:
            if not target.exists():
                raise FileNotFoundError(f"--data {target}: no such dataset folder")
        elif suite.data == "synthetic" or cache.forced("data") or not target.exists():
            prepare_data(suite, target, options)
        else:
            cache.echo(f"  using the prepared dataset at {target} (--force data to prepare it again)")
        splits = load_splits(target)
        summary = {"path": str(target), "split_records": {k: len(v) for k, v in splits.items()}}
        write_json_atomic(directory / "data.json", summary)
        return {**summary, "outputs": ["data.json"]}

    record = cache.run("data", inputs, compute)
    if record.status == "failed":
        raise RuntimeError(f"data: {record.error}")
    splits = load_splits(target)
    if label_column not in splits["train"].column_names:
        raise ValueError(f"label set {label_column!r}: not a column of {target} (columns: {splits['train'].column_names})")
    return {
        "path": str(target),
        "identity": {"path": str(target), "fingerprint": dataset_fingerprint(target)},
        "label_column": label_column,
        "class_names": label_names(splits["train"], label_column),
        "split_records": {k: len(v) for k, v in splits.items()},
    }


def _zero_shot_prompts(suite: Suite, options: BenchmarkOptions, class_names: Sequence[str]) -> tuple[dict | None, str]:
    """The class prompts (restricted to the label set's classes) and where they came from, or
    ``(None, why not)``."""
    from ecg_hub.evaluation.zero_shot import load_class_prompts

    if options.prompts is not None:
        source = Path(options.prompts)
    elif suite.data == "synthetic" and options.data is None:
        from ecg_hub.data.synthetic import RHYTHM_NAMES

        prompts = {name: RHYTHM_NAMES[name] for name in class_names if name in RHYTHM_NAMES}
        source = "ecg_hub.data.synthetic.RHYTHM_NAMES"
        missing = [c for c in class_names if c not in prompts]
        return (None, f"no prompt for {missing} in {source}") if missing else (prompts, source)
    else:
        source = Path(options.data_root).parent / "prompts" / "CKEPE_prompt.json"
    if not source.is_file():
        return None, f"no prompts file {source} (give --prompts FILE.json)"
    prompts = load_class_prompts(source, class_names)
    missing = [c for c in class_names if c not in prompts]
    if missing:
        return None, f"{source} has no prompt for {missing}"
    return prompts, str(source)


def run_benchmark(options: BenchmarkOptions, echo: Callable[[str], None] = print) -> dict:
    """Run (or resume) a suite and write the leaderboard; returns the leaderboard document (its
    ``stages`` list says which stages ran, were cached or failed)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("the benchmark runs in one process (not under `accelerate launch`)")
    if options.suite not in SUITES:
        raise ValueError(f"unknown suite {options.suite!r}; choose from {sorted(SUITES)}")
    from ecg_hub.recipe import read_yaml, resolve_recipe_path

    suite = SUITES[options.suite]
    out_dir = Path(options.out_dir or Path("outputs/benchmark") / suite.name)
    protocols = list(options.protocols or suite.protocols)
    unknown = [p for p in protocols if p not in MODEL_PROTOCOLS]
    if unknown:
        raise ValueError(f"protocol(s) {unknown} unknown; choose from {MODEL_PROTOCOLS}")
    label_column = options.label_column or suite.label_column
    cache = StageCache(out_dir / "stages", options.force, echo)
    started = time.perf_counter()

    plans = plan_families(suite, protocols, options.families, options.checkpoints, zero_shot_available=True)
    stage_ids = ["data", "evaluate:baseline"]
    for plan in plans:
        if plan.skipped is None:
            stage_ids += [f"pretrain:{plan.name}:{p.split('/')[-1]}" for p in plan.prerequisites]
            stage_ids += [f"pretrain:{plan.name}"] if plan.recipe else []
            stage_ids += [f"evaluate:{plan.name}:pretrained", f"evaluate:{plan.name}:random-init"]
    bad = [f for f in options.force if f != "all" and not any(s == f or s.startswith(f + ":") for s in stage_ids)]
    if bad:
        raise ValueError(f"--force {bad}: no such stage; the stages of this run: {', '.join(stage_ids)}")
    for plan in plans:
        if plan.skipped:
            echo(f"family {plan.name}: skipped, {plan.skipped}")

    data = _data_stage(cache, suite, options, out_dir, label_column)
    echo(f"dataset {data['path']}: {data['split_records']} records, label set {label_column} {data['class_names']}")
    prompts, prompt_source = (None, "zero-shot not requested")
    if "zero-shot" in protocols:
        prompts, prompt_source = _zero_shot_prompts(suite, options, data["class_names"])
        if prompts is None:
            echo(f"zero-shot skipped: {prompt_source}")
            for plan in plans:
                plan.protocols = [p for p in plan.protocols if p != "zero-shot"]

    evaluations: list[dict] = []
    if options.baseline:
        record = _baseline_stage(cache, data, options, suite)
        evaluations.append({"family": None, "title": "hand-crafted features", "init": "baseline", "stage": record})
    for plan in plans:
        if plan.skipped:
            continue
        model, failed = plan.checkpoint, False
        if plan.recipe is not None:
            runs_dir = out_dir / "runs" / plan.name
            relocated: dict[str, str] = {}
            upstream: dict[str, dict] = {}
            for name in [*plan.prerequisites, plan.recipe]:
                stem = name.split("/")[-1]
                recipe = _pretrain_recipe(name, runs_dir / stem, data["path"], suite, options, plan.name, relocated)
                stage = f"pretrain:{plan.name}" if name == plan.recipe else f"pretrain:{plan.name}:{stem}"
                record = _pretrain_stage(cache, stage, recipe, name, {"data": data["identity"], "upstream": upstream})
                if record.status == "failed":
                    failed = True
                    break
                original = read_yaml(resolve_recipe_path(name)).get("output_dir")
                if isinstance(original, str):
                    relocated[original] = str(runs_dir / stem)
                upstream = {**upstream, stem: model_identity(record.result["model_dir"])}
                model = record.result["model_dir"]
            if failed:
                echo(f"family {plan.name}: pretraining failed; its evaluations are left out")
                continue
        echo(f"family {plan.name}: {model} ({', '.join(plan.protocols)})")
        record = _evaluate_stage(
            cache, f"evaluate:{plan.name}:pretrained", model, model_identity(model), data, options, suite,
            plan.protocols, False, prompts,
        )
        evaluations.append({"family": plan.name, "title": plan.title, "init": "pretrained", "stage": record})
        if options.random_init:
            twin = [p for p in plan.protocols if p != "zero-shot"]
            record = _evaluate_stage(
                cache, f"evaluate:{plan.name}:random-init", model, model_identity(model, weights=False), data,
                options, suite, twin, True, None,
            )
            evaluations.append({"family": plan.name, "title": plan.title, "init": "random", "stage": record})

    document = write_leaderboard(
        out_dir, cache, evaluations, data,
        {
            "suite": suite.name,
            "protocols": protocols,
            "fractions": [float(f) for f in (options.fractions or suite.fractions)],
            "seeds": list(options.seeds),
            "bootstrap": options.bootstrap if options.bootstrap is not None else suite.bootstrap,
            "probe_epochs": options.probe_epochs,
            "finetune": {**suite.finetune, **options.finetune},
            "steps": options.steps if options.steps is not None else suite.steps,
            "pretrain_overrides": list(options.pretrain_overrides),
            "dtype": options.dtype,
            "zero_shot_prompts": prompt_source,
        },
        plans,
    )
    document["wall_seconds"] = time.perf_counter() - started
    write_json_atomic(out_dir / "leaderboard.json", document)
    return document


# ------------------------------------------------------------------------------------------------
# Rows and tables (shared with `ecg-hub quickstart`)
# ------------------------------------------------------------------------------------------------


def _ci95(entry: Mapping) -> dict[str, list[float]]:
    """An entry's 95 % bootstrap intervals: its own (single-seed entries), else the envelope of its
    seeds' intervals (lowest low, highest high: test-set and seed variability together)."""
    if entry.get("metrics_ci95"):
        return {k: [float(v[0]), float(v[1])] for k, v in entry["metrics_ci95"].items()}
    runs = entry.get("runs") or []
    if not runs or not all("ci95" in r for r in runs):
        return {}
    keys = set.intersection(*(set(r["ci95"]) for r in runs))
    return {k: [min(float(r["ci95"][k][0]) for r in runs), max(float(r["ci95"][k][1]) for r in runs)] for k in sorted(keys)}


def result_rows(document: Mapping, *, model: str, family: str | None = None, init: str | None = None, **extra) -> list[dict]:
    """One row per results entry of a results document (:mod:`ecg_hub.results`), in its order.

    Row keys: ``model`` (the name shown), ``family``, ``init``, ``protocol``, ``fraction``, ``seeds``
    (count), ``metrics`` / ``metrics_std`` (means and std over seeds), ``ci95`` (see the module),
    ``per_class_auroc``, ``train_records``, ``seconds``, plus ``extra``.
    """
    rows = []
    for entry in document["results"]:
        rows.append({
            "model": model,
            "family": family,
            "init": init,
            "protocol": entry["protocol"],
            "fraction": float(entry["fraction"]),
            "seeds": len(entry.get("seeds", [])),
            "metrics": dict(entry["metrics"]),
            "metrics_std": dict(entry.get("metrics_std") or {}),
            "ci95": _ci95(entry),
            "per_class_auroc": dict(entry.get("per_class_auroc") or {}),
            "train_records": entry.get("train_records"),
            "seconds": float(entry.get("seconds", 0.0)),
            **extra,
        })
    return rows


def _metric_cell(row: Mapping, key: str) -> str:
    if key not in row["metrics"]:
        return "-"
    mean = row["metrics"][key]
    if row["seeds"] > 1 and key in row["metrics_std"]:
        return f"{mean:.3f}±{row['metrics_std'][key]:.3f}"
    return f"{mean:.3f}"


def cell(row: Mapping, key: str) -> str:
    """The text of column ``key`` of a row: ``model``, ``init``, ``protocol``, ``labels``, ``seeds``,
    a metric name (mean, ±std over seeds), ``macro_auroc_ci`` (with the 95 % interval), ``gap``
    (macro AUROC minus the baseline's at the same fraction), ``seconds``, ``stage_seconds``."""
    if key == "model":
        return str(row["model"])
    if key == "init":
        return INIT_TITLES.get(row.get("init") or "", row.get("init") or "")
    if key == "protocol":
        return PROTOCOL_TITLES.get(row["protocol"], row["protocol"])
    if key == "labels":
        return "none" if row["protocol"] == "zero-shot" else f"{row['fraction']:.0%}"
    if key == "seeds":
        return str(row["seeds"])
    if key == "macro_auroc_ci":
        text = _metric_cell(row, "macro_auroc")
        interval = row.get("ci95", {}).get("macro_auroc")
        return f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else text
    if key == "gap":
        gap = row.get("gap_to_baseline")
        return "-" if gap is None else f"{gap:+.3f}"
    if key in ("seconds", "stage_seconds"):
        value = row.get(key)
        return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"
    return _metric_cell(row, key)


#: (header, key) columns of the leaderboard (Markdown and terminal).
LEADERBOARD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "model"),
    ("protocol", "protocol"),
    ("labels", "labels"),
    ("seeds", "seeds"),
    ("macro AUROC [95 % CI]", "macro_auroc_ci"),
    ("vs baseline", "gap"),
    ("macro AUPRC", "macro_auprc"),
    ("Fmax", "fmax"),
    ("time (s)", "seconds"),
)

_TEXT_COLUMNS = {"model", "init", "protocol"}


def rich_table(rows: Sequence[Mapping], columns: Sequence[tuple[str, str]], *, title: str | None = None, caption: str | None = None):
    """A ``rich.table.Table`` of ``rows`` (:func:`result_rows`) with ``columns`` (header, :func:`cell` key)."""
    from rich.table import Table

    table = Table(title=title, caption=caption)
    for header, key in columns:
        table.add_column(header, justify="left" if key in _TEXT_COLUMNS else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(cell(row, key) for _, key in columns))
    return table


def markdown_table(rows: Sequence[Mapping], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub Markdown table of ``rows`` with ``columns`` (the same cells as :func:`rich_table`)."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |"]
    lines.append("|" + "|".join(":---" if key in _TEXT_COLUMNS else "---:" for _, key in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(cell(row, key).replace("|", "\\|") for _, key in columns) + " |")
    return "\n".join(lines)


_PROTOCOL_ORDER = {"zero-shot": 0, "linear-probe": 1, "finetune": 2, BASELINE_PROTOCOL: 3}


def sort_rows(rows: Iterable[Mapping]) -> list[Mapping]:
    """Zero-shot first, then by label fraction; within a fraction linear probe, fine-tune, then the
    baseline, each best macro AUROC first."""
    def key(row):
        auroc = row["metrics"].get("macro_auroc")
        return (row["fraction"] if row["protocol"] != "zero-shot" else -1.0,
                _PROTOCOL_ORDER.get(row["protocol"], 9), -(auroc if auroc is not None and math.isfinite(auroc) else -1.0))

    return sorted(rows, key=key)


def _add_gaps(rows: list[dict]) -> None:
    baseline = {row["fraction"]: row["metrics"].get("macro_auroc") for row in rows if row["protocol"] == BASELINE_PROTOCOL}
    for row in rows:
        reference = baseline.get(row["fraction"]) if row["protocol"] in ("linear-probe", "finetune") else None
        auroc = row["metrics"].get("macro_auroc")
        row["gap_to_baseline"] = None if reference is None or auroc is None else float(auroc - reference)


# ------------------------------------------------------------------------------------------------
# The leaderboard
# ------------------------------------------------------------------------------------------------


def _model_name(title: str, init: str) -> str:
    return title if init == "baseline" else f"{title} {INIT_TITLES[init]}"


def _model_slug(family: str | None, init: str) -> str:
    return "features-baseline" if init == "baseline" else f"{family}-{INIT_TITLES[init]}"


def write_leaderboard(
    out_dir: Path, cache: StageCache, evaluations: Sequence[Mapping], data: Mapping, settings: Mapping,
    plans: Sequence[FamilyPlan] = (),
) -> dict:
    """Write ``leaderboard.md``, ``leaderboard.json``, ``leaderboard.png`` and ``roc_<model>.png``
    from the evaluation stages' results JSON and stored test predictions; returns the JSON document."""
    from ecg_hub.results import load_results

    rows: list[dict] = []
    models = []
    for item in evaluations:
        record: StageRecord = item["stage"]
        if record.status == "failed":
            continue
        directory = cache.directory(record.stage)
        document = load_results(directory / record.result["results"])
        name, slug = _model_name(item["title"], item["init"]), _model_slug(item["family"], item["init"])
        stage_rows = result_rows(document, model=name, family=item["family"], init=item["init"], slug=slug,
                                 stage=record.stage, stage_seconds=record.seconds)
        rows += stage_rows
        models.append({"model": name, "slug": slug, "family": item["family"], "init": item["init"],
                       "checkpoint": document["model"], "stage": record.stage,
                       "results_json": str(directory / record.result["results"]),
                       "predictions": str(directory / record.result["predictions"])})
    _add_gaps(rows)
    rows = sort_rows(rows)

    # The figures are drawn again only when what they show changed (a rerun of cached stages keeps them).
    stage_hashes = {r.stage: r.hash for r in cache.records}
    figures_key = _hash({"rows": rows, "title": _figure_title(settings, data),
                         "models": [(m["slug"], stage_hashes.get(m["stage"])) for m in models]})
    figures = _previous_figures(out_dir / "leaderboard.json", figures_key)
    if figures is None:
        figures = {"leaderboard": None, "roc": {}}
        try:
            figures["leaderboard"] = plot_leaderboard(
                rows, out_dir / "leaderboard.png", title=_figure_title(settings, data),
                family_order=[m["family"] for m in models if m["family"]],
            )
            for model in models:
                path = plot_roc_curves(model["predictions"], out_dir / f"roc_{model['slug']}.png", title=model["model"])
                if path is not None:
                    figures["roc"][model["slug"]] = path
        except ImportError as error:  # matplotlib missing: the tables still stand
            logger.warning("leaderboard figures skipped: %s", error)

    stages = [
        {"stage": r.stage, "status": r.status, "seconds": r.seconds, "hash": r.hash,
         "dir": str(cache.directory(r.stage)), **({"error": r.error} if r.error else {})}
        for r in cache.records
    ]
    document = {
        "ecg_hub_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "suite": settings["suite"],
        "out_dir": str(out_dir),
        "dataset": {k: data[k] for k in ("path", "label_column", "class_names", "split_records")},
        "settings": dict(settings),
        "families": [
            {"family": p.name, "title": p.title, "recipe": p.recipe, "prerequisites": p.prerequisites,
             "checkpoint": p.checkpoint, "protocols": p.protocols, "skipped": p.skipped}
            for p in plans
        ],
        "models": models,
        "stages": stages,
        "rows": rows,
        "figures": figures,
        "figures_key": figures_key,
    }
    write_json_atomic(out_dir / "leaderboard.json", document)
    (out_dir / "leaderboard.md").write_text(leaderboard_markdown(document), encoding="utf-8")
    return document


def _previous_figures(path: Path, key: str) -> dict | None:
    """The figures of the leaderboard at ``path`` if they were drawn from the same rows and still exist."""
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    figures = previous.get("figures") or {}
    files = [figures.get("leaderboard"), *(figures.get("roc") or {}).values()]
    if previous.get("figures_key") != key or not all(f and Path(f).is_file() for f in files):
        return None
    return figures


def _figure_title(settings: Mapping, data: Mapping) -> str:
    return f"ecg-hub benchmark {settings['suite']}: {data['label_column']}, test macro AUROC (95 % bootstrap CI)"


def leaderboard_markdown(document: Mapping) -> str:
    """The Markdown page of a leaderboard document (README-ready)."""
    settings, data = document["settings"], document["dataset"]
    fractions = ", ".join(f"{f:.0%}" for f in settings["fractions"])
    lines = [
        f"# ecg-hub benchmark: {settings['suite']}",
        "",
        (f"Test split of `{data['path']}` ({', '.join(f'{k} {v}' for k, v in data['split_records'].items())} records), "
        f"label set `{data['label_column']}` ({', '.join(data['class_names'])}); macro AUROC with its 95 % bootstrap "
        f"interval ({settings['bootstrap']} resamples; below 100 % labels mean ± std over seeds "
        f"{', '.join(str(s) for s in settings['seeds'])}, interval = the envelope of the seeds' intervals). "
        f"Label fractions {fractions}; heads and checkpoints chosen on validation, test scored once. "
        "\"vs baseline\": macro AUROC minus the hand-crafted features' at the same label fraction."),
        "",
        markdown_table(document["rows"], LEADERBOARD_COLUMNS),
        "",
    ]
    if document["figures"].get("leaderboard"):
        lines += ["![leaderboard](leaderboard.png)", ""]
    if document["figures"].get("roc"):
        lines += ["Per-class ROC curves: " + ", ".join(f"[{slug}]({Path(p).name})" for slug, p in document["figures"]["roc"].items()), ""]
    lines += [
        "\"time (s)\": the protocol's wall time of the row (a linear probe's backbone features are extracted",
        "once per model, in the evaluation stage's time below).",
        "",
        "## Stages",
        "",
        "| stage | this run | wall time (s) |",
        "|:---|:---|---:|",
    ]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']:.1f} |" for s in document["stages"]]
    skipped = [f for f in document["families"] if f["skipped"]]
    if skipped:
        lines += ["", "Skipped families: " + "; ".join(f"{f['family']} ({f['skipped']})" for f in skipped) + "."]
    lines += ["", f"Settings: `{json.dumps(settings, sort_keys=True)}`", ""]
    return "\n".join(lines)


def _group_label(row: Mapping) -> str:
    return "zero-shot" if row["protocol"] == "zero-shot" else f"{PROTOCOL_TITLES[row['protocol']]}\n{row['fraction']:.0%} labels"


def plot_leaderboard(
    rows: Sequence[Mapping], path: Path, *, title: str = "", family_order: Sequence[str] | None = None
) -> str:
    """Grouped bars of test macro AUROC, one group per (protocol, label fraction), one bar per model
    (the baseline in every group with labels at its fraction), 95 % intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline = {r["fraction"]: r for r in rows if r["protocol"] == BASELINE_PROTOCOL}
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        if row["protocol"] != BASELINE_PROTOCOL:
            groups.setdefault((row["protocol"], row["fraction"]), []).append(row)
    for (protocol, fraction), members in groups.items():
        if protocol != "zero-shot" and fraction in baseline:
            members.append(baseline[fraction])
    if not groups:  # the baseline alone
        for fraction, row in baseline.items():
            groups[(BASELINE_PROTOCOL, fraction)] = [row]
    order = sorted(groups, key=lambda g: (g[1] if g[0] != "zero-shot" else -1.0, _PROTOCOL_ORDER.get(g[0], 9)))
    # Bars in a fixed order (families as given, pretrained before random-init, the baseline last);
    # one colour per family, its random-init twin lighter and hatched, the baseline grey.
    families = list(dict.fromkeys([*(family_order or []), *(r["family"] for r in rows if r["family"])]))
    init_rank = {"pretrained": 0, "random": 1, "baseline": 2}

    def rank(row):
        family = families.index(row["family"]) if row["family"] in families else len(families)
        return (family, init_rank.get(row["init"], 3))

    def style(row):
        if row["init"] == "baseline" or not row["family"]:
            return {"color": "0.6", "hatch": "//", "edgecolor": "black"}
        color = plt.get_cmap("tab10")(families.index(row["family"]) % 10)
        if row["init"] == "random":
            return {"color": (*color[:3], 0.4), "hatch": "..", "edgecolor": color}
        return {"color": color, "edgecolor": "white"}

    width = 0.8 / max(len(groups[g]) for g in order)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(order) + 2.5), 4.5))
    lowest = 0.5
    for x, group in enumerate(order):
        members = sorted(groups[group], key=rank)
        for i, row in enumerate(members):
            auroc = row["metrics"].get("macro_auroc", float("nan"))
            interval = row.get("ci95", {}).get("macro_auroc")
            yerr = [[max(0.0, auroc - interval[0])], [max(0.0, interval[1] - auroc)]] if interval else None
            position = x + (i - (len(members) - 1) / 2) * width
            ax.bar(position, auroc, width * 0.9, yerr=yerr, capsize=3, label=row["model"], **style(row))
            if math.isfinite(auroc):
                lowest = min(lowest, interval[0] if interval else auroc)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(sorted(dict(zip(labels, handles)).items(), key=lambda item: rank(next(r for r in rows if r["model"] == item[0]))))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([_group_label(groups[g][0]) for g in order], fontsize=9)
    ax.set_ylim(max(0.0, math.floor(lowest * 10) / 10 - 0.05), 1.0)
    ax.set_ylabel("test macro AUROC")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
    return str(path)


def plot_roc_curves(predictions: str | os.PathLike, path: Path, *, title: str = "") -> str | None:
    """Per-class ROC curves of every (protocol, fraction) of a model, one panel each, from its stored
    test predictions (the first seed of each fraction); ``None`` when none were stored."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    if not Path(predictions).is_file():
        return None
    class_names, entries = load_predictions(predictions)
    first: dict[tuple, dict] = {}
    for entry in entries:
        first.setdefault((entry["protocol"], entry["fraction"]), entry)
    if not first:
        return None
    panels = sorted(first, key=lambda g: (g[1] if g[0] != "zero-shot" else -1.0, _PROTOCOL_ORDER.get(g[0], 9)))
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.0 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels):
        entry = first[panel]
        y_true, y_score = entry["y_true"], entry["y_score"]
        for c, name in enumerate(class_names):
            labels = y_true[:, c]
            if labels.min() == labels.max():  # no positive or no negative test record: undefined
                continue
            fpr, tpr, _ = roc_curve(labels, y_score[:, c])
            ax.plot(fpr, tpr, linewidth=1.2, label=f"{name} ({roc_auc_score(labels, y_score[:, c]):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
        protocol, fraction = panel
        label = "zero-shot" if protocol == "zero-shot" else f"{PROTOCOL_TITLES.get(protocol, protocol)}, {fraction:.0%} labels"
        ax.set_title(f"{label} (seed {entry['seed']})", fontsize=9)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right", title="AUROC", title_fontsize=7)
    fig.suptitle(f"{title}: per-class test ROC", fontsize=10)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
    return str(path)


