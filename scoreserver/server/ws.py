"""trio-websocket handler: a connection's life and the dispatch of its messages.

Each connection is one task (trio-websocket gives each its own). It reads frames one at a time,
decodes them with `protocol.decode_client`, and answers directly; points are handed to the
running session's task through its inbox, and that task answers them. Decode failures and
refused requests become `error` frames and the connection stays open; a bug in a handler is
logged and closes that one connection (1011), never the server.

Why one module of this size: a connection's admission, limits, strikes, hand-over and
dispatch are one state (`Connection`) that every message touches; the work each message asks
for lives elsewhere (service, rooms, submissions).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from scoreserver.core.rules import GameSettings, RejectReason
from scoreserver.errors import AuthError, ConflictError, ProtocolError, RateLimitedError, TokenError
from scoreserver.server.rooms import Room, Rooms
from scoreserver.server.service import Service
from scoreserver.server.sessions import LiveSession, Peer, PointIn
from scoreserver.server.transport import (
    ClientAddresses,
    MessageHandOver,
    ObservedStream,
    Streams,
    quicken,
)
from scoreserver.wire import protocol as wire
from scoreserver.wire.addresses import AddressError
from scoreserver.wire.tokens import Purpose

logger = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10.0
SEND_WATCH_S = 1.0  # how often the send watchdog looks: a stuck send ends within 10-11 s
# How long a `resume` of a session that is ending waits for its end before asking the database.
RESUME_WAIT_S = 10.0


# The longest frame the reader decodes to see whether it is a point (a page's are under 100
# bytes); anything longer goes to the handler, which decodes it once.
POINT_FRAME_MAX = 512


@dataclass(slots=True)
class Limits:
    """Per-connection and per-process limits; 0 turns a limit off."""

    max_msg_rate: float = 60.0  # messages per second, sustained
    msg_burst: int = 120  # the token bucket's depth
    # Rate-limited messages before closing with 1008, counted until the sender's bucket is
    # full again (ws.GameSocket._forgive).
    rate_strikes: int = 120
    max_conns_per_addr: int = 256
    max_conns: int = 20_000
    max_message_bytes: int = 256 * 1024
    handshake_timeout_s: float = 10.0
    keepalive_interval_s: float = 20.0  # 0: no pings
    keepalive_timeout_s: float = 20.0
    allowed_origins: tuple[str, ...] = ()  # besides same-host origins


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; time is trio's clock."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = trio.current_time()

    def take(self) -> bool:
        now = trio.current_time()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def give_back(self) -> None:
        """Undo the last `take` (its message is taken again by the path that handles it)."""
        self.tokens += 1


@dataclass(eq=False, slots=True)
class Connection:
    """One player's socket and what it has done so far."""

    ws: WebSocketConnection
    peer: Peer
    stream: ObservedStream
    room: Room | None = None
    session: LiveSession | None = None
    bucket: TokenBucket | None = None
    strikes: int = 0
    closed: bool = False
    # Sends under way, and since when none of them has finished (the send watchdog's clock).
    sending: int = 0
    stuck_since: float = 0.0
    # trio-websocket's message hand-over, ours (transport.quicken).
    hand_over: MessageHandOver | None = None
    # A frame the reader decoded but left to the handler (`_take_point`), with its message:
    # the handler, which gets that very frame next, does not decode it again.
    decoded: tuple[str | bytes, wire.AnyClientMessage] | None = None

    async def send(self, text: str) -> bool:
        """Send one frame; False if the connection is gone. A send that makes no progress for
        SEND_TIMEOUT_S is ended by the send watchdog (`GameSocket.watch_sends`), which drops
        the transport: no cancel scope a send (they cost the hot path ~10 us each)."""
        if self.closed:
            return False
        if not self.sending:
            self.stuck_since = trio.current_time()
        self.sending += 1
        try:
            await self.ws.send_message(text)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
            return False
        finally:
            self.sending -= 1
            self.stuck_since = trio.current_time()  # a send finished: progress
        return not self.closed

    async def drop_if_stuck(self, now: float) -> bool:
        """The peer does not read: it must not hold up its session or anyone else. A send cut
        short may have left half a frame, so nothing more is written (a close frame after half
        a frame would be garbage): the transport is dropped, and the stuck send fails."""
        if not self.sending or now - self.stuck_since < SEND_TIMEOUT_S:
            return False
        logger.info("dropping connection from %s: not reading", self.peer.address)
        self.closed = True
        await self.stream.drop()
        return True


class GameSocket:
    """The game socket: every connection's handler, and the registry of connections."""

    def __init__(
        self,
        service: Service,
        rooms: Rooms,
        limits: Limits,
        addresses: ClientAddresses | None = None,
    ):
        self.service = service
        self.rooms = rooms
        self.limits = limits
        self.addresses = addresses or ClientAddresses()
        self.streams = Streams()  # the accepted connections (transport.py)
        self.connections: set[Connection] = set()
        self._per_address: Counter[str] = Counter()
        self._admitted = 0  # handshakes past the caps and not yet closed

    # -- a connection's life --

    async def handle(self, request: WebSocketRequest) -> None:
        stream = self.streams.of(request)
        try:
            address = self.addresses.resolve(
                stream.transport.peer, stream.transport.proxy_source, request.headers
            )
        except AddressError as exc:
            logger.info("refused a game socket from %s: %s", stream.peer, exc)
            await request.reject(400, body=str(exc).encode())
            return
        limits = self.limits
        if (limits.max_conns and self._admitted >= limits.max_conns) or (
            limits.max_conns_per_addr and self._per_address[address] >= limits.max_conns_per_addr
        ):
            await request.reject(429, body=b"too many connections")
            return
        # Counted before the first await: handshakes sent at once cannot pass the caps together.
        self._admitted += 1
        self._per_address[address] += 1
        try:
            await self._admit(request, stream, address)
        finally:
            self._admitted -= 1
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    async def _admit(self, request: WebSocketRequest, stream: ObservedStream, address: str) -> None:
        if not self._origin_allowed(request, stream):
            await request.reject(403, body=b"origin not allowed")
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        ws = await request.accept()
        peer = Peer(address=address, user_agent=headers.get("user-agent", "")[:200])
        conn = Connection(ws, peer, stream)
        conn.hand_over = quicken(ws, stream)
        stream.settled = functools.partial(_settled, conn)
        if conn.hand_over is not None:
            conn.hand_over.take = functools.partial(self._take_point, conn)
        if self.limits.max_msg_rate:
            conn.bucket = TokenBucket(self.limits.max_msg_rate, self.limits.msg_burst)
        self.connections.add(conn)
        try:
            await self._serve(conn)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("connection from %s failed; closing it", address)
            with trio.move_on_after(1):
                await ws.aclose(1011, "internal error")
        finally:
            conn.closed = True
            self.connections.discard(conn)
            self._leave_room(conn)
            if conn.session is not None and conn.session.player is conn:
                conn.session.player = None

    def _origin_allowed(self, request: WebSocketRequest, stream: ObservedStream) -> bool:
        origin = None
        for key, value in request.headers:
            if key.lower() == b"origin":
                origin = value.decode("latin-1")
        if origin is None:
            return True  # not a browser: there is no origin to check
        # wsproto keeps Host off the request's headers: the stream read it as it passed.
        return origin_allowed(origin, stream.host, self.limits.allowed_origins)

    async def _serve(self, conn: Connection) -> None:
        hand_over = conn.hand_over
        while True:
            frame = await conn.ws.get_message()
            try:
                if not await self._handle(conn, frame):
                    return
            finally:
                if hand_over is not None:
                    hand_over.done()  # the reader may carry points again (`_take_point`)

    async def _handle(self, conn: Connection, frame: str | bytes) -> bool:
        """One message; False when the connection is closed for its message rate."""
        if conn.bucket is not None and not conn.bucket.take():
            conn.strikes += 1
            if conn.strikes > self.limits.rate_strikes:
                await conn.ws.aclose(1008, "message rate limit")
                return False
            await self._reply_error(
                conn, ProtocolError(wire.RATE_LIMITED, "too many messages; slow down")
            )
            return True
        self._forgive(conn)
        try:
            decoded, conn.decoded = conn.decoded, None
            if decoded is not None and decoded[0] is frame:
                message = decoded[1]
            else:
                message = wire.decode_client(frame)
            await self._dispatch(conn, message)
        except ProtocolError as exc:
            await self._reply_error(conn, exc)
        return True

    @staticmethod
    def _forgive(conn: Connection) -> None:
        """Refused messages are forgiven once the sender has slowed down enough for its bucket
        to be full again, not at the first message let through: a flood just over the rate
        (a message through now and then) still meets `rate_strikes` and the 1008."""
        bucket = conn.bucket
        if conn.strikes and bucket is not None and bucket.tokens >= bucket.burst - 1:
            conn.strikes = 0

    def _take_point(self, conn: Connection, frame: str | bytes) -> bool:
        """Carry a point to its session right in trio-websocket's reader's step, as `_handle`
        and `_point` would, when that needs no reply and no wait: the handler has nothing of
        this connection's in hand or queued (the hand-over offers a frame only then), the
        frame is a well-formed point, the session runs and its inbox has room,
        the message rate allows it. Everything else goes to the handler, in order. One task
        step less a point (the handler's wake-up), and the point is stamped as it is read.
        Never raises: this runs in trio-websocket's reader task."""
        if len(frame) > POINT_FRAME_MAX:
            return False  # a larger frame is no point worth decoding twice (a submission)
        try:
            try:
                message = wire.decode_client(frame)
            except ProtocolError:
                return False  # the handler decodes it again and answers the error
            admitted = self._admit_point(conn, message) if isinstance(message, wire.Point) else None
            if not isinstance(admitted, tuple):
                conn.decoded = (frame, message)
                return False  # not a point, or one the handler refuses with its reason
            inbox, point = admitted
            bucket = conn.bucket
            if bucket is not None and not bucket.take():
                conn.decoded = (frame, message)
                return False  # the handler counts the strike
            try:
                inbox.send_nowait(point)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                if bucket is not None:
                    bucket.give_back()  # the handler takes it for this frame
                conn.decoded = (frame, message)
                return False
            self._forgive(conn)
            return True
        except Exception:  # pragma: no cover - a bug; the handler path still answers
            logger.exception("a point could not be handed over in the reader; queued instead")
            return False

    async def _reply_error(self, conn: Connection, exc: ProtocolError) -> None:
        await conn.send(
            wire.encode(
                wire.Error(
                    id=exc.request_id,
                    code=exc.code,
                    message=exc.message,
                    url=exc.url,
                    reason=exc.details.get("reason"),  # type: ignore[arg-type]
                    banned_until=exc.details.get("banned_until"),  # type: ignore[arg-type]
                )
            )
        )

    async def _dispatch(self, conn: Connection, message: wire.AnyClientMessage) -> None:
        if isinstance(message, wire.Point):
            await self._point(conn, message)
        elif isinstance(message, wire.GameStart):
            await self._game_start(conn, message)
        elif isinstance(message, wire.SubmitResult):
            await self._submit(conn, message)
        elif isinstance(message, wire.EnterGameRoom):
            await self._enter_room(conn, message)
        elif isinstance(message, wire.Auth):
            await self._auth(conn, message)
        elif isinstance(message, wire.WhoAmI):
            await self._identity(conn, message.id)
        elif isinstance(message, wire.Resume):
            await self._resume(conn, message)
        else:  # pragma: no cover - the decoder knows no other types
            raise ProtocolError(wire.UNKNOWN_TYPE, "unknown message type", message.id)

    # -- identity and rooms --

    async def _identity(self, conn: Connection, request_id: str | int | None) -> None:
        await conn.send(
            wire.encode(
                wire.Identity(id=request_id, user_id=conn.peer.user_id, name=conn.peer.name)
            )
        )

    async def _auth(self, conn: Connection, message: wire.Auth) -> None:
        if conn.session is not None and conn.session.running:
            raise ProtocolError(
                wire.SESSION_ACTIVE, "cannot change identity during a game", message.id
            )
        try:
            user = await self.service.identify(message.token)
        except AuthError as exc:
            raise ProtocolError(
                wire.AUTH_FAILED, str(exc), message.id, details=exc.details()
            ) from None
        if user.id != conn.peer.user_id:
            self._leave_room(conn)  # a room is entered as an identity
        conn.peer.user_id = user.id
        conn.peer.name = user.name
        await self._identity(conn, message.id)

    async def _enter_room(self, conn: Connection, message: wire.EnterGameRoom) -> None:
        settings = self._playable(message.game_id, message.id)
        if message.user_id != conn.peer.user_id:
            await self.service.flag(
                "identity_mismatch",
                peer=conn.peer,
                game_id=message.game_id,
                detail={"claimed_user_id": message.user_id, "actual_user_id": conn.peer.user_id},
            )
            raise ProtocolError(
                wire.IDENTITY_MISMATCH,
                "user_id is not this connection's identity (log in with `auth` first)",
                message.id,
            )
        if (
            conn.session is not None
            and conn.session.running
            and conn.session.game_id != message.game_id
        ):
            raise ProtocolError(
                wire.SESSION_ACTIVE, "a game is running in another room", message.id
            )
        room = await self.rooms.room(message.game_id)
        if conn.room is not room:
            self._leave_room(conn)
            room.members.add(conn)
            conn.room = room
        await conn.send(
            wire.encode(
                wire.RoomEntered(
                    id=message.id, game_id=message.game_id, duration_ms=settings.duration_ms
                )
            )
        )

    def _playable(self, game_id: str, request_id: str | int | None) -> GameSettings:
        """The settings of a game that can be played now: not removed, not archived."""
        settings = self.service.games.get(game_id)
        if settings is None:
            raise ProtocolError(wire.UNKNOWN_GAME, f"no game {game_id!r}", request_id)
        if settings.archived_at is not None:
            raise ProtocolError(
                wire.UNKNOWN_GAME,
                f"game {game_id!r} is archived: its board is kept, no new games",
                request_id,
                details={"reason": "archived"},
            )
        return settings

    def _leave_room(self, conn: Connection) -> None:
        if conn.room is not None:
            conn.room.members.discard(conn)
            conn.room = None

    # -- play --

    async def _game_start(self, conn: Connection, message: wire.GameStart) -> None:
        if self.rooms.closing:
            raise ProtocolError(wire.SERVER_SHUTDOWN, "the server is shutting down", message.id)
        room = conn.room
        if room is None:
            raise ProtocolError(wire.NOT_IN_ROOM, "enter a game room first", message.id)
        if conn.session is not None and conn.session.running:
            raise ProtocolError(
                wire.SESSION_ACTIVE, "a game is already running on this connection", message.id
            )
        settings = self._playable(room.game_id, message.id)
        try:
            conn.session = await self.rooms.start_session(
                room, dataclasses.replace(conn.peer), conn, settings, message.client_ts, message.id
            )
        except ConflictError as exc:
            raise ProtocolError(wire.SESSION_ACTIVE, str(exc), message.id) from None

    def _admit_point(
        self, conn: Connection, message: wire.Point
    ) -> tuple[trio.MemorySendChannel[PointIn], PointIn] | RejectReason:
        """The one rule by which a point enters its session, on both paths (`_take_point` in
        the reader, `_point` in the handler): the session's inbox and the point stamped as it
        arrived, or why it is refused before its session sees it."""
        session = conn.session
        if session is None:
            return RejectReason.NO_SESSION
        if not session.running or session.inbox_send is None:
            return RejectReason.GAME_OVER
        received_at = self.service.clock.now_ms()
        return session.inbox_send, PointIn(message.client_ts, received_at, message.id)

    async def _point(self, conn: Connection, message: wire.Point) -> None:
        admitted = self._admit_point(conn, message)
        if isinstance(admitted, tuple):
            inbox, point = admitted
            try:
                try:
                    # No checkpoint when the inbox has room (the common case): the next
                    # get_message yields anyway, and a checkpoint here costs ~10 µs a point.
                    inbox.send_nowait(point)
                except trio.WouldBlock:
                    await inbox.send(point)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                admitted = RejectReason.GAME_OVER
        self.service.metrics.count_point(admitted)
        await conn.send(
            wire.encode(
                wire.PointRejected(
                    id=message.id, reason=admitted, server_ts=self.service.clock.now_ms()
                )
            )
        )

    async def _submit(self, conn: Connection, message: wire.SubmitResult) -> None:
        try:
            outcome = await self.service.submit(
                message.start_token, message.end_token, message.points, conn.peer
            )
        except RateLimitedError as exc:
            raise ProtocolError(wire.RATE_LIMITED, str(exc), message.id) from None
        await conn.send(
            wire.encode(
                wire.Result(
                    id=message.id,
                    accepted=outcome.accepted,
                    score=outcome.score,
                    saved=outcome.saved,
                    reason=outcome.reason,
                    held=outcome.held,
                    held_reason=outcome.held_reason,
                    receipt=outcome.receipt,
                    log_index=outcome.log_index,
                )
            )
        )

    async def _resume(self, conn: Connection, message: wire.Resume) -> None:
        service = self.service
        unknown = ProtocolError(
            wire.UNKNOWN_SESSION, "no such session for this identity", message.id
        )
        try:
            claims = service.keys.verify(message.start_token, Purpose.START, service.clock.now_ms())
        except TokenError:
            raise unknown from None
        if claims.user_id != conn.peer.user_id:
            raise unknown
        live = service.sessions.get(claims.session_hex)
        if live is None or live.start_token != message.start_token:
            await self._resume_from_store(conn, claims.session_hex, message, unknown)
            return
        if live.running:
            if conn.session is not None and conn.session is not live and conn.session.running:
                raise ProtocolError(
                    wire.SESSION_ACTIVE, "a game is already running on this connection", message.id
                )
            old = live.player
            live.player = conn
            conn.session = live
            if isinstance(old, Connection) and old is not conn and old.session is live:
                old.session = None
            now = service.clock.now_ms()
            await conn.send(
                wire.encode(
                    wire.GameStarted(
                        id=message.id,
                        session_id=live.session_id,
                        start_token=live.start_token,
                        duration_ms=live.rules.settings.duration_ms,
                        server_ts=live.rules.started_at,
                        remaining_ms=live.rules.remaining_ms(now),
                        seq=live.rules.seq,
                    )
                )
            )
        else:
            # The session is ending (its end is being committed): wait for its end_game, but
            # never longer than a helper may take to answer; then the database has the word.
            with trio.move_on_after(RESUME_WAIT_S):
                await live.finished.wait()
            if live.end_message is None:
                await self._resume_from_store(conn, claims.session_hex, message, unknown)
                return
            await conn.send(wire.encode(msgspec.structs.replace(live.end_message, id=message.id)))

    async def _resume_from_store(
        self, conn: Connection, session_id: str, message: wire.Resume, unknown: ProtocolError
    ) -> None:
        record = await self.service.store.session(session_id)
        if (
            record is not None
            and record.ended_at is None
            and record.user_id == conn.peer.user_id
            and record.start_token == message.start_token
        ):
            # Running, but not here: on another node (or a worker) of this database.
            url = await self.service.store.session_node(session_id, self.service.clock.now_ms())
            node = self.service.node
            if url is not None and (node is None or url != node.url):
                raise ProtocolError(
                    wire.SESSION_ELSEWHERE,
                    "this game runs on another node: connect there and resume",
                    message.id,
                    url=url,
                )
        if (
            record is None
            or record.user_id != conn.peer.user_id
            or record.start_token != message.start_token
            or record.ended_at is None
            or record.end_reason is None
        ):
            raise unknown
        await conn.send(
            wire.encode(
                wire.EndGame(
                    id=message.id,
                    reason=record.ended_by or str(record.end_reason),
                    server_ts=record.ended_at,
                    end_token=record.end_token,
                    session_id=record.session_id,
                )
            )
        )

    # -- keepalive --

    async def run_keepalive(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Ping every connection now and then; close those whose pong does not come back.

        One sweeper for all connections, rather than a task each: an idle connection then
        costs no task of its own between sweeps.
        """
        task_status.started()
        interval = self.limits.keepalive_interval_s
        if not interval:
            return
        while True:
            await trio.sleep(interval)
            async with trio.open_nursery() as nursery:
                for conn in list(self.connections):
                    nursery.start_soon(self._ping, conn)

    async def watch_sends(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """One task for every connection's sends: each second, drop the connections whose
        sends have made no progress for SEND_TIMEOUT_S (see `Connection.send`)."""
        task_status.started()
        while True:
            await trio.sleep(SEND_WATCH_S)
            now = trio.current_time()
            for conn in list(self.connections):
                if conn.sending and not conn.closed:
                    await conn.drop_if_stuck(now)

    async def _ping(self, conn: Connection) -> None:
        with trio.move_on_after(self.limits.keepalive_timeout_s) as scope:
            try:
                await conn.ws.ping()
            except (ConnectionClosed, ValueError):
                return
        if scope.cancelled_caught:
            logger.info("closing connection from %s: no pong", conn.peer.address)
            conn.closed = True
            with trio.move_on_after(2):
                await conn.ws.aclose(1001, "keepalive timeout")
            # A peer that answers nothing will not complete the close handshake either.
            await conn.stream.drop()

    # -- shutdown --

    async def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        async def close(conn: Connection) -> None:
            with trio.move_on_after(2):
                await conn.ws.aclose(code, reason)

        async with trio.open_nursery() as nursery:
            for conn in list(self.connections):
                nursery.start_soon(close, conn)


def origin_allowed(origin: str, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Same-host origins (any port or scheme) are allowed, and any listed one ('*': all)."""
    if "*" in allowed or origin in allowed:
        return True
    if host is None:
        return False
    try:
        origin_host = urlsplit(origin).hostname
        request_host = urlsplit(f"//{host}").hostname
    except ValueError:
        return False
    return origin_host is not None and origin_host == request_host


async def _settled(conn: Connection) -> None:
    """Return once every message handed to the connection's handler is answered
    (ObservedStream holds a peer's close until then)."""
    if conn.hand_over is not None:
        await conn.hand_over.wait_answered()
