"""Signing keys, settings and the fingerprints that tell a node to re-read them."""

from __future__ import annotations

from typing import cast

from ..engine import Connection
from ..records import (
    SigningKey,
)
from .common import notify


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
