"""The edges: races against the limits, griefing with someone else's tokens, floods, and
helpers that stall. Each limit is raced (the requests sent at once, not one by one), against
the default configuration with its helper processes unless the test says otherwise."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from scoreserver.errors import StoreError
from scoreserver.ops import cli
from scoreserver.server.accounts import PasswordPolicy
from scoreserver.server.app import Server
from scoreserver.store import ops, sqlite
from scoreserver.store.connect import open_database
from scoreserver.store.engine import INTEGRITY_ERRORS, transaction

from .. import databases
from ..conftest import (
    add_game,
    child_processes,
    connect,
    http,
    make_config,
    register,
    running_server,
)
from ..players import without_receipt
from .test_end_to_end import new_player, play_quick, submit_http, wall_ms

pytestmark = pytest.mark.engines

ADDRESSES = [f"127.0.0.{n}" for n in range(2, 11)]  # nine loopback addresses


@asynccontextmanager
async def http_from(server: Server, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose connections come from `address` (a loopback address)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(
        base_url=server.http_url, transport=transport, timeout=30
    ) as client:
        yield client


@asynccontextmanager
async def clients_from(
    server: Server, addresses: list[str]
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One client per address, each pooling its connections (hundreds of fresh connections
    at once would only measure the listen backlog)."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(http_from(server, a)) for a in addresses]


async def all_at_once(count: int, attempt: Any) -> list[Any]:
    """Run `attempt(i)` for i in range(count) concurrently; their results in order."""
    results: list[Any] = [None] * count

    async def one(index: int) -> None:
        results[index] = await attempt(index)

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(one, index)
    return results


# --- one running game per user and game --------------------------------------------------


async def test_game_starts_raced_on_many_sockets_give_one_game(server: Server) -> None:
    with trio.fail_after(30):
        ann = await register(server, "ann")
        async with trio.open_nursery() as nursery:
            clients = []

            async def open_one() -> None:
                async with connect(server) as client:
                    await client.login(ann)
                    await client.enter("quick", ann["user_id"])
                    clients.append(client)
                    await trio.sleep_forever()

            for _ in range(30):
                nursery.start_soon(open_one)
            while len(clients) < 30:
                await trio.sleep(0.01)
            replies = await all_at_once(
                30, lambda i: clients[i].call(type="game_start", client_ts=wall_ms())
            )
            nursery.cancel_scope.cancel()
        kinds = Counter(r["type"] if r["type"] != "error" else r["code"] for r in replies)
        assert kinds == {"game_started": 1, "session_active": 29}
        running = databases.sql(
            server.config.db_path,
            "SELECT COUNT(*) FROM game_sessions WHERE user_id = ?",
            (ann["user_id"],),
        )[0][0]
        assert running == 1


def test_the_database_refuses_a_second_running_game(tmp_path: Path) -> None:
    """The backstop for every process: a unique index, whatever the server's memory says."""
    from scoreserver.core.rules import GameSettings
    from scoreserver.errors import ConflictError

    conn = open_database(databases.resolve(tmp_path / "d.db"))
    settings = GameSettings(duration_ms=1000)
    with transaction(conn):
        ops.insert_game(conn, "g", settings, 0)
        user = ops.insert_user(conn, "ann", "x", 0)
    args = ("g", user, None, None, settings, 0, 0, "start")
    with transaction(conn):
        ops.insert_session(conn, "s1", *args)
    with pytest.raises(ConflictError), transaction(conn):
        ops.insert_session(conn, "s2", *args)
    with transaction(conn):
        ops.insert_session(conn, "g1", "g", None, "1.2.3.4", None, settings, 0, 0, "t")
        ops.insert_session(conn, "g2", "g", None, "1.2.3.4", None, settings, 0, 0, "t")  # guests
        ops.end_session(conn, "s1", "end", 5, "time_up")
        ops.insert_session(conn, "s3", *args)  # the first ended: a new one may run
    conn.close()


@pytest.mark.sqlite_only  # SQLite's schema history; PostgreSQL's began at version 2
def test_schema_1_is_upgraded_in_place(tmp_path: Path) -> None:
    """A database made by the previous release: look-alike names keep their accounts, and
    sessions a race left running side by side are voided but the newest."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    # The schema as version 1 shipped it.
    for statement in sqlite._split_sql(
        (Path(__file__).parent.parent / "data/schema_v1.sql").read_text()
    ):
        conn.execute(statement)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.execute(
        "INSERT INTO games (id, duration_ms, created_at, updated_at) VALUES ('g', 1000, 0, 0)"
    )
    for name in ("star", "stаr"):  # the second with a Cyrillic а
        conn.execute(
            "INSERT INTO users (name, password_hash, created_at) VALUES (?, 'x', 0)", (name,)
        )
    for sid in ("a", "b"):
        conn.execute(
            "INSERT INTO game_sessions (id, game_id, user_id, settings_json, started_at,"
            " client_start_ts, start_token) VALUES (?, 'g', 1, '{}', 0, 0, 't')",
            (sid,),
        )
    conn.close()
    upgraded = open_database(databases.resolve(path))
    assert upgraded.execute("PRAGMA user_version").fetchone()[0] == sqlite.SCHEMA_VERSION
    states = dict(upgraded.execute("SELECT id, state FROM game_sessions").fetchall())
    assert states == {"a": "voided", "b": "running"}
    skeletons = upgraded.execute("SELECT name, name_skeleton FROM users ORDER BY id").fetchall()
    assert [tuple(r) for r in skeletons] == [("star", "star"), ("stаr", None)]
    upgraded.close()


def test_schema_4_is_upgraded_with_look_alike_keys_of_any_case(tmp_path: Path) -> None:
    """Schema 5 rekeys names: `alice` and `АLICE` (Cyrillic А), which schema 4's keys told
    apart, become one name; the older account keeps its key, the newer keeps its name and no
    key. Games gain an archive time, accounts a reset code (both engines)."""
    path = databases.location(tmp_path, "four.db")
    conn = open_database(path)
    postgres = conn.dialect == "postgres"
    with transaction(conn):
        for name, old_key in (("alice", "alice"), ("АLICE", "allce"), ("bob", "bob")):
            conn.execute(
                "INSERT INTO users (name, name_skeleton, password_hash, created_at)"
                " VALUES (?, ?, 'x', 0)",
                (name, old_key),
            )
        databases.undo_schema_6(conn)
        conn.execute("ALTER TABLE games DROP COLUMN archived_at")
        conn.execute("ALTER TABLE users DROP COLUMN reset_expires_at")
        conn.execute("ALTER TABLE users DROP COLUMN reset_hash")
        if postgres:
            conn.execute("UPDATE scoreserver_schema SET version = 4")
        else:
            conn.execute("PRAGMA user_version = 4")
    conn.close()
    upgraded = open_database(path)
    keys = upgraded.execute("SELECT name, name_skeleton FROM users ORDER BY id").fetchall()
    assert [tuple(r) for r in keys] == [("alice", "allce"), ("АLICE", None), ("bob", "bob")]
    with pytest.raises(INTEGRITY_ERRORS), transaction(upgraded):
        upgraded.execute(
            "INSERT INTO users (name, name_skeleton, password_hash, created_at)"
            " VALUES ('ALlCE', 'allce', 'x', 0)"
        )
    assert upgraded.execute("SELECT archived_at FROM games").fetchall() == []
    assert upgraded.execute("SELECT reset_hash FROM users WHERE name = 'bob'").fetchone()[0] is None
    upgraded.close()


# --- logins raced ------------------------------------------------------------------------


async def test_guesses_sent_at_once_are_counted_before_any_is_checked(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_server(config) as server:
        with trio.fail_after(60):
            await register(server, "bea", "the real password")

            async with clients_from(server, ADDRESSES) as clients:

                async def guess(index: int) -> int:
                    reply = await clients[index % len(clients)].post(
                        "/api/login", json={"name": "bea", "password": f"wrong guess {index}"}
                    )
                    return reply.status_code

                # 270 wrong guesses at once over nine addresses: the account's budget (10
                # failures a minute) holds whatever the addresses.
                codes = Counter(await all_at_once(270, guess))
            assert codes == {401: 10, 429: 260}
            async with http_from(server, "127.0.0.11") as api:
                right = await api.post(
                    "/api/login", json={"name": "bea", "password": "the real password"}
                )
            assert right.status_code == 429  # even the right password waits out the minute
            async with http(server) as api:
                assert (await api.get("/api/games/demo/leaderboard")).status_code == 200


async def test_a_successful_login_gives_its_charge_back(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as server:
        with trio.fail_after(60):
            await register(server, "cy", "the real password")
            async with http_from(server, "127.0.0.2") as api:
                # Fifteen right logins in a row: each gives its charge back, so the account's
                # budget of ten failures is never spent by them; nine wrong ones then still fit.
                for _ in range(15):
                    reply = await api.post(
                        "/api/login", json={"name": "cy", "password": "the real password"}
                    )
                    assert reply.status_code == 200
                for _ in range(9):
                    reply = await api.post("/api/login", json={"name": "cy", "password": "no!"})
                    assert reply.status_code == 401
                reply = await api.post(
                    "/api/login", json={"name": "cy", "password": "the real password"}
                )
                assert reply.status_code == 200


async def admin_server(tmp_path: Path) -> Any:
    config = make_config(tmp_path)
    open_database(databases.resolve(config.db_path)).close()
    set_admin_password(config.db_path, "a long admin secret")
    return running_server(config)


def set_admin_password(path: Path, password: str, monkeypatch: Any = None) -> None:
    import contextlib
    import io
    import sys

    old = sys.stdin
    sys.stdin = io.StringIO(password + "\n")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(["admin", "set-password", "--password-stdin", "--db", str(path)]) == 0
    finally:
        sys.stdin = old


async def test_admin_guesses_at_once_from_one_and_from_many_addresses(tmp_path: Path) -> None:
    async with await admin_server(tmp_path) as server:
        with trio.fail_after(120):
            async with clients_from(server, ADDRESSES) as clients:

                async def guess(index: int) -> int:
                    client = clients[index % len(clients)]
                    return (
                        await client.post("/api/admin/login", json={"password": "guess"})
                    ).status_code

                one = Counter(await all_at_once(30, lambda i: guess(0)))
                assert one == {401: 5, 429: 25}
                many = Counter(await all_at_once(90, lambda i: guess(1 + i % 8)))
            # Ten failures a minute for the admin account in all: five were spent above.
            assert many[401] == 5 and many[429] == 85
            async with http_from(server, "127.0.0.12") as api:
                right = await api.post("/api/admin/login", json={"password": "a long admin secret"})
            assert right.status_code == 429


async def test_admin_logout_and_a_new_password_end_sessions_on_the_server(
    tmp_path: Path,
) -> None:
    async with await admin_server(tmp_path) as server, http(server) as api:
        with trio.fail_after(60):

            async def login() -> dict[str, str]:
                reply = await api.post("/api/admin/login", json={"password": "a long admin secret"})
                assert reply.status_code == 200, reply.text
                return {"authorization": f"Bearer {reply.json()['token']}"}

            first, second = await login(), await login()
            assert (await api.get("/api/admin/flags", headers=first)).status_code == 200
            assert (await api.post("/api/admin/logout", headers=first)).status_code == 200
            assert (await api.get("/api/admin/flags", headers=first)).status_code == 401
            assert (await api.get("/api/admin/flags", headers=second)).status_code == 200
            set_admin_password(server.config.db_path, "another long secret")
            assert (await api.get("/api/admin/flags", headers=second)).status_code == 401
            old = await api.post("/api/admin/login", json={"password": "a long admin secret"})
            assert old.status_code == 401


async def raw_login(server: Server, headers: bytes, body: list[bytes]) -> bytes:
    """POST /api/admin/login over a bare TCP stream (a client library would refuse to send a
    length it does not keep); returns the first bytes of the answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.http_port)
    async with stream:
        await stream.send_all(
            b"POST /api/admin/login HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n\r\n"
        )
        for part in body:
            await stream.send_all(part)
        return await stream.receive_some()


async def admin_headers(server: Server, api: httpx.AsyncClient) -> dict[str, str]:
    """Set the admin password, log in, and return the Authorization header of the session."""
    set_admin_password(server.config.db_path, "a long admin secret")
    reply = await api.post("/api/admin/login", json={"password": "a long admin secret"})
    assert reply.status_code == 200, reply.text
    return {"authorization": f"Bearer {reply.json()['token']}"}


async def test_every_admin_body_is_bounded(tmp_path: Path) -> None:
    async with await admin_server(tmp_path) as server, http(server) as api:
        with trio.fail_after(60):
            # A 300 MB body declared: refused before a byte of it is read.
            head = await raw_login(
                server, b"Content-Type: application/json\r\nContent-Length: 314572800", [b"{"]
            )
            assert head.startswith(b"HTTP/1.1 413"), head

            deep = await api.post("/api/admin/login", content=b"[" * 8000 + b"]" * 8000)
            assert deep.status_code == 400, deep.text
            assert (await api.get("/healthz")).json()["status"] == "ok"


# hypercorn's trio worker, when the app answers before the request body is finished, closes
# the stream while its own response send is under way (trio's BusyResourceError, logged, and
# an unraisable warning at exit); the 413 still reaches the client and the server serves on.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_body_without_a_declared_length_is_read_only_to_the_limit(
    tmp_path: Path,
) -> None:
    async with await admin_server(tmp_path) as server, http(server) as api:
        with trio.fail_after(60):
            # A chunked body with no declared length: reading stops at the limit (32 KiB sent,
            # twice the limit; the server answers meanwhile).
            chunk = b"x" * 8192
            head = await raw_login(
                server, b"Transfer-Encoding: chunked", [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 4
            )
            assert head.startswith(b"HTTP/1.1 413"), head
            assert (await api.get("/healthz")).json()["status"] == "ok"


async def test_a_login_flood_does_not_slow_reads_games_or_health(tmp_path: Path) -> None:
    """Argon2 (OWASP's parameters here) runs in its own pool: leaderboards, socket logins and
    health are answered while 150 logins wait their turn or are refused as busy."""
    config = make_config(tmp_path)
    config.password_policy = PasswordPolicy()
    async with running_server(config) as server:
        with trio.fail_after(120):
            account = await register(server, "dee", "the real password")
            statuses: list[int] = []

            async def flood(index: int) -> None:
                async with http_from(server, ADDRESSES[index % len(ADDRESSES)]) as api:
                    reply = await api.post(
                        "/api/login", json={"name": f"nobody{index}", "password": "x" * 12}
                    )
                statuses.append(reply.status_code)

            async with trio.open_nursery() as nursery:
                for index in range(150):
                    nursery.start_soon(flood, index)
                while server.service.password_work.waiting == 0:
                    await trio.sleep(0.01)  # until the flood is on
                async with http(server) as api:
                    board = await api.get("/api/games/demo/leaderboard")
                    healthy = await api.get("/healthz")
                async with connect(server) as client:
                    await client.login(account)  # a login token: no Argon2
                flood_still_on = server.service.password_work.waiting > 0
            assert board.status_code == 200 and healthy.status_code == 200
            assert flood_still_on, "the reads were answered while the flood was queued"
            assert set(statuses) <= {401, 429, 503} and 503 in statuses


# --- griefing with a copy of someone's tokens -------------------------------------------


def mangled(token: str) -> list[str]:
    last = token[-1]
    other = "A" if last != "A" else "B"
    return [token + "!!!!", token + "=", token[:-1] + other, token + "AA", " " + token]


async def a_victim_and_an_attacker(
    server: Server, victim: str, attacker: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Two accounts, and a 3-point game the first played (its tokens, as its page keeps them)."""
    vic = await new_player(server, victim)
    mal = await new_player(server, attacker)
    async with connect(server) as client:
        await client.login(vic)
        game = await play_quick(client, 3, vic["user_id"])
    return vic, mal, game


async def test_a_copy_of_a_victims_tokens_cannot_flag_or_hide_them(server: Server) -> None:
    with trio.fail_after(60):
        vic, mal, game = await a_victim_and_an_attacker(server, "vic", "mal")
        honest = {k: game[k] for k in ("start_token", "end_token", "points")}
        assert (await submit_http(server, honest, vic["token"]))["saved"] is True
        # Anyone can read the victim's tokens (we invite public verification): mangled copies
        # of the start token, and a valid start token with junk points, from a stranger,
        # from another account, and over a socket.
        attempts: list[tuple[dict[str, Any], str | None]] = []
        for forged in mangled(game["start_token"]):
            attempts.append(({**honest, "start_token": forged}, None))
            attempts.append(({**honest, "start_token": forged}, mal["token"]))
        junk_points = [{"token": mangled(p["token"])[2], "client_ts": 1} for p in game["points"]]
        attempts.append(({**honest, "points": junk_points}, mal["token"]))
        for body, token in attempts:
            result = await submit_http(server, body, token)
            assert result["accepted"] is False
            assert result["reason"] in ("bad_start_token", "already_submitted"), result
        async with connect(server) as sock:
            await sock.login(mal)
            reply = await sock.call(type="submit_result", **{**honest, "start_token": "x"})
            assert reply["reason"] == "bad_start_token"
        flags = await server.service.store.flags()
        assert flags, "the attempts are flagged"
        assert all(f["user_id"] != vic["user_id"] for f in flags)
        assert {f["user_id"] for f in flags} == {None, mal["user_id"]}
        async with http(server) as api:
            board = (await api.get("/api/games/quick/leaderboard")).json()["entries"]
        assert [(e["name"], e["score"]) for e in board] == [("vic", 3)]


async def test_failed_submissions_sent_at_once_are_limited_per_address(server: Server) -> None:
    with trio.fail_after(60):
        junk = {"start_token": "a", "end_token": "b", "points": []}

        async def submit(index: int) -> int:
            async with http_from(server, "127.0.0.3") as api:
                return (await api.post("/api/results", json=junk)).status_code

        codes = Counter(await all_at_once(45, submit))
        assert codes == {200: 30, 429: 15}
        flags = await server.service.store.flags()
        # One cause, one flag: its count is every charge, no more.
        assert len(flags) == 1 and flags[0]["detail"]["repeats"] == 30
        async with connect(server) as client:  # from 127.0.0.1: its own budget
            reply = await client.call(type="submit_result", **junk)
            assert reply["type"] == "result" and reply["reason"] == "bad_start_token"
        # Over the socket the answer is rate_limited.
        server.service.limits.failed_submissions.limit = 1
        async with connect(server) as client:
            reply = await client.call(type="submit_result", **junk, id="s")
            assert reply == {
                "type": "error",
                "id": "s",
                "code": "rate_limited",
                "message": reply["message"],
            }
            assert (await client.call(type="whoami"))["type"] == "identity"


async def test_users_whose_names_hold_path_characters_are_banned_by_id(server: Server) -> None:
    with trio.fail_after(60):
        odd = [await register(server, name) for name in ("..", "a/b", "%2e%2e", "?x#y")]
        async with http(server) as api:
            auth = await admin_headers(server, api)
            for account in odd:
                reply = await api.post(
                    f"/api/admin/users/{account['user_id']}/ban",
                    headers=auth,
                    json={"note": "path characters"},
                )
                assert reply.status_code == 200 and reply.json()["name"] == account["name"]
            users = (await api.get("/api/admin/users", headers=auth)).json()["users"]
            assert all(u["banned_until"] for u in users)


async def test_admin_lists_are_paged(server: Server) -> None:
    with trio.fail_after(60):
        for n in range(7):
            await server.service.flag(f"test_{n}", guest_addr="1.2.3.4")
        db_path = server.config.db_path
        set_admin_password(db_path, "a long admin secret")
        async with http(server) as api:
            token = (
                await api.post("/api/admin/login", json={"password": "a long admin secret"})
            ).json()["token"]
            auth = {"authorization": f"Bearer {token}"}
            first = (await api.get("/api/admin/flags?limit=3", headers=auth)).json()
            assert [f["reason"] for f in first["flags"]] == ["test_0", "test_1", "test_2"]
            assert first["next_offset"] == 3
            last = (await api.get("/api/admin/flags?limit=3&offset=6", headers=auth)).json()
            assert [f["reason"] for f in last["flags"]] == ["test_6"]
            assert last["next_offset"] is None
            default = (await api.get("/api/admin/flags", headers=auth)).json()
            assert default["limit"] == 100
            too_many = await api.get("/api/admin/flags?limit=100000", headers=auth)
            assert too_many.status_code == 400


# --- shutdown, resume, a peer that does not read -----------------------------------------


async def test_a_start_being_committed_when_shutdown_begins_is_ended_properly(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    store = inline_server.service.store
    real_write = store._write
    release = trio.Event()
    held = trio.Event()

    async def slow_write(op: Any, *args: Any, **kwargs: Any) -> Any:
        if op is ops.insert_session:
            held.set()
            await release.wait()
        return await real_write(op, *args, **kwargs)

    store._write = slow_write  # type: ignore[method-assign]
    with trio.fail_after(30):
        async with connect(inline_server) as client:
            await client.enter("demo", None)
            await client.send(type="game_start", client_ts=0, id="late")
            await held.wait()
            inline_server.stop()
            await trio.sleep(0.1)
            release.set()
            started = await client.recv_type("game_started")
            end = await client.recv_type("end_game")
            assert end["reason"] == "server_shutdown" and end["session_id"] == started["session_id"]
            row = await store.session(started["session_id"])
            assert row is not None and row.end_reason is not None


async def test_resume_of_an_ended_game_answers_with_its_id(
    inline_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    now = inline_server.service.clock.now_ms
    with trio.fail_after(60):
        async with connect(inline_server) as client:
            await client.enter("demo", None)
            started = await client.start(now())
            end = await client.recv_type("end_game")
            again = await client.call(type="resume", start_token=started["start_token"], id="r1")
            assert again == {**end, "id": "r1"}
        inline_server.service.sessions.clear()  # as after a restart: from the database
        async with connect(inline_server) as client:
            stored = await client.call(type="resume", start_token=started["start_token"], id=7)
            assert stored["type"] == "end_game" and stored["id"] == 7
            assert stored["end_token"] == end["end_token"]


# --- helpers that stall or die mid-game --------------------------------------------------


async def stall_server(tmp_path: Path, writer_timeout_s: float = 1.5) -> Any:
    add_game(tmp_path / "test.db", "two", duration_ms=2000, submission_window_ms=60_000)
    config = make_config(tmp_path)
    config.writer_timeout_s = writer_timeout_s
    return running_server(config)


@pytest.mark.parametrize("how", [signal.SIGSTOP, signal.SIGKILL], ids=["SIGSTOP", "SIGKILL"])
async def test_a_writer_that_stalls_or_dies_mid_game_stops_the_server_cleanly(
    tmp_path: Path, how: signal.Signals
) -> None:
    failures: list[BaseException] = []
    with trio.fail_after(30):
        try:
            async with await stall_server(tmp_path) as server:
                account = await register(server, "wri")
                async with connect(server) as client, connect(server) as guest:
                    await client.login(account)
                    await client.enter("two", account["user_id"])
                    await guest.enter("two", None)
                    await client.start(wall_ms())
                    await guest.start(wall_ms())
                    await client.score(wall_ms, 1, 0.05)
                    (writer,) = child_processes("writer_child")
                    os.kill(writer, how)
                    # Every running game gets its end_game: void, with no end token, since
                    # its end could not be committed.
                    for player in (client, guest):
                        end = await player.recv_type("end_game")
                        assert end["reason"] == "server_shutdown" and "end_token" not in end
                    assert server.service.store.failure is not None
                    await trio.sleep_forever()  # the server stops by itself
        except* StoreError as group:
            failures.extend(group.exceptions)
    assert len(failures) == 1
    assert child_processes("writer_child") == []


async def test_health_reports_a_slow_writer_before_it_times_out(
    tmp_path: Path,
) -> None:
    # Degraded from 1 s unanswered until the writer's timeout: a window of 5 s, so that a
    # loaded machine's poll cannot miss it (with 1.5 s it did once, beside a CI run).
    async with await stall_server(tmp_path, writer_timeout_s=6.0) as server:
        with trio.fail_after(30):
            (writer,) = child_processes("writer_child")
            os.kill(writer, signal.SIGSTOP)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(register, server, "slow")  # an awaited write
                    async with http(server) as api:
                        # Until the write has gone unanswered for a second (bounded above).
                        while (health := await api.get("/healthz")).json()["status"] == "ok":
                            await trio.sleep(0.05)
                    nursery.cancel_scope.cancel()
            finally:
                os.kill(writer, signal.SIGCONT)
            assert health.status_code == 200
            assert health.json()["status"] == "degraded"
            assert "not answering" in health.json()["writer"]


async def test_a_writer_that_falls_behind_holds_the_players_not_the_memory(
    tmp_path: Path,
) -> None:
    """The writer's queue is bounded: past the bound the sessions wait before they judge
    more points (answered late, none lost), /healthz says degraded with the depth and
    /metrics shows it; once the writer catches up, every point is answered and saved."""
    add_game(
        tmp_path / "test.db",
        "long",
        duration_ms=120_000,
        latency_ms=120_000,  # points judged late are still on time: this is about the queue
        burst_threshold=1000,
        **databases.NO_TIMING,
    )
    config = make_config(tmp_path)
    config.writer_timeout_s = 60.0  # nothing awaited waits on the stopped writer here
    config.metrics_port = 0
    sent = 60
    async with running_server(config) as server:
        store = server.service.store
        store.queue_bound = 20
        with trio.fail_after(60):
            async with connect(server) as player, http(server) as api:
                await player.enter("long", None)
                await player.start(wall_ms())
                (writer,) = child_processes("writer_child")
                os.kill(writer, signal.SIGSTOP)
                try:
                    for n in range(sent):
                        await player.send(type="point", client_ts=wall_ms(), id=n)
                    answered = []
                    with trio.move_on_after(2.0):  # held: the rest does not come
                        while True:
                            answered.append(await player.recv_type("point_accepted"))
                    assert store.queue_bound <= len(answered) < sent, len(answered)
                    assert store.queue_depth() >= store.queue_bound
                    health = (await api.get("/healthz")).json()
                    assert health["status"] == "degraded" and "behind" in health["writer"]
                    assert health["writer_queue"] >= health["writer_queue_bound"] == 20
                    scraped = (
                        await api.get(f"http://127.0.0.1:{server.metrics_port}/metrics")
                    ).text
                    depth = next(
                        float(line.split()[-1])
                        for line in scraped.splitlines()
                        if line.startswith("scoreserver_writer_queue_depth ")
                    )
                    assert depth >= 20, depth
                finally:
                    os.kill(writer, signal.SIGCONT)
                while len(answered) < sent:
                    answered.append(await player.recv_type("point_accepted"))
                assert [reply["id"] for reply in answered] == list(range(sent))
                assert store.waits_for_room >= 1
                while store.queue_depth():
                    await trio.sleep(0.01)
                assert (await api.get("/healthz")).json()["status"] == "ok"
        rows = databases.sql(config.db_path, "SELECT COUNT(*) FROM issued_points")
        assert rows[0][0] == sent


# --- what operators see ------------------------------------------------------------------


async def test_a_name_is_one_name_in_any_case_by_one_rule_on_both_engines(
    tmp_path: Path,
) -> None:
    """Unicode's full case folding, not SQLite's ASCII-only NOCASE nor PostgreSQL's lower():
    `ZOË` logs in as `Zoë`, `STRASSE` as `Straße`, and `Zoe` is somebody else."""
    async with running_server(make_config(tmp_path)) as server, http(server) as api:
        with trio.fail_after(60):
            for name in ("Zoë", "Straße"):
                made = await api.post("/api/register", json={"name": name, "password": "p" * 12})
                assert made.status_code == 201, made.text
            for typed, owner in (("ZOË", "Zoë"), ("zoë", "Zoë"), ("STRASSE", "Straße")):
                reply = await api.post("/api/login", json={"name": typed, "password": "p" * 12})
                assert reply.status_code == 200, (typed, reply.text)
                assert reply.json()["name"] == owner
            stranger = await api.post("/api/login", json={"name": "Zoe", "password": "p" * 12})
            assert stranger.status_code == 401, stranger.text
            taken = await api.post("/api/register", json={"name": "ZOË", "password": "q" * 12})
            assert taken.status_code == 409, taken.text


async def test_look_alike_and_invisible_names_are_refused(tmp_path: Path) -> None:
    async with running_server(make_config(tmp_path)) as server, http(server) as api:
        with trio.fail_after(60):

            async def reg(name: str, address: str = "127.0.0.2") -> httpx.Response:
                async with http_from(server, address) as client:
                    return await client.post(
                        "/api/register", json={"name": name, "password": "hunter2hunter2"}
                    )

            assert (await reg("star")).status_code == 201
            for look_alike in ("stаr", "ＳＴＡＲ", "Star", "ѕtar", "ЅТАR"):
                reply = await reg(look_alike, "127.0.0.3")
                assert reply.status_code == 409, look_alike
            # Names with an "i", whose capital maps to "l" in Unicode's data: one name in any
            # case and script (Cyrillic А and М).
            for first, look_alike in (("alice", "АLICE"), ("alina", "АLINA"), ("mila", "МILA")):
                assert (await reg(first, "127.0.0.6")).status_code == 201, first
                for other in (look_alike, first.upper(), first.title()):
                    reply = await reg(other, "127.0.0.7")
                    assert reply.status_code == 409, other
            for invisible in ("st\u3164ar", "st\u034far", "s\u200btar", "\u2800", "a\u202eb"):
                reply = await reg(invisible, "127.0.0.4")
                assert reply.status_code == 400, invisible
            fullwidth = await reg("ｍｏｏｎ", "127.0.0.5")
            assert fullwidth.status_code == 201 and fullwidth.json()["name"] == "moon"
            login = await api.post(
                "/api/login", json={"name": "ｍｏｏｎ", "password": "hunter2hunter2"}
            )
            assert login.status_code == 200
            # Raced: ten look-alikes at once, one wins.
            names = ["sun", "ѕun", "SUN", "ｓｕｎ", "Sun", "sUn", "suN", "ЅUN", "ѕUN", "SuN"]
            codes = Counter(
                r.status_code
                for r in await all_at_once(
                    10, lambda i: reg(names[i], ADDRESSES[i % len(ADDRESSES)])
                )
            )
            assert codes == {201: 1, 409: 9}


@pytest.mark.sqlite_only  # files; PostgreSQL's are the database server's
def test_database_files_are_private(tmp_path: Path) -> None:
    conn = open_database(databases.resolve(tmp_path / "p.db"))
    with transaction(conn):
        ops.set_setting(conn, "k", "v")
    for suffix in ("", "-wal", "-shm"):
        path = tmp_path / f"p.db{suffix}"
        assert path.exists(), path
        assert path.stat().st_mode & 0o077 == 0, (path, oct(path.stat().st_mode))
    conn.close()


async def test_the_cli_prints_control_characters_escaped(tmp_path: Path) -> None:
    import contextlib
    import io

    path = databases.location(tmp_path, "c.db")
    conn = open_database(path)
    with transaction(conn):
        flag = ops.insert_flag(
            conn,
            "identity_mismatch",
            0,
            guest_addr="1.2.3.4",
            user_agent="evil\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\x9b31m",
            detail={"note": "bell\x07"},
        )
    conn.close()
    for args in (["flags", "show", str(flag)], ["flags", "list"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main([*args, "--db", str(path)]) == 0
        text = out.getvalue()
        assert not any(c in text for c in "\x1b\x07\x9b"), repr(text)
        if args[1] == "show":
            assert "\\x1b]52" in text, text  # shown, escaped, for the reviewer to read


async def test_honest_submissions_sent_at_once_from_one_address_are_never_limited(
    server: Server,
) -> None:
    """A room full of players behind one address (a LAN's NAT, a load generator) all submit
    together: none is refused, though more than the failure budget are in flight at once."""
    with trio.fail_after(60):
        games: list[dict[str, Any]] = []

        async def play_one() -> None:
            async with connect(server) as client:
                games.append(await play_quick(client, 1, None))

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(play_one)
        bodies = [{k: g[k] for k in ("start_token", "end_token", "points")} for g in games]
        async with http(server) as api:

            async def submit(index: int) -> dict[str, Any]:
                reply = await api.post("/api/results", json=bodies[index])
                assert reply.status_code == 200, reply.text
                return reply.json()  # type: ignore[no-any-return]

            results = await all_at_once(40, submit)
            assert all(r["accepted"] for r in results)
            # And the budget still holds for failures from the same address.
            junk = {"start_token": "a", "end_token": "b", "points": []}
            codes = Counter(
                r.status_code
                for r in await all_at_once(35, lambda i: api.post("/api/results", json=junk))
            )
        assert codes == {200: 30, 429: 5}


def _recut(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same joined text, cut at other places: the first token a character short, the
    second a character long."""
    first, second = points[0], points[1]
    return [
        {**first, "token": first["token"][:-1]},
        {**second, "token": first["token"][-1] + second["token"]},
        *points[2:],
    ]


def _mangled(token: str, at: int) -> str:
    return token[:at] + ("B" if token[at] == "A" else "A") + token[at + 1 :]


async def test_hostile_submissions_at_once_against_the_default_configuration(
    server: Server,
) -> None:
    """Submissions of one player's game, mangled and at the bounds, each on its own socket and
    all at once, to the server with its helper process (the writer): each gets its
    contract answer, none is accepted, nothing closes with 1011, the owner is never flagged
    for them, and the owner's own submission is then accepted."""
    server.service.limits.failed_submissions.limit = 0  # verdicts here; the budget: above
    with trio.fail_after(60):
        owner, mallory, game = await a_victim_and_an_attacker(server, "owner", "mallory")
        start, end, points = game["start_token"], game["end_token"], game["points"]
        real = {"start_token": start, "end_token": end}

        def submission(**fields: Any) -> str:
            return json.dumps({"type": "submit_result", **real, "points": points, **fields})

        bad_start = {("result", "bad_start_token")}
        bad_message = {("error", "bad_message")}
        cases: list[tuple[str | bytes, set[tuple[str, str]]]] = [
            (submission(start_token=_mangled(start, len(start) - 3)), bad_start),  # signature
            (submission(start_token=_mangled(start, 12)), bad_start),  # the session id
            (submission(start_token=""), bad_start),
            (submission(start_token="A" * 400), bad_start),
            (submission(start_token="\u00e9" * 200), bad_start),
            (submission(start_token="\x00" * 100), bad_start),
            (submission(start_token="A" * 401), bad_message),
            (submission(end_token=""), {("result", "bad_end_token")}),
            (submission(end_token=_mangled(end, 40)), {("result", "bad_end_token")}),
            (submission(points=_recut(points)), {("result", "bad_point_token")}),
            (submission(points=[points[0], points[0]]), {("result", "duplicate_point")}),
            (submission(points=[points[0]] * 1_300), {("result", "duplicate_point")}),  # 240 KB
            (
                submission(points=[*points, {"token": "A" * 158, "client_ts": 1}]),
                {("result", "bad_point_token")},
            ),
            (
                submission(points=[{**p, "client_ts": p["client_ts"] + 5_000} for p in points]),
                {("result", "timing_mismatch")},
            ),
            (submission(points=[{**points[0], "client_ts": 2**63}]), bad_message),
            (submission(points=[{**points[0], "client_ts": -1}]), bad_message),
            (submission(points=[{**points[0], "client_ts": 2**53}]), bad_message),
            (submission(id=2**63), bad_message),
            (submission(points={"token": start}), bad_message),
            (
                '{"type":"submit_result","start_token":"a","end_token":"b","points":'
                + "[" * 50_000
                + "]" * 50_000
                + "}",
                bad_message,
            ),
            (b"\xff\xfe" * 1_000, bad_message),
            ("", {("error", "bad_json")}),
        ]

        async def attempt(index: int) -> tuple[str, str] | int:
            frame, _ = cases[index]
            async with connect(server) as attacker:
                if index % 2:
                    await attacker.login(mallory)
                await attacker.send_raw(frame)
                reply = await attacker.recv()
                while reply["type"] == "leaderboard":
                    reply = await attacker.recv()
                if reply["type"] == "error":
                    return ("error", reply["code"])
                assert reply["accepted"] is False, (index, reply)
                return ("result", reply["reason"])

        async def too_big(_: int) -> int:
            async with connect(server) as attacker:
                await attacker.send_raw(submission(points=[points[0]] * 2_000))  # 370 KB
                with pytest.raises(ConnectionClosed) as closed:
                    await attacker.recv()
                return closed.value.reason.code  # type: ignore[no-any-return]

        async with trio.open_nursery() as nursery:
            answers: list[Any] = []
            closes: list[int] = []

            async def run_cases() -> None:
                answers.extend(await all_at_once(len(cases), attempt))

            async def run_too_big() -> None:
                closes.extend(await all_at_once(3, too_big))

            nursery.start_soon(run_cases)
            nursery.start_soon(run_too_big)
        for (frame, expected), answer in zip(cases, answers, strict=True):
            assert answer in expected, (str(frame)[:80], answer)
        assert closes == [1009] * 3  # the contract's "message too big", never 1011
        flags = await server.service.store.flags()
        assert flags and all(f.get("user_id") != owner["user_id"] for f in flags)
        # The owner's own submission, after all of that: accepted, saved.
        async with connect(server) as client:
            await client.login(owner)
            result = await client.call(type="submit_result", **real, points=points)
        assert without_receipt(result) == {
            "type": "result",
            "accepted": True,
            "score": 3,
            "saved": True,
            "held": False,
        }
        assert server.service.store.failure is None


async def test_points_sent_at_once_across_the_end_are_each_answered_once(server: Server) -> None:
    """Ten players of the 1 s game, with helper processes, send points without waiting for
    answers from before the end to after it: every point gets exactly one answer (accepted,
    or game_over once the game is over), none is lost at the timer's edge, and end_game comes
    once. (A timer that was a cancel scope lost the point handed over as it fired.)"""

    async def player(n: int) -> Counter[str]:
        async with connect(server) as client:
            await client.enter("quick", None)
            await client.start(wall_ms())
            sent = 0
            # Real time on purpose (helper processes answer in real time): a player's pace,
            # 0.08 s apart, 14 points: past the 1 s game, under the burst rule.
            while sent < 14:
                await trio.sleep(0.08)
                sent += 1
                await client.send(type="point", client_ts=wall_ms(), id=sent)
            answers: Counter[str] = Counter()
            ids: list[int] = []
            while len(ids) < sent:
                message = await client.recv()
                if message["type"] in ("point_accepted", "point_rejected"):
                    ids.append(message["id"])
                    answers[message.get("reason") or "accepted"] += 1
                elif message["type"] == "end_game":
                    answers["end_game"] += 1
            assert sorted(ids) == list(range(1, sent + 1)), ids
            await client.send(type="whoami", id="last")
            while (message := await client.recv()).get("id") != "last":
                answers[message["type"]] += 1  # nothing but a late end_game may come here
            return answers

    with trio.fail_after(30):
        results = await all_at_once(10, player)
    for answers in results:
        assert answers["end_game"] == 1, answers
        assert answers["accepted"] >= 1 and answers["game_over"] >= 1, answers  # across the end
        assert set(answers) <= {"accepted", "game_over", "end_game"}, answers
