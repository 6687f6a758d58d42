"""``ecg-hub quickstart``: the main job on the bundled default data, end to end on a CPU.

Synthetic 12-lead ECGs (or ``--data DIR``, a dataset written by ``ecg-hub data prepare``) go
through the ECG-JEPA feature extractor in a DataLoader, and a summary is printed.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="run the main job on synthetic data (or --data DIR) and print a summary",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=None, help="a dataset folder from `ecg-hub data prepare`")
    parser.add_argument("--out", type=Path, default=Path("outputs/quickstart"), help="output folder")
    parser.add_argument("--num-records", type=int, default=200, help="synthetic records to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="ecg_jepa", help="feature-extractor preset (ecg_jepa, merl, ...)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.set_defaults(func=run)


def load_or_make_dataset(data: Path | None, out: Path, num_records: int, seed: int):
    """The dataset the quickstart runs on: ``data`` if given, else synthetic records saved under ``out``."""
    import datasets

    from ecg_hub.data.synthetic import make_synthetic_dataset

    if data is not None:
        return datasets.load_from_disk(str(data)), str(data)
    path = out / "synthetic"
    if (path / "dataset_info.json").is_file():
        dataset = datasets.load_from_disk(str(path))
        if len(dataset) == num_records:
            return dataset, str(path)
    dataset = make_synthetic_dataset(num_records=num_records, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_to_disk(str(path))
    return datasets.load_from_disk(str(path)), str(path)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from rich.console import Console
    from rich.table import Table

    from ecg_hub.data.collators import EcgCollator
    from ecg_hub.modeling import EcgFeatureExtractor

    console = Console()
    start = time.perf_counter()
    dataset, where = load_or_make_dataset(args.data, args.out, args.num_records, args.seed)
    made_s = time.perf_counter() - start
    console.print(f"[bold]dataset[/bold] {where}: {len(dataset)} records ({made_s:.1f} s)")

    feature_extractor = EcgFeatureExtractor.from_preset(args.preset)
    loader = torch.utils.data.DataLoader(
        dataset.with_format("numpy"), batch_size=args.batch_size, collate_fn=EcgCollator(feature_extractor)
    )
    start = time.perf_counter()
    count, lead_present, amplitude = 0, 0.0, []
    for batch in loader:
        x = batch["input_values"]
        count += x.shape[0]
        lead_present += float(batch["lead_mask"].float().sum())
        amplitude.append(x.abs().amax(dim=-1).flatten())
    seconds = time.perf_counter() - start
    amplitude = torch.cat(amplitude).numpy()

    table = Table(title="ecg-hub quickstart")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("records", str(count))
    table.add_row("source sampling rates (Hz)", ", ".join(str(r) for r in sorted(set(dataset["sampling_rate"]))))
    table.add_row(f"model input ({args.preset})", f"{feature_extractor.num_leads} leads x {feature_extractor.num_samples} samples "
                  f"at {feature_extractor.sampling_rate} Hz")
    table.add_row("leads", " ".join(feature_extractor.leads))
    table.add_row("leads present", f"{lead_present / (count * feature_extractor.num_leads):.1%}")
    table.add_row("peak |amplitude| per lead, median (mV)", f"{np.median(amplitude):.2f}")
    table.add_row("feature extraction (ECG/s)", f"{count / seconds:,.0f}")
    for column in ("rhythm", "superclass"):
        if column in dataset.column_names:
            names = dataset.features[column].feature.names
            counts = Counter(names[i] for row in dataset[column] for i in row)
            table.add_row(f"{column} labels", ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    console.print(table)
    return 0
