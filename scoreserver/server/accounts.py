"""Accounts' building blocks: Argon2id passwords (and the pool they are checked in), player
names and passwords as accepted, login-token hashes, and the budgets that keep guessing slow.
`Service` (service.py) uses them for registration, login and erasure; /admin and the command
line use the same password policy."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from scoreserver.core.limits import Budget, Charge, charge_all
from scoreserver.core.names import normalize_name
from scoreserver.errors import BusyError
from scoreserver.store import Store

T = TypeVar("T")

LOGIN_TOKEN_TTL_MS = 30 * 24 * 3600 * 1000
PASSWORD_MIN = 8
PASSWORD_MAX = 1024


# --- passwords ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    """Argon2id parameters; the defaults are OWASP's (19 MiB, 2 passes, 1 lane)."""

    memory_kib: int = 19 * 1024
    iterations: int = 2
    lanes: int = 1

    def hash(self, password: str) -> str:
        kdf = Argon2id(
            salt=os.urandom(16),
            length=32,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        )
        return kdf.derive_phc_encoded(password.encode("utf-8"))

    @staticmethod
    def verify(password: str, encoded: str) -> bool:
        try:
            Argon2id.verify_phc_encoded(password.encode("utf-8"), encoded)
        except (InvalidKey, ValueError):
            return False
        return True


# A hash of a random password, verified when a name does not exist, so that an unknown name
# costs as long as a wrong password.
_DUMMY_HASH: str | None = None


def dummy_hash(policy: PasswordPolicy) -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = policy.hash(secrets.token_urlsafe(16))
    return _DUMMY_HASH


def validate_credentials(name: object, password: object) -> tuple[str, str]:
    if not isinstance(name, str) or not isinstance(password, str):
        raise ValueError("name and password must be strings")
    name = normalize_name(name)  # NFKC, nothing invisible (names.py); ValueError otherwise
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise ValueError(f"a password is {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    return name, password


def hash_login_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class PasswordWork:
    """Argon2id off the event loop, in a pool of its own.

    A password check takes ~40 ms of CPU and 19 MiB. Run in the worker threads that also serve
    database reads, a flood of logins delayed leaderboards and socket logins by seconds. Here
    at most `threads` checks run at once (Argon2 releases the GIL, so the event loop goes on),
    at most `max_waiting` more wait their turn, and past that a login is refused at once
    (BusyError: HTTP 503) rather than queued without bound.
    """

    def __init__(self, threads: int = 1, max_waiting: int = 32):
        self._limiter = trio.CapacityLimiter(threads)
        self.max_waiting = max_waiting
        self.waiting = 0
        self.refused = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.waiting >= self.max_waiting:
            self.refused += 1
            raise BusyError("the server is busy checking passwords; try again in a moment")
        self.waiting += 1
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        finally:
            self.waiting -= 1


@dataclass(slots=True)
class SharedCharge:
    """One attempt, charged to budgets of this process and to the same budgets shared by every
    node (the database's `attempts`): see `charge_shared`."""

    store: Store
    budgets: list[Budget]
    charges: list[Charge]
    ids: list[int]

    async def refund(self, index: int) -> None:
        """The attempt did not count after all (for the `index`th budget)."""
        self.budgets[index].refund(self.charges[index])
        await self.store.refund_attempts([self.ids[index]])

    async def refund_all(self) -> None:
        for budget, charge in zip(self.budgets, self.charges, strict=True):
            budget.refund(charge)
        await self.store.refund_attempts(self.ids)


async def charge_shared(
    store: Store, budgets: list[tuple[Budget, str]], now_s: float, now_ms: int
) -> SharedCharge:
    """Charge one attempt to each (budget, key), here and on every node: RateLimitedError if a
    budget is spent in either place, and then nothing stays charged.

    This process's budgets are charged first, before any await (requests sent together are
    counted together, and a flood stops here without a write); then the shared ones, in one
    transaction counted one by one across nodes (store/ops/budgets.py `charge_attempts`)."""
    charges = charge_all(budgets, now_s)
    try:
        ids = await store.charge_attempts(
            [
                (
                    budget.shared or "local",
                    key,
                    budget.limit,
                    int(budget.window_s * 1000),
                    budget.message,
                )
                for budget, key in budgets
            ],
            now_ms,
        )
    except BaseException:
        for (budget, _), charge in zip(budgets, charges, strict=True):
            budget.refund(charge)
        raise
    return SharedCharge(store, [b for b, _ in budgets], charges, ids)


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """The per-address and per-account budgets an operator sets (`run.py --help`; each counts
    attempts within a minute). 0 turns a budget off where that is safe; the ones that stand
    between a password and a guesser cannot be turned off. Shared by every node and worker of a
    database (counted in its `attempts` table): see docs/security.md."""

    login_attempts_per_addr: int = 30  # logins, registrations and account deletions
    failed_logins_per_account: int = 10
    failed_submissions_per_addr: int = 30
    admin_failures_per_addr: int = 5
    admin_failures: int = 10  # the one admin account, whatever the addresses
    # Flags a minute per sender: a logged-in player's account, else the client address. Past
    # it a sender's flags are not written (this node's count: it is charged before any await).
    flags_per_addr: int = 10

    # Those that guard a password or the review queue: at least one a minute.
    NOT_OFF = (
        "failed_logins_per_account",
        "admin_failures_per_addr",
        "admin_failures",
        "flags_per_addr",
    )

    def problems(self) -> list[tuple[str, str]]:
        """Each setting out of bounds, with what is wrong in words (empty: all is well). A
        setting's name is its flag's (`failed_logins_per_account`: --failed-logins-per-account)."""
        found = []
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not 0 <= value <= BUDGET_MOST:
                found.append((name, f"must be 0 to {BUDGET_MOST}"))
            elif value == 0 and name in self.NOT_OFF:
                found.append((name, "cannot be 0 (off): it guards a password or the review queue"))
        return found


BUDGET_MOST = 1_000_000


@dataclass(slots=True)
class AccessLimits:
    """The budgets that keep guesses and junk slow (see `limits.py`: charged before the work),
    from `BudgetSettings`: failed logins per account, whatever the address; login and
    registration attempts per address; failed submissions (each one a flag) per address.
    Every one is shared by the nodes and workers of a database."""

    settings: BudgetSettings = field(default_factory=BudgetSettings)
    account_failures: Budget = field(init=False)
    address_attempts: Budget = field(init=False)
    failed_submissions: Budget = field(init=False)
    flags: Budget = field(init=False)
    device_failures: Budget = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.account_failures = Budget(
            settings.failed_logins_per_account,
            message="too many failed logins for this account; wait a minute",
            shared="login_account",
        )
        self.address_attempts = Budget(
            settings.login_attempts_per_addr,
            message="too many logins from this address; wait a minute",
            shared="login_address",
        )
        self.failed_submissions = Budget(
            settings.failed_submissions_per_addr,
            message="too many failed submissions from this address; wait a minute",
            shared="failed_submission",
        )
        self.flags = Budget(settings.flags_per_addr, message="too many flags from this sender")
        # A device that logged in to the account before: its own budget, as many a minute as
        # the account's (`Service.login`).
        self.device_failures = Budget(
            settings.failed_logins_per_account,
            message="too many failed logins from this device; wait a minute",
            shared="login_device",
        )
