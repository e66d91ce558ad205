"""trio: one nursery per game room, one task per game session.

A session task owns its session from `game_started` to `end_game`:

* the timer: a task of the session's own that sleeps until the deadline and then wakes the
  session through its inbox (`LiveSession.wake`), so that it never interrupts the handling of
  a point: a reply in flight when time is up still goes out, before `end_game`;
* the point inbox, a small bounded memory channel the connection handler sends into;
* the answers to the player, sent through `LiveSession.player` (re-pointed on `resume`);
* the end: when the task's loop is over, the session is over. It commits the session's end,
  clears the player's "running session" record, answers points still queued (`game_over`),
  then sends `end_game`, the session's last word. No other code path
  ends a session; the server's shutdown asks the task to end (`request_shutdown`).

The rules themselves are in `rules.py`; this module only carries out the actions they return.

Why one module of this size: a room's nursery and its sessions' tasks share their life
(start, end, shutdown, boards pushed to members); the rules they carry out are core/rules.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import trio

from scoreserver.core.rules import (
    AccountFlagged,
    Action,
    BurstRecorded,
    EndReason,
    GameEnded,
    GameSession,
    GameSettings,
    PointAccepted,
    PointRejected,
    RejectReason,
)
from scoreserver.errors import ConflictError, StoreError
from scoreserver.server.sessions import WAKE, LiveSession, Peer, Player, PointIn
from scoreserver.wire import protocol as wire
from scoreserver.wire.tokens import Purpose

if TYPE_CHECKING:
    from scoreserver.server.service import Service

logger = logging.getLogger(__name__)

INBOX_SIZE = 32
LEADERBOARD_PUSH_SIZE = 10
# At most one leaderboard push per room per interval: when a room full of players finishes at
# once, every saved score would otherwise broadcast to everyone (N players x N sends).
LEADERBOARD_PUSH_INTERVAL_S = 1.0


class Member(Protocol):
    """A connection in a room, as the room sees it."""

    async def send(self, text: str) -> bool: ...


@dataclass(eq=False, slots=True)
class Room:
    game_id: str
    nursery: trio.Nursery
    members: set[Member] = field(default_factory=set)
    last_top: list[wire.LeaderboardEntry] | None = None
    push_pending: bool = False
    last_push_at: float = float("-inf")


class Rooms:
    """The game rooms of the process and the sessions they run."""

    def __init__(self, service: Service):
        self.service = service
        self._rooms: dict[str, Room] = {}
        self._nursery: trio.Nursery | None = None
        self.closing = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def room(self, game_id: str) -> Room:
        room = self._rooms.get(game_id)
        if room is None:
            assert self._nursery is not None, "Rooms.run is not running"
            room = await self._nursery.start(self._run_room, game_id)
        return room

    async def _run_room(self, game_id: str, *, task_status: trio.TaskStatus[Room]) -> None:
        async with trio.open_nursery() as nursery:
            room = self._rooms.setdefault(game_id, Room(game_id, nursery))
            task_status.started(room)
            if room.nursery is nursery:
                await trio.sleep_forever()

    def rooms(self) -> list[Room]:
        return list(self._rooms.values())

    # -- sessions --

    async def start_session(
        self,
        room: Room,
        peer: Peer,
        player: Player,
        settings: GameSettings,
        client_ts: int,
        request_id: str | int | None,
    ) -> LiveSession:
        """Create a session and start its task; returns once `game_started` is sent.

        ConflictError if the player already has a running game of this kind. The (user, game)
        slot is claimed before anything awaits, and the database refuses a second running
        session too, so no interleaving of requests (nor a second process) runs two.
        """
        service = self.service
        slot = (peer.user_id, room.game_id) if peer.user_id is not None else None
        if slot is not None and slot in service.running_by_user:
            raise ConflictError("you already have a game of this kind running")
        now = service.clock.now_ms()
        session_bytes = os.urandom(16)
        session_id = session_bytes.hex()
        start_token = service.keys.sign(
            Purpose.START, session_bytes, peer.user_id, room.game_id, now
        )
        session = LiveSession(
            session_id=session_id,
            game_id=room.game_id,
            peer=peer,
            rules=GameSession(settings, now, client_ts),
            start_token=start_token,
            player=player,
            request_id=request_id,
        )
        session.inbox_send, session.inbox_receive = trio.open_memory_channel[PointIn](INBOX_SIZE)
        # Registered before the first await: the slot is claimed, and a shutdown that begins
        # while the start is being committed finds this session and ends it properly.
        service.sessions[session_id] = session
        if slot is not None:
            service.running_by_user[slot] = session
        try:
            # Committed before the start token is handed out: a token that outlives a crash
            # always names a known session (voided at restart), never an unknown one.
            await service.store.add_session(
                session_id,
                room.game_id,
                peer.user_id,
                peer.address if peer.user_id is None else None,
                peer.user_agent,
                settings,
                now,
                client_ts,
                start_token,
                service.node.node_id if service.node is not None else None,
            )
        except BaseException:
            self._release(session)
            service.sessions.pop(session_id, None)
            session.finished.set()
            raise
        await room.nursery.start(self._run_session, session, session_bytes)
        return session

    async def _run_session(
        self,
        session: LiveSession,
        session_bytes: bytes,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await self._session_life(session, session_bytes, task_status)
        except Exception:
            # A bug: this session ends as a shutdown ends it (its row voided, the player told
            # with end_game and free to start again); the room and every other session go on.
            logger.exception("session %s failed; ending it", session.session_id)
            if session.end_message is None:
                with trio.CancelScope(shield=True):
                    try:
                        now = self.service.clock.now_ms()
                        session.rules.shutdown(now)
                        await self._end(
                            session, session_bytes, GameEnded(EndReason.SERVER_SHUTDOWN, now)
                        )
                    except Exception:
                        logger.exception("session %s: its end failed too", session.session_id)

    async def _session_life(
        self, session: LiveSession, session_bytes: bytes, task_status: trio.TaskStatus[None]
    ) -> None:
        service = self.service
        rules = session.rules
        assert session.inbox_receive is not None
        started = False
        try:
            await session.send(
                wire.encode(
                    wire.GameStarted(
                        id=session.request_id,
                        session_id=session.session_id,
                        start_token=session.start_token,
                        duration_ms=rules.settings.duration_ms,
                        server_ts=rules.started_at,
                    )
                )
            )
            task_status.started()
            started = True
            logger.debug("session %s started in %s", session.session_id, session.game_id)
            # The timer ends the wait for the next point, never the handling of one: a reply
            # in flight when the time is up is still sent, before end_game. It wakes this task
            # through the inbox; nothing on the point path is a cancel scope (a cancelled
            # scope stays cancelled: a deadline that passed just as a point was handed over
            # cut that point's answer off, seen once in a few thousand games under overload).
            deadline = trio.current_time() + rules.remaining_ms(service.clock.now_ms()) / 1000
            session.deadline = deadline
            inbox = session.inbox_receive
            async with trio.open_nursery() as timer:
                timer.start_soon(_alarm, session, deadline)
                while session.running and not session.shutting_down:
                    # Points that queued up meanwhile are judged together, in order, by when
                    # they arrived: under load a session keeps pace with its player.
                    time_is_up = trio.current_time() >= deadline
                    run = _take_queued(inbox)
                    if not run:
                        if time_is_up:
                            break
                        # Only this task closes the inbox (at the end): this wait ends with
                        # a point, or with the timer's or a shutdown's wake-up.
                        run = [await inbox.receive(), *_take_queued(inbox)]
                    if WAKE in run:
                        run = [p for p in run if p is not WAKE]
                        if not run:
                            continue  # woken: look at the time and at shutting_down
                    # A writer that fell behind holds the session here (backpressure: its
                    # inbox fills, then the player's socket); at once while it keeps up.
                    await service.store.room_for_writes()
                    await self._carry_out_run(
                        session,
                        session_bytes,
                        [
                            (rules.receive_point(p.client_ts, p.received_at), p.request_id)
                            for p in run
                        ],
                    )
                    if time_is_up:
                        break  # what was queued when time ran out is judged; the rest is late
                timer.cancel_scope.cancel()
            now = service.clock.now_ms()
            if session.running:
                if session.shutting_down:
                    actions = rules.shutdown(now)
                else:
                    # The timer is the authority: it fired, so the time is up.
                    actions = rules.expire(max(now, rules.ends_at))
                ended = await self._carry_out(session, session_bytes, actions, None)
                if ended is not None:
                    with trio.CancelScope(shield=True):
                        await self._end(session, session_bytes, ended)
        finally:
            with trio.CancelScope(shield=True):
                await self._drain_inbox(session)
            if session.running:
                # Only reached if the task failed or was cancelled from outside (a bug or a
                # forced stop): make sure nobody stays locked out of a new game.
                self._release(session)
                self.service.sessions.pop(session.session_id, None)
            session.finished.set()
            if not started:
                task_status.started()

    async def _carry_out_run(
        self,
        session: LiveSession,
        session_bytes: bytes,
        judged: list[tuple[tuple[Action, ...], str | int | None]],
    ) -> None:
        """Carry out the actions of a run of points, in order, each accepted one with its
        token (a MAC under the current key: tokens.KeyRing.point, about a microsecond)."""
        keys = self.service.keys
        game = session.game_id.encode("utf-8")
        tokens = iter(
            [
                keys.point(session_bytes, session.user_id, game, action.server_ts, action.seq)
                for actions, _ in judged
                for action in actions
                if isinstance(action, PointAccepted)
            ]
        )
        ended = None
        for actions, request_id in judged:
            # Points after an end in this run were judged after it (game_over): they are
            # answered too, and then the game ends with end_game, the session's last word.
            ended = (
                await self._carry_out(session, session_bytes, actions, request_id, tokens) or ended
            )
        if ended is not None:
            with trio.CancelScope(shield=True):
                await self._end(session, session_bytes, ended)

    async def _carry_out(
        self,
        session: LiveSession,
        session_bytes: bytes,
        actions: tuple[Action, ...],
        request_id: str | int | None,
        tokens: Iterator[str] | None = None,
    ) -> GameEnded | None:
        """Carry out one point's (or the timer's) actions; `tokens` holds the point tokens,
        already signed, for the PointAccepted actions among them. An end is returned, not
        carried out: the caller ends the game (`_end`) once everything before it is answered."""
        service = self.service
        store = service.store
        count_point = service.metrics.count_point
        for action in actions:
            if isinstance(action, PointAccepted):
                count_point("accepted")
                assert tokens is not None, "accepted points come through _carry_out_run"
                token = next(tokens)
                session.points.add(action.seq, action.server_ts, token)
                store.add_point_soon(
                    session.session_id,
                    action.seq,
                    action.server_ts,
                    action.client_ts,
                    token,
                )
                await session.send(
                    wire.encode(
                        wire.PointAccepted(
                            id=request_id, token=token, server_ts=action.server_ts, seq=action.seq
                        )
                    )
                )
            elif isinstance(action, PointRejected):
                count_point(action.reason)
                store.add_rejected_point_soon(
                    session.session_id,
                    action.server_ts,
                    action.client_ts,
                    str(action.reason),
                )
                await session.send(
                    wire.encode(
                        wire.PointRejected(
                            id=request_id, reason=str(action.reason), server_ts=action.server_ts
                        )
                    )
                )
            elif isinstance(action, BurstRecorded):
                store.add_burst_soon(session.session_id, action.at_ms)
            elif isinstance(action, AccountFlagged):
                with trio.CancelScope(shield=True):
                    try:
                        await service.flag(
                            action.reason,
                            peer=session.peer,
                            game_id=session.game_id,
                            session_id=session.session_id,
                            detail=dict(action.detail),
                        )
                    except StoreError:
                        # The writer failed: the server is stopping, and the end that would
                        # reveal this flag is voided with it (see _end).
                        logger.error("session %s: flag not committed", session.session_id)
            elif isinstance(action, GameEnded):
                return action
        return None

    async def _end(self, session: LiveSession, session_bytes: bytes, ended: GameEnded) -> None:
        service = self.service
        end_token = None
        if ended.reason is EndReason.TIME_UP:
            end_token = service.keys.sign(
                Purpose.END, session_bytes, session.user_id, session.game_id, ended.at_ms
            )
        word = str(ended.reason)
        try:
            moved = await service.store.end_session(
                session.session_id, end_token, ended.at_ms, str(ended.reason)
            )
            if not moved:
                # Not ours any more: another node found this one gone (a stall past the lease)
                # and voided the game. Its end is what every node reports: crashed, no token.
                logger.warning("session %s was voided elsewhere: not ending it", session.session_id)
                end_token, word = None, "crashed"
                session.rules.shutdown(ended.at_ms)
                ended = GameEnded(EndReason.SERVER_SHUTDOWN, ended.at_ms)
        except StoreError as exc:
            # The writer is gone or stalled (the server is stopping): the end cannot be kept,
            # so no end token goes out. The player is told the game is void, not left waiting;
            # the row stays `running` and is voided at the next start.
            logger.error("session %s: its end could not be committed (%s)", session.session_id, exc)
            end_token = None
            ended = GameEnded(EndReason.SERVER_SHUTDOWN, ended.at_ms)
            word = str(ended.reason)
            session.rules.end_reason = EndReason.SERVER_SHUTDOWN
        session.end_token = end_token
        self._release(session)
        # Points that arrived before the end but were still queued are answered (game_over)
        # before end_game, so that end_game is the session's last word to its player.
        await self._drain_inbox(session)
        if ended.reason is not EndReason.TIME_UP:
            service.sessions.pop(session.session_id, None)
        session.end_message = wire.EndGame(
            reason=word,
            server_ts=ended.at_ms,
            end_token=end_token,
            session_id=session.session_id,
        )
        logger.info("session %s ended: %s", session.session_id, ended.reason)
        # Bounded by the connection's send timeout.
        await session.send(wire.encode(session.end_message))

    def _release(self, session: LiveSession) -> None:
        if session.user_id is not None:
            key = (session.user_id, session.game_id)
            if self.service.running_by_user.get(key) is session:
                del self.service.running_by_user[key]
        if session.inbox_send is not None:
            session.inbox_send.close()

    async def _drain_inbox(self, session: LiveSession) -> None:
        """Answer points that were queued when the session ended, then close the inbox."""
        receive = session.inbox_receive
        if receive is None:
            return
        while queued := _take_queued(receive):
            for point in queued:
                if point is WAKE:
                    continue
                # Bounded by the connection's own send timeout (a peer that does not read is
                # dropped); a tighter bound here would lose answers under load.
                await session.send(
                    wire.encode(
                        wire.PointRejected(
                            id=point.request_id,
                            reason=RejectReason.GAME_OVER,
                            server_ts=point.received_at,
                        )
                    )
                )
        receive.close()

    def end_all_sessions(self) -> list[LiveSession]:
        """Ask every running session to end (as a shutdown ends them), without waiting; the
        sessions asked. Also for a node found gone: its sessions are void already."""
        live = [s for s in self.service.sessions.values() if s.running]
        for session in live:
            session.request_shutdown()
        return live

    async def shutdown_sessions(self, timeout_s: float = 5.0) -> None:
        """End every running session with `server_shutdown` and wait for their tasks."""
        self.closing = True
        live = self.end_all_sessions()
        with trio.move_on_after(timeout_s):
            for session in live:
                await session.finished.wait()

    # -- leaderboards --

    def score_saved(self, game_id: str) -> None:
        """A score was saved for `game_id`: push the room's top entries if they changed."""
        room = self._rooms.get(game_id)
        if room is not None:
            self._schedule_push(room)

    def boards_may_have_changed(self) -> None:
        """Something other than a score may have changed boards (a ban, a flag, a hidden
        score, a game's settings, a ban running out): every watched room re-reads its top and
        pushes it where it changed."""
        for room in self._rooms.values():
            self._schedule_push(room)

    def _schedule_push(self, room: Room) -> None:
        if not room.members or room.push_pending:
            return
        room.push_pending = True
        room.nursery.start_soon(self._push_leaderboard, room)

    async def _push_leaderboard(self, room: Room) -> None:
        wait = room.last_push_at + LEADERBOARD_PUSH_INTERVAL_S - trio.current_time()
        if wait > 0:
            await trio.sleep(wait)  # saves meanwhile join this push (push_pending is set)
        room.last_push_at = trio.current_time()
        try:
            now = self.service.clock.now_ms()
            rows = await self.service.store.leaderboard(
                room.game_id, now, limit=LEADERBOARD_PUSH_SIZE
            )
        except Exception:
            logger.exception("leaderboard push for %s failed", room.game_id)
            return
        finally:
            room.push_pending = False
        entries = [
            wire.LeaderboardEntry(
                rank=row["rank"], user_id=row["user_id"], name=row["name"], score=row["score"]
            )
            for row in rows
        ]
        if entries == room.last_top:
            return
        room.last_top = entries
        frame = wire.encode(wire.Leaderboard(game_id=room.game_id, entries=entries))
        await _broadcast(list(room.members), frame)


async def _alarm(session: LiveSession, deadline: float) -> None:
    """The session's timer: at the deadline, wake the session (it ends the game)."""
    await trio.sleep_until(deadline)
    session.wake()


def _take_queued(inbox: trio.MemoryReceiveChannel[PointIn]) -> list[PointIn]:
    """What is waiting in the inbox now, without waiting."""
    queued = []
    while True:
        try:
            queued.append(inbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return queued


async def _broadcast(members: list[Member], frame: str) -> None:
    async def one(member: Member) -> None:
        with trio.move_on_after(5):
            await member.send(frame)

    async with trio.open_nursery() as nursery:
        for member in members:
            nursery.start_soon(one, member)
