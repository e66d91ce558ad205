"""A game session as this process holds it while it runs, and who asked for it.

`LiveSession` is the shell's side of a session: the rules' state machine (`core.rules`),
the tokens issued, the player's connection (re-pointed on `resume`), the point inbox of its
task (`rooms.py`). `Peer` is the identity and origin of a request. Both are here, below the
service and the rooms, so that neither imports the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import trio

from scoreserver.core.lifecycle import SessionState
from scoreserver.core.rules import GameSession, IssuedPoints, SessionRecord
from scoreserver.wire import protocol as wire


@dataclass(slots=True)
class Peer:
    """The identity and origin of a request, for checks and for flags."""

    user_id: int | None = None
    name: str | None = None
    address: str | None = None
    user_agent: str | None = None


class Player(Protocol):
    """The sending side of a player's connection."""

    async def send(self, text: str) -> bool:
        """Send one frame; False if the connection is gone. Never raises for a dead peer."""
        ...


@dataclass(frozen=True, slots=True)
class PointIn:
    client_ts: int
    received_at: int
    request_id: str | int | None


# Not a point: what `LiveSession.wake` puts in a session's inbox (no point has a negative
# receipt time), taken out again by the session task.
WAKE = PointIn(-1, -1, None)


@dataclass(eq=False, slots=True)
class LiveSession:
    """A session in this process: its rules, its tokens, its player, its inbox."""

    session_id: str
    game_id: str
    peer: Peer
    rules: GameSession
    start_token: str
    player: Player | None
    request_id: str | int | None = None
    end_token: str | None = None
    points: IssuedPoints = field(default_factory=IssuedPoints)
    inbox_send: trio.MemorySendChannel[PointIn] | None = None
    inbox_receive: trio.MemoryReceiveChannel[PointIn] | None = None
    deadline: float = math.inf  # trio time when the session's timer wakes it (rooms.py)
    shutting_down: bool = False
    finished: trio.Event = field(default_factory=trio.Event)
    end_message: wire.EndGame | None = None  # the session's end_game, once sent

    @property
    def user_id(self) -> int | None:
        return self.peer.user_id

    @property
    def running(self) -> bool:
        return self.rules.state is SessionState.RUNNING

    @property
    def submitted(self) -> bool:
        return self.rules.state is SessionState.SUBMITTED

    def record(self) -> SessionRecord:
        return SessionRecord(
            session_id=self.session_id,
            game_id=self.game_id,
            user_id=self.peer.user_id,
            settings=self.rules.settings,
            started_at=self.rules.started_at,
            offset_ms=self.rules.offset_ms,
            start_token=self.start_token,
            end_token=self.end_token,
            ended_at=self.rules.ended_at,
            end_reason=self.rules.end_reason,
            points=self.points,
            submitted=self.submitted,
        )

    def request_shutdown(self) -> None:
        """End the game when its task next looks at its inbox (now, if it waits for a point):
        the handling of points already taken is never cut short."""
        self.shutting_down = True
        self.wake()

    def wake(self) -> None:
        """Wake the session's task if it waits for a point, so that it looks at the time and
        at `shutting_down`. Through its inbox, so nothing is ever cancelled: a task busy with
        points (its inbox full, or not waiting) looks at both before it waits again."""
        if self.inbox_send is not None:
            try:
                self.inbox_send.send_nowait(WAKE)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    async def send(self, text: str) -> None:
        if self.player is not None:
            await self.player.send(text)
