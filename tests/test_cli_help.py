"""The `ecg-hub` command line's help, for every registered command at any depth, and the catalogue
that `ecg-hub download --list` prints.

The help tests walk the parser that `ecg_hub.cli.build_parser()` builds, so a command module added to
`COMMAND_MODULES` is held to the same rules without a change here: every option says what it does,
in plain text (argparse prints docstrings and help verbatim, so reStructuredText markup such as
double backticks or :func: roles would reach the terminal as literal noise).
"""

from __future__ import annotations

import argparse
import re

import pytest

from ecg_hub import cli
from ecg_hub.commands import download as download_command
from ecg_hub.hub import HubCheckpoint, list_checkpoints

# reStructuredText that argparse would print literally: ``literal`` and Sphinx roles.
_RST = re.compile(r"``|:(?:func|class|meth|mod|data|attr|obj|exc|ref|doc):`")


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for the parser and each subparser below it, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, (*path, name))


@pytest.fixture(scope="module")
def parsers():
    found = list(_walk(cli.build_parser()))
    # Every module of COMMAND_MODULES is walked (the list is what others extend).
    assert {path[0] for path, _ in found if path} == set(cli.COMMAND_MODULES)
    return found


def _name(path: tuple[str, ...]) -> str:
    return " ".join(("ecg-hub", *path))


def test_the_walk_reaches_nested_subcommands(parsers):
    paths = {path for path, _ in parsers}
    # Sub-subcommands exist today and must be covered, not just the first level.
    assert {("data", "prepare", "ptbxl"), ("data", "prepare", "synthetic"), ("data", "show"),
            ("text", "prepare"), ("tokens", "show"), ("tokens", "report"), ("convert", "ecg-jepa")} <= paths


def test_every_option_and_subcommand_has_help(parsers):
    missing = []
    for path, parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                # The one-line summaries in the parent's command list.
                missing += [f"{_name(path)} {choice.dest}" for choice in action._choices_actions
                            if not (choice.help or "").strip()]
                continue
            # SUPPRESS hides an option on purpose (it then has no help line to show).
            if action.help is argparse.SUPPRESS:
                continue
            if not (action.help or "").strip():
                missing.append(f"{_name(path)} {'/'.join(action.option_strings) or action.dest}")
    assert missing == [], f"options without help: {missing}"


def test_help_descriptions_and_epilogs_are_plain_text(parsers):
    marked = []
    for path, parser in parsers:
        texts = {"description": parser.description, "epilog": parser.epilog}
        for action in parser._actions:
            texts[f"help of {'/'.join(action.option_strings) or action.dest}"] = action.help
            for choice in getattr(action, "_choices_actions", ()):
                texts[f"summary of {choice.dest}"] = choice.help
        for group in parser._action_groups:
            texts[f"group {group.title!r}"] = f"{group.title or ''} {group.description or ''}"
        # The rendered page as well: it is what the user reads, whatever the source of the text.
        texts["formatted help"] = parser.format_help()
        for where, text in texts.items():
            if isinstance(text, str) and _RST.search(text):
                marked.append(f"{_name(path)}: {where}: {_RST.search(text).group()!r}")
    assert marked == [], f"reStructuredText in the help: {marked}"


def test_help_of_every_command_exits_zero(parsers, capsys):
    for path, _ in parsers:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*path, "--help"])
        assert exit_info.value.code == 0, _name(path)
        out = capsys.readouterr().out
        assert out.startswith(f"usage: {_name(path)}"), (_name(path), out[:200])


def test_nested_help_says_what_the_command_does(capsys):
    # A subparser registered without a description gets its summary from the command list.
    with pytest.raises(SystemExit):
        cli.main(["data", "prepare", "synthetic", "--help"])
    out = capsys.readouterr().out
    assert "synthetic 12-lead ECGs with rhythm labels and reports" in out
    assert "--num-records NUM_RECORDS" in out and "records to generate (default 1000)" in out


# --------------------------------------------------------------------------------------------
# `ecg-hub download --list` and planned checkpoints
# --------------------------------------------------------------------------------------------


def test_download_list_prints_every_checkpoint_with_its_status(capsys):
    catalogue = list_checkpoints()
    assert cli.main(["download", "--list"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "repo_id\tfamily\tinput_preset\tstatus\tdescription"
    rows = [line.split("\t") for line in lines[1:]]
    assert [row[0] for row in rows] == [c.repo_id for c in catalogue]
    assert {row[0]: row[3] for row in rows} == {c.repo_id: c.status for c in catalogue}
    # Nothing of ECG2TOK is uploaded: the list must not present it as available.
    status = {row[0]: row[3] for row in rows}
    assert status["ecg-hub/ecg2tok-tokenizer-base"] == status["ecg-hub/ecg2tok-base"] == "planned"
    published = sum(c.status == "published" for c in catalogue)
    planned = sum(c.status == "planned" for c in catalogue)
    assert captured.err.startswith(
        f"{published} of {len(catalogue)} checkpoints published; {planned} planned: "
    )
    assert "no weights uploaded yet" in captured.err


def _entry(repo_id: str, status: str) -> HubCheckpoint:
    return HubCheckpoint(repo_id, "ecg_jepa", "ecg_jepa", "EcgJepaModel", "a test entry", status)


def test_format_catalogue_counts_published_and_planned():
    table, note = download_command.format_catalogue(
        [_entry("ecg-hub/up", "published"), _entry("ecg-hub/later", "planned")]
    )
    assert table.splitlines()[1:] == [
        "ecg-hub/up\tecg_jepa\tecg_jepa\tpublished\ta test entry",
        "ecg-hub/later\tecg_jepa\tecg_jepa\tplanned\ta test entry",
    ]
    assert note.startswith("1 of 2 checkpoints published; 1 planned: ")
    # With nothing planned there is nothing to explain.
    only_published = download_command.format_catalogue([_entry("ecg-hub/up", "published")])
    assert only_published[1] == "1 of 1 checkpoints published"


def test_download_of_a_planned_checkpoint_says_so_without_asking_the_hub(monkeypatch, capsys):
    import ecg_hub.hub

    def no_request(*args, **kwargs):
        raise AssertionError("a planned checkpoint must not be requested from the Hub")

    monkeypatch.setattr(ecg_hub.hub, "download", no_request)
    # The Hub resolves repo ids without regard to case; so does the check.
    assert cli.main(["download", "ecg-hub/ECG2TOK-base"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "ecg-hub download: ecg-hub/ECG2TOK-base is a planned checkpoint of the ecg-hub catalogue"
    )
    assert "(family ecg2tok)" in err and "not uploaded yet" in err and "ecg-hub download --list" in err


def test_download_of_published_and_unlisted_ids_goes_to_the_hub(monkeypatch, capsys):
    import ecg_hub.hub

    requested = []

    def fake_download(repo_id, revision=None, cache_dir=None):
        requested.append((repo_id, revision))
        return f"/cache/{repo_id}"

    monkeypatch.setattr(ecg_hub.hub, "download", fake_download)
    catalogue = [_entry("ecg-hub/up", "published")]
    monkeypatch.setattr(ecg_hub.hub, "list_checkpoints", lambda family=None: catalogue)
    assert cli.main(["download", "ecg-hub/up", "--revision", "v1"]) == 0
    assert cli.main(["download", "my-org/own-model"]) == 0
    assert requested == [("ecg-hub/up", "v1"), ("my-org/own-model", None)]
    assert capsys.readouterr().out.splitlines() == ["/cache/ecg-hub/up", "/cache/my-org/own-model"]
