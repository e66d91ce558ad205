"""The command line as an operator's terminal shows it: every table of every command fits 80
columns without wrapping an id or a header, and `| head -1` ends every command quietly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.cells import cell_len

from scoreserver.core.rules import GameSettings
from scoreserver.store import ops
from scoreserver.store.connect import open_database
from scoreserver.store.engine import transaction

LONG_GAME = "sprint-weekend-2026"
LONG_NAME = "Bartholomew the Magnificent"


@pytest.fixture(scope="module")
def full_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with something in every table a command lists: long names, long game ids,
    every flag reason, long notes; enough rows that a command's output fills a pipe."""
    path = tmp_path_factory.mktemp("cli") / "full.db"
    conn = open_database(str(path))
    now = int(time.time() * 1000)
    reasons = ["robotic_rhythm", "inhuman_timing", "superhuman_rate", "implausible_score"]
    with transaction(conn):
        ops.insert_game(conn, "demo", GameSettings(duration_ms=30000, title="Target Rush"), now)
        ops.insert_game(conn, LONG_GAME, GameSettings(duration_ms=20000, max_score=400), now)
        ops.record_signing_key(conn, "ab" * 8, b"k" * 32, now - 86_400_000)
        ops.record_signing_key(conn, "cd" * 8, b"l" * 32, now)
        ops.retire_other_keys(conn, "cd" * 8, now)
        for i in range(2400):  # every listing past a pipe's 64 KiB: `head` closes it early
            name = [LONG_NAME, "东京の星", "zoë", "alice"][i % 4] + (f" {i}" if i >= 4 else "")
            user = ops.insert_user(conn, name[:32], "x", now - i * 3_600_000)
            session = f"{i:032x}"
            game = (LONG_GAME, "demo")[i % 2]
            ops.insert_session(
                conn, session, game, user, None, None, GameSettings(duration_ms=1000), now, now, "t"
            )
            ops.end_session(conn, session, "end", now, "time_up")
            ops.save_result(conn, session, game, user, 100 + i, now)
            ops.insert_flag(  # one in three holds its player off the board
                conn,
                reasons[i % 4],
                now,
                game_id=game,
                session_id=session,
                user_id=user,
                holds=i % 3 == 0,
            )
            ops.insert_audit(
                conn,
                "admin from 192.168.100.200",
                "scores hide",
                session,
                "a long note that explains in detail why the reviewer decided this way " * 2,
                now,
            )
    conn.close()
    return path


COMMANDS = (
    ["users", "list"],
    ["games", "list"],
    ["games", "show"],
    ["flags", "list"],
    ["flags", "list", "--open"],
    ["flags", "show", "1"],
    ["keys", "list"],
    ["audit"],
    ["leaderboard", "demo", "--limit", "100"],
    ["export", "demo"],
    ["export", "demo", "--format", "json"],
)


def run(db: Path, args: list[str], columns: int = 80) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scoreserver.ops.cli", *args, "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": str(columns)},
    )


@pytest.mark.parametrize("args", [c for c in COMMANDS if c[0] not in ("export",)], ids=" ".join)
def test_every_table_fits_80_columns_without_wrapping_an_id_or_a_header(
    full_db: Path, args: list[str]
) -> None:
    done = run(full_db, args)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    too_wide = [line for line in lines if cell_len(line) > 80]
    assert too_wide == [], too_wide[:3]
    text = done.stdout
    if args[0] == "flags" and len(args) == 2 or args[:2] == ["flags", "list"]:
        header = lines[0].split()
        assert header[:2] == ["id", "when"] and "reason" in header and "game" in header
        # Every reason and every game id whole on one line, never split.
        for reason in ("robotic_rhythm", "inhuman_timing", "superhuman_rate", "implausible_score"):
            assert re.search(rf"\b{reason}\b", text), reason
        assert LONG_GAME in text
    if args == ["users", "list"]:
        assert lines[0].split() == ["id", "name", "created", "scores", "flags", "banned", "until"]
    if args == ["audit"]:
        assert "scores hide" in text
        assert re.search(r"\b0{12}\b", text)  # a session target, whole (its 12-digit prefix)
    if args[0] == "leaderboard":
        rows = [line for line in lines[2:] if line.strip()]
        # Session ids whole (`scores hide` takes them), one a row.
        assert len(re.findall(r"\b[0-9a-f]{32}\b", text)) == len(rows) > 5, text
    if args == ["games", "list"]:
        assert LONG_GAME in text and "Target Rush" in text and "400" in text


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_head_dash_1_ends_every_command_quietly(full_db: Path, args: list[str]) -> None:
    command = [sys.executable, "-m", "scoreserver.ops.cli", *args, "--db", str(full_db)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()  # what `head -1` does after its line
        stderr = process.stderr.read()
        code = process.wait(timeout=60)
    assert first, args
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert code in (0, 141), (code, stderr)
