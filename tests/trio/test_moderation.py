"""Review and moderation: the CLI's commands and the admin page, and each decision's effect."""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from scoreserver.ops import cli
from scoreserver.server.app import Server
from scoreserver.server.background import reload
from scoreserver.store import ops
from scoreserver.store.connect import connect as db_connect
from scoreserver.store.connect import open_database

from .. import databases
from ..conftest import connect, http, register
from .test_end_to_end import new_player, play_quick, submit_http

pytestmark = pytest.mark.engines


def run_cli(
    server: Server,
    *args: str,
    stdin: str | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> tuple[int, str, str]:
    """Run `scoreserver ARGS --db <the server's db>` in-process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    if stdin is not None:
        assert monkeypatch is not None
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([*args, "--db", str(server.config.db_path)])
    return code, out.getvalue(), err.getvalue()


async def board(server: Server, game: str = "quick") -> list[tuple[str, int]]:
    async with http(server) as api:
        entries = (await api.get(f"/api/games/{game}/leaderboard")).json()["entries"]
    return [(e["name"], e["score"]) for e in entries]


async def scored_player(server: Server, name: str, points: int) -> dict[str, Any]:
    player = await new_player(server, name)
    async with connect(server) as client:
        await client.login(player)
        game = await play_quick(client, points, player["user_id"])
    result = await submit_http(server, {k: game[k] for k in ("start_token", "end_token", "points")})
    assert result["saved"]
    return {**player, "session_id": game["session_id"]}


async def cheat(server: Server, player: dict[str, Any]) -> int:
    """A tampered submission by `player`: rejected and flagged. Returns the flag id."""
    async with connect(server) as client:
        await client.login(player)
        game = await play_quick(client, 2, player["user_id"])
    game["points"][0]["client_ts"] += 9000
    body = {k: game[k] for k in ("start_token", "end_token", "points")}
    # Sent as the player (their login token): a failed submission flags whoever submitted it.
    assert (await submit_http(server, body, player["token"]))["reason"] == "timing_mismatch"
    flags = await server.service.store.flags()
    return int(flags[-1]["id"])


async def test_flag_hold_clear_and_ban(server: Server) -> None:
    with trio.fail_after(60):
        ada = await scored_player(server, "ada", 4)
        bo = await scored_player(server, "bo", 2)
        assert await board(server) == [("ada", 4), ("bo", 2)]
        flag_id = await cheat(server, ada)
        # An open flag holds ada's scores off the board; ranks close up.
        assert await board(server) == [("bo", 2)]
        code, out, _ = run_cli(server, "flags", "list", "--open")
        assert code == 0 and "submission:timing_mismatch" in out and "ada" in out
        code, out, _ = run_cli(server, "flags", "show", str(flag_id))
        assert code == 0
        assert "timing_mismatch" in out and "second  accepted" in out and "points issued" in out
        code, out, _ = run_cli(server, "flags", "show", str(flag_id), "--json")
        shown = json.loads(out)
        assert shown["detail"]["client_ts"] and len(shown["evidence"]["points"]) == 2
        # Clearing restores the scores.
        code, _, _ = run_cli(server, "flags", "resolve", str(flag_id), "--clear", "--note", "lag")
        assert code == 0
        assert await board(server) == [("ada", 4), ("bo", 2)]
        code, _, err = run_cli(server, "flags", "resolve", str(flag_id), "--clear", "--note", "x")
        assert code == 1 and "already resolved" in err
        # A ban hides the scores and refuses logins and submissions.
        second = await cheat(server, bo)
        code, _, _ = run_cli(
            server,
            "flags",
            "resolve",
            str(second),
            "--ban",
            "--days",
            "2",
            "--note",
            "shifted timestamps",
        )
        assert code == 0
        assert await board(server) == [("ada", 4)]
        async with http(server) as api:
            refused = await api.post(
                "/api/login", json={"name": "bo", "password": "hunter2hunter2"}
            )
            assert refused.status_code == 401
        async with connect(server) as client:  # the old login token no longer works either
            assert (await client.call(type="auth", token=bo["token"]))["code"] == "auth_failed"
        code, out, _ = run_cli(server, "users", "list")
        assert "bo" in out and "until" in out
        code, _, _ = run_cli(server, "users", "unban", "bo", "--note", "appeal upheld")
        assert await board(server) == [("ada", 4), ("bo", 2)]


async def test_a_banned_players_pending_submission_is_refused(server: Server) -> None:
    with trio.fail_after(60):
        cy = await new_player(server, "cy")
        async with connect(server) as client:
            await client.login(cy)
            game = await play_quick(client, 2, cy["user_id"])
        assert run_cli(server, "users", "ban", "cy", "--note", "known cheater")[0] == 0
        result = await submit_http(
            server, {k: game[k] for k in ("start_token", "end_token", "points")}
        )
        assert result == {"type": "result", "accepted": False, "reason": "account_banned"}


async def test_guest_flags_are_listed_but_hold_nothing(server: Server) -> None:
    with trio.fail_after(30):
        async with connect(server) as client:
            game = await play_quick(client, 1, None)
        game["points"][0]["client_ts"] -= 5000
        await submit_http(server, {k: game[k] for k in ("start_token", "end_token", "points")})
        code, out, _ = run_cli(server, "flags", "list", "--json")
        flags = json.loads(out)
        assert flags[0]["user_id"] is None and flags[0]["guest_addr"] == "127.0.0.1"
        code, _, err = run_cli(
            server, "flags", "resolve", str(flags[0]["id"]), "--ban", "--note", "x"
        )
        assert code == 1 and "guest" in err


async def test_hide_and_restore_one_score(server: Server) -> None:
    with trio.fail_after(60):
        dee = await scored_player(server, "dee", 5)
        await scored_player(server, "eli", 3)
        assert run_cli(server, "scores", "hide", dee["session_id"], "--note", "test run")[0] == 0
        assert await board(server) == [("eli", 3)]
        assert run_cli(server, "scores", "restore", dee["session_id"], "--note", "done")[0] == 0
        assert await board(server) == [("dee", 5), ("eli", 3)]
        code, _, err = run_cli(server, "scores", "hide", "nope", "--note", "typo")
        assert code == 1 and "no session 'nope'" in err


async def test_games_commands_and_live_settings(server: Server) -> None:
    with trio.fail_after(30):
        code, out, _ = run_cli(
            server, "games", "add", "blitz", "--duration", "0.5", "--burst-threshold", "5"
        )
        assert code == 0 and "blitz" in out
        code, _, err = run_cli(server, "games", "add", "blitz", "--duration", "9")
        assert code == 1 and "exists" in err
        code, _, err = run_cli(server, "games", "add", "bad", "--duration", "0")
        assert code == 1
        code, out, _ = run_cli(server, "games", "set", "blitz", "--latency-ms", "250")
        assert code == 0 and "250 ms" in out
        code, out, _ = run_cli(server, "games", "show", "blitz")
        assert "0.5 s" in out and "more than 5 points" in out and "250 ms" in out
        assert "blitz" in run_cli(server, "games", "list")[1]
        await reload(server.service)  # what SIGHUP (or the settings watcher) does
        async with connect(server) as client:
            room = await client.enter("blitz", None)
            assert room["duration_ms"] == 500
            started = await client.start(int(time.time() * 1000))
            run_cli(server, "games", "set", "blitz", "--duration", "5")
            await reload(server.service)
            end = await client.recv_type("end_game")  # the running game kept its 0.5 s
            assert 500 <= end["server_ts"] - started["server_ts"] < 1500
            assert (await client.enter("blitz", None))["duration_ms"] == 5000


async def test_the_settings_watcher_notices_changes_by_itself(server: Server) -> None:
    with trio.fail_after(30):
        applied = server.service.settings_applied
        run_cli(server, "games", "add", "watched", "--duration", "3")
        await applied.wait()  # the watcher polls every 2 s; no SIGHUP, no reload call
        assert server.service.games["watched"].duration_ms == 3000


async def test_key_rotation_keeps_older_sessions_valid(server: Server) -> None:
    with trio.fail_after(60):
        fay = await new_player(server, "fay")
        async with connect(server) as client:
            await client.login(fay)
            old_game = await play_quick(client, 2, fay["user_id"])
        old_kid = server.service.keys.kid.hex()
        code, out, _ = run_cli(server, "keys", "rotate", "--key", str(server.config.key_path))
        assert code == 0 and "new signing key" in out
        await reload(server.service)
        assert server.service.keys.kid.hex() != old_kid
        async with http(server) as api:
            kids = {k["kid"] for k in (await api.get("/api/keys")).json()["keys"]}
        assert kids == {old_kid, server.service.keys.kid.hex()}
        result = await submit_http(
            server, {k: old_game[k] for k in ("start_token", "end_token", "points")}
        )
        assert result["accepted"] and result["score"] == 2
        code, out, _ = run_cli(server, "keys", "list")
        assert old_kid in out and "current (signing)" in out
        assert Path(str(server.config.key_path)).stat().st_mode & 0o777 == 0o600


async def test_audit_lists_every_action(server: Server) -> None:
    with trio.fail_after(30):
        await new_player(server, "gus")
        run_cli(server, "users", "ban", "gus", "--days", "1", "--note", "spam")
        run_cli(server, "users", "unban", "gus", "--note", "served")
        run_cli(server, "games", "add", "g2", "--duration", "10")
        run_cli(server, "games", "set", "g2", "--burst-limit", "1")
        code, out, _ = run_cli(server, "audit")
        assert code == 0
        for command in ("users ban", "users unban", "games add", "games set"):
            assert command in out
        assert "(cli)" in out and "spam" in out


async def test_users_add_from_stdin(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(30):
        code, out, _ = run_cli(
            server,
            "users",
            "add",
            "hal",
            "--password-stdin",
            stdin="long enough pw\n",
            monkeypatch=monkeypatch,
        )
        assert code == 0 and "hal" in out
        token, user = await server.service.login("hal", "long enough pw")
        assert user.name == "hal" and token
        code, _, err = run_cli(
            server,
            "users",
            "add",
            "hal",
            "--password-stdin",
            stdin="long enough pw\n",
            monkeypatch=monkeypatch,
        )
        assert code == 1 and "taken" in err


async def test_admin_page(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(60):
        async with http(server) as api:
            browser = await api.get("/admin", headers={"accept": "text/html"})
            assert browser.status_code == 403 and "admin set-password" in browser.text
            assert "<h1>The review console is off</h1>" in browser.text
            refused = await api.get("/admin")
            assert refused.status_code == 403 and refused.json()["error"] == "admin_disabled"
            assert (await api.post("/api/admin/login", json={"password": "x"})).status_code == 403
        run_cli(
            server,
            "admin",
            "set-password",
            "--password-stdin",
            stdin="a long admin secret\n",
            monkeypatch=monkeypatch,
        )
        ivy = await scored_player(server, "ivy", 3)
        flag_id = await cheat(server, ivy)
        async with http(server) as api:
            page = await api.get("/admin")
            assert page.status_code == 200 and "review console" in page.text
            assert (await api.get("/api/admin/flags")).status_code == 401
            bad = await api.get("/api/admin/flags", headers={"authorization": "Bearer forged"})
            assert bad.status_code == 401
            wrong = await api.post("/api/admin/login", json={"password": "guess"})
            assert wrong.status_code == 401
            login = await api.post("/api/admin/login", json={"password": "a long admin secret"})
            assert login.status_code == 200
            auth = {"authorization": f"Bearer {login.json()['token']}"}
            flags = (await api.get("/api/admin/flags", headers=auth)).json()["flags"]
            assert [f["id"] for f in flags] == [flag_id]
            detail = (await api.get(f"/api/admin/flags/{flag_id}", headers=auth)).json()
            assert "timing_mismatch" in detail["text"] and detail["flag"]["evidence"]["points"]
            no_note = await api.post(
                f"/api/admin/flags/{flag_id}/resolve",
                headers=auth,
                json={"action": "clear", "note": " "},
            )
            assert no_note.status_code == 400
            cleared = await api.post(
                f"/api/admin/flags/{flag_id}/resolve",
                headers=auth,
                json={"action": "clear", "note": "network lag"},
            )
            assert cleared.json()["status"] == "cleared"
            assert await board(server) == [("ivy", 3)]
            hidden = await api.post(
                f"/api/admin/scores/{ivy['session_id']}/hide",
                headers=auth,
                json={"note": "duplicate account"},
            )
            assert hidden.status_code == 200 and await board(server) == []
            banned = await api.post(
                f"/api/admin/users/{ivy['user_id']}/ban", headers=auth, json={"note": "alt"}
            )
            assert banned.status_code == 200 and banned.json()["name"] == "ivy"
            missing = await api.post("/api/admin/users/999999/ban", headers=auth, json={})
            assert missing.status_code == 404
            huge = await api.post(f"/api/admin/users/{2**64}/ban", headers=auth, json={})
            assert huge.status_code == 404
            users = (await api.get("/api/admin/users", headers=auth)).json()["users"]
            assert any(u["name"] == "ivy" and u["banned_until"] for u in users)
            audit = (await api.get("/api/admin/audit", headers=auth)).json()["audit"]
            assert [a["command"] for a in audit][:3] == [  # newest first
                "users ban",
                "scores hide",
                "flags resolve",
            ]
            assert all("admin page" in a["actor"] for a in audit[:3])
            for _ in range(5):
                await api.post("/api/admin/login", json={"password": "guess"})
            limited = await api.post("/api/admin/login", json={"password": "a long admin secret"})
            assert limited.status_code == 429


async def test_timing_bounds_and_titles_are_game_settings(server: Server) -> None:
    """`games add|set|show` carry the timing rules, the score bound, outlier holding and a
    title; a running server applies them to games started afterwards, without a restart."""
    with trio.fail_after(30):
        code, out, _ = run_cli(server, "games", "add", "tap", "--duration", "0.5")
        assert code == 0
        assert "human floor         60 ms" in out and "rhythm check        0.05" in out
        assert "max score           none" in out and "held off boards until reviewed" in out
        assert "rate ceiling        10 points a second" in out
        assert "range until trusted 2 (from the rate ceiling)" in out  # 0.5 s x 10 / 2
        assert "trusted players     10 needed; accounts 24 h old" in out
        code, out, _ = run_cli(server, "games", "show", "tap")
        assert "range now           2 (from settings; 0 trusted players)" in out
        code, out, _ = run_cli(
            server,
            *("games", "set", "tap", "--human-floor-ms", "0", "--min-rhythm-cv", "0.04"),
            *("--max-score", "40", "--no-hold-outliers", "--title", "Tap Finals"),
            *("--human-max-rate", "0", "--review-above", "30", "--review-min-players", "3"),
            *("--review-account-age-h", "0"),
        )
        assert code == 0
        assert "human floor         off" in out and "rhythm check        0.04" in out
        assert "max score           40" in out and "flagged, still shown" in out
        assert "title               Tap Finals" in out and "rate ceiling        off" in out
        assert "range until trusted 30\n" in out
        assert "trusted players     3 needed; accounts 0 h old" in out
        code, out, _ = run_cli(
            server, "games", "set", "tap", "--no-max-score", "--hold-outliers", "--no-review-above"
        )
        assert "max score           none" in out and "held off boards until reviewed" in out
        assert "range until trusted none" in out  # the rate ceiling is off
        code, _, err = run_cli(server, "games", "set", "tap", "--min-rhythm-cv", "-1")
        assert code == 1 and "coefficient of variation" in err
        with pytest.raises(SystemExit) as usage:  # argparse: the two exclude each other
            run_cli(server, "games", "set", "tap", "--max-score", "5", "--no-max-score")
        assert usage.value.code == 2
        await reload(server.service)
        settings = server.service.games["tap"]
        assert (settings.human_floor_ms, settings.min_rhythm_cv, settings.max_score) == (
            0,
            0.04,
            None,
        )
        assert settings.title == "Tap Finals" and settings.hold_outliers is True
        assert (settings.human_max_rate, settings.review_above) == (0, None)
        assert (settings.review_min_players, settings.review_account_age_h) == (3, 0)
        code, out, _ = run_cli(server, "audit")
        assert "games set" in out


async def test_every_decision_needs_a_note(server: Server) -> None:
    """No note, no decision: on the command line (argparse refuses) and through /admin (400),
    and nothing changes."""
    with trio.fail_after(30):
        kim = await scored_player(server, "kim", 3)
        for command in (
            ("users", "ban", "kim"),
            ("users", "unban", "kim"),
            ("scores", "hide", kim["session_id"]),
            ("scores", "restore", kim["session_id"]),
        ):
            with pytest.raises(SystemExit) as usage:
                run_cli(server, *command)
            assert usage.value.code == 2, command
        code, _, err = run_cli(server, "users", "ban", "kim", "--note", "   ")
        assert code == 1 and "needs a note" in err
        from .test_edges import admin_headers

        async with http(server) as api:
            auth = await admin_headers(server, api)
            for path in (
                f"/api/admin/users/{kim['user_id']}/ban",
                f"/api/admin/users/{kim['user_id']}/unban",
                f"/api/admin/scores/{kim['session_id']}/hide",
            ):
                for body in ({}, {"note": ""}, {"note": "  "}):
                    reply = await api.post(path, headers=auth, json=body)
                    assert reply.status_code == 400 and "note" in reply.json()["message"], path
        assert await board(server) == [("kim", 3)]
        assert run_cli(server, "audit")[1].count("users ban") == 0


async def test_open_boards_follow_moderation_within_two_seconds(server: Server) -> None:
    """A ban, an unban, a hidden score, an opened flag: each reaches a watching board by a
    leaderboard push within 2 s, whichever door it came through (here the command line, which
    writes the database itself)."""
    with trio.fail_after(60):
        await scored_player(server, "lea", 5)
        mo = await scored_player(server, "mo", 3)

        async def next_board(watcher: Any) -> list[tuple[str, int]]:
            with trio.fail_after(2):
                push = await watcher.recv_type("leaderboard")
            return [(e["name"], e["score"]) for e in push["entries"]]

        async with connect(server) as watcher:
            await watcher.enter("quick", None)
            run_cli(server, "users", "ban", "lea", "--note", "alt account")
            assert await next_board(watcher) == [("mo", 3)]
            run_cli(server, "users", "unban", "lea", "--note", "appeal upheld")
            assert await next_board(watcher) == [("lea", 5), ("mo", 3)]
            run_cli(server, "scores", "hide", mo["session_id"], "--note", "duplicate")
            assert await next_board(watcher) == [("lea", 5)]
            await server.service.flag("test", user_id=lea_id(server), game_id="quick")
            assert await next_board(watcher) == []


def lea_id(server: Server) -> int:
    conn = db_connect(databases.resolve(server.config.db_path))
    try:
        user = ops.user_by_name(conn, "lea")
        assert user is not None
        return user.id
    finally:
        conn.close()


async def test_session_ids_are_shown_and_a_prefix_is_enough(server: Server) -> None:
    with trio.fail_after(60):
        ann = await scored_player(server, "ann", 4)
        code, out, _ = run_cli(server, "leaderboard", "quick")
        assert code == 0 and ann["session_id"] in out
        listed = json.loads(run_cli(server, "leaderboard", "quick", "--json")[1])
        assert listed["entries"][0]["session_id"] == ann["session_id"]
        prefix = ann["session_id"][:12]  # as `flags list` prints it
        code, out, _ = run_cli(server, "scores", "hide", prefix, "--note", "test")
        assert code == 0 and ann["session_id"] in out
        assert await board(server) == []
        code, _, err = run_cli(server, "scores", "restore", "", "--note", "test")
        assert code == 1 and "no session" in err
        await scored_player(server, "ben", 2)
        code, _, err = run_cli(server, "scores", "restore", "g", "--note", "x")
        assert code == 1 and "hexadecimal" in err
        code, out, _ = run_cli(server, "scores", "restore", prefix, "--note", "back")
        assert code == 0 and await board(server) == [("ann", 4), ("ben", 2)]


async def test_tables_align_for_any_name_and_notes_read_as_words(server: Server) -> None:
    from rich.cells import cell_len

    with trio.fail_after(60):
        for name in ("李小龙", "🎮gamer", "ann", "x" * 32):
            await register(server, name)
        run_cli(server, "users", "ban", "ann", "--days", "1", "--note", "one day")
        code, out, _ = run_cli(server, "users", "list")
        rows = [line for line in out.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
        assert len(rows) == 4 and any("李小龙" in row for row in rows)
        # The column after the name starts at the same display column on every row, whatever
        # the name's characters (李 takes two columns, 🎮 two, a 32-letter name 32).
        created = re.compile(r"\d\d-\d\d \d\d:\d\d")  # the created column: month-day time
        starts = {cell_len(row[: created.search(row).start()]) for row in rows}  # type: ignore[union-attr]
        assert len(starts) == 1, rows
        assert max(cell_len(row.rstrip()) for row in out.splitlines()) <= 120
        code, out, _ = run_cli(server, "audit")
        assert "for 1 day;" in out and "for 1 days" not in out
        run_cli(server, "games", "add", "tiny", "--duration", "2")
        code, out, _ = run_cli(server, "audit")
        assert "duration 2 s" in out and '"duration_ms"' not in out


async def test_a_player_erases_their_account_and_their_results_stay_nameless(
    server: Server,
) -> None:
    with trio.fail_after(60):
        ada = await scored_player(server, "ada", 4)
        await scored_player(server, "bo", 2)
        async with http(server) as api:
            auth = {"authorization": f"Bearer {ada['token']}"}
            wrong = await api.request(
                "DELETE", "/api/me", headers=auth, json={"password": "not it at all"}
            )
            assert wrong.status_code == 401
            assert wrong.json()["reason"] == "wrong_password"  # words: wrong password
            anonymous = await api.request("DELETE", "/api/me", json={"password": "x"})
            assert anonymous.status_code == 401
            gone = await api.request(
                "DELETE", "/api/me", headers=auth, json={"password": "hunter2hunter2"}
            )
            assert gone.status_code == 200 and gone.json()["user_id"] == ada["user_id"]
            # The token is dead, the name free, the password useless; the result stays.
            assert (
                await api.request("DELETE", "/api/me", headers=auth, json={"password": "x"})
            ).status_code == 401
            relogin = await api.post(
                "/api/login", json={"name": "ada", "password": "hunter2hunter2"}
            )
            assert relogin.status_code == 401
        deleted = f"deleted player {ada['user_id']}"
        assert await board(server) == [(deleted, 4), ("bo", 2)]
        again = await new_player(server, "ada")  # the name can be someone's again
        assert again["user_id"] != ada["user_id"]
        conn = db_connect(databases.resolve(server.config.db_path))
        try:
            agents = conn.execute(
                "SELECT COUNT(*) FROM game_sessions WHERE user_id = ? AND user_agent IS NOT NULL",
                (ada["user_id"],),
            ).fetchone()[0]
            row = conn.execute(
                "SELECT password_hash, name_skeleton FROM users WHERE id = ?", (ada["user_id"],)
            ).fetchone()
        finally:
            conn.close()
        assert agents == 0 and tuple(row) == ("", None)
        code, out, _ = run_cli(server, "audit")
        assert "users delete" in out and f"user {ada['user_id']}" in out


async def test_an_operator_erases_an_account_with_a_note(server: Server) -> None:
    with trio.fail_after(60):
        cy = await scored_player(server, "cy", 3)
        with pytest.raises(SystemExit):
            run_cli(server, "users", "delete", "cy")  # no note
        code, out, _ = run_cli(server, "users", "delete", "cy", "--note", "asked by email")
        assert code == 0 and f"deleted player {cy['user_id']}" in out
        code, _, err = run_cli(server, "users", "delete", "cy", "--note", "again")
        assert code == 1 and "no user" in err
        assert await board(server) == [(f"deleted player {cy['user_id']}", 3)]


async def test_a_backup_of_the_live_database_while_it_is_written(
    server: Server, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        await scored_player(server, "dee", 3)
        target = tmp_path / "copy.db"
        async with trio.open_nursery() as nursery:

            async def keep_writing() -> None:
                for n in range(50):
                    await server.service.flag(f"busy_{n}", guest_addr="1.2.3.4")

            nursery.start_soon(keep_writing)
            code, out, _ = run_cli(server, "backup", str(target))
        assert code == 0 and "checked" in out
        assert target.stat().st_mode & 0o077 == 0
        if databases.is_postgres(server.config.db_path):
            # A pg_dump archive: restored into a new database, it holds the saved score.
            restored = databases.cluster().new_database()
            await trio.run_process(["pg_restore", f"--dbname={restored}", str(target)])
            check = restored
        else:
            check = str(target)
        copy = db_connect(check)
        try:
            if copy.dialect == "sqlite":
                assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert ops.user_by_name(copy, "dee") is not None
            assert copy.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 1
        finally:
            copy.close()
        code, _, err = run_cli(server, "backup", str(target))
        assert code == 1 and "exists" in err


FORMULAS = ['=HYPERLINK("//x.example")', "=cmd|'/C calc'!A0", "+1+2", "@SUM(1,1)", "-2+3"]


async def test_exports_never_hand_a_spreadsheet_a_formula(server: Server) -> None:
    """OWASP's CSV injection: names a spreadsheet would evaluate are written as text in every
    CSV export (the command line's and /admin's), and exactly as they are in the JSON one."""
    import csv as csvlib

    from .test_edges import admin_headers

    with trio.fail_after(60):
        for index, name in enumerate(FORMULAS):
            await scored_player(server, name, index + 1)
        async with http(server) as api:
            auth = await admin_headers(server, api)
            admin_csv = (
                await api.get("/api/admin/export/quick?format=csv&what=results", headers=auth)
            ).text
        for what in ([], ["--results"]):
            code, out, _ = run_cli(server, "export", "quick", *what)
            assert code == 0
            for text in (out, admin_csv):
                players = [r["player"] for r in csvlib.DictReader(io.StringIO(text))]
                assert sorted(players) == sorted("'" + name for name in FORMULAS)
                for line in text.splitlines()[1:]:
                    cells = next(csvlib.reader([line]))
                    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells), line
        code, out, _ = run_cli(server, "export", "quick", "--format", "json")
        assert sorted(r["player"] for r in json.loads(out)["board"]) == sorted(FORMULAS)


async def test_export_the_board_as_shown_and_every_result(server: Server) -> None:
    import csv as csvlib

    with trio.fail_after(60):
        ann = await scored_player(server, "ann", 5)
        bo = await scored_player(server, "bo", 3)
        run_cli(server, "users", "ban", "bo", "--note", "alt")
        code, out, _ = run_cli(server, "export", "quick")
        board_rows = list(csvlib.DictReader(io.StringIO(out)))
        assert [(r["rank"], r["player"], r["score"]) for r in board_rows] == [("1", "ann", "5")]
        assert board_rows[0]["session_id"] == ann["session_id"]
        assert board_rows[0]["time"].endswith("+00:00")
        code, out, _ = run_cli(server, "export", "quick", "--results")
        results = {r["player"]: r for r in csvlib.DictReader(io.StringIO(out))}
        assert results["bo"]["shown"] == "False" and results["bo"]["why_not"] == "banned"
        assert results["bo"]["session_id"] == bo["session_id"]
        code, out, _ = run_cli(server, "export", "quick", "--format", "json", "--window", "day")
        data = json.loads(out)
        assert data["window"] == "day" and len(data["board"]) == 1 and len(data["results"]) == 2
        code, _, err = run_cli(server, "export", "nope")
        assert code == 1 and "no game" in err
        from .test_edges import admin_headers

        async with http(server) as api:
            auth = await admin_headers(server, api)
            download = await api.get(
                "/api/admin/export/quick?format=csv&what=results", headers=auth
            )
            assert download.status_code == 200
            assert 'filename="quick-results-all.csv"' in download.headers["content-disposition"]
            assert bo["session_id"] in download.text
            assert (await api.get("/api/admin/export/quick")).status_code == 401
            bad = await api.get("/api/admin/export/quick?format=xml", headers=auth)
            assert bad.status_code == 400


def test_every_command_words_an_unknown_thing_the_same_way(tmp_path: Path) -> None:
    """The command line on its own database (no server needed): one line, one wording."""
    where = databases.location(tmp_path, "s.db")
    open_database(where).close()

    def run(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([*args, "--db", where])
        return code, out.getvalue(), err.getvalue()

    for command in (
        ("flags", "show", "99"),
        ("flags", "resolve", "99", "--clear", "--note", "x"),
        ("users", "ban", "nobody", "--note", "x"),
        ("users", "unban", "nobody", "--note", "x"),
        ("users", "delete", "nobody", "--note", "x"),
        ("scores", "hide", "abc", "--note", "x"),
        ("games", "set", "nope", "--duration", "3"),
        ("games", "show", "nope"),
        ("leaderboard", "nope"),
        ("export", "nope"),
    ):
        code, out, err = run(*command)
        assert code == 1 and out == "", command
        assert err.startswith("scoreserver: not found: no "), (command, err)
        assert err.count("\n") == 1, (command, err)


def text_columns(where: str | Path) -> list[tuple[str, str]]:
    """Every (table, column) of text in the database, on either engine."""
    if str(where).startswith("postgresql://"):
        found = databases.sql(
            where,
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema()"
            " AND data_type IN ('text', 'character varying')",
        )
        return [(str(t), str(c)) for t, c in found]
    tables = databases.sql(where, "SELECT name FROM sqlite_master WHERE type = 'table'")
    return [
        (str(table), str(column[1]))
        for (table,) in tables
        for column in databases.sql(where, f'PRAGMA table_info("{table}")')
        if "TEXT" in str(column[2]).upper() or not column[2]
    ]


async def test_an_erasure_leaves_no_copy_of_the_name_or_the_address(server: Server) -> None:
    """Every text column of the database is scanned after `DELETE /api/me`: the name and the
    address the player was flagged at are nowhere (audit targets of old bans, login budgets'
    keys, flags' evidence included)."""
    from .test_edges import http_from

    name, address = "Zed Erasable", "127.0.0.77"
    with trio.fail_after(60):
        zed = await new_player(server, name)
        auth = {"Authorization": f"Bearer {zed['token']}"}
        async with http_from(server, address) as api:
            for _ in range(3):
                wrong = await api.post("/api/login", json={"name": name, "password": "x" * 12})
                assert wrong.status_code == 401
            junk = {"start_token": "a", "end_token": "b", "points": []}
            refused = (await api.post("/api/results", json=junk, headers=auth)).json()
            assert refused["reason"] == "bad_start_token"
        for command in ("ban", "unban"):
            assert run_cli(server, "users", command, name, "--note", "checked")[0] == 0
        where = server.config.db_path
        columns = text_columns(where)
        assert ("audit", "target") in columns and ("attempts", "key") in columns

        def copies() -> list[tuple[str, str]]:
            return [
                (table, column)
                for table, column in columns
                for needle in (name.casefold(), address)
                if databases.sql(
                    where,
                    f'SELECT COUNT(*) FROM "{table}" WHERE lower("{column}") LIKE ?',
                    (f"%{needle}%",),
                )[0][0]
            ]

        assert {("audit", "target"), ("attempts", "key"), ("flags", "guest_addr")} <= set(
            copies()
        )  # the scan finds them before
        async with http_from(server, address) as api:
            # A ban ends the account's logins: in again, then erased.
            login = await api.post("/api/login", json={"name": name, "password": "hunter2hunter2"})
            auth = {"Authorization": f"Bearer {login.json()['token']}"}
            gone = await api.request(
                "DELETE", "/api/me", headers=auth, json={"password": "hunter2hunter2"}
            )
            assert gone.status_code == 200, gone.text
        assert copies() == []
