"""Decisions: each with its audit row, in one unit."""

from __future__ import annotations

from collections.abc import Mapping

from ...core.rules import GameSettings
from ...errors import ConflictError, NotFoundError
from ..engine import Connection
from ..records import (
    Flag,
    User,
)
from .audit import insert_audit
from .boards import session_by_prefix
from .common import FOREVER, notify
from .flags import resolve_flag
from .games import get_game, insert_game, update_game
from .log import log_player_change, log_score_change
from .sessions import set_score_hidden
from .users import erase_user, set_ban, user_by_name


def _until(ban_until: int) -> int | None:
    """A ban's end as the log says it: None for a ban with no end."""
    return None if ban_until >= FOREVER else ban_until


def erase_own_account(conn: Connection, user_id: int, now: int) -> None:
    """A player's own erasure (DELETE /api/me), with its audit row, in one unit."""
    erase_user(conn, user_id, now)
    insert_audit(conn, "the player", "users delete", f"user {user_id}", "by themselves", now)


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
        cur = conn.execute(
            "UPDATE scores SET held = 0, reviewed_at = ? WHERE session_id = ?",
            (now, flag["session_id"]),
        )
        notify(conn, "boards")
        if cur.rowcount:
            log_score_change(conn, "cleared", flag["session_id"], now)
    if ban_until is None and flag["holds"] and flag["user_id"] is not None:
        log_player_change(conn, "released", flag["user_id"], now, flag=flag_id)
    if ban_until is not None:
        if flag["user_id"] is None or flag["user_name"] is None:
            raise ConflictError("a guest's flag has no account to ban; clear it instead")
        user_id = set_ban(conn, flag["user_name"], ban_until, note)
        log_player_change(conn, "banned", user_id, now, until=_until(ban_until))
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
    if ban_until is not None:
        log_player_change(conn, "banned", user_id, now, until=_until(ban_until))
    else:
        log_player_change(conn, "unbanned", user_id, now)
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
    log_score_change(conn, "hidden" if hidden else "restored", session_id, now)
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
