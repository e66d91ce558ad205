"""Network faults through a fault-injecting TCP proxy on 127.0.0.1: latency, resets mid-game,
half-closed sockets. Nothing is counted twice, every session task ends, and the server's task
and connection counts return to their idle values."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, HandshakeError

from scoreserver.server.app import Server

from ..conftest import Client, open_client, register

pytestmark = pytest.mark.engines


class FaultProxy:
    """Forwards TCP between clients and the server, with delay and on-demand faults."""

    def __init__(self, target_port: int, delay_s: float = 0.0):
        self.target_port = target_port
        self.delay_s = delay_s
        self.port = 0
        self.pairs: list[tuple[trio.SocketStream, trio.SocketStream]] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        self.pairs.append((client, server))
        async with client, server:  # a trio handler closes its own streams
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, server)
                nursery.start_soon(self._pump, server, client)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while chunk := await source.receive_some():
                if self.delay_s:
                    await trio.sleep(self.delay_s)
                await sink.send_all(chunk)
            await sink.send_eof()  # pass a half-close on
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            with trio.CancelScope(shield=True):
                await _reset(sink)

    async def reset_all(self) -> None:
        """Abort every proxied connection with a TCP RST, both ways."""
        for client, server in self.pairs:
            await _reset(client)
            await _reset(server)
        self.pairs.clear()


async def _reset(stream: trio.SocketStream) -> None:
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    await stream.aclose()


@asynccontextmanager
async def proxy_for(server: Server, delay_s: float = 0.0) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(server.ws_port, delay_s)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        yield proxy
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def via(proxy: FaultProxy) -> AsyncIterator[Client]:
    async with open_client(f"ws://127.0.0.1:{proxy.port}/") as ws:
        yield Client(ws)


async def idle(server: Server) -> None:
    """Wait until no connection, session task or running record is left."""
    with trio.fail_after(60):
        while True:
            tasks = sum(len(room.nursery.child_tasks) for room in server.rooms.rooms())
            if not server.socket.connections and not tasks and not server.service.running_by_user:
                return
            await trio.sleep(0.5)  # virtual: its callers run under autojump_clock


async def test_latency_both_ways_is_within_the_allowance(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        ann = await register(inline_server, "ann")
        now = inline_server.service.clock.now_ms
        async with proxy_for(inline_server, delay_s=0.15) as proxy, via(proxy) as client:
            await client.login(ann)
            await client.enter("demo", ann["user_id"])
            started = await client.start(now())
            claims = []
            for _ in range(10):
                await trio.sleep(1)  # game time (virtual)
                ts = now()
                reply = await client.call(type="point", client_ts=ts)
                assert reply["type"] == "point_accepted", reply
                claims.append({"token": reply["token"], "client_ts": ts})
            end = await client.recv_type("end_game")
            result = await client.call(
                type="submit_result",
                start_token=started["start_token"],
                end_token=end["end_token"],
                points=claims,
            )
            assert result["accepted"] and result["score"] == 10
        await idle(inline_server)


async def test_reset_mid_game_then_resume_counts_nothing_twice(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        bo = await register(inline_server, "bo")
        now = inline_server.service.clock.now_ms
        claims: list[dict[str, Any]] = []
        async with proxy_for(inline_server) as proxy:
            started: dict[str, Any] = {}
            try:
                async with via(proxy) as client:
                    await client.login(bo)
                    await client.enter("demo", bo["user_id"])
                    started = await client.start(now())
                    for n in range(6):
                        await trio.sleep(1)  # game time (virtual)
                        if n == 4:
                            await proxy.reset_all()  # the network drops mid-game
                        ts = now()
                        reply = await client.call(type="point", client_ts=ts)
                        claims.append({"token": reply["token"], "client_ts": ts})
            except Exception as exc:  # the client sees its connection fail
                assert "closed" in repr(exc).lower() or "broken" in repr(exc).lower(), exc
            assert len(claims) == 4
            await trio.sleep(2)  # virtual time (autojump_clock)
            async with via(proxy) as client:
                await client.login(bo)
                resumed = await client.call(type="resume", start_token=started["start_token"])
                # Whatever the last point's fate, seq says how many the server counted.
                counted = resumed["seq"]
                assert counted in (4, 5)
                for _ in range(3):
                    await trio.sleep(1)  # virtual time (autojump_clock)
                    ts = now()
                    reply = await client.call(type="point", client_ts=ts)
                    claims.append({"token": reply["token"], "client_ts": ts})
                assert reply["seq"] == counted + 3
                end = await client.recv_type("end_game")
                result = await client.call(
                    type="submit_result",
                    start_token=started["start_token"],
                    end_token=end["end_token"],
                    points=claims,
                )
                assert result["accepted"] and result["score"] == len(claims) == 7
        await idle(inline_server)


async def test_half_closed_sockets_end_their_connection_not_the_game(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):
        now = inline_server.service.clock.now_ms
        async with proxy_for(inline_server) as proxy, via(proxy) as client:
            await client.enter("demo", None)
            started = await client.start(now())
            session = inline_server.service.sessions[started["session_id"]]
            client_side, _ = proxy.pairs[0]
            await client.ws._stream.send_eof()  # the client stops sending, keeps reading
            with trio.fail_after(30):
                while session.player is not None:
                    await trio.sleep(0.1)  # the server noticed and let the connection go
            assert session.running  # the game's timer is the server's, not the socket's
            await session.finished.wait()
            assert session.end_token is not None
            del client_side
        await idle(inline_server)


async def test_many_players_dropping_at_random_leave_nothing_behind(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    import random

    rng = random.Random(3)
    now = inline_server.service.clock.now_ms
    with trio.fail_after(300):
        async with proxy_for(inline_server, delay_s=0.01) as proxy:

            async def player(n: int) -> None:
                try:
                    async with via(proxy) as client:
                        await client.enter("demo", None)
                        await client.start(now())
                        for _ in range(rng.randint(0, 8)):
                            await trio.sleep(rng.uniform(0.5, 2))
                            await client.call(type="point", client_ts=now())
                        if rng.random() < 0.5:
                            await client.recv_type("end_game")
                except (ConnectionClosed, HandshakeError, trio.BrokenResourceError, OSError):
                    pass  # the proxy's resets cut these players off, as they should

            async def chaos() -> None:
                for _ in range(3):
                    await trio.sleep(rng.uniform(2, 8))
                    await proxy.reset_all()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(chaos)
                for n in range(30):
                    nursery.start_soon(player, n)
        await idle(inline_server)
        assert all(not s.running for s in inline_server.service.sessions.values())
