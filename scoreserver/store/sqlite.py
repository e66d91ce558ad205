"""SQLite, the embedded engine: its connections, its schema (schema.sql at the top of the
repository) and its upgrades, integrity check and online backup.

Every connection runs in WAL mode with synchronous=NORMAL: a COMMIT survives the process being
killed (SIGKILL); only a power cut may lose the last commits before a checkpoint. A new
database file is created readable by its owner only (it holds password hashes and guests'
addresses); SQLite gives its -wal and -shm files the same mode.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from ..core.names import skeleton
from ..errors import ConflictError, StoreError
from .engine import Connection, transaction

logger = logging.getLogger("scoreserver.store")

SCHEMA_VERSION = 6
SCHEMA_PATH = Path(__file__).with_name("sqlite.sql")


class SqliteConnection(sqlite3.Connection):
    """sqlite3's connection, saying which engine it is (`engine.Connection`)."""

    dialect: Final = "sqlite"


def connect(path: str | Path) -> SqliteConnection:
    """A connection with the pragmas every part of scoreserver relies on.

    A new database file is created readable by its owner only (it holds password hashes and
    guests' addresses); SQLite gives its -wal and -shm files the same mode.
    """
    _create_private(Path(path))
    conn = sqlite3.connect(
        str(path),
        isolation_level=None,
        check_same_thread=False,
        timeout=10.0,
        factory=SqliteConnection,
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.row_factory = sqlite3.Row
    return conn


def _create_private(path: Path) -> None:
    if str(path) == ":memory:" or path.exists():
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:  # made meanwhile by another connection: fine
        pass


def ensure_schema(conn: SqliteConnection) -> None:
    """Create the schema in a new database, bring an older one up to date; refuse a newer."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version in MIGRATIONS:
        with transaction(conn):
            if conn.execute("PRAGMA user_version").fetchone()[0] == version:  # not raced
                for step in range(version, SCHEMA_VERSION):
                    MIGRATIONS[step](conn)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        logger.info("database schema upgraded from version %d to %d", version, SCHEMA_VERSION)
        return
    if version != 0:
        raise StoreError(
            f"database schema version {version}, this scoreserver knows {SCHEMA_VERSION}"
        )
    script = SCHEMA_PATH.read_text(encoding="utf-8")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # executescript would COMMIT first; run the statements inside our transaction.
        for statement in _split_sql(script):
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _migrate_1_to_2(conn: SqliteConnection) -> None:
    """Schema 2: name skeletons, one running game per user and game, admin sessions."""
    conn.execute("ALTER TABLE users ADD COLUMN name_skeleton TEXT")
    taken: set[str] = set()
    for user_id, name in conn.execute("SELECT id, name FROM users ORDER BY id").fetchall():
        key = skeleton(name)
        if key not in taken:  # an older look-alike keeps no skeleton (NULLs never collide)
            taken.add(key)
            conn.execute("UPDATE users SET name_skeleton = ? WHERE id = ?", (key, user_id))
    conn.execute("CREATE UNIQUE INDEX users_name_skeleton ON users(name_skeleton)")
    # Sessions a race let run side by side: all but the newest of each are void.
    conn.execute(
        "UPDATE game_sessions SET state = 'voided', end_reason = 'crashed',"
        " ended_at = started_at WHERE state = 'running' AND user_id IS NOT NULL AND rowid NOT IN"
        " (SELECT MAX(rowid) FROM game_sessions WHERE state = 'running'"
        "  AND user_id IS NOT NULL GROUP BY user_id, game_id)"
    )
    conn.execute(
        "CREATE UNIQUE INDEX game_sessions_one_running ON game_sessions(user_id, game_id)"
        " WHERE state = 'running' AND user_id IS NOT NULL"
    )
    conn.execute(
        "CREATE TABLE admin_sessions (token_hash BLOB PRIMARY KEY, created_at INTEGER NOT NULL,"
        " expires_at INTEGER NOT NULL, address TEXT) WITHOUT ROWID"
    )
    # Timing analysis, bounds and titles of games; flags that are for review only.
    for column in (
        "human_floor_ms INTEGER NOT NULL DEFAULT 60 CHECK (human_floor_ms >= 0)",
        "min_rhythm_cv REAL NOT NULL DEFAULT 0.07 CHECK (min_rhythm_cv >= 0)",
        "max_score INTEGER CHECK (max_score >= 0)",
        "hold_outliers INTEGER NOT NULL DEFAULT 0",
        "title TEXT",
    ):
        conn.execute(f"ALTER TABLE games ADD COLUMN {column}")
    conn.execute("ALTER TABLE flags ADD COLUMN holds INTEGER NOT NULL DEFAULT 1")
    conn.execute("ALTER TABLE users ADD COLUMN deleted_at INTEGER")


def _migrate_2_to_3(conn: SqliteConnection) -> None:
    """Schema 3: nodes (sessions carry theirs) and shared attempt budgets."""
    for statement in NODES_SQL:
        conn.execute(statement)


# Schema 3's additions, as both engines' upgrades run them (postgres.py has its own types).
NODES_SQL = (
    "ALTER TABLE game_sessions ADD COLUMN node_id TEXT",
    "CREATE INDEX game_sessions_node ON game_sessions(node_id) WHERE state = 'running'",
    "CREATE TABLE nodes (id TEXT PRIMARY KEY, url TEXT NOT NULL, host TEXT NOT NULL,"
    " pid INTEGER NOT NULL, kid TEXT,"
    " started_at INTEGER NOT NULL, seen_at INTEGER NOT NULL, lease_ms INTEGER NOT NULL)",
    "CREATE TABLE attempts (id INTEGER PRIMARY KEY, budget TEXT NOT NULL, key TEXT NOT NULL,"
    " at INTEGER NOT NULL)",
    "CREATE INDEX attempts_key ON attempts(budget, key, at)",
    "CREATE INDEX scores_created ON scores(created_at)",
)


def _migrate_3_to_4(conn: SqliteConnection) -> None:
    """Schema 4: the rate ceiling and the review of the top of the board."""
    for statement in REVIEW_SQL:
        conn.execute(statement)


# Schema 4's additions, both engines (postgres.py spells the types its way). Games move to
# the new defaults: the old rhythm default (0.07, on a jitter-corrected figure) becomes 0.05 on
# the player's clock, and the top of the board is held for review.
REVIEW_SQL = (
    "ALTER TABLE games ADD COLUMN human_max_rate REAL NOT NULL DEFAULT 10"
    " CHECK (human_max_rate >= 0)",
    "ALTER TABLE games ADD COLUMN review_above INTEGER CHECK (review_above >= 0)",
    "ALTER TABLE games ADD COLUMN review_min_players INTEGER NOT NULL DEFAULT 10"
    " CHECK (review_min_players >= 1)",
    "ALTER TABLE games ADD COLUMN review_account_age_h REAL NOT NULL DEFAULT 24"
    " CHECK (review_account_age_h >= 0)",
    "UPDATE games SET min_rhythm_cv = 0.05 WHERE min_rhythm_cv = 0.07",
    "UPDATE games SET hold_outliers = 1",
    "ALTER TABLE scores ADD COLUMN held INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE scores ADD COLUMN reviewed_at INTEGER",
    "CREATE INDEX flags_session ON flags(session_id)",
)


def _migrate_4_to_5(conn: SqliteConnection) -> None:
    """Schema 5: archived games, password reset codes, look-alike keys of any case."""
    for statement in CONSOLE_SQL:
        conn.execute(statement)
    rekey_names(conn)


# Schema 5's additions, both engines (postgres.py spells the types its way).
CONSOLE_SQL = (
    "ALTER TABLE games ADD COLUMN archived_at INTEGER",
    "ALTER TABLE users ADD COLUMN reset_hash BLOB",
    "ALTER TABLE users ADD COLUMN reset_expires_at INTEGER",
)


def rekey_names(conn: Connection) -> None:
    """Recompute every name's look-alike key with today's `skeleton` (either engine). An
    account whose name now looks like an older account's keeps no key (NULLs never collide):
    it keeps its name, and nobody new can take one like it."""
    rows = conn.execute(
        "SELECT id, name FROM users WHERE name_skeleton IS NOT NULL ORDER BY id"
    ).fetchall()
    conn.execute("UPDATE users SET name_skeleton = NULL")
    taken: set[str] = set()
    for user_id, name in rows:
        key = skeleton(name)
        if key not in taken:
            taken.add(key)
            conn.execute("UPDATE users SET name_skeleton = ? WHERE id = ?", (key, user_id))


def _migrate_5_to_6(conn: SqliteConnection) -> None:
    """Schema 6: the results log; the results saved before it are its first entries."""
    for statement in LOG_SQL:
        conn.execute(statement)
    log_earlier_results(conn)


# Schema 6's additions, both engines (postgres.py spells the types its way).
LOG_SQL = (
    "ALTER TABLE scores ADD COLUMN log_index INTEGER",
    "CREATE TABLE log_entries (idx INTEGER PRIMARY KEY, body TEXT NOT NULL,"
    " created_at INTEGER NOT NULL)",
    "CREATE TABLE log_checkpoints (size INTEGER PRIMARY KEY, root BLOB NOT NULL,"
    " note TEXT NOT NULL, created_at INTEGER NOT NULL)",
    "CREATE TABLE player_salts (user_id INTEGER PRIMARY KEY REFERENCES users(id),"
    " salt BLOB NOT NULL)",
)


def log_earlier_results(conn: Connection) -> None:
    """Append every result already saved to the new log, oldest first (either engine)."""
    from .ops.log import log_result  # noqa: PLC0415 (ops import this module's engine)

    rows = conn.execute(
        "SELECT s.session_id, s.game_id, s.user_id, s.score, s.created_at, s.held,"
        " g.started_at, g.ended_at FROM scores s JOIN game_sessions g ON g.id = s.session_id"
        " ORDER BY s.created_at, s.id"
    ).fetchall()
    for row in rows:
        log_result(
            conn,
            session_id=row[0],
            game_id=row[1],
            user_id=row[2],
            score=row[3],
            started_at=row[6],
            ended_at=row[7] or row[4],
            points_digest=None,
            held=bool(row[5]),
            now=row[4],
        )


# From each older version to the next; `ensure_schema` runs them in one transaction.
MIGRATIONS: dict[int, Callable[[SqliteConnection], None]] = {
    1: _migrate_1_to_2,
    2: _migrate_2_to_3,
    3: _migrate_3_to_4,
    4: _migrate_4_to_5,
    5: _migrate_5_to_6,
}


def _split_sql(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer
            buffer = ""
    if buffer.strip():
        yield buffer


def check_integrity(conn: sqlite3.Connection) -> None:
    result = conn.execute("PRAGMA integrity_check").fetchone()[0]
    if result != "ok":
        raise StoreError(f"database integrity check failed: {result}")


def open_database(path: str | Path) -> SqliteConnection:
    conn = connect(path)
    ensure_schema(conn)
    return conn


def backup(conn: SqliteConnection, target: Path) -> None:
    """A consistent copy of the live database at `target` (SQLite's online backup: writers
    go on meanwhile), readable by its owner only."""
    if target.exists():
        raise ConflictError(f"{target} exists: choose a new file")
    _create_private(target)
    copy = sqlite3.connect(str(target))
    try:
        conn.backup(copy)
        check_integrity(copy)
    except BaseException:
        copy.close()
        target.unlink(missing_ok=True)
        raise
    copy.close()
