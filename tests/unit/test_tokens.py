"""Token format: signing, purpose binding, tampering, key ids and key validity."""

from __future__ import annotations

import hmac
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from scoreserver.errors import TokenError
from scoreserver.wire.tokens import (
    MAC_SIZE,
    MAC_VERSION,
    KeyRing,
    Purpose,
    VerifyKey,
    b64decode,
    b64encode,
    finish,
    key_id,
    load_or_create_key,
    mac_key,
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


# --- point tokens: a MAC (version 2) --------------------------------------------------------


def test_a_point_token_is_a_mac_bound_to_every_claim(ring: KeyRing) -> None:
    token = ring.sign(Purpose.POINT, SESSION, 42, "demo", NOW, seq=7)
    raw = b64decode(token)
    assert raw[2] == MAC_VERSION and len(raw) == 49 + 4 + MAC_SIZE
    assert ring.point(SESSION, 42, b"demo", NOW, 7) == token  # one spelling
    for index in range(len(raw)):  # purpose, key id, session, user, seq, time, game, the MAC
        for bit in (0x01, 0x80):
            forged = bytearray(raw)
            forged[index] ^= bit
            with pytest.raises(TokenError):
                ring.verify(b64encode(bytes(forged)), Purpose.POINT, NOW)
    for other in (
        ring.point(os.urandom(16), 42, b"demo", NOW, 7),
        ring.point(SESSION, 43, b"demo", NOW, 7),
        ring.point(SESSION, 42, b"demo", NOW, 8),
        ring.point(SESSION, 42, b"demo", NOW + 1, 7),
        ring.point(SESSION, 42, b"demo2", NOW, 7),
    ):
        assert other != token and ring.verify(other, Purpose.POINT, NOW)


def test_only_a_point_token_carries_a_mac(ring: KeyRing) -> None:
    point = b64decode(ring.sign(Purpose.POINT, SESSION, 1, "demo", NOW, seq=1))
    as_end = bytearray(point)
    as_end[3] = ord("E")  # a MAC'd token claiming another purpose: refused by its shape
    for purpose in (Purpose.END, Purpose.START):
        with pytest.raises(TokenError):
            ring.verify(b64encode(bytes(as_end)), purpose, NOW)
    with pytest.raises(TokenError, match="purpose"):
        ring.verify(b64encode(point), Purpose.END, NOW)


def test_a_mac_under_another_servers_key_is_refused(ring: KeyRing) -> None:
    other = KeyRing(Ed25519PrivateKey.generate())
    token = other.sign(Purpose.POINT, SESSION, 1, "demo", NOW, seq=1)
    with pytest.raises(TokenError, match="unknown key id"):
        ring.verify(token, Purpose.POINT, NOW)
    # With the other's public key known (a node of the same deployment) but not its MAC key:
    # refused (a submission is judged against the tokens stored for its session; see tokens.py).
    knows = KeyRing(
        Ed25519PrivateKey.generate(),
        [VerifyKey(other.kid, other.signing_key.public_key(), None)],
    )
    with pytest.raises(TokenError, match="no MAC key"):
        knows.verify(token, Purpose.POINT, NOW)
    # The same key id with a MAC made under a guessed key: refused.
    raw = b64decode(ring.sign(Purpose.POINT, SESSION, 1, "demo", NOW, seq=1))
    guessed = hmac.digest(os.urandom(32), raw[:-MAC_SIZE], "sha256")[:MAC_SIZE]
    with pytest.raises(TokenError, match="bad MAC"):
        ring.verify(b64encode(raw[:-MAC_SIZE] + guessed), Purpose.POINT, NOW)


def test_a_signed_point_token_from_before_the_mac_still_verifies(ring: KeyRing) -> None:
    """Version 1 point tokens (Ed25519, issued before the upgrade) verify while their key
    does; a forged one does not."""
    body = ring.body(Purpose.POINT, SESSION, 3, "demo", NOW, 9)
    old = finish(body, ring.signing_key.sign(body))
    assert ring.verify(old, Purpose.POINT, NOW).seq == 9
    assert peek_seq(old) == 9
    forged = finish(body, Ed25519PrivateKey.generate().sign(body))
    with pytest.raises(TokenError, match="bad signature"):
        ring.verify(forged, Purpose.POINT, NOW)


def test_a_rotation_keeps_the_mac_keys_of_the_keys_it_still_accepts() -> None:
    old_key = Ed25519PrivateKey.generate()
    before = KeyRing(old_key)
    token = before.sign(Purpose.POINT, SESSION, 1, "demo", NOW, seq=1)
    after = KeyRing(
        Ed25519PrivateKey.generate(),
        [VerifyKey(key_id(old_key.public_key()), old_key.public_key(), NOW + 1000)],
    )
    after.carry_macs(before)
    assert after.verify(token, Purpose.POINT, NOW + 1000).seq == 1
    with pytest.raises(TokenError, match="no longer valid"):
        after.verify(token, Purpose.POINT, NOW + 1001)
    dropped = KeyRing(Ed25519PrivateKey.generate())  # the old key no longer accepted at all
    dropped.carry_macs(before)
    with pytest.raises(TokenError, match="unknown key id"):
        dropped.verify(token, Purpose.POINT, NOW)
    assert mac_key(old_key) != mac_key(Ed25519PrivateKey.generate())


@pytest.mark.parametrize("seq", [0, 1, 255, 65_536, 2**32 - 1])
def test_peek_seq_reads_a_mac_point_tokens_seq(ring: KeyRing, seq: int) -> None:
    assert peek_seq(ring.point(SESSION, None, b"g", NOW, seq)) == seq
