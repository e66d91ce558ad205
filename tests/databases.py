"""Databases for tests: a SQLite file, or a database on a throwaway PostgreSQL cluster.

The cluster (pgcluster.py) is made once per test run. Tests that run on both engines get a
new, empty database each (`location`). With PostgreSQL's binaries missing, those tests skip,
unless SCORESERVER_REQUIRE_POSTGRES is set (CI sets it): then they fail.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scoreserver.core.rules import GameSettings
from scoreserver.store import ops
from scoreserver.store.connect import connect, open_database
from scoreserver.store.engine import Location, transaction

from .pgcluster import Cluster, PostgresMissing

ENGINES = ("sqlite", "postgres")
REQUIRE = "SCORESERVER_REQUIRE_POSTGRES"
# Test games do not run the timing analysis or the review of the top unless a test asks for
# it: their scripted players score at machine rhythm and speed (test_timing.py and
# test_timing_e2e.py are where those are judged).
NO_TIMING: dict[str, object] = {"human_floor_ms": 0, "min_rhythm_cv": 0.0, "human_max_rate": 0.0}


_cluster: Cluster | None = None


def cluster() -> Cluster:
    """The test run's cluster, started on first use (stopped by `stop_cluster`). Without
    PostgreSQL the test skips, or fails when SCORESERVER_REQUIRE_POSTGRES is set (CI)."""
    global _cluster
    if _cluster is None:
        try:
            _cluster = Cluster()
        except PostgresMissing as exc:
            if os.environ.get(REQUIRE):
                pytest.fail(f"{exc}, and {REQUIRE} is set")
            pytest.skip(str(exc))
    return _cluster


def stop_cluster() -> None:
    global _cluster
    if _cluster is not None:
        _cluster.stop()
        _cluster = None


# tmp_path (and a file name in it) -> the PostgreSQL database standing in for that file, for
# the tests that run on PostgreSQL.
_on_postgres: set[Path] = set()
_databases: dict[Path, str] = {}


def use_postgres(tmp_path: Path) -> None:
    _on_postgres.add(tmp_path)


def location(tmp_path: Path, name: str = "test.db") -> str:
    """The database a test calls `name`: the file tmp_path/name, or, for a test running on
    PostgreSQL, a new database of the cluster (the same one each time it is asked for)."""
    path = tmp_path / name
    if tmp_path not in _on_postgres:
        return str(path)
    if path not in _databases:
        _databases[path] = cluster().new_database()
    return _databases[path]


def resolve(where: str | Path) -> str:
    """A test's database file as the database it stands for (see `location`)."""
    if isinstance(where, Path):
        return location(where.parent, where.name)
    return where


def is_postgres(where: str | Path) -> bool:
    return Location.of(resolve(where)).dialect == "postgres"


@contextlib.contextmanager
def opened(where: str | Path) -> Iterator[Any]:
    """A connection to a database whose schema is made or checked (closed after)."""
    conn = open_database(resolve(where))
    try:
        yield conn
    finally:
        conn.close()


def create(where: str | Path) -> None:
    """Make (or check) the schema of the database, and close it."""
    with opened(where):
        pass


def run(where: str | Path, op: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a store operation in a transaction of its own, as the store's writer would."""
    with opened(where) as conn, transaction(conn):
        return op(conn, *args, **kwargs)


def read(where: str | Path, op: Any, *args: Any, **kwargs: Any) -> Any:
    conn = connect(resolve(where))
    try:
        return op(conn, *args, **kwargs)
    finally:
        conn.close()


def add_game(where: str | Path, game_id: str, **settings: Any) -> None:
    """Create a game in the database before the server starts."""
    game = GameSettings(**{"duration_ms": 30_000, **NO_TIMING, **settings})
    run(where, ops.insert_game, game_id, game, 0)


def sql(where: str | Path, statement: str, params: Any = ()) -> list[Any]:
    """A statement a test needs that no store operation offers (a check of raw state)."""
    conn = connect(resolve(where))
    try:
        cursor = conn.execute(statement, params)
        return list(cursor.fetchall()) if cursor.description else []
    finally:
        conn.close()


def undo_schema_6(conn: Any) -> None:
    """Take schema 6's additions (the results log) out of a database, in a transaction the
    caller holds: what a database of schema 5 lacked."""
    for table in ("log_entries", "log_checkpoints", "player_salts"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("ALTER TABLE scores DROP COLUMN log_index")
