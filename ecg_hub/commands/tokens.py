"""`ecg-hub tokens show|report`: look at the token ids of an ECG2TOK stage-A tokenizer.

    ecg-hub tokens show MODEL --dataset DIR --record-id ID --plot tokens.png [--split S]
    ecg-hub tokens report MODEL --dataset DIR [--split train] [--max-records N] [--top K]
                                [--labels superclass] [--json out.json]

`tokens show` preprocesses one record with the tokenizer's own feature extractor, encodes it and draws
its leads with each patch shaded by the colour of its code (id written above), plus a code-usage
histogram. `tokens report` encodes up to N records and prints, for the K most frequent codes, their
count, share, share of patches holding an R peak and shares of P / QRS / T / isoelectric patches
(neurokit2 on lead II of the preprocessed signal), the most enriched label, and the mutual
information between code and "patch holds an R peak". Records whose waves cannot be found are
skipped and counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokens",
        help="show one record's ECG2TOK token ids, or report what the codes fall on over a dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)

    show = sub.add_parser("show", help="draw one record with its token ids (PNG)")
    show.add_argument("model", metavar="MODEL", help="stage-A tokenizer folder or Hub id")
    show.add_argument("--dataset", required=True, type=Path, help="prepared dataset folder (`ecg-hub data prepare`)")
    show.add_argument("--record-id", required=True, help="record to draw")
    show.add_argument("--plot", required=True, type=Path, help="PNG to write")
    show.add_argument("--split", default=None, help="look for the record in this split only")
    show.add_argument("--dpi", type=int, default=100, help="PNG resolution, dots per inch (default 100)")
    show.set_defaults(func=run_show)

    report = sub.add_parser("report", help="what the codes fall on: R peaks, P/QRS/T waves, baseline, labels")
    report.add_argument("model", metavar="MODEL", help="stage-A tokenizer folder or Hub id")
    report.add_argument("--dataset", required=True, type=Path, help="prepared dataset folder (`ecg-hub data prepare`)")
    report.add_argument("--split", default=None, help="records of this split only (default: all records)")
    report.add_argument("--max-records", type=int, default=500, help="encode at most N records (default 500)")
    report.add_argument("--top", type=int, default=10, help="codes in the table (default 10)")
    report.add_argument("--labels", default=None, help="label column for the most enriched label (e.g. superclass)")
    report.add_argument("--lead", default="II", help="lead the waves are found on (default II)")
    report.add_argument("--method", default="dwt", help="neurokit2.ecg_delineate method (default dwt)")
    report.add_argument("--batch-size", type=int, default=32, help="records per encode batch (default 32)")
    report.add_argument("--json", type=Path, default=None, help="also write the full report as JSON")
    report.set_defaults(func=run_report)


def _load(args: argparse.Namespace):
    from ecg_hub.tokens import load_dataset, load_tokenizer

    dataset = load_dataset(args.dataset, args.split)
    tokenizer, feature_extractor = load_tokenizer(args.model)
    return tokenizer, feature_extractor, dataset


def run_show(args: argparse.Namespace) -> int:
    from ecg_hub.tokens import show_record

    try:
        tokenizer, feature_extractor, dataset = _load(args)
        result = show_record(tokenizer, feature_extractor, dataset, args.record_id, args.plot, dpi=args.dpi)
    except KeyError as error:
        where = f" (split {args.split!r})" if args.split else ""
        print(f"ecg-hub tokens show: {args.dataset}{where}: {error.args[0]}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"ecg-hub tokens show: {error}", file=sys.stderr)
        return 2
    print(f"tokens of record {result['record_id']} drawn to {result['path']}")
    return 0


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def run_report(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ecg_hub.tokens import SEGMENTS, token_report
    from ecg_hub.utils import write_json_atomic

    try:
        tokenizer, feature_extractor, dataset = _load(args)
        report = token_report(
            tokenizer, dataset, feature_extractor, max_records=args.max_records, top_k=args.top,
            label_column=args.labels, batch_size=args.batch_size, lead=args.lead, method=args.method,
        )
    except ValueError as error:
        print(f"ecg-hub tokens report: {error}", file=sys.stderr)
        return 2
    console = Console()
    table = Table(
        title=f"top {len(report['top'])} of {report['codes_used']} used codes ({report['codebook_size']} in the codebook), "
        f"{report['num_patches']} patches of {report['num_records']} records",
        header_style="bold",
    )
    for name in ("code", "count", "share", "R peak", *SEGMENTS):
        table.add_column(name, justify="right")
    if args.labels:
        table.add_column(f"most enriched {args.labels}", justify="left")
    for row in report["top"]:
        cells = [str(row["code"]), str(row["count"]), _percent(row["share"]), _percent(row["r_peak_share"])]
        cells += [_percent(row["segment_shares"][name]) for name in SEGMENTS]
        if args.labels:
            label = row.get("enriched_label")
            cells.append("-" if label is None else f"{label} (x{row['enrichment']:.2f})")
        table.add_row(*cells)
    console.print(table)
    shares = report["segment_shares_of_patches"]
    console.print(
        f"mutual information (code; patch holds an R peak): {report['mutual_information_bits']:.4f} bits  "
        f"(R-peak patches: {_percent(report['r_peak_share_of_patches'])})"
    )
    console.print("patches: " + ", ".join(f"{name} {_percent(shares[name])}" for name in SEGMENTS))
    for key, what in (("r_peak_majority_code", "R-peak patches"), ("isoelectric_majority_code", "isoelectric patches")):
        majority = report[key]
        if majority is not None:
            console.print(f"majority code of {what}: {majority['code']} ({_percent(majority['share'])} of {majority['num_patches']})")
    console.print(
        f"codes mostly on isoelectric patches: {len(report['isoelectric_codes'])} of {report['codes_used']} "
        f"({_percent(report['isoelectric_code_share'])})"
    )
    console.print(f"records skipped (waves not found on lead {report['lead']}): {report['num_skipped']}")
    for item in report["skipped"][:10]:
        console.print(f"  {item['record_id']}: {item['reason']}")
    if report["num_skipped"] > 10:
        console.print(f"  ... and {report['num_skipped'] - 10} more")
    for warning in report["warnings"]:
        console.print(f"[bold yellow]warning:[/] {warning}")
    if args.json is not None:
        write_json_atomic(args.json, report)
        console.print(f"report written to {args.json}")
    return 0
