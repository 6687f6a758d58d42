"""``ecg-hub export onnx MODEL OUT``: an ECG encoder or classifier as an ONNX graph, checked against
PyTorch with onnxruntime (see ``ecg_hub.export``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Export an ecg-hub ECG encoder or classifier to OUT/model.onnx (a dynamic batch axis, the input
length and leads of the saved preprocessor_config.json) and check it: onnxruntime and PyTorch are
run on random inputs at batch sizes 1 and 3, and the export fails, writing nothing, when an output
differs by more than --atol.

MODEL is a save_pretrained folder or a Hub id (safetensors weights only, no remote code). A
classifier (config.json architectures names the ...ForSequenceClassification class) exports logits;
any other checkpoint of the family exports its encoder: pooler_output and last_hidden_state (for
ETP the ECG side: the projected ECG embedding, before L2 normalisation, and the ResNet map).

Graph inputs are named as the feature extractor's outputs: input_values (batch, leads, samples)
float32, attention_mask (batch, samples) int64 (1 = real sample; absent when the extractor is saved
with return_attention_mask false), lead_mask (batch, leads) int64 (1 = recorded lead). Feed them
the extractor's output: session.run(None, dict(extractor(ecg, sampling_rate=..., leads=...,
return_tensors="np"))).

OUT gets model.onnx, config.json, preprocessor_config.json and onnx_export.json (opset, input and
output names and shapes, the measured max abs diff, torch/onnx/onnxruntime versions).
"""


def _opset(text: str) -> int:
    from ecg_hub.export import MIN_OPSET, max_opset

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer opset") from None
    if not MIN_OPSET <= value <= max_opset():
        raise argparse.ArgumentTypeError(f"{value}: expected an opset from {MIN_OPSET} to {max_opset()}")
    return value


def _atol(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number, e.g. 1e-4") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: expected a finite number >= 0")
    return value


def register(subparsers) -> None:
    """Add ``export`` and its ``onnx`` format to the ``ecg-hub`` parser."""
    from ecg_hub.export import DEFAULT_ATOL, DEFAULT_OPSET, MIN_OPSET, max_opset

    parser = subparsers.add_parser(
        "export",
        help="export a model for another runtime (ONNX)",
        description="Export an ecg-hub model for another runtime. Formats: onnx.",
    )
    formats = parser.add_subparsers(dest="format", metavar="FORMAT")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    onnx = formats.add_parser(
        "onnx",
        help="ECG encoder or classifier -> OUT/model.onnx, checked with onnxruntime",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    onnx.add_argument("model", metavar="MODEL", help="checkpoint folder (save_pretrained) or Hub id")
    onnx.add_argument(
        "out", metavar="OUT", type=Path, help="output folder; must not exist or be empty (see --overwrite)"
    )
    onnx.add_argument(
        "--opset",
        type=_opset,
        default=None,
        help=f"ONNX opset, {MIN_OPSET} to {max_opset()} (default {DEFAULT_OPSET})",
    )
    onnx.add_argument(
        "--atol",
        type=_atol,
        default=DEFAULT_ATOL,
        help="largest allowed absolute difference between onnxruntime and PyTorch outputs "
        f"(default {DEFAULT_ATOL:g})",
    )
    onnx.add_argument(
        "--no-check",
        action="store_true",
        help="skip the onnxruntime comparison (the ONNX checker still runs)",
    )
    onnx.add_argument("--revision", default=None, help="Hub revision of MODEL: branch, tag or commit")
    onnx.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty OUT once the new export is complete"
    )
    onnx.set_defaults(func=run_onnx)


def run_onnx(args: argparse.Namespace) -> int:
    from ecg_hub.export import export_onnx

    try:
        report = export_onnx(
            args.model,
            args.out,
            opset=args.opset,
            atol=args.atol,
            check=not args.no_check,
            revision=args.revision,
            overwrite=args.overwrite,
        )
    except (ValueError, ImportError) as error:
        print(f"ecg-hub export onnx: error: {error}", file=sys.stderr)
        return 1
    print(report.format())
    return 0
