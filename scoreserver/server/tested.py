"""The library releases whose private attributes the fast paths replace, and the check made
before replacing them.

Two fast paths reach inside libraries: `frames.speed_up` drives wsproto's frame protocol
objects, and `transport.quicken` swaps trio-websocket's send lock and message channel. Both
check the types of what they replace, but a release can keep a name and change what it means;
so they run only on the releases listed here (the ones the differential tests passed on), and
on any other the connection keeps the library's own path: slower, never wrong. The first
connection on an untested release logs which one and why, once.

`SCORESERVER_FAST_PATHS` overrides the check: `off` never patches (the plain path, for a
suspected bug), `any` patches whatever is installed (how `.ci/newest` runs the differential
tests against the newest releases before they are added here).
"""

from __future__ import annotations

import logging
import os
from functools import cache
from importlib import metadata

logger = logging.getLogger("scoreserver.server")

# The distribution names and the releases the fast paths were tested against.
TESTED: dict[str, tuple[str, ...]] = {
    "wsproto": ("1.3.2",),
    "trio-websocket": ("0.12.2",),
}
OVERRIDE_VARIABLE = "SCORESERVER_FAST_PATHS"


def installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@cache
def fast_path_allowed(distribution: str) -> bool:
    """Whether a fast path may replace `distribution`'s private attributes (cached: the
    answer cannot change while the process runs, and it is asked on every connection)."""
    override = os.environ.get(OVERRIDE_VARIABLE, "").strip().lower()
    if override == "off":
        return False
    version = installed(distribution)
    if override == "any" or version in TESTED[distribution]:
        return True
    logger.warning(
        "%s %s is not a release the fast paths were tested on (%s): its own path serves "
        "every connection (correct, somewhat slower). See docs/architecture.md, "
        "'How to change it'.",
        distribution,
        version or "(not installed)",
        ", ".join(TESTED[distribution]),
    )
    return False
