"""`ecg-hub benchmark --suite ptbxl-subset`: every model family side by side, in one command.

Prepares the suite's data, pretrains each family with its suite recipe (or takes --checkpoint
FAMILY=PATH), and scores each pretrained model, its random-init twin and the hand-crafted-features
baseline under the ecg-hub evaluation protocol: linear probe and fine-tune at 1, 10 and 100 %
labels, zero-shot for the text-aligned families. Writes OUT/leaderboard.md, leaderboard.json,
leaderboard.png (macro AUROC with 95 % bootstrap intervals, one group per protocol and label
fraction) and roc_MODEL.png (per-class test ROC curves).

    ecg-hub benchmark --suite ptbxl-subset
    ecg-hub benchmark --suite ptbxl-subset --families ecg_jepa,etp --protocols linear-probe
    ecg-hub benchmark --suite ptbxl-subset --checkpoint ecg_jepa=runs/ecg_jepa_ptbxl_subset/model
    ecg-hub benchmark --suite synthetic --steps 5          # the quickstart's synthetic data, seconds

Suites: ptbxl-subset (PTB-XL in ../shared/data/ptbxl prepared into outputs/data/ptbxl_100hz,
folds 1-8 / 9 / 10; recipes/FAMILY/pretrain_ptbxl_subset.yaml; superclass labels) and synthetic
(the quickstart's synthetic records; the tiny recipes, 10 steps; rhythm labels; 100 % labels,
fine-tune for 1 epoch). Families come from the model registry; one without the suite's recipe is
skipped with the reason printed.

Every stage (data, pretrain:FAMILY, evaluate:FAMILY:pretrained, evaluate:FAMILY:random-init,
evaluate:baseline) is cached under OUT/stages/ with a manifest of its inputs (resolved recipe and
overrides, checkpoint contents, dataset fingerprint, protocol settings): a rerun prints "cached"
for the stages whose inputs are unchanged and recomputes only the others; --force STAGE (or a
prefix such as pretrain, or all) recomputes on purpose. An interrupted pretraining resumes from its
last checkpoint.
"""

from __future__ import annotations

import argparse
import logging

from .evaluate import _fractions, _key_values, _seeds


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def register(subparsers) -> None:
    from ecg_hub.benchmark import SUITES

    parser = subparsers.add_parser(
        "benchmark",
        help="pretrain and score every model family, its random-init twin and the features baseline; write a leaderboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--suite", required=True, choices=sorted(SUITES), help="what to run: ptbxl-subset or synthetic")
    parser.add_argument(
        "--families", type=_names, default=None, metavar="F1,F2",
        help="comma-separated model families (default: every ECG family of the registry with the suite's recipe)",
    )
    parser.add_argument(
        "--checkpoint", action="append", default=[], metavar="FAMILY=PATH",
        help="evaluate this checkpoint folder or Hub id for FAMILY instead of pretraining it (repeatable)",
    )
    parser.add_argument("--out", default=None, help="output folder (default outputs/benchmark/SUITE)")
    parser.add_argument(
        "--force", action="append", default=[], metavar="STAGE",
        help="recompute a stage even if cached: a stage id (pretrain:ecg_jepa, evaluate:baseline, data), "
        "a prefix (pretrain, evaluate:etp) or all (repeatable)",
    )
    parser.add_argument(
        "--protocols", type=_names, default=None, metavar="P1,P2",
        help="comma-separated: linear-probe, finetune, zero-shot (default: all three, each where the family supports it)",
    )
    parser.add_argument("--fractions", type=_fractions, default=None, help="label fractions (default: the suite's; ptbxl-subset 0.01,0.1,1)")
    parser.add_argument("--seeds", type=_seeds, default=[42, 43, 44], help="seeds below 100%% labels (default 42,43,44)")
    parser.add_argument(
        "--bootstrap", type=int, default=None,
        help="bootstrap resamples of the 95%% intervals (default: the suite's; ptbxl-subset 1000, synthetic 200)",
    )
    parser.add_argument("--labels", default=None, help="label set column (default: superclass for ptbxl-subset, rhythm for synthetic)")
    parser.add_argument("--probe-epochs", type=int, default=100, help="linear probe: maximum epochs (protocol: 100)")
    parser.add_argument(
        "--finetune-arg", action="append", default=[], metavar="KEY=VALUE",
        help="fine-tune protocol: TrainingArguments override, repeatable (e.g. num_train_epochs=5)",
    )
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps of every pretraining run (default: the recipe's; synthetic 10)")
    parser.add_argument(
        "--pretrain-arg", action="append", default=[], metavar="[FAMILY:]KEY=VALUE",
        help="recipe override for every family's pretraining, or for one family's with FAMILY: (repeatable)",
    )
    parser.add_argument("--data", default=None, help="a prepared dataset folder to use instead of the suite's")
    parser.add_argument(
        "--data-root", default="../shared/data/ptbxl",
        help="ptbxl-subset: the PTB-XL folder the dataset is prepared from (default ../shared/data/ptbxl); its "
        "sibling prompts/CKEPE_prompt.json holds the zero-shot prompts",
    )
    parser.add_argument("--num-records", type=int, default=200, help="synthetic: records to generate (default 200, as the quickstart)")
    parser.add_argument("--prompts", default=None, help="zero-shot: JSON file of class prompts (default: the suite's)")
    parser.add_argument("--batch-size", type=int, default=64, help="feature-extraction batch size")
    parser.add_argument(
        "--dtype", choices=("auto", "float32", "bfloat16"), default="float32",
        help="inference precision (default float32, so that numbers compare across machines)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="leave out the hand-crafted-features baseline")
    parser.add_argument("--no-random-init", action="store_true", help="leave out the random-init twins")
    parser.set_defaults(func=run)


def _checkpoints(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        family, sep, path = item.partition("=")
        if not sep or not family.strip() or not path.strip():
            raise SystemExit(f"ecg-hub benchmark: --checkpoint: expected FAMILY=PATH, got {item!r}")
        out[family.strip()] = path.strip()
    return out


def run(args: argparse.Namespace) -> int:
    from ecg_hub.benchmark import LEADERBOARD_COLUMNS, BenchmarkOptions, markdown_table, run_benchmark

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        finetune = _key_values(args.finetune_arg)
    except ValueError as error:
        raise SystemExit(f"ecg-hub benchmark: {error}") from None
    options = BenchmarkOptions(
        suite=args.suite,
        out_dir=args.out,
        families=args.families,
        checkpoints=_checkpoints(args.checkpoint),
        force=args.force,
        protocols=args.protocols,
        fractions=args.fractions,
        seeds=args.seeds,
        bootstrap=args.bootstrap,
        label_column=args.labels,
        probe_epochs=args.probe_epochs,
        finetune=finetune,
        steps=args.steps,
        pretrain_overrides=args.pretrain_arg,
        data=args.data,
        data_root=args.data_root,
        num_records=args.num_records,
        prompts=args.prompts,
        batch_size=args.batch_size,
        dtype=args.dtype,
        baseline=not args.no_baseline,
        random_init=not args.no_random_init,
    )
    try:
        document = run_benchmark(options)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"ecg-hub benchmark: {error}") from None
    out = document["out_dir"]
    print(f"\necg-hub benchmark {args.suite}: {document['dataset']['label_column']}, test split")
    print(markdown_table(document["rows"], LEADERBOARD_COLUMNS))
    failed = [s["stage"] for s in document["stages"] if s["status"] == "failed"]
    ran = sum(s["status"] == "ran" for s in document["stages"])
    cached = sum(s["status"] == "cached" for s in document["stages"])
    print(f"{ran} stage(s) ran, {cached} cached, {len(failed)} failed; {document['wall_seconds']:.0f} s")
    print(f"leaderboard: {out}/leaderboard.md, {out}/leaderboard.json, {out}/leaderboard.png")
    if failed:
        print(f"failed: {', '.join(failed)} (rerun to retry; cached stages are kept)")
        return 1
    return 0
