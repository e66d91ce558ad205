"""What a flood of admin logins costs everyone else.

    python bench/login_flood.py [--logins 300] [--kind admin|player]

Starts a server process (OWASP's Argon2id parameters, the default configuration), sets an
admin password, then measures the leaderboard's and /healthz's latency three ways: alone,
while `--logins` wrong admin passwords arrive at once from nine loopback addresses, and the
server's peak RSS meanwhile. Everything goes to 127.0.0.1-127.0.0.10, bounded in count and time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scoreserver.server.launch import parse_banner, serve_command  # noqa: E402

ADDRESSES = [f"127.0.0.{n}" for n in range(2, 11)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def probe(api: httpx.AsyncClient, path: str, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        reply = await api.get(path)
        latencies.append((time.perf_counter() - started) * 1000)
        assert reply.status_code == 200, reply.text
        await trio.sleep(0.05)
    return latencies


async def flood(base: str, logins: int, kind: str) -> dict[str, int]:
    codes: dict[str, int] = {}
    clients = [
        httpx.AsyncClient(
            base_url=base, transport=httpx.AsyncHTTPTransport(local_address=a), timeout=120
        )
        for a in ADDRESSES
    ]

    async def one(index: int) -> None:
        if kind == "admin":
            path, body = "/api/admin/login", {"password": f"guess {index}"}
        else:
            path, body = "/api/login", {"name": f"nobody{index}", "password": f"guess {index}"}
        reply = await clients[index % len(clients)].post(path, json=body)
        codes[str(reply.status_code)] = codes.get(str(reply.status_code), 0) + 1

    async with trio.open_nursery() as nursery:
        for index in range(logins):
            nursery.start_soon(one, index)
    for client in clients:
        await client.aclose()
    return codes


def summary(name: str, latencies: list[float]) -> str:
    return (
        f"{name}: median {statistics.median(latencies):.1f} ms,"
        f" max {max(latencies):.1f} ms over {len(latencies)}"
    )


async def measure(base: str, pid: int, logins: int, kind: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=120) as api:
        quiet_board = await probe(api, "/api/games/demo/leaderboard", 40)
        quiet_health = await probe(api, "/healthz", 40)
        rss_before = rss_mb(pid)
        results: dict[str, list[float]] = {}

        async def during() -> None:
            results["board"] = await probe(api, "/api/games/demo/leaderboard", 40)
            results["health"] = await probe(api, "/healthz", 40)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(during)
            started = time.perf_counter()
            codes = await flood(base, logins, kind)
            took = time.perf_counter() - started
            peak = max(rss_before, rss_mb(pid))
    print(
        f"{logins} {kind} logins at once from {len(ADDRESSES)} addresses: {codes},"
        f" all answered in {took:.1f} s"
    )
    print(summary("leaderboard, quiet", quiet_board))
    print(summary("leaderboard, during the flood", results["board"]))
    print(summary("healthz, quiet", quiet_health))
    print(summary("healthz, during the flood", results["health"]))
    print(f"server RSS: {rss_before:.0f} MB before, {peak:.0f} MB at the end of the flood")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logins", type=int, default=300)
    parser.add_argument(
        "--kind",
        choices=["admin", "player"],
        default="admin",
        help="admin: wrong admin passwords (the budget refuses most before Argon2);"
        " player: unknown names (each address's budget only: 270 Argon2 checks queue)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db, key = Path(folder) / "f.db", Path(folder) / "f.key"
        subprocess.run(
            [sys.executable, "-m", "scoreserver.ops.cli", "admin", "set-password"]
            + ["--password-stdin", "--db", str(db)],
            input="a long admin secret\n",
            text=True,
            check=True,
            capture_output=True,
        )
        process = subprocess.Popen(serve_command(db, key), stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None
            ports = parse_banner(process.stdout.readline())
            assert ports, "no banner"
            trio.run(measure, f"http://127.0.0.1:{ports[1]}", process.pid, args.logins, args.kind)
        finally:
            process.terminate()
            process.wait(timeout=15)


if __name__ == "__main__":
    main()
