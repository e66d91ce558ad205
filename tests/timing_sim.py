"""Simulated sessions for the timing rules: honest people and five kinds of bot.

Seeded and synchronous: each generator takes a `random.Random` and returns a `Session`, the
arrival times (server clock) and the player's stamps (`client_ts`) of its points, as the server
would record them. `tests/test_timing.py` asserts on these; `bench/anticheat.py` writes the same
rates into docs/anti-cheat.md.

People: intervals from a log-normal distribution (skewed, as tapping is), a personal tempo of
220-450 ms and coefficient of variation of 0.2-0.6, never two points within 80 ms, a tempo
that drifts over the game (tiring, or warming up: x0.85 to x1.25 by the end). Their points
cross a network: a personal base delay of 10-80 ms, exponential jitter (mean 8 ms), and now and
then (0.5 % of points) a stall of 200-600 ms that delivers what queued behind it at once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from scoreserver.core.rules import AccountFlagged, GameSession, GameSettings

GAME_MS = 30_000
BURST_WINDOW_MS = 1000
BURST_THRESHOLD = 12


@dataclass(frozen=True, slots=True)
class Session:
    arrivals: list[int]
    client_times: list[int]


def _network(rng: random.Random, sent: list[float], base_ms: float, jitter_ms: float) -> list[int]:
    """Arrival times of points sent at `sent`: delay, jitter, order kept (one TCP stream)."""
    arrivals: list[int] = []
    stall_until = -1.0
    for time in sent:
        if rng.random() < 0.005:
            stall_until = time + rng.uniform(200, 600)
        arrive = time + base_ms + rng.expovariate(1 / jitter_ms) if jitter_ms else time + base_ms
        arrive = max(arrive, stall_until)
        if arrivals:
            arrive = max(arrive, arrivals[-1])
        arrivals.append(int(arrive))
    return arrivals


def _client_clock(rng: random.Random, sent: list[float]) -> list[int]:
    offset = rng.randint(-3_600_000, 3_600_000)  # the player's clock: any offset
    return [int(time) + offset for time in sent]


def honest(rng: random.Random) -> Session:
    tempo = rng.uniform(220, 450)
    cv = rng.uniform(0.2, 0.6)
    drift = rng.uniform(0.85, 1.25)
    sigma = math.sqrt(math.log(1 + cv * cv))
    sent: list[float] = []
    time = rng.uniform(300, 1500)
    while time < GAME_MS:
        sent.append(time)
        factor = 1 + (drift - 1) * time / GAME_MS
        mu = math.log(tempo * factor) - sigma * sigma / 2
        gap = rng.lognormvariate(mu, sigma)
        while gap < 80:  # no two taps within 80 ms
            gap = rng.lognormvariate(mu, sigma)
        time += gap
    return Session(_network(rng, sent, rng.uniform(10, 80), 8), _client_clock(rng, sent))


def _rhythm(rng: random.Random, period: float, noise: float = 0.0) -> list[float]:
    sent, time = [], rng.uniform(100, 500)
    while time < GAME_MS:
        sent.append(time)
        time += period * (1 + rng.uniform(-noise, noise))
    return sent


def fixed_rhythm(rng: random.Random) -> Session:
    """A point every P ms (84 to 300), exactly: the 11.9-a-second bot at its fastest."""
    sent = _rhythm(rng, rng.uniform(84, 300))
    return Session(_network(rng, sent, 20, 0), _client_clock(rng, sent))


def jittered_rhythm(rng: random.Random) -> Session:
    """A fixed rhythm seen through 0-30 ms of network jitter."""
    sent = _rhythm(rng, rng.uniform(84, 300))
    arrivals = []
    for time in sent:
        arrive = int(time + 20 + rng.uniform(0, 30))
        arrivals.append(max(arrive, arrivals[-1]) if arrivals else arrive)
    return Session(arrivals, _client_clock(rng, sent))


def noisy_rhythm(rng: random.Random) -> Session:
    """A rhythm whose every interval is off by up to +/-5 %, uniformly."""
    sent = _rhythm(rng, rng.uniform(84, 300), noise=0.05)
    return Session(_network(rng, sent, 20, 3), _client_clock(rng, sent))


def clumps(rng: random.Random) -> Session:
    """12 points within a few ms, a pause of 1,001 ms, again: exactly the most the burst rule
    allows, and never a burst."""
    sent: list[float] = []
    time = rng.uniform(100, 500)
    while time < GAME_MS:
        spread = rng.uniform(1, 4)
        sent.extend(time + spread * n / (BURST_THRESHOLD - 1) for n in range(BURST_THRESHOLD))
        time += spread + 1001
    sent = [t for t in sent if t < GAME_MS]
    return Session(_network(rng, sent, 20, 2), _client_clock(rng, sent))


def threshold_hugger(rng: random.Random) -> Session:
    """Sends each point the moment the sliding burst window allows it: the first second's 12
    points at random moments, then each one 1,001 ms after the point 12 before it."""
    sent = sorted(rng.uniform(0, BURST_WINDOW_MS) for _ in range(BURST_THRESHOLD))
    while sent[-1] < GAME_MS:
        sent.append(sent[-BURST_THRESHOLD] + BURST_WINDOW_MS + 1 + rng.uniform(0, 3))
    sent = [t for t in sent[:-1]]
    return Session(_network(rng, sent, 20, 3), _client_clock(rng, sent))


BOTS: dict[str, Callable[[random.Random], Session]] = {
    "fixed rhythm": fixed_rhythm,
    "fixed rhythm through 0-30 ms jitter": jittered_rhythm,
    "rhythm with +/-5 % noise": noisy_rhythm,
    "clumps of 12 within 4 ms, then 1,001 ms": clumps,
    "burst-threshold hugger": threshold_hugger,
}


def judged(session: Session, settings: GameSettings | None = None) -> list[str]:
    """The flags the server's own state machine raises for `session`: its points fed to a
    `GameSession` one by one (assessed every 16 points and at the end, as in play)."""
    settings = settings or GameSettings(duration_ms=GAME_MS + 5_000, burst_limit=10**6)
    start = 1_800_000_000_000
    # The player's clock relates to the server's as it did when the game started.
    game = GameSession(settings, start, session.client_times[0] - session.arrivals[0])
    reasons = []
    for arrival, client_ts in zip(session.arrivals, session.client_times, strict=True):
        for action in game.receive_point(client_ts, start + arrival):
            if isinstance(action, AccountFlagged):
                reasons.append(action.reason)
    for action in game.expire(start + settings.duration_ms):
        if isinstance(action, AccountFlagged):
            reasons.append(action.reason)
    return reasons
