"""Resumable training checkpoints on top of ``accelerator.save_state``.

A checkpoint is the folder ``<output_dir>/checkpoints/step_<step, 8 digits>/`` holding what
``accelerator.save_state`` writes (model weights as safetensors, EMA targets included since they
are registered submodules; optimizer; learning-rate scheduler; gradient scaler; per-process
Python / NumPy / torch / CUDA random states; Accelerate's step counter) plus one
``progress_rank<r>.json`` per process with the loop's position: optimizer step, epoch, batches
consumed in the epoch, ECGs seen. The folder is written under a temporary name and renamed when
every process has finished, so a crash never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..utils import write_json_atomic  # re-exported: the pretraining loop imports it from here

__all__ = [
    "TrainingProgress",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "write_json_atomic",
]

_CHECKPOINT_RE = re.compile(r"^step_(\d+)$")


@dataclass
class TrainingProgress:
    """Where the loop stands. ``batch_in_epoch`` counts this process's micro-batches consumed in
    ``epoch``; ``examples`` counts this process's ECGs; ``total_steps`` is the length of the run
    that the schedules (learning rate, EMA momentum) were built for."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    examples: int = 0
    num_processes: int = 1
    total_steps: int | None = None


def list_checkpoints(checkpoints_dir: str | Path) -> list[tuple[int, Path]]:
    """``[(step, folder), ...]`` of the complete checkpoints, oldest first."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for child in checkpoints_dir.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def find_latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(checkpoints_dir)
    return checkpoints[-1][1] if checkpoints else None


def save_checkpoint(
    accelerator, checkpoints_dir: str | Path, progress: TrainingProgress, keep_last: int | None
) -> Path:
    """Save the full training state at ``progress.step`` (call on every process) and keep only the
    newest ``keep_last`` checkpoints (``None``: keep all)."""
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / f"step_{progress.step:08d}"
    tmp = checkpoints_dir / f".tmp_step_{progress.step:08d}"
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    write_json_atomic(tmp / f"progress_rank{accelerator.process_index}.json", asdict(progress), sort_keys=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep_last is not None:
            for _, old in list_checkpoints(checkpoints_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, checkpoint: str | Path) -> TrainingProgress:
    """Restore everything :func:`save_checkpoint` saved (call on every process after
    ``accelerator.prepare``) and return this process's :class:`TrainingProgress`."""
    from accelerate.utils import load as accelerate_load  # weights_only loading with NumPy allowed

    checkpoint = Path(checkpoint)
    progress_file = checkpoint / f"progress_rank{accelerator.process_index}.json"
    if not progress_file.is_file():
        raise ValueError(
            f"checkpoint {checkpoint}: no {progress_file.name}; it is not a complete ecg-hub checkpoint, or it "
            f"was written by fewer processes than the {accelerator.num_processes} running now"
        )
    progress = TrainingProgress(**json.loads(progress_file.read_text(encoding="utf-8")))
    if progress.num_processes != accelerator.num_processes:
        raise ValueError(
            f"checkpoint {checkpoint} was written by {progress.num_processes} process(es); resume it with the same "
            f"number (running {accelerator.num_processes})"
        )
    accelerator.load_state(str(checkpoint))
    # Accelerate logs and carries on when the random states fail to load; an exact resume needs them.
    rng_file = checkpoint / f"random_states_{accelerator.process_index}.pkl"
    states = accelerate_load(rng_file) if rng_file.is_file() else None
    if states is None or not torch.equal(states["torch_manual_seed"], torch.get_rng_state()):
        raise RuntimeError(
            f"checkpoint {checkpoint}: the random-number states of process {accelerator.process_index} were not restored"
        )
    return progress
