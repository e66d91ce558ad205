"""The client address behind proxies (wire/addresses.py): PROXY headers and forwarding headers,
read as bytes and strings, with no socket."""

from __future__ import annotations

import random
import struct

import pytest

from scoreserver.wire.addresses import (
    NEED_MORE,
    V2_SIGNATURE,
    AddressError,
    ProxyHeader,
    TrustedProxies,
    canonical,
    client_address,
    proxy_v1,
    proxy_v2,
    read_proxy_header,
)

LB = TrustedProxies(["10.0.0.0/24", "fd00::/64"])


# --- PROXY v1 -------------------------------------------------------------------------------


def test_v1_names_the_source_and_its_length() -> None:
    line = proxy_v1("203.0.113.7", "10.0.0.1", 51234, 8080)
    assert read_proxy_header(line + b"GET / HTTP/1.1\r\n") == ProxyHeader(len(line), "203.0.113.7")
    line6 = proxy_v1("2001:db8::7", "fd00::1", 1, 2)
    assert read_proxy_header(line6) == ProxyHeader(len(line6), "2001:db8::7")


def test_v1_every_prefix_needs_more_and_unknown_names_nobody() -> None:
    line = proxy_v1("203.0.113.7", "10.0.0.1", 51234, 8080)
    for cut in range(1, len(line)):
        assert read_proxy_header(line[:cut]) is NEED_MORE, cut
    unknown = b"PROXY UNKNOWN whatever follows\r\n"
    assert read_proxy_header(unknown) == ProxyHeader(len(unknown), None)
    assert read_proxy_header(b"PROXY UNKNOWN\r\n") == ProxyHeader(15, None)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",  # a field too many
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",  # v6 under TCP4
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n",  # not ASCII (an Arabic-Indic digit)
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY " + b"9" * 120,  # no CRLF in 107 bytes
    ],
)
def test_v1_that_breaks_the_format_is_refused(line: bytes) -> None:
    with pytest.raises(AddressError):
        read_proxy_header(line)


def test_no_header_is_none() -> None:
    assert read_proxy_header(b"GET / HTTP/1.1\r\n") is None
    assert read_proxy_header(b"PROXz") is None
    assert read_proxy_header(b"\r\n\r\n\x00\r\nQUIX") is None


# --- PROXY v2 -------------------------------------------------------------------------------


def test_v2_names_the_source_with_and_without_tlvs() -> None:
    header = proxy_v2("198.51.100.9", "10.0.0.1", 40000, 8765)
    assert read_proxy_header(header + b"\x16\x03") == ProxyHeader(len(header), "198.51.100.9")
    tlvs = b"\x04\x00\x05hello" + b"\x20\x00\x01\x00"  # a NOOP and an SSL TLV, skipped
    header = proxy_v2("2001:db8::9", "fd00::1", 40000, 8765, tlvs)
    assert read_proxy_header(header) == ProxyHeader(len(header), "2001:db8::9")
    for cut in range(1, len(header)):
        assert read_proxy_header(header[:cut]) is NEED_MORE, cut


def _v2(version_command: int, family_protocol: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", version_command, family_protocol, len(body)) + body


def test_v2_local_unspecified_and_unix_name_nobody() -> None:
    local = _v2(0x20, 0x11, bytes(12))  # LOCAL: the proxy's health check
    assert read_proxy_header(local) == ProxyHeader(len(local), None)
    unspec = _v2(0x21, 0x00, b"")
    assert read_proxy_header(unspec) == ProxyHeader(16, None)
    unix = _v2(0x21, 0x31, bytes(216))
    assert read_proxy_header(unix) == ProxyHeader(16 + 216, None)


@pytest.mark.parametrize(
    "header",
    [
        _v2(0x11, 0x11, bytes(12)),  # version 1 in a v2 header
        _v2(0x31, 0x11, bytes(12)),
        _v2(0x22, 0x11, bytes(12)),  # unknown command
        _v2(0x21, 0x41, bytes(12)),  # unknown address family
        _v2(0x21, 0xF1, bytes(40)),
        _v2(0x21, 0x13, bytes(12)),  # unknown transport protocol
        _v2(0x21, 0x11, bytes(8)),  # IPv4 addresses cut short
        _v2(0x21, 0x21, bytes(20)),  # IPv6 addresses cut short
    ],
)
def test_v2_that_breaks_the_format_is_refused(header: bytes) -> None:
    with pytest.raises(AddressError):
        read_proxy_header(header)


def test_random_bytes_after_a_signature_never_raise_anything_else() -> None:
    rng = random.Random(24)
    for _ in range(20_000):
        prefix = rng.choice([V2_SIGNATURE, b"PROXY ", b"PROXY TCP4 ", b""])
        data = prefix + rng.randbytes(rng.randrange(0, 120))
        try:
            result = read_proxy_header(data)
        except AddressError:
            continue
        assert result is None or result is NEED_MORE or isinstance(result, ProxyHeader)
        if isinstance(result, ProxyHeader):
            assert 0 < result.length <= len(data)


# --- forwarding headers ---------------------------------------------------------------------


def test_an_untrusted_peer_is_the_client_whatever_it_sends() -> None:
    assert client_address("198.51.100.1", LB, values=["1.2.3.4"]) == "198.51.100.1"
    assert client_address("198.51.100.1", LB, proxy_source="1.2.3.4") == "198.51.100.1"
    assert client_address("198.51.100.1", TrustedProxies(), values=["1.2.3.4"]) == "198.51.100.1"


def test_the_right_most_untrusted_hop_is_the_client() -> None:
    # The client wrote "6.6.6.6" itself; the balancer appended the address it saw.
    assert client_address("10.0.0.2", LB, values=["6.6.6.6, 203.0.113.5"]) == "203.0.113.5"
    # Two trusted proxies in a row, and the header split over two lines.
    values = ["6.6.6.6, 203.0.113.5", "10.0.0.9"]
    assert client_address("10.0.0.2", LB, values=values) == "203.0.113.5"
    # Every hop trusted: the left-most.
    assert client_address("10.0.0.2", LB, values=["10.0.0.7, 10.0.0.8"]) == "10.0.0.7"
    # A trusted proxy without the header: the proxy is the client.
    assert client_address("10.0.0.2", LB) == "10.0.0.2"


def test_ports_brackets_and_mapped_addresses_are_one_spelling() -> None:
    for hop in ("203.0.113.5:4711", "::ffff:203.0.113.5", "[::ffff:203.0.113.5]:1"):
        assert client_address("10.0.0.2", LB, values=[hop]) == "203.0.113.5"
    assert client_address("10.0.0.2", LB, values=["[2001:DB8::1]:80"]) == "2001:db8::1"
    assert client_address("::ffff:10.0.0.2", LB, values=["2001:db8::1"]) == "2001:db8::1"
    assert canonical("::ffff:127.0.0.2") == "127.0.0.2"


def test_proxy_sources_and_headers_are_believed_only_after_a_trusted_hop() -> None:
    # mode tcp: the PROXY source is the client; what it wrote in its headers is not read.
    got = client_address("10.0.0.2", LB, proxy_source="203.0.113.5", values=["6.6.6.6"])
    assert got == "203.0.113.5"
    # A trusted proxy in front of a trusted proxy that speaks PROXY: its header is read.
    got = client_address("10.0.0.2", LB, proxy_source="10.0.0.3", values=["203.0.113.5"])
    assert got == "203.0.113.5"


def test_forwarded_header() -> None:
    fwd = "forwarded"
    assert (
        client_address("10.0.0.2", LB, header=fwd, values=['for="[2001:db8:cafe::17]:4711"'])
        == "2001:db8:cafe::17"
    )
    values = ["for=6.6.6.6, for=192.0.2.60;proto=http;by=203.0.113.43", 'For="10.0.0.5"']
    assert client_address("10.0.0.2", LB, header=fwd, values=values) == "192.0.2.60"
    # unknown and obfuscated hops leave the proxy that reported them as the client.
    assert client_address("10.0.0.2", LB, header=fwd, values=["for=unknown"]) == "10.0.0.2"
    assert client_address("10.0.0.2", LB, header=fwd, values=["for=_hidden"]) == "10.0.0.2"
    assert client_address("10.0.0.2", LB, header=fwd, values=["proto=https"]) == "10.0.0.2"
    # A quoted comma or semicolon does not split an element.
    values = ['for=192.0.2.1;x="a,b;c"']
    assert client_address("10.0.0.2", LB, header=fwd, values=values) == "192.0.2.1"
    # Only the configured header is read: X-Forwarded-For passes through such a proxy.
    assert client_address("10.0.0.2", LB, header=fwd, values=[]) == "10.0.0.2"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-forwarded-for", "not-an-address"),
        ("x-forwarded-for", "1.2.3.4:http"),
        ("x-forwarded-for", "[2001:db8::1"),
        ("x-forwarded-for", "[2001:db8::1]x"),
        ("x-forwarded-for", ""),
        ("x-forwarded-for", "1.2.3.4,"),
        ("forwarded", 'for="1.2.3.4'),
        ("forwarded", "for=1.2.3.4;junk"),
        ("forwarded", "for=a.b.c.d"),
    ],
)
def test_an_unreadable_hop_that_is_reached_is_refused(header: str, value: str) -> None:
    with pytest.raises(AddressError):
        client_address("10.0.0.2", LB, header=header, values=[value])  # type: ignore[arg-type]


def test_what_the_client_wrote_left_of_its_address_is_never_read() -> None:
    assert client_address("10.0.0.2", LB, values=["junk, not an ip, 203.0.113.5"]) == "203.0.113.5"
    values = ['for="broken, for=203.0.113.5']
    # The broken element swallowed the rest: there is no readable hop to reach.
    with pytest.raises(AddressError):
        client_address("10.0.0.2", LB, header="forwarded", values=values)
    values = ["for=junk;x, for=203.0.113.5"]
    assert client_address("10.0.0.2", LB, header="forwarded", values=values) == "203.0.113.5"


def test_thousands_of_hops_are_walked_only_as_far_as_trusted() -> None:
    many = ", ".join(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(5000))
    # Every one outside 10.0.0.0/24 but the last 256 is untrusted: the walk stops early.
    got = client_address("10.0.0.2", LB, values=[many])
    assert got == "10.0.19.135"  # the right-most hop (i = 4999) is 10.0.19.135, untrusted
    all_trusted = ", ".join(f"10.0.0.{i % 256}" for i in range(5000))
    assert client_address("10.0.0.2", LB, values=[all_trusted]) == "10.0.0.0"


def test_trusted_proxies_refuse_what_is_not_a_network() -> None:
    with pytest.raises(ValueError, match="not an address or network"):
        TrustedProxies(["10.0.0.0/33"])
    with pytest.raises(ValueError, match="not an address or network"):
        TrustedProxies(["proxy.example"])
    assert TrustedProxies(["127.0.0.1"]).trusts("::ffff:127.0.0.1")
    assert not TrustedProxies(["127.0.0.1"]).trusts("127.0.0.2")
    assert not TrustedProxies(["127.0.0.1"]).trusts("garbage")
