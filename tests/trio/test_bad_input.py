"""Every bad input gets its contract code; the connection and the server keep serving."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from scoreserver.server.app import Server

from ..conftest import Client, connect, make_config, register, running_server
from ..players import without_receipt
from ..rawws import RawSocket, close_code

pytestmark = pytest.mark.engines


async def still_serving(server: Server, client: Client) -> None:
    """The same connection answers, and a fresh player can play a point."""
    assert (await client.call(type="whoami", id="ping"))["id"] == "ping"
    async with connect(server) as other:
        await other.enter("demo", None)
        started = await other.start(server.service.clock.now_ms())
        reply = await other.call(type="point", client_ts=server.service.clock.now_ms())
        assert reply["type"] == "point_accepted" and started["session_id"]


FRAMES: list[tuple[str, str, Any]] = [
    ("not json", "bad_json", None),
    ('{"type": "whoami"', "bad_json", None),
    ("", "bad_json", None),
    ("[1, 2]", "bad_message", None),
    ('"whoami"', "bad_message", None),
    ("{}", "bad_message", None),
    ('{"type": 5}', "bad_message", None),
    ('{"type": null, "id": "n"}', "bad_message", "n"),
    ('{"type": "dance", "id": "d1"}', "unknown_type", "d1"),
    ('{"type": "DANCE", "id": 12}', "unknown_type", 12),
    ('{"type": "point", "id": "p"}', "bad_message", "p"),
    ('{"type": "point", "client_ts": "soon", "id": "p2"}', "bad_message", "p2"),
    ('{"type": "point", "client_ts": 1.5}', "bad_message", None),
    ('{"type": "point", "client_ts": true}', "bad_message", None),
    ('{"type": "game_start"}', "bad_message", None),
    ('{"type": "enter_game_room", "game_id": "demo"}', "bad_message", None),
    ('{"type": "enter_game_room", "game_id": 7, "user_id": null}', "bad_message", None),
    ('{"type": "enter_game_room", "game_id": "", "user_id": null}', "bad_message", None),
    ('{"type": "submit_result", "start_token": "a", "end_token": "b"}', "bad_message", None),
    (
        '{"type": "submit_result", "start_token": "a", "end_token": "b", "points": [1]}',
        "bad_message",
        None,
    ),
    ('{"type": "auth"}', "bad_message", None),
    ('{"type": "auth", "token": 5}', "bad_message", None),
    ('{"type": "resume"}', "bad_message", None),
    ('{"type": "whoami", "id": {"x": 1}}', "bad_message", None),
    (json.dumps({"type": "whoami", "id": "x" * 65}), "bad_message", None),
    # Integers outside what the server can hold (the rules, the tokens, SQLite, JavaScript).
    ('{"type": "point", "client_ts": 9223372036854775808, "id": "big"}', "bad_message", "big"),
    ('{"type": "point", "client_ts": -9223372036854775809}', "bad_message", None),
    ('{"type": "point", "client_ts": -1}', "bad_message", None),
    ('{"type": "game_start", "client_ts": 9223372036854775807}', "bad_message", None),
    ('{"type": "game_start", "client_ts": 253402300800000}', "bad_message", None),
    ('{"type": "whoami", "id": 9007199254740992}', "bad_message", None),
    ('{"type": "whoami", "id": -9007199254740992}', "bad_message", None),
    ('{"type": "enter_game_room", "game_id": "demo", "user_id": 2e400}', "bad_json", None),
    ('{"type": "enter_game_room", "game_id": "demo", "user_id": -1}', "bad_message", None),
    (
        '{"type": "enter_game_room", "game_id": "demo", "user_id": 18446744073709551616}',
        "bad_message",
        None,
    ),
    (
        json.dumps(
            {
                "type": "submit_result",
                "start_token": "a",
                "end_token": "b",
                "points": [{"token": "t", "client_ts": 2**64}],
                "id": "sub",
            }
        ),
        "bad_message",
        "sub",
    ),
    ("[" * 50_000 + "]" * 50_000, "bad_message", None),
    ('{"type": "whoami", "x": ' + "[" * 50_000 + "]" * 50_000 + "}", "bad_message", None),
]

# Where the message names the field that is out of range.
FIELD_NAMED = {
    '{"type": "point", "client_ts": 9223372036854775808, "id": "big"}': "client_ts",
    '{"type": "game_start", "client_ts": 9223372036854775807}': "client_ts",
    '{"type": "enter_game_room", "game_id": "demo", "user_id": -1}': "user_id",
}


@pytest.mark.parametrize(("frame", "code", "request_id"), FRAMES)
async def test_malformed_frames(
    inline_server: Server,
    autojump_clock: trio.testing.MockClock,
    frame: str,
    code: str,
    request_id: Any,
) -> None:
    with trio.fail_after(30):
        async with connect(inline_server) as client:
            await client.send_raw(frame)
            reply = await client.recv()
            assert reply["type"] == "error" and reply["code"] == code, reply
            assert reply.get("id") == request_id
            assert reply["message"]
            if frame in FIELD_NAMED:
                assert FIELD_NAMED[frame] in reply["message"], reply
            await still_serving(inline_server, client)


async def test_unknown_fields_are_ignored(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with connect(inline_server) as client:
            reply = await client.call(type="whoami", colour="blue", nested={"a": [1]})
            assert reply["type"] == "identity"


async def test_a_binary_frame_is_read_as_json(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with connect(inline_server) as client:
            await client.send_raw(b'{"type": "whoami", "id": 1}')
            assert (await client.recv())["type"] == "identity"
            await client.send_raw(b"\xff\xfe")
            assert (await client.recv())["code"] == "bad_message"
            await still_serving(inline_server, client)


async def test_messages_out_of_order(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with connect(inline_server) as client:
            now = inline_server.service.clock.now_ms
            early = await client.call(type="point", client_ts=now(), id="p0")
            assert early == {
                "type": "point_rejected",
                "id": "p0",
                "reason": "no_session",
                "server_ts": now(),
            }
            outside = await client.call(type="game_start", client_ts=now(), id="s0")
            assert outside["type"] == "error" and outside["code"] == "not_in_room"
            assert outside["id"] == "s0"
            unknown = await client.call(type="enter_game_room", game_id="chess", user_id=None)
            assert unknown["code"] == "unknown_game"
            await client.enter("demo", None)
            await client.start(now())
            second = await client.call(type="game_start", client_ts=now())
            assert second["code"] == "session_active"
            other_room = await client.call(type="enter_game_room", game_id="strict", user_id=None)
            assert other_room["code"] == "session_active"
            again = await client.call(type="enter_game_room", game_id="demo", user_id=None)
            assert again["type"] == "room_entered"
            resume = await client.call(type="resume", start_token="garbage")
            assert resume["code"] == "unknown_session"
            await still_serving(inline_server, client)


async def test_identity_mismatch_is_refused_and_flagged(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        dan = await register(inline_server, "dan")
        async with connect(inline_server) as guest:
            claim = await guest.call(type="enter_game_room", game_id="demo", user_id=dan["user_id"])
            assert claim["type"] == "error" and claim["code"] == "identity_mismatch"
            refused = await guest.call(type="game_start", client_ts=0)
            assert refused["code"] == "not_in_room"  # the room was not entered
        async with connect(inline_server) as client:
            await client.login(dan)
            as_guest = await client.call(type="enter_game_room", game_id="demo", user_id=None)
            assert as_guest["code"] == "identity_mismatch"
            other = await client.call(
                type="enter_game_room", game_id="demo", user_id=dan["user_id"] + 1
            )
            assert other["code"] == "identity_mismatch"
            await still_serving(inline_server, client)
        flags = await inline_server.service.store.flags()
        assert [(f["reason"], f["user_id"], f["guest_addr"]) for f in flags] == [
            ("identity_mismatch", None, "127.0.0.1"),
            ("identity_mismatch", dan["user_id"], "127.0.0.1"),
        ]
        assert flags[1]["detail"]["repeats"] == 2  # one cause, counted
        assert flags[0]["detail"]["claimed_user_id"] == dan["user_id"]


async def test_a_handler_bug_closes_one_connection_not_the_server(
    inline_server: Server, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: object, conn: object, request_id: object) -> None:
        raise RuntimeError("a bug")

    with trio.fail_after(30):
        async with connect(inline_server) as victim, connect(inline_server) as bystander:
            monkeypatch.setattr(type(inline_server.socket), "_identity", broken)
            await victim.send(type="whoami")
            with pytest.raises(ConnectionClosed) as closed:
                await victim.recv()
            assert closed.value.reason.code == 1011
            monkeypatch.undo()
            await still_serving(inline_server, bystander)


HOSTILE_FRAMES = [
    '{"type": "point", "client_ts": 9223372036854775808}',
    '{"type": "point", "client_ts": -9223372036854775809}',
    '{"type": "point", "client_ts": 9223372036854775807}',
    '{"type": "game_start", "client_ts": 9223372036854775808}',
    "[" * 50_000 + "]" * 50_000,
]


async def test_hostile_frames_against_the_default_configuration(server: Server) -> None:
    """The frames that used to kill the writer process (and so the server) or close a socket
    with 1011, sent during a game to a server with its helper processes: each gets its
    contract error, the socket stays open, and the server still plays and saves a whole game."""
    now = server.service.clock.now_ms
    with trio.fail_after(30):
        async with connect(server) as attacker:
            await attacker.enter("quick", None)
            await attacker.start(now())
            for frame in HOSTILE_FRAMES:
                await attacker.send_raw(frame)
                reply = await attacker.recv()
                assert reply["type"] == "error" and reply["code"] == "bad_message", reply
            await attacker.send_raw(b"\xff\xfe\xfd")
            assert (await attacker.recv())["code"] == "bad_message"
            # A start at the top of the range, then a point past it: refused, never judged.
            top = await attacker.call(type="game_start", client_ts=2**63 - 1)
            assert top["code"] == "bad_message"
            over = await attacker.call(type="point", client_ts=2**63 - 1 + 200)
            assert over["code"] == "bad_message"
            assert (await attacker.call(type="whoami", id=1))["type"] == "identity"
            await attacker.recv_type("end_game")
        account = await register(server, "survivor")
        async with connect(server) as player:
            await player.login(account)
            await player.enter("quick", account["user_id"])
            started = await player.start(now())
            claims = await player.score(now, 2, 0.05)
            end = await player.recv_type("end_game")
            result = await player.call(
                type="submit_result",
                start_token=started["start_token"],
                end_token=end["end_token"],
                points=claims,
            )
            assert without_receipt(result) == {
                "type": "result",
                "accepted": True,
                "score": 2,
                "saved": True,
                "held": False,
            }
        assert server.service.store.failure is None


async def test_hostile_frames_at_once_among_points_against_the_default_configuration(
    tmp_path: Path,
) -> None:
    """Every frame of FRAMES, a binary one and a point with an id past 2**53, sent in one
    write between two good points during a game, to a server with its helper processes: the
    reader carries points to the session itself (ws.GameSocket._take_point), and none of
    these may go that way or be lost. Each bad frame gets its contract error, in order; the
    two points are accepted with seq 1 and 2; the socket stays open (no 1011); others play."""
    async with running_server(make_config(tmp_path)) as server:
        await hostile_frames_at_once(server)


async def hostile_frames_at_once(server: Server) -> None:
    now = server.service.clock.now_ms
    with trio.fail_after(60):
        raw, head = await RawSocket.open(server.ws_port)
        assert b" 101 " in head

        async def replies(n: int) -> list[dict[str, Any]]:
            got: list[dict[str, Any]] = []
            while len(got) < n:
                read = await raw.read_frame()
                assert read is not None and read[0] == 0x1, read  # text, never a close
                message = json.loads(read[1])
                if message["type"] not in ("leaderboard", "end_game"):
                    got.append(message)
            return got

        def text(message: dict[str, Any]) -> bytes:
            return RawSocket.frame(json.dumps(message).encode())

        await raw.stream.send_all(
            text({"type": "enter_game_room", "game_id": "demo", "user_id": None})
        )
        await raw.stream.send_all(text({"type": "game_start", "client_ts": now()}))
        first = await replies(2)
        assert [m["type"] for m in first] == ["room_entered", "game_started"], first
        hostile = [RawSocket.frame(frame.encode()) for frame, _, _ in FRAMES]
        hostile.append(RawSocket.frame(b"\xff\xfe\xfd", opcode=0x2))
        hostile.append(text({"type": "point", "client_ts": now(), "id": 2**63}))
        await raw.stream.send_all(
            text({"type": "point", "client_ts": now(), "id": "v1"})
            + b"".join(hostile)
            + text({"type": "point", "client_ts": now(), "id": "v2"})
        )
        got = await replies(len(hostile) + 2)
        errors = [m for m in got if m["type"] == "error"]
        assert [m["code"] for m in errors] == [code for _, code, _ in FRAMES] + [
            "bad_message",
            "bad_message",
        ]
        points = [m for m in got if m["type"] == "point_accepted"]
        assert [(m["id"], m["seq"]) for m in points] == [("v1", 1), ("v2", 2)]
        await raw.stream.send_all(text({"type": "whoami", "id": "still"}))
        assert (await replies(1))[0] == {
            "type": "identity",
            "user_id": None,
            "name": None,
            "id": "still",
        }
        await raw.aclose()
        async with connect(server) as other:
            await still_serving(server, other)
        assert server.service.store.failure is None


def framed(message: dict[str, Any], **bent: Any) -> bytes:
    return RawSocket.bent_frame(json.dumps(message).encode(), **bent)


# Frames that break the WebSocket protocol itself, each after a good point in the same write:
# wsproto refuses them (the server's own frame path must leave every one of them to it).
BROKEN_FRAMES: dict[str, bytes | tuple[bytes, bytes]] = {
    "invalid UTF-8": RawSocket.bent_frame(b'{"type": "whoami"\xff}'),
    "a reserved bit": framed({"type": "whoami"}, rsv=4),
    "no mask": framed({"type": "whoami"}, masked=False),
    "a short length in 2 bytes": framed({"type": "whoami"}, length_bytes=2),
    "a short length in 8 bytes": framed({"type": "whoami"}, length_bytes=8),
    "a continuation of nothing": framed({"type": "whoami"}, opcode=0x0),
    # The fragment's start ends one read and the whole frame starts the next (a second write
    # once the first point is answered): the fragment in progress is in wsproto's hands.
    "a whole text frame inside a fragmented one": (
        RawSocket.bent_frame(b'{"type":', fin=False),
        framed({"type": "whoami"}),
    ),
    "an unknown opcode": RawSocket.bent_frame(b"x", opcode=0x3),
    "a fragmented ping": RawSocket.bent_frame(b"x", opcode=0x9, fin=False),
    "a message over 256 KiB": framed({"type": "whoami", "padding": "p" * 300_000}),
}
CLOSE_CODES = {"invalid UTF-8": 1007, "a message over 256 KiB": 1009}  # the rest: 1002


async def test_frames_that_break_the_websocket_protocol_at_once_against_the_default_configuration(
    tmp_path: Path,
) -> None:
    """One player for each kind of broken frame, all at once, each in a game: a good point,
    the broken frame and another point in one write. The connection is closed with the
    protocol's code (1007 for bad UTF-8, 1009 past the size limit, 1002 for the rest), then
    dropped; the first point was judged, nothing after the broken frame was. Meanwhile
    legitimate but unusual frames, at the same time, are served: a point in three fragments,
    one with its length in 2 bytes, the longest frame the server's own frame path reads
    (65,535 bytes), and a 70 KB message with its length in 8. And the server, helper
    processes and all, serves others afterwards."""
    async with running_server(make_config(tmp_path)) as server:
        now = server.service.clock.now_ms
        dropped: dict[str, list[Any]] = {}
        served: dict[str, list[dict[str, Any]]] = {}

        async def in_a_game() -> RawSocket:
            raw, head = await RawSocket.open(server.ws_port)
            assert b" 101 " in head
            await raw.stream.send_all(
                framed({"type": "enter_game_room", "game_id": "demo", "user_id": None})
                + framed({"type": "game_start", "client_ts": now()})
            )
            for expected in ("room_entered", "game_started"):
                read = await raw.read_frame()
                assert read is not None and json.loads(read[1])["type"] == expected, read
            return raw

        async def breaks(name: str, broken: bytes | tuple[bytes, bytes]) -> None:
            raw = await in_a_game()
            before = framed({"type": "point", "client_ts": now(), "id": "before"})
            after = framed({"type": "point", "client_ts": now(), "id": "after"})
            seen = dropped[name] = []
            if isinstance(broken, tuple):
                opening, broken = broken
                await raw.stream.send_all(before + opening)
                read = await raw.read_frame()
                assert read is not None and json.loads(read[1])["id"] == "before", read
                seen.append(json.loads(read[1]))
                data = broken + after
            else:
                data = before + broken + after

            async def send() -> None:
                # The server stops reading at the broken frame: what follows may never go.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await raw.stream.send_all(data)

            async with trio.open_nursery() as io:
                io.start_soon(send)
                while (read := await raw.read_frame()) is not None:
                    if read[0] == 0x8:
                        seen.append(close_code(read[1]))
                        break
                    seen.append(json.loads(read[1]))
                io.cancel_scope.cancel()
            await raw.aclose()

        async def unusual() -> None:
            raw = await in_a_game()
            point = json.dumps({"type": "point", "client_ts": now(), "id": "fragments"})
            await raw.stream.send_all(
                RawSocket.bent_frame(point[:9].encode(), fin=False)
                + RawSocket.bent_frame(point[9:20].encode(), opcode=0x0, fin=False)
                + RawSocket.bent_frame(point[20:].encode(), opcode=0x0)
                + framed({"type": "point", "client_ts": now(), "id": "long", "padding": "p" * 200})
                + framed({"type": "whoami", "id": "longest", "padding": "p" * 65_485})
                + framed({"type": "whoami", "id": "big", "padding": "p" * 70_000})
            )
            got = served["unusual"] = []
            while len(got) < 4:
                read = await raw.read_frame()
                assert read is not None and read[0] == 0x1, read
                got.append(json.loads(read[1]))
            await raw.aclose()

        with trio.fail_after(60):
            before = judged(server)
            async with trio.open_nursery() as nursery:
                for name, broken in BROKEN_FRAMES.items():
                    nursery.start_soon(breaks, name, broken)
                nursery.start_soon(unusual)
            # The close frame with the protocol's code, and no answer after the broken frame
            # (the first point's answer may be cut off by the close).
            assert len(dropped) == len(BROKEN_FRAMES)
            for name, seen in dropped.items():
                answers, closes = seen[:-1], seen[-1:]
                assert closes == [CLOSE_CODES.get(name, 1002)], (name, seen)
                assert all(m["id"] == "before" for m in answers), (name, seen)
            # Each first point reached its session and was judged; no "after" point was (one
            # read wrongly past the broken frame would reach the session with its "before",
            # in the same step of the reader, and be judged in the same run).
            while judged(server) < before + len(BROKEN_FRAMES) + 2:
                await trio.sleep(0.01)  # the sessions' answers, signed in the child process
            assert judged(server) == before + len(BROKEN_FRAMES) + 2
            # The handler answers the whoami at once; the points come after their signing.
            kinds = [(m["type"], m.get("id"), m.get("seq")) for m in served["unusual"]]
            assert sorted(kinds, key=str) == [
                ("identity", "big", None),
                ("identity", "longest", None),
                ("point_accepted", "fragments", 1),
                ("point_accepted", "long", 2),
            ]
            async with connect(server) as other:
                await still_serving(server, other)
            assert server.service.store.failure is None


def judged(server: Server) -> float:
    """Points the server has judged (accepted or refused), from its metrics."""
    return sum(
        sample.value
        for metric in server.service.metrics.registry.collect()
        if metric.name == "scoreserver_points"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


async def test_points_at_once_past_the_message_rate_against_the_default_configuration(
    tmp_path: Path,
) -> None:
    """The message-rate bucket holds when points come in one write and the reader takes
    them (its tokens are the handler's too): with 20 tokens and two spent on entering and
    starting, 18 of 30 points are judged, the next five answered `rate_limited`, and the
    sixth strike closes with 1008; the server, helper processes and all, serves others."""
    config = make_config(tmp_path, max_msg_rate=0.01, msg_burst=20, rate_strikes=5)
    async with running_server(config) as limited:
        with trio.fail_after(60):
            raw, _ = await RawSocket.open(limited.ws_port)
            now = limited.service.clock.now_ms

            def text(message: dict[str, Any]) -> bytes:
                return RawSocket.frame(json.dumps(message).encode())

            await raw.stream.send_all(
                text({"type": "enter_game_room", "game_id": "demo", "user_id": None})
                + text({"type": "game_start", "client_ts": now()})
            )
            kinds: list[str] = []
            for _ in range(2):  # the handler is idle again: the points go the reader's way
                read = await raw.read_frame()
                assert read is not None
                kinds.append(json.loads(read[1])["type"])
            assert kinds == ["room_entered", "game_started"]
            await raw.stream.send_all(
                b"".join(text({"type": "point", "client_ts": now(), "id": n}) for n in range(30))
            )
            close = None
            while (read := await raw.read_frame()) is not None:
                if read[0] == 0x8:
                    close = close_code(read[1])
                    break
                message = json.loads(read[1])
                kinds.append(message.get("code") or message["type"])
            assert kinds.count("rate_limited") == 5, kinds
            assert close == 1008
            # The 18 that passed were judged (their answers may be cut off by the close: the
            # session answers after the handler's refusals); none past the bucket was.
            while judged(limited) < 18:
                await trio.sleep(0.01)  # the session's answers, signed in the child process
            assert judged(limited) == 18, kinds
            await raw.aclose()
            async with connect(limited) as other:
                await other.enter("demo", None)
                assert (await other.start(now()))["type"] == "game_started"
            assert limited.service.store.failure is None
