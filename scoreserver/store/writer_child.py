"""The database writer as a child process: `python -m scoreserver.store.writer_child DB`.

The server sends batches of units on stdin; each frame is a 4-byte big-endian length and a
pickled list of ``(operation, args, awaited)``, the operations being the named functions of
`store.ops` (pickled by name). Each batch runs in one transaction (`run_batch`: a savepoint
per unit, runs of rows as one `executemany`) and is answered on stdout, in order, with a frame
holding ``(committed, [(result, error) for each awaited unit])``. At the end of its input the
process has committed everything it was sent, and exits.

Why a process: a writer thread in the server competes for the GIL with the event loop, and
each hand-over can cost the loop up to the interpreter's switch interval (see
docs/performance.md). Only our own server writes to this pipe, so unpickling is safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from scoreserver.errors import StoreError
from scoreserver.store.connect import connect
from scoreserver.store.engine import Location
from scoreserver.store.writer import FRAME_LENGTH, URL_VARIABLE, Job, run_batch

logger = logging.getLogger("scoreserver.store.writer")
LENGTH = FRAME_LENGTH


def _read_exactly(fd: int, size: int, buffer: bytearray) -> bool:
    while len(buffer) < size:
        chunk = os.read(fd, max(65536, size - len(buffer)))
        if not chunk:
            return False
        buffer += chunk
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _reply(committed: bool, jobs: list[Any]) -> bytes:
    results = [(job.result, job.error) for job in jobs if job.waited]
    try:
        payload = pickle.dumps((committed, results), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an error or result that cannot travel: say so instead
        failed = StoreError(f"write result could not be returned: {exc!r}")
        payload = pickle.dumps((committed, [(None, failed)] * len(results)))
    return LENGTH.pack(len(payload)) + payload


def _failed_reply(exc: BaseException) -> bytes:
    """The answer to a batch that could not be read: None for its results, so the server fails
    every waiter of that batch (it knows how many there are; we don't)."""
    payload = pickle.dumps((False, repr(exc)), pickle.HIGHEST_PROTOCOL)
    return LENGTH.pack(len(payload)) + payload


# Between the pieces of a batch (reading it, slices of its rows, the commit) this process
# gives its core to whatever waits for it, the server's loop among them: the same work in
# pieces of about a millisecond. On two cores shared with a load generator, a batch's up to
# 8 ms in one go was the largest part of the loop's slowest round trips (docs/performance.md).
PAUSE: Callable[[], None] | None = getattr(os, "sched_yield", None)


def serve(location: str, read_fd: int, write_fd: int) -> int:
    conn = connect(Location.of(location))
    buffer = bytearray()
    try:
        while True:
            if not _read_exactly(read_fd, LENGTH.size, buffer):
                return 0
            (length,) = LENGTH.unpack_from(buffer)
            if not _read_exactly(read_fd, LENGTH.size + length, buffer):
                return 0  # cut off mid-frame: that batch was never acknowledged
            frame = bytes(buffer[LENGTH.size : LENGTH.size + length])
            del buffer[: LENGTH.size + length]
            _write_all(write_fd, _answer(conn, frame))
    finally:
        conn.close()


def _answer(conn: Any, frame: bytes) -> bytes:
    """Run one batch frame; the reply frame. A batch that cannot be read fails whole (the
    writer goes on)."""
    try:
        units = pickle.loads(frame)
        jobs = [Job(op, tuple(args), None, waited) for op, args, waited in units]
    except Exception as exc:
        logger.exception("a write batch could not be read")
        return _failed_reply(exc)
    if PAUSE is not None:
        PAUSE()
    committed = run_batch(conn, jobs, PAUSE)
    return _reply(committed, jobs)


def serve_shared(location: str, path: str, control_fd: int) -> int:
    """One writer for several processes (the workers of `--workers N` on one SQLite file):
    each connects to the Unix socket at `path` and speaks the frames above on it. Batches are
    run one at a time, in the order they arrive, and answered on their own connection. The
    process stops when `control_fd` (its standard input, held by the supervisor) closes and
    every connection has ended."""
    conn = connect(Location.of(location))
    arrivals: queue.SimpleQueue[tuple[socket.socket | None, bytes | None]] = queue.SimpleQueue()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    _write_all(sys.stdout.fileno(), b"listening\n")  # the supervisor starts the workers now
    channels = 0

    def read_channel(sock: socket.socket) -> None:
        buffer = bytearray()
        fd = sock.fileno()
        try:
            while _read_exactly(fd, LENGTH.size, buffer):
                (length,) = LENGTH.unpack_from(buffer)
                if not _read_exactly(fd, LENGTH.size + length, buffer):
                    break
                arrivals.put((sock, bytes(buffer[LENGTH.size : LENGTH.size + length])))
                del buffer[: LENGTH.size + length]
        except OSError:
            pass
        arrivals.put((sock, None))

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            arrivals.put((sock, b""))  # counted on the writer's thread, then read
            threading.Thread(target=read_channel, args=(sock,), daemon=True).start()

    def watch_control() -> None:
        while os.read(control_fd, 4096):
            pass
        arrivals.put((None, None))

    threading.Thread(target=accept, daemon=True).start()
    threading.Thread(target=watch_control, daemon=True).start()
    stopping = False
    try:
        while not (stopping and channels == 0):
            sock, frame = arrivals.get()
            if sock is None:
                stopping = True
                listener.close()
                continue
            if frame == b"":
                channels += 1
                continue
            if frame is None:
                channels -= 1
                sock.close()
                continue
            _send_all(sock, _answer(conn, frame))
    finally:
        conn.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
    return 0


def _send_all(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:  # that process is gone; its reader thread says so
        pass


def main(argv: list[str]) -> int:
    # The server decides when this process stops, by closing its input: a Ctrl-C or SIGTERM
    # sent to the whole process group must not cut off the last commits of a clean shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if len(argv) == 4 and argv[2] == "--shared":
        return serve_shared(argv[1], argv[3], sys.stdin.fileno())
    if len(argv) != 2:
        print(
            "usage: python -m scoreserver.store.writer_child DB [--shared SOCKET]", file=sys.stderr
        )
        return 2
    # A PostgreSQL URL comes in the environment (it may hold a password); argv shows it
    # without one, for `ps`.
    location = os.environ.pop(URL_VARIABLE, None) or argv[1]
    try:
        return serve(location, sys.stdin.fileno(), sys.stdout.fileno())
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
