"""Inference speed of every family's ECG encoder at its released size, float32 against bf16 autocast,
and (with ``--official DIR``) the official ECG-JEPA encoder timed in the same process.

    python benchmarks/inference_speed.py [--batch-size 4] [--repeats 3] [--threads N] [--official DIR]

Encoders (random weights; speed does not depend on them): ECG-JEPA base (768 wide, 12 blocks,
16 heads, CroPA, 8 leads x 2500 samples = 400 tokens), ETP's ResNet18-1D (12 leads x 5000),
ECG2TOK stage B base (768 x 12 over 8 x 2500, full attention). Each row: ECG/s of the forward pass
(``pooler_output``; median over ``--repeats`` timed batches after one warm-up, precisions
alternating batch by batch), the pooled-embedding cosine of bf16 against float32 on the same input
(the accuracy guard), and the process's peak RSS after the row (monotonic: an upper bound).

``--official DIR``: a folder holding the official ECG-JEPA files ``ecg_jepa.py`` and
``pos_encoding.py`` (github.com/sehunfromdaegu/ECG_JEPA, e.g. commit d937ad2; not shipped with
ecg-hub: ``git clone`` it and pass the folder). ``timm`` is replaced by a stand-in if it is not
installed (``DropPath`` is the identity at rate 0, the only use in inference). The official base
encoder's weights are converted into ``EcgJepaModel`` with ecg-hub's converter, so both compute the
same function; the table gives the official encoder's ECG/s, ecg-hub's ratio to it in float32 and
in bf16, and the pooled-embedding cosines (float32 parity and bf16 against the official float32).
The input is the same ECG-like batch (periodic beats + noise, mV) for every model.
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import time
import types
from pathlib import Path

import torch


def _ecg_like(batch: int, leads: int, samples: int, rate_hz: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(samples) / rate_hz
    beats = torch.stack([torch.sin(2 * math.pi * 1.2 * t + k) ** 15 * (0.5 + 0.1 * k) for k in range(leads)])
    return (beats[None] + 0.05 * torch.randn(batch, leads, samples, generator=generator)).float()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _time(fn, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls (after the caller's warm-up)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min())


def _runner(model: torch.nn.Module, inputs: dict, dtype: torch.dtype):
    from ecg_hub.inference import inference_autocast

    def run() -> torch.Tensor:
        with torch.no_grad(), inference_autocast(dtype, "cpu"):
            return model(**inputs).pooler_output.float()

    return run


def _families(batch: int):
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
    yield "ECG-JEPA base (768 x 12, CroPA, 400 tokens)", EcgJepaModel(EcgJepaConfig()).eval(), {"input_values": jepa_input}
    yield (
        "ETP ResNet18-1D (12 x 5000)",
        EcgResNetModel(EcgResNetConfig()).eval(),
        {"input_values": _ecg_like(batch, 12, 5000, 500.0)},
    )
    yield (
        "ECG2TOK stage B base (768 x 12, 401 tokens)",
        Ecg2TokModel(Ecg2TokConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)).eval(),
        {"input_values": jepa_input},
    )


def _load_official(folder: Path):
    if "timm" not in sys.modules:
        try:
            import timm  # noqa: F401
        except ImportError:  # a stand-in: DropPath at rate 0 is the identity; trunc_normal_ is torch's
            layers = types.ModuleType("timm.models.layers")

            class DropPath(torch.nn.Module):
                def __init__(self, drop_prob=0.0):
                    super().__init__()

                def forward(self, x):
                    return x

            layers.DropPath = DropPath
            layers.trunc_normal_ = torch.nn.init.trunc_normal_
            timm_module, models = types.ModuleType("timm"), types.ModuleType("timm.models")
            timm_module.models, models.layers = models, layers
            sys.modules.update({"timm": timm_module, "timm.models": models, "timm.models.layers": layers})
    sys.path.insert(0, str(folder))
    from ecg_jepa import ecg_jepa  # the official code, from the user's folder

    torch.manual_seed(0)
    official = ecg_jepa(
        encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=16, predictor_embed_dim=384,
        predictor_depth=6, predictor_num_heads=12, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.0,
        pos_type="sincos", mask_type="block", c=8, p=50, t=50,
    )
    return official.encoder.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--official", type=Path, default=None, help="folder with the official ecg_jepa.py")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ecg_hub.inference import cpu_has_native_bf16, resolve_inference_dtype

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}; "
        f"auto picks: {resolve_inference_dtype('auto', 'cpu')[1]}"
    )
    print(f"batch {args.batch_size}, median of {args.repeats} timed batches after one warm-up\n")
    print("| encoder | float32 ECG/s | bf16 ECG/s | bf16 / float32 | cosine bf16 vs float32 (min) | peak RSS after (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, model, inputs in _families(args.batch_size):
        full, half = _runner(model, inputs, torch.float32), _runner(model, inputs, torch.bfloat16)
        reference, approximate = full(), half()  # warm-up, and the accuracy guard
        times = {"fp32": [], "bf16": []}
        for _ in range(args.repeats):  # alternate, so machine load hits both alike
            times["fp32"] += _time(full, 1)
            times["bf16"] += _time(half, 1)
        fp32, bf16 = (args.batch_size / statistics.median(times[k]) for k in ("fp32", "bf16"))
        print(
            f"| {name} | {fp32:.2f} | {bf16:.2f} | {bf16 / fp32:.2f}x | {_cosine(reference, approximate):.5f} | "
            f"{_peak_rss_mib():.0f} |",
            flush=True,
        )
        del model

    if args.official is not None:
        from ecg_hub.modeling import EcgJepaModel
        from ecg_hub.modeling.convert_ecg_jepa_original_to_hf import (
            config_from_encoder_state_dict,
            convert_encoder_state_dict,
        )

        official = _load_official(args.official)
        state = official.state_dict()
        config = config_from_encoder_state_dict(state, num_attention_heads=16)
        ours = EcgJepaModel(config).eval()
        missing = ours.load_state_dict(convert_encoder_state_dict(state, config), strict=False)
        if missing.unexpected_keys or [k for k in missing.missing_keys if "position" not in k]:
            raise SystemExit(f"conversion mismatch: {missing}")
        x = _ecg_like(args.batch_size, 8, 2500, 250.0)

        def run_official() -> torch.Tensor:
            with torch.no_grad():
                return official.representation(x)

        full, half = _runner(ours, {"input_values": x}, torch.float32), _runner(ours, {"input_values": x}, torch.bfloat16)
        reference, ours_fp32, ours_bf16 = run_official(), full(), half()
        times = {"official": [], "fp32": [], "bf16": []}
        for _ in range(args.repeats):
            times["official"] += _time(run_official, 1)
            times["fp32"] += _time(full, 1)
            times["bf16"] += _time(half, 1)
        rate = {k: args.batch_size / statistics.median(v) for k, v in times.items()}
        print("\nSide by side, same process, same input, alternating (ECG-JEPA base encoder, pooled embedding):\n")
        print("| official float32 ECG/s | ecg-hub float32 ECG/s | ratio | ecg-hub bf16 ECG/s | ratio | cosine fp32 vs official | cosine bf16 vs official |")
        print("|---|---|---|---|---|---|---|")
        print(
            f"| {rate['official']:.2f} | {rate['fp32']:.2f} | {rate['fp32'] / rate['official']:.2f}x | {rate['bf16']:.2f} | "
            f"{rate['bf16'] / rate['official']:.2f}x | {_cosine(ours_fp32, reference):.6f} | {_cosine(ours_bf16, reference):.5f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
