"""The results log as this process serves it: its Merkle tree, kept in step with the
database's entries (which any node or the command line may append), signed checkpoints made
every few seconds while the log grows, and the routes that prove things about it:
`GET /api/log/checkpoint`, `/api/log/proof`, `/api/log/consistency`, `/api/log/entries`.

Entries are appended in the transactions of what they record (store/ops/log.py); this module
only reads them, so nothing here is on the path of a point or a submission.
"""

from __future__ import annotations

import base64
import logging
import secrets
from typing import Any, Protocol

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from scoreserver.codes import HttpCode
from scoreserver.core import merkle
from scoreserver.errors import StoreError
from scoreserver.server.clock import ServerClock
from scoreserver.server.webio import WINDOWS_MS, HttpError, error_response, int_param
from scoreserver.store import Store
from scoreserver.wire.receipts import entry_leaf, sign_checkpoint, sign_snapshot
from scoreserver.wire.tokens import KeyRing

logger = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 2.0  # while the log grows, a signed checkpoint at least this often
ORIGIN_SETTING = "log_origin"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class LogHost(Protocol):
    @property
    def store(self) -> Store: ...
    @property
    def clock(self) -> ServerClock: ...
    @property
    def keys(self) -> KeyRing: ...


class ResultsLog:
    def __init__(self, host: LogHost):
        self.host = host
        self.tree = merkle.Tree()
        self._lock = trio.Lock()
        self._origin: str | None = None

    async def origin(self) -> str:
        """The log's name in its checkpoints: made once for the deployment, kept in the
        database (every node signs under the same name)."""
        if self._origin is None:
            proposed = f"scoreserver/{secrets.token_hex(8)}"
            self._origin = await self.host.store.log_origin(proposed)
        return self._origin

    async def sync(self) -> int:
        """Read the entries appended since the last sync into the tree; returns its size."""
        async with self._lock:
            while True:
                start = len(self.tree)
                rows = await self.host.store.log_entries(start, start + 1_000_000)
                for index, body in rows:
                    if index != len(self.tree):
                        raise StoreError(f"results log entry {len(self.tree)} is missing")
                    self.tree.append(entry_leaf(body))
                if not rows:
                    return len(self.tree)

    async def checkpoint(self) -> dict[str, Any]:
        """The latest signed checkpoint, after making one if the log grew past it."""
        size = await self.sync()
        latest = await self.host.store.latest_checkpoint()
        if latest is not None and latest["size"] >= size:
            return latest
        root = self.tree.root(size)
        note = sign_checkpoint(await self.origin(), size, root, self.host.keys.signing_key)
        await self.host.store.add_checkpoint(size, root, note, self.host.clock.now_ms())
        latest = await self.host.store.latest_checkpoint()
        assert latest is not None
        return latest

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sign a checkpoint every CHECKPOINT_EVERY_S while the log grows."""
        task_status.started()
        while True:
            try:
                if await self.sync():  # an empty log is signed only when asked for
                    await self.checkpoint()
            except StoreError as exc:
                logger.warning("results log: no checkpoint this time (%s)", exc)
            await trio.sleep(CHECKPOINT_EVERY_S)

    async def snapshot(
        self, game_id: str, *, window: str = "all", limit: int = 100, title: str | None = None
    ) -> dict[str, Any]:
        """A board frozen as a signed document that names a checkpoint holding every result
        on it (`scoreserver boards snapshot`, /admin)."""
        now = self.host.clock.now_ms()
        since = now - WINDOWS_MS[window] if window in WINDOWS_MS else 0
        board = await self.host.store.leaderboard(
            game_id, now, limit=limit, since=since, with_sessions=True
        )
        # After the board is read: the checkpoint then holds every result on it.
        latest = await self.checkpoint()
        indexes = await self.host.store.log_indexes([str(e["session_id"]) for e in board])
        document = {
            "snapshot": 1,
            "game_id": game_id,
            "title": title or game_id,
            "window": window,
            "taken_at": now,
            "checkpoint": latest["note"],
            "entries": [
                {
                    "rank": e["rank"],
                    "name": e["name"],
                    "score": e["score"],
                    "session_id": e["session_id"],
                    "log_index": indexes.get(str(e["session_id"])),
                }
                for e in board
            ],
        }
        return sign_snapshot(document, self.host.keys)

    # -- routes --

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/log/checkpoint", self.get_checkpoint, methods=["GET"]),
            Route("/api/log/proof", self.get_proof, methods=["GET"]),
            Route("/api/log/consistency", self.get_consistency, methods=["GET"]),
            Route("/api/log/entries", self.get_entries, methods=["GET"]),
        ]

    async def get_checkpoint(self, request: Request) -> Response:
        latest = await self.checkpoint()
        return PlainTextResponse(latest["note"], headers={"cache-control": "no-cache"})

    async def _size(self, request: Request, name: str, default: int | None) -> int:
        size = await self.sync()
        value = int_param(request, name, default, 0, 2**62)
        assert value is not None
        if value > size:
            raise HttpError(400, HttpCode.BAD_REQUEST, f"`{name}` is past the log's {size} entries")
        return value

    async def get_proof(self, request: Request) -> Response:
        """An inclusion proof: entry `index` in the tree of `size` entries (default: the
        latest checkpoint's)."""
        try:
            latest = await self.checkpoint()
            size = await self._size(request, "size", latest["size"])
            index = int_param(request, "index", None, 0, 2**62)
            if index is None or index >= size:
                raise HttpError(400, HttpCode.BAD_REQUEST, "`index` is an entry below `size`")
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        proof = self.tree.inclusion_proof(index, size)
        return JSONResponse(
            {
                "index": index,
                "size": size,
                "leaf_hash": b64(self.tree.leaf(index)),
                "proof": [b64(p) for p in proof],
            }
        )

    async def get_consistency(self, request: Request) -> Response:
        """A consistency proof between the trees of `from` and `to` entries."""
        try:
            latest = await self.checkpoint()
            new = await self._size(request, "to", latest["size"])
            old = int_param(request, "from", None, 0, 2**62)
            if old is None or old > new:
                raise HttpError(400, HttpCode.BAD_REQUEST, "`from` is a size at most `to`")
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        proof = self.tree.consistency_proof(old, new)
        return JSONResponse({"from": old, "to": new, "proof": [b64(p) for p in proof]})

    async def get_entries(self, request: Request) -> Response:
        """Entries [start, end), at most 1,000 an answer, each as its exact text."""
        try:
            size = await self.sync()
            start = int_param(request, "start", 0, 0, 2**62)
            end = int_param(request, "end", None, 0, 2**62)
            assert start is not None
            end = size if end is None else min(end, size)
            if end < start:
                raise HttpError(400, HttpCode.BAD_REQUEST, "`end` is below `start`")
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        rows = await self.host.store.log_entries(start, end)
        return JSONResponse(
            {
                "entries": [
                    {"index": index, "entry": body, "leaf_hash": b64(self.tree.leaf(index))}
                    for index, body in rows
                ]
            }
        )
