"""What the socket and HTTP sides share: accounts, games, the submission check, flags.

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
from typing import Any, Protocol, TypeVar

import trio

from scoreserver.core.limits import charge_all
from scoreserver.core.names import normalize_name
from scoreserver.core.rules import (
    GameSettings,
    PointLike,
    ResultReason,
    SessionRecord,
    SubmissionAccepted,
    check_submission,
)
from scoreserver.errors import (
    AuthError,
    BannedError,
    ConflictError,
    RateLimitedError,
    TokenError,
)
from scoreserver.server.accounts import (
    LOGIN_TOKEN_TTL_MS,
    PASSWORD_MAX,
    AccessLimits,
    PasswordPolicy,
    PasswordWork,
    dummy_hash,
    hash_login_token,
    validate_credentials,
)
from scoreserver.server.clock import ServerClock
from scoreserver.server.metrics import Metrics
from scoreserver.server.sessions import LiveSession, Peer
from scoreserver.server.signer import InlineSigner, Signer
from scoreserver.store import Store, User
from scoreserver.wire.tokens import (
    KeyRing,
    Purpose,
    VerifyKey,
    key_id,
    load_or_create_key,
    peek_seq,
    public_from_raw,
    raw_public,
)


class ScoreListener(Protocol):
    """Who is told that a score was saved (the rooms, which push the new board)."""

    def score_saved(self, game_id: str) -> None: ...


logger = logging.getLogger(__name__)
T = TypeVar("T")

DEMO_GAME = "demo"
DEMO_SETTINGS = GameSettings(duration_ms=30_000)


# --- who is on the other end ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResultOutcome:
    accepted: bool
    score: int | None = None
    saved: bool | None = None
    reason: str | None = None
    flag_id: int | None = None


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
    signer: Signer = field(default_factory=InlineSigner)
    key_path: Path | None = None
    settings_fingerprint: tuple[object, ...] = ()
    limits: AccessLimits = field(default_factory=AccessLimits)
    metrics: Metrics = field(default_factory=Metrics)
    password_work: PasswordWork = field(default_factory=PasswordWork)
    # Set when new settings are applied (then replaced): lets a caller wait for a reload.
    settings_applied: trio.Event = field(default_factory=trio.Event)
    # The sessions in state SUBMITTING (core/lifecycle.py): a submission of each is being
    # checked and saved by this process. The state is never stored: a crash leaves them ENDED.
    submitting: set[str] = field(default_factory=set)

    # -- start-up and reload --

    @classmethod
    async def load_keyring(cls, store: Store, key_path: Path, now: int) -> KeyRing:
        """The key file's key, plus every earlier key still inside a submission window."""
        signing_key = load_or_create_key(key_path)
        kid = key_id(signing_key.public_key())
        lifetime, history = await store.use_signing_key(
            kid.hex(), raw_public(signing_key.public_key()), now
        )
        others = []
        for row in history:
            if row["kid"] == kid.hex() or row["retired_at"] is None:
                continue
            valid_until = row["retired_at"] + lifetime
            if valid_until < now:
                continue
            others.append(
                VerifyKey(
                    bytes.fromhex(row["kid"]), public_from_raw(row["public_key"]), valid_until
                )
            )
        return KeyRing(signing_key, others)

    async def load_settings(self, now: int) -> tuple[dict[str, GameSettings], KeyRing]:
        """Read game settings and keys afresh (for SIGHUP)."""
        games = await self.store.games()
        keys = self.keys
        if self.key_path is not None:
            keys = await self.load_keyring(self.store, self.key_path, now)
        return games, keys

    def apply_settings(self, games: dict[str, GameSettings], keys: KeyRing) -> None:
        """Use new settings for sessions started from now on; running ones keep theirs."""
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
            self.limits.address_attempts.charge(address, trio.current_time())
        encoded = await self._cpu(self.password_policy.hash, password)
        now = self.clock.now_ms()
        user_id = await self.store.add_user(name, encoded, now)
        token = await self._issue_login_token(user_id, now)
        return token, User(user_id, name, encoded, None)

    async def login(
        self, name: object, password: object, address: str | None = None
    ) -> tuple[str, User]:
        if not isinstance(name, str) or not isinstance(password, str):
            raise AuthError("name and password must be strings")
        try:
            name = normalize_name(name)
        except ValueError:
            name = name.strip()  # not a name anyone could have registered: fails below
        account = name.casefold()
        # Charged before the check, given back on success: guesses sent together are counted
        # together (see limits.py).
        budgets = [(self.limits.account_failures, account)]
        if address is not None:
            budgets.append((self.limits.address_attempts, address))
        account_charge, *_ = charge_all(budgets, trio.current_time())
        if len(password) > PASSWORD_MAX:
            raise AuthError("wrong name or password")
        user = await self.store.user_by_name(name)
        if user is not None:
            encoded = user.password_hash
        else:  # made once, in the password pool: the first unknown name must not stall the loop
            encoded = await self._cpu(dummy_hash, self.password_policy)
        ok = await self._cpu(self.password_policy.verify, password, encoded)
        if user is None or not ok:
            raise AuthError("wrong name or password")
        self.limits.account_failures.refund(account_charge)
        now = self.clock.now_ms()
        if user.banned(now):
            raise AuthError("this account is banned")
        return await self._issue_login_token(user.id, now), user

    async def delete_account(self, token: str, password: object, address: str | None) -> int:
        """A player erases their own account (their login token and password, both): personal
        data goes, results stay under a name that is no one's. Audited. Returns the user id."""
        user = await self.identify(token)
        if not isinstance(password, str) or len(password) > PASSWORD_MAX:
            raise AuthError("wrong password")
        budgets = [(self.limits.account_failures, user.name.casefold())]
        if address is not None:
            budgets.append((self.limits.address_attempts, address))
        charge, *_ = charge_all(budgets, trio.current_time())
        if not await self._cpu(self.password_policy.verify, password, user.password_hash):
            raise AuthError("wrong password")
        self.limits.account_failures.refund(charge)
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
            raise AuthError("this account is banned")
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
    ) -> int:
        """Record a flag and return once it is committed (before anything reveals it)."""
        if peer is not None:
            user_id = user_id if user_id is not None else peer.user_id
            guest_addr = guest_addr or peer.address
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
        logger.warning(
            "flag %d: %s (user %s, address %s, session %s)",
            flag_id,
            reason,
            user_id,
            guest_addr,
            session_id,
        )
        return flag_id

    # -- the submission --

    async def submit(
        self,
        start_token: str,
        end_token: str,
        points: Sequence[PointLike],
        submitter: Peer,
    ) -> ResultOutcome:
        """Judge a submitted game; save the score of a logged-in player once committed.

        A failed submission is held against whoever submitted it (their account, or their
        address), never against the session's owner unless the owner sent it: holding a copy
        of someone's start token must not let anyone put them under review. Failures are
        limited per address (RateLimitedError): refused at once when the address's budget is
        spent, and charged as each one is decided (see `_reject`).
        """
        budget = self.limits.failed_submissions
        if (
            submitter.address is not None
            and budget.remaining(submitter.address, trio.current_time()) == 0
        ):
            raise RateLimitedError(budget.message)
        outcome = await self._judge(start_token, end_token, points, submitter)
        verdict = "accepted" if outcome.accepted else str(outcome.reason)
        self.metrics.child(self.metrics.submissions, verdict).inc()
        return outcome

    async def _judge(
        self,
        start_token: str,
        end_token: str,
        points: Sequence[PointLike],
        submitter: Peer,
    ) -> ResultOutcome:
        now = self.clock.now_ms()
        try:
            claims = self.keys.verify(start_token, Purpose.START, now)
        except TokenError as exc:
            return await self._reject(
                ResultReason.BAD_START_TOKEN, submitter, None, {"token_error": str(exc)}
            )
        session_id = claims.session_hex
        record = await self._record(session_id)
        if record is None:
            return await self._reject(
                ResultReason.UNKNOWN_SESSION, submitter, None, {"session_id": session_id}
            )
        if session_id in self.submitting:
            return ResultOutcome(False, reason=ResultReason.ALREADY_SUBMITTED)
        verdict = check_submission(record, start_token, end_token, points, peek_seq, now)
        if not isinstance(verdict, SubmissionAccepted):
            detail = {"points_submitted": len(points), **verdict.detail}
            return await self._reject(verdict.reason, submitter, record, detail)
        self.submitting.add(session_id)
        try:
            # The ban check is inside the saving transaction: one trip to the writer, and no
            # gap between checking and saving.
            saved = await self.store.save_result(
                session_id, record.game_id, record.user_id, verdict.score, now
            )
        except ConflictError:
            return ResultOutcome(False, reason=ResultReason.ALREADY_SUBMITTED)
        except BannedError:
            return ResultOutcome(False, reason=ResultReason.ACCOUNT_BANNED)
        finally:
            self.submitting.discard(session_id)
        live = self.sessions.pop(session_id, None)
        if live is not None:
            live.submitted = True
        logger.info("session %s submitted: score %d, saved %s", session_id, verdict.score, saved)
        if saved and self.rooms is not None:
            self.rooms.score_saved(record.game_id)
        return ResultOutcome(True, score=verdict.score, saved=saved)

    async def _record(self, session_id: str) -> SessionRecord | None:
        live = self.sessions.get(session_id)
        if live is not None:
            return live.record()
        return await self.store.session(session_id)

    async def _reject(
        self,
        reason: ResultReason,
        submitter: Peer,
        record: SessionRecord | None,
        detail: dict[str, object],
    ) -> ResultOutcome:
        """Refuse a submission; flag the submitter for the reasons that flag (see `submit`).

        A failure is charged to the submitter's address the moment it is decided, before its
        flag is written and with no await in between: failures sent at once are counted one
        by one, and past the budget they are refused (RateLimitedError) instead of flagged.
        Honest submissions are never charged, however many arrive together.
        """
        if not reason.flags_account:
            return ResultOutcome(False, reason=str(reason))
        if submitter.address is not None:
            self.limits.failed_submissions.charge(submitter.address, trio.current_time())
        if record is not None:
            detail = {
                **detail,
                "session_owner_user_id": record.user_id,
                "submitted_by_owner": submitter.user_id is not None
                and submitter.user_id == record.user_id,
            }
        flag_id = await self.flag(
            f"submission:{reason}",
            peer=submitter,
            game_id=record.game_id if record is not None else None,
            session_id=record.session_id if record is not None else None,
            detail={**detail, "submitted_from": submitter.address},
        )
        return ResultOutcome(False, reason=str(reason), flag_id=flag_id)

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
