"""The server as a process: SIGKILL loses nothing acknowledged; SIGTERM ends games cleanly."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed

from scoreserver.server.launch import parse_banner, serve_command
from scoreserver.store.connect import connect as db_connect

from .. import databases
from ..conftest import open_client, self_signed
from ..players import without_receipt

pytestmark = [pytest.mark.slow, pytest.mark.engines]


def cli(
    tmp_path: Path, *args: str, stdin: str | None = None, db: str = "s.db"
) -> subprocess.CompletedProcess[str]:
    where = databases.location(tmp_path, db)
    return subprocess.run(
        [sys.executable, "-m", "scoreserver.ops.cli", *args, "--db", where],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


class Proc:
    def __init__(self, process: trio.Process, ws_port: int, http_port: int):
        self.process = process
        self.ws = f"ws://127.0.0.1:{ws_port}/"
        self.http = f"http://127.0.0.1:{http_port}"


@asynccontextmanager
async def server_process(tmp_path: Path) -> AsyncIterator[Proc]:
    process = await trio.lowlevel.open_process(
        serve_command(databases.location(tmp_path, "s.db"), tmp_path / "s.key"),
        stdout=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        output = b""
        with trio.fail_after(30):
            while not (ports := parse_banner(output.decode(errors="replace"))):
                chunk = await process.stdout.receive_some()  # type: ignore[union-attr]
                assert chunk, f"server exited early: {output!r}"
                output += chunk
        yield Proc(process, *ports)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.fail_after(10):
            await process.wait()
        await process.stdout.aclose()  # type: ignore[union-attr]


def wall_ms() -> int:
    return int(time.time() * 1000)


async def receive(ws: Any) -> dict[str, Any]:
    """The next message that is not a leaderboard push (a save pushes the room's board
    whenever it lands, before or after whatever the test waits for)."""
    while (message := json.loads(await ws.get_message()))["type"] == "leaderboard":
        pass
    return message  # type: ignore[no-any-return]


async def call(ws: Any, **message: Any) -> dict[str, Any]:
    """Send, and return the reply (skipping leaderboard pushes)."""
    await ws.send_message(json.dumps(message))
    return await receive(ws)


async def play(
    ws: Any, token: str, user_id: int, points: int, game: str = "quick", *, late_ok: bool = False
) -> dict[str, Any]:
    """Log in, enter `game`, start, score `points`. With `late_ok`, a point that arrives after
    a very short game's end (`game_over`) is left out rather than failing the test."""
    assert (await call(ws, type="auth", token=token))["user_id"] == user_id
    assert (await call(ws, type="enter_game_room", game_id=game, user_id=user_id))[
        "type"
    ] == "room_entered"
    started = await call(ws, type="game_start", client_ts=wall_ms())
    claims = []
    for _ in range(points):
        ts = wall_ms()
        reply = await call(ws, type="point", client_ts=ts)
        if late_ok and reply["type"] == "end_game":
            # The game ended before this point's reply came: that reply (game_over) follows.
            while (late := json.loads(await ws.get_message()))["type"] == "leaderboard":
                pass
            assert late == {**late, "type": "point_rejected", "reason": "game_over"}, late
            return {"started": started, "points": claims, "end": reply}
        if late_ok and reply == {**reply, "type": "point_rejected", "reason": "game_over"}:
            continue
        assert reply["type"] == "point_accepted", reply
        claims.append({"token": reply["token"], "client_ts": ts})
    return {"started": started, "points": claims}


async def register_at(http_url: str, name: str) -> dict[str, Any]:
    """An account made over the server process's HTTP API: its login token and user id."""
    async with httpx.AsyncClient(base_url=http_url) as api:
        reply = await api.post("/api/register", json={"name": name, "password": "p" * 10})
    assert reply.status_code == 201, reply.text
    return reply.json()  # type: ignore[no-any-return]


async def test_acknowledged_results_survive_sigkill(tmp_path: Path) -> None:
    made = cli(
        tmp_path,
        *("games", "add", "quick", "--duration", "0.4", "--human-max-rate", "0"),
        *("--human-floor-ms", "0", "--min-rhythm-cv", "0"),  # its players are scripts
    )
    assert made.returncode == 0, made.stderr
    assert cli(tmp_path, "games", "add", "long", "--duration", "60").returncode == 0
    with trio.fail_after(60):
        async with server_process(tmp_path) as proc:
            user = await register_at(proc.http, "kim")
            async with open_client(proc.ws) as ws:
                game = await play(ws, user["token"], user["user_id"], 4)
                end = await receive(ws)
                assert end["type"] == "end_game" and end["reason"] == "time_up"
                result = await call(
                    ws,
                    type="submit_result",
                    start_token=game["started"]["start_token"],
                    end_token=end["end_token"],
                    points=game["points"],
                )
                assert result["accepted"] and result["saved"]
                # A second game ends but is not submitted before the crash.
                pending = await play(ws, user["token"], user["user_id"], 2)
                pending_end = await receive(ws)
                assert pending_end["type"] == "end_game"
                # A third is cut off mid-game by the crash.
                cut = await play(ws, user["token"], user["user_id"], 1, game="long")
                proc.process.send_signal(signal.SIGKILL)  # no chance to flush anything
        async with server_process(tmp_path) as proc:
            async with httpx.AsyncClient(base_url=proc.http) as api:
                board = (await api.get("/api/games/quick/leaderboard")).json()
                assert board["entries"] == [
                    {"rank": 1, "user_id": user["user_id"], "name": "kim", "score": 4}
                ]
                late = await api.post(
                    "/api/results",
                    json={
                        "start_token": pending["started"]["start_token"],
                        "end_token": pending_end["end_token"],
                        "points": pending["points"],
                    },
                )
                assert without_receipt(late.json()) == {
                    "type": "result",
                    "accepted": True,
                    "score": 2,
                    "saved": True,
                    "held": False,
                }
                voided = await api.post(
                    "/api/results",
                    headers={"authorization": f"Bearer {user['token']}"},  # kim submits it
                    json={
                        "start_token": cut["started"]["start_token"],
                        "end_token": pending_end["end_token"],
                        "points": cut["points"],
                    },
                )
                assert voided.json()["reason"] == "session_voided"
    # The crash voided the third game, not kim: refusing its submission flags no one, and her
    # saved scores stay on the board.
    assert json.loads(cli(tmp_path, "flags", "list", "--json").stdout) == []
    entries = json.loads(cli(tmp_path, "leaderboard", "quick", "--json").stdout)["entries"]
    assert [(e["name"], e["score"]) for e in entries] == [("kim", 4)]


async def test_sigterm_ends_running_games_and_exits(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with server_process(tmp_path) as proc:
            user = await register_at(proc.http, "lou")
            async with open_client(proc.ws) as ws:
                await play(ws, user["token"], user["user_id"], 1, game="demo")
                proc.process.send_signal(signal.SIGTERM)
                end = await receive(ws)
                assert end["type"] == "end_game" and end["reason"] == "server_shutdown"
                assert "end_token" not in end
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == 1001
            started = trio.current_time()
            assert await proc.process.wait() == 0
            assert trio.current_time() - started < 5
    listed = cli(tmp_path, "flags", "list", "--json")
    assert json.loads(listed.stdout) == []  # a shutdown flags nobody


async def test_twenty_sigkills_under_load_lose_no_acknowledged_result(tmp_path: Path) -> None:
    """Players play and submit 0.3 s games in a loop; the server dies by SIGKILL at a random
    moment, 20 times. After each restart every acknowledged result is there, intact."""
    import random

    rng = random.Random(20)
    flash = (
        "games",
        "add",
        "flash",
        "--duration",
        "0.3",
        "--human-floor-ms",
        "0",
        "--human-max-rate",
        "0",
    )
    assert cli(tmp_path, *flash, "--min-rhythm-cv", "0").returncode == 0
    acknowledged: set[str] = set()
    accounts: list[dict[str, Any]] = []

    async def player(proc: Proc, account: dict[str, Any]) -> None:
        try:
            async with open_client(proc.ws) as ws:
                while True:
                    game = await play(
                        ws, account["token"], account["user_id"], 2, game="flash", late_ok=True
                    )
                    end = game.get("end")
                    while end is None or end["type"] != "end_game":
                        end = await receive(ws)
                    result = await call(
                        ws,
                        type="submit_result",
                        start_token=game["started"]["start_token"],
                        end_token=end["end_token"],
                        points=game["points"],
                    )
                    if result.get("accepted"):
                        acknowledged.add(game["started"]["session_id"])
        except (ConnectionClosed, trio.BrokenResourceError, OSError):
            return  # the server died under us (a wrong answer before that fails the test)

    with trio.fail_after(400):
        for round_ in range(20):
            async with server_process(tmp_path) as proc:
                if not accounts:
                    for n in range(6):
                        accounts.append(await register_at(proc.http, f"p{n}"))
                async with trio.open_nursery() as nursery:
                    for account in accounts:
                        nursery.start_soon(player, proc, account)
                    await trio.sleep(rng.uniform(0.3, 1.5))
                    proc.process.send_signal(signal.SIGKILL)
            conn = db_connect(databases.location(tmp_path, "s.db"))
            try:
                if conn.dialect == "sqlite":
                    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                saved = {row[0] for row in conn.execute("SELECT session_id FROM scores")}
                missing = acknowledged - saved
                assert not missing, f"round {round_}: acknowledged but lost: {missing}"
                partial = conn.execute(
                    "SELECT COUNT(*) FROM scores s JOIN game_sessions g ON g.id = s.session_id"
                    " WHERE g.state != 'submitted'"
                ).fetchone()[0]
                assert partial == 0
                orphans = conn.execute(
                    "SELECT COUNT(*) FROM issued_points p LEFT JOIN game_sessions g"
                    " ON g.id = p.session_id WHERE g.id IS NULL"
                ).fetchone()[0]
                assert orphans == 0
            finally:
                conn.close()
    assert len(acknowledged) >= 20  # the load was real


async def test_a_damaged_or_foreign_database_is_refused_at_start(tmp_path: Path) -> None:
    where = databases.location(tmp_path, "s.db")
    serve = ("serve", "--ws-port", "0", "--http-port", "0", "--key", str(tmp_path / "k"))
    if databases.is_postgres(where):
        databases.create(where)
        databases.sql(where, "UPDATE scoreserver_schema SET version = 99")
        refused = cli(tmp_path, *serve)
        assert refused.returncode == 1 and "schema version 99" in refused.stderr
        # Another program's tables, and no schema of ours: refused, nothing touched.
        other = databases.location(tmp_path, "other.db")
        databases.sql(other, "CREATE TABLE users (id BIGINT, login TEXT)")
        foreign = cli(tmp_path, *serve, db="other.db")
        assert foreign.returncode == 1 and "another program" in foreign.stderr
        assert databases.sql(other, "SELECT to_regclass('games')")[0][0] is None
        return
    import sqlite3

    path = Path(where)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    refused = cli(tmp_path, *serve)
    assert refused.returncode == 1 and "schema version 99" in refused.stderr
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 84 + b"garbage" * 1000)
    damaged = cli(tmp_path, *serve)
    assert damaged.returncode == 1 and "database" in damaged.stderr


async def test_tls_serves_both_ports(tmp_path: Path) -> None:
    from scoreserver.server.app import serve
    from scoreserver.server.config import Config

    trust = self_signed(tmp_path)
    config = Config(
        ws_port=0,
        http_port=0,
        db_path=databases.location(tmp_path, "t.db"),
        key_path=tmp_path / "t.key",
        tls_cert=tmp_path / "cert.pem",
        tls_key=tmp_path / "key.pem",
        handle_signals=False,
        announce=False,
        reanchor_clock=False,
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, config)
            assert server.ws_url.startswith("wss://") and server.http_url.startswith("https://")
            async with httpx.AsyncClient(verify=trust) as api:
                health = (await api.get(server.http_url + "/healthz")).json()
                assert health["status"] == "ok"
            async with open_client(server.ws_url, ssl_context=trust) as ws:
                assert (await call(ws, type="whoami"))["type"] == "identity"
            # Plain text to a TLS port gets nowhere: no HTTP or WebSocket answer comes back.
            received = b""
            stream = await trio.open_tcp_stream("127.0.0.1", server.ws_port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    while chunk := await stream.receive_some():
                        received += chunk
                except trio.BrokenResourceError:
                    pass
            assert b"HTTP/" not in received and b"101" not in received
            server.stop()


async def test_a_second_server_on_taken_ports_says_which_in_one_line(tmp_path: Path) -> None:
    async with server_process(tmp_path) as proc:
        ws_port = int(proc.ws.rsplit(":", 1)[1].rstrip("/"))
        http_port = int(proc.http.rsplit(":", 1)[1])
        for flags, port, flag in (
            (["--ws-port", str(ws_port), "--http-port", "0"], ws_port, "--ws-port"),
            (["--ws-port", "0", "--http-port", str(http_port)], http_port, "--http-port"),
        ):
            second = await trio.run_process(
                [
                    sys.executable,
                    "run.py",
                    *flags,
                    "--db",
                    databases.location(tmp_path, "b.db"),
                    "--key",
                    str(tmp_path / "b.key"),
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=Path(__file__).parent.parent.parent,
            )
            stderr = second.stderr.decode()
            assert second.returncode == 1
            # Start-up's INFO log lines, then the error: one line, no traceback.
            error = stderr.strip().splitlines()[-1]
            assert error.startswith("scoreserver: error: port"), stderr
            assert f"port {port}" in error and f"{flag} PORT" in error, error
            assert "Traceback" not in stderr and "Errno" not in stderr


def test_passwords_are_asked_on_a_terminal_and_refused_cleanly_without_one(tmp_path: Path) -> None:
    for command in (["users", "add", "dan"], ["admin", "set-password"]):
        done = cli(tmp_path, *command, stdin="")  # no terminal: standard input is a pipe
        assert done.returncode == 1, done
        assert "--password-stdin" in done.stderr and "Traceback" not in done.stderr
    made = cli(tmp_path, "users", "add", "dan", "--password-stdin", stdin="correct horse\n")
    assert made.returncode == 0 and "dan" in made.stdout


def test_help_names_run_py_and_every_option_says_what_it_does_and_its_default() -> None:
    from scoreserver.ops.parser import build_parser, serve_parser

    shown = subprocess.run(
        [sys.executable, "run.py", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent.parent,
    )
    assert shown.stdout.startswith("usage: python run.py"), shown.stdout[:80]
    assert "(default: 8765)" in shown.stdout and "(default: scoreserver.db)" in shown.stdout

    def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        found = [parser]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    found.extend(parsers(child))
        return found

    for parser in [serve_parser("python run.py"), *parsers(build_parser())]:
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest}"
