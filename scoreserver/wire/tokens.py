"""Ed25519 signing and checking of start, point and end tokens, and the signing keys.

Token format, version 1 (all integers big-endian), sent as unpadded base64url::

    offset  size  field
    0       2     magic b"SS"
    2       1     version (1)
    3       1     purpose: b"S" start, b"P" point, b"E" end
    4       8     key id (first 8 bytes of SHA-256 of the raw public key)
    12      16    session id
    28      8     user id (signed; 0 for a guest)
    36      4     seq (the point's number; 0 for start and end)
    40      8     issued at, server epoch milliseconds
    48      1     length n of the game id
    49      n     game id, UTF-8
    49+n    64    Ed25519 signature over bytes 0 .. 49+n

The purpose is inside the signed bytes, so a token of one purpose never passes as another.
The server also keeps every token it issued, so a submission is judged by constant-time
comparison with what was issued; the signature is what lets anyone holding `/api/keys`
check a token without us, and what makes a forged token fail before any lookup.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import os
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from scoreserver.errors import TokenError

MAGIC = b"SS"
VERSION = 1
_HEADER = struct.Struct(">2sBc8s16sqIQB")
SIGNATURE_SIZE = 64
MAX_GAME_ID_BYTES = 64


class Purpose(enum.Enum):
    START = b"S"
    POINT = b"P"
    END = b"E"
    # A device that logged in to an account before (its user id; game_id "admin" for the
    # admin page): its logins are limited on their own, not with a stranger's guesses.
    DEVICE = b"D"


@dataclass(frozen=True, slots=True)
class Claims:
    purpose: Purpose
    kid: bytes
    session_id: bytes
    user_id: int | None
    seq: int
    issued_at: int
    game_id: str

    @property
    def session_hex(self) -> str:
        return self.session_id.hex()


def b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode unpadded base64url, accepting exactly one spelling of any byte string.

    Python's decoder skips characters outside the alphabet and ignores the spare bits of the
    last character, so `token + "!!!!"` or a changed last character decoded to the same bytes
    and the same valid signature. A token is accepted only as `b64encode` writes it.
    """
    if not text.isascii():
        raise TokenError("token is not ASCII")
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise TokenError("token is not base64url") from None
    if b64encode(raw) != text:
        raise TokenError("token is not canonical base64url")
    return raw


def key_id(public_key: Ed25519PublicKey) -> bytes:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:8]


def raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _parse(token: str) -> tuple[Claims, bytes, bytes]:
    """Split a token into claims, the signed bytes and the signature. Checks shape only."""
    if len(token) > 400:
        raise TokenError("token too long")
    raw = b64decode(token)
    if len(raw) < _HEADER.size + SIGNATURE_SIZE:
        raise TokenError("token too short")
    magic, version, purpose, kid, session_id, user_id, seq, issued_at, game_len = (
        _HEADER.unpack_from(raw)
    )
    if magic != MAGIC or version != VERSION:
        raise TokenError("not a version 1 scoreserver token")
    body_len = _HEADER.size + game_len
    if len(raw) != body_len + SIGNATURE_SIZE:
        raise TokenError("token length does not match its game id")
    try:
        purpose_enum = Purpose(purpose)
        game_id = raw[_HEADER.size : body_len].decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise TokenError("malformed token claims") from None
    claims = Claims(
        purpose=purpose_enum,
        kid=kid,
        session_id=session_id,
        user_id=user_id or None,
        seq=seq,
        issued_at=issued_at,
        game_id=game_id,
    )
    return claims, raw[:body_len], raw[body_len:]


# The seq field (bytes 36..39) starts on a 3-byte boundary, so it is the first 4 bytes of
# the 6 that base64 characters 48..55 encode: a point's seq is read without decoding the rest.
_SEQ_CHARS = slice(48, 56)
_MIN_TOKEN_CHARS = (_HEADER.size + SIGNATURE_SIZE) * 4 // 3


def peek_seq(token: str) -> int | None:
    """The seq a token claims, unverified: only to find the issued token to compare it with.

    Reads 8 characters instead of decoding the token; a token that is not a point token, or
    not a token at all, gives a seq whose issued token will not match it (or None).
    """
    if len(token) < _MIN_TOKEN_CHARS:
        return None
    try:
        raw = base64.urlsafe_b64decode(token[_SEQ_CHARS])
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw[:4], "big")


@dataclass(frozen=True, slots=True)
class VerifyKey:
    kid: bytes
    public_key: Ed25519PublicKey
    # Epoch ms after which tokens of this key no longer verify; None: no end (current key).
    valid_until: int | None = None


class KeyRing:
    """The current signing key and every public key that may still verify a token."""

    def __init__(self, signing_key: Ed25519PrivateKey, others: Iterable[VerifyKey] = ()):
        self._signing_key = signing_key
        public = signing_key.public_key()
        self.kid = key_id(public)
        self._verify: dict[bytes, VerifyKey] = {k.kid: k for k in others}
        self._verify[self.kid] = VerifyKey(self.kid, public, None)

    @property
    def verify_keys(self) -> list[VerifyKey]:
        return list(self._verify.values())

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return self._signing_key

    def sign(
        self,
        purpose: Purpose,
        session_id: bytes,
        user_id: int | None,
        game_id: str,
        issued_at: int,
        seq: int = 0,
    ) -> str:
        body = self.body(purpose, session_id, user_id, game_id, issued_at, seq)
        return finish(body, self._signing_key.sign(body))

    def body(
        self,
        purpose: Purpose,
        session_id: bytes,
        user_id: int | None,
        game_id: str,
        issued_at: int,
        seq: int = 0,
    ) -> bytes:
        """The signed part of a token under the current key (see the format above)."""
        game = game_id.encode("utf-8")
        if len(game) > MAX_GAME_ID_BYTES:
            raise ValueError("game id too long for a token")
        return (
            _HEADER.pack(
                MAGIC,
                VERSION,
                purpose.value,
                self.kid,
                session_id,
                user_id or 0,
                seq,
                issued_at,
                len(game),
            )
            + game
        )

    def verify(self, token: str, purpose: Purpose, now: int) -> Claims:
        """The token's claims if its signature holds under a known key and it has `purpose`."""
        claims, body, signature, key = self._read(token, purpose, now)
        try:
            key.public_key.verify(signature, body)
        except InvalidSignature:
            raise TokenError("bad signature") from None
        return claims

    def read(self, token: str, purpose: Purpose, now: int) -> Claims:
        """The token's claims if it is well formed, has `purpose` and names a key still
        accepted; its signature is NOT checked. For a caller that then compares the token in
        constant time with the one this server issued and kept (equal: it is that token,
        signature and all), and calls `verify` when it is not."""
        return self._read(token, purpose, now)[0]

    def _read(
        self, token: str, purpose: Purpose, now: int
    ) -> tuple[Claims, bytes, bytes, VerifyKey]:
        claims, body, signature = _parse(token)
        if claims.purpose is not purpose:
            raise TokenError("token has another purpose")
        key = self._verify.get(claims.kid)
        if key is None:
            raise TokenError("unknown key id")
        if key.valid_until is not None and now > key.valid_until:
            raise TokenError("key no longer valid")
        return claims, body, signature, key


def finish(body: bytes, signature: bytes) -> str:
    """The token: `body` (from `KeyRing.body`) and its signature, as sent."""
    return b64encode(body + signature)


# --- the key file ---------------------------------------------------------------------------


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Read the PEM private key at `path`, creating it (mode 0600) if it does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        write_key(path, key)
        return key
    loaded = serialization.load_pem_private_key(data, password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return loaded


def write_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write `key` to `path` atomically, readable by the owner only."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # A name of this writer's own: processes sharing the file never write one temporary file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def public_from_raw(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)
