"""The signer child process (see signer.py for the frames): reads frames on stdin, answers
each sign frame with its 64-byte Ed25519 signature on stdout, exits at end of input.

What one read brings is answered `ANSWER_EVERY` signatures at a time, not all at the end: a
read holds the requests of every session of a scheduler pass, and the first sessions' answers
need not wait for the last one's signatures (about 52 us each).

Kept apart from the rest of the package so that it starts by importing `cryptography` only.
"""

from __future__ import annotations

import os
import signal
import struct
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FRAME = struct.Struct(">cBH")
ANSWER_EVERY = 4


def _write_all(write_fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(write_fd, view) :]


def serve(read_fd: int, write_fd: int) -> int:
    keys: dict[int, Ed25519PrivateKey] = {}
    buffer = b""
    while True:
        data = os.read(read_fd, 65536)
        if not data:
            return 0
        buffer += data
        out: list[bytes] = []
        pos = 0
        while len(buffer) - pos >= FRAME.size:
            kind, slot, length = FRAME.unpack_from(buffer, pos)
            end = pos + FRAME.size + length
            if end > len(buffer):
                break
            payload = buffer[pos + FRAME.size : end]
            if kind == b"S":
                key = keys.get(slot)
                if key is None:
                    print("signer: sign frame for an empty key slot", file=sys.stderr)
                    return 2
                out.append(key.sign(payload))
                if len(out) >= ANSWER_EVERY:
                    _write_all(write_fd, b"".join(out))
                    out.clear()
            elif kind == b"K":
                keys[slot] = Ed25519PrivateKey.from_private_bytes(payload)
            else:
                print(f"signer: unknown frame kind {kind!r}", file=sys.stderr)
                return 2
            pos = end
        buffer = buffer[pos:]
        if out:
            _write_all(write_fd, b"".join(out))


def main() -> int:
    # Ctrl-C in a terminal (or SIGTERM to the process group) reaches this process too; the
    # server decides when it stops, by closing its input, so points in flight still get signed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        return serve(sys.stdin.fileno(), sys.stdout.fileno())
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
