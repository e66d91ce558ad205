"""Attacks by someone who read our JavaScript: tokens forged, swapped, replayed; clocks lying;
dropped connections and resume. Each is rejected (and flagged) or handled, under autojump_clock."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from scoreserver.server.app import Server
from scoreserver.wire.tokens import KeyRing, Purpose, b64decode, b64encode

from .. import databases
from ..conftest import Client, connect, register

pytestmark = pytest.mark.engines

LAG = 7_000  # the player's clock runs 7 s behind


async def played(
    server: Server,
    client: Client,
    points: int,
    game: str = "demo",
    user_id: int | None = None,
    every_s: float = 1.0,
) -> dict[str, Any]:
    def player_clock() -> int:
        return server.service.clock.now_ms() - LAG

    await client.enter(game, user_id)
    started = await client.start(player_clock())
    claims = await client.score(player_clock, points, every_s)
    end = await client.recv_type("end_game")
    return {
        "start_token": started["start_token"],
        "end_token": end["end_token"],
        "points": claims,
        "session_id": started["session_id"],
    }


def body(game: dict[str, Any]) -> dict[str, Any]:
    return {k: game[k] for k in ("start_token", "end_token", "points")}


async def submit(client: Client, submission: dict[str, Any]) -> dict[str, Any]:
    return await client.call(type="submit_result", **submission)


def times(flags: list[dict[str, Any]]) -> int:
    """How many times flags were raised: a flag counts its cause's repeats (ops.insert_flag)."""
    return sum(int(f["detail"].get("repeats", 1)) for f in flags)


async def flag_count(server: Server) -> int:
    return times(await server.service.store.flags())


# --- tokens ---------------------------------------------------------------------------------


async def test_every_single_flipped_byte_of_every_token_is_rejected_and_flagged(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    # This test is about verdicts: the per-address budget of failed submissions (tested on its
    # own in test_limits.py) would stop it after 30.
    inline_server.service.limits.failed_submissions.limit = 0
    rng = random.Random(20261129)
    with trio.fail_after(600):
        async with connect(inline_server) as client:
            game = await played(inline_server, client, 2)
            attempts = 0
            for field, reason in (
                ("start_token", "bad_start_token"),
                ("end_token", "bad_end_token"),
                ("point", "bad_point_token"),
            ):
                token = game["points"][1]["token"] if field == "point" else game[field]
                raw = b64decode(token)
                for index in range(len(raw)):
                    forged = bytearray(raw)
                    forged[index] ^= 1 << rng.randrange(8)
                    attempt = body(game)
                    if field == "point":
                        attempt["points"] = [
                            game["points"][0],
                            {**game["points"][1], "token": b64encode(bytes(forged))},
                        ]
                    else:
                        attempt[field] = b64encode(bytes(forged))
                    await trio.sleep(0.02)  # within the message-rate limit (virtual time)
                    result = await submit(client, attempt)
                    assert result["accepted"] is False, (field, index)
                    if field == "start_token":
                        # The signature fails first, whatever the byte.
                        assert result["reason"] == reason, (field, index, result)
                    else:
                        assert result["reason"] in (reason, "bad_start_token"), (
                            field,
                            index,
                            result,
                        )
                    attempts += 1
            assert await flag_count(inline_server) == attempts
            assert (await submit(client, body(game)))["accepted"] is True


async def test_tokens_of_another_session_user_game_or_key(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(600):
        ann = await register(inline_server, "ann")
        bob = await register(inline_server, "bob")
        async with (
            connect(inline_server) as a,
            connect(inline_server) as b,
            connect(inline_server) as g,
        ):
            await a.login(ann)
            await b.login(bob)
            async with trio.open_nursery() as nursery:
                games: dict[str, Any] = {}

                async def play_into(name: str, client: Client, game: str, uid: int | None) -> None:
                    games[name] = await played(inline_server, client, 2, game, uid)

                nursery.start_soon(play_into, "ann", a, "demo", ann["user_id"])
                nursery.start_soon(play_into, "bob", b, "demo", bob["user_id"])
                nursery.start_soon(play_into, "strict", g, "strict", None)
            mine = games["ann"]
            cases = {
                "another user's point": (
                    {"points": [mine["points"][0], games["bob"]["points"][1]]},
                    "bad_point_token",
                ),
                "another user's end": ({"end_token": games["bob"]["end_token"]}, "bad_end_token"),
                "another game's point": (
                    {"points": [games["strict"]["points"][0]]},
                    "bad_point_token",
                ),
                "another game's end": (
                    {"end_token": games["strict"]["end_token"]},
                    "bad_end_token",
                ),
                "an end token as a point": (
                    {
                        "points": [
                            {
                                "token": mine["end_token"],
                                "client_ts": mine["points"][0]["client_ts"],
                            }
                        ]
                    },
                    "bad_point_token",
                ),
            }
            for name, (change, reason) in cases.items():
                result = await submit(a, {**body(mine), **change})
                assert result == {"type": "result", "accepted": False, "reason": reason}, name
            stranger = KeyRing(Ed25519PrivateKey.generate())
            unknown_kid = stranger.sign(Purpose.START, os.urandom(16), ann["user_id"], "demo", 0)
            result = await submit(a, {**body(mine), "start_token": unknown_kid})
            assert result["reason"] == "bad_start_token"
            flags = await inline_server.service.store.flags()
            assert times(flags) == len(cases) + 1
            assert all(f["user_id"] == ann["user_id"] for f in flags)
            assert (await submit(a, body(mine)))["accepted"] is True


async def test_a_submission_replayed_on_a_second_connection(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        cy = await register(inline_server, "cy")
        async with connect(inline_server) as first:
            await first.login(cy)
            game = await played(inline_server, first, 3, user_id=cy["user_id"])
            assert (await submit(first, body(game)))["score"] == 3
        async with connect(inline_server) as second:  # a thief with the same tokens
            replay = await submit(second, body(game))
            assert replay == {"type": "result", "accepted": False, "reason": "already_submitted"}
        scores = databases.sql(inline_server.config.db_path, "SELECT COUNT(*) FROM scores")[0][0]
        assert scores == 1


async def test_two_submissions_at_once_count_once(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        dee = await register(inline_server, "dee")
        async with connect(inline_server) as client:
            await client.login(dee)
            game = await played(inline_server, client, 2, user_id=dee["user_id"])
        results: list[dict[str, Any]] = []

        async def one() -> None:
            async with connect(inline_server) as other:
                results.append(await submit(other, body(game)))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
        assert sorted(r["accepted"] for r in results) == [False] * 4 + [True]
        assert {r.get("reason") for r in results if not r["accepted"]} == {"already_submitted"}


async def test_an_old_key_stops_verifying_after_its_window(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    from scoreserver.wire.tokens import VerifyKey

    with trio.fail_after(120):
        async with connect(inline_server) as client:
            game = await played(inline_server, client, 1)
            service = inline_server.service
            old = service.keys
            now = service.clock.now_ms()
            retired = [VerifyKey(k.kid, k.public_key, now - 1) for k in old.verify_keys]
            service.keys = KeyRing(Ed25519PrivateKey.generate(), retired)
            result = await submit(client, body(game))
            assert result["reason"] == "bad_start_token"


# --- clocks -----------------------------------------------------------------------------------


async def test_a_clock_running_10_percent_fast_is_caught(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        async with connect(inline_server) as client:
            await client.enter("demo", None)
            server_now = inline_server.service.clock.now_ms
            t0 = server_now()

            def fast_clock() -> int:
                return t0 - LAG + int((server_now() - t0) * 1.10)

            await client.start(fast_clock())
            outcomes = []
            for _ in range(25):
                await trio.sleep(1)  # a second of game time (virtual: autojump_clock)
                outcomes.append((await client.call(type="point", client_ts=fast_clock()))["type"])
            # Fine while the drift is under the 1000 ms allowance (10 s), caught after.
            assert outcomes[:9] == ["point_accepted"] * 9
            assert outcomes[11:] == ["point_rejected"] * 14


async def test_a_constant_offset_with_200ms_jitter_is_fine(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    rng = random.Random(7)
    with trio.fail_after(120):
        async with connect(inline_server) as client:
            await client.enter("demo", None)
            now = inline_server.service.clock.now_ms
            offset = -3_600_000  # an hour off: a wrong time zone is not cheating
            started = await client.start(now() + offset)
            claims = []
            for _ in range(25):
                await trio.sleep(1 + rng.uniform(-0.3, 0.3))  # game time (virtual)
                ts = now() + offset + rng.randint(-200, 200)
                reply = await client.call(type="point", client_ts=ts)
                assert reply["type"] == "point_accepted"
                claims.append({"token": reply["token"], "client_ts": ts})
            end = await client.recv_type("end_game")
            result = await submit(
                client,
                {
                    "start_token": started["start_token"],
                    "end_token": end["end_token"],
                    "points": claims,
                },
            )
            assert result["accepted"] and result["score"] == 25


async def test_a_late_point_by_the_players_clock_is_caught(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """A point stamped in the past (claimed earlier than sent) is off by more than latency."""
    with trio.fail_after(60):
        async with connect(inline_server) as client:
            await client.enter("demo", None)
            now = inline_server.service.clock.now_ms
            await client.start(now())
            await trio.sleep(5)  # game time (virtual: autojump_clock)
            reply = await client.call(type="point", client_ts=now() - 3000)
            assert reply == {"type": "point_rejected", "reason": "clock", "server_ts": now()}


# --- dropped connections and resume ---------------------------------------------------------


async def test_resume_a_running_game_on_a_new_connection(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        eve = await register(inline_server, "eve")
        now = inline_server.service.clock.now_ms
        claims = []
        async with connect(inline_server) as first:
            await first.login(eve)
            await first.enter("demo", eve["user_id"])
            started = await first.start(now())
            for _ in range(3):
                await trio.sleep(1)  # game time (virtual)
                reply = await first.call(type="point", client_ts=now())
                claims.append({"token": reply["token"], "client_ts": now()})
        await trio.sleep(5)  # away (virtual time); the server's timer runs on
        async with connect(inline_server) as second:
            await second.login(eve)
            resumed = await second.call(type="resume", start_token=started["start_token"], id="r")
            assert resumed["type"] == "game_started" and resumed["id"] == "r"
            assert resumed["session_id"] == started["session_id"]
            assert resumed["seq"] == 3 and resumed["remaining_ms"] == 30_000 - 8_000
            for _ in range(2):
                await trio.sleep(1)  # game time (virtual)
                reply = await second.call(type="point", client_ts=now())
                assert reply["type"] == "point_accepted"
                claims.append({"token": reply["token"], "client_ts": now()})
            assert reply["seq"] == 5
            end = await second.recv_type("end_game")
            assert end["server_ts"] - started["server_ts"] == 30_000
            result = await second.call(
                type="submit_result",
                start_token=started["start_token"],
                end_token=end["end_token"],
                points=claims,
            )
            assert result["score"] == 5 and result["saved"]


async def test_resume_after_the_end_sends_end_game_again(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        fay = await register(inline_server, "fay")
        async with connect(inline_server) as first:
            await first.login(fay)
            await first.enter("demo", fay["user_id"])
            started = await first.start(inline_server.service.clock.now_ms())
        await trio.sleep(40)  # the game ended while away (virtual time)
        async with connect(inline_server) as second:
            await second.login(fay)
            again = await second.call(type="resume", start_token=started["start_token"])
            assert again["type"] == "end_game" and again["reason"] == "time_up"
            assert again["end_token"]


@pytest.mark.parametrize("who", ["guest", "another user", "forged"])
async def test_resume_of_someone_elses_session_is_unknown_session(
    inline_server: Server, autojump_clock: trio.testing.MockClock, who: str
) -> None:
    with trio.fail_after(60):
        gil = await register(inline_server, "gil")
        hal = await register(inline_server, "hal")
        async with connect(inline_server) as owner, connect(inline_server) as thief:
            await owner.login(gil)
            await owner.enter("demo", gil["user_id"])
            started = await owner.start(inline_server.service.clock.now_ms())
            token = started["start_token"]
            if who == "another user":
                await thief.login(hal)
            if who == "forged":
                await thief.login(gil)
                raw = bytearray(b64decode(token))
                raw[-1] ^= 1
                token = b64encode(bytes(raw))
            refused = await thief.call(type="resume", start_token=token)
            assert refused["type"] == "error" and refused["code"] == "unknown_session"
            point = await owner.call(type="point", client_ts=inline_server.service.clock.now_ms())
            assert point["type"] == "point_accepted"  # the owner was not disturbed
