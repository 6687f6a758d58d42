"""Trainer-based fine-tuning of any ``...ForSequenceClassification`` ECG model.

One function, :func:`finetune`, runs the ecg-hub fine-tuning protocol (§5) on a prepared dataset:

- multi-label statements (BCE-with-logits on float multi-hot ``labels``) or single-label classes
  (cross-entropy on class indices; only records with exactly one positive class are kept);
- the model's own feature extractor in the collator: random crops for training batches, the
  extractor's deterministic crop for validation and test batches (:class:`EcgTrainer`);
- ``compute_metrics`` with macro AUROC, macro AUPRC, Fmax and per-class AUROC (scikit-learn);
- the best checkpoint chosen on **validation** macro AUROC (``load_best_model_at_end``) with early
  stopping, and the test split scored **once**, with that checkpoint.

The defaults follow the protocol: AdamW (0.9, 0.95), weight decay 0.05, lr = 1e-4 * batch / 256,
batch 64, 3 warmup epochs then cosine, at most 30 epochs, patience 5.

Splits and task records come from :mod:`ecg_hub.data.splits`, models and feature extractors from
:mod:`ecg_hub.loading` (re-exported here: recipes name ``ecg_hub.training.finetune.load_*``), the
results JSON from :mod:`ecg_hub.results`. Of :mod:`ecg_hub.evaluation`, only ``metrics`` is used:
evaluation runs fine-tuning, never the other way round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

from ecg_hub.data.collators import COLLATOR_COLUMNS, EcgCollator
from ecg_hub.data.fractions import sample_label_fraction
from ecg_hub.data.labels import label_names, multi_hot
from ecg_hub.data.splits import load_splits, select_task_records
from ecg_hub.evaluation.metrics import (
    classification_metrics,
    make_compute_metrics,
    make_preprocess_logits,
    scores_from_logits,
    tune_f1_thresholds,
)
from ecg_hub.inference import collect_outputs
from ecg_hub.loading import check_problem_type, load_classification_model
from ecg_hub.recipe import Component, get_component, instantiate, load_recipe
from ecg_hub.results import ResultsDocument, aggregate_runs, dataset_section, score_run

logger = logging.getLogger(__name__)

__all__ = [
    "FIXED_TRAINING_ARGUMENTS",
    "PROTOCOL_TRAINING_DEFAULTS",
    "EcgTrainer",
    "FinetuneData",
    "FinetuneRecipe",
    "FinetuneResult",
    "FinetuneSettings",
    "build_training_arguments",
    "finetune",
    "load_finetune_recipe",
    "predict_dataset_scores",
    "run_finetune_recipe",
    "training_argument_names",
]

# TrainingArguments the protocol fixes unless a recipe overrides them.
PROTOCOL_TRAINING_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 64,
    "learning_rate": 1e-4 * 64 / 256,
    "adam_beta1": 0.9,
    "adam_beta2": 0.95,
    "weight_decay": 0.05,
    "num_train_epochs": 30,
    "lr_scheduler_type": "cosine",
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "epoch",
    "save_total_limit": 2,
    "report_to": "none",
    "dataloader_num_workers": 0,
    # Pinned memory only helps host-to-GPU copies (and warns on CPU-only machines).
    "dataloader_pin_memory": torch.cuda.is_available(),
}


# --- trainer --------------------------------------------------------------------------------------


class EcgTrainer(Trainer):
    """``Trainer`` whose validation / test batches go through a separate collator.

    ``data_collator`` serves training batches (random crops); ``eval_data_collator`` serves
    ``evaluate`` and ``predict`` (the extractor's deterministic crop), so a score never depends on a
    random crop.
    """

    def __init__(self, *args, eval_data_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator

    @contextlib.contextmanager
    def _eval_collator(self):
        if self.eval_data_collator is None:
            yield
            return
        train_collator = self.data_collator
        self.data_collator = self.eval_data_collator
        try:
            yield
        finally:
            self.data_collator = train_collator

    def get_eval_dataloader(self, eval_dataset=None):
        with self._eval_collator():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._eval_collator():
            return super().get_test_dataloader(test_dataset)


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`.

    Attributes:
        trainer: the ``EcgTrainer`` (its model holds the best-validation weights).
        class_names: the label set.
        best_checkpoint: folder of the best-validation checkpoint (``None`` without saving).
        val_metrics: ``classification_metrics`` on validation with the best weights.
        test_metrics: ``classification_metrics`` on test, computed once with the best weights.
        val_scores / val_labels / test_scores / test_labels: the predictions behind those metrics
            ((N, C) probabilities; (N, C) multi-hot or (N,) class indices).
        train_records: records in the (possibly label-fraction) training set.
        epochs_run: epochs trained before the end or early stopping.
    """

    trainer: EcgTrainer
    class_names: list[str]
    best_checkpoint: str | None
    val_metrics: dict
    test_metrics: dict
    train_records: int
    epochs_run: float
    val_scores: np.ndarray
    val_labels: np.ndarray
    test_scores: np.ndarray
    test_labels: np.ndarray


def build_training_arguments(output_dir: str, train_records: int, *, warmup_epochs: float = 3, **overrides) -> TrainingArguments:
    """``TrainingArguments`` with the protocol defaults, best model on validation macro AUROC.

    ``warmup_epochs`` is turned into optimizer steps (``warmup_steps``) from ``train_records``.
    ``learning_rate`` defaults to 1e-4 * batch / 256 for the batch size given.
    """
    args = dict(PROTOCOL_TRAINING_DEFAULTS)
    args.update(overrides)
    if "learning_rate" not in overrides:
        args["learning_rate"] = 1e-4 * args["per_device_train_batch_size"] / 256
    if "warmup_steps" not in overrides:
        steps_per_epoch = math.ceil(train_records / args["per_device_train_batch_size"])
        args["warmup_steps"] = round(warmup_epochs * steps_per_epoch)
    # The selection rule is the protocol, not a tunable: validation macro AUROC, never test.
    args.update(
        output_dir=output_dir,
        load_best_model_at_end=True,
        metric_for_best_model="macro_auroc",
        greater_is_better=True,
        remove_unused_columns=False,
    )
    if args["save_strategy"] != args["eval_strategy"]:
        raise ValueError("save_strategy must equal eval_strategy so the best-validation checkpoint exists")
    return TrainingArguments(**args)


def _predict(trainer: EcgTrainer, dataset, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of the trainer's current model on ``dataset`` (deterministic crops)."""
    prediction = trainer.predict(dataset, metric_key_prefix=prefix)
    scores = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return np.asarray(scores, dtype=np.float64), np.asarray(prediction.label_ids)


def finetune(
    model,
    feature_extractor,
    splits: dict,
    label_column: str,
    *,
    output_dir: str,
    problem_type: str = "multi_label_classification",
    train_indices: np.ndarray | None = None,
    early_stopping_patience: int | None = 5,
    warmup_epochs: float = 3,
    seed: int = 42,
    compute_loss_func=None,
    callbacks: Sequence | None = None,
    **training_overrides,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``splits["train"]``, select on validation, score test once.

    Args:
        model: a ``...ForSequenceClassification`` whose ``config.id2label`` matches the label set
            (see :func:`load_classification_model`).
        feature_extractor: the model's ``EcgFeatureExtractor`` (saved with the checkpoints).
        splits: ``{"train", "validation", "test"}`` datasets (:func:`load_splits`).
        label_column: the ``Sequence(ClassLabel)`` column (``"superclass"``, ``"rhythm"``, ...).
        output_dir: checkpoints and trainer state.
        problem_type: multi-label (BCE) or single-label (CE; single-class records only).
        train_indices: a label-fraction subset of the training split (``sample_label_fraction``).
        early_stopping_patience: evaluations without improvement before stopping (``None``: off).
        warmup_epochs: linear warmup length in epochs, then cosine.
        seed: ``TrainingArguments.seed`` and the random-crop stream.
        compute_loss_func: optional custom loss (e.g. BCE with ``pos_weight``), passed to the Trainer.
        callbacks: extra ``TrainerCallback``s.
        **training_overrides: any ``TrainingArguments`` field (v5 names), e.g. ``num_train_epochs=2``.

    Returns:
        :class:`FinetuneResult` with validation and test metrics of the best-validation weights.
    """
    check_problem_type(problem_type)
    class_names = label_names(splits["train"], label_column)
    model_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if model_labels != class_names:
        raise ValueError(
            f"model labels {model_labels} differ from the {label_column!r} classes {class_names}; "
            "build the model with load_classification_model(class_names=...)"
        )
    if getattr(model.config, "problem_type", None) != problem_type:
        model.config.problem_type = problem_type

    def prepare(dataset):
        dataset = select_task_records(dataset, label_column, problem_type)
        # COLLATOR_COLUMNS keeps masked_leads, so dead leads reach the model as missing (lead_mask 0).
        columns = [c for c in (*COLLATOR_COLUMNS, label_column) if c in dataset.column_names]
        return dataset.select_columns(columns).with_format("numpy", columns=["signal"], output_all_columns=True)

    train = splits["train"] if train_indices is None else splits["train"].select(np.asarray(train_indices))
    train, validation, test = prepare(train), prepare(splits["validation"]), prepare(splits["test"])
    single = problem_type == "single_label_classification"
    collator_kwargs = {"label_column": label_column, "num_classes": len(class_names), "single_label": single}
    args = build_training_arguments(output_dir, len(train), warmup_epochs=warmup_epochs, seed=seed, **training_overrides)
    callback_list = list(callbacks or [])
    if early_stopping_patience:
        callback_list.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    trainer = EcgTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=EcgCollator(feature_extractor, training=True, seed=seed, **collator_kwargs),
        eval_data_collator=EcgCollator(feature_extractor, training=False, **collator_kwargs),
        processing_class=feature_extractor,
        compute_metrics=make_compute_metrics(class_names),
        preprocess_logits_for_metrics=make_preprocess_logits(problem_type),
        compute_loss_func=compute_loss_func,
        callbacks=callback_list,
    )
    trainer.train()
    # Best-validation weights are loaded (load_best_model_at_end); the test split is scored once, here.
    val_scores, val_labels = _predict(trainer, validation, "val")
    test_scores, test_labels = _predict(trainer, test, "test")
    if not single:
        # Saved in config.json with the model: the ecg-classification pipeline and `ecg-hub predict`
        # decide "positive" per class at these F1-optimal validation thresholds instead of 0.5.
        tuned = tune_f1_thresholds(val_labels, val_scores)
        trainer.model.config.classification_thresholds = {
            name: float(threshold) for name, threshold in zip(class_names, tuned)
        }
    return FinetuneResult(
        trainer=trainer,
        class_names=class_names,
        best_checkpoint=trainer.state.best_model_checkpoint,
        val_metrics=classification_metrics(val_labels, val_scores, class_names),
        test_metrics=classification_metrics(test_labels, test_scores, class_names),
        train_records=len(train),
        epochs_run=float(trainer.state.epoch or 0.0),
        val_scores=val_scores,
        val_labels=val_labels,
        test_scores=test_scores,
        test_labels=test_labels,
    )


def predict_dataset_scores(model, dataset, feature_extractor, *, problem_type: str, batch_size: int = 64) -> np.ndarray:
    """(N, C) probabilities of a classification model on every record of ``dataset`` (the feature
    extractor's deterministic crop; sigmoid or softmax by ``problem_type``)."""
    scores = collect_outputs(
        model, dataset, feature_extractor,
        lambda batch: scores_from_logits(model(**batch).logits, problem_type),
        batch_size=batch_size,
    )
    return scores.astype(np.float64)


# --- recipes --------------------------------------------------------------------------------------


@dataclass
class FinetuneData:
    """The ``data:`` section of a fine-tuning recipe.

    Attributes:
        path: a prepared dataset folder (``ecg-hub data prepare ...``) with train / validation / test.
        label_column: the label set (``superclass``, ``subclass``, ``form``, ``rhythm``, ...).
        problem_type: ``multi_label_classification`` (BCE) or ``single_label_classification`` (CE).
        fraction: fraction of the training split used (``sample_label_fraction``), in (0, 1].
        fraction_seed: seed of that draw (42, 43, 44 in the protocol).
    """

    path: str
    label_column: str
    problem_type: str = "multi_label_classification"
    fraction: float = 1.0
    fraction_seed: int = 42

    def __post_init__(self):
        check_problem_type(self.problem_type, "data.problem_type")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"data.fraction: expected a value in (0, 1], got {self.fraction}")


@dataclass
class FinetuneSettings:
    """The ``finetune:`` section: protocol settings outside ``TrainingArguments``."""

    early_stopping_patience: int = 5
    warmup_epochs: float = 3.0


def training_argument_names() -> set[str]:
    """The ``TrainingArguments`` fields a caller may set (its ``__init__`` fields)."""
    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


# Set by the protocol (selection on validation macro AUROC, our collator): not recipe keys.
FIXED_TRAINING_ARGUMENTS = (
    "output_dir",
    "load_best_model_at_end",
    "metric_for_best_model",
    "greater_is_better",
    "remove_unused_columns",
)


@dataclass(kw_only=True)
class FinetuneRecipe:
    """Schema of fine-tuning recipes (``recipes/*/finetune_*.yaml``), loaded by ``ecg_hub.recipe``.

    Components:

    - ``model``: usually :func:`load_classification_model` (``pretrained: DIR`` or ``config:`` +
      ``model_type:``); it receives ``class_names`` and ``problem_type`` from the data section;
    - ``preprocessor``: the model's input contract, usually :func:`load_feature_extractor` (the
      checkpoint's saved one, or a preset).

    ``training`` holds ``TrainingArguments`` fields (transformers v5 names) over the protocol
    defaults (:data:`PROTOCOL_TRAINING_DEFAULTS`); unknown names are errors at load time.
    """

    PROVIDED_KWARGS: ClassVar[dict[str, tuple[str, ...]]] = {"model": ("class_names", "problem_type")}

    recipe: str = "finetune"
    output_dir: str
    seed: int = 42
    data: FinetuneData
    model: Component
    preprocessor: Component
    training: dict[str, Any] = field(default_factory=dict)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)

    def __post_init__(self):
        known = training_argument_names()
        for key in self.training:
            if key in FIXED_TRAINING_ARGUMENTS:
                raise ValueError(f"'training.{key}' is fixed by the ecg-hub protocol; remove it from the recipe")
            if key not in known:
                raise ValueError(f"unknown key 'training.{key}': not a transformers.TrainingArguments field")


def load_finetune_recipe(path, overrides: Sequence[str] = (), trust: bool = False) -> FinetuneRecipe:
    """Read and validate a fine-tuning recipe (a path or a packaged name) with ``key=value`` overrides
    (``trust``: see :func:`ecg_hub.recipe.load_recipe`)."""
    return load_recipe(path, overrides, schema=FinetuneRecipe, trust=trust)


def _recipe_init(model: Component) -> str | None:
    """``"pretrained"`` / ``"random"`` for a :func:`load_classification_model` component (``None``
    for any other component: not recorded)."""
    if get_component(model.target) is not load_classification_model:
        return None
    return "pretrained" if model.get("pretrained") is not None and not model.get("random_init", False) else "random"


def run_finetune_recipe(recipe: FinetuneRecipe, *, results_json: str | None = None) -> FinetuneResult:
    """Build everything a :class:`FinetuneRecipe` names, fine-tune, save the best model and its
    feature extractor to ``output_dir/best``, and (optionally) write the results JSON
    (:mod:`ecg_hub.results`, the schema of ``ecg-hub evaluate``)."""
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    data = recipe.data
    splits = load_splits(data.path)
    class_names = label_names(splits["train"], data.label_column)
    model = instantiate(recipe.model, class_names=class_names, problem_type=data.problem_type)
    feature_extractor = instantiate(recipe.preprocessor)
    train_indices = None
    if data.fraction < 1.0:
        task_train = select_task_records(splits["train"], data.label_column, data.problem_type)
        splits = {**splits, "train": task_train}
        train_indices = sample_label_fraction(multi_hot(task_train, data.label_column), data.fraction, data.fraction_seed)
    result = finetune(
        model,
        feature_extractor,
        splits,
        data.label_column,
        output_dir=recipe.output_dir,
        problem_type=data.problem_type,
        train_indices=train_indices,
        early_stopping_patience=recipe.finetune.early_stopping_patience,
        warmup_epochs=recipe.finetune.warmup_epochs,
        seed=recipe.seed,
        **recipe.training,
    )
    best_dir = Path(recipe.output_dir) / "best"
    result.trainer.save_model(str(best_dir))  # model + feature extractor (processing_class)
    if results_json is not None:
        run = score_run(
            data.fraction_seed if data.fraction < 1 else recipe.seed,
            result.train_records,
            result.val_labels,
            result.val_scores,
            result.test_labels,
            result.test_scores,
            class_names,
            epochs=result.epochs_run,
            seconds=time.perf_counter() - start,
        )
        task_splits = {
            name: select_task_records(split, data.label_column, data.problem_type) for name, split in splits.items()
        }
        ResultsDocument(
            model=str(best_dir),
            init=_recipe_init(recipe.model),
            dataset=dataset_section(
                task_splits,
                name=Path(data.path).name,
                path=data.path,
                label_set=data.label_column,
                class_names=class_names,
                problem_type=data.problem_type,
            ),
            processor_config=feature_extractor.to_dict(),
            results=[aggregate_runs("finetune", data.fraction, [run], class_names)],
        ).write(results_json)
    return result
