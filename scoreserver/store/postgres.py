"""PostgreSQL, the second engine: connections through psycopg 3, and its schema.

The store's operations are written once, with SQLite's placeholders; `PgConnection` translates
them (`?` -> `%s`, `:name` -> `%(name)s`) once per statement text and keeps the result, and
returns rows that read by position and by column name, as `sqlite3.Row` does. It runs in
autocommit mode so that the store's writer says BEGIN and COMMIT itself, as it does on SQLite;
PostgreSQL's READ COMMITTED isolation and the unique indexes keep what SQLite's one writer
keeps (one running game per user and game, a session submitted once).

psycopg's async API does not run under trio, so connections are used from worker threads (the
store's readers, a psycopg_pool pool) or from the writer thread or process, never on the
event loop's thread except in the inline mode the autojump-clock tests use.

Durability: PostgreSQL's default `synchronous_commit = on` makes a COMMIT durable before it
returns; the store acknowledges after its COMMIT, as on SQLite.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from ..errors import ConflictError, StoreError
from .engine import redact
from .sqlite import CONSOLE_SQL, LOG_SQL, REVIEW_SQL, log_earlier_results, rekey_names

logger = logging.getLogger("scoreserver.store")
# How often the listening thread looks up from its wait (to notice it should stop).
LISTEN_POLL_S = 0.5

SCHEMA_VERSION = 6
SCHEMA_PATH = Path(__file__).with_name("postgres.sql")
CONNECT_TIMEOUT_S = 10
SCHEMA_LOCK = 0x5C0E5E  # the advisory lock held while the schema is created or checked


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - installed with scoreserver
        raise StoreError(
            "PostgreSQL needs psycopg: pip install 'psycopg[binary]' psycopg_pool"
        ) from None
    return psycopg


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """SQLite's placeholders as psycopg's: `?` -> `%s`, `:name` -> `%(name)s`."""
    sql = sql.replace("%", "%%")
    sql = _NAMED.sub(r"%(\1)s", sql)
    return sql.replace("?", "%s")


class Row(tuple[Any, ...]):
    """A row that reads by position and by column name, like sqlite3.Row."""

    __slots__ = ()
    _names: tuple[str, ...] = ()
    _index: dict[str, int] = {}  # noqa: RUF012 - set per class by _row_class

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


@functools.lru_cache(maxsize=256)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    return type("Row", (Row,), {"_names": names, "_index": {n: i for i, n in enumerate(names)}})


def _row_factory(cursor: Any) -> Any:
    if cursor.description is None:
        return None
    cls = _row_class(tuple(column.name for column in cursor.description))
    return cls


class PgConnection:
    """A psycopg connection that runs the store's SQLite-worded statements."""

    dialect: Final = "postgres"

    def __init__(self, conn: Any):
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = (), /) -> Any:
        cursor = self.raw.cursor(row_factory=_row_factory)
        cursor.execute(translate(sql), params if params else None, prepare=False)
        return cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Any:
        cursor = self.raw.cursor()
        cursor.executemany(translate(sql), rows)
        return cursor

    @property
    def in_transaction(self) -> bool:
        psycopg = _psycopg()
        return bool(self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)

    def close(self) -> None:
        self.raw.close()

    def __iter__(self) -> Iterator[Any]:  # pragma: no cover - not a cursor
        raise TypeError("iterate a cursor, not the connection")


def connect(url: str) -> PgConnection:
    psycopg = _psycopg()
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        raise StoreError(f"cannot connect to {redact(url)}: {_first_line(exc)}") from None
    return PgConnection(conn)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# From each older version to the next, run in the one transaction of `ensure_schema`: SQL, or
# a function of the connection for what SQL alone cannot do.
UPGRADES: dict[int, tuple[str | Callable[[Any], None], ...]] = {
    2: (
        'ALTER TABLE game_sessions ADD COLUMN node_id TEXT COLLATE "C"',
        "CREATE INDEX game_sessions_node ON game_sessions(node_id) WHERE state = 'running'",
        'CREATE TABLE nodes (id TEXT COLLATE "C" PRIMARY KEY, url TEXT NOT NULL,'
        " host TEXT NOT NULL, pid BIGINT NOT NULL,"
        ' kid TEXT COLLATE "C", started_at BIGINT NOT NULL, seen_at BIGINT NOT NULL,'
        " lease_ms BIGINT NOT NULL)",
        "CREATE TABLE attempts (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
        ' budget TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL, at BIGINT NOT NULL)',
        "CREATE INDEX attempts_key ON attempts(budget, key, at)",
        "CREATE INDEX scores_created ON scores(created_at)",
    ),
    3: tuple(
        statement.replace(" REAL ", " DOUBLE PRECISION ").replace(" INTEGER", " BIGINT")
        for statement in REVIEW_SQL
    ),
    4: (
        *(
            statement.replace(" BLOB", " BYTEA").replace(" INTEGER", " BIGINT")
            for statement in CONSOLE_SQL
        ),
        rekey_names,
    ),
    5: (
        *(
            statement.replace(" BLOB", " BYTEA").replace(" INTEGER", " BIGINT")
            for statement in LOG_SQL
        ),
        log_earlier_results,
    ),
}


def ensure_schema(conn: PgConnection) -> None:
    """Create the schema in an empty database; refuse one of another version."""
    conn.execute("BEGIN")
    try:
        # One starter at a time creates it (a second node starting at the same moment waits).
        conn.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
        row = conn.execute("SELECT to_regclass('scoreserver_schema')").fetchone()
        if row[0] is None:
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema ="
                " current_schema() AND table_name IN ('users', 'games', 'game_sessions')"
            ).fetchone()[0]
            if tables:
                raise StoreError("this database has tables of another program; use an empty one")
            conn.raw.execute(SCHEMA_PATH.read_text(encoding="utf-8"))
        else:
            version = conn.execute("SELECT version FROM scoreserver_schema").fetchone()[0]
            if version in UPGRADES:
                for step in range(version, SCHEMA_VERSION):
                    for statement in UPGRADES[step]:
                        if callable(statement):
                            statement(conn)
                        else:
                            conn.execute(statement)
                conn.execute("UPDATE scoreserver_schema SET version = ?", (SCHEMA_VERSION,))
                logger.info(
                    "database schema upgraded from version %d to %d", version, SCHEMA_VERSION
                )
            elif version != SCHEMA_VERSION:
                raise StoreError(
                    f"database schema version {version}, this scoreserver knows {SCHEMA_VERSION}"
                )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def open_database(url: str) -> PgConnection:
    conn = connect(url)
    try:
        ensure_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def reader_pool(url: str, size: int) -> Any:
    """A psycopg_pool pool of reading connections (autocommit: each query sees the latest
    commits)."""
    try:
        from psycopg_pool import ConnectionPool
    except ImportError:  # pragma: no cover - installed with scoreserver
        raise StoreError("PostgreSQL needs psycopg_pool: pip install psycopg_pool") from None
    return ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
        open=True,
        name="scoreserver-readers",
    )


def dump(url: str, target: Path) -> None:
    """`pg_dump --format=custom` of the database into the new file `target` (mode 0600), then
    `pg_restore --list` of it: a dump that cannot be read back is removed and an error."""
    if target.exists():
        raise ConflictError(f"{target} exists: choose a new file")
    programs = [shutil.which(name) for name in ("pg_dump", "pg_restore")]
    if None in programs:
        raise StoreError("a PostgreSQL backup needs pg_dump and pg_restore (PostgreSQL's client)")
    pg_dump, pg_restore = (str(p) for p in programs)
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        _run_tool([pg_dump, "--format=custom", f"--file={target}", f"--dbname={url}"], url)
        listing = _run_tool([pg_restore, "--list", str(target)], url)
        if "TABLE DATA" not in listing or "scores" not in listing:
            raise StoreError(f"the dump in {target} does not read back whole")
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _run_tool(command: list[str], url: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        message = done.stderr.strip().replace(url, redact(url)) or f"exit {done.returncode}"
        raise StoreError(f"{Path(command[0]).name} failed: {message}")
    return done.stdout


async def listen(
    url: str, channel: str, deliver: Callable[[str], None], task_status: trio.TaskStatus[bool]
) -> None:
    """LISTEN on `channel` over a connection of its own, in a worker thread; call `deliver` on
    the event loop with each notice's payload until cancelled. A lost connection is opened
    again (notices meanwhile are missed: the server's pollers catch up within seconds)."""
    token = trio.lowlevel.current_trio_token()
    stop = threading.Event()

    def open_listening() -> PgConnection:
        conn = connect(url)
        conn.raw.execute(f"LISTEN {channel}")  # a constant of ops, not input
        return conn

    def pump(conn: PgConnection) -> None:
        try:
            while not stop.is_set():
                for notice in conn.raw.notifies(timeout=LISTEN_POLL_S):
                    trio.from_thread.run_sync(deliver, notice.payload, trio_token=token)
        except trio.RunFinishedError:
            pass
        finally:
            conn.close()

    conn = await trio.to_thread.run_sync(open_listening)
    task_status.started(True)
    try:
        while True:
            try:
                await trio.to_thread.run_sync(pump, conn, abandon_on_cancel=True)
            except Exception as exc:  # the connection was lost
                logger.warning("listening for notices failed (%s); again in 1 s", _first_line(exc))
            await trio.sleep(1.0)
            try:
                conn = await trio.to_thread.run_sync(open_listening, abandon_on_cancel=True)
            except StoreError as exc:
                logger.warning("%s", exc)
    finally:
        stop.set()
