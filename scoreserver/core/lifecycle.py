"""A game session's states and every move between them, in one table.

    RUNNING ──time_up──────────> ENDED ──submit──> SUBMITTING ──saved───> SUBMITTED
       │                           ^                   │
       ├──burst_limit───> VOIDED   └────refused────────┘
       ├──server_shutdown─> VOIDED
       └──crashed (found running at a start)─> VOIDED

RUNNING, ENDED, VOIDED and SUBMITTED are what the database's `game_sessions.state` holds;
SUBMITTING lives only in the memory of the process checking a submission (a crash there
leaves the session ENDED, and it may be submitted again): on the live session's one state
field (`rules.GameSession.state`) when that process runs the game, and in the service's
`submitting` set for any session. The rules move a running session to its end; the
submission desk moves an ended one through `GameSession.submission`; the store writes the
state the table gives. Nothing else decides a session's state.
"""

from __future__ import annotations

import enum


class SessionState(enum.StrEnum):
    RUNNING = "running"  # its timer runs; its points are judged
    ENDED = "ended"  # time is up: it may be submitted within the game's window
    VOIDED = "voided"  # ended otherwise: it can never be submitted
    SUBMITTING = "submitting"  # a submission of it is being checked and saved
    SUBMITTED = "submitted"  # its result was accepted


class Move(enum.StrEnum):
    TIME_UP = "time_up"
    BURST_LIMIT = "burst_limit"
    SERVER_SHUTDOWN = "server_shutdown"
    CRASHED = "crashed"
    SUBMIT = "submit"
    SAVED = "saved"
    REFUSED = "refused"


TRANSITIONS: dict[tuple[SessionState, Move], SessionState] = {
    (SessionState.RUNNING, Move.TIME_UP): SessionState.ENDED,
    (SessionState.RUNNING, Move.BURST_LIMIT): SessionState.VOIDED,
    (SessionState.RUNNING, Move.SERVER_SHUTDOWN): SessionState.VOIDED,
    (SessionState.RUNNING, Move.CRASHED): SessionState.VOIDED,
    (SessionState.ENDED, Move.SUBMIT): SessionState.SUBMITTING,
    (SessionState.SUBMITTING, Move.SAVED): SessionState.SUBMITTED,
    (SessionState.SUBMITTING, Move.REFUSED): SessionState.ENDED,
}

# The states `game_sessions.state` may hold.
STORED = (SessionState.RUNNING, SessionState.ENDED, SessionState.VOIDED, SessionState.SUBMITTED)


class InvalidMove(Exception):
    """A move the table has no row for (a bug in the caller, never a player's doing)."""


def after(state: SessionState, move: Move | str) -> SessionState:
    """The state `move` leads to from `state`."""
    try:
        return TRANSITIONS[state, Move(move)]
    except (KeyError, ValueError):
        raise InvalidMove(f"a session {state} cannot take {move!r}") from None
