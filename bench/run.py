"""Run the benchmarks: scoreserver against the raw trio-websocket echo, in one run.

    python bench/run.py             the full set, 3 runs each, medians; writes
                                    docs/performance.md and docs/performance.json
    python bench/run.py --quick     a smoke run (under 30 s, 1 run each), for CI; no thresholds

Each scenario starts a fresh server process (seeded with accounts and login tokens, so that no
Argon2 work is measured) and a load generator process (bench/loadgen.py). Server CPU and RSS
are read from /proc; event-loop stalls from the server's /api/stats. Everything runs on
127.0.0.1, bounded in players and time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scoreserver import store as db  # noqa: E402
from scoreserver.rules import GameSettings  # noqa: E402

BANNER = re.compile(r"game socket ws://127\.0\.0\.1:(\d+)/\s+HTTP http://127\.0\.0\.1:(\d+)/")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def seed(folder: Path, players: int, duration_s: float) -> Path:
    """A database with the bench game and `players` accounts; returns the tokens file."""
    conn = db.open_database(folder / "bench.db")
    tokens = []
    now = int(time.time() * 1000)
    with db.transaction(conn):
        db.insert_game(conn, "bench", GameSettings(
            duration_ms=int(duration_s * 1000), burst_threshold=1_000_000, burst_limit=1_000_000,
            latency_ms=600_000, submission_window_ms=3_600_000), now)
        for n in range(players):
            user_id = db.insert_user(conn, f"bench{n}", "$seeded$", now)
            token = secrets.token_urlsafe(32)
            db.insert_login_token(conn, hashlib.sha256(token.encode()).digest(), user_id, now,
                                  now + 86_400_000)
            tokens.append(token)
    conn.close()
    path = folder / "tokens.json"
    path.write_text(json.dumps(tokens))
    return path


@dataclass
class Running:
    process: subprocess.Popen[str]
    ws_port: int
    http_port: int | None


def start_server(folder: Path, *, echo: bool) -> Running:
    if echo:
        cmd = [sys.executable, str(ROOT / "bench" / "echo_server.py")]
    else:
        cmd = [sys.executable, "-m", "scoreserver.cli", "serve", "--ws-port", "0", "--http-port", "0",
               "--db", str(folder / "bench.db"), "--key", str(folder / "bench.key"),
               "--max-msg-rate", "0", "--max-conns-per-addr", "0", "--log-level", "WARNING"]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    line = process.stdout.readline()
    if echo:
        port = int(line.strip().rsplit(":", 1)[1].rstrip("/"))
        return Running(process, port, None)
    match = BANNER.search(line)
    if not match:
        process.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return Running(process, int(match.group(1)), int(match.group(2)))


def stats(server: Running) -> dict[str, Any]:
    if server.http_port is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/api/stats", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def run_scenario(mode: str, players: int, loadgen_args: list[str], *, duration_s: float,
                 timeout_s: float) -> dict[str, Any]:
    """One server, one load generator; returns the merged measurements."""
    with tempfile.TemporaryDirectory(prefix="scorebench-") as tmp:
        folder = Path(tmp)
        echo = mode == "echo"
        tokens = None if echo else seed(folder, players, duration_s)
        server = start_server(folder, echo=echo)
        try:
            time.sleep(0.3)
            cpu0, rss0 = proc_cpu(server.process.pid), proc_rss_kib(server.process.pid)
            before = stats(server)
            cmd = [sys.executable, str(ROOT / "bench" / "loadgen.py"), mode,
                   "--port", str(server.ws_port), "--players", str(players), *loadgen_args]
            if tokens:
                cmd += ["--tokens", str(tokens)]
            gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            assert gen.stdout is not None
            watchdog = threading.Timer(timeout_s, gen.kill)  # bounded in time, whatever happens
            watchdog.start()
            marks: dict[str, Any] = {}
            report: dict[str, Any] = {}
            for line in gen.stdout:
                message = json.loads(line)
                if "submit_phase" in message:
                    marks["phase_cpu"] = proc_cpu(server.process.pid)
                elif "idle_ready" in message:
                    time.sleep(1.0)
                    marks["idle_rss_kib"] = proc_rss_kib(server.process.pid)
                else:
                    report = message
            gen.wait(timeout=30)
            watchdog.cancel()
            if not report:
                raise RuntimeError(f"{mode}: the load generator failed (exit {gen.returncode})")
            cpu = proc_cpu(server.process.pid) - marks.get("phase_cpu", cpu0)
            after = stats(server)
            report["server_cpu_s"] = round(cpu, 3)
            report["server_rss_kib"] = proc_rss_kib(server.process.pid)
            report["server_rss_start_kib"] = rss0
            if "idle_rss_kib" in marks:
                report["rss_per_connection_kib"] = round(
                    (marks["idle_rss_kib"] - rss0) / max(1, report.get("connected", players)), 2)
            if before:
                report["loop_stalls_over_20ms"] = after["loop_stalls_over_20ms"] - before["loop_stalls_over_20ms"]
                report["loop_max_lag_ms"] = after["loop_max_lag_ms"]
            count = report.get("messages_per_s", 0) * report.get("seconds", 0) or report.get("points")
            if mode == "submit":
                count = report.get("submissions")
            if count:
                report["server_cpu_us_per_message"] = round(cpu / count * 1e6, 1)
            return report
        finally:
            server.process.terminate()
            try:
                server.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.process.kill()


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if key in r]
        if all(isinstance(v, bool) for v in values):
            merged[key] = any(values)
        elif all(isinstance(v, (int, float)) for v in values):
            merged[key] = statistics.median(values)
        else:
            merged[key] = values[0]
    merged["runs"] = len(runs)
    return merged


def scenarios(quick: bool) -> list[tuple[str, str, int, list[str], float, float]]:
    """(name, mode, players, loadgen args, game duration s, timeout s)"""
    if quick:
        return [
            ("echo-20", "echo", 20, ["--seconds", "2"], 60, 30),
            ("throughput-20", "throughput", 20, ["--seconds", "2"], 60, 30),
            ("realistic-50", "realistic", 50, ["--rate", "5"], 3, 30),
            ("idle-200", "idle", 200, ["--seconds", "1"], 600, 30),
            ("submit-600x10", "submit", 10, ["--points", "600", "--games", "1"], 8, 60),
        ]
    return [
        ("echo-50", "echo", 50, ["--seconds", "5"], 60, 60),
        ("throughput-50", "throughput", 50, ["--seconds", "5"], 60, 60),
        ("echo-500", "echo", 500, ["--seconds", "5"], 60, 90),
        ("throughput-500", "throughput", 500, ["--seconds", "5"], 60, 90),
        ("realistic-1000", "realistic", 1000, ["--rate", "5"], 30, 120),
        ("idle-10000", "idle", 10000, ["--seconds", "3"], 600, 180),
        ("submit-600x200", "submit", 50, ["--points", "600", "--games", "4"], 25, 300),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run for CI (no thresholds)")
    parser.add_argument("--runs", type=int, default=None, help="runs per scenario (default 3; 1 with --quick)")
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--out", type=Path, default=ROOT / "docs",
                        help="where performance.json (and, for a full run, performance.md) go")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    wanted = set(args.only.split(",")) if args.only else None
    results: dict[str, Any] = {}
    started = time.monotonic()
    for name, mode, players, extra, duration, timeout in scenarios(args.quick):
        if wanted and name not in wanted:
            continue
        measured = []
        for n in range(runs):
            report = run_scenario(mode, players, extra, duration_s=duration, timeout_s=timeout)
            measured.append(report)
            print(f"{name} run {n + 1}: {json.dumps(report)}", flush=True)
        results[name] = median_of(measured)
    results["_meta"] = {
        "quick": args.quick, "runs": runs, "python": platform.python_version(),
        "cpus": os.cpu_count(), "seconds": round(time.monotonic() - started, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ("performance-quick.json" if args.quick else "performance.json")).write_text(
        json.dumps(results, indent=2) + "\n")
    saturated = [k for k, v in results.items() if isinstance(v, dict) and v.get("loadgen_saturated")]
    print(f"done in {results['_meta']['seconds']} s; load generator saturated in: "
          f"{', '.join(saturated) if saturated else 'no scenario'}")


if __name__ == "__main__":
    main()
