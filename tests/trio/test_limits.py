"""Limits, each with a test: message size and rate, connections per address, handshake and
keepalive timeouts, logins, and peers that never read. A normal player is served throughout."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from scoreserver.server.app import Server

from ..conftest import add_game, connect, http, make_config, running_server
from ..rawws import RawSocket, close_code

pytestmark = pytest.mark.engines


@asynccontextmanager
async def limited(tmp_path: Path, **limits: Any) -> AsyncIterator[Server]:
    add_game(tmp_path / "test.db", "demo", duration_ms=30_000)
    async with running_server(make_config(tmp_path, inline=True, **limits)) as server:
        yield server


async def normal_game(server: Server, points: int = 10) -> None:
    """A well-behaved player's whole game: every point accepted, the end on time."""
    now = server.service.clock.now_ms
    async with connect(server) as player:
        await player.enter("demo", None)
        started = await player.start(now())
        for _ in range(points):
            await trio.sleep(1)  # virtual time (autojump_clock)
            reply = await player.call(type="point", client_ts=now())
            assert reply["type"] == "point_accepted", reply
        end = await player.recv_type("end_game")
        assert end["server_ts"] - started["server_ts"] == 30_000


async def test_an_oversized_message_closes_with_1009(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with limited(tmp_path) as server:
            raw, head = await RawSocket.open(server.ws_port)
            assert b" 101 " in head
            big = b'{"type": "whoami", "pad": "' + b"x" * (256 * 1024) + b'"}'

            async def send() -> None:
                # Refused at the frame's header: the server closes before taking it all.
                with contextlib.suppress(trio.BrokenResourceError):
                    await raw.send_frame(big)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                frame = await raw.read_frame()
            assert frame is not None and frame[0] == 0x8 and close_code(frame[1]) == 1009
            await raw.aclose()
            async with connect(server) as client:  # just under the limit is fine
                await client.send(type="whoami", pad="x" * (255 * 1024))
                assert (await client.recv())["type"] == "identity"


@pytest.mark.parametrize("declared", [256 * 1024 + 1, 2**32, 2**63 - 1])
async def test_a_frame_declared_too_long_is_refused_at_its_header(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, declared: int
) -> None:
    """A frame header declaring more than a message may hold, then nothing: closed with 1009
    at once, not held open until the keepalive gives up on it."""
    with trio.fail_after(30):
        async with limited(tmp_path) as server:
            raw, head = await RawSocket.open(server.ws_port)
            assert b" 101 " in head
            start = trio.current_time()
            # FIN, text; masked, 64-bit length; the masking key; no payload.
            await raw.stream.send_all(
                bytes([0x81, 0x80 | 127]) + declared.to_bytes(8, "big") + b"\x01\x02\x03\x04"
            )
            frame = await raw.read_frame()
            assert frame is not None and frame[0] == 0x8 and close_code(frame[1]) == 1009
            assert trio.current_time() - start < 1  # the keepalive would take 20 s and more
            await raw.aclose()
            async with connect(server) as client:
                assert (await client.call(type="whoami"))["type"] == "identity"


async def test_a_flood_just_over_the_rate_meets_the_1008_after_the_strikes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Messages at 1.5 times the rate: some pass (the bucket refills), the rest are refused,
    and after exactly `rate_strikes` refusals the connection is closed with 1008; a message
    let through now and then does not start the count again."""
    with trio.fail_after(120):
        async with limited(tmp_path, max_msg_rate=10, msg_burst=20, rate_strikes=30) as server:
            async with connect(server) as client:
                refused = passed = 0
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await trio.sleep(1 / 15)  # virtual time (autojump_clock)
                        reply = await client.call(type="whoami")
                        if reply["type"] == "error":
                            assert reply["code"] == "rate_limited"
                            refused += 1
                        else:
                            passed += 1
                assert closed.value.reason.code == 1008
                assert refused == 30 and passed > 20  # the burst, then about 10 a second


async def test_messages_sent_with_the_close_are_answered_before_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Messages and then a close frame, all in one write: each message is answered, then the
    close is answered (RFC 6455 lets a server finish what it was sending before its close)."""
    with trio.fail_after(30):
        async with limited(tmp_path) as server:
            raw, head = await RawSocket.open(server.ws_port)
            assert b" 101 " in head
            frames = b"".join(
                RawSocket.frame(json.dumps({"type": "whoami", "id": n}).encode()) for n in range(3)
            )
            await raw.stream.send_all(frames + RawSocket.frame(b"\x03\xe8", opcode=0x8))
            seen = []
            while (frame := await raw.read_frame()) is not None:
                seen.append(frame[0])
                if frame[0] == 0x8:
                    assert close_code(frame[1]) == 1000
                    break
                assert json.loads(frame[1])["id"] == len(seen) - 1
            assert seen == [0x1, 0x1, 0x1, 0x8]
            await raw.aclose()


async def test_message_rate_limit_then_1008(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        async with limited(tmp_path, max_msg_rate=10, msg_burst=20, rate_strikes=5) as server:
            async with connect(server) as client:
                for n in range(20):  # the bucket's depth
                    assert (await client.call(type="whoami", id=n))["type"] == "identity"
                refused = await client.call(type="whoami", id="over")
                assert refused["type"] == "error" and refused["code"] == "rate_limited"
                await trio.sleep(2.0)  # the bucket is full again (virtual time): forgiven
                for _ in range(20):
                    assert (await client.call(type="whoami"))["type"] == "identity"
                for _ in range(5):
                    assert (await client.call(type="whoami"))["code"] == "rate_limited"
                await client.send(type="whoami")
                with pytest.raises(Exception) as closed:  # noqa: PT011 - trio-websocket's own
                    await client.recv()
                assert closed.value.reason.code == 1008  # type: ignore[attr-defined]
            await normal_game(server, 3)


async def test_rate_limit_zero_turns_it_off(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        async with limited(tmp_path, max_msg_rate=0) as server, connect(server) as client:
            for _ in range(500):
                await client.send(type="whoami")
            replies = [await client.recv() for _ in range(500)]
            assert all(r["type"] == "identity" for r in replies)


async def test_connections_per_address(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with limited(tmp_path, max_conns_per_addr=3) as server:
            open_ones = [await RawSocket.open(server.ws_port) for _ in range(3)]
            assert all(b" 101 " in head for _, head in open_ones)
            refused, head = await RawSocket.open(server.ws_port)
            assert b" 429 " in head
            await refused.aclose()
            await open_ones[0][0].aclose()
            while len(server.socket.connections) > 2:
                await trio.sleep(0.01)
            again, head = await RawSocket.open(server.ws_port)
            assert b" 101 " in head
            for raw in [again, *(r for r, _ in open_ones[1:])]:
                await raw.aclose()


async def test_connection_caps_hold_when_handshakes_arrive_at_once(tmp_path: Path) -> None:
    """The caps are counted before the first await: 300 handshakes at once from one address
    (real time: their handshakes interleave) open exactly the per-address cap."""
    with trio.fail_after(60):
        async with limited(tmp_path, max_conns_per_addr=10) as server:
            opened: list[tuple[RawSocket, bytes]] = []

            async def one() -> None:
                opened.append(await RawSocket.open(server.ws_port))

            async with trio.open_nursery() as nursery:
                for _ in range(300):
                    nursery.start_soon(one)
            codes = Counter(head.split(b" ")[1] for _, head in opened)
            assert codes == {b"101": 10, b"429": 290}
            for raw, _ in opened:
                await raw.aclose()
            while server.socket.connections:  # until the server has seen each close
                await trio.testing.wait_all_tasks_blocked(0.01)
            again, head = await RawSocket.open(server.ws_port)
            assert b" 101 " in head
            await again.aclose()


async def test_no_permessage_deflate(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with limited(tmp_path) as server:
            raw, head = await RawSocket.open(
                server.ws_port,
                ["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"],
            )
            assert b" 101 " in head and b"sec-websocket-extensions" not in head.lower()
            await raw.aclose()


async def test_half_open_handshakes_are_dropped_and_play_goes_on(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        async with limited(tmp_path, max_conns_per_addr=0, handshake_timeout_s=10) as server:
            stalled = [await trio.open_tcp_stream("127.0.0.1", server.ws_port) for _ in range(200)]
            for stream in stalled[:100]:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            await normal_game(server)  # 30 s: well past the handshake timeout
            for stream in stalled:
                assert await stream.receive_some() == b""  # the server hung up
                await stream.aclose()


async def test_a_peer_that_stops_answering_pings_is_closed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        async with limited(tmp_path, keepalive_interval_s=5, keepalive_timeout_s=5) as server:
            raw, _ = await RawSocket.open(server.ws_port)
            frame = await raw.read_frame()
            assert frame is not None and frame[0] == 0x9  # a ping, which we ignore
            while (frame := await raw.read_frame()) is not None:
                assert frame[0] in (0x8, 0x9)  # then a close, then the end of the stream
            assert not server.socket.connections
            await raw.aclose()
            async with connect(server) as client:  # a client that answers pings stays
                await trio.sleep(30)  # virtual time (autojump_clock)
                assert (await client.call(type="whoami"))["type"] == "identity"


async def test_a_peer_that_never_reads_stalls_nobody(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(300):
        async with limited(tmp_path, max_msg_rate=0, keepalive_interval_s=0) as server:
            raw, _ = await RawSocket.open(server.ws_port)
            request = json.dumps({"type": "whoami", "id": "i" * 64}).encode()
            batch = b"".join(raw.frame(request) for _ in range(1000))

            async def flood() -> None:
                # Requests whose replies it never reads, until the server gives up on it.
                try:
                    for _ in range(1000):
                        await raw.stream.send_all(batch)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            frames: list[tuple[int, bytes]] = []

            async def reads_again_after_the_timeout() -> None:
                # It starts reading the moment the server gives up on a send: had the server
                # then written a close frame (after a frame it may have cut short), it would
                # arrive now.
                while server.socket.connections and not any(
                    conn.closed for conn in server.socket.connections
                ):
                    await trio.sleep(0.01)
                try:
                    while (frame := await raw.read_frame()) is not None:
                        frames.append(frame)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                nursery.start_soon(reads_again_after_the_timeout)
                await normal_game(server)  # on time, while the flooder's replies back up
                while server.socket.connections:
                    # The server drops the peer that does not read.
                    await trio.sleep(1)  # virtual time (autojump_clock)
            # What it was sent: whole replies, perhaps one cut short by the timeout, and then
            # nothing: no close frame written after (or into) a cut frame.
            await raw.aclose()
            assert frames, "some replies were sent before it stopped reading"
            assert {opcode for opcode, _ in frames} == {0x1}, "text replies only, no close"
            assert all(json.loads(payload)["type"] == "identity" for _, payload in frames)


async def test_logins_are_limited_per_account_and_address(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with running_server(make_config(tmp_path)) as server, http(server) as api:
            await api.post("/api/register", json={"name": "target", "password": "right password"})
            for _ in range(10):
                wrong = await api.post(
                    "/api/login", json={"name": "target", "password": "wrong guess"}
                )
                assert wrong.status_code == 401
            locked = await api.post(
                "/api/login", json={"name": "target", "password": "right password"}
            )
            assert locked.status_code == 429 and locked.json()["error"] == "rate_limited"
            # Another account from the same address still works, until the address limit.
            await api.post("/api/register", json={"name": "other", "password": "right password"})
            statuses = []
            for _ in range(25):
                reply = await api.post(
                    "/api/login", json={"name": "other", "password": "right password"}
                )
                statuses.append(reply.status_code)
            # 30 per address: 2 registrations + 10 failed logins came first.
            assert statuses == [200] * 18 + [429] * 7


async def test_connections_per_process(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with limited(tmp_path, max_conns=2, max_conns_per_addr=0) as server:
            first, head1 = await RawSocket.open(server.ws_port)
            second, head2 = await RawSocket.open(server.ws_port)
            third, head3 = await RawSocket.open(server.ws_port)
            assert b" 101 " in head1 and b" 101 " in head2 and b" 429 " in head3
            for raw in (first, second, third):
                await raw.aclose()


async def test_registrations_share_the_address_budget(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with running_server(make_config(tmp_path)) as server, http(server) as api:
            statuses = []
            for n in range(31):
                reply = await api.post(
                    "/api/register", json={"name": f"bot{n}", "password": "p" * 10}
                )
                statuses.append(reply.status_code)
            assert statuses[:30] == [201] * 30
            assert statuses[30] == 429
