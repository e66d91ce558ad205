"""The leaderboard and the results behind it."""

from __future__ import annotations

import time
from typing import Any, cast

from ...errors import ConflictError, NotFoundError
from ..engine import Connection, no_limit
from ..records import (
    BoardEntry,
    Result,
)

_BOARD_SQL = """
WITH eligible AS (
    SELECT s.user_id, s.score, s.created_at, s.id, s.session_id,
           ROW_NUMBER() OVER (
               PARTITION BY s.user_id ORDER BY s.score DESC, s.created_at, s.id
           ) AS nth
    FROM scores s JOIN users u ON u.id = s.user_id
    WHERE s.game_id = :game_id AND s.hidden = 0 AND s.held = 0 AND s.created_at >= :since
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
    conn: Connection,
    game_id: str,
    now: int,
    *,
    limit: int = 10,
    offset: int = 0,
    around: int | None = None,
    since: int = 0,
    with_sessions: bool = False,
) -> list[BoardEntry]:
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
        {**params, "limit": no_limit(limit), "offset": offset},
    ).fetchall()
    return [cast(BoardEntry, dict(row)) for row in rows]


def list_results(conn: Connection, game_id: str, since: int = 0) -> list[Result]:
    """Every saved result of a game since `since`, with what decides whether it is shown."""
    return [
        cast(Result, dict(row))
        for row in conn.execute(
            "SELECT s.session_id, s.user_id, u.name, s.score, s.created_at, s.hidden,"
            " CASE WHEN u.banned_until IS NOT NULL AND u.banned_until > :now THEN 1 ELSE 0 END"
            "  AS banned,"
            " CASE WHEN s.held = 1 OR EXISTS (SELECT 1 FROM flags f WHERE f.user_id = s.user_id"
            "  AND f.status = 'open' AND f.holds = 1) THEN 1 ELSE 0 END AS held"
            " FROM scores s JOIN users u ON u.id = s.user_id"
            " WHERE s.game_id = :game AND s.created_at >= :since ORDER BY s.created_at, s.id",
            {"game": game_id, "since": since, "now": int(time.time() * 1000)},
        )
    ]


def session_by_prefix(conn: Connection, prefix: str) -> str:
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
