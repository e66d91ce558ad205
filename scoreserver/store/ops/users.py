"""Accounts and login tokens: who a player is, by name, id or token; bans; erasure of a name."""

from __future__ import annotations

import json
from typing import Any, cast

from ...core.names import fold, skeleton
from ...errors import ConflictError, NotFoundError
from ..engine import INTEGRITY_ERRORS, Connection, no_limit
from ..records import (
    User,
    UserSummary,
)
from .log import forget_salt, log_player_change


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
    """Accounts by id; `search` keeps those whose name holds it, in any case and in any
    look-alike spelling (by `names.skeleton`, which maps a name character by character, so
    the key of a part of a name is a part of the name's key: one rule on both engines, and
    `zoë` finds `ZOË`, `alice` finds `АLICE`). Digits alone are an id, or digits in a name
    as they are (as look-alikes, `1` would find every `l` and `i`). Names kept from before
    look-alike keys (no key) are matched by the engine's lower()."""
    where, params = "", list[object]()
    if search:
        escaped = search.casefold().replace("!", "!!").replace("%", "!%").replace("_", "!_")
        plain = "lower(u.name) LIKE ? ESCAPE '!'"
        if search.isdigit():
            where = f" WHERE {plain}"
            params.append(f"%{escaped}%")
            if int(search) < 2**63:
                where += " OR u.id = ?"
                params.append(int(search))
        else:
            holds = "instr" if conn.dialect == "sqlite" else "strpos"
            where = (
                f" WHERE {holds}(u.name_skeleton, ?) > 0 OR (u.name_skeleton IS NULL AND {plain})"
            )
            params += [skeleton(search), f"%{escaped}%"]
    rows = conn.execute(
        "SELECT u.id, u.name, u.created_at, u.banned_until, u.ban_note,"
        " (SELECT COUNT(*) FROM flags f WHERE f.user_id = u.id AND f.status = 'open')"
        "   AS open_flags,"
        " (SELECT COUNT(*) FROM scores s WHERE s.user_id = u.id) AS scores"
        f" FROM users u{where} ORDER BY u.id LIMIT ? OFFSET ?",
        (*params, no_limit(limit), offset),
    ).fetchall()
    return [cast(UserSummary, dict(row)) for row in rows]


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
    # The log keeps its entries; without the salt, nobody can tie them to this account.
    log_player_change(conn, "erased", user_id, now)
    forget_salt(conn, user_id)
    return user.name
