"""The audit log: every decision's row."""

from __future__ import annotations

from typing import cast

from ..engine import Connection, no_limit
from ..records import (
    AuditEntry,
)
from .common import notify


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
