"""`ecg-hub embed MODEL (--dataset D | --folder WFDB_DIR) --out embeddings.parquet`.

One embedding per ECG, as the ecg-feature-extraction pipeline computes it, for a whole dataset
or a folder of WFDB records, streamed in batches (a progress bar with ECG/s), written as Parquet:
record_id, source_index, embedding (float32, fixed width), the run's metadata (model,
weights hash, feature extractor, embedding kind, dtype and why) in the schema metadata under the
key ecg_hub. Records that cannot be read or preprocessed are listed with the reason in
OUT.skipped.json and on the console; the others are written.

An interrupted run leaves OUT.partial/: run the same command again to continue where it
stopped. Several processes share the work:

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m ecg_hub embed MODEL --dataset D --out E.parquet
    accelerate launch --num_processes 8 -m ecg_hub embed MODEL --dataset D --out E.parquet     # GPUs

Read it back with `pyarrow.parquet.read_table(OUT)` or `pandas.read_parquet(OUT)`; the
embeddings as one array: `numpy.stack(table["embedding"].to_numpy(zero_copy_only=False))`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

#: Skipped records printed at the end of a run (all of them are in OUT.skipped.json).
SHOW_SKIPPED = 20


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments ``embed`` and ``predict`` share: input, batching, precision, resuming."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", type=Path, help="prepared dataset folder (`ecg-hub data prepare`)")
    source.add_argument("--folder", type=Path, help="folder of WFDB records (every *.hea under it)")
    parser.add_argument("--split", default=None, help="only this split of the dataset (e.g. test)")
    parser.add_argument("--batch-size", type=int, default=64, help="records per forward pass (default 64)")
    parser.add_argument(
        "--num-workers", type=int, default=0, help="DataLoader workers reading and preprocessing (default 0)"
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="auto (default): bfloat16 autocast where the CPU/GPU has native bfloat16, else float32",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT, or discard an unfinished run's OUT.partial"
    )
    parser.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="stop after N batches per process (rerun the same command to continue)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="write one embedding per ECG of a dataset or WFDB folder to Parquet (resumable, multi-process)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint folder or Hub id")
    parser.add_argument(
        "--out", required=True, type=Path, help="output Parquet file (e.g. embeddings.parquet)"
    )
    parser.add_argument(
        "--embedding",
        choices=("projection", "pooled"),
        default=None,
        help="projection (ECG-text models: the shared-space embedding; their default) or pooled (the ECG encoder's pooler_output)",
    )
    parser.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise the embeddings (default: for projection only)",
    )
    add_input_arguments(parser)
    parser.set_defaults(func=run)


def report(name: str, result, what: str) -> None:
    """Print the outcome of a run (on the main process): what was written where, what was
    skipped and why."""
    if not result.is_main_process:
        return
    rate = f"{result.records_per_second:.1f} ECG/s" if result.processed else "nothing left to compute"
    resumed = f"; {result.resumed} done by an earlier run" if result.resumed else ""
    if not result.complete:
        print(
            f"{name}: stopped with {result.processed} records computed{resumed}; the state is in "
            f"{result.out.name}.partial. Run the same command again to continue ({result.seconds:.0f} s, {rate})"
        )
        return
    meta = result.metadata
    print(
        f"{name}: wrote {result.num_written} {what} of {result.num_records} records to {result.out} "
        f"(dtype {meta['dtype']}: {meta['dtype_reason']}){resumed}  ({result.seconds:.0f} s, {rate})"
    )
    if result.skipped:
        print(
            f"{name}: skipped {result.num_skipped} record(s), listed with the reason in {result.out}.skipped.json:",
            file=sys.stderr,
        )
        for entry in result.skipped[:SHOW_SKIPPED]:
            print(f"  {entry['record_id']}: {entry['reason']}", file=sys.stderr)
        if result.num_skipped > SHOW_SKIPPED:
            print(f"  ... and {result.num_skipped - SHOW_SKIPPED} more", file=sys.stderr)


def run_batch_command(name: str, compute, what) -> int:
    """Run ``compute()`` (an ``embed_records`` / ``predict_records`` call) for command ``name``:
    skipped-record log lines above the progress bar, an error as ``name: message`` with exit code 2,
    :func:`report` of the result (``what(result)`` names what was written), and the process group
    ended (waiting for the others after a run, at once after an error; see
    :func:`ecg_hub.training.distributed.release_process_group`)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ecg_hub.training.distributed import release_process_group

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with logging_redirect_tqdm():  # skipped-record lines above the progress bar, not through it
            result = compute()
    except (ValueError, OSError) as error:
        print(f"{name}: {error}", file=sys.stderr)
        release_process_group(wait=False)
        return 2
    report(name, result, what(result))
    release_process_group(wait=True)
    return 0


def standalone_main(command: str, argv: list[str] | None = None) -> int:
    """``python -m ecg_hub.commands.<command> ...``: the command without the ``ecg-hub`` program."""
    import importlib

    parser = argparse.ArgumentParser(prog="ecg-hub")
    importlib.import_module(f"ecg_hub.commands.{command}").register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([command, *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


def run(args: argparse.Namespace) -> int:
    from ecg_hub.batch_inference import embed_records

    return run_batch_command(
        "ecg-hub embed",
        lambda: embed_records(
            args.model,
            dataset=args.dataset,
            folder=args.folder,
            out=args.out,
            embedding=args.embedding,
            normalize=args.normalize,
            split=args.split,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            dtype=args.dtype,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            max_batches=args.max_batches,
        ),
        lambda result: f"embeddings (dim {result.metadata.get('dim')})",
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m ecg_hub.commands.embed ...``."""
    return standalone_main("embed", argv)


if __name__ == "__main__":
    sys.exit(main())
