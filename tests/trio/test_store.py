"""The store's writer, as a child process, a thread and inline, on both engines: group
commit, order, failures contained to their unit, a clean stop, a writer that dies."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from scoreserver import children
from scoreserver.core.rules import GameSettings
from scoreserver.errors import ConflictError, StoreError
from scoreserver.store import Store, ops, postgres, sqlite
from scoreserver.store import writer_child as _writer_child
from scoreserver.store.connect import connect
from scoreserver.store.engine import DATABASE_ERRORS, Location
from scoreserver.store.writer import FRAME_LENGTH, ROWS_A_SLICE, Job, run_batch

from .. import databases
from ..conftest import child_processes

pytestmark = pytest.mark.engines
WRITERS = pytest.mark.parametrize("mode", ["process", "thread"])


async def add_session(writer: Store, session_id: str) -> None:
    """A game "g" and a running guest session of it, committed."""
    settings = GameSettings(duration_ms=1000)
    await writer.decide_new_game("g", settings, actor="test", audit_note="", now=0)
    await writer.add_session(session_id, "g", None, "1.2.3.4", None, settings, 0, 0, "start")


@pytest.fixture(params=["process", "thread", "inline"])
async def store(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    writer = Store(databases.location(tmp_path, "s.db"), writer=request.param)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await add_session(writer, "s1")
        yield writer
        nursery.cancel_scope.cancel()


def count(where: Any, table: str) -> int:
    where = where.location.target if isinstance(where, Store) else where
    return int(databases.sql(where, f"SELECT COUNT(*) FROM {table}")[0][0])


async def test_queued_rows_are_group_committed_before_a_later_awaited_unit(store: Store) -> None:
    with trio.fail_after(10):
        commits_before = store.commits
        for seq in range(1, 501):
            store.add_point_soon("s1", seq, seq, seq, f"token-{seq}")
        await store.end_session("s1", "end", 999, "time_up")
        # The end was committed after every point queued before it, in few transactions.
        assert count(store, "issued_points") == 500
        assert store.commits - commits_before < 50
        record = await store.session("s1")
        assert record is not None and len(record.points) == 500 and record.end_token == "end"


async def test_a_bad_row_does_not_sink_the_others(store: Store) -> None:
    with trio.fail_after(10):
        store.add_point_soon("s1", 1, 1, 1, "a")
        store.add_point_soon("s1", 1, 1, 1, "duplicate of seq 1")
        store.add_point_soon("s1", 2, 2, 2, "b")
        store.add_point_soon("nope", 3, 3, 3, "no such session (foreign key)")
        await store._write(ops.insert_burst, "s1", 5)
        assert count(store, "issued_points") == 2
        assert count(store, "bursts") == 1


async def test_an_awaited_units_error_reaches_its_caller_only(store: Store) -> None:
    with trio.fail_after(10):
        await store.add_user("ann", "x", 0)
        with pytest.raises(ConflictError):
            await store.add_user("ANN", "x", 0)  # names are case-insensitive
        assert await store.add_user("ben", "x", 0) > 0
        assert count(store, "users") == 2
        found = await store.user_by_name("Ann")
        assert found is not None and found.name == "ann"


@WRITERS
async def test_stopping_commits_what_is_queued(tmp_path: Path, mode: str) -> None:
    writer = Store(databases.location(tmp_path, "s.db"), writer=mode)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await add_session(writer, "s")
            for seq in range(1, 101):
                writer.add_point_soon("s", seq, seq, seq, "t")
            nursery.cancel_scope.cancel()  # as the server does on shutdown
        assert count(writer, "issued_points") == 100
        with pytest.raises(StoreError, match="not running"):
            await writer.add_user("late", "x", 0)  # refused, not left waiting


def test_schema_version_is_checked(tmp_path: Path) -> None:
    where = databases.location(tmp_path, "v.db")
    with databases.opened(where) as conn:
        if conn.dialect == "sqlite":
            assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite.SCHEMA_VERSION
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            conn.execute("PRAGMA user_version = 7")
        else:
            version = conn.execute("SELECT version FROM scoreserver_schema").fetchone()[0]
            assert version == postgres.SCHEMA_VERSION
            conn.execute("UPDATE scoreserver_schema SET version = 7")
    with pytest.raises(StoreError, match="version 7"):
        databases.create(where)


async def test_a_unit_that_cannot_reach_the_writer_process_fails_alone(tmp_path: Path) -> None:
    writer = Store(databases.location(tmp_path, "s.db"), writer="process")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            with pytest.raises(StoreError, match="write failed"):
                await writer._write(lambda conn: None)  # a lambda cannot be pickled
            assert await writer.add_user("ann", "x", 0) > 0
            nursery.cancel_scope.cancel()
    assert count(writer, "users") == 1


async def test_a_dead_writer_process_stops_the_store_and_fails_its_waiters(
    tmp_path: Path,
) -> None:
    writer = Store(databases.location(tmp_path, "s.db"), writer="process")
    outcome: list[BaseException] = []

    async def wait_for_a_write() -> None:
        try:
            await writer.add_user("ann", "x", 0)
        except StoreError as exc:
            outcome.append(exc)

    failures: list[BaseException] = []
    with trio.fail_after(10):
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                await writer.add_user("first", "x", 0)
                (child,) = child_processes("writer_child")
                os.kill(child, signal.SIGKILL)
                nursery.start_soon(wait_for_a_write)
                await trio.sleep_forever()  # the store's failure ends this nursery
        except* StoreError as group:
            failures.extend(group.exceptions)
    assert [str(e) for e in failures] == ["the database writer process exited"]
    assert len(outcome) == 1
    with pytest.raises(StoreError):
        await writer.add_user("ben", "x", 0)


def test_the_writer_child_commits_whole_batches_and_drops_a_cut_one(tmp_path: Path) -> None:
    path = databases.location(tmp_path, "c.db")
    databases.create(path)
    batch = pickle.dumps([(ops.insert_user, ("ann", "x", 0), True)])
    cut = pickle.dumps([(ops.insert_user, ("ben", "x", 0), True)])
    frames = FRAME_LENGTH.pack(len(batch)) + batch
    frames += FRAME_LENGTH.pack(len(cut)) + cut[:-3]  # the server died mid-write
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, frames)
    os.close(in_w)
    assert _writer_child.serve(path, in_r, out_w) == 0
    os.close(in_r)
    os.close(out_w)
    reply = os.read(out_r, 65536)
    os.close(out_r)
    (length,) = FRAME_LENGTH.unpack_from(reply)
    committed, results = pickle.loads(reply[FRAME_LENGTH.size : FRAME_LENGTH.size + length])
    assert committed is True
    assert len(results) == 1 and results[0][0] > 0 and results[0][1] is None
    assert len(reply) == FRAME_LENGTH.size + length  # one reply: the cut batch had none
    assert count(path, "users") == 1


def test_the_writer_process_gives_its_core_away_between_slices_of_a_batch(
    tmp_path: Path,
) -> None:
    """The writer process runs a batch's rows in slices and calls its pause between them and
    before the commit (the process passes os.sched_yield): still one transaction, every good
    row in, a bad row in a later slice refused alone."""
    path = databases.location(tmp_path, "p.db")
    databases.create(path)
    conn = connect(Location.of(path))
    try:
        settings = GameSettings(duration_ms=1000)
        session = ("s1", "g", None, "1.2.3.4", None, settings, 0, 0, "start")
        assert run_batch(
            conn,
            [
                Job(ops.insert_game, ("g", settings, 0), None, True),
                Job(ops.insert_session, session, None, True),
            ],
        )
        rows = ROWS_A_SLICE * 3 + 50
        jobs = [
            Job(ops.insert_point, ("s1", seq, seq, seq, f"token-{seq}"), None)
            for seq in range(1, rows + 1)
        ]
        pauses: list[int] = []
        assert run_batch(conn, jobs, lambda: pauses.append(count(path, "issued_points")))
        # Four slices: three pauses between them and one before the commit, and nothing was
        # visible to another connection at any of them (one transaction).
        assert pauses == [0] * 4
        assert count(path, "issued_points") == rows
        # A bad row in a later slice: the rows go in one by one instead, the bad one refused.
        more = [
            Job(ops.insert_point, ("s1", seq, seq, seq, f"token-{seq}"), None)
            for seq in range(rows + 1, 2 * rows + 1)
        ]
        more.insert(ROWS_A_SLICE * 2 + 10, Job(ops.insert_point, ("s1", 5, 5, 5, "dup"), None))
        assert run_batch(conn, more, lambda: None)
        assert count(path, "issued_points") == 2 * rows
        assert [job.error is None for job in more].count(False) == 1
    finally:
        conn.close()
    assert _writer_child.PAUSE is os.sched_yield


def explode(conn: Any) -> None:
    raise RuntimeError("not a database error")


async def test_any_exception_from_a_unit_stays_with_that_unit(store: Store) -> None:
    """A value the database cannot hold (SQLite: OverflowError; PostgreSQL: out of range), in
    a queued row or an awaited unit, or any other exception: that unit fails, the rest of its
    batch commits, the writer goes on."""
    with trio.fail_after(10):
        store.add_point_soon("s1", 1, 1, 1, "a")
        store.add_point_soon("s1", 2, 2**63, 2, "too big for a 64-bit integer")
        store.add_point_soon("s1", 3, 3, -(2**63) - 1, "too small for a 64-bit integer")
        store.add_rejected_point_soon("s1", 2**64, 0, "clock")
        store.add_point_soon("s1", 4, 4, 4, "b")
        with pytest.raises((OverflowError, *DATABASE_ERRORS, *_data_errors())):
            await store._write(ops.insert_burst, "s1", 2**63)
        with pytest.raises(RuntimeError):
            await store._write(explode)
        store.add_burst_soon("s1", 7)
        await store._write(ops.insert_burst, "s1", 8)
        assert count(store, "issued_points") == 2
        assert count(store, "bursts") == 2
        assert count(store, "rejected_points") == 0
        # And it still writes afterwards.
        await store.end_session("s1", "end", 9, "time_up")
        record = await store.session("s1")
        assert record is not None and sorted(record.points) == [1, 4] and record.end_token == "end"
        assert store.failure is None


def test_the_writer_process_survives_a_frame_it_cannot_read(tmp_path: Path) -> None:
    """A batch that cannot be unpickled is answered as failed; the next one still commits."""
    path = databases.location(tmp_path, "w.db")
    databases.create(path)
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    garbage = b"not a pickle"
    good = pickle.dumps([(ops.insert_game, ("g", GameSettings(duration_ms=5), 0), True)])
    for payload in (garbage, good):
        os.write(to_child_w, FRAME_LENGTH.pack(len(payload)) + payload)
    os.close(to_child_w)
    assert _writer_child.serve(path, to_child_r, from_child_w) == 0
    os.close(from_child_w)
    replies = []
    data = os.read(from_child_r, 1 << 20)
    while data:
        (length,) = FRAME_LENGTH.unpack_from(data)
        replies.append(pickle.loads(data[4 : 4 + length]))
        data = data[4 + length :]
    assert replies[0][0] is False and isinstance(replies[0][1], str)
    assert replies[1] == (True, [(None, None)])
    assert count(path, "games") == 1


def _data_errors() -> tuple[type[Exception], ...]:
    """PostgreSQL refuses a value out of a column's range with a DataError."""
    import psycopg

    return (psycopg.errors.DataError,)


@pytest.mark.sqlite_only
async def test_processes_sharing_one_writer_each_get_their_own_answers(tmp_path: Path) -> None:
    """`--workers N` on SQLite: one writer process serves several stores over a Unix socket;
    each store's writes are committed in its order and answered to it alone; the writer
    exits once its input closes and every store has ended its channel."""
    where = databases.location(tmp_path, "s.db")
    databases.create(where)
    path = str(tmp_path / "writer.sock")
    command, env = children.python_module("scoreserver.store.writer_child", where, "--shared", path)
    with trio.fail_after(30):
        writer = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        assert writer.stdout is not None and writer.stdin is not None
        assert await writer.stdout.receive_some() == b"listening\n"
        stores = [Store(where, writer="process", writer_socket=path) for _ in range(2)]
        async with trio.open_nursery() as nursery:
            for store in stores:
                await nursery.start(store.run)
            settings = GameSettings(duration_ms=1000)
            await stores[0].decide_new_game("g", settings, actor="t", audit_note="", now=0)

            async def play(store: Store, session_id: str) -> None:
                await store.add_session(session_id, "g", None, "1.2.3.4", None, settings, 0, 0, "s")
                for seq in range(1, 201):
                    store.add_point_soon(session_id, seq, seq, seq, f"{session_id}-{seq}")
                await store.end_session(session_id, "end", 999, "time_up")
                record = await store.session(session_id)
                assert record is not None and len(record.points) == 200

            async with trio.open_nursery() as players:
                for index, store in enumerate(stores):
                    players.start_soon(play, store, f"s{index}")
            # A unit failing in one store's batch is that store's error alone.
            with pytest.raises(ConflictError):
                await stores[1].add_session("s0", "g", None, "x", None, settings, 0, 0, "s")
            # The stores started no writer of their own: the shared one is the only one.
            assert child_processes("scoreserver.store.writer_child") == [writer.pid]
            nursery.cancel_scope.cancel()
        assert count(where, "issued_points") == 400
        await writer.stdin.aclose()
        assert await writer.wait() == 0
    assert not (tmp_path / "writer.sock").exists()


async def test_a_login_budget_waits_only_for_charges_of_its_own_key(
    tmp_path: Path, engine: str
) -> None:
    """On PostgreSQL a charge takes its key's lock in a short transaction of its own: it
    waits neither for the writer's batches (the writer is stopped here) nor for another key,
    only for another charge of the same key."""
    if engine != "postgres":
        pytest.skip("SQLite has one writer: charges are counted one at a time by its lock")
    import psycopg

    store = Store(databases.location(tmp_path, "s.db"), writer="process")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        assert store._process is not None
        writer = store._process.pid  # this store's own writer, whatever else runs
        os.kill(writer, signal.SIGSTOP)
        try:
            with psycopg.connect(store.location.target, autocommit=True) as other:
                other.execute("BEGIN")
                other.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                    (ops.ATTEMPTS_LOCK, "login:ann"),
                )
                with trio.fail_after(10):  # another key: at once
                    assert len(await store.charge_attempts([("login", "bob", 5, 60_000, "")], 1))
                charged = trio.Event()

                async def charge_ann() -> None:
                    await store.charge_attempts([("login", "ann", 5, 60_000, "")], 1)
                    charged.set()

                nursery.start_soon(charge_ann)
                with trio.move_on_after(1.0):
                    await charged.wait()
                assert not charged.is_set()  # the same key: after the other holder
                other.execute("COMMIT")
                with trio.fail_after(10):
                    await charged.wait()
        finally:
            os.kill(writer, signal.SIGCONT)
        assert count(store, "attempts") == 2
        nursery.cancel_scope.cancel()


async def test_a_player_search_finds_any_case_and_any_look_alike_by_one_rule(
    tmp_path: Path,
) -> None:
    """/admin's player search, on both engines: `zoë` finds `ZOË` and `STRASSE` finds
    `Straße` (SQLite's lower() is ASCII-only, PostgreSQL's does not fold ß), a part of a name
    finds it, Latin `alice` finds a Cyrillic `АLICE`, LIKE's wildcards are plain characters,
    and a number finds the account with that id and names holding those digits as they are
    (not `l` for `1`)."""
    writer = Store(databases.location(tmp_path, "s.db"), writer="inline")
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        ids = {
            name: await writer.add_user(name, "hash", 1)
            for name in ("ZOË", "Straße", "\u0410LICE", "bob", "50%_off", "carl", "Lil 7")
        }

        async def found(search: str) -> set[str]:
            return {u["name"] for u in await writer.users(search=search)}

        assert await found("zoë") == {"ZOË"}
        assert await found("STRASSE") == {"Straße"}
        assert await found("trass") == {"Straße"}
        assert await found("alice") == {"\u0410LICE"}
        assert await found("lic") == {"\u0410LICE"}
        assert await found("%") == {"50%_off"}
        assert await found("_") == {"50%_off"}
        assert await found("BO") == {"bob"}
        assert await found("nobody") == set()
        assert await found(str(ids["carl"])) == {"carl"}
        assert await found(str(ids["ZOË"])) == {"ZOË"}  # id 1: not Lil, as a look-alike would
        assert ids["ZOË"] == 1 and ids["Lil 7"] == 7
        assert await found("7") == {"Lil 7"}
        assert len(await writer.users()) == 7
        nursery.cancel_scope.cancel()
