"""The game socket's stream (`server/transport.py`) on real TCP connections on 127.0.0.1: the
direct reads and writes that skip trio's yield when nothing needs waiting for, and what they
must still do: wait when there is nothing to read, finish a write the kernel took only part
of, yield after a run of reads so that a streaming peer cannot hold the loop, and say closed
or broken the way trio's own streams do."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from scoreserver.server.transport import MAX_READS_WITHOUT_YIELD, ObservedStream


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[ObservedStream, trio.SocketStream]]:
    """(the server's side, wrapped as the game socket wraps it; the peer's plain stream)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        peer = await trio.open_tcp_stream("127.0.0.1", port)
        ours = ObservedStream(await listeners[0].accept())
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
            assert ours._direct is not None  # plain TCP: the direct path is the one tested
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
