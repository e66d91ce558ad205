"""Wiring: one root nursery runs the store writer, the rooms, the game socket and HTTP.

Start-up (synchronous, before anything listens): open or create the database, check its
integrity and schema version, void sessions a crash left running, create the `demo` game if
there are no games, load the signing keys. Then the servers start; `serve` reports the bound
ports through `task_status`, so tests and `run.py` both use port 0 safely.

Shutdown (SIGINT, SIGTERM, or `Server.stop()`): no new games; running sessions end with
`end_game` reason `server_shutdown` (committed first); sockets close with 1001; HTTP stops;
the store commits what is queued and closes.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import re
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from scoreserver.errors import PortTakenError, StoreError
from scoreserver.server.accounts import AccessLimits, BudgetSettings, PasswordPolicy
from scoreserver.server.clock import ServerClock
from scoreserver.server.http import create_app
from scoreserver.server.httpserve import serve_http
from scoreserver.server.nodes import (
    ATTEMPTS_KEEP_MS,
    ATTEMPTS_SWEEP_S,
    BEATS_PER_LEASE,
    DEFAULT_LEASE_S,
    gone_here,
    start_node,
)
from scoreserver.server.rooms import Rooms
from scoreserver.server.service import DEMO_GAME, DEMO_SETTINGS, Service
from scoreserver.server.transport import (
    ClientAddresses,
    bind_listeners,
    bound_port,
    serve_game_socket,
)
from scoreserver.server.webhooks import Webhooks
from scoreserver.server.ws import GameSocket, Limits
from scoreserver.store import ANSWER_TIMEOUT_S, STORE_WRITERS, Store, WriterMode
from scoreserver.store.engine import redact
from scoreserver.wire.addresses import HeaderName, TrustedProxies

logger = logging.getLogger(__name__)
T = TypeVar("T")

HOUSEKEEPING_INTERVAL_S = 60.0
# What `serve` prints once listening; tools that start a server process read the ports from it.
BANNER = re.compile(r"game socket wss?://\S+:(\d+)/\s+HTTP https?://\S+:(\d+)/")


def serve_argv(*flags: str) -> list[str]:
    """The command line of `scoreserver serve FLAGS`, run by this Python."""
    return [sys.executable, "-m", "scoreserver.ops.cli", "serve", *flags]


def serve_command(db: str | Path, key: Path, *flags: str) -> list[str]:
    """The command line of a server process on free ports (for tests and benchmarks)."""
    return serve_argv(
        "--ws-port",
        "0",
        "--http-port",
        "0",
        "--db",
        str(db),
        "--key",
        str(key),
        "--log-level",
        "WARNING",
        *flags,
    )


def parse_banner(text: str) -> tuple[int, int] | None:
    """(socket port, HTTP port) from the banner `serve` prints, or None."""
    match = BANNER.search(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


LOOP_PROBE_S = 0.01
STALL_MS = 20.0


class LoopMonitor:
    """Measures event-loop stalls: how late a 10 ms sleep wakes up.

    `stalls` counts wake-ups later than STALL_MS; `max_lag_ms` is the worst since the last
    `take_max()`. Cheap: one timer every 10 ms.
    """

    def __init__(self) -> None:
        self.stalls = 0
        self.max_lag_ms = 0.0
        self.last_lag_ms = 0.0
        self.samples = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            before = trio.current_time()
            await trio.sleep(LOOP_PROBE_S)
            lag_ms = (trio.current_time() - before - LOOP_PROBE_S) * 1000
            self.last_lag_ms = lag_ms
            self.samples += 1
            self.max_lag_ms = max(self.max_lag_ms, lag_ms)
            if lag_ms > STALL_MS:
                self.stalls += 1

    def take_max(self) -> float:
        worst, self.max_lag_ms = self.max_lag_ms, 0.0
        return worst


class GcMonitor:
    """Counts the cyclic collector's runs by generation and how long they paused the process."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.pause_s = 0.0
        self.max_pause_s = 0.0
        self._started = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.collections[info["generation"]] += 1
        self.pause_s += pause
        self.max_pause_s = max(self.max_pause_s, pause)

    def stats(self) -> dict[str, object]:
        return {
            "collections": list(self.collections),
            "pause_ms_total": round(self.pause_s * 1000, 1),
            "pause_ms_max": round(self.max_pause_s * 1000, 2),
        }


@dataclass(slots=True)
class Config:
    host: str = "127.0.0.1"
    ws_port: int = 8765
    http_port: int = 8080
    # A SQLite file, or a PostgreSQL URL (store.Location).
    db_path: str | Path = Path("scoreserver.db")
    key_path: Path = Path("scoreserver.key")
    limits: Limits = field(default_factory=Limits)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    password_policy: PasswordPolicy = field(default_factory=PasswordPolicy)
    # Tests under autojump_clock turn these off: no wall-clock re-anchor, no process signal
    # handlers (and they run the store's writer inline).
    # The database writer: "process" (a child process), "thread" (a thread of this one) or
    # "inline" (on the event loop's thread: the autojump-clock tests).
    store_writer: str = "process"
    # How long the writer process may owe an answer before it counts as stalled (it then stops
    # the server cleanly).
    writer_timeout_s: float = ANSWER_TIMEOUT_S
    reanchor_clock: bool = True
    handle_signals: bool = True
    announce: bool = True
    monitor_loop: bool = True
    # /metrics (Prometheus) on its own port: None is off, 0 any free port.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # Where organisers are told of new first places and flags (server/webhooks.py).
    webhook: str | None = None
    # This node's game-socket URL as other nodes hand it to players (`session_elsewhere`);
    # None: ws(s)://HOST:PORT/ of the port it listens on (right on one machine).
    node_url: str | None = None
    # A node silent for this long is gone: its running sessions are voided by any other node.
    node_lease_s: float = DEFAULT_LEASE_S
    # One worker of `--workers N`: the shared ports are bound with SO_REUSEPORT, and the game
    # socket also listens on `direct_ws_port` (its own), which its node URL names.
    reuse_port: bool = False
    direct_ws_port: int | None = None
    # The workers of one SQLite file share one writer process, reached on this Unix socket.
    writer_socket: str | None = None
    # Peers whose connections may name another client (`--trusted-proxy`), and the header
    # those proxies write (`--forwarded-header`): wire/addresses.py.
    trusted_proxies: tuple[str, ...] = ()
    # The per-address and per-account budgets (`--login-attempts-per-addr` ...).
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    forwarded_header: HeaderName = "x-forwarded-for"


@dataclass(slots=True)
class Server:
    """A running server, as `serve` hands it to whoever started it."""

    config: Config
    service: Service
    rooms: Rooms
    socket: GameSocket
    ws_port: int
    http_port: int
    _stop: trio.Event
    metrics_port: int | None = None

    def stop(self) -> None:
        """Begin a graceful shutdown."""
        self._stop.set()

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.config.tls_cert else "ws"
        return f"{scheme}://{_url_host(self.config.host)}:{self.ws_port}/"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.config.tls_cert else "http"
        return f"{scheme}://{_url_host(self.config.host)}:{self.http_port}"


def welcome(server: Server, has_admin: bool) -> str:
    """What an organiser needs after the banner line: the addresses players can reach (every
    address of the machine when it listens on all of them), the big screen, /admin, metrics."""
    config = server.config
    urls = play_urls(config, server.http_port)
    games = sorted(g for g, s in server.service.games.items() if s.archived_at is None)
    board = f"/board/{games[0]}" if len(games) == 1 else "/board/"
    lines = ["  players open:  " + "   ".join(f"{u}/" for u in urls)]
    if config.host in ("127.0.0.1", "localhost", "::1"):
        lines.append("                 (this machine only: --host 0.0.0.0 opens it to the LAN)")
    lines.append(f"  big screen:    {urls[0]}{board}")
    admin = "" if has_admin else "  (set its password first: scoreserver admin set-password)"
    lines.append(f"  review:        {urls[0]}/admin{admin}")
    if server.metrics_port is not None:
        host = _url_host(config.metrics_host)
        lines.append(f"  metrics:       http://{host}:{server.metrics_port}/metrics")
    return "\n".join(lines)


def play_urls(config: Config, http_port: int) -> list[str]:
    """The HTTP origins other machines reach this server at."""
    scheme = "https" if config.tls_cert else "http"
    return [f"{scheme}://{_url_host(h)}:{http_port}" for h in reachable_hosts(config.host)]


def reachable_hosts(host: str) -> list[str]:
    """The addresses others reach a server listening on `host` at: the machine's own IPv4
    addresses for 0.0.0.0 (the route out first, found by a UDP connect that sends nothing),
    else `host` itself."""
    if host not in ("0.0.0.0", "", "::"):
        return [host]
    found: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet leaves; the route is chosen
        found.append(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.append(str(info[4][0]))
    own = [a for a in dict.fromkeys(found) if not a.startswith("127.") and a != "0.0.0.0"]
    return own or ["127.0.0.1"]


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def prepare_database(
    config: Config, now: int, node_url: str = "ws://127.0.0.1/"
) -> tuple[Service, Store]:
    """The start-up work, before any socket accepts: the schema, this node's registration
    (sessions of nodes gone are voided), the demo game in an empty database, the signing key,
    the games."""
    if config.store_writer not in (*STORE_WRITERS, WriterMode.INLINE):
        raise ValueError(f"store writer must be one of {', '.join(STORE_WRITERS)}")
    # A store of its own, inline, for the few start-up steps: the server's store (with its
    # writer process) starts in the root nursery.
    async with Store(config.db_path, writer=WriterMode.INLINE).opened() as once:
        started = await start_node(
            once, config.key_path, node_url, config.node_lease_s, now, DEMO_GAME, DEMO_SETTINGS
        )
        if started.voided:
            logger.warning("voided %d sessions of nodes that are gone", started.voided)
        keys = started.keys
        games = await once.games()
        fingerprint = await once.settings_fingerprint()
    store = Store(
        config.db_path,
        writer=config.store_writer,
        answer_timeout_s=config.writer_timeout_s,
        writer_socket=config.writer_socket,
    )
    service = Service(
        store=store,
        clock=ServerClock(),
        keys=keys,
        password_policy=config.password_policy,
        games=games,
        key_path=config.key_path,
        settings_fingerprint=fingerprint,
        node=started.node,
        limits=AccessLimits(config.budgets),
    )
    return service, store


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    if config.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key) if config.tls_key else None)
    return context


async def serve(
    config: Config, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the server until it is stopped (a signal, or `Server.stop()`)."""
    if not config.handle_signals:
        await _serve(config, None, task_status)
        return
    # Taken before anything else: a SIGTERM during start-up (a supervisor stopping a worker
    # it just started) waits here and stops the server cleanly once it runs, instead of
    # killing the process between its registration and its first heartbeat.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        await _serve(config, signals, task_status)


async def _serve(
    config: Config, signals: AsyncIterator[int] | None, task_status: trio.TaskStatus[Server]
) -> None:
    ws_sockets = await _bind(
        config,
        config.ws_port,
        "--ws-port",
        "game socket",
        partial(bind_listeners, config.host, config.ws_port, reuse_port=config.reuse_port),
    )
    try:
        http_sockets = await _bind(
            config,
            config.http_port,
            "--http-port",
            "HTTP",
            partial(bind_listeners, config.host, config.http_port, reuse_port=config.reuse_port),
        )
    except BaseException:
        for sock in ws_sockets:
            await sock.aclose()
        raise
    if config.direct_ws_port is not None:
        direct = await _bind(
            config,
            config.direct_ws_port,
            "--ws-port",
            "game socket (this worker's own)",
            partial(bind_listeners, config.host, config.direct_ws_port),
        )
        ws_sockets += direct
        own_port = bound_port(direct)
    else:
        own_port = bound_port(ws_sockets)
    scheme = "wss" if config.tls_cert else "ws"
    node_url = config.node_url or f"{scheme}://{_url_host(config.host)}:{own_port}/"
    try:
        service, store = await prepare_database(config, int(time.time() * 1000), node_url)
    except BaseException:
        for sock in ws_sockets + http_sockets:
            await sock.aclose()
        raise
    rooms = Rooms(service)
    service.rooms = rooms
    addresses = ClientAddresses(TrustedProxies(config.trusted_proxies), config.forwarded_header)
    socket = GameSocket(service, rooms, config.limits, addresses)
    app = create_app(service, allowed_origins=config.limits.allowed_origins, addresses=addresses)
    stop = trio.Event()
    monitor = LoopMonitor()
    gc_monitor = GcMonitor()
    app.state.stats = partial(_stats, service, socket, store, monitor, gc_monitor)
    app.state.health = partial(health, store)
    metrics = service.metrics
    store.write_latency = metrics.write_seconds.observe
    metrics.watch(metrics.connections, lambda: len(socket.connections))
    metrics.watch(metrics.sessions, lambda: sum(1 for s in service.sessions.values() if s.running))
    metrics.watch(metrics.loop_lag, lambda: monitor.last_lag_ms / 1000)
    metrics.watch(metrics.loop_stalls, lambda: monitor.stalls)
    metrics.watch(metrics.writer_queue, store.queue_depth)
    metrics.watch(metrics.writer_waits, lambda: store.waits_for_room)
    metrics.watch(
        metrics.helper_ok,
        lambda: float(store.failure is None and store.lag_s() < HEALTH_LAG_S),
        "writer",
    )
    _tune_gc()

    # The HTTP port's connections are accepted by us (httpserve.py; bound above, with the
    # system's backlog and SO_REUSEPORT for workers, like the game socket's).
    hconfig = HypercornConfig()
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    hconfig.graceful_timeout = 2.0

    gc_monitor.install()
    try:
        async with trio.open_nursery() as root:
            await root.start(_run_store, store, stop)
            async with trio.open_nursery() as servers:
                await servers.start(rooms.run)
                await servers.start(socket.run_keepalive)
                await servers.start(socket.watch_sends)
                if config.monitor_loop:
                    await servers.start(monitor.run)
                ws_server = await _listen(
                    config,
                    config.ws_port,
                    "--ws-port",
                    "game socket",
                    servers,
                    partial(
                        serve_game_socket,
                        socket.handle,
                        socket.streams,
                        ws_sockets,
                        _ssl_context(config),
                        addresses.proxies,
                        max_message_size=config.limits.max_message_bytes,
                        # 64 KiB reads halve the cost of a large submission (4 KiB is the default).
                        receive_buffer_size=65536,
                        connect_timeout=config.limits.handshake_timeout_s,
                        disconnect_timeout=2.0,
                    ),
                )
                http_port = await servers.start(
                    partial(
                        serve_http,
                        app,
                        hconfig,
                        http_sockets,
                        _ssl_context(config),
                        addresses,
                        shutdown_trigger=stop.wait,
                    )
                )
                app.state.ws_port = ws_server.port
                app.state.play_urls = play_urls(config, http_port)
                server = Server(config, service, rooms, socket, ws_server.port, http_port, stop)
                if config.metrics_port is not None:
                    mconfig = HypercornConfig()
                    mconfig.bind = [f"{_bind_host(config.metrics_host)}:{config.metrics_port}"]
                    mconfig.accesslog = None
                    mconfig.errorlog = logging.getLogger("hypercorn.error")
                    mbinds = await _listen(
                        config,
                        config.metrics_port,
                        "--metrics-port",
                        "metrics",
                        servers,
                        partial(
                            hypercorn_serve, metrics.asgi(), mconfig, shutdown_trigger=stop.wait
                        ),
                    )
                    server.metrics_port = int(mbinds[0].rsplit(":", 1)[1])
                servers.start_soon(_housekeeping, service, config.reanchor_clock)
                if config.webhook:
                    service.webhooks = Webhooks(config.webhook)
                    servers.start_soon(service.webhooks.run)
                if store.threaded:
                    # (The autojump-clock tests' inline store is one node alone: no lease.)
                    servers.start_soon(_heartbeat, service, rooms)
                    notices = Notices(service, rooms)
                    if await servers.start(store.watch_notices, notices.deliver):
                        servers.start_soon(notices.run)
                    servers.start_soon(_watch_settings, service, notices)
                    servers.start_soon(_watch_boards, service, rooms)
                if signals is not None:
                    servers.start_soon(_signals, server, signals)
                if config.announce:
                    print(
                        f"scoreserver: game socket {server.ws_url}  HTTP {server.http_url}/"
                        f"  database {redact(str(config.db_path))}  node={node_url}",
                        flush=True,
                    )
                    has_admin = await store.admin_password_hash() is not None
                    print(welcome(server, has_admin), flush=True)
                logger.info("listening: socket %s, HTTP %s", server.ws_url, server.http_url)
                task_status.started(server)
                await stop.wait()
                logger.info("shutting down")
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    await rooms.shutdown_sessions()
                    await socket.close_all()
                    await _leave(service)
                servers.cancel_scope.cancel()
            root.cancel_scope.cancel()
    finally:
        gc_monitor.uninstall()
    if store.failure is not None:
        raise store.failure  # stopped because the writer failed: exit with an error
    logger.info("stopped")


async def _run_store(store: Store, stop: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
    """Run the writer; if it dies or stalls, stop the server the graceful way (every running
    game gets its end_game) instead of tearing everything down at once."""
    try:
        await store.run(task_status=task_status)
    except StoreError:
        logger.critical("the database writer failed; stopping the server")
        stop.set()
        await trio.sleep_forever()  # until the shutdown cancels the root nursery


# A helper that owes an answer this long makes /healthz say the server is degraded.
HEALTH_LAG_S = 1.0


def health(store: Store) -> dict[str, object]:
    """What /healthz says: `ok`, `degraded` (slower but correct: the writer is slow) or
    `failing` (the writer is gone: nothing can be saved)."""
    status = "ok"
    if store.failure is not None:
        writer = f"failed: {store.failure}"
        status = "failing"
    elif (lag := store.lag_s()) > HEALTH_LAG_S:
        writer = f"not answering for {lag:.1f} s"
        status = "degraded"
    elif (depth := store.queue_depth()) >= store.queue_bound:
        writer = f"behind: {depth} rows queued, players held until it catches up"
        status = "degraded"
    else:
        writer = "ok"
    return {
        "status": status,
        "writer": writer,
        "writer_queue": store.queue_depth(),
        "writer_queue_bound": store.queue_bound,
    }


async def _listen(
    config: Config,
    port: int,
    flag: str,
    what: str,
    nursery: trio.Nursery,
    server: Any,
) -> Any:
    """Start a listening server; a port in use becomes PortTakenError naming port and flag."""
    try:
        return await nursery.start(server)
    except (OSError, BaseExceptionGroup) as exc:
        if _address_in_use(exc):
            raise PortTakenError(port, config.host, flag, what) from None
        raise


async def _bind(
    config: Config, port: int, flag: str, what: str, bind: Callable[[], Awaitable[T]]
) -> T:
    """Bind listening sockets; a port in use becomes PortTakenError naming port and flag."""
    try:
        return await bind()
    except OSError as exc:
        if _address_in_use(exc):
            raise PortTakenError(port, config.host, flag, what) from None
        raise


def _address_in_use(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_address_in_use(inner) for inner in exc.exceptions)
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


def _tune_gc() -> None:
    """Keep the cyclic collector off the hot path.

    The per-message objects (msgspec structs, small dicts) hold no cycles, yet every 700
    allocations the young generation is scanned, and under load the older generations with
    them. Freezing what start-up built and raising the first threshold removes most of that
    work; cycles are still collected, just less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _stats(
    service: Service,
    socket: GameSocket,
    store: Store,
    monitor: LoopMonitor,
    gc_monitor: GcMonitor,
) -> dict[str, object]:
    return {
        "connections": len(socket.connections),
        "running_sessions": len(service.running_by_user)
        + sum(1 for s in service.sessions.values() if s.running and s.user_id is None),
        "sessions_in_memory": len(service.sessions),
        "store_commits": store.commits,
        "loop_samples": monitor.samples,
        "loop_stalls_over_20ms": monitor.stalls,
        "loop_max_lag_ms": round(monitor.take_max(), 2),
        "gc": gc_monitor.stats(),
    }


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def _housekeeping(service: Service, reanchor: bool) -> None:
    while True:
        await trio.sleep(HOUSEKEEPING_INTERVAL_S)
        if reanchor:
            service.clock.reanchor()
        service.forget_expired_sessions(service.clock.now_ms())


SETTINGS_POLL_S = 2.0


class Notices:
    """What other nodes (and the command line, and /admin) tell this one through PostgreSQL's
    NOTIFY (store/ops.py `notify`): `score GAME_ID` (a score saved: push that room's board),
    `boards` (a decision or a flag: re-read every watched board), `settings` (games or keys
    changed: reload). Ids only; the listener re-reads. On SQLite the pollers below do it all."""

    def __init__(self, service: Service, rooms: Rooms):
        self.service = service
        self.rooms = rooms
        self.settings_changed = trio.Event()
        self._games: set[str] = set()
        self._boards = False
        self._pending = trio.Event()

    def deliver(self, payload: str) -> None:
        """On the event loop, once per notice: note it and wake `run` (no I/O here)."""
        kind, _, target = payload.partition(" ")
        if kind == "score" and target:
            self._games.add(target)
        elif kind == "boards":
            self._boards = True
        elif kind == "settings":
            self.settings_changed.set()
        self._pending.set()

    async def run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending = trio.Event()
            games, self._games = self._games, set()
            boards, self._boards = self._boards, False
            if boards:
                self.rooms.boards_may_have_changed()
            else:
                for game_id in games:
                    self.rooms.score_saved(game_id)


async def _watch_settings(service: Service, notices: Notices | None = None) -> None:
    """Notice `games add|set` and `keys rotate` by themselves, without waiting for SIGHUP: at
    once when a notice says so (PostgreSQL), else within SETTINGS_POLL_S."""
    # The baseline is what start-up loaded, so a change made since is not missed.
    seen = service.settings_fingerprint
    while True:
        if notices is None:
            await trio.sleep(SETTINGS_POLL_S)
        else:
            with trio.move_on_after(SETTINGS_POLL_S):
                await notices.settings_changed.wait()
            notices.settings_changed = trio.Event()
        try:
            now = await service.store.settings_fingerprint()
            if now != seen:
                seen = now
                await reload(service)
        except Exception:
            logger.exception("reading settings failed; keeping the current ones")


BOARD_POLL_S = 1.0
BOARD_REFRESH_S = 30.0


async def _watch_boards(service: Service, rooms: Rooms) -> None:
    """Bring every open board up to date within about a second of a change made anywhere: a
    ban from the CLI (another process), a decision on /admin, a flag raised here or by another
    server. Every BOARD_REFRESH_S the boards are re-read regardless: a temporary ban that runs
    out writes nothing."""
    seen = await service.store.board_fingerprint()
    last_refresh = trio.current_time()
    while True:
        await trio.sleep(BOARD_POLL_S)
        try:
            now = await service.store.board_fingerprint()
        except Exception:
            logger.exception("reading the board fingerprint failed")
            continue
        if now != seen or trio.current_time() - last_refresh >= BOARD_REFRESH_S:
            seen, last_refresh = now, trio.current_time()
            rooms.boards_may_have_changed()


async def _heartbeat(service: Service, rooms: Rooms) -> None:
    """Renew this node's lease (nodes.py) and sweep old shared attempts; notice nodes that are
    gone (their sessions are voided by the store). If this node finds itself gone (its loop
    stalled past the lease), its running games, already voided, end, and it rejoins."""
    node = service.node
    if node is None:
        return
    interval = node.lease_ms / 1000 / BEATS_PER_LEASE
    last_sweep = trio.current_time()
    while True:
        await trio.sleep(interval)
        now = service.clock.now_ms()
        try:
            alive, voided = await service.store.node_heartbeat(
                node.node_id,
                service.keys.kid.hex(),
                now,
                await gone_here(service.store, node.node_id),
            )
            if voided:
                logger.warning("voided %d running sessions of nodes that are gone", voided)
            if not alive:
                logger.error(
                    "this node was found gone (silent longer than its lease, %.0f s): its"
                    " running games were voided; ending them and rejoining",
                    node.lease_ms / 1000,
                )
                rooms.end_all_sessions()
                await service.store.rejoin_node(node, now)
            if trio.current_time() - last_sweep >= ATTEMPTS_SWEEP_S:
                last_sweep = trio.current_time()
                await service.store.forget_attempts(now - ATTEMPTS_KEEP_MS)
        except StoreError:
            return  # the writer failed: the server is stopping (_run_store)
        except Exception:
            logger.exception("the heartbeat failed; trying again")


async def _leave(service: Service) -> None:
    """A clean stop: this node's row goes, so no one waits for its lease to run out."""
    if service.node is None:
        return
    try:
        await service.store.leave_node(service.node.node_id)
    except Exception:
        logger.warning("could not remove this node's row; its lease will run out")


async def _signals(server: Server, signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            await reload(server.service)
        else:
            logger.info("signal %s: stopping", signal.Signals(signum).name)
            server.stop()


async def reload(service: Service) -> None:
    """Pick up changed game settings and a rotated key (what SIGHUP does). One reload at a
    time: one that read the database before a change must not be applied after one that read
    it since (the watcher's and SIGHUP's raced, and an archived game came back archived)."""
    async with service.reloading:
        games, keys = await service.load_settings(service.clock.now_ms())
        service.apply_settings(games, keys)
