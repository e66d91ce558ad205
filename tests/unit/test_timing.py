"""Timing analysis, synchronously: the rules on simulated people and bots (timing_sim.py),
their place in the session's state machine, a game's score bound, and outliers."""

from __future__ import annotations

import random

import pytest

from scoreserver.core.rules import (
    AccountFlagged,
    EndReason,
    GameEnded,
    GameSession,
    GameSettings,
    IssuedPoint,
    PointAccepted,
    ResultReason,
    SessionRecord,
    SubmissionAccepted,
    SubmissionRejected,
    SubmittedPoint,
    check_submission,
    outlier_evidence,
)
from scoreserver.core.timing import (
    ASSESS_EVERY,
    INHUMAN_TIMING,
    ROBOTIC_RHYTHM,
    TimingTracker,
    assess,
    rhythm_figure,
)

from ..timing_sim import BOTS, honest, judged

FLOOR_MS = GameSettings(duration_ms=1).human_floor_ms
MIN_CV = GameSettings(duration_ms=1).min_rhythm_cv
HONEST_SESSIONS = 1500
BOT_SESSIONS = 500


def test_no_honest_person_is_flagged() -> None:
    """Judged as in play: every 16 points and at the end, by the session's state machine."""
    rng = random.Random(20261129)
    flagged = [reasons for _ in range(HONEST_SESSIONS) if (reasons := judged(honest(rng)))]
    assert flagged == []


@pytest.mark.parametrize("kind", list(BOTS))
def test_every_kind_of_bot_is_caught_in_99_percent_of_its_sessions(kind: str) -> None:
    rng = random.Random(kind)
    caught = sum(1 for _ in range(BOT_SESSIONS) if judged(BOTS[kind](rng)))
    assert caught >= 0.99 * BOT_SESSIONS, f"{kind}: {caught} of {BOT_SESSIONS}"


def test_the_simulated_people_are_what_the_issue_describes() -> None:
    """Skewed intervals, none under 80 ms on their own clock, CV 0.2 to 0.6 (sampled)."""
    rng = random.Random(7)
    for _ in range(200):
        session = honest(rng)
        gaps = [b - a for a, b in zip(session.client_times, session.client_times[1:], strict=False)]
        assert min(gaps) >= 79  # whole milliseconds
        mean = sum(gaps) / len(gaps)
        median = sorted(gaps)[len(gaps) // 2]
        assert mean > median * 0.97  # skewed right, as tapping is (or drifting)


def test_the_running_sums_agree_with_the_definition() -> None:
    rng = random.Random(3)
    compared = 0
    for n in range(100):
        session = honest(rng) if n % 2 else list(BOTS.values())[n % len(BOTS)](rng)
        tracker = TimingTracker(FLOOR_MS, MIN_CV)
        for arrival, client_ts in zip(session.arrivals, session.client_times, strict=True):
            tracker.add(arrival, client_ts)
        expected = rhythm_figure(session.client_times)
        assert expected is not None
        assert tracker.player.rhythm() == pytest.approx(expected, abs=1e-9)
        if tracker.arrival.gaps == tracker.arrival.count - 1:  # nothing left out on arrival
            arrival = rhythm_figure(session.arrivals)
            assert arrival is not None
            assert tracker.arrival.rhythm() == pytest.approx(arrival, abs=1e-9)
            compared += 1
    assert compared > 50


def test_a_stall_is_left_out_of_the_arrival_rhythm() -> None:
    """Points that queued behind a network stall arrive together. The gaps it compressed are
    the network's, not the player's: left out, they do not make the arrival clock look like a
    metronome (kept in, their zeros would: the jitter correction reads them as jitter)."""
    rng = random.Random(8)
    sent, now = [], 0
    for _ in range(80):
        now += int(rng.gauss(300, 75))  # a person, CV 0.25
        sent.append(now)
    stalled = [t for t in sent if 9_000 <= t <= 10_500]
    arrivals = [max(t + 40, 10_540) if t in stalled else t + 40 for t in sent]
    tracker = TimingTracker(FLOOR_MS, MIN_CV)
    for arrival, client_ts in zip(arrivals, sent, strict=True):
        tracker.add(arrival, client_ts)
    left_out = tracker.arrival.count - 1 - tracker.arrival.gaps
    assert left_out == len(stalled) - 1
    assert tracker.arrival.rhythm() > 0.2  # type: ignore[operator]
    assert assess(arrivals, sent, FLOOR_MS, MIN_CV) == []


def test_jitter_cancels_out_of_the_rhythm_figure() -> None:
    """A fixed rhythm seen through jitter scores near 0; independent intervals keep their CV."""
    rng = random.Random(11)
    rhythm = [int(1000 + 100 * n + rng.uniform(0, 30)) for n in range(200)]
    assert rhythm_figure(rhythm) < 0.05
    times, now = [], 0.0
    for _ in range(400):
        now += rng.gauss(300, 90)  # CV 0.3
        times.append(int(now))
    assert rhythm_figure(times) == pytest.approx(0.3, abs=0.05)


def test_a_few_accidental_double_hits_are_not_enough() -> None:
    base = [n * 250 + random.Random(n).randint(0, 40) for n in range(60)]  # a human wobble
    two = sorted([*base, base[4] + 20, base[28] + 15])  # two double hits
    assert [f.reason for f in assess(two, two, FLOOR_MS, 0)] == []
    many = sorted([*base, *(base[4 * n] + 20 for n in range(1, 6))])
    findings = assess(many, many, FLOOR_MS, 0)
    assert [f.reason for f in findings] == [INHUMAN_TIMING]
    assert findings[0].evidence["below_floor_player_clock"] == 5


def test_network_bunching_alone_is_not_inhuman() -> None:
    """A stall that delivers five honest points at once: on arrival, not repeatedly."""
    sent = [n * 300 for n in range(80)]
    arrivals = [max(t + 40, 9_000) if 7_800 <= t <= 9_000 else t + 40 for t in sent]
    assert assess(arrivals, sent, FLOOR_MS, 0) == []


def test_zero_turns_each_rule_off() -> None:
    clumped = [n // 12 * 1001 + n % 12 for n in range(120)]
    assert [f.reason for f in assess(clumped, clumped, FLOOR_MS, MIN_CV)] == [INHUMAN_TIMING]
    assert assess(clumped, clumped, 0, 0) == []
    regular = [n * 100 for n in range(100)]
    assert [f.reason for f in assess(regular, regular, FLOOR_MS, MIN_CV)] == [ROBOTIC_RHYTHM]
    assert assess(regular, regular, FLOOR_MS, 0) == []


def test_too_few_points_are_not_judged_for_rhythm() -> None:
    regular = [n * 100 for n in range(39)]
    assert assess(regular, regular, FLOOR_MS, MIN_CV) == []


# --- in the session's state machine ---------------------------------------------------------

T0 = 1_800_000_000_000


def test_a_robotic_session_is_flagged_while_it_runs_once_and_before_any_end() -> None:
    session = GameSession(GameSettings(duration_ms=60_000), T0, T0)
    flags: list[tuple[int, AccountFlagged]] = []
    for n in range(1, 301):
        now = T0 + 150 * n
        for action in session.receive_point(now, now):
            if isinstance(action, AccountFlagged):
                flags.append((n, action))
    # Assessed every 16 points; the rhythm rule needs 40: the 48th point's assessment trips.
    assert [(n, flag.reason) for n, flag in flags] == [(48, ROBOTIC_RHYTHM)]
    assert 48 % ASSESS_EVERY == 0
    evidence = flags[0][1].detail
    assert evidence["rhythm_figure"] == 0.0 and evidence["points"] == 48
    end = session.expire(T0 + 60_000)
    assert end == (GameEnded(end[-1].reason, T0 + 60_000),)  # flagged once: not again


def test_the_end_assesses_what_came_since_the_last_assessment() -> None:
    session = GameSession(GameSettings(duration_ms=60_000), T0, T0)
    for n in range(1, 46):  # 45 points: assessed at 16 and 32 only (too few for rhythm)
        actions = session.receive_point(T0 + 150 * n, T0 + 150 * n)
        assert all(not isinstance(a, AccountFlagged) for a in actions)
    end = session.expire(T0 + 60_000)
    assert [type(a) for a in end] == [AccountFlagged, GameEnded]
    assert end[0].reason == ROBOTIC_RHYTHM  # type: ignore[union-attr]


def test_rejected_points_count_for_timing_too() -> None:
    """A clumping bot's extra points are refused as bursts, and still seen as inhuman."""
    session = GameSession(GameSettings(duration_ms=60_000, burst_limit=100), T0, T0)
    reasons = []
    for n in range(64):
        now = T0 + 100 + n // 16 * 1001 + n % 16
        reasons += [
            a.reason for a in session.receive_point(now, now) if isinstance(a, AccountFlagged)
        ]
    assert reasons == [INHUMAN_TIMING]


def test_a_person_like_session_is_never_flagged_by_the_state_machine() -> None:
    rng = random.Random(5)
    for _ in range(50):
        sim = honest(rng)
        # The player's clock relates to the server's as it did at the start.
        client_start = sim.client_times[0] - sim.arrivals[0]
        session = GameSession(GameSettings(duration_ms=40_000), T0, client_start)
        for arrival, client_ts in zip(sim.arrivals, sim.client_times, strict=True):
            actions = session.receive_point(client_ts, T0 + arrival)
            assert [type(a) for a in actions] == [PointAccepted], actions
        assert all(not isinstance(a, AccountFlagged) for a in session.expire(T0 + 40_000))


# --- a game's bounds ------------------------------------------------------------------------


def record(max_score: int | None, points: int) -> SessionRecord:
    settings = GameSettings(duration_ms=30_000, max_score=max_score)
    issued = {n: IssuedPoint(n, T0 + 100 * n, f"{n:08d}" * 10) for n in range(1, points + 1)}
    return SessionRecord(
        session_id="s",
        game_id="g",
        user_id=1,
        settings=settings,
        started_at=T0,
        offset_ms=0,
        start_token="start",
        end_token="end",
        ended_at=T0 + 30_000,
        end_reason=EndReason.TIME_UP,
        points=issued,
    )


def submitted(rec: SessionRecord) -> list[SubmittedPoint]:
    return [SubmittedPoint(p.token, p.server_ts) for p in rec.points.values()]


def seq_of(token: str) -> int | None:
    return int(token[:8])


def test_a_result_above_the_games_bound_is_implausible() -> None:
    over = record(max_score=5, points=6)
    verdict = check_submission(over, "start", "end", submitted(over), seq_of, T0 + 31_000)
    assert verdict == SubmissionRejected(
        ResultReason.IMPLAUSIBLE_SCORE, {"score": 6, "max_score": 5}
    )
    assert ResultReason.IMPLAUSIBLE_SCORE.flags_account
    at = record(max_score=6, points=6)
    assert check_submission(at, "start", "end", submitted(at), seq_of, T0 + 31_000) == (
        SubmissionAccepted(6)
    )
    unbounded = record(max_score=None, points=6)
    assert isinstance(
        check_submission(unbounded, "start", "end", submitted(unbounded), seq_of, T0 + 31_000),
        SubmissionAccepted,
    )


def test_outliers_are_far_above_the_games_own_population() -> None:
    rng = random.Random(9)
    population = [rng.randint(40, 80) for _ in range(50)]
    assert outlier_evidence(90, population) is None
    evidence = outlier_evidence(400, population)
    assert evidence is not None and evidence["population"] == 50
    assert evidence["fence"] < 400  # type: ignore[operator]
    assert outlier_evidence(400, population[:19]) is None  # too few to judge by
    assert outlier_evidence(5, [5] * 30) is None
    assert outlier_evidence(6, [5] * 30) is None  # within a fence of at least 3 points
    assert outlier_evidence(9, [5] * 30) is not None
