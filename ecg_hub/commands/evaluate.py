"""`ecg-hub evaluate MODEL_OR_DIR --dataset DIR --labels superclass --protocol linear-probe`.

Runs the ecg-hub evaluation protocol (linear probe, fine-tune and/or zero-shot; label fractions
1 %, 10 %, 100 %; seeds 42, 43, 44 below 100 %; selection on validation only; test scored once),
prints a table and writes the results JSON the Hub model cards read.

`ecg-hub evaluate --baseline features --dataset DIR --labels superclass` scores the floor a model
must beat instead: hand-crafted ECG measurements and a logistic regression, on the same splits,
label fractions, seeds and metrics (no model needed).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--fractions: expected comma-separated numbers, got {text!r}") from error
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"--fractions: each fraction must lie in (0, 1], got {text!r}")
    return values


def _seeds(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--seeds: expected comma-separated integers, got {text!r}") from error


def _key_values(items: list[str]) -> dict:
    """``key=value`` strings -> dict; values parsed as YAML 1.2 scalars, as recipe overrides are
    (``1e-3`` is a float, ``true`` a bool, ``null`` None)."""
    from ecg_hub.recipe import parse_override_value

    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--finetune-arg: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_override_value(value.strip())
    return out


#: Values of --baseline.
BASELINES = ("features",)

# Options that only mean something for a model, with their defaults: given with --baseline they
# would be silently ignored, so they are refused.
_MODEL_ONLY_OPTIONS = {
    "protocol": ("--protocol", "linear-probe"),
    "random_init": ("--random-init", False),
    "preset": ("--preset", None),
    "prompts": ("--prompts", None),
    "scoring": ("--scoring", "cosine"),
    "probe_epochs": ("--probe-epochs", 100),
    "finetune_arg": ("--finetune-arg", []),
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model with the ecg-hub protocol (linear probe / fine-tune / zero-shot) and write results JSON",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", metavar="MODEL_OR_DIR", nargs="?", default=None,
        help="checkpoint folder or Hub id (leave out with --baseline)",
    )
    parser.add_argument(
        "--baseline",
        choices=BASELINES,
        default=None,
        help="score a baseline instead of a model: 'features' = 120 hand-crafted ECG measurements (neurokit2 "
        "rate, RR variability, PR/QRS/QT, per-lead amplitudes, ST and T levels) with a logistic regression, on the "
        "same splits, fractions, seeds and metrics; features cached beside the results JSON (or in --cache-dir); "
        "writes WORK_DIR/baseline_features.json unless --out is given",
    )
    parser.add_argument("--dataset", required=True, type=Path, help="prepared dataset folder (`ecg-hub data prepare`)")
    parser.add_argument("--labels", required=True, help="label set column: superclass, subclass, form, rhythm, ...")
    parser.add_argument(
        "--protocol",
        default="linear-probe",
        help="comma-separated: linear-probe, finetune, zero-shot (default: linear-probe)",
    )
    parser.add_argument("--fractions", type=_fractions, default=[0.01, 0.1, 1.0], help="label fractions (default 0.01,0.1,1)")
    parser.add_argument("--seeds", type=_seeds, default=[42, 43, 44], help="seeds below 100%% (default 42,43,44)")
    parser.add_argument("--single-label", action="store_true", help="single-label task (records with one class; CE loss)")
    parser.add_argument("--random-init", action="store_true", help="same architecture, random weights (baseline)")
    parser.add_argument("--preset", default=None, help="feature-extractor preset instead of the checkpoint's own")
    parser.add_argument("--prompts", type=Path, default=None, help="zero-shot: JSON {class: prompt} (e.g. CKEPE)")
    parser.add_argument("--scoring", choices=("cosine", "softmax"), default="cosine", help="zero-shot scoring")
    parser.add_argument("--batch-size", type=int, default=64, help="feature-extraction batch size")
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="inference precision: auto = bf16 where the CPU/GPU runs it natively, else float32 (default auto)",
    )
    parser.add_argument("--probe-epochs", type=int, default=100, help="linear probe: maximum epochs (protocol: 100)")
    parser.add_argument(
        "--finetune-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fine-tune: TrainingArguments override, repeatable (e.g. num_train_epochs=5)",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (0: off)")
    parser.add_argument("--cache-dir", default=None, help="on-disk cache of linear-probe features")
    parser.add_argument("--work-dir", default="outputs/evaluate", help="fine-tuning checkpoints")
    parser.add_argument("--dataset-name", default=None, help="dataset name recorded in the JSON")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: WORK_DIR/results.json)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ecg_hub.evaluation.linear_probe import LinearProbeConfig
    from ecg_hub.evaluation.protocol import EvaluationSettings, evaluate_model
    from ecg_hub.evaluation.zero_shot import load_class_prompts
    from ecg_hub.results import format_results_table

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.baseline is not None:
        return _run_baseline(args)
    if args.model is None:
        raise SystemExit(
            "ecg-hub evaluate: MODEL_OR_DIR is required (a checkpoint folder or Hub id), unless --baseline "
            f"is given (one of: {', '.join(BASELINES)})"
        )
    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    prompts = None
    if args.prompts is not None:
        prompts = load_class_prompts(args.prompts)
    settings = EvaluationSettings(
        protocols=protocols,
        fractions=args.fractions,
        seeds=args.seeds,
        problem_type="single_label_classification" if args.single_label else "multi_label_classification",
        random_init=args.random_init,
        feature_extractor_preset=args.preset,
        batch_size=args.batch_size,
        probe=LinearProbeConfig(max_epochs=args.probe_epochs),
        finetune=_key_values(args.finetune_arg),
        prompts=prompts,
        zero_shot_scoring=args.scoring,
        bootstrap=args.bootstrap,
        cache_dir=args.cache_dir,
        work_dir=args.work_dir,
        dtype=args.dtype,
    )
    out = args.out or Path(args.work_dir) / "results.json"
    start = time.perf_counter()
    document = evaluate_model(
        args.model, str(args.dataset), args.labels, settings, output_json=out, dataset_name=args.dataset_name
    )
    print(format_results_table(document))
    print(f"results: {out}  ({time.perf_counter() - start:.0f} s)")
    return 0


def _run_baseline(args: argparse.Namespace) -> int:
    """`--baseline features`: the hand-crafted baseline (ecg_hub.evaluation.baseline)."""
    from ecg_hub.evaluation.baseline import evaluate_baseline
    from ecg_hub.evaluation.protocol import EvaluationSettings
    from ecg_hub.results import format_results_table

    if args.model is not None:
        raise SystemExit(
            f"ecg-hub evaluate: --baseline {args.baseline} scores hand-crafted features, not a model; "
            f"leave out MODEL_OR_DIR ({args.model!r}) or --baseline"
        )
    given = [flag for name, (flag, default) in _MODEL_ONLY_OPTIONS.items() if getattr(args, name) != default]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise SystemExit(
            f"ecg-hub evaluate: {', '.join(given)} {verb} only to a model, not to --baseline {args.baseline}"
        )
    settings = EvaluationSettings(
        fractions=args.fractions,
        seeds=args.seeds,
        problem_type="single_label_classification" if args.single_label else "multi_label_classification",
        bootstrap=args.bootstrap,
        cache_dir=args.cache_dir,
    )
    out = args.out or Path(args.work_dir) / "baseline_features.json"
    start = time.perf_counter()
    try:
        document = evaluate_baseline(
            str(args.dataset), args.labels, settings, output_json=out, dataset_name=args.dataset_name
        )
    except (ValueError, FileNotFoundError) as error:  # no dataset there, a missing label column, ...
        raise SystemExit(f"ecg-hub evaluate: {error}") from None
    print(format_results_table(document))
    section = document["results"][0]["handcrafted_features"]
    counts = section["imputed"].items()
    imputed = ", ".join(f"{name} {n['values']} in {n['records']} records" for name, n in counts)
    seconds = section["extraction_seconds"]
    took = f"extracted in {seconds:.0f} s" if seconds else "read from the cache"
    print(
        f"baseline: {section['num_features']} hand-crafted features per record, {took} (not in the rows' "
        f"times); unmeasurable values imputed with the training median: {imputed}"
    )
    print(f"results: {out}  ({time.perf_counter() - start:.0f} s)")
    return 0
