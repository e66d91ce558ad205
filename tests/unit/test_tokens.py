"""Token format: signing, purpose binding, tampering, key ids and key validity."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from scoreserver.errors import TokenError
from scoreserver.wire.tokens import (
    KeyRing,
    Purpose,
    VerifyKey,
    b64decode,
    b64encode,
    key_id,
    load_or_create_key,
    peek_seq,
)

SESSION = os.urandom(16)
NOW = 1_700_000_000_000


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing(Ed25519PrivateKey.generate())


def test_round_trip_carries_every_claim(ring: KeyRing) -> None:
    token = ring.sign(Purpose.POINT, SESSION, 42, "demo", NOW, seq=7)
    claims = ring.verify(token, Purpose.POINT, NOW)
    assert (claims.session_id, claims.user_id, claims.game_id, claims.seq, claims.issued_at) == (
        SESSION,
        42,
        "demo",
        7,
        NOW,
    )
    assert claims.kid == ring.kid


def test_guest_tokens_carry_no_user(ring: KeyRing) -> None:
    token = ring.sign(Purpose.START, SESSION, None, "demo", NOW)
    assert ring.verify(token, Purpose.START, NOW).user_id is None


@pytest.mark.parametrize("signed", list(Purpose))
@pytest.mark.parametrize("expected", list(Purpose))
def test_a_token_never_passes_as_another_purpose(
    ring: KeyRing, signed: Purpose, expected: Purpose
) -> None:
    token = ring.sign(signed, SESSION, 1, "demo", NOW, seq=1)
    if signed is expected:
        assert ring.verify(token, expected, NOW).purpose is signed
    else:
        with pytest.raises(TokenError, match="purpose"):
            ring.verify(token, expected, NOW)


def test_every_flipped_byte_is_refused(ring: KeyRing) -> None:
    token = ring.sign(Purpose.END, SESSION, 5, "demo", NOW)
    raw = b64decode(token)
    for index in range(len(raw)):
        for bit in (0x01, 0x80):
            forged = bytearray(raw)
            forged[index] ^= bit
            with pytest.raises(TokenError):
                ring.verify(b64encode(bytes(forged)), Purpose.END, NOW)


def test_another_servers_key_is_refused(ring: KeyRing) -> None:
    other = KeyRing(Ed25519PrivateKey.generate())
    token = other.sign(Purpose.START, SESSION, 1, "demo", NOW)
    with pytest.raises(TokenError, match="unknown key id"):
        ring.verify(token, Purpose.START, NOW)


def test_a_key_with_a_forged_kid_fails_the_signature(ring: KeyRing) -> None:
    attacker = Ed25519PrivateKey.generate()
    token = ring.sign(Purpose.START, SESSION, 1, "demo", NOW)
    raw = bytearray(b64decode(token))
    body = bytes(raw[:-64])
    forged = body + attacker.sign(body)  # same kid, attacker's signature
    with pytest.raises(TokenError, match="bad signature"):
        ring.verify(b64encode(forged), Purpose.START, NOW)


def signed_then_rotated() -> tuple[str, KeyRing]:
    """A start token under an old key, and a ring with a new key that accepts the old one
    until NOW + 1000."""
    old_key = Ed25519PrivateKey.generate()
    token = KeyRing(old_key).sign(Purpose.START, SESSION, 1, "demo", NOW)
    rotated = KeyRing(
        Ed25519PrivateKey.generate(),
        [VerifyKey(key_id(old_key.public_key()), old_key.public_key(), NOW + 1000)],
    )
    return token, rotated


def test_an_old_key_verifies_until_its_end() -> None:
    token, rotated = signed_then_rotated()
    assert rotated.verify(token, Purpose.START, NOW + 1000).session_id == SESSION
    with pytest.raises(TokenError, match="no longer valid"):
        rotated.verify(token, Purpose.START, NOW + 1001)


def test_read_checks_everything_but_the_signature(ring: KeyRing) -> None:
    """`read` (for a caller that compares the token with the one it issued, and verifies when
    they differ) refuses what `verify` refuses for shape, purpose, key and key validity, and
    only the signature is left to `verify`."""
    token = ring.sign(Purpose.START, SESSION, 1, "demo", NOW)
    raw = b64decode(token)
    forged = b64encode(raw[:-64] + Ed25519PrivateKey.generate().sign(raw[:-64]))
    assert ring.read(forged, Purpose.START, NOW).session_id == SESSION
    with pytest.raises(TokenError, match="bad signature"):
        ring.verify(forged, Purpose.START, NOW)
    with pytest.raises(TokenError, match="another purpose"):
        ring.read(token, Purpose.END, NOW)
    other = KeyRing(Ed25519PrivateKey.generate()).sign(Purpose.START, SESSION, 1, "demo", NOW)
    with pytest.raises(TokenError, match="unknown key id"):
        ring.read(other, Purpose.START, NOW)
    for junk in ("", "%%%", token + "A", token[:-1]):
        with pytest.raises(TokenError):
            ring.read(junk, Purpose.START, NOW)
    old, rotated = signed_then_rotated()
    assert rotated.read(old, Purpose.START, NOW + 1000).session_id == SESSION
    with pytest.raises(TokenError, match="no longer valid"):
        rotated.read(old, Purpose.START, NOW + 1001)


@pytest.mark.parametrize("junk", ["", "abc", "%%%", "é", "A" * 500, b64encode(b"SS" + bytes(200))])
def test_junk_is_refused_without_crashing(ring: KeyRing, junk: str) -> None:
    with pytest.raises(TokenError):
        ring.verify(junk, Purpose.START, NOW)
    # Junk never names an issued point (seqs start at 1), or names nothing at all.
    assert peek_seq(junk) in (None, 0)


@pytest.mark.parametrize("seq", [1, 2, 99, 255, 256, 65_536, 2**32 - 1])
def test_peek_seq_reads_the_seq_of_a_point_token(ring: KeyRing, seq: int) -> None:
    for game in ("demo", "a-much-longer-game-id", "é"):
        assert peek_seq(ring.sign(Purpose.POINT, SESSION, 1, game, NOW, seq=seq)) == seq


def test_peek_seq_of_start_and_end_tokens_names_no_issued_point(ring: KeyRing) -> None:
    assert peek_seq(ring.sign(Purpose.START, SESSION, 1, "demo", NOW)) == 0
    assert peek_seq(ring.sign(Purpose.END, SESSION, 1, "demo", NOW)) == 0


def test_key_file_is_created_private_and_reloaded(tmp_path: os.PathLike[str]) -> None:
    path = tmp_path / "k.key"  # type: ignore[operator]
    first = load_or_create_key(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = load_or_create_key(path)
    assert key_id(first.public_key()) == key_id(again.public_key())
