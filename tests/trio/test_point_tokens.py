"""Point tokens are MACs (tokens.py, version 2): forged, replayed, cross-session and
cross-purpose ones are refused as before, on both engines and on a node that did not issue
them; point tokens signed before the upgrade (version 1) are still judged."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio

from scoreserver.server.app import Server
from scoreserver.wire.tokens import MAC_VERSION, VERSION, KeyRing, Purpose, b64decode, finish

from ..conftest import add_game, connect, make_config, register, running_server
from .test_end_to_end import play_quick, submit_http

pytestmark = pytest.mark.engines


def node_config(tmp_path: Path, key: str) -> Any:
    config = make_config(tmp_path)
    config.key_path = tmp_path / key  # each node its own key, as on two machines
    return config


async def played(server: Server, account: dict[str, Any], points: int) -> dict[str, Any]:
    async with connect(server) as client:
        await client.login(account)
        return await play_quick(client, points, account["user_id"])


def body(game: dict[str, Any], points: list[dict[str, Any]]) -> dict[str, Any]:
    return {"start_token": game["start_token"], "end_token": game["end_token"], "points": points}


def flipped(token: str, at: int) -> str:
    raw = bytearray(b64decode(token))
    raw[at] ^= 0x01
    from scoreserver.wire.tokens import b64encode

    return b64encode(bytes(raw))


async def test_forged_replayed_swapped_and_cross_purpose_points_are_refused_on_another_node(
    tmp_path: Path,
) -> None:
    add_game(tmp_path / "test.db", "quick", duration_ms=1000, submission_window_ms=60_000)
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(running_server(node_config(tmp_path, "a.key")))
            b = await stack.enter_async_context(running_server(node_config(tmp_path, "b.key")))
            assert a.service.keys.kid != b.service.keys.kid
            ada = await register(a, "ada")
            game = await played(a, ada, 3)
            other = await played(a, ada, 2)
            points = game["points"]
            raw = b64decode(points[0]["token"])
            assert raw[2] == MAC_VERSION and len(raw) < 49 + 64  # a MAC, not a signature
            attempts = {
                "bad_point_token": [
                    # its MAC changed; its seq changed; its session changed
                    [{**points[0], "token": flipped(points[0]["token"], -1)}, *points[1:]],
                    [{**points[0], "token": flipped(points[0]["token"], 39)}, *points[1:]],
                    [{**points[0], "token": flipped(points[0]["token"], 20)}, *points[1:]],
                    # a point of the player's other game; the start token as a point
                    [other["points"][0], *points[1:]],
                    [{**points[0], "token": game["start_token"]}, *points[1:]],
                    [{**points[0], "token": game["end_token"]}, *points[1:]],
                ],
                "duplicate_point": [[points[0], points[0], *points[1:]]],
            }
            for reason, bodies in attempts.items():
                for sent in bodies:
                    verdict = await submit_http(b, body(game, sent))
                    assert verdict["accepted"] is False and verdict["reason"] == reason, sent
            # Reordered: points are judged as a set of issued tokens, each with its own time.
            honest = await submit_http(b, body(game, list(reversed(points))))
            assert honest["accepted"] is True and honest["score"] == 3, honest
            # Replayed after it was saved.
            again = await submit_http(b, body(game, points))
            assert again["reason"] == "already_submitted"


async def test_point_tokens_signed_before_the_upgrade_are_still_judged(tmp_path: Path) -> None:
    """A game whose points were issued as version 1 tokens (Ed25519, as before the MAC) and
    submitted after: judged as always."""
    add_game(tmp_path / "test.db", "quick", duration_ms=1000, submission_window_ms=60_000)
    original = KeyRing.point

    def signed_point(
        self: KeyRing, session: bytes, user: int | None, game: bytes, at: int, seq: int
    ) -> str:
        old = self.body(Purpose.POINT, session, user, game.decode(), at, seq)
        return finish(old, self.signing_key.sign(old))

    with trio.fail_after(60):
        async with running_server(make_config(tmp_path)) as server:
            bo = await register(server, "bo")
            KeyRing.point = signed_point  # type: ignore[method-assign]
            try:
                game = await played(server, bo, 3)
            finally:
                KeyRing.point = original  # type: ignore[method-assign]
            assert all(b64decode(p["token"])[2] == VERSION for p in game["points"])
            forged = [{**game["points"][0], "token": flipped(game["points"][0]["token"], -1)}]
            refused = await submit_http(server, body(game, forged + game["points"][1:]))
            assert refused["reason"] == "bad_point_token"
            verdict = await submit_http(server, body(game, game["points"]))
            assert verdict["accepted"] is True and verdict["score"] == 3
