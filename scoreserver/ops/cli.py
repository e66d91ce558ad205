"""The `scoreserver` command: serve, and the operator's commands on the database.

Every command takes `--db PATH`. Commands that change something an admin decides (flags,
bans, hidden scores, game settings, keys, the admin password) are recorded in the audit
table with the OS user who ran them and the command line's note.

The parser is declared in `parser.py`; terminal tables and safe output in `terminal.py`.

Why one module of this size: one short function per command, each reading like the
operator's manual for it; the parser is `parser.py`, the terminal output `terminal.py`.
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
import secrets
import shlex
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import trio

from scoreserver.core.evidence import fmt_time, render_flag, who
from scoreserver.core.rules import GameSettings
from scoreserver.errors import (
    ConflictError,
    NotFoundError,
    PortTakenError,
    ScoreServerError,
    StoreError,
)
from scoreserver.ops import verify
from scoreserver.ops.parser import (
    WEBHOOK_ENV,
    build_parser,
    serve_parser,
)
from scoreserver.ops.terminal import TerminalSafe, fit, fmt_short, table
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
    Location,
    Store,
    WriterMode,
    ops,
)
from scoreserver.wire.addresses import TrustedProxies


def now_ms() -> int:
    return int(time.time() * 1000)


def actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (containers)
        return f"uid {os.getuid()}"


class CliError(Exception):
    """A command that cannot be carried out; printed without a traceback, exit 1."""


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
    from scoreserver.server.app import serve
    from scoreserver.server.config import Config
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
        table(
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
    # Every stored setting has a flag of its name, but these: given in seconds (above and
    # below), or set by a command of its own (`games archive`).
    for name in ops.GAME_FIELDS:
        if name in ("duration_ms", "submission_window_ms", "archived_at"):
            continue
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
        table(
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
        table(
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
            print(fit(render_flag(flag)))
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
        table(
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
    table(
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
        table(
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
    "verify": verify.cmd_verify,
    "log": lambda args: (
        verify.cmd_log_watch(args)
        if args.action == "watch"
        else with_store(verify.cmd_log_verify)(args)
    ),
    "boards": with_store(verify.cmd_boards_snapshot),
}


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
