"""The server as a process: SIGKILL loses nothing acknowledged; SIGTERM ends games cleanly."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

pytestmark = pytest.mark.slow

BANNER = re.compile(rb"game socket ws://127\.0\.0\.1:(\d+)/\s+HTTP http://127\.0\.0\.1:(\d+)/")


def cli(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scoreserver.cli", *args, "--db", str(tmp_path / "s.db")],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


class Proc:
    def __init__(self, process: trio.Process, ws_port: int, http_port: int):
        self.process = process
        self.ws = f"ws://127.0.0.1:{ws_port}/"
        self.http = f"http://127.0.0.1:{http_port}"


@asynccontextmanager
async def server_process(tmp_path: Path) -> AsyncIterator[Proc]:
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "scoreserver.cli",
            "serve",
            "--ws-port",
            "0",
            "--http-port",
            "0",
            "--db",
            str(tmp_path / "s.db"),
            "--key",
            str(tmp_path / "s.key"),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        output = b""
        with trio.fail_after(30):
            while not (match := BANNER.search(output)):
                chunk = await process.stdout.receive_some()  # type: ignore[union-attr]
                assert chunk, f"server exited early: {output!r}"
                output += chunk
        yield Proc(process, int(match.group(1)), int(match.group(2)))
    finally:
        if process.returncode is None:
            process.kill()
        with trio.fail_after(10):
            await process.wait()
        await process.stdout.aclose()  # type: ignore[union-attr]


def wall_ms() -> int:
    return int(time.time() * 1000)


async def call(ws: Any, **message: Any) -> dict[str, Any]:
    """Send, and return the reply (skipping leaderboard pushes)."""
    await ws.send_message(json.dumps(message))
    while (reply := json.loads(await ws.get_message()))["type"] == "leaderboard":
        pass
    return reply  # type: ignore[no-any-return]


async def play(
    ws: Any, token: str, user_id: int, points: int, game: str = "quick"
) -> dict[str, Any]:
    assert (await call(ws, type="auth", token=token))["user_id"] == user_id
    assert (await call(ws, type="enter_game_room", game_id=game, user_id=user_id))[
        "type"
    ] == "room_entered"
    started = await call(ws, type="game_start", client_ts=wall_ms())
    claims = []
    for _ in range(points):
        ts = wall_ms()
        reply = await call(ws, type="point", client_ts=ts)
        assert reply["type"] == "point_accepted"
        claims.append({"token": reply["token"], "client_ts": ts})
    return {"started": started, "points": claims}


async def test_acknowledged_results_survive_sigkill(tmp_path: Path) -> None:
    made = cli(tmp_path, "games", "add", "quick", "--duration", "0.4")
    assert made.returncode == 0, made.stderr
    assert cli(tmp_path, "games", "add", "long", "--duration", "60").returncode == 0
    with trio.fail_after(60):
        async with server_process(tmp_path) as proc:
            async with httpx.AsyncClient(base_url=proc.http) as api:
                user = (
                    await api.post("/api/register", json={"name": "kim", "password": "p" * 10})
                ).json()
            async with open_websocket_url(proc.ws) as ws:
                game = await play(ws, user["token"], user["user_id"], 4)
                end = json.loads(await ws.get_message())
                assert end["type"] == "end_game" and end["reason"] == "time_up"
                result = await call(
                    ws,
                    type="submit_result",
                    start_token=game["started"]["start_token"],
                    end_token=end["end_token"],
                    points=game["points"],
                )
                assert result["accepted"] and result["saved"]
                # A second game ends but is not submitted before the crash.
                pending = await play(ws, user["token"], user["user_id"], 2)
                pending_end = json.loads(await ws.get_message())
                assert pending_end["type"] == "end_game"
                # A third is cut off mid-game by the crash.
                cut = await play(ws, user["token"], user["user_id"], 1, game="long")
                proc.process.send_signal(signal.SIGKILL)  # no chance to flush anything
        async with server_process(tmp_path) as proc:
            async with httpx.AsyncClient(base_url=proc.http) as api:
                board = (await api.get("/api/games/quick/leaderboard")).json()
                assert board["entries"] == [
                    {"rank": 1, "user_id": user["user_id"], "name": "kim", "score": 4}
                ]
                late = await api.post(
                    "/api/results",
                    json={
                        "start_token": pending["started"]["start_token"],
                        "end_token": pending_end["end_token"],
                        "points": pending["points"],
                    },
                )
                assert late.json() == {
                    "type": "result",
                    "accepted": True,
                    "score": 2,
                    "saved": True,
                }
                voided = await api.post(
                    "/api/results",
                    json={
                        "start_token": cut["started"]["start_token"],
                        "end_token": pending_end["end_token"],
                        "points": cut["points"],
                    },
                )
                assert voided.json()["reason"] == "session_voided"
    # The voided session's submission flagged kim: her scores are held off the board.
    flags = json.loads(cli(tmp_path, "flags", "list", "--json").stdout)
    assert [(f["reason"], f["user_name"]) for f in flags] == [("submission:session_voided", "kim")]
    assert json.loads(cli(tmp_path, "leaderboard", "quick", "--json").stdout)["entries"] == []


async def test_sigterm_ends_running_games_and_exits(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with server_process(tmp_path) as proc:
            async with httpx.AsyncClient(base_url=proc.http) as api:
                user = (
                    await api.post("/api/register", json={"name": "lou", "password": "p" * 10})
                ).json()
            async with open_websocket_url(proc.ws) as ws:
                await play(ws, user["token"], user["user_id"], 1, game="demo")
                proc.process.send_signal(signal.SIGTERM)
                end = json.loads(await ws.get_message())
                assert end["type"] == "end_game" and end["reason"] == "server_shutdown"
                assert "end_token" not in end
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 1001
                await ws._stream.aclose()
            started = trio.current_time()
            assert await proc.process.wait() == 0
            assert trio.current_time() - started < 5
    listed = cli(tmp_path, "flags", "list", "--json")
    assert json.loads(listed.stdout) == []  # a shutdown flags nobody
