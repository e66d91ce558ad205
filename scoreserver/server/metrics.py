"""Prometheus metrics, made with the official client library (`prometheus_client`).

Served at `/metrics` only on the port given with `--metrics-port` (bound to `--metrics-host`,
127.0.0.1 unless told otherwise), never on the public HTTP port: player counts, flag reasons
and helper health are for the operator's monitoring, not for players.

Each server has its own registry, so that tests running several servers in one process do not
share counters. Counters on the point path are bound to their labels once (`child`), so that
counting a point is one attribute lookup and one addition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app


class Metrics:
    """The server's metrics; `asgi()` is the app that serves them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.points = Counter(
            "scoreserver_points",
            "Points received, by outcome: accepted, or the reason they were refused.",
            ["outcome"],
            registry=registry,
        )
        self.flags = Counter(
            "scoreserver_flags",
            "Flags raised for review, by reason.",
            ["reason"],
            registry=registry,
        )
        self.submissions = Counter(
            "scoreserver_submissions",
            "Submitted results, by verdict: accepted, or the reason they were refused.",
            ["verdict"],
            registry=registry,
        )
        self.write_seconds = Histogram(
            "scoreserver_store_write_seconds",
            "How long an awaited database write took, to its COMMIT.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
            registry=registry,
        )
        self.connections = Gauge(
            "scoreserver_connections", "Open game-socket connections.", registry=registry
        )
        self.sessions = Gauge(
            "scoreserver_sessions_running", "Games being played now.", registry=registry
        )
        self.loop_lag = Gauge(
            "scoreserver_event_loop_lag_seconds",
            "How late the event loop's 10 ms probe woke, at its last sample.",
            registry=registry,
        )
        self.loop_stalls = Gauge(
            "scoreserver_event_loop_stalls",
            "Probes that woke more than 20 ms late, since start.",
            registry=registry,
        )
        self.writer_queue = Gauge(
            "scoreserver_writer_queue_depth",
            "Rows queued for the database writer and not yet committed.",
            registry=registry,
        )
        self.writer_waits = Gauge(
            "scoreserver_writer_queue_waits",
            "Times a game waited for the writer's queue to drain (it was full), since start.",
            registry=registry,
        )
        self.helper_ok = Gauge(
            "scoreserver_helper_ok",
            "1 while a helper answers as it should (the database writer), else 0.",
            ["helper"],
            registry=registry,
        )
        self._children: dict[tuple[Counter, str], Any] = {}

    def child(self, counter: Counter, label: str) -> Any:
        """`counter.labels(label)`, made once."""
        key = (counter, label)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = counter.labels(label)
        return found

    def count_point(self, outcome: str) -> None:
        self.child(self.points, outcome).inc()

    def watch(self, gauge: Gauge, read: Callable[[], float], *labels: str) -> None:
        """Let `gauge` (with `labels`) read its value from `read` at each scrape."""
        (gauge.labels(*labels) if labels else gauge).set_function(read)

    def asgi(self) -> Any:
        """The /metrics app, answering the ASGI lifespan protocol itself (prometheus_client's
        app does not, and hypercorn logged a "Lifespan error" at every start)."""
        inner = make_asgi_app(self.registry)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "lifespan":
                await inner(scope, receive, send)
                return
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

        return app
