"""Games and their settings rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from ...core.rules import GameSettings
from ...errors import ConflictError, NotFoundError
from ..engine import INTEGRITY_ERRORS, Connection
from .common import notify

GAME_FIELDS = (
    "duration_ms",
    "burst_window_ms",
    "burst_threshold",
    "burst_limit",
    "burst_period_ms",
    "latency_ms",
    "submission_window_ms",
    "human_floor_ms",
    "min_rhythm_cv",
    "max_score",
    "hold_outliers",
    "title",
    "human_max_rate",
    "review_above",
    "review_min_players",
    "review_account_age_h",
    "archived_at",
)


def _game_values(settings: GameSettings) -> dict[str, object]:
    """A game's columns: flags as 0/1 (an INTEGER on SQLite, a BIGINT on PostgreSQL)."""
    values = asdict(settings)
    values["hold_outliers"] = int(values["hold_outliers"])
    return values


def insert_game(conn: Connection, game_id: str, settings: GameSettings, now: int) -> None:
    values = _game_values(settings)
    try:
        conn.execute(
            f"INSERT INTO games (id, {', '.join(GAME_FIELDS)}, created_at, updated_at)"
            f" VALUES (?, {', '.join('?' for _ in GAME_FIELDS)}, ?, ?)",
            (game_id, *(values[f] for f in GAME_FIELDS), now, now),
        )
    except INTEGRITY_ERRORS:
        raise ConflictError(f"game {game_id!r} exists (use `games set`)") from None
    notify(conn, "settings")


def update_game(
    conn: Connection, game_id: str, changes: Mapping[str, object], now: int
) -> GameSettings:
    current = get_game(conn, game_id)
    if current is None:
        raise NotFoundError(f"no game {game_id!r}")
    merged = GameSettings(**{**asdict(current), **changes})  # validates
    values = _game_values(merged)
    conn.execute(
        f"UPDATE games SET {', '.join(f'{f} = ?' for f in GAME_FIELDS)}, updated_at = ?"
        " WHERE id = ?",
        (*(values[f] for f in GAME_FIELDS), now, game_id),
    )
    notify(conn, "settings")
    notify(conn, "boards")
    return merged


def _settings(row: Any) -> GameSettings:
    values = {f: row[f] for f in GAME_FIELDS}
    values["hold_outliers"] = bool(values["hold_outliers"])
    return GameSettings(**values)


def get_game(conn: Connection, game_id: str) -> GameSettings | None:
    row = conn.execute("SELECT * FROM games WHERE id = ?", (game_id,)).fetchone()
    return None if row is None else _settings(row)


def list_games(conn: Connection) -> dict[str, GameSettings]:
    return {row["id"]: _settings(row) for row in conn.execute("SELECT * FROM games ORDER BY id")}
