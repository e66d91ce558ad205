"""The session state table (core/lifecycle.py): every move, the refused ones, and the states
the database may hold on both engines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scoreserver.core.lifecycle import STORED, TRANSITIONS, InvalidMove, Move, SessionState, after
from scoreserver.core.rules import EndReason

SCHEMAS = [
    Path(__file__).parent.parent.parent / "schema.sql",
    Path(__file__).parent.parent.parent / "scoreserver/store/postgres.sql",
]


def test_a_session_runs_ends_and_is_submitted_once() -> None:
    state = after(SessionState.RUNNING, Move.TIME_UP)
    assert state is SessionState.ENDED
    state = after(state, Move.SUBMIT)
    assert state is SessionState.SUBMITTING
    assert after(state, Move.REFUSED) is SessionState.ENDED  # may be submitted again
    assert after(state, Move.SAVED) is SessionState.SUBMITTED
    with pytest.raises(InvalidMove):
        after(SessionState.SUBMITTED, Move.SUBMIT)


@pytest.mark.parametrize("reason", [EndReason.BURST_LIMIT, EndReason.SERVER_SHUTDOWN])
def test_every_other_end_voids_the_session_for_good(reason: EndReason) -> None:
    voided = after(SessionState.RUNNING, reason)
    assert voided is SessionState.VOIDED
    for move in Move:
        with pytest.raises(InvalidMove):
            after(voided, move)


def test_every_end_reason_is_a_move_of_a_running_session() -> None:
    for reason in EndReason:
        assert (SessionState.RUNNING, Move(reason)) in TRANSITIONS
    assert after(SessionState.RUNNING, Move.CRASHED) is SessionState.VOIDED
    with pytest.raises(InvalidMove):
        after(SessionState.RUNNING, "not a move")


@pytest.mark.parametrize("schema", SCHEMAS, ids=["sqlite", "postgres"])
def test_the_database_holds_exactly_the_stored_states(schema: Path) -> None:
    check = re.search(r"CHECK \(state IN \(([^)]*)\)\)", schema.read_text())
    assert check is not None
    allowed = {value.strip().strip("'") for value in check.group(1).split(",")}
    assert allowed == {str(state) for state in STORED}
    assert SessionState.SUBMITTING not in STORED  # held in memory only
