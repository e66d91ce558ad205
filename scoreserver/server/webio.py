"""What every HTTP handler shares: JSON errors, bounded JSON bodies, bounded query integers."""

from __future__ import annotations

from typing import Any, overload

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from scoreserver.codes import HttpCode

MAX_BODY_BYTES = 256 * 1024

# The windows a board is read over: `?window=day|week|all`.
WINDOWS_MS = {"day": 86_400_000, "week": 7 * 86_400_000}


class HttpError(Exception):
    def __init__(
        self, status: int, code: HttpCode, message: str, extra: dict[str, object] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra  # more fields of the error's JSON (`auth_failed`'s `reason`)


def error_response(
    status: int, code: HttpCode, message: str, extra: dict[str, object] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **(extra or {})}, status_code=status)


# JSON spells U+0000 in a string only as this escape (a raw NUL byte is not JSON).
_NUL_ESCAPE = b"\\u0000"
NUL_REFUSED = "text cannot hold the character U+0000"


async def read_json(request: Request, kind: type[Any], limit: int = MAX_BODY_BYTES) -> Any:
    """The request body decoded as `kind`; 413 past `limit` bytes (read no further), 400 if
    malformed. Every route that takes a body reads it through here."""
    too_large = HttpError(413, HttpCode.TOO_LARGE, f"the body is limited to {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
    except ClientDisconnect:
        # The client left before its body arrived: an answer nobody reads, and nothing to log
        # (it is not the server's fault, and it is not worth a traceback).
        raise HttpError(400, HttpCode.BAD_REQUEST, "the client left mid-request") from None
    if _NUL_ESCAPE in body:
        # Refused for every body: PostgreSQL cannot store or compare a text with U+0000, and
        # no field of ours needs one (a name refuses it anyway).
        raise HttpError(400, HttpCode.BAD_REQUEST, NUL_REFUSED)
    try:
        return msgspec.json.decode(bytes(body or b"{}"), type=kind)
    except msgspec.DecodeError as exc:
        raise HttpError(400, HttpCode.BAD_REQUEST, str(exc)) from None
    except RecursionError:
        raise HttpError(400, HttpCode.BAD_REQUEST, "the body is nested too deeply") from None


@overload
def int_param(request: Request, name: str, default: int, low: int, high: int) -> int: ...


@overload
def int_param(request: Request, name: str, default: None, low: int, high: int) -> int | None: ...


def int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    # ASCII digits only: Python's int() also reads other scripts' digits and "1_000".
    digits = raw[1:] if raw.startswith("-") else raw
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20:
        raise HttpError(400, HttpCode.BAD_REQUEST, f"`{name}` must be an integer")
    value = int(raw)
    if not low <= value <= high:
        raise HttpError(400, HttpCode.BAD_REQUEST, f"`{name}` must be between {low} and {high}")
    return value


def bearer(request: Request) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
