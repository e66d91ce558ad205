"""What a server is told (`Config`, filled by the command line or a test) and the addresses
it is reached at."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field
from pathlib import Path

from scoreserver.server.accounts import BudgetSettings, PasswordPolicy
from scoreserver.server.nodes import DEFAULT_LEASE_S
from scoreserver.server.ws import Limits
from scoreserver.store import ANSWER_TIMEOUT_S
from scoreserver.wire.addresses import HeaderName


@dataclass(slots=True)
class Config:
    host: str = "127.0.0.1"
    ws_port: int = 8765
    http_port: int = 8080
    # A SQLite file, or a PostgreSQL URL (store.Location).
    db_path: str | Path = Path("scoreserver.db")
    key_path: Path = Path("scoreserver.key")
    limits: Limits = field(default_factory=Limits)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    password_policy: PasswordPolicy = field(default_factory=PasswordPolicy)
    # Tests under autojump_clock turn these off: no wall-clock re-anchor, no process signal
    # handlers (and they run the store's writer inline).
    # The database writer: "process" (a child process), "thread" (a thread of this one) or
    # "inline" (on the event loop's thread: the autojump-clock tests).
    store_writer: str = "process"
    # How long the writer process may owe an answer before it counts as stalled (it then stops
    # the server cleanly).
    writer_timeout_s: float = ANSWER_TIMEOUT_S
    reanchor_clock: bool = True
    handle_signals: bool = True
    announce: bool = True
    monitor_loop: bool = True
    # /metrics (Prometheus) on its own port: None is off, 0 any free port.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # Where organisers are told of new first places and flags (server/webhooks.py).
    webhook: str | None = None
    # This node's game-socket URL as other nodes hand it to players (`session_elsewhere`);
    # None: ws(s)://HOST:PORT/ of the port it listens on (right on one machine).
    node_url: str | None = None
    # A node silent for this long is gone: its running sessions are voided by any other node.
    node_lease_s: float = DEFAULT_LEASE_S
    # One worker of `--workers N`: the shared ports are bound with SO_REUSEPORT, and the game
    # socket also listens on `direct_ws_port` (its own), which its node URL names.
    reuse_port: bool = False
    direct_ws_port: int | None = None
    # The workers of one SQLite file share one writer process, reached on this Unix socket.
    writer_socket: str | None = None
    # Peers whose connections may name another client (`--trusted-proxy`), and the header
    # those proxies write (`--forwarded-header`): wire/addresses.py.
    trusted_proxies: tuple[str, ...] = ()
    # The per-address and per-account budgets (`--login-attempts-per-addr` ...).
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    forwarded_header: HeaderName = "x-forwarded-for"


def play_urls(config: Config, http_port: int) -> list[str]:
    """The HTTP origins other machines reach this server at."""
    scheme = "https" if config.tls_cert else "http"
    return [f"{scheme}://{url_host(h)}:{http_port}" for h in reachable_hosts(config.host)]


def reachable_hosts(host: str) -> list[str]:
    """The addresses others reach a server listening on `host` at: the machine's own IPv4
    addresses for 0.0.0.0 (the route out first, found by a UDP connect that sends nothing),
    else `host` itself."""
    if host not in ("0.0.0.0", "", "::"):
        return [host]
    found: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet leaves; the route is chosen
        found.append(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.append(str(info[4][0]))
    own = [a for a in dict.fromkeys(found) if not a.startswith("127.") and a != "0.0.0.0"]
    return own or ["127.0.0.1"]


def url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
