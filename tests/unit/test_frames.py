"""`server/frames.py` against wsproto itself: the same bytes, split anywhere, fed to a sped-up
connection and to a plain one give the same events, in the same order, and leave both in the
same state, except that a frame wsproto refuses leaves the sped-up one closing, so that its
close code is sent; the same messages sent give the same bytes. Every kind of frame a client
can send is in the mix, the ones `frames` reads and all the ones it must leave to wsproto
(control frames, fragments, binary, unmasked, reserved bits, wasteful or 64-bit lengths,
invalid UTF-8, unknown opcodes, a close), so a difference in what it takes or refuses fails
here."""

from __future__ import annotations

import random
import struct

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import LocalProtocolError

from scoreserver.server.frames import speed_up, take_text_frames, text_frame

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def server(extensions: bytes = b"") -> WSConnection:
    """A server connection past its opening handshake, as trio-websocket has it."""
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(HANDSHAKE + extensions + b"\r\n")
    (request,) = list(ws.events())
    assert isinstance(request, Request)
    offered = [PerMessageDeflate()] if extensions else []
    ws.send(AcceptConnection(extensions=offered))
    assert ws.state is ConnectionState.OPEN
    return ws


def frame(
    payload: bytes,
    opcode: int = 0x1,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x9a\x01\xf3\x5c",
    length_bytes: int | None = None,
) -> bytes:
    """A frame as a client (or a hostile peer) writes it."""
    n = len(payload)
    size = length_bytes if length_bytes is not None else (0 if n < 126 else 2 if n < 65536 else 8)
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if mask is not None else 0
    if size == 0:
        head = bytes((first, mask_bit | n))
    elif size == 2:
        head = bytes((first, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    keys = (mask * (n // 4 + 1))[:n]
    return head + mask + bytes(a ^ b for a, b in zip(payload, keys, strict=True))


def some_text(rng: random.Random, n: int) -> str:
    alphabet = 'abc{}":,0123456789 é€𝄞'
    return "".join(rng.choice(alphabet) for _ in range(n))


def some_frame(rng: random.Random) -> bytes:
    key = rng.randbytes(4)
    kind = rng.randrange(18)
    if kind <= 5:  # what a game sends: whole text, short or 16-bit long
        n = rng.choice([0, 1, 40, 125, rng.randrange(126, 700), 126, rng.randrange(700, 3000)])
        return frame(some_text(rng, n).encode()[: max(n, 0)] or b"", mask=key)
    if kind == 6:
        return frame(some_text(rng, rng.randrange(30)).encode(), mask=key, length_bytes=2)
    if kind == 7:
        return frame(some_text(rng, rng.randrange(30)).encode(), mask=key, length_bytes=8)
    if kind == 8:
        bad = rng.choice([b"\xff", b"\xc3", b"ok\xed\xa0\x80", b"\xe2\x82"])
        return frame(b'{"type":"point"' + bad, mask=key)
    if kind == 9:
        return frame(rng.randbytes(rng.randrange(20)), 0x2, mask=key)
    if kind == 10:
        return frame(rng.randbytes(rng.randrange(10)), rng.choice([0x9, 0xA]), mask=key)
    if kind == 11:  # a text message in two fragments, cut anywhere (inside a character too)
        whole = some_text(rng, rng.randrange(2, 60)).encode()
        cut = rng.randrange(1, len(whole))
        return frame(whole[:cut], fin=False, mask=key) + frame(whole[cut:], 0x0, mask=key)
    if kind == 12:
        return frame(b'{"type":"point"}', mask=None)
    if kind == 13:
        return frame(b'{"type":"point"}', rsv=rng.choice([1, 2, 4]), mask=key)
    if kind == 14:
        return frame(b"x", rng.choice([0x3, 0x7, 0xB]), mask=key)
    if kind == 15:  # a first fragment left open: a whole text frame next is refused
        return frame(b'{"type":', fin=False, mask=key)
    if kind == 16:  # a continuation of nothing: refused after the frame was read whole
        return frame(b'"point"}', 0x0, mask=key)
    return frame(struct.pack("!H", 1000) + b"bye", 0x8, mask=key)


def split(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 5))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def feed(ws: WSConnection, chunk: bytes) -> list[Event] | str:
    try:
        ws.receive_data(chunk)
    except LocalProtocolError as exc:
        return f"refused: {exc}"
    return list(ws.events())


@pytest.mark.parametrize("seed", range(40))
def test_any_bytes_give_the_same_events_and_state_as_wsproto(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(60):
        plain, fast = server(), server()
        assert speed_up(fast)
        stream = b"".join(some_frame(rng) for _ in range(rng.randrange(1, 7)))
        refused: CloseConnection | None = None
        for chunk in split(rng, stream):
            events = feed(plain, chunk)
            assert feed(fast, chunk) == events
            for event in events if isinstance(events, list) else []:
                if isinstance(event, CloseConnection) and plain.state is ConnectionState.OPEN:
                    refused = event  # wsproto refused a frame and stays open
            if refused is None:
                assert fast.state is plain.state
            else:  # closing, so that trio-websocket answers with the refusal's code
                assert fast.state is ConnectionState.REMOTE_CLOSING
        reply = some_text(rng, rng.randrange(300))
        if refused is not None:
            with pytest.raises(LocalProtocolError):
                fast.send(TextMessage(data=reply))
            answer = fast.send(refused.response())
            assert answer[0] == 0x88 and struct.unpack("!H", answer[2:4])[0] == refused.code
            assert refused.code in (1002, 1007)
            assert fast.state is ConnectionState.CLOSED
        elif plain.state is ConnectionState.OPEN:
            assert fast.send(TextMessage(data=reply)) == plain.send(TextMessage(data=reply))
        else:
            with pytest.raises(LocalProtocolError):
                plain.send(TextMessage(data=reply))
            with pytest.raises(LocalProtocolError):
                fast.send(TextMessage(data=reply))


def test_the_frames_of_a_game_are_read_here_and_the_rest_left_to_wsproto() -> None:
    point = b'{"type":"point","client_ts":1732900000000}'
    long = b'{"type":"submit","points":[' + b'"x",' * 100 + b"0]}"
    stream = frame(point) + frame(long) + frame(b"", 0x9) + frame(point)
    taken: list[Event] = []
    used = take_text_frames(stream, taken.append)
    # The two text frames before the ping are read here; the ping and what follows are not.
    assert taken == [TextMessage(data=point.decode()), TextMessage(data=long.decode())]
    assert used == len(frame(point)) + len(frame(long))
    for refused in (
        frame(point, mask=None),
        frame(point, rsv=4),
        frame(point, length_bytes=2),
        frame(point, length_bytes=8),
        frame(point, fin=False),
        frame(b"\xff"),
        frame(point)[:-1],
    ):
        assert take_text_frames(refused, taken.append) == 0


def test_a_bad_frame_stops_the_reading_for_good_as_wsproto_does() -> None:
    """After wsproto refuses a frame its parser reads nothing more; nor may the fast path."""
    plain, fast = server(), server()
    assert speed_up(fast)
    point = frame(b'{"type":"point"}')
    for ws in (plain, fast):
        (closing,) = feed(ws, frame(b"\xff"))
        assert isinstance(closing, CloseConnection) and closing.code == 1007
        assert feed(ws, point) == []
    # A continuation of nothing is read whole before it is refused: wsproto is left with no
    # bytes and no message in progress, only its parser stopped.
    plain, fast = server(), server()
    assert speed_up(fast)
    for ws in (plain, fast):
        (closing,) = feed(ws, frame(b"more", 0x0))
        assert isinstance(closing, CloseConnection) and closing.code == 1002
        assert feed(ws, point) == []
    # A fragment in progress: a whole text frame next is wsproto's to refuse.
    plain, fast = server(), server()
    assert speed_up(fast)
    for ws in (plain, fast):
        assert feed(ws, frame(b"part", fin=False)) == [
            TextMessage(data="part", frame_finished=True, message_finished=False)
        ]
        (closing,) = feed(ws, point)
        assert isinstance(closing, CloseConnection) and closing.code == 1002


def test_a_frame_cut_short_is_finished_by_wsproto_even_when_its_rest_looks_like_a_frame() -> None:
    """The fast path reads only at a frame boundary: the rest of a frame that wsproto holds
    part of is wsproto's, even when those bytes would parse as a whole text frame."""
    inner = frame(b'"inner"')
    # Cut after a binary frame's header, the payload (sent with the all-zero mask) a frame.
    outer = frame(inner, 0x2, mask=b"\x00\x00\x00\x00")
    # Cut after a binary frame's first byte: the other six read as an empty text frame.
    tiny = bytes((0x82, 0x81, 0x80, 0x11, 0x22, 0x33, 0x44))
    for whole, cut in ((outer, len(outer) - len(inner)), (tiny, 1)):
        plain, fast = server(), server()
        assert speed_up(fast)
        assert take_text_frames(whole[cut:], [].append) > 0  # would be taken if not held back
        for ws in (plain, fast):
            assert feed(ws, whole[:cut]) == []
        (message,) = feed(plain, whole[cut:])
        assert isinstance(message, BytesMessage)
        assert feed(fast, whole[cut:]) == [message]


def test_messages_sent_are_framed_as_wsproto_frames_them_at_every_length_boundary() -> None:
    plain, fast = server(), server()
    assert speed_up(fast)
    for n in (0, 1, 125, 126, 127, 65535, 65536, 70000):
        text = ("é" if n % 2 else "a") * (n // (2 if n % 2 else 1))
        assert fast.send(TextMessage(data=text)) == plain.send(TextMessage(data=text))
    # A fragmented message, a binary one, a ping and the close go through wsproto's path.
    for event in (
        TextMessage(data="first half", message_finished=False),
        TextMessage(data=" and the rest"),
        BytesMessage(data=b"\x00\x01"),
        Ping(payload=b"p"),
        CloseConnection(code=1000),
    ):
        assert fast.send(event) == plain.send(event)
    assert fast.state is plain.state is ConnectionState.LOCAL_CLOSING
    with pytest.raises(LocalProtocolError):
        fast.send(TextMessage(data="after the close"))


def test_only_an_open_plain_server_connection_is_sped_up() -> None:
    assert not speed_up(None)
    assert not speed_up(WSConnection(ConnectionType.SERVER))  # no handshake yet
    client = WSConnection(ConnectionType.CLIENT)
    assert not speed_up(client)
    assert not speed_up(server(extensions=b"Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    closed = server()
    closed.send(CloseConnection(code=1000))
    assert not speed_up(closed)
    assert speed_up(server())


def test_text_frame_is_a_servers_unmasked_frame() -> None:
    assert text_frame("hi") == b"\x81\x02hi"
    assert text_frame("x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame("x" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")


def test_close_frame_at_finds_a_close_after_whole_frames_only() -> None:
    from scoreserver.server.frames import close_frame_at

    from ..rawws import RawSocket

    text = RawSocket.frame(b'{"type":"whoami"}')
    big = RawSocket.frame(b"x" * 70_000)  # a 64-bit length
    mid = RawSocket.frame(b"y" * 300)  # a 16-bit length
    close = RawSocket.frame(b"\x03\xe8", opcode=0x8)
    assert close_frame_at(text + close) == len(text)
    assert close_frame_at(text + mid + big + close) == len(text + mid + big)
    assert close_frame_at(close + text) == 0
    assert close_frame_at(text) is None
    assert close_frame_at((text + close)[: len(text) - 3]) is None  # cut short
    assert close_frame_at(b"") is None and close_frame_at(b"\x81") is None
