"""The command line is declared as tables (ops/parser.py); these check the tables against what
runs them and what they promise."""

from __future__ import annotations

import argparse

import pytest

from scoreserver.ops import cli, parser
from scoreserver.store import ops


def test_every_declared_command_has_a_runner_and_every_runner_a_declaration() -> None:
    assert set(parser.COMMANDS) == set(cli.COMMANDS)


def _options(args: tuple[parser.Opt | parser.OneOf, ...]) -> list[parser.Opt]:
    found: list[parser.Opt] = []
    for arg in args:
        found.extend(arg.options if isinstance(arg, parser.OneOf) else [arg])
    return found


def test_every_game_setting_is_an_option_of_games_add_and_set() -> None:
    declared = {
        o.names[0].removeprefix("--").replace("-", "_")
        for o in _options(parser.GAME_OPTIONS)
        if not o.names[0].startswith("--no-")
    }
    # Seconds on the command line are milliseconds in the store.
    in_seconds = {"duration": "duration_ms", "submission_window_s": "submission_window_ms"}
    # archived_at is set by `games archive`, not by an option.
    assert {in_seconds.get(d, d) for d in declared} == set(ops.GAME_FIELDS) - {"archived_at"}


@pytest.mark.parametrize("action", ["add", "set"])
def test_games_add_requires_a_duration_and_set_does_not(action: str) -> None:
    build = parser.build_parser()
    if action == "add":
        with pytest.raises(SystemExit):
            build.parse_args(["games", "add", "g"])
    else:
        assert build.parse_args(["games", "set", "g"]).duration is None


def test_a_group_needs_one_of_its_commands_and_one_of_clear_or_ban() -> None:
    build = parser.build_parser()
    for argv in (
        ["users"],
        ["flags", "resolve", "1", "--note", "n"],
        ["flags", "resolve", "1", "--clear", "--ban", "--note", "n"],
    ):
        with pytest.raises(SystemExit):
            build.parse_args(argv)
    args = build.parse_args(["flags", "resolve", "1", "--ban", "--days", "2", "--note", "n"])
    assert (args.command, args.action, args.flag_id, args.ban, args.days) == (
        "flags",
        "resolve",
        1,
        True,
        2.0,
    )


def test_the_webhook_default_is_read_from_the_environment_when_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(parser.WEBHOOK_ENV, "http://127.0.0.1:9/hook")
    assert parser.build_parser().parse_args(["serve"]).webhook == "http://127.0.0.1:9/hook"
    monkeypatch.delenv(parser.WEBHOOK_ENV)
    assert parser.serve_parser("run.py").parse_args([]).webhook is None


def test_serve_and_run_py_take_the_same_flags() -> None:
    def flags(p: argparse.ArgumentParser) -> set[str]:
        return {s for a in p._actions for s in a.option_strings}

    build = parser.build_parser()
    sub = next(a for a in build._actions if isinstance(a, argparse._SubParsersAction))
    serve = sub.choices["serve"]
    assert flags(serve) == flags(parser.serve_parser("run.py"))
