"""End to end over real sockets on 127.0.0.1, with the store's writer thread and HTTP.

Games here are 1 s long ("quick"), played in real time; every test is capped by fail_after.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from scoreserver.server.app import Server
from scoreserver.wire.tokens import b64decode, b64encode

from .. import databases
from ..conftest import Client, connect, http
from ..players import without_receipt

pytestmark = pytest.mark.engines


def wall_ms() -> int:
    return int(time.time() * 1000)


async def play_quick(client: Client, n_points: int, user_id: int | None) -> dict[str, Any]:
    """Play the 1 s game with `n_points`; return the tokens the page would keep."""
    await client.enter("quick", user_id)
    started = await client.start(wall_ms())
    points = []
    for _ in range(n_points):
        await trio.sleep(0.02)
        ts = wall_ms()
        reply = await client.call(type="point", client_ts=ts)
        assert reply["type"] == "point_accepted", reply
        points.append({"token": reply["token"], "client_ts": ts})
    end = await client.recv_type("end_game")
    assert end["reason"] == "time_up", end
    return {
        "start_token": started["start_token"],
        "end_token": end["end_token"],
        "points": points,
        "session_id": started["session_id"],
    }


async def new_player(server: Server, name: str) -> dict[str, Any]:
    async with http(server) as api:
        reply = await api.post("/api/register", json={"name": name, "password": "hunter2hunter2"})
    assert reply.status_code == 201, reply.text
    return reply.json()  # type: ignore[no-any-return]


async def submit_http(
    server: Server, body: dict[str, Any], login_token: str | None = None
) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {login_token}"} if login_token else {}
    async with http(server) as api:
        reply = await api.post("/api/results", json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


async def flags_of(server: Server) -> list[dict[str, Any]]:
    return await server.service.store.flags()


# --- accounts -------------------------------------------------------------------------------


async def test_register_login_and_identity(server: Server) -> None:
    with trio.fail_after(30):
        async with http(server) as api:
            created = await api.post(
                "/api/register", json={"name": "Ann", "password": "hunter2hunter2"}
            )
            assert created.status_code == 201
            body = created.json()
            assert body["name"] == "Ann" and isinstance(body["user_id"], int) and body["token"]
            taken = await api.post("/api/register", json={"name": "ann", "password": "x" * 12})
            assert taken.status_code == 409 and taken.json()["error"] == "name_taken"
            ok = await api.post("/api/login", json={"name": "Ann", "password": "hunter2hunter2"})
            assert ok.status_code == 200 and ok.json()["user_id"] == body["user_id"]
            assert ok.json()["token"] != body["token"]
            wrong = await api.post("/api/login", json={"name": "Ann", "password": "nope-nope"})
            assert wrong.status_code == 401 and wrong.json()["error"] == "auth_failed"
            nobody = await api.post("/api/login", json={"name": "Zed", "password": "nope-nope"})
            assert nobody.status_code == 401
            for bad in (b"{", b"[]", b'{"name": 1, "password": "x"}', b'{"name": "a"}'):
                reply = await api.post("/api/register", content=bad)
                assert reply.status_code == 400 and reply.json()["error"] == "bad_request"
            short = await api.post("/api/register", json={"name": "Bo", "password": "short"})
            assert short.status_code == 400
        async with connect(server) as client:
            identity = await client.login(ok.json())
            assert identity == {"type": "identity", "user_id": body["user_id"], "name": "Ann"}
            refused = await client.call(type="auth", token="not-a-token")
            assert refused["type"] == "error" and refused["code"] == "auth_failed"
            # A failed auth leaves the identity as it was.
            assert (await client.call(type="whoami"))["user_id"] == body["user_id"]


async def test_passwords_are_stored_as_argon2id(server: Server) -> None:
    with trio.fail_after(30):
        await new_player(server, "hashcheck")
        user = await server.service.store.user_by_name("hashcheck")
        assert user is not None and user.password_hash.startswith("$argon2id$")
        assert "hunter2" not in user.password_hash
        tokens = databases.sql(server.config.db_path, "SELECT token_hash FROM login_tokens")
        assert all(len(row[0]) == 32 for row in tokens)  # SHA-256, not the token


# --- a whole game ---------------------------------------------------------------------------


async def test_play_submit_over_http_and_see_the_leaderboard(server: Server) -> None:
    with trio.fail_after(30):
        ann = await new_player(server, "ann")
        ben = await new_player(server, "ben")
        for player, n_points in ((ann, 5), (ben, 3)):
            async with connect(server) as client:
                await client.login(player)
                game = await play_quick(client, n_points, player["user_id"])
            result = await submit_http(server, game)
            assert without_receipt(result) == {
                "type": "result",
                "accepted": True,
                "score": n_points,
                "saved": True,
                "held": False,
            }
        async with http(server) as api:
            board = await api.get("/api/games/quick/leaderboard")
            assert board.status_code == 200
            assert board.json() == {
                "game_id": "quick",
                "entries": [
                    {"rank": 1, "user_id": ann["user_id"], "name": "ann", "score": 5},
                    {"rank": 2, "user_id": ben["user_id"], "name": "ben", "score": 3},
                ],
            }
            missing = await api.get("/api/games/nope/leaderboard")
            assert missing.status_code == 404 and missing.json()["error"] == "unknown_game"
        assert await flags_of(server) == []


async def test_submission_over_the_socket_and_a_second_one(server: Server) -> None:
    with trio.fail_after(30):
        cat = await new_player(server, "cat")
        async with connect(server) as client:
            await client.login(cat)
            game = await play_quick(client, 2, cat["user_id"])
            body = {k: game[k] for k in ("start_token", "end_token", "points")}
            first = await client.call(type="submit_result", id="r1", **body)
            assert without_receipt(first) == {
                "type": "result",
                "id": "r1",
                "accepted": True,
                "score": 2,
                "saved": True,
                "held": False,
            }
            second = await client.call(type="submit_result", **body)
            assert second == {"type": "result", "accepted": False, "reason": "already_submitted"}
        assert await flags_of(server) == []  # already_submitted flags nobody


async def test_keys_and_health(server: Server) -> None:
    with trio.fail_after(10):
        async with http(server) as api:
            assert (await api.get("/healthz")).json() == {
                "status": "ok",
                "writer": "ok",
                "writer_queue": 0,
                "writer_queue_bound": server.service.store.queue_bound,
            }
            keys = (await api.get("/api/keys")).json()["keys"]
            assert len(keys) == 1 and keys[0]["alg"] == "Ed25519"
            assert keys[0]["kid"] == server.service.keys.kid.hex()
            assert len(b64decode(keys[0]["public_key"])) == 32


async def test_stats_report_connections_and_loop_stalls(
    tmp_path: Any, autojump_clock: trio.testing.MockClock
) -> None:
    from ..conftest import make_config, running_server

    config = make_config(tmp_path, inline=True)
    config.monitor_loop = True
    with trio.fail_after(20):
        async with running_server(config) as server, connect(server) as client:
            await client.call(type="whoami")
            await trio.sleep(0.1)  # virtual: ten 10 ms probes, none late
            async with http(server) as api:
                calm = (await api.get("/api/stats")).json()
            assert calm["connections"] == 1
            assert calm["loop_samples"] >= 3
            assert calm["loop_stalls_over_20ms"] == 0 and calm["loop_max_lag_ms"] < 1
            # A 50 ms stall: the clock moves on while the loop is held up.
            autojump_clock.jump(0.05)
            await trio.sleep(0.1)
            async with http(server) as api:
                stalled = (await api.get("/api/stats")).json()
            assert stalled["loop_stalls_over_20ms"] == 1
            assert 40 <= stalled["loop_max_lag_ms"] <= 60


async def test_a_token_verifies_with_the_published_key(server: Server) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    with trio.fail_after(10):
        async with http(server) as api:
            key = (await api.get("/api/keys")).json()["keys"][0]
        async with connect(server) as client:
            await client.enter("quick", None)
            started = await client.start(wall_ms())
        raw = b64decode(started["start_token"])
        public = Ed25519PublicKey.from_public_bytes(b64decode(key["public_key"]))
        public.verify(raw[-64:], raw[:-64])  # raises if the signature does not hold


# --- every rejection, with its flag ----------------------------------------------------------


def flip(token: str, index: int = 20) -> str:
    raw = bytearray(b64decode(token))
    raw[index] ^= 0x01
    return b64encode(bytes(raw))


async def rejected(
    server: Server, body: dict[str, Any], reason: str, login_token: str | None = None
) -> dict[str, Any]:
    result = await submit_http(server, body, login_token)
    assert result == {"type": "result", "accepted": False, "reason": reason}
    flags = [f for f in await flags_of(server) if f["reason"] == f"submission:{reason}"]
    assert flags, f"no flag for {reason}"
    return flags[-1]


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("forged_start", "bad_start_token"),
        ("end_as_start", "bad_start_token"),
        ("forged_end", "bad_end_token"),
        ("point_as_end", "bad_end_token"),
        ("start_as_end", "bad_end_token"),
        ("forged_point", "bad_point_token"),
        ("other_sessions_point", "bad_point_token"),
        ("other_sessions_end", "bad_end_token"),
        ("duplicated_point", "duplicate_point"),
        ("shifted_timestamp", "timing_mismatch"),
        ("swapped_timestamps", "timing_mismatch"),
    ],
)
async def test_each_rejection_is_flagged_and_the_honest_result_still_counts(
    server: Server, attack: str, reason: str
) -> None:
    with trio.fail_after(30):
        eve = await new_player(server, "eve")
        async with connect(server) as client:
            await client.login(eve)
            game = await play_quick(client, 3, eve["user_id"])
        async with connect(server) as client:  # another session of another player
            other = await play_quick(client, 1, None)
        body = {k: game[k] for k in ("start_token", "end_token", "points")}
        points = [dict(p) for p in game["points"]]
        if attack == "forged_start":
            body["start_token"] = flip(game["start_token"])
        elif attack == "end_as_start":
            body["start_token"] = game["end_token"]
        elif attack == "forged_end":
            body["end_token"] = flip(game["end_token"])
        elif attack == "point_as_end":
            body["end_token"] = points[0]["token"]
        elif attack == "start_as_end":
            body["end_token"] = game["start_token"]
        elif attack == "forged_point":
            points[1]["token"] = flip(points[1]["token"], 50)
        elif attack == "other_sessions_point":
            points.append(other["points"][0])
        elif attack == "other_sessions_end":
            body["end_token"] = other["end_token"]
        elif attack == "duplicated_point":
            points.append(points[0])
        elif attack == "shifted_timestamp":
            points[2]["client_ts"] += 5000
        elif attack == "swapped_timestamps":
            points[0]["client_ts"], points[2]["client_ts"] = (
                points[2]["client_ts"] - 2000,
                points[0]["client_ts"] + 2000,
            )
        body["points"] = points
        # Eve submits it herself, known by her login token: the flag is held against her.
        flag = await rejected(server, body, reason, eve["token"])
        assert flag["user_id"] == eve["user_id"]
        if reason != "bad_start_token":
            # The session is known: the flag points at it, with the evidence.
            assert flag["session_id"] == game["session_id"]
            assert flag["game_id"] == "quick"
            assert flag["detail"]["submitted_by_owner"] is True
        # A rejection does not close the session: the honest result is still accepted.
        honest = {k: game[k] for k in ("start_token", "end_token", "points")}
        assert (await submit_http(server, honest))["accepted"] is True


async def test_unknown_session_is_flagged(server: Server) -> None:
    with trio.fail_after(30):
        async with connect(server) as client:
            game = await play_quick(client, 1, None)
        # A validly signed start token whose session the server never recorded: made with the
        # server's own key, as only a leaked key could.
        import os

        from scoreserver.wire.tokens import Purpose

        keys = server.service.keys
        ghost = keys.sign(Purpose.START, os.urandom(16), None, "quick", wall_ms())
        body = {"start_token": ghost, "end_token": game["end_token"], "points": []}
        await rejected(server, body, "unknown_session")


async def test_submission_before_the_end_is_bad_end_token(server: Server) -> None:
    with trio.fail_after(30):
        async with connect(server) as client:
            await client.enter("quick", None)
            started = await client.start(wall_ms())
            reply = await client.call(type="point", client_ts=wall_ms())
            body = {
                "start_token": started["start_token"],
                "end_token": started["start_token"],
                "points": [{"token": reply["token"], "client_ts": wall_ms()}],
            }
            flag = await rejected(server, body, "bad_end_token")
            assert flag["user_id"] is None and flag["guest_addr"] == "127.0.0.1"
            await client.recv_type("end_game")


async def test_malformed_http_submissions_are_400(server: Server) -> None:
    with trio.fail_after(10):
        async with http(server) as api:
            for bad in (
                b"nope",
                b"{}",
                b'{"start_token": 1, "end_token": "", "points": []}',
                b'{"start_token": "", "end_token": "", "points": [{"token": "x"}]}',
            ):
                reply = await api.post("/api/results", content=bad)
                assert reply.status_code == 400, bad
                assert reply.json()["error"] == "bad_request"
            huge = await api.post("/api/results", content=b"x" * (300 * 1024))
            assert huge.status_code == 413
            assert huge.headers["connection"] == "close"
        async with http(server) as api:
            assert (await api.get("/healthz")).status_code == 200


async def test_prometheus_metrics_on_their_own_port_only(tmp_path: Any) -> None:
    from ..conftest import add_game, make_config, running_server

    add_game(tmp_path / "test.db", "quick", duration_ms=1000, submission_window_ms=60_000)
    config = make_config(tmp_path)
    config.metrics_port = 0
    with trio.fail_after(30):
        async with running_server(config) as server:
            assert server.metrics_port
            async with connect(server) as client:
                game = await play_quick(client, 3, None)
                late = await client.call(type="point", client_ts=wall_ms())
                assert late["reason"] in ("no_session", "game_over")
                result = await client.call(
                    type="submit_result",
                    **{k: game[k] for k in ("start_token", "end_token", "points")},
                )
                assert result["accepted"] is True
                await client.call(type="submit_result", start_token="x", end_token="y", points=[])
                async with httpx.AsyncClient() as api:
                    text = (await api.get(f"http://127.0.0.1:{server.metrics_port}/metrics")).text
                    public = await api.get(f"{server.http_url}/metrics")
            assert public.status_code == 404
            lines = dict(
                line.rsplit(" ", 1)
                for line in text.splitlines()
                if line and not line.startswith("#")
            )
            assert lines['scoreserver_points_total{outcome="accepted"}'] == "3.0"
            late_key = 'scoreserver_points_total{outcome="' + late["reason"] + '"}'
            assert float(lines[late_key]) == 1.0
            assert lines['scoreserver_submissions_total{verdict="accepted"}'] == "1.0"
            assert lines['scoreserver_submissions_total{verdict="bad_start_token"}'] == "1.0"
            assert lines['scoreserver_flags_total{reason="submission:bad_start_token"}'] == "1.0"
            assert lines["scoreserver_connections"] == "1.0"
            assert lines['scoreserver_helper_ok{helper="writer"}'] == "1.0"
            assert float(lines["scoreserver_store_write_seconds_count"]) >= 3
