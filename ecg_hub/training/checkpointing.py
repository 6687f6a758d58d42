"""Resumable training checkpoints on top of ``accelerator.save_state``.

A checkpoint is the folder ``<output_dir>/checkpoints/step_<step, 8 digits>/`` holding what
``accelerator.save_state`` writes (model weights as safetensors, EMA targets included since they
are registered submodules; optimizer; learning-rate scheduler; gradient scaler; per-process
Python / NumPy / torch / CUDA random states; Accelerate's step counter) plus one
``progress_rank<r>.json`` per process with the loop's position: optimizer step, epoch, batches
consumed in the epoch, ECGs seen. The folder is written under a temporary name and renamed when
every process has finished, so a crash never leaves a checkpoint that looks complete.

Before the rename, the main process writes ``ecg_hub_manifest.json``: the SHA-256 and size of every
file, written after the files. A resume checks it: a checkpoint whose files do not match (truncated,
replaced, missing) is never loaded; ``--resume`` falls back to the newest one that checks out, with
a warning. A folder without the manifest was not written by ecg-hub (or by an older version): its
optimizer and random states are pickles, so loading it could run code from whoever wrote it, and it
is refused unless the user says it is trusted (``--trust-checkpoint``).

Naming and rotation are ecg-hub's, not Accelerate's ``ProjectConfiguration(automatic_checkpoint_naming=True,
total_limit=N)``, whose ``save_state()`` (read in accelerate 1.16, ``Accelerator.save_state``)
does not give these guarantees:

- it names folders ``checkpoint_<i>`` by a save counter (``project_configuration.iteration``), not
  by the optimizer step; ``load_state()`` does not restore the counter, so after a resume the next
  save raises because ``checkpoint_0`` exists, or, once rotation removed it, writes a folder that
  sorts as the oldest and is the next to be deleted (here a rewritten step replaces its folder);
- it deletes the oldest folders to make room *before* writing the new one, and writes in place: a
  crash during that save leaves one checkpoint fewer plus a partial folder (measured: with
  ``total_limit=2``, a save failing with ENOSPC left ``checkpoint_1`` and an empty ``checkpoint_2``;
  with ``total_limit=1`` nothing resumable is left). Here the new checkpoint is written under a
  temporary name, checksummed, renamed, and only then are old ones removed;
- it counts and sorts every entry of ``checkpoints/`` by the first number in its name (a temporary
  or foreign folder is deleted or breaks the sort), and ``load_state()`` without a folder takes the
  highest-numbered one, verified or not, where a resume here takes the newest that matches its
  manifest.

What Accelerate does write, ``save_state(folder)`` / ``load_state(folder)`` with an explicit folder,
is used as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..utils import explain_disk_errors, write_json_atomic  # write_json_atomic: re-exported for the loop

__all__ = [
    "MANIFEST_FILE",
    "CheckpointError",
    "TrainingProgress",
    "find_latest_checkpoint",
    "find_resumable_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_history_until",
    "save_checkpoint",
    "verify_checkpoint",
    "write_json_atomic",
]

_CHECKPOINT_RE = re.compile(r"^step_(\d+)$")
logger = logging.getLogger(__name__)

#: The checksum manifest of a checkpoint folder, written after every other file.
MANIFEST_FILE = "ecg_hub_manifest.json"
MANIFEST_FORMAT = "ecg-hub-checkpoint"


def read_history_until(path: Path, step: int | None) -> list[dict]:
    """The entries (``{"step": N, ...}``) of a run's history file (``evaluation.json``,
    ``learning_health.json``, ``probe.json``) up to ``step``, for a run resumed at that step; ``[]``
    for a fresh run (``step`` None) or a missing file."""
    if step is None or not path.is_file():
        return []
    return [entry for entry in json.loads(path.read_text(encoding="utf-8")) if entry["step"] <= step]


class CheckpointError(ValueError):
    """A checkpoint folder cannot be resumed from; the message says which file and why."""


def _file_digests(folder: Path) -> dict[str, dict[str, object]]:
    digests = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        digests[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha.hexdigest()}
    return digests


def write_manifest(folder: str | Path, step: int) -> None:
    """Write the checksum manifest of a finished checkpoint folder (atomically)."""
    from ..version import __version__

    folder = Path(folder)
    manifest = {"format": MANIFEST_FORMAT, "ecg_hub_version": __version__, "step": step, "files": _file_digests(folder)}
    write_json_atomic(folder / MANIFEST_FILE, manifest, sort_keys=True)


def verify_checkpoint(folder: str | Path) -> str | None:
    """``None`` when ``folder``'s files match its manifest; otherwise why not (a missing manifest
    says so, see :func:`find_resumable_checkpoint`)."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        return f"no {MANIFEST_FILE} (not written by ecg-hub, or not finished)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        expected = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(expected, dict):
            return f"{MANIFEST_FILE} is not an ecg-hub checkpoint manifest"
    except (ValueError, KeyError, TypeError) as error:
        return f"{MANIFEST_FILE} is unreadable ({error})"
    found = _file_digests(folder)
    for name, entry in sorted(expected.items()):
        if name not in found:
            return f"file {name} is missing"
        if found[name] != entry:
            return f"file {name} has {found[name]['bytes']} bytes / sha256 {str(found[name]['sha256'])[:12]}..., the manifest says {entry.get('bytes')} / {str(entry.get('sha256'))[:12]}..."
    extra = sorted(set(found) - set(expected))
    if extra:
        return f"files not in the manifest: {extra}"
    return None


def _is_missing_manifest(reason: str) -> bool:
    return reason.startswith(f"no {MANIFEST_FILE}")


def check_resumable(folder: str | Path, trust: bool = False) -> None:
    """Raise :class:`CheckpointError` unless ``folder`` matches its manifest (or has none and ``trust``)."""
    reason = verify_checkpoint(folder)
    if reason is None:
        return
    if _is_missing_manifest(reason):
        if trust:
            logger.warning("resuming from %s without a manifest (--trust-checkpoint)", folder)
            return
        raise CheckpointError(
            f"checkpoint {folder}: {reason}. Its optimizer and random states are pickles, which can run code from "
            "whoever wrote them; resume from it only if you trust it, with --trust-checkpoint "
            "(training.trust_checkpoint=true)"
        )
    raise CheckpointError(f"checkpoint {folder} is corrupt: {reason}")


def find_resumable_checkpoint(checkpoints_dir: str | Path, trust: bool = False) -> Path:
    """The newest checkpoint under ``checkpoints_dir`` that checks out; a newer corrupt one is
    skipped with a warning. :class:`CheckpointError` lists every reason when none does."""
    reasons = []
    for step, folder in reversed(list_checkpoints(checkpoints_dir)):
        try:
            check_resumable(folder, trust)
        except CheckpointError as error:
            reasons.append(str(error))
            continue
        if reasons:
            logger.warning("%s; falling back to %s (step %d)", "; ".join(reasons), folder.name, step)
        return folder
    if not reasons:
        raise CheckpointError(f"--resume: no checkpoint under {checkpoints_dir}")
    raise CheckpointError("--resume: no usable checkpoint: " + "; ".join(reasons))


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
    previous = find_latest_checkpoint(checkpoints_dir)
    keeps = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    try:
        with explain_disk_errors(f"writing checkpoint {final}", keeps):
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
                write_manifest(tmp, progress.step)  # after every file: a checkpoint without it is unfinished
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
    except OSError:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # a half-written temporary folder is never resumed from
        raise
    if accelerator.is_main_process and keep_last is not None:
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
