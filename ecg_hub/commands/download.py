"""``ecg-hub download org/name``: fetch a checkpoint into the Hugging Face cache and print its folder.

Only safetensors weights are downloaded (pickled ``*.bin``/``*.pt`` files are skipped). After one
download, ``HF_HUB_OFFLINE=1`` loads the checkpoint from the cache without network access.
``--list`` prints the catalogue (repo id, family, input preset, status, description): ``planned``
names are not uploaded yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download a checkpoint into the Hugging Face cache and print its local folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("repo_id", nargs="?", help="Hub repo id, org/name")
    parser.add_argument("--revision", default=None, help="branch, tag or commit id (default: main)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default: $HF_HOME/hub)")
    parser.add_argument("--list", action="store_true", help="list the checkpoints ecg-hub publishes and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ecg_hub.hub import download, list_pretrained_checkpoints

    if args.list:
        for checkpoint in list_pretrained_checkpoints():
            print(
                f"{checkpoint.repo_id}\t{checkpoint.family}\t{checkpoint.input_preset or '(text)'}\t{checkpoint.status}\t"
                f"{checkpoint.description}"
            )
        return 0
    if not args.repo_id:
        print("ecg-hub download: give a repo id (org/name) or --list", file=sys.stderr)
        return 2
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = download(args.repo_id, revision=args.revision, cache_dir=args.cache_dir)
    except (HfHubHTTPError, LocalEntryNotFoundError) as err:
        print(f"ecg-hub download: {args.repo_id}@{args.revision or 'main'}: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0
