"""`ecg-hub download org/name`: fetch a checkpoint into the Hugging Face cache and print its folder.

Only safetensors weights are downloaded (pickled *.bin/*.pt files are skipped). After one
download, HF_HUB_OFFLINE=1 loads the checkpoint from the cache without network access.

--list prints the ecg-hub catalogue as tab-separated columns with a header row: repo_id, family,
input_preset, status, description. The status is "published" (the weights are on the Hub) or
"planned" (the repo id the project will publish under; nothing is uploaded yet). Downloading a
planned id stops with a message saying so, without asking the Hub.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: The columns of `ecg-hub download --list`, in order (the first line of its output).
LIST_COLUMNS = ("repo_id", "family", "input_preset", "status", "description")


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
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the ecg-hub catalogue with each checkpoint's status (published or planned) and exit",
    )
    parser.set_defaults(func=run)


def format_catalogue(checkpoints) -> tuple[str, str]:
    """The `--list` output: (the table for stdout, the status note for stderr).

    The table stays plain tab-separated values with a header row, so that scripts can read it
    (e.g. `pandas.read_csv(..., sep="\\t")`); the note on what "planned" means goes to stderr for
    the same reason.
    """
    rows = ["\t".join(LIST_COLUMNS)]
    for checkpoint in checkpoints:
        rows.append("\t".join((
            checkpoint.repo_id, checkpoint.family, checkpoint.input_preset or "(text)", checkpoint.status,
            checkpoint.description,
        )))
    published = sum(1 for c in checkpoints if c.status == "published")
    planned = sum(1 for c in checkpoints if c.status == "planned")
    note = f"{published} of {len(checkpoints)} checkpoints published"
    if planned:
        note += (
            f"; {planned} planned: repo ids the project will publish under, with no weights uploaded yet "
            "(`ecg-hub download` of one says so and stops)"
        )
    return "\n".join(rows), note


def planned_message(repo_id: str, checkpoints) -> str | None:
    """Why `repo_id` cannot be downloaded, if the catalogue lists it as planned; else None.

    Hub repo ids are matched without regard to case, as the Hub resolves them.
    """
    entry = next((c for c in checkpoints if c.repo_id.lower() == repo_id.lower()), None)
    if entry is None or entry.status != "planned":
        return None
    return (
        f"{repo_id} is a planned checkpoint of the ecg-hub catalogue (family {entry.family}): the project "
        "will publish it under this name, but its weights are not uploaded yet, so there is nothing to "
        "download. `ecg-hub download --list` shows the status of every checkpoint."
    )


def run(args: argparse.Namespace) -> int:
    from ecg_hub.hub import download, list_checkpoints

    if args.list:
        table, note = format_catalogue(list_checkpoints())
        print(table)
        print(note, file=sys.stderr)
        return 0
    if not args.repo_id:
        print("ecg-hub download: give a repo id (org/name) or --list", file=sys.stderr)
        return 2
    # Checked before any request: the Hub would answer a bare 404 (or, offline, a cache miss) that
    # does not say the id is known and merely not uploaded yet.
    reason = planned_message(args.repo_id, list_checkpoints())
    if reason is not None:
        print(f"ecg-hub download: {reason}", file=sys.stderr)
        return 1
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = download(args.repo_id, revision=args.revision, cache_dir=args.cache_dir)
    except (HfHubHTTPError, LocalEntryNotFoundError) as err:
        print(f"ecg-hub download: {args.repo_id}@{args.revision or 'main'}: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0
