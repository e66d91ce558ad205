"""Who the client is, when a proxy or balancer stands between it and us: no I/O here.

A connection's client address is its TCP peer, unless that peer is a proxy the operator
trusts (`--trusted-proxy CIDR`). From a trusted peer only, two things may name the client:

* a PROXY protocol header (HAProxy's, versions 1 and 2) in front of the connection's bytes:
  `read_proxy_header` reads it from the first bytes, however they are split;
* a forwarding header of the HTTP request (the opening handshake of the game socket is one):
  `X-Forwarded-For` or `Forwarded` (RFC 7239), whichever the proxies are set to write
  (`--forwarded-header`; only one is read, since a proxy that writes one passes the other on
  from the client unchecked).

`client_address` walks the chain from our end: the TCP peer, then the PROXY header's source,
then the header's addresses right to left. Each hop is believed only while the hop that
reported it is trusted, so the answer is the right-most address that is not itself a trusted
proxy (the left-most one when every hop is trusted). What a client writes to the left of that
is never read, so it cannot choose its own address. A hop that cannot be read (not an
address) is refused (`AddressError`), and so is a PROXY header that breaks its format; an
`unknown` or obfuscated hop (`Forwarded: for=unknown`, `for=_x`) leaves the client as the
proxy that reported it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HEADERS = ("x-forwarded-for", "forwarded")
HeaderName = Literal["x-forwarded-for", "forwarded"]

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest version 1 line, CRLF included (the specification's figure)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version and command, family and protocol, length
V2_ADDRESS_BYTES = {0x1: 12, 0x2: 36, 0x3: 216}  # INET, INET6, UNIX


class AddressError(ValueError):
    """A PROXY header or forwarding header that cannot be read: the connection is refused."""


class NeedMore:
    """`read_proxy_header` needs more bytes to decide."""

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = NeedMore()


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A PROXY header read: `length` bytes of the stream are its; `source` is the client it
    names, or None when it names none (v1 UNKNOWN, v2 LOCAL or an unspecified or Unix family:
    the connection's own peer stands)."""

    length: int
    source: str | None


def parse_address(text: str) -> Address:
    """An IP address as text; an IPv4-mapped IPv6 address is the IPv4 one."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def canonical(text: str) -> str:
    """The one spelling of an address that limits and records key on (`::ffff:10.0.0.1` and
    `10.0.0.1` are one client); text that is not an address is returned as it is."""
    try:
        return str(parse_address(text))
    except ValueError:
        return text


class TrustedProxies:
    """The networks whose connections may name another client (`--trusted-proxy`)."""

    def __init__(self, networks: Iterable[str] = ()):
        parsed: list[Network] = []
        for text in networks:
            try:
                parsed.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"{text!r} is not an address or network (e.g. 10.0.0.5 or 10.0.0.0/24)"
                ) from None
        self.networks: tuple[Network, ...] = tuple(parsed)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(n) for n in self.networks]})"

    def trusts(self, address: str | Address) -> bool:
        if not self.networks:
            return False
        try:
            ip = parse_address(address) if isinstance(address, str) else address
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


# --- the PROXY protocol ---------------------------------------------------------------------


def read_proxy_header(data: bytes | bytearray) -> ProxyHeader | NeedMore | None:
    """The PROXY header at the start of `data`: NEED_MORE while `data` is a prefix of one,
    None when `data` does not begin with one. AddressError: a header that breaks the format."""
    if data[:6] == V1_PREFIX:
        return _read_v1(data)
    if data[:12] == V2_SIGNATURE:
        return _read_v2(data)
    head = bytes(data[:12])
    if V1_PREFIX.startswith(head[:6]) or V2_SIGNATURE.startswith(head):
        return NEED_MORE  # so far a prefix of one or the other
    return None


def _read_v1(data: bytes | bytearray) -> ProxyHeader | NeedMore:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise AddressError(f"PROXY v1 header without its CRLF in {V1_MAX} bytes")
        return NEED_MORE
    try:
        line = bytes(data[:end]).decode("ascii")
    except UnicodeDecodeError:
        raise AddressError("PROXY v1 header is not ASCII") from None
    fields = line.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(end + 2, None)  # the specification: ignore the rest of the line
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise AddressError("PROXY v1 header is not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    _, family, source, destination, source_port, destination_port = fields
    version = 4 if family == "TCP4" else 6
    for text in (source, destination):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise AddressError(f"PROXY v1 header has a bad address {text[:40]!r}") from None
        if address.version != version:
            raise AddressError(f"PROXY v1 header: {text!r} is not an {family} address")
    for text in (source_port, destination_port):
        if not (text.isdigit() and text.isascii() and len(text) <= 5 and int(text) <= 65535):
            raise AddressError(f"PROXY v1 header has a bad port {text[:10]!r}")
        if len(text) > 1 and text[0] == "0":
            raise AddressError(f"PROXY v1 header has a port with a leading zero {text!r}")
    return ProxyHeader(end + 2, canonical(source))


def _read_v2(data: bytes | bytearray) -> ProxyHeader | NeedMore:
    if len(data) < V2_FIXED:
        return NEED_MORE
    version_command, family_protocol, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise AddressError(f"PROXY v2 header of version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0x0, 0x1):
        raise AddressError(f"PROXY v2 header with an unknown command {command}")
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    if family not in (0x0, 0x1, 0x2, 0x3) or protocol not in (0x0, 0x1, 0x2):
        raise AddressError(
            f"PROXY v2 header with an unknown family or protocol {family_protocol:#04x}"
        )
    total = V2_FIXED + length
    if len(data) < total:
        return NEED_MORE
    if command == 0x0 or family in (0x0, 0x3):
        # LOCAL (the proxy's own health check), unspecified or a Unix socket: no IP client.
        return ProxyHeader(total, None)
    needed = V2_ADDRESS_BYTES[family]
    if length < needed:
        raise AddressError(f"PROXY v2 header's addresses cut short ({length} of {needed} bytes)")
    body = bytes(data[V2_FIXED : V2_FIXED + needed])
    source: Address = (
        ipaddress.IPv4Address(body[:4]) if family == 0x1 else ipaddress.IPv6Address(body[:16])
    )
    return ProxyHeader(total, canonical(str(source)))


def proxy_v1(source: str, destination: str, source_port: int, destination_port: int) -> bytes:
    """A version 1 header (for tests and tools that speak to a server as a proxy would)."""
    family = "TCP4" if ipaddress.ip_address(source).version == 4 else "TCP6"
    return f"PROXY {family} {source} {destination} {source_port} {destination_port}\r\n".encode()


def proxy_v2(
    source: str, destination: str, source_port: int, destination_port: int, tlvs: bytes = b""
) -> bytes:
    """A version 2 PROXY (command 1, stream) header."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    family = 0x1 if src.version == 4 else 0x2
    body = src.packed + dst.packed + struct.pack("!HH", source_port, destination_port) + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, (family << 4) | 0x1, len(body)) + body


# --- forwarding headers ---------------------------------------------------------------------

# What a hop can be: an address, or None for one the proxy does not name (unknown, obfuscated).
Hop = Address | None


def _hop_from_text(text: str, header: str) -> Hop:
    """One hop as a forwarding header writes it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
    `[2001:db8::1]`, `[2001:db8::1]:80`; `unknown` or `_obfuscated` (None)."""
    text = text.strip()
    if text.lower() == "unknown" or text.startswith("_"):
        return None
    host = text
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1 :] if close > 0 else "!"
        if close < 0 or not (rest == "" or (rest[:1] == ":" and rest[1:].isdigit())):
            raise AddressError(f"{header} has an address that cannot be read: {text[:60]!r}")
        host = text[1:close]
    elif text.count(":") == 1:  # IPv4 with a port
        host, _, port = text.partition(":")
        if not port.isdigit():
            raise AddressError(f"{header} has an address that cannot be read: {text[:60]!r}")
    try:
        return parse_address(host)
    except ValueError:
        raise AddressError(f"{header} has an address that cannot be read: {text[:60]!r}") from None


def _x_forwarded_for(values: Sequence[str]) -> list[str | AddressError]:
    return [item for value in values for item in value.split(",")]


def _forwarded_for(values: Sequence[str]) -> list[str | AddressError]:
    """The `for=` of each element of `Forwarded` headers (RFC 7239), in order; an element
    without one is a hop whose client is not named ("unknown"). An element that cannot be
    read is its error, raised only if the walk reaches it."""
    hops: list[str | AddressError] = []
    for value in values:
        for element in _split_outside_quotes(value, ","):
            try:
                hops.append(_forwarded_element(element))
            except AddressError as exc:
                hops.append(exc)
    return hops


def _forwarded_element(element: str) -> str:
    named = "unknown"
    for pair in _split_outside_quotes(element, ";"):
        key, eq, raw = pair.partition("=")
        if not eq:
            if pair.strip():
                raise AddressError(f"Forwarded has a parameter without '=': {pair[:60]!r}")
            continue
        if key.strip().lower() == "for":
            raw = raw.strip()
            if raw.startswith('"'):
                if len(raw) < 2 or not raw.endswith('"'):
                    raise AddressError(f"Forwarded has an unclosed quote: {raw[:60]!r}")
                raw = raw[1:-1].replace('\\"', '"')
            named = raw
    return named


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts, start, quoted, escaped = [], 0, False, False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def client_address(
    peer: str,
    proxies: TrustedProxies,
    *,
    proxy_source: str | None = None,
    header: HeaderName = "x-forwarded-for",
    values: Sequence[str] = (),
) -> str:
    """The client of a connection from `peer` (see the module docstring). `proxy_source`: the
    source its PROXY header named; `values`: every value of its `header`, in order."""
    client = canonical(peer)
    if not proxies.trusts(client):
        return client
    if proxy_source is not None:
        client = proxy_source
        if not proxies.trusts(client):
            return client
    if not values:
        return client
    name = "X-Forwarded-For" if header == "x-forwarded-for" else "Forwarded"
    hops: Sequence[str | AddressError] = (
        _x_forwarded_for(values) if header == "x-forwarded-for" else _forwarded_for(values)
    )
    for text in reversed(hops):
        if isinstance(text, AddressError):
            raise text
        hop = _hop_from_text(text, name)
        if hop is None:
            return client  # the trusted proxy that reported this hop does not name it
        client = str(hop)
        if not proxies.trusts(hop):
            return client
    return client
