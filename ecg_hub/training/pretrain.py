"""Self-supervised pretraining on Accelerate, for any model whose forward returns a ``loss``.

Run it with ``ecg-hub pretrain RECIPE [key=value ...]`` (one process) or
``accelerate launch [--config_file recipes/accelerate/...] -m ecg_hub pretrain RECIPE ...``
(data-parallel DDP or FSDP). :func:`pretrain` is the loop; :class:`PretrainRecipe` the schema of
its YAML recipes (``recipes/ecg_jepa/pretrain_*.yaml``).

Features
--------
- **Model-agnostic.** The recipe names the model, its feature extractor, the dataset, the
  collator, the optimizer and the schedule (``_component_`` entries). The loop calls
  ``model(**batch).loss`` (batch keys the forward does not accept are dropped) and, after every
  optimizer step, ``model.post_optimizer_step(step, total_steps) -> dict[str, float]`` if the
  model defines it: EMA momentum and target-encoder updates, teacher or codebook updates,
  temperature schedules. The returned values are logged. See :class:`PretrainingModel`.
- **Data.** Map-style datasets (memory-mapped Arrow from ``datasets.load_from_disk``) are read
  batch by batch: RAM does not grow with the number of records. ``data.streaming: true`` (or an
  ``IterableDataset`` component) streams instead. The collator (with the model's feature
  extractor) runs in the DataLoader workers. ``data.batch_size`` is per process and micro-batch:
  the effective batch is ``batch_size * gradient_accumulation_steps * num_processes`` ECGs.
- **Optimisation.** The optimizer component (AdamW) gets two parameter groups: weight decay on
  matrices, none on biases, norm weights, positional tables and special tokens
  (:func:`~ecg_hub.training.optim.build_param_groups`). The schedule steps once per optimizer
  step (warmup + cosine through ``transformers.get_scheduler``). Gradient accumulation
  (``accelerator.accumulate``), clipping (``max_grad_norm``), bf16 / fp16 autocast
  (``mixed_precision``; bf16 works on CPU too).
- **Checkpoints and resume.** ``accelerator.save_state`` every ``checkpoint_every_steps``, when
  ``stop_after_steps`` steps of the session are done, and at the end, into ``<output_dir>/checkpoints/step_<N>`` (the newest
  ``keep_last_checkpoints`` are kept), with EMA targets, optimizer, scheduler, random states and
  the data position. ``resume_from_checkpoint: latest`` (CLI ``--resume``) continues to the same
  weights as an uninterrupted run: the epoch's permutation is a function of ``(seed, epoch)``, the
  sampler restarts at the saved batch, collator randomness is keyed by batch, and the model's
  random stream (masks, drop-path) is restored.
- **Held-out evaluation.** With ``evaluation.split`` set, the model's loss (and, for masked
  prediction, masked-token accuracy and perplexity) on that split before the first step, every
  ``evaluation.every_steps`` and at the end, with the same masks every time
  (:mod:`ecg_hub.training.held_out`); logged as ``eval/*``, kept in ``evaluation.json`` and the
  summary's ``evaluation`` (``initial``, ``final``, ``history``).
- **Learning health.** With ``diagnostics.every_steps`` set, record-dependent variance shares of
  the targets, predictions and features, the loss with the predictions replaced by their
  across-record mean and by the record-mean oracle, RankMe and per-dimension std, on a fixed
  probe batch at the same moments (:mod:`ecg_hub.training.diagnostics`); logged as ``health/*``,
  kept in ``learning_health.json`` and the summary's ``learning_health``, with one warning line
  when the run learns positions only. ``diagnostics.probe.every_steps`` (CLI ``--probe-every``)
  adds a quick validation linear probe (``probe/val_macro_auroc``, ``probe.json``, the summary's
  ``probe``); with ``diagnostics.probe.keep_best`` the ``model`` folder holds the best step.
- **Text models.** The same loop pretrains a text tower by masked language modelling: the
  preprocessor is the tokenizer, the collator ``MaskedTextCollator``
  (``DataCollatorForLanguageModeling`` inside), the model any ``AutoModelForMaskedLM``
  (``recipes/text/cardiology_mlm_*.yaml``). The tokenizer must fit the model's vocabulary and the
  collator's ``max_length`` its position table.
- **Outputs.** ``<output_dir>/model``: ``save_pretrained`` of the model and its feature extractor
  (safetensors, ready for ``from_pretrained`` and the Hub); ``recipe.yaml`` (the resolved
  recipe); ``summary.json``; tracker logs under ``<output_dir>/logs`` (TensorBoard by default,
  ``tracking.log_with: [trackio]`` or ``[wandb]``).
- **Reporting.** A tqdm bar on the main process (loss, lr, ECG/s), and a closing table: ECG/s,
  tokens/s, counted FLOPs per ECG, model FLOPs utilisation (CUDA, or ``training.peak_tflops``),
  peak memory.

Errors: an unknown recipe key names the key (:class:`~ecg_hub.recipe.RecipeError`); a launch whose
world size Accelerate does not see (e.g. two processes each with world size 1) stops at once; a
fresh run into an ``output_dir`` that already has checkpoints asks for ``--resume`` instead of
mixing runs; a non-finite loss stops the run with its step.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch

from ..data.splits import dataset_split
from ..recipe import Component, dump_recipe, flatten_recipe, instantiate
from ..utils import explain_disk_errors, explicit_parameters
from .checkpointing import (
    TrainingProgress,
    check_resumable,
    find_latest_checkpoint,
    find_resumable_checkpoint,
    load_checkpoint,
    read_history_until,
    save_checkpoint,
    write_json_atomic,
)
from .dataloading import build_train_dataloader
from .diagnostics import DiagnosticsSettings, LearningHealthMonitor, ValidationProbe
from .held_out import EvaluationSettings, HeldOutEvaluator
from .optim import DEFAULT_NO_DECAY_NAMES, build_param_groups
from .throughput import (
    FlopCounter,
    model_flops_utilization,
    peak_flops_per_second,
    peak_memory_bytes,
    render_summary,
)

__all__ = [
    "DataSettings",
    "DiagnosticsSettings",
    "EvaluationSettings",
    "PretrainRecipe",
    "PretrainResult",
    "PretrainingModel",
    "TrackingSettings",
    "TrainingSettings",
    "pretrain",
]


@runtime_checkable
class PretrainingModel(Protocol):
    """What the loop needs from a model (``transformers.PreTrainedModel`` in practice).

    - ``forward(**batch)`` returns an object with a scalar ``loss``;
    - optionally ``post_optimizer_step(step, total_steps) -> dict[str, float]``, called after
      every optimizer step with the 0-based index of that step (0 after the first) and the run's
      total number of optimizer steps; EMA targets and other state it updates must be registered submodules or
      buffers so that checkpoints include them;
    - optionally ``no_weight_decay() -> set[str]`` (extra parameter names without weight decay) and
      ``num_input_tokens(**batch) -> int`` (tokens in a batch, for tokens/s; otherwise derived
      from ``config.patch_size`` and ``input_values`` of shape (batch, leads, samples)).
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any: ...


# ------------------------------------------------------------------------------------------------
# Recipe schema.
# ------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class DataSettings:
    """``data:`` section.

    Attributes:
        split: rows whose ``split`` column has this value (or this key of a ``DatasetDict``);
            ``null`` uses every row.
        columns: read only these columns (``null``: all); ``signal``, ``sampling_rate`` and
            ``leads`` are what ``EcgCollator`` needs, ``masked_leads`` the leads it must treat as
            missing (left out without a word where a dataset prepared by an older ecg-hub lacks it).
        batch_size: ECGs per micro-batch and process.
        shuffle: a new permutation every epoch (``(seed, epoch)``-determined).
        streaming: iterate the dataset as an ``IterableDataset`` (``to_iterable_dataset``) in
            ``num_shards`` shards (their order is shuffled every epoch) through a shuffle buffer of
            ``shuffle_buffer_size`` records. The buffer is Arrow data: it holds up to about three
            times ``shuffle_buffer_size`` x the bytes of one record (8 x 2500 float32: 80 KB;
            12 x 5000: 240 KB), whatever the size of the dataset.
        num_workers: DataLoader worker processes running the collator (0: in the main process).
        prefetch_factor: batches prefetched per worker (``null``: PyTorch's default, 2).
        pin_memory: page-locked host batches (CUDA only).
    """

    split: str | None = "train"
    columns: list[str] | None = None
    batch_size: int = 64
    shuffle: bool = True
    streaming: bool = False
    num_shards: int = 64
    shuffle_buffer_size: int = 1_000
    num_workers: int = 0
    prefetch_factor: int | None = None
    pin_memory: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0 or self.num_shards < 1:
            raise ValueError("data.batch_size and data.num_shards must be >= 1 and data.num_workers >= 0")


@dataclass(kw_only=True)
class TrainingSettings:
    """``training:`` section.

    Attributes:
        max_steps: optimizer steps of the run (wins over ``num_epochs``; required when streaming).
        num_epochs: passes over the data (map-style datasets).
        gradient_accumulation_steps: micro-batches per optimizer step.
        max_grad_norm: clip the global gradient norm to this (``null``: no clipping).
        mixed_precision: ``no``, ``bf16`` or ``fp16`` autocast; ``null`` takes the ``accelerate
            launch`` configuration's (default ``no``).
        no_weight_decay_names: parameter-name fragments without weight decay (biases and every
            1-D tensor are always exempt).
        gradient_checkpointing: recompute activations in the backward pass, if the model supports it.
        log_every_steps: optimizer steps between logged (process-averaged) losses.
        checkpoint_every_steps: optimizer steps between checkpoints (``null``: only at the end).
        keep_last_checkpoints: how many checkpoints to keep (``null``: all).
        stop_after_steps: save a checkpoint and stop after this many optimizer steps of this
            session, without changing the schedule (for time-limited jobs: rerun the same command
            with ``--resume`` to do the next ones).
        resume_from_checkpoint: ``latest`` (the newest under ``<output_dir>/checkpoints`` whose
            checksum manifest checks out; a newer corrupt one is skipped with a warning) or a
            checkpoint folder.
        trust_checkpoint: resume from a folder without ecg-hub's manifest (its optimizer and random
            states are pickles: only for checkpoints you trust).
        peak_tflops: peak dense TFLOP/s of one device for MFU, where the built-in table has none.
        flop_count_micro_batches: micro-batches (per process) whose FLOPs are counted for MFU; the
            throughput is measured after them (counting slows a step down).
        progress_bar: show the tqdm bar on the main process.
    """

    max_steps: int | None = None
    num_epochs: float | None = None
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] | None = None
    no_weight_decay_names: list[str] = field(default_factory=lambda: list(DEFAULT_NO_DECAY_NAMES))
    gradient_checkpointing: bool = False
    log_every_steps: int = 10
    checkpoint_every_steps: int | None = 1000
    keep_last_checkpoints: int | None = 3
    stop_after_steps: int | None = None
    resume_from_checkpoint: str | None = None
    trust_checkpoint: bool = False
    peak_tflops: float | None = None
    flop_count_micro_batches: int = 4
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.max_steps is None and self.num_epochs is None:
            raise ValueError("set training.max_steps or training.num_epochs")
        for name in (
            "max_steps",
            "gradient_accumulation_steps",
            "log_every_steps",
            "checkpoint_every_steps",
            "keep_last_checkpoints",
            "stop_after_steps",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"training.{name} must be >= 1, got {value}")
        if self.num_epochs is not None and self.num_epochs <= 0:
            raise ValueError(f"training.num_epochs must be > 0, got {self.num_epochs}")


@dataclass(kw_only=True)
class TrackingSettings:
    """``tracking:`` section: Accelerate trackers (``tensorboard``, ``trackio``, ``wandb``, ...;
    ``[]`` for none), logging under ``<output_dir>/logs``."""

    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    project_name: str = "ecg-hub-pretrain"


def _default_collator() -> Component:
    return Component({"_component_": "ecg_hub.data.collators.EcgCollator", "training": True})


@dataclass(kw_only=True)
class PretrainRecipe:
    """Schema of ``recipe: pretrain`` YAML files. Components (``_component_`` entries):

    - ``model``: the model to pretrain (``...ForPreTraining``), usually built from a config node;
    - ``preprocessor``: the model's input contract, saved with the model: its ``EcgFeatureExtractor``,
      for ECG-text models the processor (feature extractor + tokenizer), for a text model (masked-LM
      pretraining of a text tower) its tokenizer;
    - ``dataset``: a ``datasets.Dataset`` / ``DatasetDict`` / ``IterableDataset`` factory;
    - ``collator``: rows -> model inputs; gets the preprocessor as ``feature_extractor=`` from the loop
      (default ``EcgCollator(training=True)``);
    - ``optimizer``: gets ``params=`` (the two weight-decay groups) from the loop;
    - ``lr_scheduler``: gets ``optimizer=`` and ``num_training_steps=`` from the loop.
    """

    #: Keyword arguments the loop passes at instantiation (a recipe must not set them).
    PROVIDED_KWARGS: ClassVar[dict[str, tuple[str, ...]]] = {
        "collator": ("feature_extractor",),
        "optimizer": ("params",),
        "lr_scheduler": ("optimizer", "num_training_steps"),
    }

    recipe: str = "pretrain"
    output_dir: str
    seed: int = 0
    model: Component
    preprocessor: Component
    dataset: Component
    collator: Component = field(default_factory=_default_collator)
    optimizer: Component
    lr_scheduler: Component
    data: DataSettings = field(default_factory=DataSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    diagnostics: DiagnosticsSettings = field(default_factory=DiagnosticsSettings)
    training: TrainingSettings
    tracking: TrackingSettings = field(default_factory=TrackingSettings)


# ------------------------------------------------------------------------------------------------
# Building blocks.
# ------------------------------------------------------------------------------------------------


def _check_trackers(names: list[str]) -> None:
    """Accelerate silently drops trackers that are not installed; a recipe that asks for one should
    fail instead of training without its logs."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = {t.value for t in LoggerType} - {"all"}
    available = {str(t.value) for t in get_available_trackers()}
    for name in names:
        if name not in known:
            raise ValueError(
                f"tracking.log_with: unknown tracker {name!r} (Accelerate knows {sorted(known)})"
            )
        if name not in available:
            raise ValueError(
                f"tracking.log_with: {name!r} is not installed (pip install {name.replace('_', '-')})"
            )


def _make_accelerator(recipe: PretrainRecipe):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    _check_trackers(list(recipe.tracking.log_with))

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and not torch.cuda.is_available() and "ACCELERATE_USE_CPU" not in os.environ:
        # `accelerate launch --multi_gpu` on a machine without GPUs starts the processes but each
        # one would see world size 1 (and train alone); on CPU they must join a gloo group.
        os.environ["ACCELERATE_USE_CPU"] = "1"
    output_dir = Path(recipe.output_dir)
    accelerator = Accelerator(
        mixed_precision=recipe.training.mixed_precision,
        gradient_accumulation_steps=recipe.training.gradient_accumulation_steps,
        log_with=list(recipe.tracking.log_with) or None,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        # The schedule is stepped by hand, once per optimizer step: Accelerate would otherwise
        # step it num_processes times per optimizer step.
        step_scheduler_with_optimizer=False,
    )
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"{launched} processes were launched (WORLD_SIZE) but Accelerate sees a world of "
            f"{accelerator.num_processes}: every process would train alone. On CPU, launch with "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...`"
        )
    return accelerator


def _load_dataset(recipe: PretrainRecipe, dataset: Any = None, held_out_split: str | None = None):
    """The recipe's dataset (``dataset``: the one already built), restricted to ``data.split`` (or,
    for the held-out evaluation, ``held_out_split``) and ``data.columns``, with signals read as
    NumPy arrays; an ``IterableDataset`` when ``data.streaming`` is set (never held out)."""
    import datasets

    dataset = instantiate(recipe.dataset) if dataset is None else dataset
    held_out = held_out_split is not None
    split = held_out_split if held_out else recipe.data.split
    key = "evaluation.split" if held_out else "data.split"
    if split is not None:
        try:
            dataset = dataset_split(dataset, split, keep_in_memory=True)
        except ValueError as error:
            raise ValueError(f"{error}; set {key} to one of its splits" + ("" if held_out else ", or data.split: null for every row")) from None
    elif isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ValueError(f"dataset: a DatasetDict with splits {list(dataset)}; set data.split to one of them")
    if recipe.data.columns is not None:
        columns = list(recipe.data.columns)
        available = getattr(dataset, "column_names", None)
        if available is not None and "masked_leads" in columns and "masked_leads" not in available:
            # Datasets prepared before ecg-hub recorded masked leads have none to honour.
            columns.remove("masked_leads")
        dataset = dataset.select_columns(columns)
    if isinstance(dataset, datasets.Dataset):
        if len(dataset) == 0:
            raise ValueError(f"dataset: no rows in split {split!r}")
        if recipe.data.streaming and not held_out:
            dataset = dataset.to_iterable_dataset(num_shards=min(recipe.data.num_shards, len(dataset)))
        elif "signal" in dataset.column_names:
            # Signals as NumPy arrays (one copy out of Arrow) rather than nested Python lists.
            return dataset.with_format("numpy", columns=["signal"], output_all_columns=True)
    if isinstance(dataset, datasets.IterableDataset):
        if held_out:
            raise ValueError("evaluation.split needs a map-style dataset (it is evaluated in full, in order)")
        dataset = dataset.with_format("numpy")
    return dataset


def _input_contract(model: torch.nn.Module) -> tuple[str, Any]:
    """``(where, config)`` of the ECG input the model was configured for: its own config, or the ECG
    tower's sub-config (``config.ecg_config``) of a composite ECG-text model."""
    config = getattr(model, "config", None)
    ecg_config = getattr(config, "ecg_config", None)
    if ecg_config is not None:
        return "model.config.ecg_config", ecg_config
    return "model.config", config


def _is_tokenizer(preprocessor: Any) -> bool:
    from transformers import PreTrainedTokenizerBase

    return isinstance(preprocessor, PreTrainedTokenizerBase)


def _saved_tokenizer_vocabulary(model: torch.nn.Module) -> tuple[str, dict[str, int]] | None:
    """``(folder, vocabulary)`` of the tokenizer saved beside a model loaded from a local folder."""
    folder = Path(str(getattr(model, "name_or_path", "") or ""))
    if not folder.is_dir() or not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        return None
    from transformers import AutoTokenizer

    return str(folder), AutoTokenizer.from_pretrained(folder).get_vocab()


def _check_text_inputs_match(model: torch.nn.Module, tokenizer: Any, collator: Any) -> None:
    """A text model's tokenizer must index the model's embedding table, and the collator must not
    produce sequences longer than the model's position table. A model loaded from a local folder
    that also holds a tokenizer must be trained with that tokenizer's vocabulary."""
    config = getattr(model, "config", None)
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is None:
        raise ValueError(f"the preprocessor is a tokenizer but {type(model).__name__}.config has no vocab_size")
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"tokenizer/model vocabulary mismatch: the tokenizer ({type(tokenizer).__name__}) has {len(tokenizer)} "
            f"tokens but model.config.vocab_size is {vocab_size}; ids >= {vocab_size} would index past the "
            "embedding table (train with the model's own tokenizer, or resize the embeddings first)"
        )
    saved = _saved_tokenizer_vocabulary(model)
    if saved is not None and saved[1] != tokenizer.get_vocab():
        raise ValueError(
            f"tokenizer/model vocabulary mismatch: the model was loaded from {saved[0]}, whose tokenizer has a "
            f"different vocabulary ({len(saved[1])} tokens) than the recipe's preprocessor ({len(tokenizer)} tokens); "
            "use the tokenizer saved with the model"
        )
    positions = getattr(config, "max_position_embeddings", None)
    max_length = getattr(collator, "max_length", None)
    if positions is not None and max_length is not None and max_length > positions:
        raise ValueError(
            f"the collator's max_length is {max_length} tokens but model.config.max_position_embeddings is "
            f"{positions}: longer sequences have no position embedding; set collator.max_length <= {positions}"
        )


def _check_inputs_match(model: torch.nn.Module, preprocessor: Any, collator: Any = None) -> None:
    """The feature extractor (a processor's, for ECG-text models) must produce what the model was
    configured for: sampling rate, leads in order, and no more samples than the model takes.
    Fewer than two comparable fields is an error: the check must never pass silently. A tokenizer
    (masked-LM pretraining of a text model) is checked against the vocabulary and position tables
    instead (`_check_text_inputs_match`)."""
    if _is_tokenizer(preprocessor):
        _check_text_inputs_match(model, preprocessor, collator)
        return
    feature_extractor = getattr(preprocessor, "feature_extractor", preprocessor)
    where, config = _input_contract(model)
    checks = (("sampling_rate", "sampling_rate"), ("lead_names", "leads"), ("num_samples", "num_samples"))
    compared = 0
    for config_name, fe_name in checks:
        expected, given = getattr(config, config_name, None), getattr(feature_extractor, fe_name, None)
        if expected is None or given is None:
            continue
        compared += 1
        if config_name == "num_samples":  # a model configured for N samples takes any length up to N
            same = given <= expected
        elif isinstance(expected, (list, tuple)):
            same = list(expected) == list(given)
        else:
            same = expected == given
        if not same:
            raise ValueError(
                f"the feature extractor's {fe_name} is {given!r} but {where}.{config_name} is {expected!r}; "
                "the extractor must produce the model's input"
            )
    if compared < 2:
        raise ValueError(
            f"cannot check that the feature extractor ({type(feature_extractor).__name__}) produces the input of "
            f"{type(model).__name__}: {where} and the extractor share fewer than two of sampling_rate / "
            "lead_names / num_samples (expected an EcgFeatureExtractor and a config with the ECG input fields)"
        )


def _check_batch_keys(model: torch.nn.Module, batch: dict[str, Any], collator: Any) -> None:
    """Every key the collator produces must be an argument ``model.forward`` names: a key it does not
    name would either be dropped (training without it) or vanish into ``**kwargs``."""
    accepted = explicit_parameters(model.forward)
    unknown = sorted(set(batch) - accepted)
    if unknown:
        raise ValueError(
            f"the collator ({type(collator).__name__}) produced batch keys {unknown} that "
            f"{type(model).__name__}.forward does not take (it takes {sorted(accepted)}); "
            "fix the collator or the model: nothing is dropped silently"
        )


def _tokens_in_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int | None:
    if callable(getattr(model, "num_input_tokens", None)):
        return int(model.num_input_tokens(**batch))
    patch_size = getattr(getattr(model, "config", None), "patch_size", None)
    values = batch.get("input_values")
    if values is None and torch.is_tensor(batch.get("attention_mask")):  # text: non-padding tokens
        return int(batch["attention_mask"].sum())
    if isinstance(patch_size, int) and values is not None and values.ndim == 3:
        return int(values.shape[0] * values.shape[1] * (values.shape[2] // patch_size))
    return None


def _total_steps(recipe: PretrainRecipe, batches_per_epoch: int | None) -> int:
    training = recipe.training
    if training.max_steps is not None:
        return training.max_steps
    if batches_per_epoch is None:
        raise ValueError(
            "training.max_steps is required with a streamed (iterable) dataset: its length is unknown"
        )
    return max(1, math.ceil(training.num_epochs * batches_per_epoch / training.gradient_accumulation_steps))


def _micro_batches(loader, progress: TrainingProgress):
    """This process's micro-batches, epoch after epoch, from the position in ``progress``
    (which it advances as batches are handed out)."""
    while True:
        start = progress.batch_in_epoch
        empty = True
        for batch in loader.epoch_batches(progress.epoch, start):
            empty = False
            progress.batch_in_epoch += 1
            yield batch
        if empty and start == 0:
            raise ValueError(
                f"epoch {progress.epoch} produced no batch: the dataset is smaller than one batch"
            )
        progress.epoch += 1
        progress.batch_in_epoch = 0


def _save_final_model(accelerator, model, feature_extractor, target: Path) -> None:
    """``save_pretrained`` of the model and its feature extractor into ``target``, via a temporary
    folder renamed at the end."""
    state_dict = accelerator.get_state_dict(model)  # gathers FSDP shards; every process must call it
    if accelerator.is_main_process:
        tmp = target.with_name(f".{target.name}.tmp")
        keeps = (f"the previous {target} is intact" if target.exists() else f"nothing was written to {target}") + (
            "; the run's last checkpoint is saved: --resume writes the model again"
        )
        try:
            with explain_disk_errors(f"saving the trained model to {target}", keeps):
                if tmp.exists():
                    shutil.rmtree(tmp)
                unwrapped = accelerator.unwrap_model(model)
                unwrapped.save_pretrained(tmp, state_dict=state_dict, save_function=accelerator.save)
                if feature_extractor is not None and hasattr(feature_extractor, "save_pretrained"):
                    feature_extractor.save_pretrained(tmp)
                if target.exists():
                    shutil.rmtree(target)
                os.replace(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    accelerator.wait_for_everyone()


# ------------------------------------------------------------------------------------------------
# The loop.
# ------------------------------------------------------------------------------------------------


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns: the run ``summary`` (also ``<output_dir>/summary.json``), and
    the trained ``model`` (unwrapped from DDP; FSDP: this process's shards) and ``feature_extractor``."""

    summary: dict[str, Any]
    model: torch.nn.Module
    feature_extractor: Any


def _weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, shapes, bytes), to compare replicas."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ThroughputMeter:
    """FLOPs, ECG/s and tokens/s of a run, kept apart from the step.

    The first ``flop_count_micro_batches`` micro-batches of every process run under a
    `FlopCounter` (counting slows them down); the steady-state rate is measured from the first
    optimizer step after them. ``window_rate`` gives the ECG/s since the last log line.
    """

    def __init__(self, flop_count_micro_batches: int, device: torch.device):
        self.flop_count_micro_batches = flop_count_micro_batches
        self.device = device
        self.flop_samples: list[tuple[int, int]] = []  # (FLOPs, ECGs) of the counted micro-batches
        self.tokens_per_example: float | None = None
        self.run_start = time.perf_counter()
        self.measure_start: float | None = None
        self.measured_examples = 0
        self.session_examples = 0
        self.window_start = self.run_start
        self.window_examples = 0
        self.end: float | None = None

    @property
    def counting(self) -> bool:
        """Whether the next micro-batch has its FLOPs counted."""
        return len(self.flop_samples) < self.flop_count_micro_batches

    @contextlib.contextmanager
    def flop_counter(self, local_examples: int):
        """Context manager around one micro-batch's forward + backward (a no-op once counting is done)."""
        if not self.counting:
            yield
            return
        with FlopCounter() as counter:
            yield
        self.flop_samples.append((counter.total, local_examples))

    def micro_batch(self, model: torch.nn.Module, batch: dict[str, Any], local_examples: int) -> None:
        if self.tokens_per_example is None:
            tokens = _tokens_in_batch(model, batch)
            self.tokens_per_example = tokens / local_examples if tokens is not None else float("nan")
        self.window_examples += local_examples
        self.session_examples += local_examples
        if self.measure_start is not None:
            self.measured_examples += local_examples

    def optimizer_step(self) -> None:
        if self.measure_start is None and not self.counting:
            # Steady-state throughput: after the warm-up step(s) and the (slower) counted ones.
            self._synchronize()
            self.measure_start = time.perf_counter()

    def window_rate(self, num_processes: int) -> float:
        """ECG/s (all processes) since the previous call; starts a new window."""
        now = time.perf_counter()
        rate = self.window_examples * num_processes / max(now - self.window_start, 1e-9)
        self.window_start, self.window_examples = now, 0
        return rate

    def stop(self) -> None:
        self._synchronize()
        self.end = time.perf_counter()

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def summary(self, accelerator, peak_tflops: float | None) -> dict[str, Any]:
        """Throughput fields of the run summary (FLOPs averaged over the counted micro-batches of
        every process: masks change the work per step)."""
        start, examples = self.measure_start, self.measured_examples
        if examples == 0 or start is None:  # too short a run: the whole session
            start, examples = self.run_start, self.session_examples
        counted = torch.tensor(
            [float(sum(f for f, _ in self.flop_samples)), float(sum(n for _, n in self.flop_samples))],
            dtype=torch.float64,
            device=accelerator.device,
        )
        counted = accelerator.reduce(counted, reduction="sum").tolist()
        flops_per_example = counted[0] / counted[1] if counted[1] > 0 and counted[0] > 0 else None
        ecg_per_second = examples * accelerator.num_processes / max(self.end - start, 1e-9)
        peak_device = (
            peak_tflops * 1e12 if peak_tflops else peak_flops_per_second(accelerator.device, accelerator.mixed_precision)
        )
        achieved = flops_per_example * ecg_per_second if flops_per_example else None
        memory, memory_kind = peak_memory_bytes(accelerator.device)
        tokens = self.tokens_per_example
        return {
            "elapsed_seconds": self.end - self.run_start,
            "ecg_per_second": ecg_per_second,
            "tokens_per_second": ecg_per_second * tokens if tokens is not None and math.isfinite(tokens) else None,
            "flops_per_example": flops_per_example,
            "achieved_flops_per_second": achieved,
            "mfu": model_flops_utilization(flops_per_example, ecg_per_second, peak_device, accelerator.num_processes)
            if achieved and peak_device
            else None,
            "peak_memory_bytes": memory,
            "peak_memory_kind": memory_kind,
        }


class LossWindow:
    """Sums of the total loss and of every named term (``output.losses``) since the last log line,
    averaged over micro-batches and processes when read."""

    def __init__(self, device: torch.device):
        self.device = device
        self.total = torch.zeros((), device=device)
        self.terms: dict[str, torch.Tensor] = {}
        self.micro_batches = 0

    def add(self, loss: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
        self.total += loss.detach().float()
        for name, value in losses.items():
            self.terms.setdefault(name, torch.zeros((), device=self.device))
            self.terms[name] += value.detach().float()
        self.micro_batches += 1

    def mean(self, accelerator) -> tuple[float, dict[str, float]]:
        """``(mean loss, {term: mean})`` over the window and every process; resets the window.
        Every process must call it (it is a collective)."""
        names = sorted(self.terms)
        stacked = torch.stack([self.total, *(self.terms[n] for n in names)]) / max(self.micro_batches, 1)
        values = accelerator.reduce(stacked, reduction="mean").tolist()
        self.total.zero_()
        for value in self.terms.values():
            value.zero_()
        self.micro_batches = 0
        return values[0], dict(zip(names, values[1:]))


def _named_losses(output: Any, model_name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, losses)`` of a model output: the scalar to backpropagate and its named terms
    (``output.losses``, optional; open_clip's ``output_dict`` losses)."""
    loss = getattr(output, "loss", None)
    if loss is None:
        raise ValueError(
            f"{model_name}.forward returned no loss: the pretraining loop needs a model that computes its own loss"
        )
    losses = getattr(output, "losses", None) or {}
    if not isinstance(losses, dict) or not all(torch.is_tensor(v) and v.ndim == 0 for v in losses.values()):
        raise ValueError(f"{model_name}.forward: `losses` must be a dict of scalar tensors, got {losses!r}")
    return loss, losses


@dataclass
class _Run:
    """What `_set_up` builds for one session of a run."""

    accelerator: Any
    model: torch.nn.Module  # wrapped by Accelerate (DDP / FSDP)
    unwrapped: torch.nn.Module
    feature_extractor: Any
    collator: Any
    optimizer: Any
    scheduler: Any
    loader: Any
    progress: TrainingProgress
    total_steps: int
    stop_at: int
    resume_from: Path | None
    output_dir: Path
    checkpoints_dir: Path
    evaluator: HeldOutEvaluator | None = None
    health: LearningHealthMonitor | None = None
    probe: ValidationProbe | None = None


def _resume_source(training: TrainingSettings, checkpoints_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run (which must not mix with an old one)."""
    if training.resume_from_checkpoint is None:
        if find_latest_checkpoint(checkpoints_dir) is not None:
            raise FileExistsError(
                f"{checkpoints_dir} already holds checkpoints: continue that run with --resume "
                "(training.resume_from_checkpoint=latest) or choose another output_dir"
            )
        return None
    if training.resume_from_checkpoint == "latest":
        if find_latest_checkpoint(checkpoints_dir) is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {checkpoints_dir}")
        return find_resumable_checkpoint(checkpoints_dir, trust=training.trust_checkpoint)
    resume_from = Path(training.resume_from_checkpoint)
    if not resume_from.is_dir():
        raise FileNotFoundError(f"--resume: checkpoint folder {resume_from} does not exist")
    check_resumable(resume_from, trust=training.trust_checkpoint)
    return resume_from


def _set_up(recipe: PretrainRecipe) -> _Run:
    """Accelerator, model, feature extractor, data, optimizer and schedule; restores a checkpoint."""
    from accelerate.utils import set_seed

    training, data = recipe.training, recipe.data
    accelerator = _make_accelerator(recipe)
    output_dir = Path(recipe.output_dir)
    checkpoints_dir = output_dir / "checkpoints"
    resume_from = _resume_source(training, checkpoints_dir)

    # Same seed on every process, so every process builds the same initial weights.
    set_seed(recipe.seed)
    model = instantiate(recipe.model)
    feature_extractor = instantiate(recipe.preprocessor)
    collator = instantiate(recipe.collator, feature_extractor=feature_extractor)
    _check_inputs_match(model, feature_extractor, collator)
    if training.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
        model.gradient_checkpointing_enable()

    full_dataset = instantiate(recipe.dataset)
    evaluator = None
    if recipe.evaluation.split is not None:
        evaluator = HeldOutEvaluator(
            recipe.evaluation,
            _load_dataset(recipe, full_dataset, held_out_split=recipe.evaluation.split),
            collator,
            data.batch_size,
            accelerator,
        )
    loader = build_train_dataloader(
        _load_dataset(recipe, full_dataset),
        collator,
        data.batch_size,
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
        seed=recipe.seed,
        shuffle=data.shuffle,
        shuffle_buffer_size=data.shuffle_buffer_size,
        num_workers=data.num_workers,
        prefetch_factor=data.prefetch_factor,
        pin_memory=data.pin_memory and accelerator.device.type == "cuda",
    )
    total_steps = _total_steps(recipe, loader.batches_per_epoch)

    weight_decay = float(recipe.optimizer.get("weight_decay", 0.0))
    groups = build_param_groups(model, weight_decay, training.no_weight_decay_names)
    optimizer = instantiate(recipe.optimizer, params=groups)
    scheduler = instantiate(recipe.lr_scheduler, optimizer=optimizer, num_training_steps=total_steps)
    wrapped, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(wrapped)

    # Each process draws its own masks / drop-path (seed + rank); a resume restores these streams.
    set_seed(recipe.seed, device_specific=True)
    progress = TrainingProgress(num_processes=accelerator.num_processes, total_steps=total_steps)
    if resume_from is not None:
        progress = load_checkpoint(accelerator, resume_from)
        if progress.total_steps not in (None, total_steps):
            # The schedules are functions of total_steps: a different length would not continue the run.
            raise ValueError(
                f"checkpoint {resume_from} belongs to a run of {progress.total_steps} optimizer steps but this recipe "
                f"gives {total_steps}; resume with the run's length (e.g. training.max_steps={progress.total_steps})"
            )
        progress.total_steps = total_steps
        accelerator.print(f"resumed from {resume_from} at step {progress.step} (epoch {progress.epoch})")
    health, probe = _build_diagnostics(
        recipe, accelerator, full_dataset, collator, feature_extractor, output_dir,
        progress.step if resume_from is not None else None,
    )

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.yaml").write_text(dump_recipe(recipe), encoding="utf-8")
    if recipe.tracking.log_with:
        accelerator.init_trackers(recipe.tracking.project_name, config=flatten_recipe(recipe))

    decayed = sum(p.numel() for g in groups if g["weight_decay"] > 0 for p in g["params"])
    trainable = sum(p.numel() for g in groups for p in g["params"])
    accelerator.print(
        f"pretraining {type(unwrapped).__name__}: {trainable:,} trainable parameters ({decayed:,} with weight decay), "
        f"{total_steps:,} optimizer steps of {data.batch_size * training.gradient_accumulation_steps * accelerator.num_processes} "
        f"{'sequences' if _is_tokenizer(feature_extractor) else 'ECGs'}, {accelerator.num_processes} process(es) on {accelerator.device}, mixed precision {accelerator.mixed_precision}"
    )
    start_step = progress.step
    stop_at = min(total_steps, start_step + training.stop_after_steps) if training.stop_after_steps else total_steps
    return _Run(
        accelerator=accelerator,
        model=wrapped,
        unwrapped=unwrapped,
        feature_extractor=feature_extractor,
        collator=collator,
        optimizer=optimizer,
        scheduler=scheduler,
        loader=loader,
        progress=progress,
        total_steps=total_steps,
        stop_at=stop_at,
        resume_from=resume_from,
        output_dir=output_dir,
        checkpoints_dir=checkpoints_dir,
        evaluator=evaluator,
        health=health,
        probe=probe,
    )


def _build_diagnostics(recipe, accelerator, full_dataset, collator, feature_extractor, output_dir, resume_step):
    """The learning-health monitor and the validation probe a ``diagnostics:`` section asks for."""
    from accelerate.utils import DistributedType

    diagnostics = recipe.diagnostics
    if diagnostics.every_steps is None and diagnostics.probe.every_steps is None:
        return None, None
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ValueError(
            "diagnostics (learning health, --probe-every) run the whole model on every process: not "
            "available under FSDP or DeepSpeed; use one process or DDP"
        )
    health = probe = None
    if diagnostics.every_steps is not None:
        split = diagnostics.split or recipe.data.split
        rows = _load_dataset(recipe, full_dataset, held_out_split=split) if split is not None else (
            _load_dataset(recipe, full_dataset)
        )
        health = LearningHealthMonitor(
            diagnostics, rows, collator, recipe.data.batch_size, accelerator, output_dir, resume_step, split
        )
    if diagnostics.probe.every_steps is not None:
        probe = ValidationProbe(
            diagnostics.probe, full_dataset, feature_extractor, accelerator, output_dir, resume_step
        )
    return health, probe


def _train_micro_batch(run: _Run, batch: dict[str, Any], meter: ThroughputMeter, max_grad_norm: float | None):
    """Forward, backward and (on the last micro-batch of an accumulation) the optimizer and schedule
    step. Returns ``(loss, losses, grad_norm or None, lr of this optimizer step or None)``."""
    accelerator, model = run.accelerator, run.model
    local_examples = int(next(v for v in batch.values() if torch.is_tensor(v)).shape[0])
    meter.micro_batch(run.unwrapped, batch, local_examples)
    grad_norm = lr = None
    with accelerator.accumulate(model):
        with meter.flop_counter(local_examples):
            loss, losses = _named_losses(model(**batch), type(run.unwrapped).__name__)
            accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm is not None:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        run.optimizer.step()
        if accelerator.sync_gradients:
            lr = run.scheduler.get_last_lr()[0]  # the rate this optimizer step used
            if not accelerator.optimizer_step_was_skipped:
                run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    run.progress.examples += local_examples
    return loss, losses, grad_norm, lr


EVALUATION_FILE = "evaluation.json"


def _evaluate(run: _Run, history: list[dict[str, float]]) -> None:
    """Evaluate on the held-out split, log ``eval/*`` and append to ``history`` (saved atomically as
    ``<output_dir>/evaluation.json``, which a resumed run continues)."""
    metrics = run.evaluator.evaluate(run.model)
    step = run.progress.step
    run.accelerator.log({f"eval/{name}": value for name, value in metrics.items()}, step=step)
    history.append({"step": step, **metrics})
    if run.accelerator.is_main_process:
        write_json_atomic(run.output_dir / EVALUATION_FILE, history, sort_keys=True)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "examples")
        run.accelerator.print(f"held-out evaluation at step {step}: {shown}")


def _evaluation_history(run: _Run) -> list[dict[str, float]]:
    """The evaluations of the run so far (a resumed run keeps those before its checkpoint)."""
    resumed_at = run.progress.step if run.resume_from is not None else None
    return read_history_until(run.output_dir / EVALUATION_FILE, resumed_at)


def _summarise(run: _Run, meter: ThroughputMeter, peak_tflops: float | None, final: dict[str, Any]) -> dict[str, Any]:
    """The run summary (see `pretrain`); checks that data-parallel replicas ended identical."""
    from accelerate.utils import DistributedType, gather_object

    accelerator, progress = run.accelerator, run.progress
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    replicas = gather_object(
        [
            {
                "rank": accelerator.process_index,
                "world_size": accelerator.num_processes,
                "weights_sha256": None if sharded else _weights_digest(run.unwrapped),
            }
        ]
    )
    if not sharded and len({replica["weights_sha256"] for replica in replicas}) > 1:
        raise RuntimeError(f"the data-parallel replicas ended with different weights: {replicas}")
    return {
        "steps": progress.step,
        "total_steps": run.total_steps,
        "examples": progress.examples * accelerator.num_processes,
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": str(accelerator.mixed_precision),
        **meter.summary(accelerator, peak_tflops),
        **final,
        "progress": asdict(progress),
        "replicas": replicas,
    }


def pretrain(recipe: PretrainRecipe) -> PretrainResult:
    """Pretrain the recipe's model (see the module docstring).

    One ECG's path: dataset row -> collator (the feature extractor inside) -> ``model(**batch)``
    -> ``output.loss`` (and its named ``output.losses``) -> backward -> optimizer and schedule ->
    ``model.post_optimizer_step``. Set-up is `_set_up`, one micro-batch `_train_micro_batch`,
    throughput `ThroughputMeter`, the summary `_summarise`.

    The summary holds ``steps``, ``examples`` (ECGs, all processes), ``elapsed_seconds``,
    ``ecg_per_second`` and ``tokens_per_second`` (all processes, measured after the first
    optimizer steps that follow the FLOP counting), ``flops_per_example`` (forward + backward,
    counted on the first ``training.flop_count_micro_batches`` micro-batches of every process and
    averaged: masks change the work per step), ``achieved_flops_per_second``, ``mfu`` (``None``
    when the device peak is unknown), ``peak_memory_bytes``, ``final_loss`` and ``final_losses``
    (each named term of the last logged window), ``stopped_early``, ``model_dir`` and ``replicas``:
    one ``{"rank", "world_size", "weights_sha256"}`` per process (data-parallel runs stop with an
    error if the replicas' weights, EMA targets included, differ at the end; under FSDP each
    process holds shards and the digest is left out).
    """
    from tqdm.auto import tqdm

    training = recipe.training
    run = _set_up(recipe)
    accelerator, progress = run.accelerator, run.progress
    post_step = getattr(run.unwrapped, "post_optimizer_step", None)
    post_step = post_step if callable(post_step) else None
    bar = tqdm(
        total=run.total_steps,
        initial=progress.step,
        desc="pretrain",
        unit="step",
        disable=not (accelerator.is_main_process and training.progress_bar),
        dynamic_ncols=True,
    )
    meter = ThroughputMeter(training.flop_count_micro_batches, accelerator.device)
    window = LossWindow(accelerator.device)
    last_loss: float | None = None
    last_losses: dict[str, float] = {}
    grad_norm = None
    step_lr = float("nan")
    last_checkpoint_step = progress.step if run.resume_from is not None else -1
    checked_keys = False
    batch = loss = losses = None
    evaluations = _evaluation_history(run) if run.evaluator is not None else []
    if run.evaluator is not None and not evaluations:
        _evaluate(run, evaluations)  # the starting point, before any optimizer step
    save_best = functools.partial(_save_final_model, accelerator, run.model, run.feature_extractor)
    if run.health is not None and not run.health.history:
        run.health.run(run.unwrapped, progress.step)
    if run.probe is not None and not run.probe.history:
        run.probe.run(run.unwrapped, progress.step, save_best)

    run.model.train()
    batches = _micro_batches(run.loader, progress)
    while progress.step < run.stop_at:
        batch = next(batches)
        if not checked_keys:
            _check_batch_keys(run.unwrapped, batch, run.collator)
            checked_keys = True
        batch = {
            key: value.to(accelerator.device, non_blocking=True) if torch.is_tensor(value) else value
            for key, value in batch.items()
        }
        loss, losses, step_grad_norm, lr = _train_micro_batch(run, batch, meter, training.max_grad_norm)
        window.add(loss, losses)
        if not accelerator.sync_gradients:
            continue
        grad_norm = step_grad_norm if step_grad_norm is not None else grad_norm
        step_lr = lr if lr is not None else step_lr

        progress.step += 1
        step = progress.step
        # 0-based index of the optimizer step just taken (the official ECG-JEPA momentum schedule).
        extra = post_step(step - 1, run.total_steps) if post_step is not None else {}
        meter.optimizer_step()
        bar.update(1)

        if step % training.log_every_steps == 0 or step == run.stop_at:
            mean_loss, mean_terms = window.mean(accelerator)
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"non-finite loss {mean_loss} at optimizer step {step}")
            ecg_per_second = meter.window_rate(accelerator.num_processes)
            logs = {
                "train/loss": mean_loss,
                **{f"train/loss/{name}": value for name, value in mean_terms.items()},
                "train/lr": step_lr,
                "train/ecg_per_second": ecg_per_second,
                "train/epoch": progress.epoch,
            }
            if grad_norm is not None:
                logs["train/grad_norm"] = float(grad_norm)
            logs.update({f"train/{key}": float(value) for key, value in (extra or {}).items()})
            accelerator.log(logs, step=step)
            bar.set_postfix(
                loss=f"{mean_loss:.4f}",
                **{name: f"{value:.4f}" for name, value in mean_terms.items()},
                lr=f"{step_lr:.2e}",
                ecg_s=f"{ecg_per_second:.1f}",
            )
            last_loss, last_losses = mean_loss, mean_terms

        every = recipe.evaluation.every_steps
        if run.evaluator is not None and ((every and step % every == 0) or step == run.total_steps):
            _evaluate(run, evaluations)
        if run.health is not None and run.health.due(step, run.total_steps):
            run.health.run(run.unwrapped, step)
        if run.probe is not None and run.probe.due(step, run.total_steps):
            run.probe.run(run.unwrapped, step, save_best)
        if (training.checkpoint_every_steps and step % training.checkpoint_every_steps == 0) or step == run.stop_at:
            save_checkpoint(accelerator, run.checkpoints_dir, progress, training.keep_last_checkpoints)
            last_checkpoint_step = step
    bar.close()

    meter.stop()
    if last_checkpoint_step != progress.step:
        save_checkpoint(accelerator, run.checkpoints_dir, progress, training.keep_last_checkpoints)
    stopped_early = progress.step < run.total_steps
    model_dir = run.output_dir / "model"
    if not stopped_early:
        _save_final_model(accelerator, run.model, run.feature_extractor, model_dir)
        if run.probe is not None:
            run.probe.finish(model_dir, progress.step)

    summary = _summarise(
        run,
        meter,
        training.peak_tflops,
        {
            "final_loss": last_loss,
            "final_losses": last_losses,
            "stopped_early": stopped_early,
            "model_dir": None if stopped_early else str(model_dir),
            "evaluation": {
                "split": recipe.evaluation.split,
                "initial": evaluations[0] if evaluations else None,
                "final": evaluations[-1] if evaluations else None,
                "history": evaluations,
            }
            if run.evaluator is not None
            else None,
            "learning_health": run.health.summary() if run.health is not None else None,
            "probe": run.probe.summary() if run.probe is not None else None,
        },
    )
    if accelerator.is_main_process:
        write_json_atomic(run.output_dir / "summary.json", summary, sort_keys=True)
        from rich.console import Console

        Console().print(render_summary(summary))
        if stopped_early:
            accelerator.print(f"stopped after step {progress.step} of {run.total_steps}; continue with --resume")
    batch = loss = losses = None
    _tear_down(run)
    return PretrainResult(summary=summary, model=run.unwrapped, feature_extractor=run.feature_extractor)


def _tear_down(run: _Run) -> None:
    """End the run's distributed state in the one order that cannot hang at exit.

    Freed in the wrong order, a 2-process gloo run could finish training and then never exit: the
    DDP wrapper's ``Reducer`` held the last reference to a process group that
    ``accelerator.end_training()`` had already deregistered, so its deallocation ran
    ``~ProcessGroupGloo`` (which joins the gloo worker threads) on the main thread with the GIL
    held, while a worker thread was destroying a finished collective's work object and waited for
    the GIL. So: a barrier (every collective of every process has completed), then drop the
    wrapper, optimizer and schedule (ours and Accelerate's references) while the default group
    still holds its own reference, collect them, and only then destroy the process group.
    """
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    run.model = run.optimizer = run.scheduler = None
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()


def load_summary(output_dir: str | Path) -> dict[str, Any]:
    """The ``summary.json`` of a finished run."""
    return json.loads((Path(output_dir) / "summary.json").read_text(encoding="utf-8"))
