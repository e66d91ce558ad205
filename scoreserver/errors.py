"""The errors scoreserver raises inside itself, one base and a shallow tree::

    ScoreServerError
    ├── ProtocolError      a client message that cannot be acted on (carries a wire code)
    ├── TokenError         a token that is malformed, mis-signed or of the wrong purpose
    ├── AuthError          a name/password or login token that does not hold
    ├── RateLimitedError   too many attempts for now (logins, failed submissions)
    ├── ConflictError      a name already taken, a game that already exists
    ├── NotFoundError      an unknown game, user, flag, session
    ├── BusyError          a bounded queue is full (password checks): try again shortly
    ├── StoreError         the database refused (integrity, schema version)
    └── PortTakenError     a port to listen on is in use

Lower-level errors (msgspec, sqlite3, cryptography) are mapped to these at the boundary with
``raise ... from None``. Only a bug raises anything else out of a handler; the connection that
hit it is closed, the server goes on.
"""

from __future__ import annotations

from scoreserver.codes import ErrorCode


class ScoreServerError(Exception):
    """Base of every error scoreserver raises on purpose."""


class ProtocolError(ScoreServerError):
    """A client message the server could not act on; `code` is the contract's error code."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        request_id: str | int | None = None,
        url: str | None = None,
        details: dict[str, object] | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.url = url  # `session_elsewhere`: the game socket of the node that has the session
        self.details = details or {}  # `auth_failed`: `reason`, `banned_until` (AuthError)


class TokenError(ScoreServerError):
    """A token that does not verify."""


class AuthError(ScoreServerError):
    """Credentials or a login token that do not hold. `reason` says which, for the player's
    words: `wrong_password` (a name and password, or the password confirming an erasure),
    `expired` (a login token the server does not know, or no longer), `banned` (the account
    is banned; `banned_until` epoch ms, None for a ban until lifted)."""

    def __init__(self, message: str, reason: str = "expired", banned_until: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.banned_until = banned_until

    def details(self) -> dict[str, object]:
        """The fields an error reply adds to `error` and `message` (an extension of
        `auth_failed`): `reason`, and `banned_until` for a ban that ends."""
        extra: dict[str, object] = {"reason": self.reason}
        if self.banned_until is not None:
            extra["banned_until"] = self.banned_until
        return extra


class RateLimitedError(ScoreServerError):
    """Too many attempts for now (logins of an account or from an address, failed
    submissions); not an AuthError, so that no handler mistakes it for wrong credentials."""


class ConflictError(ScoreServerError):
    """Something that must be unique already exists."""


class BannedError(ScoreServerError):
    """The account is banned (found where it matters: in the transaction that would save)."""


class BusyError(ScoreServerError):
    """A bounded queue of work is full; the request is refused rather than queued."""


class NotFoundError(ScoreServerError):
    """A named thing does not exist."""


class StoreError(ScoreServerError):
    """The database is not in a state the server can use."""


class PortTakenError(ScoreServerError):
    """A port the server was to listen on is taken; the message names it and its flag."""

    def __init__(self, port: int, host: str, flag: str, what: str):
        super().__init__(
            f"port {port} ({what}) on {host} is taken, perhaps by another scoreserver:"
            f" stop it, or choose another port with {flag} PORT"
        )
        self.port = port
