"""Nodes in the store, on both engines: leases, whose sessions are voided (only a gone node's),
keys of gone nodes, where a running session is, and the shared attempt budgets, raced."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from scoreserver.core.rules import GameSettings
from scoreserver.errors import RateLimitedError
from scoreserver.store import NodeInfo, ops
from scoreserver.store.connect import connect
from scoreserver.store.engine import transaction

from .. import databases

pytestmark = pytest.mark.engines
DEMO = GameSettings(duration_ms=1000)
LEASE = 10_000


def node(name: str, *, url: str | None = None, kid: str | None = None) -> NodeInfo:
    return NodeInfo(name, url or f"ws://{name}/", kid or f"{name:0>16}"[:16], LEASE, "h", 1)


def start(where: str, info: NodeInfo, now: int, gone: list[str] | None = None) -> int:
    voided, _, _ = databases.run(
        where, ops.start_node, info, now, "demo", DEMO, b"k" * 32, gone or []
    )
    return int(voided)


def add_session(where: str, session_id: str, node_id: str, user_id: int | None = None) -> None:
    databases.run(
        where,
        ops.insert_session,
        session_id,
        "demo",
        user_id,
        None if user_id else "1.2.3.4",
        None,
        DEMO,
        0,
        0,
        "start",
        node_id,
    )


def states(where: str) -> dict[str, str]:
    return {
        r[0]: r[1] for r in databases.sql(where, "SELECT id, state FROM game_sessions ORDER BY id")
    }


def age(where: str, node_id: str, ms: int) -> None:
    """Make a node look silent for `ms` (its last heartbeat moved back)."""
    databases.sql(where, "UPDATE nodes SET seen_at = seen_at - ? WHERE id = ?", (ms, node_id))


def test_only_a_gone_nodes_sessions_are_voided(tmp_path: Path) -> None:
    where = databases.location(tmp_path, "n.db")
    databases.create(where)
    now = int(time.time() * 1000)  # PostgreSQL judges leases by its own clock: a real time
    assert start(where, node("a"), now) == 0
    add_session(where, "sa", "a")
    # A second node starting does not touch the first one's game (the old code voided all).
    assert start(where, node("b"), now) == 0
    add_session(where, "sb", "b")
    assert states(where) == {"sa": "running", "sb": "running"}
    assert databases.read(where, ops.session_node, "sa", now) == "ws://a/"
    # a goes silent for most of its lease: b's heartbeat leaves its game alone.
    age(where, "a", LEASE - 2000)
    assert databases.run(where, ops.node_heartbeat, "b", "b" * 16, now) == (True, 0)
    assert states(where)["sa"] == "running"
    # Past a's lease, b's heartbeat voids a's game only.
    age(where, "a", 4000)
    assert databases.run(where, ops.node_heartbeat, "b", "b" * 16, now) == (True, 1)
    assert states(where) == {"sa": "voided", "sb": "running"}
    assert databases.read(where, ops.session_node, "sa", now) is None
    # a comes back from a long stall: it learns it was found gone, and rejoins.
    alive, _ = databases.run(where, ops.node_heartbeat, "a", "a" * 16, now)
    assert alive is False
    databases.run(where, ops.rejoin_node, node("a"), now)
    assert {r[0] for r in databases.sql(where, "SELECT id FROM nodes")} == {"a", "b"}
    assert states(where)["sb"] == "running"


def test_a_restart_under_the_same_url_or_a_process_known_gone_voids_at_once(
    tmp_path: Path,
) -> None:
    where = databases.location(tmp_path, "n.db")
    databases.create(where)
    start(where, node("a", url="ws://host:1/"), 1000)
    start(where, node("b", url="ws://host:2/"), 1000)
    start(where, node("c", url="ws://host:3/"), 1000)
    add_session(where, "sa", "a")
    add_session(where, "sb", "b")
    add_session(where, "sc", "c")
    # a restarts (new id, same URL): its earlier life's game is void, no lease waited for.
    assert start(where, node("a2", url="ws://host:1/"), 1500) == 1
    # b's process is known gone (same machine): void at once, c's game untouched.
    assert databases.run(where, ops.node_heartbeat, "c", "c" * 16, 1600, ["b"]) == (True, 1)
    assert states(where) == {"sa": "voided", "sb": "voided", "sc": "running"}


def test_keys_of_gone_nodes_are_retired_unless_a_live_node_signs_with_them(
    tmp_path: Path,
) -> None:
    where = databases.location(tmp_path, "n.db")
    databases.create(where)
    shared = "5" * 16
    start(where, node("a", kid=shared), 1000)
    start(where, node("b", kid=shared), 1000)  # a copy of one key file
    start(where, node("c", kid="c" * 16), 1000)
    databases.run(where, ops.record_signing_key, "c" * 16, b"c" * 32, 1000)
    databases.run(where, ops.node_heartbeat, "b", shared, 1000, ["a", "c"])
    retired = dict(databases.sql(where, "SELECT kid, retired_at FROM signing_keys"))
    assert retired[shared] is None  # b still signs with it
    assert retired["c" * 16] == 1000


def test_a_second_running_game_is_refused_whichever_node_asks(tmp_path: Path) -> None:
    where = databases.location(tmp_path, "n.db")
    databases.create(where)
    start(where, node("a"), 1000)
    start(where, node("b"), 1000)
    user = databases.run(where, ops.insert_user, "kim", "hash", 0)
    add_session(where, "s1", "a", user)
    with pytest.raises(Exception, match="already have a game"):
        add_session(where, "s2", "b", user)


def test_shared_attempts_are_counted_one_by_one_when_raced(tmp_path: Path) -> None:
    """Ten connections (as ten nodes' writers) charge one budget of 3 at the same moment."""
    where = databases.location(tmp_path, "n.db")
    databases.create(where)
    target = databases.resolve(where)
    barrier = threading.Barrier(10)
    outcomes: list[str] = []

    def charge() -> None:
        conn = connect(target)
        try:
            barrier.wait()
            with transaction(conn):
                ops.charge_attempts(conn, [("login_account", "kim", 3, 60_000, "wait")], 5000)
            outcomes.append("charged")
        except RateLimitedError:
            outcomes.append("refused")
        finally:
            conn.close()

    threads = [threading.Thread(target=charge) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["charged"] * 3 + ["refused"] * 7
    # A refund gives one back; the window's end gives all back.
    ids = [r[0] for r in databases.sql(where, "SELECT id FROM attempts")]
    databases.run(where, ops.refund_attempts, ids[:1])
    charge_args = ([("login_account", "kim", 3, 60_000, "wait")], 6000)
    databases.run(where, ops.charge_attempts, *charge_args)
    with pytest.raises(RateLimitedError, match="wait"):
        databases.run(where, ops.charge_attempts, *charge_args)
    databases.run(where, ops.charge_attempts, charge_args[0], 5000 + 60_001)
    assert databases.run(where, ops.forget_attempts, 6001) == 3
