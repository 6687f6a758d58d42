"""`ecg-hub publish DIR --repo-id org/name`: push a checkpoint folder to the Hugging Face Hub.

One commit carries the safetensors weights, the config, the feature extractor or processor config,
the model code as remote code (auto_map + the modeling/ files + requirements.txt) and a
model card rendered from model_cards/<family>.md. Evaluation numbers in the card come from the
results JSON written by `ecg-hub evaluate` (--results), never from the command line.

If anything fails, nothing is committed: the remote branch stays as it was, and the error says which
step failed. The Hub endpoint is HF_ENDPOINT (default https://huggingface.co); the token is the
one saved by `hf auth login` or HF_TOKEN.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="push a checkpoint folder (weights, preprocessing, remote code, model card) to the Hub in one commit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path, help="a save_pretrained folder of an ecg-hub model")
    parser.add_argument("--repo-id", required=True, help="Hub repo id, org/name")
    parser.add_argument(
        "--private", action="store_true", help="create the repo private (if it does not exist)"
    )
    parser.add_argument("--revision", default=None, help="branch to commit to (created from main if missing)")
    parser.add_argument(
        "--results", type=Path, default=None, help="results JSON written by `ecg-hub evaluate`"
    )
    parser.add_argument(
        "--recipe",
        type=Path,
        default=None,
        help="training recipe YAML (default: DIR/recipe.yaml, DIR/../recipe.yaml)",
    )
    parser.add_argument(
        "--license", default="apache-2.0", help="Hub licence id of the weights (default apache-2.0)"
    )
    parser.add_argument("--base-model", default=None, help="repo id this checkpoint was fine-tuned from")
    parser.add_argument("--message", default=None, help="commit message")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ecg_hub.hub import PublishError, publish

    try:
        commit = publish(
            args.dir,
            args.repo_id,
            results=args.results,
            recipe=args.recipe,
            private=args.private,
            revision=args.revision,
            commit_message=args.message,
            license=args.license,
            base_model=args.base_model,
        )
    except (ValueError, PublishError) as err:
        print(f"ecg-hub publish: {err}", file=sys.stderr)
        return 1
    print(f"published {args.dir} to {args.repo_id}@{args.revision or 'main'}")
    print(f"commit: {commit.oid}")
    print(f"url: {commit.commit_url}")
    return 0
