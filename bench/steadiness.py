"""How steady this machine's CPU is, with nothing else of ours running.

    python bench/steadiness.py [SECONDS]

Runs a fixed unit of pure-Python work (about 40 us here) back to back on one core for SECONDS
(default 10) and prints, as JSON, the speed it ran at in each 10 ms of that time (the work
done, at the median unit's pace, over 10 ms): the median, the share of the time under a
third of full speed ("slow"), the median speed then, and the windows of slow time of 20 ms
or more (how many, how long, how far apart). On a machine of its
own this is near zero. On a shared virtual machine the host can slow a guest's cores for a
while without the guest seeing it as stolen time: the thread's own CPU clock runs on, the
work just takes longer. Anything on the machine, the bare echo included, then falls behind
for that long, which is the floor under the latency and stall targets. `bench/run.py` runs
it before the scenarios and puts the result in the page's header.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

BIN_S = 0.01


def unit() -> int:
    total = 0
    for i in range(1500):
        total += i
    return total


def measure(seconds: float = 10.0) -> dict[str, Any]:
    clock = time.perf_counter
    for _ in range(200):  # warm up
        unit()
    finished: list[float] = []  # when each unit ended, from the start
    durations: list[float] = []
    start = clock()
    end = start + seconds
    while (now := clock()) < end:
        unit()
        done = clock()
        finished.append(done - start)
        durations.append(done - now)
    typical = statistics.median(durations)
    # The timeline in 10 ms bins: the share of full speed each ran at (units done there, at
    # the typical unit's pace, over the bin's length). A bin under a third of it is slow.
    work = [0.0] * (int(seconds / BIN_S) + 1)
    for at in finished:
        work[min(len(work) - 1, int(at / BIN_S))] += typical
    speeds = [w / BIN_S for w in work[:-1]]
    slow = [speed < 1 / 3 for speed in speeds]
    windows: list[tuple[int, int]] = []  # (first bin, bins)
    for n, is_slow in enumerate(slow):
        if is_slow and windows and windows[-1][0] + windows[-1][1] == n:
            windows[-1] = (windows[-1][0], windows[-1][1] + 1)
        elif is_slow:
            windows.append((n, 1))
    long_windows = [w for w in windows if w[1] * BIN_S >= 0.02]
    gaps = [(b[0] - a[0]) * BIN_S for a, b in zip(long_windows, long_windows[1:], strict=False)]
    slow_speeds = [speed for speed, is_slow in zip(speeds, slow, strict=True) if is_slow]
    return {
        "seconds": round(clock() - start, 1),
        "unit_us": round(typical * 1e6, 1),
        "median_speed": round(statistics.median(speeds), 2),
        "slow_time_share": round(sum(slow) / len(slow), 3),
        "slow_speed_median": round(statistics.median(slow_speeds), 2) if slow_speeds else None,
        "windows_over_20ms": len(long_windows),
        "window_ms_median": round(statistics.median(w[1] for w in long_windows) * BIN_S * 1000)
        if long_windows
        else None,
        "window_spacing_s_median": round(statistics.median(gaps), 2) if gaps else None,
    }


if __name__ == "__main__":
    print(json.dumps(measure(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)))
