"""docs/scaling.md's balancer configurations, run with the real programs in front of a real node
process started with default limits plus `--trusted-proxy 127.0.0.1/32`.

Each player is a loopback address of its own (127.0.0.2, 127.0.0.3, ...): it registers, logs in,
plays a game over the game socket and submits over HTTP, every connection through the balancer.
Every one must be served (the per-address budgets would refuse the 31st registration if the
node saw only the balancer), and every flag must name the player's address, not the balancer's.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import wrap_client_stream
from wsproto.utilities import LocalProtocolError

from .test_nodes import eventually, free_port, node, rows, score, start
from .test_process import call, cli

pytestmark = [pytest.mark.slow]

DOC = Path(__file__).parents[2] / "docs" / "scaling.md"
PASSWORD = "hunter2hunter2"
JUNK = {"start_token": "a", "end_token": "b", "points": []}
JUNK_ADDRESS = "127.0.9.9"  # not among the players' addresses
AT_ONCE = 24  # players under way at once (the node checks passwords one at a time)


def blocks(language: str) -> list[str]:
    """The fenced blocks of docs/scaling.md in `language`, in order."""
    parts = DOC.read_text().split(f"```{language}\n")[1:]
    return [part.split("```", 1)[0] for part in parts]


def addresses(count: int) -> list[str]:
    """`count` loopback addresses other than 127.0.0.1 (the balancer's)."""
    found = []
    for third in range(256):
        for fourth in range(2, 251):
            found.append(f"127.0.{third}.{fourth}")
            if len(found) == count:
                return found
    raise ValueError(count)


def pointed_at(config: str, fronts: dict[str, int], node_ports: dict[str, int]) -> str:
    """A documented configuration, its node addresses and ports replaced by the test's."""
    for address in ("10.0.0.11", "10.0.0.12", "10.0.0.13"):
        for documented, port in node_ports.items():
            config = config.replace(f"{address}:{documented}", f"127.0.0.1:{port}")
    for documented, port in fronts.items():
        config = config.replace(f"bind :{documented}\n", f"bind 127.0.0.1:{port}\n")
        config = config.replace(f"listen {documented};", f"listen 127.0.0.1:{port};")
        config = config.replace(f":{documented} {{", f":{port} {{")
    assert "10.0.0." not in config, config
    return config


# --- the balancers, each started from its documented configuration --------------------------


def _require(program: str) -> str:
    path = shutil.which(program) or (f"/usr/sbin/{program}" if program == "nginx" else None)
    if path is None or not os.path.exists(path):
        if os.environ.get("SCORESERVER_REQUIRE_BALANCERS"):
            pytest.fail(f"{program} is missing, and SCORESERVER_REQUIRE_BALANCERS is set")
        pytest.skip(f"{program} is not installed (Debian: apt-get install {program})")
    return path


def haproxy_command(tmp_path: Path, config: str) -> list[str]:
    (tmp_path / "haproxy.cfg").write_text(config)
    return [_require("haproxy"), "-db", "-f", str(tmp_path / "haproxy.cfg")]


def nginx_command(tmp_path: Path, block: str, context: str) -> list[str]:
    nginx = _require("nginx")
    module = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
    if context == "stream" and not module.exists():
        pytest.skip("nginx's stream module is not installed (Debian: libnginx-mod-stream)")
    temp = tmp_path / "nginx"
    temp.mkdir(exist_ok=True)
    head = f"load_module {module};\n" if context == "stream" else ""
    extra = (
        ""
        if context == "stream"
        else "access_log off;\n"
        + "".join(f"{kind}_temp_path {temp}/{kind};\n" for kind in TEMP_PATHS)
    )
    (tmp_path / "nginx.conf").write_text(
        f"{head}user root;\nworker_processes 1;\ndaemon off;\npid {temp}/nginx.pid;\n"
        f"error_log {tmp_path}/nginx.log info;\nevents {{ worker_connections 4096; }}\n"
        f"{context} {{\n{extra}{block}\n}}\n"
    )
    return [nginx, "-p", str(temp), "-c", str(tmp_path / "nginx.conf")]


TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def caddy_command(tmp_path: Path, block: str) -> list[str]:
    caddy = _require("caddy")
    (tmp_path / "Caddyfile").write_text(
        "{\n    admin off\n    auto_https off\n    default_bind 127.0.0.1\n}\n\n" + block
    )
    return [caddy, "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"]


@asynccontextmanager
async def balancer(
    tmp_path: Path, kind: str, node_ports: dict[str, int]
) -> AsyncIterator[dict[str, int]]:
    """The balancer `kind` of docs/scaling.md in front of the node: its front ports, by the
    documented ones ("8080", "8765"). Started again on new ports if a port chosen free was
    taken before it bound."""
    log = tmp_path / f"{kind}.log"
    for _ in range(3):
        fronts = {"8765": free_port(), "8080": free_port()}
        if kind == "haproxy-http":
            command = haproxy_command(
                tmp_path, pointed_at(blocks("haproxy")[0], fronts, node_ports)
            )
        elif kind == "haproxy-tcp":
            config = blocks("haproxy")[1]
            assert "mode tcp" in config and "send-proxy-v2" in config
            command = haproxy_command(tmp_path, pointed_at(config, fronts, node_ports))
        elif kind in ("nginx-http", "nginx-stream"):
            index, context = (0, "http") if kind == "nginx-http" else (1, "stream")
            config = pointed_at(blocks("nginx")[index], fronts, node_ports)
            command = nginx_command(tmp_path, config, context)
        else:
            command = caddy_command(tmp_path, pointed_at(blocks("caddy")[0], fronts, node_ports))
        env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg")}
        with log.open("ab") as out:
            process = await trio.lowlevel.open_process(command, stdout=out, stderr=out, env=env)
        try:
            try:
                await eventually(partial(serving, process, fronts), 40, f"{kind} serves")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; it said: {log.read_text()[-2000:]}") from None
            if process.poll() is None:
                yield fronts
                return
        finally:
            if process.poll() is None:
                process.terminate()
                with trio.move_on_after(10):
                    await process.wait()
                if process.poll() is None:
                    process.kill()
            await process.wait()
    raise AssertionError(f"{kind} would not start: {log.read_text()[-2000:]}")


async def serving(process: trio.Process, fronts: dict[str, int]) -> bool:
    """The balancer answers /healthz from the node (True too once it has exited)."""
    if process.poll() is not None:
        return True
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{fronts['8080']}") as api:
            return (await api.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


# --- the players -------------------------------------------------------------------------------


async def a_player(
    name: str, address: str, fronts: dict[str, int], flagged: bool
) -> dict[str, Any]:
    """Register, log in, play 3 points and submit, every connection from `address` through the
    balancer; with `flagged`, also claim another id on the socket and send a junk submission
    (two flags, each to be recorded at `address`). Returns the saved result."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{fronts['8080']}", transport=transport, timeout=60
    ) as api:
        made = await api.post("/api/register", json={"name": name, "password": PASSWORD})
        assert made.status_code == 201, (address, made.text)
        login = await api.post("/api/login", json={"name": name, "password": PASSWORD})
        assert login.status_code == 200, (address, login.text)
        user = login.json()
        stream = await trio.open_tcp_stream("127.0.0.1", fronts["8765"], local_address=address)
        end: dict[str, Any] | None = None
        try:
            async with trio.open_nursery() as nursery:
                ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/")
                if flagged:
                    assert (await call(ws, type="auth", token=user["token"]))["user_id"]
                    claim = await call(
                        ws, type="enter_game_room", game_id="event", user_id=user["user_id"] + 10**6
                    )
                    assert claim["code"] == "identity_mismatch", claim
                started = await start(ws, user, "event")
                assert started["type"] == "game_started", started
                points = []
                for _ in range(3):
                    await trio.sleep(0.15)
                    points += await score(ws, 1)
                with trio.fail_after(20):
                    while (end := json.loads(await ws.get_message()))["type"] != "end_game":
                        pass
                await ws.aclose()
        except* LocalProtocolError:
            # trio-websocket 0.12's reader answers a ping that crosses our close with a pong
            # wsproto refuses in LOCAL_CLOSING (the client library's race, seen once under
            # load): harmless once the game's end is in hand.
            if end is None:
                raise
        finally:
            await stream.aclose()
        assert end is not None
        auth = {"Authorization": f"Bearer {user['token']}"}
        body = {
            "start_token": started["start_token"],
            "end_token": end["end_token"],
            "points": points,
        }
        result = await api.post("/api/results", json=body, headers=auth)
        assert result.status_code == 200, (address, result.text)
        if flagged:
            junk = await api.post("/api/results", json=JUNK, headers=auth)
            assert junk.json()["reason"] == "bad_start_token", junk.text
        return {"user_id": user["user_id"], "address": address, "flagged": flagged, **result.json()}


@pytest.mark.parametrize(
    ("kind", "players"),
    [
        ("haproxy-http", 300),
        ("haproxy-tcp", 300),
        ("nginx-http", 40),
        ("nginx-stream", 40),
        ("caddy", 40),
    ],
)
async def test_players_behind_each_documented_balancer_are_their_own_addresses(
    tmp_path: Path, kind: str, players: int
) -> None:
    made = cli(
        tmp_path,
        *("games", "add", "event", "--duration", "2", "--human-floor-ms", "0"),
        *("--min-rhythm-cv", "0"),  # its players are scripts
    )
    assert made.returncode == 0, made.stderr
    with trio.fail_after(600):
        async with node(tmp_path, "n.key", "--trusted-proxy", "127.0.0.1/32") as served:
            node_ports = {
                "8765": int(served.ws.rsplit(":", 1)[1].strip("/")),
                "8080": int(served.http.rsplit(":", 1)[1]),
            }
            async with balancer(tmp_path, kind, node_ports) as fronts:
                limiter = trio.CapacityLimiter(AT_ONCE)
                results: list[dict[str, Any]] = []

                async def one(index: int, address: str) -> None:
                    async with limiter:
                        flagged = index % 10 == 0
                        results.append(await a_player(f"p{index}", address, fronts, flagged))

                junk: list[int] = []

                async def junk_sender() -> None:
                    """One address sends 40 junk submissions through the balancer while the
                    players play: limited to its own budget (30), nobody else's."""
                    transport = httpx.AsyncHTTPTransport(local_address=JUNK_ADDRESS)
                    async with httpx.AsyncClient(
                        base_url=f"http://127.0.0.1:{fronts['8080']}", transport=transport
                    ) as api:
                        for _ in range(40):
                            reply = await api.post("/api/results", json=JUNK)
                            junk.append(reply.status_code)
                            await trio.sleep(0.05)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(junk_sender)
                    for index, address in enumerate(addresses(players)):
                        nursery.start_soon(one, index, address)
    assert sorted(junk) == [200] * 30 + [429] * 10
    assert len(results) == players
    # Saved, every one; held only when the player has an open flag (the flagged tenth).
    wrong = [r for r in results if not (r["accepted"] and r["saved"] and r["held"] == r["flagged"])]
    assert wrong == []
    where = {r["user_id"]: r["address"] for r in results}
    flags = rows(tmp_path, "SELECT reason, user_id, guest_addr FROM flags WHERE user_id > 0")
    assert len(flags) == 2 * len([i for i in range(players) if i % 10 == 0])
    assert all(address == where[user_id] for _, user_id, address in flags), flags[:5]
    # The junk: one flag for its one cause, at its own address, counted 30 times.
    junk_flags = rows(tmp_path, "SELECT guest_addr, detail_json FROM flags WHERE user_id IS NULL")
    assert [(a, json.loads(d)["repeats"]) for a, d in junk_flags] == [(JUNK_ADDRESS, 30)]
    assert {reason for reason, *_ in flags} == {"identity_mismatch", "submission:bad_start_token"}
