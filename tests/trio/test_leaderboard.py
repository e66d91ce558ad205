"""Leaderboard ranks: best per player, ties, paging, around, windows, hidden players."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from scoreserver.core.rules import GameSettings
from scoreserver.server.app import Server
from scoreserver.store import ops
from scoreserver.store.connect import open_database
from scoreserver.store.engine import transaction

from .. import databases
from ..conftest import http

pytestmark = pytest.mark.engines

NOW = 1_800_000_000_000
DAY = 86_400_000


# The board's own mechanics: no review of the top (no rate ceiling to take a range from, and
# never enough trusted players), which test_timing_e2e.py tests.
BOARD_ONLY = GameSettings(duration_ms=1000, human_max_rate=0, review_min_players=2**53)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Any]:
    connection = open_database(databases.resolve(tmp_path / "board.db"))
    with transaction(connection):
        ops.insert_game(connection, "g", BOARD_ONLY, 0)
        ops.insert_game(connection, "other", BOARD_ONLY, 0)
    yield connection
    connection.close()


_sessions = iter(range(10**6))


def score(conn: Any, name: str, value: int, at: int, game: str = "g") -> str:
    """Save a score for `name` (created if new) at time `at`; returns the session id."""
    user = ops.user_by_name(conn, name)
    with transaction(conn):
        user_id = user.id if user else ops.insert_user(conn, name, "x", 0)
        session_id = f"s{next(_sessions)}"
        ops.insert_session(
            conn, session_id, game, user_id, None, None, GameSettings(duration_ms=1000), at, at, "t"
        )
        ops.end_session(conn, session_id, "e", at, "time_up")
        conn.execute("UPDATE game_sessions SET state = 'ended' WHERE id = ?", (session_id,))
        ops.save_result(conn, session_id, game, user_id, value, at)
    return session_id


def board(conn: Any, **kwargs: Any) -> list[tuple[int, str, int]]:
    return [(e["rank"], e["name"], e["score"]) for e in ops.leaderboard(conn, "g", NOW, **kwargs)]


def test_best_score_per_player_highest_first(conn: Any) -> None:
    score(conn, "ann", 10, NOW - 50)
    score(conn, "ann", 30, NOW - 40)
    score(conn, "ann", 20, NOW - 30)
    score(conn, "ben", 25, NOW - 20)
    score(conn, "cat", 40, NOW - 10, game="other")
    assert board(conn) == [(1, "ann", 30), (2, "ben", 25)]


def test_ties_share_a_rank_and_the_earlier_comes_first(conn: Any) -> None:
    score(conn, "late", 20, NOW - 10)
    score(conn, "top", 50, NOW - 100)
    score(conn, "early", 20, NOW - 90)
    score(conn, "mid", 20, NOW - 50)
    score(conn, "low", 5, NOW - 80)
    assert board(conn) == [
        (1, "top", 50),
        (2, "early", 20),
        (2, "mid", 20),
        (2, "late", 20),
        (5, "low", 5),
    ]


def test_a_player_tied_with_themselves_counts_once_at_the_first_time(
    conn: Any,
) -> None:
    score(conn, "ann", 20, NOW - 10)
    score(conn, "ben", 20, NOW - 50)
    score(conn, "ann", 20, NOW - 100)  # ann reached 20 first
    assert board(conn) == [(1, "ann", 20), (1, "ben", 20)]


def test_paging_keeps_ranks_across_pages(conn: Any) -> None:
    for n, value in enumerate([90, 80, 80, 80, 70, 60, 60, 50]):
        score(conn, f"p{n}", value, NOW - 1000 + n)
    first = board(conn, limit=3)
    second = board(conn, limit=3, offset=3)
    third = board(conn, limit=3, offset=6)
    assert first == [(1, "p0", 90), (2, "p1", 80), (2, "p2", 80)]
    assert second == [(2, "p3", 80), (5, "p4", 70), (6, "p5", 60)]
    assert third == [(6, "p6", 60), (8, "p7", 50)]
    assert board(conn, limit=3, offset=9) == []


def test_around_centres_on_the_player(conn: Any) -> None:
    for n in range(10):
        score(conn, f"p{n}", 100 - n, NOW - 1000 + n)
    me = ops.user_by_name(conn, "p6")
    assert me is not None
    assert board(conn, limit=5, around=me.id) == [
        (5, "p4", 96),
        (6, "p5", 95),
        (7, "p6", 94),
        (8, "p7", 93),
        (9, "p8", 92),
    ]
    top = ops.user_by_name(conn, "p0")
    assert top is not None
    assert board(conn, limit=5, around=top.id)[0] == (1, "p0", 100)
    assert board(conn, limit=5, around=99999) == []


def test_windows_count_recent_scores_only(conn: Any) -> None:
    score(conn, "old", 99, NOW - 10 * DAY)
    score(conn, "week", 50, NOW - 3 * DAY)
    score(conn, "today", 10, NOW - 1000)
    score(conn, "old", 5, NOW - 2000)  # old's recent best is 5
    assert board(conn) == [(1, "old", 99), (2, "week", 50), (3, "today", 10)]
    assert board(conn, since=NOW - 7 * DAY) == [(1, "week", 50), (2, "today", 10), (3, "old", 5)]
    assert board(conn, since=NOW - DAY) == [(1, "today", 10), (2, "old", 5)]


def test_flagged_banned_and_hidden_are_left_out_and_ranks_close_up(
    conn: Any,
) -> None:
    score(conn, "flagged", 90, NOW - 100)
    score(conn, "banned", 80, NOW - 90)
    hidden_session = score(conn, "hider", 70, NOW - 80)
    score(conn, "hider", 30, NOW - 75)
    score(conn, "honest", 60, NOW - 70)
    flagged = ops.user_by_name(conn, "flagged")
    assert flagged is not None
    with transaction(conn):
        flag_id = ops.insert_flag(conn, "timing_mismatch", NOW, user_id=flagged.id)
        ops.set_ban(conn, "banned", NOW + DAY, "cheat")
        ops.set_score_hidden(conn, hidden_session, True)
    assert board(conn) == [(1, "honest", 60), (2, "hider", 30)]
    with transaction(conn):
        ops.resolve_flag(conn, flag_id, "cleared", "false alarm", NOW)
        ops.set_score_hidden(conn, hidden_session, False)
    assert board(conn) == [(1, "flagged", 90), (2, "hider", 70), (3, "honest", 60)]
    with transaction(conn):
        conn.execute("UPDATE users SET banned_until = ? WHERE name = 'banned'", (NOW - 1,))
    assert board(conn)[1] == (2, "banned", 80)  # an ended ban shows the scores again


async def test_http_parameters_are_checked(server: Server) -> None:
    with trio.fail_after(10):
        async with http(server) as api:
            ok = await api.get(
                "/api/games/quick/leaderboard", params={"limit": 100, "offset": 0, "window": "week"}
            )
            assert ok.status_code == 200 and ok.json() == {"game_id": "quick", "entries": []}
            for params in (
                {"limit": 0},
                {"limit": 101},
                {"limit": "ten"},
                {"offset": -1},
                {"window": "year"},
                {"around": "me"},
            ):
                bad = await api.get("/api/games/quick/leaderboard", params=params)
                assert bad.status_code == 400, params
                assert bad.json()["error"] == "bad_request"
