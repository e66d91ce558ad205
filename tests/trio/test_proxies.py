"""Client addresses behind a trusted proxy, on both ports of a real server (127.0.0.1, port 0).

The test itself plays the proxy: connections from 127.0.0.1 are the trusted balancer's
(`--trusted-proxy 127.0.0.1/32`); connections from 127.0.0.2 and up are clients that reached
the server directly, whatever they claim. The real balancers (HAProxy, nginx, Caddy) are in
tests/process/test_balancers.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url, wrap_client_stream

from scoreserver.server.accounts import BudgetSettings
from scoreserver.server.app import Server
from scoreserver.wire.addresses import V2_SIGNATURE, proxy_v1, proxy_v2

from ..conftest import Client, add_game, make_config, running_server, self_signed
from .test_edges import all_at_once, http_from
from .test_end_to_end import wall_ms

PROXY = "127.0.0.1"
JUNK = {"start_token": "a", "end_token": "b", "points": []}


def proxied(tmp_path: Path, *, game: bool = True, **config: Any) -> Any:
    if game:
        add_game(tmp_path / "test.db", "quick", duration_ms=1000, submission_window_ms=60_000)
        add_game(tmp_path / "test.db", "long", duration_ms=4000, submission_window_ms=60_000)
    made = make_config(tmp_path, **config.pop("limits", {}))
    made.trusted_proxies = ("127.0.0.1/32",)
    for name, value in config.items():
        setattr(made, name, value)
    return made


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(proxied(tmp_path)) as srv:
        yield srv


def api(server: Server, source: str = PROXY) -> Any:
    """An HTTP client whose connections come from `source` (the proxy's address by default)."""
    return http_from(server, source)


@asynccontextmanager
async def socket(
    server: Server, headers: list[tuple[str, str]] | None = None
) -> AsyncIterator[Client]:
    async with open_websocket_url(server.ws_url, extra_headers=headers or []) as ws:
        yield Client(ws)


async def raw(
    server: Server, data: bytes, *, port: int | None = None, source: str = PROXY
) -> bytes:
    """Send `data` on a fresh connection (then end it) and read all of the answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port or server.http_port, local_address=source)
    received = b""
    async with stream:
        await stream.send_all(data)
        try:
            await stream.send_eof()
            while chunk := await stream.receive_some():
                received += chunk
        except trio.BrokenResourceError:
            pass
    return received


async def handshake(server: Server, forwarded_for: str) -> bytes:
    """A WebSocket handshake with this X-Forwarded-For, from the proxy; the answer's bytes."""
    return await raw(
        server,
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"X-Forwarded-For: " + forwarded_for.encode() + b"\r\n\r\n",
        port=server.ws_port,
    )


async def flag_addresses(server: Server) -> list[str | None]:
    return [f["guest_addr"] for f in await server.service.store.flags()]


def xff(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def a_flag_from_the_socket(server: Server, ws: Client) -> None:
    """A guest claiming someone else's id: an identity_mismatch flag, with its address."""
    reply = await ws.call(type="enter_game_room", game_id="quick", user_id=999)
    assert reply["code"] == "identity_mismatch", reply


async def test_each_player_behind_the_proxy_is_their_own_address(server: Server) -> None:
    with trio.fail_after(60):
        async with api(server) as http:
            # 40 registrations from 40 players through one balancer: the budget is 30 an
            # address, and each player has their own.
            codes = [
                (
                    await http.post(
                        "/api/register",
                        json={"name": f"p{i}", "password": "hunter2hunter2"},
                        headers=xff(f"6.6.6.6, 198.51.100.{i}"),
                    )
                ).status_code
                for i in range(40)
            ]
            assert codes == [201] * 40
            reply = await http.post("/api/results", json=JUNK, headers=xff("203.0.113.9"))
            assert reply.json()["reason"] == "bad_start_token"
        async with socket(server, [("X-Forwarded-For", "203.0.113.10")]) as ws:
            await a_flag_from_the_socket(server, ws)
        flags = await server.service.store.flags()
        assert await flag_addresses(server) == ["203.0.113.9", "203.0.113.10"]
        assert flags[0]["detail"]["submitted_from"] == "203.0.113.9"


async def test_an_untrusted_peer_cannot_choose_its_address(server: Server) -> None:
    with trio.fail_after(60):
        async with api(server, "127.0.0.2") as http:
            codes = Counter(
                [
                    (
                        await http.post(
                            "/api/register",
                            json={"name": f"u{i}", "password": "hunter2hunter2"},
                            headers=xff(f"198.51.100.{i}"),
                        )
                    ).status_code
                    for i in range(35)
                ]
            )
            assert codes == {201: 30, 429: 5}  # 127.0.0.2's budget, whatever it wrote
            await http.post("/api/results", json=JUNK, headers=xff("198.51.100.77"))
        # A forged PROXY line from an untrusted peer is not taken off: HTTP refuses it.
        header = proxy_v1("198.51.100.78", "127.0.0.1", 1, 2)
        answer = await raw(
            server, header + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", source="127.0.0.3"
        )
        assert answer.startswith(b"HTTP/1.1 400")
        stream = await trio.open_tcp_stream("127.0.0.1", server.ws_port, local_address="127.0.0.3")
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(
                nursery,
                stream,
                "127.0.0.1",
                "/",
                extra_headers=[("X-Forwarded-For", "198.51.100.79")],
            )
            await a_flag_from_the_socket(server, Client(ws))
            await ws.aclose()
        await stream.aclose()  # trio-websocket's client leaves it open (see conftest.py)
        assert await flag_addresses(server) == ["127.0.0.2", "127.0.0.3"]


@pytest.mark.parametrize("version", [1, 2])
async def test_a_proxy_header_names_the_client_on_both_ports(server: Server, version: int) -> None:
    make = proxy_v1 if version == 1 else proxy_v2
    with trio.fail_after(60):
        body = json.dumps(JUNK).encode()
        request = (
            b"POST /api/results HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        answer = await raw(server, make("203.0.113.21", "127.0.0.1", 40000, 80) + request)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        # mode tcp: the client's own X-Forwarded-For is not read after a PROXY header.
        forged = request.replace(b"Host: x\r\n", b"Host: x\r\nX-Forwarded-For: 6.6.6.6\r\n")
        answer = await raw(server, make("203.0.113.22", "127.0.0.1", 40000, 80) + forged)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        # The game socket: the header, then the WebSocket handshake on the same stream.
        stream = await trio.open_tcp_stream("127.0.0.1", server.ws_port, local_address=PROXY)
        await stream.send_all(make("203.0.113.23", "127.0.0.1", 40000, 80))
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/")
            await a_flag_from_the_socket(server, Client(ws))
            await ws.aclose()
        await stream.aclose()
        # v2 LOCAL (the balancer's health check): the balancer itself.
        local = V2_SIGNATURE + b"\x20\x00\x00\x00"
        answer = await raw(server, local + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
        assert await flag_addresses(server) == ["203.0.113.21", "203.0.113.22", "203.0.113.23"]


async def test_tls_passthrough_with_a_proxy_header(tmp_path: Path) -> None:
    """A `mode tcp` balancer in front of TLS: the PROXY header comes before the TLS bytes."""
    trust = self_signed(tmp_path)
    config = proxied(tmp_path, tls_cert=tmp_path / "cert.pem", tls_key=tmp_path / "key.pem")
    with trio.fail_after(60):
        async with running_server(config) as server:
            for port in (server.http_port, server.ws_port):
                tcp = await trio.open_tcp_stream("127.0.0.1", port, local_address=PROXY)
                await tcp.send_all(proxy_v2("203.0.113.31", "127.0.0.1", 1, 443))
                tls = trio.SSLStream(tcp, trust, server_hostname="127.0.0.1")
                if port == server.ws_port:
                    async with trio.open_nursery() as nursery:
                        ws = await wrap_client_stream(nursery, tls, "127.0.0.1", "/")
                        await a_flag_from_the_socket(server, Client(ws))
                        await ws.aclose()
                    await tls.aclose()
                    continue
                body = json.dumps(JUNK).encode()
                await tls.send_all(
                    b"POST /api/results HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                answer = b""
                try:
                    while chunk := await tls.receive_some():
                        answer += chunk
                except trio.BrokenResourceError:
                    pass
                await tls.aclose()
                assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert await flag_addresses(server) == ["203.0.113.31", "203.0.113.31"]


BROKEN = [
    b"PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n",
    b"PROXY TCP4 garbage\r\n",
    b"PROXY " + b"x" * 200,
    b"PROXY \xff\xfe\r\n",
    V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12),  # v2, an unknown address family
    V2_SIGNATURE + b"\x21\xf1\x00\x00",
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # v2 header of version 1
    V2_SIGNATURE + b"\x2f\x11\x00\x0c" + bytes(12),  # an unknown command
    V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # addresses cut short
]


async def test_broken_proxy_headers_are_refused_and_others_served(server: Server) -> None:
    with trio.fail_after(60):
        for header in BROKEN:
            for port in (server.http_port, server.ws_port):
                answer = await raw(server, header + b"GET / HTTP/1.1\r\n\r\n", port=port)
                assert answer.startswith(b"HTTP/1.1 400 Bad Request"), (header, answer)
                assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "bad_request"
        # Cut short, then the end of the stream: closed, with HTTP's own 400 for the bytes
        # that came (they are not a request either). (The game socket waits for the rest of
        # a handshake until its timeout, with or without a PROXY header: the next test.)
        for cut in (
            b"PROX",
            b"PROXY TCP4 1.2.3.4",
            V2_SIGNATURE[:7],
            V2_SIGNATURE + b"\x21\x11\x00\x0c",
        ):
            answer = await raw(server, cut)
            assert answer.startswith(b"HTTP/1.1 400"), answer
        async with api(server) as http:
            assert (await http.get("/healthz")).json()["status"] == "ok"
        async with socket(server) as ws:
            assert (await ws.call(type="whoami"))["type"] == "identity"
        assert await server.service.store.flags() == []


async def test_a_proxy_header_cut_short_is_dropped_at_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    config = proxied(tmp_path, limits={"handshake_timeout_s": 0.5})
    with trio.fail_after(30):
        async with running_server(config) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.ws_port, local_address=PROXY)
            async with stream:
                await stream.send_all(b"PROXY TCP4 1.2.3.4 ")
                # The server ends it: the read sees the end (or a reset), no answer.
                try:
                    assert await stream.receive_some() == b""
                except trio.BrokenResourceError:
                    pass
            async with socket(server) as ws:
                assert (await ws.call(type="whoami"))["type"] == "identity"


@pytest.mark.parametrize(
    "value", ["not an address", "1.2.3.4:http", "[2001:db8::1", "198.51.100.1,"]
)
async def test_an_unreadable_forwarding_header_from_the_proxy_is_refused(
    server: Server, value: str
) -> None:
    with trio.fail_after(60):
        async with api(server) as http:
            reply = await http.get("/healthz", headers=xff(value))
            assert reply.status_code == 400 and reply.json()["error"] == "bad_request"
            assert "X-Forwarded-For" in reply.json()["message"]
            assert (await http.get("/healthz")).status_code == 200
        answer = await handshake(server, value)
        assert answer.startswith(b"HTTP/1.1 400"), answer
        async with socket(server) as ws:
            assert (await ws.call(type="whoami"))["type"] == "identity"


async def test_thousands_of_addresses_in_one_header(server: Server) -> None:
    with trio.fail_after(60):
        many = ", ".join(f"10.{i // 256}.{i % 256}.1" for i in range(1500))  # ~17 KiB
        async with api(server) as http:
            reply = await http.post(
                "/api/results", json=JUNK, headers=xff(many[:15_000].rsplit(",", 1)[0])
            )
            assert reply.status_code == 200
            flagged = (await flag_addresses(server))[-1]
            assert flagged is not None and flagged.startswith("10.") and flagged.endswith(".1")
            # Past what the HTTP parser holds: refused by it, and the next request served.
            reply = await http.get("/healthz", headers=xff(many * 8))
            assert reply.status_code in (400, 413, 431)
            assert (await http.get("/healthz")).status_code == 200
        async with socket(server, [("X-Forwarded-For", many[:12_000].rsplit(",", 1)[0])]) as ws:
            assert (await ws.call(type="whoami"))["type"] == "identity"


async def test_one_address_sending_junk_through_the_proxy_leaves_honest_players_alone(
    server: Server,
) -> None:
    """One address floods junk submissions through the balancer while 50 honest players
    behind it submit: every honest one is accepted and saved; the junk is flagged up to its
    budget and refused after. Players sharing the junk sender's address (one NAT) too."""
    with trio.fail_after(120):
        players = []
        async with api(server) as http:
            for i in range(50):
                reply = await http.post(
                    "/api/register",
                    json={"name": f"h{i}", "password": "hunter2hunter2"},
                    headers=xff(f"198.51.100.{i}" if i < 45 else "203.0.113.66"),
                )
                assert reply.status_code == 201, reply.text
                players.append(reply.json())
        games: list[dict[str, Any]] = [{}] * 50

        async def play(i: int) -> None:
            address = f"198.51.100.{i}" if i < 45 else "203.0.113.66"
            async with socket(server, [("X-Forwarded-For", address)]) as ws:
                await ws.login(players[i])
                await ws.enter("long", players[i]["user_id"])
                started = await ws.start(wall_ms())
                points = []
                for _ in range(3):
                    ts = wall_ms()
                    reply = await ws.call(type="point", client_ts=ts)
                    assert reply["type"] == "point_accepted", reply
                    points.append({"token": reply["token"], "client_ts": ts})
                end = await ws.recv_type("end_game")
                games[i] = {
                    "start_token": started["start_token"],
                    "end_token": end["end_token"],
                    "points": points,
                }

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(play, i)
        async with api(server) as http:

            async def submit(i: int) -> tuple[str, int, dict[str, Any]]:
                if i >= 50:
                    reply = await http.post("/api/results", json=JUNK, headers=xff("203.0.113.66"))
                    return "junk", reply.status_code, reply.json()
                address = f"198.51.100.{i}" if i < 45 else "203.0.113.66"
                body = {k: games[i][k] for k in ("start_token", "end_token", "points")}
                reply = await http.post("/api/results", json=body, headers=xff(address))
                return "honest", reply.status_code, reply.json()

            outcomes = await all_at_once(50 + 60, submit)
        honest = [(code, body) for kind, code, body in outcomes if kind == "honest"]
        assert all(code == 200 and body["accepted"] and body["saved"] for code, body in honest)
        junk = Counter(code for kind, code, _ in outcomes if kind == "junk")
        assert junk == {200: 30, 429: 30}
        assert set(await flag_addresses(server)) == {"203.0.113.66"}


async def test_connections_per_address_count_the_client_not_the_proxy(tmp_path: Path) -> None:
    config = proxied(tmp_path, limits={"max_conns_per_addr": 2})
    with trio.fail_after(60):
        async with running_server(config) as server:
            a = [("X-Forwarded-For", "198.51.100.1")]
            async with socket(server, a), socket(server, a):
                assert (await handshake(server, "198.51.100.1")).startswith(b"HTTP/1.1 429")
                async with socket(server, [("X-Forwarded-For", "198.51.100.2")]) as other:
                    assert (await other.call(type="whoami"))["type"] == "identity"


async def test_budgets_are_the_operators(tmp_path: Path) -> None:
    budgets = BudgetSettings(login_attempts_per_addr=0, failed_submissions_per_addr=2)
    config = proxied(tmp_path, budgets=budgets)
    config.trusted_proxies = ()
    with trio.fail_after(60):
        async with running_server(config) as server:
            async with api(server) as http:
                codes = Counter(
                    [
                        (
                            await http.post(
                                "/api/register",
                                json={"name": f"n{i}", "password": "hunter2hunter2"},
                            )
                        ).status_code
                        for i in range(40)
                    ]
                )
                assert codes == {201: 40}  # 0: no limit on logins from one address
                codes = Counter(
                    r.status_code
                    for r in await all_at_once(6, lambda i: http.post("/api/results", json=JUNK))
                )
                assert codes == {200: 2, 429: 4}


async def test_failed_submissions_are_counted_on_every_node_together(tmp_path: Path) -> None:
    """Two nodes of one database: an address's failures on one count on the other."""
    first = proxied(tmp_path)
    second = proxied(tmp_path, game=False)
    second.key_path = tmp_path / "second.key"
    with trio.fail_after(60):
        async with running_server(first) as one, running_server(second) as two:
            codes: Counter[int] = Counter()
            for node in (one, two, one, two):
                async with api(node) as http:
                    for _ in range(10):
                        reply = await http.post(
                            "/api/results", json=JUNK, headers=xff("203.0.113.50")
                        )
                        codes[reply.status_code] += 1
            assert codes == {200: 30, 429: 10}
