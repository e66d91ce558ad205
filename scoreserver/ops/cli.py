"""The `scoreserver` command: serve, and the operator's commands on the database.

Every command takes `--db PATH`. Commands that change something an admin decides (flags,
bans, hidden scores, game settings, keys, the admin password) are recorded in the audit
table with the OS user who ran them and the command line's note.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import re
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from rich import box
from rich.console import Console
from rich.table import Table

from scoreserver import store as db
from scoreserver.core.rules import GameSettings
from scoreserver.errors import (
    ConflictError,
    NotFoundError,
    PortTakenError,
    ScoreServerError,
    StoreError,
)
from scoreserver.server import moderation
from scoreserver.server.service import PasswordPolicy, validate_credentials
from scoreserver.server.signer import SIGNER_MODES

DEFAULT_DB = Path("scoreserver.db")
DEFAULT_KEY = Path("scoreserver.key")
NOTE_HELP = "why: every decision is audited with its note (required)"


def now_ms() -> int:
    return int(time.time() * 1000)


def fmt_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (containers)
        return f"uid {os.getuid()}"


class CliError(Exception):
    """A command that cannot be carried out; printed without a traceback, exit 1."""


# --- argument parsing -----------------------------------------------------------------------


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for a LAN)"
    )
    parser.add_argument("--ws-port", type=int, default=8765, help="game socket port (0: any)")
    parser.add_argument("--http-port", type=int, default=8080, help="HTTP port (0: any)")
    parser.add_argument("--key", type=Path, default=DEFAULT_KEY, help="signing key file")
    parser.add_argument(
        "--max-msg-rate",
        type=float,
        default=60.0,
        help="messages per second per connection (0: no limit)",
    )
    parser.add_argument(
        "--max-conns-per-addr",
        type=int,
        default=256,
        help="connections per client address (0: no limit)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin allowed besides same-host ones (repeatable; '*' for any)",
    )
    parser.add_argument("--tls-cert", type=Path, help="serve both ports over TLS with this cert")
    parser.add_argument("--tls-key", type=Path, help="the TLS certificate's private key")
    parser.add_argument(
        "--signer",
        choices=SIGNER_MODES,
        default="auto",
        help="where point tokens are signed: a child process on another core, the event loop, "
        "or auto (the process when more than one core is available)",
    )
    parser.add_argument(
        "--store-writer",
        choices=db.STORE_WRITERS,
        default="process",
        help="where the database writes run: a child process (default) or a thread",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics at /metrics on this port (default: off; 0: any free)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="the address /metrics listens on (keep it private: it is not for players)",
    )


def _game_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--duration", type=float, required=required, help="seconds (fractions allowed)"
    )
    defaults = GameSettings(duration_ms=1)
    parser.add_argument(
        "--burst-window-ms",
        type=int,
        help=f"the window bursts are counted in (default {defaults.burst_window_ms})",
    )
    parser.add_argument(
        "--burst-threshold",
        type=int,
        help=f"most points accepted in any burst window (default {defaults.burst_threshold})",
    )
    parser.add_argument(
        "--burst-limit",
        type=int,
        help=f"bursts allowed in a burst period; one more ends the game and flags it"
        f" (default {defaults.burst_limit})",
    )
    parser.add_argument(
        "--burst-period-ms",
        type=int,
        help=f"the period bursts are counted in (default {defaults.burst_period_ms})",
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        help=f"how far a point's time may be from where the player's clock puts it"
        f" (default {defaults.latency_ms})",
    )
    parser.add_argument(
        "--submission-window-s",
        type=float,
        help=f"how long after its end a game may be submitted"
        f" (default {defaults.submission_window_ms // 1000})",
    )
    parser.add_argument(
        "--human-floor-ms",
        type=int,
        help="points repeatedly closer than this are flagged inhuman_timing (default 60; 0: off)",
    )
    parser.add_argument(
        "--min-rhythm-cv",
        type=float,
        help="intervals more regular than this coefficient of variation are flagged"
        " robotic_rhythm (default 0.07; 0: off)",
    )
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument(
        "--max-score",
        type=int,
        help="a result above N is refused as implausible_score and flagged (default: none)",
    )
    bound.add_argument(
        "--no-max-score", action="store_true", help="remove the game's --max-score bound"
    )
    parser.add_argument(
        "--hold-outliers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="hold a score far above the game's population off boards until reviewed"
        " (default: flag it for review and still show it)",
    )
    parser.add_argument("--title", help="a display name for pages (default: the game id)")


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none or says it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, [], argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: {default})"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults; subcommands are made of the same kind."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)


def _common() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--db", type=Path, default=DEFAULT_DB, help="the database file")
    return common


def serve_parser(prog: str) -> argparse.ArgumentParser:
    """The parser of `python run.py`: serve's flags under the name it was started by."""
    parser = Parser(
        prog=prog,
        parents=[_common()],
        description="Run scoreserver: the game socket, HTTP, and its helper processes.",
    )
    _add_serve_flags(parser)
    parser.set_defaults(command="serve")
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = Parser(prog="scoreserver", description="Server-authoritative scores for web games.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the server")
    _add_serve_flags(serve)

    users = sub.add_parser("users", help="accounts").add_subparsers(dest="action", required=True)
    add = users.add_parser("add", parents=[common], help="create an account")
    add.add_argument("name", help="the player's name")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (default: ask for it on the terminal)",
    )
    users.add_parser("list", parents=[common], help="list accounts")
    ban = users.add_parser("ban", parents=[common], help="ban an account")
    ban.add_argument("name", help="the player's name")
    ban.add_argument("--days", type=float, help="ban length (default: until unbanned)")
    ban.add_argument("--note", required=True, help=NOTE_HELP)
    unban = users.add_parser("unban", parents=[common], help="lift a ban")
    unban.add_argument("name", help="the player's name")
    unban.add_argument("--note", required=True, help=NOTE_HELP)
    delete = users.add_parser(
        "delete", parents=[common], help="erase an account's personal data (results are kept)"
    )
    delete.add_argument("name", help="the player's name")
    delete.add_argument("--note", required=True, help=NOTE_HELP)

    games = sub.add_parser("games", help="games and their rules").add_subparsers(
        dest="action", required=True
    )
    gadd = games.add_parser("add", parents=[common], help="create a game")
    gadd.add_argument("game_id", help="the new game's id (in URLs: /board/GAME_ID)")
    _game_options(gadd, required=True)
    gset = games.add_parser("set", parents=[common], help="change a game's rules")
    gset.add_argument("game_id", help="the game to change")
    _game_options(gset, required=False)
    games.add_parser("list", parents=[common], help="list games")
    gshow = games.add_parser("show", parents=[common], help="show a game's rules")
    gshow.add_argument("game_id", nargs="?", help="one game (default: all)")

    flags = sub.add_parser("flags", help="accounts flagged for review").add_subparsers(
        dest="action", required=True
    )
    flist = flags.add_parser("list", parents=[common], help="list flags")
    flist.add_argument("--open", action="store_true", help="only open flags")
    flist.add_argument("--game", help="only this game's flags")
    flist.add_argument("--user", help="only this player's flags")
    flist.add_argument("--json", action="store_true", help="print JSON, for scripts")
    fshow = flags.add_parser("show", parents=[common], help="a flag with its evidence")
    fshow.add_argument("flag_id", type=int, help="the flag's number (flags list)")
    fshow.add_argument("--json", action="store_true", help="print JSON, for scripts")
    fres = flags.add_parser("resolve", parents=[common], help="decide a flag")
    fres.add_argument("flag_id", type=int, help="the flag's number (flags list)")
    how = fres.add_mutually_exclusive_group(required=True)
    how.add_argument("--clear", action="store_true", help="no cheating: restore the scores")
    how.add_argument("--ban", action="store_true", help="cheating: ban the account")
    fres.add_argument("--days", type=float, help="with --ban: its length (default: until unbanned)")
    fres.add_argument("--note", required=True, help=NOTE_HELP)

    scores = sub.add_parser("scores", help="single scores").add_subparsers(
        dest="action", required=True
    )
    for name, text in (("hide", "hide a session's score"), ("restore", "show it again")):
        p = scores.add_parser(name, parents=[common], help=text)
        p.add_argument("session_id", help="the session (or an unambiguous prefix of its id)")
        p.add_argument("--note", required=True, help=NOTE_HELP)

    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="action", required=True)
    keys.add_parser("list", parents=[common], help="list signing keys")
    rot = keys.add_parser("rotate", parents=[common], help="make a new signing key")
    rot.add_argument("--key", type=Path, default=DEFAULT_KEY, help="the server's key file")

    sub.add_parser("audit", parents=[common], help="the admin actions taken")
    ex = sub.add_parser("export", parents=[common], help="a game's board and results, for records")
    ex.add_argument("game_id", help="the game")
    ex.add_argument("--format", choices=["csv", "json"], default="csv", help="the output's format")
    ex.add_argument(
        "--window", choices=["day", "week", "all"], default="all", help="which results, by age"
    )
    ex.add_argument(
        "--results",
        action="store_true",
        help="CSV: every result with its session id, instead of the board as shown (JSON has both)",
    )
    bk = sub.add_parser("backup", parents=[common], help="a consistent copy of the live database")
    bk.add_argument("file", type=Path, help="the new file to write (it must not exist)")

    board = sub.add_parser("leaderboard", parents=[common], help="a game's leaderboard")
    board.add_argument("game_id", help="the game")
    board.add_argument("--limit", type=int, default=10, help="how many places")
    board.add_argument("--json", action="store_true", help="print JSON, for scripts")

    admin = sub.add_parser("admin", help="the admin page").add_subparsers(
        dest="action", required=True
    )
    setpw = admin.add_parser("set-password", parents=[common], help="set the /admin password")
    setpw.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (default: ask on the terminal)",
    )
    return parser


# --- commands -------------------------------------------------------------------------------


def _open(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise CliError(f"no database at {path} (start the server once, or pass --db)")
    return db.open_database(path)


def _open_or_create(path: Path) -> sqlite3.Connection:
    return db.open_database(path)


def _audit(conn: sqlite3.Connection, command: str, target: str | None, note: str | None) -> None:
    db.insert_audit(conn, str(CLI_ACTOR()), command, target, note, now_ms())


def CLI_ACTOR() -> moderation.Actor:  # noqa: N802 - reads as the constant it nearly is
    return moderation.Actor(actor(), "cli")


def _read_password(from_stdin: bool) -> str:
    """The password from standard input (--password-stdin), or asked for twice on a terminal."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CliError("no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise CliError("no terminal to ask for the password on: pipe it in with --password-stdin")
    try:
        password = getpass.getpass("password: ")
        again = getpass.getpass("again: ")
    except EOFError:
        raise CliError("no password given") from None
    if again != password:
        raise CliError("the passwords differ")
    return password


def cmd_serve(args: argparse.Namespace) -> int:
    from scoreserver.server.app import Config, serve
    from scoreserver.server.ws import Limits

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliError("--tls-cert and --tls-key go together")
    config = Config(
        host=args.host,
        ws_port=args.ws_port,
        http_port=args.http_port,
        db_path=args.db,
        key_path=args.key,
        limits=Limits(
            max_msg_rate=args.max_msg_rate,
            max_conns_per_addr=args.max_conns_per_addr,
            allowed_origins=tuple(args.allow_origin),
        ),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        signer=args.signer,
        store_writer=args.store_writer,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )
    try:
        trio.run(serve, config)
    except* PortTakenError as group:
        raise CliError(str(_leaf(group))) from None
    return 0


def _leaf(error: BaseException) -> BaseException:
    """The first error inside nested exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def cmd_users(args: argparse.Namespace) -> int:
    if args.action == "add":
        password = _read_password(args.password_stdin)
        try:
            name, password = validate_credentials(args.name, password)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        encoded = PasswordPolicy().hash(password)
        conn = _open_or_create(args.db)
        with db.transaction(conn):
            user_id = db.insert_user(conn, name, encoded, now_ms())
        print(f"user {name} created (id {user_id})")
    elif args.action == "list":
        conn = _open(args.db)
        now = now_ms()
        rows = db.list_users(conn)
        _table(
            ["id", "name", "created", "scores", "open flags", "banned until"],
            [
                [
                    r["id"],
                    r["name"],
                    fmt_time(r["created_at"]),
                    r["scores"],
                    r["open_flags"],
                    _ban_text(r["banned_until"], now),
                ]
                for r in rows
            ],
        )
    elif args.action == "ban":
        conn = _open(args.db)
        until = moderation.ban_user(
            conn, args.name, actor=CLI_ACTOR(), days=args.days, note=args.note
        )
        print(f"{args.name} banned {_ban_text(until, now_ms())}")
    elif args.action == "delete":
        conn = _open(args.db)
        user_id = moderation.delete_user(conn, args.name, actor=CLI_ACTOR(), note=args.note)
        print(
            f"{args.name}'s personal data erased; their results stay as"
            f" {db.DELETED_NAME.format(id=user_id)!r}"
        )
    elif args.action == "unban":
        conn = _open(args.db)
        moderation.unban_user(conn, args.name, actor=CLI_ACTOR(), note=args.note)
        print(f"{args.name} unbanned")
    return 0


def _ban_text(until: int | None, now: int) -> str:
    if until is None or until <= now:
        return "-"
    return "until unbanned" if until >= db.FOREVER else f"until {fmt_time(until)}"


def _game_changes(args: argparse.Namespace) -> dict[str, object]:
    changes: dict[str, object] = {}
    if args.duration is not None:
        changes["duration_ms"] = round(args.duration * 1000)
    for name in (
        "burst_window_ms",
        "burst_threshold",
        "burst_limit",
        "burst_period_ms",
        "latency_ms",
        "human_floor_ms",
        "min_rhythm_cv",
        "max_score",
        "hold_outliers",
        "title",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.no_max_score:
        changes["max_score"] = None
    if args.submission_window_s is not None:
        changes["submission_window_ms"] = round(args.submission_window_s * 1000)
    return changes


def cmd_games(args: argparse.Namespace) -> int:
    if args.action == "add":
        conn = _open_or_create(args.db)
        settings = GameSettings(**_game_changes(args))  # type: ignore[arg-type]
        moderation.add_game(conn, args.game_id, settings, actor=CLI_ACTOR())
        print(f"game {args.game_id} created; a running server picks it up within seconds")
        _print_game(args.game_id, settings)
    elif args.action == "set":
        conn = _open(args.db)
        changes = _game_changes(args)
        if not changes:
            raise CliError("nothing to change: give at least one option")
        settings = moderation.set_game(conn, args.game_id, changes, actor=CLI_ACTOR())
        print(f"game {args.game_id} changed; new sessions use it (running ones keep theirs)")
        _print_game(args.game_id, settings)
    elif args.action == "list":
        conn = _open(args.db)
        games = db.list_games(conn)
        _table(
            [
                "game",
                "duration s",
                "burst window ms",
                "threshold",
                "limit",
                "period ms",
                "latency ms",
                "submit window s",
            ],
            [
                [
                    g,
                    s.duration_ms / 1000,
                    s.burst_window_ms,
                    s.burst_threshold,
                    s.burst_limit,
                    s.burst_period_ms,
                    s.latency_ms,
                    s.submission_window_ms / 1000,
                ]
                for g, s in games.items()
            ],
        )
    elif args.action == "show":
        conn = _open(args.db)
        games = db.list_games(conn)
        if args.game_id is not None:
            if args.game_id not in games:
                raise NotFoundError(f"no game {args.game_id!r}")
            games = {args.game_id: games[args.game_id]}
        for game_id, settings in games.items():
            _print_game(game_id, settings)
    return 0


def _print_game(game_id: str, s: GameSettings) -> None:
    print(f"{game_id}:")
    print(f"  duration            {s.duration_ms / 1000:g} s")
    print(f"  burst               more than {s.burst_threshold} points in {s.burst_window_ms} ms")
    limit = f"more than {s.burst_limit} bursts in {s.burst_period_ms} ms ends the game"
    print(f"  burst limit         {limit}")
    print(f"  latency allowance   {s.latency_ms} ms")
    print(f"  submission window   {s.submission_window_ms / 1000:g} s")
    floor = f"{s.human_floor_ms} ms" if s.human_floor_ms else "off"
    print(f"  human floor         {floor} (points closer than this are not a person's)")
    rhythm = f"{s.min_rhythm_cv:g}" if s.min_rhythm_cv else "off"
    print(f"  rhythm check        {rhythm} (intervals more regular than this are a bot's)")
    print(f"  max score           {'none' if s.max_score is None else s.max_score}")
    hold = "held off boards until reviewed" if s.hold_outliers else "flagged, still shown"
    print(f"  outlier scores      {hold}")
    if s.title is not None:
        print(f"  title               {s.title}")


def cmd_flags(args: argparse.Namespace) -> int:
    conn = _open(args.db)
    if args.action == "list":
        flags = db.list_flags(conn, open_only=args.open, game_id=args.game, user_name=args.user)
        if args.json:
            print(json.dumps(flags, indent=2))
            return 0
        _table(
            ["id", "when", "status", "reason", "game", "who", "session"],
            [
                [
                    f["id"],
                    fmt_time(f["created_at"]),
                    f["status"],
                    f["reason"],
                    f["game_id"] or "-",
                    _who(f),
                    (f["session_id"] or "-")[:12],
                ]
                for f in flags
            ],
        )
    elif args.action == "show":
        flag = db.get_flag(conn, args.flag_id)
        if args.json:
            print(json.dumps(flag, indent=2))
        else:
            print(render_flag(flag))
    elif args.action == "resolve":
        moderation.resolve_flag(
            conn, args.flag_id, ban=args.ban, days=args.days, note=args.note, actor=CLI_ACTOR()
        )
        print(f"flag {args.flag_id} {'resolved: banned' if args.ban else 'cleared'}")
    return 0


def _who(flag: dict[str, Any]) -> str:
    if flag.get("user_id") is not None:
        return f"{flag.get('user_name')} (#{flag['user_id']})"
    return f"guest {flag.get('guest_addr') or '?'}"


# Words for the keys of a flag's evidence; a key not listed is shown with spaces for `_`.
DETAIL_LABELS = {
    "bursts_in_period": "bursts in the period",
    "burst_limit": "bursts allowed",
    "burst_period_ms": "burst period",
    "burst_times": "bursts at",
    "claimed_user_id": "claimed to be user",
    "actual_user_id": "is user",
    "points_submitted": "points submitted",
    "token_error": "token problem",
    "submitted_from": "submitted from",
    "session_owner_user_id": "session belongs to user",
    "submitted_by_owner": "submitted by its owner",
    "index": "first bad point (0-based)",
    "seq": "point number",
    "client_ts": "player's time",
    "issued_server_ts": "server time issued",
    "expected_server_ts": "server time expected",
    "latency_ms": "allowance",
    "end_reason": "the game ended by",
    "ended_at": "the game ended at",
    "human_floor_ms": "human floor",
    "intervals": "intervals",
    "below_floor_player_clock": "under the floor (player)",
    "below_floor_on_arrival": "under the floor (arrival)",
    "shortest_ms_player_clock": "shortest interval (player)",
    "shortest_ms_on_arrival": "shortest interval (arrival)",
    "tripped_on": "tripped on",
    "rhythm_figure": "rhythm figure",
    "rhythm_player_clock": "rhythm (player's clock)",
    "rhythm_on_arrival": "rhythm (on arrival)",
    "min_rhythm_cv": "flags below",
    "points": "points judged",
    "mean_interval_ms": "mean interval",
    "max_score": "the game's most",
    "score": "score",
    "population": "other players' scores",
    "fence": "far-out fence",
    "best_other": "best of the others",
}
_TIME_KEYS = ("_ts", "_at", "_times")


def _detail_label(key: str) -> str:
    return DETAIL_LABELS.get(key, key.replace("_", " "))


def _detail_value(key: str, value: object) -> str:
    """Times as times (UTC, to the millisecond), durations with their unit."""

    def when(ms: object) -> str:
        if isinstance(ms, int) and ms > 10**11:
            return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]
        return str(ms)

    if key.endswith(_TIME_KEYS):
        if isinstance(value, list):
            return ", ".join(when(v) for v in value) or "-"
        return when(value)
    if key.endswith("_ms") and isinstance(value, int | float):
        return f"{value:g} ms"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


def render_flag(flag: dict[str, Any]) -> str:
    """A flag as a reviewer reads it: who, why, and the session's timeline."""
    lines = [
        f"flag {flag['id']}: {flag['reason']}  [{flag['status']}]",
        f"  when        {fmt_time(flag['created_at'])}",
        f"  who         {_who(flag)}",
        f"  user agent  {flag.get('user_agent') or '-'}",
        f"  game        {flag.get('game_id') or '-'}",
        f"  session     {flag.get('session_id') or '-'}",
    ]
    if flag.get("resolved_at"):
        lines.append(
            f"  resolved    {fmt_time(flag['resolved_at'])}: {flag.get('resolution_note')}"
        )
    for key, value in (flag.get("detail") or {}).items():
        lines.append(f"  {_detail_label(key):<26} {_detail_value(key, value)}")
    evidence = flag.get("evidence")
    if evidence and evidence.get("session"):
        session = evidence["session"]
        start = session["started_at"]
        lines.append("")
        lines.append(
            f"  session: started {fmt_time(start)}, ended {fmt_time(session['ended_at'])}"
            f" ({session['end_reason'] or 'running'}), state {session['state']}"
        )
        points = evidence["points"]
        lines.append(
            f"  {len(points)} points issued, {len(evidence['rejected'])} rejected,"
            f" {len(evidence['bursts'])} bursts"
        )
        if evidence.get("timing"):
            lines.append("")
            lines.extend(timing_words(evidence["timing"]))
        lines.append("")
        lines.extend(_timeline(start, session.get("ended_at"), points, evidence))
    return "\n".join(lines)


def timing_words(timing: dict[str, Any]) -> list[str]:
    """The timing figures of a session, as a reviewer reads them (docs/anti-cheat.md)."""
    floor, threshold = timing["human_floor_ms"], timing["min_rhythm_cv"]
    arrival_gaps = timing["intervals_on_arrival"]
    player_gaps = timing["intervals_player_clock"]
    lines = [f"  timing of its {timing['points']} points received:"]
    if timing["rhythm_figure"] is None:
        lines.append("    rhythm: too few points to measure")
    else:
        judged = "" if timing["rhythm_judged"] else " (too few points to be judged)"
        verdict = (
            "too regular for a person"
            if threshold and timing["rhythm_figure"] < threshold
            else "within what people show"
        )
        limit = f"the game flags below {threshold:g}" if threshold else "the rhythm check is off"
        lines.append(
            f"    rhythm: {timing['rhythm_figure']:.3f} ({verdict}; {limit}){judged};"
            f" player's clock {_figure(timing['rhythm_player_clock'])},"
            f" on arrival {_figure(timing['rhythm_on_arrival'])}"
        )
    population = timing.get("population")
    if population:
        lines.append(
            f"    this game's other players: {population['p5']:.3f} to {population['p95']:.3f},"
            f" typically {population['p50']:.3f} ({population['sessions']} recent sessions)"
        )
    else:
        lines.append("    this game's other players: not enough sessions yet to compare")
    if floor:
        lines.append(
            f"    closer than the {floor} ms human floor: {timing['below_floor_player_clock']}"
            f" of {len(player_gaps)} intervals on the player's clock,"
            f" {timing['below_floor_on_arrival']} on arrival"
        )
    else:
        lines.append("    human floor: off for this game")
    if arrival_gaps:
        ordered = sorted(arrival_gaps)
        lines.append(
            f"    intervals on arrival: shortest {ordered[0]} ms,"
            f" median {ordered[len(ordered) // 2]} ms, longest {ordered[-1]} ms"
        )
        lines.extend(_histogram(arrival_gaps, floor))
    return lines


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _histogram(gaps: list[int], floor: int, width: int = 40) -> list[str]:
    """Intervals in 50 ms bins up to a second (the rest in one), as bars of `#`."""
    bins = [0] * 21
    for gap in gaps:
        bins[min(20, max(0, gap) // 50)] += 1
    top = max(bins) or 1
    out = []
    for index, count in enumerate(bins):
        if not count:
            continue
        low = index * 50
        label = f"{low:>4}-{low + 49:<4} ms" if index < 20 else "1000+     ms"
        mark = "  < floor" if floor and low + 49 < floor else ""
        bar = "#" * max(1, round(count * width / top))
        out.append(f"    {label} {count:>5} {bar}{mark}")
    return out


def _timeline(
    start: int, end: int | None, points: list[dict[str, Any]], evidence: dict[str, Any]
) -> list[str]:
    """Points per second, as a bar per second of the game, with rejections and bursts."""
    last = max(
        [end or start]
        + [p["server_ts"] for p in points]
        + [r["server_ts"] for r in evidence["rejected"]]
    )
    seconds = max(1, (last - start) // 1000 + 1)
    accepted = [0] * seconds
    rejected = [0] * seconds
    bursts = [0] * seconds
    for p in points:
        accepted[min(seconds - 1, max(0, (p["server_ts"] - start) // 1000))] += 1
    for r in evidence["rejected"]:
        rejected[min(seconds - 1, max(0, (r["server_ts"] - start) // 1000))] += 1
    for b in evidence["bursts"]:
        bursts[min(seconds - 1, max(0, (b - start) // 1000))] += 1
    out = ["  second  accepted  rejected  (# accepted, x rejected, ! burst)"]
    for second in range(min(seconds, 600)):
        bar = "#" * min(accepted[second], 40) + "x" * min(rejected[second], 20)
        mark = " !" * min(bursts[second], 5)
        out.append(f"  {second:>6}  {accepted[second]:>8}  {rejected[second]:>8}  {bar}{mark}")
    offsets = [p["server_ts"] - p["client_ts"] for p in points]
    if offsets:
        out.append("")
        out.append(
            f"  clock offset (server - client) over points: min {min(offsets)} ms,"
            f" max {max(offsets)} ms, spread {max(offsets) - min(offsets)} ms"
        )
    return out


def cmd_scores(args: argparse.Namespace) -> int:
    conn = _open(args.db)
    hide = args.action == "hide"
    session_id = moderation.set_score_hidden(
        conn, args.session_id, hide, actor=CLI_ACTOR(), note=args.note
    )
    print(f"score of session {session_id} {'hidden' if hide else 'restored'}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from scoreserver.wire.tokens import key_id, raw_public, write_key

    conn = _open_or_create(args.db)
    if args.action == "list":
        now = now_ms()
        lifetime = db.retired_key_lifetime_ms(conn)
        rows = db.list_signing_keys(conn)
        _table(
            ["kid", "created", "retired", "verifies until"],
            [
                [
                    r["kid"],
                    fmt_time(r["created_at"]),
                    fmt_time(r["retired_at"]),
                    "current (signing)"
                    if r["retired_at"] is None
                    else _verifies_until(r["retired_at"] + lifetime, now),
                ]
                for r in rows
            ],
        )
    elif args.action == "rotate":
        key = Ed25519PrivateKey.generate()
        kid = key_id(key.public_key()).hex()
        now = now_ms()
        with db.transaction(conn):
            db.record_signing_key(conn, kid, raw_public(key.public_key()), now)
            db.retire_other_keys(conn, kid, now)
            _audit(conn, "keys rotate", kid, str(args.key))
        if args.key.exists():
            backup = args.key.with_name(f"{args.key.name}.{now}.old")
            os.replace(args.key, backup)
            os.chmod(backup, 0o600)
        write_key(args.key, key)
        print(
            f"new signing key {kid} in {args.key}; a running server signs with it within"
            " about 2 seconds (tokens of the old key stay valid for their games)"
        )
    return 0


def _verifies_until(until: int, now: int) -> str:
    return fmt_time(until) if until > now else f"expired {fmt_time(until)}"


def cmd_audit(args: argparse.Namespace) -> int:
    conn = _open(args.db)
    _table(
        ["id", "when", "who", "command", "target", "note"],
        [
            [
                a["id"],
                fmt_time(a["at"]),
                a["actor"],
                a["command"],
                a["target"] or "-",
                _note_words(a["note"]),
            ]
            for a in db.list_audit(conn)
        ],
    )
    return 0


def _note_words(note: str | None) -> str:
    """An audit note as words; notes written as JSON by earlier versions become key value."""
    if not note:
        return ""
    if note.startswith("{"):
        try:
            return moderation.settings_words(json.loads(note))
        except (ValueError, AttributeError):
            return note
    return note


def cmd_leaderboard(args: argparse.Namespace) -> int:
    conn = _open(args.db)
    if db.get_game(conn, args.game_id) is None:
        raise NotFoundError(f"no game {args.game_id!r}")
    entries = db.leaderboard(conn, args.game_id, now_ms(), limit=args.limit, with_sessions=True)
    if args.json:
        print(json.dumps({"game_id": args.game_id, "entries": entries}, indent=2))
    else:
        _table(
            ["rank", "player", "score", "session (for scores hide)"],
            [[e["rank"], e["name"], e["score"], e["session_id"]] for e in entries],
        )
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from scoreserver.server.admin import ADMIN_PASSWORD_SETTING, end_admin_sessions

    password = _read_password(args.password_stdin)
    if len(password) < 12:
        raise CliError("the admin password must have at least 12 characters")
    conn = _open_or_create(args.db)
    encoded = PasswordPolicy().hash(password)
    with db.transaction(conn):
        db.set_setting(conn, ADMIN_PASSWORD_SETTING, encoded)
        ended = end_admin_sessions(conn)
        _audit(conn, "admin set-password", None, f"ended {ended} admin sessions")
    print(f"admin password set; /admin is open to it ({ended} earlier admin sessions ended)")
    return 0


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Rows as a table that fits the terminal and keeps its columns straight for any name
    (wide CJK characters, emoji): rich measures display widths and wraps what is too long."""
    if not rows:
        print("(none)")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    width = shutil.get_terminal_size((120, 24)).columns
    # Plain text only: no colours or styles (output goes to terminals, pipes and files alike).
    console = Console(file=sys.stdout, width=width, color_system=None, highlight=False, emoji=False)
    console.print(table)


def cmd_export(args: argparse.Namespace) -> int:
    data = moderation.export(_open(args.db), args.game_id, args.window)
    if args.format == "json":
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(moderation.export_csv(data, "results" if args.results else "board"))
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    conn = _open(args.db)
    started = time.monotonic()
    db.backup(conn, args.file)
    size = args.file.stat().st_size
    print(
        f"{args.file}: a consistent copy of {args.db} ({size / 1e6:.1f} MB,"
        f" integrity checked) in {time.monotonic() - started:.1f} s"
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "backup": cmd_backup,
    "export": cmd_export,
    "users": cmd_users,
    "games": cmd_games,
    "flags": cmd_flags,
    "scores": cmd_scores,
    "keys": cmd_keys,
    "audit": cmd_audit,
    "leaderboard": cmd_leaderboard,
    "admin": cmd_admin,
}


# Characters that steer a terminal rather than show: C0 controls but tab and newline, DEL, C1
# controls (0x9b is a one-byte CSI), and bidirectional overrides and isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """`text` with every character that could steer a terminal written as an escape."""
    return _UNSAFE.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text
    )


class TerminalSafe:
    """A text stream that escapes what `terminal_safe` escapes. Names, user agents and notes
    come from players: printed raw, an ESC or OSC 52 would reach the operator's terminal."""

    def __init__(self, inner: Any):
        self._inner = inner

    def write(self, text: str) -> int:
        return int(self._inner.write(terminal_safe(text)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The `scoreserver` command; with `prog`, `python run.py` (serve alone, by that name)."""
    args = (serve_parser(prog) if prog else build_parser()).parse_args(argv)
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = TerminalSafe(stdout), TerminalSafe(stderr)
    try:
        return _run(args)
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _run(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except (CliError, ScoreServerError, ValueError) as exc:
        kinds: dict[type[Exception], str] = {
            ConflictError: "conflict",
            NotFoundError: "not found",
            StoreError: "database",
        }
        kind = kinds.get(type(exc), "error")
        print(f"scoreserver: {kind}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
