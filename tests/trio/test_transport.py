"""The game socket's stream (`server/transport.py`) on real TCP connections on 127.0.0.1: the
direct reads and writes that skip trio's yield when nothing needs waiting for, and what they
must still do: wait when there is nothing to read, finish a write the kernel took only part
of, yield after a run of reads so that a streaming peer cannot hold the loop, and say closed
or broken the way trio's own streams do. And trio-websocket's send lock and message hand-over
as `quicken` replaces them: no yield when nothing needs waiting for, the same exclusion, order
and backpressure."""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from trio_websocket import (
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from scoreserver.server import tested
from scoreserver.server.app import Server
from scoreserver.server.transport import (
    MAX_READS_WITHOUT_YIELD,
    ClientListener,
    ClientStream,
    MessageHandOver,
    ObservedStream,
    _QuickLock,
    quicken,
)
from scoreserver.wire.addresses import TrustedProxies

from ..conftest import add_game, connect, http, make_config, register, running_server


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[ObservedStream, trio.SocketStream]]:
    """(the server's side, wrapped as the game socket wraps it; the peer's plain stream)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        peer = await trio.open_tcp_stream("127.0.0.1", port)
        ours = ObservedStream(ClientStream(await listeners[0].accept()))
        try:
            yield ours, peer
        finally:
            await ours.aclose()
            await peer.aclose()
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_direct_reads_wait_for_data_and_see_the_end() -> None:
    with trio.fail_after(10):
        async with connected() as (ours, peer):
            assert (
                ours.transport._direct is not None
            )  # plain TCP: the direct path is the one tested
            got: list[bytes | bytearray] = []

            async def read_two() -> None:
                got.append(await ours.receive_some(100))
                got.append(await ours.receive_some(100))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_two)
                await trio.testing.wait_all_tasks_blocked()  # the reader waits: nothing sent
                assert got == []
                await peer.send_all(b"hello")
                await trio.testing.wait_all_tasks_blocked()  # read, and waiting again
                assert got == [b"hello"]
                await peer.send_eof()
            assert got == [b"hello", b""]  # the peer's end reads as b"", as on trio's stream


async def test_a_write_larger_than_the_kernel_takes_at_once_arrives_whole() -> None:
    with trio.fail_after(20):
        async with connected() as (ours, peer):
            ours.inner.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            payload = bytes(range(256)) * 4_000  # 1 MB: many times the socket buffers
            received = bytearray()

            async def read_all() -> None:
                while len(received) < len(payload):
                    # Read only once the writer waits for room: it must wait, every time.
                    await trio.testing.wait_all_tasks_blocked()
                    received.extend(await peer.receive_some(65536))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                await ours.send_all(payload)
            assert bytes(received) == payload


async def test_a_streaming_peer_cannot_hold_the_loop() -> None:
    """With data always waiting, reads yield to the scheduler at least every
    MAX_READS_WITHOUT_YIELD reads: another task gets its turn meanwhile."""
    with trio.fail_after(10):
        async with connected() as (ours, peer):
            await peer.send_all(b"x" * 64 * (MAX_READS_WITHOUT_YIELD * 8))
            await trio.testing.wait_all_tasks_blocked()  # all of it is in our socket's buffer
            turns = 0

            async def other_task() -> None:
                nonlocal turns
                while True:
                    turns += 1
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(other_task)
                await trio.lowlevel.checkpoint()
                start = turns
                for _ in range(MAX_READS_WITHOUT_YIELD * 8):
                    assert len(await ours.receive_some(64)) == 64
                nursery.cancel_scope.cancel()
            # Seven yields in 8 x MAX_READS_WITHOUT_YIELD reads, give or take the order of the
            # tasks in the scheduler's first and last batches; none without the yield.
            assert turns - start >= 5


async def test_reads_after_a_local_close_or_a_reset_fail_as_trios_do() -> None:
    with trio.fail_after(10):
        async with connected() as (ours, peer):

            async def wait_then_fail() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await ours.receive_some(100)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_then_fail)
                await trio.testing.wait_all_tasks_blocked()  # in wait_readable when dropped
                await ours.drop()
            with pytest.raises(trio.ClosedResourceError):
                await ours.receive_some(100)
            # A write on a closed stream is refused by trio's own call.
            with pytest.raises(trio.ClosedResourceError):
                await ours.send_all(b"late")

        async with connected() as (ours, peer):
            # The peer resets the connection (SO_LINGER 0): reads and writes say broken.
            peer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await peer.aclose()
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BrokenResourceError):
                await ours.receive_some(100)
            with pytest.raises(trio.BrokenResourceError):
                for _ in range(100):  # the first write may still be taken by the kernel
                    await ours.send_all(b"x" * 65536)


# -- trio-websocket's send lock and message hand-over, quickened (`quicken`) --


@asynccontextmanager
async def quickened_pair() -> AsyncIterator[tuple[WebSocketConnection, WebSocketConnection]]:
    """(the server's side of a real trio-websocket connection, quickened as the game socket
    does; the client's side)."""
    accepted: list[WebSocketConnection] = []
    ready = trio.Event()
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        assert quicken(ws) is not None  # this trio-websocket's own attributes: replaced
        assert quicken(ws) is None  # what is not trio-websocket's own is left alone
        accepted.append(ws)
        ready.set()
        await done.wait()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=None)
        )
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as client:
            await ready.wait()
            yield accepted[0], client
            done.set()
        nursery.cancel_scope.cancel()


async def test_the_quick_lock_yields_only_when_another_task_holds_it() -> None:
    lock = _QuickLock()
    with trio.testing.assert_no_checkpoints():
        async with lock:
            assert lock.locked()
    order: list[str] = []

    async def take(name: str) -> None:
        async with lock:
            order.append(name)
            await trio.testing.wait_all_tasks_blocked()  # hold it while the others queue

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for name in "abc":
                nursery.start_soon(take, name)
                await trio.testing.wait_all_tasks_blocked()  # each queues in turn
    assert order == ["a", "b", "c"]  # first come, first served, one at a time
    assert not lock.locked()


async def test_replies_sent_at_once_from_two_tasks_arrive_whole_and_in_order() -> None:
    """The lock still keeps sends apart: two tasks send large messages at once to a peer that
    reads only afterwards (each send waits for room, holding the lock); every message arrives
    whole, each task's in order. Without the lock the stream refuses the second sender
    (trio's BusyResourceError), or frames would interleave."""
    with trio.fail_after(30):
        async with quickened_pair() as (server, client):

            async def send_many(tag: str) -> None:
                for i in range(8):
                    await server.send_message(f"{tag}{i:02d}" + tag * 200_000)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_many, "a")
                nursery.start_soon(send_many, "b")
                await trio.testing.wait_all_tasks_blocked()  # both senders wait for room
                got = [await client.get_message() for _ in range(16)]
            for tag in "ab":
                mine = [m for m in got if m[0] == tag]
                assert [m[:3] for m in mine] == [f"{tag}{i:02d}" for i in range(8)]
                assert all(m[3:] == tag * 200_000 for m in mine)


async def test_messages_faster_than_the_handler_reads_wait_and_arrive_in_order() -> None:
    """The reader hands a message over without a yield when the channel has room, and waits
    when it has none (trio-websocket's queue holds one): nothing is lost or reordered."""
    with trio.fail_after(30):
        async with quickened_pair() as (server, client):
            for i in range(300):
                await client.send_message(f"m{i}")
            await trio.testing.wait_all_tasks_blocked()  # the reader waits on the full queue
            assert [await server.get_message() for _ in range(300)] == [f"m{i}" for i in range(300)]
            send_end, receive_end = trio.open_memory_channel[int](1)
            sender = MessageHandOver(send_end)
            with trio.testing.assert_no_checkpoints():
                await sender.send(1)  # room: no yield
            sent: list[int] = []

            async def send_two() -> None:
                await sender.send(2)
                sent.append(2)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_two)
                await trio.testing.wait_all_tasks_blocked()
                assert sent == []  # no room: it waits
                assert receive_end.receive_nowait() == 1
            assert sent == [2] and receive_end.receive_nowait() == 2


async def test_the_hand_over_offers_a_message_to_take_only_when_none_waits_in_the_channel() -> None:
    """What `take` accepts never overtakes what the handler has: once a message went to the
    channel, the next ones follow it there until the handler is done with them all."""
    send_end, receive_end = trio.open_memory_channel[str](2)
    hand_over = MessageHandOver(send_end)
    offered: list[str] = []

    def take(message: str | bytes) -> bool:
        assert isinstance(message, str)
        offered.append(message)
        return message != "a"  # the handler's, say a game_start; the rest points

    hand_over.take = take
    with trio.testing.assert_no_checkpoints():
        await hand_over.send("a")  # offered, refused: to the channel
        await hand_over.send("b")  # not offered: "a" waits
    assert receive_end.receive_nowait() == "a"
    hand_over.done()
    await hand_over.send("c")  # "b" still waits
    for expected in "bc":
        assert receive_end.receive_nowait() == expected
        hand_over.done()
    await hand_over.send("d")  # nothing waits: offered, taken
    assert offered == ["a", "d"] and hand_over.pending == 0
    with pytest.raises(trio.WouldBlock):
        receive_end.receive_nowait()


def _reset_connection(port: int) -> None:
    """Connect and reset at once (SO_LINGER 0), as a balancer's TCP health check may."""
    gone = socket.socket()
    gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone.connect(("127.0.0.1", port))
    gone.close()


async def test_a_connection_reset_before_it_is_accepted_is_skipped() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    for _ in range(3):
        _reset_connection(port)
    good = await trio.open_tcp_stream("127.0.0.1", port)
    async with good:
        with trio.fail_after(10):
            client = await ClientListener(listeners[0], TrustedProxies()).accept()
        assert client.peer_key[1] == good.socket.getsockname()[1]
        await client.aclose()
    await listeners[0].aclose()


async def test_both_ports_serve_on_after_connections_reset_at_accept(server: Server) -> None:
    with trio.fail_after(30):
        for _ in range(50):
            _reset_connection(server.ws_port)
            _reset_connection(server.http_port)
        async with connect(server) as client:
            assert (await client.call(type="whoami"))["type"] == "identity"
        async with http(server) as api:
            assert (await api.get("/healthz")).status_code == 200


# -- the fast paths only on the releases they were tested on (`server/tested.py`) --


@pytest.fixture
def fresh_check() -> Iterator[None]:
    tested.fast_path_allowed.cache_clear()
    yield
    tested.fast_path_allowed.cache_clear()


def test_the_fast_paths_run_only_on_a_tested_release(
    fresh_check: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(tested.OVERRIDE_VARIABLE, raising=False)
    for name in tested.TESTED:  # what this suite runs on is a tested release
        assert tested.installed(name) in tested.TESTED[name], name
        assert tested.fast_path_allowed(name)
    tested.fast_path_allowed.cache_clear()
    monkeypatch.setitem(tested.TESTED, "wsproto", ("0.0.1",))
    with caplog.at_level(logging.WARNING, logger="scoreserver.server"):
        assert not tested.fast_path_allowed("wsproto")
        assert not tested.fast_path_allowed("wsproto")  # asked again: answered, not logged
    warned = [r.getMessage() for r in caplog.records if "not a release" in r.getMessage()]
    assert len(warned) == 1 and "wsproto" in warned[0] and "0.0.1" in warned[0], warned
    tested.fast_path_allowed.cache_clear()
    monkeypatch.setenv(tested.OVERRIDE_VARIABLE, "any")
    assert tested.fast_path_allowed("wsproto")  # how .ci/newest tries a newer release
    tested.fast_path_allowed.cache_clear()
    monkeypatch.setenv(tested.OVERRIDE_VARIABLE, "off")
    assert not tested.fast_path_allowed("trio-websocket")


@pytest.mark.parametrize("why", ["untested releases", "SCORESERVER_FAST_PATHS=off"])
async def test_the_plain_path_serves_a_whole_game(
    why: str,
    fresh_check: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On a release the fast paths were not tested on, nothing of the libraries is replaced,
    and a game is played, submitted and saved as on the fast path."""
    if why == "untested releases":
        monkeypatch.delenv(tested.OVERRIDE_VARIABLE, raising=False)
        for name in tested.TESTED:
            monkeypatch.setitem(tested.TESTED, name, ("0.0.1",))
    else:
        monkeypatch.setenv(tested.OVERRIDE_VARIABLE, "off")
    add_game(tmp_path / "test.db", "demo", duration_ms=30_000)
    with trio.fail_after(120):
        async with running_server(make_config(tmp_path, inline=True)) as server:
            now = server.service.clock.now_ms
            ann = await register(server, "ann")
            async with connect(server) as player:
                await player.login(ann)
                await player.enter("demo", ann["user_id"])
                (conn,) = server.socket.connections
                assert conn.hand_over is None
                assert type(conn.ws._stream_lock) is trio.StrictFIFOLock
                assert "send" not in vars(conn.ws._wsproto)  # wsproto's own method
                started = await player.start(now())
                points = await player.score(now, 12, 0.4)
                end = await player.recv_type("end_game")
                result = await player.call(
                    type="submit_result",
                    start_token=started["start_token"],
                    end_token=end["end_token"],
                    points=points,
                )
                assert result["type"] == "result" and result["accepted"], result
                assert result["score"] == 12
            board = await server.service.store.leaderboard("demo", now())
            assert [(e["name"], e["score"]) for e in board] == [("ann", 12)]


async def test_the_hand_over_closes_its_channel_whichever_order_the_reader_took() -> None:
    """trio-websocket's reader holds its channel with `async with`: entered on the hand-over
    (the reader started after `quicken`), the channel still closes when the reader ends."""
    send_end, receive_end = trio.open_memory_channel[str](1)
    async with MessageHandOver(send_end) as hand_over:
        await hand_over.send("a")
    assert receive_end.receive_nowait() == "a"
    with pytest.raises(trio.EndOfChannel):
        receive_end.receive_nowait()
