"""Timing analysis of a session's points: bots betray themselves by *when* they score.

Pure and synchronous, like `rules.py`: functions of the times the server already holds for a
session (when each point arrived, by the server's clock, and the `client_ts` the player put on
it) and of the game's settings. No I/O, no clock.

**A verdict rests on the player's own clock.** A network can delay points and bunch them (a
stall of a second or two delivers everything that queued behind it at once, on one TCP
stream); it cannot squeeze the intervals between the player's own stamps. So every rule below
judges the intervals of `client_ts`, and what arrival times show is kept as context for a
reviewer, never as the reason for a flag. A bot that stamps honestly shows its rhythm there; a
bot that lies in its stamps can move each one at most `latency_ms` from when it arrived (the
clock rule refuses anything further), which bounds what lying buys it (see `RateTracker`).

``inhuman_timing``
    Points closer together than the game's human floor (`human_floor_ms`), more often than a
    person's accidental double hits explain: at least `FLOOR_MIN_INTERVALS` intervals judged,
    and a count of intervals under the floor that a person whose share of such intervals is
    `FLOOR_HUMAN_SHARE` would reach with a probability under `FLOOR_ALPHA` (a binomial tail):
    8 of 30, 12 of 100, 29 of 500. One stall cannot trip it (it does not touch the player's
    clock), and neither can a few accidental double clicks early in a game.

``robotic_rhythm``
    Intervals too regular for a person: their coefficient of variation (standard deviation
    over mean) on the player's clock, over at least `RHYTHM_MIN_POINTS` points, below the
    game's `min_rhythm_cv`. A script's stamps at a fixed period show about 0; a person's
    intervals vary (0.2-0.6 in studies of tapping, 0.09-0.10 for experts in their fastest
    streaks). No correction for jitter is taken: the player's stamps carry no network jitter,
    and a person's own motor noise has the very signature that jitter has, so discounting it
    read fast, steady experts as metronomes.

``superhuman_rate``
    A sustained rate above the game's ceiling (`human_max_rate` points a second): more than
    `human_max_rate * window` accepted points within any `RATE_WINDOW_MS` (the whole game, if
    shorter), on the player's clock and on arrival alike. See `RateTracker`.

Timing alone cannot see a patient bot that imitates a person's rhythm at a person's speed;
the top of the board is held for review for that (store/ops/sessions.py, the review range), and
docs/anti-cheat.md says what each rule sees and what it cannot.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

INHUMAN_TIMING = "inhuman_timing"
ROBOTIC_RHYTHM = "robotic_rhythm"
SUPERHUMAN_RATE = "superhuman_rate"

# inhuman_timing: no verdict on fewer intervals than this ...
FLOOR_MIN_INTERVALS = 30
# ... a person's share of intervals under the floor may be this high (double hits, a combo) ...
FLOOR_HUMAN_SHARE = 0.02
# ... and a count is too many when such a person would reach it with a probability under this.
FLOOR_ALPHA = 1e-6
RHYTHM_MIN_POINTS = 40
# The sustained rate is judged over windows of this much of the player's clock.
RATE_WINDOW_MS = 10_000
# floor_threshold sums the binomial tail from this many standard deviations past the mean.
TAIL_REACH = 15
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
    """The coefficient of variation of the intervals, or None with fewer than three intervals.
    Written out from its definition: `ClockTrack.rhythm` computes the same from running sums."""
    gaps = intervals(times)
    if len(gaps) < 3:
        return None
    mean = sum(gaps) / len(gaps)
    if mean <= 0:
        return 0.0
    variance = sum((gap - mean) ** 2 for gap in gaps) / len(gaps)
    return math.sqrt(variance) / mean


@lru_cache(maxsize=4096)
def floor_threshold(intervals_judged: int) -> int:
    """The fewest intervals under the floor, out of `intervals_judged`, that `inhuman_timing`
    calls too many: the smallest k with P(Binomial(n, FLOOR_HUMAN_SHARE) >= k) < FLOOR_ALPHA.

    The tail is summed from above, as its definition reads, but from `TAIL_REACH` standard
    deviations past the mean rather than from k = n: every term beyond is under e**-100 of
    the tail being looked for (well below a double's precision), and the work is O(sqrt n),
    not O(n). A 24-hour game judged every 16 points would otherwise cost the loop a
    millisecond a call by 2,000 intervals, and a quarter of a second by 800,000."""
    n, p = intervals_judged, FLOOR_HUMAN_SHARE
    if n <= 0:
        return 0
    mean = n * p
    spread = math.sqrt(mean * (1 - p))
    top = min(n, math.ceil(mean + TAIL_REACH * spread + TAIL_REACH))
    # log P(X = top), then P(k - 1) = P(k) * k / (n - k + 1) * (1 - p) / p, going down.
    log_p = (
        math.lgamma(n + 1)
        - math.lgamma(top + 1)
        - math.lgamma(n - top + 1)
        + top * math.log(p)
        + (n - top) * math.log1p(-p)
    )
    step = math.log1p(-p) - math.log(p)
    tail = 0.0
    for k in range(top, -1, -1):
        tail += math.exp(log_p)
        if tail >= FLOOR_ALPHA:
            return k + 1
        if k:
            log_p += math.log(k) - math.log(n - k + 1) + step
    return 0  # pragma: no cover - the whole distribution sums to 1


class ClockTrack:
    """The running sums one clock's figures need, updated in O(1) per point.

    A gap may be left out of the rhythm sums (`counted=False`): on arrival, a gap the network
    compressed (see `TimingTracker.add`); it is context for a reviewer only.

    Gaps under the floor come in runs; a run a busy page explains (see `BUNCH_MOST_GAPS`) is
    counted in `bunched` as well as in `below`, and `unexplained` is what `inhuman_timing`
    judges.
    """

    __slots__ = (
        "below",
        "bunched",
        "count",
        "floor_ms",
        "gaps",
        "last",
        "last_gap",
        "run_before",
        "run_gaps",
        "run_span",
        "shortest",
        "total",
        "total_sq",
    )

    def __init__(self, floor_ms: int) -> None:
        self.floor_ms = floor_ms
        self.count = 0  # points seen
        self.last = 0
        self.below = 0  # gaps under the floor (all of them, counted or not)
        self.bunched = 0  # ... of which in runs that closed explained by a busy page
        self.last_gap = 0  # the gap before the one being added (0: none yet)
        self.run_before = 0  # the open run of gaps under the floor: the gap before it,
        self.run_gaps = 0  # how many gaps it holds,
        self.run_span = 0  # and their sum
        self.shortest: int | None = None
        self.gaps = 0  # gaps counted for the rhythm
        self.total = 0  # their sum
        self.total_sq = 0  # the sum of their squares

    def add(self, time: int, counted: bool = True) -> None:
        if self.count:
            gap = time - self.last
            if gap < self.floor_ms:
                self.below += 1
                if not self.run_gaps:
                    self.run_before = self.last_gap
                self.run_gaps += 1
                self.run_span += gap
            elif self.run_gaps:
                if self._run_explained():
                    self.bunched += self.run_gaps
                self.run_gaps = self.run_span = 0
            if self.shortest is None or gap < self.shortest:
                self.shortest = gap
            if counted:
                self.gaps += 1
                self.total += gap
                self.total_sq += gap * gap
            self.last_gap = gap
        self.last = time
        self.count += 1

    def _run_explained(self) -> bool:
        """Whether the open run of gaps under the floor is what a busy page makes of points
        scored at a person's pace: no more gaps than one long task holds, and the gap before
        the run long enough to have held every point of it at least a floor apart."""
        return explains_bunch(self.run_gaps, self.run_before + self.run_span, self.floor_ms)

    @property
    def unexplained(self) -> int:
        """The gaps under the floor that no busy page explains (the open run counted as it
        stands: it may yet grow past what one long task holds)."""
        open_run = self.run_gaps if self.run_gaps and self._run_explained() else 0
        return self.below - self.bunched - open_run

    def rhythm(self) -> float | None:
        """The coefficient of variation of the counted gaps, or None with fewer than three."""
        n = self.gaps
        if n < 3:
            return None
        mean = self.total / n
        if mean <= 0:
            return 0.0
        variance = max(0.0, self.total_sq / n - mean * mean)
        return math.sqrt(variance) / mean

    def mean_gap(self) -> float | None:
        return self.total / self.gaps if self.gaps else None


# A run of at most this many gaps under the floor may be a busy page's: see the module
# docstring (a 900 ms long task while a player scores 9 points a second).
BUNCH_MOST_GAPS = 8


def explains_bunch(gaps: int, since_ms: int, floor_ms: int) -> bool:
    """Whether a run of `gaps` gaps under the floor, ending `since_ms` after the point before
    it, is what a busy page makes of points scored at a person's pace: no more gaps than one
    long task holds, and time enough for every point of the run a floor apart. The one rule
    behind both `ClockTrack` (the floor rule) and `Bunch` (the burst window)."""
    return gaps <= BUNCH_MOST_GAPS and since_ms >= (gaps + 1) * floor_ms


class Bunch:
    """Where a busy page's bunch counts on the player's clock, for the burst window
    (rules.py): the open run of accepted points under the floor, as `ClockTrack` forgives one,
    counts spread evenly across the gap before it, where the taps it holds were made; a run
    the gap cannot explain (or longer than `BUNCH_MOST_GAPS`) counts as stamped. Spreading
    keeps a bunch's average: a bot that bunches faster than the burst threshold on average
    still fills the window.
    """

    __slots__ = ("anchor", "before", "floor_ms", "last", "placed", "run", "spent")

    def __init__(self, floor_ms: int) -> None:
        self.floor_ms = floor_ms
        self.last: int | None = None  # the last accepted point, as stamped
        self.before: int | None = None  # the one before it
        self.anchor: int | None = None  # the point before the open run
        self.run: list[int] = []  # the open run's points, as stamped (empty: none open)
        self.placed: list[int] = []  # ... and where they count now (the window's tail)
        self.spent = False  # the open run grew past one long task: it counts as stamped

    def placing(self, scored: int) -> list[int] | None:
        """Where the open run's points count if `scored` is accepted next (it keeps its own
        place), or None when nothing moves."""
        last, floor = self.last, self.floor_ms
        if not floor or last is None or self.spent or not 0 <= scored - last < floor:
            return None
        run = self.run or [last]
        anchor = self.anchor if self.run else self.before
        gaps = len(run)
        if anchor is None or not explains_bunch(gaps, scored - anchor, floor):
            return list(run)
        step = (scored - anchor) / (gaps + 1)
        return [anchor + round(step * (n + 1)) for n in range(gaps)]

    def current(self) -> list[int]:
        """Where the open run's points count now (the last point alone when none is open)."""
        return self.placed or ([] if self.last is None else [self.last])

    def accept(self, scored: int, placed: list[int] | None) -> None:
        """`scored` was accepted with the run's points where `placing` put them (None: the
        run, if any, is closed, or was left where it was)."""
        last = self.last
        if last is None or not 0 <= scored - last < self.floor_ms:
            self.spent = False
        if placed is None:
            self.run, self.placed = [], []
        else:
            if not self.run:
                self.anchor, self.run = self.before, [last] if last is not None else []
            self.run.append(scored)
            self.placed = [*placed, scored]
            if len(self.run) > BUNCH_MOST_GAPS + 1:
                self.spent, self.run, self.placed = True, [], []
        self.before, self.last = last, scored


# An arrival gap under 1/NETWORK_COMPRESSION of the player's gap was squeezed by the network.
NETWORK_COMPRESSION = 4


class TimingTracker:
    """A session's timing, point by point: what `findings` needs, in O(1) per point."""

    __slots__ = ("arrival", "human_floor_ms", "min_rhythm_cv", "player")

    def __init__(self, human_floor_ms: int, min_rhythm_cv: float) -> None:
        self.human_floor_ms = human_floor_ms
        self.min_rhythm_cv = min_rhythm_cv
        self.arrival = ClockTrack(human_floor_ms)
        self.player = ClockTrack(human_floor_ms)

    def add(self, arrival: int, client_ts: int) -> None:
        # For the reviewer's arrival figure only: a gap that arrived compressed to under a
        # quarter of the player's own gap for the same two points is the network's doing.
        counted = True
        if self.arrival.count:
            counted = (arrival - self.arrival.last) * NETWORK_COMPRESSION >= (
                client_ts - self.player.last
            )
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
        judged = player.count - 1
        unexplained = player.unexplained
        # The threshold always lies above the mean count (a person's share of n): below it,
        # nothing is computed at all.
        if floor > 0 and judged >= FLOOR_MIN_INTERVALS and unexplained > judged * FLOOR_HUMAN_SHARE:
            needed = floor_threshold(judged)
            if unexplained >= needed:
                found.append(
                    Finding(
                        INHUMAN_TIMING,
                        {
                            "human_floor_ms": floor,
                            "intervals": judged,
                            "below_floor_player_clock": unexplained,
                            "below_floor_bunched": player.below - unexplained,
                            "below_floor_needed": needed,
                            "below_floor_on_arrival": arrival.below,
                            "shortest_ms_player_clock": player.shortest,
                            "shortest_ms_on_arrival": arrival.shortest,
                        },
                    )
                )
        if self.min_rhythm_cv > 0 and player.count >= RHYTHM_MIN_POINTS:
            figure = player.rhythm()
            if figure is not None and figure < self.min_rhythm_cv:
                mean = player.mean_gap()
                found.append(
                    Finding(
                        ROBOTIC_RHYTHM,
                        {
                            "rhythm_figure": round(figure, 4),
                            "rhythm_on_arrival": _rounded(arrival.rhythm()),
                            "min_rhythm_cv": self.min_rhythm_cv,
                            "points": player.count,
                            "mean_interval_ms": None if mean is None else round(mean, 1),
                        },
                    )
                )
        return found


class RateTracker:
    """The most points accepted within any `window_ms`, in O(1) per point (amortized), on
    both clocks: the rule trips when both windows hold more than the ceiling allows.

    The player's clock cannot be raised by a network stall that bunches arrivals; arrivals
    cannot be raised by a player's clock stepped back (which crowds its stamps). A bot can
    lie only in its stamps, and only by `latency_ms` either side of when each point arrived
    (the clock rule refuses more), so over a game of G ms it passes for at most
    (G + 2 * latency) / G of its real rate, and over one window for no more than it gives
    back in the next. Stamps are taken as a running maximum: one earlier than the one before
    counts at the later time (stamps sent backwards cannot empty the window).
    """

    __slots__ = ("arrivals", "ceiling", "max_rate", "most", "most_at", "stamps", "window_ms")

    def __init__(self, max_rate: float, window_ms: int) -> None:
        self.max_rate = max_rate
        self.window_ms = window_ms
        # More than this many points within one window trips the rule.
        self.ceiling = math.floor(max_rate * window_ms / 1000) if max_rate > 0 else 0
        self.stamps: deque[int] = deque()
        self.arrivals: deque[int] = deque()
        self.most = 0  # the most points in one window, on the clock that shows fewer
        self.most_at: int | None = None

    def add(self, arrival: int, client_ts: int) -> bool:
        """Count an accepted point; True when the windows that end at it both hold more than
        the ceiling allows (every time, while they do)."""
        stamps, arrivals, width = self.stamps, self.arrivals, self.window_ms
        if stamps and client_ts < stamps[-1]:
            client_ts = stamps[-1]
        stamps.append(client_ts)
        start = client_ts - width
        while stamps[0] <= start:
            stamps.popleft()
        arrivals.append(arrival)
        start = arrival - width
        while arrivals[0] <= start:
            arrivals.popleft()
        count = min(len(stamps), len(arrivals))
        if count > self.most:
            self.most, self.most_at = count, arrival
        return self.ceiling > 0 and count > self.ceiling

    def evidence(self) -> dict[str, object]:
        return {
            "points_in_window": self.most,
            "window_ms": self.window_ms,
            "rate_per_s": round(self.most * 1000 / self.window_ms, 2),
            "human_max_rate": self.max_rate,
            "window_ends_at": self.most_at,
        }


def rate_window_ms(duration_ms: int) -> int:
    """The window the sustained rate is judged over: RATE_WINDOW_MS, or a shorter game."""
    return max(1, min(RATE_WINDOW_MS, duration_ms))


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
    judged = max(0, tracker.player.count - 1)
    return {
        "points": tracker.points,
        "human_floor_ms": human_floor_ms,
        "min_rhythm_cv": min_rhythm_cv,
        "rhythm_figure": _rounded(tracker.player.rhythm()),
        "rhythm_on_arrival": _rounded(tracker.arrival.rhythm()),
        "rhythm_judged": tracker.points >= RHYTHM_MIN_POINTS,
        "below_floor_player_clock": tracker.player.unexplained,
        "below_floor_bunched": tracker.player.below - tracker.player.unexplained,
        "below_floor_needed": floor_threshold(judged) if judged >= FLOOR_MIN_INTERVALS else None,
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
