"""The store: every read and write of the database, behind one typed async interface.

    Store(location, writer=...)       `--db`: a SQLite file or a postgresql:// URL (engine.py)
      named methods                   one per thing a caller needs; records.py types the rows;
                                      most are `writes(ops.X)` / `reads(ops.X)` (writer.py):
                                      the operation's own signature, written once
        -> ops/                       the operations, in SQL both engines run, by table
        -> writer.py                  one writer (process, thread or inline) and readers
        -> sqlite.py | postgres.py    connections and schema, per engine

Every caller (the server, /admin, the command line, key reloads) goes through a `Store`: no
SQL is written anywhere else, and within a process there is one writer. Writes that a reply
depends on are awaited until their COMMIT; the rows of a running game are queued for the next
group commit (`*_soon`). The command line uses a `Store` with the inline writer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from ..core.rules import GameSettings
from . import ops, postgres, sqlite
from .engine import Location
from .ops import DELETED_NAME, FOREVER
from .records import (
    AuditEntry,
    BoardEntry,
    Export,
    Flag,
    MyResult,
    NodeInfo,
    Result,
    SavedResult,
    SigningKey,
    User,
    UserSummary,
)
from .writer import ANSWER_TIMEOUT_S, STORE_WRITERS, Transport, WriterMode, reads, writes

__all__ = [
    "ANSWER_TIMEOUT_S",
    "DELETED_NAME",
    "FOREVER",
    "STORE_WRITERS",
    "AuditEntry",
    "BoardEntry",
    "Export",
    "Flag",
    "Location",
    "MyResult",
    "NodeInfo",
    "Result",
    "SavedResult",
    "SigningKey",
    "Store",
    "User",
    "UserSummary",
    "WriterMode",
]


class Store(Transport):
    """The database, as every part of scoreserver uses it. See the module docstring."""

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Store]:
        """Open an inline store for the length of a block (the command line, start-up). The
        writer process and thread are run by a nursery instead (`run`), as the server does."""
        if self.threaded:
            raise ValueError("opened() is for the inline writer; start run() in a nursery")
        self.open()
        self._running = True
        try:
            yield self
        finally:
            self._running = False
            self._close()

    # -- start-up and settings --

    async def start_node(
        self,
        node: NodeInfo,
        now: int,
        demo_id: str,
        demo: GameSettings,
        public_key: bytes,
        gone: list[str],
    ) -> tuple[int, int, list[SigningKey]]:
        """Register a starting node (ops.start_node): sessions of nodes gone are voided, an
        empty database gets the demo game. Returns (voided, key lifetime, every key)."""
        if self.location.dialect == "sqlite":
            await self._read(_check_integrity)
        return await self._write(ops.start_node, node, now, demo_id, demo, public_key, gone)

    # Renew this node's lease; void the sessions of nodes whose lease ran out or that
    # are known gone.
    node_heartbeat = writes(ops.node_heartbeat)
    rejoin_node = writes(ops.rejoin_node)
    leave_node = writes(ops.leave_node)
    # The URL of the live node running `session_id`, if any node runs it.
    session_node = reads(ops.session_node)
    nodes = reads(ops.list_nodes)

    async def charge_attempts(
        self, charges: list[tuple[str, str, int, int, str]], now: int
    ) -> list[int]:
        """Charge shared budgets (ops.charge_attempts); RateLimitedError when one is spent.
        On PostgreSQL in a short transaction of its own, outside the writer's batches: a
        login waits for nothing but charges of its own keys."""
        if self.location.dialect == "postgres" and self.threaded:
            return await self._read(ops.charge_attempts_alone, charges, now)
        return await self._write(ops.charge_attempts, charges, now)

    refund_attempts = writes(ops.refund_attempts)
    forget_attempts = writes(ops.forget_attempts)

    async def watch_notices(
        self,
        deliver: Callable[[str], None],
        *,
        task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call `deliver(payload)` on the event loop for each notice any node sends (ops.notify)
        until cancelled. PostgreSQL only: started(True) once listening; on SQLite started(False)
        at once (its nodes poll instead)."""
        if self.location.dialect != "postgres":
            task_status.started(False)
            return
        await postgres.listen(self.location.target, ops.CHANNEL, deliver, task_status)

    use_signing_key = writes(ops.use_signing_key)
    # Record a key a node signs with (every node verifies with it).
    record_signing_key = writes(ops.record_signing_key)
    # How long a retired key still verifies, and every key ever recorded.
    key_history = reads(ops.key_history)
    games = reads(ops.list_games)
    game = reads(ops.get_game)
    settings_fingerprint = reads(ops.settings_fingerprint)
    board_fingerprint = reads(ops.board_fingerprint)
    get_setting = reads(ops.get_setting)
    # -- accounts --

    add_user = writes(ops.insert_user)
    user_by_name = reads(ops.user_by_name)
    user_by_id = reads(ops.user_by_id)
    add_login_token = writes(ops.insert_login_token)
    user_by_login_token = reads(ops.user_by_login_token)
    users = reads(ops.list_users)
    player_page = reads(ops.player_page)
    games_in_use = reads(ops.games_in_use)
    review_summary = reads(ops.review_summary)
    erase_own_account = writes(ops.erase_own_account)
    # -- game sessions --

    # ConflictError if the user already has a game of this kind running (on any node).
    add_session = writes(ops.insert_session)

    def add_point_soon(
        self, session_id: str, seq: int, server_ts: int, client_ts: int, token: str
    ) -> None:
        self._write_soon(ops.insert_point, session_id, seq, server_ts, client_ts, token)

    def add_rejected_point_soon(
        self, session_id: str, server_ts: int, client_ts: int, reason: str
    ) -> None:
        self._write_soon(ops.insert_rejected_point, session_id, server_ts, client_ts, reason)

    def add_burst_soon(self, session_id: str, at_ms: int) -> None:
        self._write_soon(ops.insert_burst, session_id, at_ms)

    async def end_session(
        self, session_id: str, end_token: str | None, ended_at: int, reason: str
    ) -> bool:
        """Committed with every point queued before it (writes keep their order). False: the
        session was no longer running (voided by another node), and nothing changed."""
        return bool(await self._write(ops.end_session, session_id, end_token, ended_at, reason))

    session = reads(ops.load_session)
    session_by_prefix = reads(ops.session_by_prefix)
    save_result = writes(ops.save_result)
    my_results = reads(ops.my_results)
    review_range = reads(ops.review_range)
    # -- flags --

    add_flag = writes(ops.insert_flag)
    flags = reads(ops.list_flags)
    flag = reads(ops.get_flag)
    # -- boards and results --

    leaderboard = reads(ops.leaderboard)
    results = reads(ops.list_results)
    audit = reads(ops.list_audit)
    # -- the results log (its entries are written with what they record) --

    log_size = reads(ops.log_size)
    log_entries = reads(ops.log_entries)
    add_checkpoint = writes(ops.add_checkpoint)
    latest_checkpoint = reads(ops.latest_checkpoint)
    log_checkpoints = reads(ops.log_checkpoints)
    log_audit_rows = reads(ops.log_audit_rows)
    log_origin = writes(ops.log_origin)
    log_indexes = reads(ops.log_indexes)
    # -- decisions (each with its audit row, in one transaction) --

    decide_flag = writes(ops.decide_flag)
    decide_ban = writes(ops.decide_ban)
    decide_delete = writes(ops.decide_delete)
    decide_hidden = writes(ops.decide_hidden)
    decide_new_game = writes(ops.decide_new_game)

    async def decide_game_changes(
        self,
        game_id: str,
        changes: Mapping[str, object],
        *,
        actor: str,
        audit_note: str,
        now: int,
    ) -> GameSettings:
        return await self._write(
            ops.decide_game_changes,
            game_id,
            dict(changes),
            actor=actor,
            audit_note=audit_note,
            now=now,
        )

    decide_archive_game = writes(ops.decide_archive_game)
    decide_remove_game = writes(ops.decide_remove_game)
    decide_reset_code = writes(ops.decide_reset_code)
    reset_code_holds = reads(ops.reset_code_holds)
    use_reset_code = writes(ops.use_reset_code)
    record_command = writes(ops.record_command)
    # -- the admin console --

    set_admin_password = writes(ops.set_admin_password)

    async def admin_password_hash(self) -> str | None:
        return await self._read(ops.get_setting, ops.ADMIN_PASSWORD_SETTING)

    add_admin_session = writes(ops.insert_admin_session)
    admin_state = reads(ops.admin_state)
    end_admin_sessions = writes(ops.end_admin_sessions)
    # -- files --

    async def backup(self, target: Path) -> str:
        """A consistent copy of the live database in the new file `target`, readable by its
        owner only; writers go on meanwhile. SQLite: a database file (online backup,
        integrity checked). PostgreSQL: pg_dump's custom format (one snapshot; restore with
        pg_restore), checked by reading its table of contents back. Returns what it is."""
        if self.location.dialect == "sqlite":
            await self._read(sqlite.backup, target)
            return "a SQLite database, integrity checked"
        await trio.to_thread.run_sync(postgres.dump, self.location.target, target)
        return "a pg_dump archive (restore with pg_restore), its contents checked"


def _check_integrity(conn: Any) -> None:
    sqlite.check_integrity(conn)
