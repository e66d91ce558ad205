"""Scripted players over a real game socket (the sync `websockets` client), for the browser
tests and docs/screenshots/take.py: a person-like player who submits, and a metronome bot."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import httpx

LONG_NAME = "MetronomeBotWithAThirtyTwoCharsX"  # 32 characters, no space to wrap at


def metronome_bot(server_url: str, name: str = LONG_NAME) -> int:
    """A script that plays the 4 s demo over a real socket, a point every 90 ms exactly (just
    under the burst threshold); returns its user id once its game has ended."""
    from websockets.sync.client import connect as ws_connect

    account = httpx.post(
        f"{server_url}/api/register", json={"name": name, "password": "hunter2hunter2"}
    ).json()
    port = httpx.get(f"{server_url}/api/config").json()["ws_port"]
    with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=10) as ws:

        def call(**message: object) -> dict[str, object]:
            ws.send(json.dumps(message))
            while (reply := json.loads(ws.recv(timeout=10)))["type"] == "leaderboard":
                pass
            return reply  # type: ignore[no-any-return]

        call(type="auth", token=account["token"])
        call(type="enter_game_room", game_id="demo", user_id=account["user_id"])
        started = call(type="game_start", client_ts=int(time.time() * 1000))
        assert started["type"] == "game_started", started
        ended = False
        while not ended:
            time.sleep(0.09)  # the bot's own pacing (the server is a process: real time)
            ws.send(json.dumps({"type": "point", "client_ts": int(time.time() * 1000)}))
            while (reply := json.loads(ws.recv(timeout=10)))["type"] == "leaderboard":
                pass
            if reply["type"] == "end_game":  # unsolicited; the point's own reply follows
                ended = True
            elif reply["type"] == "point_rejected":
                while json.loads(ws.recv(timeout=10))["type"] != "end_game":
                    pass
                ended = True
    return int(account["user_id"])


def honest_score(server_url: str, name: str, points: int) -> dict[str, object]:
    """A player who registers, plays the demo with a person's spacing and submits."""
    from websockets.sync.client import connect as ws_connect

    rng = random.Random(name)
    account = httpx.post(
        f"{server_url}/api/register", json={"name": name, "password": "hunter2hunter2"}
    ).json()
    port = httpx.get(f"{server_url}/api/config").json()["ws_port"]
    with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=10) as ws:

        def reply_to(message: dict[str, object], kind: str) -> dict[str, object]:
            ws.send(json.dumps(message))
            while (reply := json.loads(ws.recv(timeout=10)))["type"] != kind:
                pass
            return reply  # type: ignore[no-any-return]

        reply_to({"type": "auth", "token": account["token"]}, "identity")
        reply_to(
            {"type": "enter_game_room", "game_id": "demo", "user_id": account["user_id"]},
            "room_entered",
        )
        started = reply_to(
            {"type": "game_start", "client_ts": int(time.time() * 1000)}, "game_started"
        )
        claims = []
        for _ in range(points):
            time.sleep(rng.uniform(0.2, 0.35))  # a person's pace (the server is a process)
            ts = int(time.time() * 1000)
            accepted = reply_to({"type": "point", "client_ts": ts}, "point_accepted")
            claims.append({"token": accepted["token"], "client_ts": ts})
        while (end := json.loads(ws.recv(timeout=10)))["type"] != "end_game":
            pass
        result = reply_to(
            {
                "type": "submit_result",
                "start_token": started["start_token"],
                "end_token": end["end_token"],
                "points": claims,
            },
            "result",
        )
    assert result["saved"] is True, result
    return account  # type: ignore[no-any-return]


def without_receipt(result: dict[str, Any]) -> dict[str, Any]:
    """A `result` reply without its receipt and log index, which a kept result must carry
    (checked here: a string and an index) and a result not kept must not."""
    rest = dict(result)
    receipt, index = rest.pop("receipt", None), rest.pop("log_index", None)
    if result.get("saved"):
        assert isinstance(receipt, str), result
        assert isinstance(index, int), result
        assert index >= 0
    else:
        assert receipt is None, result
        assert index is None, result
    return rest
