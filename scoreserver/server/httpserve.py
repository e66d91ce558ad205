"""The HTTP port: our accept loop, hypercorn's HTTP on each connection.

hypercorn's `serve` binds and accepts for itself and hands its HTTP parser the socket's bytes
as they come. A connection from a trusted proxy may begin with a PROXY header, which must come
off before that parser sees the stream, so this port's connections are accepted here, each as
a `ClientStream` (transport.py; under TLS the TLS stream runs over it), and each is served by
the per-connection server hypercorn's own loop runs (`hypercorn.trio.tcp_server.TCPServer`,
pinned with hypercorn in pyproject.toml; `tests/trio/test_transport.py` serves through it).
`ClientAddresses.http` names each open connection by its TCP peer, as hypercorn names it in a
request's scope, for `http.ClientAddressMiddleware` to find.

Shutting down is hypercorn's way too: on `shutdown_trigger`, accepting stops, open
connections are told to finish (`WorkerContext.terminated`) and are cut after hypercorn's
`graceful_timeout`.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from scoreserver.server.transport import (
    ClientAddresses,
    ClientListener,
    ClientStream,
    bound_port,
    tls_over,
)


async def serve_http(
    app: Any,
    config: HypercornConfig,
    sockets: list[trio.SocketListener],
    ssl_context: ssl.SSLContext | None,
    addresses: ClientAddresses,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `sockets` (bound beforehand) until `shutdown_trigger` returns; started
    with the port it listens on."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)

    async def serve_one(client: ClientStream) -> None:
        key = client.peer_key
        addresses.http[key] = client
        try:
            # hypercorn types its stream as an SSLStream; it reads `.socket` off a plain one.
            stream: Any = tls_over(client, ssl_context)
            await TCPServer(wrapped, config, context, ConnectionState({}), stream)
        finally:
            if addresses.http.get(key) is client:
                del addresses.http[key]

    try:
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as accepting:
                listeners = [ClientListener(sock, addresses.proxies) for sock in sockets]
                accepting.start_soon(
                    partial(trio.serve_listeners, serve_one, listeners, handler_nursery=handlers)
                )
                task_status.started(bound_port(sockets))
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            await context.terminated.set()
            handlers.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
    finally:
        for sock in sockets:
            await sock.aclose()
