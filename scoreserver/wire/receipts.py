"""What anyone can check without us: receipts, the results log's entries and checkpoints, and
board snapshots. Signed with the server's Ed25519 keys (`GET /api/keys`); checked by
`scoreserver verify`, by `verifyReceipt()` in scoreclient.js and on the /verify page.

**Receipt** (a token of the format in tokens.py: version 1, purpose b"R"). After the common
header and game id (whose `issued_at` is when the result was saved and `seq` is 0)::

    size  field
    8     score (signed)
    8     the session's start, server epoch ms
    8     the session's end, server epoch ms
    8     log_index: the result's entry in the results log
    32    points digest: SHA-256 of the point tokens in order, each followed by b"\\n"
    16    the player's salt (opens the log entry's `player`; see `player_commitment`)
    1     length n of the player's name, UTF-8
    n     the name at the time of saving
    64    Ed25519 signature over every byte before it

**Log entries** are JSON texts (`entry_text`); the log's leaves are RFC 9162 leaf hashes of
their UTF-8 bytes. An entry names a player only by `player_commitment(salt, user_id)`: no
name, and once the account is erased (its salt deleted) nobody can link the entry to it.

**Checkpoints** are signed notes in the transparency-log checkpoint format (C2SP
tlog-checkpoint and signed-note): `ORIGIN\\nSIZE\\nBASE64(ROOT)\\n`, a blank line, then one
line `— ORIGIN BASE64(KEYHASH[4] || SIGNATURE[64])` per signing key, where KEYHASH is the
first four bytes of SHA-256(ORIGIN || "\\n" || 0x01 || public key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from scoreserver.core.merkle import leaf_hash
from scoreserver.errors import TokenError
from scoreserver.wire.tokens import (
    HEADER,
    MAGIC,
    SIGNATURE_SIZE,
    VERSION,
    KeyRing,
    Purpose,
    b64decode,
    b64encode,
    key_id,
    public_from_raw,
    raw_public,
)

_TAIL = struct.Struct(">qQQQ32s16sB")
SALT_SIZE = 16
NAME_MAX_BYTES = 255
RECEIPT_MAX_CHARS = 800
_PLAYER_LABEL = b"scoreserver player v1\n"


class VerifyError(Exception):
    """A receipt, checkpoint, proof or snapshot that does not verify; the message says why."""


# --- keys as published ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishedKey:
    """A signing key as `GET /api/keys` lists it: every key the deployment ever signed with,
    with when it began and (if it did) stopped signing."""

    kid: bytes
    public_key: Ed25519PublicKey
    created_at: int | None = None
    retired_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid.hex(),
            "alg": "Ed25519",
            "public_key": b64encode(raw_public(self.public_key)),
            "created_at": self.created_at,
            "retired_at": self.retired_at,
        }


def keys_from_json(document: Mapping[str, Any]) -> list[PublishedKey]:
    """The keys of a `GET /api/keys` answer (or a file holding one)."""
    try:
        found = []
        for item in document["keys"]:
            public = public_from_raw(b64decode(item["public_key"]))
            kid = key_id(public)
            if "kid" in item and bytes.fromhex(item["kid"]) != kid:
                raise VerifyError(f"key {item['kid']} is not the id of its public key")
            found.append(PublishedKey(kid, public, item.get("created_at"), item.get("retired_at")))
        return found
    except (KeyError, TypeError, ValueError, TokenError) as exc:
        raise VerifyError(f"not a list of keys ({exc})") from None


# --- receipts -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Receipt:
    kid: bytes
    session_id: bytes
    user_id: int
    game_id: str
    saved_at: int
    score: int
    started_at: int
    ended_at: int
    log_index: int
    points_digest: bytes
    salt: bytes
    name: str

    @property
    def player(self) -> str:
        """The `player` of the receipt's log entry."""
        return player_commitment(self.salt, self.user_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid.hex(),
            "game_id": self.game_id,
            "session_id": self.session_id.hex(),
            "user_id": self.user_id,
            "name": self.name,
            "score": self.score,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "saved_at": self.saved_at,
            "log_index": self.log_index,
            "points_digest": self.points_digest.hex(),
            "player": self.player,
        }


def player_commitment(salt: bytes, user_id: int) -> str:
    """How log entries name a player: SHA-256 of a label, the player's salt and their id."""
    return hashlib.sha256(_PLAYER_LABEL + salt + user_id.to_bytes(8, "big")).hexdigest()


def points_digest(tokens: Iterable[str]) -> bytes:
    """SHA-256 of the tokens in order, each followed by a newline (one join: 40 us for 600
    tokens where hashing them one by one took 140)."""
    joined = "\n".join(tokens)
    return hashlib.sha256((joined + "\n" if joined else "").encode("ascii", "replace")).digest()


def make_receipt(
    keys: KeyRing,
    *,
    session_id: bytes,
    user_id: int,
    game_id: str,
    saved_at: int,
    score: int,
    started_at: int,
    ended_at: int,
    log_index: int,
    points_digest: bytes,
    salt: bytes,
    name: str,
) -> str:
    """A receipt signed with the ring's current key."""
    raw_name = name.encode("utf-8")[:NAME_MAX_BYTES]
    body = (
        keys.body(Purpose.RECEIPT, session_id, user_id, game_id, saved_at)
        + _TAIL.pack(score, started_at, ended_at, log_index, points_digest, salt, len(raw_name))
        + raw_name
    )
    return b64encode(body + keys.signing_key.sign(body))


def read_receipt(token: str) -> tuple[Receipt, bytes, bytes]:
    """The receipt's claims, its signed bytes and its signature; its shape only is checked."""
    if not isinstance(token, str) or len(token) > RECEIPT_MAX_CHARS:
        raise VerifyError("not a receipt (too long)")
    try:
        raw = b64decode(token.strip())
    except TokenError as exc:
        raise VerifyError(f"not a receipt ({exc})") from None
    if len(raw) < HEADER.size:
        raise VerifyError("not a receipt (too short)")
    magic, version, purpose, kid, session_id, user_id, _seq, saved_at, game_len = (
        HEADER.unpack_from(raw)
    )
    if magic != MAGIC or version != VERSION or purpose != Purpose.RECEIPT.value:
        raise VerifyError("not a receipt (another kind of token)")
    at = HEADER.size + game_len
    if len(raw) < at + _TAIL.size + SIGNATURE_SIZE:
        raise VerifyError("not a receipt (cut short)")
    score, started_at, ended_at, log_index, digest, salt, name_len = _TAIL.unpack_from(raw, at)
    end = at + _TAIL.size + name_len
    if len(raw) != end + SIGNATURE_SIZE:
        raise VerifyError("not a receipt (its length does not match its name)")
    try:
        game_id = raw[HEADER.size : at].decode("utf-8")
        name = raw[at + _TAIL.size : end].decode("utf-8")
    except UnicodeDecodeError:
        raise VerifyError("not a receipt (malformed text)") from None
    receipt = Receipt(
        kid,
        session_id,
        user_id,
        game_id,
        saved_at,
        score,
        started_at,
        ended_at,
        log_index,
        digest,
        salt,
        name,
    )
    return receipt, raw[:end], raw[end:]


def verify_receipt(token: str, keys: Sequence[PublishedKey]) -> Receipt:
    """The receipt's claims if one of `keys` signed it while it was a key of the deployment;
    VerifyError with the reason otherwise."""
    receipt, body, signature = read_receipt(token)
    key = next((k for k in keys if k.kid == receipt.kid), None)
    if key is None:
        raise VerifyError(
            f"signed by key {receipt.kid.hex()}, which these keys do not include"
            " (a receipt of another server, or the wrong keys file)"
        )
    try:
        key.public_key.verify(signature, body)
    except InvalidSignature:
        raise VerifyError("the signature does not match: the receipt was changed") from None
    if key.retired_at is not None and receipt.saved_at > key.retired_at:
        raise VerifyError(
            f"dated {receipt.saved_at}, after its key {key.kid.hex()} was retired"
            f" ({key.retired_at}): no server signs with a retired key"
        )
    if key.created_at is not None and receipt.saved_at < key.created_at:
        raise VerifyError(f"dated before its key {key.kid.hex()} existed")
    return receipt


# --- log entries --------------------------------------------------------------------------


def entry_text(fields: Mapping[str, Any]) -> str:
    """A log entry's one spelling: JSON, keys sorted, no spaces, ASCII."""
    return json.dumps(dict(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def entry_leaf(text: str) -> bytes:
    return leaf_hash(text.encode("utf-8"))


# --- checkpoints (signed notes) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    note: str  # the whole signed note, as served


def _key_hash(origin: str, public_key: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(origin.encode() + b"\n\x01" + raw_public(public_key)).digest()[:4]


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def sign_checkpoint(origin: str, size: int, root: bytes, key: Ed25519PrivateKey) -> str:
    body = checkpoint_body(origin, size, root)
    signature = key.sign(body.encode())
    blob = base64.b64encode(_key_hash(origin, key.public_key()) + signature).decode()
    return f"{body}\n\u2014 {origin} {blob}\n"


def read_checkpoint(note: str) -> tuple[Checkpoint, list[tuple[bytes, bytes]]]:
    """A checkpoint's claims and its signatures (key hash, signature); shape only."""
    if not isinstance(note, str) or len(note) > 8192 or "\n\n" not in note:
        raise VerifyError("not a checkpoint (no signature block)")
    body, _, signed = note.partition("\n\n")
    body += "\n"
    lines = body.split("\n")
    if len(lines) < 4:
        raise VerifyError("not a checkpoint (origin, size and root expected)")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    try:
        if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
            raise ValueError("size")
        size = int(size_text)
        root = base64.b64decode(root_text, validate=True)
    except (ValueError, binascii.Error):
        raise VerifyError("not a checkpoint (bad size or root)") from None
    if len(root) != 32 or not origin:
        raise VerifyError("not a checkpoint (bad origin or root)")
    signatures = []
    for line in signed.split("\n"):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != "\u2014":
            raise VerifyError("not a checkpoint (malformed signature line)")
        try:
            blob = base64.b64decode(parts[2], validate=True)
        except (ValueError, binascii.Error):
            raise VerifyError("not a checkpoint (malformed signature)") from None
        if parts[1] == origin and len(blob) == 4 + SIGNATURE_SIZE:
            signatures.append((blob[:4], blob[4:]))
    return Checkpoint(origin, size, root, note), signatures


def verify_checkpoint(note: str, keys: Sequence[PublishedKey]) -> Checkpoint:
    """The checkpoint if one of `keys` signed it; VerifyError otherwise."""
    checkpoint, signatures = read_checkpoint(note)
    body = checkpoint_body(checkpoint.origin, checkpoint.size, checkpoint.root).encode()
    for key in keys:
        wanted = _key_hash(checkpoint.origin, key.public_key)
        for key_hash, signature in signatures:
            if key_hash != wanted:
                continue
            try:
                key.public_key.verify(signature, body)
            except InvalidSignature:
                raise VerifyError(
                    f"the signature of key {key.kid.hex()} does not match: the checkpoint"
                    " was changed"
                ) from None
            return checkpoint
    raise VerifyError(
        "signed by no key these keys include (a key the deployment never published, or the"
        " wrong keys file)"
    )


# --- board snapshots ----------------------------------------------------------------------


def _snapshot_bytes(document: Mapping[str, Any]) -> bytes:
    fields = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_snapshot(document: Mapping[str, Any], keys: KeyRing) -> dict[str, Any]:
    """`document` with `kid` and an Ed25519 `signature` over its canonical JSON."""
    signed = {**document, "kid": keys.kid.hex()}
    signature = keys.signing_key.sign(_snapshot_bytes(signed))
    return {**signed, "signature": b64encode(signature)}


def verify_snapshot(document: Mapping[str, Any], keys: Sequence[PublishedKey]) -> Checkpoint:
    """Check a board snapshot's signature and the checkpoint it names; returns that checkpoint."""
    try:
        kid = bytes.fromhex(document["kid"])
        signature = b64decode(document["signature"])
        note = document["checkpoint"]
        taken_at = int(document["taken_at"])
    except (KeyError, TypeError, ValueError, TokenError):
        raise VerifyError("not a board snapshot") from None
    key = next((k for k in keys if k.kid == kid), None)
    if key is None:
        raise VerifyError(f"signed by key {kid.hex()}, which these keys do not include")
    try:
        key.public_key.verify(signature, _snapshot_bytes(document))
    except InvalidSignature:
        raise VerifyError("the signature does not match: the snapshot was changed") from None
    if key.retired_at is not None and taken_at > key.retired_at:
        raise VerifyError(f"dated after its key {kid.hex()} was retired")
    return verify_checkpoint(note, keys)
