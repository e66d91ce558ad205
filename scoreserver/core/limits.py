"""Sliding-window budgets for attempts that must not be tried in bulk: logins, admin logins,
failed submissions. Pure: every call takes the current time; no I/O, no clock of its own.

An attempt is charged *before* the work that judges it (an Argon2 check, a submission check)
and given back only if it turns out not to count (a login that succeeded, a submission that
was accepted). Requests sent together therefore cannot all pass the check before any of them
is counted: with a budget of 10, the 11th of 30 concurrent guesses is refused, whatever the
order in which their password checks finish.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from scoreserver.errors import RateLimitedError


@dataclass(frozen=True, slots=True)
class Charge:
    """One attempt charged to a budget (give it back with `Budget.refund`)."""

    key: str
    at: float


@dataclass(slots=True)
class Budget:
    """At most `limit` attempts per key within the last `window_s` seconds (0: no limit)."""

    limit: int
    window_s: float = 60.0
    # Keys kept at most; past that, keys with nothing in the window are dropped first.
    max_keys: int = 100_000
    message: str = "too many attempts; wait a minute"
    # The name of the budget every node shares through the database (server/accounts.py
    # `charge_shared`), or None: this process's alone.
    shared: str | None = None
    _spent: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._spent.get(key)
        if times is None:
            times = self._spent[key] = deque()
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return times

    def remaining(self, key: str, now: float) -> int | None:
        """Attempts left for `key` now (None: unlimited)."""
        if not self.limit:
            return None
        return max(0, self.limit - len(self._recent(key, now)))

    def charge(self, key: str, now: float) -> Charge:
        """Count an attempt, or raise RateLimitedError if the budget is spent."""
        if not self.limit:
            return Charge(key, now)
        times = self._recent(key, now)
        if len(times) >= self.limit:
            raise RateLimitedError(self.message)
        times.append(now)
        if len(self._spent) > self.max_keys:
            self._forget_idle(now)
        return Charge(key, now)

    def refund(self, charge: Charge) -> None:
        """The attempt did not count after all (a login that succeeded)."""
        times = self._spent.get(charge.key)
        if times is None:
            return
        try:
            times.remove(charge.at)
        except ValueError:  # already out of the window
            pass

    def _forget_idle(self, now: float) -> None:
        for key in [k for k in self._spent if not self._recent(k, now)]:
            del self._spent[key]
        if len(self._spent) > self.max_keys:
            # Still too many keys, each with attempts in the window: memory wins over memory
            # of attempts. A spray this wide has already met the per-address budgets.
            self._spent.clear()


def charge_all(charges: list[tuple[Budget, str]], now: float) -> list[Charge]:
    """Charge several budgets for one attempt: all of them, or (if one is spent) none."""
    done: list[tuple[Budget, Charge]] = []
    try:
        for budget, key in charges:
            done.append((budget, budget.charge(key, now)))
    except RateLimitedError:
        for budget, charge in done:
            budget.refund(charge)
        raise
    return [charge for _, charge in done]
