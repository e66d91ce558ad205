"""The raw transport's upper bound: trio-websocket echoing every message, nothing else.

Run as `python bench/echo_server.py [--frames] [PORT] [STATS_FILE]`; prints
`echo ws://127.0.0.1:PORT/` once listening. With `--frames` each connection reads and writes
short text frames the way the server's connections do (`scoreserver/server/frames.py`, in
front of wsproto's general parser): the ceiling of the server's own transport, beside the
stock one's. With STATS_FILE it also runs the server's loop probe (a 10 ms sleep; a stall is
a wake-up over 20 ms late) and writes its counts there as JSON every second, for the
`echo-realistic` scenario: the stalls of the bare transport under that load.
It keeps Python's default garbage-collector settings, as a plain trio-websocket server would.
A message over 4 KiB (the load generator's `echo-submit`: a 600-point submission's size) is
answered with a short result instead of itself, as scoreserver answers a submission: the
transport's cost of receiving it, without the cost of sending it back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

FRAMES = "--frames" in sys.argv
if FRAMES:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from scoreserver.server.frames import speed_up

ACK_OVER = 4096
ACK = '{"type":"result","accepted":true}'


async def echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    if FRAMES:
        assert speed_up(ws._wsproto)
    try:
        while True:
            message = await ws.get_message()
            await ws.send_message(message if len(message) <= ACK_OVER else ACK)
    except ConnectionClosed:
        pass


async def probe(stats_file: str) -> None:
    stalls, worst, written = 0, 0.0, trio.current_time()
    while True:
        before = trio.current_time()
        await trio.sleep(0.01)
        now = trio.current_time()
        lag = now - before - 0.01
        worst = max(worst, lag)
        stalls += lag > 0.02
        if now - written >= 1:
            written = now
            with open(stats_file, "w") as out:
                json.dump({"loop_stalls_over_20ms": stalls, "loop_max_lag_ms": worst * 1000}, out)


async def main(port: int, stats_file: str | None) -> None:
    async with trio.open_nursery() as nursery:
        if stats_file:
            nursery.start_soon(probe, stats_file)
        server = await nursery.start(serve_websocket, echo, "127.0.0.1", port, None)
        print(f"echo ws://127.0.0.1:{server.port}/", flush=True)


if __name__ == "__main__":
    args = [arg for arg in sys.argv[1:] if arg != "--frames"]
    trio.run(main, int(args[0]) if args else 0, args[1] if len(args) > 1 else None)
