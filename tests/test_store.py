"""The store's writer thread: group commit, order, failures contained to their unit."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from scoreserver import store as db
from scoreserver.errors import ConflictError
from scoreserver.rules import GameSettings


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[db.Store]:
    writer = db.Store(tmp_path / "s.db")
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.write(db.insert_game, "g", GameSettings(duration_ms=1000), 0)
        await writer.write(
            db.insert_session,
            "s1",
            "g",
            None,
            "1.2.3.4",
            None,
            GameSettings(duration_ms=1000),
            0,
            0,
            "start",
        )
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


async def test_stopping_commits_what_is_queued(tmp_path: Path) -> None:
    writer = db.Store(tmp_path / "s.db")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.write(db.insert_game, "g", GameSettings(duration_ms=1000), 0)
            await writer.write(
                db.insert_session,
                "s",
                "g",
                None,
                None,
                None,
                GameSettings(duration_ms=1000),
                0,
                0,
                "t",
            )
            for seq in range(1, 101):
                writer.write_soon(db.insert_point, "s", seq, seq, seq, "t")
            nursery.cancel_scope.cancel()  # as the server does on shutdown
        assert count(tmp_path / "s.db", "issued_points") == 100


def test_schema_version_is_checked(tmp_path: Path) -> None:
    conn = db.open_database(tmp_path / "v.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(db.StoreError, match="version 7"):
        db.open_database(tmp_path / "v.db")
