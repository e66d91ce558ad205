"""The raw transport's upper bound: trio-websocket echoing every message, nothing else.

Run as `python bench/echo_server.py [PORT]`; prints `echo ws://127.0.0.1:PORT/` once listening.
It keeps Python's default garbage-collector settings, as a plain trio-websocket server would.
"""

from __future__ import annotations

import sys

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket


async def echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, echo, "127.0.0.1", port, None)
        print(f"echo ws://127.0.0.1:{server.port}/", flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 0)
