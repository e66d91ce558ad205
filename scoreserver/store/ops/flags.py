"""Flags: raised, listed, resolved, with the evidence a reviewer reads."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

from ...core import timing
from ...core.lifecycle import SessionState
from ...core.rules import GameSettings
from ...errors import ConflictError, NotFoundError
from ..engine import Connection, no_limit
from ..records import (
    Evidence,
    Flag,
    RejectedPoint,
    SessionPoint,
)
from .common import notify
from .log import log_player_change
from .users import user_by_name


def insert_flag(
    conn: Connection,
    reason: str,
    now: int,
    *,
    game_id: str | None = None,
    session_id: str | None = None,
    user_id: int | None = None,
    guest_addr: str | None = None,
    user_agent: str | None = None,
    detail: Mapping[str, object] | None = None,
    holds: bool = True,
) -> int:
    """A flag for review; while open, one that `holds` keeps the player off boards.
    `guest_addr` is the client address it came from (a guest's or a player's: the column's
    name is older than players' addresses in it); an erasure forgets a player's.

    One cause is one flag: while a flag of the same reason, game and session is open against
    the same player (or, for a guest, the same address), a repeat is counted on it (its
    evidence's `repeats` and `last_at`) and its id returned, with nothing else written."""
    who = "user_id = ?" if user_id is not None else "user_id IS NULL AND guest_addr = ?"
    same = conn.execute(
        f"SELECT id, detail_json FROM flags WHERE status = 'open' AND reason = ? AND {who}"
        " AND COALESCE(game_id, '') = ? AND COALESCE(session_id, '') = ?"
        " ORDER BY id LIMIT 1",
        (reason, user_id if user_id is not None else guest_addr, game_id or "", session_id or ""),
    ).fetchone()
    if same is not None:
        evidence = json.loads(same[1] or "{}")
        evidence["repeats"] = int(evidence.get("repeats", 1)) + 1
        evidence["last_at"] = now
        conn.execute(
            "UPDATE flags SET detail_json = ? WHERE id = ?", (json.dumps(evidence), same[0])
        )
        return int(same[0])
    row = conn.execute(
        "INSERT INTO flags (created_at, reason, game_id, session_id, user_id, guest_addr,"
        " user_agent, detail_json, holds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            now,
            reason,
            game_id,
            session_id,
            user_id,
            guest_addr,
            user_agent,
            json.dumps(dict(detail or {}), default=str),
            int(holds),
        ),
    ).fetchone()
    notify(conn, "boards")  # an open flag holds its player's scores off the boards
    if holds and user_id is not None:
        log_player_change(conn, "held", user_id, now, flag=int(row[0]))
    return int(row[0])


# A flag with its player's name (every read of flags).
_FLAGS = "SELECT f.*, u.name AS user_name FROM flags f LEFT JOIN users u ON u.id = f.user_id"


def list_flags(
    conn: Connection,
    *,
    open_only: bool = False,
    game_id: str | None = None,
    user_name: str | None = None,
    limit: int = -1,
    offset: int = 0,
) -> list[Flag]:
    """Flags, oldest first; `limit`/`offset` page them (-1: no limit)."""
    sql = _FLAGS + " WHERE 1 = 1"
    params: list[Any] = []
    if open_only:
        sql += " AND f.status = 'open'"
    if game_id is not None:
        sql += " AND f.game_id = ?"
        params.append(game_id)
    if user_name is not None:
        user = user_by_name(conn, user_name)  # one case rule on both engines
        sql += " AND f.user_id = ?"
        params.append(user.id if user is not None else -1)
    sql += " ORDER BY f.id LIMIT ? OFFSET ?"
    return [_flag_dict(row) for row in conn.execute(sql, [*params, no_limit(limit), offset])]


def _flag_dict(row: Any) -> Flag:
    flag = dict(row)
    flag["detail"] = json.loads(flag.pop("detail_json"))
    return cast(Flag, flag)


def get_flag(conn: Connection, flag_id: int) -> Flag:
    row = conn.execute(
        _FLAGS + " WHERE f.id = ?",
        (flag_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no flag {flag_id}")
    flag = _flag_dict(row)
    if flag["session_id"]:
        flag["evidence"] = session_evidence(conn, flag["session_id"])
    return flag


def session_evidence(conn: Connection, session_id: str) -> Evidence:
    """A session's timeline for a reviewer: points, rejections, bursts."""
    session = conn.execute(
        "SELECT id, game_id, user_id, guest_addr, user_agent, started_at, client_start_ts,"
        " ended_at, end_reason, state, settings_json FROM game_sessions WHERE id = ?",
        (session_id,),
    ).fetchone()
    if session is None:
        return Evidence()
    info = dict(session)
    info["settings"] = json.loads(info.pop("settings_json"))
    settings = GameSettings(**info["settings"])
    arrivals, client_times = _received(conn, session_id)
    return Evidence(
        timing={
            **timing.profile(
                arrivals, client_times, settings.human_floor_ms, settings.min_rhythm_cv
            ),
            "population": rhythm_population(conn, info["game_id"], exclude=session_id),
        },
        session=info,
        points=[
            cast(SessionPoint, dict(r))
            for r in conn.execute(
                "SELECT seq, server_ts, client_ts FROM issued_points WHERE session_id = ?"
                " ORDER BY seq",
                (session_id,),
            )
        ],
        rejected=[
            cast(RejectedPoint, dict(r))
            for r in conn.execute(
                "SELECT server_ts, client_ts, reason FROM rejected_points WHERE session_id = ?"
                " ORDER BY rowid",
                (session_id,),
            )
        ],
        bursts=[
            r[0]
            for r in conn.execute(
                "SELECT at_ms FROM bursts WHERE session_id = ? ORDER BY rowid", (session_id,)
            )
        ],
    )


def _received(conn: Connection, session_id: str) -> tuple[list[int], list[int]]:
    """Every point a session received while it ran (accepted or refused), in arrival order:
    (server times, the player's stamps)."""
    rows = conn.execute(
        "SELECT server_ts, client_ts FROM ("
        " SELECT server_ts, client_ts, 0 AS kind, seq AS n FROM issued_points"
        "  WHERE session_id = :sid"
        " UNION ALL SELECT server_ts, client_ts, 1, rowid FROM rejected_points"
        "  WHERE session_id = :sid AND reason != 'game_over'"
        ") AS received ORDER BY server_ts, kind, n",
        {"sid": session_id},
    ).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


POPULATION_SESSIONS = 200


def rhythm_population(
    conn: Connection, game_id: str, *, exclude: str | None = None
) -> dict[str, object] | None:
    """The range of rhythm figures that the game's recent unflagged sessions show, for a
    reviewer to set a flagged one beside (timing.population_range)."""
    sessions = conn.execute(
        "SELECT g.id FROM game_sessions g WHERE g.game_id = ? AND g.state IN (?, ?)"
        " AND g.id != ? AND NOT EXISTS (SELECT 1 FROM flags f WHERE f.session_id = g.id)"
        " ORDER BY g.started_at DESC LIMIT ?",
        (
            game_id,
            SessionState.ENDED,
            SessionState.SUBMITTED,
            exclude or "",
            POPULATION_SESSIONS,
        ),
    ).fetchall()
    figures = []
    for (session_id,) in sessions:
        arrivals, client_times = _received(conn, session_id)
        if len(arrivals) < timing.RHYTHM_MIN_POINTS:
            continue
        figure = timing.rhythm_figure(client_times)  # the player's clock, as the rule reads
        if figure is not None:
            figures.append(figure)
    return timing.population_range(figures)


def resolve_flag(conn: Connection, flag_id: int, status: str, note: str, now: int) -> Flag:
    flag = get_flag(conn, flag_id)
    if flag["status"] != "open":
        raise ConflictError(f"flag {flag_id} is already resolved ({flag['status']})")
    conn.execute(
        "UPDATE flags SET status = ?, resolved_at = ?, resolution_note = ? WHERE id = ?",
        (status, now, note, flag_id),
    )
    return flag
