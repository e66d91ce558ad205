"""A submitted result, judged: its tokens against the ones the server issued, its timing, its
session's state; a score saved once committed, a failure held against whoever submitted it.

`SubmissionDesk` works for the service (`SubmissionHost`: the store, the keys, the live
sessions, the budgets, the flagging); the socket and HTTP sides reach it through
`Service.submit`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from scoreserver.core.lifecycle import Move, SessionState
from scoreserver.core.rules import (
    GameSettings,
    PointLike,
    ResultReason,
    SessionRecord,
    SubmissionAccepted,
    check_submission,
    same_token,
)
from scoreserver.errors import BannedError, ConflictError, TokenError
from scoreserver.server.accounts import AccessLimits, charge_shared
from scoreserver.server.clock import ServerClock
from scoreserver.server.metrics import Metrics
from scoreserver.server.sessions import LiveSession, Peer
from scoreserver.server.webhooks import Webhooks
from scoreserver.store import SavedResult, Store
from scoreserver.wire.receipts import make_receipt, points_digest
from scoreserver.wire.tokens import KeyRing, Purpose, peek_seq

logger = logging.getLogger("scoreserver.server.service")


@dataclass(frozen=True, slots=True)
class ResultOutcome:
    accepted: bool
    score: int | None = None
    saved: bool | None = None
    reason: str | None = None
    flag_id: int | None = None
    held: bool | None = None  # an accepted result: on no board until reviewed
    held_reason: str | None = None
    # A kept result's signed receipt and its entry in the results log (docs/verification.md).
    receipt: str | None = None
    log_index: int | None = None


class ScoreListener(Protocol):
    """Who is told that a score was saved (the rooms, which push the new board)."""

    def score_saved(self, game_id: str) -> None: ...


class SubmissionHost(Protocol):
    """What the desk needs of the service."""

    @property
    def store(self) -> Store: ...
    @property
    def clock(self) -> ServerClock: ...
    @property
    def keys(self) -> KeyRing: ...
    @property
    def limits(self) -> AccessLimits: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def sessions(self) -> dict[str, LiveSession]: ...
    @property
    def submitting(self) -> set[str]: ...
    @property
    def rooms(self) -> ScoreListener | None: ...
    @property
    def webhooks(self) -> Webhooks | None: ...
    @property
    def games(self) -> dict[str, GameSettings]: ...

    async def flag(
        self,
        reason: str,
        *,
        peer: Peer,
        game_id: str | None,
        session_id: str | None,
        detail: dict[str, object],
        budgeted: bool = True,
    ) -> int | None:
        """Record a flag against `peer` (Service.flag: committed before it returns)."""


class SubmissionDesk:
    def __init__(self, host: SubmissionHost):
        self.host = host

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
        limited per address, on every node together (see `_reject`): past the budget a failure
        is refused (RateLimitedError) instead of flagged. An honest submission is judged and
        saved whatever its address has spent: a player behind the same NAT or balancer as a
        junk sender is not refused for the junk.
        """
        outcome = await self._judge(start_token, end_token, points, submitter)
        verdict = "accepted" if outcome.accepted else str(outcome.reason)
        self.host.metrics.child(self.host.metrics.submissions, verdict).inc()
        return outcome

    async def _judge(
        self,
        start_token: str,
        end_token: str,
        points: Sequence[PointLike],
        submitter: Peer,
    ) -> ResultOutcome:
        now = self.host.clock.now_ms()
        keys = self.host.keys
        try:
            session_id = keys.read(start_token, Purpose.START, now).session_hex
        except TokenError as exc:
            return await self._reject(
                ResultReason.BAD_START_TOKEN, submitter, None, {"token_error": str(exc)}
            )
        record = await self._record(session_id)
        if record is None or not same_token(record.start_token, start_token):
            # Not the very token this server issued for a session it knows (when it is, its
            # signature is this server's own: checking it again would cost 0.1-0.2 ms a
            # submission). Refused either way; the signature decides the reason.
            try:
                keys.verify(start_token, Purpose.START, now)
            except TokenError as exc:
                return await self._reject(
                    ResultReason.BAD_START_TOKEN, submitter, None, {"token_error": str(exc)}
                )
            if record is None:
                return await self._reject(
                    ResultReason.UNKNOWN_SESSION, submitter, None, {"session_id": session_id}
                )
        if session_id in self.host.submitting:
            return ResultOutcome(False, reason=ResultReason.ALREADY_SUBMITTED)
        verdict = check_submission(record, start_token, end_token, points, peek_seq, now)
        if not isinstance(verdict, SubmissionAccepted):
            detail = {"points_submitted": len(points), **verdict.detail}
            return await self._reject(verdict.reason, submitter, record, detail)
        # SUBMITTING (core/lifecycle.py): in this set for any session, and on the live
        # session's own state when this process runs it.
        self.host.submitting.add(session_id)
        live = self.host.sessions.get(session_id)
        if live is not None and live.rules.state is not SessionState.ENDED:
            live = None  # not this process's to move (check_submission judged it ended)
        if live is not None:
            live.rules.submission(Move.SUBMIT)
        digest = points_digest(p.token for p in points)
        saved = False
        try:
            # The ban check is inside the saving transaction: one trip to the writer, and no
            # gap between checking and saving.
            kept = await self.host.store.save_result(
                session_id,
                record.game_id,
                record.user_id,
                verdict.score,
                now,
                digest,
            )
            saved = True
        except ConflictError:
            return ResultOutcome(False, reason=ResultReason.ALREADY_SUBMITTED)
        except BannedError:
            return ResultOutcome(False, reason=ResultReason.ACCOUNT_BANNED)
        finally:
            self.host.submitting.discard(session_id)
            if live is not None:
                live.rules.submission(Move.SAVED if saved else Move.REFUSED)
        self.host.sessions.pop(session_id, None)
        logger.info(
            "session %s submitted: score %d, saved %s, held %s",
            session_id,
            verdict.score,
            kept.saved,
            kept.held_reason,
        )
        if kept.saved and self.host.rooms is not None:
            self.host.rooms.score_saved(record.game_id)
        if kept.flag_id is not None:
            self.host.metrics.child(self.host.metrics.flags, "outlier_score").inc()
        if self.host.webhooks is not None and kept.saved:
            await self._tell(record, session_id, verdict.score, kept.flag_id, now)
        return ResultOutcome(
            True,
            score=verdict.score,
            saved=kept.saved,
            held=kept.held,
            held_reason=kept.held_reason,
            receipt=self._receipt(record, kept, verdict.score, digest, now),
            log_index=kept.log_index,
        )

    def _receipt(
        self,
        record: SessionRecord,
        kept: SavedResult,
        score: int,
        digest: bytes,
        now: int,
    ) -> str | None:
        """The signed receipt of a kept result (None for a guest's, which is not kept)."""
        if not kept.saved or kept.log_index is None or record.user_id is None:
            return None
        assert kept.salt is not None
        assert kept.name is not None
        return make_receipt(
            self.host.keys,
            session_id=bytes.fromhex(record.session_id),
            user_id=record.user_id,
            game_id=record.game_id,
            saved_at=now,
            score=score,
            started_at=kept.started_at if kept.started_at is not None else record.started_at,
            ended_at=kept.ended_at if kept.ended_at is not None else now,
            log_index=kept.log_index,
            points_digest=digest,
            salt=kept.salt,
            name=kept.name,
        )

    async def _tell(
        self, record: SessionRecord, session_id: str, score: int, flag_id: int | None, now: int
    ) -> None:
        """Tell organisers (--webhook) of a flag this result raised, or of a new first place:
        the board's first entry is now this session's."""
        webhooks = self.host.webhooks
        assert webhooks is not None
        if flag_id is not None:
            webhooks.flag(flag_id, "outlier_score", record.game_id, f"user {record.user_id}")
            return
        top = await self.host.store.leaderboard(record.game_id, now, limit=1, with_sessions=True)
        if top and top[0].get("session_id") == session_id:
            settings = self.host.games.get(record.game_id)
            title = (settings.title if settings else None) or record.game_id
            webhooks.first_place(record.game_id, title, str(top[0]["name"]), score)

    async def _record(self, session_id: str) -> SessionRecord | None:
        live = self.host.sessions.get(session_id)
        if live is not None:
            return live.record()
        return await self.host.store.session(session_id)

    async def _reject(
        self,
        reason: ResultReason,
        submitter: Peer,
        record: SessionRecord | None,
        detail: dict[str, object],
    ) -> ResultOutcome:
        """Refuse a submission; flag the submitter for the reasons that flag (see `submit`).

        A failure is charged to the submitter's address the moment it is decided, before its
        flag is written: this node's count first, with no await in between (failures sent at
        once are counted one by one), then every node's (the database's `attempts`). Past the
        budget it is refused (RateLimitedError) instead of flagged. Honest submissions are
        never charged, however many arrive together.
        """
        if not reason.flags_account:
            return ResultOutcome(False, reason=str(reason))
        if submitter.address is not None:
            await charge_shared(
                self.host.store,
                [(self.host.limits.failed_submissions, submitter.address)],
                trio.current_time(),
                self.host.clock.now_ms(),
            )
        if record is not None:
            detail = {
                **detail,
                "session_owner_user_id": record.user_id,
                "submitted_by_owner": submitter.user_id is not None
                and submitter.user_id == record.user_id,
            }
        flag_id = await self.host.flag(
            f"submission:{reason}",
            peer=submitter,
            game_id=record.game_id if record is not None else None,
            session_id=record.session_id if record is not None else None,
            detail={**detail, "submitted_from": submitter.address},
            budgeted=False,  # failed submissions have their budget (charged above)
        )
        return ResultOutcome(False, reason=str(reason), flag_id=flag_id)
