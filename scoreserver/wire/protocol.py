"""The wire messages of `docs/protocol.md` as typed structs, their decoding and encoding.

Client messages are a tagged union on `type`, decoded by msgspec in one pass. When that pass
fails, a slower diagnosis tells the contract's codes apart (`bad_json`, `bad_message`,
`unknown_type`) and recovers the request `id` so that even an error reply carries it.
Server messages are encoded from frozen structs; `id` is left out when there is none.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from scoreserver.codes import ErrorCode
from scoreserver.errors import ProtocolError

# Bounds on every integer a peer may send: what the rules, the tokens (signed 64-bit fields)
# and the database (SQLite's INTEGER) can all hold, and what a JavaScript number keeps exact.
MAX_SAFE_INTEGER = 2**53 - 1
# Timestamps are epoch milliseconds from 1970 to the end of year 9999 (JavaScript's Date goes
# further, but no player's clock is that wrong); sums with an offset stay far inside 64 bits.
MAX_TIMESTAMP_MS = 253_402_300_799_999

RequestId = (
    Annotated[str, Meta(max_length=64)]
    | Annotated[int, Meta(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
    | None
)
GameId = Annotated[str, Meta(min_length=1, max_length=64)]
Token = Annotated[str, Meta(max_length=400)]
Timestamp = Annotated[int, Meta(ge=0, le=MAX_TIMESTAMP_MS)]
UserId = Annotated[int, Meta(ge=0, le=MAX_SAFE_INTEGER)]

# --- error codes (wire.codes.ErrorCode) -------------------------------------------------------

BAD_JSON = ErrorCode.BAD_JSON
BAD_MESSAGE = ErrorCode.BAD_MESSAGE
UNKNOWN_TYPE = ErrorCode.UNKNOWN_TYPE
AUTH_FAILED = ErrorCode.AUTH_FAILED
UNKNOWN_GAME = ErrorCode.UNKNOWN_GAME
IDENTITY_MISMATCH = ErrorCode.IDENTITY_MISMATCH
NOT_IN_ROOM = ErrorCode.NOT_IN_ROOM
SESSION_ACTIVE = ErrorCode.SESSION_ACTIVE
UNKNOWN_SESSION = ErrorCode.UNKNOWN_SESSION
SESSION_ELSEWHERE = ErrorCode.SESSION_ELSEWHERE
RATE_LIMITED = ErrorCode.RATE_LIMITED
SERVER_SHUTDOWN = ErrorCode.SERVER_SHUTDOWN

# --- client to server -----------------------------------------------------------------------


class ClientMessage(Struct, frozen=True, tag_field="type", kw_only=True, gc=False):
    id: RequestId = None


class Auth(ClientMessage, tag="auth", frozen=True):
    """Log the connection in with a token from `/api/login` or `/api/register`."""

    token: Annotated[str, Meta(max_length=200)]


class WhoAmI(ClientMessage, tag="whoami", frozen=True):
    """Ask who the connection is."""


class EnterGameRoom(ClientMessage, tag="enter_game_room", frozen=True):
    """Join a game's room as `user_id` (null for a guest)."""

    game_id: GameId
    user_id: UserId | None


class GameStart(ClientMessage, tag="game_start", frozen=True):
    """Start a game session in the current room."""

    client_ts: Timestamp


class Point(ClientMessage, tag="point", frozen=True):
    """The player scored, at `client_ts` by the player's clock."""

    client_ts: Timestamp


class PointClaim(Struct, frozen=True, gc=False):
    """One point of a submission: its token and the player's timestamp."""

    token: Token
    client_ts: Timestamp


class SubmitResult(ClientMessage, tag="submit_result", frozen=True):
    """Submit a finished game for scoring."""

    start_token: Token
    end_token: Token
    points: Annotated[list[PointClaim], Meta(max_length=100_000)]


class Resume(ClientMessage, tag="resume", frozen=True):
    """Re-attach this connection to a session of the same identity."""

    start_token: Token


AnyClientMessage = Auth | WhoAmI | EnterGameRoom | GameStart | Point | SubmitResult | Resume
CLIENT_TYPES = frozenset(
    t.__struct_config__.tag
    for t in (Auth, WhoAmI, EnterGameRoom, GameStart, Point, SubmitResult, Resume)
)

_client_decoder: msgspec.json.Decoder[AnyClientMessage] = msgspec.json.Decoder(AnyClientMessage)
_generic_decoder = msgspec.json.Decoder()


def decode_client(data: str | bytes) -> AnyClientMessage:
    """Decode one client frame, or raise `ProtocolError` with the contract's code.

    Nothing else escapes: whatever a peer sends is answered with a contract error.
    """
    if not isinstance(data, str):
        # A binary frame is read as JSON text if it is UTF-8; the contract asks for text frames.
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(BAD_MESSAGE, "a frame must be UTF-8 JSON text") from None
    try:
        return _client_decoder.decode(data)
    except msgspec.DecodeError:
        raise _diagnose(data) from None
    except RecursionError:
        raise ProtocolError(BAD_MESSAGE, "the message is nested too deeply") from None


def _diagnose(data: str) -> ProtocolError:
    try:
        obj = _generic_decoder.decode(data)
    except msgspec.DecodeError:
        return ProtocolError(BAD_JSON, "the frame is not valid JSON")
    except RecursionError:
        return ProtocolError(BAD_MESSAGE, "the message is nested too deeply")
    if not isinstance(obj, dict):
        return ProtocolError(BAD_MESSAGE, "a message must be a JSON object")
    request_id = _request_id(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        return ProtocolError(BAD_MESSAGE, "a message needs a string `type`", request_id)
    if kind not in CLIENT_TYPES:
        return ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}", request_id)
    try:
        msgspec.convert(obj, AnyClientMessage)
    except msgspec.ValidationError as exc:
        return ProtocolError(BAD_MESSAGE, str(exc), request_id)
    return ProtocolError(BAD_MESSAGE, "malformed message", request_id)  # pragma: no cover


def _request_id(obj: dict[str, Any]) -> str | int | None:
    value = obj.get("id")
    try:
        return msgspec.convert(value, RequestId)  # type: ignore[no-any-return]
    except msgspec.ValidationError:
        return None


# --- server to client -----------------------------------------------------------------------


class ServerMessage(
    Struct, frozen=True, tag_field="type", omit_defaults=True, kw_only=True, gc=False
):
    id: str | int | None = None


class Identity(ServerMessage, tag="identity", frozen=True):
    user_id: int | None
    name: str | None


class RoomEntered(ServerMessage, tag="room_entered", frozen=True):
    game_id: str
    duration_ms: int


class GameStarted(ServerMessage, tag="game_started", frozen=True):
    session_id: str
    start_token: str
    duration_ms: int
    server_ts: int
    # Extensions: where a resumed session stands.
    remaining_ms: int | None = None
    seq: int | None = None


class PointAccepted(ServerMessage, tag="point_accepted", frozen=True):
    token: str
    server_ts: int
    seq: int


class PointRejected(ServerMessage, tag="point_rejected", frozen=True):
    reason: str
    server_ts: int | None = None


class EndGame(ServerMessage, tag="end_game", frozen=True):
    reason: str
    server_ts: int
    end_token: str | None = None
    session_id: str | None = None


class Result(ServerMessage, tag="result", frozen=True):
    accepted: bool
    score: int | None = None
    saved: bool | None = None
    reason: str | None = None
    # A saved result that is on no board until a reviewer clears it (contract 1.2), and why:
    # review_top_score or flagged.
    held: bool | None = None
    held_reason: str | None = None
    # A kept result's signed receipt and its index in the results log (contract 1.2).
    receipt: str | None = None
    log_index: int | None = None


class LeaderboardEntry(Struct, frozen=True):
    rank: int
    user_id: int
    name: str
    score: int


class Leaderboard(ServerMessage, tag="leaderboard", frozen=True):
    game_id: str
    entries: list[LeaderboardEntry]


class Error(ServerMessage, tag="error", frozen=True):
    code: str
    message: str
    url: str | None = None  # session_elsewhere: where to connect and resume
    # auth_failed: why (wrong_password, expired, banned), and until when a ban lasts
    reason: str | None = None
    banned_until: int | None = None


_encoder = msgspec.json.Encoder()


def encode(message: ServerMessage) -> str:
    """One server message as the text of a frame."""
    return _encoder.encode(message).decode("utf-8")
