"""The results log across three nodes on one PostgreSQL (issue 29): players on every node save
results at once; every receipt verifies, the server's inclusion proof of each against the
latest checkpoint holds, and every pair of the checkpoints the nodes signed is consistent.

SCORESERVER_LOG_RESULTS sets how many results (10,000 by default, as the issue asks)."""

from __future__ import annotations

import base64
import json
import os
import random
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from scoreserver.core import merkle
from scoreserver.wire import receipts

from ..conftest import open_client
from .test_nodes import node, on_postgres, rows
from .test_process import call, cli, register_at, wall_ms

pytestmark = [pytest.mark.slow]

RESULTS = int(os.environ.get("SCORESERVER_LOG_RESULTS", "10000"))
PLAYERS = 60
QUERIES_AT_ONCE = 16


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


async def a_player(ws_url: str, user: dict[str, Any], games: int, kept: list[str]) -> None:
    """Play `games` one-point games of `dash` on one socket, submitting each over it."""
    async with open_client(ws_url) as ws:
        assert (await call(ws, type="auth", token=user["token"]))["user_id"] == user["user_id"]
        for _ in range(games):
            entered = await call(
                ws, type="enter_game_room", game_id="dash", user_id=user["user_id"]
            )
            assert entered["type"] == "room_entered", entered
            started = await call(ws, type="game_start", client_ts=wall_ms())
            assert started["type"] == "game_started", started
            ts = wall_ms()
            await ws.send_message(json.dumps({"type": "point", "client_ts": ts}))
            # The point's answer and the game's end, in either order (a 50 ms game may end
            # before its point is judged: then the point is refused as game_over).
            points: list[dict[str, Any]] = []
            answered, end = False, None
            while not answered or end is None:
                message = json.loads(await ws.get_message())
                if message["type"] in ("point_accepted", "point_rejected"):
                    answered = True
                    if "token" in message:
                        points.append({"token": message["token"], "client_ts": ts})
                elif message["type"] == "end_game":
                    end = message
            result = await call(
                ws,
                type="submit_result",
                start_token=started["start_token"],
                end_token=end["end_token"],
                points=points,
            )
            assert result.get("saved"), result
            kept.append(result["receipt"])


@on_postgres
async def test_ten_thousand_results_on_three_nodes_are_proven_by_every_checkpoint(
    tmp_path: Path,
) -> None:
    made = cli(
        tmp_path,
        *("games", "add", "dash", "--duration", "0.05", "--human-max-rate", "0"),
        *("--human-floor-ms", "0", "--min-rhythm-cv", "0", "--no-hold-outliers"),
    )
    assert made.returncode == 0, made.stderr
    with trio.fail_after(900):
        async with AsyncExitStack() as stack:
            # 60 accounts from one address: registrations unlimited for this test.
            nodes = [
                await stack.enter_async_context(
                    node(tmp_path, f"{n}.key", "--login-attempts-per-addr", "0")
                )
                for n in "abc"
            ]
            users = [await register_at(nodes[i % 3].http, f"player{i}") for i in range(PLAYERS)]
            kept: list[str] = []
            notes: list[str] = []

            async def follow_checkpoints(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                task_status.started()
                # A new connection each sample: a kept-alive one left idle while the other
                # nodes are asked can be closed by its server just as a request goes out.
                no_keepalive = httpx.Limits(max_keepalive_connections=0)
                async with httpx.AsyncClient(timeout=30, limits=no_keepalive) as api:
                    while True:
                        where = random.choice(nodes).http
                        notes.append((await api.get(f"{where}/api/log/checkpoint")).text)
                        # Real time, on purpose: a sample a second of what other processes
                        # sign while they play (nothing here waits for a condition).
                        await trio.sleep(1.0)

            async with trio.open_nursery() as watchers:
                await watchers.start(follow_checkpoints)
                async with trio.open_nursery() as players:
                    for i, user in enumerate(users):
                        games = RESULTS // PLAYERS + (1 if i < RESULTS % PLAYERS else 0)
                        players.start_soon(a_player, nodes[i % 3].ws, user, games, kept)
                watchers.cancel_scope.cancel()
            assert len(kept) == RESULTS

            async with httpx.AsyncClient(base_url=nodes[0].http, timeout=30) as api:
                keys = receipts.keys_from_json((await api.get("/api/keys")).json())
                assert len(keys) == 3  # one per node, each node's tokens verify everywhere
                latest = receipts.verify_checkpoint(
                    (await api.get("/api/log/checkpoint")).text, keys
                )
                assert latest.size >= RESULTS
                entries: list[str] = []
                while len(entries) < latest.size:
                    page = await api.get(
                        "/api/log/entries", params={"start": len(entries), "end": latest.size}
                    )
                    entries += [e["entry"] for e in page.json()["entries"]]
            tree = merkle.Tree([receipts.entry_leaf(e) for e in entries])
            assert tree.root(latest.size) == latest.root

            # Every receipt: genuine, its entry is its result, and each node's proof holds.
            claims = [receipts.verify_receipt(r, keys) for r in kept]
            assert len({c.log_index for c in claims}) == RESULTS  # one entry each, no clash
            for c in claims:
                fields = json.loads(entries[c.log_index])
                assert (fields["session"], fields["score"], fields["player"]) == (
                    c.session_id.hex(),
                    c.score,
                    c.player,
                )
            todo = list(claims)
            failures: list[int] = []

            async def prove(worker: int) -> None:
                async with httpx.AsyncClient(base_url=nodes[worker % 3].http, timeout=30) as api:
                    while todo:
                        c = todo.pop()
                        proof = (
                            await api.get(
                                "/api/log/proof",
                                params={"index": c.log_index, "size": latest.size},
                            )
                        ).json()["proof"]
                        if not merkle.verify_inclusion(
                            tree.leaf(c.log_index),
                            c.log_index,
                            latest.size,
                            [unb64(p) for p in proof],
                            latest.root,
                        ):
                            failures.append(c.log_index)

            async with trio.open_nursery() as provers:
                for worker in range(QUERIES_AT_ONCE):
                    provers.start_soon(prove, worker)
            assert failures == []

            # Every checkpoint any node signed (kept in the database), each pair consistent,
            # by the servers' own proofs.
            stored = sorted(
                {int(size) for (size,) in rows(tmp_path, "SELECT size FROM log_checkpoints")}
            )
            signed = {
                c.size: c
                for c in (
                    receipts.verify_checkpoint(note, keys)
                    for (note,) in rows(tmp_path, "SELECT note FROM log_checkpoints")
                )
            }
            assert len(stored) >= 3 and set(signed) == set(stored)
            assert {receipts.read_checkpoint(n)[0].size for n in notes} <= set(stored)
            for size in stored:
                assert tree.root(size) == signed[size].root
            pairs = [(a, b) for i, a in enumerate(stored) for b in stored[i + 1 :]]
            bad: list[tuple[int, int]] = []

            async def consistent(worker: int) -> None:
                async with httpx.AsyncClient(base_url=nodes[worker % 3].http, timeout=30) as api:
                    while pairs:
                        old, new = pairs.pop()
                        proof = (
                            await api.get("/api/log/consistency", params={"from": old, "to": new})
                        ).json()["proof"]
                        if not merkle.verify_consistency(
                            old,
                            new,
                            signed[old].root,
                            signed[new].root,
                            [unb64(p) for p in proof],
                        ):
                            bad.append((old, new))

            async with trio.open_nursery() as checkers:
                for worker in range(QUERIES_AT_ONCE):
                    checkers.start_soon(consistent, worker)
            assert bad == []
