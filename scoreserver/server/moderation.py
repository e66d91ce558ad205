"""Admin decisions: resolve flags, ban and unban, hide and restore scores, change games.

The command line and the /admin page both call these, so a decision has one meaning whichever
door it came through. Each runs in one transaction together with its audit row: there is no
decision without its record, and no record of a decision that did not happen.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from scoreserver import store as db
from scoreserver.core.rules import GameSettings
from scoreserver.errors import ConflictError, NotFoundError

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who decided, and through which door ('cli' or 'admin page')."""

    name: str
    via: str

    def __str__(self) -> str:
        return f"{self.name} ({self.via})"


def _now() -> int:
    return int(time.time() * 1000)


def _ban_until(days: float | None, now: int) -> int:
    if days is None:
        return db.FOREVER
    if days <= 0:
        raise ValueError("--days must be positive")
    return now + int(days * DAY_MS)


def _length(days: float | None) -> str:
    if days is None:
        return "indefinitely"
    return f"for {days:g} day" if days == 1 else f"for {days:g} days"


def _require_note(note: str) -> str:
    """Every decision is audited with why it was taken: no note, no decision."""
    note = note.strip()
    if not note:
        raise ValueError("a decision needs a note (why), for the audit")
    return note


def settings_words(values: dict[str, object]) -> str:
    """Game settings for the audit's note column: `duration 30 s, burst threshold 12, ...`."""
    parts = []
    for key, value in values.items():
        if value is None:
            continue
        name = key.removesuffix("_ms").replace("_", " ")
        if key.endswith("_ms") and isinstance(value, int):
            unit = f"{value // 1000} s" if value >= 1000 and value % 1000 == 0 else f"{value} ms"
            parts.append(f"{name} {unit}")
        else:
            parts.append(f"{name} {value}")
    return ", ".join(parts)


def resolve_flag(
    conn: sqlite3.Connection,
    flag_id: int,
    *,
    ban: bool,
    note: str,
    actor: Actor,
    days: float | None = None,
) -> dict[str, Any]:
    """Clear a flag (the account's scores show again) or ban its account."""
    note = _require_note(note)
    if days is not None and not ban:
        raise ValueError("days go with a ban")
    now = _now()
    with db.transaction(conn):
        flag = db.resolve_flag(conn, flag_id, "banned" if ban else "cleared", note, now)
        if ban:
            if flag["user_id"] is None:
                raise ConflictError("a guest's flag has no account to ban; clear it instead")
            db.set_ban(conn, flag["user_name"], _ban_until(days, now), note)
        decision = f"ban {_length(days)}" if ban else "clear"
        db.insert_audit(
            conn, str(actor), "flags resolve", f"flag {flag_id}", f"{decision}; {note}", now
        )
    return flag


def ban_user(
    conn: sqlite3.Connection, name: str, *, actor: Actor, note: str, days: float | None = None
) -> int:
    note = _require_note(note)
    now = _now()
    with db.transaction(conn):
        until = _ban_until(days, now)
        db.set_ban(conn, name, until, note)
        db.insert_audit(conn, str(actor), "users ban", name, f"{_length(days)}; {note}", now)
    return until


def unban_user(conn: sqlite3.Connection, name: str, *, actor: Actor, note: str) -> None:
    note = _require_note(note)
    now = _now()
    with db.transaction(conn):
        db.set_ban(conn, name, None, None)
        db.insert_audit(conn, str(actor), "users unban", name, note, now)


def delete_user(conn: sqlite3.Connection, name: str, *, actor: Actor, note: str) -> int:
    """Erase an account's personal data (store.erase_user); audited. Returns its id."""
    note = _require_note(note)
    now = _now()
    with db.transaction(conn):
        user = db.user_by_name(conn, name)
        if user is None:
            raise NotFoundError(f"no user named {name!r}")
        db.erase_user(conn, user.id, now)
        db.insert_audit(conn, str(actor), "users delete", f"user {user.id}", note, now)
    return user.id


def set_score_hidden(
    conn: sqlite3.Connection, session_id: str, hidden: bool, *, actor: Actor, note: str
) -> str:
    """Hide or restore the score of a session (its id, or an unambiguous prefix of it);
    returns the session's whole id."""
    note = _require_note(note)
    now = _now()
    session_id = db.session_by_prefix(conn, session_id)
    with db.transaction(conn):
        db.set_score_hidden(conn, session_id, hidden)
        db.insert_audit(
            conn,
            str(actor),
            "scores hide" if hidden else "scores restore",
            session_id,
            note,
            now,
        )
    return session_id


def add_game(
    conn: sqlite3.Connection, game_id: str, settings: GameSettings, *, actor: Actor
) -> None:
    if not 1 <= len(game_id.encode()) <= 64 or not game_id.isprintable():
        raise ValueError("a game id is 1 to 64 bytes of printable text")
    now = _now()
    with db.transaction(conn):
        db.insert_game(conn, game_id, settings, now)
        db.insert_audit(
            conn, str(actor), "games add", game_id, settings_words(asdict(settings)), now
        )


def set_game(
    conn: sqlite3.Connection, game_id: str, changes: dict[str, object], *, actor: Actor
) -> GameSettings:
    if not changes:
        raise ValueError("nothing to change")
    now = _now()
    with db.transaction(conn):
        settings = db.update_game(conn, game_id, changes, now)
        db.insert_audit(conn, str(actor), "games set", game_id, settings_words(changes), now)
    return settings


def user_name(conn: sqlite3.Connection, name: str) -> str:
    user = db.user_by_name(conn, name)
    if user is None:
        raise NotFoundError(f"no user named {name!r}")
    return user.name


# --- export ---------------------------------------------------------------------------------

WINDOWS_MS = {"day": 86_400_000, "week": 7 * 86_400_000, "all": None}
BOARD_COLUMNS = ("rank", "player", "score", "time", "session_id")
RESULT_COLUMNS = ("session_id", "player", "score", "time", "shown", "why_not")


def export(conn: sqlite3.Connection, game_id: str, window: str = "all") -> dict[str, Any]:
    """A game's board as shown (rank, player, score, time) and every result with its session
    id, for prizes and records. Times are UTC, ISO 8601."""
    if window not in WINDOWS_MS:
        raise ValueError("window is day, week or all")
    if db.get_game(conn, game_id) is None:
        raise NotFoundError(f"no game {game_id!r}")
    now = _now()
    span = WINDOWS_MS[window]
    since = now - span if span else 0
    board = db.leaderboard(conn, game_id, now, limit=-1, since=since, with_sessions=True)
    results = db.list_results(conn, game_id, since)
    return {
        "game_id": game_id,
        "window": window,
        "exported_at": _iso(now),
        "board": [
            dict(
                zip(
                    BOARD_COLUMNS,
                    (e["rank"], e["name"], e["score"], _iso(e["created_at"]), e["session_id"]),
                    strict=True,
                )
            )
            for e in board
        ],
        "results": [
            dict(
                zip(
                    RESULT_COLUMNS,
                    (
                        r["session_id"],
                        r["name"],
                        r["score"],
                        _iso(r["created_at"]),
                        not (r["hidden"] or r["banned"] or r["held"]),
                        _why_not(r),
                    ),
                    strict=True,
                )
            )
            for r in results
        ],
    }


def _why_not(result: dict[str, Any]) -> str:
    reasons = [
        word
        for word, key in (("hidden", "hidden"), ("banned", "banned"), ("under review", "held"))
        if result[key]
    ]
    return ", ".join(reasons)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def export_csv(data: dict[str, Any], what: str = "board") -> str:
    """One table of `export` as CSV: the board (default) or every result."""
    out = io.StringIO()
    columns = BOARD_COLUMNS if what == "board" else RESULT_COLUMNS
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(data[what])
    return out.getvalue()
