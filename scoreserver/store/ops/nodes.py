"""Nodes: this process's row, its lease and heartbeat, and the sessions of nodes gone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...core.lifecycle import SessionState
from ...core.rules import GameSettings
from ..engine import Connection
from ..records import (
    NodeInfo,
    SigningKey,
)
from .common import notify
from .games import insert_game
from .keys import key_history, record_signing_key
from .sessions import void_lost_sessions


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
