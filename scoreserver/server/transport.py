"""The game socket's byte streams, as trio-websocket reads them and as we see them.

Every accepted connection, on both ports, is first a `ClientStream`: the socket, and who the
client is (the TCP peer, or what a trusted proxy's PROXY header names; `ClientAddresses`
adds the forwarding headers of the request). Under TLS the TLS stream runs over it.

trio-websocket serves listeners it is given (`WebSocketServer`). Ours hand it each accepted
connection wrapped in an `ObservedStream`, which passes every byte through unchanged and gives
the server, through public calls only, the three things trio-websocket does not:

* the client's address (for the per-address limits and flags);
* the `Host` of the opening handshake (the same-origin check needs it; wsproto keeps it off
  the request's headers), read from the first bytes as they pass;
* a way to drop the connection without a close handshake (`drop`), for a peer that does not
  read or a frame cut short.

trio-websocket names a connection whose stream is not a plain socket by the stream's
`repr()`; ours is a key into the registry (`Streams`) that the connection handler looks up.

On a plain TCP socket (not TLS) the stream also reads and writes the socket itself when that
needs no wait: a read that finds data, and a write the kernel takes whole, return without
yielding to the scheduler. trio's own socket calls yield once even then, and at moderate load
those yields were two of the nine task steps an accepted point cost (a step is ~50 us of the
loop's time here). Only a read that must wait waits (`wait_readable`), and at most
`MAX_READS_WITHOUT_YIELD` reads in a row skip the yield, so a peer streaming bytes cannot hold
the loop.

Two more yields a point were trio-websocket's own: its send lock (a trio lock yields when it is
free, too) and its reader's hand-over of each message into its queue. `quicken` replaces both
on each accepted connection with the same thing minus the yield when nothing needs waiting for
(the lock is still FIFO and exclusive, the queue still holds one message and makes the reader
wait), and lets wsproto's connection object read and write the short text frames of a game
without its general parser (`server/frames.py`). The hand-over can also give a message to the
game socket right in the reader's step (`MessageHandOver.take`): a point goes to its
session's inbox without waking the connection's handler, when nothing of that connection's
waits for the handler.

They are trio-websocket's private attributes: they are replaced only on the releases listed in
`server/tested.py` (the ones the differential tests passed on), and only if each is exactly
what that release made, so any other release keeps its own (slower, never wrong);
`tests/trio/test_transport.py` says so when that happens, and serves a whole game on the
plain path.

Why one module of this size: everything below the WebSocket protocol (listeners, PROXY
headers, direct reads and writes, trio-websocket's lock and hand-over) must agree on one
stream object; the parts are in the order a byte meets them.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import ssl
import weakref
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import WebSocketRequest, WebSocketServer

from scoreserver.server.frames import close_frame_at, speed_up
from scoreserver.server.tested import fast_path_allowed
from scoreserver.wire.addresses import (
    NEED_MORE,
    AddressError,
    HeaderName,
    ProxyHeader,
    TrustedProxies,
    canonical,
    client_address,
    read_proxy_header,
)

logger = logging.getLogger(__name__)

# The most of a handshake read for its Host (browsers send well under 4 KiB): a Host past it
# is not read, whatever the chunks, and a browser's handshake without one is refused.
HEAD_LIMIT = 16 * 1024
_numbers = itertools.count(1)
READ_SIZE = 65536
# A refused body still coming in is read and dropped for this long, up to this much, before
# the connection is closed (ClientStream.linger_then_close).
LINGER_S = 2.0
# How long a peer's close waits for the messages that came with it to be answered.
CLOSE_WAIT_S = 2.0
LINGER_BYTES = 64 * 1024 * 1024
MAX_READS_WITHOUT_YIELD = 16


class ClientStream(trio.abc.HalfCloseableStream):
    """One accepted TCP connection: its bytes, read and written directly where that needs no
    wait (see the module docstring), and who sent them. The client is the TCP peer, or, when
    the peer is a trusted proxy (`ClientAddresses.proxies`) and its first bytes are a PROXY
    header (v1 or v2), the source that header names; the header is taken off the stream, and
    one that breaks the format is answered with a 400 and the connection closed. Both ports'
    connections are these: under TLS, the TLS stream runs over one (a PROXY header comes
    before TLS: TLS passthrough)."""

    def __init__(self, raw: trio.SocketStream, proxies: TrustedProxies | None = None):
        self.raw = raw
        self.socket = raw.socket  # hypercorn reads the peer and the port from it
        name = raw.socket.getpeername()
        self.peer_key: tuple[str, int] = (str(name[0]), int(name[1]))
        self.peer = canonical(self.peer_key[0])
        self.proxy_source: str | None = None
        # The first bytes of a trusted proxy's connection, until they are known to be (or not
        # to be) a PROXY header; None once they are.
        self._preamble: bytearray | None = (
            bytearray() if proxies is not None and proxies.trusts(self.peer) else None
        )
        self._unread = b""
        self._direct: trio.socket.SocketType | None = raw.socket if os.name == "posix" else None
        self._reads_without_yield = 0

    @property
    def client(self) -> str:
        """The client as the TCP connection tells it (forwarding headers come later)."""
        return self.proxy_source or self.peer

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        size = max_bytes or READ_SIZE
        if self._preamble is not None:
            self._unread = await self._read_preamble(self._preamble)
            self._preamble = None
        if self._unread:
            data, self._unread = self._unread[:size], self._unread[size:]
            return data
        if self._direct is None:
            return await self.raw.receive_some(size)
        return await self._receive_direct(size)

    async def _read_preamble(self, buffer: bytearray) -> bytes:
        """The bytes after a PROXY header, or all read when there is none."""
        while True:
            data = await (
                self.raw.receive_some(READ_SIZE)
                if self._direct is None
                else self._receive_direct(READ_SIZE)
            )
            if not data:
                return bytes(buffer)  # the end: what came is passed on (and refused above)
            buffer += data
            try:
                header = read_proxy_header(buffer)
            except AddressError as exc:
                logger.info("refused a connection from %s: %s", self.peer, exc)
                await self._refuse(str(exc))
                raise trio.BrokenResourceError(f"a malformed PROXY header: {exc}") from None
            if header is NEED_MORE:
                continue
            if header is None:
                return bytes(buffer)
            assert isinstance(header, ProxyHeader)
            self.proxy_source = header.source
            return bytes(buffer[header.length :])

    async def _refuse(self, why: str) -> None:
        body = json.dumps({"error": "bad_request", "message": why}).encode()
        head = (
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        with trio.move_on_after(1):
            try:
                await self.raw.send_all(head.encode() + body)
            except trio.BrokenResourceError:
                pass
        # Closed here: whoever reads this stream sees it broken and need not close it in time.
        await self.raw.aclose()

    async def linger_then_close(
        self, within_s: float = LINGER_S, most_bytes: int = LINGER_BYTES
    ) -> None:
        """Close after a refusal that left a request body unread (a 413): the end of our side
        first (the answer is whole), then what the client still sends is read and dropped, so
        that it finishes its write and reads the answer instead of blocking on a full window;
        then the connection is closed, at most `within_s` later (nginx's lingering close)."""
        taken = 0
        with trio.move_on_after(within_s):
            try:
                await self.raw.send_eof()
                while taken < most_bytes:
                    try:
                        data = await (
                            self._receive_direct(READ_SIZE)
                            if self._direct is not None
                            else self.raw.receive_some(READ_SIZE)
                        )
                    except trio.BusyResourceError:
                        await trio.sleep(0.05)  # the HTTP server reads (and drops) it itself
                        continue
                    if not data:
                        break
                    taken += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await self.raw.aclose()

    async def _receive_direct(self, max_bytes: int) -> bytes:
        sock = self._direct
        assert sock is not None
        if self._reads_without_yield >= MAX_READS_WITHOUT_YIELD:
            self._reads_without_yield = 0
            await trio.lowlevel.checkpoint()
        while True:
            fd = sock.fileno()  # read again after every wait: -1 once closed, never reused
            if fd < 0:
                raise trio.ClosedResourceError("the connection was closed")
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                self._reads_without_yield = 0
                await trio.lowlevel.wait_readable(sock)  # ClosedResourceError if closed
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"the connection broke: {exc}") from exc
            self._reads_without_yield += 1
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self._direct
        if sock is not None and data:
            fd = sock.fileno()
            if fd >= 0:  # closed: trio's call below says so
                try:
                    sent = os.write(fd, data)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    raise trio.BrokenResourceError(f"the connection broke: {exc}") from exc
                if sent == len(data):
                    return  # all in the kernel's buffer: nothing to wait for
                data = memoryview(data)[sent:]
        await self.raw.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.raw.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.raw.send_eof()

    async def aclose(self) -> None:
        await self.raw.aclose()


class ObservedStream(trio.abc.HalfCloseableStream):
    """One game-socket connection as trio-websocket reads it: its bytes pass through; its
    client (`ClientStream`) and the Host of its handshake are kept."""

    def __init__(self, inner: ClientStream | trio.SSLStream[ClientStream]):
        self.inner = inner
        self.transport: ClientStream = (
            inner.transport_stream if isinstance(inner, trio.SSLStream) else inner
        )
        self.key = f"scoreserver-connection-{next(_numbers)}"
        self.host: str | None = None
        self._head: bytearray | None = bytearray()
        self._linger = False
        # A peer's close frame that came in one read after messages: handed on only once
        # `settled` says they were answered (see receive_some).
        self._later: bytes | None = None
        self.settled: Callable[[], Coroutine[Any, Any, None]] | None = None

    @property
    def peer(self) -> str:
        """The client as its TCP connection names it (`ClientStream.client`)."""
        return self.transport.client

    def __repr__(self) -> str:
        return self.key

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._later is not None:
            later, self._later = self._later, None
            if self.settled is not None:
                with trio.move_on_after(CLOSE_WAIT_S):
                    await self.settled()
            return later
        data = await self.inner.receive_some(max_bytes)
        if self._head is not None:
            self._see(data)
        elif self.settled is not None and b"\x88" in data:
            # Messages and the peer's close in one read: trio-websocket would answer the close
            # (and refuse every reply after it) before the handler answered the messages. The
            # close goes on once they are answered (RFC 6455 lets a server finish first).
            at = close_frame_at(data)
            if at:
                self._later = bytes(data[at:])
                return data[:at]
        return data

    def _see(self, data: bytes | bytearray) -> None:
        """Read Host from the handshake's first HEAD_LIMIT bytes, however they are split."""
        assert self._head is not None
        self._head += data
        head = self._head[:HEAD_LIMIT]
        end = head.find(b"\r\n\r\n")
        if end < 0 and len(self._head) < HEAD_LIMIT:
            return  # more of the head is to come
        for line in bytes(head[: end if end >= 0 else HEAD_LIMIT]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"host":
                self.host = value.strip().decode("latin-1")
                break
        self._head = None  # the handshake is over: the rest is frames, not looked at

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self.inner, ClientStream):
            await self.inner.send_eof()

    def linger_on_close(self) -> None:
        """A frame was refused before its payload was read: when trio-websocket closes this
        stream, read and drop what the client still sends for a moment first, so that it
        finishes its write and reads the close frame instead of meeting a reset."""
        self._linger = True

    async def aclose(self) -> None:
        if self._linger:
            await self.transport.linger_then_close()
            return
        await self.inner.aclose()

    async def drop(self) -> None:
        """Close the TCP connection without writing anything more to it."""
        await self.transport.raw.aclose()


class Streams:
    """The connections accepted and not yet closed, by the name trio-websocket gives them."""

    def __init__(self) -> None:
        self._by_key: weakref.WeakValueDictionary[str, ObservedStream] = (
            weakref.WeakValueDictionary()
        )

    def add(self, stream: ObservedStream) -> None:
        self._by_key[stream.key] = stream

    def of(self, request: WebSocketRequest) -> ObservedStream:
        return self._by_key[str(request.remote)]


@dataclass(slots=True)
class ClientAddresses:
    """Who a connection's client is, on both ports (`--trusted-proxy`, `--forwarded-header`;
    wire/addresses.py): `resolve` it from a connection's `ClientStream` and its request's
    headers. `http` holds the HTTP port's open connections by their TCP peer's address and
    port, which is how hypercorn names a request's connection (`scope["client"]`)."""

    proxies: TrustedProxies = field(default_factory=TrustedProxies)
    header: HeaderName = "x-forwarded-for"
    http: weakref.WeakValueDictionary[tuple[str, int], ClientStream] = field(
        default_factory=weakref.WeakValueDictionary
    )

    def resolve(
        self, peer: str, proxy_source: str | None, headers: Iterable[tuple[bytes, bytes]]
    ) -> str:
        """The client of a request from `peer` (AddressError: a header that cannot be read)."""
        if not self.proxies:
            return canonical(peer)
        wanted = self.header.encode()
        values = [v.decode("latin-1") for k, v in headers if k.lower() == wanted]
        return client_address(
            peer, self.proxies, proxy_source=proxy_source, header=self.header, values=values
        )


class ClientListener(trio.abc.Listener[ClientStream]):
    """Accepts on a socket listener, each connection a `ClientStream`. A connection already
    reset when it is accepted (a balancer's TCP health check does that: connect, close) has
    no peer to name: it is closed and the next one accepted."""

    def __init__(self, inner: trio.SocketListener, proxies: TrustedProxies):
        self.inner = inner
        self.proxies = proxies

    async def accept(self) -> ClientStream:
        while True:
            raw = await self.inner.accept()
            try:
                return ClientStream(raw, self.proxies)
            except OSError:  # ENOTCONN from getpeername: gone before it was accepted
                await raw.aclose()

    async def aclose(self) -> None:
        await self.inner.aclose()


class ObservingListener(trio.abc.Listener[ObservedStream]):
    """Accepts on a socket listener and hands trio-websocket each connection as an
    `ObservedStream` (over TLS when there is a context), registered in `streams`."""

    def __init__(
        self,
        inner: trio.SocketListener,
        streams: Streams,
        ssl_context: ssl.SSLContext | None,
        proxies: TrustedProxies,
    ):
        self.inner = ClientListener(inner, proxies)
        self.streams = streams
        self.ssl_context = ssl_context

    async def accept(self) -> ObservedStream:
        client = await self.inner.accept()
        stream = ObservedStream(tls_over(client, self.ssl_context))
        self.streams.add(stream)
        return stream

    async def aclose(self) -> None:
        await self.inner.aclose()


def tls_over(
    stream: ClientStream, ssl_context: ssl.SSLContext | None
) -> ClientStream | trio.SSLStream[ClientStream]:
    if ssl_context is None:
        return stream
    return trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=True)


class GameSocketServer:
    """What `serve` started: the port it listens on."""

    def __init__(self, port: int):
        self.port = port


async def bind_listeners(
    host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024
) -> list[trio.SocketListener]:
    """Listening sockets on `host`:`port`. `reuse_port`: SO_REUSEPORT, so that the workers of
    one node listen on one port and the kernel spreads connections among them (Linux)."""
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    infos = await trio.socket.getaddrinfo(
        host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    listeners = []
    for family, type_, proto, _, address in infos:
        sock = trio.socket.socket(family, type_, proto)
        try:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
            if family == trio.socket.AF_INET6:
                sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
            await sock.bind(address)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        listeners.append(trio.SocketListener(sock))
    return listeners


def bound_port(listeners: list[trio.SocketListener]) -> int:
    return int(listeners[0].socket.getsockname()[1])


async def serve_game_socket(
    handler: Callable[[WebSocketRequest], Coroutine[Any, Any, None]],
    streams: Streams,
    sockets: list[trio.SocketListener],
    ssl_context: ssl.SSLContext | None,
    proxies: TrustedProxies,
    *,
    task_status: trio.TaskStatus[GameSocketServer] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """trio-websocket's server on our listeners, bound beforehand (`bind_listeners`; see the
    module docstring)."""
    server = WebSocketServer(
        handler,
        # Typed for trio's listeners; any listener serves (its `listeners` names others by repr).
        [ObservingListener(s, streams, ssl_context, proxies) for s in sockets],  # type: ignore[misc]
        **options,
    )
    bound = bound_port(sockets)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        task_status.started(GameSocketServer(bound))


class _QuickLock:
    """trio-websocket's send lock, taken without a yield when nobody holds or waits for it
    (trio's locks yield even then): the same order (FIFO), one step less a reply."""

    def __init__(self) -> None:
        self._lock = trio.StrictFIFOLock()

    def locked(self) -> bool:
        return self._lock.locked()

    async def __aenter__(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


class MessageHandOver:
    """trio-websocket's reader's end of its message channel, in its place (`quicken`).

    It hands a message to the connection's handler without a yield when the channel has room
    (the reader reads on, or waits for bytes, right after), and it can give a message to
    `take` instead, right in the reader's step: the game socket carries a point to its
    session that way (see `GameSocket._take_point`), one task step less a point. `pending`
    counts the messages handed to the handler and not yet done with (the handler calls
    `done` after each), and `take` is offered a message only when there are none: nothing it
    takes overtakes a message in the channel or in the handler's hands.
    """

    __slots__ = ("_answered", "_channel", "_ws", "pending", "take")

    def __init__(self, channel: trio.MemorySendChannel[Any], ws: Any = None) -> None:
        self._channel = channel
        self._ws = ws
        self.pending = 0
        self.take: Callable[[str | bytes], bool] | None = None
        self._answered: trio.Event | None = None

    async def send(self, value: Any) -> None:
        take = self.take
        if (
            take is not None
            and not self.pending
            # Once trio-websocket closes the connection (past the size limit it reads on to
            # the end of what it read, its queue's receiving end closed), nothing is taken:
            # the channel refuses it, as trio-websocket's own did.
            and (self._ws is None or self._ws.closed is None)
            and take(value)
        ):
            return
        self.pending += 1
        try:
            self._channel.send_nowait(value)
        except trio.WouldBlock:
            await self._channel.send(value)

    def done(self) -> None:
        """The handler is done with a message it got from the channel."""
        self.pending -= 1
        if not self.pending and self._answered is not None:
            self._answered.set()

    async def wait_answered(self) -> None:
        """Return once the handler is done with every message it was handed."""
        while self.pending:
            self._answered = trio.Event()
            await self._answered.wait()

    async def aclose(self) -> None:
        await self._channel.aclose()

    # trio-websocket's reader holds its channel open with `async with` for its whole life:
    # whether it entered the channel before this hand-over took its place or enters this, the
    # channel is closed when the reader ends.
    async def __aenter__(self) -> MessageHandOver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def quicken(ws: Any, stream: ObservedStream | None = None) -> MessageHandOver | None:
    """Two yields less a point on an accepted connection (see `_QuickLock`,
    `MessageHandOver`), and its short text frames read and written without wsproto's general
    path (`frames.speed_up`). They are trio-websocket's own attributes, replaced only where
    they are what it made and its message channel is empty (checked: a version that changed
    them keeps its own); None when the lock and channel were left as they were. A frame
    refused at its header (too long) makes `stream` close with a lingering close."""
    if fast_path_allowed("wsproto"):
        limit = getattr(ws, "_max_message_size", None)
        speed_up(
            getattr(ws, "_wsproto", None),
            limit if isinstance(limit, int) else None,
            stream.linger_on_close if stream is not None else None,
        )
    if not fast_path_allowed("trio-websocket"):
        return None
    lock = getattr(ws, "_stream_lock", None)
    channel = getattr(ws, "_send_channel", None)
    if not (
        type(lock) is trio.StrictFIFOLock
        and not lock.locked()
        and type(channel) is trio.MemorySendChannel
    ):
        return None
    state = channel.statistics()
    if state.current_buffer_used or state.tasks_waiting_send:
        return None  # a message already waits for the handler: its count would be wrong
    hand_over = MessageHandOver(channel, ws)
    ws._stream_lock = _QuickLock()
    ws._send_channel = hand_over
    return hand_over
