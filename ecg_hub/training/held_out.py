"""Held-out evaluation inside the pretraining loop: the model's own loss, and masked-prediction
accuracy and perplexity, on a split the run does not train on.

The pretraining loop evaluates before the first optimizer step of a fresh run (the starting point),
every ``evaluation.every_steps`` steps and at the end. Every evaluation sees the same batches with
the same masks: the held-out loader is unshuffled and its collator randomness is keyed by
``(evaluation.seed, batch position)`` (`SeededCollate`), and the model's own random draws (masks
sampled inside ``forward``) run on a forked generator seeded by ``evaluation.seed``, so the
training stream is untouched and a resumed run stays identical to an uninterrupted one. Figures are
therefore comparable across steps and between a starting model and its trained self.

Metrics (all processes summed before dividing):

- ``loss``: the forward's ``loss``, averaged over held-out examples;
- when the output has ``logits`` of shape ``labels.shape + (classes,)`` and the batch ``labels``
  with ``-100`` at positions not scored (``DataCollatorForLanguageModeling``, ECG2TOK stage B):
  ``masked_accuracy`` (argmax equals the label, over scored positions), ``perplexity``
  (``exp`` of the mean cross-entropy per scored position, not per batch) and ``scored_positions``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .dataloading import build_train_dataloader

__all__ = ["EvaluationSettings", "HeldOutEvaluator", "masked_prediction_sums"]

#: Label value of positions that are not scored (transformers' and PyTorch's convention).
IGNORE_INDEX = -100


@dataclass(kw_only=True)
class EvaluationSettings:
    """``evaluation:`` section of a pretraining recipe.

    Attributes:
        split: held-out split of the recipe's dataset (a ``split`` column value or a ``DatasetDict``
            key); ``null`` evaluates nothing.
        every_steps: also evaluate every this many optimizer steps (``null``: only before the first
            step and at the end).
        batch_size: examples per held-out batch and process (``null``: ``data.batch_size``).
        max_batches: evaluate on the first this many batches per process (``null``: the whole split).
        seed: seed of the held-out masks (the same every evaluation).
    """

    split: str | None = None
    every_steps: int | None = None
    batch_size: int | None = None
    max_batches: int | None = None
    seed: int = 1234

    def __post_init__(self) -> None:
        for name in ("every_steps", "batch_size", "max_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"evaluation.{name} must be >= 1, got {value}")


def masked_prediction_sums(output: Any, batch: dict[str, Any]) -> tuple[float, float, float] | None:
    """``(cross-entropy sum, correct, scored positions)`` of a masked-prediction output, or None
    when the output has no ``logits`` matching the batch's ``labels``."""
    logits, labels = getattr(output, "logits", None), batch.get("labels")
    if not (torch.is_tensor(logits) and torch.is_tensor(labels)) or logits.shape[:-1] != labels.shape:
        return None
    scored = labels != IGNORE_INDEX
    if not bool(scored.any()):
        return 0.0, 0.0, 0.0
    picked_logits = logits[scored].float()
    picked_labels = labels[scored]
    cross_entropy = torch.nn.functional.cross_entropy(picked_logits, picked_labels, reduction="sum")
    correct = (picked_logits.argmax(dim=-1) == picked_labels).sum()
    return float(cross_entropy), float(correct), float(scored.sum())


class HeldOutEvaluator:
    """Evaluates a model on the held-out rows (see the module docstring)."""

    def __init__(self, settings: EvaluationSettings, dataset: Any, collator: Any, batch_size: int, accelerator: Any):
        if len(dataset) < (settings.batch_size or batch_size) * accelerator.num_processes:
            raise ValueError(
                f"evaluation.split {settings.split!r} has {len(dataset)} rows, fewer than one held-out batch "
                f"({settings.batch_size or batch_size} per process x {accelerator.num_processes} processes); "
                "lower evaluation.batch_size"
            )
        self.settings = settings
        self.accelerator = accelerator
        self.loader = build_train_dataloader(
            dataset,
            collator,
            settings.batch_size or batch_size,
            num_replicas=accelerator.num_processes,
            rank=accelerator.process_index,
            seed=settings.seed,
            shuffle=False,
            num_workers=0,  # in this process, so the forked generator covers the collator too
        )

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Metrics of ``model`` (the wrapped one; every process must call it: it is a collective)."""
        device = self.accelerator.device
        sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss*n, n, ce, correct, positions
        has_positions = True
        was_training = model.training
        model.eval()
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.settings.seed)
            for index, batch in enumerate(self.loader.epoch_batches(0, 0)):
                if self.settings.max_batches is not None and index >= self.settings.max_batches:
                    break
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                with self.accelerator.autocast():
                    output = model(**batch)
                examples = int(next(v for v in batch.values() if torch.is_tensor(v)).shape[0])
                sums[0] += float(output.loss) * examples
                sums[1] += examples
                masked = masked_prediction_sums(output, batch)
                if masked is None:
                    has_positions = False
                else:
                    sums[2:] += torch.tensor(masked, dtype=torch.float64, device=device)
        model.train(was_training)
        sums = self.accelerator.reduce(sums, reduction="sum")
        loss_sum, examples, cross_entropy, correct, positions = sums.tolist()
        metrics = {"loss": loss_sum / max(examples, 1.0), "examples": examples}
        if has_positions and positions > 0:
            metrics["masked_accuracy"] = correct / positions
            metrics["perplexity"] = math.exp(cross_entropy / positions)
            metrics["scored_positions"] = positions
        return metrics
