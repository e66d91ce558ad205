"""Every code the server puts on the wire, as enums: the game socket's `error` codes and the
HTTP API's `error` codes. (The rules' own codes live with the rules in `core.rules`: a
point's rejection reason `RejectReason`, a game's end reason `EndReason`, a submission's
result reason `ResultReason`.) A StrEnum member is its string on the wire."""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """`error` codes of the game socket (docs/protocol.md, "Error codes")."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    AUTH_FAILED = "auth_failed"
    UNKNOWN_GAME = "unknown_game"
    IDENTITY_MISMATCH = "identity_mismatch"
    NOT_IN_ROOM = "not_in_room"
    SESSION_ACTIVE = "session_active"
    UNKNOWN_SESSION = "unknown_session"
    SESSION_ELSEWHERE = "session_elsewhere"
    RATE_LIMITED = "rate_limited"
    SERVER_SHUTDOWN = "server_shutdown"


class HttpCode(enum.StrEnum):
    """`error` codes of the HTTP API's JSON answers (docs/protocol.md, HTTP)."""

    BAD_REQUEST = "bad_request"
    TOO_LARGE = "too_large"
    AUTH_FAILED = "auth_failed"
    AUTH_REQUIRED = "auth_required"
    ADMIN_DISABLED = "admin_disabled"
    UNKNOWN_GAME = "unknown_game"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    NAME_TAKEN = "name_taken"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    RATE_LIMITED = "rate_limited"
    BUSY = "busy"
    INTERNAL_ERROR = "internal_error"
