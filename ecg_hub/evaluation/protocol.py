"""The ecg-hub evaluation protocol: one documented way to score every model, selecting on validation.

:func:`evaluate_model` runs any of three protocols on a prepared dataset and label set, and returns
(and writes) the results JSON the Hub model cards read:

- ``linear-probe``: frozen backbone, ``pooler_output`` features computed once per split (and cached),
  a ``Linear`` head per (fraction, seed), early stopping on validation macro AUROC, test scored once.
- ``finetune``: the whole ``...ForSequenceClassification`` model with the ``Trainer``
  (:func:`ecg_hub.training.finetune.finetune`), best checkpoint on validation macro AUROC.
- ``zero-shot``: class prompts only (:func:`ecg_hub.evaluation.zero_shot.zero_shot_evaluate`).

Label fractions: 1 %, 10 %, 100 % of the training split; seeds 42, 43, 44 below 100 % (mean ± std,
population std over seeds), seed 42 alone at 100 %. Validation and test are always used in full.
Every run also reports macro F1 at per-class thresholds tuned on validation, and a 1000x bootstrap
95 % interval of the test metrics (seed 0).

Results JSON (``"ecg_hub_version"``, ``"model"``, ``"dataset"``, ``"results"``): see the team guide;
each result holds ``protocol``, ``fraction``, ``split`` ("test"), ``seeds``, ``metrics`` (means),
``metrics_std``, ``per_class_auroc`` (means), plus ``metrics_ci95`` (single-seed results),
``runs`` (per seed) and ``seconds`` (wall clock, including feature extraction or training).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .fractions import sample_label_fraction
from .linear_probe import LinearProbeConfig, cached_features, predict_scores, train_linear_probe
from .metrics import (
    HEADLINE_METRICS,
    bootstrap_confidence_intervals,
    classification_metrics,
    tune_f1_thresholds,
)

logger = logging.getLogger(__name__)

PROTOCOLS = ("linear-probe", "finetune", "zero-shot")
DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)
DEFAULT_SEEDS = (42, 43, 44)
SUMMARY_METRICS = (*HEADLINE_METRICS, "macro_f1")


@dataclass
class EvaluationSettings:
    """What :func:`evaluate_model` runs (the CLI's flags).

    Attributes:
        protocols: any of ``"linear-probe"``, ``"finetune"``, ``"zero-shot"``.
        fractions: label fractions of the training split, each in (0, 1].
        seeds: seeds below fraction 1 (the first one alone at fraction 1).
        problem_type: ``"multi_label_classification"`` or ``"single_label_classification"``.
        random_init: evaluate the architecture with random weights (a baseline).
        feature_extractor_preset: use this preset instead of the checkpoint's saved extractor.
        batch_size: feature-extraction batch size.
        probe: linear-probe optimisation settings.
        finetune: ``TrainingArguments`` overrides for the fine-tune protocol (v5 names), plus
            ``early_stopping_patience`` and ``warmup_epochs``.
        prompts: zero-shot ``{class: prompt(s)}``.
        zero_shot_scoring: ``"cosine"`` (primary) or ``"softmax"``.
        bootstrap: bootstrap resamples for the 95 % intervals (0: off).
        cache_dir: on-disk feature cache (``None``: in memory only).
        work_dir: fine-tuning checkpoints.
    """

    protocols: Sequence[str] = ("linear-probe",)
    fractions: Sequence[float] = DEFAULT_FRACTIONS
    seeds: Sequence[int] = DEFAULT_SEEDS
    problem_type: str = "multi_label_classification"
    random_init: bool = False
    feature_extractor_preset: str | None = None
    batch_size: int = 64
    probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    finetune: dict = field(default_factory=dict)
    prompts: Mapping | None = None
    zero_shot_scoring: str = "cosine"
    bootstrap: int = 1000
    cache_dir: str | None = None
    work_dir: str = "outputs/evaluate"

    def __post_init__(self):
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown:
            raise ValueError(f"protocol(s) {unknown} unknown; choose from {PROTOCOLS}")
        bad = [f for f in self.fractions if not 0.0 < float(f) <= 1.0]
        if bad:
            raise ValueError(f"fractions must lie in (0, 1], got {bad}")
        if not self.seeds:
            raise ValueError("seeds: need at least one seed")
        if self.finetune:
            from ecg_hub.training.finetune import FIXED_TRAINING_ARGUMENTS, _training_argument_names

            known = _training_argument_names() | {"early_stopping_patience", "warmup_epochs"}
            for key in self.finetune:
                if key in FIXED_TRAINING_ARGUMENTS or key not in known:
                    raise ValueError(
                        f"fine-tune argument {key!r}: not a TrainingArguments field the protocol lets you set"
                    )
        if "zero-shot" in self.protocols and not self.prompts:
            raise ValueError("the zero-shot protocol needs class prompts (--prompts FILE.json)")


def split_fingerprint(dataset) -> str:
    """SHA-256 of the sorted ``record_id``s of a split (identifies the split's records)."""
    ids = sorted(str(i) for i in dataset["record_id"]) if "record_id" in dataset.column_names else [str(len(dataset))]
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def seeds_for(fraction: float, seeds: Sequence[int]) -> list[int]:
    """Three seeds below 100 %, the first seed alone at 100 % (the full split is not resampled)."""
    return list(seeds) if fraction < 1.0 else [seeds[0]]


def aggregate_runs(protocol: str, fraction: float, runs: list[dict], class_names: Sequence[str]) -> dict:
    """Mean and population std over seeds of one (protocol, fraction) cell."""
    keys = [k for k in SUMMARY_METRICS if all(k in r["metrics"] for r in runs)]
    result = {
        "protocol": protocol,
        "fraction": float(fraction),
        "split": "test",
        "seeds": [r["seed"] for r in runs],
        "metrics": {k: float(np.mean([r["metrics"][k] for r in runs])) for k in keys},
        "metrics_std": {k: float(np.std([r["metrics"][k] for r in runs])) for k in keys},
    }
    # Classes undefined in any run (no positive or no negative test record) are left out and listed
    # under "excluded_classes": the model-card reader expects numbers only.
    per_class = {}
    for name in class_names:
        values = [r["metrics"]["per_class_auroc"].get(name) for r in runs]
        if all(v is not None for v in values):
            per_class[name] = float(np.mean(values))
    result["per_class_auroc"] = per_class
    if len(runs) == 1 and "ci95" in runs[0]:
        result["metrics_ci95"] = runs[0]["ci95"]
    result["excluded_classes"] = sorted({c for r in runs for c in r["metrics"]["excluded_classes"]})
    result["runs"] = [
        {k: v for k, v in r.items() if k != "metrics"}
        | {"metrics": {k: r["metrics"][k] for k in keys}}
        for r in runs
    ]
    result["seconds"] = float(sum(r.get("seconds", 0.0) for r in runs))
    return result


def _test_run(seed, train_records, y_val, val_scores, y_test, test_scores, class_names, bootstrap, extra=None) -> dict:
    thresholds = tune_f1_thresholds(y_val, val_scores)
    metrics = classification_metrics(y_test, test_scores, class_names, f1_thresholds=thresholds)
    run = {"seed": int(seed), "train_records": int(train_records), "metrics": metrics}
    run["val_macro_auroc"] = classification_metrics(y_val, val_scores, class_names)["macro_auroc"]
    if bootstrap:
        run["ci95"] = bootstrap_confidence_intervals(y_test, test_scores, num_resamples=bootstrap, seed=0)
    run.update(extra or {})
    return run


def _labels(dataset, column, problem_type):
    """The task's records (``select_task_records``) and their (N, C) multi-hot labels."""
    from ecg_hub.data.labels import multi_hot
    from ecg_hub.training.finetune import select_task_records

    dataset = select_task_records(dataset, column, problem_type)
    return dataset, multi_hot(dataset, column)


def load_backbone(model_name_or_path: str, *, random_init: bool = False, seed: int = 0):
    """The encoder of a checkpoint (``AutoModel``), or the same architecture with random weights."""
    from transformers import AutoConfig, AutoModel

    import ecg_hub  # noqa: F401  (Auto registrations)

    if random_init:
        torch.manual_seed(seed)
        return AutoModel.from_config(AutoConfig.from_pretrained(model_name_or_path))
    return AutoModel.from_pretrained(model_name_or_path)


def run_linear_probe(model, feature_extractor, splits, label_column, class_names, settings: EvaluationSettings) -> list[dict]:
    """Linear-probe results for every fraction (features extracted once per split)."""
    start = time.perf_counter()
    data, features = {}, {}
    for name in ("train", "validation", "test"):
        data[name], labels = _labels(splits[name], label_column, settings.problem_type)
        features[name] = cached_features(
            model, data[name], feature_extractor, cache_dir=settings.cache_dir, batch_size=settings.batch_size
        )
        data[name] = labels
    extraction_seconds = time.perf_counter() - start
    logger.info("linear probe: features extracted in %.1f s", extraction_seconds)
    results = []
    for fraction in settings.fractions:
        runs = []
        for seed in seeds_for(fraction, settings.seeds):
            run_start = time.perf_counter()
            index = sample_label_fraction(data["train"], fraction, seed)
            probe = train_linear_probe(
                features["train"][index],
                data["train"][index],
                features["validation"],
                data["validation"],
                problem_type=settings.problem_type,
                config=LinearProbeConfig(**{**asdict(settings.probe), "seed": seed}),
                class_names=class_names,
            )
            val_scores = predict_scores(probe.head, features["validation"], settings.problem_type)
            test_scores = predict_scores(probe.head, features["test"], settings.problem_type)
            runs.append(
                _test_run(
                    seed, len(index), data["validation"], val_scores, data["test"], test_scores, class_names,
                    settings.bootstrap, {"best_epoch": probe.best_epoch, "seconds": time.perf_counter() - run_start},
                )
            )
        result = aggregate_runs("linear-probe", fraction, runs, class_names)
        result["feature_extraction_seconds"] = extraction_seconds
        results.append(result)
    return results


def run_finetune(model_name_or_path, feature_extractor, splits, label_column, class_names, settings: EvaluationSettings) -> list[dict]:
    """Fine-tune results for every fraction: a fresh model per (fraction, seed)."""
    from ecg_hub.training.finetune import finetune, load_classification_model

    results = []
    train_labels = _labels(splits["train"], label_column, settings.problem_type)[1]
    for fraction in settings.fractions:
        runs = []
        for seed in seeds_for(fraction, settings.seeds):
            run_start = time.perf_counter()
            torch.manual_seed(seed)
            model = load_classification_model(
                model_name_or_path,
                class_names=class_names,
                problem_type=settings.problem_type,
                random_init=settings.random_init,
            )
            index = None if fraction == 1.0 else sample_label_fraction(train_labels, fraction, seed)
            outcome = finetune(
                model,
                feature_extractor,
                splits,
                label_column,
                output_dir=str(Path(settings.work_dir) / f"finetune-f{fraction:g}-s{seed}"),
                problem_type=settings.problem_type,
                train_indices=index,
                seed=seed,
                **settings.finetune,
            )
            runs.append(
                _test_run(
                    seed, outcome.train_records, outcome.val_labels, outcome.val_scores,
                    outcome.test_labels, outcome.test_scores, class_names, settings.bootstrap,
                    {"epochs": outcome.epochs_run, "seconds": time.perf_counter() - run_start},
                )
            )
        results.append(aggregate_runs("finetune", fraction, runs, class_names))
    return results


def evaluate_model(
    model_name_or_path: str,
    dataset_path: str,
    label_column: str,
    settings: EvaluationSettings | None = None,
    *,
    output_json: str | os.PathLike | None = None,
    dataset_name: str | None = None,
) -> dict:
    """Run the requested protocols and return (and optionally write) the results document.

    Args:
        model_name_or_path: a checkpoint folder or Hub id (any ecg-hub model; the encoder is used
            for the linear probe, ``AutoModelForSequenceClassification`` for fine-tuning, the
            ECG-text model and its processor for zero-shot).
        dataset_path: a prepared dataset folder (``ecg-hub data prepare``) with train / validation /
            test splits.
        label_column: the label set (``superclass``, ``subclass``, ``form``, ``rhythm``, ...).
        settings: protocols, fractions, seeds, ... (:class:`EvaluationSettings`).
        output_json: where to write the results JSON (atomically).
        dataset_name: name recorded in the JSON (default: the dataset's ``info.dataset_name`` or
            the folder name).
    """
    from ecg_hub import __version__
    from ecg_hub.data.labels import label_names
    from ecg_hub.training.finetune import (
        load_feature_extractor,
        load_splits,
        select_task_records,
    )

    settings = settings or EvaluationSettings()
    # Records without a class of the label set (or, single-label, with more than one) are not part
    # of the task; the JSON records how many remain per split and a hash of their ids.
    splits = {
        name: select_task_records(split, label_column, settings.problem_type)
        for name, split in load_splits(dataset_path).items()
    }
    class_names = label_names(splits["train"], label_column)
    feature_extractor = load_feature_extractor(
        None if settings.feature_extractor_preset else model_name_or_path, preset=settings.feature_extractor_preset
    )
    info_name = getattr(splits["train"].info, "dataset_name", None)
    document = {
        "ecg_hub_version": __version__,
        "model": str(model_name_or_path),
        "init": "random" if settings.random_init else "pretrained",
        "dataset": {
            "name": dataset_name or info_name or Path(str(dataset_path)).name,
            "path": str(dataset_path),
            "label_set": label_column,
            "class_names": class_names,
            "problem_type": settings.problem_type,
            "split_records": {name: len(split) for name, split in splits.items()},
            "split_sha256": {name: split_fingerprint(split) for name, split in splits.items()},
        },
        "processor_config": feature_extractor.to_dict(),
        "results": [],
    }
    for protocol in settings.protocols:
        start = time.perf_counter()
        if protocol == "linear-probe":
            backbone = load_backbone(model_name_or_path, random_init=settings.random_init)
            document["results"].extend(
                run_linear_probe(backbone, feature_extractor, splits, label_column, class_names, settings)
            )
        elif protocol == "finetune":
            document["results"].extend(
                run_finetune(model_name_or_path, feature_extractor, splits, label_column, class_names, settings)
            )
        else:
            document["results"].append(run_zero_shot(model_name_or_path, splits, label_column, class_names, settings))
        logger.info("%s finished in %.1f s", protocol, time.perf_counter() - start)
    if output_json is not None:
        write_json_atomic(document, output_json)
    return document


def run_zero_shot(model_name_or_path, splits, label_column, class_names, settings: EvaluationSettings) -> dict:
    """Zero-shot on the test split with the checkpoint's ``AutoModel`` and ``AutoProcessor``."""
    from transformers import AutoModel, AutoProcessor

    import ecg_hub  # noqa: F401

    from .zero_shot import zero_shot_evaluate

    start = time.perf_counter()
    model = AutoModel.from_pretrained(model_name_or_path)
    processor = AutoProcessor.from_pretrained(model_name_or_path)
    test, _ = _labels(splits["test"], label_column, settings.problem_type)
    metrics = zero_shot_evaluate(
        model=model, processor=processor, dataset=test, class_prompts=settings.prompts,
        label_column=label_column, scoring=settings.zero_shot_scoring, batch_size=settings.batch_size,
        return_scores=bool(settings.bootstrap),
    )
    run = {"seed": 0, "train_records": 0, "metrics": metrics, "seconds": time.perf_counter() - start}
    if settings.bootstrap:
        from ecg_hub.data.labels import multi_hot

        scores = metrics.pop("scores")
        probabilities = (scores + 1) / 2 if metrics["scoring"] == "cosine" else scores
        run["ci95"] = bootstrap_confidence_intervals(multi_hot(test, label_column), probabilities, num_resamples=settings.bootstrap)
    result = aggregate_runs("zero-shot", 0.0, [run], class_names)
    result["scoring"] = metrics["scoring"]
    result["prompts"] = metrics["prompts"]
    return result


def write_json_atomic(document: dict, path: str | os.PathLike) -> None:
    """Write ``document`` as indented JSON via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def format_results_table(document: dict) -> str:
    """A plain-text table of the results (mean ± std over seeds), one row per (protocol, fraction)."""
    header = ["protocol", "labels", "seeds", "macro AUROC", "macro AUPRC", "Fmax", "macro F1 (val thr.)", "time (s)"]
    rows = []
    for result in document["results"]:

        def cell(key, result=result):
            if key not in result["metrics"]:
                return "-"
            mean, std = result["metrics"][key], result["metrics_std"].get(key, 0.0)
            return f"{mean:.3f} ± {std:.3f}" if len(result["seeds"]) > 1 else f"{mean:.3f}"

        fraction = "zero-shot" if result["protocol"] == "zero-shot" else f"{result['fraction']:.0%}"
        rows.append(
            [result["protocol"], fraction, str(len(result["seeds"])), cell("macro_auroc"), cell("macro_auprc"),
             cell("fmax"), cell("macro_f1"), f"{result.get('seconds', 0.0):.1f}"]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    title = f"{document['model']} ({document.get('init', 'pretrained')}) on {document['dataset']['name']} / {document['dataset']['label_set']}"
    extraction = {r["feature_extraction_seconds"] for r in document["results"] if "feature_extraction_seconds" in r}
    if extraction:  # paid once per run, shared by every linear-probe row
        lines.append(f"linear probe: backbone features extracted once in {max(extraction):.0f} s (not in the rows' times)")
    return title + "\n" + "\n".join(lines)
