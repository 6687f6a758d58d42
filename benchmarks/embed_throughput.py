"""``ecg-hub embed`` end to end against the model alone, and how its cost grows with the collection.

    python benchmarks/embed_throughput.py [--ptbxl ../shared/data/ptbxl] [--sizes 1000,4000,16000] [--workers 0,2]

1. **The data path is not the bottleneck**: ``embed_records`` over the PTB-XL subset's 500 Hz WFDB
   records (``--folder records500``: WFDB reading, resampling to 250 Hz, lead selection, batching),
   with 0 and 2 DataLoader workers, against the same encoder's forward pass alone on the same
   number of already-preprocessed batches. Encoder: ECG-JEPA small (384 wide, 8 blocks, CroPA;
   random weights) so that the comparison means something on a CPU; the ratio is what matters.
2. **Cost growth**: ``embed_records`` over synthetic prepared datasets of ``--sizes`` records
   (2 leads x 10 s at 250 Hz, a tiny encoder so the data path dominates), each run in a fresh
   process: ECG/s and the process's peak RSS. Flat memory and linear time are the goal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

_GROWTH_CHILD = r"""
import json, resource, sys, time
import torch
from ecg_hub.batch_inference import embed_records
from ecg_hub.modeling import EcgFeatureExtractor, EcgJepaConfig, EcgJepaModel
torch.set_num_threads(1)
dataset, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = EcgJepaModel(EcgJepaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                   lead_names=["I", "II"]))
fe = EcgFeatureExtractor.from_preset("ecg_jepa", leads=["I", "II"])
start = time.perf_counter()
result = embed_records(model, dataset=dataset, out=out, feature_extractor=fe, batch_size=64, progress=False, dtype="float32")
seconds = time.perf_counter() - start
print(json.dumps({"records": result.num_written, "seconds": seconds,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _synthetic(path: Path, records: int) -> None:
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)

    def rows(start, stop):
        return {
            "record_id": [f"syn-{i:06d}" for i in range(start, stop)],
            "signal": list((0.2 * rng.standard_normal((stop - start, 2, 2500))).astype(np.float32)),
            "sampling_rate": [250] * (stop - start),
            "leads": [["I", "II"]] * (stop - start),
        }

    features = datasets.Features(
        {
            "record_id": datasets.Value("string"),
            "signal": datasets.Array2D((2, 2500), "float32"),
            "sampling_rate": datasets.Value("int32"),
            "leads": datasets.List(datasets.Value("string")),
        }
    )
    parts = [datasets.Dataset.from_dict(rows(s, min(s + 2000, records)), features=features) for s in range(0, records, 2000)]
    datasets.concatenate_datasets(parts).save_to_disk(str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "ptbxl")
    parser.add_argument("--sizes", default="1000,4000,16000")
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    import torch
    from ecg_hub.modeling import EcgFeatureExtractor, EcgJepaConfig, EcgJepaModel

    from ecg_hub.batch_inference import embed_records

    work = Path(tempfile.mkdtemp(prefix="ecg-hub-embed-bench-"))
    torch.manual_seed(0)
    model = EcgJepaModel(EcgJepaConfig(hidden_size=384, num_hidden_layers=8, num_attention_heads=6, intermediate_size=1536)).eval()
    fe = EcgFeatureExtractor.from_preset("ecg_jepa")
    folder = args.ptbxl / "records500"
    print(f"1. embed over {folder} (WFDB 500 Hz -> 250 Hz, 8 leads), ECG-JEPA small, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads\n")
    print("| path | records | ECG/s |")
    print("|---|---|---|")
    written = None
    for workers in [int(w) for w in args.workers.split(",")]:
        out = work / f"folder_w{workers}.parquet"
        start = time.perf_counter()
        result = embed_records(model, folder=folder, out=out, feature_extractor=fe, batch_size=args.batch_size,
                               num_workers=workers, progress=False, dtype="float32")
        seconds = time.perf_counter() - start
        written = result.num_written
        print(f"| `embed --folder`, {workers} workers (reading + preprocessing + model) | {written} | {written / seconds:.1f} |", flush=True)
    batch = fe([torch.zeros(8, 2500).numpy()] * args.batch_size, sampling_rate=250, leads=fe.leads, return_tensors="pt")
    timings = []
    with torch.no_grad():
        model(**batch)  # warm-up
        for _ in range(max(1, (written or args.batch_size) // args.batch_size)):
            start = time.perf_counter()
            model(**batch)
            timings.append(time.perf_counter() - start)
    print(f"| model forward alone (same batches) | {len(timings) * args.batch_size} | {args.batch_size / statistics.median(timings):.1f} |")

    print("\n2. cost growth: embed over synthetic prepared datasets (2 leads x 10 s, tiny encoder, 1 thread), fresh process each\n")
    print("| records | seconds | ECG/s | peak RSS (MiB) |")
    print("|---|---|---|---|")
    script = work / "child.py"
    script.write_text(_GROWTH_CHILD)
    for size in [int(s) for s in args.sizes.split(",")]:
        data = work / f"synthetic_{size}"
        _synthetic(data, size)
        completed = subprocess.run([sys.executable, str(script), str(data), str(work / f"syn_{size}.parquet")],
                                   capture_output=True, text=True, check=True)
        figures = json.loads(completed.stdout.strip().splitlines()[-1])
        print(f"| {figures['records']} | {figures['seconds']:.1f} | {figures['records'] / figures['seconds']:.0f} | "
              f"{figures['peak_rss_mib']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
