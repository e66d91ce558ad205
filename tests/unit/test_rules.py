"""The rules core, synchronously: push events with explicit times, check the actions."""

from __future__ import annotations

import gc
import random
import re

import pytest

from scoreserver.core import rules
from scoreserver.core.rules import (
    AccountFlagged,
    BurstRecorded,
    EndReason,
    GameEnded,
    GameSession,
    GameSettings,
    IssuedPoint,
    IssuedPoints,
    PointAccepted,
    PointRejected,
    RejectReason,
    ResultReason,
    SessionRecord,
    SessionState,
    SubmissionAccepted,
    SubmissionRejected,
    SubmittedPoint,
    check_submission,
)

T0 = 1_700_000_000_000  # server time of game_start
CLIENT_T0 = 1_699_999_990_000  # the player's clock is 10 s behind


def make(**overrides: int) -> GameSession:
    settings = GameSettings(**{"duration_ms": 30_000, **overrides})
    return GameSession(settings, T0, CLIENT_T0)


def point_at(session: GameSession, server_ms: int, skew: int = 0) -> tuple[object, ...]:
    """A point sent at server time `server_ms` by a player whose clock agrees (plus `skew`)."""
    return session.receive_point(server_ms - session.offset_ms + skew, server_ms)


class TestPoints:
    def test_valid_points_get_consecutive_seq_and_server_time(self) -> None:
        session = make()
        first = point_at(session, T0 + 100)
        second = point_at(session, T0 + 600)
        assert first == (PointAccepted(1, T0 + 100, T0 + 100 - session.offset_ms),)
        assert second == (PointAccepted(2, T0 + 600, T0 + 600 - session.offset_ms),)

    def test_offset_relates_the_clocks(self) -> None:
        assert make().offset_ms == T0 - CLIENT_T0

    def test_point_at_or_after_the_end_is_game_over(self) -> None:
        session = make()
        (at_end,) = point_at(session, T0 + 30_000)
        assert isinstance(at_end, PointRejected) and at_end.reason is RejectReason.GAME_OVER
        (last_ms,) = point_at(session, T0 + 29_999)
        assert isinstance(last_ms, PointAccepted)

    def test_point_before_the_start_is_game_over(self) -> None:
        session = make()
        (early,) = session.receive_point(CLIENT_T0, T0 - 1)
        assert isinstance(early, PointRejected) and early.reason is RejectReason.GAME_OVER

    @pytest.mark.parametrize("skew", [1001, -1001, 60_000])
    def test_clock_off_by_more_than_latency_is_rejected(self, skew: int) -> None:
        session = make(latency_ms=1000)
        (action,) = point_at(session, T0 + 5000, skew=skew)
        assert isinstance(action, PointRejected) and action.reason is RejectReason.CLOCK
        assert session.seq == 0

    @pytest.mark.parametrize("skew", [1000, -1000, 0, 999])
    def test_clock_within_latency_is_accepted(self, skew: int) -> None:
        session = make(latency_ms=1000)
        (action,) = point_at(session, T0 + 5000, skew=skew)
        assert isinstance(action, PointAccepted)

    def test_points_after_the_game_ended_are_game_over(self) -> None:
        session = make()
        assert session.expire(T0 + 30_000) == (GameEnded(EndReason.TIME_UP, T0 + 30_000),)
        (action,) = point_at(session, T0 + 1000)
        assert isinstance(action, PointRejected) and action.reason is RejectReason.GAME_OVER


class TestBursts:
    def test_threshold_points_fit_in_a_window_the_next_is_a_burst(self) -> None:
        session = make(burst_threshold=3, burst_window_ms=1000, burst_limit=5)
        for n in range(3):
            assert isinstance(point_at(session, T0 + 100 + n)[0], PointAccepted)
        actions = point_at(session, T0 + 200)
        assert actions == (
            PointRejected(RejectReason.BURST, T0 + 200, T0 + 200 - session.offset_ms),
            BurstRecorded(T0 + 200),
        )
        assert session.seq == 3

    def test_the_window_slides(self) -> None:
        session = make(burst_threshold=2, burst_window_ms=1000, burst_limit=5)
        point_at(session, T0 + 100)
        point_at(session, T0 + 200)
        assert point_at(session, T0 + 1099)[0].reason is RejectReason.BURST  # type: ignore[union-attr]
        # At +1100 the point at +100 has left the window (window is (now-1000, now]).
        assert isinstance(point_at(session, T0 + 1100)[0], PointAccepted)

    def test_rejected_points_do_not_fill_the_window(self) -> None:
        session = make(burst_threshold=2, burst_window_ms=1000, burst_limit=10)
        point_at(session, T0 + 100)
        point_at(session, T0 + 200)
        for n in range(5):
            point_at(session, T0 + 300 + n)
        assert isinstance(point_at(session, T0 + 1150)[0], PointAccepted)

    def test_more_bursts_than_the_limit_in_the_period_end_the_game_and_flag(self) -> None:
        session = make(
            burst_threshold=1, burst_window_ms=1000, burst_limit=2, burst_period_ms=10_000
        )
        point_at(session, T0 + 100)
        assert len(point_at(session, T0 + 110)) == 2  # burst 1
        assert len(point_at(session, T0 + 120)) == 2  # burst 2: at the limit, not over it
        actions = point_at(session, T0 + 130)  # burst 3: over the limit
        kinds = [type(a) for a in actions]
        # Four points 10 ms apart are under the human floor too, but three intervals are too
        # few to judge timing on (timing.FLOOR_MIN_INTERVALS): the burst flag alone.
        assert kinds == [PointRejected, BurstRecorded, AccountFlagged, GameEnded]
        flagged = actions[2]
        assert isinstance(flagged, AccountFlagged) and flagged.reason == "burst_limit"
        assert flagged.detail["burst_times"] == [T0 + 110, T0 + 120, T0 + 130]
        assert actions[3] == GameEnded(EndReason.BURST_LIMIT, T0 + 130)
        assert session.state is SessionState.VOIDED  # ended early: never submitted
        assert session.burst_times == [T0 + 110, T0 + 120, T0 + 130]

    def test_bursts_spread_beyond_the_period_do_not_end_the_game(self) -> None:
        # No human floor: a pair after a long pause would otherwise be a busy page's bunch
        # (test_timing.py), spread across the pause on the player's clock.
        session = make(
            burst_threshold=1,
            burst_window_ms=100,
            burst_limit=1,
            burst_period_ms=1000,
            human_floor_ms=0,
        )
        for second in range(5):
            base = T0 + second * 1500
            point_at(session, base)
            assert len(point_at(session, base + 10)) == 2  # one burst each 1.5 s
        assert session.state is SessionState.RUNNING
        assert len(session.burst_times) == 5

    @staticmethod
    def _play(session: GameSession, stamps: list[int], delay: int = 50) -> list[object]:
        """Each point stamped at `stamps[n]` (server time) and arriving `delay` ms later."""
        actions: list[object] = []
        for at in stamps:
            actions.extend(session.receive_point(at - session.offset_ms, at + delay))
        return actions

    def test_a_busy_pages_bunch_makes_no_burst(self) -> None:
        """A player 100 ms apart whose page is busy from +1,000 to +1,800 ms: the 8 taps
        made meanwhile are stamped and sent together when it ends, a millisecond apart. As
        stamped, the second after holds 8 + 10 points; spread across the pause (where they
        were made), no second holds more than 10. Default settings."""
        taps = [T0 + 100 * n for n in range(1, 50)]
        stamps, last = [], 0
        for tap in taps:
            at = T0 + 1_800 if T0 + 1_000 <= tap < T0 + 1_800 else tap
            last = max(at, last + 1)
            stamps.append(last)
        assert sum(1 for t in stamps if T0 + 1_800 <= t < T0 + 2_800) == 8 + 10
        actions = self._play(make(), stamps)
        assert not [a for a in actions if not isinstance(a, PointAccepted)]

    def test_a_bunch_no_pause_explains_still_bursts(self) -> None:
        """13 points a millisecond apart after a 2 s pause (more than one long task holds), and
        bunches of 9 after pauses that explain each but average 16 a second: bursts."""
        session = make()
        clump = [T0 + 2_000 + n for n in range(13)]
        assert any(isinstance(a, BurstRecorded) for a in self._play(session, clump))
        session, stamps, at = make(), [], T0
        for _ in range(6):
            at += 9 * 60 + 5
            stamps.extend(at + n for n in range(9))
            at += 9
        assert any(isinstance(a, BurstRecorded) for a in self._play(session, stamps))

    def test_hostile_stamps_keep_the_burst_window_in_order(self) -> None:
        """Stamps at the bounds a point may carry (the whole latency allowance either side of
        arrival), backwards, repeated, bunched and spread, 3,000 random games on the default
        settings: no exception, and the burst window (with bunches spread) always in order,
        which the window's bisections depend on."""
        rng = random.Random(63)
        for _ in range(3_000):
            session = make()
            latency = session.settings.latency_ms
            now = T0
            for _ in range(rng.randint(1, 60)):
                now += rng.choice((0, 1, 2, 59, 60, 61, 500, 1_000, rng.randint(0, 3_000)))
                skew = rng.choice((-latency, latency, 0, -1, 1, rng.randint(-latency, latency)))
                session.receive_point(now - session.offset_ms + skew, now)
                window = session._window
                assert window == sorted(window)
            assert session.state in (SessionState.RUNNING, SessionState.ENDED, SessionState.VOIDED)

    def test_burst_limit_zero_ends_the_game_on_the_first_burst(self) -> None:
        session = make(burst_threshold=1, burst_limit=0)
        point_at(session, T0 + 10)
        actions = point_at(session, T0 + 20)
        assert GameEnded(EndReason.BURST_LIMIT, T0 + 20) in actions


class TestEnding:
    def test_expire_before_the_end_does_nothing(self) -> None:
        session = make()
        assert session.expire(T0 + 29_999) == ()
        assert session.state is SessionState.RUNNING

    def test_game_ends_once(self) -> None:
        session = make()
        assert len(session.expire(T0 + 30_000)) == 1
        assert session.expire(T0 + 40_000) == ()
        assert session.shutdown(T0 + 40_000) == ()

    def test_shutdown_ends_a_running_game(self) -> None:
        session = make()
        assert session.shutdown(T0 + 5) == (GameEnded(EndReason.SERVER_SHUTDOWN, T0 + 5),)
        assert session.end_reason is EndReason.SERVER_SHUTDOWN

    @pytest.mark.parametrize(
        "bad",
        [{"duration_ms": 0}, {"burst_threshold": 0}, {"latency_ms": -1}, {"burst_window_ms": 0}],
    )
    def test_settings_are_validated(self, bad: dict[str, int]) -> None:
        with pytest.raises(ValueError):  # noqa: PT011
            GameSettings(**{"duration_ms": 1000, **bad})


# --- submission ---------------------------------------------------------------------------

OFFSET = 10_000


def record(**overrides: object) -> SessionRecord:
    points = IssuedPoints(IssuedPoint(seq, T0 + seq * 1000, f"point-{seq}") for seq in range(1, 6))
    values: dict[str, object] = {
        "session_id": "s1",
        "game_id": "demo",
        "user_id": 7,
        "settings": GameSettings(duration_ms=30_000, latency_ms=1000, submission_window_ms=60_000),
        "started_at": T0,
        "offset_ms": OFFSET,
        "start_token": "start",
        "end_token": "end",
        "ended_at": T0 + 30_000,
        "end_reason": EndReason.TIME_UP,
        "points": points,
    }
    values.update(overrides)
    return SessionRecord(**values)  # type: ignore[arg-type]


def seq_of(token: str) -> int | None:
    """Like tokens.peek_seq: the seq a token claims, trusted for lookup only."""
    digits = re.match(r"point-(\d+)", token)
    return int(digits.group(1)) if digits else None


def honest(seqs: range = range(1, 6)) -> list[SubmittedPoint]:
    return [SubmittedPoint(f"point-{s}", T0 + s * 1000 - OFFSET) for s in seqs]


def judge(
    rec: SessionRecord,
    points: list[SubmittedPoint],
    *,
    start: str = "start",
    end: str = "end",
    now: int = T0 + 31_000,
) -> object:
    return check_submission(rec, start, end, points, seq_of, now)


class TestSubmission:
    def test_an_honest_submission_scores_its_points(self) -> None:
        assert judge(record(), honest()) == SubmissionAccepted(5)

    def test_a_subset_scores_less(self) -> None:
        assert judge(record(), honest(range(1, 3))) == SubmissionAccepted(2)

    def test_an_empty_game_scores_zero(self) -> None:
        assert judge(record(points=IssuedPoints()), []) == SubmissionAccepted(0)

    def test_order_of_points_does_not_matter(self) -> None:
        assert judge(record(), list(reversed(honest()))) == SubmissionAccepted(5)

    def reason(self, verdict: object) -> ResultReason:
        assert isinstance(verdict, SubmissionRejected)
        return verdict.reason

    def test_wrong_start_token(self) -> None:
        assert self.reason(judge(record(), honest(), start="other")) is ResultReason.BAD_START_TOKEN

    def test_wrong_end_token(self) -> None:
        assert self.reason(judge(record(), honest(), end="other")) is ResultReason.BAD_END_TOKEN

    def test_point_token_as_end_token(self) -> None:
        assert self.reason(judge(record(), honest(), end="point-1")) is ResultReason.BAD_END_TOKEN

    def test_session_not_ended_is_bad_end_token(self) -> None:
        rec = record(end_token=None, ended_at=None, end_reason=None)
        assert self.reason(judge(rec, honest(), end="")) is ResultReason.BAD_END_TOKEN

    @pytest.mark.parametrize("end_reason", [EndReason.BURST_LIMIT, EndReason.SERVER_SHUTDOWN])
    def test_voided_sessions(self, end_reason: EndReason) -> None:
        rec = record(end_token=None, end_reason=end_reason)
        assert self.reason(judge(rec, honest())) is ResultReason.SESSION_VOIDED

    def test_already_submitted(self) -> None:
        assert (
            self.reason(judge(record(submitted=True), honest())) is ResultReason.ALREADY_SUBMITTED
        )

    def test_expired(self) -> None:
        verdict = judge(record(), honest(), now=T0 + 30_000 + 60_001)
        assert self.reason(verdict) is ResultReason.EXPIRED
        assert judge(record(), honest(), now=T0 + 30_000 + 60_000) == SubmissionAccepted(5)

    def test_forged_point_token(self) -> None:
        points = honest()
        points[2] = SubmittedPoint("point-3x", points[2].client_ts)
        assert self.reason(judge(record(), points)) is ResultReason.BAD_POINT_TOKEN

    def test_point_token_of_unissued_seq(self) -> None:
        points = [*honest(), SubmittedPoint("point-9", T0 + 9000 - OFFSET)]
        assert self.reason(judge(record(), points)) is ResultReason.BAD_POINT_TOKEN

    def test_non_point_token(self) -> None:
        points = [SubmittedPoint("start", T0)]
        assert self.reason(judge(record(), points)) is ResultReason.BAD_POINT_TOKEN

    def test_duplicated_point(self) -> None:
        points = [*honest(), honest()[0]]
        assert self.reason(judge(record(), points)) is ResultReason.DUPLICATE_POINT

    def test_shifted_timestamp(self) -> None:
        points = honest()
        points[1] = SubmittedPoint(points[1].token, points[1].client_ts + 1001)
        verdict = judge(record(), points)
        assert self.reason(verdict) is ResultReason.TIMING_MISMATCH
        assert isinstance(verdict, SubmissionRejected) and verdict.detail["seq"] == 2

    def test_swapped_timestamps(self) -> None:
        points = honest()
        points[0], points[4] = (
            SubmittedPoint(points[0].token, points[4].client_ts),
            SubmittedPoint(points[4].token, points[0].client_ts),
        )
        assert self.reason(judge(record(), points)) is ResultReason.TIMING_MISMATCH

    def test_timestamp_within_latency_is_fine(self) -> None:
        points = [SubmittedPoint(p.token, p.client_ts + 999) for p in honest()]
        assert judge(record(), points) == SubmissionAccepted(5)

    def test_tokens_cut_at_other_places_are_not_the_issued_ones(self) -> None:
        # Joined, these are the issued tokens' text; one by one they are not.
        points = honest()
        points[0] = SubmittedPoint("point-1point-", points[0].client_ts)
        points[1] = SubmittedPoint("2", points[1].client_ts)
        assert self.reason(judge(record(), points)) is ResultReason.BAD_POINT_TOKEN

    def test_the_in_order_check_agrees_with_the_point_by_point_one(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every kind of submission, in the issued order: the one-comparison path gives the
        verdict the point-by-point check gives."""
        ten = record(
            points=IssuedPoints(IssuedPoint(s, T0 + s * 1000, f"point-{s}") for s in range(1, 10))
        )
        base = honest(range(1, 10))
        cases: list[list[SubmittedPoint]] = [
            base,
            base[:4],
            base[1:],  # not starting at 1
            [*base, SubmittedPoint("point-9", base[-1].client_ts)],
            [base[0], base[0], *base[2:]],
            [
                SubmittedPoint(p.token, p.client_ts + 1001) if i == 6 else p
                for i, p in enumerate(base)
            ],
            [SubmittedPoint(p.token.upper(), p.client_ts) for p in base],
            [SubmittedPoint("point-\u00e9", p.client_ts) for p in base],
            [],
            base[:1],  # one point
            [*base, SubmittedPoint("point-10", base[-1].client_ts + 1000)],  # more than issued
            # The clock rule at its edges, on either side (the record's offset is not 0):
            # exactly the latency early or late is on time, a millisecond more is not.
            *(
                [
                    SubmittedPoint(p.token, p.client_ts + shift) if i == at else p
                    for i, p in enumerate(base)
                ]
                for at in (0, 4, 8)
                for shift in (-1001, -1000, 1000, 1001)
            ),
            [SubmittedPoint(p.token, p.client_ts + 1000) for p in base],  # all late, on time
            [SubmittedPoint(p.token, p.client_ts - 1001) for p in base],  # all too early
        ]
        fast = [judge(ten, case) for case in cases]
        # The one-comparison path says yes exactly when the submission is the issued tokens
        # 1..n in order and every point is on time (otherwise the point-by-point one judges).
        in_order = [
            rules._all_issued_in_order(ten.points, case, OFFSET, 1000)  # noqa: SLF001
            for case in cases
        ]
        expected = [
            bool(case)
            and [p.token for p in case] == [f"point-{s}" for s in range(1, len(case) + 1)]
            and isinstance(verdict, SubmissionAccepted)
            for case, verdict in zip(cases, fast, strict=True)
        ]
        assert in_order == expected
        assert in_order.count(True) == 10  # whole, first 4, first 1, 6 on-time edges, all late
        monkeypatch.setattr(rules, "_all_issued_in_order", lambda *args: False)
        assert fast == [judge(ten, case) for case in cases]
        assert fast[0] == SubmissionAccepted(9)
        edges = fast[-14:-2]  # per place: 1001 early, 1000 early, 1000 late, 1001 late
        assert [isinstance(v, SubmissionAccepted) for v in edges] == [False, True, True, False] * 3
        assert fast[-2] == SubmissionAccepted(9)

    def test_tokens_that_join_into_the_issued_text_are_not_the_issued_tokens(self) -> None:
        """The in-order check compares one joined text: tokens cut at other places (same
        text, same count) must not pass for the issued ones."""
        issued = IssuedPoints([IssuedPoint(1, T0 + 1000, "ab"), IssuedPoint(2, T0 + 2000, "cd")])
        recut = [SubmittedPoint("a", T0 + 1000 - OFFSET), SubmittedPoint("bcd", T0 + 2000 - OFFSET)]
        verdict = judge(record(points=issued), recut)
        assert isinstance(verdict, SubmissionRejected)
        assert verdict.reason is ResultReason.BAD_POINT_TOKEN

    def test_issued_points_hold_nothing_the_collector_scans(self) -> None:
        """A live session keeps every token it issued until its result: what it keeps a point
        must be nothing the cyclic collector tracks (a tracked object a point made every
        collection scan all of them: pauses of 8-11 ms at 50 players), and reads back whole."""
        issued = IssuedPoints()
        for seq in range(1, 2001):
            issued.add(seq, T0 + seq, f"point-{seq}")
        assert not gc.is_tracked(issued.tokens)
        assert not gc.is_tracked(issued.server_ts)
        assert len(issued) == 2000
        assert issued[7] == IssuedPoint(7, T0 + 7, "point-7")
        assert 2000 in issued and 2001 not in issued and issued.get(2001) is None
        assert list(issued)[:3] == [1, 2, 3]
        assert IssuedPoints(issued.values()) == issued

    def test_tokens_claiming_seqs_never_issued_are_bad_tokens(self) -> None:
        """Hostile claims at the bounds reach the issued points' lookup: a seq of 0, -1,
        2**63, 10**30, one past the last, or none at all, alone or among honest points, is a
        bad point token at its index; more points than were issued are too."""
        ts = T0 + 1000 - OFFSET
        for claim in ("point-0", "point-6", f"point-{2**63}", f"point-{10**30}", "", "\x00"):
            alone = judge(record(), [SubmittedPoint(claim, ts)])
            assert alone == SubmissionRejected(ResultReason.BAD_POINT_TOKEN, {"index": 0})
            among = judge(record(), [*honest(range(1, 3)), SubmittedPoint(claim, ts)])
            assert among == SubmissionRejected(ResultReason.BAD_POINT_TOKEN, {"index": 2})
        minus = judge(record(), [SubmittedPoint("point-1", ts), SubmittedPoint("point--1", ts)])
        assert minus == SubmissionRejected(ResultReason.BAD_POINT_TOKEN, {"index": 1})
        too_many = judge(record(), [*honest(), SubmittedPoint("point-6", T0 + 6000 - OFFSET)])
        assert too_many == SubmissionRejected(ResultReason.BAD_POINT_TOKEN, {"index": 5})

    def test_flagging_reasons(self) -> None:
        assert not ResultReason.ALREADY_SUBMITTED.flags_account
        assert not ResultReason.EXPIRED.flags_account
        assert not ResultReason.ACCOUNT_BANNED.flags_account  # already decided by a person
        # A void game: the system voided it (shutdown, crash), or the rules did and flagged.
        assert not ResultReason.SESSION_VOIDED.flags_account
        quiet = (
            ResultReason.ALREADY_SUBMITTED,
            ResultReason.EXPIRED,
            ResultReason.ACCOUNT_BANNED,
            ResultReason.SESSION_VOIDED,
        )
        assert all(r.flags_account for r in ResultReason if r not in quiet)


def test_a_session_is_submitted_only_through_the_table() -> None:
    """The live session's one state field moves through core/lifecycle.py for a submission
    too: running sessions cannot be submitted, a refused one may be again, a saved one not."""
    from scoreserver.core.lifecycle import InvalidMove, Move, SessionState

    session = make()
    with pytest.raises(InvalidMove):
        session.submission(Move.SUBMIT)
    session.expire(T0 + 30_000)
    assert session.state is SessionState.ENDED
    session.submission(Move.SUBMIT)
    session.submission(Move.REFUSED)
    assert session.state is SessionState.ENDED
    session.submission(Move.SUBMIT)
    session.submission(Move.SAVED)
    assert session.state is SessionState.SUBMITTED
    with pytest.raises(InvalidMove):
        session.submission(Move.SUBMIT)
