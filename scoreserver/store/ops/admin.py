"""The admin console: its password, its sessions and the reads of its pages."""

from __future__ import annotations

from typing import Any

from ...errors import NotFoundError
from ..engine import Connection
from .audit import insert_audit
from .flags import _FLAGS, _flag_dict
from .keys import get_setting, set_setting
from .sessions import my_results


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
