"""`scoreserver serve --workers N`: N event-loop processes of one node on one machine.

Each worker is a whole server (`serve`, its own event loop and store writer, its own
row in `nodes`), started with the same flags. They share the node's two ports: every worker
listens on them with SO_REUSEPORT and the kernel spreads new connections among them. Each
worker also listens on a game-socket port of its own (`--ws-port` + 1 + its index, or any
free port when `--ws-port` is 0), which its node URL names, so that `session_elsewhere`
can send a player back to the worker that runs their game.

This process (the supervisor) reserves the ports (a bound, not listening, SO_REUSEPORT socket
each, so that port 0 becomes one port for all), makes the key file and the database schema
once, starts the workers, prints one banner when all of them listen, passes SIGTERM/SIGINT on
and restarts a worker that dies (its games are voided by the worker that replaces it: the
same machine sees at once that its process is gone).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from scoreserver import children
from scoreserver.server.accounts import BudgetSettings
from scoreserver.server.launch import parse_banner, serve_argv
from scoreserver.store import Store, WriterMode
from scoreserver.store.engine import Location, redact
from scoreserver.wire.tokens import load_or_create_key

logger = logging.getLogger("scoreserver.workers")

RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 15.0


class WorkersError(Exception):
    """The workers could not be started (printed as one line by the command line)."""


def reserve_port(host: str, port: int, flag: str) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT, not listening: it holds the port (port 0
    becomes a free one) while the workers bind it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise WorkersError(f"port {port} on {host} is in use: choose another {flag}") from None
        raise
    return sock


def worker_command(
    argv: list[str], index: int, ws_port: int, http_port: int, direct: int
) -> list[str]:
    """The command line of worker `index`: the supervisor's own flags, then the ports."""
    return serve_argv(
        *argv,
        "--ws-port",
        str(ws_port),
        "--http-port",
        str(http_port),
        "--workers",
        "1",
        "--worker-of",
        str(index),
        "--direct-ws-port",
        str(direct),
    )


def passed_flags(args: argparse.Namespace) -> list[str]:
    """The flags every worker is started with (all but the ports and --workers)."""
    flags = ["--host", args.host, "--db", str(args.db), "--key", str(args.key)]
    flags += ["--max-msg-rate", str(args.max_msg_rate)]
    flags += ["--max-conns-per-addr", str(args.max_conns_per_addr)]
    flags += ["--max-conns", str(args.max_conns)]
    for name in BudgetSettings.__dataclass_fields__:
        flags += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    for network in args.trusted_proxy:
        flags += ["--trusted-proxy", network]
    flags += ["--forwarded-header", args.forwarded_header]
    for origin in args.allow_origin:
        flags += ["--allow-origin", origin]
    if args.tls_cert:
        flags += ["--tls-cert", str(args.tls_cert), "--tls-key", str(args.tls_key)]
    flags += ["--store-writer", args.store_writer]
    flags += ["--log-level", args.log_level, "--node-lease", str(args.node_lease)]
    flags += ["--metrics-host", args.metrics_host]
    return flags


@dataclass
class Worker:
    index: int
    command: list[str]
    url: str = ""
    process: trio.Process | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    restarts: int = 0


class Supervisor:
    def __init__(
        self,
        args: argparse.Namespace,
        ws_port: int,
        http_port: int,
        writer_socket: str | None = None,
    ):
        self.args = args
        self.ws_port = ws_port
        self.http_port = http_port
        self.stopping = False
        self.writer_socket = writer_socket
        self.writer: trio.Process | None = None
        self.writer_ready = trio.Event()
        flags = passed_flags(args)
        if writer_socket is not None:
            flags += ["--writer-socket", writer_socket]
        self.workers = []
        for index in range(args.workers):
            direct = args.ws_port + 1 + index if args.ws_port else 0
            command = worker_command(flags, index, ws_port, http_port, direct)
            if args.metrics_port is not None:
                port = args.metrics_port + index if args.metrics_port else 0
                command += ["--metrics-port", str(port)]
            if args.node_url:
                command += ["--node-url", args.node_url.replace("{worker}", str(index))]
            self.workers.append(Worker(index, command))

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.writer_socket is not None:
                nursery.start_soon(self._keep_writer)
                with trio.fail_after(30):
                    await self.writer_ready.wait()
            for worker in self.workers:
                nursery.start_soon(self._keep, worker)
            with trio.fail_after(60):
                for worker in self.workers:
                    await worker.ready.wait()
            scheme = "wss" if self.args.tls_cert else "ws"
            host = "127.0.0.1" if self.args.host in ("0.0.0.0", "") else self.args.host
            print(
                f"scoreserver: game socket {scheme}://{host}:{self.ws_port}/"
                f"  HTTP http{'s' if self.args.tls_cert else ''}://{host}:{self.http_port}/"
                f"  database {redact(str(self.args.db))}  workers {len(self.workers)}:"
                f" {' '.join(w.url for w in self.workers)}",
                flush=True,
            )
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            self.stopping = True
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    worker.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_TIMEOUT_S):
                for worker in self.workers:
                    if worker.process is not None:
                        await worker.process.wait()
            if self.writer is not None and self.writer.stdin is not None:
                # Every worker has sent its last batch and ended its channel: the writer
                # commits what it holds and exits when its input closes.
                await self.writer.stdin.aclose()
                with trio.move_on_after(STOP_TIMEOUT_S):
                    await self.writer.wait()
            nursery.cancel_scope.cancel()

    async def _keep_writer(self) -> None:
        """Run the shared writer of a SQLite file; start it again if it dies (the workers,
        whose stores then fail, stop and are started again: see `_keep`)."""
        assert self.writer_socket is not None
        while not self.stopping:
            await trio.Path(self.writer_socket).unlink(missing_ok=True)
            command, env = children.python_module(
                "scoreserver.store.writer_child", str(self.args.db), "--shared", self.writer_socket
            )
            process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
            )
            self.writer = process
            assert process.stdout is not None
            await process.stdout.receive_some()  # "listening", or nothing if it failed
            self.writer_ready.set()
            await _until_exit(process)
            if self.stopping:
                return
            logger.critical(
                "the shared database writer exited (%s); starting it again", process.returncode
            )
            await trio.sleep(RESTART_DELAY_S)

    async def _keep(self, worker: Worker) -> None:
        """Run a worker; start it again if it dies (not when stopping)."""
        while not self.stopping:
            process = await trio.lowlevel.open_process(worker.command, stdout=subprocess.PIPE)
            worker.process = process
            await _until_exit(process, self._read_banner(worker, process))
            if self.stopping:
                return
            worker.restarts += 1
            logger.error(
                "worker %d exited (%s); starting it again", worker.index, process.returncode
            )
            await trio.sleep(RESTART_DELAY_S)

    async def _read_banner(self, worker: Worker, process: trio.Process) -> None:
        assert process.stdout is not None
        output = b""
        while b"\n" not in output or parse_banner(output.decode(errors="replace")) is None:
            chunk = await process.stdout.receive_some()
            if not chunk:
                return
            output += chunk
        text = output.decode(errors="replace")
        for word in text.split():
            if word.startswith("node="):
                worker.url = word.removeprefix("node=")
        worker.ready.set()


async def _until_exit(process: trio.Process, first: Awaitable[None] | None = None) -> None:
    """Wait for `process` to exit (after `first`); killed if this wait is cancelled."""
    try:
        if first is not None:
            await first
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


def run_workers(args: argparse.Namespace) -> int:
    """`serve --workers N` (see the module docstring)."""
    load_or_create_key(args.key)  # made once, before the workers read it
    trio.run(_make_schema, args.db)
    held = [
        reserve_port(args.host, args.ws_port, "--ws-port"),
        reserve_port(args.host, args.http_port, "--http-port"),
    ]
    shared_writer = Location.of(str(args.db)).dialect == "sqlite" and args.store_writer == "process"
    private = tempfile.mkdtemp(prefix="scoreserver-")  # mode 0700: this user's alone
    try:
        ws_port, http_port = (int(s.getsockname()[1]) for s in held)
        writer_socket = os.path.join(private, "writer.sock") if shared_writer else None
        trio.run(Supervisor(args, ws_port, http_port, writer_socket).run)
    finally:
        for sock in held:
            sock.close()
        shutil.rmtree(private, ignore_errors=True)
    return 0


async def _make_schema(db: str | Path) -> None:
    async with Store(db, writer=WriterMode.INLINE).opened():
        pass
