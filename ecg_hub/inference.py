"""Batched inference over a dataset: records -> ``EcgCollator`` (the feature extractor's
deterministic crop) -> a model in eval mode, without gradients, in dataset order.

The one loop behind fine-tuning predictions (:func:`ecg_hub.training.finetune.predict_dataset_scores`),
linear-probe features (:func:`ecg_hub.evaluation.linear_probe.extract_features`) and zero-shot ECG
scores (:func:`ecg_hub.evaluation.zero_shot.zero_shot_scores`). Callers give a ``step(batch) ->
tensor`` that runs their model on one batch (already on the model's device) and picks the output
they need.

Precision is a setting (``dtype``): ``"float32"``, ``"bfloat16"`` (autocast: matrix products in
bf16, accumulations and norms in float32) or ``"auto"``, which picks bf16 where the device runs it
natively (a CUDA GPU with bf16, a CPU with AVX-512-BF16 or AMX) and float32 elsewhere, since
emulated bf16 is slower than float32. :func:`resolve_inference_dtype` says which was chosen and why.
Outputs always come back as float32.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from ecg_hub.data.collators import COLLATOR_COLUMNS, EcgCollator

__all__ = [
    "INFERENCE_DTYPES",
    "INPUT_COLUMNS",
    "collect_outputs",
    "cpu_bf16_flags",
    "cpu_has_native_bf16",
    "eval_mode",
    "inference_autocast",
    "inference_loader",
    "iter_outputs",
    "module_device",
    "resolve_inference_dtype",
]

#: The precision settings of every inference path.
INFERENCE_DTYPES = ("auto", "float32", "bfloat16")


#: Set to ``0`` to make ``dtype="auto"`` treat the CPU as having no native bfloat16 (float32
#: everywhere on the CPU: reproducible figures across machines; the test suite sets it).
NATIVE_CPU_BF16_ENV = "ECG_HUB_NATIVE_CPU_BF16"


def cpu_bf16_flags() -> list[str] | None:
    """The native bfloat16 CPU flags in ``/proc/cpuinfo`` (``avx512_bf16``, ``amx_bf16``); ``None``
    when the file cannot be read (not Linux); ``[]`` when ``ECG_HUB_NATIVE_CPU_BF16=0``."""
    if os.environ.get(NATIVE_CPU_BF16_ENV) == "0":
        return []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    except OSError:
        return None
    return []


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX-512-BF16 or AMX)."""
    return bool(cpu_bf16_flags())


def resolve_inference_dtype(dtype: str, device: str | torch.device = "cpu") -> tuple[torch.dtype, str]:
    """``(torch dtype of the autocast, why)`` of a precision setting on ``device``: bfloat16 where
    the hardware computes it natively, float32 elsewhere (emulated bfloat16 on an older CPU is slower
    than float32 and less accurate). Asking for bfloat16 on a CUDA device without it is an error."""
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"dtype: expected one of {INFERENCE_DTYPES}, got {dtype!r}")
    device = torch.device(device)
    if dtype == "float32":
        return torch.float32, "float32 requested"
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        if dtype == "bfloat16":
            if not supported:
                raise ValueError(f"dtype: 'bfloat16' requested but CUDA device {name!r} does not support it; use float32")
            return torch.bfloat16, "bfloat16 requested"
        if supported:
            return torch.bfloat16, f"auto: CUDA device {name!r} supports bfloat16"
        return torch.float32, f"auto: CUDA device {name!r} does not support bfloat16"
    if dtype == "bfloat16":
        return torch.bfloat16, "bfloat16 requested"
    capability = torch.backends.cpu.get_cpu_capability()
    flags = cpu_bf16_flags()
    if flags:
        return torch.bfloat16, f"auto: CPU has native bfloat16 ({', '.join(flags)}; torch CPU capability {capability})"
    if flags is None and ("AVX512" in capability or "AMX" in capability):
        return torch.bfloat16, f"auto: torch CPU capability {capability} (no /proc/cpuinfo to check avx512_bf16)"
    return torch.float32, (
        f"auto: torch CPU capability {capability} without native bfloat16 (no avx512_bf16 / amx_bf16): float32"
    )


@contextlib.contextmanager
def inference_autocast(dtype: torch.dtype, device: str | torch.device = "cpu"):
    """``torch.autocast`` in ``dtype`` on ``device`` for bf16; nothing for float32."""
    device = torch.device(device)
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield

#: Dataset columns the collator reads (others, e.g. labels, are dropped before batching), the
#: dataset's masked leads included.
INPUT_COLUMNS = COLLATOR_COLUMNS

Step = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def inference_loader(dataset, feature_extractor, *, batch_size: int = 64, num_workers: int = 0):
    """A ``DataLoader`` of ``dataset`` in order, batched by ``EcgCollator(feature_extractor, training=False)``."""
    columns = [c for c in INPUT_COLUMNS if c in dataset.column_names]
    return torch.utils.data.DataLoader(
        dataset.select_columns(columns).with_format("numpy", columns=["signal"], output_all_columns=True),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=EcgCollator(feature_extractor, training=False),
        num_workers=num_workers,
    )


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """``module.eval()`` for the block, then its previous train / eval mode again."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def module_device(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def iter_outputs(
    module: nn.Module,
    dataset,
    feature_extractor,
    step: Step,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    dtype: str = "float32",
) -> Iterator[torch.Tensor]:
    """``step(batch)`` of every batch of ``dataset``, as CPU tensors, in dataset order.

    Args:
        module: the model ``step`` runs; in eval mode (and no gradients) while the loop runs.
        dataset: a ``datasets.Dataset`` with ``signal``, ``sampling_rate``, ``leads`` columns.
        feature_extractor: the model's ``EcgFeatureExtractor`` (deterministic crop).
        step: ``step(batch) -> tensor`` with the batch's tensors on ``device``.
        batch_size: records per batch.
        device: where the batches go (default: the module's device).
        num_workers: DataLoader workers running the feature extractor.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"auto"`` (see the module docstring); outputs are float32.
    """
    device = torch.device(device) if device is not None else module_device(module)
    compute_dtype, _ = resolve_inference_dtype(dtype, device)
    loader = inference_loader(dataset, feature_extractor, batch_size=batch_size, num_workers=num_workers)
    with eval_mode(module), torch.no_grad():
        for batch in loader:
            with inference_autocast(compute_dtype, device):
                output = step({k: v.to(device) for k, v in batch.items()})
            yield output.float().cpu()


def collect_outputs(
    module: nn.Module,
    dataset,
    feature_extractor,
    step: Step,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    empty_shape: tuple[int, ...] = (0, 0),
    dtype: str = "float32",
) -> np.ndarray:
    """:func:`iter_outputs` concatenated along the first axis into one NumPy array (an empty
    float32 array of ``empty_shape`` for an empty dataset)."""
    chunks = [
        output.numpy()
        for output in iter_outputs(
            module,
            dataset,
            feature_extractor,
            step,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            dtype=dtype,
        )
    ]
    return np.concatenate(chunks, axis=0) if chunks else np.zeros(empty_shape, dtype=np.float32)
