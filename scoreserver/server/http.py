"""The HTTP side: a Starlette app served by hypercorn's trio worker in the server's process.

Routes: login and registration, result submission, leaderboards, the public keys, health,
and the pages (the demo, the client module, the big-screen board, the admin console).
Every error is JSON: `{"error": CODE, "message": TEXT}`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import segno
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scoreserver.codes import HttpCode
from scoreserver.errors import AuthError, BusyError, ConflictError, RateLimitedError
from scoreserver.server.accounts import PASSWORD_MAX
from scoreserver.server.admin import AdminConsole
from scoreserver.server.service import Service
from scoreserver.server.sessions import Peer
from scoreserver.server.transport import ClientAddresses, ClientStream
from scoreserver.server.webio import (
    NUL_REFUSED,
    HttpError,
    bearer,
    error_response,
    int_param,
    read_json,
)
from scoreserver.server.ws import origin_allowed
from scoreserver.store import User
from scoreserver.wire import protocol as wire
from scoreserver.wire.addresses import AddressError
from scoreserver.wire.tokens import b64encode, raw_public

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent.parent / "static"
WINDOWS_MS = {"day": 86_400_000, "week": 7 * 86_400_000}
QR_TEXT_MAX = 512  # a URL; more would make a code no phone reads off a screen


class ResultBody(msgspec.Struct, frozen=True):
    start_token: wire.Token
    end_token: wire.Token
    points: list[wire.PointClaim]


class Credentials(msgspec.Struct, frozen=True):
    name: Annotated[str, msgspec.Meta(max_length=256)]
    password: Annotated[str, msgspec.Meta(max_length=PASSWORD_MAX)]
    # The `device` a previous login or registration of this account answered with: this
    # device's logins are limited on their own (Service.login).
    device: Annotated[str, msgspec.Meta(max_length=400)] | None = None


# A login or registration body: a name and a password, with room for JSON's escapes.
CREDENTIALS_BODY_BYTES = 16 * 1024


def peer_of(request: Request) -> Peer:
    client = request.client
    return Peer(
        address=client.host if client else None,
        user_agent=request.headers.get("user-agent", "")[:200],
    )


Handler = Callable[[Request], Awaitable[Response]]


def _json_errors(handler: Handler) -> Handler:
    """Errors as JSON, and the refusals every route shares: a spent budget is 429, a full
    password queue 503."""

    async def wrapped(request: Request) -> Response:
        try:
            try:
                return await handler(request)
            except RateLimitedError as exc:
                raise HttpError(429, HttpCode.RATE_LIMITED, str(exc)) from None
            except BusyError as exc:
                raise HttpError(503, HttpCode.BUSY, str(exc)) from None
            except AuthError as exc:
                raise HttpError(401, HttpCode.AUTH_FAILED, str(exc), exc.details()) from None
        except HttpError as exc:
            # A 413 (the rest of the body unread) closes its connection:
            # ClientAddressMiddleware, for every route.
            return error_response(exc.status, exc.code, exc.message, exc.extra)

    wrapped.__name__ = handler.__name__
    return wrapped


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
    """The HTTP application for `service`."""

    @_json_errors
    async def register(request: Request) -> Response:
        body = await read_json(request, Credentials, CREDENTIALS_BODY_BYTES)
        try:
            token, user = await service.register(body.name, body.password, peer_of(request).address)
        except ValueError as exc:
            raise HttpError(400, HttpCode.BAD_REQUEST, str(exc)) from None
        except ConflictError:
            raise HttpError(409, HttpCode.NAME_TAKEN, "that name is taken") from None
        device = service.device_token(user.id)
        return JSONResponse(
            {"token": token, "user_id": user.id, "name": user.name, "device": device}, 201
        )

    @_json_errors
    async def login(request: Request) -> Response:
        body = await read_json(request, Credentials, CREDENTIALS_BODY_BYTES)
        token, user = await service.login(
            body.name, body.password, peer_of(request).address, body.device
        )
        device = service.device_token(user.id)
        return JSONResponse(
            {"token": token, "user_id": user.id, "name": user.name, "device": device}
        )

    class ResetBody(msgspec.Struct, frozen=True):
        name: Annotated[str, msgspec.Meta(max_length=256)]
        code: Annotated[str, msgspec.Meta(max_length=64)]
        password: Annotated[str, msgspec.Meta(max_length=PASSWORD_MAX)]

    @_json_errors
    async def reset_password(request: Request) -> Response:
        body = await read_json(request, ResetBody, CREDENTIALS_BODY_BYTES)
        try:
            token, user = await service.reset_password(
                body.name, body.code, body.password, peer_of(request).address
            )
        except ValueError as exc:
            raise HttpError(400, HttpCode.BAD_REQUEST, str(exc)) from None
        device = service.device_token(user.id)
        return JSONResponse(
            {"token": token, "user_id": user.id, "name": user.name, "device": device}
        )

    async def identified(request: Request) -> User:
        """The account of the request's `Authorization: Bearer LOGIN_TOKEN` (401 without one)."""
        token = bearer(request)
        if token is None:
            raise HttpError(401, HttpCode.AUTH_FAILED, "use `Authorization: Bearer LOGIN_TOKEN`")
        return await service.identify(token)  # AuthError: 401 (_json_errors)

    async def submitter(request: Request) -> Peer:
        """Who submits: anyone may (the tokens authorize a submission), but a player who sends
        their login token is known by it, so a failure is held against them, not an address."""
        peer = peer_of(request)
        if "authorization" not in request.headers:
            return peer
        user = await identified(request)
        peer.user_id, peer.name = user.id, user.name
        return peer

    class Erasure(msgspec.Struct, frozen=True):
        password: Annotated[str, msgspec.Meta(max_length=PASSWORD_MAX)]

    @_json_errors
    async def delete_me(request: Request) -> Response:
        token = bearer(request)
        if token is None:
            raise HttpError(401, HttpCode.AUTH_FAILED, "send `Authorization: Bearer LOGIN_TOKEN`")
        body = await read_json(request, Erasure, CREDENTIALS_BODY_BYTES)
        user_id = await service.delete_account(token, body.password, peer_of(request).address)
        return JSONResponse({"deleted": True, "user_id": user_id})

    @_json_errors
    async def me(request: Request) -> Response:
        """The player's own account and results, each saying whether it is on the boards and,
        if not, why (held for review, flagged, hidden, banned)."""
        user = await identified(request)
        results = await service.store.my_results(user.id, service.clock.now_ms())
        return JSONResponse({"user_id": user.id, "name": user.name, "results": results})

    @_json_errors
    async def results(request: Request) -> Response:
        body = await read_json(request, ResultBody)
        outcome = await service.submit(
            body.start_token, body.end_token, body.points, await submitter(request)
        )
        answer: dict[str, Any] = {"type": "result", "accepted": outcome.accepted}
        if outcome.accepted:
            answer.update(score=outcome.score, saved=outcome.saved, held=outcome.held)
            if outcome.held_reason is not None:
                answer["held_reason"] = outcome.held_reason
        else:
            answer["reason"] = outcome.reason
        return JSONResponse(answer)

    @_json_errors
    async def leaderboard(request: Request) -> Response:
        game_id = request.path_params["game_id"]
        if game_id not in service.games:
            raise HttpError(404, HttpCode.UNKNOWN_GAME, f"no game {game_id!r}")
        limit = int_param(request, "limit", 10, 1, 100)
        offset = int_param(request, "offset", 0, 0, 10**9)
        around = int_param(request, "around", None, 0, 2**62)
        window = request.query_params.get("window", "all")
        if window not in ("day", "week", "all"):
            raise HttpError(400, HttpCode.BAD_REQUEST, "`window` is day, week or all")
        now = service.clock.now_ms()
        since = now - WINDOWS_MS[window] if window in WINDOWS_MS else 0
        entries = await service.store.leaderboard(
            game_id, now, limit=limit, offset=offset, around=around, since=since
        )
        return JSONResponse({"game_id": game_id, "entries": entries})

    async def keys(request: Request) -> Response:
        return JSONResponse(
            {
                "keys": [
                    {
                        "kid": k.kid.hex(),
                        "alg": "Ed25519",
                        "public_key": b64encode(raw_public(k.public_key)),
                    }
                    for k in service.keys.verify_keys
                ]
            }
        )

    async def healthz(request: Request) -> Response:
        # 200 while games can be played and saved (also when degraded); 503 when they cannot.
        report = request.app.state.health()
        return JSONResponse(report, status_code=503 if report["status"] == "failing" else 200)

    async def stats(request: Request) -> Response:
        # Operational counters: connections, sessions, commits, event-loop stalls.
        return JSONResponse(request.app.state.stats())

    async def config(request: Request) -> Response:
        # Where the game socket listens: the client module asks, so pages need no settings.
        # play_urls: where other machines reach this HTTP port (the big screen's "play at").
        return JSONResponse(
            {
                "ws_port": request.app.state.ws_port,
                "play_urls": getattr(request.app.state, "play_urls", []),
            }
        )

    async def qr_code(request: Request) -> Response:
        # A QR code of `text` (the big screen's play address), as SVG.
        text = request.query_params.get("text", "")
        if not 1 <= len(text) <= QR_TEXT_MAX:
            return error_response(
                400, HttpCode.BAD_REQUEST, f"`text` is 1 to {QR_TEXT_MAX} characters"
            )
        out = io.BytesIO()  # a standalone SVG (its namespace declared): an <img> shows it
        segno.make(text, error="m").save(
            out, kind="svg", scale=8, border=2, dark="#0b1020", xmldecl=False, svgns=True
        )
        return Response(
            out.getvalue(), media_type="image/svg+xml", headers={"cache-control": "max-age=3600"}
        )

    async def games(request: Request) -> Response:
        return JSONResponse(
            {
                "games": [
                    {
                        "game_id": game_id,
                        "duration_ms": settings.duration_ms,
                        "title": settings.title,
                        "archived": settings.archived_at is not None,
                    }
                    for game_id, settings in sorted(service.games.items())
                ]
            }
        )

    def page(name: str) -> Handler:
        async def serve_page(request: Request) -> Response:
            path = STATIC_DIR / name
            if not path.exists():
                return error_response(404, HttpCode.NOT_FOUND, f"{name} is not installed")
            return FileResponse(path, headers={"cache-control": "no-cache"})

        return serve_page

    async def board_page(request: Request) -> Response:
        # A board of no game is a 404 (the list of boards, to pick the right one).
        if request.path_params["game_id"] not in service.games:
            return FileResponse(
                STATIC_DIR / "games.html", status_code=404, headers={"cache-control": "no-cache"}
            )
        return FileResponse(STATIC_DIR / "board.html", headers={"cache-control": "no-cache"})

    async def favicon(request: Request) -> Response:
        return FileResponse(
            STATIC_DIR / "favicon.svg",
            media_type="image/svg+xml",
            headers={"cache-control": "max-age=86400"},
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, HttpCode.NOT_FOUND, "no such resource")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(405, HttpCode.METHOD_NOT_ALLOWED, "method not allowed")

    async def server_error(request: Request, exc: Exception) -> Response:
        logger.exception("HTTP handler failed", exc_info=exc)
        return error_response(500, HttpCode.INTERNAL_ERROR, "internal error")

    admin = AdminConsole(
        service.store,
        service.password_policy,
        service.password_work,
        service.limits.settings,
        service,
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
        Route("/api/register", register, methods=["POST"]),
        Route("/api/login", login, methods=["POST"]),
        Route("/api/reset-password", reset_password, methods=["POST"]),
        Route("/api/results", results, methods=["POST"]),
        Route("/api/me", delete_me, methods=["DELETE"]),
        Route("/api/me", me, methods=["GET"]),
        Route("/api/games", games, methods=["GET"]),
        Route("/api/games/{game_id}/leaderboard", leaderboard, methods=["GET"]),
        Route("/api/keys", keys, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/config", config, methods=["GET"]),
        Route("/api/qr.svg", qr_code, methods=["GET"]),
        Route("/api/stats", stats, methods=["GET"]),
        Route("/", page("index.html"), methods=["GET"]),
        Route("/board/{game_id}", board_page, methods=["GET"]),
        Route("/board/", page("games.html"), methods=["GET"]),
        Route("/board", page("games.html"), methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
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
