"""`ecg-hub pretrain RECIPE [key=value ...]`: self-supervised pretraining from a YAML recipe.

RECIPE is a YAML file or a packaged recipe name (ecg_jepa/pretrain_tiny). Overrides are
key.path=value with YAML-typed values (training.max_steps=100, data.batch_size=32,
optimizer.lr=1e-4); ~key.path removes a key. One process:

    ecg-hub pretrain ecg_jepa/pretrain_tiny output_dir=runs/tiny

Several processes (DDP or FSDP, see recipes/accelerate/):

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml -m ecg_hub pretrain ecg_jepa/pretrain_base
    ACCELERATE_USE_CPU=1 accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml \\
        -m ecg_hub pretrain ecg_jepa/pretrain_tiny

Learning-health diagnostics (record-dependent variance shares, the record-mean oracle, RankMe;
a warning when a run learns positions only) with --health-every N; a quick validation linear probe
every N steps with --probe-every N (needs a dataset with labels and a validation split), and the
best-probe step as the final model with --keep-best-probe:

    ecg-hub pretrain ecg_jepa/pretrain_ptbxl_subset --health-every 25 --probe-every 50 \
        --probe-label superclass --keep-best-probe

Continue a stopped run with --resume (the newest checkpoint in the output folder whose manifest
checks out) or `--resume PATH`. A recipe may name only ecg-hub, torch.optim/torch.nn,
transformers and datasets components unless --trust-recipe is given; a checkpoint folder
without ecg-hub's manifest is refused unless --trust-checkpoint is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain a model from a YAML recipe (runs under `accelerate launch` too)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "recipe", help="recipe YAML file or packaged recipe name (e.g. ecg_jepa/pretrain_tiny)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (YAML values)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue from the newest checkpoint in output_dir (or from CHECKPOINT)",
    )
    parser.add_argument(
        "--trust-recipe",
        action="store_true",
        help="allow components outside ecg-hub/torch/transformers/datasets and trust_remote_code (only for recipes you trust)",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="resume from a checkpoint folder without an ecg-hub manifest (its optimizer and random states are pickles)",
    )
    parser.add_argument(
        "--health-every",
        type=int,
        metavar="N",
        help="measure the learning health on a fixed probe batch every N optimizer steps, before the first "
        "and at the end (recipe key diagnostics.every_steps)",
    )
    parser.add_argument(
        "--probe-every",
        type=int,
        metavar="N",
        help="run a quick linear probe on the validation split every N optimizer steps, before the first and "
        "at the end, logged as probe/val_macro_auroc (recipe key diagnostics.probe.every_steps)",
    )
    parser.add_argument(
        "--probe-records",
        type=int,
        metavar="N",
        help="records of the training split the probe head is trained on, and the most validation records it "
        "is scored on (default 256)",
    )
    parser.add_argument(
        "--probe-label",
        metavar="COLUMN",
        help="label column of the dataset the probe predicts (default: the dataset's only label column)",
    )
    parser.add_argument(
        "--keep-best-probe",
        action="store_true",
        help="make the final model folder the step with the best validation probe (the last step's weights "
        "go to model_last; needs --probe-every)",
    )
    parser.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument("--validate-only", action="store_true", help="validate the recipe and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ecg_hub.recipe import RecipeError, dump_recipe, load_recipe
    from ecg_hub.training.pretrain import PretrainRecipe, pretrain

    overrides = list(args.overrides)
    if args.resume is not None and "=" in args.resume and not Path(args.resume).exists():
        # `--resume key=value`: argparse took an override for the optional CHECKPOINT.
        overrides.append(args.resume)
        args.resume = "latest"
    if args.resume is not None:
        overrides.append(f"training.resume_from_checkpoint={args.resume}")
    for flag, key in (
        ("health_every", "diagnostics.every_steps"),
        ("probe_every", "diagnostics.probe.every_steps"),
        ("probe_records", "diagnostics.probe.records"),
        ("probe_label", "diagnostics.probe.label_column"),
    ):
        value = getattr(args, flag)
        if value is not None:  # the label as a YAML string whatever it looks like
            overrides.append(f"{key}={json.dumps(value) if flag == 'probe_label' else value}")
    if args.keep_best_probe:
        overrides.append("diagnostics.probe.keep_best=true")
    try:
        if args.trust_checkpoint:
            overrides.append("training.trust_checkpoint=true")
        recipe = load_recipe(args.recipe, overrides, schema=PretrainRecipe, trust=args.trust_recipe)
    except RecipeError as error:
        raise SystemExit(f"ecg-hub pretrain: {error}") from None
    if args.print_recipe:
        print(dump_recipe(recipe), end="")
        return 0
    if args.validate_only:
        print(f"{args.recipe}: valid pretrain recipe")
        return 0
    pretrain(recipe)
    return 0
