"""Profile the server under one benchmark scenario with py-spy; print where the time goes.

    python bench/profile.py throughput --players 50 --seconds 5
    python bench/profile.py echo --players 50 --seconds 5        # the bare echo, to compare
    python bench/profile.py submit --players 100 --points 600 --games 2 --duration 30 \
        --submissions-only                                    # only the submissions' phase

Needs py-spy (`pip install py-spy`). Prints, from the server's main process only: where its
samples go by package (trio's scheduler, trio's sockets, trio-websocket, wsproto, our code...),
then the functions with the most samples, by their own time and inclusive of callees.
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


# Where a sample's innermost Python frame lives -> the part of the stack it is charged to.
# Time in C (a syscall, a signature) is charged to the Python frame that called it.
PARTS = [
    ("trio/_core/_io", "trio: waiting for and polling sockets"),
    ("trio/_core/", "trio: scheduling, cancel scopes"),
    ("trio/_socket", "trio: socket calls"),
    ("trio/_highlevel_socket", "trio: socket calls"),
    ("trio/_unix_pipes", "trio: pipes to the helper processes"),
    ("trio/", "trio: other (channels, locks, ...)"),
    ("trio_websocket/", "trio-websocket"),
    ("wsproto/", "wsproto"),
    ("h11/", "wsproto"),
    ("outcome/", "trio: scheduling, cancel scopes"),
    ("scoreserver/", "scoreserver"),
    ("bench/echo_server", "the echo handler"),
    ("msgspec", "msgspec"),
]


def part_of(frame: str) -> str:
    for marker, part in PARTS:
        if marker in frame:
            return part
    return "other (stdlib, hypercorn, ...)"


def summarize(raw: Path, top: int, only: str | None = None) -> str:
    by_part: collections.Counter[str] = collections.Counter()
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
        by_part[part_of(frames[-1])] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [
        f"{total} samples",
        "--- by part (py-spy charges a system call's wall time to its caller, and overcounts"
        " pipe writes: timed in-process, a write to a helper is 65-85 us wall, 25 us CPU)",
    ]
    lines += [f"{100 * n / total:5.1f}%  {part}" for part, n in by_part.most_common()]
    for title, table in (("own time", own), ("inclusive", inclusive)):
        lines.append(f"--- {title}")
        lines += [f"{100 * n / total:5.1f}%  {f[:140]}" for f, n in table.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["echo", "throughput", "realistic", "idle", "submit"])
    parser.add_argument("--players", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60, help="game length in seconds")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--samples", type=int, default=250, help="samples a second")
    parser.add_argument(
        "--only", help="keep stacks through this frame (e.g. unrolled_run: the event loop)"
    )
    parser.add_argument(
        "--submissions-only",
        action="store_true",
        help="submit mode: sample only from the moment the submissions start",
    )
    args, loadgen_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="scoreprof-") as tmp:
        folder = Path(tmp)
        echo = args.mode == "echo"
        database = str(folder / "bench.db")
        tokens = None if echo else bench_run.seed(folder, database, args.players, args.duration)
        server = bench_run.start_server(folder, database, echo=echo)
        raw = folder / "profile.txt"
        spy_argv = [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "-p",
            str(server.process.pid),
        ]
        spy_argv += ["-r", str(args.samples)]
        spy_argv += ["-f", "raw", "-o", str(raw), "--nonblocking"]
        spy: subprocess.Popen[bytes] | None = None
        if not args.submissions_only:
            spy = subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            load = subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "loadgen.py"),
                    args.mode,
                    "--port",
                    str(server.ws_port),
                    "--players",
                    str(args.players),
                    *(["--tokens", str(tokens)] if tokens else []),
                    *loadgen_args,
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert load.stdout
            for line in load.stdout:  # the submit mode says when its submissions start
                if spy is None and "submit_phase" in line:
                    spy = subprocess.Popen(
                        spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
            if load.wait(timeout=600):
                raise SystemExit("the load generator failed")
        finally:
            if spy is not None:
                spy.send_signal(2)
                spy.wait(timeout=30)
            server.process.terminate()
            server.process.wait(timeout=15)
        print(summarize(raw, args.top, args.only))


if __name__ == "__main__":
    main()
