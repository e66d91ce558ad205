"""The constants and helpers every group of operations shares."""

from __future__ import annotations

from ..engine import Connection

FOREVER = 2**62  # banned_until of a ban without an end

# PostgreSQL: the channel of the notices that tell every node to re-read something (ids only:
# `score GAME_ID`, `boards`, `settings`); the lock that makes shared budgets count one by one.
CHANNEL = "scoreserver"

ATTEMPTS_LOCK = 0x5C0E_A77E  # the class of the login budgets' advisory locks (int4)


def notify(conn: Connection, payload: str) -> None:
    """Tell every node, once this transaction commits (PostgreSQL's NOTIFY; SQLite nodes poll)."""
    if conn.dialect == "postgres":
        conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, payload))
