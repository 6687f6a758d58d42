"""What pays for CPU inference: each option against the current default, in the same process,
alternating variant by variant within every repeat (so machine load hits all alike; the ratios are
what count).

    python benchmarks/cpu_inference_options.py [--batch-size 4] [--repeats 3] [--quick] [--smoke]
        [--studies cropa,compile,threads,resnet,inference_mode] [--thread-batches 1,4,8]

Studies (random weights, ECG-like input; speed does not depend on the weights):

1. ``cropa``: Cross-Pattern Attention as **block attention** instead of SDPA with the dense
   ``(tokens x tokens)`` boolean mask (the default). A token of the lead x time grid (lead-major,
   8 x 50 = 400 tokens for ECG-JEPA base) sees its own lead (50 keys) and its own time slot (8
   keys), 57 distinct keys. The block form computes per-lead scores ``(B, H, L, P, P)`` and
   per-time scores ``(B, H, P, L, L)`` (the self key masked there, as the lead part has it), one
   softmax over the concatenated ``P + L`` logits, and sums the two weighted value products; a
   second form runs the two parts through the fused CPU flash kernel and merges them exactly by
   their log-sum-exps. Both are checked against the dense-masked SDPA to 1e-5 before anything is
   timed (the script exits 1 otherwise). Timed: the attention op alone (one layer's q, k, v; the dense eager op as a
   reference) and the whole encoder with the block form patched in through the transformers
   attention and mask interfaces (here, not in the model files). The block form as written here
   assumes the full lead x time grid with no ``lead_mask`` / ``attention_mask`` (as this input).
2. ``compile``: ``torch.compile`` (inductor, CPU) of the encoder; the first call (compilation) is
   reported apart. Skipped, with the error, if inductor cannot compile here (e.g. no C compiler).
3. ``threads``: ``torch.set_num_threads`` 1 against the process default (and 2), at batch 1, 4, 8.
4. ``resnet``: ETP's ResNet18-1D (12 x 5000): ``inference_mode``, oneDNN (``torch.backends.mkldnn``)
   switched off, the Conv1d model rewritten as (1 x k) Conv2d with and without channels-last (a 3-D
   tensor has no channels-last format: see the note printed), BatchNorm folded into the
   convolutions, and ``torch.jit.trace`` + ``freeze`` / ``optimize_for_inference``.
5. ``inference_mode``: ``torch.inference_mode`` against ``torch.no_grad`` (what ecg-hub's batched
   inference uses) for the ECG-JEPA encoder.

Sizes: the released ECG-JEPA base encoder (768 wide, 12 blocks, 16 heads, 8 leads x 2500 samples)
and ResNet18-1D; ``--quick`` uses a 384-wide, 4-block encoder (same token grid); ``--smoke`` tiny
models, one repeat, no compilation (seconds: the test of this script). Every table gives ECG/s
(median over ``--repeats`` timed calls after one warm-up; ``--op-repeats`` for the attention op
alone and the ResNet), the ratio to the default (first row),
and the max abs difference and minimum cosine of the output against the default's.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

JEPA_SIZES = {
    "full": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 16, "intermediate_size": 3072},
    "quick": {"hidden_size": 384, "num_hidden_layers": 4, "num_attention_heads": 6, "intermediate_size": 1536},
    "smoke": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
}
RESNET_SIZES = {
    "full": {},  # ResNet18-1D, the ETP / MERL encoder
    "quick": {},
    "smoke": {"embedding_size": 16, "hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1]},
}
STUDIES = ("cropa", "compile", "threads", "resnet", "inference_mode")
BLOCK_IMPLEMENTATIONS = {"ecg_cropa_block": "_block_attention_forward",
                         "ecg_cropa_block_lse": "_block_lse_attention_forward"}
HEADER = ["variant", "batch", "threads", "ms / batch", "ECG/s", "vs default", "max abs diff", "cosine min"]


def _ecg_like(batch: int, leads: int, samples: int, rate_hz: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(samples) / rate_hz
    beats = torch.stack([torch.sin(2 * math.pi * 1.2 * t + k) ** 15 * (0.5 + 0.1 * k) for k in range(leads)])
    return (beats[None] + 0.05 * torch.randn(batch, leads, samples, generator=generator)).float()


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"


# ----------------------------------------------------------------------------------------------
# CroPA as block attention
# ----------------------------------------------------------------------------------------------


def block_cropa_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_leads: int, scaling: float
) -> torch.Tensor:
    """Exact CroPA over a full lead-major grid. ``query/key/value``: ``(B, H, L * P, D)``; returns
    ``(B, H, L * P, D)``: for query (lead l, time p) a softmax over the keys of lead l (all P times)
    and of time p (the other L - 1 leads; the self key is counted once, in the lead part)."""
    batch, heads, tokens, dim = query.shape
    if tokens % num_leads:
        raise ValueError(f"block CroPA: {tokens} tokens is not a whole grid of {num_leads} leads")
    patches = tokens // num_leads
    q = (query * scaling).view(batch, heads, num_leads, patches, dim)
    k = key.view(batch, heads, num_leads, patches, dim)
    v = value.view(batch, heads, num_leads, patches, dim)
    lead_scores = torch.matmul(q, k.transpose(-1, -2))  # (B, H, L, P, P): same lead, any time
    q_t, k_t, v_t = q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3)  # (B, H, P, L, D)
    time_scores = torch.matmul(q_t, k_t.transpose(-1, -2))  # (B, H, P, L, L): same time, any lead
    self_key = torch.eye(num_leads, dtype=torch.bool, device=query.device)
    time_scores = time_scores.masked_fill(self_key, float("-inf"))
    logits = torch.cat([lead_scores, time_scores.transpose(2, 3)], dim=-1)  # (B, H, L, P, P + L)
    weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    lead_weights, time_weights = weights.split([patches, num_leads], dim=-1)
    out = torch.matmul(lead_weights, v) + torch.matmul(time_weights.transpose(2, 3), v_t).transpose(2, 3)
    return out.reshape(batch, heads, tokens, dim)


def block_cropa_attention_lse(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_leads: int, scaling: float
) -> torch.Tensor:
    """The same function as `block_cropa_attention` through two fused attention kernels: per-lead
    attention as ``(B, H * L, P, D)`` and per-time attention (self key masked) as ``(B, H * P, L, D)``,
    each returning its log-sum-exp, merged exactly: ``o = (e^lse1 o1 + e^lse2 o2) / (e^lse1 + e^lse2)``.
    Uses the private CPU flash kernel ``aten._scaled_dot_product_flash_attention_for_cpu`` (the public
    ``scaled_dot_product_attention`` does not return the log-sum-exp)."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    batch, heads, tokens, dim = query.shape
    if tokens % num_leads:
        raise ValueError(f"block CroPA: {tokens} tokens is not a whole grid of {num_leads} leads")
    patches = tokens // num_leads
    lead_out, lead_lse = flash(*(x.reshape(batch, heads * num_leads, patches, dim) for x in (query, key, value)),
                               scale=scaling)[:2]
    by_time = [x.view(batch, heads, num_leads, patches, dim).transpose(2, 3).reshape(batch, heads * patches, num_leads, dim)
               for x in (query, key, value)]
    not_self = torch.zeros(num_leads, num_leads, dtype=query.dtype, device=query.device)
    not_self = not_self.masked_fill(torch.eye(num_leads, dtype=torch.bool, device=query.device), float("-inf"))
    time_out, time_lse = flash(*by_time, attn_mask=not_self, scale=scaling)[:2]
    time_out = time_out.view(batch, heads, patches, num_leads, dim).transpose(2, 3).reshape(batch, heads, tokens, dim)
    time_lse = time_lse.view(batch, heads, patches, num_leads).transpose(2, 3).reshape(batch, heads, tokens)
    lead_out, lead_lse = lead_out.reshape(batch, heads, tokens, dim), lead_lse.reshape(batch, heads, tokens)
    top = torch.maximum(lead_lse, time_lse)
    lead_w, time_w = (lead_lse - top).exp(), (time_lse - top).exp()
    out = (lead_out * lead_w[..., None] + time_out * time_w[..., None]) / (lead_w + time_w)[..., None]
    return out.to(query.dtype)


def _block_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The transformers attention-interface signature around `block_cropa_attention`."""
    return _block_interface(block_cropa_attention, module, query, key, value, attention_mask, scaling, dropout)


def _block_lse_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The transformers attention-interface signature around `block_cropa_attention_lse`."""
    return _block_interface(block_cropa_attention_lse, module, query, key, value, attention_mask, scaling, dropout)


def _block_interface(function, module, query, key, value, attention_mask, scaling, dropout):
    if attention_mask is not None:
        raise ValueError("block CroPA takes no dense mask (full grid, no lead_mask / attention_mask only)")
    if dropout:
        raise ValueError("block CroPA here is for inference (no attention dropout)")
    scaling = module.scaling if scaling is None else scaling
    out = function(query, key, value, module.config.num_leads, scaling)
    return out.transpose(1, 2).contiguous(), None


def _no_dense_mask(**kwargs):
    return None


@contextlib.contextmanager
def block_cropa(model: nn.Module, implementation: str = "ecg_cropa_block"):
    """Run ``model`` (an ``EcgJepaModel``) with block CroPA (``implementation``: a key of
    ``BLOCK_IMPLEMENTATIONS``): registers the attention function and a mask builder that builds
    nothing, and switches the model's attention implementation for the block."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ALL_ATTENTION_FUNCTIONS[implementation] = globals()[BLOCK_IMPLEMENTATIONS[implementation]]
    ALL_MASK_ATTENTION_FUNCTIONS[implementation] = _no_dense_mask
    before = model.config._attn_implementation
    model.config._attn_implementation = implementation
    try:
        yield model
    finally:
        model.config._attn_implementation = before


def _cropa_dense_mask(batch: int, num_leads: int, num_patches: int) -> torch.Tensor:
    lead = torch.arange(num_leads).repeat_interleave(num_patches)
    time_ = torch.arange(num_patches).repeat(num_leads)
    allowed = (lead[:, None] == lead[None, :]) | (time_[:, None] == time_[None, :])
    return allowed[None, None].expand(batch, 1, -1, -1)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    run: Callable[[], torch.Tensor]
    threads: int | None = None  # set before every call of this variant (None: leave as is)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().reshape(x.shape[0], -1)


def compare(variants: list[Variant], batch: int, repeats: int) -> list[list[str]]:
    """One warm-up call per variant (its output is compared with the first variant's), then
    ``repeats`` rounds calling every variant once, in turn. Rows for the table."""
    default_threads = torch.get_num_threads()
    outputs, times = [], {v.name: [] for v in variants}
    try:
        for variant in variants:
            if variant.threads:
                torch.set_num_threads(variant.threads)
            outputs.append(_flat(variant.run()))
            torch.set_num_threads(default_threads)
        for _ in range(repeats):
            for variant in variants:
                if variant.threads:
                    torch.set_num_threads(variant.threads)
                start = time.perf_counter()
                variant.run()
                times[variant.name].append(time.perf_counter() - start)
                torch.set_num_threads(default_threads)
    finally:
        torch.set_num_threads(default_threads)
    reference = outputs[0]
    base_seconds = statistics.median(times[variants[0].name])
    rows = []
    for variant, output in zip(variants, outputs):
        seconds = statistics.median(times[variant.name])
        diff = float((output - reference).abs().max())
        cosine = float(F.cosine_similarity(output.double(), reference.double(), dim=-1).min())
        rows.append([
            variant.name, str(batch), str(variant.threads or default_threads), f"{1e3 * seconds:.1f}",
            f"{batch / seconds:.2f}", f"{base_seconds / seconds:.2f}x", f"{diff:.2e}", f"{cosine:.6f}",
        ])
    return rows


def print_table(title: str, rows: list[list[str]], notes: list[str] = ()) -> None:
    print(f"\n### {title}\n")
    print(_load() + "\n")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join("---" for _ in HEADER) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for note in notes:
        print(f"\n{note}")
    sys.stdout.flush()


def _skipped(name: str, why: str) -> list[str]:
    return [f"{name}: skipped ({why})", "-", "-", "-", "-", "-", "-", "-"]


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def build_jepa(size: str):
    from ecg_hub.modeling import EcgJepaConfig, EcgJepaModel

    torch.manual_seed(0)
    return EcgJepaModel(EcgJepaConfig(**JEPA_SIZES[size])).eval()


def build_resnet(size: str):
    from ecg_hub.modeling import EcgResNetConfig, EcgResNetModel

    torch.manual_seed(0)
    model = EcgResNetModel(EcgResNetConfig(**RESNET_SIZES[size])).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is a real test
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model


def _pooled(model: nn.Module, x: torch.Tensor, mode: str = "no_grad") -> Callable[[], torch.Tensor]:
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad

    def run() -> torch.Tensor:
        with context():
            return model(input_values=x).pooler_output

    return run


# ----------------------------------------------------------------------------------------------
# Studies
# ----------------------------------------------------------------------------------------------


def study_cropa(model, x: torch.Tensor, batch: int, repeats: int, op_repeats: int) -> bool:
    from ecg_hub.modeling.layers import eager_attention_forward
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    config = model.config
    num_leads, num_patches = config.num_leads, config.num_samples // config.patch_size
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    tokens = num_leads * num_patches
    module = model.layers[0].attention
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(batch, heads, tokens, head_dim, generator=generator) for _ in range(3))
    mask = _cropa_dense_mask(batch, num_leads, num_patches)
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    keys = int(mask[0, 0].sum(-1).max())
    forms = {"ecg_cropa_block": ("block CroPA", _block_attention_forward),
             "ecg_cropa_block_lse": ("block CroPA, 2 flash kernels + log-sum-exp merge", _block_lse_attention_forward)}

    with torch.no_grad():
        dense = sdpa_attention_forward(module, q, k, v, mask, scaling=module.scaling)[0]
        checks = {}
        for implementation, (name, function) in list(forms.items()):
            try:
                checks[implementation] = float((dense - function(module, q, k, v, None, scaling=module.scaling)[0]).abs().max())
            except (RuntimeError, AttributeError) as error:  # the private flash op of another torch version
                print(f"\n{name}: not available here ({type(error).__name__}: {str(error).splitlines()[0][:160]})")
                del forms[implementation]
    ok = all(error <= 1e-5 for error in checks.values())
    print(
        f"\nBlock CroPA check ({num_leads} leads x {num_patches} patches, {keys} keys per query, {heads} heads x "
        f"{head_dim}): max |block - dense SDPA| = "
        + ", ".join(f"{forms[i][0]} {e:.2e}" for i, e in checks.items())
        + f" -> {'OK' if ok else 'FAILED'} (<= 1e-5)"
    )
    if not ok or "ecg_cropa_block" not in checks:
        return False

    def op(fn, *args):
        def run():
            with torch.no_grad():
                return fn(module, q, k, v, *args, scaling=module.scaling)[0]
        return run

    variants = [Variant(f"SDPA + dense {tokens}x{tokens} bool mask (default)", op(sdpa_attention_forward, mask))]
    variants += [Variant(f"{name} ({keys} keys)", op(function, None)) for name, function in forms.values()]
    variants.append(Variant("eager + dense additive mask (reference)", op(eager_attention_forward, additive)))
    rows = compare(variants, batch, op_repeats)
    print_table(
        f"CroPA attention op alone (one layer, q/k/v {batch} x {heads} x {tokens} x {head_dim}, float32, "
        f"{op_repeats} repeats)",
        rows,
    )

    default = _pooled(model, x)

    def patched(implementation: str):
        def run() -> torch.Tensor:
            with block_cropa(model, implementation):
                return default()
        return run

    variants = [Variant("encoder, SDPA + dense mask (default)", default)]
    variants += [Variant(f"encoder, {name}", patched(implementation)) for implementation, (name, _) in forms.items()]
    rows = compare(variants, batch, repeats)
    print_table(f"CroPA in the whole encoder ({_describe(config)}, pooled output)", rows)
    return True


def _describe(config) -> str:
    return (
        f"ECG-JEPA {config.hidden_size} x {config.num_hidden_layers}, {config.num_attention_heads} heads, "
        f"{config.num_leads} x {config.num_samples}"
    )


def study_compile(model, x: torch.Tensor, batch: int, repeats: int, skip: str | None) -> None:
    default = _pooled(model, x)
    title = f"torch.compile of the encoder (inductor, CPU; {_describe(model.config)}, pooled output)"
    if skip:
        print_table(title, [compare([Variant("eager (default)", default)], batch, repeats)[0],
                            _skipped("torch.compile", skip)])
        return
    notes = [f"C compiler: {shutil.which('cc') or shutil.which('gcc') or 'none found'}"]
    try:
        import torch._dynamo

        torch._dynamo.reset()
        compiled = torch.compile(model)
        start = time.perf_counter()
        _pooled(compiled, x)()
        notes.append(f"compile time (first call, compilation included): {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        _pooled(compiled, x)()
        notes.append(f"second call: {1e3 * (time.perf_counter() - start):.0f} ms")
    except Exception as error:  # noqa: BLE001  (inductor cannot compile here: report why)
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        reason = f"{type(error).__name__}: {message}"
        print_table(title, [compare([Variant("eager (default)", default)], batch, repeats)[0],
                            _skipped("torch.compile", reason)], notes)
        return
    rows = compare([Variant("eager (default)", default), Variant("torch.compile (inductor)", _pooled(compiled, x))],
                   batch, repeats)
    print_table(title, rows, notes)


def study_threads(model, batches: list[int], repeats: int) -> None:
    default_threads = torch.get_num_threads()
    others = [n for n in (1, 2) if n != default_threads]
    rows = []
    for batch in batches:
        x = _ecg_like(batch, model.config.num_leads, model.config.num_samples, model.config.sampling_rate)
        run = _pooled(model, x)
        plural = "s" if default_threads > 1 else ""
        variants = [Variant(f"{default_threads} thread{plural} (process default)", run, default_threads)]
        variants += [Variant(f"{n} thread{'s' if n > 1 else ''}", run, n) for n in others]
        rows += compare(variants, batch, repeats)
    print_table(
        f"torch.set_num_threads ({_describe(model.config)}, pooled output; ratio against the default at the same batch)",
        rows,
    )


class _PooledOnly(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.model(input_values=input_values).pooler_output


def _to_conv2d(model: nn.Module) -> nn.Module:
    """A copy of a Conv1d / BatchNorm1d network as (1 x k) Conv2d / BatchNorm2d with the same weights."""
    model = copy.deepcopy(model)

    def convert(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv1d):
                conv = nn.Conv2d(
                    child.in_channels, child.out_channels, (1, child.kernel_size[0]), (1, child.stride[0]),
                    (0, child.padding[0]), (1, child.dilation[0]), child.groups, child.bias is not None,
                )
                conv.weight.data.copy_(child.weight.data.unsqueeze(2))
                if child.bias is not None:
                    conv.bias.data.copy_(child.bias.data)
                setattr(parent, name, conv)
            elif isinstance(child, nn.BatchNorm1d):
                norm = nn.BatchNorm2d(child.num_features, child.eps, child.momentum)
                norm.load_state_dict(child.state_dict())
                setattr(parent, name, norm)
            else:
                convert(child)

    convert(model)
    return model.eval()


def _forward_2d(model2d: nn.Module, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """`EcgResNetModel.forward` (no masks) on the Conv2d copy: (B, C, T) as (B, C, 1, T)."""
    hidden = x.unsqueeze(2)
    if channels_last:
        hidden = hidden.contiguous(memory_format=torch.channels_last)
    hidden = F.relu(model2d.bn1(model2d.conv1(hidden)))
    for name in model2d.stage_names:
        hidden = getattr(model2d, name)(hidden)
    return hidden.mean(dim=-1).flatten(1)


def _fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with every ``conv -> BatchNorm`` pair of the ResNet folded into the convolution."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    pairs, shortcuts = [(model, "conv1", "bn1")], []
    for module in list(model.modules()):
        if module is model:
            continue
        for conv_name, norm_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            if isinstance(getattr(module, norm_name, None), nn.BatchNorm1d):
                pairs.append((module, conv_name, norm_name))
        if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[1], nn.BatchNorm1d):
            shortcuts.append(module)
    for module, conv_name, norm_name in pairs:
        setattr(module, conv_name, fuse_conv_bn_eval(getattr(module, conv_name), getattr(module, norm_name)))
        setattr(module, norm_name, nn.Identity())
    for module in shortcuts:
        module[0] = fuse_conv_bn_eval(module[0], module[1])
        module[1] = nn.Identity()
    if any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
        raise RuntimeError("a BatchNorm1d was left unfolded")
    return model


def study_resnet(size: str, batch: int, repeats: int) -> None:
    """``repeats``: the op repeats (the ResNet is cheap)."""
    model = build_resnet(size)
    config = model.config
    x = _ecg_like(batch, config.num_leads, config.num_samples, config.sampling_rate)
    notes = []
    try:
        x.contiguous(memory_format=torch.channels_last)
        notes.append("channels_last on the 3-D (B, C, T) input: accepted")
    except RuntimeError as error:
        notes.append(f"channels_last on the 3-D (B, C, T) Conv1d input: {str(error).splitlines()[0]}")
    weights = [p for p in model.parameters() if p.ndim == 3]
    converted = copy.deepcopy(model).to(memory_format=torch.channels_last)
    unchanged = all(
        p.is_contiguous() for p in converted.parameters() if p.ndim == 3
    )
    notes.append(
        f"model.to(memory_format=torch.channels_last) on the Conv1d model: {len(weights)} 3-D conv weights "
        f"{'left as they were (it applies to 4-D tensors only)' if unchanged else 'changed'}"
    )
    notes.append(f"torch.backends.mkldnn: available {torch.backends.mkldnn.is_available()}, "
                 f"enabled {torch.backends.mkldnn.enabled} (the default)")

    variants = [Variant("no_grad (default)", _pooled(model, x)),
                Variant("inference_mode", _pooled(model, x, "inference_mode"))]

    def without_mkldnn() -> torch.Tensor:
        with torch.backends.mkldnn.flags(enabled=False), torch.no_grad():
            return model(input_values=x).pooler_output

    variants.append(Variant("oneDNN off (torch.backends.mkldnn.flags(enabled=False))", without_mkldnn))
    model2d = _to_conv2d(model)
    model2d_cl = _to_conv2d(model).to(memory_format=torch.channels_last)

    def conv2d(net, channels_last):
        def run():
            with torch.no_grad():
                return _forward_2d(net, x, channels_last)
        return run

    variants.append(Variant("as (1 x k) Conv2d, contiguous", conv2d(model2d, False)))
    variants.append(Variant("as (1 x k) Conv2d, channels_last", conv2d(model2d_cl, True)))
    variants.append(Variant("BatchNorm folded into the convs (eager)", _pooled(_fold_batchnorm(model), x)))
    for name, build in (
        ("jit.trace + jit.freeze", lambda traced: torch.jit.freeze(traced)),
        ("jit.trace + jit.optimize_for_inference", lambda traced: torch.jit.optimize_for_inference(traced)),
    ):
        try:
            with torch.no_grad():
                traced = build(torch.jit.trace(_PooledOnly(model).eval(), (x,), check_trace=False))

            def run_traced(traced=traced):
                with torch.no_grad():
                    return traced(x)

            variants.append(Variant(name, run_traced))
        except Exception as error:  # noqa: BLE001  (report why tracing failed)
            notes.append(f"{name}: failed ({type(error).__name__}: {str(error).splitlines()[0][:160]})")
    rows = compare(variants, batch, repeats)
    title = (
        f"ETP ResNet18-1D encoder ({config.num_leads} x {config.num_samples}, widths {list(config.hidden_sizes)}, "
        f"depths {list(config.depths)}; pooled output, float32)"
    )
    print_table(title, rows, notes)


def study_inference_mode(model, x: torch.Tensor, batch: int, repeats: int) -> None:
    rows = compare(
        [Variant("no_grad (default)", _pooled(model, x)), Variant("inference_mode", _pooled(model, x, "inference_mode"))],
        batch,
        repeats,
    )
    print_table(f"torch.inference_mode vs torch.no_grad ({_describe(model.config)}, pooled output)", rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant (after one warm-up)")
    parser.add_argument("--op-repeats", type=int, default=10,
                        help="timed calls per variant of the cheap studies (attention op alone, ResNet)")
    parser.add_argument("--quick", action="store_true", help="a 384-wide, 4-block ECG-JEPA encoder")
    parser.add_argument("--smoke", action="store_true", help="tiny models, 1 repeat, no compilation (seconds)")
    parser.add_argument("--studies", default=",".join(STUDIES), help=f"comma-separated subset of {','.join(STUDIES)}")
    parser.add_argument("--thread-batches", default="1,4,8", help="batch sizes of the threads study")
    parser.add_argument("--threads", type=int, default=None, help="process default torch threads (default: torch's)")
    args = parser.parse_args(argv)
    studies = [s for s in args.studies.split(",") if s]
    unknown = set(studies) - set(STUDIES)
    if unknown:
        parser.error(f"unknown studies {sorted(unknown)}; choose from {','.join(STUDIES)}")
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    repeats = 1 if args.smoke else args.repeats
    op_repeats = 1 if args.smoke else args.op_repeats
    thread_batches = [1, 2] if args.smoke else [int(b) for b in args.thread_batches.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)

    from ecg_hub.inference import cpu_has_native_bf16

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}; sizes '{size}', "
        f"batch {args.batch_size}, median of {repeats} timed call(s) per variant after one warm-up, "
        f"variants alternating; {_load()}"
    )
    started = time.perf_counter()
    model = x = None
    if {"cropa", "compile", "threads", "inference_mode"} & set(studies):
        model = build_jepa(size)
        config = model.config
        x = _ecg_like(args.batch_size, config.num_leads, config.num_samples, config.sampling_rate)
    if "cropa" in studies and not study_cropa(model, x, args.batch_size, repeats, op_repeats):
        return 1
    if "inference_mode" in studies:
        study_inference_mode(model, x, args.batch_size, repeats)
    if "threads" in studies:
        study_threads(model, thread_batches, repeats)
    if "resnet" in studies:
        study_resnet(size, args.batch_size, op_repeats)
    if "compile" in studies:
        study_compile(model, x, args.batch_size, repeats, "--smoke: compilation takes tens of seconds" if args.smoke else None)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
