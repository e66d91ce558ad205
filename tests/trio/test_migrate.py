"""`scoreserver migrate --to postgresql://...`: a SQLite database that grew (an event) copied
to PostgreSQL, checked row for row; a server then runs on the copy."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import trio

from scoreserver.core.rules import GameSettings
from scoreserver.errors import StoreError
from scoreserver.ops import cli
from scoreserver.store import migrate, ops

from .. import databases
from ..conftest import connect, http, make_config, running_server
from .test_end_to_end import new_player, play_quick, submit_http


def grown_database(path: Path) -> str:
    """A SQLite database with rows in every table (store operations, as the server makes
    them), including the awkward ones: bytes, NULLs, floats, a look-alike-free name in CJK,
    a flag's JSON, rejected points and bursts whose order is their rowid."""
    where = str(path)
    game = GameSettings(duration_ms=30_000, min_rhythm_cv=0.07, title="Finals ☆")
    databases.run(where, ops.insert_game, "finals", game, 1)
    for n, name in enumerate(("ann", "李小龙", "bo")):
        user_id = databases.run(where, ops.insert_user, name, f"hash{n}", 10 + n)
        databases.run(where, ops.insert_login_token, bytes([n]) * 32, user_id, 20, 10**13)
        for k in range(3):
            session = f"{n:02x}{k:030x}"
            row = (session, "finals", user_id, None, "UA", game, 100, 90, "st")
            databases.run(where, ops.insert_session, *row)
            for seq in range(1, 6):
                databases.run(where, ops.insert_point, session, seq, 100 + seq, 90 + seq, f"t{seq}")
            databases.run(where, ops.insert_rejected_point, session, 200, 190, "too_fast")
            databases.run(where, ops.insert_burst, session, 150 + k)
            databases.run(where, ops.end_session, session, "et", 300, "time_up")
            databases.run(where, ops.save_result, session, "finals", user_id, 10 * n + k, 400)
    databases.run(
        where, ops.insert_flag, "inhuman_timing", 500, user_id=1, detail={"cv": 0.01, "n": [1, 2]}
    )
    databases.run(where, ops.insert_flag, "bad_token", 501, guest_addr="10.0.0.9")
    databases.run(where, ops.record_signing_key, "00112233aabbccdd", b"\x00\xff" * 16, 1)
    databases.run(where, ops.set_admin_password, "$argon2id$x", "cli", 2)
    databases.run(where, ops.insert_admin_session, b"\x07" * 32, 3, 10**13, "127.0.0.1")
    ban = {"ban_until": ops.FOREVER, "note": "alt", "actor": "t", "audit_note": "x", "now": 4}
    databases.run(where, ops.decide_ban, "bo", **ban)
    return where


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def table_rows(where: str, table: migrate.Table) -> list[tuple[Any, ...]]:
    conn = databases.connect(where)
    try:
        return list(migrate._rows(conn, table))
    finally:
        conn.close()


async def test_a_grown_sqlite_database_moves_to_postgresql_row_for_row(tmp_path: Path) -> None:
    source = grown_database(tmp_path / "event.db")
    target = databases.cluster().new_database()
    code, out, err = run_cli("migrate", "--db", source, "--to", target)
    assert code == 0, err
    assert "every row checked" in out and "issued_points: 45 rows" in out
    for table in migrate.TABLES:
        assert table_rows(target, table) == table_rows(source, table), table.name
    assert sum(len(table_rows(source, t)) for t in migrate.TABLES) > 90
    # Ids go on after the copied ones; the ban, the flag and the board came along.
    assert databases.run(target, ops.insert_user, "cy", "h", 99) == 4
    assert databases.read(target, ops.user_by_name, "BO").banned(10**12)
    board = databases.read(target, ops.leaderboard, "finals", 10**6)
    assert [(e["name"], e["score"]) for e in board] == [("李小龙", 12)]  # ann held, bo banned
    # A server runs on the copy: the game and its board are there, and a new game is played.
    config = make_config(tmp_path)
    config.db_path = target
    databases.add_game(target, "quick", duration_ms=1000, submission_window_ms=60_000)
    with trio.fail_after(60):
        async with running_server(config) as server:
            dee = await new_player(server, "dee")
            async with connect(server) as client:
                await client.login(dee)
                game = await play_quick(client, 4, dee["user_id"])
            result = await submit_http(server, game)
            assert result["accepted"] and result["saved"]
            async with http(server) as api:
                shown = (await api.get("/api/games/finals/leaderboard")).json()["entries"]
            assert [e["name"] for e in shown] == ["李小龙"]


def test_migrate_refuses_a_target_that_is_not_empty_and_keeps_it(tmp_path: Path) -> None:
    source = grown_database(tmp_path / "event.db")
    target = databases.cluster().new_database()
    databases.add_game(target, "mine", duration_ms=5000)
    code, _, err = run_cli("migrate", "--db", source, "--to", target)
    assert code == 1 and "not empty" in err
    assert list(databases.read(target, ops.list_games)) == ["mine"]


def test_a_row_that_differs_rolls_the_whole_copy_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = grown_database(tmp_path / "event.db")
    target = databases.cluster().new_database()
    real_insert = migrate._insert

    def lossy(conn: Any, table: migrate.Table, rows: list[tuple[Any, ...]]) -> None:
        if table.name == "issued_points":
            rows = [(*row[:-1], "altered") if i == 7 else row for i, row in enumerate(rows)]
        real_insert(conn, table, rows)

    monkeypatch.setattr(migrate, "_insert", lossy)
    with pytest.raises(StoreError, match="issued_points row 7 differs"):
        migrate.copy(databases.Location.of(source), databases.Location.of(target))
    assert databases.read(target, ops.list_games) == {}  # nothing was committed


def test_an_event_comes_home_from_postgresql_to_one_file(tmp_path: Path) -> None:
    source = grown_database(tmp_path / "event.db")
    server = databases.cluster().new_database()
    assert run_cli("migrate", "--db", source, "--to", server)[0] == 0
    home = str(tmp_path / "home.db")
    code, out, err = run_cli("migrate", "--db", server, "--to", home)
    assert code == 0 and "every row checked" in out, err
    for table in migrate.TABLES:
        assert table_rows(home, table) == table_rows(source, table), table.name


def test_migrate_also_copies_sqlite_to_a_new_sqlite_file(tmp_path: Path) -> None:
    source = grown_database(tmp_path / "event.db")
    code, out, err = run_cli("migrate", "--db", source, "--to", str(tmp_path / "copy.db"))
    assert code == 0, err
    for table in migrate.TABLES:
        assert table_rows(str(tmp_path / "copy.db"), table) == table_rows(source, table)
