"""`ecg-hub quickstart`: the main job on the bundled default data, end to end on a CPU.

Synthetic 12-lead ECGs (or `--data DIR`, a dataset written by `ecg-hub data prepare`) go
through the ECG-JEPA feature extractor in a DataLoader, and a summary is printed. Then a tiny
ECG-JEPA is pretrained on the training split (recipe ecg_jepa/pretrain_tiny, --steps
optimizer steps) and scored with the ecg-hub linear probe (frozen encoder, cached features, head
selected on validation macro AUROC, test scored once) against the same architecture with random
weights; the results table is printed and the results JSON written under --out.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

#: The columns of the final table: (header, key of ecg_hub.benchmark.cell).
QUICKSTART_COLUMNS = (
    ("encoder", "model"),
    ("labels", "labels"),
    ("seeds", "seeds"),
    ("AUROC", "macro_auroc"),
    ("AUPRC", "macro_auprc"),
    ("Fmax", "fmax"),
)


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
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic records and of pretraining (default 0)"
    )
    parser.add_argument("--preset", default="ecg_jepa", help="feature-extractor preset (ecg_jepa, merl, ...)")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="records per batch, extraction and probe (default 32)"
    )
    parser.add_argument("--steps", type=int, default=300, help="ECG-JEPA pretraining optimizer steps (0: skip)")
    parser.add_argument("--labels", default=None, help="label column for the probe (default: rhythm or superclass)")
    parser.add_argument("--fractions", default="0.1,1", help="label fractions of the probe (default 0.1,1)")
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

    from ecg_hub.inference import inference_loader
    from ecg_hub.modeling import EcgFeatureExtractor

    console = Console()
    start = time.perf_counter()
    dataset, where = load_or_make_dataset(args.data, args.out, args.num_records, args.seed)
    made_s = time.perf_counter() - start
    console.print(f"[bold]dataset[/bold] {where}: {len(dataset)} records ({made_s:.1f} s)")

    feature_extractor = EcgFeatureExtractor.from_preset(args.preset)
    loader = inference_loader(dataset, feature_extractor, batch_size=args.batch_size)
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
    if args.steps > 0:
        pretrain_and_probe(args, dataset, where, console)
    return 0


def pretrain_tiny_jepa(dataset_path: str, out: Path, steps: int, seed: int) -> Path:
    """Pretrain the ``ecg_jepa/pretrain_tiny`` recipe on the train split of ``dataset_path`` for
    ``steps`` optimizer steps; returns the saved model folder (``out/model``)."""
    import shutil

    from ecg_hub.recipe import load_recipe, read_yaml, resolve_recipe_path
    from ecg_hub.training.pretrain import pretrain

    recipe = read_yaml(resolve_recipe_path("ecg_jepa/pretrain_tiny"))
    recipe["output_dir"] = str(out)
    recipe["seed"] = seed
    recipe["dataset"] = {"_component_": "datasets.load_from_disk", "dataset_path": dataset_path}
    recipe["data"]["split"] = "train"
    recipe["training"].update(max_steps=steps, checkpoint_every_steps=steps, log_every_steps=max(1, steps // 6))
    recipe["tracking"]["log_with"] = []
    # A quickstart run starts fresh: the loop refuses to mix a new run into old checkpoints.
    shutil.rmtree(out, ignore_errors=True)
    result = pretrain(load_recipe(recipe))
    return Path(result.summary["model_dir"])


def pretrain_and_probe(args: argparse.Namespace, dataset, where: str, console) -> None:
    """Pretraining -> linear probe (pretrained vs random init) -> results table and JSON."""
    from ecg_hub.benchmark import result_rows, rich_table
    from ecg_hub.evaluation.protocol import EvaluationSettings, evaluate_model

    label_column = args.labels or next((c for c in ("rhythm", "superclass") if c in dataset.column_names), None)
    if label_column is None or label_column not in dataset.column_names:
        raise ValueError(f"--labels: the dataset at {where} has no label column {label_column!r}")
    fractions = [float(f) for f in args.fractions.split(",") if f.strip()]

    console.print(f"[bold]pretraining[/bold] tiny ECG-JEPA for {args.steps} steps on the train split of {where}")
    start = time.perf_counter()
    model_dir = pretrain_tiny_jepa(where, args.out / "pretrain", args.steps, args.seed)
    pretrain_s = time.perf_counter() - start

    extraction: dict[str, float] = {}
    rows: list[dict] = []
    for init in ("random", "pretrained"):
        settings = EvaluationSettings(
            protocols=["linear-probe"], fractions=fractions, random_init=init == "random", bootstrap=0,
            batch_size=args.batch_size,
        )
        document = evaluate_model(
            str(model_dir), where, label_column, settings, output_json=args.out / f"results_{init}.json"
        )
        rows += result_rows(document, model=init, family="ecg_jepa", init=init)
        extraction[init] = document["results"][-1].get("feature_extraction_seconds", 0.0)
    # The table code of `ecg-hub benchmark` (ecg_hub.benchmark), whose leaderboard the README shows.
    console.print(
        rich_table(
            rows,
            QUICKSTART_COLUMNS,
            title=f"tiny ECG-JEPA, linear probe on {label_column}",
            caption="test split, macro averages (mean±std over seeds); head chosen on validation",
        )
    )
    console.print(
        "features extracted once per encoder: "
        + ", ".join(f"{init} {seconds:.1f} s" for init, seconds in extraction.items())
    )
    console.print(
        f"pretraining ({args.steps} steps) {pretrain_s:.0f} s -> {model_dir}; results JSON: {args.out / 'results_pretrained.json'}, "
        f"{args.out / 'results_random.json'}"
    )
