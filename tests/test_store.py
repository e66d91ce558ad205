"""The store's writer, as a child process and as a thread: group commit, order, failures
contained to their unit, a clean stop, a writer that dies."""

from __future__ import annotations

import os
import pickle
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from scoreserver import store as db
from scoreserver.core.rules import GameSettings
from scoreserver.errors import ConflictError
from scoreserver.store import writer_child as _writer_child

from .conftest import child_processes

WRITERS = pytest.mark.parametrize("child", [True, False], ids=["process", "thread"])


async def add_session(writer: db.Store, session_id: str) -> None:
    """A game "g" and a running guest session of it, committed."""
    settings = GameSettings(duration_ms=1000)
    await writer.write(db.insert_game, "g", settings, 0)
    await writer.write(
        db.insert_session, session_id, "g", None, "1.2.3.4", None, settings, 0, 0, "start"
    )


@pytest.fixture(params=["process", "thread", "inline"])
async def store(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[db.Store]:
    writer = db.Store(
        tmp_path / "s.db",
        threaded=request.param != "inline",
        child_process=request.param == "process",
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await add_session(writer, "s1")
        yield writer
        nursery.cancel_scope.cancel()


def count(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608
    finally:
        conn.close()


async def test_queued_rows_are_group_committed_before_a_later_awaited_unit(store: db.Store) -> None:
    with trio.fail_after(10):
        commits_before = store.commits
        for seq in range(1, 501):
            store.write_soon(db.insert_point, "s1", seq, seq, seq, f"token-{seq}")
        await store.write(db.end_session, "s1", "end", 999, "time_up")
        # The end was committed after every point queued before it, in few transactions.
        assert count(store.path, "issued_points") == 500
        assert store.commits - commits_before < 50
        record = await store.read(db.load_session, "s1")
        assert record is not None and len(record.points) == 500 and record.end_token == "end"


async def test_a_bad_row_does_not_sink_the_others(store: db.Store) -> None:
    with trio.fail_after(10):
        store.write_soon(db.insert_point, "s1", 1, 1, 1, "a")
        store.write_soon(db.insert_point, "s1", 1, 1, 1, "duplicate of seq 1")
        store.write_soon(db.insert_point, "s1", 2, 2, 2, "b")
        store.write_soon(db.insert_point, "nope", 3, 3, 3, "no such session (foreign key)")
        await store.write(db.insert_burst, "s1", 5)
        assert count(store.path, "issued_points") == 2
        assert count(store.path, "bursts") == 1


async def test_an_awaited_units_error_reaches_its_caller_only(store: db.Store) -> None:
    with trio.fail_after(10):
        await store.write(db.insert_user, "ann", "x", 0)
        with pytest.raises(ConflictError):
            await store.write(db.insert_user, "ANN", "x", 0)  # names are case-insensitive
        assert await store.write(db.insert_user, "ben", "x", 0) > 0
        assert count(store.path, "users") == 2


@WRITERS
async def test_stopping_commits_what_is_queued(tmp_path: Path, child: bool) -> None:
    writer = db.Store(tmp_path / "s.db", child_process=child)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await add_session(writer, "s")
            for seq in range(1, 101):
                writer.write_soon(db.insert_point, "s", seq, seq, seq, "t")
            nursery.cancel_scope.cancel()  # as the server does on shutdown
        assert count(tmp_path / "s.db", "issued_points") == 100
        with pytest.raises(db.StoreError, match="not running"):
            await writer.write(db.insert_user, "late", "x", 0)  # refused, not left waiting


def test_schema_version_is_checked(tmp_path: Path) -> None:
    conn = db.open_database(tmp_path / "v.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(db.StoreError, match="version 7"):
        db.open_database(tmp_path / "v.db")


async def test_a_unit_that_cannot_reach_the_writer_process_fails_alone(tmp_path: Path) -> None:
    writer = db.Store(tmp_path / "s.db", child_process=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            with pytest.raises(db.StoreError, match="write failed"):
                await writer.write(lambda conn: None)  # a lambda cannot be pickled
            assert await writer.write(db.insert_user, "ann", "x", 0) > 0
            nursery.cancel_scope.cancel()
    assert count(tmp_path / "s.db", "users") == 1


async def test_a_dead_writer_process_stops_the_store_and_fails_its_waiters(
    tmp_path: Path,
) -> None:
    writer = db.Store(tmp_path / "s.db", child_process=True)
    outcome: list[BaseException] = []

    async def wait_for_a_write() -> None:
        try:
            await writer.write(db.insert_user, "ann", "x", 0)
        except db.StoreError as exc:
            outcome.append(exc)

    failures: list[BaseException] = []
    with trio.fail_after(10):
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                await writer.write(db.insert_user, "first", "x", 0)
                (child,) = child_processes("writer_child")
                os.kill(child, signal.SIGKILL)
                nursery.start_soon(wait_for_a_write)
                await trio.sleep_forever()  # the store's failure ends this nursery
        except* db.StoreError as group:
            failures.extend(group.exceptions)
    assert [str(e) for e in failures] == ["the database writer process exited"]
    assert len(outcome) == 1
    with pytest.raises(db.StoreError):
        await writer.write(db.insert_user, "ben", "x", 0)


def test_the_writer_child_commits_whole_batches_and_drops_a_cut_one(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    db.open_database(path).close()
    batch = pickle.dumps([(db.insert_user, ("ann", "x", 0), True)])
    cut = pickle.dumps([(db.insert_user, ("ben", "x", 0), True)])
    frames = db.FRAME_LENGTH.pack(len(batch)) + batch
    frames += db.FRAME_LENGTH.pack(len(cut)) + cut[:-3]  # the server died mid-write
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, frames)
    os.close(in_w)
    assert _writer_child.serve(str(path), in_r, out_w) == 0
    os.close(in_r)
    os.close(out_w)
    reply = os.read(out_r, 65536)
    os.close(out_r)
    (length,) = db.FRAME_LENGTH.unpack_from(reply)
    committed, results = pickle.loads(reply[db.FRAME_LENGTH.size : db.FRAME_LENGTH.size + length])
    assert committed is True
    assert len(results) == 1 and results[0][0] > 0 and results[0][1] is None
    assert len(reply) == db.FRAME_LENGTH.size + length  # one reply: the cut batch had none
    assert count(path, "users") == 1


def explode(conn: sqlite3.Connection) -> None:
    raise RuntimeError("not a database error")


async def test_any_exception_from_a_unit_stays_with_that_unit(store: db.Store) -> None:
    """A value SQLite cannot hold (OverflowError), in a queued row or an awaited unit, or any
    other exception: that unit fails, the rest of its batch commits, the writer goes on."""
    with trio.fail_after(10):
        store.write_soon(db.insert_point, "s1", 1, 1, 1, "a")
        store.write_soon(db.insert_point, "s1", 2, 2**63, 2, "too big for SQLite")
        store.write_soon(db.insert_point, "s1", 3, 3, -(2**63) - 1, "too small for SQLite")
        store.write_soon(db.insert_rejected_point, "s1", 2**64, 0, "clock")
        store.write_soon(db.insert_point, "s1", 4, 4, 4, "b")
        with pytest.raises(OverflowError):
            await store.write(db.insert_burst, "s1", 2**63)
        with pytest.raises(RuntimeError):
            await store.write(explode)
        await store.write(db.insert_burst, "s1", 7)
        assert count(store.path, "issued_points") == 2
        assert count(store.path, "bursts") == 1
        assert count(store.path, "rejected_points") == 0
        # And it still writes afterwards.
        await store.write(db.end_session, "s1", "end", 9, "time_up")
        record = await store.read(db.load_session, "s1")
        assert record is not None and sorted(record.points) == [1, 4] and record.end_token == "end"
        assert store.failure is None


def test_the_writer_process_survives_a_frame_it_cannot_read(tmp_path: Path) -> None:
    """A batch that cannot be unpickled is answered as failed; the next one still commits."""
    path = tmp_path / "w.db"
    db.open_database(path).close()
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    garbage = b"not a pickle"
    good = pickle.dumps([(db.insert_game, ("g", GameSettings(duration_ms=5), 0), True)])
    for payload in (garbage, good):
        os.write(to_child_w, db.FRAME_LENGTH.pack(len(payload)) + payload)
    os.close(to_child_w)
    assert _writer_child.serve(str(path), to_child_r, from_child_w) == 0
    os.close(from_child_w)
    replies = []
    data = os.read(from_child_r, 1 << 20)
    while data:
        (length,) = db.FRAME_LENGTH.unpack_from(data)
        replies.append(pickle.loads(data[4 : 4 + length]))
        data = data[4 + length :]
    assert replies[0][0] is False and isinstance(replies[0][1], str)
    assert replies[1] == (True, [(None, None)])
    assert count(path, "games") == 1
