"""Data pipeline speed: WFDB -> Arrow, Arrow storage layouts, Arrow -> feature extractor -> DataLoader.

Prints Markdown tables:
  1. ``ecg-hub data prepare``-equivalent conversion of the PTB-XL subset (WFDB format 16 -> Arrow),
     records/s with 1 and 2 reader processes, plus the synthetic generator's rate;
  2. read speed of the two ``signal`` layouts (``Array2D`` vs nested lists) for the same records,
     per row and through ``Dataset.__getitems__`` (what a DataLoader calls);
  3. Arrow -> ``EcgFeatureExtractor`` (through ``EcgCollator``) -> ``DataLoader`` ECG/s with 0 and 2
     workers, for the ECG-JEPA preset (500 -> 250 Hz, 8 leads) and the MERL preset (500 Hz, 12 leads).

Usage (from the repository root):
    python benchmarks/data_pipeline.py [--ptbxl-root ../shared/data/ptbxl] [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


def _dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


def bench_prepare(ptbxl_root: Path, work: Path, quick: bool) -> dict[str, Path]:
    from ecg_hub.data import prepare_ptbxl, prepare_synthetic

    rows, outputs = [], {}
    runs = [(100, 1), (100, 2), (500, 1), (500, 2)]
    if quick:
        runs = [(100, 1), (500, 1)]
    for rate, procs in runs:
        out = work / f"ptbxl{rate}_p{procs}"
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        result = prepare_ptbxl(ptbxl_root, out, sampling_rate=rate, num_proc=procs, progress=False)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        n = result.summary.num_records
        rows.append([f"PTB-XL records{rate} (WFDB fmt 16)", str(procs), str(n), f"{wall:.1f}", f"{n / wall:.0f}",
                     f"{n / cpu:.0f}", f"{_dir_mib(out):.0f}", result.summary.signal_storage])
        outputs.setdefault(f"ptbxl{rate}", out)
    n_syn = 200 if quick else 1000
    out = work / "synthetic"
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    result = prepare_synthetic(out, num_records=n_syn, seed=0, sampling_rate=500, progress=False)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    rows.append(["synthetic 12 x 10 s @ 500 Hz (generate + write)", "1", str(n_syn), f"{wall:.1f}", f"{n_syn / wall:.0f}",
                 f"{n_syn / cpu:.0f}", f"{_dir_mib(out):.0f}", result.summary.signal_storage])
    outputs["synthetic"] = out
    _table(
        "WFDB -> Arrow (`prepare_*`, incl. validation and save_to_disk)",
        ["source", "processes", "records", "wall s", "records/s (wall)", "records per CPU-s", "MiB on disk", "signal column"],
        rows,
    )
    return outputs


def bench_layouts(dataset_dir: Path, label: str) -> None:
    import datasets
    import numpy as np

    array2d = datasets.load_from_disk(str(dataset_dir))
    features = array2d.features.copy()
    features["signal"] = datasets.Sequence(datasets.Sequence(datasets.Value("float32")))
    nested = array2d.cast(features)
    rows = []
    for name, ds in (("Array2D", array2d), ("List(List(float32))", nested)):
        as_numpy = ds.with_format("numpy")
        n = min(len(ds), 500)
        t0 = time.perf_counter()
        for i in range(n):
            signal = as_numpy[i]["signal"]
        per_row = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for start in range(0, n, 64):
            sliced = as_numpy[start : start + 64]["signal"]
        per_slice = n / (time.perf_counter() - t0)
        signal_only = ds.with_format("numpy", columns=["signal"])
        t0 = time.perf_counter()
        for start in range(0, n, 64):
            signal_only[start : start + 64]
        per_slice_signal_only = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for start in range(0, n, 64):
            batch = as_numpy.__getitems__(list(range(start, min(n, start + 64))))
        batched = n / (time.perf_counter() - t0)
        assert signal.dtype == np.float32 and batch[0]["signal"].shape == signal.shape == sliced.shape[1:]
        rows.append([name, label, f"{per_row:.0f}", f"{per_slice:.0f}", f"{per_slice_signal_only:.0f}", f"{batched:.0f}"])
    _table(
        "Arrow read speed by signal layout (numpy format)",
        ["signal layout", "records", "rows/s ds[i]", "rows/s ds[a:a+64]['signal']", "rows/s ds[a:a+64], signal column only",
         "rows/s __getitems__(64 indices)"],
        rows,
    )


def bench_loader(dataset_dirs: dict[str, Path], quick: bool) -> None:
    import datasets
    import torch
    from ecg_hub.modeling import EcgFeatureExtractor

    from ecg_hub.data.collators import EcgCollator

    torch.set_num_threads(1)
    rows = []
    for data_name in ("ptbxl500", "synthetic"):
        ds = datasets.load_from_disk(str(dataset_dirs[data_name])).with_format("numpy")
        for preset in ("ecg_jepa", "merl"):
            extractor = EcgFeatureExtractor.from_preset(preset)
            for workers in (0, 2):
                loader = torch.utils.data.DataLoader(
                    ds, batch_size=64, shuffle=False, num_workers=workers, collate_fn=EcgCollator(extractor),
                    persistent_workers=workers > 0,
                )
                timings = []
                for _ in range(1 if quick else 2):
                    t0 = time.perf_counter()
                    count = 0
                    for batch in loader:
                        count += batch["input_values"].shape[0]
                    timings.append(count / (time.perf_counter() - t0))
                shape = tuple(batch["input_values"].shape[1:])
                rows.append([data_name, preset, str(workers), str(count), f"{timings[0]:.0f}", f"{timings[-1]:.0f}", str(shape)])
                del loader
    _table(
        "Arrow -> EcgFeatureExtractor (EcgCollator) -> DataLoader, batch 64",
        ["dataset", "preset", "workers", "ECGs/epoch", "ECG/s epoch 1", "ECG/s epoch 2", "input_values per ECG"],
        rows,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl-root", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ptbxl")
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test of the script)")
    args = parser.parse_args()
    if not (args.ptbxl_root / "ptbxl_database.csv").exists():
        print(f"PTB-XL not found at {args.ptbxl_root}; pass --ptbxl-root", file=sys.stderr)
        return 2
    print(f"CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} (other processes slow the wall-clock figures)")
    work = Path(tempfile.mkdtemp(prefix="ecg-hub-bench-"))
    try:
        outputs = bench_prepare(args.ptbxl_root, work, args.quick)
        bench_layouts(outputs["ptbxl500"], "PTB-XL 488 x (12, 5000)")
        bench_loader(outputs, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
