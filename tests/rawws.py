"""A deliberately minimal WebSocket client over a raw TCP stream, for misbehaving on purpose:
half a handshake, unanswered pings, frames of any size, a peer that never reads."""

from __future__ import annotations

import os
import struct

import trio

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def request(port: int, extra: list[str] | None = None) -> bytes:
    lines = [
        "GET / HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *(extra or []),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawSocket:
    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, port: int, extra: list[str] | None = None) -> tuple[RawSocket, bytes]:
        """Connect and complete the handshake; returns the socket and the response head."""
        raw = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await raw.stream.send_all(request(port, extra))
        while b"\r\n\r\n" not in raw.buffer:
            chunk = await raw.stream.receive_some()
            if not chunk:
                break
            raw.buffer += chunk
        head, _, raw.buffer = raw.buffer.partition(b"\r\n\r\n")
        return raw, head

    async def send_frame(self, payload: bytes, opcode: int = 0x1) -> None:
        await self.stream.send_all(self.frame(payload, opcode))

    @staticmethod
    def frame(payload: bytes, opcode: int = 0x1) -> bytes:
        """A masked client frame."""
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return header + mask + masked

    @staticmethod
    def bent_frame(
        payload: bytes,
        opcode: int = 0x1,
        *,
        fin: bool = True,
        rsv: int = 0,
        masked: bool = True,
        length_bytes: int | None = None,
    ) -> bytes:
        """A client frame bent as asked: a fragment (`fin`), reserved bits, no mask, or its
        length in `length_bytes` (0, 2 or 8) more bytes than it needs."""
        n = len(payload)
        size = (
            length_bytes if length_bytes is not None else (0 if n < 126 else 2 if n < 65536 else 8)
        )
        first = (0x80 if fin else 0) | rsv << 4 | opcode
        mask_bit = 0x80 if masked else 0
        if size == 0:
            header = struct.pack("!BB", first, mask_bit | n)
        elif size == 2:
            header = struct.pack("!BBH", first, mask_bit | 126, n)
        else:
            header = struct.pack("!BBQ", first, mask_bit | 127, n)
        if not masked:
            return header + payload
        mask = os.urandom(4)
        return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    async def _need(self, n: int) -> bool:
        while len(self.buffer) < n:
            chunk = await self.stream.receive_some()
            if not chunk:
                return False
            self.buffer += chunk
        return True

    async def read_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next server frame, or None at end of stream."""
        if not await self._need(2):
            return None
        first, second = self.buffer[0], self.buffer[1]
        length, offset = second & 0x7F, 2
        if length == 126:
            if not await self._need(4):
                return None
            length, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif length == 127:
            if not await self._need(10):
                return None
            length, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
        if not await self._need(offset + length):
            return None
        payload = self.buffer[offset : offset + length]
        self.buffer = self.buffer[offset + length :]
        return first & 0x0F, payload

    async def aclose(self) -> None:
        await self.stream.aclose()


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
