"""The server's one clock: epoch milliseconds derived from trio's clock.

Taking both timers and timestamps from trio's clock means an `autojump_clock` test moves the
session timer and the server timestamps together; the rules never see `time.time()`. The
anchor to wall time is taken once and re-taken now and then (`reanchor`), so that a long-lived
process follows corrections of the system clock without ever stepping backwards.
"""

from __future__ import annotations

import time

import trio


class ServerClock:
    """`now_ms()` is epoch milliseconds, monotonic within the process."""

    def __init__(self, wall_ms: float | None = None) -> None:
        self._wall_anchor = time.time() * 1000 if wall_ms is None else wall_ms
        self._trio_anchor = trio.current_time()
        self._last = 0

    def now_ms(self) -> int:
        now = int(self._wall_anchor + (trio.current_time() - self._trio_anchor) * 1000)
        # Never go backwards, even across a re-anchor.
        if now < self._last:
            return self._last
        self._last = now
        return now

    def reanchor(self) -> None:
        self._wall_anchor = time.time() * 1000
        self._trio_anchor = trio.current_time()
