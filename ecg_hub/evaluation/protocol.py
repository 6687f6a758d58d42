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

Results JSON: the schema of :mod:`ecg_hub.results` (also written by ``ecg-hub finetune``); each
result holds ``protocol``, ``fraction``, ``split`` ("test"), ``seeds``, ``train_records``,
``metrics`` (means), ``metrics_std``, ``per_class_auroc`` (means), plus ``metrics_ci95``
(single-seed results), ``runs`` (per seed) and ``seconds`` (wall clock, including feature
extraction or training).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor

from ecg_hub.data.fractions import sample_label_fraction
from ecg_hub.data.labels import label_names, multi_hot
from ecg_hub.data.splits import load_splits, select_task_records
from ecg_hub.inference import resolve_inference_dtype
from ecg_hub.loading import load_backbone, load_classification_model, load_feature_extractor
from ecg_hub.results import (
    SUMMARY_METRICS,
    ResultsDocument,
    aggregate_runs,
    capturing_test_scores,
    dataset_section,
    format_results_table,
    note_test_scores,
    score_run,
)
from ecg_hub.training.finetune import FIXED_TRAINING_ARGUMENTS, finetune, training_argument_names

from .linear_probe import LinearProbeConfig, cached_features, head_scores, train_linear_probe
from .metrics import bootstrap_confidence_intervals
from .zero_shot import zero_shot_evaluate

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_SEEDS",
    "PROTOCOLS",
    "SUMMARY_METRICS",
    "EvaluationSettings",
    "evaluate_model",
    "format_results_table",
    "load_backbone",
    "run_finetune",
    "run_linear_probe",
    "run_zero_shot",
    "seeds_for",
]

PROTOCOLS = ("linear-probe", "finetune", "zero-shot")
DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)
DEFAULT_SEEDS = (42, 43, 44)


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
        dtype: precision of feature extraction and zero-shot ECG scoring: ``"auto"`` (bf16 where the
            device runs it natively, else float32), ``"float32"`` or ``"bfloat16"``; the resolved
            choice is recorded in the results JSON (``inference_dtype``).
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
    dtype: str = "auto"

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
            known = training_argument_names() | {"early_stopping_patience", "warmup_epochs"}
            for key in self.finetune:
                if key in FIXED_TRAINING_ARGUMENTS or key not in known:
                    raise ValueError(
                        f"fine-tune argument {key!r}: not a TrainingArguments field the protocol lets you set"
                    )
        if "zero-shot" in self.protocols and not self.prompts:
            raise ValueError("the zero-shot protocol needs class prompts (--prompts FILE.json)")


def seeds_for(fraction: float, seeds: Sequence[int]) -> list[int]:
    """Three seeds below 100 %, the first seed alone at 100 % (the full split is not resampled)."""
    return list(seeds) if fraction < 1.0 else [seeds[0]]


def _labels(dataset, column, problem_type):
    """The task's records (``select_task_records``) and their (N, C) multi-hot labels."""
    dataset = select_task_records(dataset, column, problem_type)
    return dataset, multi_hot(dataset, column)


def run_linear_probe(model, feature_extractor, splits, label_column, class_names, settings: EvaluationSettings) -> list[dict]:
    """Linear-probe results for every fraction (features extracted once per split)."""
    start = time.perf_counter()
    data, features = {}, {}
    for name in ("train", "validation", "test"):
        data[name], labels = _labels(splits[name], label_column, settings.problem_type)
        features[name] = cached_features(
            model,
            data[name],
            feature_extractor,
            cache_dir=settings.cache_dir,
            batch_size=settings.batch_size,
            dtype=settings.dtype,
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
            val_scores = head_scores(probe.head, features["validation"], settings.problem_type)
            test_scores = head_scores(probe.head, features["test"], settings.problem_type)
            runs.append(
                score_run(
                    seed, len(index), data["validation"], val_scores, data["test"], test_scores, class_names,
                    bootstrap=settings.bootstrap, best_epoch=probe.best_epoch, seconds=time.perf_counter() - run_start,
                )
            )
        result = aggregate_runs("linear-probe", fraction, runs, class_names)
        result["feature_extraction_seconds"] = extraction_seconds
        results.append(result)
    return results


def run_finetune(model_name_or_path, feature_extractor, splits, label_column, class_names, settings: EvaluationSettings) -> list[dict]:
    """Fine-tune results for every fraction: a fresh model per (fraction, seed)."""
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
                score_run(
                    seed, outcome.train_records, outcome.val_labels, outcome.val_scores,
                    outcome.test_labels, outcome.test_scores, class_names, bootstrap=settings.bootstrap,
                    epochs=outcome.epochs_run, seconds=time.perf_counter() - run_start,
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
    document = ResultsDocument(
        model=str(model_name_or_path),
        init="random" if settings.random_init else "pretrained",
        dataset=dataset_section(
            splits,
            name=dataset_name or info_name or Path(str(dataset_path)).name,
            path=str(dataset_path),
            label_set=label_column,
            class_names=class_names,
            problem_type=settings.problem_type,
        ),
        processor_config=feature_extractor.to_dict(),
        inference_dtype=resolve_inference_dtype(settings.dtype, "cuda" if torch.cuda.is_available() else "cpu")[1],
    )
    for protocol in settings.protocols:
        start = time.perf_counter()
        if protocol == "linear-probe":
            backbone = load_backbone(model_name_or_path, random_init=settings.random_init)
            document.results.extend(
                run_linear_probe(backbone, feature_extractor, splits, label_column, class_names, settings)
            )
        elif protocol == "finetune":
            document.results.extend(
                run_finetune(model_name_or_path, feature_extractor, splits, label_column, class_names, settings)
            )
        else:
            document.results.append(run_zero_shot(model_name_or_path, splits, label_column, class_names, settings))
        logger.info("%s finished in %.1f s", protocol, time.perf_counter() - start)
    if output_json is not None:
        return document.write(output_json)
    return document.to_dict()


def run_zero_shot(model_name_or_path, splits, label_column, class_names, settings: EvaluationSettings) -> dict:
    """Zero-shot on the test split with the checkpoint's ``AutoModel`` and ``AutoProcessor``."""
    start = time.perf_counter()
    model = AutoModel.from_pretrained(model_name_or_path)
    processor = AutoProcessor.from_pretrained(model_name_or_path)
    test, _ = _labels(splits["test"], label_column, settings.problem_type)
    metrics = zero_shot_evaluate(
        model=model, processor=processor, dataset=test, class_prompts=settings.prompts,
        label_column=label_column, scoring=settings.zero_shot_scoring, batch_size=settings.batch_size,
        return_scores=bool(settings.bootstrap) or capturing_test_scores(), dtype=settings.dtype,
    )
    run = {"seed": 0, "train_records": 0, "metrics": metrics, "seconds": time.perf_counter() - start}
    if "scores" in metrics:
        scores = metrics.pop("scores")
        probabilities = (scores + 1) / 2 if metrics["scoring"] == "cosine" else scores
        note_test_scores(0, multi_hot(test, label_column), probabilities)
        if settings.bootstrap:
            run["ci95"] = bootstrap_confidence_intervals(
                multi_hot(test, label_column), probabilities, num_resamples=settings.bootstrap
            )
    result = aggregate_runs("zero-shot", 0.0, [run], class_names)
    result["scoring"] = metrics["scoring"]
    result["prompts"] = metrics["prompts"]
    return result
