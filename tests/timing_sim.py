"""Simulated sessions for the anti-cheat rules: people as an outsider measured them, and bots
built to evade the rules.

Seeded and synchronous: each generator takes a `random.Random` and returns a `Session`, what
the server would see of one game: when `game_start` arrived, the player's stamp on it, and for
every point when it arrived and the `client_ts` on it. `judge` feeds it to the server's own
`GameSession`, point by point (assessed every 16 points and at the end, as in play).
`tests/unit/test_timing.py` asserts on these; `bench/anticheat.py` writes the table of
docs/anti-cheat.md from them.

Where the numbers come from (not from what the rules expect):

- **People** (the outside probe of issue 23, and studies of tapping): casual players at
  350-800 ms a point with a variation (CV) of 0.3-0.7; regular players at 200-380 ms, CV
  0.2-0.5; experts who score 7-9 points a second in streaks of 8-60 points with a CV of
  0.09-0.10 inside a streak, pausing 150-1,200 ms between streaks to find the next target.
  Everyone's tempo drifts x0.85 to x1.25 over a game, and some make accidental double hits
  (up to 0.8 % of points, a second point 25-59 ms after the first). The first point comes
  300-1,500 ms after the game starts.
- **Networks** (the probe's poor networks; a WebSocket is one TCP stream, so a late frame
  holds back every frame behind it and a stall delivers what queued behind it together):
  good (10-80 ms, jitter with a mean of 8 ms, a 200-600 ms stall at 0.5 % of points); poor
  (every point delayed 50-300 ms, stalls of 0.5-2 s about once every 8 s); mobile (40-200 ms,
  a 0.3-1.5 s stall every 15 s or so); and a good network with one 2 s stall starting 2-5 s
  into the game.
- **Pages** (the player's own device, between the tap and the stamp): `scoreclient.js`
  stamps a point when the page's handler runs, and a page busy with a long task (a garbage
  collection, a heavy frame) runs the handlers of the taps that queued behind it one after
  another when it ends: their stamps come out a millisecond or two apart. On phones this is
  common: about a third of mobile sites fail Chrome's 200 ms responsiveness bar (HTTP
  Archive, 2023: 64.9 % good on mobile, 96.8 % on desktop; SpeedCurve's field data puts the
  75th percentile of mobile interactions at 248 ms), and the median mobile page runs 19 long
  tasks (Web Almanac). Modelled: 65 % quick pages; 30 % busy pages, their main thread in long
  tasks of 50-600 ms for 2-10 % of the time; 5 % overloaded pages, 50-700 ms tasks for
  10-20 % of the time. This is the one thing that squeezes the player's own intervals.
- **Clocks**: any offset (hours), drift up to +/-300 ppm, on mobile a 10 % chance of the
  wall clock being stepped by 0.1-2 s mid-game (a page that uses `Date.now()`), and 3 % of
  browsers that round the clock to 100 ms.
- **Bots** (the probe's, and what a cheater who reads the rules would write): fixed rhythms,
  clumps under the burst limit with honest or lying stamps, the window governor (log-normal
  intervals of 84-90 ms, CV 0.16-0.24, each point held back just enough that no 1,000 ms
  window holds 13), Gaussian and uniform jitter at a superhuman mean, a person's trace
  replayed 1.0-1.5x faster, a bot hugging the rate ceiling, one that also stretches its
  stamps across the latency allowance to look slower, and one that mimics a busy page's
  bunches to score under the human floor.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from scoreserver.core.rules import AccountFlagged, GameSession, GameSettings, PointAccepted

GAME_MS = 30_000
BURST_WINDOW_MS = 1000
BURST_THRESHOLD = 12
LATENCY_MS = 1000


@dataclass(frozen=True, slots=True)
class Session:
    """What the server sees of one game (server times in ms from an arbitrary origin)."""

    kind: str
    start_arrival: int  # game_start reached the server: the game runs from here
    client_start: int  # the player's stamp on game_start
    arrivals: list[int]
    client_times: list[int]
    network: str = ""
    page: str = ""


@dataclass(slots=True)
class Verdict:
    reasons: list[str] = field(default_factory=list)
    score: int = 0  # accepted points: what an honest page submits

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)


# --- networks -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    base_ms: tuple[float, float]  # a per-player base delay, drawn once
    jitter_ms: float  # exponential jitter's mean, per point (0: none)
    uniform_ms: tuple[float, float] | None  # or a uniform per-point delay
    stall_every_ms: float  # mean time between stalls (0: none)
    stall_ms: tuple[float, float]
    point_stall_chance: float = 0.0  # or a stall started by a point, at this chance
    one_stall_at_ms: tuple[float, float] | None = None  # one stall, starting in this range


GOOD = Network("good", (10, 80), 8, None, 0, (200, 600), point_stall_chance=0.005)
POOR = Network("poor", (0, 0), 0, (50, 300), 8_000, (500, 2_000))
MOBILE = Network("mobile", (0, 0), 0, (40, 200), 15_000, (300, 1_500))
ONE_STALL = Network(
    "one 2 s stall", (10, 80), 8, None, 0, (2_000, 2_000), one_stall_at_ms=(2_000, 5_000)
)


class Link:
    """One player's TCP stream: delays, stalls, order kept."""

    def __init__(self, rng: random.Random, network: Network, game_start_at: float) -> None:
        self.rng = rng
        self.network = network
        self.base = rng.uniform(*network.base_ms)
        self.last = -math.inf
        self.stalls: list[tuple[float, float]] = []
        if network.stall_every_ms:
            time = game_start_at + rng.expovariate(1 / network.stall_every_ms)
            while time < game_start_at + GAME_MS + 5_000:
                length = rng.uniform(*network.stall_ms)
                self.stalls.append((time, time + length))
                time += length + rng.expovariate(1 / network.stall_every_ms)
        if network.one_stall_at_ms:
            at = game_start_at + rng.uniform(*network.one_stall_at_ms)
            self.stalls.append((at, at + rng.uniform(*network.stall_ms)))

    def delay(self) -> float:
        network, rng = self.network, self.rng
        if network.uniform_ms:
            return rng.uniform(*network.uniform_ms)
        return self.base + (rng.expovariate(1 / network.jitter_ms) if network.jitter_ms else 0)

    def send(self, at: float) -> int:
        arrive = at + self.delay()
        if self.network.point_stall_chance and self.rng.random() < self.network.point_stall_chance:
            length = self.rng.uniform(*self.network.stall_ms)
            self.stalls.append((at, at + length))
        for begin, end in self.stalls:
            if begin <= arrive < end:
                arrive = end + self.rng.uniform(0, 2)  # delivered together, in one read
        arrive = max(arrive, self.last)  # one stream: nothing overtakes
        self.last = arrive
        return int(arrive)


# --- pages ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    name: str
    blocked: tuple[float, float]  # the share of the time its main thread is in long tasks
    task_ms: tuple[float, float]  # a long task's length (log-uniform)


QUICK = Page("quick page", (0, 0), (0, 0))
BUSY = Page("busy page", (0.02, 0.10), (50, 600))
OVERLOADED = Page("overloaded page", (0.10, 0.20), (50, 700))
PAGES = ((QUICK, 0.65), (BUSY, 0.30), (OVERLOADED, 0.05))


def dispatched(rng: random.Random, page: Page, taps: list[float]) -> list[float]:
    """When the page's handler runs for each tap: a tap during a long task waits for its end,
    and the handlers of the taps that queued run one after another (0.5-3 ms each)."""
    if not page.blocked[1] or not taps:
        return taps
    low, high = page.task_ms
    mean_task = (high - low) / math.log(high / low)
    busy = rng.uniform(*page.blocked)
    tasks: list[tuple[float, float]] = []
    time = taps[0] - 2_000
    while time < taps[-1]:
        time += rng.expovariate(busy / ((1 - busy) * mean_task))
        length = math.exp(rng.uniform(math.log(low), math.log(high)))
        tasks.append((time, time + length))
        time += length
    out: list[float] = []
    task = 0
    for tap in taps:
        while task < len(tasks) and tasks[task][1] <= tap:
            task += 1
        at = tap
        if task < len(tasks) and tasks[task][0] <= tap:
            at = tasks[task][1]
        if out and at < out[-1] + 0.5:
            at = out[-1] + rng.uniform(0.5, 3)
        out.append(at)
    return out


# --- clocks ---------------------------------------------------------------------------------


class Clock:
    """A player's clock: offset, drift, maybe a step, maybe coarse."""

    def __init__(self, rng: random.Random, mobile: bool) -> None:
        self.offset = rng.uniform(-3_600_000, 3_600_000)
        self.drift = rng.uniform(-300e-6, 300e-6)
        self.step_at: float | None = None
        self.step = 0.0
        if mobile and rng.random() < 0.10:
            self.step_at = rng.uniform(0, GAME_MS)
            self.step = rng.choice((-1, 1)) * rng.uniform(100, 2_000)
        self.resolution = 100 if rng.random() < 0.03 else 1

    def read(self, at: float) -> int:
        value = at + self.offset + self.drift * at
        if self.step_at is not None and at >= self.step_at:
            value += self.step
        return int(value // self.resolution * self.resolution)


def _play(
    rng: random.Random,
    kind: str,
    network: Network,
    clock: Clock | None,
    plan: Callable[[float, float], list[float]],
    stamp: Callable[[float, int, int], int] | None = None,
    page: Page = QUICK,
) -> Session:
    """One game: game_start sent at time 0, the page playing `plan(first, end)` (when the
    player acts), each point sent and stamped when the page's handler runs (`dispatched`),
    stamped by `clock` (or by `stamp(send, game_start_arrival, client_start)` for a liar)."""
    link = Link(rng, network, 0.0)
    clock = clock or Clock(rng, mobile=False)
    client_start = clock.read(0.0)
    start_arrival = link.send(0.0)
    started_seen = start_arrival + link.delay()  # game_started reaches the page
    sent = dispatched(rng, page, plan(started_seen, started_seen + GAME_MS))
    arrivals = [link.send(at) for at in sent]
    if stamp is None:
        stamps = [clock.read(at) for at in sent]
    else:
        stamps = [stamp(at, start_arrival, client_start) for at in sent]
    return Session(kind, start_arrival, client_start, arrivals, stamps, network.name, page.name)


# --- people ---------------------------------------------------------------------------------


def _lognormal(rng: random.Random, mean: float, cv: float) -> float:
    sigma = math.sqrt(math.log(1 + cv * cv))
    return rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)


def _person_plan(rng: random.Random, skill: str) -> Callable[[float, float], list[float]]:
    drift = rng.uniform(0.85, 1.25)
    double_hits = rng.uniform(0, 0.008)
    if skill == "expert":
        tempo, cv = rng.uniform(1000 / 9, 1000 / 7), rng.uniform(0.09, 0.10)
    elif skill == "regular":
        tempo, cv = rng.uniform(200, 380), rng.uniform(0.2, 0.5)
    else:
        tempo, cv = rng.uniform(350, 800), rng.uniform(0.3, 0.7)

    def plan(first: float, end: float) -> list[float]:
        sent: list[float] = []
        time = first + rng.uniform(300, 1_500)
        streak = rng.randint(8, 60)
        while time < end:
            sent.append(time)
            if rng.random() < double_hits:
                sent.append(time + rng.uniform(25, 59))
                time = sent[-1]
            factor = 1 + (drift - 1) * (time - first) / GAME_MS
            gap = _lognormal(rng, tempo * factor, cv)
            while gap < 80:
                gap = _lognormal(rng, tempo * factor, cv)
            if skill == "expert":
                streak -= 1
                if streak <= 0:  # find the next target
                    gap += rng.uniform(150, 1_200)
                    streak = rng.randint(8, 60)
            time += gap
        return sent

    return plan


SKILLS = (("casual", 0.40), ("regular", 0.35), ("expert", 0.25))
NETWORKS = ((GOOD, 0.50), (POOR, 0.25), (MOBILE, 0.15), (ONE_STALL, 0.10))


def _pick(rng: random.Random, choices: tuple[tuple[object, float], ...]) -> object:
    roll, total = rng.random(), 0.0
    for choice, share in choices:
        total += share
        if roll < total:
            return choice
    return choices[-1][0]


def person(
    rng: random.Random,
    skill: str | None = None,
    network: Network | None = None,
    page: Page | None = None,
) -> Session:
    """A person: skill, network and page drawn as in SKILLS, NETWORKS and PAGES unless given."""
    skill = skill or str(_pick(rng, SKILLS))
    chosen = network or _pick(rng, NETWORKS)
    assert isinstance(chosen, Network)
    on = page or _pick(rng, PAGES)
    assert isinstance(on, Page)
    clock = Clock(rng, mobile=chosen is MOBILE)
    return _play(rng, skill, chosen, clock, _person_plan(rng, skill), page=on)


# --- bots -----------------------------------------------------------------------------------


def _governed(
    gaps: Callable[[], float], margin_ms: float = 2.0
) -> Callable[[float, float], list[float]]:
    """Sends after each gap, held back just enough that no burst window holds more than the
    threshold (by send time, with a small margin for the network)."""

    def plan(first: float, end: float) -> list[float]:
        sent: list[float] = []
        time = first + 50
        while time < end:
            if len(sent) >= BURST_THRESHOLD:
                time = max(time, sent[-BURST_THRESHOLD] + BURST_WINDOW_MS + margin_ms)
            sent.append(time)
            time += gaps()
        return sent

    return plan


def _free(gaps: Callable[[], float]) -> Callable[[float, float], list[float]]:
    def plan(first: float, end: float) -> list[float]:
        sent: list[float] = []
        time = first + 50
        while time < end:
            sent.append(time)
            time += gaps()
        return sent

    return plan


def fixed_rhythm(rng: random.Random) -> Session:
    """A point every P ms (84 to 300), exactly."""
    period = rng.uniform(84, 300)
    return _play(rng, "fixed rhythm", GOOD, None, _free(lambda: period))


def jittered_rhythm(rng: random.Random) -> Session:
    """A fixed rhythm seen through 0-30 ms of network jitter (stamps exact)."""
    period = rng.uniform(84, 300)
    network = Network("jitter", (20, 20), 0, (20, 50), 0, (0, 0))
    return _play(rng, "fixed rhythm through jitter", network, None, _free(lambda: period))


def noisy_rhythm(rng: random.Random) -> Session:
    """A rhythm whose every interval is off by up to +/-5 %, uniformly."""
    period = rng.uniform(84, 300)
    return _play(
        rng, "rhythm +/-5 %", GOOD, None, _free(lambda: period * (1 + rng.uniform(-0.05, 0.05)))
    )


def _clump_plan(rng: random.Random) -> Callable[[float, float], list[float]]:
    def plan(first: float, end: float) -> list[float]:
        sent: list[float] = []
        time = first + 50
        while time < end:
            spread = rng.uniform(1, 4)
            sent.extend(time + spread * n / (BURST_THRESHOLD - 1) for n in range(BURST_THRESHOLD))
            time += spread + 1_001
        return [t for t in sent if t < end]

    return plan


def clumps(rng: random.Random) -> Session:
    """12 points within a few ms, a pause of 1,001 ms, again; honest stamps."""
    return _play(rng, "clumps of 12", GOOD, None, _clump_plan(rng))


def clumps_lying(rng: random.Random) -> Session:
    """The same clumps, each point stamped as if sent 1001/12 ms after the one before (a
    bot that read the rules and fakes a steady hand)."""
    clock = Clock(rng, mobile=False)
    stamps: list[int] = []

    def stamp(at: float, start_arrival: int, client_start: int) -> int:
        value = clock.read(at) if not stamps else stamps[-1] + round(1_001 / BURST_THRESHOLD)
        value = max(value, clock.read(at) - LATENCY_MS + 100)  # stay inside the allowance
        value = min(value, clock.read(at))
        stamps.append(value)
        return value

    return _play(rng, "clumps of 12, lying stamps", GOOD, clock, _clump_plan(rng), stamp)


def threshold_hugger(rng: random.Random) -> Session:
    """Each point the moment the sliding burst window allows it."""

    def plan(first: float, end: float) -> list[float]:
        sent = sorted(first + rng.uniform(0, BURST_WINDOW_MS) for _ in range(BURST_THRESHOLD))
        while sent[-1] < end:
            sent.append(sent[-BURST_THRESHOLD] + BURST_WINDOW_MS + 1 + rng.uniform(0, 3))
        return sent[:-1]

    return _play(rng, "burst-window hugger", GOOD, None, plan)


def window_governor(rng: random.Random) -> Session:
    """Log-normal intervals, mean 84-90 ms, CV 0.16-0.24, governed under the burst limit."""
    mean, cv = rng.uniform(84, 90), rng.uniform(0.16, 0.24)
    return _play(rng, "window governor", GOOD, None, _governed(lambda: _lognormal(rng, mean, cv)))


def gaussian_jitter(rng: random.Random) -> Session:
    """Gaussian intervals at a superhuman mean (84-95 ms, sd 8-25 ms), governed."""
    mean, sd = rng.uniform(84, 95), rng.uniform(8, 25)
    return _play(
        rng, "Gaussian jitter", GOOD, None, _governed(lambda: max(40.0, rng.gauss(mean, sd)))
    )


def uniform_jitter(rng: random.Random) -> Session:
    """Uniform intervals around a superhuman mean (84-95 +/- 10-40 ms), governed."""
    mean, width = rng.uniform(84, 95), rng.uniform(10, 40)
    return _play(
        rng,
        "uniform jitter",
        GOOD,
        None,
        _governed(lambda: rng.uniform(mean - width, mean + width)),
    )


def replay(rng: random.Random) -> Session:
    """An expert's trace (their own intervals) replayed 1.0 to 1.5 times faster."""
    speed = rng.uniform(1.0, 1.5)
    trace = _person_plan(rng, "expert")(0.0, GAME_MS * 1.6)

    def plan(first: float, end: float) -> list[float]:
        times = [first + t / speed for t in trace]
        return [t for t in times if t < end]

    return _play(rng, "expert's trace replayed faster", GOOD, None, plan)


def ceiling_hugger(rng: random.Random) -> Session:
    """Human-like intervals (log-normal, CV 0.25-0.35) at 9.6-9.9 points a second: just
    under the rate ceiling, all game long, governed under the burst limit."""
    rate, cv = rng.uniform(9.6, 9.9), rng.uniform(0.25, 0.35)
    return _play(
        rng, "rate-ceiling hugger", GOOD, None, _governed(lambda: _lognormal(rng, 1000 / rate, cv))
    )


def stamp_stretcher(rng: random.Random) -> Session:
    """10.3-10.6 points a second, its stamps stretched across the latency allowance (from
    0.9 s early at the start to 0.9 s late at the end) to pass for under 10 a second."""
    rate = rng.uniform(10.3, 10.6)
    clock = Clock(rng, mobile=False)
    spread = 0.9 * LATENCY_MS
    stretch = 1 + 2 * spread / GAME_MS

    def stamp(at: float, start_arrival: int, client_start: int) -> int:
        # Its own clock relates to the server's through client_start; the stamp claims the
        # point was sent (at - start) * stretch after the start, less `spread`.
        since = at - start_arrival
        return int(client_start + since * stretch - spread)

    return _play(
        rng,
        "stamp stretcher",
        GOOD,
        clock,
        _governed(lambda: _lognormal(rng, 1000 / rate, 0.25)),
        stamp,
    )


def bunch_mimic(rng: random.Random) -> Session:
    """A bot that read how a busy page is forgiven: bunches of 2-9 points a millisecond
    apart, each after a pause that would have held them a human floor apart, at 9-9.9 points
    a second, governed under the burst limit."""
    rate = rng.uniform(9.0, 9.9)

    def plan(first: float, end: float) -> list[float]:
        sent: list[float] = []
        time = first + 50
        while time < end:
            size = rng.randint(2, 9)
            time += max(size * 1000 / rate, (size + 1) * 60 + 5)  # the pause that explains it
            for n in range(size):
                at = time + n
                if len(sent) >= BURST_THRESHOLD:
                    at = max(at, sent[-BURST_THRESHOLD] + BURST_WINDOW_MS + 2)
                sent.append(at)
            time = sent[-1]
        return [t for t in sent if t < end]

    return _play(rng, "busy-page mimic", GOOD, None, plan)


BOTS: dict[str, Callable[[random.Random], Session]] = {
    "fixed rhythm": fixed_rhythm,
    "fixed rhythm through 20-50 ms jitter": jittered_rhythm,
    "rhythm with +/-5 % noise": noisy_rhythm,
    "clumps of 12, then 1,001 ms (honest stamps)": clumps,
    "clumps of 12, stamps faked steady": clumps_lying,
    "burst-window hugger": threshold_hugger,
    "window governor (84-90 ms, CV 0.16-0.24)": window_governor,
    "Gaussian jitter at 84-95 ms": gaussian_jitter,
    "uniform jitter at 84-95 ms": uniform_jitter,
    "expert's trace replayed 1.0-1.5x": replay,
    "rate-ceiling hugger (9.6-9.9/s)": ceiling_hugger,
    "stamp stretcher (10.3-10.6/s)": stamp_stretcher,
    "busy-page mimic (bunches of 2-9, 9-9.9/s)": bunch_mimic,
}


def settings_for(**overrides: object) -> GameSettings:
    """The defaults of a new game, for a GAME_MS game."""
    return GameSettings(**{"duration_ms": GAME_MS, **overrides})  # type: ignore[arg-type]


def judge(session: Session, settings: GameSettings | None = None) -> Verdict:
    """The flags the server's own state machine raises for `session`, and its score: the
    points fed to a `GameSession` in the order they arrived (assessed every 16 points and at
    the end, as in play), the game's end at its duration by the server's clock."""
    settings = settings or settings_for()
    game = GameSession(settings, session.start_arrival, session.client_start)
    verdict = Verdict()
    ends = session.start_arrival + settings.duration_ms
    for arrival, client_ts in zip(session.arrivals, session.client_times, strict=True):
        if arrival >= ends:
            break
        for action in game.receive_point(client_ts, arrival):
            if isinstance(action, AccountFlagged):
                verdict.reasons.append(action.reason)
            elif isinstance(action, PointAccepted):
                verdict.score += 1
    for action in game.expire(ends):
        if isinstance(action, AccountFlagged):
            verdict.reasons.append(action.reason)
    if game.end_reason is not None and str(game.end_reason) == "burst_limit":
        verdict.score = 0  # voided: nothing to submit
    return verdict


def clopper_pearson(flagged: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval for a share `flagged / total`, by bisection on
    the binomial tails (no scipy here)."""
    alpha = 1 - confidence

    def tail_at_least(k: int, p: float) -> float:
        return 1.0 - _cdf(k - 1, total, p) if k > 0 else 1.0

    def tail_at_most(k: int, p: float) -> float:
        return _cdf(k, total, p)

    def solve(f: Callable[[float], float], target: float, increasing: bool) -> float:
        low, high = 0.0, 1.0
        for _ in range(60):
            mid = (low + high) / 2
            if (f(mid) < target) == increasing:
                low = mid
            else:
                high = mid
        return (low + high) / 2

    lower = 0.0 if flagged == 0 else solve(lambda p: tail_at_least(flagged, p), alpha / 2, True)
    upper = 1.0 if flagged == total else solve(lambda p: tail_at_most(flagged, p), alpha / 2, False)
    return lower, upper


def _cdf(k: int, n: int, p: float) -> float:
    if k < 0:
        return 0.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    log_term = n * log_q
    for i in range(k + 1):
        total += math.exp(log_term)
        log_term += math.log(n - i) - math.log(i + 1) + log_p - log_q
    return min(1.0, total)
