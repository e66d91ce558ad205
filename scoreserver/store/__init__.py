"""SQLite storage: one writer that owns the writing connection, readers, and queries.

Every named operation below is a plain function of a `sqlite3.Connection`, so that the server,
the command line and the tests run the same SQL. The server runs writes through `Store`:

* `await store.write(op, ...)` returns once the unit's transaction has COMMITted; the server
  acknowledges scores, reveals flags and sends `end_game` only after such a write.
* `store.write_soon(op, ...)` queues a unit without waiting (issued points, rejected points,
  bursts). The writer takes whatever is queued, up to `BATCH_LIMIT` units (lingering up
  to `LINGER_S` for more while nobody waits on the batch), and runs them in one
  `BEGIN IMMEDIATE ... COMMIT`, each in a savepoint so that one failing unit does not undo the
  others (group commit); a run of queued rows of one kind goes in as one `executemany`. Units
  are committed in the order they were queued, so a session's `end` is never committed before
  its points.
* `await store.read(op, ...)` runs a query on a reader connection in a worker thread.

The writer is a child process (`Store(..., child_process=True)`, the server's default; see
`writer_child.py` for why and for its frames) or a thread of this process. Both run batches
with `run_batch`. `Store(..., threaded=False)` runs the same units inline on the event loop's
thread: the autojump-clock tests use it, because time would otherwise jump while a task waits
on a thread or a pipe.

The database runs in WAL mode with synchronous=NORMAL: a COMMIT survives the process being
killed (SIGKILL); only a power cut may lose the last commits before a checkpoint.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import queue
import sqlite3
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from scoreserver import children
from scoreserver.core import timing
from scoreserver.core.names import skeleton
from scoreserver.core.rules import (
    EndReason,
    GameSettings,
    IssuedPoint,
    SessionRecord,
    outlier_evidence,
)
from scoreserver.errors import BannedError, ConflictError, NotFoundError, StoreError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
SCHEMA_PATH = Path(__file__).with_name("sqlite.sql")
BATCH_LIMIT = 1000
# How long the writer may hold a batch of queued rows open for more. A unit someone awaits
# (an end, a result, a flag) closes the batch at once.
LINGER_S = 0.005
STOP_TIMEOUT_S = 15.0
# SQLite's busy timeout (10 s: the CLI may hold the write lock that long) plus room to commit.
ANSWER_TIMEOUT_S = 15.0
WRITER_CHILD_MODULE = "scoreserver.store.writer_child"
STORE_WRITERS = ("process", "thread")
FRAME_LENGTH = struct.Struct(">I")
FOREVER = 2**62  # banned_until of a ban without an end

T = TypeVar("T")
Op = Callable[..., T]


# --- connections and the schema -------------------------------------------------------------


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection with the pragmas every part of scoreserver relies on.

    A new database file is created readable by its owner only (it holds password hashes and
    guests' addresses); SQLite gives its -wal and -shm files the same mode.
    """
    _create_private(Path(path))
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.row_factory = sqlite3.Row
    return conn


def _create_private(path: Path) -> None:
    if str(path) == ":memory:" or path.exists():
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:  # made meanwhile by another connection: fine
        pass


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the schema in a new database, bring an older one up to date; refuse a newer."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version in MIGRATIONS:
        with transaction(conn):
            if conn.execute("PRAGMA user_version").fetchone()[0] == version:  # not raced
                for step in range(version, SCHEMA_VERSION):
                    MIGRATIONS[step](conn)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        logger.info("database schema upgraded from version %d to %d", version, SCHEMA_VERSION)
        return
    if version != 0:
        raise StoreError(
            f"database schema version {version}, this scoreserver knows {SCHEMA_VERSION}"
        )
    script = SCHEMA_PATH.read_text(encoding="utf-8")
    conn.execute("BEGIN IMMEDIATE")
    try:
        # executescript would COMMIT first; run the statements inside our transaction.
        for statement in _split_sql(script):
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Schema 2: name skeletons, one running game per user and game, admin sessions."""
    conn.execute("ALTER TABLE users ADD COLUMN name_skeleton TEXT")
    taken: set[str] = set()
    for user_id, name in conn.execute("SELECT id, name FROM users ORDER BY id").fetchall():
        key = skeleton(name)
        if key not in taken:  # an older look-alike keeps no skeleton (NULLs never collide)
            taken.add(key)
            conn.execute("UPDATE users SET name_skeleton = ? WHERE id = ?", (key, user_id))
    conn.execute("CREATE UNIQUE INDEX users_name_skeleton ON users(name_skeleton)")
    # Sessions a race let run side by side: all but the newest of each are void.
    conn.execute(
        "UPDATE game_sessions SET state = 'voided', end_reason = 'crashed',"
        " ended_at = started_at WHERE state = 'running' AND user_id IS NOT NULL AND rowid NOT IN"
        " (SELECT MAX(rowid) FROM game_sessions WHERE state = 'running'"
        "  AND user_id IS NOT NULL GROUP BY user_id, game_id)"
    )
    conn.execute(
        "CREATE UNIQUE INDEX game_sessions_one_running ON game_sessions(user_id, game_id)"
        " WHERE state = 'running' AND user_id IS NOT NULL"
    )
    conn.execute(
        "CREATE TABLE admin_sessions (token_hash BLOB PRIMARY KEY, created_at INTEGER NOT NULL,"
        " expires_at INTEGER NOT NULL, address TEXT) WITHOUT ROWID"
    )
    # Timing analysis, bounds and titles of games; flags that are for review only.
    for column in (
        "human_floor_ms INTEGER NOT NULL DEFAULT 60 CHECK (human_floor_ms >= 0)",
        "min_rhythm_cv REAL NOT NULL DEFAULT 0.07 CHECK (min_rhythm_cv >= 0)",
        "max_score INTEGER CHECK (max_score >= 0)",
        "hold_outliers INTEGER NOT NULL DEFAULT 0",
        "title TEXT",
    ):
        conn.execute(f"ALTER TABLE games ADD COLUMN {column}")
    conn.execute("ALTER TABLE flags ADD COLUMN holds INTEGER NOT NULL DEFAULT 1")
    conn.execute("ALTER TABLE users ADD COLUMN deleted_at INTEGER")


# From each older version to the next; `ensure_schema` runs them in one transaction.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_1_to_2}


def _split_sql(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer
            buffer = ""
    if buffer.strip():
        yield buffer


def check_integrity(conn: sqlite3.Connection) -> None:
    result = conn.execute("PRAGMA integrity_check").fetchone()[0]
    if result != "ok":
        raise StoreError(f"database integrity check failed: {result}")


def open_database(path: str | Path) -> sqlite3.Connection:
    conn = connect(path)
    ensure_schema(conn)
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# --- the store as the server uses it --------------------------------------------------------


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


def run_batch(conn: sqlite3.Connection, batch: list[Job]) -> bool:
    """Run `batch` in one transaction, each unit in a savepoint; set each job's result or
    error. Returns whether it committed (False: every job carries a StoreError)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
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
            _run_rows(conn, sql, batch[index:end])
            index = end
        conn.execute("COMMIT")
    except Exception as exc:  # the transaction itself failed (BEGIN, COMMIT, disk): none is in
        logger.exception("write transaction failed")
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            logger.exception("rollback failed")
        for job in batch:
            job.error = StoreError(f"write failed: {exc!r}")
        return False
    return True


def _run_unit(conn: sqlite3.Connection, job: Job) -> None:
    conn.execute("SAVEPOINT unit")
    try:
        job.result = job.op(conn, *job.args)
    except Exception as exc:  # the unit's own failure, reported to its caller
        conn.execute("ROLLBACK TO unit")
        job.error = exc
        if not job.waited:
            logger.error("queued write %r failed: %r", job.op, exc)
    conn.execute("RELEASE unit")


def _run_rows(conn: sqlite3.Connection, sql: str, jobs: list[Job]) -> None:
    conn.execute("SAVEPOINT rows")
    try:
        conn.executemany(sql, [job.args for job in jobs])
    except Exception:  # sqlite3.Error, or OverflowError/TypeError for a value SQLite can't hold
        # Find the bad row: the others still go in, one by one.
        conn.execute("ROLLBACK TO rows")
        for job in jobs:
            _run_unit(conn, job)
    conn.execute("RELEASE rows")


class Store:
    """The server's door to SQLite. See the module docstring."""

    def __init__(
        self,
        path: str | Path,
        *,
        threaded: bool = True,
        child_process: bool = False,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
    ):
        self.path = Path(path)
        self.threaded = threaded
        # An awaited write not answered within this long means the writer has stalled
        # (stopped, wedged disk): the store fails rather than leave its callers hanging.
        self.answer_timeout_s = answer_timeout_s
        self._awaited: dict[Job, float] = {}  # awaited jobs not yet answered -> when sent
        self._failed_event = trio.Event()
        self._process: trio.Process | None = None
        # Told how long each awaited write took to its COMMIT (for /metrics), if set.
        self.write_latency: Callable[[float], None] | None = None
        # The writer in a child process (`writer_child`) instead of a thread of this one.
        self.child_process = threaded and child_process
        self._pending: list[Job] = []  # child process: units not yet sent
        self._sent: deque[list[Job]] = deque()  # child process: batches awaiting their reply
        self._wake: trio.Event | None = None
        self._urgent: trio.Event | None = None
        self._received = b""
        self._failed: StoreError | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        self._token: trio.lowlevel.TrioToken | None = None
        self._writer: sqlite3.Connection | None = None
        self._running = False
        self.commits = 0  # transactions committed by the writer (for tests and benchmarks)

    @property
    def failure(self) -> StoreError | None:
        """Why the writer stopped serving (it died or stopped answering), or None."""
        return self._failed

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
        for job in list(self._awaited):
            if job.event is not None and not job.event.is_set():
                job.error = StoreError(str(self._failed))
                job.event.set()
        if self._process is not None and self._process.returncode is None:
            self._process.kill()  # a stalled (stopped) writer must not commit later

    # -- life --

    def open(self) -> None:
        """Create or check the schema. Safe to call before the event loop runs."""
        conn = open_database(self.path)
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
                self._close_readers()
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
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

    def _close_readers(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._local = threading.local()

    # -- writes --

    async def write(self, op: Op[T], *args: Any, **kwargs: Any) -> T:
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

    def write_soon(self, op: Op[Any], *args: Any) -> None:
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
        conn = connect(self.path)
        try:
            stopping = False
            while not stopping:
                batch: list[Job] = []
                stopping = self._collect(batch, self._queue.get())
                if batch:
                    self._run_batch(conn, batch)
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

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Job]) -> None:
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
        process = await children.start(*children.python_module(WRITER_CHILD_MODULE, str(self.path)))
        assert process.stdin is not None
        assert process.stdout is not None
        self._process = process
        self._wake, self._urgent = trio.Event(), trio.Event()
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop, process.stdin, nursery.cancel_scope)
                nursery.start_soon(self._receive_loop, process.stdout, nursery.cancel_scope)
                nursery.start_soon(self._watch_failure, nursery.cancel_scope)
                task_status.started()
            if self._failed is not None:
                raise self._failed  # the server cannot keep its promises without a writer
        finally:
            self._running = False
            with trio.CancelScope(shield=True):
                await self._stop_child(process)
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
            self._deliver(batch, committed, results)

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

    async def _stop_child(self, process: trio.Process) -> None:
        """Send what is queued, let the child commit it and exit; fail whoever still waits."""
        assert process.stdin is not None
        assert process.stdout is not None
        with trio.move_on_after(STOP_TIMEOUT_S):
            try:
                if self._failed is None:
                    await self._send_pending(process.stdin)
                await process.stdin.aclose()
                while self._sent and self._failed is None:
                    reply = await self._receive_reply(process.stdout)
                    if reply is None:
                        break
                    self._deliver(self._sent.popleft(), *reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await children.reap(process, 5.0)  # its answers are in: it exits at once
        stopped = str(self._failed or "store is not running")
        for batch in [*self._sent, self._pending]:
            for job in batch:
                if job.waited and job.event is not None and not job.event.is_set():
                    job.error = StoreError(stopped)
                    job.event.set()
        self._sent.clear()
        self._pending = []

    # -- reads --

    async def read(self, op: Op[T], *args: Any, **kwargs: Any) -> T:
        """Run the query `op(conn, *args, **kwargs)` on a reader connection."""
        if kwargs:
            op = functools.partial(op, **kwargs)
        if not self.threaded:
            if self._writer is None:
                raise StoreError("store is not running")
            return op(self._writer, *args)
        return await trio.to_thread.run_sync(self._read_sync, op, args)

    def _read_sync(self, op: Op[T], args: tuple[Any, ...]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return op(conn, *args)


def _set_all(events: Iterable[trio.Event]) -> None:
    for event in events:
        event.set()


# --- named operations: users and login tokens -----------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    password_hash: str
    banned_until: int | None

    def banned(self, now: int) -> bool:
        return self.banned_until is not None and self.banned_until > now


def _user(row: sqlite3.Row | None) -> User | None:
    if row is None:
        return None
    return User(row["id"], row["name"], row["password_hash"], row["banned_until"])


def insert_user(conn: sqlite3.Connection, name: str, password_hash: str, now: int) -> int:
    """A new account; ConflictError if the name, or a name that looks like it, is taken."""
    try:
        cur = conn.execute(
            "INSERT INTO users (name, name_skeleton, password_hash, created_at)"
            " VALUES (?, ?, ?, ?)",
            (name, skeleton(name), password_hash, now),
        )
    except sqlite3.IntegrityError:
        raise ConflictError(f"the name {name!r} (or one that looks like it) is taken") from None
    assert cur.lastrowid is not None
    return cur.lastrowid


def user_by_name(conn: sqlite3.Connection, name: str) -> User | None:
    return _user(conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone())


def user_by_id(conn: sqlite3.Connection, user_id: int) -> User | None:
    return _user(conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone())


def insert_login_token(
    conn: sqlite3.Connection, token_hash: bytes, user_id: int, now: int, expires_at: int
) -> None:
    conn.execute(
        "INSERT INTO login_tokens (token_hash, user_id, created_at, expires_at)"
        " VALUES (?, ?, ?, ?)",
        (token_hash, user_id, now, expires_at),
    )
    conn.execute("DELETE FROM login_tokens WHERE expires_at <= ?", (now,))


def user_by_login_token(conn: sqlite3.Connection, token_hash: bytes, now: int) -> User | None:
    return _user(
        conn.execute(
            "SELECT u.* FROM login_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.token_hash = ? AND t.expires_at > ?",
            (token_hash, now),
        ).fetchone()
    )


def list_users(
    conn: sqlite3.Connection, *, limit: int = -1, offset: int = 0
) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT u.id, u.name, u.created_at, u.banned_until, u.ban_note,"
        " (SELECT COUNT(*) FROM flags f WHERE f.user_id = u.id AND f.status = 'open')"
        "   AS open_flags,"
        " (SELECT COUNT(*) FROM scores s WHERE s.user_id = u.id) AS scores"
        " FROM users u ORDER BY u.id LIMIT ? OFFSET ?",
        (limit, offset),
    ).fetchall()
    return [dict(row) for row in rows]


def set_ban(conn: sqlite3.Connection, name: str, banned_until: int | None, note: str | None) -> int:
    user = user_by_name(conn, name)
    if user is None:
        raise NotFoundError(f"no user named {name!r}")
    conn.execute(
        "UPDATE users SET banned_until = ?, ban_note = ? WHERE id = ?",
        (banned_until, note, user.id),
    )
    if banned_until is not None:
        conn.execute("DELETE FROM login_tokens WHERE user_id = ?", (user.id,))
    return user.id


DELETED_NAME = "deleted player {id}"


def erase_user(conn: sqlite3.Connection, user_id: int, now: int) -> str:
    """Erase an account's personal data; keep its results, under a name that is no one's.

    Gone: the name (it becomes free to register again), the password hash, every login
    token, the user agents recorded with its sessions and flags, a ban note. Kept: the user
    id, its scores and sessions (ranks and audits stay consistent), flags and decisions.
    Returns the name the account had.
    """
    user = user_by_id(conn, user_id)
    if user is None or user.password_hash == "":
        raise NotFoundError(f"no user {user_id}")
    conn.execute(
        "UPDATE users SET name = ?, name_skeleton = NULL, password_hash = '', ban_note = NULL,"
        " deleted_at = ? WHERE id = ?",
        (DELETED_NAME.format(id=user_id), now, user_id),
    )
    conn.execute("DELETE FROM login_tokens WHERE user_id = ?", (user_id,))
    conn.execute("UPDATE game_sessions SET user_agent = NULL WHERE user_id = ?", (user_id,))
    conn.execute("UPDATE flags SET user_agent = NULL WHERE user_id = ?", (user_id,))
    return user.name


def erase_own_account(conn: sqlite3.Connection, user_id: int, now: int) -> None:
    """A player's own erasure (DELETE /api/me), with its audit row, in one unit."""
    erase_user(conn, user_id, now)
    insert_audit(conn, "the player", "users delete", f"user {user_id}", "by themselves", now)


def backup(conn: sqlite3.Connection, target: Path) -> None:
    """A consistent copy of the live database at `target` (SQLite's online backup: writers
    go on meanwhile), readable by its owner only."""
    if target.exists():
        raise ConflictError(f"{target} exists: choose a new file")
    _create_private(target)
    copy = sqlite3.connect(str(target))
    try:
        conn.backup(copy)
        check_integrity(copy)
    except BaseException:
        copy.close()
        target.unlink(missing_ok=True)
        raise
    copy.close()


# --- games ----------------------------------------------------------------------------------

GAME_FIELDS = (
    "duration_ms",
    "burst_window_ms",
    "burst_threshold",
    "burst_limit",
    "burst_period_ms",
    "latency_ms",
    "submission_window_ms",
    "human_floor_ms",
    "min_rhythm_cv",
    "max_score",
    "hold_outliers",
    "title",
)


def insert_game(conn: sqlite3.Connection, game_id: str, settings: GameSettings, now: int) -> None:
    values = asdict(settings)
    try:
        conn.execute(
            f"INSERT INTO games (id, {', '.join(GAME_FIELDS)}, created_at, updated_at)"
            f" VALUES (?, {', '.join('?' for _ in GAME_FIELDS)}, ?, ?)",
            (game_id, *(values[f] for f in GAME_FIELDS), now, now),
        )
    except sqlite3.IntegrityError:
        raise ConflictError(f"game {game_id!r} exists (use `games set`)") from None


def update_game(
    conn: sqlite3.Connection, game_id: str, changes: Mapping[str, object], now: int
) -> GameSettings:
    current = get_game(conn, game_id)
    if current is None:
        raise NotFoundError(f"no game {game_id!r}")
    merged = GameSettings(**{**asdict(current), **changes})  # validates
    values = asdict(merged)
    conn.execute(
        f"UPDATE games SET {', '.join(f'{f} = ?' for f in GAME_FIELDS)}, updated_at = ?"
        " WHERE id = ?",
        (*(values[f] for f in GAME_FIELDS), now, game_id),
    )
    return merged


def _settings(row: sqlite3.Row) -> GameSettings:
    values = {f: row[f] for f in GAME_FIELDS}
    values["hold_outliers"] = bool(values["hold_outliers"])
    return GameSettings(**values)


def get_game(conn: sqlite3.Connection, game_id: str) -> GameSettings | None:
    row = conn.execute("SELECT * FROM games WHERE id = ?", (game_id,)).fetchone()
    return None if row is None else _settings(row)


def list_games(conn: sqlite3.Connection) -> dict[str, GameSettings]:
    return {row["id"]: _settings(row) for row in conn.execute("SELECT * FROM games ORDER BY id")}


# --- game sessions --------------------------------------------------------------------------


def insert_session(
    conn: sqlite3.Connection,
    session_id: str,
    game_id: str,
    user_id: int | None,
    guest_addr: str | None,
    user_agent: str | None,
    settings: GameSettings,
    started_at: int,
    client_start_ts: int,
    start_token: str,
) -> None:
    try:
        conn.execute(
            "INSERT INTO game_sessions (id, game_id, user_id, guest_addr, user_agent,"
            " settings_json, started_at, client_start_ts, start_token)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                session_id,
                game_id,
                user_id,
                guest_addr,
                user_agent,
                json.dumps(asdict(settings)),
                started_at,
                client_start_ts,
                start_token,
            ),
        )
    except sqlite3.IntegrityError as exc:
        if "UNIQUE" not in str(exc):
            raise
        raise ConflictError("you already have a game of this kind running") from None


def row_insert(sql: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark an operation as one row of `sql`, its arguments the row's parameters in order.

    The writer runs a queued run of such rows as one `executemany` (group commit without a
    statement and a savepoint per row).
    """

    def mark(op: Callable[..., None]) -> Callable[..., None]:
        op.row_sql = sql  # type: ignore[attr-defined]
        return op

    return mark


@row_insert(
    "INSERT INTO issued_points (session_id, seq, server_ts, client_ts, token)"
    " VALUES (?, ?, ?, ?, ?)"
)
def insert_point(
    conn: sqlite3.Connection, session_id: str, seq: int, server_ts: int, client_ts: int, token: str
) -> None:
    conn.execute(insert_point.row_sql, (session_id, seq, server_ts, client_ts, token))  # type: ignore[attr-defined]


@row_insert(
    "INSERT INTO rejected_points (session_id, server_ts, client_ts, reason) VALUES (?, ?, ?, ?)"
)
def insert_rejected_point(
    conn: sqlite3.Connection, session_id: str, server_ts: int, client_ts: int, reason: str
) -> None:
    conn.execute(insert_rejected_point.row_sql, (session_id, server_ts, client_ts, reason))  # type: ignore[attr-defined]


@row_insert("INSERT INTO bursts (session_id, at_ms) VALUES (?, ?)")
def insert_burst(conn: sqlite3.Connection, session_id: str, at_ms: int) -> None:
    conn.execute(insert_burst.row_sql, (session_id, at_ms))  # type: ignore[attr-defined]


def end_session(
    conn: sqlite3.Connection,
    session_id: str,
    end_token: str | None,
    ended_at: int,
    reason: str,
) -> None:
    state = "ended" if reason == EndReason.TIME_UP else "voided"
    conn.execute(
        "UPDATE game_sessions SET end_token = ?, ended_at = ?, end_reason = ?, state = ?"
        " WHERE id = ? AND state = 'running'",
        (end_token, ended_at, reason, state, session_id),
    )


def void_running_sessions(conn: sqlite3.Connection, now: int) -> int:
    """Sessions left running by a crash are void: nobody can submit them. No flag."""
    cur = conn.execute(
        "UPDATE game_sessions SET state = 'voided', end_reason = 'crashed', ended_at = ?"
        " WHERE state = 'running'",
        (now,),
    )
    return cur.rowcount


def load_session(conn: sqlite3.Connection, session_id: str) -> SessionRecord | None:
    row = conn.execute("SELECT * FROM game_sessions WHERE id = ?", (session_id,)).fetchone()
    if row is None:
        return None
    points = {
        p["seq"]: IssuedPoint(p["seq"], p["server_ts"], p["token"])
        for p in conn.execute(
            "SELECT seq, server_ts, token FROM issued_points WHERE session_id = ?",
            (session_id,),
        )
    }
    reason = row["end_reason"]
    end_reason = EndReason(reason) if reason in EndReason.__members__.values() else None
    if reason == "crashed":
        end_reason = EndReason.SERVER_SHUTDOWN
    return SessionRecord(
        session_id=row["id"],
        game_id=row["game_id"],
        user_id=row["user_id"],
        settings=GameSettings(**json.loads(row["settings_json"])),
        started_at=row["started_at"],
        offset_ms=row["started_at"] - row["client_start_ts"],
        start_token=row["start_token"],
        end_token=row["end_token"],
        ended_at=row["ended_at"],
        end_reason=end_reason,
        points=points,
        submitted=row["state"] == "submitted",
    )


def save_result(
    conn: sqlite3.Connection,
    session_id: str,
    game_id: str,
    user_id: int | None,
    score: int,
    now: int,
) -> bool:
    """Close the session with its accepted result; keep the score of a logged-in player.

    Returns whether the score was saved. Raises ConflictError if the session was closed, and
    BannedError (changing nothing) if the player is banned at `now`.
    """
    owner = user_by_id(conn, user_id) if user_id is not None else None
    if owner is not None and owner.banned(now):
        raise BannedError("account banned")
    cur = conn.execute(
        "UPDATE game_sessions SET state = 'submitted' WHERE id = ? AND state = 'ended'",
        (session_id,),
    )
    if cur.rowcount != 1:
        raise ConflictError("session already submitted")
    if user_id is None:
        return False
    population = [
        row[0]
        for row in conn.execute(
            "SELECT MAX(score) FROM scores WHERE game_id = ? AND user_id != ? AND hidden = 0"
            " GROUP BY user_id",
            (game_id, user_id),
        )
    ]
    conn.execute(
        "INSERT INTO scores (session_id, game_id, user_id, score, created_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (session_id, game_id, user_id, score, now),
    )
    evidence = outlier_evidence(score, population)
    if evidence is not None:
        # In the saving transaction: the flag is committed with the score it questions.
        settings = get_game(conn, game_id)
        insert_flag(
            conn,
            "outlier_score",
            now,
            game_id=game_id,
            session_id=session_id,
            user_id=user_id,
            detail=evidence,
            holds=settings is not None and settings.hold_outliers,
        )
    return True


def set_score_hidden(conn: sqlite3.Connection, session_id: str, hidden: bool) -> None:
    cur = conn.execute(
        "UPDATE scores SET hidden = ? WHERE session_id = ?", (int(hidden), session_id)
    )
    if cur.rowcount != 1:
        raise NotFoundError(f"no saved score for session {session_id!r}")


# --- flags ----------------------------------------------------------------------------------


def insert_flag(
    conn: sqlite3.Connection,
    reason: str,
    now: int,
    *,
    game_id: str | None = None,
    session_id: str | None = None,
    user_id: int | None = None,
    guest_addr: str | None = None,
    user_agent: str | None = None,
    detail: Mapping[str, object] | None = None,
    holds: bool = True,
) -> int:
    """A flag for review; while open, one that `holds` keeps the player off boards."""
    cur = conn.execute(
        "INSERT INTO flags (created_at, reason, game_id, session_id, user_id, guest_addr,"
        " user_agent, detail_json, holds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            now,
            reason,
            game_id,
            session_id,
            user_id,
            None if user_id is not None else guest_addr,
            user_agent,
            json.dumps(dict(detail or {}), default=str),
            int(holds),
        ),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def list_flags(
    conn: sqlite3.Connection,
    *,
    open_only: bool = False,
    game_id: str | None = None,
    user_name: str | None = None,
    limit: int = -1,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Flags, oldest first; `limit`/`offset` page them (-1: no limit)."""
    sql = (
        "SELECT f.*, u.name AS user_name FROM flags f LEFT JOIN users u ON u.id = f.user_id"
        " WHERE 1 = 1"
    )
    params: list[Any] = []
    if open_only:
        sql += " AND f.status = 'open'"
    if game_id is not None:
        sql += " AND f.game_id = ?"
        params.append(game_id)
    if user_name is not None:
        sql += " AND u.name = ?"
        params.append(user_name)
    sql += " ORDER BY f.id LIMIT ? OFFSET ?"
    return [_flag_dict(row) for row in conn.execute(sql, [*params, limit, offset])]


def _flag_dict(row: sqlite3.Row) -> dict[str, Any]:
    flag = dict(row)
    flag["detail"] = json.loads(flag.pop("detail_json"))
    return flag


def get_flag(conn: sqlite3.Connection, flag_id: int) -> dict[str, Any]:
    row = conn.execute(
        "SELECT f.*, u.name AS user_name FROM flags f LEFT JOIN users u ON u.id = f.user_id"
        " WHERE f.id = ?",
        (flag_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no flag {flag_id}")
    flag = _flag_dict(row)
    if flag["session_id"]:
        flag["evidence"] = session_evidence(conn, flag["session_id"])
    return flag


def session_evidence(conn: sqlite3.Connection, session_id: str) -> dict[str, Any]:
    """A session's timeline for a reviewer: points, rejections, bursts."""
    session = conn.execute(
        "SELECT id, game_id, user_id, guest_addr, user_agent, started_at, client_start_ts,"
        " ended_at, end_reason, state, settings_json FROM game_sessions WHERE id = ?",
        (session_id,),
    ).fetchone()
    if session is None:
        return {}
    info = dict(session)
    info["settings"] = json.loads(info.pop("settings_json"))
    settings = GameSettings(**info["settings"])
    arrivals, client_times = _received(conn, session_id)
    return {
        "timing": {
            **timing.profile(
                arrivals, client_times, settings.human_floor_ms, settings.min_rhythm_cv
            ),
            "population": rhythm_population(conn, info["game_id"], exclude=session_id),
        },
        "session": info,
        "points": [
            dict(r)
            for r in conn.execute(
                "SELECT seq, server_ts, client_ts FROM issued_points WHERE session_id = ?"
                " ORDER BY seq",
                (session_id,),
            )
        ],
        "rejected": [
            dict(r)
            for r in conn.execute(
                "SELECT server_ts, client_ts, reason FROM rejected_points WHERE session_id = ?"
                " ORDER BY rowid",
                (session_id,),
            )
        ],
        "bursts": [
            r[0]
            for r in conn.execute(
                "SELECT at_ms FROM bursts WHERE session_id = ? ORDER BY rowid", (session_id,)
            )
        ],
    }


def _received(conn: sqlite3.Connection, session_id: str) -> tuple[list[int], list[int]]:
    """Every point a session received while it ran (accepted or refused), in arrival order:
    (server times, the player's stamps)."""
    rows = conn.execute(
        "SELECT server_ts, client_ts FROM ("
        " SELECT server_ts, client_ts, 0 AS kind, seq AS n FROM issued_points"
        "  WHERE session_id = :sid"
        " UNION ALL SELECT server_ts, client_ts, 1, rowid FROM rejected_points"
        "  WHERE session_id = :sid AND reason != 'game_over'"
        ") ORDER BY server_ts, kind, n",
        {"sid": session_id},
    ).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


POPULATION_SESSIONS = 200


def rhythm_population(
    conn: sqlite3.Connection, game_id: str, *, exclude: str | None = None
) -> dict[str, object] | None:
    """The range of rhythm figures that the game's recent unflagged sessions show, for a
    reviewer to set a flagged one beside (timing.population_range)."""
    sessions = conn.execute(
        "SELECT g.id FROM game_sessions g WHERE g.game_id = ? AND g.state IN"
        " ('ended', 'submitted') AND g.id IS NOT ? AND NOT EXISTS"
        " (SELECT 1 FROM flags f WHERE f.session_id = g.id)"
        " ORDER BY g.started_at DESC LIMIT ?",
        (game_id, exclude, POPULATION_SESSIONS),
    ).fetchall()
    figures = []
    for (session_id,) in sessions:
        arrivals, client_times = _received(conn, session_id)
        if len(arrivals) < timing.RHYTHM_MIN_POINTS:
            continue
        tracker = timing.TimingTracker(0, 0)
        for arrival, client_ts in zip(arrivals, client_times, strict=True):
            tracker.add(arrival, client_ts)
        found = [f for f in (tracker.player.rhythm(), tracker.arrival.rhythm()) if f is not None]
        if found:
            figures.append(min(found))
    return timing.population_range(figures)


def resolve_flag(
    conn: sqlite3.Connection, flag_id: int, status: str, note: str, now: int
) -> dict[str, Any]:
    flag = get_flag(conn, flag_id)
    if flag["status"] != "open":
        raise ConflictError(f"flag {flag_id} is already resolved ({flag['status']})")
    conn.execute(
        "UPDATE flags SET status = ?, resolved_at = ?, resolution_note = ? WHERE id = ?",
        (status, now, note, flag_id),
    )
    return flag


# --- the leaderboard ------------------------------------------------------------------------

_BOARD_SQL = """
WITH eligible AS (
    SELECT s.user_id, s.score, s.created_at, s.id, s.session_id,
           ROW_NUMBER() OVER (
               PARTITION BY s.user_id ORDER BY s.score DESC, s.created_at, s.id
           ) AS nth
    FROM scores s JOIN users u ON u.id = s.user_id
    WHERE s.game_id = :game_id AND s.hidden = 0 AND s.created_at >= :since
      AND (u.banned_until IS NULL OR u.banned_until <= :now)
      AND NOT EXISTS (
          SELECT 1 FROM flags f WHERE f.user_id = s.user_id AND f.status = 'open' AND f.holds = 1
      )
), ranked AS (
    SELECT user_id, score, session_id, created_at,
           RANK() OVER (ORDER BY score DESC) AS rank,
           ROW_NUMBER() OVER (ORDER BY score DESC, created_at, id) AS position
    FROM eligible WHERE nth = 1
)
"""


def leaderboard(
    conn: sqlite3.Connection,
    game_id: str,
    now: int,
    *,
    limit: int = 10,
    offset: int = 0,
    around: int | None = None,
    since: int = 0,
    with_sessions: bool = False,
) -> list[dict[str, Any]]:
    """Best score per player, highest first, ranks shared by equal scores (1, 2, 2, 4).

    With `around`, the page is centred on that player's position (empty if not ranked).
    """
    params: dict[str, Any] = {"game_id": game_id, "since": since, "now": now}
    if around is not None:
        row = conn.execute(
            _BOARD_SQL + "SELECT position FROM ranked WHERE user_id = :user_id",
            {**params, "user_id": around},
        ).fetchone()
        if row is None:
            return []
        offset = max(0, row[0] - 1 - limit // 2)
    session = ", r.session_id, r.created_at" if with_sessions else ""
    rows = conn.execute(
        _BOARD_SQL + f"SELECT r.rank, r.user_id, u.name, r.score{session} FROM ranked r"
        " JOIN users u ON u.id = r.user_id ORDER BY r.position LIMIT :limit OFFSET :offset",
        {**params, "limit": limit, "offset": offset},
    ).fetchall()
    return [dict(row) for row in rows]


def list_results(conn: sqlite3.Connection, game_id: str, since: int = 0) -> list[dict[str, Any]]:
    """Every saved result of a game since `since`, with what decides whether it is shown."""
    return [
        dict(row)
        for row in conn.execute(
            "SELECT s.session_id, s.user_id, u.name, s.score, s.created_at, s.hidden,"
            " (u.banned_until IS NOT NULL AND u.banned_until > :now) AS banned,"
            " EXISTS (SELECT 1 FROM flags f WHERE f.user_id = s.user_id AND f.status = 'open'"
            "  AND f.holds = 1) AS held"
            " FROM scores s JOIN users u ON u.id = s.user_id"
            " WHERE s.game_id = :game AND s.created_at >= :since ORDER BY s.created_at, s.id",
            {"game": game_id, "since": since, "now": int(time.time() * 1000)},
        )
    ]


def session_by_prefix(conn: sqlite3.Connection, prefix: str) -> str:
    """The id of the one session whose id starts with `prefix` (as `flags list` prints it)."""
    prefix = prefix.strip().lower()
    if not prefix or any(c not in "0123456789abcdef" for c in prefix):
        raise NotFoundError(f"no session {prefix!r} (session ids are hexadecimal)")
    rows = conn.execute(
        "SELECT id FROM game_sessions WHERE id >= ? AND id < ? ORDER BY id LIMIT 2",
        (prefix, prefix + "g"),
    ).fetchall()
    if not rows:
        raise NotFoundError(f"no session {prefix!r}")
    if len(rows) > 1:
        raise ConflictError(f"{prefix!r} starts more than one session id: give more of it")
    return str(rows[0][0])


# --- keys, audit, settings ------------------------------------------------------------------


def board_fingerprint(conn: sqlite3.Connection) -> tuple[object, ...]:
    """Changes whenever something may have changed a leaderboard without a score being saved
    here: every moderation decision writes an audit row (from the CLI, /admin, any process),
    every flag a flags row, every game change bumps `updated_at`. Cheap: three index lookups."""
    row = conn.execute(
        "SELECT (SELECT MAX(id) FROM audit), (SELECT MAX(id) FROM flags),"
        " (SELECT COUNT(*) FROM flags WHERE status = 'open'), (SELECT MAX(updated_at) FROM games)"
    ).fetchone()
    return tuple(row)


def record_signing_key(conn: sqlite3.Connection, kid: str, public_key: bytes, now: int) -> None:
    conn.execute(
        "INSERT INTO signing_keys (kid, public_key, created_at) VALUES (?, ?, ?)"
        " ON CONFLICT (kid) DO NOTHING",
        (kid, public_key, now),
    )


def retire_other_keys(conn: sqlite3.Connection, current_kid: str, now: int) -> None:
    conn.execute(
        "UPDATE signing_keys SET retired_at = ? WHERE kid != ? AND retired_at IS NULL",
        (now, current_kid),
    )


def list_signing_keys(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT * FROM signing_keys ORDER BY created_at")]


def retired_key_lifetime_ms(conn: sqlite3.Connection) -> int:
    """How long a retired key still verifies: a session that began just before the rotation
    may run the longest game and then be submitted within the longest submission window."""
    row = conn.execute("SELECT MAX(duration_ms), MAX(submission_window_ms) FROM games").fetchone()
    return int(row[0] or 0) + int(row[1] or 0)


def insert_audit(
    conn: sqlite3.Connection,
    actor: str,
    command: str,
    target: str | None,
    note: str | None,
    now: int,
) -> None:
    conn.execute(
        "INSERT INTO audit (at, actor, command, target, note) VALUES (?, ?, ?, ?, ?)",
        (now, actor, command, target, note),
    )


def list_audit(
    conn: sqlite3.Connection, *, limit: int = -1, offset: int = 0, newest_first: bool = False
) -> list[dict[str, Any]]:
    order = "DESC" if newest_first else "ASC"
    return [
        dict(r)
        for r in conn.execute(
            f"SELECT * FROM audit ORDER BY id {order} LIMIT ? OFFSET ?", (limit, offset)
        )
    ]


def get_setting(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_setting(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
