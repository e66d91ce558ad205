"""The server's standing tasks beside the sockets: housekeeping, the settings and board
watchers, PostgreSQL's notices, the node heartbeat, leaving cleanly, and a reload of the
settings (SIGHUP, or a change noticed)."""

from __future__ import annotations

import logging

import trio

from scoreserver.errors import StoreError
from scoreserver.server.nodes import ATTEMPTS_KEEP_MS, ATTEMPTS_SWEEP_S, BEATS_PER_LEASE, gone_here
from scoreserver.server.rooms import Rooms
from scoreserver.server.service import Service

logger = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 60.0


async def housekeeping(service: Service, reanchor: bool) -> None:
    while True:
        await trio.sleep(HOUSEKEEPING_INTERVAL_S)
        if reanchor:
            service.clock.reanchor()
        service.forget_expired_sessions(service.clock.now_ms())


SETTINGS_POLL_S = 2.0


class Notices:
    """What other nodes (and the command line, and /admin) tell this one through PostgreSQL's
    NOTIFY (store/ops/common.py `notify`): `score GAME_ID` (a score saved: push that room's board),
    `boards` (a decision or a flag: re-read every watched board), `settings` (games or keys
    changed: reload). Ids only; the listener re-reads. On SQLite the pollers below do it all."""

    def __init__(self, service: Service, rooms: Rooms):
        self.service = service
        self.rooms = rooms
        self.settings_changed = trio.Event()
        self._games: set[str] = set()
        self._boards = False
        self._pending = trio.Event()

    def deliver(self, payload: str) -> None:
        """On the event loop, once per notice: note it and wake `run` (no I/O here)."""
        kind, _, target = payload.partition(" ")
        if kind == "score" and target:
            self._games.add(target)
        elif kind == "boards":
            self._boards = True
        elif kind == "settings":
            self.settings_changed.set()
        self._pending.set()

    async def run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending = trio.Event()
            games, self._games = self._games, set()
            boards, self._boards = self._boards, False
            if boards:
                self.rooms.boards_may_have_changed()
            else:
                for game_id in games:
                    self.rooms.score_saved(game_id)


async def watch_settings(service: Service, notices: Notices | None = None) -> None:
    """Notice `games add|set` and `keys rotate` by themselves, without waiting for SIGHUP: at
    once when a notice says so (PostgreSQL), else within SETTINGS_POLL_S."""
    # The baseline is what start-up loaded, so a change made since is not missed.
    seen = service.settings_fingerprint
    while True:
        if notices is None:
            await trio.sleep(SETTINGS_POLL_S)
        else:
            with trio.move_on_after(SETTINGS_POLL_S):
                await notices.settings_changed.wait()
            notices.settings_changed = trio.Event()
        try:
            now = await service.store.settings_fingerprint()
            if now != seen:
                seen = now
                await reload(service)
        except Exception:
            logger.exception("reading settings failed; keeping the current ones")


BOARD_POLL_S = 1.0
BOARD_REFRESH_S = 30.0


async def watch_boards(service: Service, rooms: Rooms) -> None:
    """Bring every open board up to date within about a second of a change made anywhere: a
    ban from the CLI (another process), a decision on /admin, a flag raised here or by another
    server. Every BOARD_REFRESH_S the boards are re-read regardless: a temporary ban that runs
    out writes nothing."""
    seen = await service.store.board_fingerprint()
    last_refresh = trio.current_time()
    while True:
        await trio.sleep(BOARD_POLL_S)
        try:
            now = await service.store.board_fingerprint()
        except Exception:
            logger.exception("reading the board fingerprint failed")
            continue
        if now != seen or trio.current_time() - last_refresh >= BOARD_REFRESH_S:
            seen, last_refresh = now, trio.current_time()
            rooms.boards_may_have_changed()


async def heartbeat(service: Service, rooms: Rooms) -> None:
    """Renew this node's lease (nodes.py) and sweep old shared attempts; notice nodes that are
    gone (their sessions are voided by the store). If this node finds itself gone (its loop
    stalled past the lease), its running games, already voided, end, and it rejoins."""
    node = service.node
    if node is None:
        return
    interval = node.lease_ms / 1000 / BEATS_PER_LEASE
    last_sweep = trio.current_time()
    while True:
        await trio.sleep(interval)
        now = service.clock.now_ms()
        try:
            alive, voided = await service.store.node_heartbeat(
                node.node_id,
                service.keys.kid.hex(),
                now,
                await gone_here(service.store, node.node_id),
            )
            if voided:
                logger.warning("voided %d running sessions of nodes that are gone", voided)
            if not alive:
                logger.error(
                    "this node was found gone (silent longer than its lease, %.0f s): its"
                    " running games were voided; ending them and rejoining",
                    node.lease_ms / 1000,
                )
                rooms.end_all_sessions()
                await service.store.rejoin_node(node, now)
            if trio.current_time() - last_sweep >= ATTEMPTS_SWEEP_S:
                last_sweep = trio.current_time()
                await service.store.forget_attempts(now - ATTEMPTS_KEEP_MS)
        except StoreError:
            return  # the writer failed: the server is stopping (_run_store)
        except Exception:
            logger.exception("the heartbeat failed; trying again")


async def leave(service: Service) -> None:
    """A clean stop: this node's row goes, so no one waits for its lease to run out."""
    if service.node is None:
        return
    try:
        await service.store.leave_node(service.node.node_id)
    except Exception:
        logger.warning("could not remove this node's row; its lease will run out")


async def reload(service: Service) -> None:
    """Pick up changed game settings and a rotated key (what SIGHUP does). One reload at a
    time: one that read the database before a change must not be applied after one that read
    it since (the watcher's and SIGHUP's raced, and an archived game came back archived)."""
    async with service.reloading:
        games, keys = await service.load_settings(service.clock.now_ms())
        service.apply_settings(games, keys)
