"""Signatures for point tokens, made on another core.

Every accepted point carries an Ed25519 signature. A signature costs about 52 µs in a tight
loop on the project's machine, but taking it out of the server's point path saved about 140 µs
of event-loop time per point (measured with the load generator; see docs/performance.md). So
the server hands point signatures to a child process, `python -m scoreserver.server.signer_child`,
which holds the signing key and signs in batches while the event loop goes on with other
players. A session task waits for its own point's signature only; the reply order per session
is kept because the task awaits each signature before the next point.

Between the two processes (private to this module; both ends are ours), every frame is
``kind:1 slot:1 length:2 payload:length`` (big-endian):

    b"K" slot  32  raw private key     load a signing key into a slot (on first use of a key)
    b"S" slot  n   token body          sign the body with the key in that slot

and the child answers each `S` with its 64-byte signature, in order. The pipe is anonymous and
the child is ours, so the key never touches a file or the command line.

If the child cannot start, or dies, the server signs on the event loop from then on (logged
once): slower, never wrong. `InlineSigner` is that path on its own, for one-core machines and
for tests under `autojump_clock`. Start and end tokens, one each per game, are signed in place.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import deque
from typing import Protocol

import trio
from cryptography.hazmat.primitives import serialization

from scoreserver import children
from scoreserver.wire.tokens import SIGNATURE_SIZE, KeyRing, finish

logger = logging.getLogger(__name__)

FRAME = struct.Struct(">cBH")
KEY_FRAME = b"K"
SIGN_FRAME = b"S"
CHILD_MODULE = "scoreserver.server.signer_child"
READ_SIZE = 65536
SIGNER_MODES = ("auto", "process", "inline")


class Signer(Protocol):
    async def sign(self, keys: KeyRing, body: bytes) -> str:
        """The token for `body`, signed with `keys`' current key."""
        ...

    async def sign_many(self, keys: KeyRing, bodies: list[bytes]) -> list[str]:
        """The tokens for `bodies`, in order."""
        ...

    def stats(self) -> dict[str, object]: ...

    def lag_s(self) -> float:
        """How long a signature has been owed by a helper (0: none, or signing in place)."""
        ...


def sign_here(keys: KeyRing, body: bytes) -> str:
    return finish(body, keys.signing_key.sign(body))


class InlineSigner:
    """Signs on the event loop's thread."""

    def __init__(self) -> None:
        self.signed = 0

    async def sign(self, keys: KeyRing, body: bytes) -> str:
        self.signed += 1
        return sign_here(keys, body)

    async def sign_many(self, keys: KeyRing, bodies: list[bytes]) -> list[str]:
        self.signed += len(bodies)
        return [sign_here(keys, body) for body in bodies]

    def stats(self) -> dict[str, object]:
        return {"mode": "inline", "signed": self.signed}

    def lag_s(self) -> float:
        return 0.0


class _Pending:
    """One body to sign. Only the last of a request carries an event: answers come in order."""

    __slots__ = ("body", "event", "keys", "signature")

    def __init__(self, keys: KeyRing, body: bytes, event: trio.Event | None = None):
        self.keys = keys
        self.body = body
        self.event = event
        self.signature = b""


class ProcessSigner:
    """Signs in a child process; `run` owns the child for the life of the server."""

    def __init__(self, command: list[str] | None = None, answer_timeout_s: float = 2.0):
        self.command, self.env = children.python_module(CHILD_MODULE)
        # A request unanswered this long means the child has stalled (stopped, starved): it is
        # replaced by signing on the event loop, so that no session waits on it any longer.
        self.answer_timeout_s = answer_timeout_s
        self._progress_at = 0.0  # when the child last answered, or was first asked
        self._stalled = False
        if command is not None:
            self.command = command
        self._frames: list[bytes] = []  # to write, in order
        self._inflight: deque[_Pending] = deque()  # written or queued, awaiting a signature
        self._wake = trio.Event()
        self._slots: dict[bytes, int] = {}  # key id -> slot in the child
        self._live = False
        self.signed = 0
        self.batches = 0
        self.fallback_signed = 0

    @property
    def live(self) -> bool:
        """Whether signatures are being made in the child (False: on the event loop)."""
        return self._live

    def stats(self) -> dict[str, object]:
        return {
            "mode": "process" if self._live else "inline (signer process not running)",
            "signed": self.signed,
            "batches": self.batches,
            "signed_on_loop": self.fallback_signed,
        }

    async def sign(self, keys: KeyRing, body: bytes) -> str:
        return (await self.sign_many(keys, [body]))[0]

    async def sign_many(self, keys: KeyRing, bodies: list[bytes]) -> list[str]:
        if not bodies:
            return []
        if not self._live:
            self.fallback_signed += len(bodies)
            return [sign_here(keys, body) for body in bodies]
        slot = self._slots.get(keys.kid)
        if slot is None:
            slot = self._load_key(keys)
        done = trio.Event()
        pendings = [_Pending(keys, body) for body in bodies[:-1]]
        pendings.append(_Pending(keys, bodies[-1], done))
        for pending in pendings:
            self._frames.append(FRAME.pack(SIGN_FRAME, slot, len(pending.body)) + pending.body)
        if not self._inflight:
            self._progress_at = trio.current_time()
        self._inflight.extend(pendings)
        # What all sessions ask in this scheduler pass goes in one write, after it (one
        # wake-up of the child for all of it: writing each request at once cost more CPU
        # under load than the write task's step it saves, measured).
        self._wake.set()
        # Answers arrive in order (and a take-over signs in order too): when the last one is
        # in, so are the others.
        await done.wait()
        return [finish(pending.body, pending.signature) for pending in pendings]

    def _load_key(self, keys: KeyRing) -> int:
        slot = len(self._slots)
        if slot > 255:  # a server rotated its key 256 times without restarting: start over
            self._slots.clear()
            slot = 0
        raw = keys.signing_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        self._frames.append(FRAME.pack(KEY_FRAME, slot, len(raw)) + raw)
        self._slots[keys.kid] = slot
        return slot

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            process = await children.start(self.command, self.env)
        except OSError as exc:
            logger.warning("signer process did not start (%s); signing on the event loop", exc)
            task_status.started()
            return
        assert process.stdin is not None
        assert process.stdout is not None
        self._live = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, process.stdin, nursery.cancel_scope)
                nursery.start_soon(self._read_loop, process.stdout, nursery.cancel_scope)
                nursery.start_soon(self._watchdog, nursery.cancel_scope)
                task_status.started()
        finally:
            self._take_over()
            if self._stalled and process.returncode is None:
                process.kill()  # stopped or wedged: it gets no grace to finish
            with trio.CancelScope(shield=True):
                try:
                    await process.stdin.aclose()
                except trio.BrokenResourceError:  # pragma: no cover - already gone
                    pass
                await children.reap(process, 2)

    def _take_over(self) -> None:
        """Sign whatever is still waiting here, and everything from now on."""
        self._live = False
        self._frames.clear()
        while self._inflight:
            pending = self._inflight.popleft()
            pending.signature = pending.keys.signing_key.sign(pending.body)
            self.fallback_signed += 1
            if pending.event is not None:
                pending.event.set()

    def lag_s(self) -> float:
        """How long the child has owed an answer (0: it owes none)."""
        if not self._live or not self._inflight:
            return 0.0
        return max(0.0, trio.current_time() - self._progress_at)

    async def _watchdog(self, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(self.answer_timeout_s / 4)
            if self.lag_s() > self.answer_timeout_s:
                logger.error(
                    "signer process did not answer within %g s; signing on the event loop",
                    self.answer_timeout_s,
                )
                self._stalled = True
                scope.cancel()  # run() takes over what waits and kills the child
                return

    async def _write_loop(self, stdin: trio.abc.SendStream, scope: trio.CancelScope) -> None:
        fd = _fd_of(stdin)
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            frames, self._frames = self._frames, []
            data = b"".join(frames)
            if fd >= 0:
                # Written here when the pipe takes it whole: no trio yield before the write
                # (one task step less a batch; at moderate load a batch is one point).
                try:
                    data = data[os.write(fd, data) :]
                except OSError:  # full (BlockingIOError), or gone: trio's call finds out
                    pass
            try:
                if data:
                    await stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                logger.error("signer process is gone; signing on the event loop from now on")
                scope.cancel()
                return
            self.batches += 1

    async def _read_loop(self, stdout: trio.abc.ReceiveStream, scope: trio.CancelScope) -> None:
        fd = _fd_of(stdout)
        buffer = b""
        while True:
            data = await _receive(stdout, fd)
            if not data:
                logger.error("signer process exited; signing on the event loop from now on")
                scope.cancel()
                return
            buffer += data
            whole = len(buffer) - len(buffer) % SIGNATURE_SIZE
            if whole // SIGNATURE_SIZE > len(self._inflight):
                logger.error("signer process sent unasked signatures; signing on the event loop")
                scope.cancel()
                return
            if whole:
                self._progress_at = trio.current_time()
            for offset in range(0, whole, SIGNATURE_SIZE):
                pending = self._inflight.popleft()
                pending.signature = buffer[offset : offset + SIGNATURE_SIZE]
                if pending.event is not None:
                    pending.event.set()
            self.signed += whole // SIGNATURE_SIZE
            buffer = buffer[whole:]


def _fd_of(stream: object) -> int:
    """The pipe's file descriptor, where trio gives one (POSIX), for reads and writes that
    need no wait to skip trio's yield; -1 elsewhere."""
    fd_stream = getattr(trio.lowlevel, "FdStream", None)
    return stream.fileno() if fd_stream is not None and isinstance(stream, fd_stream) else -1


async def _receive(stdout: trio.abc.ReceiveStream, fd: int) -> bytes:
    """The child's next answers (b"" at its end). Read from the pipe directly where trio
    gives its descriptor (`fd`, -1 where not): a read that finds data returns without trio's
    yield, one task step less a batch, and only an empty pipe is waited for. The child
    answers only what was asked (`_read_loop` checks), so it cannot hold the loop by
    streaming."""
    if fd < 0:
        return bytes(await stdout.receive_some(READ_SIZE))
    while True:
        try:
            return os.read(fd, READ_SIZE)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
        except OSError:
            return b""  # broken: read as the child's end
