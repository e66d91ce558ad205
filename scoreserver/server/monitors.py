"""What the server watches in itself: event-loop stalls, the cyclic collector's pauses, the
database writer's health (/healthz) and the counts of /api/stats."""

from __future__ import annotations

import gc
import time

import trio

from scoreserver.server.service import Service
from scoreserver.server.ws import GameSocket
from scoreserver.store import Store

LOOP_PROBE_S = 0.01
STALL_MS = 20.0


class LoopMonitor:
    """Measures event-loop stalls: how late a 10 ms sleep wakes up.

    `stalls` counts wake-ups later than STALL_MS; `max_lag_ms` is the worst since the last
    `take_max()`. Cheap: one timer every 10 ms.
    """

    def __init__(self) -> None:
        self.stalls = 0
        self.max_lag_ms = 0.0
        self.last_lag_ms = 0.0
        self.samples = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            before = trio.current_time()
            await trio.sleep(LOOP_PROBE_S)
            lag_ms = (trio.current_time() - before - LOOP_PROBE_S) * 1000
            self.last_lag_ms = lag_ms
            self.samples += 1
            self.max_lag_ms = max(self.max_lag_ms, lag_ms)
            if lag_ms > STALL_MS:
                self.stalls += 1

    def take_max(self) -> float:
        worst, self.max_lag_ms = self.max_lag_ms, 0.0
        return worst


class GcMonitor:
    """Counts the cyclic collector's runs by generation and how long they paused the process."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.pause_s = 0.0
        self.max_pause_s = 0.0
        self._started = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.collections[info["generation"]] += 1
        self.pause_s += pause
        self.max_pause_s = max(self.max_pause_s, pause)

    def stats(self) -> dict[str, object]:
        return {
            "collections": list(self.collections),
            "pause_ms_total": round(self.pause_s * 1000, 1),
            "pause_ms_max": round(self.max_pause_s * 1000, 2),
        }


def tune_gc() -> None:
    """Keep the cyclic collector off the hot path.

    The per-message objects (msgspec structs, small dicts) hold no cycles, yet every 700
    allocations the young generation is scanned, and under load the older generations with
    them. Freezing what start-up built and raising the first threshold removes most of that
    work; cycles are still collected, just less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def stats(
    service: Service,
    socket: GameSocket,
    store: Store,
    monitor: LoopMonitor,
    gc_monitor: GcMonitor,
) -> dict[str, object]:
    return {
        "connections": len(socket.connections),
        "running_sessions": len(service.running_by_user)
        + sum(1 for s in service.sessions.values() if s.running and s.user_id is None),
        "sessions_in_memory": len(service.sessions),
        "store_commits": store.commits,
        "loop_samples": monitor.samples,
        "loop_stalls_over_20ms": monitor.stalls,
        "loop_max_lag_ms": round(monitor.take_max(), 2),
        "gc": gc_monitor.stats(),
    }


# A helper that owes an answer this long makes /healthz say the server is degraded.
HEALTH_LAG_S = 1.0


def health(store: Store) -> dict[str, object]:
    """What /healthz says: `ok`, `degraded` (slower but correct: the writer is slow) or
    `failing` (the writer is gone: nothing can be saved)."""
    status = "ok"
    if store.failure is not None:
        writer = f"failed: {store.failure}"
        status = "failing"
    elif (lag := store.lag_s()) > HEALTH_LAG_S:
        writer = f"not answering for {lag:.1f} s"
        status = "degraded"
    elif (depth := store.queue_depth()) >= store.queue_bound:
        writer = f"behind: {depth} rows queued, players held until it catches up"
        status = "degraded"
    else:
        writer = "ok"
    return {
        "status": status,
        "writer": writer,
        "writer_queue": store.queue_depth(),
        "writer_queue_bound": store.queue_bound,
    }
