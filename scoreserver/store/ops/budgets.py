"""Shared budgets (logins, resets) counted across every node."""

from __future__ import annotations

from ...errors import RateLimitedError
from ..engine import Connection, transaction
from .common import ATTEMPTS_LOCK


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
