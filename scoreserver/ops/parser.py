"""The `scoreserver` command line, declared: every command, flag and help text is a row of the
tables below (`SERVE_FLAGS`, `GAME_OPTIONS`, `COMMANDS`), and one function, `_build`, makes
argparse's parser from them. `cli.py` runs what it parses.

To add a flag, add an `opt(...)` row where it belongs (its arguments are argparse's own); to add
a command, add a `Cmd` to `COMMANDS` and a function to `cli.py`'s table of what each runs.

Why one module of this size: it is the tables, a row per flag with its help text; split, the
help of one command would live in several files.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scoreserver.core.rules import GameSettings
from scoreserver.server.accounts import BudgetSettings
from scoreserver.store import STORE_WRITERS
from scoreserver.wire.addresses import HEADERS

DEFAULT_DB = Path("scoreserver.db")
WEBHOOK_ENV = "SCORESERVER_WEBHOOK"  # --webhook, kept out of `ps`
DEFAULT_KEY = Path("scoreserver.key")
NOTE_HELP = "why: every decision is audited with its note (required)"


# --- the shapes of a declaration -----------------------------------------------------------


@dataclass(frozen=True)
class Opt:
    """One argument or flag: `names` and `how` are what `add_argument` takes."""

    names: tuple[str, ...]
    how: Mapping[str, Any]


def opt(*names: str, **how: Any) -> Opt:
    return Opt(names, how)


@dataclass(frozen=True)
class OneOf:
    """Flags of which at most one (with `required`, exactly one) may be given."""

    options: tuple[Opt, ...]
    required: bool = False


@dataclass(frozen=True)
class Cmd:
    """A command: its one-line help, its arguments, and a longer description if it needs one.
    `common` gives it `--db`."""

    help: str
    args: tuple[Opt | OneOf, ...] = ()
    description: str | None = None
    common: bool = True


@dataclass(frozen=True)
class Group:
    """A command of commands (`users add`, `users list`, ...)."""

    help: str
    commands: Mapping[str, Cmd] = field(default_factory=dict)


# --- the server's flags --------------------------------------------------------------------

_budgets = BudgetSettings()

SERVE_FLAGS: tuple[Opt, ...] = (
    opt("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for a LAN)"),
    opt("--ws-port", type=int, default=8765, help="game socket port (0: any)"),
    opt("--http-port", type=int, default=8080, help="HTTP port (0: any)"),
    opt("--key", type=Path, default=DEFAULT_KEY, help="signing key file"),
    opt(
        "--max-msg-rate",
        type=float,
        default=60.0,
        metavar="PER_S",
        help="game-socket messages a second per connection, sustained (default 60; 0: no limit)",
    ),
    opt(
        "--max-conns-per-addr",
        type=int,
        default=256,
        metavar="N",
        help="game-socket connections per client address, per node (default 256; 0: no limit)",
    ),
    opt(
        "--max-conns",
        type=int,
        default=20_000,
        metavar="N",
        help="game-socket connections in all, per node (default 20000; 0: no limit)",
    ),
    opt(
        "--login-attempts-per-addr",
        type=int,
        default=_budgets.login_attempts_per_addr,
        metavar="N",
        help="logins, registrations and account deletions a minute per client address, on all"
        f" nodes together (default {_budgets.login_attempts_per_addr}; 0: no limit)",
    ),
    opt(
        "--failed-logins-per-account",
        type=int,
        default=_budgets.failed_logins_per_account,
        metavar="N",
        help="failed logins a minute per account, whatever the addresses"
        f" (default {_budgets.failed_logins_per_account}; at least 1)",
    ),
    opt(
        "--failed-submissions-per-addr",
        type=int,
        default=_budgets.failed_submissions_per_addr,
        metavar="N",
        help="failed submissions (each one a flag) a minute per client address; past it they"
        " are refused, not flagged; honest ones are never refused"
        f" (default {_budgets.failed_submissions_per_addr}; 0: no limit)",
    ),
    opt(
        "--admin-failures-per-addr",
        type=int,
        default=_budgets.admin_failures_per_addr,
        metavar="N",
        help="failed /admin logins a minute per client address"
        f" (default {_budgets.admin_failures_per_addr}; at least 1)",
    ),
    opt(
        "--admin-failures",
        type=int,
        default=_budgets.admin_failures,
        metavar="N",
        help="failed /admin logins a minute, whatever the addresses"
        f" (default {_budgets.admin_failures}; at least 1)",
    ),
    opt(
        "--flags-per-addr",
        type=int,
        default=_budgets.flags_per_addr,
        metavar="N",
        help="flags a minute per sender (a logged-in player's account, else the client address);"
        " past it, that sender's flags are not recorded; repeats of an open flag's cause count"
        f" on it (default {_budgets.flags_per_addr}; at least 1)",
    ),
    opt(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="a balancer or proxy whose connections may name the client: its PROXY header (v1,"
        " v2) or --forwarded-header is read (repeatable; default none: every peer is the client)",
    ),
    opt(
        "--forwarded-header",
        choices=HEADERS,
        default="x-forwarded-for",
        help="the header the trusted proxies write (only that one is read; default"
        " x-forwarded-for)",
    ),
    opt(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin allowed besides same-host ones (repeatable; '*' for any)",
    ),
    opt("--tls-cert", type=Path, help="serve both ports over TLS with this cert"),
    opt("--tls-key", type=Path, help="the TLS certificate's private key"),
    # Gone: point tokens are MACs made on the loop (tokens.py); accepted and ignored, so
    # that a command line written for an earlier version still starts.
    opt("--signer", help=argparse.SUPPRESS),
    opt(
        "--store-writer",
        choices=STORE_WRITERS,
        default="process",
        help="where the database writes run: a child process (default) or a thread",
    ),
    opt("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ..."),
    opt(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics at /metrics on this port (default: off; 0: any free)",
    ),
    opt(
        "--metrics-host",
        default="127.0.0.1",
        help="the address /metrics listens on (keep it private: it is not for players)",
    ),
    opt(
        "--webhook",
        metavar="URL",
        default=None,  # SCORESERVER_WEBHOOK's value when the parser is built: `_build`
        help="POST a JSON notification here for every new first place and new flag (a Discord"
        " or Slack incoming-webhook URL works as it is; retried, never delays play). Such URLs"
        f" are secrets: {WEBHOOK_ENV}=URL keeps it out of `ps` (default: off)",
    ),
    opt(
        "--node-url",
        help="this node's game-socket URL as players reach it, for other nodes of the database"
        " to send them here (default ws://HOST:PORT/ of its socket; docs/scaling.md)",
    ),
    opt(
        "--node-lease",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a node silent this long is gone: its running games are voided (default 10)",
    ),
    opt(
        "--workers",
        type=int,
        default=1,
        help="event-loop processes of this node, sharing its ports (default 1; docs/scaling.md)",
    ),
    # Internal: how `--workers N` starts each worker (its own game-socket port, shared ports).
    opt("--worker-of", type=int, help=argparse.SUPPRESS),
    opt("--direct-ws-port", type=int, help=argparse.SUPPRESS),
    opt("--writer-socket", help=argparse.SUPPRESS),
)


# --- a game's settings (games add, games set) ----------------------------------------------

_game = GameSettings(duration_ms=1)

GAME_OPTIONS: tuple[Opt | OneOf, ...] = (
    opt("--duration", type=float, help="seconds (fractions allowed)"),
    opt(
        "--burst-window-ms",
        type=int,
        help=f"the window bursts are counted in (default {_game.burst_window_ms})",
    ),
    opt(
        "--burst-threshold",
        type=int,
        help=f"most points accepted in any burst window (default {_game.burst_threshold})",
    ),
    opt(
        "--burst-limit",
        type=int,
        help=f"bursts allowed in a burst period; one more ends the game and flags it"
        f" (default {_game.burst_limit})",
    ),
    opt(
        "--burst-period-ms",
        type=int,
        help=f"the period bursts are counted in (default {_game.burst_period_ms})",
    ),
    opt(
        "--latency-ms",
        type=int,
        help=f"how far a point's time may be from where the player's clock puts it"
        f" (default {_game.latency_ms})",
    ),
    opt(
        "--submission-window-s",
        type=float,
        help=f"how long after its end a game may be submitted"
        f" (default {_game.submission_window_ms // 1000})",
    ),
    opt(
        "--human-floor-ms",
        type=int,
        help="points repeatedly closer than this are flagged inhuman_timing (default 60; 0: off)",
    ),
    opt(
        "--min-rhythm-cv",
        type=float,
        help="intervals (on the player's clock) more regular than this coefficient of"
        f" variation are flagged robotic_rhythm (default {_game.min_rhythm_cv:g}; 0: off)",
    ),
    opt(
        "--human-max-rate",
        type=float,
        metavar="PER_S",
        help="more points a second than this, sustained over 10 s, are flagged"
        f" superhuman_rate (default {_game.human_max_rate:g}; 0: off, for games where a"
        " point is not a deliberate act)",
    ),
    OneOf(
        (
            opt(
                "--max-score",
                type=int,
                help="a result above N is refused as implausible_score and flagged (default: none)",
            ),
            opt("--no-max-score", action="store_true", help="remove the game's --max-score bound"),
        )
    ),
    opt(
        "--hold-outliers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="hold a score above the range the game's trusted players have shown off boards"
        " until a reviewer clears it (default: hold; --no-hold-outliers flags it for review"
        " and still shows it)",
    ),
    OneOf(
        (
            opt(
                "--review-above",
                type=int,
                metavar="SCORE",
                help="the top of the review range while the game has too few trusted players"
                " (default: half of what --human-max-rate allows in a game)",
            ),
            opt(
                "--no-review-above",
                action="store_true",
                help="take the settings' top from --human-max-rate again",
            ),
        )
    ),
    opt(
        "--review-min-players",
        type=int,
        metavar="N",
        help="trusted players needed before the range comes from their best scores"
        f" (default {_game.review_min_players})",
    ),
    opt(
        "--review-account-age-h",
        type=float,
        metavar="HOURS",
        help="how old an account must be for its results to count as trusted, unless a"
        f" reviewer cleared them (default {_game.review_account_age_h:g}; 0 for an event"
        " whose accounts are all new)",
    ),
    opt("--title", help="a display name for pages (default: the game id)"),
)

# "(default 60; 0: off)" -> " (0: off)"; "(default: none)" -> "".
_DEFAULT_IN_HELP = re.compile(r" \(default:? [^;)]*(?:; ([^)]*))?\)")


def _changed(option: Opt, **how: Any) -> Opt:
    return Opt(option.names, {**option.how, **how})


def _for_set(options: tuple[Opt | OneOf, ...]) -> tuple[Opt | OneOf, ...]:
    """`games set`: an option not given keeps its value, so its help shows no default (the
    help of a `--no-...` flag, which has none to show, stays as it is)."""

    def one(option: Opt) -> Opt:
        text = option.how.get("help")
        if not text or option.names[0].startswith("--no-"):
            return option
        return _changed(
            option, help=_DEFAULT_IN_HELP.sub(lambda m: f" ({m[1]})" if m[1] else "", text)
        )

    return tuple(
        OneOf(tuple(one(o) for o in x.options), x.required) if isinstance(x, OneOf) else one(x)
        for x in options
    )


def _required_duration(options: tuple[Opt | OneOf, ...]) -> tuple[Opt | OneOf, ...]:
    return tuple(
        _changed(x, required=True) if isinstance(x, Opt) and x.names == ("--duration",) else x
        for x in options
    )


# --- every command -------------------------------------------------------------------------

_NAME = opt("name", help="the player's name")
_NOTE = opt("--note", required=True, help=NOTE_HELP)
_JSON = opt("--json", action="store_true", help="print JSON, for scripts")
_GAME = opt("game_id", help="the game")
_FLAG_ID = opt("flag_id", type=int, help="the flag's number (flags list)")
_SESSION = opt("session_id", help="the session (or an unambiguous prefix of its id)")

COMMANDS: Mapping[str, Cmd | Group] = {
    "serve": Cmd("run the server", SERVE_FLAGS),
    "users": Group(
        "accounts",
        {
            "add": Cmd(
                "create an account",
                (
                    _NAME,
                    opt(
                        "--password-stdin",
                        action="store_true",
                        help="read the password from standard input (default: ask for it on"
                        " the terminal)",
                    ),
                ),
            ),
            "list": Cmd("list accounts"),
            "ban": Cmd(
                "ban an account",
                (
                    _NAME,
                    opt("--days", type=float, help="ban length (default: until unbanned)"),
                    _NOTE,
                ),
            ),
            "unban": Cmd("lift a ban", (_NAME, _NOTE)),
            "delete": Cmd("erase an account's personal data (results are kept)", (_NAME, _NOTE)),
            "reset-password": Cmd(
                "print a one-time code (24 h) with which the player sets a new password on the"
                " game's page",
                (_NAME,),
            ),
        },
    ),
    "games": Group(
        "games and their rules",
        {
            "add": Cmd(
                "create a game",
                (
                    opt("game_id", help="the new game's id (in URLs: /board/GAME_ID)"),
                    *_required_duration(GAME_OPTIONS),
                ),
            ),
            "set": Cmd(
                "change a game's rules",
                (opt("game_id", help="the game to change"), *_for_set(GAME_OPTIONS)),
                description="Change a game's rules: only the options given change; the others"
                " keep their values (`games show GAME_ID`). New sessions use them; running ones"
                " keep theirs.",
            ),
            "archive": Cmd(
                "stop new games of GAME_ID; its board and results stay (--undo: playable again)",
                (_GAME, opt("--undo", action="store_true", help="make the game playable again")),
            ),
            "remove": Cmd("delete a game nobody has played (else: archive it)", (_GAME,)),
            "list": Cmd("list games"),
            "show": Cmd(
                "show a game's rules", (opt("game_id", nargs="?", help="one game (default: all)"),)
            ),
        },
    ),
    "flags": Group(
        "accounts flagged for review",
        {
            "list": Cmd(
                "list flags",
                (
                    opt("--open", action="store_true", help="only open flags"),
                    opt("--game", help="only this game's flags"),
                    opt("--user", help="only this player's flags"),
                    _JSON,
                ),
            ),
            "show": Cmd("a flag with its evidence", (_FLAG_ID, _JSON)),
            "resolve": Cmd(
                "decide a flag",
                (
                    _FLAG_ID,
                    OneOf(
                        (
                            opt(
                                "--clear",
                                action="store_true",
                                help="no cheating: restore the scores",
                            ),
                            opt("--ban", action="store_true", help="cheating: ban the account"),
                        ),
                        required=True,
                    ),
                    opt(
                        "--days",
                        type=float,
                        help="with --ban: its length (default: until unbanned)",
                    ),
                    _NOTE,
                ),
            ),
        },
    ),
    "scores": Group(
        "single scores",
        {
            "hide": Cmd("hide a session's score", (_SESSION, _NOTE)),
            "restore": Cmd("show it again", (_SESSION, _NOTE)),
        },
    ),
    "keys": Group(
        "signing keys",
        {
            "list": Cmd("list signing keys"),
            "rotate": Cmd(
                "make a new signing key",
                (opt("--key", type=Path, default=DEFAULT_KEY, help="the server's key file"),),
            ),
        },
    ),
    "audit": Cmd("the admin actions taken"),
    "export": Cmd(
        "a game's board and results, for records",
        (
            _GAME,
            opt("--format", choices=["csv", "json"], default="csv", help="the output's format"),
            opt(
                "--window",
                choices=["day", "week", "all"],
                default="all",
                help="which results, by age",
            ),
            opt(
                "--results",
                action="store_true",
                help="CSV: every result with its session id, instead of the board as shown"
                " (JSON has both)",
            ),
        ),
    ),
    "backup": Cmd(
        "a consistent copy of the live database",
        (opt("file", type=Path, help="the new file to write (it must not exist)"),),
    ),
    "migrate": Cmd(
        "copy the database (--db) into a new, empty one (--to), checked row for row",
        (
            opt(
                "--while-running",
                action="store_true",
                help="copy although a server is using the database (what it writes meanwhile"
                " is lost)",
            ),
            opt(
                "--to",
                required=True,
                help="the new database: a PostgreSQL URL (postgresql://user@host/dbname) or a file",
            ),
        ),
    ),
    "verify": Cmd(
        "check a receipt, a checkpoint or a board snapshot (exit 0 if it verifies)",
        (
            opt("file", help="the file to check, or - for standard input"),
            OneOf(
                (
                    opt("--keys", help="the server's keys, saved from GET /api/keys (offline)"),
                    opt(
                        "--server",
                        metavar="URL",
                        help="fetch the keys and the log's proofs from this server",
                    ),
                )
            ),
        ),
        common=False,
    ),
    "log": Group(
        "the results log",
        {
            "verify": Cmd(
                "recompute the log from the database and check it against every checkpoint"
                " and result (exit 1, naming what differs)"
            ),
            "watch": Cmd(
                "follow a server's signed checkpoints: each must extend the last one seen",
                (
                    opt("url", help="the server's HTTP address, e.g. https://scores.example"),
                    opt(
                        "--state",
                        default="scoreserver-watch.json",
                        help="where the last checkpoint seen is kept between runs",
                    ),
                    opt("--interval", type=float, default=10.0, help="seconds between checks"),
                    opt("--once", action="store_true", help="check once and exit"),
                ),
                common=False,
            ),
        },
    ),
    "boards": Group(
        "signed copies of boards",
        {
            "snapshot": Cmd(
                "freeze a board as a signed document naming a checkpoint (for a prize list)",
                (
                    _GAME,
                    opt(
                        "--window",
                        choices=["day", "week", "all"],
                        default="all",
                        help="which results, by age",
                    ),
                    opt("--limit", type=int, default=100, help="how many places"),
                    opt("--out", required=True, help="the file to write (it must not exist)"),
                    opt("--key", type=Path, default=DEFAULT_KEY, help="the server's key file"),
                ),
            ),
        },
    ),
    "leaderboard": Cmd(
        "a game's leaderboard",
        (_GAME, opt("--limit", type=int, default=10, help="how many places"), _JSON),
    ),
    "admin": Group(
        "the admin page",
        {
            "set-password": Cmd(
                "set the /admin password",
                (
                    opt(
                        "--password-stdin",
                        action="store_true",
                        help="read the password from standard input (default: ask on the terminal)",
                    ),
                ),
            ),
            "login-link": Cmd(
                "print a link that opens /admin without the password (for whoever can run this"
                " on the server's machine: works while guessers hold the password login at its"
                " limit)",
                (
                    opt(
                        "--url",
                        default="http://127.0.0.1:8080",
                        help="the server's HTTP address as your browser reaches it (default"
                        " http://127.0.0.1:8080)",
                    ),
                ),
            ),
        },
    ),
}


# --- how help reads, and the one builder ---------------------------------------------------


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


def _add(parser: argparse.ArgumentParser, args: tuple[Opt | OneOf, ...]) -> None:
    for arg in args:
        if isinstance(arg, OneOf):
            group = parser.add_mutually_exclusive_group(required=arg.required)
            for option in arg.options:
                group.add_argument(*option.names, **option.how)
            continue
        how = dict(arg.how)
        if arg.names == ("--webhook",):  # read when parsing, so a test's environment counts
            how["default"] = os.environ.get(WEBHOOK_ENV) or None
        parser.add_argument(*arg.names, **how)


def _build(
    sub: Any,  # what add_subparsers returns (argparse names its type privately)
    commands: Mapping[str, Cmd | Group],
    common: Parser,
) -> None:
    for name, command in commands.items():
        if isinstance(command, Group):
            inner = sub.add_parser(name, help=command.help).add_subparsers(
                dest="action", required=True
            )
            _build(inner, command.commands, common)
            continue
        parser = sub.add_parser(
            name,
            parents=[common] if command.common else [],
            help=command.help,
            description=command.description,
        )
        _add(parser, command.args)


def serve_parser(prog: str) -> argparse.ArgumentParser:
    """The parser of `python run.py`: serve's flags under the name it was started by."""
    parser = Parser(
        prog=prog,
        parents=[_common()],
        description="Run scoreserver: the game socket, HTTP, and its helper processes.",
    )
    _add(parser, SERVE_FLAGS)
    parser.set_defaults(command="serve")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of `scoreserver`, made from `COMMANDS`."""
    parser = Parser(prog="scoreserver", description="Server-authoritative scores for web games.")
    _build(parser.add_subparsers(dest="command", required=True), COMMANDS, _common())
    return parser
