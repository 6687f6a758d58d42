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
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

from ecg_hub.evaluation.metrics import (
    classification_metrics,
    make_compute_metrics,
    make_preprocess_logits,
    scores_from_logits,
)

logger = logging.getLogger(__name__)

PROBLEM_TYPES = ("multi_label_classification", "single_label_classification")
SPLITS = ("train", "validation", "test")

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
}


# --- datasets -------------------------------------------------------------------------------------


def class_names_of(dataset, column: str) -> list[str]:
    """Class names of a ``Sequence(ClassLabel)`` label column (as written by ``ecg-hub data prepare``)."""
    if column not in dataset.column_names:
        raise ValueError(f"dataset has no label column {column!r}; columns: {dataset.column_names}")
    feature = dataset.features[column]
    names = getattr(getattr(feature, "feature", None), "names", None)
    if not names:
        raise ValueError(
            f"label column {column!r} must be Sequence(ClassLabel(names=[...])) (lists of class indices), "
            f"got {feature}"
        )
    return list(names)


def label_matrix(dataset, column: str) -> np.ndarray:
    """(N, C) float32 multi-hot matrix of a ``Sequence(ClassLabel)`` column."""
    from ecg_hub.data.collators import multi_hot_rows

    return multi_hot_rows(dataset[column], len(class_names_of(dataset, column)))


def load_splits(path_or_dataset) -> dict:
    """``{"train", "validation", "test"}`` datasets of a prepared dataset folder (or object).

    Accepts a saved ``DatasetDict`` with those splits, or a single ``Dataset`` with a ``split``
    column (the ``ecg-hub data prepare`` layout), which is split by that column.
    """
    import datasets

    data = path_or_dataset
    if isinstance(path_or_dataset, (str, Path)):
        path = Path(path_or_dataset)
        if not path.exists():
            raise ValueError(f"dataset folder {str(path)!r} does not exist (prepare it with `ecg-hub data prepare`)")
        data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        splits = dict(data)
    else:
        if "split" not in data.column_names:
            raise ValueError("dataset has no 'split' column; expected values 'train', 'validation', 'test'")
        split_column = np.asarray(data["split"])
        splits = {name: data.select(np.flatnonzero(split_column == name)) for name in SPLITS}
    missing = [name for name in SPLITS if name not in splits or len(splits[name]) == 0]
    if missing:
        raise ValueError(f"dataset lacks the split(s) {missing}; fine-tuning and evaluation need train, validation and test")
    return {name: splits[name] for name in SPLITS}


def keep_single_label_records(dataset, column: str):
    """Records with exactly one positive class in ``column`` (the multi-class task of ECG-JEPA)."""
    counts = np.array([len(v) for v in dataset[column]])
    kept = dataset.select(np.flatnonzero(counts == 1))
    if len(kept) < len(dataset):
        logger.info("single-label: kept %d of %d records with exactly one %r class", len(kept), len(dataset), column)
    return kept


# --- models ---------------------------------------------------------------------------------------


def label_config_kwargs(class_names: Sequence[str], problem_type: str) -> dict:
    """``num_labels``, ``id2label``, ``label2id`` (both, see HF_CONVENTIONS §1) and ``problem_type``."""
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type: expected one of {PROBLEM_TYPES}, got {problem_type!r}")
    names = list(class_names)
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
        "problem_type": problem_type,
    }


def load_classification_model(
    pretrained: str | None = None,
    *,
    class_names: Sequence[str],
    problem_type: str = "multi_label_classification",
    config: dict | None = None,
    model_type: str | None = None,
    freeze_base_model: bool = False,
    random_init: bool = False,
    ignore_mismatched_sizes: bool = False,
    **config_overrides,
):
    """An ``AutoModelForSequenceClassification`` for ``class_names``.

    Args:
        pretrained: a folder or Hub id. A pretraining checkpoint (e.g. ``EcgJepaForPreTraining``) or
            a bare encoder loads its encoder weights; the classification head starts fresh.
        class_names: the label set's class names (sets ``num_labels``, ``id2label``, ``label2id``).
        problem_type: ``"multi_label_classification"`` or ``"single_label_classification"``.
        config: without ``pretrained``: config fields of a randomly initialised model (with
            ``model_type``), e.g. ``{"hidden_size": 192, ...}``.
        model_type: the registered ``model_type`` (``"ecg_jepa"``, ``"ecg_resnet"``, ...) for
            ``config``; may also be given inside ``config``.
        freeze_base_model: call ``model.freeze_base_model()`` (linear probing through the Trainer).
        random_init: with ``pretrained``, take only its config: the same architecture with random
            weights (the baseline a pretrained encoder must beat).
        ignore_mismatched_sizes: allow a classification checkpoint with another number of labels.
        **config_overrides: extra config fields (e.g. ``classifier_dropout=0.1``).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    import ecg_hub  # noqa: F401  (registers the ecg-hub Auto classes)

    label_kwargs = label_config_kwargs(class_names, problem_type)
    if pretrained is not None and config:
        raise ValueError("give either pretrained=... or config=..., not both")
    if pretrained is not None and random_init:
        model_config = AutoConfig.from_pretrained(pretrained, **config_overrides, **label_kwargs)
        model = AutoModelForSequenceClassification.from_config(model_config)
    elif pretrained is not None:
        model = AutoModelForSequenceClassification.from_pretrained(
            pretrained, ignore_mismatched_sizes=ignore_mismatched_sizes, **label_kwargs, **config_overrides
        )
    else:
        fields = dict(config or {})
        model_type = fields.pop("model_type", model_type)
        if model_type is None:
            raise ValueError("a randomly initialised model needs model_type (e.g. 'ecg_jepa') or pretrained=...")
        model_config = AutoConfig.for_model(model_type, **fields, **config_overrides, **label_kwargs)
        model = AutoModelForSequenceClassification.from_config(model_config)
    if freeze_base_model:
        if not hasattr(model, "freeze_base_model"):
            raise ValueError(f"{type(model).__name__} has no freeze_base_model()")
        model.freeze_base_model()
    return model


def load_feature_extractor(pretrained: str | None = None, *, preset: str | None = None, **overrides):
    """The model's ``EcgFeatureExtractor``: saved with ``pretrained`` (``preprocessor_config.json``),
    else the named ``preset`` (``"ecg_jepa"``, ``"merl"``, ...), with field ``overrides``."""
    from ecg_hub.modeling import EcgFeatureExtractor

    if pretrained is not None and preset is None:
        try:
            extractor = EcgFeatureExtractor.from_pretrained(pretrained)
        except OSError as error:
            raise ValueError(
                f"{pretrained!r} has no preprocessor_config.json; name a feature-extractor preset instead"
            ) from error
        for key, value in overrides.items():
            setattr(extractor, key, value)
        return extractor
    if preset is None:
        raise ValueError("load_feature_extractor needs pretrained=... (with preprocessor_config.json) or preset=...")
    return EcgFeatureExtractor.from_preset(preset, **overrides)


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
        args["warmup_steps"] = int(round(warmup_epochs * steps_per_epoch))
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
    from ecg_hub.data.collators import EcgCollator

    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type: expected one of {PROBLEM_TYPES}, got {problem_type!r}")
    class_names = class_names_of(splits["train"], label_column)
    model_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if model_labels != class_names:
        raise ValueError(
            f"model labels {model_labels} differ from the {label_column!r} classes {class_names}; "
            "build the model with load_classification_model(class_names=...)"
        )
    if getattr(model.config, "problem_type", None) != problem_type:
        model.config.problem_type = problem_type

    def prepare(dataset):
        if problem_type == "single_label_classification":
            dataset = keep_single_label_records(dataset, label_column)
        columns = [c for c in ("signal", "sampling_rate", "leads", "record_id", label_column) if c in dataset.column_names]
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


def predict_scores(model, dataset, feature_extractor, *, problem_type: str, batch_size: int = 64) -> np.ndarray:
    """(N, C) probabilities of a classification model on ``dataset`` with the deterministic crop."""
    from ecg_hub.data.collators import EcgCollator

    columns = [c for c in ("signal", "sampling_rate", "leads", "record_id") if c in dataset.column_names]
    loader = torch.utils.data.DataLoader(
        dataset.select_columns(columns).with_format("numpy", columns=["signal"], output_all_columns=True),
        batch_size=batch_size,
        collate_fn=EcgCollator(feature_extractor, training=False),
    )
    model.eval()
    device = next(model.parameters()).device
    scores = []
    with torch.no_grad():
        for batch in loader:
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            scores.append(scores_from_logits(logits, problem_type).cpu().numpy())
    return np.concatenate(scores).astype(np.float64)
