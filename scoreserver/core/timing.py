"""Timing analysis of a session's points: bots betray themselves by *when* they score.

Pure and synchronous, like `rules.py`: functions of the times the server already holds for a
session (when each point arrived, by the server's clock, and the `client_ts` the player put on
it, for accepted and rejected points alike) and of the game's settings. No I/O, no clock.

Two rules, each evaluated on both clocks:

``inhuman_timing``
    Points repeatedly closer together than the game's human floor (`human_floor_ms`). On the
    player's clock a few accidental double hits are allowed: the rule needs at least
    `FLOOR_MIN_COUNT` such intervals *and* `FLOOR_SHARE_PLAYER` of all of them. On arrival the
    network may bunch honest points (a stall delivers what queued behind it at once), so there
    the rule needs `FLOOR_SHARE_ARRIVAL` of all intervals, and at least `FLOOR_MIN_ARRIVAL`.

``robotic_rhythm``
    Intervals too regular for a person. The figure is the coefficient of variation of the
    intervals, corrected for jitter::

        rhythm = sqrt(max(0, var(d) - min(-2 * cov(d[i], d[i+1]), 2 * JITTER_MS²))) / mean(d)

    Independent jitter on each timestamp (network delay, a bot's added noise) adds 2s² to the
    variance of the intervals and -s² to their lag-1 covariance, so it cancels: a fixed rhythm
    seen through 0-30 ms of network jitter scores near 0, while a person's intervals (which are
    independent of one another, or drift as they tire) keep their own variation, 0.2 to 0.6 in
    studies of tapping. Only as much is discounted as jitter of `JITTER_MS` could cause, so a
    person whose intervals happen to alternate short and long keeps their figure. On arrival,
    a gap the network compressed (a stall delivering what queued behind it) is left out. The
    session's figure is the lower of the two clocks'; below the game's
    `min_rhythm_cv` over at least `RHYTHM_MIN_POINTS` points, the rule trips.

Timing alone cannot see a patient bot that imitates a person's rhythm and speed; see
docs/anti-cheat.md for what each rule sees and what it cannot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

INHUMAN_TIMING = "inhuman_timing"
ROBOTIC_RHYTHM = "robotic_rhythm"

FLOOR_MIN_COUNT = 3
FLOOR_SHARE_PLAYER = 0.05
FLOOR_SHARE_ARRIVAL = 0.25
# ... and at least this many: more than a stall or two bunch, fewer than two clumps of a bot.
FLOOR_MIN_ARRIVAL = 10
RHYTHM_MIN_POINTS = 40
# The most jitter (standard deviation of a timestamp's own noise) the rhythm figure discounts.
JITTER_MS = 12
# An arrival gap under 1/NETWORK_COMPRESSION of the player's gap was squeezed by the network.
NETWORK_COMPRESSION = 4
# How often a running session is assessed: every this many points received, and at its end.
ASSESS_EVERY = 16


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule tripped: its flag reason and the numbers that tripped it."""

    reason: str
    evidence: dict[str, object]


def intervals(times: Sequence[int]) -> list[int]:
    """The gaps between consecutive times, in the order the points came."""
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


def rhythm_figure(times: Sequence[int]) -> float | None:
    """The jitter-corrected coefficient of variation of the intervals (see the module
    docstring), or None with fewer than three intervals. Written out from its definition:
    `ClockTrack.rhythm` computes the same from running sums."""
    gaps = intervals(times)
    if len(gaps) < 3:
        return None
    mean = sum(gaps) / len(gaps)
    if mean <= 0:
        return 0.0
    variance = sum((gap - mean) ** 2 for gap in gaps) / len(gaps)
    lag1 = sum((a - mean) * (b - mean) for a, b in zip(gaps, gaps[1:], strict=False)) / (
        len(gaps) - 1
    )
    return _corrected(variance, lag1, mean)


def _corrected(variance: float, lag1: float, mean: float) -> float:
    """sqrt(variance less the jitter's share) / mean. Jitter shows as a negative lag-1
    covariance (-s^2 for jitter of deviation s); only as much is taken away as jitter of up to
    JITTER_MS could explain, so that a person whose intervals happen to alternate short and
    long is not mistaken for a metronome seen through a noisy network."""
    jitter_share = min(max(0.0, -2 * lag1), 2 * JITTER_MS * JITTER_MS)
    return math.sqrt(max(0.0, variance - jitter_share)) / mean


class ClockTrack:
    """The running sums one clock's rules need, updated in O(1) per point.

    A gap may be left out of the rhythm sums (`counted=False`): on arrival, a gap the network
    compressed (see `TimingTracker.add`). The lag-1 pairs then break there, so the jitter
    correction only ever pairs two gaps that were both counted.
    """

    __slots__ = (
        "below",
        "count",
        "floor_ms",
        "gaps",
        "last",
        "last_gap",
        "lag",
        "pair_first",
        "pair_second",
        "pairs",
        "shortest",
        "total",
        "total_sq",
    )

    def __init__(self, floor_ms: int) -> None:
        self.floor_ms = floor_ms
        self.count = 0  # points seen
        self.last = 0
        self.below = 0  # gaps under the floor (all of them, counted or not)
        self.shortest: int | None = None
        self.gaps = 0  # gaps counted for the rhythm
        self.total = 0  # their sum
        self.total_sq = 0  # the sum of their squares
        self.last_gap: int | None = None  # the previous gap, if it was counted
        self.pairs = 0  # consecutive counted gaps (a, b)
        self.pair_first = 0  # sum of the a's
        self.pair_second = 0  # sum of the b's
        self.lag = 0  # sum of a * b

    def add(self, time: int, counted: bool = True) -> None:
        if self.count:
            gap = time - self.last
            if gap < self.floor_ms:
                self.below += 1
            if self.shortest is None or gap < self.shortest:
                self.shortest = gap
            if counted:
                self.gaps += 1
                self.total += gap
                self.total_sq += gap * gap
                if self.last_gap is not None:
                    self.pairs += 1
                    self.pair_first += self.last_gap
                    self.pair_second += gap
                    self.lag += self.last_gap * gap
                self.last_gap = gap
            else:
                self.last_gap = None
        self.last = time
        self.count += 1

    def rhythm(self) -> float | None:
        """The jitter-corrected coefficient of variation of the counted gaps (see the module
        docstring), or None with fewer than three gaps or no pair."""
        n = self.gaps
        if n < 3 or not self.pairs:
            return None
        mean = self.total / n
        if mean <= 0:
            return 0.0
        variance = self.total_sq / n - mean * mean
        lag1 = (
            self.lag - mean * self.pair_first - mean * self.pair_second + self.pairs * mean * mean
        ) / self.pairs
        return _corrected(variance, lag1, mean)


class TimingTracker:
    """A session's timing, point by point: what `assess` needs, in O(1) per point."""

    __slots__ = ("arrival", "human_floor_ms", "min_rhythm_cv", "player")

    def __init__(self, human_floor_ms: int, min_rhythm_cv: float) -> None:
        self.human_floor_ms = human_floor_ms
        self.min_rhythm_cv = min_rhythm_cv
        self.arrival = ClockTrack(human_floor_ms)
        self.player = ClockTrack(human_floor_ms)

    def add(self, arrival: int, client_ts: int) -> None:
        # A gap that arrived compressed to under a quarter of the player's own gap for the
        # same two points is the network's doing (a stall delivering what queued behind it),
        # not the player's rhythm: it is left out of the arrival clock's rhythm.
        counted = True
        if self.arrival.count:
            arrival_gap = arrival - self.arrival.last
            player_gap = client_ts - self.player.last
            counted = arrival_gap * NETWORK_COMPRESSION >= player_gap
        self.arrival.add(arrival, counted)
        self.player.add(client_ts)

    @property
    def points(self) -> int:
        return self.arrival.count

    def findings(self) -> list[Finding]:
        """What the rules find in the points so far (see the module docstring)."""
        found: list[Finding] = []
        arrival, player = self.arrival, self.player
        floor = self.human_floor_ms
        if floor > 0 and arrival.count > FLOOR_MIN_COUNT:
            player_trips = (
                player.below >= FLOOR_MIN_COUNT
                and player.below >= FLOOR_SHARE_PLAYER * (player.count - 1)
            )
            arrival_trips = (
                arrival.below >= FLOOR_MIN_ARRIVAL
                and arrival.below >= FLOOR_SHARE_ARRIVAL * (arrival.count - 1)
            )
            if player_trips or arrival_trips:
                found.append(
                    Finding(
                        INHUMAN_TIMING,
                        {
                            "human_floor_ms": floor,
                            "intervals": arrival.count - 1,
                            "below_floor_player_clock": player.below,
                            "below_floor_on_arrival": arrival.below,
                            "shortest_ms_player_clock": player.shortest,
                            "shortest_ms_on_arrival": arrival.shortest,
                            "tripped_on": "player clock" if player_trips else "arrival",
                        },
                    )
                )
        if self.min_rhythm_cv > 0 and arrival.count >= RHYTHM_MIN_POINTS:
            on_player, on_arrival = player.rhythm(), arrival.rhythm()
            figures = [f for f in (on_player, on_arrival) if f is not None]
            if figures and min(figures) < self.min_rhythm_cv:
                found.append(
                    Finding(
                        ROBOTIC_RHYTHM,
                        {
                            "rhythm_figure": round(min(figures), 4),
                            "rhythm_player_clock": _rounded(on_player),
                            "rhythm_on_arrival": _rounded(on_arrival),
                            "min_rhythm_cv": self.min_rhythm_cv,
                            "points": arrival.count,
                            "mean_interval_ms": round(arrival.total / arrival.gaps, 1),
                        },
                    )
                )
        return found


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def assess(
    arrivals: Sequence[int],
    client_times: Sequence[int],
    human_floor_ms: int,
    min_rhythm_cv: float,
) -> list[Finding]:
    """What the rules find in a whole session's points (`TimingTracker`, all at once).

    `arrivals` are server times of arrival, `client_times` the players' stamps, in the order
    the points arrived. A floor or figure of 0 turns that rule off.
    """
    tracker = TimingTracker(human_floor_ms, min_rhythm_cv)
    for arrival, client_ts in zip(arrivals, client_times, strict=True):
        tracker.add(arrival, client_ts)
    return tracker.findings()


def profile(
    arrivals: Sequence[int],
    client_times: Sequence[int],
    human_floor_ms: int,
    min_rhythm_cv: float,
) -> dict[str, object]:
    """A session's timing as a reviewer sees it: the figures the rules read, and the raw
    intervals (on both clocks) for the histogram."""
    tracker = TimingTracker(human_floor_ms, min_rhythm_cv)
    for arrival, client_ts in zip(arrivals, client_times, strict=True):
        tracker.add(arrival, client_ts)
    on_player, on_arrival = tracker.player.rhythm(), tracker.arrival.rhythm()
    figures = [f for f in (on_player, on_arrival) if f is not None]
    return {
        "points": tracker.points,
        "human_floor_ms": human_floor_ms,
        "min_rhythm_cv": min_rhythm_cv,
        "rhythm_figure": _rounded(min(figures)) if figures else None,
        "rhythm_player_clock": _rounded(on_player),
        "rhythm_on_arrival": _rounded(on_arrival),
        "rhythm_judged": tracker.points >= RHYTHM_MIN_POINTS,
        "below_floor_player_clock": tracker.player.below,
        "below_floor_on_arrival": tracker.arrival.below,
        "intervals_player_clock": intervals(client_times),
        "intervals_on_arrival": intervals(arrivals),
    }


def population_range(figures: Sequence[float]) -> dict[str, object] | None:
    """The spread of a game's rhythm figures (its unflagged sessions): 5th, 50th and 95th
    percentiles, or None with fewer than 5 sessions to go by."""
    if len(figures) < 5:
        return None
    ordered = sorted(figures)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

    return {"sessions": len(ordered), "p5": at(0.05), "p50": at(0.5), "p95": at(0.95)}
