"""The session rules: everything that decides whether a point counts lives in this file.

Sans-I/O, in the manner of h11 and wsproto: a `GameSession` is fed events with the current
server time (epoch milliseconds) as an argument and answers with a tuple of actions for the
shell to carry out. It never reads a clock, sleeps, or touches a socket or the database, so it
is tested by pushing events in, with no event loop.

States and transitions, as a table::

    state     event                                  actions                         next
    -------   ------------------------------------   -----------------------------   -------
    RUNNING   point, inside window, clock ok,        PointAccepted(seq, server_ts)   RUNNING
              burst deque below threshold
    RUNNING   point, clock off by > latency_ms       PointRejected(clock)            RUNNING
    RUNNING   point at/after the end by server time  PointRejected(game_over)        RUNNING
    RUNNING   point over burst_threshold             PointRejected(burst),           RUNNING
                                                     BurstRecorded(at)
    RUNNING   ... and bursts in period > limit       + AccountFlagged(burst_limit),  VOIDED
                                                     GameEnded(burst_limit)
    RUNNING   accepted point above the sustained     + AccountFlagged(               RUNNING
              rate ceiling (first time)                superhuman_rate)
    RUNNING   every 16th point received, and at      + AccountFlagged(inhuman_timing RUNNING
              any end: a timing rule newly tripped     | robotic_rhythm), once each
    RUNNING   expire(now >= ends_at)                 GameEnded(time_up)              ENDED
    RUNNING   shutdown                               GameEnded(server_shutdown)      VOIDED
    ENDED     point                                  PointRejected(game_over)        ENDED
    ENDED     expire / shutdown                      (nothing)                       ENDED

A burst needs a crowded window on both clocks: by arrival (the last `burst_window_ms` of
server time, as the contract says) and by when the points were scored, that is their
`client_ts` moved by the offset (never more than `latency_ms` from their arrival: the clock
rule refuses that). Points a network stall delivered together
keep the spacing the player gave them, so they make no burst; a player's clock stepped back
crowds only its own stamps; a bot that sends in clumps shows them on both (and one that lies
in its stamps can borrow at most `latency_ms` of them). A page busy with a long task stamps
the taps that queued behind it together, and sends them together: on the player's clock such
a bunch counts spread across the pause before it, where its taps were made, when that pause
could have held them a human floor apart (`timing.Bunch`); spread, a bunch keeps its average,
so clumps faster than the threshold still fill a window.

The submission check (`check_submission`) is a pure function over a `SessionRecord`, the
frozen facts the server kept about a session: the same code serves the socket and HTTP.

Why one module of this size: its docstring's table is the contract of a session, and the
submission check reads the same state; timing and review live in their own modules.
"""

from __future__ import annotations

import bisect
import enum
import hmac
import math
import operator
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from scoreserver.core.lifecycle import Move, SessionState, after
from scoreserver.core.timing import (
    ASSESS_EVERY,
    SUPERHUMAN_RATE,
    Bunch,
    RateTracker,
    TimingTracker,
    rate_window_ms,
)

# The largest count a setting may hold: exact in JSON and in a browser's numbers.
SCORE_MOST = 2**53
# The longest game (a day): a duration past it is a typo (`--duration 99999999`), not a game.
DURATION_MOST_MS = 24 * 3_600_000

# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GameSettings:
    """A game's rules, fixed for a session when it starts."""

    duration_ms: int
    burst_window_ms: int = 1000
    burst_threshold: int = 12
    burst_limit: int = 3
    burst_period_ms: int = 10_000
    latency_ms: int = 1000
    submission_window_ms: int = 300_000
    # Timing analysis (timing.py): points closer than this are not a person's (0: off) ...
    human_floor_ms: int = 60
    # ... and intervals more regular than this coefficient of variation are not either (0: off).
    min_rhythm_cv: float = 0.05
    # A result above this is refused as `implausible_score` (None: no bound).
    max_score: int | None = None
    # A saved score above the range the game's trusted players have shown is held off boards
    # until a reviewer clears it (False: flagged for review, still shown).
    hold_outliers: bool = True
    # A display name for pages (None: the game id).
    title: str | None = None
    # Points a second that no person sustains in this game (0: off): more within any
    # timing.RATE_WINDOW_MS of the player's clock flags the session `superhuman_rate`.
    human_max_rate: float = 10.0
    # The top of the review range while the game has too few trusted players (None: half of
    # what the rate ceiling allows in a game; no range at all if the ceiling is off).
    review_above: int | None = None
    # How many trusted players' results the range needs before it comes from them ...
    review_min_players: int = 10
    # ... and how old (hours) an account must be for its results to count, unless a reviewer
    # cleared them.
    review_account_age_h: float = 24.0
    # When the game was archived (epoch ms): no new sessions, its board kept. None: playable.
    archived_at: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.duration_ms <= DURATION_MOST_MS:
            raise ValueError(
                f"duration is more than 0 and at most {DURATION_MOST_MS // 3_600_000} hours"
            )
        for name in ("burst_window_ms", "burst_threshold", "burst_period_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("burst_limit", "latency_ms", "submission_window_ms", "human_floor_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0 <= self.min_rhythm_cv < 10:
            raise ValueError("min_rhythm_cv is a coefficient of variation, 0 (off) to 10")
        if self.max_score is not None and not 0 <= self.max_score <= SCORE_MOST:
            raise ValueError(f"max_score is 0 to {SCORE_MOST}")
        if self.title is not None and not 1 <= len(self.title) <= 80:
            raise ValueError("a title is 1 to 80 characters")
        if not 0 <= self.human_max_rate <= 1000:
            raise ValueError("human_max_rate is points a second, 0 (off) to 1000")
        if self.review_above is not None and not 0 <= self.review_above <= SCORE_MOST:
            raise ValueError(f"review_above is a score, 0 to {SCORE_MOST}")
        if not 1 <= self.review_min_players <= SCORE_MOST:
            raise ValueError(f"review_min_players is 1 to {SCORE_MOST}")
        if not 0 <= self.review_account_age_h <= 24 * 3650:
            raise ValueError("review_account_age_h is hours, 0 to ten years")

    def settings_review_above(self) -> int | None:
        """The top of the review range while too few trusted players have shown theirs."""
        if self.review_above is not None:
            return self.review_above
        if self.human_max_rate <= 0:
            return None
        return math.floor(self.human_max_rate * self.duration_ms / 1000 / 2)


# --- actions the rules ask the shell to carry out -------------------------------------------


class EndReason(enum.StrEnum):
    TIME_UP = "time_up"
    BURST_LIMIT = "burst_limit"
    SERVER_SHUTDOWN = "server_shutdown"


class RejectReason(enum.StrEnum):
    NO_SESSION = "no_session"
    GAME_OVER = "game_over"
    BURST = "burst"
    CLOCK = "clock"


@dataclass(frozen=True, slots=True)
class PointAccepted:
    """The point counts: the shell signs a point token for `seq` issued at `server_ts`."""

    seq: int
    server_ts: int
    client_ts: int


@dataclass(frozen=True, slots=True)
class PointRejected:
    """The point counts for nothing."""

    reason: RejectReason
    server_ts: int
    client_ts: int


@dataclass(frozen=True, slots=True)
class BurstRecorded:
    """A point was refused for exceeding the burst threshold: one burst, at `at_ms`."""

    at_ms: int


@dataclass(frozen=True, slots=True)
class GameEnded:
    """The session is over; the shell persists it, then tells the player."""

    reason: EndReason
    at_ms: int


@dataclass(frozen=True, slots=True)
class AccountFlagged:
    """The account behind the session goes to review."""

    reason: str
    detail: Mapping[str, object]


Action = PointAccepted | PointRejected | BurstRecorded | GameEnded | AccountFlagged


# --- the session state machine --------------------------------------------------------------


@dataclass(slots=True)
class GameSession:
    """One game's rules state. Times are server epoch milliseconds.

    `offset_ms` relates the player's clock to the server's, fixed at `game_start`:
    a point sent at `client_ts` is expected at server time `client_ts + offset_ms`.
    """

    settings: GameSettings
    started_at: int
    client_start_ts: int
    state: SessionState = SessionState.RUNNING
    end_reason: EndReason | None = None
    ended_at: int | None = None
    seq: int = 0
    # Arrival times of accepted points still inside the burst window ...
    _arrivals: deque[int] = field(default_factory=deque)
    # ... and when those that may still share a window with a new one were scored (server
    # time, see the module docstring), in order.
    _window: list[int] = field(default_factory=list)
    # ... where a busy page's bunch among them counts.
    bunch: Bunch | None = None
    # Server times of bursts still inside the burst period.
    _bursts: deque[int] = field(default_factory=deque)
    burst_times: list[int] = field(default_factory=list)
    # Timing analysis of every point received while running, accepted or not.
    timing: TimingTracker | None = None
    # The sustained rate of accepted points on the player's clock.
    rate: RateTracker | None = None
    flagged: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        settings = self.settings
        if self.timing is None:
            self.timing = TimingTracker(settings.human_floor_ms, settings.min_rhythm_cv)
        if self.rate is None:
            self.rate = RateTracker(settings.human_max_rate, rate_window_ms(settings.duration_ms))
        if self.bunch is None:
            self.bunch = Bunch(settings.human_floor_ms)

    @property
    def offset_ms(self) -> int:
        return self.started_at - self.client_start_ts

    @property
    def ends_at(self) -> int:
        return self.started_at + self.settings.duration_ms

    def remaining_ms(self, now: int) -> int:
        return max(0, self.ends_at - now)

    def receive_point(self, client_ts: int, now: int) -> tuple[Action, ...]:
        """A point arrived at server time `now`, stamped `client_ts` by the player."""
        if self.state is not SessionState.RUNNING or now >= self.ends_at or now < self.started_at:
            return (PointRejected(RejectReason.GAME_OVER, now, client_ts),)
        timing = self.timing
        assert timing is not None
        timing.add(now, client_ts)
        if timing.points % ASSESS_EVERY == 0:
            # While the game runs, so that the evidence is there even if it is never submitted.
            flags = self._timing_flags()
            if flags:
                return (*self._judge_point(client_ts, now), *flags)
        return self._judge_point(client_ts, now)

    def _timing_flags(self) -> tuple[Action, ...]:
        """A flag for each timing rule newly tripped (each reason once per session)."""
        assert self.timing is not None
        flags = []
        for finding in self.timing.findings():
            if finding.reason not in self.flagged:
                self.flagged.add(finding.reason)
                flags.append(AccountFlagged(finding.reason, finding.evidence))
        return tuple(flags)

    def _judge_point(self, client_ts: int, now: int) -> tuple[Action, ...]:
        settings = self.settings
        offset = self.started_at - self.client_start_ts
        if not on_time(client_ts, offset, now, settings.latency_ms):
            return (PointRejected(RejectReason.CLOCK, now, client_ts),)
        width = settings.burst_window_ms
        arrivals = self._arrivals
        window_start = now - width
        while arrivals and arrivals[0] <= window_start:
            arrivals.popleft()
        # When it was scored, by the player's clock in the server's time (within latency_ms
        # of its arrival: the clock rule above).
        scored = client_ts + offset
        window = self._window
        # Later points are scored no earlier than now - latency_ms: windows that hold them
        # cannot reach back past this.
        reach = window_start - settings.latency_ms
        while window and window[0] <= reach:
            del window[0]
        # A busy page's bunch counts spread across the pause before it (timing.Bunch).
        bunch = self.bunch
        assert bunch is not None
        placed = bunch.placing(scored)
        trial = window
        if placed is not None:
            now_at = bunch.current()
            tail = len(now_at)
            if (
                0 < tail <= len(window)
                and window[-tail:] == now_at
                and (tail == len(window) or window[-tail - 1] <= placed[0])
            ):
                if placed != now_at:
                    trial = [*window[:-tail], *placed]
            else:  # its points are not the window's tail (pruned, or stamps out of order)
                placed = None
        threshold = settings.burst_threshold
        if len(arrivals) >= threshold and _crowded(trial, scored, width, threshold):
            return self._burst(now, client_ts)
        arrivals.append(now)
        if trial is not window:
            window[:] = trial
        bunch.accept(scored, placed)
        if not window or scored >= window[-1]:
            window.append(scored)
        else:
            bisect.insort(window, scored)
        self.seq += 1
        rate = self.rate
        assert rate is not None
        if rate.add(now, client_ts) and SUPERHUMAN_RATE not in self.flagged:
            self.flagged.add(SUPERHUMAN_RATE)
            return (
                PointAccepted(self.seq, now, client_ts),
                AccountFlagged(SUPERHUMAN_RATE, rate.evidence()),
            )
        return (PointAccepted(self.seq, now, client_ts),)

    def _burst(self, now: int, client_ts: int) -> tuple[Action, ...]:
        period_start = now - self.settings.burst_period_ms
        while self._bursts and self._bursts[0] <= period_start:
            self._bursts.popleft()
        self._bursts.append(now)
        self.burst_times.append(now)
        actions: list[Action] = [
            PointRejected(RejectReason.BURST, now, client_ts),
            BurstRecorded(now),
        ]
        if len(self._bursts) > self.settings.burst_limit:
            # The flag comes first: it is committed before the `end_game` that reveals it.
            actions.append(
                AccountFlagged(
                    "burst_limit",
                    {
                        "bursts_in_period": len(self._bursts),
                        "burst_limit": self.settings.burst_limit,
                        "burst_period_ms": self.settings.burst_period_ms,
                        "burst_times": list(self._bursts),
                    },
                )
            )
            actions.extend(self._end(EndReason.BURST_LIMIT, now))
        return tuple(actions)

    def expire(self, now: int) -> tuple[Action, ...]:
        """The timer fired. Ends the game if its time is up; otherwise nothing happens."""
        if self.state is not SessionState.RUNNING or now < self.ends_at:
            return ()
        return self._end(EndReason.TIME_UP, now)

    def shutdown(self, now: int) -> tuple[Action, ...]:
        """The server is stopping: the game ends without an end token and can't be submitted."""
        if self.state is not SessionState.RUNNING:
            return ()
        return self._end(EndReason.SERVER_SHUTDOWN, now)

    def submission(self, move: Move) -> None:
        """An ended session through its submission (core/lifecycle.py): `SUBMIT` when one is
        being checked, then `SAVED`, or `REFUSED` (ended again, to be submitted anew)."""
        self.state = after(self.state, move)

    def _end(self, reason: EndReason, now: int) -> tuple[Action, ...]:
        self.state = after(self.state, reason)  # ENDED if time is up, else VOIDED
        self.end_reason = reason
        self.ended_at = now
        # The last assessment comes first: a flag is committed before the end that reveals it.
        return (*self._timing_flags(), GameEnded(reason, now))


def _crowded(window: list[int], scored: int, width: int, threshold: int) -> bool:
    """Whether a point scored at `scored` would make some burst window of `width` ms (the
    interval (t - width, t]) hold more than `threshold` points, `window` being the times of
    the points already accepted, in order. Only windows that contain the new point can
    overflow: those ending at it, or at a later point less than `width` after it."""
    if not window or scored >= window[-1]:
        # The usual case, points in order: the one window that ends at the new point.
        return len(window) - bisect.bisect_right(window, scored - width) >= threshold
    start = bisect.bisect_left(window, scored)
    for end in (scored, *window[start:]):
        if end >= scored + width:
            break
        inside = bisect.bisect_right(window, end) - bisect.bisect_right(window, end - width)
        if inside >= threshold:
            return True
    return False


# --- the submission check -------------------------------------------------------------------


class ResultReason(enum.StrEnum):
    BAD_START_TOKEN = "bad_start_token"
    BAD_END_TOKEN = "bad_end_token"
    BAD_POINT_TOKEN = "bad_point_token"
    DUPLICATE_POINT = "duplicate_point"
    TIMING_MISMATCH = "timing_mismatch"
    UNKNOWN_SESSION = "unknown_session"
    SESSION_VOIDED = "session_voided"
    ALREADY_SUBMITTED = "already_submitted"
    EXPIRED = "expired"
    IMPLAUSIBLE_SCORE = "implausible_score"
    ACCOUNT_BANNED = "account_banned"  # the player was banned before the result was saved

    @property
    def flags_account(self) -> bool:
        # A void game is refused without a flag: the system voided it (a shutdown, a node
        # found gone) or the rules did, and then they flagged the player themselves.
        return self not in (
            ResultReason.ALREADY_SUBMITTED,
            ResultReason.EXPIRED,
            ResultReason.ACCOUNT_BANNED,
            ResultReason.SESSION_VOIDED,
        )


class IssuedPoint(NamedTuple):
    """A point token the server issued, as `IssuedPoints` gives it out."""

    seq: int
    server_ts: int
    token: str


class IssuedPoints(Mapping[int, IssuedPoint]):
    """The point tokens a session issued, by seq.

    Kept as two dicts of plain integers and text, which the cyclic collector does not track:
    an object a point that lives as long as its session (a named tuple each, until
    2026-12-04) was tracked, and every collection scanned all of those made since the last,
    at 50 players some 15,000 a second (pauses of 8-11 ms, each holding every player's
    answer). An `IssuedPoint` is made only when one is read.
    """

    __slots__ = ("server_ts", "tokens")

    def __init__(self, points: Iterable[IssuedPoint] = ()) -> None:
        self.server_ts: dict[int, int] = {}
        self.tokens: dict[int, str] = {}
        for point in points:
            self.add(*point)

    def add(self, seq: int, server_ts: int, token: str) -> None:
        self.server_ts[seq] = server_ts
        self.tokens[seq] = token

    def __getitem__(self, seq: int) -> IssuedPoint:
        return IssuedPoint(seq, self.server_ts[seq], self.tokens[seq])

    def __contains__(self, seq: object) -> bool:
        return seq in self.tokens

    def __iter__(self) -> Iterator[int]:
        return iter(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What the server kept about a session, enough to judge a submission of it."""

    session_id: str
    game_id: str
    user_id: int | None
    settings: GameSettings
    started_at: int
    offset_ms: int
    start_token: str
    end_token: str | None
    ended_at: int | None
    end_reason: EndReason | None
    points: IssuedPoints
    submitted: bool = False
    # How the game ended as the server reports it: the end reason, or `crashed` (its node was
    # found gone: `end_reason` is then server_shutdown, a void).
    ended_by: str | None = None


@dataclass(frozen=True, slots=True)
class SubmittedPoint:
    token: str
    client_ts: int


@dataclass(frozen=True, slots=True)
class SubmissionAccepted:
    score: int


@dataclass(frozen=True, slots=True)
class SubmissionRejected:
    reason: ResultReason
    detail: Mapping[str, object]


SubmissionVerdict = SubmissionAccepted | SubmissionRejected


def same_token(a: str | None, b: str) -> bool:
    """Constant-time equality of two tokens (ASCII text; anything else is not a token)."""
    if a is None:
        return False
    try:
        return hmac.compare_digest(a, b)
    except TypeError:  # non-ASCII text cannot be one of our tokens
        return False


def on_time(client_ts: int, offset_ms: int, server_ts: int, latency_ms: int) -> bool:
    """The clock rule, live and at submission: the player's clock, moved by the offset fixed at
    the start, puts the point within `latency_ms` of the server's time for it."""
    return abs(client_ts + offset_ms - server_ts) <= latency_ms


def _all_issued_in_order(
    issued_points: IssuedPoints,
    points: Sequence[PointLike],
    offset: int,
    latency: int,
) -> bool:
    """Whether `points` are exactly the tokens issued as seq 1..n, in that order, each on time.

    That is what an honest page submits, and it is checked here with one constant-time
    comparison of the joined tokens instead of one per point, and with no Python step per
    point (C-level map, join, min and max: a 600-point result in about 0.1 ms instead of
    1.2 ms point by point). Every token of a session has the same length, and so must every
    submitted one, so equal joined texts mean equal tokens, one by one.
    """
    count = len(points)
    if not count or count > len(issued_points):
        return False
    seqs = range(1, count + 1)
    try:
        issued_tokens = list(map(issued_points.tokens.__getitem__, seqs))
    except KeyError:
        return False
    tokens = list(map(_TOKEN, points))
    width = {len(issued_tokens[0])}
    if set(map(len, tokens)) != width or set(map(len, issued_tokens)) != width:
        return False
    if not same_token("".join(issued_tokens), "".join(tokens)):
        return False
    # The clock rule for every point at once: |client_ts + offset - server_ts| <= latency
    # for all of them is min and max of (client_ts - server_ts) inside [-latency - offset,
    # latency - offset]. Integers, so exact.
    gaps: list[int] = list(
        map(operator.sub, map(_CLIENT_TS, points), map(issued_points.server_ts.__getitem__, seqs))
    )
    return min(gaps) + offset >= -latency and max(gaps) + offset <= latency


_TOKEN = operator.attrgetter("token")
_CLIENT_TS = operator.attrgetter("client_ts")


class PointLike(Protocol):
    """A submitted point: the wire's PointClaim, or SubmittedPoint in tests."""

    @property
    def token(self) -> str: ...

    @property
    def client_ts(self) -> int: ...


def check_submission(
    record: SessionRecord,
    start_token: str,
    end_token: str,
    points: Sequence[PointLike],
    point_seq: Callable[[str], int | None],
    now: int,
) -> SubmissionVerdict:
    """Judge a submission of `record`'s session.

    `point_seq` reads the sequence number a point token claims (without trusting it: the
    token is then compared in constant time with the one issued under that number).
    """
    if not same_token(record.start_token, start_token):
        return SubmissionRejected(ResultReason.BAD_START_TOKEN, {})
    if record.submitted:
        return SubmissionRejected(ResultReason.ALREADY_SUBMITTED, {})
    if record.end_reason is not None and record.end_reason != EndReason.TIME_UP:
        # burst_limit, server_shutdown, or crashed (its node found gone): void.
        return SubmissionRejected(
            ResultReason.SESSION_VOIDED, {"end_reason": str(record.end_reason)}
        )
    if record.end_token is None or record.ended_at is None:
        return SubmissionRejected(ResultReason.BAD_END_TOKEN, {"detail": "session not ended"})
    if now > record.ended_at + record.settings.submission_window_ms:
        return SubmissionRejected(ResultReason.EXPIRED, {"ended_at": record.ended_at})
    if not same_token(record.end_token, end_token):
        return SubmissionRejected(ResultReason.BAD_END_TOKEN, {})
    issued_points = record.points
    latency = record.settings.latency_ms
    offset = record.offset_ms
    max_score = record.settings.max_score
    if max_score is not None and len(points) > max_score:
        # Judged before the tokens: a result above the game's bound is refused whatever it holds.
        return SubmissionRejected(
            ResultReason.IMPLAUSIBLE_SCORE, {"score": len(points), "max_score": max_score}
        )
    if _all_issued_in_order(issued_points, points, offset, latency):
        return SubmissionAccepted(len(points))
    # Anything else (a subset, another order, a bad token, a late point) point by point, which
    # also finds the first offending point for the flag. Locals only, no allocation per point.
    seen: set[int] = set()
    for index, point in enumerate(points):
        token = point.token
        seq = point_seq(token)
        issued = issued_points.get(seq) if seq is not None else None
        if issued is None or not same_token(issued.token, token):
            return SubmissionRejected(ResultReason.BAD_POINT_TOKEN, {"index": index})
        seq = issued.seq  # equal to the claimed seq, now known to be an issued one
        if seq in seen:
            return SubmissionRejected(ResultReason.DUPLICATE_POINT, {"index": index, "seq": seq})
        seen.add(seq)
        if not on_time(point.client_ts, offset, issued.server_ts, latency):
            expected = point.client_ts + offset
            return SubmissionRejected(
                ResultReason.TIMING_MISMATCH,
                {
                    "index": index,
                    "seq": seq,
                    "client_ts": point.client_ts,
                    "issued_server_ts": issued.server_ts,
                    "expected_server_ts": expected,
                    "latency_ms": latency,
                },
            )
    return SubmissionAccepted(len(points))
