"""kill -9 ``ecg-hub pretrain`` at random moments, resume it, and compare with an uninterrupted run.

    python benchmarks/kill_resume_sweep.py [--kills 20] [--seed 0] [--out runs/kill_sweep]

One uninterrupted run of ``ecg_jepa/pretrain_tiny`` (20 optimizer steps, a checkpoint every 2 steps,
so saves are frequent) gives the reference weights and the run's wall time T. Then, ``--kills``
times: a fresh run is started and killed with SIGKILL after a uniform random delay between one
second before the reference's first checkpoint appeared and T (training steps, ``save_state`` and
the final ``save_pretrained``; most of the interpreter's start-up is skipped);
before resuming, every checkpoint folder is checked against its manifest; ``ecg-hub pretrain
--resume`` (or a fresh start if no checkpoint was complete) then runs to the end and its final
weights are compared with the reference. The table counts kills, resumes, runs that ended
equal (max |difference| <= 1e-6), checkpoints found corrupt, kills that landed inside a save (a
temporary folder was left) and temporary folders still there after the resumed run. Exit code 1 if any final weights differ.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

RECIPE = "ecg_jepa/pretrain_tiny"
OVERRIDES = [
    "training.checkpoint_every_steps=2",
    "training.keep_last_checkpoints=2",
    "training.progress_bar=false",
    "tracking.log_with=[]",
]


def _command(output_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ecg_hub", "pretrain", RECIPE, f"output_dir={output_dir}", *OVERRIDES, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _max_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    left, right = load_file(a), load_file(b)
    if left.keys() != right.keys():
        return float("inf")
    return max(float((left[k].double() - right[k].double()).abs().max()) for k in left)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/kill_sweep"))
    args = parser.parse_args(argv)

    from ecg_hub.training.checkpointing import list_checkpoints, verify_checkpoint

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    # The reference run also measures when training starts (the first checkpoint folder appears):
    # kills are drawn from there on, where saves happen, not during the interpreter's start-up.
    start = time.perf_counter()
    process = subprocess.Popen(_command(args.out / "reference"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_save = None
    while process.poll() is None:
        if first_save is None and any((args.out / "reference" / "checkpoints").glob("*")):
            first_save = time.perf_counter() - start
        time.sleep(0.01)
    if process.returncode != 0:
        raise SystemExit(f"the reference run failed with exit code {process.returncode}")
    wall = time.perf_counter() - start
    earliest = max(0.0, (first_save or 0.0) - 1.0)
    reference = args.out / "reference" / "model" / "model.safetensors"

    rng = random.Random(args.seed)
    rows = []
    for index in range(args.kills):
        run_dir = args.out / f"run_{index:02d}"
        delay = rng.uniform(earliest, wall)
        process = subprocess.Popen(_command(run_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        finished_first = process.poll() is not None
        if not finished_first:
            process.send_signal(signal.SIGKILL)
        process.wait()
        checkpoints = list_checkpoints(run_dir / "checkpoints")
        corrupt = [folder.name for _, folder in checkpoints if verify_checkpoint(folder) is not None]
        killed_mid_save = sorted(p.name for p in run_dir.glob("checkpoints/.tmp_*")) + [p.name for p in run_dir.glob(".model.tmp")]
        resumed = bool(checkpoints)
        extra = ["--resume"] if resumed else []
        if not checkpoints and run_dir.exists():
            shutil.rmtree(run_dir)  # nothing to resume: a fresh start
        finish = subprocess.run(_command(run_dir, *extra), env=_env(), capture_output=True, text=True, check=False)
        resumed_from = next(
            (line.split("resumed from ", 1)[1].split(" ")[0] for line in finish.stdout.splitlines() if "resumed from" in line),
            None,
        )
        leftovers = sorted(p.name for p in run_dir.glob("checkpoints/.tmp_*")) + [p.name for p in run_dir.glob(".model.tmp")]
        difference = _max_difference(reference, run_dir / "model" / "model.safetensors") if finish.returncode == 0 else float("inf")
        rows.append(
            {
                "kill": index,
                "delay_s": round(delay, 2),
                "finished_before_kill": finished_first,
                "complete_checkpoints_after_kill": len(checkpoints),
                "corrupt_checkpoints": corrupt,
                "temporary_folders_after_kill": killed_mid_save,
                "leftover_temporary": leftovers,
                "resumed_from": Path(resumed_from).name if resumed_from else None,
                "exit_code": finish.returncode,
                "max_abs_difference": difference,
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    equal = sum(row["max_abs_difference"] <= 1e-6 for row in rows)
    print()
    print(f"uninterrupted run: {wall:.1f} s wall, first checkpoint after {first_save or float('nan'):.1f} s; "
          f"kills at uniform random delays in [{earliest:.1f}, {wall:.1f}] s")
    print("| kills | killed mid-run | killed inside a save | resumed from a checkpoint | fresh restarts | ended equal (<= 1e-6) | corrupt checkpoints found | temporary folders left after resume |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {len(rows)} | {sum(not r['finished_before_kill'] for r in rows)} | {sum(bool(r['temporary_folders_after_kill']) for r in rows)} | "
        f"{sum(r['resumed_from'] is not None for r in rows)} | "
        f"{sum(r['resumed_from'] is None for r in rows)} | {equal} | {sum(len(r['corrupt_checkpoints']) for r in rows)} | "
        f"{sum(bool(r['leftover_temporary']) for r in rows)} |"
    )
    (args.out / "sweep.json").write_text(json.dumps({"wall_s": wall, "rows": rows}, indent=2))
    return 0 if equal == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
