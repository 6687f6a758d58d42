"""ONNX export of ecg-hub ECG models: :func:`export_onnx` and ``ecg-hub export onnx MODEL OUT``.

What is exported, per model class (the registry's ECG families):

* an encoder (``EcgJepaModel``, ``Ecg2TokModel``, ``EcgResNetModel``): outputs ``pooler_output``
  ``(batch, hidden)`` and ``last_hidden_state`` (the family's token or frame features);
* an ECG-text model (``EtpModel``): its ECG side, ``get_ecg_features``: ``pooler_output`` is the
  projected ECG embedding (not yet L2-normalised) and ``last_hidden_state`` the ResNet map; the
  text tower is not exported;
* a classifier (``...ForSequenceClassification``): ``logits`` ``(batch, num_labels)``.

Inputs are the feature extractor's outputs, by name, so ``session.run(None, dict(extractor(ecg,
sampling_rate=..., leads=..., return_tensors="np")))`` feeds the graph directly: ``input_values``
``(batch, leads, num_samples)`` float32, ``attention_mask`` ``(batch, num_samples)`` int64 (1 = real
sample; present unless the extractor was saved with ``return_attention_mask`` false) and
``lead_mask`` ``(batch, leads)`` int64 (1 = recorded lead). The batch axis is dynamic; the lead
count and the length are fixed by the saved ``preprocessor_config.json`` (its ``leads`` and
``num_samples``). ``attention_mask`` is an input because every family uses it: a record shorter
than ``num_samples`` is padded by the extractor, and the padded patches or frames must stay out of
attention and pooling exactly as in PyTorch.

The exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``):
``torch.export`` (``dynamo=True``) cannot trace the Cross-Pattern Attention mask of ECG-JEPA and
ECG2TOK (``bool((lead_ids < 0).any())`` in ``layers.cross_pattern_mask_function`` is a
data-dependent guard for it), and a failed ``torch.export`` attempt leaves a fake tensor in the
cached sin-cos position table (``layers.sincos_position_table``), which breaks every later
ECG-JEPA forward in the process. The tracer records the graph at batch size 2, and the check runs
at batch sizes 1 and 3, so a batch size baked into the graph fails the check.

The output folder is written atomically (a temporary folder next to it, renamed at the end): after
an error, a failed check included, ``OUT`` does not exist (or is left as it was).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .utils import write_json_atomic

__all__ = [
    "CHECK_BATCH_SIZES",
    "DEFAULT_ATOL",
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "ONNX_FILE",
    "REPORT_FILE",
    "ExportReport",
    "OnnxParityError",
    "export_onnx",
    "max_opset",
]

#: File names inside the output folder.
ONNX_FILE = "model.onnx"
REPORT_FILE = "onnx_export.json"

#: Opset 17 has LayerNormalization as one op and is run by onnxruntime >= 1.12 (2022); 14 is the
#: lowest opset whose scaled_dot_product_attention translation the TorchScript exporter has.
DEFAULT_OPSET = 17
MIN_OPSET = 14

#: Largest absolute difference allowed between onnxruntime and PyTorch outputs (float32).
DEFAULT_ATOL = 1e-4

#: The graph is traced at TRACE_BATCH_SIZE and checked at CHECK_BATCH_SIZES: both differ from the
#: traced one, so a batch size frozen into the graph cannot pass the check.
TRACE_BATCH_SIZE = 2
CHECK_BATCH_SIZES = (1, 3)

#: What each kind of model exports.
OUTPUT_NAMES = {
    "encoder": ("pooler_output", "last_hidden_state"),
    "ecg_text": ("pooler_output", "last_hidden_state"),
    "classifier": ("logits",),
}
KIND_TITLES = {"encoder": "encoder", "ecg_text": "ECG side", "classifier": "classifier"}

# Warnings of a trace that the parity check covers, silenced so the command prints its report only:
# shape comparisons and Python booleans the tracer freezes (the non-batch shapes are fixed by the
# feature extractor, and batch independence is what the check at batch 1 and 3 proves), the
# deprecation notice of the TorchScript exporter (chosen on purpose, see the module docstring), and
# the note on negative indices in advanced indexing (the models index with arange-built ids >= 0).
_TRACE_WARNINGS = (
    ("ignore", r".*", torch.jit.TracerWarning),
    ("ignore", r".*legacy TorchScript-based ONNX export.*", DeprecationWarning),
    ("ignore", r".*The feature will be removed.*", DeprecationWarning),
    ("ignore", r".*Exporting aten::index operator of advanced indexing.*", UserWarning),
)


class OnnxParityError(ValueError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance (nothing was written).

    Attributes:
        max_abs_diff: the largest absolute difference over every output and checked batch size
            (``inf`` where an output is not finite).
        diffs: ``{"<output>@batch<n>": difference}``.
        atol: the tolerance.
    """

    def __init__(self, message: str, max_abs_diff: float, diffs: dict[str, float], atol: float):
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.diffs = diffs
        self.atol = atol


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and measured (also saved as ``OUT/onnx_export.json``).

    Attributes:
        out_dir / onnx_path: the output folder and its ``model.onnx``.
        source: the checkpoint folder or Hub id, or ``<ClassName object>`` for a model passed in.
        model_class: the exported class (``EcgJepaModel``, ...).
        exported: ``encoder``, ``ecg_text`` (the ECG side of an ECG-text model) or ``classifier``.
        opset: the ONNX opset.
        inputs / outputs: name -> ``{"dtype": ..., "shape": ["batch", ...]}``, in graph order.
        atol: the tolerance of the check.
        max_abs_diff: largest |onnxruntime - PyTorch| over all outputs and checked batch sizes;
            None when the check was skipped.
        max_abs_diff_by_output: output -> its largest difference (empty when unchecked).
        check_batch_sizes: the batch sizes checked (empty when unchecked).
        onnx_bytes: size of ``model.onnx``.
        seconds: wall time of the export and check.
        versions: torch, onnx, onnxruntime, transformers and ecg-hub versions.
    """

    out_dir: Path
    onnx_path: Path
    source: str
    model_class: str
    exported: str
    opset: int
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    atol: float
    max_abs_diff: float | None
    max_abs_diff_by_output: dict[str, float] = field(default_factory=dict)
    check_batch_sizes: tuple[int, ...] = ()
    onnx_bytes: int = 0
    seconds: float = 0.0
    versions: dict[str, str | None] = field(default_factory=dict)

    @property
    def checked(self) -> bool:
        return self.max_abs_diff is not None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``onnx_export.json`` (paths relative to the folder)."""
        return {
            "format": "onnx",
            "file": self.onnx_path.name,
            "source": self.source,
            "model_class": self.model_class,
            "exported": self.exported,
            "exporter": "torch.onnx.export (TorchScript tracer, dynamo=False)",
            "opset": self.opset,
            "dynamic_axes": {"batch": "axis 0 of every input and output"},
            "inputs": self.inputs,
            "outputs": self.outputs,
            "check": {
                "atol": self.atol,
                "batch_sizes": list(self.check_batch_sizes),
                "max_abs_diff": self.max_abs_diff,
                "max_abs_diff_by_output": self.max_abs_diff_by_output,
            }
            if self.checked
            else None,
            "onnx_bytes": self.onnx_bytes,
            "versions": self.versions,
        }

    def format(self) -> str:
        """One line: what was exported where, the graph's inputs and outputs, and the measured parity."""

        def signature(specs: dict[str, dict[str, Any]]) -> str:
            return ", ".join(
                f"{name}[{','.join(str(d) for d in spec['shape'])}]" for name, spec in specs.items()
            )

        if self.checked:
            sizes = " and ".join(str(b) for b in self.check_batch_sizes)
            parity = (
                f"onnxruntime vs PyTorch max abs diff {self.max_abs_diff:.2e} (atol {self.atol:.0e}) "
                f"at batch {sizes}"
            )
        else:
            parity = "not checked against onnxruntime"
        return (
            f"exported {self.model_class} ({KIND_TITLES[self.exported]}) to {self.onnx_path} "
            f"(opset {self.opset}, {self.onnx_bytes / 1e6:.1f} MB): {signature(self.inputs)} -> "
            f"{signature(self.outputs)}; {parity}"
        )


# ----------------------------------------------------------------------------------------------
# Which models export, and how they are loaded
# ----------------------------------------------------------------------------------------------


def _supported_classes() -> list[str]:
    """Names of the classes ``export_onnx`` takes: each ECG family's ``AutoModel`` class (unless it is
    also its pretraining class, as a tokenizer is) and its sequence classifier."""
    from .modeling.registry import families

    names = set()
    for family in families().values():
        if family.kind != "ecg":
            continue
        for spec in family.model_types.values():
            encoder = spec.models.get("AutoModel")
            if encoder and encoder != spec.models.get("AutoModelForPreTraining"):
                names.add(encoder.rpartition(".")[2])
            classifier = spec.models.get("AutoModelForSequenceClassification")
            if classifier:
                names.add(classifier.rpartition(".")[2])
    return sorted(names)


def _unsupported(what: str) -> ValueError:
    return ValueError(
        f"{what} cannot be exported to ONNX: export onnx takes the encoders and classifiers of the ecg-hub "
        f"ECG families ({', '.join(_supported_classes())})"
    )


def _export_kind(model_class: type, model_type: str | None) -> str:
    """``encoder``, ``ecg_text`` or ``classifier`` for a model class of ``model_type``, else a ValueError
    naming the supported classes."""
    from .modeling.heads import SequenceClassificationHeadMixin
    from .modeling.registry import family_of_model_type, resolve_class

    family = family_of_model_type(model_type) if model_type else None
    if family is None or family.kind != "ecg":
        raise _unsupported(f"{model_class.__name__} (model_type {model_type!r}, not an ecg-hub ECG model)")
    spec = family.model_types[model_type]
    classifier = spec.models.get("AutoModelForSequenceClassification")
    if classifier and issubclass(model_class, resolve_class(classifier)):
        if not issubclass(model_class, SequenceClassificationHeadMixin):
            raise _unsupported(f"{model_class.__name__} (no ecg-hub classification head)")
        return "classifier"
    encoder = spec.models.get("AutoModel")
    if (
        encoder
        and encoder != spec.models.get("AutoModelForPreTraining")
        and issubclass(model_class, resolve_class(encoder))
    ):
        return "ecg_text" if hasattr(model_class, "get_ecg_features") else "encoder"
    raise _unsupported(f"{model_class.__name__} (model_type {model_type!r})")


def _load_checkpoint(source: str, revision: str | None):
    """``(model, feature extractor)`` of a checkpoint folder or Hub id: the classifier if
    ``config.json``'s ``architectures`` names the family's sequence classifier, else its encoder
    (``AutoModel`` class), float32, safetensors weights only, no remote code."""
    from transformers import AutoConfig, AutoFeatureExtractor

    from .modeling import register_all
    from .modeling.registry import family_of_model_type, resolve_class

    register_all()  # the ecg-hub classes with the Auto classes (idempotent)
    local = Path(source)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ValueError(f"MODEL {source}: no config.json (expected a save_pretrained folder)")
        if not any(local.glob("*.safetensors")):
            raise ValueError(
                f"MODEL {source}: no *.safetensors weights; export onnx loads safetensors only "
                "(pickled .bin/.pt weights are refused): re-save the model with save_pretrained"
            )
    try:
        config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"MODEL {source}: not a save_pretrained folder or a Hub model id that can be read ({error})"
        ) from error
    family = family_of_model_type(config.model_type)
    if family is None or family.kind != "ecg":
        raise _unsupported(f"MODEL {source} (model_type {config.model_type!r}, not an ecg-hub ECG model)")
    spec = family.model_types[config.model_type]
    architectures = list(getattr(config, "architectures", None) or [])
    classifier = spec.models.get("AutoModelForSequenceClassification")
    if classifier and architectures[:1] == [classifier.rpartition(".")[2]]:
        model_class = resolve_class(classifier)
    elif "AutoModel" in spec.models:
        model_class = resolve_class(spec.models["AutoModel"])
    else:
        raise _unsupported(f"MODEL {source} (model_type {config.model_type!r} has no encoder class)")
    _export_kind(model_class, config.model_type)  # refuse before reading the weights

    try:
        model, info = model_class.from_pretrained(
            source, revision=revision, use_safetensors=True, dtype=torch.float32, output_loading_info=True
        )
    except OSError as error:
        raise ValueError(
            f"MODEL {source}: cannot load safetensors weights for {model_class.__name__} ({error})"
        ) from error
    problems = {key: info[key] for key in ("missing_keys", "mismatched_keys") if info.get(key)}
    if problems:
        raise ValueError(f"MODEL {source}: the weights do not fill {model_class.__name__}: {problems}")
    try:
        extractor = AutoFeatureExtractor.from_pretrained(source, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"MODEL {source}: no feature extractor config (preprocessor_config.json or "
            "processor_config.json); the ONNX input length and leads come from it: save the model's "
            "EcgFeatureExtractor into the folder"
        ) from error
    return model, extractor


def _check_feature_extractor(extractor, model) -> None:
    """The saved input contract must fix the graph's shapes and match the model's leads."""
    from .modeling import EcgFeatureExtractor

    if not isinstance(extractor, EcgFeatureExtractor):
        raise TypeError(
            f"feature_extractor: expected an EcgFeatureExtractor (it fixes leads and num_samples), got "
            f"{type(extractor).__name__}"
        )
    if extractor.num_samples is None:
        raise ValueError(
            "feature extractor num_samples is null (each batch is padded to its longest record); "
            "an ONNX graph needs one input length: set num_samples in preprocessor_config.json"
        )
    if np.dtype(extractor.return_dtype) != np.float32:
        raise ValueError(
            f"feature extractor return_dtype is {extractor.return_dtype!r}; the ONNX graph takes float32 "
            "input_values: set return_dtype to 'float32'"
        )
    ecg_config = getattr(model.config, "ecg_config", None) or model.config
    if extractor.num_leads != ecg_config.num_leads:
        raise ValueError(
            f"feature extractor leads: {extractor.num_leads} ({', '.join(extractor.leads)}) "
            f"but the model takes {ecg_config.num_leads} leads"
        )


class _OnnxGraph(nn.Module):
    """The traced function: positional tensors in ``input_names`` order -> the outputs of ``kind``."""

    def __init__(self, model: nn.Module, kind: str, input_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.kind = kind
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, tensors))
        values, attention_mask, lead_mask = (
            named["input_values"],
            named.get("attention_mask"),
            named["lead_mask"],
        )
        if self.kind == "ecg_text":
            features = self.model.get_ecg_features(
                values, ecg_attention_mask=attention_mask, lead_mask=lead_mask
            )
            return features.pooler_output, features.last_hidden_state
        outputs = self.model(values, attention_mask=attention_mask, lead_mask=lead_mask, return_dict=True)
        if self.kind == "classifier":
            return (outputs.logits,)
        return outputs.pooler_output, outputs.last_hidden_state


def _random_inputs(
    batch_size: int, extractor, input_names: tuple[str, ...], seed: int
) -> dict[str, np.ndarray]:
    """Inputs shaped as the extractor returns them: unit-variance signals, missing leads zero-filled
    (each lead present with probability 3/4, at least one per record) and records padded to
    ``num_samples`` from a random real length of at least half of it. In a batch of more than one,
    the first record is complete (every lead, full length)."""
    rng = np.random.default_rng(seed)
    num_leads, num_samples = extractor.num_leads, extractor.num_samples
    values = rng.standard_normal((batch_size, num_leads, num_samples)).astype(np.float32)
    lead_mask = (rng.random((batch_size, num_leads)) < 0.75).astype(np.int64)
    lead_mask[np.arange(batch_size), rng.integers(num_leads, size=batch_size)] = 1
    lengths = rng.integers(num_samples // 2, num_samples + 1, size=batch_size)
    if batch_size > 1:
        lead_mask[0], lengths[0] = 1, num_samples
    attention_mask = (np.arange(num_samples)[None, :] < lengths[:, None]).astype(np.int64)
    values *= lead_mask[:, :, None]
    values = np.where(attention_mask[:, None, :] == 1, values, np.float32(extractor.padding_value))
    arrays = {
        "input_values": values.astype(np.float32),
        "attention_mask": attention_mask,
        "lead_mask": lead_mask,
    }
    return {name: arrays[name] for name in input_names}


def _torch_outputs(graph: _OnnxGraph, feeds: dict[str, np.ndarray], device: torch.device) -> list[np.ndarray]:
    tensors = [torch.from_numpy(feeds[name]).to(device) for name in graph.input_names]
    with torch.no_grad():
        return [output.detach().float().cpu().numpy() for output in graph(*tensors)]


def max_opset() -> int:
    """The highest opset the TorchScript exporter of the installed torch writes."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))


def _write_onnx(
    graph: _OnnxGraph, example: tuple[torch.Tensor, ...], path: Path, output_names, opset: int
) -> None:
    """Trace ``graph`` at ``example`` into ``path`` with a dynamic batch axis."""
    names = (*graph.input_names, *output_names)
    with warnings.catch_warnings():
        for action, message, category in _TRACE_WARNINGS:
            warnings.filterwarnings(action, message=message, category=category)
        torch.onnx.export(
            graph,
            example,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(graph.input_names),
            output_names=list(output_names),
            dynamic_axes={name: {0: "batch"} for name in names},
            do_constant_folding=True,
        )


def _parity(
    graph: _OnnxGraph, path: Path, extractor, output_names, device: torch.device, atol: float
) -> dict[str, float]:
    """``{"<output>@batch<n>": max |onnxruntime - PyTorch|}`` at :data:`CHECK_BATCH_SIZES`; an
    `OnnxParityError` when one exceeds ``atol`` or is not finite, or a shape differs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # As many threads as torch uses: the caller's setting (one on a shared machine) holds for the check too.
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    diffs: dict[str, float] = {}
    for batch_size in CHECK_BATCH_SIZES:
        feeds = _random_inputs(batch_size, extractor, graph.input_names, seed=1000 + batch_size)
        expected = _torch_outputs(graph, feeds, device)
        got = session.run(list(output_names), feeds)
        for name, want, have in zip(output_names, expected, got):
            key = f"{name}@batch{batch_size}"
            if have.shape != want.shape:
                raise OnnxParityError(
                    f"onnxruntime output {name} has shape {list(have.shape)} at batch {batch_size}, PyTorch "
                    f"{list(want.shape)}: the graph is not batch-independent; nothing was written",
                    math.inf,
                    {key: math.inf},
                    atol,
                )
            difference = np.abs(have.astype(np.float64) - want.astype(np.float64))
            diffs[key] = (
                float(np.max(np.where(np.isfinite(difference), difference, np.inf)))
                if difference.size
                else 0.0
            )
    worst = max(diffs.values())
    if not worst <= atol:
        listed = ", ".join(f"{key} {value:.2e}" for key, value in diffs.items())
        raise OnnxParityError(
            f"onnxruntime outputs differ from PyTorch by up to {worst:.2e} > atol {atol:.0e} "
            f"({listed}); nothing was written. A larger atol accepts the difference if it is harmless "
            "for your use",
            worst,
            diffs,
            atol,
        )
    return diffs


def _io_specs(path: Path, names, shapes: dict[str, tuple[int, ...]]) -> dict[str, dict[str, Any]]:
    """name -> dtype (from the ONNX graph) and shape (batch axis named ``batch``) for ``names``."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dtypes = {
        value.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)).name
        for value in (*graph.input, *graph.output)
    }
    return {name: {"dtype": dtypes[name], "shape": ["batch", *shapes[name][1:]]} for name in names}


def _versions() -> dict[str, str | None]:
    import transformers

    from .version import __version__

    found: dict[str, str | None] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ecg_hub": __version__,
    }
    for module in ("onnx", "onnxruntime"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            found[module] = None
    return found


def _require(modules: tuple[str, ...]) -> None:
    missing = []
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: pip install 'ecg-hub[onnx]'")


def _check_arguments(opset: int | None, atol: float) -> int:
    highest = max_opset()
    opset = DEFAULT_OPSET if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= highest:
        raise ValueError(f"opset: expected an integer from {MIN_OPSET} to {highest}, got {opset!r}")
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not math.isfinite(atol) or atol < 0:
        raise ValueError(f"atol: expected a finite number >= 0, got {atol!r}")
    return opset


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> list[Path]:
    """Refuse an output that would be clobbered; create the missing parents and return them (deepest
    first) so a failed export can remove them again."""
    if out_dir.is_file() or out_dir.is_symlink():
        raise ValueError(f"out_dir {out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(
            f"out_dir {out_dir}: exists and is not empty; choose a new folder or pass overwrite (--overwrite)"
        )
    created = []
    parent = out_dir.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return created


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished ``staging`` folder to ``out_dir``, replacing an existing one only once the new
    one is complete."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.replaced-"))
        os.replace(out_dir, old)
        try:
            os.replace(staging, out_dir)
        except OSError:
            os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)  # an empty existing folder is replaced, a missing one created


# ----------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------


def export_onnx(
    model_or_path,
    out_dir: str | os.PathLike,
    *,
    opset: int | None = None,
    atol: float = DEFAULT_ATOL,
    check: bool = True,
    feature_extractor=None,
    revision: str | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Export an ecg-hub ECG encoder or classifier to ``out_dir/model.onnx`` and check it.

    Args:
        model_or_path: a ``save_pretrained`` folder or Hub id (the class from ``config.json``: the
            family's sequence classifier when ``architectures`` names it, else its ``AutoModel``
            encoder; safetensors weights only, no remote code), or a model object.
        out_dir: the output folder; it must not exist or be empty unless ``overwrite``.
        opset: ONNX opset, :data:`MIN_OPSET` to :func:`max_opset` (default :data:`DEFAULT_OPSET`).
        atol: largest allowed |onnxruntime - PyTorch| of any output element, float32 (default 1e-4).
        check: run the exported graph with onnxruntime at batch sizes 1 and 3 on random inputs
            (with padded samples and missing leads) and compare with PyTorch; an `OnnxParityError`
            above ``atol``, and nothing is written. False skips it (the ONNX checker still runs).
        feature_extractor: the ``EcgFeatureExtractor`` that fixes the input (``num_samples``, leads);
            default the one saved with the checkpoint. Required for a model object.
        revision: Hub revision (branch, tag or commit) of a Hub id.
        overwrite: replace a non-empty ``out_dir`` (only after the new export is complete).

    Writes ``model.onnx``, ``config.json`` (its ``architectures`` names the exported class),
    ``preprocessor_config.json`` and ``onnx_export.json`` (the returned report). Returns the
    `ExportReport`; bad arguments, an unsupported model and a failed check raise ``ValueError``
    (the check an `OnnxParityError`) with ``out_dir`` left as it was.
    """
    started = time.perf_counter()
    opset = _check_arguments(opset, atol)
    _require(("onnx", "onnxruntime") if check else ("onnx",))
    import onnx

    out_dir = Path(out_dir)
    if isinstance(model_or_path, (str, os.PathLike)):
        source = os.fspath(model_or_path)
        model, saved_extractor = _load_checkpoint(source, revision)
        extractor = feature_extractor if feature_extractor is not None else saved_extractor
    elif isinstance(model_or_path, nn.Module):
        model, source = model_or_path, f"<{type(model_or_path).__name__} object>"
        if feature_extractor is None:
            raise ValueError(
                "feature_extractor: required when a model object is exported (the EcgFeatureExtractor that "
                "prepares its input fixes num_samples and the leads of the graph)"
            )
        extractor = feature_extractor
    else:
        raise TypeError(
            f"model_or_path: expected a folder, a Hub id or a model, got {type(model_or_path).__name__}"
        )
    kind = _export_kind(type(model), getattr(getattr(model, "config", None), "model_type", None))
    dtypes = {parameter.dtype for parameter in model.parameters()}
    if dtypes - {torch.float32}:
        raise ValueError(
            f"model: parameters are {sorted(map(str, dtypes))}; ONNX export writes float32: "
            "pass model.float()"
        )
    _check_feature_extractor(extractor, model)
    input_names = tuple(
        name
        for name in ("input_values", "attention_mask", "lead_mask")
        if name != "attention_mask" or extractor.return_attention_mask
    )
    output_names = OUTPUT_NAMES[kind]
    created_parents = _prepare_out_dir(out_dir, overwrite)

    device = next(model.parameters()).device
    was_training = model.training
    # The wrapper in eval mode too: the exporter restores the top module's mode after tracing, which
    # would put a wrapper left in training mode and the model under it back into training (dropout).
    graph = _OnnxGraph(model, kind, input_names).eval()
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.onnx-export-"))
        example_feeds = _random_inputs(TRACE_BATCH_SIZE, extractor, input_names, seed=TRACE_BATCH_SIZE)
        try:
            reference = _torch_outputs(graph, example_feeds, device)
        except ValueError as error:
            raise ValueError(
                f"{type(model).__name__} does not take the feature extractor's input "
                f"({extractor.num_leads} leads x {extractor.num_samples} samples): {error}"
            ) from error
        onnx_path = staging / ONNX_FILE
        example = tuple(torch.from_numpy(example_feeds[name]).to(device) for name in input_names)
        _write_onnx(graph, example, onnx_path, output_names, opset)
        onnx.checker.check_model(str(onnx_path))
        diffs = _parity(graph, onnx_path, extractor, output_names, device, float(atol)) if check else {}

        shapes = {name: example_feeds[name].shape for name in input_names}
        shapes.update({name: array.shape for name, array in zip(output_names, reference)})
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]
        # to_json_file, not save_pretrained: the folder is for an ONNX runtime, so the Python files of
        # the auto_map (remote code) that save_pretrained copies along do not belong in it.
        config.to_json_file(staging / "config.json")
        extractor.to_json_file(staging / "preprocessor_config.json")
        by_output = (
            {name: max(v for k, v in diffs.items() if k.startswith(f"{name}@")) for name in output_names}
            if diffs
            else {}
        )
        report = ExportReport(
            out_dir=out_dir,
            onnx_path=out_dir / ONNX_FILE,
            source=source,
            model_class=type(model).__name__,
            exported=kind,
            opset=opset,
            inputs=_io_specs(onnx_path, input_names, shapes),
            outputs=_io_specs(onnx_path, output_names, shapes),
            atol=float(atol),
            max_abs_diff=max(diffs.values()) if diffs else None,
            max_abs_diff_by_output=by_output,
            check_batch_sizes=CHECK_BATCH_SIZES if check else (),
            onnx_bytes=onnx_path.stat().st_size,
            seconds=time.perf_counter() - started,
            versions=_versions(),
        )
        write_json_atomic(staging / REPORT_FILE, report.to_dict())
        _publish(staging, out_dir)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for parent in created_parents:  # deepest first; only folders this call created and left empty
            with contextlib.suppress(OSError):  # a folder someone else filled meanwhile stays
                parent.rmdir()
        raise
    finally:
        model.train(was_training)
    return report
