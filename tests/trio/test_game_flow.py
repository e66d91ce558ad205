"""The trio layer under autojump_clock: whole games over real sockets in milliseconds."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from scoreserver.server import frames
from scoreserver.server.app import Server
from scoreserver.server.sessions import PointIn
from scoreserver.server.ws import POINT_FRAME_MAX
from scoreserver.wire import protocol

from .. import databases
from ..conftest import Client, connect, register
from ..players import without_receipt
from ..rawws import RawSocket

pytestmark = pytest.mark.engines

PLAYER_LAG_MS = 10_000  # the player's clock runs 10 s behind the server's


def player_clock(server: Server) -> Any:
    return lambda: server.service.clock.now_ms() - PLAYER_LAG_MS


async def play(
    client: Client, server: Server, n_points: int, every_s: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    now = player_clock(server)
    started = await client.start(now())
    return started, await client.score(now, n_points, every_s)


async def play_and_submit(
    client: Client, server: Server, n_points: int, every_s: float
) -> dict[str, Any]:
    """A whole game, to its end_game, then its submission; returns the result."""
    started, points = await play(client, server, n_points, every_s)
    end = await client.recv_type("end_game")
    return await client.call(
        type="submit_result",
        start_token=started["start_token"],
        end_token=end["end_token"],
        points=points,
    )


async def test_a_full_30_second_game(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(300):
        alice = await register(inline_server, "alice")
        async with connect(inline_server) as client:
            identity = await client.call(type="auth", token=alice["token"], id="a1")
            assert identity == {
                "type": "identity",
                "user_id": alice["user_id"],
                "name": "alice",
                "id": "a1",
            }
            room = await client.enter("demo", alice["user_id"])
            assert room["duration_ms"] == 30_000
            t_start = trio.current_time()
            started, points = await play(client, inline_server, 25, 1.0)
            assert [p["token"] for p in points] == list(dict.fromkeys(p["token"] for p in points))
            end = await client.recv_type("end_game")
            assert end["reason"] == "time_up"
            assert end["server_ts"] - started["server_ts"] == 30_000
            assert trio.current_time() - t_start >= 30.0
            late = await client.call(type="point", client_ts=player_clock(inline_server)())
            assert late["type"] == "point_rejected" and late["reason"] == "game_over"
            result = await client.call(
                type="submit_result",
                id=9,
                start_token=started["start_token"],
                end_token=end["end_token"],
                points=points,
            )
            assert without_receipt(result) == {
                "type": "result",
                "id": 9,
                "accepted": True,
                "score": 25,
                "saved": True,
                "held": False,
            }
        board = await inline_server.service.store.leaderboard(
            "demo", inline_server.service.clock.now_ms()
        )
        assert board == [{"rank": 1, "user_id": alice["user_id"], "name": "alice", "score": 25}]


async def test_points_carry_consecutive_seq_and_server_time(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        async with connect(inline_server) as client:
            await client.enter("demo", None)
            started, _ = await play(client, inline_server, 0, 0)
            now = player_clock(inline_server)
            seqs = []
            for _ in range(5):
                await trio.sleep(0.5)  # virtual time (autojump_clock)
                reply = await client.call(type="point", client_ts=now())
                seqs.append(reply["seq"])
                assert reply["server_ts"] == now() + PLAYER_LAG_MS
            assert seqs == [1, 2, 3, 4, 5]


async def test_a_guest_plays_but_nothing_is_saved(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        async with connect(inline_server) as client:
            assert await client.call(type="whoami") == {
                "type": "identity",
                "user_id": None,
                "name": None,
            }
            await client.enter("demo", None)
            result = await play_and_submit(client, inline_server, 3, 2.0)
            assert result == {
                "type": "result",
                "accepted": True,
                "score": 3,
                "saved": False,
                "held": False,
            }
        rows = databases.sql(inline_server.config.db_path, "SELECT COUNT(*) FROM scores")
        assert rows[0][0] == 0


async def test_the_burst_limit_ends_the_game_and_flags_first(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        mallory = await register(inline_server, "mallory")
        async with connect(inline_server) as client:
            await client.login(mallory)
            await client.enter("strict", mallory["user_id"])
            now = player_clock(inline_server)
            started = await client.start(now())
            replies = []
            for _ in range(6):  # all at the same instant: 3 accepted, then bursts
                replies.append(await client.call(type="point", client_ts=now()))
            kinds = [(r["type"], r.get("reason")) for r in replies]
            assert kinds == [("point_accepted", None)] * 3 + [("point_rejected", "burst")] * 3
            end = await client.recv_type("end_game")
            assert end["reason"] == "burst_limit" and "end_token" not in end
            # The flag was committed before end_game revealed it.
            flags = await inline_server.service.store.flags()
            assert [(f["reason"], f["user_id"]) for f in flags] == [
                ("burst_limit", mallory["user_id"])
            ]
            assert len(flags[0]["detail"]["burst_times"]) == 3
            after = await client.call(type="point", client_ts=now())
            assert after["reason"] == "game_over"
            # The voided game cannot be submitted (and the attempt is flagged too).
            result = await client.call(
                type="submit_result",
                start_token=started["start_token"],
                end_token=started["start_token"],
                points=[],
            )
            assert result == {"type": "result", "accepted": False, "reason": "session_voided"}
            # A new game may start at once: the running-session record was cleared first.
            again = await client.call(type="game_start", client_ts=now())
            assert again["type"] == "game_started"


def slow_replies(monkeypatch: Any, marker: str, delay_s: float) -> None:
    """From now on, frames containing `marker` take `delay_s` to send: the session is busy
    answering, so the player's next points queue up in its inbox."""
    from scoreserver.server.ws import Connection

    original = Connection.send

    async def slow_send(self: Connection, text: str) -> bool:
        if marker in text:
            await trio.sleep(delay_s)
        return await original(self, text)

    monkeypatch.setattr(Connection, "send", slow_send)


async def test_a_burst_limit_inside_a_run_of_queued_points_still_ends_with_end_game(
    inline_server: Server, autojump_clock: trio.testing.MockClock, monkeypatch: Any
) -> None:
    with trio.fail_after(60):
        async with connect(inline_server) as client:
            await client.enter("strict", None)
            now = player_clock(inline_server)
            await client.start(now())
            slow_replies(monkeypatch, '"point_', 0.05)
            for n in range(12):  # all at the same instant: the third burst ends the game
                await client.send(type="point", client_ts=now(), id=n)
            replies = []
            while (message := await client.recv())["type"] != "end_game":
                replies.append(message)
            assert message["reason"] == "burst_limit"
            # Every point got its answer, in order, and before end_game, the session's last word.
            assert [r["id"] for r in replies] == list(range(12))
            kinds = [(r["type"], r.get("reason")) for r in replies]
            assert (
                kinds
                == [("point_accepted", None)] * 3
                + [("point_rejected", "burst")] * 3
                + [("point_rejected", "game_over")] * 6
            )


async def test_a_point_handed_over_as_the_timer_fires_is_still_answered(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """A point handed to the waiting session task in the very scheduler tick its deadline
    passes is answered before end_game. (With the timer as a cancel scope's deadline, the
    scope was cancelled after the point was handed over, and its answer was cut off at the
    send's first checkpoint: a point never answered, seen under overload.)"""
    with trio.fail_after(60):
        async with connect(inline_server) as client:
            await client.enter("demo", None)
            started = await client.start(player_clock(inline_server)())
            session = inline_server.service.sessions[started["session_id"]]
            assert session.inbox_send is not None
            await trio.sleep(0.5)  # virtual (autojump_clock): the session now waits for a point
            # To the deadline (and a hair past it: floating point), and in the same tick,
            # with no checkpoint between, a point that reached the server 1 ms before the end.
            autojump_clock.jump(session.deadline - trio.current_time() + 1e-9)
            received = session.rules.ends_at - 1
            session.inbox_send.send_nowait(
                PointIn(received - session.rules.offset_ms, received, "edge")
            )
            replies = []
            while (message := await client.recv())["type"] != "end_game":
                replies.append(message)
            assert message["reason"] == "time_up"
            assert [(r["type"], r.get("id")) for r in replies] == [("point_accepted", "edge")]


async def test_many_sessions_in_one_room_at_once(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    players = 40
    results: list[dict[str, Any]] = []

    async def one_player(n: int) -> None:
        account = await register(inline_server, f"player{n}")
        async with connect(inline_server) as client:
            await client.login(account)
            await client.enter("demo", account["user_id"])
            await trio.sleep(n * 0.05)  # players start at slightly different times
            started, points = await play(client, inline_server, n % 7 + 1, 1.5)
            end = await client.recv_type("end_game")
            assert end["reason"] == "time_up"
            results.append(
                await client.call(
                    type="submit_result",
                    start_token=started["start_token"],
                    end_token=end["end_token"],
                    points=points,
                )
            )

    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            for n in range(players):
                nursery.start_soon(one_player, n)
    assert sorted(r["score"] for r in results) == sorted(n % 7 + 1 for n in range(players))
    assert all(r["accepted"] and r["saved"] for r in results)
    room = await inline_server.rooms.room("demo")
    assert not room.members  # everyone left when their socket closed
    assert not inline_server.service.running_by_user


async def test_a_dropped_connection_does_not_stop_the_timer(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        bob = await register(inline_server, "bob")
        async with connect(inline_server) as client:
            await client.login(bob)
            await client.enter("demo", bob["user_id"])
            started, points = await play(client, inline_server, 2, 1.0)
        session = inline_server.service.sessions[started["session_id"]]
        assert session.running and session.player is None
        await session.finished.wait()
        assert session.end_token is not None
        # The ended session is in the database and can be submitted over a new connection.
        async with connect(inline_server) as client:
            result = await client.call(
                type="submit_result",
                start_token=started["start_token"],
                end_token=session.end_token,
                points=points,
            )
            assert result["accepted"] and result["score"] == 2
        assert not inline_server.service.running_by_user


async def test_one_running_game_per_user_and_game(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        carol = await register(inline_server, "carol")
        async with connect(inline_server) as first, connect(inline_server) as second:
            for client in (first, second):
                await client.login(carol)
                await client.enter("demo", carol["user_id"])
            now = player_clock(inline_server)
            await first.start(now())
            refused = await second.call(type="game_start", client_ts=now(), id="x")
            assert refused["type"] == "error" and refused["code"] == "session_active"
            assert refused["id"] == "x"
            again = await first.call(type="game_start", client_ts=now())
            assert again["code"] == "session_active"
            await first.recv_type("end_game")
            assert (await second.start(now()))["type"] == "game_started"


async def test_a_point_being_answered_when_time_runs_out_still_gets_its_answer(
    inline_server: Server, autojump_clock: trio.testing.MockClock, monkeypatch: Any
) -> None:
    """The timer ends the wait for points, never the handling of one: a reply in flight
    when the time is up is still delivered (before end_game)."""
    from scoreserver.server.ws import Connection

    original = Connection.send

    async def slow_send(self: Connection, text: str) -> bool:
        if '"point_accepted"' in text:
            await trio.sleep(0.5)  # a congested socket; virtual time
        return await original(self, text)

    with trio.fail_after(60):
        async with connect(inline_server) as client:
            await client.enter("demo", None)
            now = inline_server.service.clock.now_ms
            started = await client.start(now())
            monkeypatch.setattr(Connection, "send", slow_send)
            await trio.sleep(29.8)  # the reply will still be in flight at 30 s; virtual time
            await client.send(type="point", client_ts=now(), id="last")
            reply = await client.recv()
            assert reply["type"] == "point_accepted" and reply["id"] == "last"
            end = await client.recv_type("end_game")
            assert end["server_ts"] - started["server_ts"] >= 30_000


async def test_points_queued_at_the_end_are_judged_by_arrival_and_answered_before_end_game(
    inline_server: Server, autojump_clock: trio.testing.MockClock, monkeypatch: Any
) -> None:
    with trio.fail_after(60):
        async with connect(inline_server) as client:
            await client.enter("demo", None)
            now = inline_server.service.clock.now_ms
            await client.start(now())
            slow_replies(monkeypatch, '"point_accepted"', 0.3)
            await trio.sleep(29.5)  # virtual time (autojump_clock)
            for n in range(6):  # in time, though their replies will run past the end
                await client.send(type="point", client_ts=now(), id=n)
            await trio.sleep(0.7)  # now past the end, while the session still answers; virtual time
            for n in range(6, 9):
                await client.send(type="point", client_ts=now(), id=n)
            replies = []
            while (message := await client.recv())["type"] != "end_game":
                replies.append(message)
            assert sorted(r["id"] for r in replies) == list(range(9))  # all before end_game
            by_id = {r["id"]: r for r in replies}
            assert all(by_id[n]["type"] == "point_accepted" for n in range(6))
            assert all(
                by_id[n]["type"] == "point_rejected" and by_id[n]["reason"] == "game_over"
                for n in range(6, 9)
            )


async def test_players_in_the_room_get_the_leaderboard_when_its_top_changes(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        ann = await register(inline_server, "ann")
        async with connect(inline_server) as watcher, connect(inline_server) as elsewhere:
            await watcher.enter("demo", None)  # a guest watching the room
            await elsewhere.enter("strict", None)  # another game's room hears nothing
            async with connect(inline_server) as player:
                await player.login(ann)
                await player.enter("demo", ann["user_id"])
                started, points = await play(player, inline_server, 3, 1.0)
                end = await player.recv_type("end_game")
                await player.call(
                    type="submit_result",
                    start_token=started["start_token"],
                    end_token=end["end_token"],
                    points=points,
                )
            push = await watcher.recv_type("leaderboard")
            assert push == {
                "type": "leaderboard",
                "game_id": "demo",
                "entries": [{"rank": 1, "user_id": ann["user_id"], "name": "ann", "score": 3}],
            }
            assert (await elsewhere.call(type="whoami"))["type"] == "identity"
            assert all(m["type"] != "leaderboard" for m in elsewhere.seen)


class StepCounter(trio.abc.Instrument):
    """Counts the scheduler's steps of the tasks whose name contains `part`."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.part in task.name:
            self.steps += 1


async def points_handler_steps(server: Server, *, fast: bool) -> int:
    """Steps of the server's connection handlers while one player scores ten points."""
    async with connect(server) as client:
        await client.enter("demo")  # a guest plays too
        await client.start(player_clock(server)())
        (conn,) = server.socket.connections
        assert conn.hand_over is not None  # this trio-websocket: quickened
        if not fast:
            conn.hand_over.take = None  # every message through the handler, as before
        await trio.testing.wait_all_tasks_blocked()
        # The task that runs trio-websocket's connection handler, and so ours.
        counter = StepCounter("serve_listeners._run_handler")
        trio.lowlevel.add_instrument(counter)
        try:
            await client.score(player_clock(server), 10, 0.1)
            await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(counter)
        return counter.steps


async def test_a_point_goes_to_its_session_without_waking_the_connections_handler(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """trio-websocket's reader carries a point to the session's inbox itself when the
    handler has nothing of the connection's in hand (`GameSocket._take_point`): one task
    step less a point. Through the handler, as before, each point wakes it."""
    with trio.fail_after(60):
        assert await points_handler_steps(inline_server, fast=True) == 0
        assert await points_handler_steps(inline_server, fast=False) >= 10


async def test_a_games_frames_are_read_and_written_without_wsprotos_general_path(
    inline_server: Server, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`server/frames.py` on a served connection: every point's frame is read, and every
    reply framed, by the short path (a wsproto or trio-websocket that changed would leave it
    unused: this says so)."""
    read: list[int] = []
    written: list[str] = []
    take, frame = frames.take_text_frames, frames.text_frame

    def counting_take(data: bytes, append: Any) -> int:
        read.append(taken := take(data, append))
        return taken

    def counting_frame(text: str) -> bytes:
        written.append(text)
        return frame(text)

    monkeypatch.setattr(frames, "take_text_frames", counting_take)
    monkeypatch.setattr(frames, "text_frame", counting_frame)
    with trio.fail_after(60):
        async with connect(inline_server) as client:
            await client.enter("demo")
            await client.start(player_clock(inline_server)())
            read.clear()
            written.clear()
            await client.score(player_clock(inline_server), 10, 0.1)
    assert len(read) >= 10 and all(read)  # each read of a point's frame taken whole
    assert [json.loads(text)["seq"] for text in written] == list(range(1, 11))


async def test_messages_sent_together_are_handled_in_the_order_sent(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """Frames that arrive in one read, points among other messages, some carried by the
    reader and some by the handler: the points sent with their game_start are judged after
    the game has started (accepted, not no_session); points sent around a whoami and a bad
    frame get their seq in the order sent; the bad frame and the whoami are answered; the
    server serves others afterwards. (The hand-over's own ordering rule is tested in
    test_transport.)"""
    with trio.fail_after(60):
        raw, head = await RawSocket.open(inline_server.ws_port)
        assert b" 101 " in head
        frame = RawSocket.frame

        def msg(**message: Any) -> bytes:
            return frame(json.dumps(message).encode())

        async def replies(n: int) -> list[dict[str, Any]]:
            got = []
            while len(got) < n:
                read = await raw.read_frame()
                assert read is not None
                message = json.loads(read[1])
                if message["type"] != "leaderboard":
                    got.append(message)
            return got

        now = player_clock(inline_server)
        await raw.stream.send_all(msg(type="enter_game_room", game_id="demo", user_id=None))
        entered = (await replies(1))[0]
        assert entered["type"] == "room_entered", entered
        await raw.stream.send_all(
            msg(type="game_start", client_ts=now(), id="s")
            + msg(type="point", client_ts=now(), id=1)
            + msg(type="point", client_ts=now(), id=2)
        )
        first = await replies(3)
        assert [m["type"] for m in first] == ["game_started", "point_accepted", "point_accepted"]
        assert [(m["id"], m["seq"]) for m in first[1:]] == [(1, 1), (2, 2)]
        await trio.sleep(0.5)  # virtual time: the points are not a burst
        await raw.stream.send_all(
            msg(type="point", client_ts=now(), id=3)
            + msg(type="whoami", id="w")
            + msg(type="point", client_ts=now(), id=4)
            + frame(b'{"type": "point", "client_ts": "soon"}')
            + msg(type="point", client_ts=now(), id=5)
            + msg(type="point", client_ts=now(), id=6)
        )
        rest = await replies(6)
        points = [m for m in rest if m["type"] == "point_accepted"]
        assert [(m["id"], m["seq"]) for m in points] == [(3, 3), (4, 4), (5, 5), (6, 6)]
        assert {m["type"] for m in rest} == {"point_accepted", "identity", "error"}
        await raw.aclose()
        # and the server serves others afterwards
        async with connect(inline_server) as other:
            assert (await other.enter("demo"))["type"] == "room_entered"


async def test_a_frame_the_reader_decodes_and_leaves_to_the_handler_is_decoded_once(
    inline_server: Server, autojump_clock: trio.testing.MockClock, monkeypatch: Any
) -> None:
    """Short frames the reader decodes and leaves to the handler (a whoami, an entry, a point
    before any game, which gets no_session) are not decoded a second time by the handler."""
    frames: list[str | bytes] = []
    decode = protocol.decode_client

    def counting(frame: str | bytes) -> Any:
        frames.append(frame)
        return decode(frame)

    monkeypatch.setattr(protocol, "decode_client", counting)
    with trio.fail_after(60):
        async with connect(inline_server) as client:
            assert (await client.call(type="whoami", id="w"))["type"] == "identity"
            await client.enter("demo")
            refused = await client.call(type="point", client_ts=player_clock(inline_server)())
            assert refused["type"] == "point_rejected" and refused["reason"] == "no_session"
    assert len(frames) == 3, frames


async def test_a_submission_is_decoded_once_not_first_by_the_reader_too(
    inline_server: Server, autojump_clock: trio.testing.MockClock, monkeypatch: Any
) -> None:
    """The reader decodes only frames short enough to be a point; a submission (a large
    frame) goes straight to the handler, decoded once (decoding is a tenth of its cost)."""
    sizes: list[int] = []
    decode = protocol.decode_client

    def counting(frame: str | bytes) -> Any:
        sizes.append(len(frame))
        return decode(frame)

    monkeypatch.setattr(protocol, "decode_client", counting)
    with trio.fail_after(120):
        alice = await register(inline_server, "alice")
        async with connect(inline_server) as client:
            await client.login(alice)
            await client.enter("demo", alice["user_id"])
            result = await play_and_submit(client, inline_server, 5, 1.0)
            assert result["type"] == "result" and result["accepted"], result
    large = [n for n in sizes if n > POINT_FRAME_MAX]
    assert len(large) == 1, sizes
