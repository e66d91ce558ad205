"""Tokens: start and end tokens signed with Ed25519, point tokens authenticated with a MAC;
and the signing keys.

Token format (all integers big-endian), sent as unpadded base64url::

    offset  size  field
    0       2     magic b"SS"
    2       1     version: 1 (Ed25519-signed), 2 (a point token with a MAC)
    3       1     purpose: b"S" start, b"P" point, b"E" end
    4       8     key id (first 8 bytes of SHA-256 of the raw public key)
    12      16    session id
    28      8     user id (signed; 0 for a guest)
    36      4     seq (the point's number; 0 for start and end)
    40      8     issued at, server epoch milliseconds
    48      1     length n of the game id
    49      n     game id, UTF-8
    49+n    64    version 1: Ed25519 signature over bytes 0 .. 49+n
    49+n    16    version 2: HMAC-SHA256 over bytes 0 .. 49+n, its first 16 bytes

The purpose, the session, the user, the sequence number, the server's time and the key id are
inside the authenticated bytes, so a token of one purpose, session or key never passes as
another. Start and end tokens (and, with issue 29, receipts) are signatures anyone holding
`/api/keys` can check without us. A point token is checked only by the server: a submission is
judged by constant-time comparison with the tokens issued and kept for the session (on any
node: they are in the database), so a MAC under a key only the server holds is enough, and
costs about a microsecond where a signature cost 50 (docs/performance.md). The MAC key is
derived from the signing key (HMAC-SHA256 of a fixed label under the raw private key): kept
with it, rotated with it, the same on every worker that shares a key file. Version-1 point
tokens (signed, from before the MAC) still verify for as long as their key does.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
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
VERSION = 1  # Ed25519-signed
MAC_VERSION = 2  # point tokens: HMAC-SHA256, truncated
_HEADER = struct.Struct(">2sBc8s16sqIQB")
HEADER = _HEADER  # every token's first 49 bytes (receipts.py reads them too)
SIGNATURE_SIZE = 64
MAC_SIZE = 16  # 128 bits: a forger's chance per guess is 2**-128
MAX_GAME_ID_BYTES = 64
_MAC_LABEL = b"scoreserver point-token MAC key, version 2"


class Purpose(enum.Enum):
    START = b"S"
    POINT = b"P"
    END = b"E"
    # A device that logged in to an account before (its user id; game_id "admin" for the
    # admin page): its logins are limited on their own, not with a stranger's guesses.
    DEVICE = b"D"
    # A saved result's receipt: the header, then receipts.py's fields.
    RECEIPT = b"R"


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


def mac_key(signing_key: Ed25519PrivateKey) -> bytes:
    """The point-token MAC key that goes with a signing key."""
    raw = signing_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return hmac.digest(raw, _MAC_LABEL, "sha256")


def _parse(token: str) -> tuple[Claims, bytes, bytes, int]:
    """Split a token into claims, the authenticated bytes, the signature or MAC, and the
    version. Checks shape only."""
    if len(token) > 400:
        raise TokenError("token too long")
    raw = b64decode(token)
    if len(raw) < _HEADER.size + MAC_SIZE:
        raise TokenError("token too short")
    magic, version, purpose, kid, session_id, user_id, seq, issued_at, game_len = (
        _HEADER.unpack_from(raw)
    )
    if magic != MAGIC or version not in (VERSION, MAC_VERSION):
        raise TokenError("not a scoreserver token")
    if version == MAC_VERSION and purpose != Purpose.POINT.value:
        raise TokenError("only point tokens carry a MAC")
    body_len = _HEADER.size + game_len
    if len(raw) != body_len + (SIGNATURE_SIZE if version == VERSION else MAC_SIZE):
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
    return claims, raw[:body_len], raw[body_len:], version


# The seq field (bytes 36..39) starts on a 3-byte boundary, so it is the first 4 bytes of
# the 6 that base64 characters 48..55 encode: a point's seq is read without decoding the rest.
_SEQ_CHARS = slice(48, 56)
_MIN_TOKEN_CHARS = (_HEADER.size + MAC_SIZE) * 4 // 3


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
    """The current signing key, every public key that may still verify a token, and the MAC
    keys of the signing keys this process has held (its point tokens' keys)."""

    def __init__(self, signing_key: Ed25519PrivateKey, others: Iterable[VerifyKey] = ()):
        self._signing_key = signing_key
        public = signing_key.public_key()
        self.kid = key_id(public)
        self._verify: dict[bytes, VerifyKey] = {k.kid: k for k in others}
        self._verify[self.kid] = VerifyKey(self.kid, public, None)
        self._macs: dict[bytes, bytes] = {self.kid: mac_key(signing_key)}
        # HMAC's keyed state, copied for each token: the key is not hashed again every time.
        self._mac_state = hmac.new(self._macs[self.kid], digestmod=hashlib.sha256)
        self._point_prefix = MAGIC + bytes([MAC_VERSION]) + Purpose.POINT.value + self.kid

    def carry_macs(self, older: KeyRing) -> None:
        """Keep the MAC keys of an earlier ring's signing keys (a rotation or reload in this
        process), for as long as their public keys may verify: points issued before a
        rotation still check."""
        for kid, key in older._macs.items():
            if kid in self._verify:
                self._macs.setdefault(kid, key)

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
        """A token of `purpose`: a point token with a MAC (`point`), any other signed."""
        if purpose is Purpose.POINT:
            return self.point(session_id, user_id, game_id.encode("utf-8"), issued_at, seq)
        body = self.body(purpose, session_id, user_id, game_id, issued_at, seq)
        return finish(body, self._signing_key.sign(body))

    def point(
        self, session_id: bytes, user_id: int | None, game: bytes, issued_at: int, seq: int
    ) -> str:
        """A point token under the current key (`game`: the game id's UTF-8, at most 64
        bytes). About a microsecond: the session task makes one for every accepted point."""
        body = (
            self._point_prefix
            + _POINT_TAIL.pack(session_id, user_id or 0, seq, issued_at, len(game))
            + game
        )
        state = self._mac_state.copy()
        state.update(body)
        return b64encode(body + state.digest()[:MAC_SIZE])

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
        """The token's claims if its signature (or, for a point token, its MAC) holds under a
        known key and it has `purpose`."""
        claims, body, tag, key, version = self._read(token, purpose, now)
        if version == MAC_VERSION:
            secret = self._macs.get(claims.kid)
            if secret is None:
                raise TokenError("no MAC key for this key id on this server")
            expected = hmac.digest(secret, body, "sha256")[:MAC_SIZE]
            if not hmac.compare_digest(expected, tag):
                raise TokenError("bad MAC")
            return claims
        try:
            key.public_key.verify(tag, body)
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
    ) -> tuple[Claims, bytes, bytes, VerifyKey, int]:
        claims, body, signature, version = _parse(token)
        if claims.purpose is not purpose:
            raise TokenError("token has another purpose")
        key = self._verify.get(claims.kid)
        if key is None:
            raise TokenError("unknown key id")
        if key.valid_until is not None and now > key.valid_until:
            raise TokenError("key no longer valid")
        return claims, body, signature, key, version


# A point token's bytes after magic, version, purpose and key id (see the format above).
_POINT_TAIL = struct.Struct(">16sqIQB")
assert _HEADER.size == 4 + 8 + _POINT_TAIL.size


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
