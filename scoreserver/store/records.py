"""What the store returns: typed records, one per kind of row a caller reads.

`User` is a frozen dataclass (the server keeps it); the rows that go on to pages, JSON and
terminal tables are TypedDicts, so that mypy checks every field a caller reads while they
stay plain dicts for `json`/msgspec. A session as the submission check needs it is
`core.rules.SessionRecord`; game settings are `core.rules.GameSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    password_hash: str
    banned_until: int | None

    def banned(self, now: int) -> bool:
        return self.banned_until is not None and self.banned_until > now


@dataclass(frozen=True, slots=True)
class SavedResult:
    """What saving an accepted result did: whether the score was kept (a logged-in player's),
    and if it is held off the boards, why (core/review.py's codes), with the flag it raised."""

    saved: bool
    held_reason: str | None = None
    flag_id: int | None = None
    # A kept score's entry in the results log, and what its receipt names.
    log_index: int | None = None
    salt: bytes | None = None
    name: str | None = None
    started_at: int | None = None
    ended_at: int | None = None

    @property
    def held(self) -> bool:
        return self.held_reason is not None


class MyResult(TypedDict):
    """One of a player's own results, as `GET /api/me` shows it."""

    session_id: str
    game_id: str
    score: int
    created_at: int
    held: bool
    held_reason: str | None


class UserSummary(TypedDict):
    id: int
    name: str
    created_at: int
    banned_until: int | None
    ban_note: str | None
    open_flags: int
    scores: int


class SessionPoint(TypedDict):
    seq: int
    server_ts: int
    client_ts: int


class RejectedPoint(TypedDict):
    server_ts: int
    client_ts: int
    reason: str


class Evidence(TypedDict, total=False):
    """A session's timeline for a reviewer (empty if the session is unknown)."""

    timing: dict[str, Any]  # core.timing.profile, with the game's population range
    session: dict[str, Any]  # the session's row, its settings decoded
    points: list[SessionPoint]
    rejected: list[RejectedPoint]
    bursts: list[int]


class Flag(TypedDict, total=False):
    id: int
    created_at: int
    reason: str
    game_id: str | None
    session_id: str | None
    user_id: int | None
    user_name: str | None
    guest_addr: str | None
    user_agent: str | None
    detail: dict[str, Any]
    status: str
    holds: int
    resolved_at: int | None
    resolution_note: str | None
    evidence: Evidence  # get_flag only: the session's timeline (ops.session_evidence)


class BoardEntry(TypedDict, total=False):
    rank: int
    user_id: int
    name: str
    score: int
    session_id: str  # with_sessions only
    created_at: int  # with_sessions only


class Result(TypedDict):
    session_id: str
    user_id: int
    name: str
    score: int
    created_at: int
    hidden: int
    banned: int
    held: int


class SigningKey(TypedDict):
    kid: str
    public_key: bytes
    created_at: int
    retired_at: int | None


class AuditEntry(TypedDict):
    id: int
    at: int
    actor: str
    command: str
    target: str | None
    note: str | None


class Export(TypedDict):
    game_id: str
    window: str
    exported_at: str
    board: list[dict[str, Any]]
    results: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A server process as the `nodes` table knows it (see schema.sql)."""

    node_id: str
    url: str
    kid: str
    lease_ms: int
    host: str = ""
    pid: int = 0
