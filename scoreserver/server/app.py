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

import errno
import logging
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from scoreserver.errors import PortTakenError, StoreError
from scoreserver.server.accounts import AccessLimits
from scoreserver.server.background import (
    Notices,
    heartbeat,
    housekeeping,
    leave,
    reload,
    watch_boards,
    watch_settings,
)
from scoreserver.server.clock import ServerClock
from scoreserver.server.config import Config, play_urls, url_host
from scoreserver.server.http import create_app
from scoreserver.server.httpserve import serve_http
from scoreserver.server.monitors import HEALTH_LAG_S, GcMonitor, LoopMonitor, health, stats, tune_gc
from scoreserver.server.nodes import (
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
from scoreserver.server.ws import GameSocket
from scoreserver.store import STORE_WRITERS, Store, WriterMode
from scoreserver.store.engine import redact
from scoreserver.wire.addresses import TrustedProxies

logger = logging.getLogger(__name__)
T = TypeVar("T")


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
        return f"{scheme}://{url_host(self.config.host)}:{self.ws_port}/"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.config.tls_cert else "http"
        return f"{scheme}://{url_host(self.config.host)}:{self.http_port}"


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
        host = url_host(config.metrics_host)
        lines.append(f"  metrics:       http://{host}:{server.metrics_port}/metrics")
    return "\n".join(lines)


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
    node_url = config.node_url or f"{scheme}://{url_host(config.host)}:{own_port}/"
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
    app.state.stats = partial(stats, service, socket, store, monitor, gc_monitor)
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
    tune_gc()

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
                servers.start_soon(housekeeping, service, config.reanchor_clock)
                if config.webhook:
                    service.webhooks = Webhooks(config.webhook)
                    servers.start_soon(service.webhooks.run)
                servers.start_soon(service.results_log.run)
                if store.threaded:
                    # (The autojump-clock tests' inline store is one node alone: no lease.)
                    servers.start_soon(heartbeat, service, rooms)
                    notices = Notices(service, rooms)
                    if await servers.start(store.watch_notices, notices.deliver):
                        servers.start_soon(notices.run)
                    servers.start_soon(watch_settings, service, notices)
                    servers.start_soon(watch_boards, service, rooms)
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
                    await leave(service)
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


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def _signals(server: Server, signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            await reload(server.service)
        else:
            logger.info("signal %s: stopping", signal.Signals(signum).name)
            server.stop()
