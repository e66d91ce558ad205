"""The synchronous client, for game loops (pygame, Arcade, Pyxel, Ren'Py) and tools.

A thread of its own runs the asyncio client. Setting up (log in, enter, start) waits for the
server; during play nothing does: `game.point()` returns at once, and once a frame
`scores.poll()` hands over what happened since (points judged, the end, the result, boards,
drops and reconnects), so the game's loop never blocks on the network. A game that ends in
time is submitted by itself; its result arrives through `poll()` as ("result", {...}).

    scores = ScoreClient("http://127.0.0.1:8080", "demo")
    scores.login("ada", "correct horse battery")
    game = scores.start()
    while running:                      # the game's own loop
        if player_scored:
            game.point()
        for kind, detail in scores.poll():
            ...                         # "point", "reject", "end", "result", "leaderboard", ...
    scores.close()
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .aio import AsyncGame, AsyncScoreClient, now_ms

T = TypeVar("T")
SETUP_TIMEOUT_S = 30.0


class Game:
    def __init__(self, client: ScoreClient, game: AsyncGame):
        self._client = client
        self._game = game
        self.session_id = game.session_id
        self.duration_ms = game.duration_ms

    @property
    def running(self) -> bool:
        return self._game.running

    @property
    def score(self) -> int:
        return len(self._game.points)

    def point(self) -> None:
        """Send a point; its answer comes through `poll()` as "point" or "reject". Stamped
        now, when the game calls it, not when the client's thread gets round to sending it."""
        at = now_ms()

        def judged(future: Any) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            outcome = future.result()
            self._client._events.put(("point" if outcome["accepted"] else "reject", outcome))

        self._client._soon(self._game.point(at)).add_done_callback(judged)

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the game's result (for a tool; a game loop reads it from `poll()`)."""
        return self._client._wait_result(self, timeout)


class ScoreClient:
    def __init__(self, http_base: str, game_id: str, *, socket_url: str | None = None):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="scoreclient"
        )
        self._thread.start()
        self._events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._results: dict[str, Any] = {}
        self._async = self._call(self._make(http_base, game_id, socket_url))
        self._soon(self._forward())

    @staticmethod
    async def _make(http_base: str, game_id: str, socket_url: str | None) -> AsyncScoreClient:
        return AsyncScoreClient(http_base, game_id, socket_url=socket_url)

    def _soon(self, coroutine: Coroutine[Any, Any, T]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float = SETUP_TIMEOUT_S) -> T:
        return self._soon(coroutine).result(timeout)  # type: ignore[no-any-return]

    async def _forward(self) -> None:
        """The asyncio client's events to `poll()`; a game that ended in time is submitted."""
        while True:
            kind, detail = await self._async.events.get()
            if kind == "end" and self._async.game is not None:
                game = self._async.game
                self._results[game.session_id] = asyncio.ensure_future(game.result())
            if kind != "result":  # results come from the submission below, once each
                self._events.put((kind, detail))
            if kind == "end":
                asyncio.ensure_future(self._deliver(self._async.game))

    async def _deliver(self, game: AsyncGame | None) -> None:
        if game is None:
            return
        task = self._results.get(game.session_id)
        if task is None:
            return
        try:
            self._events.put(("result", await task))
        except Exception as error:  # noqa: BLE001 - reported to the game, in words
            self._events.put(
                ("error", {"code": getattr(error, "code", "error"), "words": str(error)})
            )

    def _wait_result(self, game: Game, timeout: float | None) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            await game._game.ended()
            for _ in range(100):
                task = self._results.get(game.session_id)
                if task is not None:
                    return await task  # type: ignore[no-any-return]
                await asyncio.sleep(0.01)
            return await game._game.result()

        return self._call(
            wait(), timeout if timeout is not None else SETUP_TIMEOUT_S + game.duration_ms / 1000
        )

    # -- what the game calls --

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self._async.identity)

    def register(self, name: str, password: str) -> dict[str, Any]:
        return self._call(self._async.register(name, password))

    def login(self, name: str, password: str) -> dict[str, Any]:
        return self._call(self._async.login(name, password))

    def logout(self) -> None:
        self._call(self._async.logout())

    def enter(self) -> dict[str, Any]:
        return self._call(self._async.enter())

    def start(self) -> Game:
        return Game(self, self._call(self._async.start()))

    def leaderboard(self, limit: int = 10, window: str = "all") -> dict[str, Any]:
        return self._call(self._async.leaderboard(limit, window))

    def my_results(self) -> list[dict[str, Any]]:
        return self._call(self._async.my_results())

    def poll(self) -> list[tuple[str, dict[str, Any]]]:
        """What happened since the last call, oldest first; never waits."""
        found = []
        while True:
            try:
                found.append(self._events.get_nowait())
            except queue.Empty:
                return found

    def close(self) -> None:
        """Close the connection and stop the client's thread (its tasks cancelled first)."""

        async def wind_down() -> None:
            await self._async.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self._call(wind_down(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
