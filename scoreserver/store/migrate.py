"""Copy a database to another engine (`scoreserver migrate --to postgresql://...`), checked
row for row.

The target must be empty: its schema is created, every table is copied in the order its
references need, in one transaction, keeping every id (PostgreSQL's identity sequences then
start after the largest), and before the COMMIT each table is read back from both sides,
ordered by its key, and compared value by value. A difference rolls the whole copy back. The
source is only read: run it while no server writes to it (stop the server first).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConflictError, StoreError
from .connect import open_database
from .engine import Connection, Location
from .ops import GAME_FIELDS

logger = logging.getLogger("scoreserver.store.migrate")

CHUNK = 5000


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]  # the order rows are copied and compared in
    identity: str | None = None  # a generated id column whose sequence must follow the copy
    always: bool = False  # the column is GENERATED ALWAYS on PostgreSQL (SQLite's rowid)


# In the order their references need. Every column of schema.sql, by name.
TABLES = (
    Table(
        "users",
        (
            "id",
            "name",
            "name_skeleton",
            "password_hash",
            "created_at",
            "banned_until",
            "ban_note",
            "deleted_at",
            "reset_hash",
            "reset_expires_at",
        ),
        ("id",),
        identity="id",
    ),
    Table("login_tokens", ("token_hash", "user_id", "created_at", "expires_at"), ("token_hash",)),
    Table("games", ("id", *GAME_FIELDS, "created_at", "updated_at"), ("id",)),
    Table(
        "game_sessions",
        (
            "id",
            "game_id",
            "user_id",
            "guest_addr",
            "user_agent",
            "settings_json",
            "started_at",
            "client_start_ts",
            "start_token",
            "end_token",
            "ended_at",
            "end_reason",
            "state",
        ),
        ("id",),
    ),
    Table(
        "issued_points",
        ("session_id", "seq", "server_ts", "client_ts", "token"),
        ("session_id", "seq"),
    ),
    Table(
        "rejected_points",
        ("rowid", "session_id", "server_ts", "client_ts", "reason"),
        ("rowid",),
        identity="rowid",
        always=True,
    ),
    Table("bursts", ("rowid", "session_id", "at_ms"), ("rowid",), identity="rowid", always=True),
    Table(
        "scores",
        (
            "id",
            "session_id",
            "game_id",
            "user_id",
            "score",
            "created_at",
            "hidden",
            "held",
            "reviewed_at",
            "log_index",
        ),
        ("id",),
        identity="id",
    ),
    Table(
        "flags",
        (
            "id",
            "created_at",
            "reason",
            "game_id",
            "session_id",
            "user_id",
            "guest_addr",
            "user_agent",
            "detail_json",
            "status",
            "holds",
            "resolved_at",
            "resolution_note",
        ),
        ("id",),
        identity="id",
    ),
    Table("signing_keys", ("kid", "public_key", "created_at", "retired_at"), ("kid",)),
    Table("log_entries", ("idx", "body", "created_at"), ("idx",)),
    Table("log_checkpoints", ("size", "root", "note", "created_at"), ("size",)),
    Table("player_salts", ("user_id", "salt"), ("user_id",)),
    Table("audit", ("id", "at", "actor", "command", "target", "note"), ("id",), identity="id"),
    Table("admin_sessions", ("token_hash", "created_at", "expires_at", "address"), ("token_hash",)),
    Table("settings", ("key", "value"), ("key",)),
)


def _select(table: Table) -> str:
    return f"SELECT {', '.join(table.columns)} FROM {table.name} ORDER BY {', '.join(table.key)}"


def _rows(conn: Connection, table: Table) -> Iterator[tuple[Any, ...]]:
    cursor = conn.execute(_select(table))
    while True:
        chunk = cursor.fetchmany(CHUNK)
        if not chunk:
            return
        for row in chunk:
            yield tuple(_plain(value) for value in row)


def _plain(value: Any) -> Any:
    """One value as both engines give it back: BLOB/BYTEA as bytes."""
    if isinstance(value, memoryview):
        return value.tobytes()
    return value


def _insert(target: Connection, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
    overriding = " OVERRIDING SYSTEM VALUE" if table.always and target.dialect == "postgres" else ""
    target.executemany(
        f"INSERT INTO {table.name} ({', '.join(table.columns)}){overriding}"
        f" VALUES ({', '.join('?' for _ in table.columns)})",
        rows,
    )


def _is_empty(conn: Connection) -> bool:
    return all(
        conn.execute(f"SELECT COUNT(*) FROM {table.name}").fetchone()[0] == 0 for table in TABLES
    )


def copy(
    source: Location, target: Location, report: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Copy every row of `source` into the empty `target` and check it; returns the rows
    copied per table. Raises StoreError (nothing committed) if any row differs."""
    if source == target:
        raise ValueError("the source and the target are the same database")
    reader = open_database(source)
    writer = open_database(target)
    try:
        if not _is_empty(writer):
            raise ConflictError(f"{target} is not empty: migrate into a new database")
        counts: dict[str, int] = {}
        writer.execute("BEGIN IMMEDIATE" if writer.dialect == "sqlite" else "BEGIN")
        try:
            for table in TABLES:
                counts[table.name] = _copy_table(reader, writer, table)
                if report is not None:
                    report(table.name, counts[table.name])
            for table in TABLES:
                _check_table(reader, writer, table)
            _advance_sequences(writer)
            writer.execute("COMMIT")
        except BaseException:
            writer.execute("ROLLBACK")
            raise
        return counts
    finally:
        reader.close()
        writer.close()


def _copy_table(reader: Connection, writer: Connection, table: Table) -> int:
    count = 0
    batch: list[tuple[Any, ...]] = []
    for row in _rows(reader, table):
        batch.append(row)
        if len(batch) >= CHUNK:
            _insert(writer, table, batch)
            count += len(batch)
            batch = []
    if batch:
        _insert(writer, table, batch)
        count += len(batch)
    return count


def _check_table(reader: Connection, writer: Connection, table: Table) -> None:
    """Every row read back from the target equals the source's, in the same order."""
    copied = _rows(writer, table)
    for index, row in enumerate(_rows(reader, table)):
        other = next(copied, None)
        if other != row:
            raise StoreError(
                f"migration check failed: {table.name} row {index} differs"
                f" ({_key(table, row)} vs {_key(table, other)}); nothing was committed"
            )
    extra = next(copied, None)
    if extra is not None:
        raise StoreError(f"migration check failed: {table.name} has extra rows in the target")


def _key(table: Table, row: tuple[Any, ...] | None) -> str:
    if row is None:
        return "missing"
    return ", ".join(f"{c}={row[table.columns.index(c)]!r}" for c in table.key)


def _advance_sequences(writer: Connection) -> None:
    if writer.dialect != "postgres":
        return
    for table in TABLES:
        if table.identity is None:
            continue
        writer.execute(
            f"SELECT setval(pg_get_serial_sequence('{table.name}', '{table.identity}'),"
            f" COALESCE((SELECT MAX({table.identity}) FROM {table.name}), 0) + 1, false)"
        )
