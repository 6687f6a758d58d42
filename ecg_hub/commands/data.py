"""`ecg-hub data`: prepare ECG datasets as Hugging Face Arrow datasets, and look at them.

    ecg-hub data prepare ptbxl --root PTBXL_DIR --out DIR [--sampling-rate 100|500] [--split folds|merl --merl-task super_class]
    ecg-hub data prepare cinc --root CINC_DIR --out DIR [--mapping dx_mapping_unscored.csv]
    ecg-hub data prepare code15 --root CODE15_DIR --out DIR
    ecg-hub data prepare folder --root WFDB_DIR --labels labels.csv --out DIR
    ecg-hub data prepare synthetic --out DIR [--num-records 1000 --seed 0]
    ecg-hub data show DIR [--plot out.png] [--index 0 | --record-id ID]

`ecg-hub data prepare` prints a summary: records, label counts, records kept with masked leads, and
skipped records counted by reason with the first few named. The full summary, every skipped record
with its reason included, is saved as ecg_hub_summary.json in the dataset folder. Open a prepared
dataset with `datasets.load_from_disk(DIR)`.

A flat, clipped or absent lead does not cost the record: the lead is zeroed and listed in the
masked_leads / masked_lead_reasons columns, and models see it as missing (lead_mask 0).
--drop-records-with-bad-leads skips such records instead, as before lead masking. Records too
broken to use (truncated, NaN, wrong units, no usable lead) are always skipped and listed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_common(parser: argparse.ArgumentParser, needs_root: bool = True) -> None:
    if needs_root:
        parser.add_argument("--root", type=Path, required=True, help="folder holding the source data")
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes reading records (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_checks(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "record checks (unusable records are skipped and reported; flat, clipped or absent leads are "
        "zeroed and listed in the masked_leads column)"
    )
    group.add_argument("--min-duration", type=float, default=1.0, help="shortest accepted record, s (default 1)")
    group.add_argument("--allow-flat-leads", action="store_true",
                       help="keep flat (zero) leads as recorded: neither masked nor a reason to skip")
    group.add_argument("--allow-clipped-leads", action="store_true",
                       help="keep clipped leads as recorded: neither masked nor a reason to skip")
    group.add_argument("--drop-records-with-bad-leads", action="store_true",
                       help="skip a record with any flat, clipped or absent lead instead of masking the lead")
    group.add_argument("--min-usable-leads", type=int, default=1,
                       help="skip records with fewer unmasked leads than this (default 1)")


def _checks(args: argparse.Namespace, **overrides):
    from ecg_hub.data.records import SignalChecks

    return SignalChecks(
        min_duration_s=args.min_duration,
        allow_flat_leads=args.allow_flat_leads,
        allow_clipped_leads=args.allow_clipped_leads,
        drop_records_with_bad_leads=args.drop_records_with_bad_leads,
        min_usable_leads=args.min_usable_leads,
        **overrides,
    )


# The help of the options the random-split sources (cinc, code15, folder) share.
_SPLIT_FRACTIONS_HELP = "train,validation,test shares of the patients (default 0.8,0.1,0.1)"
_SPLIT_SEED_HELP = "seed of the random patient-level split (default 42)"


def _fractions(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three comma-separated fractions, e.g. 0.8,0.1,0.1")
    return tuple(parts)  # type: ignore[return-value]


def register(subparsers) -> None:
    data = subparsers.add_parser(
        "data",
        help="prepare ECG datasets (PTB-XL, CinC, CODE-15, your folder, synthetic) and show them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="{prepare,show}")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    prepare = data_sub.add_parser("prepare", help="write a source as a Hugging Face Arrow dataset")
    sources = prepare.add_subparsers(dest="source", metavar="{ptbxl,cinc,code15,folder,synthetic}")
    prepare.set_defaults(func=lambda args: (prepare.print_help(), 2)[1])

    ptbxl = sources.add_parser("ptbxl", help="PTB-XL with the benchmark label sets and folds (or MERL splits)")
    _add_common(ptbxl)
    ptbxl.add_argument("--sampling-rate", type=int, choices=(100, 500), default=100, help="records100 or records500 (Hz)")
    ptbxl.add_argument("--split", choices=("folds", "merl"), default="folds", help="folds 1-8/9/10, or MERL's split files")
    ptbxl.add_argument("--merl-task", choices=("super_class", "sub_class", "form", "rhythm"), default=None,
                       help="with --split merl: which MERL task's files (records outside them are skipped)")
    ptbxl.add_argument("--min-likelihood", type=float, default=0.0,
                       help="drop diagnostic statements below this likelihood (default 0: all, as the benchmark)")
    ptbxl.add_argument("--limit", type=int, default=None, help="only the first N records")
    _add_checks(ptbxl)
    ptbxl.set_defaults(func=_prepare_ptbxl)

    cinc = sources.add_parser("cinc", help="PhysioNet/CinC 2020-21 records (.hea + .mat, SNOMED-CT # Dx:) and SPH .h5")
    _add_common(cinc)
    cinc.add_argument("--mapping", type=Path, action="append", default=[],
                      help="extra SNOMED-CT name table (CSV with Dx, SNOMEDCTCode[, Abbreviation]); repeatable")
    cinc.add_argument("--weights", type=Path, default=None, help="Challenge 2021 weights CSV (defines dx_scored)")
    cinc.add_argument("--split-fractions", type=_fractions, default=(0.8, 0.1, 0.1),
                      help=_SPLIT_FRACTIONS_HELP)
    cinc.add_argument("--split-seed", type=int, default=42, help=_SPLIT_SEED_HELP)
    cinc.add_argument("--limit", type=int, default=None,
                      help="only the first N records, sorted by path (quick tries)")
    _add_checks(cinc)
    cinc.set_defaults(func=_prepare_cinc)

    code15 = sources.add_parser("code15", help="CODE-15%% MATLAB packaging (meta.csv, labels.csv, records/*.mat)")
    _add_common(code15)
    code15.add_argument("--split-fractions", type=_fractions, default=(0.8, 0.1, 0.1),
                        help=_SPLIT_FRACTIONS_HELP)
    code15.add_argument("--split-seed", type=int, default=42, help=_SPLIT_SEED_HELP)
    code15.add_argument("--limit", type=int, default=None,
                        help="only the first N exams of meta.csv (quick tries)")
    _add_checks(code15)
    code15.set_defaults(func=_prepare_code15)

    folder = sources.add_parser("folder", help="your WFDB records plus a CSV of labels")
    _add_common(folder)
    folder.add_argument("--labels", type=Path, required=True,
                        help="labels CSV, one row per record: id column, labels, optional patient_id/split/"
                             "fold/report/age/sex (format: the ecg_hub.data.folder module docs)")
    folder.add_argument("--id-column", default="record_id",
                        help="labels CSV column naming each record: its path under --root without extension, "
                             "or its file stem when unique (default record_id)")
    folder.add_argument("--label-column", default="labels", help="column of ';'-separated class names")
    folder.add_argument("--label-columns", default=None, help="comma-separated 0/1 class columns instead")
    folder.add_argument("--label-set", default="labels", help="name of the dataset's label column")
    folder.add_argument("--sampling-rate", type=int, default=None, help="require this sampling rate (Hz)")
    folder.add_argument("--leads", default="12", help="required leads: '12' (default), 'any', or a comma list")
    folder.add_argument("--split-fractions", type=_fractions, default=(0.8, 0.1, 0.1),
                        help=_SPLIT_FRACTIONS_HELP)
    folder.add_argument("--split-seed", type=int, default=42, help=_SPLIT_SEED_HELP)
    _add_checks(folder)
    folder.set_defaults(func=_prepare_folder)

    synthetic = sources.add_parser("synthetic", help="synthetic 12-lead ECGs with rhythm labels and reports")
    _add_common(synthetic, needs_root=False)
    synthetic.add_argument("--num-records", type=int, default=1000, help="records to generate (default 1000)")
    synthetic.add_argument("--seed", type=int, default=0,
                           help="seed of the generator: same seed, same records (default 0)")
    synthetic.add_argument("--sampling-rate", type=int, default=500, help="Hz (default 500)")
    synthetic.add_argument("--duration", type=float, default=10.0, help="seconds per record (default 10)")
    synthetic.add_argument("--no-noise", action="store_true", help="clean signals (no wander, hum, muscle noise)")
    synthetic.set_defaults(func=_prepare_synthetic)

    show = data_sub.add_parser("show", help="summarize a prepared dataset and plot one record")
    show.add_argument("dataset", type=Path, help="dataset folder written by `ecg-hub data prepare`")
    show.add_argument("--plot", type=Path, default=None, help="write a standard 12-lead plot (PNG) here")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, default=0, help="row to plot (default 0)")
    which.add_argument("--record-id", default=None, help="record to plot")
    show.add_argument(
        "--label-set",
        default=None,
        help="label column whose classes the plot title shows (default: the first label column)",
    )
    show.set_defaults(func=_show)


def _finish(result) -> int:
    print(result.summary.format())
    return 0


def _prepare_ptbxl(args: argparse.Namespace) -> int:
    from ecg_hub.data.ptbxl import prepare_ptbxl

    if args.split == "merl" and args.merl_task is None:
        print("error: --split merl needs --merl-task {super_class,sub_class,form,rhythm}", file=sys.stderr)
        return 2
    return _finish(prepare_ptbxl(
        args.root, args.out, sampling_rate=args.sampling_rate, split=args.split, merl_task=args.merl_task,
        min_likelihood=args.min_likelihood, limit=args.limit, num_proc=args.num_proc, overwrite=args.overwrite,
        progress=not args.no_progress, checks=_checks(args, expected_sampling_rate=args.sampling_rate),
    ))


def _prepare_cinc(args: argparse.Namespace) -> int:
    from ecg_hub.data.cinc import prepare_cinc

    return _finish(prepare_cinc(
        args.root, args.out, mapping_files=args.mapping, weights_file=args.weights,
        split_fractions=args.split_fractions, split_seed=args.split_seed, limit=args.limit,
        num_proc=args.num_proc, overwrite=args.overwrite, progress=not args.no_progress, checks=_checks(args),
    ))


def _prepare_code15(args: argparse.Namespace) -> int:
    from ecg_hub.data.code15 import prepare_code15

    return _finish(prepare_code15(
        args.root, args.out, split_fractions=args.split_fractions, split_seed=args.split_seed, limit=args.limit,
        num_proc=args.num_proc, overwrite=args.overwrite, progress=not args.no_progress, checks=_checks(args),
    ))


def _prepare_folder(args: argparse.Namespace) -> int:
    from ecg_hub.data.folder import prepare_folder
    from ecg_hub.modeling.leads import STANDARD_LEADS, canonicalize_leads

    if args.leads == "12":
        required = STANDARD_LEADS
    elif args.leads == "any":
        required = None
    else:
        required = tuple(canonicalize_leads([lead.strip() for lead in args.leads.split(",") if lead.strip()]))
    label_columns = [c.strip() for c in args.label_columns.split(",")] if args.label_columns else None
    return _finish(prepare_folder(
        args.root, args.labels, args.out, id_column=args.id_column, label_column=args.label_column,
        label_columns=label_columns, label_set=args.label_set, split_fractions=args.split_fractions,
        split_seed=args.split_seed, num_proc=args.num_proc, overwrite=args.overwrite, progress=not args.no_progress,
        checks=_checks(args, required_leads=required, expected_sampling_rate=args.sampling_rate),
    ))


def _prepare_synthetic(args: argparse.Namespace) -> int:
    from ecg_hub.data.synthetic import prepare_synthetic

    return _finish(prepare_synthetic(
        args.out, num_records=args.num_records, seed=args.seed, sampling_rate=args.sampling_rate,
        duration_s=args.duration, noise=not args.no_noise, num_proc=args.num_proc, overwrite=args.overwrite,
        progress=not args.no_progress,
    ))


def _show(args: argparse.Namespace) -> int:
    import datasets

    from ecg_hub.data.builder import load_summary
    from ecg_hub.data.labels import label_columns, label_names
    from ecg_hub.data.plot import plot_ecg

    try:
        dataset = datasets.load_from_disk(str(args.dataset))
    except FileNotFoundError as error:
        print(f"error: {args.dataset} is not a dataset folder written by `ecg-hub data prepare` ({error})", file=sys.stderr)
        return 2
    if isinstance(dataset, datasets.DatasetDict):
        dataset = datasets.concatenate_datasets(list(dataset.values()))
    summary = load_summary(args.dataset)
    _print_overview(dataset, summary)
    if args.plot is None:
        return 0
    if args.record_id is not None:
        matches = [i for i, rid in enumerate(dataset["record_id"]) if rid == args.record_id]
        if not matches:
            print(f"error: no record {args.record_id!r} in {args.dataset}", file=sys.stderr)
            return 2
        index = matches[0]
    else:
        index = args.index
        if not 0 <= index < len(dataset):
            print(f"error: --index {index} outside 0..{len(dataset) - 1}", file=sys.stderr)
            return 2
    row = dataset.with_format("numpy")[index]
    columns = label_columns(dataset)
    if args.label_set is not None and args.label_set not in columns:
        print(f"error: --label-set {args.label_set!r} is not a label column of {args.dataset}; it has {columns}", file=sys.stderr)
        return 2
    column = args.label_set or (columns[0] if columns else None)
    labels = None
    if column is not None:  # a short title: the record and one label set, not every column and the report
        names = label_names(dataset, column)
        labels = [f"{column}: " + (", ".join(names[int(i)] for i in row[column]) or "-")]
    path = plot_ecg(
        row["signal"], int(row["sampling_rate"]), [str(x) for x in row["leads"]], args.plot,
        record_id=str(row["record_id"]), labels=labels,
    )
    print(f"plot of record {row['record_id']} written to {path}")
    return 0


def _type_name(feature) -> str:
    import datasets

    if isinstance(feature, datasets.Array2D):
        return f"Array2D{tuple(feature.shape)} {feature.dtype}"
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.ClassLabel):
        return "list[ClassLabel]"
    if inner is not None:
        return f"list[{_type_name(inner)}]"
    return str(getattr(feature, "dtype", type(feature).__name__))


def _print_overview(dataset, summary) -> None:
    from collections import Counter

    from rich.console import Console
    from rich.table import Table

    from ecg_hub.data.labels import label_columns, label_counts

    console = Console()
    table = Table(title=f"{len(dataset)} records", show_header=True, header_style="bold")
    table.add_column("column")
    table.add_column("type")
    table.add_column("summary")
    for name, feature in dataset.features.items():
        text = ""
        if name == "signal":
            sample = dataset.with_format("numpy")[0]["signal"]
            text = f"first record {tuple(sample.shape)} {sample.dtype} (leads, samples), mV"
        elif name in ("split", "sampling_rate", "source", "sex") or name == "fold":
            text = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(dataset[name]).items(), key=lambda kv: str(kv[0])))
        elif name in label_columns(dataset):
            counts = label_counts(dataset, name)
            top = sorted(counts.items(), key=lambda kv: -kv[1])
            text = f"{len(counts)} classes: " + ", ".join(f"{k} {v}" for k, v in top[:12]) + (" ..." if len(top) > 12 else "")
        elif name == "masked_leads":
            per_lead = Counter(lead for leads in dataset[name] for lead in leads)
            with_masks = sum(1 for leads in dataset[name] if len(leads))
            text = f"{with_masks} records with masked (zeroed) leads" + (
                ": " + ", ".join(f"{k} {v}" for k, v in sorted(per_lead.items(), key=lambda kv: -kv[1])) if per_lead else ""
            )
        elif name == "masked_lead_reasons":
            text = ", ".join(f"{k} {v}" for k, v in Counter(r for rs in dataset[name] for r in rs).most_common()) or "none"
        elif name in ("report", "dx_names"):
            first = next((r for r in dataset.select(range(min(len(dataset), 50)))[name] if r), "")
            text = f"e.g. {first[:100]!r}"
        table.add_row(name, _type_name(feature), text)
    console.print(table)
    if summary is not None:
        console.print(
            f"prepared from {summary.source} in {summary.elapsed_s:.1f} s; {summary.num_skipped} records skipped, "
            f"{summary.num_with_masked_leads} kept with masked leads"
        )
        for reason, count in summary.masked_record_counts.items():
            console.print(f"  {count} records with a masked lead: {reason}")
        for kind, count in summary.skip_reasons().items():
            console.print(f"  {count} x {kind}")
        for note in summary.notes:
            console.print(f"  note: {note}")
