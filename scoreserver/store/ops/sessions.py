"""Game sessions: their rows, their issued and rejected points and bursts, their end, the
saving of a result and the review range it is judged against."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict

from ...core import review
from ...core.lifecycle import Move, SessionState, after
from ...core.rules import EndReason, GameSettings, IssuedPoints, SessionRecord
from ...errors import BannedError, ConflictError, NotFoundError
from ..engine import INTEGRITY_ERRORS, Connection, is_unique_violation
from ..records import (
    MyResult,
    SavedResult,
)
from .common import notify
from .flags import insert_flag
from .games import get_game
from .log import log_result
from .users import user_by_id


def insert_session(
    conn: Connection,
    session_id: str,
    game_id: str,
    user_id: int | None,
    guest_addr: str | None,
    user_agent: str | None,
    settings: GameSettings,
    started_at: int,
    client_start_ts: int,
    start_token: str,
    node_id: str | None = None,
) -> None:
    try:
        conn.execute(
            "INSERT INTO game_sessions (id, game_id, user_id, guest_addr, user_agent,"
            " settings_json, started_at, client_start_ts, start_token, node_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                node_id,
            ),
        )
    except INTEGRITY_ERRORS as exc:
        if not is_unique_violation(exc):
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
    conn: Connection, session_id: str, seq: int, server_ts: int, client_ts: int, token: str
) -> None:
    conn.execute(insert_point.row_sql, (session_id, seq, server_ts, client_ts, token))  # type: ignore[attr-defined]


@row_insert(
    "INSERT INTO rejected_points (session_id, server_ts, client_ts, reason) VALUES (?, ?, ?, ?)"
)
def insert_rejected_point(
    conn: Connection, session_id: str, server_ts: int, client_ts: int, reason: str
) -> None:
    conn.execute(insert_rejected_point.row_sql, (session_id, server_ts, client_ts, reason))  # type: ignore[attr-defined]


@row_insert("INSERT INTO bursts (session_id, at_ms) VALUES (?, ?)")
def insert_burst(conn: Connection, session_id: str, at_ms: int) -> None:
    conn.execute(insert_burst.row_sql, (session_id, at_ms))  # type: ignore[attr-defined]


def end_session(
    conn: Connection,
    session_id: str,
    end_token: str | None,
    ended_at: int,
    reason: str,
) -> bool:
    """End a running session; False when it was not running (another node found this one gone
    and voided it): then nothing changed, and the end must not be announced."""
    state = after(SessionState.RUNNING, reason)
    cur = conn.execute(
        "UPDATE game_sessions SET end_token = ?, ended_at = ?, end_reason = ?, state = ?"
        " WHERE id = ? AND state = ?",
        (end_token, ended_at, reason, state, session_id, SessionState.RUNNING),
    )
    return int(cur.rowcount) == 1


def void_lost_sessions(conn: Connection, now: int) -> int:
    """Running sessions whose node is gone (no row in `nodes`) were cut off: they are void and
    nobody can submit them. No flag: the player did nothing wrong."""
    cur = conn.execute(
        "UPDATE game_sessions SET state = ?, end_reason = ?, ended_at = ?"
        " WHERE state = ? AND (node_id IS NULL OR node_id NOT IN (SELECT id FROM nodes))",
        (after(SessionState.RUNNING, Move.CRASHED), Move.CRASHED, now, SessionState.RUNNING),
    )
    return int(cur.rowcount)


def load_session(conn: Connection, session_id: str) -> SessionRecord | None:
    row = conn.execute("SELECT * FROM game_sessions WHERE id = ?", (session_id,)).fetchone()
    if row is None:
        return None
    points = IssuedPoints()
    for p in conn.execute(
        "SELECT seq, server_ts, token FROM issued_points WHERE session_id = ?", (session_id,)
    ):
        points.add(p["seq"], p["server_ts"], p["token"])
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
        submitted=row["state"] == SessionState.SUBMITTED,
        ended_by=reason,
    )


def save_result(
    conn: Connection,
    session_id: str,
    game_id: str,
    user_id: int | None,
    score: int,
    now: int,
    points_digest: bytes | None = None,
) -> SavedResult:
    """Close the session with its accepted result; keep the score of a logged-in player, held
    off boards when it is above the game's trusted range (core/review.py) or an open flag
    holds the player.

    The result is appended to the results log in the same transaction (`log_index`, and the
    player's salt and name for the receipt).

    Raises ConflictError if the session was closed, and BannedError (changing nothing) if the
    player is banned at `now`.
    """
    owner = user_by_id(conn, user_id) if user_id is not None else None
    if owner is not None and owner.banned(now):
        raise BannedError("account banned")
    cur = conn.execute(
        "UPDATE game_sessions SET state = ? WHERE id = ? AND state = ?",
        (SessionState.SUBMITTED, session_id, SessionState.ENDED),
    )
    if cur.rowcount != 1:
        raise ConflictError("session already submitted")
    if user_id is None:
        return SavedResult(False)
    settings = get_game(conn, game_id)
    # In the saving transaction: the range is the one this score is judged against, and the
    # flag is committed with the score it questions.
    found = _review_range_quickly(conn, game_id, settings, now) if settings is not None else None
    above = found is not None and review.above_range(score, found)
    holds_score = above and settings is not None and settings.hold_outliers
    # Read before the score is in: the population it was judged against.
    evidence = _review_evidence(conn, game_id, settings, score, now) if above else None
    conn.execute(
        "INSERT INTO scores (session_id, game_id, user_id, score, created_at, held)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (session_id, game_id, user_id, score, now, int(holds_score)),
    )
    notify(conn, f"score {game_id}")
    flag_id = None
    if evidence is not None:
        flag_id = insert_flag(
            conn,
            review.OUTLIER_SCORE,
            now,
            game_id=game_id,
            session_id=session_id,
            user_id=user_id,
            detail={**evidence, "held": holds_score},
            holds=False,  # the score is held (scores.held), not the player's other results
        )
    held_reason = (
        review.HELD_FLAGGED
        if _player_held(conn, user_id)
        else review.REVIEW_TOP_SCORE
        if holds_score
        else None
    )
    started_at, ended_at = conn.execute(
        "SELECT started_at, ended_at FROM game_sessions WHERE id = ?", (session_id,)
    ).fetchone()
    ended_at = now if ended_at is None else ended_at
    log_index, salt = log_result(
        conn,
        session_id=session_id,
        game_id=game_id,
        user_id=user_id,
        score=score,
        started_at=int(started_at),
        ended_at=int(ended_at),
        points_digest=points_digest,
        held=held_reason is not None,
        now=now,
    )
    assert owner is not None
    return SavedResult(
        True,
        held_reason,
        flag_id,
        log_index=log_index,
        salt=salt,
        name=owner.name,
        started_at=int(started_at),
        ended_at=int(ended_at),
    )


def _review_evidence(
    conn: Connection, game_id: str, settings: GameSettings | None, score: int, now: int
) -> dict[str, object]:
    """A held result's evidence, from the whole trusted population (the quick range a save
    reads stops counting players at the number needed)."""
    assert settings is not None
    trusted = trusted_bests(conn, game_id, now)
    return review.evidence(score, review.review_range(trusted, settings), trusted)


def _player_held(conn: Connection, user_id: int) -> bool:
    """Whether an open flag that holds keeps this player off boards (a flag that someone else's
    failed submission of this session raised is theirs, not the player's)."""
    row = conn.execute(
        "SELECT 1 FROM flags WHERE status = 'open' AND holds = 1 AND user_id = ? LIMIT 1",
        (user_id,),
    ).fetchone()
    return row is not None


# Which results are trusted (see trusted_bests); :game and :now are bound by the callers.
_TRUSTED_FROM = (
    " FROM scores s JOIN users u ON u.id = s.user_id JOIN games g ON g.id = s.game_id"
    " WHERE s.game_id = :game AND s.hidden = 0 AND s.held = 0"
    "  AND (u.banned_until IS NULL OR u.banned_until <= :now)"
    "  AND (s.reviewed_at IS NOT NULL"
    "       OR s.created_at - u.created_at >= g.review_account_age_h * 3600000)"
    "  AND NOT EXISTS (SELECT 1 FROM flags f WHERE f.user_id = s.user_id"
    "                  AND f.status = 'open')"
    "  AND NOT EXISTS (SELECT 1 FROM flags f WHERE f.session_id = s.session_id"
    "                  AND f.user_id = s.user_id AND f.status <> 'cleared')"
)


def _review_range_quickly(
    conn: Connection, game_id: str, settings: GameSettings, now: int
) -> review.ReviewRange:
    """The same range as review.review_range over trusted_bests, without reading the whole
    population when the game has enough trusted players: the count stops at the number
    needed, and the top is the first trusted result down the board's index (scores_board).
    Saving a result costs this in the writer's transaction, so it must not grow with the
    game (33 ms at 20,000 results read whole; see docs/performance-notes.md)."""
    needed = settings.review_min_players
    params = {"game": game_id, "now": now}
    enough = conn.execute(
        f"SELECT COUNT(*) FROM (SELECT DISTINCT s.user_id {_TRUSTED_FROM} LIMIT :needed) t",
        {**params, "needed": needed},
    ).fetchone()[0]
    if enough < needed:
        return review.review_range(trusted_bests(conn, game_id, now), settings)
    top = conn.execute(
        f"SELECT s.score {_TRUSTED_FROM} ORDER BY s.score DESC LIMIT 1", params
    ).fetchone()[0]
    return review.ReviewRange(int(top), "trusted players", int(enough), needed)


def trusted_bests(conn: Connection, game_id: str, now: int) -> list[review.TrustedBest]:
    """The best trusted result of each trusted player of a game (see core/review.py): not
    hidden or held, no open flag on the player, no flag on the session that a reviewer did
    not clear, the account not banned, and either old enough (the game's
    `review_account_age_h` when the result was saved) or cleared by a reviewer."""
    rows = conn.execute(
        "SELECT s.user_id, MAX(s.score) AS best,"
        " MAX(CASE WHEN s.reviewed_at IS NOT NULL THEN s.score END) AS reviewed_best"
        f"{_TRUSTED_FROM} GROUP BY s.user_id",
        {"game": game_id, "now": now},
    ).fetchall()
    return [
        review.TrustedBest(int(row["best"]), row["reviewed_best"] == row["best"]) for row in rows
    ]


def review_range(conn: Connection, game_id: str, now: int) -> dict[str, object] | None:
    """A game's review range and its trusted population, as /admin and `games show` show it."""
    settings = get_game(conn, game_id)
    if settings is None:
        return None
    trusted = trusted_bests(conn, game_id, now)
    found = review.review_range(trusted, settings)
    return {
        "top": found.top,
        "from": found.source,
        "trusted_players": found.trusted_players,
        "trusted_players_needed": found.needed_players,
        "trusted_scores": sorted(t.score for t in trusted),
    }


def my_results(conn: Connection, user_id: int, now: int, limit: int = 50) -> list[MyResult]:
    """A player's own saved results, newest first, each with whether it is on the boards and
    why not: `held_reason` review_top_score (held for review), flagged (an open flag holds
    the player), hidden, banned."""
    user = user_by_id(conn, user_id)
    banned = user is not None and user.banned(now)
    held_player = conn.execute(
        "SELECT 1 FROM flags WHERE user_id = ? AND status = 'open' AND holds = 1 LIMIT 1",
        (user_id,),
    ).fetchone()
    out: list[MyResult] = []
    for row in conn.execute(
        "SELECT s.session_id, s.game_id, s.score, s.created_at, s.hidden, s.held,"
        " EXISTS (SELECT 1 FROM flags f WHERE f.session_id = s.session_id"
        "  AND f.user_id = s.user_id AND f.status = 'open' AND f.holds = 1) AS session_flagged"
        " FROM scores s WHERE s.user_id = ? ORDER BY s.created_at DESC, s.id DESC LIMIT ?",
        (user_id, limit),
    ):
        reason = None
        if row["hidden"]:
            reason = "hidden"
        elif banned:
            reason = "banned"
        elif row["held"]:
            reason = review.REVIEW_TOP_SCORE
        elif held_player is not None or row["session_flagged"]:
            reason = review.HELD_FLAGGED
        out.append(
            MyResult(
                session_id=row["session_id"],
                game_id=row["game_id"],
                score=int(row["score"]),
                created_at=int(row["created_at"]),
                held=reason in (review.REVIEW_TOP_SCORE, review.HELD_FLAGGED),
                held_reason=reason,
            )
        )
    return out


def set_score_hidden(conn: Connection, session_id: str, hidden: bool) -> None:
    cur = conn.execute(
        "UPDATE scores SET hidden = ? WHERE session_id = ?", (int(hidden), session_id)
    )
    if cur.rowcount != 1:
        raise NotFoundError(f"no saved score for session {session_id!r}")
