"""The routes of the HTTP side, by who uses them: `PlayerRoutes` (accounts, results, a
player's own page), `PublicRoutes` (boards, games, keys, health, the QR code) and `Pages`
(the HTML and the client module). `http.create_app` puts them, and the admin console's, into
one Starlette app. Every error is JSON: `{"error": CODE, "message": TEXT}`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import segno
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from scoreserver.codes import HttpCode
from scoreserver.errors import AuthError, BusyError, ConflictError, RateLimitedError
from scoreserver.server.accounts import PASSWORD_MAX
from scoreserver.server.service import Service
from scoreserver.server.sessions import Peer
from scoreserver.server.webio import (
    WINDOWS_MS,
    HttpError,
    bearer,
    error_response,
    int_param,
    read_json,
)
from scoreserver.store import User
from scoreserver.wire import protocol as wire
from scoreserver.wire.receipts import PublishedKey
from scoreserver.wire.tokens import public_from_raw

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent.parent / "static"
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


class ResetBody(msgspec.Struct, frozen=True):
    name: Annotated[str, msgspec.Meta(max_length=256)]
    code: Annotated[str, msgspec.Meta(max_length=64)]
    password: Annotated[str, msgspec.Meta(max_length=PASSWORD_MAX)]


class Erasure(msgspec.Struct, frozen=True):
    password: Annotated[str, msgspec.Meta(max_length=PASSWORD_MAX)]


def _logged_in(service: Service, token: str, user: User) -> dict[str, Any]:
    """What a registration, login or reset answers."""
    device = service.device_token(user.id)
    return {"token": token, "user_id": user.id, "name": user.name, "device": device}


class PlayerRoutes:
    """What a player's page calls: register, log in, reset a password by code, submit a
    result, read or erase their own account."""

    def __init__(self, service: Service):
        self.service = service

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/register", _json_errors(self.register), methods=["POST"]),
            Route("/api/login", _json_errors(self.login), methods=["POST"]),
            Route("/api/reset-password", _json_errors(self.reset_password), methods=["POST"]),
            Route("/api/results", _json_errors(self.results), methods=["POST"]),
            Route("/api/me", _json_errors(self.delete_me), methods=["DELETE"]),
            Route("/api/me", _json_errors(self.me), methods=["GET"]),
        ]

    async def register(self, request: Request) -> Response:
        body = await read_json(request, Credentials, CREDENTIALS_BODY_BYTES)
        try:
            token, user = await self.service.register(
                body.name, body.password, peer_of(request).address
            )
        except ValueError as exc:
            raise HttpError(400, HttpCode.BAD_REQUEST, str(exc)) from None
        except ConflictError:
            raise HttpError(409, HttpCode.NAME_TAKEN, "that name is taken") from None
        return JSONResponse(_logged_in(self.service, token, user), 201)

    async def login(self, request: Request) -> Response:
        body = await read_json(request, Credentials, CREDENTIALS_BODY_BYTES)
        token, user = await self.service.login(
            body.name, body.password, peer_of(request).address, body.device
        )
        return JSONResponse(_logged_in(self.service, token, user))

    async def reset_password(self, request: Request) -> Response:
        body = await read_json(request, ResetBody, CREDENTIALS_BODY_BYTES)
        try:
            token, user = await self.service.reset_password(
                body.name, body.code, body.password, peer_of(request).address
            )
        except ValueError as exc:
            raise HttpError(400, HttpCode.BAD_REQUEST, str(exc)) from None
        return JSONResponse(_logged_in(self.service, token, user))

    async def identified(self, request: Request) -> User:
        """The account of the request's `Authorization: Bearer LOGIN_TOKEN` (401 without one)."""
        token = bearer(request)
        if token is None:
            raise HttpError(401, HttpCode.AUTH_FAILED, "use `Authorization: Bearer LOGIN_TOKEN`")
        return await self.service.identify(token)  # AuthError: 401 (_json_errors)

    async def submitter(self, request: Request) -> Peer:
        """Who submits: anyone may (the tokens authorize a submission), but a player who sends
        their login token is known by it, so a failure is held against them, not an address."""
        peer = peer_of(request)
        if "authorization" not in request.headers:
            return peer
        user = await self.identified(request)
        peer.user_id, peer.name = user.id, user.name
        return peer

    async def delete_me(self, request: Request) -> Response:
        token = bearer(request)
        if token is None:
            raise HttpError(401, HttpCode.AUTH_FAILED, "send `Authorization: Bearer LOGIN_TOKEN`")
        body = await read_json(request, Erasure, CREDENTIALS_BODY_BYTES)
        user_id = await self.service.delete_account(token, body.password, peer_of(request).address)
        return JSONResponse({"deleted": True, "user_id": user_id})

    async def me(self, request: Request) -> Response:
        """The player's own account and results, each saying whether it is on the boards and,
        if not, why (held for review, flagged, hidden, banned)."""
        user = await self.identified(request)
        results = await self.service.store.my_results(user.id, self.service.clock.now_ms())
        return JSONResponse({"user_id": user.id, "name": user.name, "results": results})

    async def results(self, request: Request) -> Response:
        body = await read_json(request, ResultBody)
        outcome = await self.service.submit(
            body.start_token, body.end_token, body.points, await self.submitter(request)
        )
        answer: dict[str, Any] = {"type": "result", "accepted": outcome.accepted}
        if outcome.accepted:
            answer.update(score=outcome.score, saved=outcome.saved, held=outcome.held)
            if outcome.held_reason is not None:
                answer["held_reason"] = outcome.held_reason
            if outcome.receipt is not None:
                answer.update(receipt=outcome.receipt, log_index=outcome.log_index)
        else:
            answer["reason"] = outcome.reason
        return JSONResponse(answer)


class PublicRoutes:
    """What anyone may read: boards, the games, the public keys, health and counters, where
    the game socket is, and a QR code of the play address."""

    def __init__(self, service: Service):
        self.service = service

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/games", self.games, methods=["GET"]),
            Route(
                "/api/games/{game_id}/leaderboard",
                _json_errors(self.leaderboard),
                methods=["GET"],
            ),
            Route("/api/keys", self.keys, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/api/config", self.config, methods=["GET"]),
            Route("/api/qr.svg", self.qr_code, methods=["GET"]),
            Route("/api/stats", self.stats, methods=["GET"]),
        ]

    async def leaderboard(self, request: Request) -> Response:
        game_id = request.path_params["game_id"]
        if game_id not in self.service.games:
            raise HttpError(404, HttpCode.UNKNOWN_GAME, f"no game {game_id!r}")
        limit = int_param(request, "limit", 10, 1, 100)
        offset = int_param(request, "offset", 0, 0, 10**9)
        around = int_param(request, "around", None, 0, 2**62)
        window = request.query_params.get("window", "all")
        if window not in ("day", "week", "all"):
            raise HttpError(400, HttpCode.BAD_REQUEST, "`window` is day, week or all")
        now = self.service.clock.now_ms()
        since = now - WINDOWS_MS[window] if window in WINDOWS_MS else 0
        entries = await self.service.store.leaderboard(
            game_id, now, limit=limit, offset=offset, around=around, since=since
        )
        return JSONResponse({"game_id": game_id, "entries": entries})

    async def keys(self, request: Request) -> Response:
        """Every key the deployment ever signed with (a receipt may name any of them), with
        when it began and stopped signing; `valid_until` while it still verifies game tokens."""
        _, history = await self.service.store.key_history()
        until = {k.kid.hex(): k.valid_until for k in self.service.keys.verify_keys}
        return JSONResponse(
            {
                "keys": [
                    {
                        **PublishedKey(
                            bytes.fromhex(row["kid"]),
                            public_from_raw(row["public_key"]),
                            row["created_at"],
                            row["retired_at"],
                        ).to_json(),
                        "valid_until": until.get(row["kid"]),
                        "verifies_tokens": row["kid"] in until,
                    }
                    for row in history
                ]
            }
        )

    async def healthz(self, request: Request) -> Response:
        # 200 while games can be played and saved (also when degraded); 503 when they cannot.
        report = request.app.state.health()
        return JSONResponse(report, status_code=503 if report["status"] == "failing" else 200)

    async def stats(self, request: Request) -> Response:
        # Operational counters: connections, sessions, commits, event-loop stalls.
        return JSONResponse(request.app.state.stats())

    async def config(self, request: Request) -> Response:
        # Where the game socket listens: the client module asks, so pages need no settings.
        # play_urls: where other machines reach this HTTP port (the big screen's "play at").
        return JSONResponse(
            {
                "ws_port": request.app.state.ws_port,
                "play_urls": getattr(request.app.state, "play_urls", []),
            }
        )

    async def qr_code(self, request: Request) -> Response:
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

    async def games(self, request: Request) -> Response:
        return JSONResponse(
            {
                "games": [
                    {
                        "game_id": game_id,
                        "duration_ms": settings.duration_ms,
                        "title": settings.title,
                        "archived": settings.archived_at is not None,
                    }
                    for game_id, settings in sorted(self.service.games.items())
                ]
            }
        )


def page(name: str) -> Handler:
    """A handler that serves static/NAME, never cached stale."""

    async def serve_page(request: Request) -> Response:
        path = STATIC_DIR / name
        if not path.exists():
            return error_response(404, HttpCode.NOT_FOUND, f"{name} is not installed")
        return FileResponse(path, headers={"cache-control": "no-cache"})

    return serve_page


class Pages:
    """The HTML pages, the favicon and /static (the client module among them)."""

    def __init__(self, service: Service):
        self.service = service

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", page("index.html"), methods=["GET"]),
            Route("/board/{game_id}", self.board_page, methods=["GET"]),
            Route("/board/", page("games.html"), methods=["GET"]),
            Route("/board", page("games.html"), methods=["GET"]),
            Route("/verify", page("verify.html"), methods=["GET"]),
            Route("/favicon.ico", self.favicon, methods=["GET"]),
            # The types as text (by its extension alone, .ts would be served as MPEG video).
            Route("/static/scoreclient.d.ts", self.types, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
        ]

    async def board_page(self, request: Request) -> Response:
        # A board of no game is a 404 (the list of boards, to pick the right one).
        if request.path_params["game_id"] not in self.service.games:
            return FileResponse(
                STATIC_DIR / "games.html", status_code=404, headers={"cache-control": "no-cache"}
            )
        return FileResponse(STATIC_DIR / "board.html", headers={"cache-control": "no-cache"})

    async def types(self, request: Request) -> Response:
        return FileResponse(
            STATIC_DIR / "scoreclient.d.ts",
            media_type="text/plain; charset=utf-8",
            headers={"cache-control": "no-cache"},
        )

    async def favicon(self, request: Request) -> Response:
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
