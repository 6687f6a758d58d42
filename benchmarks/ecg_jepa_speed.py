"""ECG-JEPA encoder inference speed and memory: ECG/s and peak memory of one forward pass.

Cases: the released base encoder (width 768, depth 12, 16 heads) and a small one (width 384, depth
12, 6 heads: the official ``ecg_jepa`` class default), each with the ``eager`` and ``sdpa`` attention
implementations, on 8 leads x 2500 samples (10 s at 250 Hz, 400 tokens, CroPA). On a machine with a
CUDA GPU, the same cases run on the GPU in float32 and bfloat16 as well.

Every CPU case runs in its own subprocess so that the peak resident memory (``VmHWM`` minus the
resident memory after the model is built) belongs to that case alone. GPU peaks come from
``torch.cuda.max_memory_allocated``. Weights are random: speed does not depend on them.

Usage::

    python benchmarks/ecg_jepa_speed.py                   # base + small, eager + sdpa, batch 8
    python benchmarks/ecg_jepa_speed.py --configs small --repeats 5 --threads 2

For scale: the official code's base encoder embeds about 1.3 ECG/s on the project's 2-core machines
(batch 8, ``encoder.representation``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = {
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 16,
        "intermediate_size": 3072,
    },
    "small": {
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
    },
}


def _rss_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS`` now, ``VmHWM`` peak) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def measure(
    config_name: str, implementation: str, device: str, dtype_name: str, batch_size: int, repeats: int
) -> dict:
    """Build the encoder, run one warm-up and ``repeats`` timed forwards; return speed and peak memory."""
    import torch
    from ecg_hub.modeling import EcgJepaConfig, EcgJepaModel

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    torch.manual_seed(0)
    config = EcgJepaConfig(**CONFIGS[config_name])
    model = EcgJepaModel(config).to(device=device, dtype=dtype).eval()
    model.set_attn_implementation(implementation)
    signal = torch.randn(batch_size, config.num_leads, config.num_samples, device=device, dtype=dtype)
    parameters = sum(p.numel() for p in model.parameters())

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    baseline_kib = _rss_kib("VmRSS")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline_bytes = torch.cuda.memory_allocated()
    with torch.inference_mode():
        model(signal)  # warm-up (kernel selection, allocator)
        synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model(signal)
        synchronize()
        seconds = (time.perf_counter() - start) / repeats
    if device == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated() - baseline_bytes) / 2**20
    else:
        peak_mib = (_rss_kib("VmHWM") - baseline_kib) / 1024
    return {
        "config": config_name,
        "params_m": parameters / 1e6,
        "device": device,
        "dtype": dtype_name,
        "attention": implementation,
        "batch": batch_size,
        "seconds_per_batch": seconds,
        "ecg_per_s": batch_size / seconds,
        "peak_forward_mib": peak_mib,
    }


def run_case(args: argparse.Namespace, config: str, implementation: str, device: str, dtype: str) -> dict:
    """One case in a fresh interpreter (clean peak-memory counter)."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--single",
        json.dumps([config, implementation, device, dtype, args.batch_size, args.repeats]),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["base", "small"], choices=sorted(CONFIGS))
    parser.add_argument("--implementations", nargs="+", default=["eager", "sdpa"], choices=["eager", "sdpa"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per case (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-gpu", action="store_true", help="skip the CUDA cases even if a GPU is present")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.single:
        config, implementation, device, dtype, batch_size, repeats = json.loads(args.single)
        print(json.dumps(measure(config, implementation, device, dtype, batch_size, repeats)))
        return 0

    cases = [(c, i, "cpu", "float32") for c in args.configs for i in args.implementations]
    if torch.cuda.is_available() and not args.no_gpu:
        cases += [
            (c, i, "cuda", d)
            for c in args.configs
            for d in ("float32", "bfloat16")
            for i in args.implementations
        ]
    print(
        f"ECG-JEPA encoder forward, 8 leads x 2500 samples (400 tokens, CroPA), batch {args.batch_size}, "
        f"{args.repeats} timed repeats, torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    )
    header = "| config | params (M) | device | dtype | attention | s / batch | ECG / s | peak forward memory (MiB) |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for case in cases:
        result = run_case(args, *case)
        print(
            f"| {result['config']} | {result['params_m']:.2f} | {result['device']} | {result['dtype']} | "
            f"{result['attention']} | {result['seconds_per_batch']:.3f} | {result['ecg_per_s']:.2f} | "
            f"{result['peak_forward_mib']:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
