"""A CLI of one piece: every command describes itself, every option has help and a metavar and
shows its default; parameter errors are one line with exit code 2, before anything starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hyperkd.cli import build_parser, main


def _commands() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.option_strings
        and a.help != argparse.SUPPRESS
        and not isinstance(a, argparse._HelpAction | argparse._VersionAction)
    ]


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_option_has_help_a_metavar_and_its_default(name: str) -> None:
    parser = _commands()[name]
    assert parser.description, f"{name} has no description"
    text = " ".join(parser.format_help().split())
    for action in _options(parser):
        flag = action.option_strings[-1]
        assert action.help, f"{name} {flag} has no help"
        if action.nargs != 0:
            assert action.metavar or action.choices, f"{name} {flag} has no metavar"
        default = action.default
        if default not in (None, False, "", [], ()) and not isinstance(default, bool):
            shown = str(default)
            assert (
                f"default: {shown}" in text
                or f"default {shown}" in text
                or ("default" in (action.help or ""))
            ), f"{name} {flag}: default {shown!r} not shown"


def test_tiles_means_a_tile_store_everywhere() -> None:
    for name, parser in _commands().items():
        for action in _options(parser):
            if "--tiles" in action.option_strings:
                assert action.type in (None, str), f"{name} --tiles is not a URL"
                assert action.metavar == "URL", name


PIPELINE = ["pipeline", "--source", "enmap-dlr", "--region", "demo", "--out", "/tmp/never"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*PIPELINE, "--start", "2024-09-01", "--end", "2024-01-01"], "start 2024-09-01 is after end"),
        ([*PIPELINE, "--start", "2024-01-01", "--end", "2024-02-01", "--stages", "ingest,foo"],
         "stages.1: Input should be"),
        ([*PIPELINE, "--start", "2024-01-01", "--end", "2024-02-01", "--teacher", "/nope.pt"],
         "teacher: official checkpoint /nope.pt does not exist"),
        ([*PIPELINE, "--start", "2024-01-01", "--end", "2024-02-01", "--tile-size", "100"],
         "tile size 100 is not a multiple of patch size 16"),
        ([*PIPELINE, "--start", "2024-01-01", "--end", "2024-02-01", "--storage-options", "[1]"],
         "--storage-options must be a JSON object"),
        (["demo", "--steps", "0", "--out", "/tmp/never"], "--steps 0: must be at least 1"),
        (["report", "--run", "/tmp/never-a-run", "--storage-options", '{"secret": "x"}'],
         "must not hold credentials (secret)"),
        (["tiles", "--cube", "/tmp/never-a-cube", "--out", "/tmp/never"],
         "no hyperkd cube at /tmp/never-a-cube"),  # checked before any progress bar
        (["evaluate", "--checkpoint", "/tmp/x", "--out", "/tmp/never"], "evaluate needs --checkpoint and --tiles"),
    ],
)  # fmt: skip
def test_a_parameter_error_is_one_line_with_rc_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and message in err, err
    assert err.startswith(f"hyperkd {argv[0]}: error: ")
    assert captured.out == ""
    assert not Path("/tmp/never").exists()


def test_downstream_keeps_the_old_data_spelling() -> None:
    parser = _commands()["downstream"]
    old = parser.parse_args(["--checkpoint", "c", "--task", "soc", "--data", "t", "--out", "o"])
    new = parser.parse_args(["--checkpoint", "c", "--task", "soc", "--tiles", "t", "--out", "o"])
    assert old.tiles == new.tiles == "t"
    assert "--data" not in parser.format_help()
