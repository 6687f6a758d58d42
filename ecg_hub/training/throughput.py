"""Throughput, FLOPs and model FLOPs utilisation (MFU) for training runs.

MFU is the fraction of the accelerators' peak dense matrix throughput that the model's own
arithmetic uses: ``flops_per_example * examples_per_second / (peak_flops_per_device * devices)``.
The FLOPs of one training step are *counted*, not estimated: the loop runs its first micro-batch
(forward + backward, on every rank) under ``torch.utils.flop_counter.FlopCounterMode``, which adds
up the matrix multiplications, convolutions and attention kernels that actually ran (an EMA
target encoder's no-grad forward included). Elementwise ops, norms and the optimizer are not
counted, as in the usual MFU definition. With gradient checkpointing the recomputed forward is
counted too (hardware FLOPs rather than model FLOPs).
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import Any, Self

import torch
from torch.utils import flop_counter

__all__ = [
    "PEAK_TFLOPS",
    "FlopCounter",
    "count_flops",
    "format_count",
    "model_flops_utilization",
    "peak_flops_per_second",
    "peak_memory_bytes",
    "render_summary",
]

aten = torch.ops.aten

# The CPU flash-attention kernel SDPA uses on CPU is not in torch's FLOP registry (the CUDA
# kernels are); give it the same formulas so attention counts on every device.
if aten._scaled_dot_product_flash_attention_for_cpu not in flop_counter.flop_registry:

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_sdpa_backward_flops(
        grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
    ) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


#: Dense (no sparsity) peak tensor throughput per device in TFLOP/s, from the vendors' data
#: sheets: (substring of ``torch.cuda.get_device_name()``, bf16/fp16, tf32, fp32). First match
#: wins, so the more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float, float, float], ...] = (
    ("B200", 2250.0, 1100.0, 80.0),
    ("H200 NVL", 835.0, 417.5, 60.0),
    ("H200", 989.4, 494.7, 66.9),
    ("H100 PCIe", 756.0, 378.0, 51.2),
    ("H100 NVL", 835.0, 417.5, 60.0),
    ("H100", 989.4, 494.7, 66.9),
    ("H800", 989.4, 494.7, 66.9),
    ("A100", 312.0, 156.0, 19.5),
    ("A800", 312.0, 156.0, 19.5),
    ("L40S", 362.05, 183.0, 91.6),
    ("L4", 121.0, 60.0, 30.3),
    ("A10", 125.0, 62.5, 31.2),
)


def peak_flops_per_second(device: torch.device | str, mixed_precision: str = "no") -> float | None:
    """Peak dense FLOP/s of one device for the precision the matrix multiplications run in, or
    ``None`` when unknown (CPUs, unlisted GPUs): set ``training.peak_tflops`` in the recipe then.

    ``mixed_precision``: ``"bf16"`` / ``"fp16"`` use the 16-bit tensor-core peak; ``"no"`` uses
    the TF32 peak when ``torch.backends.cuda.matmul.allow_tf32`` is on, else the FP32 peak.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, half, tf32, fp32 in PEAK_TFLOPS:
        if key in name:
            if mixed_precision in ("bf16", "fp16"):
                return half * 1e12
            return (tf32 if torch.backends.cuda.matmul.allow_tf32 else fp32) * 1e12
    return None


def model_flops_utilization(
    flops_per_example: float,
    examples_per_second: float,
    peak_flops_per_device: float,
    num_devices: int = 1,
) -> float:
    """MFU in [0, 1]: achieved model FLOP/s over the peak FLOP/s of all devices.

    Example: ECG-JEPA-base costs about 175 GFLOP per ECG and training step; 2,000 ECG/s on one
    H100 SXM (989.4 TFLOP/s bf16) is ``175e9 * 2000 / 989.4e12 = 0.354``.
    """
    if peak_flops_per_device <= 0 or num_devices < 1:
        raise ValueError("peak_flops_per_device must be > 0 and num_devices >= 1")
    return flops_per_example * examples_per_second / (peak_flops_per_device * num_devices)


class FlopCounter:
    """Count the FLOPs of the code run inside ``with counter:`` (a thin wrapper over
    ``FlopCounterMode`` that never prints and tolerates ops it cannot trace)."""

    def __init__(self) -> None:
        self._mode = flop_counter.FlopCounterMode(display=False)
        self.total: int | None = None

    def __enter__(self) -> Self:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
        self.total = int(self._mode.get_total_flops())


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` (e.g. ``lambda: model(**batch).loss.backward()``)."""
    with FlopCounter() as counter:
        fn()
    return counter.total


def peak_memory_bytes(device: torch.device | str) -> tuple[int, str]:
    """Peak memory of this process and what it measures: CUDA peak allocated tensor memory on a
    GPU, else the peak resident set size of the process (Linux ``ru_maxrss``)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(device)), "peak GPU memory allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "peak process RSS"


def format_count(value: float | None, unit: str = "", digits: int = 3) -> str:
    """``1234567 -> '1.23 M'`` (SI prefixes), ``None -> 'n/a'``."""
    if value is None:
        return "n/a"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g} {prefix}{unit}"
    return f"{value:.{digits}g} {unit}".rstrip()


def render_summary(summary: dict[str, Any], title: str = "ecg-hub pretraining") -> Any:
    """A ``rich`` table of a run summary (the dict ``pretrain`` returns)."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")

    def row(label: str, value: str) -> None:
        table.add_row(label, value)

    row("optimizer steps", f"{summary['steps']:,}")
    row("ECGs seen", f"{summary['examples']:,}")
    row("processes", f"{summary['num_processes']} ({summary['device']}, {summary['mixed_precision']})")
    row("wall time", f"{summary['elapsed_seconds']:.1f} s")
    row("final loss", "n/a" if summary.get("final_loss") is None else f"{summary['final_loss']:.4f}")
    for name, value in (summary.get("final_losses") or {}).items():
        row(f"  loss term {name}", f"{value:.4f}")
    row("ECG/s", f"{summary['ecg_per_second']:,.1f}")
    row("tokens/s", format_count(summary.get("tokens_per_second")))
    row("FLOPs per ECG (train step)", format_count(summary.get("flops_per_example"), "FLOP"))
    row("model TFLOP/s (all devices)", format_count(summary.get("achieved_flops_per_second"), "FLOP/s"))
    mfu = summary.get("mfu")
    row("MFU", "n/a (peak FLOP/s unknown; set training.peak_tflops)" if mfu is None else f"{100 * mfu:.1f} %")
    row(summary.get("peak_memory_kind", "peak memory"), format_count(summary.get("peak_memory_bytes"), "B"))
    return table
