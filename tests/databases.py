"""Databases for tests: a SQLite file, or a database on a throwaway PostgreSQL cluster.

The cluster is made once per test run in a temporary directory (initdb, pg_ctl) from Debian's
`postgresql` package, listening on 127.0.0.1 on a free port. initdb and pg_ctl refuse to run
as root, so as root they run as the `postgres` user the package creates. Tests that run on
both engines get a new, empty database each (`location`). With the binaries missing, those
tests skip, unless SCORESERVER_REQUIRE_POSTGRES is set (CI sets it): then they fail.

The cluster runs with fsync off: the tests kill scoreserver's processes, never PostgreSQL's or
the machine, so every COMMIT they check is in the server's memory and its WAL either way.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scoreserver.core.rules import GameSettings
from scoreserver.store import ops
from scoreserver.store.connect import connect, open_database
from scoreserver.store.engine import Location, transaction

ENGINES = ("sqlite", "postgres")
REQUIRE = "SCORESERVER_REQUIRE_POSTGRES"
NO_TIMING = {"human_floor_ms": 0, "min_rhythm_cv": 0.0}


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A running PostgreSQL cluster of our own; `new_database()` hands out empty databases."""

    def __init__(self) -> None:
        binaries = _binaries()
        if binaries is None:
            message = "PostgreSQL's binaries (Debian's postgresql package) are not installed"
            if os.environ.get(REQUIRE):
                pytest.fail(f"{message}, and {REQUIRE} is set")
            pytest.skip(message)
        self.bin = binaries
        self.dir = Path(tempfile.mkdtemp(prefix="scoreserver-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
            self._user = {"user": entry.pw_uid, "group": entry.pw_gid}
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
            "--locale=C", "--encoding=UTF8",
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c fsync=off"
            f" -c unix_socket_directories={self.dir} -c max_connections=300"
            " -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w",
            "start",
        )  # fmt: skip
        self._names = itertools.count(1)

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin / program), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.dir,
            **self._user,
        )

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


_cluster: Cluster | None = None


def cluster() -> Cluster:
    """The test run's cluster, started on first use (stopped by `stop_cluster`)."""
    global _cluster
    if _cluster is None:
        _cluster = Cluster()
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
