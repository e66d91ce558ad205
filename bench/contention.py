"""What a third process on the two cores does to the echo's round trips.

    python bench/contention.py [--busy-ms 2] [--every-ms 15] [--rounds 5] [--seconds 8]

The one-loop scenario at 50 players has the load generator on one core and the server's loop
on the other, and the server has a third process: the database writer, which wakes every
10-50 ms and burns one to a few milliseconds of CPU on a batch. This runs the bare echo
(`bench/echo_server.py`, the baseline of the targets) at 50 players the way `bench/run.py`
does, alone and beside a process that does nothing but burn `--busy-ms` of CPU every
`--every-ms` (the writer's pattern without its work), round by round, and prints each run's
rate and round trips, then the medians. If the echo's p99 grows beside the burner as much as
the server's exceeds the echo's, the gap is the machine's third process, not the server's
loop.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_run", HERE / "run.py")
assert _spec and _spec.loader
bench_run = importlib.util.module_from_spec(_spec)
sys.modules["bench_run"] = bench_run  # dataclasses look their module up while it loads
_spec.loader.exec_module(bench_run)


def burn(busy_s: float, every_s: float, seconds: float) -> None:
    """Spin `busy_s` of CPU, sleep the rest of `every_s`, for `seconds`."""
    clock = time.perf_counter
    end = clock() + seconds
    while clock() < end:
        started = clock()
        while clock() - started < busy_s:
            pass
        time.sleep(max(0.0, every_s - busy_s))


def echo_run(seconds: float, busy_ms: float, every_ms: float) -> dict[str, float]:
    server = bench_run.start_server(HERE, "", echo=True)
    burner = None
    try:
        port = server.ws_port
        if busy_ms > 0:
            burner = subprocess.Popen(
                [sys.executable, __file__, "--burn", str(busy_ms), str(every_ms), str(seconds + 3)]
            )
        report = subprocess.run(
            [
                sys.executable,
                str(HERE / "loadgen.py"),
                "echo",
                "--port",
                str(port),
                "--players",
                "50",
                "--seconds",
                str(seconds),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
        result: dict[str, float] = json.loads(report.stdout)
        return result
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
        server.process.terminate()
        server.process.wait(timeout=10)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--burn":
        burn(float(sys.argv[2]) / 1000, float(sys.argv[3]) / 1000, float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--busy-ms", type=float, default=2.0)
    parser.add_argument("--every-ms", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"alone": [], "beside": []}
    for _ in range(args.rounds):
        for name, busy in (("alone", 0.0), ("beside", args.busy_ms)):
            found = echo_run(args.seconds, busy, args.every_ms)
            runs[name].append(found)
            print(
                f"{name:6} {found['messages_per_s']:8,.0f} msg/s  p50 {found['rtt_p50_ms']:.2f} ms"
                f"  p99 {found['rtt_p99_ms']:.2f} ms",
                flush=True,
            )
    for name, each in runs.items():
        print(
            f"median {name:6} {statistics.median(r['messages_per_s'] for r in each):8,.0f} msg/s"
            f"  p50 {statistics.median(r['rtt_p50_ms'] for r in each):.2f} ms"
            f"  p99 {statistics.median(r['rtt_p99_ms'] for r in each):.2f} ms"
        )


if __name__ == "__main__":
    main()
