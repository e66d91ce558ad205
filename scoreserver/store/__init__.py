"""The store: every read and write of the database, behind one typed async interface.

    Store(location, writer=...)       `--db`: a SQLite file or a postgresql:// URL (engine.py)
      named methods                   one per thing a caller needs; records.py types the rows
        -> ops.py                     the operations, in SQL both engines run
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

from ..core.rules import GameSettings, SessionRecord
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
from .writer import ANSWER_TIMEOUT_S, STORE_WRITERS, Transport, WriterMode

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

    async def node_heartbeat(
        self, node_id: str, kid: str, now: int, gone: list[str]
    ) -> tuple[bool, int]:
        """Renew this node's lease; void the sessions of nodes whose lease ran out or that
        are known gone."""
        return await self._write(ops.node_heartbeat, node_id, kid, now, gone)

    async def rejoin_node(self, node: NodeInfo, now: int) -> int:
        return await self._write(ops.rejoin_node, node, now)

    async def leave_node(self, node_id: str) -> None:
        await self._write(ops.leave_node, node_id)

    async def session_node(self, session_id: str, now: int) -> str | None:
        """The URL of the live node running `session_id`, if any node runs it."""
        return await self._read(ops.session_node, session_id, now)

    async def nodes(self) -> list[dict[str, Any]]:
        return await self._read(ops.list_nodes)

    async def charge_attempts(
        self, charges: list[tuple[str, str, int, int, str]], now: int
    ) -> list[int]:
        """Charge shared budgets (ops.charge_attempts); RateLimitedError when one is spent.
        On PostgreSQL in a short transaction of its own, outside the writer's batches: a
        login waits for nothing but charges of its own keys."""
        if self.location.dialect == "postgres" and self.threaded:
            return await self._read(ops.charge_attempts_alone, charges, now)
        return await self._write(ops.charge_attempts, charges, now)

    async def refund_attempts(self, ids: list[int]) -> None:
        await self._write(ops.refund_attempts, ids)

    async def forget_attempts(self, before: int) -> int:
        return await self._write(ops.forget_attempts, before)

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

    async def use_signing_key(
        self, kid: str, public_key: bytes, now: int
    ) -> tuple[int, list[SigningKey]]:
        return await self._write(ops.use_signing_key, kid, public_key, now)

    async def record_signing_key(self, kid: str, public_key: bytes, now: int) -> None:
        """Record a key a node signs with (every node verifies with it)."""
        await self._write(ops.record_signing_key, kid, public_key, now)

    async def key_history(self) -> tuple[int, list[SigningKey]]:
        """How long a retired key still verifies, and every key ever recorded."""
        return await self._read(ops.key_history)

    async def games(self) -> dict[str, GameSettings]:
        return await self._read(ops.list_games)

    async def game(self, game_id: str) -> GameSettings | None:
        return await self._read(ops.get_game, game_id)

    async def settings_fingerprint(self) -> tuple[object, ...]:
        return await self._read(ops.settings_fingerprint)

    async def board_fingerprint(self) -> tuple[object, ...]:
        return await self._read(ops.board_fingerprint)

    async def get_setting(self, key: str) -> str | None:
        return await self._read(ops.get_setting, key)

    # -- accounts --

    async def add_user(self, name: str, password_hash: str, now: int) -> int:
        return await self._write(ops.insert_user, name, password_hash, now)

    async def user_by_name(self, name: str) -> User | None:
        return await self._read(ops.user_by_name, name)

    async def user_by_id(self, user_id: int) -> User | None:
        return await self._read(ops.user_by_id, user_id)

    async def add_login_token(
        self, token_hash: bytes, user_id: int, now: int, expires_at: int
    ) -> None:
        await self._write(ops.insert_login_token, token_hash, user_id, now, expires_at)

    async def user_by_login_token(self, token_hash: bytes, now: int) -> User | None:
        return await self._read(ops.user_by_login_token, token_hash, now)

    async def users(
        self, *, limit: int = -1, offset: int = 0, search: str | None = None
    ) -> list[UserSummary]:
        return await self._read(ops.list_users, limit=limit, offset=offset, search=search)

    async def player_page(self, user_id: int, now: int) -> dict[str, Any]:
        return await self._read(ops.player_page, user_id, now)

    async def games_in_use(self) -> dict[str, dict[str, Any]]:
        return await self._read(ops.games_in_use)

    async def review_summary(self) -> dict[str, Any]:
        return await self._read(ops.review_summary)

    async def erase_own_account(self, user_id: int, now: int) -> None:
        await self._write(ops.erase_own_account, user_id, now)

    # -- game sessions --

    async def add_session(
        self,
        session_id: str,
        game_id: str,
        user_id: int | None,
        guest_addr: str | None,
        user_agent: str | None,
        settings: GameSettings,
        started_at: int,
        client_start_ts: int,
        start_token: str,
        node_id: str | None = None,
    ) -> None:
        """ConflictError if the user already has a game of this kind running (on any node)."""
        await self._write(
            ops.insert_session,
            session_id,
            game_id,
            user_id,
            guest_addr,
            user_agent,
            settings,
            started_at,
            client_start_ts,
            start_token,
            node_id,
        )

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

    async def session(self, session_id: str) -> SessionRecord | None:
        return await self._read(ops.load_session, session_id)

    async def session_by_prefix(self, prefix: str) -> str:
        return await self._read(ops.session_by_prefix, prefix)

    async def save_result(
        self, session_id: str, game_id: str, user_id: int | None, score: int, now: int
    ) -> SavedResult:
        return await self._write(ops.save_result, session_id, game_id, user_id, score, now)

    async def my_results(self, user_id: int, now: int) -> list[MyResult]:
        return await self._read(ops.my_results, user_id, now)

    async def review_range(self, game_id: str, now: int) -> dict[str, object] | None:
        return await self._read(ops.review_range, game_id, now)

    # -- flags --

    async def add_flag(self, reason: str, now: int, **fields: Any) -> int:
        return await self._write(ops.insert_flag, reason, now, **fields)

    async def flags(
        self,
        *,
        open_only: bool = False,
        game_id: str | None = None,
        user_name: str | None = None,
        limit: int = -1,
        offset: int = 0,
    ) -> list[Flag]:
        return await self._read(
            ops.list_flags,
            open_only=open_only,
            game_id=game_id,
            user_name=user_name,
            limit=limit,
            offset=offset,
        )

    async def flag(self, flag_id: int) -> Flag:
        return await self._read(ops.get_flag, flag_id)

    # -- boards and results --

    async def leaderboard(
        self,
        game_id: str,
        now: int,
        *,
        limit: int = 10,
        offset: int = 0,
        around: int | None = None,
        since: int = 0,
        with_sessions: bool = False,
    ) -> list[BoardEntry]:
        return await self._read(
            ops.leaderboard,
            game_id,
            now,
            limit=limit,
            offset=offset,
            around=around,
            since=since,
            with_sessions=with_sessions,
        )

    async def results(self, game_id: str, since: int = 0) -> list[Result]:
        return await self._read(ops.list_results, game_id, since)

    async def audit(
        self, *, limit: int = -1, offset: int = 0, newest_first: bool = False
    ) -> list[AuditEntry]:
        return await self._read(
            ops.list_audit, limit=limit, offset=offset, newest_first=newest_first
        )

    # -- decisions (each with its audit row, in one transaction) --

    async def decide_flag(
        self,
        flag_id: int,
        *,
        ban_until: int | None,
        note: str,
        actor: str,
        audit_note: str,
        now: int,
    ) -> Flag:
        return await self._write(
            ops.decide_flag,
            flag_id,
            ban_until=ban_until,
            note=note,
            actor=actor,
            audit_note=audit_note,
            now=now,
        )

    async def decide_ban(
        self, name: str, *, ban_until: int | None, note: str, actor: str, audit_note: str, now: int
    ) -> int:
        return await self._write(
            ops.decide_ban,
            name,
            ban_until=ban_until,
            note=note,
            actor=actor,
            audit_note=audit_note,
            now=now,
        )

    async def decide_delete(self, name: str, *, actor: str, note: str, now: int) -> int:
        return await self._write(ops.decide_delete, name, actor=actor, note=note, now=now)

    async def decide_hidden(
        self, session_id: str, hidden: bool, *, actor: str, note: str, now: int
    ) -> str:
        return await self._write(
            ops.decide_hidden, session_id, hidden, actor=actor, note=note, now=now
        )

    async def decide_new_game(
        self, game_id: str, settings: GameSettings, *, actor: str, audit_note: str, now: int
    ) -> None:
        await self._write(
            ops.decide_new_game, game_id, settings, actor=actor, audit_note=audit_note, now=now
        )

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

    async def decide_archive_game(
        self, game_id: str, archived: bool, *, actor: str, now: int
    ) -> GameSettings:
        return await self._write(ops.decide_archive_game, game_id, archived, actor=actor, now=now)

    async def decide_remove_game(self, game_id: str, *, actor: str, now: int) -> None:
        await self._write(ops.decide_remove_game, game_id, actor=actor, now=now)

    async def decide_reset_code(
        self, name: str, code_hash: bytes, expires_at: int, *, actor: str, now: int
    ) -> int:
        return await self._write(
            ops.decide_reset_code, name, code_hash, expires_at, actor=actor, now=now
        )

    async def reset_code_holds(self, name: str, code_hash: bytes, now: int) -> bool:
        return await self._read(ops.reset_code_holds, name, code_hash, now)

    async def use_reset_code(
        self, name: str, code_hash: bytes, password_hash: str, now: int
    ) -> User | None:
        return await self._write(ops.use_reset_code, name, code_hash, password_hash, now)

    async def record_command(
        self, actor: str, command: str, target: str | None, note: str | None, now: int
    ) -> None:
        await self._write(ops.record_command, actor, command, target, note, now)

    # -- the admin console --

    async def set_admin_password(self, password_hash: str, actor: str, now: int) -> int:
        return await self._write(ops.set_admin_password, password_hash, actor, now)

    async def admin_password_hash(self) -> str | None:
        return await self._read(ops.get_setting, ops.ADMIN_PASSWORD_SETTING)

    async def add_admin_session(
        self, token_hash: bytes, now: int, expires_at: int, address: str | None
    ) -> None:
        await self._write(ops.insert_admin_session, token_hash, now, expires_at, address)

    async def admin_state(self, token_hash: bytes, now: int) -> tuple[bool, bool]:
        return await self._read(ops.admin_state, token_hash, now)

    async def end_admin_sessions(self, token_hash: bytes | None = None) -> int:
        return await self._write(ops.end_admin_sessions, token_hash)

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
