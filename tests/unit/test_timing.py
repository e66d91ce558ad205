"""Timing analysis, synchronously: the rules on simulated people and bots (timing_sim.py),
their place in the session's state machine, the review of the top of the board, and a
game's score bound.

The populations are timing_sim.py's (what the outside probe measured, not what the rules
expect); bench/anticheat.py runs the same on more sessions for docs/anti-cheat.md."""

from __future__ import annotations

import math
import random

import pytest

from scoreserver.core import review, timing
from scoreserver.core.rules import (
    AccountFlagged,
    BurstRecorded,
    EndReason,
    GameEnded,
    GameSession,
    GameSettings,
    IssuedPoint,
    IssuedPoints,
    PointAccepted,
    PointRejected,
    RejectReason,
    ResultReason,
    SessionRecord,
    SubmissionAccepted,
    SubmissionRejected,
    SubmittedPoint,
    check_submission,
)
from scoreserver.core.timing import (
    ASSESS_EVERY,
    BUNCH_MOST_GAPS,
    FLOOR_ALPHA,
    FLOOR_HUMAN_SHARE,
    FLOOR_MIN_INTERVALS,
    INHUMAN_TIMING,
    ROBOTIC_RHYTHM,
    SUPERHUMAN_RATE,
    RateTracker,
    TimingTracker,
    assess,
    floor_threshold,
    rhythm_figure,
)

from .. import timing_sim
from ..timing_sim import BOTS, MOBILE, ONE_STALL, POOR, judge, person

FLOOR_MS = GameSettings(duration_ms=1).human_floor_ms
MIN_CV = GameSettings(duration_ms=1).min_rhythm_cv
PEOPLE = 1500
BOT_SESSIONS = 200
T0 = 1_800_000_000_000


# --- the populations ------------------------------------------------------------------------


def test_people_are_not_flagged_and_a_third_of_them_are_on_poor_networks() -> None:
    """Judged as in play (every 16 points and at the end) by the session's state machine."""
    rng = random.Random(20261204)
    sessions = [person(rng) for _ in range(PEOPLE)]
    poor = sum(1 for s in sessions if s.network != "good")
    assert poor >= PEOPLE / 4
    flagged = [(s.kind, s.network, v.reasons) for s in sessions if (v := judge(s)).flagged]
    assert flagged == []


@pytest.mark.parametrize("network", [POOR, MOBILE, ONE_STALL], ids=lambda n: n.name)
def test_experts_on_bad_networks_are_people(network: timing_sim.Network) -> None:
    """7-9 points a second in streaks with a CV of 0.09-0.10, across stalls of 0.5-2 s whose
    queued points arrive together: the probe's false flags, none of them flagged now."""
    rng = random.Random(network.name)
    verdicts = [judge(person(rng, "expert", network)) for _ in range(300)]
    assert [v.reasons for v in verdicts if v.flagged] == []
    assert max(v.score for v in verdicts) > 150  # experts indeed


def test_the_simulated_people_are_what_the_probe_measured() -> None:
    rng = random.Random(7)
    experts = [person(rng, "expert", timing_sim.GOOD) for _ in range(100)]
    for session in experts:
        gaps = sorted(
            b - a for a, b in zip(session.client_times, session.client_times[1:], strict=False)
        )
        median = gaps[len(gaps) // 2]
        assert 100 <= median <= 160  # 7-9 points a second inside a streak (and a little drift)
    stalled = [person(rng, "regular", POOR) for _ in range(100)]
    bunched = 0
    for session in stalled:
        gaps = [b - a for a, b in zip(session.arrivals, session.arrivals[1:], strict=False)]
        bunched += sum(1 for g in gaps if g <= 2)
    assert bunched > 100  # stalls delivered queued points together


@pytest.mark.parametrize("kind", list(BOTS))
def test_every_bot_that_outscores_the_best_person_is_flagged_or_held(kind: str) -> None:
    """A bot above the best person's score is either flagged by the session's rules or held
    by the review of the top (the range's top: the best of the trusted people)."""
    rng = random.Random(f"people {kind}")
    people = [judge(person(rng)) for _ in range(400)]
    trusted = [review.TrustedBest(v.score) for v in people if not v.flagged]
    found = review.review_range(trusted, timing_sim.settings_for())
    assert found.source == "trusted players"
    best_person = max(v.score for v in people)
    rng = random.Random(kind)
    escaped = []
    for _ in range(BOT_SESSIONS):
        verdict = judge(BOTS[kind](rng))
        if verdict.score > best_person and not verdict.flagged:
            if not review.above_range(verdict.score, found):
                escaped.append(verdict.score)
    assert escaped == []


@pytest.mark.parametrize(
    "kind",
    [
        "clumps of 12, then 1,001 ms (honest stamps)",
        "clumps of 12, stamps faked steady",
        "burst-window hugger",
        "window governor (84-90 ms, CV 0.16-0.24)",
        "Gaussian jitter at 84-95 ms",
        "uniform jitter at 84-95 ms",
    ],
)
def test_bots_above_the_rate_ceiling_are_flagged_by_the_rules_alone(kind: str) -> None:
    rng = random.Random(kind)
    caught = sum(1 for _ in range(BOT_SESSIONS) if judge(BOTS[kind](rng)).flagged)
    assert caught >= 0.99 * BOT_SESSIONS, f"{kind}: {caught} of {BOT_SESSIONS}"


def test_metronomes_are_flagged_unless_their_clock_is_coarse() -> None:
    rng = random.Random(12)
    for kind in ("fixed rhythm", "rhythm with +/-5 % noise"):
        caught = sum(1 for _ in range(BOT_SESSIONS) if judge(BOTS[kind](rng)).flagged)
        # 3 % of clocks round to 100 ms, which hides a rhythm: those are left to the review.
        assert caught >= 0.95 * BOT_SESSIONS, f"{kind}: {caught}"


# --- the rules, one by one ------------------------------------------------------------------


def test_the_floor_threshold_is_a_binomial_tail() -> None:
    assert [floor_threshold(n) for n in (30, 100, 500)] == [8, 12, 29]
    # Monotone in n, and always above what a person with a 2 % share shows on average.
    values = [floor_threshold(n) for n in range(FLOOR_MIN_INTERVALS, 2000, 7)]
    assert values == sorted(values)
    assert all(
        k > 0.02 * n for k, n in zip(values, range(FLOOR_MIN_INTERVALS, 2000, 7), strict=False)
    )


def reference_threshold(n: int) -> int:
    """The threshold from its definition, the whole tail from k = n down (O(n))."""
    p = FLOOR_HUMAN_SHARE
    log_p = [n * math.log1p(-p)]
    for k in range(n):
        log_p.append(log_p[k] + math.log(n - k) - math.log(k + 1) + math.log(p / (1 - p)))
    tail = 0.0
    for k in range(n, -1, -1):
        tail += math.exp(log_p[k])
        if tail >= FLOOR_ALPHA:
            return k + 1
    raise AssertionError("the distribution sums to 1")


def test_the_floor_threshold_sums_only_the_tail_that_counts() -> None:
    """The short sum (from TAIL_REACH deviations past the mean) agrees with the whole one at
    every size a game can judge, up to a 24-hour game at ten points a second."""
    sizes = [*range(1, 400), *range(400, 5000, 37), 20_011, 100_003, 864_000]
    assert [floor_threshold(n) for n in sizes] == [reference_threshold(n) for n in sizes]
    # Above the mean everywhere: `findings` skips the threshold for counts at or under it.
    assert all(floor_threshold(n) > n * FLOOR_HUMAN_SHARE for n in sizes)


def test_a_few_accidental_double_hits_are_not_enough() -> None:
    # A fast hand (75-95 ms apart): a second hit 15 ms after one cannot be a busy page's
    # bunch, since the gap before it could not have held both hits a floor apart.
    base = [n * 85 + random.Random(n).randint(0, 10) for n in range(60)]
    five = sorted([*base, *(base[4 * n] + 15 for n in range(1, 6))])
    assert [f.reason for f in assess(five, five, FLOOR_MS, 0)] == []
    many = sorted([*base, *(base[4 * n] + 15 for n in range(1, 13))])
    findings = assess(many, many, FLOOR_MS, 0)
    assert [f.reason for f in findings] == [INHUMAN_TIMING]
    assert findings[0].evidence["below_floor_player_clock"] == 12
    assert findings[0].evidence["below_floor_bunched"] == 0
    assert findings[0].evidence["below_floor_needed"] == floor_threshold(71)


def _bunched_play(bunch: int, pause: int, rounds: int) -> list[int]:
    """A player 111 ms apart whose page, every round, stamps `bunch` taps 1 ms apart after a
    pause of `pause` ms (a long task they queued behind)."""
    times, now = [], 0
    for _ in range(rounds):
        for _ in range(6):
            now += 111
            times.append(now)
        now += pause
        for n in range(bunch):
            times.append(now + n)
        now += bunch
    return times


def test_a_busy_pages_bunches_are_not_counted_under_the_floor() -> None:
    """A long task holds the taps behind it and their handlers run together, a millisecond
    apart: the player's own stamps squeezed by their own page, not by a bot. A run of gaps
    under the floor is forgiven when the gap before it could have held every point of it a
    floor apart, and it is no longer than one long task holds (BUNCH_MOST_GAPS)."""
    # Bunches of 4 (3 gaps under the floor) after a 350 ms task: 20 of them in 200 gaps.
    times = _bunched_play(4, 350, 20)
    tracker = TimingTracker(FLOOR_MS, 0)
    for t in times:
        tracker.add(t, t)
    assert tracker.player.below == 60
    assert tracker.player.unexplained == 0
    assert assess(times, times, FLOOR_MS, 0) == []
    profile = timing.profile(times, times, FLOOR_MS, 0)
    assert profile["below_floor_player_clock"] == 0 and profile["below_floor_bunched"] == 60


def test_a_bunch_too_long_or_too_soon_is_counted() -> None:
    """What a busy page cannot explain still counts: a run of more gaps than one long task
    holds, and a run after a gap too short to have held its points a floor apart."""
    long_run = _bunched_play(BUNCH_MOST_GAPS + 2, 2_000, 10)  # 9 gaps under the floor a run
    found = assess(long_run, long_run, FLOOR_MS, 0)
    assert [f.reason for f in found] == [INHUMAN_TIMING]
    assert found[0].evidence["below_floor_player_clock"] == 10 * (BUNCH_MOST_GAPS + 1)
    assert found[0].evidence["below_floor_bunched"] == 0
    # 4 points 1 ms apart after 150 ms: they could not have been 60 ms apart before it.
    too_soon = _bunched_play(4, 150, 20)
    found = assess(too_soon, too_soon, FLOOR_MS, 0)
    assert [f.reason for f in found] == [INHUMAN_TIMING]
    assert found[0].evidence["below_floor_player_clock"] == 60
    # The open run at the end is judged as it stands, then counted once it grows too long.
    tracker = TimingTracker(FLOOR_MS, 0)
    for t in [*range(0, 40 * 111, 111), *range(5_000, 5_000 + BUNCH_MOST_GAPS + 1)]:
        tracker.add(t, t)
    assert tracker.player.unexplained == 0
    tracker.add(5_000 + BUNCH_MOST_GAPS + 1, 5_000 + BUNCH_MOST_GAPS + 1)
    assert tracker.player.unexplained == BUNCH_MOST_GAPS + 1


@pytest.mark.parametrize("page", [timing_sim.BUSY, timing_sim.OVERLOADED], ids=lambda p: p.name)
def test_experts_on_busy_pages_are_people(page: timing_sim.Page) -> None:
    """Experts whose page is in long tasks 2-20 % of the time, on every kind of network: the
    taps that queued behind a task are stamped together. Not one flagged."""
    rng = random.Random(page.name)
    sessions = [person(rng, "expert", page=page) for _ in range(300)]
    squeezed = 0
    for session in sessions:
        gaps = [b - a for a, b in zip(session.client_times, session.client_times[1:], strict=False)]
        squeezed += sum(1 for g in gaps if g < FLOOR_MS)
    assert squeezed > 300 * 5  # the page did squeeze their own stamps
    assert [(s.network, v.reasons) for s in sessions if (v := judge(s)).flagged] == []


def test_bunching_on_arrival_never_trips_a_rule_when_the_players_clock_disagrees() -> None:
    """Every point of a game delivered in clumps (the worst network), stamped 300 ms apart:
    the arrivals are all under the floor, the player's clock is a person's."""
    rng = random.Random(4)
    sent, now = [], 0
    for _ in range(120):
        now += max(80, int(rng.gauss(300, 90)))
        sent.append(now)
    arrivals = [t // 2000 * 2000 + 2000 for t in sent]  # a 2 s stall after every 2 s
    tracker = TimingTracker(FLOOR_MS, MIN_CV)
    for arrival, client_ts in zip(arrivals, sent, strict=True):
        tracker.add(arrival, client_ts)
    assert tracker.arrival.below > 100
    assert tracker.findings() == []


def test_a_metronome_trips_the_rhythm_rule_and_a_steady_expert_does_not() -> None:
    regular = [n * 100 for n in range(100)]
    assert [f.reason for f in assess(regular, regular, FLOOR_MS, MIN_CV)] == [ROBOTIC_RHYTHM]
    rng = random.Random(2)
    for _ in range(200):
        times, now = [], 0.0
        for _ in range(60):
            now += rng.gauss(120, 120 * 0.09)  # an expert's fastest streak, CV 0.09
            times.append(int(now))
        assert assess(times, times, FLOOR_MS, MIN_CV) == []


def test_the_running_sums_agree_with_the_definition() -> None:
    rng = random.Random(3)
    for n in range(60):
        session = person(rng) if n % 2 else list(BOTS.values())[n % len(BOTS)](rng)
        tracker = TimingTracker(FLOOR_MS, MIN_CV)
        for arrival, client_ts in zip(session.arrivals, session.client_times, strict=True):
            tracker.add(arrival, client_ts)
        expected = rhythm_figure(session.client_times)
        assert expected is not None
        assert tracker.player.rhythm() == pytest.approx(expected, abs=1e-9)


def test_zero_turns_each_rule_off() -> None:
    clumped = [n // 12 * 1001 + n % 12 for n in range(120)]
    assert INHUMAN_TIMING in [f.reason for f in assess(clumped, clumped, FLOOR_MS, MIN_CV)]
    assert assess(clumped, clumped, 0, 0) == []
    regular = [n * 100 for n in range(100)]
    assert assess(regular, regular, FLOOR_MS, 0) == []
    fast = GameSession(GameSettings(duration_ms=20_000, human_max_rate=0), T0, T0)
    for n in range(230):
        fast.receive_point(T0 + n * 86, T0 + n * 86)
    assert SUPERHUMAN_RATE not in fast.flagged


def test_too_few_points_are_not_judged_for_rhythm() -> None:
    regular = [n * 100 for n in range(39)]
    assert assess(regular, regular, FLOOR_MS, MIN_CV) == []


# --- the sustained rate ---------------------------------------------------------------------


def test_eleven_a_second_for_twenty_seconds_is_superhuman() -> None:
    # Evenly spaced, so the rhythm rule is off here: this is the rate rule alone.
    session = GameSession(GameSettings(duration_ms=20_000, min_rhythm_cv=0), T0, T0)
    flags = []
    for n in range(215):
        now = T0 + 50 + n * 91  # 11 a second, under the burst limit
        for action in session.receive_point(now, now):
            if isinstance(action, AccountFlagged):
                flags.append((n + 1, action))
    assert [(n, f.reason) for n, f in flags] == [(101, SUPERHUMAN_RATE)]
    evidence = flags[0][1].detail
    assert evidence["points_in_window"] == 101 and evidence["window_ms"] == 10_000
    assert evidence["human_max_rate"] == 10.0


def test_nine_a_second_is_a_person() -> None:
    session = GameSession(GameSettings(duration_ms=30_000, min_rhythm_cv=0), T0, T0)
    for n in range(265):
        now = T0 + 50 + n * 111
        assert [type(a) for a in session.receive_point(now, now)] == [PointAccepted]


def test_a_stall_cannot_raise_the_rate_and_a_stepped_clock_cannot_either() -> None:
    tracker = RateTracker(10, 10_000)
    # 9.5 a second for 30 s; a 2 s stall at 10 s delivers its points together on arrival.
    tripped = False
    for n in range(285):
        sent = n * 105
        arrival = 12_000 if 10_000 <= sent < 12_000 else sent + 40
        tripped |= tracker.add(arrival, sent)
    assert not tripped and tracker.most <= 100
    stepped = RateTracker(10, 10_000)
    tripped = False
    for n in range(285):
        sent = n * 105
        stamp = sent - 900 if sent >= 15_000 else sent  # the clock stepped back 0.9 s
        tripped |= stepped.add(sent + 40, stamp)
    assert not tripped


def test_lying_stamps_buy_at_most_the_latency_allowance() -> None:
    """A bot at 10.5 a second that stretches its stamps across +/-0.9 s passes for under 10
    on a 30 s game (so the review must catch it), and at 11 it cannot."""
    for rate, caught in ((10.5, False), (11.2, True)):
        tracker = RateTracker(10, 10_000)
        tripped = False
        stretch = 1 + 1_800 / 30_000
        for n in range(int(rate * 30)):
            arrival = n * 1000 / rate
            tripped |= tracker.add(int(arrival), int(arrival * stretch - 900))
        assert tripped is caught, rate


# --- the burst window -----------------------------------------------------------------------


def test_points_a_stall_delivered_together_make_no_burst() -> None:
    """8 a second; a 1.5 s stall; its 12 queued points arrive at once, each on time within
    the latency allowance: no burst, because the player's stamps keep their spacing."""
    settings = GameSettings(duration_ms=30_000, latency_ms=2_000)
    session = GameSession(settings, T0, T0)
    rejected = []
    for n in range(200):
        sent = T0 + 50 + n * 125
        arrival = T0 + 11_500 if T0 + 10_000 <= sent < T0 + 11_500 else sent + 60
        for action in session.receive_point(sent, arrival):
            if isinstance(action, PointRejected):
                rejected.append(action.reason)
    assert rejected == []


def test_clumps_with_honest_stamps_are_bursts() -> None:
    session = GameSession(GameSettings(duration_ms=30_000), T0, T0)
    actions = [a for n in range(14) for a in session.receive_point(T0 + 100 + n, T0 + 100 + n)]
    assert sum(isinstance(a, BurstRecorded) for a in actions) == 2


def test_a_point_stamped_between_earlier_ones_is_judged_in_every_window_it_joins() -> None:
    settings = GameSettings(duration_ms=30_000, burst_threshold=2, burst_window_ms=1000)
    session = GameSession(settings, T0, T0)
    # Stamped 0, 600 and 1200, arriving together late: crowded on arrival, not on the
    # player's clock (no window of 1000 ms holds more than two stamps).
    for stamp, arrival in ((0, 900), (600, 1000), (1200, 1250)):
        assert isinstance(session.receive_point(T0 + stamp, T0 + arrival)[0], PointAccepted)
    # Stamped 500: the window ending at it holds only 0, but the one ending at 600 would hold
    # 0, 500 and 600. The usual check (the window ending at the new point) would miss it.
    rejected, burst = session.receive_point(T0 + 500, T0 + 1300)
    assert isinstance(rejected, PointRejected) and rejected.reason is RejectReason.BURST
    assert isinstance(burst, BurstRecorded)


# --- in the session's state machine ---------------------------------------------------------


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


# --- the review of the top ------------------------------------------------------------------


def test_the_range_comes_from_settings_until_enough_trusted_players() -> None:
    settings = GameSettings(duration_ms=30_000)  # ceiling 10 a second: 150 from settings
    few = [review.TrustedBest(s) for s in (40, 90, 120)]
    found = review.review_range(few, settings)
    assert (found.top, found.source) == (150, "settings")
    assert review.above_range(151, found) and not review.above_range(150, found)
    enough = [review.TrustedBest(40 + n) for n in range(10)]
    found = review.review_range(enough, settings)
    assert (found.top, found.source, found.trusted_players) == (49, "trusted players", 10)
    # A cleared (reviewed) result raises the settings' top while the players are few.
    cleared = [*few, review.TrustedBest(210, reviewed=True)]
    assert review.review_range(cleared, settings).top == 210
    assert review.review_range([], GameSettings(duration_ms=30_000, review_above=80)).top == 80
    off = GameSettings(duration_ms=30_000, human_max_rate=0)
    assert review.review_range([], off).top is None
    assert not review.above_range(10**6, review.review_range([], off))


def test_scores_below_the_top_cannot_raise_it() -> None:
    """Throwaway accounts that score just under the top, whatever their number, leave it."""
    settings = GameSettings(duration_ms=30_000, review_min_players=5)
    people = [review.TrustedBest(s) for s in (100, 120, 140, 160, 193)]
    top = review.review_range(people, settings).top
    throwaways = [review.TrustedBest(193) for _ in range(50)]
    assert review.review_range([*people, *throwaways], settings).top == top == 193


def test_the_evidence_draws_the_score_against_the_trusted_population() -> None:
    trusted = [review.TrustedBest(s) for s in range(50, 250, 10)]
    found = review.review_range(trusted, GameSettings(duration_ms=30_000))
    detail = review.evidence(400, found, trusted)
    assert detail["range_top"] == 240 and detail["trusted_players"] == 20
    histogram = detail["histogram"]
    assert isinstance(histogram, dict)
    assert sum(histogram["counts"]) == 20
    assert histogram["bin_width"] * review.HISTOGRAM_BINS > 400


# --- a game's bounds ------------------------------------------------------------------------


def record(max_score: int | None, points: int) -> SessionRecord:
    settings = GameSettings(duration_ms=30_000, max_score=max_score)
    issued = IssuedPoints(
        IssuedPoint(n, T0 + 100 * n, f"{n:08d}" * 10) for n in range(1, points + 1)
    )
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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("review_above", 2**63),
        ("review_above", -1),
        ("review_min_players", 0),
        ("review_min_players", 2**63),
        ("max_score", 2**63),
        ("human_max_rate", float("nan")),
        ("human_max_rate", 1e308),
        ("review_account_age_h", float("inf")),
    ],
)
def test_settings_past_their_bounds_are_refused(field: str, value: object) -> None:
    """What a database cannot hold (2**63 overflows SQLite's INTEGER) is refused here, before
    any engine sees it, with a message the command line prints."""
    with pytest.raises(ValueError, match=field):
        GameSettings(duration_ms=30_000, **{field: value})  # type: ignore[arg-type]
    assert GameSettings(duration_ms=30_000, review_above=2**53, max_score=2**53).max_score == 2**53
