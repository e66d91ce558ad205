"""Many nodes on one database: three `serve` processes on one real PostgreSQL, and `--workers 2`
on both engines. Sessions live on the node that started them; any node submits and serves
boards; a resume goes where the game is; a dead node's games are voided and nothing
acknowledged is lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from scoreserver.server.launch import parse_banner, serve_command

from .. import databases
from ..conftest import open_client
from ..players import without_receipt
from .test_process import call, cli, register_at, wall_ms

pytestmark = [pytest.mark.slow]
on_postgres = pytest.mark.parametrize("engine", ["postgres"], indirect=True)
LEASE = "2"  # seconds: a SIGKILLed node is noticed within about that


class Node:
    def __init__(self, process: trio.Process, banner: str):
        self.process = process
        ports = parse_banner(banner)
        assert ports is not None
        self.ws = f"ws://127.0.0.1:{ports[0]}/"
        self.http = f"http://127.0.0.1:{ports[1]}"
        self.urls = [w for w in banner.split() if w.startswith("ws://")]
        self.node_url = next(
            (w.removeprefix("node=") for w in banner.split() if w.startswith("node=")), ""
        )


@asynccontextmanager
async def node(tmp_path: Path, key: str, *flags: str) -> AsyncIterator[Node]:
    process = await trio.lowlevel.open_process(
        serve_command(databases.location(tmp_path, "s.db"), tmp_path / key)
        + ["--node-lease", LEASE, *flags],
        stdout=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        output = b""
        with trio.fail_after(60):
            while b"\n" not in output or not parse_banner(output.decode(errors="replace")):
                chunk = await process.stdout.receive_some()  # type: ignore[union-attr]
                assert chunk, f"node exited early: {output!r}"
                output += chunk
        yield Node(process, output.decode())
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(20):
                await process.wait()
        if process.returncode is None:
            process.kill()
        with trio.fail_after(10):
            await process.wait()
        await process.stdout.aclose()  # type: ignore[union-attr]


async def start(ws: Any, user: dict[str, Any], game: str = "quick") -> dict[str, Any]:
    assert (await call(ws, type="auth", token=user["token"]))["user_id"] == user["user_id"]
    entered = await call(ws, type="enter_game_room", game_id=game, user_id=user["user_id"])
    assert entered["type"] == "room_entered", entered
    return await call(ws, type="game_start", client_ts=wall_ms())


async def score(ws: Any, n: int) -> list[dict[str, Any]]:
    points = []
    for _ in range(n):
        ts = wall_ms()
        reply = await call(ws, type="point", client_ts=ts)
        assert reply["type"] == "point_accepted", reply
        points.append({"token": reply["token"], "client_ts": ts})
    return points


async def next_board(ws: Any, game: str, within_s: float) -> list[dict[str, Any]]:
    with trio.fail_after(within_s):
        while True:
            message = json.loads(await ws.get_message())
            if message["type"] == "leaderboard" and message["game_id"] == game:
                return message["entries"]  # type: ignore[no-any-return]


# Real time, on purpose: these tests drive other processes (nodes, a supervisor, HAProxy),
# whose state crosses no trio event; it is polled this often, each wait bounded.
POLL_S = 0.05


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    """Poll `check` until it holds; fail if it does not within `within_s`."""
    with trio.move_on_after(within_s):
        while not await check():
            await trio.sleep(POLL_S)
        return
    raise AssertionError(f"{what}: not within {within_s} s")


def rows(tmp_path: Path, statement: str, params: Any = ()) -> list[Any]:
    return databases.sql(databases.location(tmp_path, "s.db"), statement, params)


async def race_game_start(one: str, two: str, user: dict[str, Any]) -> dict[str, Any]:
    """`game_start` for one user sent at once to two nodes: exactly one game starts (its
    `game_started` is returned), the other is `session_active`."""
    async with open_client(one) as first, open_client(two) as second:
        for ws in (first, second):
            assert (await call(ws, type="auth", token=user["token"]))["user_id"]
            entered = await call(
                ws, type="enter_game_room", game_id="long", user_id=user["user_id"]
            )
            assert entered["type"] == "room_entered"
        replies: list[dict[str, Any]] = []

        async def go(ws: Any) -> None:
            replies.append(await call(ws, type="game_start", client_ts=wall_ms()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(go, first)
            nursery.start_soon(go, second)
    kinds = sorted(r["type"] if r["type"] != "error" else r["code"] for r in replies)
    assert kinds == ["game_started", "session_active"], replies
    return next(r for r in replies if r["type"] == "game_started")


async def resume_elsewhere(via: str, user: dict[str, Any], started: dict[str, Any]) -> str:
    """`resume` sent to a node without the game: the URL its `session_elsewhere` names."""
    async with open_client(via) as ws:
        assert (await call(ws, type="auth", token=user["token"]))["user_id"] == user["user_id"]
        elsewhere = await call(ws, type="resume", start_token=started["start_token"])
    assert elsewhere["type"] == "error" and elsewhere["code"] == "session_elsewhere", elsewhere
    return str(elsewhere["url"])


async def resume_and_finish(
    url: str, user: dict[str, Any], started: dict[str, Any], more: int
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Resume at `url`, score `more` points, wait for the end: (game_started, points, end)."""
    async with open_client(url) as ws:
        assert (await call(ws, type="auth", token=user["token"]))["user_id"] == user["user_id"]
        resumed = await call(ws, type="resume", start_token=started["start_token"])
        assert resumed["type"] == "game_started", resumed
        points = await score(ws, more)
        with trio.fail_after(10):
            while (end := json.loads(await ws.get_message()))["type"] != "end_game":
                pass
    assert end["reason"] == "time_up" and end["end_token"]
    return resumed, points, end


async def submit_http(
    base: str, started: dict[str, Any], end: dict[str, Any], points: list[dict[str, Any]]
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base) as api:
        result = await api.post(
            "/api/results",
            json={
                "start_token": started["start_token"],
                "end_token": end["end_token"],
                "points": points,
            },
        )
    return result.json()  # type: ignore[no-any-return]


def add_games(tmp_path: Path) -> None:
    made = cli(
        tmp_path,
        *("games", "add", "quick", "--duration", "4", "--human-floor-ms", "0"),
        *("--min-rhythm-cv", "0"),
    )
    assert made.returncode == 0, made.stderr
    assert cli(tmp_path, "games", "add", "long", "--duration", "120").returncode == 0


@on_postgres
async def test_three_nodes_share_one_postgresql(tmp_path: Path) -> None:
    add_games(tmp_path)
    set_pw = cli(tmp_path, "admin", "set-password", "--password-stdin", stdin="admin secret 12")
    assert set_pw.returncode == 0, set_pw.stderr
    with trio.fail_after(150):
        async with AsyncExitStack() as stack:
            # Each node its own key file, as on three machines: tokens verify everywhere.
            a = await stack.enter_async_context(node(tmp_path, "a.key"))
            b = await stack.enter_async_context(node(tmp_path, "b.key"))
            c = await stack.enter_async_context(node(tmp_path, "c.key"))
            kim = await register_at(a.http, "kim")
            lee = await register_at(c.http, "lee")

            # Boards watched on B and on A, by a guest each (closed once read: a socket whose
            # messages nobody reads cannot finish its closing handshake).
            watchers = await stack.enter_async_context(AsyncExitStack())
            watch_b = await watchers.enter_async_context(open_client(b.ws))
            assert (await call(watch_b, type="enter_game_room", game_id="quick", user_id=None))[
                "type"
            ] == "room_entered"
            watch_a = await watchers.enter_async_context(open_client(a.ws))
            assert (await call(watch_a, type="enter_game_room", game_id="quick", user_id=None))[
                "type"
            ] == "room_entered"

            # Kim plays on A and drops the socket mid-game.
            async with open_client(a.ws) as ws:
                started = await start(ws, kim)
                points = await score(ws, 3)
            # She resumes through B: B sends her to A, where the game is.
            url = await resume_elsewhere(b.ws, kim, started)
            assert url == a.node_url == a.ws
            resumed, more, end = await resume_and_finish(url, kim, started, 2)
            assert resumed["seq"] == 3
            points += more

            # Submitted over HTTP to C (which never saw the game): saved.
            result = await submit_http(c.http, started, end, points)
            assert without_receipt(result) == {
                "type": "result",
                "accepted": True,
                "score": 5,
                "saved": True,
                "held": False,
            }
            # B's board hears of it (NOTIFY), and so does A's.
            expected = [{"rank": 1, "user_id": kim["user_id"], "name": "kim", "score": 5}]
            assert await next_board(watch_b, "quick", 5) == expected
            assert await next_board(watch_a, "quick", 5) == expected

            # A ban decided on C's /admin: the board on A drops kim within 2 s.
            async with httpx.AsyncClient(base_url=c.http) as api:
                login = await api.post("/api/admin/login", json={"password": "admin secret 12"})
                auth = {"authorization": f"Bearer {login.json()['token']}"}
                banned = await api.post(
                    f"/api/admin/users/{kim['user_id']}/ban",
                    headers=auth,
                    json={"days": 1, "note": "test"},
                )
                assert banned.status_code == 200, banned.text
                decided = trio.current_time()
            assert await next_board(watch_a, "quick", 2) == []
            assert trio.current_time() - decided < 2
            await watchers.aclose()

            # Settings changed from the command line: every node uses them within 2 s.
            changed = cli(tmp_path, "games", "set", "quick", "--duration", "3")
            assert changed.returncode == 0, changed.stderr
            async with open_client(c.ws) as ws:

                async def new_duration() -> bool:
                    room = await call(ws, type="enter_game_room", game_id="quick", user_id=None)
                    return bool(room["duration_ms"] == 3000)

                await eventually(new_duration, 2, "node C uses the new duration")

            # A key rotation (on A's machine) retires every node's key: within 2 s each signs
            # with a new one, and the others verify it. A game on B, submitted to C:
            rotated = cli(tmp_path, "keys", "rotate", "--key", str(tmp_path / "a.key"))
            assert rotated.returncode == 0, rotated.stderr

            async def every_node_signs_with_a_live_key() -> bool:
                signing = {r[0] for r in rows(tmp_path, "SELECT kid FROM nodes")}
                retired = {
                    r[0]
                    for r in rows(
                        tmp_path, "SELECT kid FROM signing_keys WHERE retired_at IS NOT NULL"
                    )
                }
                return len(signing) == 3 and not signing & retired

            await eventually(every_node_signs_with_a_live_key, 2, "every node took a new key")
            async with open_client(b.ws) as ws:
                started = await start(ws, lee, "quick")
                points = await score(ws, 2)
                with trio.fail_after(10):
                    while (end := json.loads(await ws.get_message()))["type"] != "end_game":
                        pass
            assert (await submit_http(c.http, started, end, points))["saved"] is True

            # Two nodes racing game_start for one user: one game.
            winner = await race_game_start(a.ws, b.ws, lee)
            running = rows(
                tmp_path,
                "SELECT COUNT(*) FROM game_sessions WHERE user_id = ? AND state = 'running'",
                (lee["user_id"],),
            )
            assert running[0][0] == 1

            # SIGKILL the node that runs lee's game: voided within the lease, and lee starts
            # again on C. Kim's saved (if banned) score is still there.
            owner = rows(
                tmp_path,
                "SELECT nodes.url FROM game_sessions JOIN nodes ON nodes.id = node_id"
                " WHERE game_sessions.id = ?",
                (winner["session_id"],),
            )[0][0]
            victim = a if owner == a.node_url else b
            assert owner == victim.node_url
            victim.process.send_signal(signal.SIGKILL)
            async with open_client(c.ws) as ws:
                again = await start(ws, lee, "long")

                async def started_again() -> bool:
                    nonlocal again
                    if again.get("code") == "session_active":
                        again = await call(ws, type="game_start", client_ts=wall_ms())
                    return again.get("code") != "session_active"

                await eventually(started_again, 10, "the dead node was noticed")
                assert again["type"] == "game_started"
            state = rows(
                tmp_path,
                "SELECT state, end_reason FROM game_sessions WHERE id = ?",
                (winner["session_id"],),
            )
            assert tuple(state[0]) == ("voided", "crashed")
            scores = rows(tmp_path, "SELECT user_id, score FROM scores")
            assert sorted(tuple(r) for r in scores) == [(kim["user_id"], 5), (lee["user_id"], 2)]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process under `pid`."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in map(int, task.read_text().split()):
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            found += [(child, cmd), *descendants(child)]
    return found


@pytest.mark.parametrize("engine", databases.ENGINES, indirect=True)
async def test_workers_share_ports_and_send_players_to_their_game(
    tmp_path: Path, engine: str
) -> None:
    add_games(tmp_path)
    where = databases.location(tmp_path, "s.db")
    with trio.fail_after(150):
        async with node(tmp_path, "s.key", "--workers", "2") as supervisor:
            first, second = supervisor.urls[1:]  # the shared port, then each worker's own
            assert len({supervisor.ws, first, second}) == 3
            # Each worker is a node of its own.
            nodes = databases.sql(where, "SELECT url, pid FROM nodes ORDER BY url")
            assert sorted(r[0] for r in nodes) == sorted([first, second])
            # On SQLite the workers share one writer, the supervisor's child; on PostgreSQL
            # each worker has its own.
            writers = [
                (pid, cmd)
                for pid, cmd in descendants(supervisor.process.pid)
                if "writer_child" in cmd
            ]
            if engine == "sqlite":
                assert len(writers) == 1 and "--shared" in writers[0][1], writers
                assert parent_of(writers[0][0]) == supervisor.process.pid
            else:
                assert len(writers) == 2 and all("--shared" not in c for _, c in writers)
            kim = await register_at(supervisor.http, "kim")
            lee = await register_at(supervisor.http, "lee")

            async with open_client(second) as watch:
                assert (await call(watch, type="enter_game_room", game_id="quick", user_id=None))[
                    "type"
                ] == "room_entered"
                async with open_client(first) as ws:
                    started = await start(ws, kim)
                    points = await score(ws, 2)
                assert await resume_elsewhere(second, kim, started) == first
                _, more, end = await resume_and_finish(first, kim, started, 1)
                points += more
                # Submitted through the shared HTTP port (either worker answers).
                result = await submit_http(supervisor.http, started, end, points)
                assert result["saved"] is True
                # The other worker's board hears of it (NOTIFY, or its poller on SQLite).
                assert await next_board(watch, "quick", 5) == [
                    {"rank": 1, "user_id": kim["user_id"], "name": "kim", "score": 3}
                ]

            # Racing game_start on both workers: one game.
            winner = await race_game_start(first, second, lee)

            # SIGKILL the worker that runs it: the machine sees at once that the process is
            # gone; the supervisor starts the worker again; lee plays again.
            pid, dead_url = databases.sql(
                where,
                "SELECT nodes.pid, nodes.url FROM game_sessions JOIN nodes ON nodes.id = node_id"
                " WHERE game_sessions.id = ?",
                (winner["session_id"],),
            )[0]
            alive_url = second if dead_url == first else first
            os.kill(int(pid), signal.SIGKILL)
            again: dict[str, Any] = {"code": "session_active"}

            async def started_again() -> bool:
                nonlocal again
                # On the worker that lives (the shared port may hand a connection to the dead
                # one's socket in the moment it goes, and that one is never answered).
                async with open_client(alive_url) as ws:
                    again = await start(ws, lee, "long")
                return again.get("code") != "session_active"

            await eventually(started_again, 10, "the dead worker was noticed")
            assert again["type"] == "game_started", again
            state = databases.sql(
                where, "SELECT state FROM game_sessions WHERE id = ?", (winner["session_id"],)
            )
            assert state[0][0] == "voided"

            async def two_workers() -> bool:
                return len(databases.sql(where, "SELECT id FROM nodes")) == 2

            await eventually(two_workers, 20, "the supervisor started the worker again")
    assert supervisor.process.returncode == 0
    # A clean stop takes every worker's row with it.
    assert databases.sql(where, "SELECT id FROM nodes") == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def haproxy_config(ports: dict[str, int], nodes: dict[str, Node]) -> str:
    """docs/scaling.md's HAProxy configuration, its addresses and ports replaced by the test's."""
    doc = (Path(__file__).parents[2] / "docs" / "scaling.md").read_text()
    config = doc.split("```haproxy\n", 1)[1].split("```", 1)[0]
    for front, port in ports.items():
        config = config.replace(f"bind :{front}\n", f"bind 127.0.0.1:{port}\n")
    for name, address in (("a", "10.0.0.11"), ("b", "10.0.0.12"), ("c", "10.0.0.13")):
        ws_port, http_port = nodes[name].ws.rsplit(":", 1)[1].strip("/"), nodes[name].http
        config = config.replace(f"{address}:8765", f"127.0.0.1:{ws_port}")
        config = config.replace(f"{address}:8080", f"127.0.0.1:{http_port.rsplit(':', 1)[1]}")
    assert "10.0.0." not in config and "bind :" not in config
    return config


@on_postgres
async def test_three_nodes_behind_haproxy_as_docs_scaling_configures_it(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        if os.environ.get("SCORESERVER_REQUIRE_HAPROXY"):
            pytest.fail("haproxy is missing, and SCORESERVER_REQUIRE_HAPROXY is set")
        pytest.skip("haproxy is not installed (Debian: apt-get install haproxy)")
    add_games(tmp_path)
    ports = {front: free_port() for front in ("8765", "8080", "9001", "9002", "9003")}
    own = {"a": ports["9001"], "b": ports["9002"], "c": ports["9003"]}
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            nodes = {
                name: await stack.enter_async_context(
                    node(tmp_path, f"{name}.key", "--node-url", f"ws://127.0.0.1:{port}/")
                )
                for name, port in own.items()
            }
            log = tmp_path / "haproxy.log"

            async def start_proxy() -> trio.Process:
                (tmp_path / "haproxy.cfg").write_text(haproxy_config(ports, nodes))
                with log.open("ab") as out:
                    return await trio.lowlevel.open_process(
                        [haproxy, "-db", "-f", str(tmp_path / "haproxy.cfg")],
                        stdout=out,
                        stderr=out,
                    )

            proxy = await start_proxy()
            try:

                async def proxy_up() -> bool:  # HAProxy listens and finds a node up
                    nonlocal proxy
                    if proxy.poll() is not None:
                        # Exited: a front port chosen free was taken before HAProxy bound
                        # it (its own words are in the log). Again, on new front ports.
                        for front in ("8765", "8080"):
                            ports[front] = free_port()
                        proxy = await start_proxy()
                        return False
                    try:
                        async with httpx.AsyncClient(
                            base_url=f"http://127.0.0.1:{ports['8080']}"
                        ) as api:
                            return (await api.get("/healthz")).status_code == 200
                    except httpx.TransportError:
                        return False

                try:
                    await eventually(proxy_up, 40, "HAProxy serves")
                except AssertionError as exc:
                    raise AssertionError(
                        f"{exc}; HAProxy said: {log.read_text()[-2000:]}"
                    ) from None
                lb_ws = f"ws://127.0.0.1:{ports['8765']}/"
                lb_http = f"http://127.0.0.1:{ports['8080']}"
                kim = await register_at(lb_http, "kim")
                async with open_client(lb_ws) as ws:
                    started = await start(ws, kim)
                    points = await score(ws, 2)
                owner = rows(
                    tmp_path,
                    "SELECT nodes.url FROM game_sessions JOIN nodes ON nodes.id = node_id"
                    " WHERE game_sessions.id = ?",
                    (started["session_id"],),
                )[0][0]
                assert owner in {f"ws://127.0.0.1:{p}/" for p in own.values()}
                # Resume through another node's front port: sent to the owner's, through HAProxy.
                other = next(f"ws://127.0.0.1:{p}/" for p in own.values() if f"{p}/" not in owner)
                assert await resume_elsewhere(other, kim, started) == owner
                _, more, end = await resume_and_finish(owner, kim, started, 0)
                assert (await submit_http(lb_http, started, end, points))["saved"] is True
                async with httpx.AsyncClient(base_url=lb_http) as api:
                    board = (await api.get("/api/games/quick/leaderboard")).json()
                    assert [e["score"] for e in board["entries"]] == [2]
            finally:
                proxy.kill()
                await proxy.wait()


@on_postgres
async def test_login_budgets_hold_across_nodes_when_guesses_are_sent_at_once(
    tmp_path: Path,
) -> None:
    """Guesses split over two nodes and sent together count together: the account's budget
    (10 failures a minute) and /admin's per-address budget, as on one node."""
    set_pw = cli(tmp_path, "admin", "set-password", "--password-stdin", stdin="admin secret 12")
    assert set_pw.returncode == 0, set_pw.stderr
    with trio.fail_after(120):
        async with node(tmp_path, "a.key") as a, node(tmp_path, "b.key") as b:
            await register_at(a.http, "kim")
            statuses: list[int] = []
            admin: list[int] = []

            async def guess(base: str, path: str, body: dict[str, str], into: list[int]) -> None:
                async with httpx.AsyncClient(base_url=base, timeout=60) as api:
                    into.append((await api.post(path, json=body)).status_code)

            async with trio.open_nursery() as nursery:
                for i in range(24):
                    base = (a, b)[i % 2].http
                    body = {"name": "kim", "password": f"wrong guess {i}"}
                    nursery.start_soon(guess, base, "/api/login", body, statuses)
            assert sorted(statuses) == [401] * 10 + [429] * 14, statuses
            async with trio.open_nursery() as nursery:
                for i in range(12):
                    base = (a, b)[i % 2].http
                    body = {"password": f"wrong {i}"}
                    nursery.start_soon(guess, base, "/api/admin/login", body, admin)
            assert sorted(admin) == [401] * 5 + [429] * 7, admin
            # Both nodes still serve: the right admin password is refused only for the budget.
            async with httpx.AsyncClient(base_url=b.http) as api:
                assert (await api.get("/healthz")).status_code == 200


def mangled(token: str) -> str:
    """The same token with its last character changed (it no longer verifies)."""
    return token[:-1] + ("A" if token[-1] != "A" else "B")


@pytest.mark.parametrize("engine", databases.ENGINES, indirect=True)
async def test_hostile_resumes_and_frames_at_once_against_workers(tmp_path: Path) -> None:
    """`--workers 2` as shipped (its helper processes): resumes that must not learn or reach
    another player's game, and frames at the bounds, all sent at once over many sockets to
    both workers. Each gets its contract error (never `session_elsewhere` for someone else's
    game, never a 1011 close); both workers then serve a whole game and save it."""
    add_games(tmp_path)
    with trio.fail_after(120):
        async with node(tmp_path, "s.key", "--workers", "2") as supervisor:
            first, second = supervisor.urls[1:]
            kim = await register_at(supervisor.http, "kim")
            eve = await register_at(supervisor.http, "eve")
            async with open_client(first) as owner:
                started = await start(owner, kim, "long")
                token = started["start_token"]
                # (who resumes, the start token, the codes it may get)
                resumes = [
                    (eve, token, {"unknown_session"}),  # someone else's game
                    (None, token, {"unknown_session"}),  # a guest
                    (kim, mangled(token), {"unknown_session"}),
                    (kim, "", {"unknown_session", "bad_message"}),
                    (kim, "A" * 400, {"unknown_session"}),
                    (kim, "A" * 401, {"bad_message"}),  # over the token bound
                    (kim, "\u0000" * 64, {"unknown_session"}),
                ]
                frames = [
                    *HOSTILE,
                    json.dumps({"type": "resume", "start_token": token, "id": 2**63}),
                    json.dumps({"type": "resume", "start_token": token, "id": -(2**63) - 1}),
                    json.dumps({"type": "resume", "start_token": [token]}),
                    json.dumps({"type": "resume"}),
                ]
                answers: list[tuple[set[str], dict[str, Any]]] = []

                async def resume(url: str, who: Any, tok: str, allowed: set[str]) -> None:
                    async with open_client(url) as ws:
                        if who is not None:
                            assert (await call(ws, type="auth", token=who["token"]))["user_id"]
                        answers.append((allowed, await call(ws, type="resume", start_token=tok)))

                async def hostile(url: str, frame: str | bytes) -> None:
                    async with open_client(url) as ws:
                        await ws.send_message(frame)
                        answers.append(
                            ({"bad_message", "bad_json"}, json.loads(await ws.get_message()))
                        )
                        # The socket is still open and answers.
                        assert (await call(ws, type="whoami"))["type"] == "identity"

                async with trio.open_nursery() as nursery:
                    for url in (first, second, supervisor.ws):
                        for who, tok, allowed in resumes:
                            nursery.start_soon(resume, url, who, tok, allowed)
                        for frame in frames:
                            nursery.start_soon(hostile, url, frame)
                assert len(answers) == 3 * (len(resumes) + len(frames))
                for allowed, reply in answers:
                    assert reply["type"] == "error" and reply["code"] in allowed, (allowed, reply)
                    assert "url" not in reply
                # Kim's own game is untouched: she still resumes it through the other worker.
                url = await resume_elsewhere(second, kim, started)
                assert url == first
            # Both workers play and save a whole game afterwards.
            for url in (first, second):
                async with open_client(url) as ws:
                    game = await start(ws, eve if url == first else kim, "quick")
                    points = await score(ws, 2)
                    with trio.fail_after(10):
                        while (end := json.loads(await ws.get_message()))["type"] != "end_game":
                            pass
                result = await submit_http(supervisor.http, game, end, points)
                assert result["saved"] is True
            assert supervisor.process.returncode is None


HOSTILE: list[str | bytes] = [
    '{"type": "point", "client_ts": 9223372036854775808}',
    '{"type": "point", "client_ts": -1}',
    '{"type": "game_start", "client_ts": 9223372036854775808}',
    '{"type": "enter_game_room", "game_id": "quick", "user_id": 9223372036854775808}',
    "[" * 50_000 + "]" * 50_000,
    b"\xff\xfe\xfd",
    "",
    "{}",
]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--workers", "0"], "--workers"),
        (["--workers", "-1"], "--workers"),
        (["--workers", "65"], "--workers"),
        (["--workers", str(2**63)], "--workers"),
        (["--workers", "2", "--ws-port", "65535"], "--ws-port"),
        (["--node-lease", "0"], "--node-lease"),
        (["--node-lease", "-1"], "--node-lease"),
        (["--node-lease", "nan"], "--node-lease"),
        (["--node-lease", "inf"], "--node-lease"),
        (["--node-lease", "1e300"], "--node-lease"),
        (["--node-url", ""], "--node-url"),
        (["--node-url", "http://10.0.0.11:8765/"], "--node-url"),
        (["--node-url", "ws://"], "--node-url"),
        (["--node-url", "ws://h:99999/"], "--node-url"),
        (["--node-url", "ws://h/\x1b[2J"], "--node-url"),
        (["--node-url", "ws://h/" + "x" * 5000], "--node-url"),
        (["--failed-logins-per-account", "0"], "--failed-logins-per-account"),
        (["--admin-failures", "0"], "--admin-failures"),
        (["--admin-failures-per-addr", "0"], "--admin-failures-per-addr"),
        (["--login-attempts-per-addr", "-1"], "--login-attempts-per-addr"),
        (["--failed-submissions-per-addr", str(2**63)], "--failed-submissions-per-addr"),
        (["--max-conns", "-5"], "--max-conns"),
        (["--max-conns-per-addr", str(2**63)], "--max-conns-per-addr"),
        (["--max-msg-rate", "nan"], "--max-msg-rate"),
        (["--trusted-proxy", "10.0.0.0/33"], "--trusted-proxy"),
        (["--trusted-proxy", ""], "--trusted-proxy"),
        (["--trusted-proxy", "balancer.example"], "--trusted-proxy"),
    ],
)
def test_node_flags_out_of_bounds_are_refused_in_one_line(
    tmp_path: Path, flags: list[str], named: str
) -> None:
    done = subprocess.run(
        serve_command(tmp_path / "s.db", tmp_path / "s.key", *flags),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert named in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "s.db").exists()  # refused before anything was made


def test_workers_are_started_with_every_budget_and_proxy_flag() -> None:
    from scoreserver.ops.parser import build_parser
    from scoreserver.ops.workers import passed_flags

    given = [
        *("--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1"),
        *("--forwarded-header", "forwarded", "--login-attempts-per-addr", "7"),
        *("--failed-logins-per-account", "3", "--failed-submissions-per-addr", "0"),
        *("--admin-failures-per-addr", "2", "--admin-failures", "4", "--max-conns", "9"),
        *("--max-conns-per-addr", "5", "--max-msg-rate", "12.5"),
    ]
    args = build_parser().parse_args(["serve", *given])
    again = build_parser().parse_args(["serve", *passed_flags(args)])
    for name in (
        "trusted_proxy",
        "forwarded_header",
        "login_attempts_per_addr",
        "failed_logins_per_account",
        "failed_submissions_per_addr",
        "admin_failures_per_addr",
        "admin_failures",
        "max_conns",
        "max_conns_per_addr",
        "max_msg_rate",
    ):
        assert getattr(again, name) == getattr(args, name), name
    assert args.trusted_proxy == ["10.0.0.0/8", "::1"] and args.login_attempts_per_addr == 7


@on_postgres
async def test_a_node_that_stalls_past_its_lease_frames_no_one(tmp_path: Path) -> None:
    """Node A stops (SIGSTOP) past its lease with a game running; node B voids the game; A
    resumes (SIGCONT), its timer fires at once. A signs no end token and reports what every
    node reports, `crashed`; the player's submission is refused without a flag, and the
    player starts again at once."""
    add_games(tmp_path)
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(node(tmp_path, "a.key"))
            b = await stack.enter_async_context(node(tmp_path, "b.key"))
            kim = await register_at(a.http, "kim")
            async with open_client(a.ws) as ws:
                started = await start(ws, kim)  # "quick": 4 s
                points = await score(ws, 2)
                a.process.send_signal(signal.SIGSTOP)
                try:

                    async def voided() -> bool:
                        state = rows(
                            tmp_path,
                            "SELECT state, end_reason FROM game_sessions WHERE id = ?",
                            (started["session_id"],),
                        )
                        return tuple(state[0]) == ("voided", "crashed")

                    await eventually(voided, 30, "node B voids the stalled node's game")
                finally:
                    a.process.send_signal(signal.SIGCONT)
                with trio.fail_after(20):
                    while (end := json.loads(await ws.get_message()))["type"] != "end_game":
                        pass
            assert end["reason"] == "crashed" and end.get("end_token") is None, end
            for where in (a.ws, b.ws):
                async with open_client(where) as again:
                    assert (await call(again, type="auth", token=kim["token"]))["user_id"]
                    resumed = await call(again, type="resume", start_token=started["start_token"])
                    assert (resumed["type"], resumed["reason"]) == ("end_game", "crashed"), where
            result = await submit_http(
                b.http, started, {"end_token": started["start_token"]}, points
            )
            assert result["reason"] == "session_voided", result
            assert rows(tmp_path, "SELECT COUNT(*) FROM flags")[0][0] == 0
            async with open_client(b.ws) as ws:
                assert (await start(ws, kim))["type"] == "game_started"
