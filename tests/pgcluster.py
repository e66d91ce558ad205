"""A throwaway PostgreSQL cluster, for the tests and the benchmark.

Made in a temporary directory with initdb and started with pg_ctl (Debian's `postgresql`
package), listening on 127.0.0.1 on a free port, trusting local connections. initdb and
pg_ctl refuse to run as root, so as root they run as the `postgres` user the package creates.
It runs with fsync off: the tests and the benchmark kill scoreserver's processes, never
PostgreSQL's or the machine, and a benchmark measures scoreserver, not the disk.
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
from pathlib import Path
from typing import Any


class PostgresMissing(RuntimeError):
    """PostgreSQL's server programs are not installed."""


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
            raise PostgresMissing(
                "PostgreSQL's binaries (Debian's postgresql package) are not installed"
            )
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
