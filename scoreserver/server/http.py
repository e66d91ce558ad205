"""The HTTP side: a Starlette app served by hypercorn's trio worker in the server's process.

Its routes are in `routes.py` (players, the public, pages) and `admin.py` (the console);
here are the middleware every request passes (the client's address behind a trusted proxy,
NUL refused, same-host CORS) and `create_app`, which puts them together.
Every error is JSON: `{"error": CODE, "message": TEXT}`.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scoreserver.codes import HttpCode
from scoreserver.server.admin import AdminConsole
from scoreserver.server.routes import (
    Pages,
    PlayerRoutes,
    PublicRoutes,
    method_not_allowed,
    not_found,
    page,
    server_error,
)
from scoreserver.server.service import Service
from scoreserver.server.transport import ClientAddresses, ClientStream
from scoreserver.server.webio import (
    NUL_REFUSED,
    error_response,
)
from scoreserver.server.ws import origin_allowed
from scoreserver.wire.addresses import AddressError

logger = logging.getLogger(__name__)


class ClientAddressMiddleware:
    """Every request's `client` is its client (transport.ClientAddresses), not the proxy in
    front: what comes after (limits, flags, logs, the admin console) reads `request.client`.
    A forwarding header from a trusted proxy that cannot be read is refused with a 400. And a
    413 closes its connection (`_closing_after_413`): it is where each request's connection
    is known."""

    def __init__(self, app: ASGIApp, addresses: ClientAddresses):
        self.app = app
        self.addresses = addresses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        stream = self.addresses.http.get((peer[0], peer[1])) if peer else None
        if stream is not None and scope["type"] == "http":
            send = _closing_after_413(send, stream)
        if scope["type"] in ("http", "websocket") and self.addresses.proxies and peer:
            try:
                client = self.addresses.resolve(
                    peer[0], stream.proxy_source if stream else None, scope["headers"]
                )
            except AddressError as exc:
                logger.info("refused a request from %s: %s", peer[0], exc)
                response = error_response(400, HttpCode.BAD_REQUEST, str(exc))
                await response(scope, receive, send)
                return
            scope = {**scope, "client": (client, peer[1])}
        if scope["type"] == "http" and _holds_nul(scope):
            # No text with U+0000 reaches a route: PostgreSQL cannot store or compare it.
            response = error_response(400, HttpCode.BAD_REQUEST, NUL_REFUSED)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _holds_nul(scope: Scope) -> bool:
    return "\x00" in scope["path"] or b"%00" in scope["query_string"].lower()


def _closing_after_413(send: Send, stream: ClientStream) -> Send:
    """A 413 leaves a body unread: the answer says `connection: close`, and once it is sent
    the connection lingers and closes (ClientStream.linger_then_close), so the client reads
    the answer at once instead of waiting on its own write until it times out."""
    refused = False

    async def watched(message: Message) -> None:
        nonlocal refused
        if message["type"] == "http.response.start" and message["status"] == 413:
            refused = True
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)
        if refused and message["type"] == "http.response.body" and not message.get("more_body"):
            await stream.linger_then_close()

    return watched


def create_app(
    service: Service,
    *,
    allowed_origins: tuple[str, ...] = (),
    addresses: ClientAddresses | None = None,
) -> Starlette:
    """The HTTP application for `service`: the routes of `routes.py` and the admin console's,
    behind the client-address and same-host CORS middleware."""
    admin = AdminConsole(
        service.store,
        service.password_policy,
        service.password_work,
        service.limits.settings,
        service,
        service.results_log,
    )

    async def admin_page(request: Request) -> Response:
        if await admin._password_hash() is None:
            if "text/html" in request.headers.get("accept", ""):
                # A person at a browser gets a page that says what to do.
                response = await page("admin-off.html")(request)
                response.status_code = 403
                return response
            return error_response(
                403,
                HttpCode.ADMIN_DISABLED,
                "the review console is off until an admin password is set:"
                " scoreserver admin set-password",
            )
        return await page("admin.html")(request)

    routes = [
        *admin.routes(admin_page),
        *PlayerRoutes(service).routes(),
        *PublicRoutes(service).routes(),
        *Pages(service).routes(),
        *service.results_log.routes(),
    ]
    middleware = [Middleware(SameHostCORS, allowed_origins=allowed_origins)]
    if addresses is not None:
        middleware.insert(0, Middleware(ClientAddressMiddleware, addresses=addresses))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error},
    )
    app.state.ws_port = None
    app.state.stats = lambda: {}
    app.state.health = lambda: {"status": "ok"}
    return app


class SameHostCORS:
    """CORS for the API and the client module: same-host origins (any port) and the listed ones.

    A game served from another origin may call the HTTP API and import scoreclient.js when its
    origin is allowed; `*` in the list allows every origin. Credentials are never involved
    (login tokens travel in bodies), so no cookie is ever exposed.
    """

    def __init__(self, app: ASGIApp, allowed_origins: tuple[str, ...] = ()):
        self.app = app
        self.allowed_origins = allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None or not origin_allowed(origin, headers.get("host"), self.allowed_origins):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            preflight = Response(
                status_code=204,
                headers={
                    "access-control-allow-origin": origin,
                    "access-control-allow-methods": "GET, POST",
                    "access-control-allow-headers": "content-type",
                    "access-control-max-age": "600",
                    "vary": "origin",
                },
            )
            await preflight(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                response_headers["access-control-allow-origin"] = origin
                response_headers.add_vary_header("origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)
