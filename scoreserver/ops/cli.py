"""The `scoreserver` command: serve, and the operator's commands on the database.

Every command takes `--db PATH`. Commands that change something an admin decides (flags,
bans, hidden scores, game settings, keys, the admin password) are recorded in the audit
table with the OS user who ran them and the command line's note.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import getpass
import json
import logging
import math
import os
import re
import secrets
import shlex
import shutil
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from scoreserver.core.evidence import fmt_time, render_flag, who
from scoreserver.core.rules import GameSettings
from scoreserver.errors import (
    ConflictError,
    NotFoundError,
    PortTakenError,
    ScoreServerError,
    StoreError,
)
from scoreserver.server import moderation
from scoreserver.server.accounts import (
    BUDGET_MOST,
    BudgetSettings,
    PasswordPolicy,
    validate_credentials,
)
from scoreserver.server.admin import SESSION_TTL_S as ADMIN_SESSION_TTL_S
from scoreserver.server.admin import token_hash as admin_token_hash
from scoreserver.store import (
    DELETED_NAME,
    FOREVER,
    STORE_WRITERS,
    Location,
    Store,
    WriterMode,
    ops,
)
from scoreserver.wire.addresses import HEADERS, TrustedProxies

DEFAULT_DB = Path("scoreserver.db")
WEBHOOK_ENV = "SCORESERVER_WEBHOOK"  # --webhook, kept out of `ps`
DEFAULT_KEY = Path("scoreserver.key")
NOTE_HELP = "why: every decision is audited with its note (required)"


def now_ms() -> int:
    return int(time.time() * 1000)


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
        metavar="PER_S",
        help="game-socket messages a second per connection, sustained (default 60; 0: no limit)",
    )
    parser.add_argument(
        "--max-conns-per-addr",
        type=int,
        default=256,
        metavar="N",
        help="game-socket connections per client address, per node (default 256; 0: no limit)",
    )
    parser.add_argument(
        "--max-conns",
        type=int,
        default=20_000,
        metavar="N",
        help="game-socket connections in all, per node (default 20000; 0: no limit)",
    )
    budgets = BudgetSettings()
    parser.add_argument(
        "--login-attempts-per-addr",
        type=int,
        default=budgets.login_attempts_per_addr,
        metavar="N",
        help="logins, registrations and account deletions a minute per client address, on all"
        f" nodes together (default {budgets.login_attempts_per_addr}; 0: no limit)",
    )
    parser.add_argument(
        "--failed-logins-per-account",
        type=int,
        default=budgets.failed_logins_per_account,
        metavar="N",
        help="failed logins a minute per account, whatever the addresses"
        f" (default {budgets.failed_logins_per_account}; at least 1)",
    )
    parser.add_argument(
        "--failed-submissions-per-addr",
        type=int,
        default=budgets.failed_submissions_per_addr,
        metavar="N",
        help="failed submissions (each one a flag) a minute per client address; past it they"
        " are refused, not flagged; honest ones are never refused"
        f" (default {budgets.failed_submissions_per_addr}; 0: no limit)",
    )
    parser.add_argument(
        "--admin-failures-per-addr",
        type=int,
        default=budgets.admin_failures_per_addr,
        metavar="N",
        help="failed /admin logins a minute per client address"
        f" (default {budgets.admin_failures_per_addr}; at least 1)",
    )
    parser.add_argument(
        "--admin-failures",
        type=int,
        default=budgets.admin_failures,
        metavar="N",
        help="failed /admin logins a minute, whatever the addresses"
        f" (default {budgets.admin_failures}; at least 1)",
    )
    parser.add_argument(
        "--flags-per-addr",
        type=int,
        default=budgets.flags_per_addr,
        metavar="N",
        help="flags a minute per sender (a logged-in player's account, else the client address);"
        " past it, that sender's flags are not recorded; repeats of an open flag's cause count"
        f" on it (default {budgets.flags_per_addr}; at least 1)",
    )
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="a balancer or proxy whose connections may name the client: its PROXY header (v1,"
        " v2) or --forwarded-header is read (repeatable; default none: every peer is the client)",
    )
    parser.add_argument(
        "--forwarded-header",
        choices=HEADERS,
        default="x-forwarded-for",
        help="the header the trusted proxies write (only that one is read; default"
        " x-forwarded-for)",
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
    # Gone: point tokens are MACs made on the loop (tokens.py); accepted and ignored, so
    # that a command line written for an earlier version still starts.
    parser.add_argument("--signer", help=argparse.SUPPRESS)
    parser.add_argument(
        "--store-writer",
        choices=STORE_WRITERS,
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
    parser.add_argument(
        "--webhook",
        metavar="URL",
        default=os.environ.get(WEBHOOK_ENV) or None,
        help="POST a JSON notification here for every new first place and new flag (a Discord"
        " or Slack incoming-webhook URL works as it is; retried, never delays play). Such URLs"
        f" are secrets: {WEBHOOK_ENV}=URL keeps it out of `ps` (default: off)",
    )
    parser.add_argument(
        "--node-url",
        help="this node's game-socket URL as players reach it, for other nodes of the database"
        " to send them here (default ws://HOST:PORT/ of its socket; docs/scaling.md)",
    )
    parser.add_argument(
        "--node-lease",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a node silent this long is gone: its running games are voided (default 10)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="event-loop processes of this node, sharing its ports (default 1; docs/scaling.md)",
    )
    # Internal: how `--workers N` starts each worker (its own game-socket port, shared ports).
    parser.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--direct-ws-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--writer-socket", help=argparse.SUPPRESS)


def _game_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    added: list[argparse.Action] = []

    def option(*names: str, **how: Any) -> None:
        added.append(parser.add_argument(*names, **how))

    option("--duration", type=float, required=required, help="seconds (fractions allowed)")
    defaults = GameSettings(duration_ms=1)
    option(
        "--burst-window-ms",
        type=int,
        help=f"the window bursts are counted in (default {defaults.burst_window_ms})",
    )
    option(
        "--burst-threshold",
        type=int,
        help=f"most points accepted in any burst window (default {defaults.burst_threshold})",
    )
    option(
        "--burst-limit",
        type=int,
        help=f"bursts allowed in a burst period; one more ends the game and flags it"
        f" (default {defaults.burst_limit})",
    )
    option(
        "--burst-period-ms",
        type=int,
        help=f"the period bursts are counted in (default {defaults.burst_period_ms})",
    )
    option(
        "--latency-ms",
        type=int,
        help=f"how far a point's time may be from where the player's clock puts it"
        f" (default {defaults.latency_ms})",
    )
    option(
        "--submission-window-s",
        type=float,
        help=f"how long after its end a game may be submitted"
        f" (default {defaults.submission_window_ms // 1000})",
    )
    option(
        "--human-floor-ms",
        type=int,
        help="points repeatedly closer than this are flagged inhuman_timing (default 60; 0: off)",
    )
    option(
        "--min-rhythm-cv",
        type=float,
        help="intervals (on the player's clock) more regular than this coefficient of"
        f" variation are flagged robotic_rhythm (default {defaults.min_rhythm_cv:g}; 0: off)",
    )
    option(
        "--human-max-rate",
        type=float,
        metavar="PER_S",
        help="more points a second than this, sustained over 10 s, are flagged"
        f" superhuman_rate (default {defaults.human_max_rate:g}; 0: off, for games where a"
        " point is not a deliberate act)",
    )
    bound = parser.add_mutually_exclusive_group()
    added.append(
        bound.add_argument(
            "--max-score",
            type=int,
            help="a result above N is refused as implausible_score and flagged (default: none)",
        )
    )
    bound.add_argument(
        "--no-max-score", action="store_true", help="remove the game's --max-score bound"
    )
    option(
        "--hold-outliers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="hold a score above the range the game's trusted players have shown off boards"
        " until a reviewer clears it (default: hold; --no-hold-outliers flags it for review"
        " and still shows it)",
    )
    review_top = parser.add_mutually_exclusive_group()
    added.append(
        review_top.add_argument(
            "--review-above",
            type=int,
            metavar="SCORE",
            help="the top of the review range while the game has too few trusted players"
            " (default: half of what --human-max-rate allows in a game)",
        )
    )
    review_top.add_argument(
        "--no-review-above",
        action="store_true",
        help="take the settings' top from --human-max-rate again",
    )
    option(
        "--review-min-players",
        type=int,
        metavar="N",
        help="trusted players needed before the range comes from their best scores"
        f" (default {defaults.review_min_players})",
    )
    option(
        "--review-account-age-h",
        type=float,
        metavar="HOURS",
        help="how old an account must be for its results to count as trusted, unless a"
        f" reviewer cleared them (default {defaults.review_account_age_h:g}; 0 for an event"
        " whose accounts are all new)",
    )
    option("--title", help="a display name for pages (default: the game id)")
    if not required:  # `games set`: an option not given keeps its value; no defaults to show
        for action in added:
            if action.help:
                text = _DEFAULT_IN_HELP.sub(lambda m: f" ({m[1]})" if m[1] else "", action.help)
                action.help = text


# "(default 60; 0: off)" -> " (0: off)"; "(default: none)" -> "".
_DEFAULT_IN_HELP = re.compile(r" \(default:? [^;)]*(?:; ([^)]*))?\)")


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
    common.add_argument(
        "--db",
        default=str(DEFAULT_DB),
        help="a SQLite file, or a PostgreSQL URL: postgresql://...",
    )
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
    reset = users.add_parser(
        "reset-password",
        parents=[common],
        help="print a one-time code (24 h) with which the player sets a new password on the"
        " game's page",
    )
    reset.add_argument("name", help="the player's name")

    games = sub.add_parser("games", help="games and their rules").add_subparsers(
        dest="action", required=True
    )
    gadd = games.add_parser("add", parents=[common], help="create a game")
    gadd.add_argument("game_id", help="the new game's id (in URLs: /board/GAME_ID)")
    _game_options(gadd, required=True)
    gset = games.add_parser(
        "set",
        parents=[common],
        help="change a game's rules",
        description="Change a game's rules: only the options given change; the others keep"
        " their values (`games show GAME_ID`). New sessions use them; running ones keep theirs.",
    )
    gset.add_argument("game_id", help="the game to change")
    _game_options(gset, required=False)
    arch = games.add_parser(
        "archive",
        parents=[common],
        help="stop new games of GAME_ID; its board and results stay (--undo: playable again)",
    )
    arch.add_argument("game_id", help="the game")
    arch.add_argument("--undo", action="store_true", help="make the game playable again")
    rm = games.add_parser(
        "remove", parents=[common], help="delete a game nobody has played (else: archive it)"
    )
    rm.add_argument("game_id", help="the game")
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
    mg = sub.add_parser(
        "migrate",
        parents=[common],
        help="copy the database (--db) into a new, empty one (--to), checked row for row",
    )
    mg.add_argument(
        "--while-running",
        action="store_true",
        help="copy although a server is using the database (what it writes meanwhile is lost)",
    )
    mg.add_argument(
        "--to",
        required=True,
        help="the new database: a PostgreSQL URL (postgresql://user@host/dbname) or a file",
    )

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
    link = admin.add_parser(
        "login-link",
        parents=[common],
        help="print a link that opens /admin without the password (for whoever can run this on"
        " the server's machine: works while guessers hold the password login at its limit)",
    )
    link.add_argument(
        "--url",
        default="http://127.0.0.1:8080",
        help="the server's HTTP address as your browser reaches it (default http://127.0.0.1:8080)",
    )
    return parser


# --- commands -------------------------------------------------------------------------------


def _run_loop(main: Callable[[], Awaitable[int]]) -> int:
    """`trio.run(main)`; called from inside a trio run (tests, a program embedding the
    command line), on a thread of its own: one thread cannot run two loops."""
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return trio.run(main)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(trio.run, main).result()


StoreCommand = Callable[[argparse.Namespace, Store], Awaitable[int]]


def with_store(
    command: StoreCommand, *, create: bool = False
) -> Callable[[argparse.Namespace], int]:
    """Run `command` with the database of `--db` open (a Store with the inline writer: this
    process writes only while the command runs). Without `create`, a SQLite file that does
    not exist is an error rather than a new empty database."""

    def run(args: argparse.Namespace) -> int:
        location = Location.of(args.db)
        if location.dialect == "sqlite" and not create and not location.path.exists():
            raise CliError(f"no database at {location} (start the server once, or pass --db)")

        async def main() -> int:
            async with Store(location, writer=WriterMode.INLINE).opened() as store:
                return await command(args, store)

        return _run_loop(main)

    return run


def CLI_ACTOR() -> moderation.Actor:  # noqa: N802 - reads as the constant it nearly is
    return moderation.Actor(actor(), "cli")


def _read_password(from_stdin: bool, check: Callable[[str], None] | None = None) -> str:
    """The password from standard input (--password-stdin), or asked for twice on a terminal;
    `check` (CliError if the password cannot be used) runs before it is asked for again."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CliError("no password on standard input")
        if check is not None:
            check(password)
        return password
    if not sys.stdin.isatty():
        raise CliError("no terminal to ask for the password on: pipe it in with --password-stdin")
    try:
        password = getpass.getpass("password: ")
        if check is not None:
            check(password)
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
    if args.signer is not None:
        logging.getLogger("scoreserver").warning(
            "--signer is no longer needed and is ignored: point tokens are MACs made on the"
            " event loop (docs/architecture.md)"
        )
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliError("--tls-cert and --tls-key go together")
    _check_node_flags(args)
    if args.webhook is not None:
        parts = urlsplit(args.webhook)
        if parts.scheme not in ("http", "https") or not parts.hostname or len(args.webhook) > 2048:
            raise CliError("--webhook must be an http:// or https:// URL")
        os.environ[WEBHOOK_ENV] = args.webhook  # workers inherit it, never in their argv
    budgets = _budgets(args)
    if args.workers > 1 and args.worker_of is None:
        from scoreserver.ops.workers import WorkersError, run_workers

        try:
            return run_workers(args)
        except WorkersError as exc:
            raise CliError(str(exc)) from None
    config = Config(
        host=args.host,
        ws_port=args.ws_port,
        http_port=args.http_port,
        db_path=args.db,
        key_path=args.key,
        limits=Limits(
            max_msg_rate=args.max_msg_rate,
            max_conns_per_addr=args.max_conns_per_addr,
            max_conns=args.max_conns,
            allowed_origins=tuple(args.allow_origin),
        ),
        budgets=budgets,
        trusted_proxies=tuple(args.trusted_proxy),
        forwarded_header=args.forwarded_header,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        store_writer=args.store_writer,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        webhook=args.webhook,
        node_url=args.node_url,
        node_lease_s=args.node_lease,
        reuse_port=args.worker_of is not None,
        direct_ws_port=args.direct_ws_port,
        writer_socket=args.writer_socket,
    )
    try:
        trio.run(serve, config)
    except* PortTakenError as group:
        raise CliError(str(_leaf(group))) from None
    return 0


MAX_WORKERS = 64
ADMIN_PASSWORD_MIN = 12
MAX_LEASE_S = 3600.0


def _budgets(args: argparse.Namespace) -> BudgetSettings:
    """The budget flags and --trusted-proxy, refused in one line when out of bounds."""
    try:
        TrustedProxies(args.trusted_proxy)
    except ValueError as exc:
        raise CliError(f"--trusted-proxy: {exc}") from None
    for flag, value in (
        ("--max-conns-per-addr", args.max_conns_per_addr),
        ("--max-conns", args.max_conns),
    ):
        if not 0 <= value <= BUDGET_MOST:
            raise CliError(f"{flag} must be 0 to {BUDGET_MOST}")
    if not 0 <= args.max_msg_rate <= BUDGET_MOST:
        raise CliError(f"--max-msg-rate must be 0 to {BUDGET_MOST}")
    # Each setting's flag is its name (--login-attempts-per-addr: login_attempts_per_addr).
    budgets = BudgetSettings(
        **{name: getattr(args, name) for name in BudgetSettings.__dataclass_fields__}
    )
    for name, problem in budgets.problems():
        raise CliError(f"--{name.replace('_', '-')} {problem}")
    return budgets


def _check_node_flags(args: argparse.Namespace) -> None:
    """--workers, --node-lease and --node-url, refused in one line when out of bounds."""
    if not 1 <= args.workers <= MAX_WORKERS:
        raise CliError(f"--workers must be 1 to {MAX_WORKERS}")
    if args.workers > 1 and args.ws_port and args.ws_port + args.workers > 65535:
        raise CliError("--ws-port + --workers must stay below 65536 (each worker's own port)")
    if not (math.isfinite(args.node_lease) and 1 <= args.node_lease <= MAX_LEASE_S):
        raise CliError(f"--node-lease must be 1 to {MAX_LEASE_S:g} seconds")
    if args.node_url is not None:
        url = args.node_url.replace("{worker}", "0")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("ws", "wss")
            or not parts.hostname
            or len(url) > 2048
            or any(c.isspace() or not c.isprintable() for c in url)
        ):
            raise CliError(
                "--node-url must be a ws:// or wss:// URL with a host, e.g. ws://10.0.0.11:8765/"
            )


def _leaf(error: BaseException) -> BaseException:
    """The first error inside nested exception groups."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _player_password_check(name: str) -> Callable[[str], None]:
    def check(password: str) -> None:
        try:
            validate_credentials(name, password)
        except ValueError as exc:
            raise CliError(str(exc)) from None

    return check


async def cmd_users(args: argparse.Namespace, store: Store) -> int:
    if args.action == "add":
        password = _read_password(args.password_stdin, _player_password_check(args.name))
        name, password = validate_credentials(args.name, password)
        encoded = PasswordPolicy().hash(password)
        user_id = await store.add_user(name, encoded, now_ms())
        print(f"user {name} created (id {user_id})")
    elif args.action == "list":
        now = now_ms()
        rows = await store.users()
        _table(
            ["id", "name", "created", "scores", "flags", "banned until"],
            [
                [
                    r["id"],
                    r["name"],
                    fmt_short(r["created_at"]),
                    r["scores"],
                    r["open_flags"],
                    _ban_text(r["banned_until"], now, short=True),
                ]
                for r in rows
            ],
            fold=("name",),
        )
    elif args.action == "ban":
        until = await moderation.ban_user(
            store, args.name, actor=CLI_ACTOR(), days=args.days, note=args.note
        )
        print(f"{args.name} banned {_ban_text(until, now_ms())}")
    elif args.action == "delete":
        user_id = await moderation.delete_user(store, args.name, actor=CLI_ACTOR(), note=args.note)
        print(
            f"{args.name}'s personal data erased; their results stay as"
            f" {DELETED_NAME.format(id=user_id)!r}"
        )
    elif args.action == "unban":
        await moderation.unban_user(store, args.name, actor=CLI_ACTOR(), note=args.note)
        print(f"{args.name} unbanned")
    elif args.action == "reset-password":
        code = await moderation.issue_reset_code(store, args.name, actor=CLI_ACTOR())
        print(f"reset code for {args.name}: {code}")
        print(
            "Give it to the player: on the game's page, under 'Forgot your password?', they"
            " enter their name, this code and a new password. It works once, for 24 hours;"
            " a new code replaces it."
        )
    return 0


def _ban_text(until: int | None, now: int, *, short: bool = False) -> str:
    if until is None or until <= now:
        return "-"
    if until >= FOREVER:
        return "for good" if short else "until unbanned"
    return fmt_short(until) if short else f"until {fmt_time(until)}"


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
        "human_max_rate",
        "review_above",
        "review_min_players",
        "review_account_age_h",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.no_max_score:
        changes["max_score"] = None
    if args.no_review_above:
        changes["review_above"] = None
    if args.submission_window_s is not None:
        changes["submission_window_ms"] = round(args.submission_window_s * 1000)
    return changes


async def cmd_games(args: argparse.Namespace, store: Store) -> int:
    if args.action == "add":
        settings = GameSettings(**_game_changes(args))  # type: ignore[arg-type]
        await moderation.add_game(store, args.game_id, settings, actor=CLI_ACTOR())
        print(f"game {args.game_id} created; a running server picks it up within seconds")
        _print_game(args.game_id, settings)
    elif args.action == "set":
        changes = _game_changes(args)
        if not changes:
            raise CliError("nothing to change: give at least one option")
        settings = await moderation.set_game(store, args.game_id, changes, actor=CLI_ACTOR())
        print(f"game {args.game_id} changed; new sessions use it (running ones keep theirs)")
        _print_game(args.game_id, settings)
    elif args.action == "archive":
        await moderation.archive_game(store, args.game_id, not args.undo, actor=CLI_ACTOR())
        if args.undo:
            print(f"game {args.game_id} can be played again")
        else:
            print(
                f"game {args.game_id} archived: no new games; its board stays at"
                f" /board/{args.game_id}"
            )
    elif args.action == "remove":
        await moderation.remove_game(store, args.game_id, actor=CLI_ACTOR())
        print(f"game {args.game_id} removed")
    elif args.action == "list":
        games = await store.games()
        _table(
            ["game", "title", "secs", "burst", "floor", "rhythm", "rate", "max", "state"],
            [
                [
                    g,
                    s.title or "-",
                    f"{s.duration_ms / 1000:g}",
                    f"{s.burst_threshold}/{s.burst_window_ms / 1000:g}s",
                    f"{s.human_floor_ms}ms" if s.human_floor_ms else "off",
                    f"{s.min_rhythm_cv:g}" if s.min_rhythm_cv else "off",
                    f"{s.human_max_rate:g}/s" if s.human_max_rate else "off",
                    "-" if s.max_score is None else s.max_score,
                    "archived" if s.archived_at is not None else "open",
                ]
                for g, s in games.items()
            ],
            fold=("title",),
            optional=("burst", "title"),
        )
        print(
            "burst: most points in a window; floor: closest human points; rhythm: least"
            " variation; rate: sustained ceiling. All of it: games show GAME_ID",
            file=sys.stderr,
        )
    elif args.action == "show":
        games = await store.games()
        if args.game_id is not None:
            if args.game_id not in games:
                raise NotFoundError(f"no game {args.game_id!r}")
            games = {args.game_id: games[args.game_id]}
        for game_id, settings in games.items():
            _print_game(game_id, settings)
            found = await store.review_range(game_id, int(time.time() * 1000))
            if found is not None:
                top = "none: nothing is held" if found["top"] is None else found["top"]
                print(
                    f"  range now           {top} (from {found['from']};"
                    f" {found['trusted_players']} trusted players)"
                )
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
    rate = f"{s.human_max_rate:g} points a second" if s.human_max_rate else "off"
    print(f"  rate ceiling        {rate} (sustained over 10 s: superhuman_rate)")
    hold = "held off boards until reviewed" if s.hold_outliers else "flagged, still shown"
    print(f"  top scores          above the trusted range: {hold}")
    settings_top = s.settings_review_above()
    top = "none" if settings_top is None else str(settings_top)
    source = "" if s.review_above is not None else " (from the rate ceiling)"
    print(f"  range until trusted {top}{source}")
    print(
        f"  trusted players     {s.review_min_players} needed; accounts"
        f" {s.review_account_age_h:g} h old or cleared by a reviewer"
    )
    if s.title is not None:
        print(f"  title               {s.title}")


async def cmd_flags(args: argparse.Namespace, store: Store) -> int:
    if args.action == "list":
        flags = await store.flags(open_only=args.open, game_id=args.game, user_name=args.user)
        if args.json:
            print(json.dumps(flags, indent=2))
            return 0
        _table(
            ["id", "when", "status", "reason", "game", "who", "session"],
            [
                [
                    f["id"],
                    fmt_short(f["created_at"]),
                    f["status"],
                    f["reason"],
                    f["game_id"] or "-",
                    who(f),
                    (f["session_id"] or "-")[:8],
                ]
                for f in flags
            ],
            fold=("who",),
            optional=("session", "status", "when"),
        )
    elif args.action == "show":
        flag = await store.flag(args.flag_id)
        if args.json:
            print(json.dumps(flag, indent=2))
        else:
            print(_fit(render_flag(flag)))
    elif args.action == "resolve":
        await moderation.resolve_flag(
            store, args.flag_id, ban=args.ban, days=args.days, note=args.note, actor=CLI_ACTOR()
        )
        print(f"flag {args.flag_id} {'resolved: banned' if args.ban else 'cleared'}")
    return 0


async def cmd_scores(args: argparse.Namespace, store: Store) -> int:
    hide = args.action == "hide"
    session_id = await moderation.set_score_hidden(
        store, args.session_id, hide, actor=CLI_ACTOR(), note=args.note
    )
    print(f"score of session {session_id} {'hidden' if hide else 'restored'}")
    return 0


async def cmd_keys(args: argparse.Namespace, store: Store) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from scoreserver.wire.tokens import key_id, raw_public, write_key

    if args.action == "list":
        now = now_ms()
        lifetime, rows = await store.key_history()
        _table(
            ["kid", "created", "retired", "verifies until"],
            [
                [
                    r["kid"],
                    fmt_short(r["created_at"]),
                    fmt_short(r["retired_at"]),
                    "current (signing)"
                    if r["retired_at"] is None
                    else _verifies_until(r["retired_at"] + lifetime, now),
                ]
                for r in rows
            ],
        )
    elif args.action == "rotate":
        from scoreserver.server.nodes import key_file_lock

        key = Ed25519PrivateKey.generate()
        kid = key_id(key.public_key()).hex()
        now = now_ms()
        # The file first, under the lock the servers sharing it take: a server that reloads
        # as soon as the database says the old key is retired finds the new one in its file.
        with key_file_lock(args.key):
            if args.key.exists():
                backup = args.key.with_name(f"{args.key.name}.{now}.old")
                shutil.copy2(args.key, backup)
                os.chmod(backup, 0o600)
            write_key(args.key, key)
        await store.use_signing_key(kid, raw_public(key.public_key()), now)
        await store.record_command(str(CLI_ACTOR()), "keys rotate", kid, str(args.key), now)
        print(
            f"new signing key {kid} in {args.key}; a running server signs with it within"
            " about 2 seconds (tokens of the old key stay valid for their games)"
        )
    return 0


def _verifies_until(until: int, now: int) -> str:
    return fmt_short(until) if until > now else f"expired {fmt_short(until)}"


async def cmd_audit(args: argparse.Namespace, store: Store) -> int:
    _table(
        ["id", "when", "who", "command", "target", "note"],
        [
            [
                a["id"],
                fmt_short(a["at"]),
                a["actor"],
                a["command"],
                _short_target(a["target"]),
                _note_words(a["note"]),
            ]
            for a in await store.audit()
        ],
        fold=("who", "target", "note"),
        optional=("who",),
    )
    return 0


def _short_target(target: str | None) -> str:
    """A session id as its first 12 digits (every command takes a prefix); others as they are."""
    if target is None:
        return "-"
    if len(target) == 32 and all(c in "0123456789abcdef" for c in target):
        return target[:12]
    return target


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


async def cmd_leaderboard(args: argparse.Namespace, store: Store) -> int:
    if await store.game(args.game_id) is None:
        raise NotFoundError(f"no game {args.game_id!r}")
    entries = await store.leaderboard(args.game_id, now_ms(), limit=args.limit, with_sessions=True)
    if args.json:
        print(json.dumps({"game_id": args.game_id, "entries": entries}, indent=2))
    else:
        _table(
            ["rank", "player", "score", "session"],
            [[e["rank"], e["name"], e["score"], e["session_id"]] for e in entries],
            fold=("player",),
        )
    return 0


async def cmd_admin(args: argparse.Namespace, store: Store) -> int:
    if args.action == "login-link":
        return await _admin_login_link(args, store)
    password = _read_password(args.password_stdin, _admin_password_check)
    encoded = PasswordPolicy().hash(password)
    ended = await store.set_admin_password(encoded, str(CLI_ACTOR()), now_ms())
    print(f"admin password set; /admin is open to it ({ended} earlier admin sessions ended)")
    return 0


def _admin_password_check(password: str) -> None:
    if len(password) < ADMIN_PASSWORD_MIN:
        raise CliError(f"the admin password must have at least {ADMIN_PASSWORD_MIN} characters")


async def _admin_login_link(args: argparse.Namespace, store: Store) -> int:
    """An admin session made on the machine (the database is the proof of authority), as a
    link: the token travels in the fragment, which browsers never send to a server."""
    url = args.url.rstrip("/")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise CliError("--url must be an http:// or https:// address, e.g. http://10.0.0.5:8080")
    token = secrets.token_urlsafe(32)
    now = now_ms()
    await store.add_admin_session(
        admin_token_hash(token), now, now + ADMIN_SESSION_TTL_S * 1000, "command line"
    )
    await store.record_command(str(CLI_ACTOR()), "admin login-link", None, None, now)
    print(f"{url}/admin#session={token}")
    print(
        f"(opens /admin for {ADMIN_SESSION_TTL_S // 3600} hours; keep it private)", file=sys.stderr
    )
    return 0


FOLD_MIN = 12  # the narrowest a column of free text (a name, a note) is squeezed to


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    fold: Collection[str] = (),
    optional: Sequence[str] = (),
) -> None:
    """Rows as a table that fits the terminal and keeps its columns straight for any name
    (wide CJK characters, emoji; rich measures display widths).

    Only the columns named in `fold` (free text: names, notes) wrap; ids, codes, numbers,
    times and headers never do. Where even that is too wide, the columns named in `optional`
    are left out, in that order, and a line on stderr says which.
    """
    if not rows:
        print("(none)")
        return
    cells = [[str(cell) for cell in row] for row in rows]
    width = shutil.get_terminal_size((120, 24)).columns
    natural = {
        h: max(cell_len(h), *(cell_len(row[i]) for row in cells)) for i, h in enumerate(headers)
    }

    def needed(columns: Sequence[str]) -> int:
        squeezed = [
            min(natural[h], max(cell_len(h), FOLD_MIN)) if h in fold else natural[h]
            for h in columns
        ]
        return sum(squeezed) + 3 * (len(columns) - 1)  # a rule and a space either side

    shown = list(headers)
    left_out = []
    for header in optional:
        if needed(shown) <= width:
            break
        shown.remove(header)
        left_out.append(header)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="")
    for header in shown:
        if header in fold:
            squeezed = min(natural[header], max(cell_len(header), FOLD_MIN))
            table.add_column(header, overflow="fold", min_width=squeezed)
        else:
            table.add_column(header, no_wrap=True, min_width=natural[header])
    keep = [headers.index(h) for h in shown]
    for row in cells:
        table.add_row(*(row[i] for i in keep))
    # Plain text only: no colours or styles (output goes to terminals, pipes and files alike).
    console = Console(file=sys.stdout, width=width, color_system=None, highlight=False, emoji=False)
    console.print(table)
    if left_out:
        print(
            f"(left out to fit {width} columns: {', '.join(left_out)}; widen the terminal,"
            " or see the JSON or `show`)",
            file=sys.stderr,
        )


def _fit(report: str) -> str:
    """A report's long lines wrapped at the terminal's width, under their own indent."""
    width = shutil.get_terminal_size((120, 24)).columns
    out = []
    for line in report.splitlines():
        if cell_len(line) <= width:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()))
        out.extend(
            textwrap.wrap(
                line,
                width,
                subsequent_indent=indent + "    ",
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(out)


def fmt_short(ms: int | None) -> str:
    """A time for a table's column: minutes, and the year only when it is not this one."""
    if ms is None:
        return "-"
    at = datetime.fromtimestamp(ms / 1000, UTC)
    return at.strftime("%m-%d %H:%M" if at.year == datetime.now(UTC).year else "%Y-%m-%d")


async def cmd_export(args: argparse.Namespace, store: Store) -> int:
    data = await moderation.export(store, args.game_id, args.window)
    if args.format == "json":
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(moderation.export_csv(data, "results" if args.results else "board"))
    return 0


async def cmd_backup(args: argparse.Namespace, store: Store) -> int:
    started = time.monotonic()
    kind = await store.backup(args.file)
    size = args.file.stat().st_size
    print(
        f"{args.file}: a consistent copy of {Location.of(args.db)} ({size / 1e6:.1f} MB,"
        f" {kind}) in {time.monotonic() - started:.1f} s"
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from scoreserver.store.migrate import copy

    source, target = Location.of(args.db), Location.of(args.to)
    if source.dialect == "sqlite" and not source.path.exists():
        raise CliError(f"no database at {source}")
    running = _running_servers(source)
    if running and not args.while_running:
        raise CliError(
            f"a server is running on {source} ({running}): stop it first, or what it writes"
            " during the copy is lost (--while-running copies anyway)"
        )
    started = time.monotonic()
    counts = copy(source, target, report=lambda table, rows: print(f"  {table}: {rows} rows"))
    print(
        f"copied {sum(counts.values())} rows of {len(counts)} tables from {source} to {target}"
        f" in {time.monotonic() - started:.1f} s; every row checked."
    )
    print("Start the server on it (stop the old one first: it would go on writing to the old):")
    print(f"  python run.py --db {shlex.quote(_without_password(args.to))}")
    if _without_password(args.to) != args.to:
        print("  (the password, left out here: in PGPASSWORD or ~/.pgpass, or in the URL)")
    return 0


def _running_servers(location: Location) -> str:
    """Which servers use the database now ('' if none): nodes whose lease has not run out."""
    from scoreserver.store.connect import open_database

    conn = open_database(location)
    try:
        nodes = ops.list_nodes(conn)
    finally:
        conn.close()
    now = now_ms()
    live = [n for n in nodes if n["seen_at"] + n["lease_ms"] > now]
    return ", ".join(f"pid {n['pid']} on {n['host']}" for n in live)


def _without_password(url: str) -> str:
    """A database URL without its password (user@host stays): printable, and it still works
    with the password in PGPASSWORD or ~/.pgpass."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "backup": with_store(cmd_backup),
    "export": with_store(cmd_export),
    "users": with_store(cmd_users, create=True),
    "games": with_store(cmd_games, create=True),
    "flags": with_store(cmd_flags),
    "scores": with_store(cmd_scores),
    "keys": with_store(cmd_keys, create=True),
    "audit": with_store(cmd_audit),
    "leaderboard": with_store(cmd_leaderboard),
    "admin": with_store(cmd_admin, create=True),
    "migrate": cmd_migrate,
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
    except BrokenPipeError:
        # The reader went away (`... | head -1`): end quietly, as `cat` would, and keep the
        # interpreter's last flush of stdout from failing again on the closed pipe.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a program its pipe ended
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
