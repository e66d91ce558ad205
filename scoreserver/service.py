"""What the socket and HTTP sides share: accounts, games, the submission check, flags.

`Service` owns the state that outlives a connection: the game settings in force, the live and
recently ended sessions (by id), which user is playing which game, and the signing keys. It
does no I/O of its own except through `Store`; the trio tasks that run sessions live in
`rooms.py`, the connection handling in `ws.py` and `http.py`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from . import store as db
from .clock import ServerClock
from .errors import AuthError, BannedError, ConflictError, RateLimitedError, TokenError
from .rules import (
    GameSettings,
    PointLike,
    ResultReason,
    SessionRecord,
    SubmissionAccepted,
    check_submission,
)
from .signer import InlineSigner, Signer
from .tokens import (
    KeyRing,
    Purpose,
    VerifyKey,
    key_id,
    load_or_create_key,
    peek_seq,
    public_from_raw,
    raw_public,
)

if TYPE_CHECKING:
    from .rooms import LiveSession, Rooms

logger = logging.getLogger(__name__)
T = TypeVar("T")

LOGIN_TOKEN_TTL_MS = 30 * 24 * 3600 * 1000
NAME_MAX = 32
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
DEMO_GAME = "demo"
DEMO_SETTINGS = GameSettings(duration_ms=30_000)


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


def _dummy_hash(policy: PasswordPolicy) -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = policy.hash(secrets.token_urlsafe(16))
    return _DUMMY_HASH


def validate_credentials(name: object, password: object) -> tuple[str, str]:
    if not isinstance(name, str) or not isinstance(password, str):
        raise ValueError("name and password must be strings")
    name = name.strip()
    if not 1 <= len(name) <= NAME_MAX or not name.isprintable():
        raise ValueError(f"a name is 1 to {NAME_MAX} printable characters")
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise ValueError(f"a password is {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    return name, password


def hash_login_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class LoginLimiter:
    """Failed logins per account, and attempts per address, within a sliding minute."""

    def __init__(self, per_account: int = 10, per_address: int = 30, window_s: float = 60.0):
        self.per_account = per_account
        self.per_address = per_address
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._attempts: dict[str, deque[float]] = {}

    def _recent(self, table: dict[str, deque[float]], key: str, now: float) -> deque[float]:
        times = table.setdefault(key, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def check(self, account: str | None, address: str | None, now: float) -> None:
        """Raise RateLimitedError if this attempt is over a limit; count it otherwise.

        `account` None is a registration: it counts against the address only.
        """
        if (
            account is not None
            and self.per_account
            and len(self._recent(self._failures, account, now)) >= self.per_account
        ):
            raise RateLimitedError("too many failed logins for this account; wait a minute")
        if address is not None and self.per_address:
            attempts = self._recent(self._attempts, address, now)
            if len(attempts) >= self.per_address:
                raise RateLimitedError("too many logins from this address; wait a minute")
            attempts.append(now)
        if len(self._failures) + len(self._attempts) > 100_000:
            self._failures.clear()  # bounded memory under a spray of names
            self._attempts.clear()

    def failed(self, account: str, now: float) -> None:
        self._recent(self._failures, account, now).append(now)


# --- who is on the other end ----------------------------------------------------------------


@dataclass(slots=True)
class Peer:
    """The identity and origin of a request, for checks and for flags."""

    user_id: int | None = None
    name: str | None = None
    address: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class ResultOutcome:
    accepted: bool
    score: int | None = None
    saved: bool | None = None
    reason: str | None = None
    flag_id: int | None = None


@dataclass(slots=True)
class Service:
    store: db.Store
    clock: ServerClock
    keys: KeyRing
    password_policy: PasswordPolicy = field(default_factory=PasswordPolicy)
    games: dict[str, GameSettings] = field(default_factory=dict)
    # Live sessions and ended ones still within their submission window, by session id.
    sessions: dict[str, LiveSession] = field(default_factory=dict)
    # The running session of each (user, game): a user plays one game of a kind at a time.
    running_by_user: dict[tuple[int, str], LiveSession] = field(default_factory=dict)
    rooms: Rooms | None = None
    signer: Signer = field(default_factory=InlineSigner)
    key_path: Path | None = None
    settings_fingerprint: tuple[object, ...] = ()
    login_limiter: LoginLimiter = field(default_factory=LoginLimiter)
    # Set when new settings are applied (then replaced): lets a caller wait for a reload.
    settings_applied: trio.Event = field(default_factory=trio.Event)
    _submitting: set[str] = field(default_factory=set)

    # -- start-up and reload --

    @classmethod
    def load_keyring(cls, conn: Any, key_path: Path, now: int) -> KeyRing:
        """The key file's key, plus every earlier key still inside a submission window."""
        signing_key = load_or_create_key(key_path)
        kid = key_id(signing_key.public_key())
        db.record_signing_key(conn, kid.hex(), raw_public(signing_key.public_key()), now)
        db.retire_other_keys(conn, kid.hex(), now)
        lifetime = db.retired_key_lifetime_ms(conn)
        others = []
        for row in db.list_signing_keys(conn):
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

    def load_settings(self, conn: Any, now: int) -> tuple[dict[str, GameSettings], KeyRing]:
        """Read game settings and keys afresh (for SIGHUP); safe to call from a thread."""
        games = db.list_games(conn)
        keys = self.keys
        if self.key_path is not None:
            with db.transaction(conn):
                keys = self.load_keyring(conn, self.key_path, now)
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
    ) -> tuple[str, db.User]:
        name, password = validate_credentials(name, password)
        # Registrations share the address's login budget: no account factories.
        self.login_limiter.check(None, address, trio.current_time())
        encoded = await self._cpu(self.password_policy.hash, password)
        now = self.clock.now_ms()
        user_id = await self.store.write(db.insert_user, name, encoded, now)
        token = await self._issue_login_token(user_id, now)
        return token, db.User(user_id, name, encoded, None)

    async def login(
        self, name: object, password: object, address: str | None = None
    ) -> tuple[str, db.User]:
        if not isinstance(name, str) or not isinstance(password, str):
            raise AuthError("name and password must be strings")
        account = name.strip().casefold()
        self.login_limiter.check(account, address, trio.current_time())
        if len(password) > PASSWORD_MAX:
            raise AuthError("wrong name or password")
        user = await self.store.read(db.user_by_name, name.strip())
        encoded = user.password_hash if user is not None else _dummy_hash(self.password_policy)
        ok = await self._cpu(self.password_policy.verify, password, encoded)
        if user is None or not ok:
            self.login_limiter.failed(account, trio.current_time())
            raise AuthError("wrong name or password")
        now = self.clock.now_ms()
        if user.banned(now):
            raise AuthError("this account is banned")
        return await self._issue_login_token(user.id, now), user

    async def _cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy work (Argon2id) off the event loop, unless the store runs inline."""
        if not self.store.threaded:
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args)

    async def _issue_login_token(self, user_id: int, now: int) -> str:
        token = secrets.token_urlsafe(32)
        await self.store.write(
            db.insert_login_token, hash_login_token(token), user_id, now, now + LOGIN_TOKEN_TTL_MS
        )
        return token

    async def identify(self, token: str) -> db.User:
        """The user a login token belongs to; AuthError if none, expired, or banned."""
        now = self.clock.now_ms()
        user = await self.store.read(db.user_by_login_token, hash_login_token(token), now)
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
        flag_id = await self.store.write(
            db.insert_flag,
            reason,
            self.clock.now_ms(),
            game_id=game_id,
            session_id=session_id,
            user_id=user_id,
            guest_addr=guest_addr,
            user_agent=peer.user_agent if peer else None,
            detail=detail,
        )
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
        """Judge a submitted game; save the score of a logged-in player once committed."""
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
        if session_id in self._submitting:
            return ResultOutcome(False, reason=ResultReason.ALREADY_SUBMITTED)
        verdict = check_submission(record, start_token, end_token, points, peek_seq, now)
        if not isinstance(verdict, SubmissionAccepted):
            detail = {"points_submitted": len(points), **verdict.detail}
            return await self._reject(verdict.reason, submitter, record, detail)
        self._submitting.add(session_id)
        try:
            # The ban check is inside the saving transaction: one trip to the writer, and no
            # gap between checking and saving.
            saved = await self.store.write(
                db.save_result, session_id, record.game_id, record.user_id, verdict.score, now
            )
        except ConflictError:
            return ResultOutcome(False, reason=ResultReason.ALREADY_SUBMITTED)
        except BannedError:
            return ResultOutcome(False, reason="account_banned")
        finally:
            self._submitting.discard(session_id)
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
        return await self.store.read(db.load_session, session_id)

    async def _reject(
        self,
        reason: ResultReason,
        submitter: Peer,
        record: SessionRecord | None,
        detail: dict[str, object],
    ) -> ResultOutcome:
        flag_id = None
        if reason.flags_account:
            if record is not None:
                owner = await self._session_owner(record)
                flag_id = await self.flag(
                    f"submission:{reason}",
                    user_id=record.user_id,
                    guest_addr=owner.get("guest_addr"),
                    game_id=record.game_id,
                    session_id=record.session_id,
                    detail={**detail, "submitted_from": submitter.address},
                )
            else:
                flag_id = await self.flag(f"submission:{reason}", peer=submitter, detail=detail)
        return ResultOutcome(False, reason=str(reason), flag_id=flag_id)

    async def _session_owner(self, record: SessionRecord) -> dict[str, Any]:
        live = self.sessions.get(record.session_id)
        if live is not None:
            return {"guest_addr": live.peer.address, "user_agent": live.peer.user_agent}
        return await self.store.read(db.session_owner, record.session_id) or {}

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
