"""How the server starts its helper processes (the database writer; the supervisor's workers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

# The folder that holds the `scoreserver` package: a child must import the same code as its
# parent, also when the server was started as `python /elsewhere/run.py` without installing.
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def python_module(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run `python -m module args...` like this process."""
    env = dict(os.environ)
    paths = [PACKAGE_ROOT, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return [sys.executable, "-m", module, *args], env


async def start(command: list[str], env: dict[str, str]) -> trio.Process:
    """Start a helper with pipes to its standard input and output (raises OSError)."""
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    assert process.stdin is not None
    assert process.stdout is not None
    return process


async def reap(process: trio.Process, timeout_s: float) -> None:
    """Wait for a helper whose input is closed to exit; kill it if it takes over `timeout_s`."""
    with trio.move_on_after(timeout_s):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
