"""`ecg-hub text`: a cardiology text corpus for masked-language-model pretraining of a report encoder.

    ecg-hub text prepare --out D [--ecg-dataset DIR ...] [--ecg-splits train[,validation]|all]
                         [--text FILE_OR_DIR ...] [--text-field text]
                         [--hf-dataset NAME_OR_PATH:COLUMN[:SPLIT] ...] [--prompts FILE ...]
                         [--tokenizer PATH] [--max-length 512] [--min-words 3]
                         [--validation-fraction 0.05] [--seed 0] [--licence TEXT] [--overwrite]

Sources, any mix: reports of prepared ECG datasets (`ecg-hub data prepare`; the train split only
unless --ecg-splits says otherwise, so no validation/test report leaks into text pretraining), text
files or folders (.txt: one document per non-empty line; .jsonl: the --text-field of each line; .csv:
the --text-field column, or `table.csv:COLUMN`), a column of a save_to_disk folder or cached Hub
dataset, and CKEPE-style JSON class descriptions (`{"NORM": "normal ECG, ...", ...}`).

Texts are whitespace-collapsed; empty texts, texts under --min-words words and duplicates (case-
insensitive; the first is kept) are dropped and counted. A hash of each document's text and --seed
holds --validation-fraction of the documents out as `split="validation"`. Documents longer than
--max-length tokens of --tokenizer (special tokens included; default the packaged MiniLM tokenizer)
are cut into chunks at sentence or word boundaries. The corpus is written atomically to D as a
datasets.Dataset (columns text, source, document_id, chunk, num_tokens, language, split) with its
summary in ecg_hub_text_summary.json; open it with `ecg_hub.data.text_corpus.load_text_corpus(D)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _ecg_splits(text: str) -> list[str] | None:
    if text.strip().lower() == "all":
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(
            f"--ecg-splits {text!r}: expected e.g. train, train,validation or all"
        )
    return names


def _hf_dataset(text: str) -> tuple[str, ...]:
    """``NAME_OR_PATH:COLUMN[:SPLIT]``; a local path may hold colons itself (it is then matched whole)."""
    parts = text.split(":")
    if len(parts) < 2 or not all(parts[:2]) or not parts[-1]:
        raise argparse.ArgumentTypeError(
            f"--hf-dataset {text!r}: expected NAME_OR_PATH:COLUMN or NAME_OR_PATH:COLUMN:SPLIT"
        )
    if len(parts) == 2:
        return parts[0], parts[1]
    head = ":".join(parts[:-1])
    if Path(head).exists():
        return head, parts[-1]
    return ":".join(parts[:-2]), parts[-2], parts[-1]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"--validation-fraction: expected a number in [0, 1), got {text!r}"
        ) from error
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"--validation-fraction: expected a number in [0, 1), got {text!r}")
    return value


def register(subparsers) -> None:
    text = subparsers.add_parser(
        "text",
        help="prepare a cardiology text corpus (reports, prompts, text files) for MLM pretraining",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    text_sub = text.add_subparsers(dest="text_command", metavar="{prepare}")
    text.set_defaults(func=lambda args: (text.print_help(), 2)[1])

    prepare = text_sub.add_parser(
        "prepare",
        help="write a text corpus as a Hugging Face dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_argument("--out", type=Path, required=True, help="output corpus folder (written atomically)")
    sources = prepare.add_argument_group("sources (at least one)")
    sources.add_argument(
        "--ecg-dataset",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="prepared ECG dataset folder whose reports to read; repeatable",
    )
    sources.add_argument(
        "--ecg-splits",
        type=_ecg_splits,
        default=["train"],
        metavar="train[,validation]|all",
        help="splits of the ECG datasets to read (default train: no evaluation report leaks)",
    )
    sources.add_argument("--report-column", default="report", help="report column of the ECG datasets")
    sources.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="FILE_OR_DIR",
        help=".txt / .jsonl / .csv file (table.csv:COLUMN names the column) or folder; repeatable",
    )
    sources.add_argument(
        "--text-field", default="text", help="JSONL field / CSV column of the text (default text)"
    )
    sources.add_argument(
        "--hf-dataset",
        type=_hf_dataset,
        action="append",
        default=[],
        metavar="NAME_OR_PATH:COLUMN[:SPLIT]",
        help="column of a save_to_disk folder or a cached Hub dataset; repeatable",
    )
    sources.add_argument(
        "--prompts",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="CKEPE-style JSON {class: description}; repeatable",
    )
    prepare.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer folder or Hub id counting chunk lengths (default: packaged MiniLM)",
    )
    prepare.add_argument(
        "--max-length", type=int, default=512, help="most tokens per chunk, specials included"
    )
    prepare.add_argument("--min-words", type=int, default=3, help="drop texts with fewer words (default 3)")
    prepare.add_argument(
        "--validation-fraction",
        type=_fraction,
        default=0.05,
        help="share of documents held out as validation (default 0.05)",
    )
    prepare.add_argument("--seed", type=int, default=0, help="seed of the held-out draw (default 0)")
    prepare.add_argument("--licence", default=None, help="licence of the corpus, recorded in the summary")
    prepare.add_argument("--overwrite", action="store_true", help="replace --out if it is a text corpus")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")
    prepare.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from ecg_hub.data.text_corpus import prepare_text_corpus

    try:
        summary = prepare_text_corpus(
            args.out,
            ecg_datasets=args.ecg_dataset,
            ecg_splits=args.ecg_splits,
            report_column=args.report_column,
            text_files=args.text,
            text_field=args.text_field,
            hf_datasets=args.hf_dataset,
            prompt_files=args.prompts,
            tokenizer=args.tokenizer,
            max_length=args.max_length,
            min_words=args.min_words,
            validation_fraction=args.validation_fraction,
            seed=args.seed,
            licence=args.licence,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


def _by_split(counts: dict[str, int]) -> str:
    return f"{counts['total']:,} (train {counts['train']:,}, validation {counts['validation']:,})"


def print_summary(summary: dict[str, Any], max_sources: int = 12) -> None:
    """The corpus summary as a short rich table (the full one is in ``ecg_hub_text_summary.json``)."""
    from rich.console import Console
    from rich.table import Table

    removed = summary["removed"]
    table = Table(title=f"text corpus {summary['out_dir']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("documents", _by_split(summary["documents"]))
    table.add_row("chunks", _by_split(summary["chunks"]))
    table.add_row("tokens", _by_split(summary["tokens"]))
    table.add_row(
        "removed",
        f"{removed['duplicate']:,} duplicate, {removed['empty']:,} empty, {removed['too_short']:,} short "
        f"(< {summary['min_words']} words) of {summary['texts_read']:,} texts read",
    )
    sources = summary["sources"]
    lines = [f"{s['source']}: {s['documents']:,} of {s['read']:,}" for s in sources[:max_sources]]
    if len(sources) > max_sources:
        lines.append(f"... {len(sources) - max_sources} more")
    table.add_row("sources", "\n".join(lines))
    if summary["skipped_files"]["total"]:
        by_extension = ", ".join(f"{ext} {n}" for ext, n in summary["skipped_files"]["by_extension"].items())
        table.add_row("skipped files", f"{summary['skipped_files']['total']} ({by_extension})")
    table.add_row(
        "languages", ", ".join(f"{k} {v:,}" for k, v in summary["languages"].items()) + " (heuristic)"
    )
    ecg = summary["ecg_splits"]
    if ecg["read"] == "all":
        table.add_row("ECG splits read", "all rows (validation/test reports included)")
    elif ecg["read"]:
        not_read = f"; not read: {', '.join(ecg['not_read'])}" if ecg["not_read"] else ""
        table.add_row("ECG splits read", ", ".join(ecg["read"]) + not_read)
    tokenizer = summary["tokenizer"]
    table.add_row("tokenizer", f"{tokenizer['name_or_path']} (max_length {summary['max_length']})")
    if summary.get("licence"):
        table.add_row("licence", str(summary["licence"]))
    Console(soft_wrap=False).print(table)
