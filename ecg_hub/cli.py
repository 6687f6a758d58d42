"""The ``ecg-hub`` command line. Each subcommand lives in ``ecg_hub/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

# Module names under ecg_hub.commands, in the order `ecg-hub --help` lists them.
COMMAND_MODULES = [
    "quickstart",
    "data",
    "publish",
    "download",
    "convert",
    "pretrain",
    "finetune",
    "evaluate",
    "embed",
    "predict",
    "tokens",
    "tokenize",
    "text",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecg-hub",
        description="ECG foundation models on the Hugging Face stack: data, pretraining, fine-tuning, evaluation, Hub.",
    )
    from .version import __version__

    parser.add_argument("--version", action="version", version=f"ecg-hub {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"ecg_hub.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
