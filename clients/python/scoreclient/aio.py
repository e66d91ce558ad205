"""The asyncio client: the same flow as scoreclient.js (docs/protocol.md).

    async with AsyncScoreClient("http://127.0.0.1:8080", "demo") as scores:
        await scores.login("ada", "correct horse battery")   # or play as a guest
        room = await scores.enter()                         # {"game_id", "duration_ms"}
        game = await scores.start()                         # the server's timer runs now
        await game.point()                                  # on every point the player scores
        result = await game.result()                        # after end_game: submitted, judged

The server keeps the time: a game ends when `end_game` arrives. If the socket drops during a
game, the client reconnects with back-off, logs in again and resumes it (following
`session_elsewhere` to the node that has it); between games, `start()` reconnects and enters
the room again by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import websockets

from .words import WORDS

REQUEST_TIMEOUT_S = 15.0


def explain(code: str, detail: dict[str, Any] | None = None) -> str:
    """A code in plain words (the code itself, spaced, if it is new to this client)."""
    reason = (detail or {}).get("reason")
    if reason == "banned" and isinstance((detail or {}).get("banned_until"), int):
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(detail["banned_until"] / 1000))  # type: ignore[index]
        return WORDS[f"{code}.banned_until"].replace("{until}", until)
    return WORDS.get(f"{code}.{reason}") or WORDS.get(code) or str(code).replace("_", " ")


def set_words(words: dict[str, str]) -> None:
    """Words a game supplies for codes (its language or voice), used from now on."""
    WORDS.update({code: text for code, text in words.items() if isinstance(text, str)})


class ScoreError(Exception):
    """A refusal: `code` (the protocol's), `words` (for players), `message` (the server's)."""

    def __init__(self, code: str, message: str | None = None, detail: dict[str, Any] | None = None):
        super().__init__(message or code)
        self.code = code
        self.message = message or code
        self.reason = (detail or {}).get("reason")
        self.url = (detail or {}).get("url")
        self.words = explain(code, detail)


# The epoch's time at the monotonic clock's zero: stamps never step when the system's wall
# clock is corrected mid-game (as scoreclient.js uses performance.now()).
_EPOCH = time.time() - time.monotonic()


def now_ms() -> int:
    """Milliseconds on the epoch, by the monotonic clock."""
    return int((_EPOCH + time.monotonic()) * 1000)


class AsyncGame:
    """One game session, from game_started to its result."""

    def __init__(self, client: AsyncScoreClient, started: dict[str, Any]):
        self.client = client
        self.session_id: str = started["session_id"]
        self.start_token: str = started["start_token"]
        self.duration_ms: int = started["duration_ms"]
        self.points: list[dict[str, Any]] = []
        self.end: dict[str, Any] | None = None
        self._ended = asyncio.Event()
        self._last_stamp = 0

    @property
    def running(self) -> bool:
        return self.end is None

    async def point(self, at: int | None = None) -> dict[str, Any]:
        """Send a point: {"accepted": True, "seq", "score"} or {"accepted": False, "reason",
        "words"}. `at`: when the player scored it (`now_ms()` then), if that was earlier;
        anything in the future or over a second old is taken as now."""
        current = now_ms()
        stamp = at if at is not None and current - 1000 <= at <= current else current
        client_ts = max(stamp, self._last_stamp)  # stamps go forward
        self._last_stamp = client_ts
        try:
            reply = await self.client._request({"type": "point", "client_ts": client_ts})
        except ScoreError as error:
            return {"accepted": False, "reason": error.code, "words": error.words}
        if reply["type"] == "point_accepted":
            self.points.append({"token": reply["token"], "client_ts": client_ts})
            return {"accepted": True, "seq": reply["seq"], "score": len(self.points)}
        return {"accepted": False, "reason": reply["reason"], "words": explain(reply["reason"])}

    async def ended(self) -> dict[str, Any]:
        """The game's end_game (with `words`), once the server sends it."""
        await self._ended.wait()
        assert self.end is not None
        return self.end

    def _set_end(self, end: dict[str, Any]) -> None:
        if self.end is None:
            self.end = {**end, "words": explain(end["reason"])}
            self._ended.set()

    def submission(self) -> dict[str, Any]:
        end_token = (self.end or {}).get("end_token") or ""
        return {"start_token": self.start_token, "end_token": end_token, "points": self.points}

    async def result(self) -> dict[str, Any]:
        """Wait for the end, then submit (a game that did not end in time_up is not saved)."""
        end = await self.ended()
        if end["reason"] != "time_up":
            reason = "session_voided"
            return {"type": "result", "accepted": False, "reason": reason, "words": explain(reason)}
        return await self.client.submit(self)


class AsyncScoreClient:
    def __init__(self, http_base: str, game_id: str, *, socket_url: str | None = None):
        self.http_base = http_base.rstrip("/")
        self.game_id = game_id
        self.socket_url = socket_url
        self.token: str | None = None
        self.identity: dict[str, Any] = {"user_id": None, "name": None}
        self.duration_ms: int | None = None
        self.game: AsyncGame | None = None
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._ws: Any = None
        self._room_ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 1
        self._closing = False

    async def __aenter__(self) -> AsyncScoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- HTTP --

    async def _http(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        def call() -> tuple[int, dict[str, Any]]:
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(
                self.http_base + path,
                data=data,
                method=method,
                headers={"content-type": "application/json"},
            )
            if self.token and path in ("/api/me", "/api/results"):
                request.add_header("authorization", f"Bearer {self.token}")
            try:
                with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as reply:
                    return reply.status, json.loads(reply.read() or b"{}")
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read() or b"{}")
            except (urllib.error.URLError, OSError) as error:
                raise ScoreError("disconnected", str(error)) from None

        status, answer = await asyncio.to_thread(call)
        if status >= 400:
            raise ScoreError(answer.get("error", "error"), answer.get("message"), answer)
        return answer

    # -- accounts --

    async def register(self, name: str, password: str) -> dict[str, Any]:
        return await self._logged_in(
            await self._http("POST", "/api/register", {"name": name, "password": password})
        )

    async def login(self, name: str, password: str) -> dict[str, Any]:
        return await self._logged_in(
            await self._http("POST", "/api/login", {"name": name, "password": password})
        )

    async def _logged_in(self, answer: dict[str, Any]) -> dict[str, Any]:
        self.token = answer["token"]
        self.identity = {"user_id": answer["user_id"], "name": answer["name"]}
        if self._ws is not None:
            await self._request({"type": "auth", "token": self.token})
            self._room_ws = None  # enter again as the player
        return answer

    async def logout(self) -> None:
        self.token = None
        self.identity = {"user_id": None, "name": None}
        await self._drop_socket()

    async def my_results(self) -> list[dict[str, Any]]:
        answer = await self._http("GET", "/api/me")
        return [
            {**r, "words": explain(r["held_reason"]) if r.get("held_reason") else None}
            for r in answer["results"]
        ]

    # -- the socket --

    async def _resolve_socket(self) -> str:
        if self.socket_url is None:
            config = await self._http("GET", "/api/config")
            host = urllib.parse.urlsplit(self.http_base)
            scheme = "wss" if host.scheme == "https" else "ws"
            self.socket_url = f"{scheme}://{host.hostname}:{config['ws_port']}/"
        return self.socket_url

    async def connect(self) -> None:
        """Open the socket (and log in with the token) if it is not open."""
        if self._ws is not None:
            return
        url = await self._resolve_socket()
        try:
            self._ws = await websockets.connect(url, max_size=1 << 20)
        except (OSError, websockets.WebSocketException) as error:
            raise ScoreError("disconnected", f"cannot reach {url}: {error}") from None
        self._reader = asyncio.create_task(self._read(self._ws))
        if self.token:
            try:
                identity = await self._request({"type": "auth", "token": self.token})
                self.identity = {"user_id": identity["user_id"], "name": identity["name"]}
            except ScoreError as error:
                if error.code != "auth_failed":
                    raise
                self.token = None
                self.identity = {"user_id": None, "name": None}
                self.events.put_nowait(
                    ("logged_out", {"reason": error.reason, "words": error.words})
                )

    async def _read(self, ws: Any) -> None:
        try:
            async for frame in ws:
                self._on_message(json.loads(frame))
        except (websockets.WebSocketException, OSError, ValueError):
            pass
        finally:
            await self._lost(ws)

    def _on_message(self, message: dict[str, Any]) -> None:
        waiting = self._pending.pop(message.get("id"), None) if "id" in message else None  # type: ignore[arg-type]
        if waiting is not None and not waiting.done():
            if message["type"] == "error":
                waiting.set_exception(ScoreError(message["code"], message.get("message"), message))
            else:
                waiting.set_result(message)
            return
        if message["type"] == "end_game" and self.game is not None:
            self.game._set_end(message)
            self.events.put_nowait(("end", self.game.end or message))
        elif message["type"] == "leaderboard":
            self.events.put_nowait(("leaderboard", message))
        elif message["type"] == "error":
            self.events.put_nowait(("error", {**message, "words": explain(message["code"])}))

    async def _lost(self, ws: Any) -> None:
        if ws is not self._ws:
            return
        self._ws = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ScoreError("disconnected", "the game socket closed"))
        self._pending.clear()
        if self._closing:
            return
        self.events.put_nowait(("disconnect", {"words": explain("disconnected")}))
        if self.game is not None and self.game.running:
            asyncio.get_running_loop().create_task(self._resume(self.game))

    async def _resume(self, game: AsyncGame) -> None:
        """Reconnect with back-off and resume `game` (following session_elsewhere)."""
        for attempt in range(8):
            await asyncio.sleep(min(4.0, 0.25 * 2**attempt))
            if not game.running:
                return
            try:
                for _hop in range(4):
                    await self.connect()
                    try:
                        reply = await self._request(
                            {"type": "resume", "start_token": game.start_token}
                        )
                        break
                    except ScoreError as error:
                        if error.code != "session_elsewhere" or not error.url:
                            raise
                        await self._drop_socket()
                        self.socket_url = error.url
                        self.events.put_nowait(("moved", {"url": error.url}))
                else:
                    continue
                if reply["type"] == "end_game":
                    game._set_end(reply)
                self.events.put_nowait(("reconnect", {"attempt": attempt + 1}))
                with contextlib.suppress(ScoreError):
                    await self.enter()
                return
            except ScoreError as error:
                if error.code == "unknown_session":
                    break
        game._set_end({"type": "end_game", "reason": "disconnected", "server_ts": None})

    async def _drop_socket(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            self._closing = True
            try:
                await ws.close()
            finally:
                self._closing = False

    async def close(self) -> None:
        self._closing = True
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        ws = self._ws
        if ws is None:
            raise ScoreError("disconnected", "the game socket is not open")
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await ws.send(json.dumps({**message, "id": request_id}))
        except (websockets.WebSocketException, OSError):
            self._pending.pop(request_id, None)
            raise ScoreError("disconnected", "the game socket closed") from None
        try:
            return await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        except TimeoutError:
            self._pending.pop(request_id, None)
            raise ScoreError("timeout", f"no answer to {message['type']}") from None

    # -- the game --

    async def whoami(self) -> dict[str, Any]:
        await self.connect()
        identity = await self._request({"type": "whoami"})
        self.identity = {"user_id": identity["user_id"], "name": identity["name"]}
        return self.identity

    async def enter(self) -> dict[str, Any]:
        """Who am I, then join the game's room: {"game_id", "duration_ms"}."""
        await self.whoami()
        room = await self._request(
            {
                "type": "enter_game_room",
                "game_id": self.game_id,
                "user_id": self.identity["user_id"],
            }
        )
        self.duration_ms = room["duration_ms"]
        self._room_ws = self._ws
        if self.identity["user_id"] is None:  # told before playing, as the contract asks
            self.events.put_nowait(("guest", {"words": explain("guest")}))
        return room

    async def start(self) -> AsyncGame:
        """Start a game (entering the room again on a new connection)."""
        await self.connect()
        if self.duration_ms is None or self._room_ws is not self._ws:
            await self.enter()
        started = await self._request({"type": "game_start", "client_ts": now_ms()})
        self.game = AsyncGame(self, started)
        return self.game

    async def submit(self, game: AsyncGame) -> dict[str, Any]:
        """Submit a finished game over the socket, or over HTTP if the socket is gone."""
        body = game.submission()
        try:
            await self.connect()
            result = await self._request({"type": "submit_result", **body})
        except ScoreError as error:
            if error.code.startswith("bad_"):
                raise
            result = await self._http("POST", "/api/results", body)
        if not result["accepted"]:
            result = {**result, "words": explain(result["reason"])}
        elif result.get("held"):
            result = {**result, "words": explain(result["held_reason"])}
        self.events.put_nowait(("result", result))
        return result

    async def leaderboard(self, limit: int = 10, window: str = "all") -> dict[str, Any]:
        query = urllib.parse.urlencode({"limit": limit, "window": window})
        return await self._http(
            "GET", f"/api/games/{urllib.parse.quote(self.game_id)}/leaderboard?{query}"
        )
