"""Cross-origin use: CORS on HTTP and the Origin check on the game socket."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

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
