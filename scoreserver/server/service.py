"""What the socket and HTTP sides share: accounts, games, flags, the way to the submission
check (submissions.py).

`Service` owns the state that outlives a connection: the game settings in force, the live and
recently ended sessions (by id), which user is playing which game, and the signing keys. It
does no I/O of its own except through `Store`; the trio tasks that run sessions live in
`rooms.py`, the connection handling in `ws.py` and `http.py`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from scoreserver.core.limits import Budget
from scoreserver.core.names import normalize_name
from scoreserver.core.rules import (
    GameSettings,
    PointLike,
)
from scoreserver.errors import (
    AuthError,
    RateLimitedError,
    TokenError,
)
from scoreserver.server.accounts import (
    LOGIN_TOKEN_TTL_MS,
    PASSWORD_MAX,
    AccessLimits,
    PasswordPolicy,
    PasswordWork,
    charge_shared,
    dummy_hash,
    hash_login_token,
    validate_credentials,
)
from scoreserver.server.clock import ServerClock
from scoreserver.server.metrics import Metrics
from scoreserver.server.moderation import reset_code_hash
from scoreserver.server.nodes import load_keys
from scoreserver.server.results_log import ResultsLog
from scoreserver.server.sessions import LiveSession, Peer
from scoreserver.server.submissions import ResultOutcome, ScoreListener, SubmissionDesk
from scoreserver.server.webhooks import Webhooks
from scoreserver.store import FOREVER, NodeInfo, Store, User
from scoreserver.wire.tokens import Claims, KeyRing, Purpose

logger = logging.getLogger(__name__)

# How long a device token names a device that logged in before (Service.device_token).
DEVICE_TTL_MS = 180 * 86_400_000
T = TypeVar("T")

DEMO_GAME = "demo"
DEMO_SETTINGS = GameSettings(duration_ms=30_000)


# --- who is on the other end ----------------------------------------------------------------


@dataclass(slots=True)
class Service:
    store: Store
    clock: ServerClock
    keys: KeyRing
    password_policy: PasswordPolicy = field(default_factory=PasswordPolicy)
    games: dict[str, GameSettings] = field(default_factory=dict)
    # Live sessions and ended ones still within their submission window, by session id.
    sessions: dict[str, LiveSession] = field(default_factory=dict)
    # The running session of each (user, game): a user plays one game of a kind at a time.
    running_by_user: dict[tuple[int, str], LiveSession] = field(default_factory=dict)
    rooms: ScoreListener | None = None
    key_path: Path | None = None
    # This process as a node of those sharing the database (nodes.py); None: not registered.
    node: NodeInfo | None = None
    settings_fingerprint: tuple[object, ...] = ()
    limits: AccessLimits = field(default_factory=AccessLimits)
    metrics: Metrics = field(default_factory=Metrics)
    password_work: PasswordWork = field(default_factory=PasswordWork)
    # Set when new settings are applied (then replaced): lets a caller wait for a reload.
    settings_applied: trio.Event = field(default_factory=trio.Event)
    reloading: trio.Lock = field(default_factory=trio.Lock)  # app.reload, one at a time
    # The sessions in state SUBMITTING (core/lifecycle.py): a submission of each is being
    # checked and saved by this process. The state is never stored: a crash leaves them ENDED.
    submitting: set[str] = field(default_factory=set)
    submissions: SubmissionDesk = field(init=False)
    results_log: ResultsLog = field(init=False)
    # Notifications for organisers (--webhook), if any.
    webhooks: Webhooks | None = None

    def __post_init__(self) -> None:
        self.submissions = SubmissionDesk(self)
        self.results_log = ResultsLog(self)

    # -- start-up and reload --

    async def load_settings(self, now: int) -> tuple[dict[str, GameSettings], KeyRing]:
        """Read game settings and keys afresh (a reload: SIGHUP, or a change noticed)."""
        games = await self.store.games()
        keys = self.keys
        if self.key_path is not None:
            keys = await load_keys(self.store, self.key_path, now)
        return games, keys

    def apply_settings(self, games: dict[str, GameSettings], keys: KeyRing) -> None:
        """Use new settings for sessions started from now on; running ones keep theirs."""
        keys.carry_macs(self.keys)  # points issued under a key rotated away still check
        self.games = games
        self.keys = keys
        self.settings_applied.set()
        self.settings_applied = trio.Event()
        logger.info("reloaded %d games, signing key %s", len(games), keys.kid.hex())

    # -- accounts --

    async def register(
        self, name: str, password: str, address: str | None = None
    ) -> tuple[str, User]:
        name, password = validate_credentials(name, password)
        # Registrations share the address's login budget: no account factories.
        if address is not None:
            await charge_shared(
                self.store,
                [(self.limits.address_attempts, address)],
                trio.current_time(),
                self.clock.now_ms(),
            )
        encoded = await self._cpu(self.password_policy.hash, password)
        now = self.clock.now_ms()
        user_id = await self.store.add_user(name, encoded, now)
        token = await self._issue_login_token(user_id, now)
        return token, User(user_id, name, encoded, None)

    async def login(
        self,
        name: object,
        password: object,
        address: str | None = None,
        device: object = None,
    ) -> tuple[str, User]:
        """A login token for the right password. Guesses are charged before the check and
        given back on success (guesses sent together are counted together, see limits.py): a
        stranger's to the account's and the address's budgets; a device that logged in to this
        account before (`device`, from `device_token`) to that device's own, so strangers
        spending the account's budget do not lock its owner out (OWASP's device cookies)."""
        if not isinstance(name, str) or not isinstance(password, str):
            raise AuthError("name and password must be strings", "wrong_password")
        try:
            name = normalize_name(name)
        except ValueError:
            name = name.strip()  # not a name anyone could have registered: fails below
        known = self.known_device(device, "")
        if known is not None:
            budgets = [(self.limits.device_failures, known.session_hex)]
        else:
            budgets = self._stranger_budgets(name, address)
        charged = await charge_shared(self.store, budgets, trio.current_time(), self.clock.now_ms())
        if len(password) > PASSWORD_MAX:
            raise AuthError("wrong name or password", "wrong_password")
        user = await self.store.user_by_name(name)
        if known is not None and (user is None or user.id != known.user_id):
            # Another account's device: here it is a stranger, charged as one (the device's
            # own charge stays: it guessed).
            charged = await charge_shared(
                self.store,
                self._stranger_budgets(name, address),
                trio.current_time(),
                self.clock.now_ms(),
            )
        if user is not None:
            encoded = user.password_hash
        else:  # made once, in the password pool: the first unknown name must not stall the loop
            encoded = await self._cpu(dummy_hash, self.password_policy)
        ok = await self._cpu(self.password_policy.verify, password, encoded)
        if user is None or not ok:
            raise AuthError("wrong name or password", "wrong_password")
        await charged.refund(0)  # the account's failure budget; the address's stays charged
        now = self.clock.now_ms()
        if user.banned(now):
            raise AuthError("this account is banned", "banned", _ban_end(user))
        return await self._issue_login_token(user.id, now), user

    async def reset_password(
        self, name: object, code: object, password: object, address: str | None
    ) -> tuple[str, User]:
        """A new password set with a one-time reset code an organiser issued
        (moderation.issue_reset_code); a login token for it. A wrong code is charged like a
        wrong password, to the account's and the address's budgets."""
        if not isinstance(code, str) or len(code) > 64:
            raise AuthError("wrong or expired reset code", "bad_reset_code")
        name, password = validate_credentials(name, password)  # ValueError: 400
        charged = await charge_shared(
            self.store,
            self._stranger_budgets(name, address),
            trio.current_time(),
            self.clock.now_ms(),
        )
        code_hash = reset_code_hash(code)
        if not await self.store.reset_code_holds(name, code_hash, self.clock.now_ms()):
            raise AuthError("wrong or expired reset code", "bad_reset_code")  # no Argon2 spent
        encoded = await self._cpu(self.password_policy.hash, password)
        now = self.clock.now_ms()
        user = await self.store.use_reset_code(name, code_hash, encoded, now)
        if user is None:
            raise AuthError("wrong or expired reset code", "bad_reset_code")
        await charged.refund(0)
        logger.info("user %d set a new password with a reset code", user.id)
        if user.banned(now):
            raise AuthError("this account is banned", "banned", _ban_end(user))
        return await self._issue_login_token(user.id, now), user

    def _stranger_budgets(self, name: str, address: str | None) -> list[tuple[Budget, str]]:
        budgets = [(self.limits.account_failures, name.casefold())]
        if address is not None:
            budgets.append((self.limits.address_attempts, address))
        return budgets

    def device_token(self, user_id: int | None, scope: str = "") -> str:
        """A token naming this device as one that logged in to `user_id` (scope "admin": to
        the admin page): signed, with a random device id, good for DEVICE_TTL_MS."""
        return self.keys.sign(
            Purpose.DEVICE, secrets.token_bytes(16), user_id, scope, self.clock.now_ms()
        )

    def known_device(self, device: object, scope: str) -> Claims | None:
        """The claims of a device token of `scope` that verifies and is not too old; None
        for anything else (a stranger)."""
        if not isinstance(device, str) or not device or len(device) > 400:
            return None
        now = self.clock.now_ms()
        try:
            claims = self.keys.verify(device, Purpose.DEVICE, now)
        except TokenError:
            return None
        if claims.game_id != scope or not 0 <= now - claims.issued_at <= DEVICE_TTL_MS:
            return None
        return claims

    async def delete_account(self, token: str, password: object, address: str | None) -> int:
        """A player erases their own account (their login token and password, both): personal
        data goes, results stay under a name that is no one's. Audited. Returns the user id."""
        user = await self.identify(token)
        if not isinstance(password, str) or len(password) > PASSWORD_MAX:
            raise AuthError("wrong password", "wrong_password")
        budgets = [(self.limits.account_failures, user.name.casefold())]
        if address is not None:
            budgets.append((self.limits.address_attempts, address))
        charged = await charge_shared(self.store, budgets, trio.current_time(), self.clock.now_ms())
        if not await self._cpu(self.password_policy.verify, password, user.password_hash):
            raise AuthError("wrong password", "wrong_password")
        await charged.refund(0)
        await self.store.erase_own_account(user.id, self.clock.now_ms())
        logger.info("user %d erased their account", user.id)
        return user.id

    async def _cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy work (Argon2id) in its own pool, unless the store runs inline."""
        if not self.store.threaded:
            return fn(*args)
        return await self.password_work.run(fn, *args)

    async def _issue_login_token(self, user_id: int, now: int) -> str:
        token = secrets.token_urlsafe(32)
        await self.store.add_login_token(
            hash_login_token(token), user_id, now, now + LOGIN_TOKEN_TTL_MS
        )
        return token

    async def identify(self, token: str) -> User:
        """The user a login token belongs to; AuthError if none, expired, or banned."""
        now = self.clock.now_ms()
        user = await self.store.user_by_login_token(hash_login_token(token), now)
        if user is None:
            raise AuthError("unknown or expired login token")
        if user.banned(now):
            raise AuthError("this account is banned", "banned", _ban_end(user))
        return user

    # -- flags --

    async def flag(
        self,
        reason: str,
        *,
        peer: Peer | None = None,
        user_id: int | None = None,
        guest_addr: str | None = None,
        game_id: str | None = None,
        session_id: str | None = None,
        detail: dict[str, object] | None = None,
        budgeted: bool = True,
    ) -> int | None:
        """Record a flag and return its id once it is committed (before anything reveals
        it). A repeat of an open flag's cause is counted on it (ops.insert_flag). None: the
        sender (the account, else the address) is past its flags budget this minute, charged
        here before any await, and nothing was written: no one can fill the review queue."""
        if peer is not None:
            user_id = user_id if user_id is not None else peer.user_id
            guest_addr = guest_addr or peer.address
        sender = f"user {user_id}" if user_id is not None else f"address {guest_addr}"
        try:
            if budgeted:
                self.limits.flags.charge(sender, trio.current_time())
        except RateLimitedError:
            self.metrics.child(self.metrics.flags, "dropped_over_budget").inc()
            return None
        flag_id = await self.store.add_flag(
            reason,
            self.clock.now_ms(),
            game_id=game_id,
            session_id=session_id,
            user_id=user_id,
            guest_addr=guest_addr,
            user_agent=peer.user_agent if peer else None,
            detail=detail,
        )
        self.metrics.child(self.metrics.flags, reason).inc()
        if self.webhooks is not None:
            name = peer.name if peer is not None and peer.user_id == user_id else None
            who = name or (f"user {user_id}" if user_id is not None else "a guest")
            self.webhooks.flag(flag_id, reason, game_id, who)
        logger.warning(
            "flag %d: %s (user %s, address %s, session %s)",
            flag_id,
            reason,
            user_id,
            guest_addr,
            session_id,
        )
        return flag_id

    # -- the submission (submissions.py) --

    async def submit(
        self,
        start_token: str,
        end_token: str,
        points: Sequence[PointLike],
        submitter: Peer,
    ) -> ResultOutcome:
        """Judge a submitted game (see `submissions.SubmissionDesk.submit`)."""
        return await self.submissions.submit(start_token, end_token, points, submitter)

    def forget_expired_sessions(self, now: int) -> int:
        """Drop ended sessions whose submission window has passed (they stay in SQLite)."""
        stale = [
            sid
            for sid, live in self.sessions.items()
            if live.rules.ended_at is not None
            and now > live.rules.ended_at + live.rules.settings.submission_window_ms
        ]
        for sid in stale:
            del self.sessions[sid]
        return len(stale)


def _ban_end(user: User) -> int | None:
    """When a user's ban ends, for their words; None for a ban until lifted."""
    until = user.banned_until
    return None if until is None or until >= FOREVER else until
