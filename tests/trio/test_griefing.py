"""What one sender can do to others and to the operator's attention: flags, caps, lockouts,
on a real server (127.0.0.1, port 0) with its writer process, on both engines."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import wrap_client_stream

from scoreserver.server.accounts import BudgetSettings
from scoreserver.server.app import Server

from .. import databases
from ..conftest import Client, add_game, connect, http, make_config, register, running_server
from ..rawws import RawSocket
from .test_end_to_end import play_quick

pytestmark = pytest.mark.engines

FLAGS_BUDGET = BudgetSettings().flags_per_addr


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """The default configuration with its helper processes, and two games."""
    add_game(tmp_path / "test.db", "quick", duration_ms=1000, submission_window_ms=60_000)
    add_game(tmp_path / "test.db", "other", duration_ms=1000)
    async with running_server(make_config(tmp_path)) as srv:
        yield srv


async def claim_flood(server: Server, sockets: int, frames: int, as_user: Any = None) -> None:
    """`sockets` connections at once, each claiming another player's id `frames` times; every
    claim is answered identity_mismatch."""

    async def one() -> None:
        async with connect(server) as client:
            if as_user is not None:
                await client.login(as_user)
            for _ in range(frames):
                reply = await client.call(type="enter_game_room", game_id="quick", user_id=10**6)
                assert reply["code"] == "identity_mismatch", reply

    async with trio.open_nursery() as nursery:
        for _ in range(sockets):
            nursery.start_soon(one)


async def still_served(server: Server) -> None:
    async with connect(server) as other:
        await other.enter("quick", None)
        assert (await other.call(type="whoami"))["type"] == "identity"


async def test_a_flood_of_claims_is_one_flag_with_a_bounded_count(server: Server) -> None:
    """20 guest sockets sending identity claims at once write one flag, counted at most the
    flags budget a minute; a logged-in player doing the same, one flag of their own."""
    with trio.fail_after(60):
        await claim_flood(server, sockets=20, frames=20)
        flags = await server.service.store.flags()
        assert len(flags) == 1
        assert flags[0]["guest_addr"] == "127.0.0.1" and flags[0]["user_id"] is None
        assert flags[0]["detail"]["repeats"] == FLAGS_BUDGET
        mal = await register(server, "mal")
        await claim_flood(server, sockets=3, frames=30, as_user=mal)
        flags = await server.service.store.flags()
        assert [(f["user_id"], f["detail"].get("repeats")) for f in flags] == [
            (None, FLAGS_BUDGET),
            (mal["user_id"], FLAGS_BUDGET),
        ]
        await still_served(server)


async def test_causes_are_counted_apart(server: Server) -> None:
    """Another game is another cause: its own flag; a resolved flag is not counted on."""
    with trio.fail_after(60):
        async with connect(server) as client:
            for game in ("quick", "quick", "other"):
                reply = await client.call(type="enter_game_room", game_id=game, user_id=7)
                assert reply["code"] == "identity_mismatch"
        flags = await server.service.store.flags()
        assert [(f["game_id"], f["detail"].get("repeats")) for f in flags] == [
            ("quick", 2),
            ("other", None),
        ]
        await server.service.store.decide_flag(
            flags[0]["id"], ban_until=None, note="noise", actor="t", audit_note="noise", now=1
        )
        async with connect(server) as client:
            reply = await client.call(type="enter_game_room", game_id="quick", user_id=7)
            assert reply["code"] == "identity_mismatch"
        assert len(await server.service.store.flags()) == 3


async def test_a_failure_in_one_session_ends_it_and_frees_its_player(
    inline_server: Server, autojump_clock: trio.testing.MockClock, monkeypatch: Any
) -> None:
    """A bug inside one session's task: that session ends as a shutdown ends it (its row
    voided, end_game sent), its player can start again at once, and another session plays on."""
    from scoreserver.server.rooms import Rooms

    server = inline_server
    now = server.service.clock.now_ms
    original = Rooms._carry_out_run
    failing: set[str] = set()

    async def carry_out_run(self: Rooms, session: Any, *args: Any) -> None:
        if session.session_id in failing:
            raise RuntimeError("a bug, simulated")
        await original(self, session, *args)

    monkeypatch.setattr(Rooms, "_carry_out_run", carry_out_run)
    with trio.fail_after(120):
        ann = await register(server, "ann")
        async with connect(server) as victim, connect(server) as bystander:
            await victim.login(ann)
            await victim.enter("demo", ann["user_id"])
            started = await victim.start(now())
            await bystander.enter("demo", None)
            other = await bystander.start(now())
            failing.add(started["session_id"])
            await victim.send(type="point", client_ts=now())
            end = await victim.recv_type("end_game")
            assert end["reason"] == "server_shutdown" and end.get("end_token") is None
            again = await victim.call(type="game_start", client_ts=now())
            assert again["type"] == "game_started", again
            for _ in range(3):
                await trio.sleep(0.5)  # virtual time (autojump_clock)
                reply = await bystander.call(type="point", client_ts=now())
                assert reply["type"] == "point_accepted", reply
        rows = databases.sql(
            server.config.db_path,
            "SELECT state, end_reason FROM game_sessions WHERE id = ?",
            (started["session_id"],),
        )
        assert [tuple(r) for r in rows] == [("voided", "server_shutdown")]
        assert other["session_id"] != started["session_id"]
        assert await server.service.store.flags() == []


async def test_a_game_voided_elsewhere_is_reported_crashed_and_never_flags(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """Another node found this one gone and voided its game (as after a stall past the
    lease): when the timer fires here, no end token is signed and the player is told
    `crashed`; submitting what they hold is refused without a flag."""
    server = inline_server
    now = server.service.clock.now_ms
    with trio.fail_after(120):
        ann = await register(server, "ann")
        async with connect(server) as player:
            await player.login(ann)
            await player.enter("demo", ann["user_id"])
            started = await player.start(now())
            points = await player.score(now, 3, 0.5)
            databases.sql(
                server.config.db_path,
                "UPDATE game_sessions SET state = 'voided', end_reason = 'crashed', ended_at = ?"
                " WHERE id = ?",
                (now(), started["session_id"]),
            )
            end = await player.recv_type("end_game")
            assert end["reason"] == "crashed" and end.get("end_token") is None
            reply = await player.call(
                type="submit_result",
                start_token=started["start_token"],
                end_token=started["start_token"],  # what a client holds: no end token came
                points=points,
            )
            assert reply["type"] == "result" and reply["reason"] == "session_voided", reply
            resumed = await player.call(type="resume", start_token=started["start_token"])
            assert resumed["type"] == "end_game" and resumed["reason"] == "crashed", resumed
            again = await player.call(type="game_start", client_ts=now())
            assert again["type"] == "game_started", again
        assert await server.service.store.flags() == []


async def test_strangers_guessing_a_password_do_not_lock_its_owner_out(server: Server) -> None:
    """The account's budget is spent by strangers; the owner's browser, which logged in
    before, still logs in with the right password (its device has its own budget). A device
    of another account is a stranger here; a forged one too."""
    from .test_edges import http_from

    with trio.fail_after(60):
        async with http_from(server, "127.0.0.1") as owner:
            made = await owner.post("/api/register", json={"name": "ann", "password": "p" * 12})
            device = made.json()["device"]
            mal = await owner.post("/api/register", json={"name": "mal", "password": "q" * 12})
            mal_device = mal.json()["device"]
        guesses = []
        for source in ("127.0.0.5", "127.0.0.6", "127.0.0.7"):
            async with http_from(server, source) as stranger:
                for _ in range(6):
                    guess = await stranger.post(
                        "/api/login", json={"name": "ann", "password": "wrong guess!"}
                    )
                    guesses.append(guess.status_code)
        assert sorted(set(guesses)) == [401, 429] and guesses.count(401) == 10
        async with http_from(server, "127.0.0.8") as owner:
            right = {"name": "ann", "password": "p" * 12}
            assert (await owner.post("/api/login", json=right)).status_code == 429
            # The forged device differs in its last character (a fixed "AA" ending was, one
            # time in 256, the device itself).
            forged = device[:-1] + ("A" if device[-1] != "A" else "B")
            for label, other in (("mal's", mal_device), ("forged", forged), ("junk", "garbage")):
                refused = await owner.post("/api/login", json={**right, "device": other})
                assert refused.status_code == 429, label
            known = await owner.post("/api/login", json={**right, "device": device})
            assert known.status_code == 200, known.text
            assert known.json()["device"] != device  # a fresh one each login
            # The device's own budget holds guesses made with it.
            wrong = {"name": "ann", "password": "wrong guess!", "device": device}
            codes = [(await owner.post("/api/login", json=wrong)).status_code for _ in range(12)]
            tries = BudgetSettings().failed_logins_per_account
            assert codes == [401] * tries + [429] * (12 - tries)


async def test_the_operator_always_has_a_way_in(server: Server) -> None:
    """Guessers hold the admin password at its limit: the operator's browser that logged in
    before still gets in, and `scoreserver admin login-link` on the machine opens /admin."""
    from .test_edges import http_from, set_admin_password
    from .test_moderation import run_cli

    set_admin_password(server.config.db_path, "the right admin password")
    with trio.fail_after(60):
        async with http_from(server, "127.0.0.1") as operator:
            first = await operator.post(
                "/api/admin/login", json={"password": "the right admin password"}
            )
            device = first.json()["device"]
        for source in ("127.0.0.5", "127.0.0.6", "127.0.0.7"):
            async with http_from(server, source) as guesser:
                for _ in range(4):
                    await guesser.post("/api/admin/login", json={"password": "a wrong guess"})
        async with http_from(server, "127.0.0.9") as operator:
            right = {"password": "the right admin password"}
            assert (await operator.post("/api/admin/login", json=right)).status_code == 429
            known = await operator.post("/api/admin/login", json={**right, "device": device})
            assert known.status_code == 200, known.text
            code, out, err = run_cli(server, "admin", "login-link", "--url", server.http_url)
            assert code == 0 and out.startswith(f"{server.http_url}/admin#session="), err
            session = out.strip().split("#session=", 1)[1]
            listed = await operator.get(
                "/api/admin/flags", headers={"Authorization": f"Bearer {session}"}
            )
            assert listed.status_code == 200, listed.text
        code, _, err = run_cli(server, "admin", "login-link", "--url", "ftp://x")
        assert code == 1 and "--url" in err


@asynccontextmanager
async def socket_from(server: Server, address: str) -> AsyncIterator[Client]:
    """A game-socket client whose connection comes from `address` (a loopback address)."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.ws_port, local_address=address)
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/")
            try:
                yield Client(ws)
            finally:
                await ws.aclose()
    finally:
        await stream.aclose()


async def test_everything_at_once_leaves_the_player_and_the_operator_alone(
    server: Server,
) -> None:
    """On the default configuration with its helper processes, all at once: 20 sockets of
    identity claims, 1,000 handshakes from one address, 12 wrong admin guesses from three
    addresses, and a player logging in and playing throughout. The player is served and
    saved, the operator logs in, the flags stay one bounded count."""
    from .test_edges import http_from, set_admin_password

    set_admin_password(server.config.db_path, "the right admin password")
    right = {"password": "the right admin password"}
    with trio.fail_after(120):
        async with http_from(server, "127.0.0.9") as operator:
            device = (await operator.post("/api/admin/login", json=right)).json()["device"]
        opened: list[tuple[RawSocket, bytes]] = []
        saved: list[dict[str, Any]] = []

        async def handshakes() -> None:
            async def one() -> None:
                opened.append(await RawSocket.open(server.ws_port))

            async with trio.open_nursery() as nursery:
                for _ in range(1000):
                    nursery.start_soon(one)

        async def claims(address: str) -> None:
            async with socket_from(server, address) as client:
                for _ in range(20):
                    reply = await client.call(type="enter_game_room", game_id="quick", user_id=7)
                    assert reply["code"] == "identity_mismatch"

        async def guesses(address: str) -> None:
            async with http_from(server, address) as guesser:
                for _ in range(4):
                    await guesser.post("/api/admin/login", json={"password": "a wrong guess"})

        async def player() -> None:
            async with http_from(server, "127.0.0.20") as api:
                made = await api.post(
                    "/api/register", json={"name": "pat", "password": "pat's password"}
                )
                assert made.status_code == 201, made.text
                pat = made.json()
                async with socket_from(server, "127.0.0.20") as client:
                    await client.login(pat)
                    game = await play_quick(client, 3, pat["user_id"])
                body = {k: game[k] for k in ("start_token", "end_token", "points")}
                result = await api.post(
                    "/api/results", json=body, headers={"Authorization": f"Bearer {pat['token']}"}
                )
                saved.append(result.json())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(handshakes)
            for _ in range(20):
                nursery.start_soon(claims, "127.0.0.30")
            for address in ("127.0.0.5", "127.0.0.6", "127.0.0.7"):
                nursery.start_soon(guesses, address)
            nursery.start_soon(player)
        assert saved and saved[0]["saved"] is True, saved
        codes = Counter(head.split(b" ")[1] for _, head in opened)
        assert codes[b"101"] == 256 and codes[b"101"] + codes[b"429"] == 1000, codes
        for raw, _ in opened:
            await raw.aclose()
        async with http_from(server, "127.0.0.9") as operator:
            assert (await operator.post("/api/admin/login", json=right)).status_code == 429
            known = await operator.post("/api/admin/login", json={**right, "device": device})
            assert known.status_code == 200, known.text
        flags = await server.service.store.flags()
        assert [(f["guest_addr"], f["detail"]["repeats"]) for f in flags] == [
            ("127.0.0.30", FLAGS_BUDGET)
        ]


@pytest.mark.parametrize(
    "path", ["/api/results", "/api/login", "/api/register", "/api/admin/login", "/api/me"]
)
async def test_a_client_that_leaves_mid_request_is_not_an_error(
    server: Server, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """A body cut off by the client's leaving is nobody's failure: no ERROR, no traceback,
    and the next request is served."""
    from .test_edges import set_admin_password

    set_admin_password(server.config.db_path, "the right admin password")
    method = b"DELETE" if path == "/api/me" else b"POST"
    with trio.fail_after(30):
        stream = await trio.open_tcp_stream("127.0.0.1", server.http_port)
        await stream.send_all(
            method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"name": "a'
        )
        # The server (in this process) has taken the head and waits for the body...
        await trio.testing.wait_all_tasks_blocked(0.05)
        await stream.aclose()
        # ...and has seen the end of it, and answered or logged whatever it would.
        await trio.testing.wait_all_tasks_blocked(0.05)
        async with http(server) as api:
            assert (await api.get("/healthz")).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]


@pytest.mark.parametrize("path", ["/api/results", "/api/login", "/api/admin/login"])
async def test_a_body_too_large_is_answered_and_its_connection_closed(
    server: Server, path: str
) -> None:
    """4 MiB bodies, one after another, each written whole by a client that reads only after
    (as most HTTP clients do): answered 413 and closed at once, none left waiting on its write
    for a timeout (the connection lingers while the client finishes, then closes)."""
    from .test_edges import set_admin_password

    set_admin_password(server.config.db_path, "the right admin password")
    body = b'{"password": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with trio.fail_after(60):
        for _ in range(6):
            stream = await trio.open_tcp_stream("127.0.0.1", server.http_port)
            async with stream:
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(head + body)  # blocks if nobody reads
                answer = b""
                with contextlib.suppress(trio.BrokenResourceError):
                    while chunk := await stream.receive_some():
                        answer += chunk
            assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
            assert b"connection: close" in answer.lower()
        async with http(server) as api:
            assert (await api.get("/healthz")).status_code == 200


@pytest.mark.parametrize("route", ["/api/login", "/api/admin/login"])
async def test_device_tokens_at_their_bounds_and_guesses_with_one_sent_at_once(
    server: Server, route: str
) -> None:
    """Hostile `device` values get a clear 400 or count as a stranger's (never a 500); 30
    wrong guesses with one device sent at once: exactly the device's budget is checked."""
    from .test_edges import all_at_once, http_from, set_admin_password

    set_admin_password(server.config.db_path, "the right admin password")
    right = {"name": "ann", "password": "p" * 12}
    if route == "/api/admin/login":
        right = {"password": "the right admin password"}
    with trio.fail_after(60):
        async with http_from(server, "127.0.0.1") as api:
            if route == "/api/login":
                await api.post("/api/register", json=right)
            device = (await api.post(route, json=right)).json()["device"]
            hostiles = (2**63, -1, "", "x" * 10_000, [[[]]], {"a": 1}, "\x00\x01\xff", None, 1.5)
            for hostile in hostiles:
                reply = await api.post(route, json={**right, "device": hostile})
                assert reply.status_code in (200, 400), (hostile, reply.text)
                if reply.status_code == 400:
                    assert reply.json()["error"] == "bad_request"
        async with http_from(server, "127.0.0.44") as api:
            wrong = {**right, "password": "a wrong password", "device": device}
            codes = Counter(
                r.status_code for r in await all_at_once(30, lambda _: api.post(route, json=wrong))
            )
            budget = (
                BudgetSettings().failed_logins_per_account
                if route == "/api/login"
                else BudgetSettings().admin_failures_per_addr
            )
            assert codes == {401: budget, 429: 30 - budget}, codes
        async with http_from(server, "127.0.0.45") as api:
            assert (await api.get("/healthz")).status_code == 200
