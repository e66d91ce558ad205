"""Short text frames read and written without wsproto's general machinery.

wsproto parses every frame with a generator, a byte buffer, a header tuple, a masker object
and an incremental UTF-8 decoder: about 20 us a received point here, and 9 us to frame each
reply, a tenth of what the event loop spends on a point. Nearly every frame of a game is the
simplest kind: one whole text message in one frame, masked (the client's), no extension, under
64 KiB. `speed_up` lets an accepted connection's wsproto object read and write those itself
and hands everything else to wsproto unchanged:

* reading, only at a frame boundary (wsproto holds no bytes and no message in progress) and
  in the open state: the whole frames at the front of what was read are unmasked and decoded
  here and queued as wsproto's own `TextMessage` events; wsproto gets the rest, from the
  first frame that is anything else (a control frame, a fragment, binary, unmasked, reserved
  bits, a length in more bytes than it needs or over 16 bits, invalid UTF-8, or cut short).
  So wsproto still answers every frame it would refuse, with its own close code;
* writing, a whole text message in the open state with nothing fragmented in progress: the
  same bytes wsproto makes (a server's frames are not masked);
* a frame wsproto refuses (bad UTF-8, a protocol error) is answered with a close frame of its
  code, 1007 or 1002, before the connection is dropped. wsproto reports such a frame as a
  `CloseConnection` event but leaves the connection open, so trio-websocket dropped the
  connection without a word; marked as closing (as a peer's close frame marks it),
  trio-websocket answers it with that code, as it answers a peer's close.

The events come out in the order the frames came in, and a connection's state, limits and
errors are wsproto's and trio-websocket's as before, a refused frame now answered with its
close code (`tests/unit/test_frames.py` feeds the same bytes, split anywhere, to a sped-up and
a plain wsproto and compares). wsproto's attributes
looked at are private: `speed_up` changes nothing unless they are what wsproto 1.3 (the
version tested) has, and says so by returning False; `tests/unit/test_frames.py` then fails
on `assert speed_up(...)`, so an upgrade that changed them is seen.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import CloseConnection, Event, TextMessage
from wsproto.frame_protocol import Buffer, FrameDecoder, FrameProtocol, MessageDecoder

_OPEN = ConnectionState.OPEN
_REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING
_TEXT_WHOLE = 0x81  # FIN, no reserved bit, opcode 1 (text)


def _unmask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    keys = key * ((n >> 2) + 1)
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys[:n], "big")).to_bytes(n, "big")


def close_frame_at(data: bytes | bytearray) -> int | None:
    """Where a close frame begins in `data`, when whole frames come before it there (0: it
    is the first); None when there is none, or a frame before it is cut short."""
    i, n = 0, len(data)
    while n - i >= 2:
        first, second = data[i], data[i + 1]
        if first & 0x0F == 0x8:
            return i
        length, j = second & 0x7F, i + 2
        if length == 126:
            if n - j < 2:
                return None
            length, j = int.from_bytes(data[j : j + 2], "big"), j + 2
        elif length == 127:
            if n - j < 8:
                return None
            length, j = int.from_bytes(data[j : j + 8], "big"), j + 8
        if second & 0x80:
            j += 4
        i = j + length
    return None


def take_text_frames(data: bytes, append: Callable[[Event], None]) -> int:
    """Decode the whole, masked, unfragmented text frames under 64 KiB at the front of
    `data`, appending a `TextMessage` for each; return how many bytes they took."""
    n = len(data)
    i = 0
    while n - i >= 6:
        if data[i] != _TEXT_WHOLE:
            break
        length = data[i + 1] ^ 0x80  # the mask bit must be set: unmasked gives 128 and up
        if length < 126:
            start = i + 6
        elif length == 126:
            if n - i < 8:
                break
            length = (data[i + 2] << 8) | data[i + 3]
            if length < 126:
                break  # a length in more bytes than it needs: wsproto refuses it
            start = i + 8
        else:
            break  # 64-bit lengths and unmasked frames
        end = start + length
        if end > n:
            break
        try:
            text = _unmask(data[start:end], data[start - 4 : start]).decode("utf-8")
        except UnicodeDecodeError:
            break  # wsproto closes with 1007
        append(TextMessage(data=text))
        i = end
    return i


def text_frame(text: str) -> bytes:
    """One whole, unmasked text frame (a server's), as wsproto frames it."""
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        return bytes((_TEXT_WHOLE, n)) + payload
    if n < 65536:
        return bytes((_TEXT_WHOLE, 126, n >> 8, n & 0xFF)) + payload
    return bytes((_TEXT_WHOLE, 127)) + n.to_bytes(8, "big") + payload


class ShortFrames:
    """The reading and writing of one sped-up connection (see the module docstring)."""

    __slots__ = (
        "_buffer",
        "_conn",
        "_decoder",
        "_events",
        "_max",
        "_messages",
        "_on_refuse",
        "_proto",
        "_receive",
        "_send",
    )

    def __init__(
        self,
        ws: WSConnection,
        connection: Connection,
        proto: FrameProtocol,
        max_message_bytes: int | None = None,
        on_refuse: Callable[[], None] | None = None,
    ) -> None:
        self._max = max_message_bytes
        self._on_refuse = on_refuse
        decoder = proto._frame_decoder
        self._conn = connection
        self._proto = proto
        self._decoder = decoder
        self._buffer = decoder.buffer.buffer
        self._messages = proto._message_decoder
        self._receive = ws.receive_data
        self._send = ws.send
        self._events = ws.events

    def receive_data(self, data: bytes | None) -> None:
        if (
            data
            and self._conn._state is _OPEN
            and not self._buffer
            and self._decoder.header is None
            and self._messages.opcode is None
        ):
            taken = take_text_frames(data, self._conn._events.append)
            if taken:
                if taken == len(data):
                    return
                data = data[taken:]
        self._receive(data)

    def events(self) -> Generator[Event, None, None]:
        for event in self._events():
            if type(event) is CloseConnection and self._conn._state is _OPEN:
                # wsproto refused a frame: it closes only on a peer's close frame, which
                # sets the state. Set it here too, so that trio-websocket answers with the
                # refusal's code (1002, 1007) before dropping the connection.
                self._conn._state = _REMOTE_CLOSING
            yield event
        header = self._decoder.header  # parsed as the events above were read
        if (
            self._max is not None
            and header is not None
            and header.payload_len > self._max
            and self._conn._state is _OPEN
        ):
            # A frame declared longer than any message may be: refused at its header (1009),
            # not after a payload that may never come (trio-websocket counts what arrives).
            self._conn._state = _REMOTE_CLOSING
            if self._on_refuse is not None:
                self._on_refuse()
            yield CloseConnection(code=1009, reason="message too big")

    def send(self, event: Event) -> bytes:
        if (
            type(event) is TextMessage
            and event.message_finished
            and self._conn._state is _OPEN
            and self._proto._outbound_opcode is None
        ):
            return text_frame(event.data)
        return self._send(event)


def speed_up(
    ws: Any,
    max_message_bytes: int | None = None,
    on_refuse: Callable[[], None] | None = None,
) -> bool:
    """Read and write short text frames of this open server connection without wsproto's
    general path (see the module docstring); False, and nothing changed, unless `ws` is a
    wsproto connection as wsproto 1.3 makes it, open, with no extension. A frame whose header
    declares more than `max_message_bytes` is refused at the header (1009), and `on_refuse`
    called (the stream then closes with a lingering close)."""
    if type(ws) is not WSConnection:
        return False
    connection = ws.connection
    if type(connection) is not Connection or connection.client:
        return False
    proto = getattr(connection, "_proto", None)
    if type(proto) is not FrameProtocol or proto.extensions:
        return False
    decoder = getattr(proto, "_frame_decoder", None)
    if not (
        type(decoder) is FrameDecoder
        and type(getattr(decoder, "buffer", None)) is Buffer
        and type(getattr(decoder.buffer, "buffer", None)) is bytearray
        and hasattr(decoder, "header")
        and "payload_len" in getattr(type(decoder.header), "_fields", ("payload_len",))
        and type(getattr(proto, "_message_decoder", None)) is MessageDecoder
        and hasattr(proto._message_decoder, "opcode")
        and hasattr(proto, "_outbound_opcode")
        and type(getattr(connection, "_events", None)) is deque
        and getattr(connection, "_state", None) is _OPEN
    ):
        return False
    frames = ShortFrames(ws, connection, proto, max_message_bytes, on_refuse)
    # Instance attributes in front of WSConnection's methods (what trio-websocket calls).
    ws.receive_data = frames.receive_data  # type: ignore[method-assign]
    ws.send = frames.send  # type: ignore[method-assign]
    ws.events = frames.events  # type: ignore[method-assign]
    return True
