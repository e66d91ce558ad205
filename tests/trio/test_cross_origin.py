"""Cross-origin use: CORS on HTTP and the Origin check on the game socket."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from scoreserver.server.app import Server
from scoreserver.server.ws import origin_allowed

from ..conftest import connect, http, make_config, running_server

GAME_SITE = "https://games.example"


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        ("http://127.0.0.1:3000", "127.0.0.1:8765", (), True),
        ("http://localhost:8080", "localhost:8765", (), True),
        ("http://[::1]:8080", "[::1]:8765", (), True),
        ("http://evil.example", "127.0.0.1:8765", (), False),
        ("http://127.0.0.1.evil.example", "127.0.0.1:8765", (), False),
        ("null", "127.0.0.1:8765", (), False),
        (GAME_SITE, "scores.example:8765", (GAME_SITE,), True),
        ("https://other.example", "scores.example", (GAME_SITE,), False),
        ("https://anything.example", "scores.example", ("*",), True),
    ],
)
def test_origin_rules(origin: str, host: str, allowed: tuple[str, ...], expected: bool) -> None:
    assert origin_allowed(origin, host, allowed) is expected


async def test_http_cors(tmp_path: Path) -> None:
    config = make_config(tmp_path, allowed_origins=(GAME_SITE,))
    with trio.fail_after(20):
        async with running_server(config) as server, http(server) as api:
            same_host = await api.get("/healthz", headers={"origin": "http://127.0.0.1:5173"})
            assert same_host.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"
            listed = await api.get("/api/keys", headers={"origin": GAME_SITE})
            assert listed.headers["access-control-allow-origin"] == GAME_SITE
            assert "origin" in listed.headers["vary"].lower()
            foreign = await api.get("/healthz", headers={"origin": "https://evil.example"})
            assert foreign.status_code == 200
            assert "access-control-allow-origin" not in foreign.headers
            preflight = await api.options(
                "/api/results",
                headers={
                    "origin": GAME_SITE,
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "content-type",
                },
            )
            assert preflight.status_code == 204
            assert "POST" in preflight.headers["access-control-allow-methods"]
            module = await api.get("/static/scoreclient.js", headers={"origin": GAME_SITE})
            assert module.headers["access-control-allow-origin"] == GAME_SITE


async def handshake_status(port: int, origin: str | None) -> int:
    """The status line's code for a WebSocket upgrade request with `origin`."""
    lines = [
        "GET / HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin:
        lines.append(f"Origin: {origin}")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        reply = b""
        while b"\r\n" not in reply:
            chunk = await stream.receive_some()
            assert chunk
            reply += chunk
    return int(reply.split(b" ", 2)[1])


async def test_socket_origin_check(tmp_path: Path) -> None:
    config = make_config(tmp_path, allowed_origins=(GAME_SITE,))
    with trio.fail_after(20):
        async with running_server(config) as server:
            port = server.ws_port
            assert await handshake_status(port, "http://127.0.0.1:8080") == 101
            assert await handshake_status(port, GAME_SITE) == 101
            assert await handshake_status(port, None) == 101
            assert await handshake_status(port, "https://evil.example") == 403
            async with connect(server) as client:  # and the server still serves
                assert (await client.call(type="whoami"))["type"] == "identity"


async def _answer(port: int, payload: bytes, *, byte_by_byte: bool = False) -> bytes:
    """What the game socket answers to `payload` before it closes (or its first 64 KiB)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        try:
            if byte_by_byte:
                for index in range(len(payload)):
                    await stream.send_all(payload[index : index + 1])
            else:
                await stream.send_all(payload)
            reply = b""
            while b"\r\n\r\n" not in reply and len(reply) < 65536:
                chunk = await stream.receive_some()
                if not chunk:
                    break
                reply += chunk
        except trio.BrokenResourceError:  # refused and closed while we were still sending
            reply = b""
    return reply


def _upgrade(host: bytes | None, origin: bytes | None, extra: bytes = b"") -> bytes:
    lines = [
        b"GET / HTTP/1.1",
        *([b"Host: " + host] if host is not None else []),
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Version: 13",
        *([b"Origin: " + origin] if origin is not None else []),
    ]
    return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"


async def test_hostile_handshakes_at_once_get_a_refusal_and_the_server_goes_on(
    server: Server,
) -> None:
    """The Host the same-origin check reads from the handshake's bytes (transport.py): sent
    split byte by byte it is still read; missing, huge, binary or after a flood of headers, the
    browser is refused; none of it, sent all at once to the default configuration, stops the
    server or the next player."""
    port = server.ws_port
    here = f"127.0.0.1:{port}".encode()
    page = b"http://127.0.0.1:8080"
    cases = {
        "split byte by byte": (_upgrade(here, page), True),
        "no host": (_upgrade(None, page), False),
        "huge host": (_upgrade(b"h" * 40_000, page), False),
        "binary host": (_upgrade(b"\x00\xff\xfe\x1b[2J", page), False),
        "host after 20 KiB of headers": (
            _upgrade(None, page, b"X-Pad: " + b"p" * 20_000 + b"\r\nHost: " + here + b"\r\n"),
            False,
        ),
        "garbage": (bytes(range(256)) * 64, False),
        "empty": (b"", False),
    }
    answers: dict[str, bytes] = {}

    async def one(name: str) -> None:
        payload, split = cases[name]
        answers[name] = await _answer(port, payload, byte_by_byte=split)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(5):  # every case five times, all at once
                for name in cases:
                    nursery.start_soon(one, name)
        assert answers["split byte by byte"].startswith(b"HTTP/1.1 101")
        assert answers["empty"] == b""
        for name in cases:
            if name != "split byte by byte":
                assert not answers[name].startswith(b"HTTP/1.1 101"), name
        for name in ("no host", "binary host", "host after 20 KiB of headers"):
            # Refused: 403 by the origin check, or 400 / a closed socket by the handshake's
            # parser; never a crash (1011 is a frame; no connection got that far).
            assert answers[name][:10] in (b"HTTP/1.1 4", b""), (name, answers[name][:40])
        async with connect(server) as client:
            assert (await client.call(type="whoami"))["type"] == "identity"
        assert server.service.store.failure is None
