"""The store's writer and readers: how operations reach the database.

* `await transport.write(op, ...)` returns once the unit's transaction has COMMITted; the
  server acknowledges scores, reveals flags and sends `end_game` only after such a write.
* `transport.write_soon(op, ...)` queues a unit without waiting (issued points, rejected
  points, bursts). The writer takes whatever is queued, up to `BATCH_LIMIT` units (lingering
  up to `LINGER_S` for more while nobody waits on the batch), and runs them in one
  transaction, each in a savepoint so that one failing unit does not undo the others (group
  commit); a run of queued rows of one kind goes in as one `executemany`. Units are committed
  in the order they were queued, so a session's `end` is never committed before its points.
* `await transport.read(op, ...)` runs a query on a reader connection in a worker thread
  (SQLite: one connection per thread; PostgreSQL: a psycopg_pool pool).

The writer (`WriterMode`) is a child process (`writer_child.py`, the server's default: see
there for why and for its frames), a thread of this process, or inline on the event loop's
thread: the autojump-clock tests and the command line use inline, because time would
otherwise jump while a task waits on a thread or a pipe. All three run batches with
`run_batch`, on either engine.

Why one module of this size: the three writers (process, thread, inline) share the batch,
the queue accounting and the failure rules, and the readers share the writer's life; split,
each mode's half would have to be read beside the others'.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import pickle
import queue
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Concatenate, ParamSpec, TypeVar

import trio

from .. import children
from ..errors import StoreError
from .connect import connect, open_database
from .engine import Connection, Location, transaction
from .postgres import PgConnection, reader_pool

logger = logging.getLogger("scoreserver.store")

BATCH_LIMIT = 1000
# How long the writer may hold a batch of queued rows open for more. A unit someone awaits
# (an end, a result, a flag) closes the batch at once. A commit writes every page its rows
# touched, and a game's points land on its own pages: a longer batch writes each page once
# for more rows. At 50 players sending back to back, 50 ms instead of 5 halved the writer's
# CPU a point (docs/performance-notes.md); nobody waits on these rows, and a session's end
# (awaited) commits them before it.
LINGER_S = 0.05
# The writer process runs a batch's rows this many at a time and lets whatever waits for its
# core run in between (`run_batch`'s `pause`): at 50 players a batch of 50 ms was up to 8 ms of
# CPU in one go, and the server's loop or the players' side waited that long for that core.
ROWS_A_SLICE = 100
STOP_TIMEOUT_S = 15.0
# SQLite's busy timeout (10 s: the CLI may hold the write lock that long) plus room to commit.
ANSWER_TIMEOUT_S = 15.0
WRITER_CHILD_MODULE = "scoreserver.store.writer_child"
# The writer process reads a PostgreSQL URL (which may hold a password) from its environment,
# never from its command line, which every user of the machine can read.
URL_VARIABLE = "SCORESERVER_WRITER_DB"
FRAME_LENGTH = struct.Struct(">I")
READER_POOL_SIZE = 8
# Units queued for the writer and not yet committed, past which the sessions wait before they
# judge more points (`room_for_writes`): a writer that falls behind slows the players down
# instead of growing this process's memory without bound. A few seconds of the most points
# one loop accepts (docs/performance.md), some tens of MB; the sessions go on once it is half
# as deep.
QUEUE_BOUND = 50_000

T = TypeVar("T")
P = ParamSpec("P")
M = TypeVar("M", bound=Callable[..., Any])
Op = Callable[..., T]


class WriterMode(enum.StrEnum):
    PROCESS = "process"
    THREAD = "thread"
    INLINE = "inline"


STORE_WRITERS = (WriterMode.PROCESS.value, WriterMode.THREAD.value)


class Job:
    __slots__ = ("args", "error", "event", "op", "result", "waited")

    def __init__(
        self,
        op: Op[Any],
        args: tuple[Any, ...],
        event: trio.Event | None,
        waited: bool | None = None,
    ):
        self.op = op
        self.args = args
        self.event = event
        self.waited = event is not None if waited is None else waited  # someone awaits it
        self.result: Any = None
        self.error: BaseException | None = None


_STOP = object()


def run_batch(conn: Connection, batch: list[Job], pause: Callable[[], None] | None = None) -> bool:
    """Run `batch` in one transaction, each unit in a savepoint; set each job's result or
    error. Returns whether it committed (False: every job carries a StoreError).

    `pause`, if given, is called between slices of `ROWS_A_SLICE` rows and before the commit
    (the writer process gives its core away there: `os.sched_yield`): the same work, in
    pieces of about a millisecond, so that nothing waits for the core behind a whole batch."""
    try:
        conn.execute("BEGIN IMMEDIATE" if conn.dialect == "sqlite" else "BEGIN")
        index = 0
        while index < len(batch):
            job = batch[index]
            sql = getattr(job.op, "row_sql", None)
            if sql is None or job.waited:
                _run_unit(conn, job)
                index += 1
                continue
            # A run of queued rows of one kind: one executemany, one savepoint.
            end = index + 1
            while end < len(batch) and batch[end].op is job.op and not batch[end].waited:
                end += 1
            _run_rows(conn, sql, batch[index:end], pause)
            index = end
        if pause is not None:
            pause()
        conn.execute("COMMIT")
    except Exception as exc:  # the transaction itself failed (BEGIN, COMMIT, disk): none is in
        logger.exception("write transaction failed")
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except Exception:
            logger.exception("rollback failed")
        for job in batch:
            job.error = StoreError(f"write failed: {exc!r}")
        return False
    return True


def _run_unit(conn: Connection, job: Job) -> None:
    conn.execute("SAVEPOINT unit")
    try:
        job.result = job.op(conn, *job.args)
    except Exception as exc:  # the unit's own failure, reported to its caller
        conn.execute("ROLLBACK TO unit")
        job.error = exc
        if not job.waited:
            logger.error("queued write %r failed: %r", job.op, exc)
    conn.execute("RELEASE unit")


def _run_rows(
    conn: Connection, sql: str, jobs: list[Job], pause: Callable[[], None] | None
) -> None:
    conn.execute("SAVEPOINT rows")
    try:
        for start in range(0, len(jobs), ROWS_A_SLICE):
            if start and pause is not None:
                pause()
            conn.executemany(sql, [job.args for job in jobs[start : start + ROWS_A_SLICE]])
    except Exception:  # a database error, or OverflowError/TypeError for a value it can't hold
        # Find the bad row: the others still go in, one by one.
        conn.execute("ROLLBACK TO rows")
        for job in jobs:
            _run_unit(conn, job)
    conn.execute("RELEASE rows")


class Transport:
    """Runs operations on the database: one writer, readers. See the module docstring."""

    def __init__(
        self,
        location: str | os.PathLike[str] | Location,
        *,
        writer: WriterMode | str = WriterMode.PROCESS,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
        writer_socket: str | None = None,
    ):
        self.location = Location.of(location if isinstance(location, Location) else str(location))
        self.mode = WriterMode(writer)
        self.threaded = self.mode != WriterMode.INLINE
        # An awaited write not answered within this long means the writer has stalled
        # (stopped, wedged disk): the store fails rather than leave its callers hanging.
        self.answer_timeout_s = answer_timeout_s
        self._awaited: dict[Job, float] = {}  # awaited jobs not yet answered -> when sent
        self._failed_event = trio.Event()
        self._process: trio.Process | None = None
        # Told how long each awaited write took to its COMMIT (for /metrics), if set.
        self.write_latency: Callable[[float], None] | None = None
        # The writer in a child process (`writer_child`) instead of a thread of this one.
        self.child_process = self.mode == WriterMode.PROCESS
        # A writer process shared with other processes (the workers of `--workers N` on one
        # SQLite file), reached on this Unix socket instead of started here.
        self.writer_socket = writer_socket
        self._pending: list[Job] = []  # child process: units not yet sent
        self._sent: deque[list[Job]] = deque()  # child process: batches awaiting their reply
        self._wake: trio.Event | None = None
        self._urgent: trio.Event | None = None
        self._received = b""
        self._failed: StoreError | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._readers: list[Connection] = []
        self._pool: Any = None  # PostgreSQL's readers (psycopg_pool.ConnectionPool)
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        self._token: trio.lowlevel.TrioToken | None = None
        self._writer: Connection | None = None
        self._running = False
        self.commits = 0  # transactions committed by the writer (for tests and benchmarks)
        self.queue_bound = QUEUE_BOUND
        self.waits_for_room = 0  # times a session waited for the queue (for /metrics, tests)
        self._sent_units = 0  # child process: units in `_sent`
        self._in_batch = 0  # thread: units the writer thread holds in its batch
        self._room: trio.Event | None = None  # set when the queue has room again

    @property
    def failure(self) -> StoreError | None:
        """Why the writer stopped serving (it died or stopped answering), or None."""
        return self._failed

    def queue_depth(self) -> int:
        """Units queued for the writer and not yet committed (0 for the inline writer)."""
        if self.child_process:
            return len(self._pending) + self._sent_units
        if self.threaded:
            return self._queue.qsize() + self._in_batch
        return 0

    async def room_for_writes(self) -> None:
        """Return at once while the writer's queue is under `queue_bound`; past it, wait until
        it is half as deep (or the writer has failed: the writes then fail on their own)."""
        if self.queue_depth() < self.queue_bound:
            return
        self.waits_for_room += 1
        while self.queue_depth() > self.queue_bound // 2 and self._failed is None:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()

    def _check_room(self) -> None:
        """Wake the sessions waiting for room once the queue is half as deep (or the writer
        failed). Called on the event loop after each batch is answered."""
        room = self._room
        if room is not None and (
            self.queue_depth() <= self.queue_bound // 2 or self._failed is not None
        ):
            self._room = None
            room.set()

    def lag_s(self) -> float:
        """How long the oldest awaited write has gone unanswered (0: none is waiting)."""
        if not self._awaited:
            return 0.0
        return max(0.0, trio.current_time() - min(self._awaited.values()))

    def _fail(self, error: StoreError) -> None:
        """The writer is gone or stalled: fail every waiter now and every write from now on."""
        if self._failed is None:
            self._failed = error
            logger.critical("%s; the store stops", error)
        self._failed_event.set()
        if self._room is not None:
            self._room.set()  # the sessions waiting for room go on; their writes fail
            self._room = None
        for job in list(self._awaited):
            if job.event is not None and not job.event.is_set():
                job.error = StoreError(str(self._failed))
                job.event.set()
        if self._process is not None and self._process.returncode is None:
            self._process.kill()  # a stalled (stopped) writer must not commit later

    # -- life --

    def open(self) -> None:
        """Create or check the schema. Safe to call before the event loop runs."""
        conn = open_database(self.location)
        if self.threaded:
            conn.close()
        else:
            self._writer = conn

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the writer until cancelled; then commit what is queued and stop."""
        self.open()
        if not self.threaded:
            self._running = True
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._running = False
                self._close()
            return
        if self.child_process:
            await self._run_child(task_status)
            return
        self._token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(target=self._writer_loop, name="scoreserver-writer", daemon=True)
        thread.start()
        self._running = True
        task_status.started()
        try:
            await self._failed_event.wait()
            assert self._failed is not None
            raise self._failed  # the server cannot keep its promises without a writer
        finally:
            self._running = False
            self._queue.put(_STOP)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join)
            self._close_readers()

    def _close(self) -> None:
        """Close the inline writer's connection and every reader."""
        self._close_readers()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _close_readers(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            if self._pool is not None:
                self._pool.close()
                self._pool = None
        self._local = threading.local()

    # -- writes --

    async def _write(self, op: Op[T], *args: Any, **kwargs: Any) -> T:
        """Run `op(conn, *args)` in a transaction; return once it is committed."""
        if kwargs:
            op = functools.partial(op, **kwargs)
        if not self.threaded:
            return self._write_inline(op, args)
        if self._failed is not None:
            raise StoreError(str(self._failed))
        if not self._running:
            raise StoreError("store is not running")
        job = Job(op, args, trio.Event())
        self._awaited[job] = trio.current_time()
        try:
            if self.child_process:
                self._pending.append(job)
                self._nudge(urgent=True)
            else:
                self._queue.put(job)
            assert job.event is not None
            with trio.move_on_after(self.answer_timeout_s) as waited:
                await job.event.wait()
            if waited.cancelled_caught:
                self._fail(
                    StoreError(
                        f"the database writer did not answer within {self.answer_timeout_s:g} s"
                    )
                )
        finally:
            sent_at = self._awaited.pop(job)
        if self.write_latency is not None:
            self.write_latency(trio.current_time() - sent_at)
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    def _write_soon(self, op: Op[Any], *args: Any) -> None:
        """Queue `op(conn, *args)` for the next group commit, without waiting for it."""
        if not self.threaded:
            self._write_soon_inline(op, args)
            return
        if self.child_process:
            self._pending.append(Job(op, args, None))
            self._nudge(urgent=len(self._pending) >= BATCH_LIMIT)
            return
        self._queue.put(Job(op, args, None))

    def _write_inline(self, op: Op[T], args: tuple[Any, ...]) -> T:
        if self._writer is None:
            raise StoreError("store is not running")
        with transaction(self._writer) as conn:
            return op(conn, *args)

    def _write_soon_inline(self, op: Op[Any], args: tuple[Any, ...]) -> None:
        # As in the other modes, a queued unit that fails is logged; nobody waits to be told.
        try:
            self._write_inline(op, args)
        except Exception as exc:
            logger.error("queued write %r failed: %r", op, exc)

    def _writer_loop(self) -> None:
        conn = connect(self.location)
        try:
            stopping = False
            while not stopping:
                batch: list[Job] = []
                stopping = self._collect(batch, self._queue.get())
                self._in_batch = len(batch)
                if batch:
                    self._run_batch(conn, batch)
                self._in_batch = 0
                if self._room is not None and self._token is not None:
                    try:
                        self._token.run_sync_soon(self._check_room)
                    except trio.RunFinishedError:
                        pass
        finally:
            conn.close()

    def _collect(self, batch: list[Job], item: Any) -> bool:
        """Fill a batch: all that is queued, and while it holds only queued rows (nobody is
        waiting for them), whatever else comes within LINGER_S. Returns whether to stop."""
        deadline = time.monotonic() + LINGER_S
        waited_on = False
        while True:
            if item is _STOP:
                return True
            batch.append(item)
            waited_on = waited_on or item.event is not None
            if len(batch) >= BATCH_LIMIT:
                return False
            try:
                item = self._queue.get_nowait()
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if waited_on or remaining <= 0:
                return False
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return False

    def _run_batch(self, conn: Connection, batch: list[Job]) -> None:
        try:
            committed = run_batch(conn, batch)
        except BaseException as exc:  # pragma: no cover - run_batch reports, never raises
            committed = False
            for job in batch:
                job.error = StoreError(f"write failed: {exc!r}")
        if committed:
            self.commits += 1
        events = [job.event for job in batch if job.event is not None]
        if events and self._token is not None:
            try:
                self._token.run_sync_soon(_set_all, events)
            except trio.RunFinishedError:
                pass

    # -- the writer in a child process --

    async def _run_child(self, task_status: trio.TaskStatus[None]) -> None:
        process: trio.Process | None = None
        if self.writer_socket is not None:
            try:
                stream = await trio.open_unix_socket(self.writer_socket)
            except OSError as exc:
                raise StoreError(f"cannot reach the shared database writer: {exc}") from None
            send: trio.abc.SendStream = stream
            receive: trio.abc.ReceiveStream = stream
        else:
            command, env = children.python_module(WRITER_CHILD_MODULE, str(self.location))
            if self.location.dialect == "postgres":
                env[URL_VARIABLE] = self.location.target
            process = await children.start(command, env)
            assert process.stdin is not None
            assert process.stdout is not None
            self._process = process
            send, receive = process.stdin, process.stdout
        self._wake, self._urgent = trio.Event(), trio.Event()
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop, send, nursery.cancel_scope)
                nursery.start_soon(self._receive_loop, receive, nursery.cancel_scope)
                nursery.start_soon(self._watch_failure, nursery.cancel_scope)
                task_status.started()
            if self._failed is not None:
                raise self._failed  # the server cannot keep its promises without a writer
        finally:
            self._running = False
            with trio.CancelScope(shield=True):
                await self._stop_child(process, send, receive)
            self._close_readers()

    async def _watch_failure(self, scope: trio.CancelScope) -> None:
        await self._failed_event.wait()
        scope.cancel()

    def _nudge(self, *, urgent: bool) -> None:
        if self._wake is not None:
            self._wake.set()
        if urgent and self._urgent is not None:
            self._urgent.set()

    async def _send_loop(self, stdin: trio.abc.SendStream, scope: trio.CancelScope) -> None:
        try:
            await self._send_forever(stdin)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._fail(StoreError("the database writer process exited"))
            scope.cancel()

    async def _send_forever(self, stdin: trio.abc.SendStream) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            assert self._urgent is not None
            if not self._urgent.is_set():
                # Only queued rows so far: hold the batch open a little for more.
                with trio.move_on_after(LINGER_S):
                    await self._urgent.wait()
            self._urgent = trio.Event()
            await self._send_pending(stdin)

    async def _send_pending(self, stdin: trio.abc.SendStream) -> None:
        while self._pending:
            batch = self._pending[:BATCH_LIMIT]
            del self._pending[:BATCH_LIMIT]
            try:
                payload = pickle.dumps(
                    [(job.op, job.args, job.waited) for job in batch], pickle.HIGHEST_PROTOCOL
                )
            except Exception as exc:  # a unit that cannot travel fails alone, with its batch
                logger.exception("a write batch could not be sent to the writer")
                failed = StoreError(f"write failed: {exc}")
                self._deliver(batch, False, [(None, failed) for job in batch if job.waited])
                continue
            self._sent.append(batch)
            self._sent_units += len(batch)
            # Never cut a frame in half: a cancelled write would garble the stream.
            with trio.CancelScope(shield=True):
                await stdin.send_all(FRAME_LENGTH.pack(len(payload)) + payload)

    async def _receive_loop(self, stdout: trio.abc.ReceiveStream, scope: trio.CancelScope) -> None:
        while True:
            reply = await self._receive_reply(stdout)
            if reply is None:
                self._fail(StoreError("the database writer process exited"))
                scope.cancel()
                return
            committed, results = reply
            batch = self._sent.popleft()
            self._sent_units -= len(batch)
            self._deliver(batch, committed, results)
            self._check_room()

    async def _receive_reply(
        self, stdout: trio.abc.ReceiveStream
    ) -> tuple[bool, list[tuple[Any, BaseException | None]] | str] | None:
        while True:
            if len(self._received) >= FRAME_LENGTH.size:
                (length,) = FRAME_LENGTH.unpack_from(self._received)
                end = FRAME_LENGTH.size + length
                if len(self._received) >= end:
                    frame = self._received[FRAME_LENGTH.size : end]
                    self._received = self._received[end:]
                    return pickle.loads(frame)  # type: ignore[no-any-return]
            data = await stdout.receive_some(65536)
            if not data:
                return None
            self._received += data

    def _deliver(
        self,
        batch: list[Job],
        committed: bool,
        results: list[tuple[Any, BaseException | None]] | str,
    ) -> None:
        if committed:
            self.commits += 1
        waited = [job for job in batch if job.waited]
        if isinstance(results, str):  # the writer could not read the batch: all of it failed
            failed = StoreError(f"write failed: {results}")
            results = [(None, failed)] * len(waited)
        for job, (result, error) in zip(waited, results, strict=True):
            job.result, job.error = result, error
            if job.event is not None:
                job.event.set()

    async def _stop_child(
        self,
        process: trio.Process | None,
        send: trio.abc.SendStream,
        receive: trio.abc.ReceiveStream,
    ) -> None:
        """Send what is queued, let the writer commit it (our child then exits: its input is
        closed; a shared writer sees this channel end); fail whoever still waits."""
        with trio.move_on_after(STOP_TIMEOUT_S):
            try:
                if self._failed is None:
                    await self._send_pending(send)
                if isinstance(send, trio.SocketStream):
                    await send.send_eof()
                else:
                    await send.aclose()
                while self._sent and self._failed is None:
                    reply = await self._receive_reply(receive)
                    if reply is None:
                        break
                    batch = self._sent.popleft()
                    self._sent_units -= len(batch)
                    self._deliver(batch, *reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        if process is not None:
            await children.reap(process, 5.0)  # its answers are in: it exits at once
        else:
            await receive.aclose()
        stopped = str(self._failed or "store is not running")
        for batch in [*self._sent, self._pending]:
            for job in batch:
                if job.waited and job.event is not None and not job.event.is_set():
                    job.error = StoreError(stopped)
                    job.event.set()
        self._sent.clear()
        self._sent_units = 0
        self._pending = []

    # -- reads --

    async def _read(self, op: Op[T], *args: Any, **kwargs: Any) -> T:
        """Run the query `op(conn, *args, **kwargs)` on a reader connection."""
        if kwargs:
            op = functools.partial(op, **kwargs)
        if not self.threaded:
            if self._writer is None:
                raise StoreError("store is not running")
            return op(self._writer, *args)
        return await trio.to_thread.run_sync(self._read_sync, op, args)

    def _read_sync(self, op: Op[T], args: tuple[Any, ...]) -> T:
        if self.location.dialect == "postgres":
            with self._readers_lock:
                if self._pool is None:
                    self._pool = reader_pool(self.location.target, READER_POOL_SIZE)
            with self._pool.connection() as raw:
                return op(PgConnection(raw), *args)
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.location)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return op(conn, *args)


def _set_all(events: Iterable[trio.Event]) -> None:
    for event in events:
        event.set()


def writes(
    op: Callable[Concatenate[Connection, P], T],
) -> Callable[Concatenate[Transport, P], Coroutine[Any, Any, T]]:
    """A `Store` method that runs `op` as one awaited unit of the writer (committed when it
    returns), with `op`'s own signature and docstring: an operation is written once, in
    `ops`, and named once, in `Store`."""

    async def method(self: Transport, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._write(op, *args, **kwargs)

    return _named(method, op)


def reads(
    op: Callable[Concatenate[Connection, P], T],
) -> Callable[Concatenate[Transport, P], Coroutine[Any, Any, T]]:
    """A `Store` method that runs the query `op` on a reader connection (see `writes`)."""

    async def method(self: Transport, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._read(op, *args, **kwargs)

    return _named(method, op)


def _named(method: M, op: Callable[..., Any]) -> M:
    method.__name__ = method.__qualname__ = op.__name__
    method.__doc__ = op.__doc__
    method.__wrapped__ = op  # type: ignore[attr-defined]
    return method
