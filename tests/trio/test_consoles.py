"""The consoles round two (issue 26): words for every refusal of a login, reset codes, games
archived and removed, /admin's players and games, webhooks for organisers, the board's 404
and QR code, and the command line at 80 columns."""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio

from scoreserver.ops import cli
from scoreserver.server.app import Server, welcome
from scoreserver.server.config import reachable_hosts
from scoreserver.store.connect import open_database
from scoreserver.store.engine import transaction

from .. import databases
from ..conftest import connect, http, make_config, register, running_server
from .test_edges import all_at_once
from .test_moderation import board, run_cli, scored_player

pytestmark = pytest.mark.engines

ADMIN_SECRET = "a long admin secret"


async def admin(server: Server, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> dict:
    run_cli(
        server,
        "admin",
        "set-password",
        "--password-stdin",
        stdin=ADMIN_SECRET + "\n",
        monkeypatch=monkeypatch,
    )
    login = await api.post("/api/admin/login", json={"password": ADMIN_SECRET})
    assert login.status_code == 200, login.text
    return {"authorization": f"Bearer {login.json()['token']}"}


# --- a refused login says why -------------------------------------------------------------


async def test_a_refused_login_says_why_wrong_password_banned_or_expired(server: Server) -> None:
    with trio.fail_after(60):
        await register(server, "wren", "correct horse")
        await register(server, "bram", "correct horse")
        run_cli(server, "users", "ban", "bram", "--days", "2", "--note", "scripted")
        async with http(server) as api:
            wrong = await api.post("/api/login", json={"name": "wren", "password": "not it!!"})
            assert wrong.status_code == 401
            assert wrong.json()["error"] == "auth_failed"
            assert wrong.json()["reason"] == "wrong_password"
            nobody = await api.post("/api/login", json={"name": "nobody", "password": "x" * 9})
            assert nobody.json()["reason"] == "wrong_password"  # no telling who exists
            banned = await api.post(
                "/api/login", json={"name": "bram", "password": "correct horse"}
            )
            assert banned.status_code == 401 and banned.json()["reason"] == "banned"
            until = banned.json()["banned_until"]
            assert 0 < until - server.service.clock.now_ms() <= 2 * 86_400_000
            run_cli(server, "users", "ban", "bram", "--note", "for good")
            forever = await api.post(
                "/api/login", json={"name": "bram", "password": "correct horse"}
            )
            assert forever.json()["reason"] == "banned" and "banned_until" not in forever.json()
            expired = await api.get("/api/me", headers={"authorization": "Bearer not-a-token"})
            assert expired.status_code == 401 and expired.json()["reason"] == "expired"
            # The socket says the same.
            async with connect(server) as client:
                reply = await client.call(type="auth", token="not-a-token")
                assert reply["code"] == "auth_failed" and reply["reason"] == "expired"
            # And it still serves whoever comes next.
            fine = await api.post("/api/login", json={"name": "wren", "password": "correct horse"})
            assert fine.status_code == 200


# --- password reset codes -------------------------------------------------------------------


async def test_a_reset_code_sets_a_new_password_once_and_ends_old_logins(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(60):
        tilly = await register(server, "tilly", "forgotten words")
        code, out, _ = run_cli(server, "users", "reset-password", "tilly")
        assert code == 0
        reset = re.search(r"reset code for tilly: ([A-Z0-9-]+)", out)
        assert reset is not None, out
        typed = reset[1].lower().replace("-", " ")  # as a player may type it
        async with http(server) as api:
            wrong = await api.post(
                "/api/reset-password",
                json={"name": "tilly", "code": "AAAA-BBBB-CCCC", "password": "new words here"},
            )
            assert wrong.status_code == 401 and wrong.json()["reason"] == "bad_reset_code"
            short = await api.post(
                "/api/reset-password", json={"name": "tilly", "code": typed, "password": "short"}
            )
            assert short.status_code == 400  # the code is not spent on a password refused
            done = await api.post(
                "/api/reset-password",
                json={"name": "tilly", "code": typed, "password": "new words here"},
            )
            assert done.status_code == 200, done.text
            assert done.json()["user_id"] == tilly["user_id"]
            # The old login token is dead; the code is spent; the new password works.
            old = await api.get("/api/me", headers={"authorization": f"Bearer {tilly['token']}"})
            assert old.status_code == 401
            again = await api.post(
                "/api/reset-password",
                json={"name": "tilly", "code": typed, "password": "other words here"},
            )
            assert again.status_code == 401
            login = await api.post(
                "/api/login", json={"name": "tilly", "password": "new words here"}
            )
            assert login.status_code == 200
            # /admin issues them too; the last one issued is the only one that works.
            auth = await admin(server, api, monkeypatch)
            first = await api.post(
                f"/api/admin/users/{tilly['user_id']}/reset-password", headers=auth
            )
            second = await api.post(
                f"/api/admin/users/{tilly['user_id']}/reset-password", headers=auth
            )
            assert first.status_code == second.status_code == 200
            stale = await api.post(
                "/api/reset-password",
                json={"name": "tilly", "code": first.json()["code"], "password": "third words!"},
            )
            assert stale.status_code == 401
            audit = run_cli(server, "audit")[1]
            assert "users reset-password" in audit
            assert reset[1] not in audit and second.json()["code"] not in audit


async def test_guessing_reset_codes_at_once_is_limited_like_logins(server: Server) -> None:
    with trio.fail_after(60):
        await register(server, "gus", "correct horse")
        run_cli(server, "users", "reset-password", "gus")

        async def guess(i: int) -> httpx.Response:
            async with http(server) as api:
                return await api.post(
                    "/api/reset-password",
                    json={"name": "gus", "code": f"ZZZZ-ZZZZ-{i:04d}", "password": "new words!!"},
                )

        replies = await all_at_once(40, guess)
        codes = Counter(r.status_code for r in replies)
        assert set(codes) <= {401, 429} and codes[429] > 0, codes
        assert codes[401] <= server.service.limits.account_failures.limit, codes


# --- games: archived, removed, ids that fit a URL -------------------------------------------


async def test_games_are_archived_and_an_unplayed_one_removed(server: Server) -> None:
    with trio.fail_after(60):
        await scored_player(server, "ona", 3)
        code, _, err = run_cli(server, "games", "add", "bad id!", "--duration", "5")
        assert code == 1 and "game id" in err
        code, _, err = run_cli(server, "games", "add", "long", "--duration", "99999999")
        assert code == 1 and "duration" in err
        code, _, err = run_cli(server, "games", "remove", "quick")
        assert code == 1 and "archive it instead" in err
        assert run_cli(server, "games", "archive", "quick")[0] == 0
        await _reloaded(server)
        async with connect(server) as client:
            reply = await client.call(type="enter_game_room", game_id="quick", user_id=None)
            assert reply["code"] == "unknown_game" and reply["reason"] == "archived", reply
            # A room entered before it was archived cannot start a game either: see below.
        assert await board(server, "quick") == [("ona", 3)]  # its board stays
        async with http(server) as api:
            listed = {g["game_id"]: g for g in (await api.get("/api/games")).json()["games"]}
            assert listed["quick"]["archived"] is True
            page = await api.get("/board/quick")
            assert page.status_code == 200
        assert run_cli(server, "games", "archive", "quick", "--undo")[0] == 0
        assert run_cli(server, "games", "add", "typo", "--duration", "5")[0] == 0
        code, out, _ = run_cli(server, "games", "remove", "typo")
        assert code == 0 and "removed" in out
        assert "typo" not in run_cli(server, "games", "list")[1]
        await _reloaded(server)
        async with connect(server) as client:
            await client.enter("quick")


async def test_a_game_archived_while_a_player_is_in_its_room_starts_no_game(
    server: Server,
) -> None:
    with trio.fail_after(60):
        async with connect(server) as client:
            await client.enter("quick")
            run_cli(server, "games", "archive", "quick")
            await _reloaded(server)
            reply = await client.call(type="game_start", client_ts=1)
            assert reply["code"] == "unknown_game" and reply["reason"] == "archived", reply
            run_cli(server, "games", "archive", "quick", "--undo")
            await _reloaded(server)
            assert (await client.call(type="game_start", client_ts=1))["type"] == "game_started"


async def _reloaded(server: Server) -> None:
    """Wait until the server applied the database's settings (the watcher, within ~2 s)."""
    from scoreserver.server.background import reload

    await reload(server.service)


# --- /admin: players and games --------------------------------------------------------------


async def test_admin_finds_a_player_and_shows_their_page(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(60):
        pia = await scored_player(server, "Pia", 4)
        await scored_player(server, "Piet", 2)
        await scored_player(server, "Quinn", 1)
        async with http(server) as api:
            auth = await admin(server, api, monkeypatch)
            found = (await api.get("/api/admin/users?q=pi", headers=auth)).json()["users"]
            assert sorted(u["name"] for u in found) == ["Pia", "Piet"]
            by_id = await api.get(f"/api/admin/users?q={pia['user_id']}", headers=auth)
            assert [u["name"] for u in by_id.json()["users"]] == ["Pia"]
            wild = (await api.get("/api/admin/users?q=%25", headers=auth)).json()["users"]
            assert wild == []  # LIKE's wildcards are searched for, not obeyed
            page = (await api.get(f"/api/admin/users/{pia['user_id']}", headers=auth)).json()
            assert page["user"]["name"] == "Pia"
            assert [(r["score"], r["held_reason"]) for r in page["results"]] == [(4, None)]
            assert page["sessions"][0]["id"] == pia["session_id"]
            ban = await api.post(
                f"/api/admin/users/{pia['user_id']}/ban",
                headers=auth,
                json={"note": "alt account", "days": 3},
            )
            assert ban.status_code == 200
            page = (await api.get(f"/api/admin/users/{pia['user_id']}", headers=auth)).json()
            assert page["user"]["ban_note"] == "alt account"
            assert [r["held_reason"] for r in page["results"]] == ["banned"]
            missing = await api.get("/api/admin/users/999999", headers=auth)
            assert missing.status_code == 404
            erased = await api.post(
                f"/api/admin/users/{pia['user_id']}/delete", headers=auth, json={"note": "asked"}
            )
            assert erased.status_code == 200
            assert await board(server) == [("Piet", 2), ("Quinn", 1)]


async def test_admin_adds_edits_archives_and_deletes_games(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(60):
        async with http(server) as api:
            auth = await admin(server, api, monkeypatch)
            add = await api.post(
                "/api/admin/games",
                headers=auth,
                json={"game_id": "cup", "duration_ms": 20_000, "title": "The Cup"},
            )
            assert add.status_code == 200, add.text
            for bad in (
                {"game_id": "no spaces", "duration_ms": 1000},
                {"game_id": "cup2"},
                {"game_id": "cup3", "duration_ms": -5},
                {"game_id": "cup4", "duration_ms": 1000, "latency": 5},
                {"game_id": "cup5", "duration_ms": "soon"},
            ):
                refused = await api.post("/api/admin/games", headers=auth, json=bad)
                assert refused.status_code == 400, (bad, refused.text)
            twice = await api.post(
                "/api/admin/games", headers=auth, json={"game_id": "cup", "duration_ms": 1000}
            )
            assert twice.status_code == 409
            edit = await api.post(
                "/api/admin/games/cup",
                headers=auth,
                json={"max_score": 500, "human_max_rate": 0, "title": None},
            )
            assert edit.status_code == 200, edit.text
            games = (await api.get("/api/admin/games", headers=auth)).json()["games"]
            listed = {g["game_id"]: g for g in games}
            cup = listed["cup"]
            assert (cup["max_score"], cup["human_max_rate"], cup["title"]) == (500, 0, None)
            assert cup["duration_ms"] == 20_000 and cup["sessions"] == 0
            assert listed["quick"]["archived_at"] is None
            archived = await api.post(
                "/api/admin/games/cup/archive", headers=auth, json={"archived": True}
            )
            assert archived.status_code == 200
            removed = await api.delete("/api/admin/games/cup", headers=auth)
            assert removed.status_code == 200
            await scored_player(server, "uma", 1)
            played = await api.delete("/api/admin/games/quick", headers=auth)
            assert played.status_code == 409 and "archive" in played.json()["message"]
            audit = run_cli(server, "audit")[1]
            for command in ("games add", "games set", "games archive", "games remove"):
                assert command in audit, command


async def test_admin_summary_changes_when_a_flag_is_raised(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(60):
        async with http(server) as api:
            auth = await admin(server, api, monkeypatch)
            before = (await api.get("/api/admin/summary", headers=auth)).json()
            async with connect(server) as client:
                await client.call(type="enter_game_room", game_id="quick", user_id=12345)
            after = (await api.get("/api/admin/summary", headers=auth)).json()
            assert after["open_flags"] == before["open_flags"] + 1
            assert after["last_flag_id"] > before["last_flag_id"]
            assert (await api.get("/api/admin/summary")).status_code == 401


# --- webhooks -------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on 127.0.0.1: answers `fail_first` requests with 503, then 200."""

    def __init__(self, fail_first: int = 0):
        self.fail_first = fail_first
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.arrived = trio.Event()
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._answer, listeners)

    async def _answer(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        self.attempts += 1
        status = 503 if self.attempts <= self.fail_first else 200
        if status == 200:
            self.bodies.append(json.loads(body))
            self.arrived.set()
            self.arrived = trio.Event()
        headers = [("content-length", "0"), ("connection", "close")]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        await stream.aclose()

    async def wait_for(self, event: str, count: int = 1) -> list[dict[str, Any]]:
        while len([b for b in self.bodies if b["event"] == event]) < count:
            await self.arrived.wait()
        return [b for b in self.bodies if b["event"] == event]


@asynccontextmanager
async def webhook_server(tmp_path: Path, url: str) -> AsyncIterator[Server]:
    databases.add_game(tmp_path / "test.db", "quick", duration_ms=1000, submission_window_ms=60_000)
    config = make_config(tmp_path)
    config.webhook = url
    async with running_server(config) as server:
        server.service.webhooks.base_delay_s = 0.1  # type: ignore[union-attr]
        yield server


async def test_webhooks_tell_of_a_new_first_place_and_a_flag_and_retry(tmp_path: Path) -> None:
    receiver = Receiver(fail_first=2)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve)
            url = f"http://127.0.0.1:{receiver.port}/hook?secret=s3cr3t"
            async with webhook_server(tmp_path, url) as server:
                await scored_player(server, "kai", 3)
                first = await receiver.wait_for("first_place")
                assert first[0]["name"] == "kai" and first[0]["score"] == 3
                assert first[0]["text"] == first[0]["content"]  # Slack reads one, Discord the other
                assert "kai" in first[0]["text"] and "3" in first[0]["text"]
                assert receiver.attempts >= 3  # two 503s, then delivered
                await scored_player(server, "lou", 2)  # second place: no notification
                await scored_player(server, "mo", 5)
                tops = await receiver.wait_for("first_place", 2)
                assert [t["name"] for t in tops] == ["kai", "mo"]
                async with connect(server) as client:  # a guest who claims to be someone
                    await client.call(type="enter_game_room", game_id="quick", user_id=777)
                    await client.call(type="enter_game_room", game_id="quick", user_id=777)
                flags = await receiver.wait_for("flag")
                assert flags[0]["reason"] == "identity_mismatch" and "a guest" in flags[0]["text"]
                assert "127.0.0.1" not in json.dumps(flags)  # no address leaves in a webhook
                # One cause is told once: a later notification arrives, the repeat never.
                await scored_player(server, "pat", 9)
                await receiver.wait_for("first_place", 3)
                assert len(await receiver.wait_for("flag")) == 1
            nursery.cancel_scope.cancel()


async def test_with_the_receiver_down_play_goes_on_and_notifications_come_later(
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    probe = await trio.open_tcp_listeners(0, host="127.0.0.1")
    receiver.port = probe[0].socket.getsockname()[1]
    await probe[0].aclose()  # nothing listens there now: connections are refused
    with trio.fail_after(60):
        async with webhook_server(tmp_path, f"http://127.0.0.1:{receiver.port}/") as server:
            with trio.fail_after(15):  # real time: a game of 1 s, saved as if no hook existed
                await scored_player(server, "nia", 4)
            webhooks = server.service.webhooks
            assert webhooks is not None and len(webhooks.pending) == 1
            async with trio.open_nursery() as nursery:
                await nursery.start(receiver.serve)
                tops = await receiver.wait_for("first_place")
                assert tops[0]["name"] == "nia"
                while webhooks.pending:  # the 200 is read after the receiver has the body
                    await webhooks.progress.wait()
                assert webhooks.delivered == 1
                nursery.cancel_scope.cancel()


# --- pages ----------------------------------------------------------------------------------


async def test_a_board_of_no_game_is_a_404_and_the_play_address_has_a_qr_code(
    server: Server,
) -> None:
    with trio.fail_after(60):
        async with http(server) as api:
            nope = await api.get("/board/nope")
            assert nope.status_code == 404 and "Games on this server" in nope.text
            assert (await api.get("/board/quick")).status_code == 200
            config = (await api.get("/api/config")).json()
            assert config["play_urls"] == [f"http://127.0.0.1:{server.http_port}"]
            qr = await api.get("/api/qr.svg", params={"text": "http://10.0.0.5:8080/?game=x"})
            assert qr.status_code == 200 and qr.headers["content-type"].startswith("image/svg")
            assert qr.text.startswith("<svg") and "path" in qr.text
            for bad in ({}, {"text": ""}, {"text": "x" * 513}):
                assert (await api.get("/api/qr.svg", params=bad)).status_code == 400
            assert (await api.get("/healthz")).status_code == 200


@pytest.mark.sqlite_only
def test_the_banner_names_every_address_players_reach_and_the_consoles(tmp_path: Path) -> None:
    hosts = reachable_hosts("0.0.0.0")
    assert hosts and all(not h.startswith("127.") for h in hosts if h != "127.0.0.1")
    assert reachable_hosts("10.1.2.3") == ["10.1.2.3"]

    class Fake:
        config = make_config(tmp_path)
        http_port = 8080
        metrics_port = 9100
        service = type("S", (), {"games": {}})()

    Fake.config.host = "0.0.0.0"
    text = welcome(Fake(), has_admin=False)  # type: ignore[arg-type]
    assert f"http://{hosts[0]}:8080/" in text
    assert "/board/" in text and "/admin" in text and "admin set-password" in text
    assert "http://127.0.0.1:9100/metrics" in text
    Fake.config.host = "127.0.0.1"
    local = welcome(Fake(), has_admin=True)  # type: ignore[arg-type]
    assert "this machine only" in local and "set-password" not in local


async def test_metrics_start_without_a_lifespan_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    config.metrics_port = 0
    with trio.fail_after(60):
        async with running_server(config) as server:
            async with httpx.AsyncClient() as client:
                metrics = await client.get(f"http://127.0.0.1:{server.metrics_port}/metrics")
                assert metrics.status_code == 200
    assert "Lifespan" not in caplog.text and "lifespan" not in caplog.text.lower()


# --- the command line -----------------------------------------------------------------------


@pytest.mark.sqlite_only
def test_set_password_says_it_is_too_short_before_asking_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        asked.append(prompt)
        return "short"

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    monkeypatch.setattr("sys.stdin", _Terminal())
    where = databases.location(tmp_path, "pw.db")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["admin", "set-password", "--db", where]) == 1
    assert asked == ["password: "], asked  # not asked "again:"
    assert "12 characters" in err.getvalue()
    asked.clear()
    with contextlib.redirect_stderr(err):
        assert cli.main(["users", "add", "zed", "--db", where]) == 1
    assert asked == ["password: "] and "8 to" in err.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.sqlite_only
def test_games_set_help_shows_no_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["games", "set", "--help"])
    text = capsys.readouterr().out
    assert "only the options given change" in text
    assert "default" not in text.replace("(default: scoreserver.db)", "").lower(), text
    assert "0: off" in text  # what a value means stays


@pytest.mark.sqlite_only  # the source is a file; PostgreSQL's copies are test_migrate's
def test_migrate_refuses_while_a_server_runs_and_prints_a_command_that_pastes(
    tmp_path: Path,
) -> None:
    source = tmp_path / "live.db"
    conn = open_database(str(source))
    with transaction(conn):
        now = _now()
        conn.execute(
            "INSERT INTO nodes (id, url, host, pid, kid, started_at, seen_at, lease_ms)"
            " VALUES ('n1', 'ws://127.0.0.1:1/', 'here', 4242, NULL, ?, ?, 10000)",
            (now, now),
        )
    conn.close()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["migrate", "--db", str(source), "--to", str(tmp_path / "new.db")])
    assert code == 1 and "a server is running" in err.getvalue() and "pid 4242" in err.getvalue()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(
            ["migrate", "--db", str(source), "--to", str(tmp_path / "new.db"), "--while-running"]
        )
    assert code == 0 and f"python run.py --db {tmp_path / 'new.db'}" in out.getvalue()
    assert cli._without_password("postgresql://ann:pw@db.lan:5432/scores") == (
        "postgresql://ann@db.lan:5432/scores"
    )


def _now() -> int:
    import time

    return int(time.time() * 1000)


# --- the edges: hostile values at once, and behind a proxy ------------------------------------

BIG = 2**63
DEEP = "[" * 100_000 + "]" * 100_000


async def test_hostile_values_at_the_bounds_sent_at_once_get_4xx_and_the_server_serves_on(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every new route and body, with integers past int64, negatives, empty, huge, deeply
    nested and binary values, all at once against the default configuration: a 4xx each
    (never a 500), and the server serves an honest player afterwards."""
    with trio.fail_after(120):
        await register(server, "vic", "correct horse")
        async with http(server) as api:
            auth = await admin(server, api, monkeypatch)
        values: list[Any] = [BIG, -1, -BIG, 0, "", "x" * 20_000, [[[[]]]], {"a": {}}, None, 1.5e308]
        values.append("nul\x00inside")  # PostgreSQL cannot store or compare it
        requests: list[tuple[str, str, Any, bool]] = []
        for value in values:
            for field in ("name", "code", "password"):
                body = {"name": "vic", "code": "AAAA-BBBB-CCCC", "password": "new words here"}
                body[field] = value
                requests.append(("POST", "/api/reset-password", body, False))
            for field in ("game_id", "duration_ms", "title", "max_score", "min_rhythm_cv"):
                body = {"game_id": "edge", "duration_ms": 1000, field: value}
                requests.append(("POST", "/api/admin/games", body, True))
                requests.append(("POST", "/api/admin/games/quick", {field: value}, True))
            requests.append(("POST", "/api/admin/games/quick/archive", {"archived": value}, True))
            requests.append(("POST", "/api/login", {"name": value, "password": "x" * 9}, False))
            requests.append(("POST", "/api/admin/users/1/ban", {"note": value, "days": 1}, True))
        for path in (
            f"/api/admin/users/{BIG}",
            f"/api/admin/users/{BIG * 10}",
            "/api/admin/users/-1",
            f"/api/admin/users?q={'9' * 400}",
            "/api/admin/users?q=%FF%FE%00",
            "/api/admin/games/%00/archive",
            "/api/admin/games/" + "g" * 5000,
            f"/api/qr.svg?text={'%FF' * 100}",
            "/api/qr.svg?text=%00",
            "/board/%FF%FE",
            "/board/" + "b" * 5000,
        ):
            requests.append(("GET", path, None, True))
        requests.append(("DELETE", "/api/admin/games/" + "g" * 300, None, True))
        for path, admin_only in (("/api/reset-password", False), ("/api/admin/games", True)):
            requests.append(("POST", path, DEEP, admin_only))
            requests.append(("POST", path, b"\xff\xfe\x00binary", admin_only))
            requests.append(("POST", path, b"x" * (64 * 1024), admin_only))

        async def send(i: int) -> httpx.Response:
            method, path, body, with_auth = requests[i]
            headers = dict(auth) if with_auth else {}
            content = None
            if isinstance(body, str | bytes):
                content = body if isinstance(body, bytes) else body.encode()
                headers["content-type"] = "application/json"
            async with httpx.AsyncClient(base_url=server.http_url, timeout=30) as client:
                if content is not None:
                    return await client.request(method, path, content=content, headers=headers)
                if body is None:
                    return await client.request(method, path, headers=headers)
                return await client.request(method, path, json=body, headers=headers)

        replies = await all_at_once(len(requests), send)
        for (method, path, body, _), reply in zip(requests, replies, strict=True):
            assert reply.status_code < 500, (method, path, str(body)[:80], reply.text[:200])
            if reply.status_code >= 400 and reply.headers.get("content-type", "").startswith(
                "application/json"
            ):
                assert reply.json()["error"], reply.text
        assert not any(
            r.status_code == 200 for r in replies if r.request.url.path == "/api/reset-password"
        )
        async with http(server) as api:
            assert (await api.get("/healthz")).json()["status"] == "ok"
            login = await api.post("/api/login", json={"name": "vic", "password": "correct horse"})
            assert login.status_code == 200
        async with connect(server) as client:
            await client.enter("quick")


async def test_reset_guesses_behind_a_proxy_are_charged_to_the_client_not_the_proxy(
    tmp_path: Path,
) -> None:
    from .test_proxies import proxied, xff

    with trio.fail_after(60):
        async with running_server(proxied(tmp_path)) as server:
            for name in ("ana", "ben"):
                await register(server, name, "correct horse")
            async with http(server) as api:  # from 127.0.0.1, the trusted proxy
                for name, client in (("ana", "203.0.113.7"), ("ben", "198.51.100.9")):
                    guess = await api.post(
                        "/api/reset-password",
                        json={"name": name, "code": "AAAA-BBBB-CCCC", "password": "new words!!"},
                        headers=xff(client),
                    )
                    assert guess.json()["reason"] == "bad_reset_code"
            keys = {
                tuple(r)
                for r in databases.sql(
                    tmp_path / "test.db", "SELECT budget, key FROM attempts ORDER BY key"
                )
            }
            addresses = {key for budget, key in keys if budget == "login_address"}
            assert addresses == {"203.0.113.7", "198.51.100.9"}, keys  # never the proxy's
