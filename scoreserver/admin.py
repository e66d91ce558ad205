"""The review console at /admin: the CLI's review operations behind an admin password.

The password is set with `scoreserver admin set-password` (an Argon2id hash in the `settings`
table); while none is set, /admin and its API refuse (403). `POST /api/admin/login` trades the
password for a session token (random, kept in memory for 8 hours) that the page sends as
`Authorization: Bearer ...`. Failed logins are limited per address. Every decision goes through
`moderation.py`, the same code as the command line, and is audited as "admin page".
"""

from __future__ import annotations

import hmac
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import moderation
from . import store as db
from .errors import ConflictError, NotFoundError

ADMIN_PASSWORD_SETTING = "admin_password_hash"
SESSION_TTL_S = 8 * 3600
FAILED_LOGINS_PER_MINUTE = 5


class AdminLogin(msgspec.Struct, frozen=True):
    password: str


class Resolve(msgspec.Struct, frozen=True):
    action: str
    note: str
    days: float | None = None


class BanBody(msgspec.Struct, frozen=True):
    note: str = ""
    days: float | None = None


class NoteBody(msgspec.Struct, frozen=True):
    note: str = ""


class AdminConsole:
    """Sessions, login limits and the admin API's handlers."""

    def __init__(self, db_path: Any, password_policy: Any):
        self.db_path = db_path
        self.password_policy = password_policy
        self._sessions: dict[str, float] = {}  # token -> expiry (monotonic seconds)
        self._failures: dict[str, list[float]] = {}

    # -- running the CLI's code in a worker thread, on a connection of its own --

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def work() -> Any:
            conn = db.connect(self.db_path)
            try:
                return fn(conn)
            finally:
                conn.close()

        return await trio.to_thread.run_sync(work)

    # -- authentication --

    async def _password_hash(self) -> str | None:
        return await self._run(lambda c: db.get_setting(c, ADMIN_PASSWORD_SETTING))  # type: ignore[no-any-return]

    def _limited(self, address: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._failures.get(address, []) if now - t < 60]
        self._failures[address] = recent
        return len(recent) >= FAILED_LOGINS_PER_MINUTE

    async def login(self, request: Request) -> Response:
        encoded = await self._password_hash()
        if encoded is None:
            return _error(
                403,
                "admin_disabled",
                "no admin password is set: run `scoreserver admin set-password`",
            )
        address = request.client.host if request.client else "?"
        if self._limited(address):
            return _error(429, "rate_limited", "too many failed logins; wait a minute")
        try:
            body = msgspec.json.decode(await request.body(), type=AdminLogin)
        except msgspec.DecodeError as exc:
            return _error(400, "bad_request", str(exc))
        ok = await trio.to_thread.run_sync(self.password_policy.verify, body.password, encoded)
        if not ok:
            self._failures.setdefault(address, []).append(time.monotonic())
            return _error(401, "auth_failed", "wrong admin password")
        token = secrets.token_urlsafe(32)
        self._sessions[token] = time.monotonic() + SESSION_TTL_S
        return JSONResponse({"token": token, "expires_in_s": SESSION_TTL_S})

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return False
        presented = header[len("Bearer ") :]
        now = time.monotonic()
        for token, expiry in list(self._sessions.items()):
            if expiry < now:
                del self._sessions[token]
            elif hmac.compare_digest(token.encode(), presented.encode()):
                return True
        return False

    def guarded(
        self, handler: Callable[[Request], Awaitable[Any]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if await self._password_hash() is None:
                return _error(403, "admin_disabled", "no admin password is set")
            if not self._authorized(request):
                return _error(401, "auth_required", "log in to the admin console first")
            try:
                result = await handler(request)
            except (msgspec.DecodeError, ValueError) as exc:
                return _error(400, "bad_request", str(exc))
            except NotFoundError as exc:
                return _error(404, "not_found", str(exc))
            except ConflictError as exc:
                return _error(409, "conflict", str(exc))
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    @staticmethod
    def actor(request: Request) -> moderation.Actor:
        address = request.client.host if request.client else "?"
        return moderation.Actor(f"admin from {address}", "admin page")

    # -- operations --

    async def flags(self, request: Request) -> Any:
        open_only = request.query_params.get("status", "open") == "open"
        flags = await self._run(lambda c: db.list_flags(c, open_only=open_only))
        return {"flags": flags}

    async def flag(self, request: Request) -> Any:
        from .cli import render_flag

        flag_id = int(request.path_params["flag_id"])
        flag = await self._run(lambda c: db.get_flag(c, flag_id))
        return {"flag": flag, "text": render_flag(flag)}

    async def resolve(self, request: Request) -> Any:
        flag_id = int(request.path_params["flag_id"])
        body = msgspec.json.decode(await request.body(), type=Resolve)
        if body.action not in ("clear", "ban"):
            raise ValueError("action is clear or ban")
        actor = self.actor(request)
        await self._run(
            lambda c: moderation.resolve_flag(
                c, flag_id, ban=body.action == "ban", days=body.days, note=body.note, actor=actor
            )
        )
        return {"flag_id": flag_id, "status": "banned" if body.action == "ban" else "cleared"}

    async def users(self, request: Request) -> Any:
        return {"users": await self._run(db.list_users)}

    async def ban(self, request: Request) -> Any:
        name = request.path_params["name"]
        body = msgspec.json.decode(await request.body() or b"{}", type=BanBody)
        actor = self.actor(request)
        until = await self._run(
            lambda c: moderation.ban_user(c, name, actor=actor, days=body.days, note=body.note)
        )
        return {"name": name, "banned_until": until}

    async def unban(self, request: Request) -> Any:
        name = request.path_params["name"]
        actor = self.actor(request)
        await self._run(lambda c: moderation.unban_user(c, name, actor=actor))
        return {"name": name, "banned_until": None}

    async def hide(self, request: Request) -> Any:
        return await self._score(request, True)

    async def restore(self, request: Request) -> Any:
        return await self._score(request, False)

    async def _score(self, request: Request, hidden: bool) -> Any:
        session_id = request.path_params["session_id"]
        body = msgspec.json.decode(await request.body() or b"{}", type=NoteBody)
        actor = self.actor(request)
        await self._run(
            lambda c: moderation.set_score_hidden(
                c, session_id, hidden, actor=actor, note=body.note
            )
        )
        return {"session_id": session_id, "hidden": hidden}

    async def audit(self, request: Request) -> Any:
        return {"audit": await self._run(db.list_audit)}

    def routes(self, page: Callable[[Request], Awaitable[Response]]) -> list[Route]:
        g = self.guarded
        return [
            Route("/admin", page, methods=["GET"]),
            Route("/api/admin/login", self.login, methods=["POST"]),
            Route("/api/admin/flags", g(self.flags), methods=["GET"]),
            Route("/api/admin/flags/{flag_id:int}", g(self.flag), methods=["GET"]),
            Route("/api/admin/flags/{flag_id:int}/resolve", g(self.resolve), methods=["POST"]),
            Route("/api/admin/users", g(self.users), methods=["GET"]),
            Route("/api/admin/users/{name}/ban", g(self.ban), methods=["POST"]),
            Route("/api/admin/users/{name}/unban", g(self.unban), methods=["POST"]),
            Route("/api/admin/scores/{session_id}/hide", g(self.hide), methods=["POST"]),
            Route("/api/admin/scores/{session_id}/restore", g(self.restore), methods=["POST"]),
            Route("/api/admin/audit", g(self.audit), methods=["GET"]),
        ]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)
