"""How the server starts its helper processes (the point signer and the database writer)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The folder that holds the `scoreserver` package: a child must import the same code as its
# parent, also when the server was started as `python /elsewhere/run.py` without installing.
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def python_module(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run `python -m module args...` like this process."""
    env = dict(os.environ)
    paths = [PACKAGE_ROOT, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return [sys.executable, "-m", module, *args], env
