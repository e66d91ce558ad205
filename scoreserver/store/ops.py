"""The store's named operations: each a function of a connection (`engine.Connection`), in
SQL both engines run (SQLite's placeholders; `postgres.PgConnection` translates them). The
store runs writes in its writer's transactions and reads on reader connections; nothing
outside this package writes SQL.

Operations are module-level functions so that the writer process can unpickle them by name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, cast

from ..core import review, timing
from ..core.lifecycle import Move, SessionState, after
from ..core.names import fold, skeleton
from ..core.rules import EndReason, GameSettings, IssuedPoint, SessionRecord
from ..errors import BannedError, ConflictError, NotFoundError, RateLimitedError
from .engine import INTEGRITY_ERRORS, Connection, is_unique_violation, no_limit, transaction
from .records import (
    AuditEntry,
    BoardEntry,
    Evidence,
    Flag,
    MyResult,
    NodeInfo,
    RejectedPoint,
    Result,
    SavedResult,
    SessionPoint,
    SigningKey,
    User,
    UserSummary,
)

FOREVER = 2**62  # banned_until of a ban without an end
# PostgreSQL: the channel of the notices that tell every node to re-read something (ids only:
# `score GAME_ID`, `boards`, `settings`); the lock that makes shared budgets count one by one.
CHANNEL = "scoreserver"
ATTEMPTS_LOCK = 0x5C0E_A77E  # the class of the login budgets' advisory locks (int4)


def notify(conn: Connection, payload: str) -> None:
    """Tell every node, once this transaction commits (PostgreSQL's NOTIFY; SQLite nodes poll)."""
    if conn.dialect == "postgres":
        conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))


# --- named operations: users and login tokens -----------------------------------------------


def _user(row: Any | None) -> User | None:
    if row is None:
        return None
    return User(row["id"], row["name"], row["password_hash"], row["banned_until"])


def insert_user(conn: Connection, name: str, password_hash: str, now: int) -> int:
    """A new account; ConflictError if the name, or a name that looks like it, is taken."""
    try:
        row = conn.execute(
            "INSERT INTO users (name, name_skeleton, password_hash, created_at)"
            " VALUES (?, ?, ?, ?) RETURNING id",
            (name, skeleton(name), password_hash, now),
        ).fetchone()
    except INTEGRITY_ERRORS:
        raise ConflictError(f"the name {name!r} (or one that looks like it) is taken") from None
    return int(row[0])


def user_by_name(conn: Connection, name: str) -> User | None:
    """The account whose name is `name` in any case, by one rule on both engines
    (`names.fold`): found through its look-alike key (unique, and a function of the folded
    name), then compared folded. A name kept from before look-alike keys (a look-alike of an
    older one, whose key is NULL) is found by the engine's own case rule instead."""
    wanted = fold(name)
    for row in conn.execute(
        "SELECT * FROM users WHERE name_skeleton = ?", (skeleton(name),)
    ).fetchall():
        if fold(row["name"]) == wanted:
            return _user(row)
    where = "name = ?" if conn.dialect == "sqlite" else "lower(name) = lower(?)"
    row = conn.execute(
        f"SELECT * FROM users WHERE {where} AND name_skeleton IS NULL", (name,)
    ).fetchone()
    return _user(row)


def user_by_id(conn: Connection, user_id: int) -> User | None:
    return _user(conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone())


def insert_login_token(
    conn: Connection, token_hash: bytes, user_id: int, now: int, expires_at: int
) -> None:
    conn.execute(
        "INSERT INTO login_tokens (token_hash, user_id, created_at, expires_at)"
        " VALUES (?, ?, ?, ?)",
        (token_hash, user_id, now, expires_at),
    )
    conn.execute("DELETE FROM login_tokens WHERE expires_at <= ?", (now,))


def user_by_login_token(conn: Connection, token_hash: bytes, now: int) -> User | None:
    return _user(
        conn.execute(
            "SELECT u.* FROM login_tokens t JOIN users u ON u.id = t.user_id"
            " WHERE t.token_hash = ? AND t.expires_at > ?",
            (token_hash, now),
        ).fetchone()
    )


def list_users(
    conn: Connection, *, limit: int = -1, offset: int = 0, search: str | None = None
) -> list[UserSummary]:
    """Accounts by id; `search` keeps those whose name holds it (any case) or whose id it is."""
    where, params = "", list[object]()
    if search:
        pattern = "%" + search.casefold().replace("!", "!!").replace("%", "!%").replace("_", "!_")
        where = " WHERE lower(u.name) LIKE ? ESCAPE '!'"
        params.append(pattern + "%")
        if search.isdigit() and int(search) < 2**63:
            where += " OR u.id = ?"
            params.append(int(search))
    rows = conn.execute(
        "SELECT u.id, u.name, u.created_at, u.banned_until, u.ban_note,"
        " (SELECT COUNT(*) FROM flags f WHERE f.user_id = u.id AND f.status = 'open')"
        "   AS open_flags,"
        " (SELECT COUNT(*) FROM scores s WHERE s.user_id = u.id) AS scores"
        f" FROM users u{where} ORDER BY u.id LIMIT ? OFFSET ?",
        (*params, no_limit(limit), offset),
    ).fetchall()
    return [cast(UserSummary, dict(row)) for row in rows]


def player_page(conn: Connection, user_id: int, now: int) -> dict[str, Any]:
    """Everything a reviewer looks at for one account: who, its ban, its results (each with
    why it is off the boards, if it is), its recent sessions, its flags."""
    row = conn.execute(
        "SELECT id, name, created_at, banned_until, ban_note, deleted_at,"
        " reset_expires_at FROM users WHERE id = ?",
        (user_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no user {user_id}")
    user = dict(row)
    if user.pop("reset_expires_at") is not None:
        user["reset_code_open"] = True
    sessions = [
        dict(r)
        for r in conn.execute(
            "SELECT id, game_id, started_at, ended_at, end_reason, state FROM game_sessions"
            " WHERE user_id = ? ORDER BY started_at DESC LIMIT 50",
            (user_id,),
        )
    ]
    flags = [
        _flag_dict(r)
        for r in conn.execute(
            _FLAGS + " WHERE f.user_id = ? ORDER BY f.id DESC LIMIT 100",
            (user_id,),
        )
    ]
    return {
        "user": user,
        "results": my_results(conn, user_id, now, limit=100),
        "sessions": sessions,
        "flags": flags,
    }


def games_in_use(conn: Connection) -> dict[str, dict[str, Any]]:
    """Per game: how many sessions were played, results kept, and when it was last played."""
    return {
        row["game_id"]: dict(row)
        for row in conn.execute(
            "SELECT g.id AS game_id,"
            " (SELECT COUNT(*) FROM game_sessions s WHERE s.game_id = g.id) AS sessions,"
            " (SELECT COUNT(*) FROM scores r WHERE r.game_id = g.id) AS results,"
            " (SELECT MAX(started_at) FROM game_sessions s WHERE s.game_id = g.id)"
            "   AS last_played_at"
            " FROM games g ORDER BY g.id"
        )
    }


def review_summary(conn: Connection) -> dict[str, Any]:
    """What changes the review console: open flags, the newest flag and audit row."""
    row = conn.execute(
        "SELECT (SELECT COUNT(*) FROM flags WHERE status = 'open') AS open_flags,"
        " (SELECT MAX(id) FROM flags) AS last_flag_id,"
        " (SELECT MAX(id) FROM audit) AS last_audit_id"
    ).fetchone()
    return {key: row[key] or 0 for key in ("open_flags", "last_flag_id", "last_audit_id")}


def set_ban(conn: Connection, name: str, banned_until: int | None, note: str | None) -> int:
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


def erase_user(conn: Connection, user_id: int, now: int) -> str:
    """Erase an account's personal data; keep its results, under a name that is no one's.

    Gone: the name (it becomes free to register again), the password hash, every login
    token, the user agents recorded with its sessions and flags and the addresses recorded
    with its flags (and in their evidence), a ban note; old bans' audit rows name the id
    instead, and its name's and addresses' login budget counts are dropped. Kept: the user
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
    # The addresses its flags recorded, and the copies of its name and addresses elsewhere:
    # its flags' evidence, the audit's targets of old bans, the login budgets' keys.
    addresses = set()
    for flag_id, address, detail_json in conn.execute(
        "SELECT id, guest_addr, detail_json FROM flags WHERE user_id = ?", (user_id,)
    ).fetchall():
        detail = json.loads(detail_json or "{}")
        addresses |= {a for a in (address, detail.pop("submitted_from", None)) if a}
        conn.execute(
            "UPDATE flags SET user_agent = NULL, guest_addr = NULL, detail_json = ? WHERE id = ?",
            (json.dumps(detail), flag_id),
        )
    conn.execute(
        "UPDATE audit SET target = ? WHERE target = ? AND command IN ('users ban', 'users unban')",
        (f"user {user_id}", user.name),
    )
    for key in {user.name.casefold(), *addresses}:
        conn.execute("DELETE FROM attempts WHERE key = ?", (key,))
    return user.name


def erase_own_account(conn: Connection, user_id: int, now: int) -> None:
    """A player's own erasure (DELETE /api/me), with its audit row, in one unit."""
    erase_user(conn, user_id, now)
    insert_audit(conn, "the player", "users delete", f"user {user_id}", "by themselves", now)


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
    "human_max_rate",
    "review_above",
    "review_min_players",
    "review_account_age_h",
    "archived_at",
)


def _game_values(settings: GameSettings) -> dict[str, object]:
    """A game's columns: flags as 0/1 (an INTEGER on SQLite, a BIGINT on PostgreSQL)."""
    values = asdict(settings)
    values["hold_outliers"] = int(values["hold_outliers"])
    return values


def insert_game(conn: Connection, game_id: str, settings: GameSettings, now: int) -> None:
    values = _game_values(settings)
    try:
        conn.execute(
            f"INSERT INTO games (id, {', '.join(GAME_FIELDS)}, created_at, updated_at)"
            f" VALUES (?, {', '.join('?' for _ in GAME_FIELDS)}, ?, ?)",
            (game_id, *(values[f] for f in GAME_FIELDS), now, now),
        )
    except INTEGRITY_ERRORS:
        raise ConflictError(f"game {game_id!r} exists (use `games set`)") from None
    notify(conn, "settings")


def update_game(
    conn: Connection, game_id: str, changes: Mapping[str, object], now: int
) -> GameSettings:
    current = get_game(conn, game_id)
    if current is None:
        raise NotFoundError(f"no game {game_id!r}")
    merged = GameSettings(**{**asdict(current), **changes})  # validates
    values = _game_values(merged)
    conn.execute(
        f"UPDATE games SET {', '.join(f'{f} = ?' for f in GAME_FIELDS)}, updated_at = ?"
        " WHERE id = ?",
        (*(values[f] for f in GAME_FIELDS), now, game_id),
    )
    notify(conn, "settings")
    notify(conn, "boards")
    return merged


def _settings(row: Any) -> GameSettings:
    values = {f: row[f] for f in GAME_FIELDS}
    values["hold_outliers"] = bool(values["hold_outliers"])
    return GameSettings(**values)


def get_game(conn: Connection, game_id: str) -> GameSettings | None:
    row = conn.execute("SELECT * FROM games WHERE id = ?", (game_id,)).fetchone()
    return None if row is None else _settings(row)


def list_games(conn: Connection) -> dict[str, GameSettings]:
    return {row["id"]: _settings(row) for row in conn.execute("SELECT * FROM games ORDER BY id")}


# --- game sessions --------------------------------------------------------------------------


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
) -> SavedResult:
    """Close the session with its accepted result; keep the score of a logged-in player, held
    off boards when it is above the game's trusted range (core/review.py) or an open flag
    holds the player.

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
    if _player_held(conn, user_id):
        return SavedResult(True, review.HELD_FLAGGED, flag_id)
    if holds_score:
        return SavedResult(True, review.REVIEW_TOP_SCORE, flag_id)
    return SavedResult(True, None, flag_id)


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


# --- flags ----------------------------------------------------------------------------------


def insert_flag(
    conn: Connection,
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
    """A flag for review; while open, one that `holds` keeps the player off boards.
    `guest_addr` is the client address it came from (a guest's or a player's: the column's
    name is older than players' addresses in it); an erasure forgets a player's.

    One cause is one flag: while a flag of the same reason, game and session is open against
    the same player (or, for a guest, the same address), a repeat is counted on it (its
    evidence's `repeats` and `last_at`) and its id returned, with nothing else written."""
    who = "user_id = ?" if user_id is not None else "user_id IS NULL AND guest_addr = ?"
    same = conn.execute(
        f"SELECT id, detail_json FROM flags WHERE status = 'open' AND reason = ? AND {who}"
        " AND COALESCE(game_id, '') = ? AND COALESCE(session_id, '') = ?"
        " ORDER BY id LIMIT 1",
        (reason, user_id if user_id is not None else guest_addr, game_id or "", session_id or ""),
    ).fetchone()
    if same is not None:
        evidence = json.loads(same[1] or "{}")
        evidence["repeats"] = int(evidence.get("repeats", 1)) + 1
        evidence["last_at"] = now
        conn.execute(
            "UPDATE flags SET detail_json = ? WHERE id = ?", (json.dumps(evidence), same[0])
        )
        return int(same[0])
    row = conn.execute(
        "INSERT INTO flags (created_at, reason, game_id, session_id, user_id, guest_addr,"
        " user_agent, detail_json, holds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            now,
            reason,
            game_id,
            session_id,
            user_id,
            guest_addr,
            user_agent,
            json.dumps(dict(detail or {}), default=str),
            int(holds),
        ),
    ).fetchone()
    notify(conn, "boards")  # an open flag holds its player's scores off the boards
    return int(row[0])


# A flag with its player's name (every read of flags).
_FLAGS = "SELECT f.*, u.name AS user_name FROM flags f LEFT JOIN users u ON u.id = f.user_id"


def list_flags(
    conn: Connection,
    *,
    open_only: bool = False,
    game_id: str | None = None,
    user_name: str | None = None,
    limit: int = -1,
    offset: int = 0,
) -> list[Flag]:
    """Flags, oldest first; `limit`/`offset` page them (-1: no limit)."""
    sql = _FLAGS + " WHERE 1 = 1"
    params: list[Any] = []
    if open_only:
        sql += " AND f.status = 'open'"
    if game_id is not None:
        sql += " AND f.game_id = ?"
        params.append(game_id)
    if user_name is not None:
        user = user_by_name(conn, user_name)  # one case rule on both engines
        sql += " AND f.user_id = ?"
        params.append(user.id if user is not None else -1)
    sql += " ORDER BY f.id LIMIT ? OFFSET ?"
    return [_flag_dict(row) for row in conn.execute(sql, [*params, no_limit(limit), offset])]


def _flag_dict(row: Any) -> Flag:
    flag = dict(row)
    flag["detail"] = json.loads(flag.pop("detail_json"))
    return cast(Flag, flag)


def get_flag(conn: Connection, flag_id: int) -> Flag:
    row = conn.execute(
        _FLAGS + " WHERE f.id = ?",
        (flag_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no flag {flag_id}")
    flag = _flag_dict(row)
    if flag["session_id"]:
        flag["evidence"] = session_evidence(conn, flag["session_id"])
    return flag


def session_evidence(conn: Connection, session_id: str) -> Evidence:
    """A session's timeline for a reviewer: points, rejections, bursts."""
    session = conn.execute(
        "SELECT id, game_id, user_id, guest_addr, user_agent, started_at, client_start_ts,"
        " ended_at, end_reason, state, settings_json FROM game_sessions WHERE id = ?",
        (session_id,),
    ).fetchone()
    if session is None:
        return Evidence()
    info = dict(session)
    info["settings"] = json.loads(info.pop("settings_json"))
    settings = GameSettings(**info["settings"])
    arrivals, client_times = _received(conn, session_id)
    return Evidence(
        timing={
            **timing.profile(
                arrivals, client_times, settings.human_floor_ms, settings.min_rhythm_cv
            ),
            "population": rhythm_population(conn, info["game_id"], exclude=session_id),
        },
        session=info,
        points=[
            cast(SessionPoint, dict(r))
            for r in conn.execute(
                "SELECT seq, server_ts, client_ts FROM issued_points WHERE session_id = ?"
                " ORDER BY seq",
                (session_id,),
            )
        ],
        rejected=[
            cast(RejectedPoint, dict(r))
            for r in conn.execute(
                "SELECT server_ts, client_ts, reason FROM rejected_points WHERE session_id = ?"
                " ORDER BY rowid",
                (session_id,),
            )
        ],
        bursts=[
            r[0]
            for r in conn.execute(
                "SELECT at_ms FROM bursts WHERE session_id = ? ORDER BY rowid", (session_id,)
            )
        ],
    )


def _received(conn: Connection, session_id: str) -> tuple[list[int], list[int]]:
    """Every point a session received while it ran (accepted or refused), in arrival order:
    (server times, the player's stamps)."""
    rows = conn.execute(
        "SELECT server_ts, client_ts FROM ("
        " SELECT server_ts, client_ts, 0 AS kind, seq AS n FROM issued_points"
        "  WHERE session_id = :sid"
        " UNION ALL SELECT server_ts, client_ts, 1, rowid FROM rejected_points"
        "  WHERE session_id = :sid AND reason != 'game_over'"
        ") AS received ORDER BY server_ts, kind, n",
        {"sid": session_id},
    ).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


POPULATION_SESSIONS = 200


def rhythm_population(
    conn: Connection, game_id: str, *, exclude: str | None = None
) -> dict[str, object] | None:
    """The range of rhythm figures that the game's recent unflagged sessions show, for a
    reviewer to set a flagged one beside (timing.population_range)."""
    sessions = conn.execute(
        "SELECT g.id FROM game_sessions g WHERE g.game_id = ? AND g.state IN (?, ?)"
        " AND g.id != ? AND NOT EXISTS (SELECT 1 FROM flags f WHERE f.session_id = g.id)"
        " ORDER BY g.started_at DESC LIMIT ?",
        (
            game_id,
            SessionState.ENDED,
            SessionState.SUBMITTED,
            exclude or "",
            POPULATION_SESSIONS,
        ),
    ).fetchall()
    figures = []
    for (session_id,) in sessions:
        arrivals, client_times = _received(conn, session_id)
        if len(arrivals) < timing.RHYTHM_MIN_POINTS:
            continue
        figure = timing.rhythm_figure(client_times)  # the player's clock, as the rule reads
        if figure is not None:
            figures.append(figure)
    return timing.population_range(figures)


def resolve_flag(conn: Connection, flag_id: int, status: str, note: str, now: int) -> Flag:
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


# --- keys, audit, settings ------------------------------------------------------------------


def board_fingerprint(conn: Connection) -> tuple[object, ...]:
    """Changes whenever something may have changed a leaderboard without a score being saved
    here: every moderation decision writes an audit row (from the CLI, /admin, any process),
    every flag a flags row, every game change bumps `updated_at`, a score saved by another
    node or worker its `created_at`. Cheap: index lookups."""
    row = conn.execute(
        "SELECT (SELECT MAX(id) FROM audit), (SELECT MAX(id) FROM flags),"
        " (SELECT COUNT(*) FROM flags WHERE status = 'open'), (SELECT MAX(updated_at) FROM games),"
        " (SELECT MAX(created_at) FROM scores)"
    ).fetchone()
    return tuple(row)


def record_signing_key(conn: Connection, kid: str, public_key: bytes, now: int) -> None:
    conn.execute(
        "INSERT INTO signing_keys (kid, public_key, created_at) VALUES (?, ?, ?)"
        " ON CONFLICT (kid) DO NOTHING",
        (kid, public_key, now),
    )
    notify(conn, "settings")


def retire_other_keys(conn: Connection, current_kid: str, now: int) -> None:
    conn.execute(
        "UPDATE signing_keys SET retired_at = ? WHERE kid != ? AND retired_at IS NULL",
        (now, current_kid),
    )


def list_signing_keys(conn: Connection) -> list[SigningKey]:
    rows = conn.execute("SELECT * FROM signing_keys ORDER BY created_at")
    return [cast(SigningKey, {**dict(r), "public_key": bytes(r["public_key"])}) for r in rows]


def retired_key_lifetime_ms(conn: Connection) -> int:
    """How long a retired key still verifies: a session that began just before the rotation
    may run the longest game and then be submitted within the longest submission window."""
    row = conn.execute("SELECT MAX(duration_ms), MAX(submission_window_ms) FROM games").fetchone()
    return int(row[0] or 0) + int(row[1] or 0)


def insert_audit(
    conn: Connection,
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
    notify(conn, "boards")  # every decision has its audit row


def list_audit(
    conn: Connection, *, limit: int = -1, offset: int = 0, newest_first: bool = False
) -> list[AuditEntry]:
    order = "DESC" if newest_first else "ASC"
    return [
        cast(AuditEntry, dict(r))
        for r in conn.execute(
            f"SELECT * FROM audit ORDER BY id {order} LIMIT ? OFFSET ?",
            (no_limit(limit), offset),
        )
    ]


def get_setting(conn: Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_setting(conn: Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def settings_fingerprint(conn: Connection) -> tuple[object, ...]:
    """Changes when a game is added or changed or a signing key is recorded or retired (from
    any process): the server then reloads its settings."""
    games = conn.execute("SELECT COUNT(*), MAX(updated_at) FROM games").fetchone()
    keys = conn.execute(
        "SELECT COUNT(*), MAX(created_at), COUNT(retired_at), MAX(retired_at) FROM signing_keys"
    ).fetchone()
    return (*games, *keys)


def use_signing_key(
    conn: Connection, kid: str, public_key: bytes, now: int
) -> tuple[int, list[SigningKey]]:
    """Record the key the server signs with now and retire every other; returns how long a
    retired key still verifies and every key ever recorded."""
    record_signing_key(conn, kid, public_key, now)
    retire_other_keys(conn, kid, now)
    notify(conn, "settings")
    return key_history(conn)


def key_history(conn: Connection) -> tuple[int, list[SigningKey]]:
    return retired_key_lifetime_ms(conn), list_signing_keys(conn)


def start_node(
    conn: Connection,
    node: NodeInfo,
    now: int,
    demo_id: str,
    demo: GameSettings,
    public_key: bytes,
    gone: Sequence[str] = (),
) -> tuple[int, int, list[SigningKey]]:
    """A server (a node) starts: its row, with the key it signs with; the rows of nodes gone
    (their lease ran out) and of its own earlier life (the same URL: one URL, one node) go,
    with their running sessions (void) and their keys (retired, unless a live node signs with
    one); an empty database gets the demo game. Returns how many sessions were voided, how
    long a retired key still verifies and every key ever recorded. `gone`: nodes known to be
    gone already (a process of this machine that no longer runs: server/nodes.py)."""
    record_signing_key(conn, node.kid, public_key, now)
    clock = lease_clock(conn, now)
    kids = _remove_nodes(conn, gone)
    kids += [
        row[0]
        for row in conn.execute(
            "DELETE FROM nodes WHERE url = ? OR seen_at + lease_ms < ? RETURNING kid",
            (node.url, clock),
        ).fetchall()
    ]
    _insert_node(conn, node, clock)
    _retire_keys_of_gone(conn, kids, now)
    voided = void_lost_sessions(conn, now)
    if conn.execute("SELECT 1 FROM games LIMIT 1").fetchone() is None:
        insert_game(conn, demo_id, demo, now)
    notify(conn, "settings")
    lifetime, keys = key_history(conn)
    return voided, lifetime, keys


def lease_clock(conn: Connection, now: int) -> int:
    """The time leases are written and judged by: PostgreSQL's clock when nodes share one (the
    machines' clocks may differ by more than a lease), else the caller's."""
    if conn.dialect == "postgres":
        row = conn.execute("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
        return int(row.fetchone()[0])
    return now


def _insert_node(conn: Connection, node: NodeInfo, now: int) -> None:
    conn.execute(
        "INSERT INTO nodes (id, url, host, pid, kid, started_at, seen_at, lease_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (node.node_id, node.url, node.host, node.pid, node.kid, now, now, node.lease_ms),
    )


def _remove_nodes(conn: Connection, node_ids: Sequence[str]) -> list[str | None]:
    kids = []
    for node_id in node_ids:
        kids += [
            row[0]
            for row in conn.execute("DELETE FROM nodes WHERE id = ? RETURNING kid", (node_id,))
        ]
    return kids


def _retire_keys_of_gone(conn: Connection, kids: list[str | None], now: int) -> None:
    for kid in {k for k in kids if k is not None}:
        conn.execute(
            "UPDATE signing_keys SET retired_at = ? WHERE kid = ? AND retired_at IS NULL"
            " AND kid NOT IN (SELECT kid FROM nodes WHERE kid IS NOT NULL)",
            (now, kid),
        )


def node_heartbeat(
    conn: Connection, node_id: str, kid: str, now: int, gone: Sequence[str] = ()
) -> tuple[bool, int]:
    """A node renews its lease (and says which key it signs with); nodes whose lease ran out
    (and `gone`, known gone) go, their running sessions voided and their keys retired. Returns
    whether this node still had its row (False: it was found gone, its sessions voided) and
    how many sessions were voided."""
    clock = lease_clock(conn, now)
    alive = conn.execute(
        "UPDATE nodes SET seen_at = ?, kid = ? WHERE id = ?", (clock, kid, node_id)
    ).rowcount
    kids = _remove_nodes(conn, gone)
    kids += [
        row[0]
        for row in conn.execute(
            "DELETE FROM nodes WHERE seen_at + lease_ms < ? RETURNING kid", (clock,)
        ).fetchall()
    ]
    voided = 0
    if kids or not alive:
        _retire_keys_of_gone(conn, kids, now)
        voided = void_lost_sessions(conn, now)
    return bool(alive), voided


def rejoin_node(conn: Connection, node: NodeInfo, now: int) -> int:
    """A node found gone (it stalled past its lease) comes back under the same id: its sessions
    were voided meanwhile; any still running under its id are void now too. Returns how many."""
    conn.execute("DELETE FROM nodes WHERE id = ?", (node.node_id,))
    voided = void_lost_sessions(conn, now)
    _insert_node(conn, node, lease_clock(conn, now))
    return voided


def leave_node(conn: Connection, node_id: str) -> None:
    """A node stops cleanly (its sessions already ended): its row goes."""
    conn.execute("DELETE FROM nodes WHERE id = ?", (node_id,))


def session_node(conn: Connection, session_id: str, now: int) -> str | None:
    """The game-socket URL of the live node that runs this session, if one does."""
    row = conn.execute(
        "SELECT nodes.url FROM game_sessions JOIN nodes ON nodes.id = game_sessions.node_id"
        " WHERE game_sessions.id = ? AND game_sessions.state = ? AND nodes.seen_at"
        " + nodes.lease_ms >= ?",
        (session_id, SessionState.RUNNING, lease_clock(conn, now)),
    ).fetchone()
    return None if row is None else str(row[0])


def list_nodes(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT * FROM nodes ORDER BY started_at, id")]


# --- shared budgets -------------------------------------------------------------------------


def charge_attempts(
    conn: Connection, charges: list[tuple[str, str, int, int, str]], now: int
) -> list[int]:
    """Charge one attempt to each (budget, key, limit, window_ms, message): all of them, or
    none and RateLimitedError (with the message of the spent one). Counted one by one across
    every node: by SQLite's write lock, or on PostgreSQL by an advisory lock per budget and
    key (taken in one order, so that two charges never wait on each other in a circle): a
    charge waits only for charges of the same key, never for another player's."""
    if conn.dialect == "postgres":
        for budget, key in sorted({(budget, key) for budget, key, limit, *_ in charges if limit}):
            conn.execute(
                "SELECT pg_advisory_xact_lock(?, hashtext(?))", (ATTEMPTS_LOCK, f"{budget}:{key}")
            )
    for budget, key, limit, window_ms, message in charges:
        if not limit:
            continue
        spent = conn.execute(
            "SELECT COUNT(*) FROM attempts WHERE budget = ? AND key = ? AND at > ?",
            (budget, key, now - window_ms),
        ).fetchone()[0]
        if spent >= limit:
            raise RateLimitedError(message)
    return [
        int(
            conn.execute(
                "INSERT INTO attempts (budget, key, at) VALUES (?, ?, ?) RETURNING id",
                (budget, key, now),
            ).fetchone()[0]
        )
        for budget, key, *_ in charges
    ]


def charge_attempts_alone(
    conn: Connection, charges: list[tuple[str, str, int, int, str]], now: int
) -> list[int]:
    """`charge_attempts` in a transaction of its own (PostgreSQL: on a reader connection, so
    that its key's lock is held for this charge alone, not until a writer batch commits)."""
    with transaction(conn):
        return charge_attempts(conn, charges, now)


def refund_attempts(conn: Connection, ids: list[int]) -> None:
    for attempt_id in ids:
        conn.execute("DELETE FROM attempts WHERE id = ?", (attempt_id,))


def forget_attempts(conn: Connection, before: int) -> int:
    return int(conn.execute("DELETE FROM attempts WHERE at < ?", (before,)).rowcount)


# --- decisions: each with its audit row, in one unit ----------------------------------------


def decide_flag(
    conn: Connection,
    flag_id: int,
    *,
    ban_until: int | None,
    note: str,
    actor: str,
    audit_note: str,
    now: int,
) -> Flag:
    """Clear a flag, or (`ban_until` given) resolve it by banning its account."""
    flag = resolve_flag(conn, flag_id, "banned" if ban_until is not None else "cleared", note, now)
    if ban_until is None and flag["session_id"] is not None:
        # Cleared: a score it held shows again, and it counts as trusted from now on.
        conn.execute(
            "UPDATE scores SET held = 0, reviewed_at = ? WHERE session_id = ?",
            (now, flag["session_id"]),
        )
        notify(conn, "boards")
    if ban_until is not None:
        if flag["user_id"] is None or flag["user_name"] is None:
            raise ConflictError("a guest's flag has no account to ban; clear it instead")
        set_ban(conn, flag["user_name"], ban_until, note)
    insert_audit(conn, actor, "flags resolve", f"flag {flag_id}", audit_note, now)
    return flag


def decide_ban(
    conn: Connection,
    name: str,
    *,
    ban_until: int | None,
    note: str,
    actor: str,
    audit_note: str,
    now: int,
) -> int:
    """Ban an account until `ban_until`, or (None) lift its ban. Returns the user's id."""
    user_id = set_ban(conn, name, ban_until, note if ban_until is not None else None)
    command = "users ban" if ban_until is not None else "users unban"
    insert_audit(conn, actor, command, name, audit_note, now)  # erase_user renames it
    return user_id


def decide_delete(conn: Connection, name: str, *, actor: str, note: str, now: int) -> int:
    """Erase an account's personal data (erase_user), audited. Returns its id."""
    user = user_by_name(conn, name)
    if user is None:
        raise NotFoundError(f"no user named {name!r}")
    erase_user(conn, user.id, now)
    insert_audit(conn, actor, "users delete", f"user {user.id}", note, now)
    return user.id


def decide_hidden(
    conn: Connection, session_id: str, hidden: bool, *, actor: str, note: str, now: int
) -> str:
    """Hide or restore a session's score (its id or an unambiguous prefix). Returns the id."""
    session_id = session_by_prefix(conn, session_id)
    set_score_hidden(conn, session_id, hidden)
    command = "scores hide" if hidden else "scores restore"
    insert_audit(conn, actor, command, session_id, note, now)
    return session_id


def decide_new_game(
    conn: Connection, game_id: str, settings: GameSettings, *, actor: str, audit_note: str, now: int
) -> None:
    insert_game(conn, game_id, settings, now)
    insert_audit(conn, actor, "games add", game_id, audit_note, now)


def decide_game_changes(
    conn: Connection,
    game_id: str,
    changes: Mapping[str, object],
    *,
    actor: str,
    audit_note: str,
    now: int,
) -> GameSettings:
    settings = update_game(conn, game_id, changes, now)
    insert_audit(conn, actor, "games set", game_id, audit_note, now)
    return settings


def decide_archive_game(
    conn: Connection, game_id: str, archived: bool, *, actor: str, now: int
) -> GameSettings:
    """Archive a game (no new sessions; its board stays) or make it playable again."""
    settings = update_game(conn, game_id, {"archived_at": now if archived else None}, now)
    command = "games archive" if archived else "games unarchive"
    insert_audit(conn, actor, command, game_id, None, now)
    return settings


def decide_remove_game(conn: Connection, game_id: str, *, actor: str, now: int) -> None:
    """Delete a game nobody has played (a typo, a test); one with sessions is archived instead."""
    if get_game(conn, game_id) is None:
        raise NotFoundError(f"no game {game_id!r}")
    played = conn.execute(
        "SELECT count(*) FROM game_sessions WHERE game_id = ?", (game_id,)
    ).fetchone()[0]
    if played:
        raise ConflictError(
            f"game {game_id!r} has {played} sessions: archive it instead (its board is kept)"
        )
    conn.execute("DELETE FROM games WHERE id = ?", (game_id,))
    notify(conn, "settings")
    insert_audit(conn, actor, "games remove", game_id, None, now)


def decide_reset_code(
    conn: Connection, name: str, code_hash: bytes, expires_at: int, *, actor: str, now: int
) -> int:
    """Give an account a one-time password reset code (its hash; a new one replaces the
    last). Returns the user's id."""
    user = user_by_name(conn, name)
    if user is None:
        raise NotFoundError(f"no user named {name!r}")
    conn.execute(
        "UPDATE users SET reset_hash = ?, reset_expires_at = ? WHERE id = ?",
        (code_hash, expires_at, user.id),
    )
    insert_audit(conn, actor, "users reset-password", name, "a one-time reset code issued", now)
    return user.id


def reset_code_holds(conn: Connection, name: str, code_hash: bytes, now: int) -> bool:
    """Whether `name` has this reset code, unspent and in time (a read: no Argon2 work is done
    for a wrong code; `use_reset_code` checks again as it sets the password)."""
    user = user_by_name(conn, name)
    return user is not None and (
        conn.execute(
            "SELECT 1 FROM users WHERE id = ? AND reset_hash = ? AND reset_expires_at > ?",
            (user.id, code_hash, now),
        ).fetchone()
        is not None
    )


def use_reset_code(
    conn: Connection, name: str, code_hash: bytes, password_hash: str, now: int
) -> User | None:
    """Set a new password with a reset code: the code is spent, and every login token of the
    account ends. None if the name, the code or its time does not hold."""
    user = user_by_name(conn, name)
    if user is None:
        return None
    changed = conn.execute(
        "UPDATE users SET password_hash = ?, reset_hash = NULL, reset_expires_at = NULL"
        " WHERE id = ? AND reset_hash = ? AND reset_expires_at > ?",
        (password_hash, user.id, code_hash, now),
    ).rowcount
    if changed != 1:
        return None
    conn.execute("DELETE FROM login_tokens WHERE user_id = ?", (user.id,))
    insert_audit(conn, "the player", "users reset-password", name, "password set with a code", now)
    return user


def record_command(
    conn: Connection, actor: str, command: str, target: str | None, note: str | None, now: int
) -> None:
    """An audit row for a command that changed something outside the database (a key file)."""
    insert_audit(conn, actor, command, target, note, now)


# --- the admin console: its password and sessions -------------------------------------------

ADMIN_PASSWORD_SETTING = "admin_password_hash"


def set_admin_password(conn: Connection, password_hash: str, actor: str, now: int) -> int:
    """A new admin password ends every admin session. Returns how many were ended."""
    set_setting(conn, ADMIN_PASSWORD_SETTING, password_hash)
    ended = end_admin_sessions(conn)
    insert_audit(conn, actor, "admin set-password", None, f"ended {ended} admin sessions", now)
    return ended


def insert_admin_session(
    conn: Connection, token_hash: bytes, now: int, expires_at: int, address: str | None
) -> None:
    conn.execute("DELETE FROM admin_sessions WHERE expires_at <= ?", (now,))
    conn.execute(
        "INSERT INTO admin_sessions (token_hash, created_at, expires_at, address)"
        " VALUES (?, ?, ?, ?)",
        (token_hash, now, expires_at, address),
    )


def admin_state(conn: Connection, token_hash: bytes, now: int) -> tuple[bool, bool]:
    """(a password is set, this token is a live session)."""
    password = get_setting(conn, ADMIN_PASSWORD_SETTING) is not None
    row = conn.execute(
        "SELECT 1 FROM admin_sessions WHERE token_hash = ? AND expires_at > ?", (token_hash, now)
    ).fetchone()
    return password, row is not None


def end_admin_sessions(conn: Connection, token_hash: bytes | None = None) -> int:
    """End one admin session, or (None) all of them."""
    if token_hash is None:
        return int(conn.execute("DELETE FROM admin_sessions").rowcount)
    cur = conn.execute("DELETE FROM admin_sessions WHERE token_hash = ?", (token_hash,))
    return int(cur.rowcount)
