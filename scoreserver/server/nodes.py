"""This process as one node of many on one database: its identity, its lease, its key.

A node is one `scoreserver serve` event loop (one worker of `--workers N` is one node). It has
a random id, new at each start, and the URL of its game socket (`--node-url`); its sessions
carry its id in the database. Every `heartbeat_s` it renews its lease (`lease_ms`); a node
whose lease runs out is gone, and whichever node notices first voids its running sessions and
retires its key (store/ops/nodes.py, `node_heartbeat`). A node that finds *itself* gone (its loop
stalled past the lease) ends its running games as void and comes back under the same id.

Keys. Every node signs with the key in its key file (the workers of one machine share the
file); every node verifies with every key a node signs with now (`nodes.kid`, not retired in
`signing_keys`) and with retired keys for as long as a game may still be submitted. A rotation
(`keys rotate`, anywhere) retires every key: each node then takes the key file's new key if
its machine's file has one, or makes a new one (written to its file, under a lock that the
workers of one machine share) within the settings reload (2 s, at once on PostgreSQL).
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import secrets
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from scoreserver.core.rules import GameSettings
from scoreserver.store import NodeInfo, SigningKey, Store
from scoreserver.wire.tokens import (
    KeyRing,
    VerifyKey,
    key_id,
    load_or_create_key,
    public_from_raw,
    raw_public,
    write_key,
)

logger = logging.getLogger(__name__)

DEFAULT_LEASE_S = 10.0
# Heartbeats per lease: a node is declared gone only after this many renewals in a row failed
# to arrive (a loop stalled for a whole lease, or a dead process).
BEATS_PER_LEASE = 5
# How often attempts older than every budget's window are deleted (by every node).
ATTEMPTS_SWEEP_S = 60.0
ATTEMPTS_KEEP_MS = 3600 * 1000


def new_node_id() -> str:
    return secrets.token_hex(8)


def this_host() -> str:
    """This machine, as nodes tell machines apart: its host name and the kernel's boot id
    (a restarted machine is another machine: its old processes are all gone)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


async def gone_here(store: Store, own_id: str) -> list[str]:
    """Nodes of this machine whose process no longer runs: gone now, without waiting for their
    lease (a crash and a restart on one machine void the crashed node's games at once)."""
    host = this_host()
    return [
        row["id"]
        for row in await store.nodes()
        if row["id"] != own_id and row["host"] == host and _process_gone(int(row["pid"]))
    ]


@contextmanager
def key_file_lock(path: Path) -> Iterator[None]:
    """Hold the lock that the processes sharing a key file take before replacing the key."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def key_of_file(path: Path, retired: set[str]) -> Ed25519PrivateKey:
    """The key file's key; if a rotation retired it, a new key written to the file first (one
    process of those sharing the file makes it; the others read it)."""
    key = load_or_create_key(path)
    if key_id(key.public_key()).hex() not in retired:
        return key
    with key_file_lock(path):
        key = load_or_create_key(path)  # another worker may have replaced it meanwhile
        kid = key_id(key.public_key()).hex()
        if kid in retired:
            key = Ed25519PrivateKey.generate()
            write_key(path, key)
            logger.warning(
                "the key in %s was retired by a rotation: signing with a new key %s",
                path,
                key_id(key.public_key()).hex(),
            )
    return key


def keyring(
    signing_key: Ed25519PrivateKey, lifetime_ms: int, history: Sequence[SigningKey], now: int
) -> KeyRing:
    """The key ring of a node: its own key to sign; to verify, every key not retired (the keys
    other nodes sign with) and every retired key a game may still be submitted under."""
    own = key_id(signing_key.public_key()).hex()
    others = []
    for row in history:
        if row["kid"] == own:
            continue
        if row["retired_at"] is None:
            valid_until = None
        else:
            valid_until = row["retired_at"] + lifetime_ms
            if valid_until < now:
                continue
        others.append(
            VerifyKey(bytes.fromhex(row["kid"]), public_from_raw(row["public_key"]), valid_until)
        )
    return KeyRing(signing_key, others)


def retired_kids(history: Sequence[SigningKey]) -> set[str]:
    return {row["kid"] for row in history if row["retired_at"] is not None}


async def load_keys(store: Store, key_path: Path, now: int) -> KeyRing:
    """Read the keys afresh (a reload): the key file's key (a new one if it was retired) and
    every key that may verify. A key not yet recorded is recorded first."""
    lifetime, history = await store.key_history()
    key = key_of_file(key_path, retired_kids(history))
    kid = key_id(key.public_key()).hex()
    if kid not in {row["kid"] for row in history}:
        await store.record_signing_key(kid, raw_public(key.public_key()), now)
        lifetime, history = await store.key_history()
    return keyring(key, lifetime, history, now)


@dataclass(frozen=True, slots=True)
class NodeStart:
    node: NodeInfo
    keys: KeyRing
    voided: int


async def start_node(
    store: Store,
    key_path: Path,
    url: str,
    lease_s: float,
    now: int,
    demo_id: str,
    demo: GameSettings,
) -> NodeStart:
    """Register this node (and its key), void what nodes that are gone left running."""
    key = load_or_create_key(key_path)
    node = NodeInfo(
        new_node_id(),
        url,
        key_id(key.public_key()).hex(),
        int(lease_s * 1000),
        this_host(),
        os.getpid(),
    )
    voided, lifetime, history = await store.start_node(
        node,
        now,
        demo_id,
        demo,
        raw_public(key.public_key()),
        await gone_here(store, node.node_id),
    )
    if node.kid in retired_kids(history):  # a copy of a key file a rotation retired
        key = key_of_file(key_path, retired_kids(history))
        node = dataclasses.replace(node, kid=key_id(key.public_key()).hex())
        await store.record_signing_key(node.kid, raw_public(key.public_key()), now)
        lifetime, history = await store.key_history()
    return NodeStart(node, keyring(key, lifetime, history, now), voided)
