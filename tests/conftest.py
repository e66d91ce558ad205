"""Shared fixtures: a real server on 127.0.0.1 port 0, and a small game-socket client."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from scoreserver.server.accounts import PasswordPolicy
from scoreserver.server.app import Server, serve
from scoreserver.server.config import Config
from scoreserver.server.ws import Limits

from . import databases
from .databases import NO_TIMING, add_game, location

# Cheap Argon2id for tests that create many accounts; production uses OWASP's parameters,
# and test_accounts checks those.
FAST_PASSWORDS = PasswordPolicy(memory_kib=1024, iterations=1, lanes=1)


def make_config(tmp_path: Path, *, inline: bool = False, **limits: Any) -> Config:
    return Config(
        host="127.0.0.1",
        ws_port=0,
        http_port=0,
        db_path=location(tmp_path),
        key_path=tmp_path / "test.key",
        limits=Limits(**limits),
        password_policy=FAST_PASSWORDS,
        store_writer="inline" if inline else "process",
        reanchor_clock=False,
        handle_signals=False,
        announce=False,
        monitor_loop=False,
    )


# Test games do not run the timing analysis unless a test asks for it (NO_TIMING): their
# scripted players score at machine rhythm (test_timing.py is where that is judged).
__all__ = ["NO_TIMING", "add_game"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "engines: runs once on SQLite and once on PostgreSQL (tests/databases.py)"
    )
    config.addinivalue_line(
        "markers", "sqlite_only: in a module marked `engines`, a test of SQLite alone"
    )
    config.addinivalue_line(
        "markers",
        "realtime: runs on the wall clock (real sockets, processes, a browser), not under"
        " autojump_clock; `-m realtime` runs these alone, e.g. beside `bench/run.py --quick`",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `realtime` every test whose waits are real: outside tests/unit (pure, synchronous)
    and not under pytest-trio's autojump_clock. A marker given by hand is kept as it is."""
    unit = Path(__file__).parent / "unit"
    for item in items:
        if item.path.is_relative_to(unit) or "autojump_clock" in getattr(item, "fixturenames", ()):
            continue
        item.add_marker(pytest.mark.realtime)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    definition = metafunc.definition
    if definition.get_closest_marker("engines") and not definition.get_closest_marker(
        "sqlite_only"
    ):
        metafunc.parametrize("engine", databases.ENGINES, indirect=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    databases.stop_cluster()


@pytest.fixture(autouse=True)
def engine(request: pytest.FixtureRequest) -> str:
    """The engine under test: "sqlite", or for tests marked `engines` each in turn. On
    PostgreSQL, tmp_path's database files stand for new databases of the test cluster."""
    name: str = getattr(request, "param", "sqlite")
    if name == "postgres":
        databases.cluster()  # skips (or, in CI, fails) without PostgreSQL
        databases.use_postgres(request.getfixturevalue("tmp_path"))
    return name


@asynccontextmanager
async def running_server(config: Config) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A real server with its writer thread; real time."""
    add_game(tmp_path / "test.db", "quick", duration_ms=1000, submission_window_ms=60_000)
    async with running_server(make_config(tmp_path)) as srv:
        yield srv


@pytest.fixture
async def inline_server(tmp_path: Path) -> AsyncIterator[Server]:
    """A real server whose store runs inline: for tests under autojump_clock."""
    add_game(tmp_path / "test.db", "demo", duration_ms=30_000)
    add_game(
        tmp_path / "test.db",
        "strict",
        duration_ms=30_000,
        burst_threshold=3,
        burst_limit=2,
        burst_period_ms=10_000,
    )
    async with running_server(make_config(tmp_path, inline=True)) as srv:
        yield srv


class Client:
    """A game-socket client for tests: send a message, read the replies."""

    def __init__(self, ws: WebSocketConnection):
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def send(self, **message: Any) -> None:
        await self.ws.send_message(json.dumps(message))

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send_message(frame)

    async def recv(self) -> dict[str, Any]:
        message = json.loads(await self.ws.get_message())
        self.seen.append(message)
        return message  # type: ignore[no-any-return]

    async def recv_type(self, kind: str) -> dict[str, Any]:
        """Read until a message of `kind` (others, such as leaderboard pushes, are kept)."""
        while True:
            message = await self.recv()
            if message["type"] == kind:
                return message

    async def call(self, **message: Any) -> dict[str, Any]:
        """Send and return the next message that is not an unsolicited push."""
        await self.send(**message)
        while True:
            reply = await self.recv()
            if reply["type"] != "leaderboard":
                return reply

    async def login(self, account: dict[str, Any]) -> dict[str, Any]:
        """`auth` with an account's login token (from `register`); returns the identity."""
        identity = await self.call(type="auth", token=account["token"])
        assert identity["type"] == "identity", identity
        assert identity["user_id"] == account["user_id"], identity
        return identity

    async def enter(self, game_id: str = "demo", user_id: int | None = None) -> dict[str, Any]:
        reply = await self.call(type="enter_game_room", game_id=game_id, user_id=user_id)
        assert reply["type"] == "room_entered", reply
        return reply

    async def score(
        self, clock: Callable[[], int], n_points: int, every_s: float
    ) -> list[dict[str, Any]]:
        """Score `n_points`, one every `every_s` seconds, stamped by the player's `clock`;
        returns the claims a page keeps ({token, client_ts}) for its submission."""
        claims = []
        for _ in range(n_points):
            await trio.sleep(every_s)
            ts = clock()
            reply = await self.call(type="point", client_ts=ts)
            assert reply["type"] == "point_accepted", reply
            claims.append({"token": reply["token"], "client_ts": ts})
        return claims

    async def start(self, client_ts: int) -> dict[str, Any]:
        reply = await self.call(type="game_start", client_ts=client_ts)
        assert reply["type"] == "game_started", reply
        return reply


@asynccontextmanager
async def open_client(url: str, **kwargs: Any) -> AsyncIterator[WebSocketConnection]:
    """`open_websocket_url` that never leaves its TCP stream open.

    trio-websocket's client (seen with 0.12.2) leaves its stream open when the server closed
    the connection first or died; close it so no socket outlives the test.
    """
    async with open_websocket_url(url, **kwargs) as ws:
        try:
            yield ws
        finally:
            with trio.CancelScope(shield=True):
                await ws._stream.aclose()


@asynccontextmanager
async def connect(server: Server) -> AsyncIterator[Client]:
    async with open_client(server.ws_url) as ws:
        yield Client(ws)


@asynccontextmanager
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as client:
        yield client


async def register(server: Server, name: str, password: str = "correct horse") -> dict[str, Any]:
    """An account made through the service (no HTTP), with a login token."""
    token, user = await server.service.register(name, password)
    return {"token": token, "user_id": user.id, "name": user.name}


Clock = Callable[[], int]


def child_processes(module: str) -> list[int]:
    """Pids of this test process's children running `python -m <module>`. Found by their
    parent pid in /proc/PID/stat, not through /proc/self/task/*/children: that lists a child
    under the thread that started it (trio starts processes from worker threads), and a
    child whose thread had exited was missed under load."""
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            ppid = int(stat.rpartition(")")[2].split()[1])
            if ppid == me and module.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return pids


def self_signed(where: Path) -> ssl.SSLContext:
    """A certificate for 127.0.0.1 in `where` (cert.pem, key.pem); returns a client context
    that trusts it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (where / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (where / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ssl.create_default_context(cafile=str(where / "cert.pem"))
