"""Which database, and the few words in which the two engines differ.

`--db` is a path (SQLite, the default: one file, nothing to run) or a libpq URL
(`postgresql://user@host:port/dbname`: PostgreSQL, for many nodes). `Location` says which;
`connect` opens a connection that every operation of `ops` can run on, whichever engine is
behind it: both speak `execute(sql, params)`, `executemany`, `in_transaction` and `dialect`,
with SQLite's placeholders (`?`, `:name`), which the PostgreSQL connection translates.

Errors: a constraint the database refuses is an `integrity error` on both (`INTEGRITY_ERRORS`);
`is_unique_violation` tells a uniqueness refusal from the others.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

Dialect = Literal["sqlite", "postgres"]
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What an operation of `ops` may use of its connection."""

    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Any: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Location:
    """Where the database is: a SQLite file or a PostgreSQL URL."""

    target: str

    @classmethod
    def of(cls, value: str | Path | Location) -> Location:
        if isinstance(value, Location):
            return value
        return cls(str(value))

    @property
    def dialect(self) -> Dialect:
        return "postgres" if self.target.startswith(POSTGRES_SCHEMES) else "sqlite"

    @property
    def path(self) -> Path:
        if self.dialect != "sqlite":
            raise ValueError("a PostgreSQL database has no file")
        return Path(self.target)

    def __str__(self) -> str:
        """For logs and messages: a URL's password is never shown."""
        return self.target if self.dialect == "sqlite" else redact(self.target)


def _integrity_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:  # PostgreSQL support not installed: SQLite's error only
        return (sqlite3.IntegrityError,)
    return (sqlite3.IntegrityError, psycopg.errors.IntegrityError)


INTEGRITY_ERRORS = _integrity_errors()
# What a unit may raise for a value the database cannot hold or a statement it refuses.
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, *INTEGRITY_ERRORS)


def is_unique_violation(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE" in str(exc)
    return getattr(exc, "sqlstate", None) == "23505"


def no_limit(limit: int) -> int:
    """A page size where -1 means all: the value both engines read as no limit."""
    return limit if limit >= 0 else 2**62


def redact(url: str) -> str:
    """A URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """BEGIN ... COMMIT, or ROLLBACK on any error. On SQLite BEGIN IMMEDIATE: the write lock
    is taken at once, so a transaction never fails half-way for want of it."""
    conn.execute("BEGIN IMMEDIATE" if conn.dialect == "sqlite" else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
