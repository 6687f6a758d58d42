"""The ``ecg-hub`` command line. Each subcommand lives in ``ecg_hub/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import shutil
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
    "benchmark",
    "embed",
    "predict",
    "explain",
    "demo",
    "export",
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
    _use_help_formatter(parser)
    return parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The formatter of every ``ecg-hub`` parser.

    Descriptions keep their line layout (they are module docstrings holding indented example command
    lines, which argparse's default reflowing would run together); option help is wrapped. Option
    names get a wider column than argparse's 24 characters, so that flags with a metavar such as
    --split-fractions SPLIT_FRACTIONS keep their help on the same line more often, and lines stop
    at 110 characters even on a wide terminal, where long lines are hard to read.
    """

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 30, width: int | None = None
    ):
        if width is None:
            width = min(shutil.get_terminal_size().columns - 2, 110)
        super().__init__(
            prog, indent_increment=indent_increment, max_help_position=max_help_position, width=width
        )


def _use_help_formatter(parser: argparse.ArgumentParser, summary: str | None = None) -> None:
    """Give ``parser`` and all its subparsers, at any depth, `HelpFormatter`; a subparser without a
    description gets its one-line summary from the parent's command list, so that its own --help
    says what it does. Done here, after registration, so that each command module need not
    repeat it (a module that chose another formatter keeps it)."""
    if parser.formatter_class in (argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
        parser.formatter_class = HelpFormatter
    if parser.description is None and summary:
        parser.description = summary
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                _use_help_formatter(child, summaries.get(name))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
