"""The raw transport's upper bound: trio-websocket echoing every message, nothing else.

Run as `python bench/echo_server.py [PORT]`; prints `echo ws://127.0.0.1:PORT/` once listening.
It keeps Python's default garbage-collector settings, as a plain trio-websocket server would.
A message over 4 KiB (the load generator's `echo-submit`: a 600-point submission's size) is
answered with a short result instead of itself, as scoreserver answers a submission: the
transport's cost of receiving it, without the cost of sending it back.
"""

from __future__ import annotations

import sys

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

ACK_OVER = 4096
ACK = '{"type":"result","accepted":true}'


async def echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            message = await ws.get_message()
            await ws.send_message(message if len(message) <= ACK_OVER else ACK)
    except ConnectionClosed:
        pass


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, echo, "127.0.0.1", port, None)
        print(f"echo ws://127.0.0.1:{server.port}/", flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 0)
