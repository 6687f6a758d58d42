"""`ecg-hub predict MODEL (--dataset D | --folder DIR) --out predictions.csv`.

Per-class scores and labels for every ECG of a dataset or a folder of WFDB records, as CSV:
record_id, source_index, score_<class> per class, predicted_labels (classes
with a score >= --threshold, `;`-separated) and top_label. The run's metadata (model,
classes, scoring, threshold, dtype and why) goes to OUT.meta.json, records that cannot be
read or preprocessed to OUT.skipped.json (and the console).

- a fine-tuned ...ForSequenceClassification checkpoint: probabilities, sigmoid or softmax by
  its config.problem_type; classes from config.id2label;
- a text-aligned model (ETP) with `--labels NORM,MI,...`: zero-shot, scored as the
  zero-shot-ecg-classification pipeline (`--scoring softmax` by default; sigmoid;
  none = cosine), classes described by `--prompts FILE` (CKEPE-style JSON `{class:
  description}`) or by their names, in the pipeline's prompt templates (or --prompt-template).

    ecg-hub predict runs/finetune/best --dataset data/ptbxl --split test --out predictions.csv
    ecg-hub predict runs/etp/model --folder my_records --out zs.csv --labels NORM,MI,STTC,CD,HYP \\
        --prompts CKEPE_prompt.json

Resumable (OUT.partial/) and multi-process (`accelerate launch`) as `ecg-hub embed`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ecg_hub.commands.embed import add_input_arguments, run_batch_command, standalone_main


def _labels(text: str) -> list[str]:
    labels = [label.strip() for label in text.split(",") if label.strip()]
    if not labels:
        raise argparse.ArgumentTypeError(f"--labels: expected comma-separated class names, got {text!r}")
    return labels


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="write per-class scores and labels of every ECG to CSV (classifier, or zero-shot by prompts)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint folder or Hub id")
    parser.add_argument("--out", required=True, type=Path, help="output CSV file (e.g. predictions.csv)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=(
            "score at or above which a class is predicted (default: the per-class thresholds fine-tuning "
            "tuned on validation and saved with a classifier, else 0.5)"
        ),
    )
    parser.add_argument("--labels", type=_labels, default=None, help="zero-shot: comma-separated class names")
    parser.add_argument(
        "--prompts", type=Path, default=None, help="zero-shot: JSON {class: description} (e.g. CKEPE)"
    )
    parser.add_argument(
        "--prompt-template",
        action="append",
        default=None,
        metavar="TEMPLATE",
        help="zero-shot: prompt template with {} (repeatable; default the pipeline's ensemble)",
    )
    parser.add_argument(
        "--scoring",
        choices=("softmax", "sigmoid", "none"),
        default=None,
        help="zero-shot: softmax over classes (default), per-record sigmoid, or none (cosine)",
    )
    add_input_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ecg_hub.batch_inference import predict_records

    return run_batch_command(
        "ecg-hub predict",
        lambda: predict_records(
            args.model,
            dataset=args.dataset,
            folder=args.folder,
            out=args.out,
            labels=args.labels,
            prompts=args.prompts,
            prompt_templates=args.prompt_template,
            function_to_apply=args.scoring,
            threshold=args.threshold,
            split=args.split,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            dtype=args.dtype,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            max_batches=args.max_batches,
        ),
        lambda result: "predictions",
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m ecg_hub.commands.predict ...``."""
    return standalone_main("predict", argv)


if __name__ == "__main__":
    sys.exit(main())
