"""Profile the server under one benchmark scenario with py-spy; print where the time goes.

    python bench/profile.py throughput --players 50 --seconds 5
    python bench/profile.py submit --players 50 --points 600 --games 1 --duration 40

Needs py-spy (`pip install py-spy`). Prints the functions with the most samples, by their own
time and inclusive of callees, from the server process only.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_run", HERE / "run.py")
assert _spec and _spec.loader
bench_run = importlib.util.module_from_spec(_spec)
sys.modules["bench_run"] = bench_run  # dataclasses look their module up while it loads
_spec.loader.exec_module(bench_run)


def summarize(raw: Path, top: int, only: str | None = None) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if only and only not in stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples"]
    for title, table in (("own time", own), ("inclusive", inclusive)):
        lines.append(f"--- {title}")
        lines += [f"{100 * n / total:5.1f}%  {f[:140]}" for f, n in table.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["throughput", "realistic", "idle", "submit"])
    parser.add_argument("--players", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60, help="game length in seconds")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--only", help="keep stacks through this frame (e.g. unrolled_run: the event loop)"
    )
    args, loadgen_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="scoreprof-") as tmp:
        folder = Path(tmp)
        tokens = bench_run.seed(folder, args.players, args.duration)
        server = bench_run.start_server(folder, echo=False)
        raw = folder / "profile.txt"
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "-p",
                str(server.process.pid),
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                str(raw),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)
            subprocess.run(
                [
                    sys.executable,
                    str(HERE / "loadgen.py"),
                    args.mode,
                    "--port",
                    str(server.ws_port),
                    "--players",
                    str(args.players),
                    "--tokens",
                    str(tokens),
                    *loadgen_args,
                ],
                check=True,
                timeout=600,
            )
        finally:
            spy.send_signal(2)
            spy.wait(timeout=30)
            server.process.terminate()
            server.process.wait(timeout=15)
        print(summarize(raw, args.top, args.only))


if __name__ == "__main__":
    main()
