"""The results log's rows: entries appended in the transaction of what they record, in one
order for the whole deployment; the players' salts; the signed checkpoints.

An entry's index is the next one, taken under a lock every node shares (PostgreSQL: a
transaction-level advisory lock; SQLite: its one writer), so indexes have no gap and no two
nodes take the same one: a rolled-back transaction takes its entry with it.
"""

from __future__ import annotations

import secrets
from typing import Any

from ...wire.receipts import SALT_SIZE, entry_text, player_commitment
from ..engine import Connection

# pg_advisory_xact_lock's key for appends ("scorelog" in ASCII, as a signed 64-bit integer).
LOG_LOCK = int.from_bytes(b"scorelog", "big", signed=True)
ENTRIES_PAGE = 1000  # the most entries one read returns


def salt_of(conn: Connection, user_id: int, *, create: bool = True) -> bytes | None:
    """The player's salt, made on first use (None once the account is erased)."""
    row = conn.execute("SELECT salt FROM player_salts WHERE user_id = ?", (user_id,)).fetchone()
    if row is not None:
        return bytes(row[0])
    if not create:
        return None
    salt = secrets.token_bytes(SALT_SIZE)
    conn.execute("INSERT INTO player_salts (user_id, salt) VALUES (?, ?)", (user_id, salt))
    return salt


def _player(conn: Connection, user_id: int) -> str:
    salt = salt_of(conn, user_id)
    assert salt is not None
    return player_commitment(salt, user_id)


def append(conn: Connection, fields: dict[str, Any], now: int) -> int:
    """Append an entry (`fields` and `at`); returns its index."""
    if conn.dialect == "postgres":
        conn.execute("SELECT pg_advisory_xact_lock(?)", (LOG_LOCK,))
    last = conn.execute("SELECT MAX(idx) FROM log_entries").fetchone()[0]
    index = 0 if last is None else int(last) + 1
    conn.execute(
        "INSERT INTO log_entries (idx, body, created_at) VALUES (?, ?, ?)",
        (index, entry_text({"v": 1, **fields, "at": now}), now),
    )
    return index


def log_result(
    conn: Connection,
    *,
    session_id: str,
    game_id: str,
    user_id: int,
    score: int,
    started_at: int,
    ended_at: int,
    points_digest: bytes | None,
    held: bool,
    now: int,
) -> tuple[int, bytes]:
    """A saved result's entry; returns its index and the player's salt (for the receipt)."""
    salt = salt_of(conn, user_id)
    assert salt is not None
    fields: dict[str, Any] = {
        "kind": "result",
        "game": game_id,
        "session": session_id,
        "player": player_commitment(salt, user_id),
        "score": score,
        "started_at": started_at,
        "ended_at": ended_at,
        "held": held,
    }
    if points_digest is not None:  # results saved before the log have none
        fields["points"] = points_digest.hex()
    index = append(conn, fields, now)
    conn.execute("UPDATE scores SET log_index = ? WHERE session_id = ?", (index, session_id))
    return index, salt


def log_score_change(conn: Connection, kind: str, session_id: str, now: int) -> int | None:
    """`hidden`, `restored` or `cleared` (a reviewer let a held result onto the boards), with
    the result's own entry."""
    row = conn.execute(
        "SELECT game_id, log_index FROM scores WHERE session_id = ?", (session_id,)
    ).fetchone()
    if row is None:
        return None
    fields = {"kind": kind, "game": row[0], "session": session_id, "result": row[1]}
    return append(conn, fields, now)


def log_player_change(
    conn: Connection, kind: str, user_id: int, now: int, **extra: Any
) -> int | None:
    """`banned` (with `until`: null for no end), `unbanned`, `held` (an open flag holds the
    player's results), `released` or `erased`: what every result of the player shows changes.
    Nothing is recorded for a player with no result (no board shows them)."""
    has_results = conn.execute(
        "SELECT 1 FROM scores WHERE user_id = ? LIMIT 1", (user_id,)
    ).fetchone()
    if has_results is None:
        return None
    return append(conn, {"kind": kind, "player": _player(conn, user_id), **extra}, now)


def forget_salt(conn: Connection, user_id: int) -> None:
    conn.execute("DELETE FROM player_salts WHERE user_id = ?", (user_id,))


# --- reading ------------------------------------------------------------------------------


def log_size(conn: Connection) -> int:
    last = conn.execute("SELECT MAX(idx) FROM log_entries").fetchone()[0]
    return 0 if last is None else int(last) + 1


def log_entries(conn: Connection, start: int, end: int) -> list[tuple[int, str]]:
    """Entries [start, end), at most ENTRIES_PAGE of them."""
    end = min(end, start + ENTRIES_PAGE)
    rows = conn.execute(
        "SELECT idx, body FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end)
    ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def add_checkpoint(conn: Connection, size: int, root: bytes, note: str, now: int) -> bool:
    """Keep a signed checkpoint; False if one of that size is kept already (another node's)."""
    cur = conn.execute(
        "INSERT INTO log_checkpoints (size, root, note, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (size) DO NOTHING",
        (size, root, note, now),
    )
    return bool(cur.rowcount == 1)


def latest_checkpoint(conn: Connection) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT size, root, note, created_at FROM log_checkpoints ORDER BY size DESC LIMIT 1"
    ).fetchone()
    return None if row is None else _checkpoint(row)


def log_checkpoints(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT size, root, note, created_at FROM log_checkpoints ORDER BY size"
    ).fetchall()
    return [_checkpoint(r) for r in rows]


def _checkpoint(row: Any) -> dict[str, Any]:
    return {"size": int(row[0]), "root": bytes(row[1]), "note": str(row[2]), "created_at": row[3]}


def log_audit_rows(conn: Connection) -> dict[str, Any]:
    """What `scoreserver log verify` compares the log with: every result as the scores table
    has it, and every salt."""
    scores = {
        str(r[0]): {"game": r[1], "user_id": int(r[2]), "score": int(r[3]), "log_index": r[4]}
        for r in conn.execute(
            "SELECT session_id, game_id, user_id, score, log_index FROM scores"
        ).fetchall()
    }
    salts = {
        int(r[0]): bytes(r[1])
        for r in conn.execute("SELECT user_id, salt FROM player_salts").fetchall()
    }
    return {"scores": scores, "salts": salts}


def log_origin(conn: Connection, proposed: str) -> str:
    """The log's origin (its name in checkpoints): `proposed` if none was set before."""
    conn.execute(
        "INSERT INTO settings (key, value) VALUES ('log_origin', ?) ON CONFLICT (key) DO NOTHING",
        (proposed,),
    )
    return str(conn.execute("SELECT value FROM settings WHERE key = 'log_origin'").fetchone()[0])


def log_indexes(conn: Connection, session_ids: list[str]) -> dict[str, int]:
    """The log index of each of these sessions' results (those that have one)."""
    found: dict[str, int] = {}
    for start in range(0, len(session_ids), 500):
        chunk = session_ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        for row in conn.execute(
            f"SELECT session_id, log_index FROM scores WHERE session_id IN ({marks})"
            " AND log_index IS NOT NULL",
            chunk,
        ).fetchall():
            found[str(row[0])] = int(row[1])
    return found
