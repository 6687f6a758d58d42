"""Smoke tests of the benchmark scripts of issue 15: each runs in a subprocess in its seconds-long
smoke mode (tiny models, CPU, one repeat), exits 0 and prints its Markdown tables with the expected
columns and finite numbers. No timing is asserted: the figures of a smoke run mean nothing."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO_ROOT / "benchmarks"
_NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?")


def _run(script: str, *args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _tables(output: str) -> dict[str, list[dict[str, str]]]:
    """``{title: rows}`` of every ``### title`` followed by a Markdown table; rows as ``{column: cell}``."""
    tables, title, header = {}, None, None
    for line in output.splitlines():
        if line.startswith("### "):
            title, header = line[4:].strip(), None
            tables[title] = []
        elif line.startswith("|") and title is not None:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set("".join(cells)) <= {"-"}:
                assert len(cells) == len(header), f"{title}: row {cells} does not match {header}"
                tables[title].append(dict(zip(header, cells)))
    return tables


def _number(cell: str) -> float:
    match = _NUMBER.match(cell)
    assert match, f"not a number: {cell!r}"
    value = float(match.group(0).replace(",", ""))
    assert math.isfinite(value), cell
    return value


def _table_starting(tables: dict, prefix: str) -> list[dict[str, str]]:
    found = [rows for title, rows in tables.items() if title.startswith(prefix)]
    assert len(found) == 1, f"expected one table titled {prefix!r}..., got {list(tables)}"
    assert found[0], f"table {prefix!r} has no rows"
    return found[0]


@pytest.fixture(scope="module")
def cpu_options_output() -> str:
    return _run("cpu_inference_options.py", "--quick", "--smoke")


def test_cpu_inference_options_smoke(cpu_options_output):
    assert "-> OK (<= 1e-5)" in cpu_options_output  # the block CroPA equals the dense-masked SDPA
    tables = _tables(cpu_options_output)
    columns = ["variant", "batch", "threads", "ms / batch", "ECG/s", "vs default", "max abs diff", "cosine min"]
    for prefix in ("CroPA attention op alone", "CroPA in the whole encoder", "torch.inference_mode vs",
                   "torch.set_num_threads", "ETP ResNet18-1D", "torch.compile of the encoder"):
        rows = _table_starting(tables, prefix)
        assert list(rows[0]) == columns
        assert "default)" in rows[0]["variant"]
        for row in rows:
            if "skipped" in row["variant"]:
                continue
            for column in columns[1:]:
                _number(row[column])
            assert _number(row["cosine min"]) > 0.999, row  # every option computes the same function
    variants = [row["variant"] for row in _table_starting(tables, "CroPA in the whole encoder")]
    assert any("block CroPA" in v for v in variants)
    resnet = {row["variant"] for row in _table_starting(tables, "ETP ResNet18-1D")}
    assert {"inference_mode", "as (1 x k) Conv2d, channels_last", "BatchNorm folded into the convs (eager)"} <= resnet
    assert len(_table_starting(tables, "torch.set_num_threads")) == 4  # 2 batch sizes x (1, 2 threads)


def test_gpu_pretrain_throughput_smoke():
    output = _run("gpu_pretrain_throughput.py", "--smoke", "--peak-tflops", "1.0")
    tables = _tables(output)
    train = _table_starting(tables, "ECG-JEPA pretraining steps")
    assert list(train[0]) == [
        "batch", "timed steps", "ms / step", "ECG/s", "tokens/s", "GFLOP / ECG (counted)", "TFLOP/s", "MFU",
        "peak memory (GiB)", "warm-up s", "goal >= 2,000 ECG/s at >= 40 % MFU",
    ]
    (row,) = train
    for column in ("batch", "ms / step", "ECG/s", "tokens/s", "GFLOP / ECG (counted)", "TFLOP/s", "MFU",
                   "peak memory (GiB)"):
        assert _number(row[column]) > 0, (column, row)
    assert _number(row["tokens/s"]) == pytest.approx(400 * _number(row["ECG/s"]), rel=0.01)
    assert row["goal >= 2,000 ECG/s at >= 40 % MFU"].startswith(("yes", "no"))

    loader = _table_starting(tables, "Data loader alone")
    assert list(loader[0]) == ["records", "batch", "workers", "epoch", "ECG/s", "input_values per ECG",
                               "goal >= 5,000 ECG/s"]
    assert _number(loader[0]["ECG/s"]) > 0 and loader[0]["input_values per ECG"] == "8x2500"

    inference = _table_starting(tables, "Encoder inference")
    assert [row["encoder"].split(" (")[0] for row in inference] == ["ECG-JEPA", "ETP ResNet-1D", "ECG2TOK stage B"]
    for row in inference:
        assert _number(row["ECG/s"]) > 0 and _number(row["ms / batch"]) > 0
