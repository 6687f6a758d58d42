"""Memory of the pretraining data path as the dataset grows: the loop must not need RAM that grows
with the number of records (MIMIC-IV-ECG has 800 k).

For each dataset size it writes N records (8 leads x 2500 samples at 250 Hz, float32, 80 KB each)
with ``save_to_disk``, then, in a fresh process, loads it memory-mapped, applies the loop's split
selection, and reads one epoch through the loop's DataLoader (``EcgCollator`` + ECG-JEPA feature
extractor), as the pretraining loop does; ``--streaming`` reads it as an ``IterableDataset``.
It prints the anonymous resident memory (``RssAnon``: heap, tensors; what cannot be paged back to
the file) and the file-backed resident pages (``RssFile``: the page cache of the mapped Arrow
file, which the kernel drops under pressure).

    python benchmarks/pretrain_data_memory.py                      # 2k, 8k, 32k records
    python benchmarks/pretrain_data_memory.py --sizes 1000 4000 --streaming

Disk: 80 KB per record (32 k records: 2.6 GB) in a temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LEADS = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def write_dataset(path: Path, num_records: int) -> None:
    """N records written in chunks (never all in memory)."""
    import datasets
    import numpy as np

    features = datasets.Features(
        {
            "signal": datasets.Array2D((8, 2500), "float32"),
            "sampling_rate": datasets.Value("int32"),
            "leads": datasets.List(datasets.Value("string")),
            "split": datasets.Value("string"),
        }
    )

    def chunks():
        rng = np.random.default_rng(0)
        for start in range(0, num_records, 1000):
            n = min(1000, num_records - start)
            signal = rng.standard_normal((n, 8, 2500), dtype=np.float32)
            for i in range(n):
                yield {
                    "signal": signal[i],
                    "sampling_rate": 250,
                    "leads": LEADS,
                    "split": "test" if (start + i) % 10 == 9 else "train",
                }

    datasets.Dataset.from_generator(
        chunks, features=features, cache_dir=str(path.parent / "cache")
    ).save_to_disk(str(path), max_shard_size="500MB")


def read_epoch(path: str, streaming: bool) -> dict:
    """One epoch through the loop's data path, in this process; returns memory figures."""
    import torch

    from ecg_hub.recipe import instantiate, load_recipe
    from ecg_hub.training.dataloading import build_train_dataloader
    from ecg_hub.training.pretrain import PretrainRecipe, _load_dataset

    torch.set_num_threads(1)
    recipe = load_recipe(
        "ecg_jepa/pretrain_tiny",
        [
            f"dataset={{_component_: datasets.load_from_disk, dataset_path: {path}}}",
            f"data.streaming={str(streaming).lower()}",
            "data.batch_size=64",
            "data.num_workers=0",
        ],
        schema=PretrainRecipe,
    )
    start_anon = _status_kib("RssAnon")
    dataset = _load_dataset(recipe)
    collator = instantiate(recipe.collator, feature_extractor=instantiate(recipe.preprocessor))
    loader = build_train_dataloader(dataset, collator, 64, seed=0)
    records, peak_anon, peak_file = 0, 0, 0
    started = time.perf_counter()
    for batch in loader.epoch_batches(epoch=0):
        records += batch["input_values"].shape[0]
        peak_anon = max(peak_anon, _status_kib("RssAnon"))
        peak_file = max(peak_file, _status_kib("RssFile"))
    return {
        "records_read": records,
        "seconds": time.perf_counter() - started,
        "anon_before_mib": start_anon / 1024,
        "peak_anon_mib": peak_anon / 1024,
        "peak_file_mib": peak_file / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--streaming", action="store_true")
    parser.add_argument("--_read", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._read:
        print(json.dumps(read_epoch(args._read, args.streaming)))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"pretraining data path, {'streamed' if args.streaming else 'memory-mapped'} Arrow")
    for column in (
        "records",
        "on disk",
        "read (train split)",
        "ECG/s",
        "RssAnon before",
        "peak RssAnon",
        "peak RssFile (page cache)",
    ):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory(prefix="ecg-hub-bench-") as tmp:
        for size in args.sizes:
            path = Path(tmp) / f"n{size}"
            write_dataset(path, size)
            disk = sum(f.stat().st_size for f in path.glob("*.arrow")) / 2**20
            command = [sys.executable, __file__, "--_read", str(path)] + (
                ["--streaming"] if args.streaming else []
            )
            out = (
                subprocess.run(command, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            result = json.loads(out)
            table.add_row(
                f"{size:,}",
                f"{disk:,.0f} MiB",
                f"{result['records_read']:,}",
                f"{result['records_read'] / result['seconds']:,.0f}",
                f"{result['anon_before_mib']:,.0f} MiB",
                f"{result['peak_anon_mib']:,.0f} MiB",
                f"{result['peak_file_mib']:,.0f} MiB",
            )
            for child in Path(tmp).iterdir():  # free the disk before the next size
                subprocess.run(["rm", "-rf", str(child)], check=True)
    Console().print(table)


if __name__ == "__main__":
    main()
