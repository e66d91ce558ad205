"""Simulated players, in a process of their own: the load generator of the benchmarks.

It speaks WebSocket itself over asyncio streams, with the least work per message a client can
do: frames are masked with the all-zero key (valid under RFC 6455, and then masking copies
nothing), replies are recognised by a byte search and parsed as JSON only where a token is
needed. It measures its own CPU time, so every report says whether the generator could have
been the bottleneck.

Modes (all players log in with seeded login tokens, enter a room, start a game):
  throughput  points back to back, each sent when the last was answered, for --seconds
  realistic   --rate points per second each with jitter, whole games, end_game, submit
  idle        connect, authenticate, enter the room, then hold --seconds
  submit      --points points back to back per game, --games games each, then submit all
  echo        the same client against bench/echo_server.py: the transport's upper bound
  echo-submit submit's last phase against bench/echo_server.py: frames of a --points
              submission's size and shape (made up, no game played), --games each
  echo-realistic  realistic's points (same rate, jitter, staggered starts, replies parsed
              the same way) for --seconds against bench/echo_server.py: the latency this
              generator and transport show with a server that does nothing

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import resource
import struct
import time
from typing import Any

ZERO_MASK = b"\x00\x00\x00\x00"


def frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return head + ZERO_MASK + payload


class Socket:
    """A minimal WebSocket client over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Socket:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        return cls(reader, writer)

    def send(self, payload: bytes) -> None:
        self.writer.write(frame(payload))

    async def recv(self) -> bytes:
        while True:
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            payload = await self.reader.readexactly(length) if length else b""
            opcode = first & 0x0F
            if opcode == 0x9:  # ping: answer, as a browser does
                self.writer.write(
                    struct.pack("!BB", 0x8A, 0x80 | len(payload)) + ZERO_MASK + payload
                )
                continue
            if opcode == 0x8:
                raise ConnectionError("closed by the server")
            return payload

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send, and return the reply (leaderboard pushes in between are skipped)."""
        self.send(json.dumps(message).encode())
        while True:
            payload = await self.recv()
            if not payload.startswith(b'{"type":"leaderboard"'):
                return json.loads(payload)  # type: ignore[no-any-return]

    async def recv_type(self, kind: bytes) -> dict[str, Any]:
        while True:
            payload = await self.recv()
            if kind in payload:
                return json.loads(payload)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.writer.close()


def now_ms() -> int:
    return int(time.time() * 1000)


class Stats:
    def __init__(self) -> None:
        self.rtts: list[float] = []
        self.accepted = 0
        self.rejected = 0
        self.errors = 0
        self.submissions = 0
        self.submissions_accepted = 0
        self.unanswered = 0
        # realistic modes: (when sent, round trip) of each point, and when the last player
        # to start sent its first point (from then on every player is in its game)
        self.timed: list[tuple[float, float]] = []
        self.started_players = 0
        self.all_started_at = float("inf")

    def first_point_sent(self, players: int) -> None:
        self.started_players += 1
        if self.started_players == players:
            self.all_started_at = time.perf_counter()

    def steady_rtts(self) -> list[float]:
        return [rtt for sent, rtt in self.timed if sent >= self.all_started_at]


CONNECT_GATE: asyncio.Semaphore | None = None  # set in main: connects at a time


async def join(host: str, port: int, token: str | None, game: str) -> Socket:
    assert CONNECT_GATE is not None
    async with CONNECT_GATE:  # do not overrun the server's listen backlog
        return await _join(host, port, token, game)


async def _join(host: str, port: int, token: str | None, game: str) -> Socket:
    sock = await Socket.open(host, port)
    user_id = None
    if token is not None:
        identity = await sock.request({"type": "auth", "token": token})
        if identity.get("type") != "identity":
            raise RuntimeError(f"auth failed: {identity}")
        user_id = identity["user_id"]
    room = await sock.request({"type": "enter_game_room", "game_id": game, "user_id": user_id})
    if room.get("type") != "room_entered":
        raise RuntimeError(f"room: {room}")
    return sock


async def start(sock: Socket) -> dict[str, Any]:
    started = await sock.request({"type": "game_start", "client_ts": now_ms()})
    if started.get("type") != "game_started":
        raise RuntimeError(f"start: {started}")
    return started


POINT_ACCEPTED = b'"point_accepted"'
POINT_REPLIES = (POINT_ACCEPTED, b'"point_rejected"')


async def closed_loop_player(
    args: argparse.Namespace,
    token: str | None,
    stats: Stats,
    ready: asyncio.Barrier,
    deadline: list[float],
) -> None:
    """Points back to back, each sent when the last was answered: against scoreserver (a
    logged-in player in a started game), or against the echo server (a bare socket)."""
    echo = args.mode == "echo"
    if echo:
        assert CONNECT_GATE is not None
        async with CONNECT_GATE:
            sock = await Socket.open(args.host, args.port)
    else:
        sock = await join(args.host, args.port, token, args.game)
        await start(sock)
    await ready.wait()
    clock = time.perf_counter
    rtts = stats.rtts
    try:
        while clock() < deadline[0]:
            sent = clock()
            sock.send(b'{"type":"point","client_ts":%d}' % now_ms())
            reply = await sock.recv()
            # What else the server says (the board as the player enters, a notice) is no
            # answer: taken as one, it left a second point in flight for the rest of the run,
            # and half the round trips measured the reply to the point before.
            while not echo and not any(kind in reply for kind in POINT_REPLIES):
                reply = await sock.recv()
            rtts.append(clock() - sent)
            if echo or POINT_ACCEPTED in reply:
                stats.accepted += 1
            else:
                stats.rejected += 1
    finally:
        sock.close()


async def realistic_player(
    args: argparse.Namespace, token: str | None, stats: Stats, rng: random.Random
) -> None:
    sock = await join(args.host, args.port, token, args.game)
    await asyncio.sleep(rng.uniform(0, 1.0))  # players do not all start in the same ms
    started = await start(sock)
    claims: list[dict[str, Any]] = []
    interval = 1.0 / args.rate
    end: dict[str, Any] | None = None
    reader_done = asyncio.Event()
    pending: dict[int, tuple[float, int]] = {}
    next_id = 0

    async def read_replies() -> None:
        nonlocal end
        while True:
            payload = await sock.recv()
            message = json.loads(payload)
            kind = message["type"]
            if kind == "leaderboard":
                continue
            if kind == "end_game":
                end = message
                break
            if kind in ("point_accepted", "point_rejected"):
                sent, ts = pending.pop(message["id"])
                stats.rtts.append(time.perf_counter() - sent)
                stats.timed.append((sent, stats.rtts[-1]))
                if kind == "point_accepted":
                    stats.accepted += 1
                    claims.append({"token": message["token"], "client_ts": ts})
                else:
                    stats.rejected += 1
        reader_done.set()

    reader = asyncio.create_task(read_replies())
    game_end = time.perf_counter() + started["duration_ms"] / 1000 - 0.3
    while time.perf_counter() < game_end:
        await asyncio.sleep(interval * rng.uniform(0.6, 1.4))
        next_id += 1
        if next_id == 1:
            stats.first_point_sent(args.players)
        ts = now_ms()
        pending[next_id] = (time.perf_counter(), ts)
        sock.send(b'{"type":"point","client_ts":%d,"id":%d}' % (ts, next_id))
    await asyncio.wait_for(reader_done.wait(), 60)
    await reader
    assert end is not None
    sock.send(
        json.dumps(
            {
                "type": "submit_result",
                "start_token": started["start_token"],
                "end_token": end.get("end_token", ""),
                "points": claims,
            }
        ).encode()
    )
    while True:  # points queued before the end are still answered (game_over), then the result
        message = json.loads(await sock.recv())
        kind = message["type"]
        if kind in ("point_accepted", "point_rejected") and message.get("id") in pending:
            sent, _ = pending.pop(message["id"])
            stats.rtts.append(time.perf_counter() - sent)
            stats.rejected += 1
        elif kind == "result":
            break
    stats.unanswered += len(pending)
    stats.submissions += 1
    stats.submissions_accepted += bool(message.get("accepted"))
    sock.close()


async def echo_realistic_player(args: argparse.Namespace, stats: Stats, rng: random.Random) -> None:
    """`realistic_player`'s points, timing and reply parsing, against the echo server."""
    assert CONNECT_GATE is not None
    async with CONNECT_GATE:
        sock = await Socket.open(args.host, args.port)
    await asyncio.sleep(rng.uniform(0, 1.0))
    interval = 1.0 / args.rate
    pending: dict[int, float] = {}
    sending = True
    drained = asyncio.Event()

    async def read_replies() -> None:
        while sending or pending:
            message = json.loads(await sock.recv())
            sent = pending.pop(message["id"])
            stats.rtts.append(time.perf_counter() - sent)
            stats.timed.append((sent, stats.rtts[-1]))
            stats.accepted += 1
        drained.set()

    reader = asyncio.create_task(read_replies())
    end = time.perf_counter() + args.seconds - 0.3
    next_id = 0
    while time.perf_counter() < end:
        await asyncio.sleep(interval * rng.uniform(0.6, 1.4))
        next_id += 1
        if next_id == 1:
            stats.first_point_sent(args.players)
        pending[next_id] = time.perf_counter()
        sock.send(b'{"type":"point","client_ts":%d,"id":%d}' % (now_ms(), next_id))
    sending = False
    if not pending:
        reader.cancel()
    else:
        try:
            await asyncio.wait_for(drained.wait(), 60)
        finally:
            reader.cancel()
    stats.unanswered += len(pending)
    sock.close()


async def idle_player(
    args: argparse.Namespace,
    token: str | None,
    stats: Stats,
    ready: asyncio.Event,
    hold: asyncio.Event,
) -> None:
    try:
        sock = await join(args.host, args.port, token, args.game)
    except Exception:
        stats.errors += 1
        return
    stats.accepted += 1
    try:
        await hold.wait()
        while not ready.is_set():  # keep answering pings while held
            try:
                await asyncio.wait_for(sock.recv(), 1)
            except TimeoutError:
                pass
    finally:
        sock.close()


async def submit_player(
    args: argparse.Namespace,
    token: str | None,
    stats: Stats,
    ready: asyncio.Barrier,
    results: list[float],
) -> None:
    sock = await join(args.host, args.port, token, args.game)
    games = []
    for _ in range(args.games):
        started = await start(sock)
        claims = []
        for _ in range(args.points):
            ts = now_ms()
            sock.send(b'{"type":"point","client_ts":%d}' % ts)
            reply = json.loads(await sock.recv())
            while reply["type"] == "leaderboard":
                reply = json.loads(await sock.recv())
            if reply["type"] != "point_accepted":
                raise RuntimeError(f"the game is too short for {args.points} points: {reply}")
            claims.append({"token": reply["token"], "client_ts": ts})
        end = await sock.recv_type(b'"end_game"')
        games.append(
            {
                "type": "submit_result",
                "start_token": started["start_token"],
                "end_token": end["end_token"],
                "points": claims,
            }
        )
    bodies = [json.dumps(g).encode() for g in games]
    await submit_all(sock, bodies, stats, ready, results)


async def submit_all(
    sock: Socket,
    bodies: list[bytes],
    stats: Stats,
    ready: asyncio.Barrier,
    results: list[float],
) -> None:
    """Once every player is ready: send each body, time its result; then hang up."""
    await ready.wait()
    for body in bodies:
        sent = time.perf_counter()
        sock.send(body)
        reply = await sock.recv_type(b'"result"')
        results.append(time.perf_counter() - sent)
        stats.submissions += 1
        stats.submissions_accepted += bool(reply.get("accepted"))
    sock.close()


async def echo_submit_player(
    args: argparse.Namespace, stats: Stats, ready: asyncio.Barrier, results: list[float]
) -> None:
    """Frames the size and shape of `submit`'s, to the echo server (it answers each with a
    short result): the transport's own cost of receiving a submission."""
    assert CONNECT_GATE is not None
    async with CONNECT_GATE:
        sock = await Socket.open(args.host, args.port)

    def token() -> str:  # base64url of the length of a point token of the bench game
        return base64.urlsafe_b64encode(os.urandom(120)).decode()[:158]

    ts = now_ms()
    bodies = [
        json.dumps(
            {
                "type": "submit_result",
                "start_token": token(),
                "end_token": token(),
                "points": [{"token": token(), "client_ts": ts + n} for n in range(args.points)],
            }
        ).encode()
        for _ in range(args.games)
    ]
    await submit_all(sock, bodies, stats, ready, results)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tokens: list[str | None] = list(json.load(open(args.tokens))) if args.tokens else []
    tokens = (tokens or [None]) * (args.players // max(1, len(tokens)) + 1)
    stats = Stats()
    rng = random.Random(args.seed)
    report: dict[str, Any] = {"mode": args.mode, "players": args.players}
    global CONNECT_GATE
    CONNECT_GATE = asyncio.Semaphore(200)

    def guarded(coro: Any, barrier: asyncio.Barrier) -> Any:
        async def run() -> Any:
            try:
                return await coro
            except BaseException:
                await barrier.abort()  # nobody waits forever for a player that failed
                raise

        return asyncio.create_task(run())

    if args.mode in ("throughput", "echo"):
        ready = asyncio.Barrier(args.players + 1)
        deadline = [float("inf")]
        tasks = [
            guarded(closed_loop_player(args, tokens[n], stats, ready, deadline), ready)
            for n in range(args.players)
        ]
        await ready.wait()
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        deadline[0] = t0 + args.seconds
        await asyncio.gather(*tasks)
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        report.update(messages_per_s=stats.accepted / elapsed, rejected=stats.rejected)
    elif args.mode in ("realistic", "echo-realistic"):
        echo_r = args.mode == "echo-realistic"
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        await asyncio.gather(
            *(
                echo_realistic_player(args, stats, rng)
                if echo_r
                else realistic_player(args, tokens[n], stats, rng)
                for n in range(args.players)
            )
        )
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        report.update(
            points=stats.accepted,
            unanswered=stats.unanswered,
            points_per_s=stats.accepted / elapsed,
        )
        if not echo_r:
            report.update(
                rejected=stats.rejected,
                submissions=stats.submissions,
                submissions_accepted=stats.submissions_accepted,
            )
    elif args.mode == "idle":
        ready, hold = asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(idle_player(args, tokens[n], stats, ready, hold))
            for n in range(args.players)
        ]
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        while stats.accepted + stats.errors < args.players:
            await asyncio.sleep(0.05)
        report["connected"] = stats.accepted
        report["connect_errors"] = stats.errors
        print(json.dumps({"idle_ready": stats.accepted}), flush=True)
        hold.set()
        await asyncio.sleep(args.seconds)
        ready.set()
        await asyncio.gather(*tasks)
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    elif args.mode in ("submit", "echo-submit"):
        ready = asyncio.Barrier(args.players + 1)
        latencies: list[float] = []
        tasks = [
            guarded(
                submit_player(args, tokens[n], stats, ready, latencies)
                if args.mode == "submit"
                else echo_submit_player(args, stats, ready, latencies),
                ready,
            )
            for n in range(args.players)
        ]
        await ready.wait()
        print(json.dumps({"submit_phase": "start"}), flush=True)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        stats.rtts = latencies
        report.update(
            submissions=stats.submissions,
            submissions_accepted=stats.submissions_accepted,
            submissions_per_s=stats.submissions / elapsed,
        )
    else:
        raise SystemExit(f"unknown mode {args.mode}")
    if stats.timed:
        # Round trips of the points sent once every player was in its game: without the
        # start-up, where players connect, log in and start while others already play.
        steady = stats.steady_rtts()
        report["rtt_p99_steady_ms"] = round(percentile(steady, 0.99) * 1000, 3) if steady else None
    report.update(
        seconds=round(elapsed, 3),
        rtt_p50_ms=round(percentile(stats.rtts, 0.50) * 1000, 3),
        rtt_p99_ms=round(percentile(stats.rtts, 0.99) * 1000, 3),
        loadgen_cpu_share=round(cpu / elapsed, 3),
        # One core is this process's whole budget: near 1.0, the generator was the bottleneck.
        loadgen_saturated=cpu / elapsed > 0.9,
    )
    return report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "mode",
        choices=[
            "throughput",
            "realistic",
            "idle",
            "submit",
            "echo",
            "echo-submit",
            "echo-realistic",
        ],
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--players", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=5.0, help="points per second per player")
    parser.add_argument("--points", type=int, default=600)
    parser.add_argument("--games", type=int, default=1)
    parser.add_argument("--game", default="bench")
    parser.add_argument("--tokens", help="JSON file with login tokens")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the load generator only targets this machine")
    return args


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse()))), flush=True)
