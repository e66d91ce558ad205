"""The `scoreserver` command line's parser: every command, flag and help text, and how help
shows defaults. `cli.py` runs what it parses."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from scoreserver.core.rules import GameSettings
from scoreserver.server.accounts import (
    BudgetSettings,
)
from scoreserver.store import (
    STORE_WRITERS,
)
from scoreserver.wire.addresses import HEADERS

# --- argument parsing -----------------------------------------------------------------------

DEFAULT_DB = Path("scoreserver.db")
WEBHOOK_ENV = "SCORESERVER_WEBHOOK"  # --webhook, kept out of `ps`
DEFAULT_KEY = Path("scoreserver.key")
NOTE_HELP = "why: every decision is audited with its note (required)"


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
