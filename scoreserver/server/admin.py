"""The review console at /admin: the CLI's review operations behind an admin password.

The password is set with `scoreserver admin set-password` (an Argon2id hash in the `settings`
table); while none is set, /admin and its API refuse (403). `POST /api/admin/login` trades the
password for a session token (random; only its SHA-256 is kept, in `admin_sessions`, for 8
hours) that the page sends as `Authorization: Bearer ...`. `POST /api/admin/logout` ends the
session on the server; setting a new password ends every session.

Guesses are charged before the password is checked (`limits.py`): 5 failures a minute per
address (`--admin-failures-per-addr`), and 10 a minute for the admin account whatever the
addresses (`--admin-failures`), on every node together. Password checks run in
the server's own small pool (`PasswordWork`), never in the threads that serve reads. Users are
addressed by id. Lists are paged. Every decision goes through `moderation.py`, the same code as
the command line, and is audited as "admin page".

Why one module of this size: one short method per route of the console (login, flags,
players, games, scores, exports, snapshots, audit), each reading like the API's manual; the
decisions themselves are in `moderation.py`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Annotated, Any, Protocol

import msgspec
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from scoreserver.codes import HttpCode
from scoreserver.core.evidence import render_flag, rhythm_verdict
from scoreserver.core.limits import Budget
from scoreserver.core.rules import GameSettings
from scoreserver.errors import BusyError, ConflictError, NotFoundError, RateLimitedError
from scoreserver.server import moderation
from scoreserver.server.accounts import BudgetSettings, PasswordWork, charge_shared
from scoreserver.server.results_log import ResultsLog
from scoreserver.server.webio import HttpError, bearer, int_param, read_json
from scoreserver.store import Store

SESSION_TTL_S = 8 * 3600
BODY_BYTES = 16 * 1024  # every admin body: a password, a note, a number
PAGE_DEFAULT = 100
PAGE_MAX = 500
MAX_ID = 2**63 - 1
MAX_BAN_DAYS = 36_500.0

Note = Annotated[str, msgspec.Meta(max_length=2000)]
Days = Annotated[float, msgspec.Meta(gt=0, le=MAX_BAN_DAYS)]


class AdminLogin(msgspec.Struct, frozen=True):
    password: Annotated[str, msgspec.Meta(max_length=1024)]
    # The `device` an earlier admin login from this browser answered with (see `_login`).
    device: Annotated[str, msgspec.Meta(max_length=400)] | None = None


class Devices(Protocol):
    """Device tokens (Service.device_token, Service.known_device)."""

    def device_token(self, user_id: int | None, scope: str = "") -> str: ...

    def known_device(self, device: object, scope: str) -> Any: ...


class Resolve(msgspec.Struct, frozen=True):
    action: str
    note: Note
    days: Days | None = None


class BanBody(msgspec.Struct, frozen=True):
    note: Note = ""
    days: Days | None = None


class NoteBody(msgspec.Struct, frozen=True):
    note: Note = ""


class ArchiveBody(msgspec.Struct, frozen=True):
    archived: bool = True


class GameBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A game's settings as /admin sends them: every field optional (`games set` changes only
    those given); `game_id` only when adding. Names as GameSettings'; null clears an optional
    bound (max_score, review_above, title)."""

    game_id: str | None = None
    duration_ms: int | None = None
    burst_window_ms: int | None = None
    burst_threshold: int | None = None
    burst_limit: int | None = None
    burst_period_ms: int | None = None
    latency_ms: int | None = None
    submission_window_ms: int | None = None
    human_floor_ms: int | None = None
    min_rhythm_cv: float | None = None
    max_score: int | None | msgspec.UnsetType = msgspec.UNSET
    hold_outliers: bool | None = None
    title: str | None | msgspec.UnsetType = msgspec.UNSET
    human_max_rate: float | None = None
    review_above: int | None | msgspec.UnsetType = msgspec.UNSET
    review_min_players: int | None = None
    review_account_age_h: float | None = None

    def changes(self) -> dict[str, object]:
        """The settings given: None leaves a setting as it is, except for the optional ones,
        where null (given) clears it and absence leaves it."""
        out: dict[str, object] = {}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name == "game_id" or value is msgspec.UNSET:
                continue
            if value is None and name not in NULLABLE:
                continue
            if name == "title" and isinstance(value, str) and not value.strip():
                value = None
            out[name] = value
        return out


NULLABLE = frozenset({"max_score", "title", "review_above"})


def token_hash(token: str) -> bytes:
    """What `admin_sessions` keeps of a session token (its SHA-256)."""
    return _token_hash(token)


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _now_ms() -> int:
    return int(time.time() * 1000)


class AdminConsole:
    """Login, sessions and the admin API's handlers."""

    def __init__(
        self,
        store: Store,
        password_policy: Any,
        password_work: PasswordWork,
        budgets: BudgetSettings | None = None,
        devices: Devices | None = None,
        results_log: ResultsLog | None = None,
    ):
        self.store = store
        self.results_log = results_log
        self.devices = devices
        self.password_policy = password_policy
        self.password_work = password_work
        budgets = budgets or BudgetSettings()
        self.address_failures = Budget(
            budgets.admin_failures_per_addr,
            message="too many failed logins; wait a minute",
            shared="admin_address",
        )
        # A browser that logged in to /admin before: its own budget, so that strangers
        # spending the admin account's budget do not lock the operator out.
        self.device_failures = Budget(
            budgets.admin_failures_per_addr,
            message="too many failed admin logins from this browser; wait a minute",
            shared="admin_device",
        )
        self.account_failures = Budget(
            budgets.admin_failures,
            message="too many failed admin logins; wait a minute",
            shared="admin_account",
        )

    # -- authentication --

    async def _password_hash(self) -> str | None:
        return await self.store.admin_password_hash()

    async def login(self, request: Request) -> Response:
        try:
            return await self._login(request)
        except HttpError as exc:
            return _error(exc.status, exc.code, exc.message)

    async def _login(self, request: Request) -> Response:
        # The body first, as every route reads it: one too large is refused before any await
        # of ours, while the connection still reads what follows.
        body = await read_json(request, AdminLogin, BODY_BYTES)
        encoded = await self._password_hash()
        if encoded is None:
            return _error(
                403,
                HttpCode.ADMIN_DISABLED,
                "no admin password is set: run `scoreserver admin set-password`",
            )
        address = request.client.host if request.client else "?"
        known = self.devices.known_device(body.device, "admin") if self.devices else None
        budgets = (
            [(self.device_failures, known.session_hex)]
            if known is not None
            else [(self.address_failures, address), (self.account_failures, "admin")]
        )
        try:
            # Shared by every node: guesses spread over nodes count together.
            charged = await charge_shared(self.store, budgets, trio.current_time(), _now_ms())
        except RateLimitedError as exc:
            return _error(429, HttpCode.RATE_LIMITED, str(exc))
        try:
            ok = await self.password_work.run(self.password_policy.verify, body.password, encoded)
        except BusyError as exc:
            await charged.refund_all()
            return _error(503, HttpCode.BUSY, str(exc))
        if not ok:
            return _error(401, HttpCode.AUTH_FAILED, "wrong admin password")
        await charged.refund_all()
        token = secrets.token_urlsafe(32)
        now = _now_ms()
        await self.store.add_admin_session(
            _token_hash(token), now, now + SESSION_TTL_S * 1000, address
        )
        answer: dict[str, object] = {"token": token, "expires_in_s": SESSION_TTL_S}
        if self.devices is not None:
            answer["device"] = self.devices.device_token(None, "admin")
        return JSONResponse(answer)

    @staticmethod
    def _presented(request: Request) -> bytes | None:
        token = bearer(request)
        # Looked up by its hash: the comparison never touches the token itself.
        return None if token is None else _token_hash(token)

    async def logout(self, request: Request) -> Response:
        presented = self._presented(request)
        if presented is not None:
            await self.store.end_admin_sessions(presented)
        return JSONResponse({"logged_out": True})

    def guarded(
        self, handler: Callable[[Request], Awaitable[Any]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            presented = self._presented(request) or b""
            password_set, authorized = await self.store.admin_state(presented, _now_ms())
            if not password_set:
                return _error(403, HttpCode.ADMIN_DISABLED, "no admin password is set")
            if not authorized:
                return _error(401, HttpCode.AUTH_REQUIRED, "log in to the admin console first")
            try:
                result = await handler(request)
            except HttpError as exc:
                return _error(exc.status, exc.code, exc.message)
            except ValueError as exc:
                return _error(400, HttpCode.BAD_REQUEST, str(exc))
            except NotFoundError as exc:
                return _error(404, HttpCode.NOT_FOUND, str(exc))
            except ConflictError as exc:
                return _error(409, HttpCode.CONFLICT, str(exc))
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    @staticmethod
    def actor(request: Request) -> moderation.Actor:
        address = request.client.host if request.client else "?"
        return moderation.Actor(f"admin from {address}", "admin page")

    # -- operations --

    async def flags(self, request: Request) -> Any:
        open_only = request.query_params.get("status", "open") == "open"
        limit, offset = _page(request)
        rows = await self.store.flags(open_only=open_only, limit=limit + 1, offset=offset)
        return {"flags": rows[:limit], **_paging(limit, offset, len(rows))}

    async def flag(self, request: Request) -> Any:
        flag_id = _path_id(request, "flag_id")
        flag = await self.store.flag(flag_id)
        timing = (flag.get("evidence") or {}).get("timing")
        if timing and timing.get("rhythm_figure") is not None:
            # The chart's caption says what the text says (evidence.rhythm_verdict).
            timing["rhythm_verdict"] = rhythm_verdict(
                timing["rhythm_figure"], timing["min_rhythm_cv"], timing.get("population")
            )
        return {"flag": flag, "text": render_flag(flag)}

    async def resolve(self, request: Request) -> Any:
        flag_id = _path_id(request, "flag_id")
        body = await read_json(request, Resolve, BODY_BYTES)
        if body.action not in ("clear", "ban"):
            raise ValueError("action is clear or ban")
        actor = self.actor(request)
        await moderation.resolve_flag(
            self.store,
            flag_id,
            ban=body.action == "ban",
            days=body.days,
            note=body.note,
            actor=actor,
        )
        return {"flag_id": flag_id, "status": "banned" if body.action == "ban" else "cleared"}

    async def users(self, request: Request) -> Any:
        limit, offset = _page(request)
        search = request.query_params.get("q", "").strip()[:64] or None
        rows = await self.store.users(limit=limit + 1, offset=offset, search=search)
        return {"users": rows[:limit], **_paging(limit, offset, len(rows))}

    async def player(self, request: Request) -> Any:
        """One account's page: ban, results with why each is off the boards, sessions, flags."""
        return await self.store.player_page(_path_id(request, "user_id"), _now_ms())

    async def reset_code(self, request: Request) -> Any:
        name = await self._user_name(request)
        code = await moderation.issue_reset_code(self.store, name, actor=self.actor(request))
        return {
            "name": name,
            "code": code,
            "valid_hours": moderation.RESET_CODE_TTL_MS // 3_600_000,
        }

    async def delete_user(self, request: Request) -> Any:
        name = await self._user_name(request)
        body = await read_json(request, NoteBody, BODY_BYTES)
        user_id = await moderation.delete_user(
            self.store, name, actor=self.actor(request), note=body.note
        )
        return {"user_id": user_id, "deleted": True}

    async def summary(self, request: Request) -> Any:
        """What the console polls (every 2 s) to know when to fetch again."""
        return await self.store.review_summary()

    async def games(self, request: Request) -> Any:
        """Every game with all its settings and how much it has been played."""
        games = await self.store.games()
        use = await self.store.games_in_use()
        return {
            "games": [
                {"game_id": game_id, **asdict(settings), **use.get(game_id, {})}
                for game_id, settings in games.items()
            ]
        }

    async def add_game(self, request: Request) -> Any:
        body = await read_json(request, GameBody, BODY_BYTES)
        changes = body.changes()
        if body.game_id is None or "duration_ms" not in changes:
            raise ValueError("game_id and duration_ms are required")
        settings = GameSettings(**changes)
        await moderation.add_game(self.store, body.game_id, settings, actor=self.actor(request))
        return {"game_id": body.game_id, **asdict(settings)}

    async def set_game(self, request: Request) -> Any:
        game_id = request.path_params["game_id"]
        body = await read_json(request, GameBody, BODY_BYTES)
        settings = await moderation.set_game(
            self.store, game_id, body.changes(), actor=self.actor(request)
        )
        return {"game_id": game_id, **asdict(settings)}

    async def archive_game(self, request: Request) -> Any:
        game_id = request.path_params["game_id"]
        body = await read_json(request, ArchiveBody, BODY_BYTES)
        await moderation.archive_game(self.store, game_id, body.archived, actor=self.actor(request))
        return {"game_id": game_id, "archived": body.archived}

    async def remove_game(self, request: Request) -> Any:
        game_id = request.path_params["game_id"]
        await moderation.remove_game(self.store, game_id, actor=self.actor(request))
        return {"game_id": game_id, "removed": True}

    async def _user_name(self, request: Request) -> str:
        user_id = _path_id(request, "user_id")
        user = await self.store.user_by_id(user_id)
        if user is None:
            raise NotFoundError(f"no user {user_id}")
        return user.name

    async def ban(self, request: Request) -> Any:
        name = await self._user_name(request)
        body = await read_json(request, BanBody, BODY_BYTES)
        actor = self.actor(request)
        until = await moderation.ban_user(
            self.store, name, actor=actor, days=body.days, note=body.note
        )
        return {"user_id": _path_id(request, "user_id"), "name": name, "banned_until": until}

    async def unban(self, request: Request) -> Any:
        name = await self._user_name(request)
        body = await read_json(request, NoteBody, BODY_BYTES)
        actor = self.actor(request)
        await moderation.unban_user(self.store, name, actor=actor, note=body.note)
        return {"user_id": _path_id(request, "user_id"), "name": name, "banned_until": None}

    async def hide(self, request: Request) -> Any:
        return await self._score(request, True)

    async def restore(self, request: Request) -> Any:
        return await self._score(request, False)

    async def _score(self, request: Request, hidden: bool) -> Any:
        session_id = request.path_params["session_id"]
        body = await read_json(request, NoteBody, BODY_BYTES)
        actor = self.actor(request)
        session_id = await moderation.set_score_hidden(
            self.store, session_id, hidden, actor=actor, note=body.note
        )
        return {"session_id": session_id, "hidden": hidden}

    async def scores(self, request: Request) -> Any:
        """Every result of a game (newest first), with its session id and whether it shows."""
        game_id = request.path_params["game_id"]
        limit, offset = _page(request)
        data = await moderation.export(self.store, game_id, "all")
        results = list(reversed(data["results"]))
        page = results[offset : offset + limit + 1]
        return {"scores": page[:limit], **_paging(limit, offset, len(page))}

    async def export(self, request: Request) -> Any:
        """A game's board (CSV) or board and results (JSON), as a file to download."""
        game_id = request.path_params["game_id"]
        form = request.query_params.get("format", "csv")
        window = request.query_params.get("window", "all")
        what = request.query_params.get("what", "board")
        if form not in ("csv", "json") or what not in ("board", "results"):
            raise ValueError("format is csv or json; what is board or results")
        data = await moderation.export(self.store, game_id, window)
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in game_id)
        if form == "json":
            body, media = json.dumps(data, indent=2, ensure_ascii=False), "application/json"
        else:
            body, media = moderation.export_csv(data, what), "text/csv; charset=utf-8"
        name = f"{safe}-{what if form == 'csv' else 'export'}-{window}.{form}"
        return Response(
            body,
            media_type=media,
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    async def snapshot(self, request: Request) -> Any:
        """A game's board as a signed snapshot naming a checkpoint (docs/verification.md)."""
        game_id = request.path_params["game_id"]
        window = request.query_params.get("window", "all")
        if window not in ("day", "week", "all"):
            raise ValueError("window is day, week or all")
        game = await self.store.game(game_id)
        if game is None or self.results_log is None:
            raise NotFoundError(f"no game {game_id!r}")
        document = await self.results_log.snapshot(game_id, window=window, title=game.title)
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in game_id)
        return Response(
            json.dumps(document, indent=2, ensure_ascii=False),
            media_type="application/json",
            headers={
                "content-disposition": f'attachment; filename="{safe}-snapshot-{window}.json"'
            },
        )

    async def audit(self, request: Request) -> Any:
        limit, offset = _page(request)
        rows = await self.store.audit(limit=limit + 1, offset=offset, newest_first=True)
        return {"audit": rows[:limit], **_paging(limit, offset, len(rows))}

    def routes(self, page: Callable[[Request], Awaitable[Response]]) -> list[Route]:
        g = self.guarded
        return [
            Route("/admin", page, methods=["GET"]),
            Route("/api/admin/login", self.login, methods=["POST"]),
            Route("/api/admin/logout", self.logout, methods=["POST"]),
            Route("/api/admin/flags", g(self.flags), methods=["GET"]),
            Route("/api/admin/flags/{flag_id:int}", g(self.flag), methods=["GET"]),
            Route("/api/admin/flags/{flag_id:int}/resolve", g(self.resolve), methods=["POST"]),
            Route("/api/admin/users", g(self.users), methods=["GET"]),
            Route("/api/admin/users/{user_id:int}/ban", g(self.ban), methods=["POST"]),
            Route("/api/admin/users/{user_id:int}/unban", g(self.unban), methods=["POST"]),
            Route("/api/admin/users/{user_id:int}", g(self.player), methods=["GET"]),
            Route(
                "/api/admin/users/{user_id:int}/reset-password",
                g(self.reset_code),
                methods=["POST"],
            ),
            Route("/api/admin/users/{user_id:int}/delete", g(self.delete_user), methods=["POST"]),
            Route("/api/admin/summary", g(self.summary), methods=["GET"]),
            Route("/api/admin/games", g(self.games), methods=["GET"]),
            Route("/api/admin/games", g(self.add_game), methods=["POST"]),
            Route("/api/admin/games/{game_id}", g(self.set_game), methods=["POST"]),
            Route("/api/admin/games/{game_id}", g(self.remove_game), methods=["DELETE"]),
            Route("/api/admin/games/{game_id}/archive", g(self.archive_game), methods=["POST"]),
            Route("/api/admin/scores/{session_id}/hide", g(self.hide), methods=["POST"]),
            Route("/api/admin/scores/{session_id}/restore", g(self.restore), methods=["POST"]),
            Route("/api/admin/audit", g(self.audit), methods=["GET"]),
            Route("/api/admin/export/{game_id}", g(self.export), methods=["GET"]),
            Route("/api/admin/snapshot/{game_id}", g(self.snapshot), methods=["GET"]),
            Route("/api/admin/games/{game_id}/scores", g(self.scores), methods=["GET"]),
        ]


def _path_id(request: Request, name: str) -> int:
    value = int(request.path_params[name])
    if value > MAX_ID:
        raise NotFoundError(f"no {name.removesuffix('_id')} {value}")
    return value


def _page(request: Request) -> tuple[int, int]:
    limit = int_param(request, "limit", PAGE_DEFAULT, 1, PAGE_MAX)
    offset = int_param(request, "offset", 0, 0, MAX_ID)
    return limit or PAGE_DEFAULT, offset or 0


def _paging(limit: int, offset: int, fetched: int) -> dict[str, Any]:
    """Where this page stands: `next_offset` is null on the last page."""
    more = fetched > limit
    return {"limit": limit, "offset": offset, "next_offset": offset + limit if more else None}


def _error(status: int, code: HttpCode, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)
