"""`ecg-hub finetune RECIPE [key=value ...]`: Trainer fine-tuning from a recipe.

RECIPE is a YAML file or a packaged recipe name (finetune/ptbxl, model-agnostic:
`model.pretrained=DIR data.label_column=rhythm`); overrides use dotted keys, parsed as YAML (`training.num_train_epochs=5 data.fraction=0.1`). The best
checkpoint is chosen on validation macro AUROC; the test split is scored once, with it. The best
model and its feature extractor are saved to OUTPUT_DIR/best, the metrics to
OUTPUT_DIR/results.json (the results-JSON schema of `ecg-hub evaluate`).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a ...ForSequenceClassification model from a recipe (Trainer)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", metavar="RECIPE", help="recipe YAML file or packaged recipe name")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides (dotted keys)")
    parser.add_argument("--results", type=Path, default=None, help="results JSON (default: OUTPUT_DIR/results.json)")
    parser.add_argument("--validate-only", action="store_true", help="load and check the recipe, then stop")
    parser.add_argument(
        "--trust-recipe",
        action="store_true",
        help="allow components outside ecg-hub/torch/transformers/datasets and trust_remote_code (only for recipes you trust)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ecg_hub.recipe import dump_recipe
    from ecg_hub.results import format_results_table, load_results
    from ecg_hub.training.finetune import load_finetune_recipe, run_finetune_recipe

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ecg_hub.recipe import RecipeError

    try:
        recipe = load_finetune_recipe(args.recipe, args.overrides, trust=args.trust_recipe)
    except RecipeError as error:
        raise SystemExit(f"ecg-hub finetune: {error}") from None
    if args.validate_only:
        print(dump_recipe(recipe))
        return 0
    results = args.results or Path(recipe.output_dir) / "results.json"
    start = time.perf_counter()
    result = run_finetune_recipe(recipe, results_json=str(results))
    print(format_results_table(load_results(results)))
    print(
        f"best checkpoint: {result.best_checkpoint} (validation macro AUROC {result.val_metrics['macro_auroc']:.4f}); "
        f"saved to {Path(recipe.output_dir) / 'best'}; results: {results}  ({time.perf_counter() - start:.0f} s)"
    )
    del result  # the Trainer and its DDP wrapper, freed before the process group goes
    from ecg_hub.training.distributed import release_process_group

    release_process_group()
    return 0
