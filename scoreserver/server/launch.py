"""How tools start a server process and learn its ports: the command line of `scoreserver
serve` run by this Python, and the banner line it prints once listening (the workers'
supervisor, the tests and the benchmarks read the ports from it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

# What `serve` prints once listening; tools that start a server process read the ports from it.
BANNER = re.compile(r"game socket wss?://\S+:(\d+)/\s+HTTP https?://\S+:(\d+)/")


def serve_argv(*flags: str) -> list[str]:
    """The command line of `scoreserver serve FLAGS`, run by this Python."""
    return [sys.executable, "-m", "scoreserver.ops.cli", "serve", *flags]


def serve_command(db: str | Path, key: Path, *flags: str) -> list[str]:
    """The command line of a server process on free ports (for tests and benchmarks)."""
    return serve_argv(
        "--ws-port",
        "0",
        "--http-port",
        "0",
        "--db",
        str(db),
        "--key",
        str(key),
        "--log-level",
        "WARNING",
        *flags,
    )


def parse_banner(text: str) -> tuple[int, int] | None:
    """(socket port, HTTP port) from the banner `serve` prints, or None."""
    match = BANNER.search(text)
    return (int(match.group(1)), int(match.group(2))) if match else None
