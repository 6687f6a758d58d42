"""Batched inference over a dataset: records -> ``EcgCollator`` (the feature extractor's
deterministic crop) -> a model in eval mode, without gradients, in dataset order.

The one loop behind fine-tuning predictions (:func:`ecg_hub.training.finetune.predict_dataset_scores`),
linear-probe features (:func:`ecg_hub.evaluation.linear_probe.extract_features`) and zero-shot ECG
scores (:func:`ecg_hub.evaluation.zero_shot.zero_shot_scores`). Callers give a ``step(batch) ->
tensor`` that runs their model on one batch (already on the model's device) and picks the output
they need.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from ecg_hub.data.collators import COLLATOR_COLUMNS, EcgCollator

__all__ = ["INPUT_COLUMNS", "collect_outputs", "eval_mode", "inference_loader", "iter_outputs"]

#: Dataset columns the collator reads (others, e.g. labels, are dropped before batching), the
#: dataset's masked leads included.
INPUT_COLUMNS = COLLATOR_COLUMNS

Step = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def inference_loader(dataset, feature_extractor, *, batch_size: int = 64, num_workers: int = 0):
    """A ``DataLoader`` of ``dataset`` in order, batched by ``EcgCollator(feature_extractor, training=False)``."""
    columns = [c for c in INPUT_COLUMNS if c in dataset.column_names]
    return torch.utils.data.DataLoader(
        dataset.select_columns(columns).with_format("numpy", columns=["signal"], output_all_columns=True),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=EcgCollator(feature_extractor, training=False),
        num_workers=num_workers,
    )


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """``module.eval()`` for the block, then its previous train / eval mode again."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def iter_outputs(
    module: nn.Module,
    dataset,
    feature_extractor,
    step: Step,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
) -> Iterator[torch.Tensor]:
    """``step(batch)`` of every batch of ``dataset``, as CPU tensors, in dataset order.

    Args:
        module: the model ``step`` runs; in eval mode (and no gradients) while the loop runs.
        dataset: a ``datasets.Dataset`` with ``signal``, ``sampling_rate``, ``leads`` columns.
        feature_extractor: the model's ``EcgFeatureExtractor`` (deterministic crop).
        step: ``step(batch) -> tensor`` with the batch's tensors on ``device``.
        batch_size: records per batch.
        device: where the batches go (default: the module's device).
        num_workers: DataLoader workers running the feature extractor.
    """
    device = torch.device(device) if device is not None else _device_of(module)
    loader = inference_loader(dataset, feature_extractor, batch_size=batch_size, num_workers=num_workers)
    with eval_mode(module), torch.no_grad():
        for batch in loader:
            yield step({k: v.to(device) for k, v in batch.items()}).cpu()


def collect_outputs(
    module: nn.Module,
    dataset,
    feature_extractor,
    step: Step,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    empty_shape: tuple[int, ...] = (0, 0),
) -> np.ndarray:
    """:func:`iter_outputs` concatenated along the first axis into one NumPy array (an empty
    float32 array of ``empty_shape`` for an empty dataset)."""
    chunks = [
        output.numpy()
        for output in iter_outputs(
            module, dataset, feature_extractor, step, batch_size=batch_size, device=device, num_workers=num_workers
        )
    ]
    return np.concatenate(chunks, axis=0) if chunks else np.zeros(empty_shape, dtype=np.float32)
