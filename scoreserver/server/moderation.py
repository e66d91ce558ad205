"""Admin decisions: resolve flags, ban and unban, hide and restore scores, change games.

The command line and the /admin page both call these, so a decision has one meaning whichever
door it came through. Here is the policy (a note is required, how long a ban lasts, the words
of the audit); the store runs each decision in one transaction together with its audit row:
there is no decision without its record, and no record of a decision that did not happen.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from scoreserver.core.rules import GameSettings
from scoreserver.errors import NotFoundError
from scoreserver.store import FOREVER, Export, Flag, Result, Store

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who decided, and through which door ('cli' or 'admin page')."""

    name: str
    via: str

    def __str__(self) -> str:
        return f"{self.name} ({self.via})"


def _now() -> int:
    return int(time.time() * 1000)


def _ban_until(days: float | None, now: int) -> int:
    if days is None:
        return FOREVER
    if days <= 0:
        raise ValueError("--days must be positive")
    return now + int(days * DAY_MS)


def _length(days: float | None) -> str:
    if days is None:
        return "indefinitely"
    return f"for {days:g} day" if days == 1 else f"for {days:g} days"


def _require_note(note: str) -> str:
    """Every decision is audited with why it was taken: no note, no decision."""
    note = note.strip()
    if not note:
        raise ValueError("a decision needs a note (why), for the audit")
    return note


def settings_words(values: dict[str, object]) -> str:
    """Game settings for the audit's note column: `duration 30 s, burst threshold 12, ...`."""
    parts = []
    for key, value in values.items():
        if value is None:
            continue
        name = key.removesuffix("_ms").replace("_", " ")
        if key.endswith("_ms") and isinstance(value, int):
            unit = f"{value // 1000} s" if value >= 1000 and value % 1000 == 0 else f"{value} ms"
            parts.append(f"{name} {unit}")
        else:
            parts.append(f"{name} {value}")
    return ", ".join(parts)


async def resolve_flag(
    store: Store,
    flag_id: int,
    *,
    ban: bool,
    note: str,
    actor: Actor,
    days: float | None = None,
) -> Flag:
    """Clear a flag (the account's scores show again) or ban its account."""
    note = _require_note(note)
    if days is not None and not ban:
        raise ValueError("days go with a ban")
    now = _now()
    decision = f"ban {_length(days)}" if ban else "clear"
    return await store.decide_flag(
        flag_id,
        ban_until=_ban_until(days, now) if ban else None,
        note=note,
        actor=str(actor),
        audit_note=f"{decision}; {note}",
        now=now,
    )


async def ban_user(
    store: Store, name: str, *, actor: Actor, note: str, days: float | None = None
) -> int:
    """Ban an account; returns until when (FOREVER: until unbanned)."""
    note = _require_note(note)
    now = _now()
    until = _ban_until(days, now)
    await store.decide_ban(
        name,
        ban_until=until,
        note=note,
        actor=str(actor),
        audit_note=f"{_length(days)}; {note}",
        now=now,
    )
    return until


async def unban_user(store: Store, name: str, *, actor: Actor, note: str) -> None:
    note = _require_note(note)
    await store.decide_ban(
        name, ban_until=None, note=note, actor=str(actor), audit_note=note, now=_now()
    )


async def delete_user(store: Store, name: str, *, actor: Actor, note: str) -> int:
    """Erase an account's personal data (ops.erase_user); audited. Returns its id."""
    note = _require_note(note)
    return await store.decide_delete(name, actor=str(actor), note=note, now=_now())


async def set_score_hidden(
    store: Store, session_id: str, hidden: bool, *, actor: Actor, note: str
) -> str:
    """Hide or restore the score of a session (its id, or an unambiguous prefix of it);
    returns the session's whole id."""
    note = _require_note(note)
    return await store.decide_hidden(session_id, hidden, actor=str(actor), note=note, now=_now())


# A game id goes into URLs (/board/GAME_ID, /?game=GAME_ID) and file names of exports.
GAME_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESET_CODE_TTL_MS = 24 * 3_600_000
# A reset code is read aloud or copied from a screen: no 0/O, 1/I/L.
RESET_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
RESET_CODE_LENGTH = 12  # about 59 bits; guesses are charged like logins'


def reset_code_hash(code: str) -> bytes:
    """The stored form of a reset code, as a player may type it (any case, with or without
    dashes and spaces)."""
    canonical = "".join(c for c in code.upper() if c not in "- ")
    return hashlib.sha256(canonical.encode("utf-8")).digest()


async def issue_reset_code(store: Store, name: str, *, actor: Actor) -> str:
    """A one-time code with which `name` sets a new password on the demo page (or POST
    /api/reset-password), good for 24 hours; the last one issued is the only one that works."""
    raw = "".join(secrets.choice(RESET_ALPHABET) for _ in range(RESET_CODE_LENGTH))
    code = "-".join(raw[i : i + 4] for i in range(0, RESET_CODE_LENGTH, 4))
    now = _now()
    await store.decide_reset_code(
        name, reset_code_hash(code), now + RESET_CODE_TTL_MS, actor=str(actor), now=now
    )
    return code


async def archive_game(store: Store, game_id: str, archived: bool, *, actor: Actor) -> None:
    await store.decide_archive_game(game_id, archived, actor=str(actor), now=_now())


async def remove_game(store: Store, game_id: str, *, actor: Actor) -> None:
    await store.decide_remove_game(game_id, actor=str(actor), now=_now())


async def add_game(store: Store, game_id: str, settings: GameSettings, *, actor: Actor) -> None:
    if GAME_ID.fullmatch(game_id) is None:
        raise ValueError(
            "a game id is 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or"
            " digit (it goes into URLs: /board/GAME_ID)"
        )
    await store.decide_new_game(
        game_id,
        settings,
        actor=str(actor),
        audit_note=settings_words(asdict(settings)),
        now=_now(),
    )


async def set_game(
    store: Store, game_id: str, changes: dict[str, object], *, actor: Actor
) -> GameSettings:
    if not changes:
        raise ValueError("nothing to change")
    return await store.decide_game_changes(
        game_id, changes, actor=str(actor), audit_note=settings_words(changes), now=_now()
    )


# --- export ---------------------------------------------------------------------------------

WINDOWS_MS = {"day": 86_400_000, "week": 7 * 86_400_000, "all": None}
BOARD_COLUMNS = ("rank", "player", "score", "time", "session_id")
RESULT_COLUMNS = ("session_id", "player", "score", "time", "shown", "why_not")


async def export(store: Store, game_id: str, window: str = "all") -> Export:
    """A game's board as shown (rank, player, score, time) and every result with its session
    id, for prizes and records. Times are UTC, ISO 8601."""
    if window not in WINDOWS_MS:
        raise ValueError("window is day, week or all")
    if await store.game(game_id) is None:
        raise NotFoundError(f"no game {game_id!r}")
    now = _now()
    span = WINDOWS_MS[window]
    since = now - span if span else 0
    board = await store.leaderboard(game_id, now, limit=-1, since=since, with_sessions=True)
    results = await store.results(game_id, since)
    return {
        "game_id": game_id,
        "window": window,
        "exported_at": _iso(now),
        "board": [
            dict(
                zip(
                    BOARD_COLUMNS,
                    (e["rank"], e["name"], e["score"], _iso(e["created_at"]), e["session_id"]),
                    strict=True,
                )
            )
            for e in board
        ],
        "results": [
            dict(
                zip(
                    RESULT_COLUMNS,
                    (
                        r["session_id"],
                        r["name"],
                        r["score"],
                        _iso(r["created_at"]),
                        not (r["hidden"] or r["banned"] or r["held"]),
                        _why_not(r),
                    ),
                    strict=True,
                )
            )
            for r in results
        ],
    }


def _why_not(result: Result) -> str:
    reasons = [
        word
        for word, key in (("hidden", "hidden"), ("banned", "banned"), ("under review", "held"))
        if result[key]  # type: ignore[literal-required]
    ]
    return ", ".join(reasons)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


# What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection"): a cell that
# begins with one of these is written with a leading apostrophe, which spreadsheets show as
# text. The full-width forms are there because some spreadsheets fold them to the ASCII ones.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def neutralised(value: object) -> object:
    """A CSV cell a spreadsheet shows as written and never evaluates (numbers as they are)."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def export_csv(data: Export, what: str = "board") -> str:
    """One table of `export` as CSV: the board (default) or every result. Every text cell is
    quoted and a formula's first character neutralised (`neutralised`); the JSON export keeps
    every value exact."""
    out = io.StringIO()
    columns = BOARD_COLUMNS if what == "board" else RESULT_COLUMNS
    writer = csv.DictWriter(
        out, fieldnames=columns, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC
    )
    writer.writeheader()
    for row in data["board"] if what == "board" else data["results"]:
        writer.writerow({key: neutralised(value) for key, value in row.items()})
    return out.getvalue()
