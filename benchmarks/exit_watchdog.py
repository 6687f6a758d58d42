"""Launch the 2-process tiny pretraining N times under background CPU load; every rank must exit.

    python benchmarks/exit_watchdog.py [--launches 20] [--load-processes 2] [--grace 60] [--json out.json] [key=value ...]

Each launch is ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m ecg_hub
pretrain ecg_jepa/pretrain_tiny`` (gloo, two CPU processes). Training has ended when the run's
``summary.json`` appears; from then on every process of the launch (the launcher and both ranks)
must have exited within ``--grace`` seconds, or the launch counts as a hang and its process tree is
killed. Background load: ``--load-processes`` busy-looping Python processes for the whole sweep, as
on a loaded CI machine (the exit deadlock this guards against was decided by thread timing).

Prints one line per launch and a table (launches, hangs, exit time after the summary: median and
max); exit code 1 on any hang or failed launch.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = "ecg_jepa/pretrain_tiny"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _busy() -> None:
    while True:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(output_dir: Path, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO_ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"),
        "--main_process_port", str(_free_port()),
        "-m", "ecg_hub", "pretrain", RECIPE, f"output_dir={output_dir}",
        "training.progress_bar=false", "tracking.log_with=[]", *extra,
    ]
    # A session of its own, so a hung launch's whole process tree can be killed.
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def run_sweep(
    launches: int, load_processes: int, grace_s: float, extra: list[str] = (), timeout_s: float = 600.0
) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="ecg-hub-exit-watchdog-"))
    load = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(load_processes)]
    for process in load:
        process.start()
    rows = []
    try:
        for index in range(launches):
            output_dir = workdir / f"launch_{index:02d}"
            started = time.perf_counter()
            process = _launch(output_dir, list(extra))
            summary = output_dir / "summary.json"
            ended_training = None
            while process.poll() is None and time.perf_counter() - started < timeout_s:
                if ended_training is None and summary.is_file():
                    ended_training = time.perf_counter()
                if ended_training is not None and time.perf_counter() - ended_training > grace_s:
                    break
                time.sleep(0.05)
            if ended_training is None and summary.is_file():
                ended_training = time.perf_counter()
            hung = process.poll() is None
            if hung:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            exited = time.perf_counter()
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            row = {
                "launch": index,
                "returncode": process.returncode,
                "trained": ended_training is not None,
                "hung": hung,
                "train_s": round((ended_training or exited) - started, 2),
                "exit_after_summary_s": round(exited - ended_training, 2) if ended_training is not None else None,
            }
            if process.returncode != 0 and not hung:
                row["stderr_tail"] = stderr[-2000:]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "stderr_tail"}), flush=True)
    finally:
        for process in load:
            process.terminate()
        shutil.rmtree(workdir, ignore_errors=True)
    exits = [r["exit_after_summary_s"] for r in rows if r["exit_after_summary_s"] is not None and not r["hung"]]
    return {
        "launches": launches,
        "load_processes": load_processes,
        "grace_s": grace_s,
        "hangs": sum(r["hung"] for r in rows),
        "failed": sum(r["returncode"] != 0 and not r["hung"] for r in rows),
        "exit_after_summary_median_s": statistics.median(exits) if exits else None,
        "exit_after_summary_max_s": max(exits) if exits else None,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=20)
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--grace", type=float, default=60.0, help="seconds every process has to exit after the summary")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="recipe overrides for every launch (e.g. training.max_steps=5)")
    args = parser.parse_args(argv)
    result = run_sweep(args.launches, args.load_processes, args.grace, args.overrides)
    print()
    print("| launches | background load processes | hangs (> grace) | failed | exit after summary: median | max |")
    print("|---|---|---|---|---|---|")
    median, worst = result["exit_after_summary_median_s"], result["exit_after_summary_max_s"]
    print(
        f"| {result['launches']} | {result['load_processes']} | {result['hangs']} | {result['failed']} | "
        f"{median if median is None else f'{median:.2f} s'} | {worst if worst is None else f'{worst:.2f} s'} |"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["hangs"] == 0 and result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
