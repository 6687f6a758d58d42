"""GPU pretraining throughput of ECG-JEPA base (issue 15, item 5): training ECG/s, tokens/s, achieved
TFLOP/s and MFU; the data loader alone; and every family's encoder inference in bf16.

    python benchmarks/gpu_pretrain_throughput.py --batch-sizes 64,128,256 --compile
    python benchmarks/gpu_pretrain_throughput.py --batch-sizes 64,128,256            # eager
    python benchmarks/gpu_pretrain_throughput.py --parts loader --workers 16
    python benchmarks/gpu_pretrain_throughput.py --smoke                              # CPU, seconds

1. **Training** (``--parts train``): ``EcgJepaForPreTraining`` with the model settings of
   ``recipes/ecg_jepa/pretrain_base.yaml`` (768 x 12 x 16 heads with CroPA through SDPA and the
   dense boolean mask, the model's default; predictor 384 x 6 x 12; multi-block masking, one mask
   per step; drop path 0.1; EMA target with momentum 0.996 -> 1.0 after every optimizer step),
   AdamW with the recipe's lr / betas / eps / weight decay (no decay on biases, norms, positions)
   and ``fused=True`` on CUDA, bf16 autocast around the forward (as Accelerate does), on
   synthetic ECG-like batches (8 leads x 2500 samples, all-ones ``attention_mask`` / ``lead_mask``
   as the collator gives them) held on the device, so the figures are the model's. For each
   ``--batch-sizes`` entry: ``--warmup`` steps (compilation included with ``--compile``; their
   time is printed apart), then ``--steps`` timed steps between ``torch.cuda.synchronize()``.
   FLOPs per ECG are counted the way the pretraining loop counts them
   (``ecg_hub.training.throughput.FlopCounter``, i.e. ``torch.utils.flop_counter.FlopCounterMode``
   over forward + backward, EMA target forward included, optimizer excluded), in eager mode before
   any compilation, averaged over ``--flop-steps`` steps (the mask changes the work per step).
   Attention FLOPs are those of the dense masked kernel that runs (400 x 400 scores, not the 57
   keys CroPA keeps). MFU is against the card's dense bf16 peak (``PEAK_TFLOPS_BF16`` by device-name
   substring, then ``ecg_hub.training.throughput.PEAK_TFLOPS``; ``--peak-tflops`` overrides).
   ``--compile`` compiles every transformer block (``--compile-target layers``: the mask
   sampling and input checks stay eager, so no graph breaks) or the whole model
   (``--compile-target model``). Peak memory is ``torch.cuda.max_memory_allocated``.
2. **Data loader alone** (``--parts loader``): ``--loader-records`` synthetic 12-lead 10-s 500 Hz
   records written as an Arrow dataset to a temporary folder (``save_to_disk``, then
   ``load_from_disk``: memory-mapped, as the recipe reads it), through the pretraining loop's own
   ``build_train_dataloader`` with ``EcgCollator(EcgFeatureExtractor.from_preset("ecg_jepa"),
   training=True)`` (500 -> 250 Hz, 8 leads, random 10-s windows) and ``--workers`` workers;
   ECG/s per epoch (the first one includes starting the workers).
3. **Inference** (``--parts inference``): every family's encoder at its released size (the models
   of ``benchmarks/inference_speed.py``: ECG-JEPA base, ETP's ResNet18-1D, ECG2TOK stage B base),
   bf16 autocast, ``torch.inference_mode``, ``--inference-batch-size``.

Goals printed next to the figures: training >= 2,000 ECG/s at >= 40 % MFU, data loading >= 5,000
ECG/s. ``--smoke``: tiny models, CPU, 2 timed steps, one batch size, 0 workers (the test of this
script; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE = "ecg_jepa/pretrain_base"
PARTS = ("train", "loader", "inference")
GOAL_TRAIN_ECG_PER_S = 2000.0
GOAL_MFU = 0.40
GOAL_LOADER_ECG_PER_S = 5000.0

#: Dense bf16 tensor-core peak, TFLOP/s, by substring of ``torch.cuda.get_device_name()``; first match
#: wins (specific names first: "H100 PCIe" before "H100", "L40S" before "L4").
PEAK_TFLOPS_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
    ("RTX 4090", 165.2),
)

#: Overrides of the recipe's model config for ``--smoke`` (same token grid, tiny widths).
SMOKE_MODEL = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
    "predictor_hidden_size": 32, "predictor_num_hidden_layers": 1, "predictor_num_attention_heads": 2,
    "predictor_intermediate_size": 64,
}


#: What ``--smoke`` changes (unless given on the command line).
SMOKE_SETTINGS = {
    "device": "cpu", "batch_sizes": [4], "steps": 2, "warmup": 1, "flop_steps": 1, "workers": 0,
    "loader_records": 16, "loader_batch_size": 8, "loader_epochs": 1, "inference_batch_size": 2,
    "inference_warmup": 1, "inference_repeats": 1,
}


def _table(title: str, header: list[str], rows: list[list[str]], notes: list[str] = ()) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for note in notes:
        print(f"\n{note}")
    sys.stdout.flush()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gib(device: torch.device) -> float:
    from ecg_hub.training.throughput import peak_memory_bytes

    return peak_memory_bytes(device)[0] / 2**30


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """``(dense bf16 peak TFLOP/s of the device or None, where it came from)``."""
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, f"unknown for {device.type} (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS_BF16:
        if key in name:
            return value, f"table entry {key!r} for {name!r}"
    from ecg_hub.training.throughput import peak_flops_per_second

    value = peak_flops_per_second(device, "bf16")
    if value:
        return value / 1e12, f"ecg_hub.training.throughput.PEAK_TFLOPS for {name!r}"
    return None, f"unknown for {name!r} (pass --peak-tflops)"


def _ecg_like(batch: int, leads: int, samples: int, rate_hz: float, seed: int = 0) -> torch.Tensor:
    """Periodic beats + noise, mV (as ``benchmarks/inference_speed.py``)."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / rate_hz
    beats = torch.stack([torch.sin(2 * math.pi * 1.2 * t + k) ** 15 * (0.5 + 0.1 * k) for k in range(leads)])
    return (beats[None] + 0.05 * torch.randn(batch, leads, samples, generator=generator)).float()


# ----------------------------------------------------------------------------------------------
# 1. Training
# ----------------------------------------------------------------------------------------------


def load_recipe_settings(smoke: bool):
    """The recipe's model config (tiny widths with ``smoke``) and optimizer settings."""
    from ecg_hub.recipe import instantiate, read_yaml, resolve_recipe_path

    recipe = read_yaml(resolve_recipe_path(RECIPE))
    model_config = dict(recipe["model"]["config"])
    if smoke:
        model_config.update(SMOKE_MODEL)
    config = instantiate(model_config)
    optimizer = {k: v for k, v in recipe["optimizer"].items() if not k.startswith("_")}
    return config, optimizer, recipe


def build_training(config, optimizer_settings: dict, device: torch.device):
    from ecg_hub.modeling import EcgJepaForPreTraining

    from ecg_hub.training.optim import build_param_groups

    torch.manual_seed(0)
    model = EcgJepaForPreTraining(config).to(device).train()
    settings = dict(optimizer_settings)
    groups = build_param_groups(model, float(settings.pop("weight_decay", 0.0)))
    for group in groups:
        group.pop("names", None)
    settings["betas"] = tuple(settings.get("betas", (0.9, 0.999)))
    optimizer = torch.optim.AdamW(groups, fused=device.type == "cuda", **settings)
    return model, optimizer


def _batches(batch_size: int, config, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Two different synthetic batches on the device, with the collator's masks (all valid)."""
    out = []
    for seed in (0, 1):
        values = _ecg_like(batch_size, config.num_leads, config.num_samples, config.sampling_rate, seed)
        out.append({
            "input_values": values.to(device),
            "attention_mask": torch.ones(batch_size, config.num_samples, dtype=torch.long, device=device),
            "lead_mask": torch.ones(batch_size, config.num_leads, dtype=torch.long, device=device),
        })
    return out


def _compile(model, target: str) -> None:
    """``torch.compile`` every transformer block (``layers``) or the whole model (``model``).

    Blocks differ in guarded constants (stochastic-depth rate, width, grad mode of the target
    encoder) and the token count changes with the mask, so one code object gets many entries: the
    recompile limit is raised so that no block falls back to eager."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 128)
    if target == "model":
        model.compile()
        return
    for module in model.modules():
        if type(module).__name__ == "EcgVitLayer":
            module.compile()


def bench_training(args, device: torch.device, peak: float | None, notes: list[str]) -> list[list[str]]:
    from ecg_hub.training.throughput import FlopCounter, model_flops_utilization

    config, optimizer_settings, _ = load_recipe_settings(args.smoke)
    model, optimizer = build_training(config, optimizer_settings, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.no_bf16)
    tokens_per_ecg = config.num_leads * (config.num_samples // config.patch_size)
    step_index = 0
    total_steps = 10_000  # the EMA schedule's length; only its position matters for the cost

    def forward_backward(batch) -> torch.Tensor:
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        return loss

    def train_step(batch) -> torch.Tensor:
        nonlocal step_index
        loss = forward_backward(batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.post_optimizer_step(step_index, total_steps)
        step_index += 1
        return loss

    # FLOPs per ECG: counted in eager mode, before any compilation, at every batch size.
    flops_per_ecg: dict[int, float] = {}
    for batch_size in args.batch_sizes:
        try:
            counted = []
            for i, batch in zip(range(args.flop_steps), _cycle(_batches(batch_size, config, device))):
                with FlopCounter() as counter:
                    forward_backward(batch)
                optimizer.zero_grad(set_to_none=True)
                counted.append(counter.total / batch_size)
            flops_per_ecg[batch_size] = statistics.fmean(counted)
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            _empty_cache(device)
    if args.compile:
        _compile(model, args.compile_target)

    rows = []
    for batch_size in args.batch_sizes:
        batches = _batches(batch_size, config, device)
        try:
            _reset_peak_memory(device)
            _synchronize(device)
            start = time.perf_counter()
            for i in range(args.warmup):
                train_step(batches[i % 2])
            _synchronize(device)
            warmup_s = time.perf_counter() - start
            graphs_before = _compiled_graphs()
            start = time.perf_counter()
            for i in range(args.steps):
                loss = train_step(batches[i % 2])
            _synchronize(device)
            seconds = time.perf_counter() - start
            if args.compile and _compiled_graphs() > graphs_before:
                notes.append(
                    f"batch {batch_size}: {_compiled_graphs() - graphs_before} graph(s) compiled during the timed "
                    "steps (new mask lengths): raise --warmup"
                )
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            _empty_cache(device)
            rows.append([str(batch_size), "OOM"] + ["-"] * 9)
            continue
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError(f"batch {batch_size}: loss {float(loss.detach())} is not finite")
        ecg_per_s = batch_size * args.steps / seconds
        flops = flops_per_ecg.get(batch_size)
        achieved = flops * ecg_per_s if flops else None
        mfu = model_flops_utilization(flops, ecg_per_s, peak * 1e12) if flops and peak else None
        meets = ecg_per_s >= GOAL_TRAIN_ECG_PER_S and mfu is not None and mfu >= GOAL_MFU
        rows.append([
            str(batch_size), str(args.steps), f"{1e3 * seconds / args.steps:.1f}", _rate(ecg_per_s),
            f"{ecg_per_s * tokens_per_ecg:,.0f}", f"{flops / 1e9:.4g}" if flops else "n/a",
            f"{achieved / 1e12:.4g}" if achieved else "n/a", f"{100 * mfu:.3g} %" if mfu is not None else "n/a",
            f"{_peak_memory_gib(device):.2f}", f"{warmup_s:.1f}",
            ("yes" if meets else "no") + f" ({ecg_per_s / GOAL_TRAIN_ECG_PER_S:.2f}x the ECG/s goal)",
        ])
    if args.compile:
        notes.append(f"torch.compile ({args.compile_target}): {_compiled_graphs()} graphs compiled in all")
    return rows


def _rate(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def tokens_note(smoke: bool) -> str:
    config = load_recipe_settings(smoke)[0]
    patches = config.num_samples // config.patch_size
    return f"{config.num_leads} leads x {patches} patches = {config.num_leads * patches}"


def _cycle(items):
    while True:
        yield from items


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# 2. Data loader alone
# ----------------------------------------------------------------------------------------------


def _synthetic_rows(shards: list[int], num_records: int, num_shards: int, distinct: int):
    """The rows of ``shards`` (record ``i`` belongs to shard ``i % num_shards``): simulated ECG
    ``i % distinct`` plus fresh noise (module level: ``Dataset.from_generator`` pickles it to its workers)."""
    import numpy as np
    from ecg_hub.modeling.leads import STANDARD_LEADS

    from ecg_hub.data.synthetic import RHYTHMS, synthesize_ecg

    bases = [synthesize_ecg(RHYTHMS[i % len(RHYTHMS)], seed=[0, i]).signal for i in range(distinct)]
    for shard in shards:
        rng = np.random.default_rng([1, shard])
        for i in range(shard, num_records, num_shards):
            noise = rng.standard_normal((12, 5000), dtype=np.float32) * np.float32(0.01)
            yield {
                "signal": bases[i % distinct] + noise, "sampling_rate": 500, "leads": list(STANDARD_LEADS),
                "record_id": f"synthetic-{i:07d}", "patient_id": f"p{i:07d}",
            }


def write_synthetic_arrow(folder: Path, num_records: int, distinct: int = 32) -> Path:
    """``num_records`` 12-lead 10-s 500 Hz records as an Arrow dataset in ``folder/dataset`` with the
    columns of ecg-hub's prepared datasets, written by up to one process per CPU core."""
    import datasets

    from ecg_hub.data.builder import record_features, signal_feature

    num_proc = max(1, min(os.cpu_count() or 1, 16, num_records // 256))
    num_shards = num_proc
    generated = datasets.Dataset.from_generator(
        _synthetic_rows,
        features=record_features(signal_feature(12, 5000)),
        cache_dir=str(folder / "cache"),
        gen_kwargs={"shards": list(range(num_shards)), "num_records": num_records, "num_shards": num_shards,
                    "distinct": min(distinct, num_records)},
        num_proc=num_proc if num_proc > 1 else None,
    )
    target = folder / "dataset"
    generated.save_to_disk(str(target))
    return target


def bench_loader(args, device: torch.device) -> tuple[list[list[str]], list[str]]:
    import datasets
    from ecg_hub.modeling import EcgFeatureExtractor

    from ecg_hub.data.collators import EcgCollator
    from ecg_hub.training.dataloading import build_train_dataloader

    notes = [f"CPU cores: {os.cpu_count()}"]
    with tempfile.TemporaryDirectory(prefix="ecg-hub-loader-bench-") as tmp:
        start = time.perf_counter()
        path = write_synthetic_arrow(Path(tmp), args.loader_records)
        notes.append(f"writing {args.loader_records:,} records (Arrow, save_to_disk): {time.perf_counter() - start:.1f} s")
        dataset = datasets.load_from_disk(str(path))
        dataset = dataset.with_format("numpy", columns=["signal"], output_all_columns=True)  # as the loop reads it
        collator = EcgCollator(EcgFeatureExtractor.from_preset("ecg_jepa"), training=True)
        loader = build_train_dataloader(
            dataset, collator, args.loader_batch_size, seed=0, num_workers=args.workers,
            pin_memory=device.type == "cuda",
        )
        rows = []
        for epoch in range(args.loader_epochs):
            start, count = time.perf_counter(), 0
            for batch in loader.epoch_batches(epoch):
                count += int(batch["input_values"].shape[0])
            rate = count / (time.perf_counter() - start)
            shape = "x".join(str(n) for n in batch["input_values"].shape[1:])
            rows.append([
                f"{len(dataset):,}", str(args.loader_batch_size), str(args.workers), str(epoch),
                f"{rate:,.0f}", shape,
                ("yes" if rate >= GOAL_LOADER_ECG_PER_S else "no") + f" ({rate / GOAL_LOADER_ECG_PER_S:.2f}x)",
            ])
        del loader
    return rows, notes


# ----------------------------------------------------------------------------------------------
# 3. Inference
# ----------------------------------------------------------------------------------------------


def _families(batch: int, smoke: bool):
    """``(name, model, inputs)`` of every family's encoder: the released sizes of
    ``benchmarks/inference_speed.py``, or tiny ones with ``smoke``."""
    if not smoke:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import inference_speed

        yield from inference_speed._families(batch)
        return
    from ecg_hub.modeling import (
        Ecg2TokConfig,
        Ecg2TokModel,
        EcgJepaConfig,
        EcgJepaModel,
        EcgResNetConfig,
        EcgResNetModel,
    )

    torch.manual_seed(0)
    jepa_input = _ecg_like(batch, 8, 2500, 250.0)
    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    yield "ECG-JEPA (tiny)", EcgJepaModel(EcgJepaConfig(**tiny)).eval(), {"input_values": jepa_input}
    resnet = EcgResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])
    yield "ETP ResNet-1D (tiny)", EcgResNetModel(resnet).eval(), {"input_values": _ecg_like(batch, 12, 5000, 500.0)}
    yield "ECG2TOK stage B (tiny)", Ecg2TokModel(Ecg2TokConfig(codebook_size=16, **tiny)).eval(), {"input_values": jepa_input}


def _time_inference(model, inputs: dict, args, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds per batch of ``model(**inputs)`` (median-free: ``inference_repeats`` batches in a row
    between synchronisations, after ``inference_warmup``)."""
    from ecg_hub.inference import inference_autocast

    def run():
        with torch.inference_mode(), inference_autocast(dtype, device):
            return model(**inputs).pooler_output

    for _ in range(args.inference_warmup):
        out = run()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(args.inference_repeats):
        out = run()
    _synchronize(device)
    seconds = (time.perf_counter() - start) / args.inference_repeats
    if not bool(torch.isfinite(out.float()).all()):
        raise RuntimeError("non-finite pooled output")
    return seconds


def bench_inference(args, device: torch.device) -> list[list[str]]:
    dtype = torch.float32 if args.no_bf16 else torch.bfloat16
    rows = []
    batch = args.inference_batch_size
    for name, model, inputs in _families(batch, args.smoke):
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        try:
            _reset_peak_memory(device)
            seconds = _time_inference(
                model.to(device), {k: v.to(device) for k, v in inputs.items()}, args, device, dtype
            )
        except torch.OutOfMemoryError:
            rows.append([name, f"{parameters:.2f}", str(batch), "OOM", "-", "-"])
        else:
            rows.append([
                name, f"{parameters:.2f}", str(batch), f"{batch / seconds:,.1f}", f"{1e3 * seconds:.1f}",
                f"{_peak_memory_gib(device):.2f}",
            ])
        model.to("cpu")
        _empty_cache(device)
    return rows


# ----------------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--batch-sizes", type=_int_list, default=[64, 128, 256], help="training batch sizes")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per batch size")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; 10 with --compile)")
    parser.add_argument("--flop-steps", type=int, default=4, help="steps whose FLOPs are counted and averaged")
    parser.add_argument("--compile", action="store_true", help="torch.compile (inductor)")
    parser.add_argument("--compile-target", choices=["layers", "model"], default="layers")
    parser.add_argument("--no-bf16", action="store_true", help="float32 instead of bf16 autocast")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device, TFLOP/s")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--workers", type=int, default=16, help="DataLoader workers of the loader part")
    parser.add_argument("--loader-records", type=int, default=8192)
    parser.add_argument("--loader-batch-size", type=int, default=64, help="the recipe's per-GPU batch")
    parser.add_argument("--loader-epochs", type=int, default=2)
    parser.add_argument("--inference-batch-size", type=int, default=256)
    parser.add_argument("--inference-warmup", type=int, default=3)
    parser.add_argument("--inference-repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny models, CPU, 2 steps, 1 batch size, 0 workers")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(set(parts) - set(PARTS))}; choose from {','.join(PARTS)}")
    if args.smoke:  # tiny settings, except where the command line sets its own
        given = {a.split("=")[0][2:].replace("-", "_") for a in (sys.argv[1:] if argv is None else argv)
                 if a.startswith("--")}
        for key, value in SMOKE_SETTINGS.items():
            if key not in given:
                setattr(args, key, value)
    if args.warmup is None:
        args.warmup = 10 if args.compile else 5
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 leftovers outside autocast
        torch.backends.cudnn.allow_tf32 = True

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    print(
        f"device {name}, torch {torch.__version__}, {'float32' if args.no_bf16 else 'bf16 autocast'}, "
        f"compile: {args.compile_target if args.compile else 'no'}; peak {peak if peak else 'n/a'} TFLOP/s "
        f"({peak_source}); recipe {RECIPE}{' (tiny widths: --smoke)' if args.smoke else ''}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    if device.type != "cuda" and not args.smoke:
        print("warning: no CUDA device; the figures below are a CPU's (use --smoke for a quick check)")

    if "train" in parts:
        notes = []
        rows = bench_training(args, device, peak, notes)
        _table(
            f"ECG-JEPA pretraining steps (forward + backward + AdamW{' (fused)' if device.type == 'cuda' else ''} "
            f"+ EMA), {args.warmup} warm-up + "
            f"{args.steps} timed steps per batch size",
            ["batch", "timed steps", "ms / step", "ECG/s", "tokens/s", "GFLOP / ECG (counted)", "TFLOP/s", "MFU",
             "peak memory (GiB)", "warm-up s", "goal >= 2,000 ECG/s at >= 40 % MFU"],
            rows,
            [(f"tokens/s counts the input patch tokens of each ECG ({tokens_note(args.smoke)}), as the "
              "pretraining loop does. FLOPs: forward + backward, EMA target forward included."), *notes],
        )
    if "loader" in parts:
        rows, notes = bench_loader(args, device)
        _table(
            "Data loader alone: Arrow -> EcgCollator (ecg_jepa preset, training crops) -> build_train_dataloader",
            ["records", "batch", "workers", "epoch", "ECG/s", "input_values per ECG", "goal >= 5,000 ECG/s"],
            rows,
            notes,
        )
    if "inference" in parts:
        rows = bench_inference(args, device)
        _table(
            f"Encoder inference, {'float32' if args.no_bf16 else 'bf16 autocast'}, inference_mode, "
            f"{args.inference_warmup} warm-up + {args.inference_repeats} timed batches",
            ["encoder", "params (M)", "batch", "ECG/s", "ms / batch", "peak memory (GiB)"],
            rows,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
