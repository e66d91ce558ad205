"""Timing analysis and a game's bounds, end to end over real sockets (autojump clock: the
30-second games take milliseconds)."""

from __future__ import annotations

import contextlib
import io
import math
import random
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from scoreserver.core import review as core_review
from scoreserver.core.rules import GameSettings
from scoreserver.ops import cli
from scoreserver.server import moderation
from scoreserver.server.app import Server
from scoreserver.store import ops
from scoreserver.store.connect import open_database
from scoreserver.store.engine import transaction

from .. import databases
from ..conftest import Client, add_game, connect, http, make_config, register, running_server

pytestmark = pytest.mark.engines

TIMED = {"human_floor_ms": 60, "min_rhythm_cv": 0.05, "human_max_rate": 10.0}  # defaults


@pytest.fixture
async def timed_server(tmp_path: Path) -> AsyncIterator[Server]:
    path = tmp_path / "test.db"
    add_game(path, "timed", duration_ms=30_000, **TIMED)
    add_game(path, "bounded", duration_ms=30_000, max_score=5, **TIMED)
    add_game(path, "held", duration_ms=10_000, review_account_age_h=0)
    add_game(path, "shown", duration_ms=10_000, review_account_age_h=0, hold_outliers=False)
    async with running_server(make_config(tmp_path, inline=True)) as server:
        yield server


async def play(
    server: Server, client: Client, game: str, user_id: int | None, gaps_ms: list[float]
) -> dict[str, Any]:
    """Score a point after each gap (virtual time), stamped by the server's own clock as a
    page's Date.now() would be; wait for the end; return what a page submits."""

    def now() -> int:
        return server.service.clock.now_ms()

    await client.enter(game, user_id)
    started = await client.start(now())
    claims = []
    for gap in gaps_ms:
        await trio.sleep(gap / 1000)  # game time (virtual)
        ts = now()
        reply = await client.call(type="point", client_ts=ts)
        if reply["type"] == "point_accepted":
            claims.append({"token": reply["token"], "client_ts": ts})
    end = await client.recv_type("end_game")
    return {
        "start_token": started["start_token"],
        "end_token": end["end_token"],
        "points": claims,
        "session_id": started["session_id"],
    }


def person(rng: random.Random, total_ms: float) -> list[float]:
    """A person's gaps: log-normal around 300 ms, CV 0.35, none under 80 ms."""
    sigma = math.sqrt(math.log(1 + 0.35**2))
    gaps, elapsed = [], 0.0
    while True:
        gap = max(80.0, rng.lognormvariate(math.log(300) - sigma**2 / 2, sigma))
        if elapsed + gap >= total_ms:
            return gaps
        gaps.append(gap)
        elapsed += gap


def flags_show(server: Server, flag_id: int) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["flags", "show", str(flag_id), "--db", str(server.config.db_path)]) == 0
    return out.getvalue()


async def board(server: Server, game: str) -> list[tuple[str, int]]:
    async with http(server) as api:
        entries = (await api.get(f"/api/games/{game}/leaderboard")).json()["entries"]
    return [(e["name"], e["score"]) for e in entries]


async def submit(client: Client, game: dict[str, Any]) -> dict[str, Any]:
    body = {k: game[k] for k in ("start_token", "end_token", "points")}
    return await client.call(type="submit_result", **body)


async def flags(server: Server) -> list[dict[str, Any]]:
    return await server.service.store.flags()


async def test_a_metronome_bot_is_flagged_and_held_until_a_reviewer_clears_it(
    timed_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    server = timed_server
    with trio.fail_after(120):
        bot, ann = await register(server, "metronome"), await register(server, "ann")
        async with connect(server) as client:
            await client.login(bot)
            game = await play(server, client, "timed", bot["user_id"], [150.0] * 190)
            # Flagged while the game ran, before any submission.
            found = await flags(server)
            assert [(f["reason"], f["user_id"]) for f in found] == [
                ("robotic_rhythm", bot["user_id"])
            ]
            assert found[0]["session_id"] == game["session_id"]
            assert found[0]["detail"]["rhythm_figure"] < 0.01
            result = await submit(client, game)
            # Saved, and told it is held: its flag holds it (and 190 is above the range the
            # settings give a new game, 30 s x 10 a second / 2 = 150: a second flag).
            assert result["accepted"] is True and result["saved"] is True
            assert (result["held"], result["held_reason"]) == (True, "flagged")
        async with connect(server) as client:
            await client.login(ann)
            honest = await play(
                server, client, "timed", ann["user_id"], person(random.Random(1), 29_000)
            )
            assert (await submit(client, honest))["saved"] is True
        assert await board(server, "timed") == [("ann", len(honest["points"]))]
        # The reviewer reads the figures in words.
        words = flags_show(server, found[0]["id"])
        assert (
            "rhythm on the player's clock: 0.000 (too regular for a person: below the flag"
            " line; flags below 0.05)" in words
        )
        assert "this game's other players: not enough sessions yet" in words
        assert "0 of 189 intervals on the player's clock; flags at 17 or more" in words
        assert " 150-199  ms   189 ########################################" in words
        top = [f for f in await flags(server) if f["reason"] == "outlier_score"]
        assert [(f["user_id"], f["holds"], f["detail"]["range_top"]) for f in top] == [
            (bot["user_id"], 0, 150)
        ]
        for flag in (found[0], top[0]):
            await moderation.resolve_flag(
                server.service.store,
                flag["id"],
                ban=False,
                note="a rhythm game pro",
                actor=moderation.Actor("t", "test"),
            )
        assert ("metronome", 190) in await board(server, "timed")
        assert len(await flags(server)) == 2  # the person was not flagged


async def test_a_clumping_bot_is_flagged_inhuman(
    timed_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    server = timed_server
    with trio.fail_after(120):
        bot = await register(server, "clumps")
        gaps = ([2.0] * 11 + [1001.0]) * 4  # twelve within ~20 ms, then wait out the window
        async with connect(server) as client:
            await client.login(bot)
            await play(server, client, "timed", bot["user_id"], gaps)
        found = await flags(server)
        assert [f["reason"] for f in found] == ["inhuman_timing"]
        # The evidence is what tripped the rule: at the 32nd point, the first assessment with
        # enough intervals (timing.FLOOR_MIN_INTERVALS), 29 of 31 under the floor on the
        # player's clock: the first two clumps' 10 and 11 count (more gaps than one long task
        # of a busy page holds), the third's 8 so far not yet (it may be a busy page's until
        # it grows); 8 would do.
        evidence = found[0]["detail"]
        assert evidence["intervals"] == 31
        assert evidence["below_floor_on_arrival"] == 29
        assert evidence["below_floor_player_clock"] == 21
        assert evidence["below_floor_bunched"] == 8
        assert evidence["below_floor_needed"] == 8


async def test_people_are_not_flagged(
    timed_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    server = timed_server
    with trio.fail_after(300):
        for n in range(5):
            account = await register(server, f"player{n}")
            async with connect(server) as client:
                await client.login(account)
                game = await play(
                    server, client, "timed", account["user_id"], person(random.Random(n), 29_000)
                )
                assert (await submit(client, game))["saved"] is True
        assert await flags(server) == []
        assert len(await board(server, "timed")) == 5


async def test_a_busy_pages_bunches_flag_no_one(
    timed_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    """A fast player (111 ms a tap) on a phone busy with a 450 ms task every 1.1 s: the taps
    that queued behind each task are stamped and sent together, a millisecond apart (3 of
    every 10 intervals under the floor, 8.9 points a second). Nobody is flagged, no point is
    refused as a burst, and the result is saved (held as a new game's top score)."""
    server = timed_server
    with trio.fail_after(120):
        account = await register(server, "busyphone")
        gaps = ([111.0] * 6 + [450.0, 1.0, 1.0, 1.0]) * 20
        async with connect(server) as client:
            await client.login(account)
            game = await play(server, client, "timed", account["user_id"], gaps)
            assert len(game["points"]) == len(gaps)  # every point accepted
            assert (await submit(client, game))["saved"] is True
        # No timing rule tripped; the score (200) is above what a new game's settings trust
        # (30 s x 10 a second / 2), so the review of the top holds it, as it would anyone's.
        assert [f["reason"] for f in await flags(server)] == ["outlier_score"]


async def test_a_result_above_the_games_bound_is_refused_and_flagged(
    timed_server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    server = timed_server
    with trio.fail_after(120):
        eve = await register(server, "eve")
        async with connect(server) as client:
            await client.login(eve)
            game = await play(server, client, "bounded", eve["user_id"], [400.0] * 6)
            result = await submit(client, game)
            assert result == {"type": "result", "accepted": False, "reason": "implausible_score"}
        found = await flags(server)
        assert [(f["reason"], f["user_id"]) for f in found] == [
            ("submission:implausible_score", eve["user_id"])
        ]
        assert found[0]["detail"]["max_score"] == 5 and found[0]["detail"]["score"] == 6


@pytest.mark.parametrize("game", ["held", "shown"])
async def test_a_score_above_the_trusted_range_is_held_only_where_the_game_says(
    timed_server: Server, autojump_clock: trio.testing.MockClock, game: str
) -> None:
    server = timed_server
    rng = random.Random(4)
    with trio.fail_after(600):
        best = 0
        for n in range(12):  # 10 trusted players make the range; these games trust any age
            account = await register(server, f"p{n}")
            async with connect(server) as client:
                await client.login(account)
                points = rng.randint(8, 14)
                played = await play(server, client, game, account["user_id"], [500.0] * points)
                result = await submit(client, played)
                assert (result["saved"], result["held"]) == (True, False)
                best = max(best, len(played["points"]))
        assert await flags(server) == []
        star = await register(server, "star")
        async with connect(server) as client:
            await client.login(star)
            played = await play(server, client, game, star["user_id"], [100.0] * 95)
            result = await submit(client, played)
        assert result["saved"] is True
        held = game == "held"
        assert result["held"] is held
        assert result.get("held_reason") == ("review_top_score" if held else None)
        found = await flags(server)
        assert [(f["reason"], f["user_id"], f["holds"]) for f in found] == [
            ("outlier_score", star["user_id"], 0)
        ]
        detail = found[0]["detail"]
        assert (detail["range_top"], detail["range_from"], detail["trusted_players"]) == (
            best,
            "trusted players",
            12,
        )
        names = [name for name, _ in await board(server, game)]
        assert ("star" in names) is not held
        assert "p0" in names  # only the score is held, not the game's board
        # The player sees the same in their own results.
        async with http(server) as api:
            mine = (
                await api.get("/api/me", headers={"authorization": f"Bearer {star['token']}"})
            ).json()
        assert [(r["score"], r["held"], r["held_reason"]) for r in mine["results"]] == [
            (95, held, "review_top_score" if held else None)
        ]
        if held:  # cleared by a reviewer: on the board, and the range's new top
            await moderation.resolve_flag(
                server.service.store,
                found[0]["id"],
                ban=False,
                note="watched the replay",
                actor=moderation.Actor("t", "test"),
            )
            assert "star" in [name for name, _ in await board(server, game)]
            found_range = await server.service.store.review_range(
                game, server.service.clock.now_ms()
            )
            assert found_range is not None and found_range["top"] == 95


def test_game_settings_round_trip_through_the_store(tmp_path: Path) -> None:
    conn = open_database(databases.resolve(tmp_path / "g.db"))
    settings = GameSettings(
        duration_ms=5000,
        human_floor_ms=0,
        min_rhythm_cv=0.0,
        max_score=99,
        hold_outliers=True,
        title="Whack-a-mole finals",
    )
    with transaction(conn):
        ops.insert_game(conn, "g", settings, 0)
    assert ops.get_game(conn, "g") == settings
    with transaction(conn):
        changed = ops.update_game(conn, "g", {"max_score": None, "hold_outliers": False}, 1)
    assert changed.max_score is None and changed.hold_outliers is False
    assert ops.get_game(conn, "g") == changed
    with pytest.raises(ValueError, match="coefficient"), transaction(conn):
        ops.update_game(conn, "g", {"min_rhythm_cv": -1}, 2)
    conn.close()


# --- issue 23, end to end: the default configuration -------------------------------------


async def test_a_stall_flags_no_one_and_a_governor_bot_is_flagged_on_the_default_configuration(
    tmp_path: Path,
) -> None:
    """A server as `python run.py` runs it (its writer process), a game made with
    the defaults but for its length (`games add sprint --duration 11`), in real time, two
    players at once:

    - a person at 8 points a second whose network stalls for 2 s: the points queued behind
      it go out together when it ends (one write), stamped when they were scored. Nobody is
      flagged; the points more than the latency allowance late count for nothing; the result
      is above the range a new game's settings give (11 s x 10 a second / 2 = 55), so it is
      saved, held for review, said so in the reply and the player's own results, and on no
      board;
    - the window governor at 11 points a second, under the burst limit: flagged
      superhuman_rate while it plays, its result held as flagged.
    """
    path = databases.resolve(tmp_path / "test.db")
    databases.add_game(path, "sprint", **asdict(GameSettings(duration_ms=11_000)))
    async with running_server(make_config(tmp_path)) as server:
        now = server.service.clock.now_ms
        person_account = await register(server, "steady")
        bot_account = await register(server, "governor")

        async def person_plays() -> dict[str, Any]:
            async with connect(server) as client:
                await client.login(person_account)
                await client.enter("sprint", person_account["user_id"])
                started = await client.start(now())
                claims, queued = [], []
                began = trio.current_time()
                stall = (3.0, 5.0)  # seconds into the game
                rng, at, schedule = random.Random(5), 0.2, []
                while at < 10.6:  # about 8 a second, with a person's variation (CV 0.2)
                    schedule.append(at)
                    at += rng.lognormvariate(math.log(0.125) - 0.02, 0.2)
                for at in schedule:
                    await trio.sleep_until(began + at)
                    stamp = now()
                    queued.append(stamp)
                    if stall[0] <= trio.current_time() - began < stall[1]:
                        continue  # the network holds it back
                    ids = list(range(len(queued)))
                    for index, ts in zip(ids, queued, strict=True):  # all that waited, at once
                        await client.send(type="point", client_ts=ts, id=index)
                    for _ in queued:
                        reply = await client.recv()
                        while reply["type"] not in ("point_accepted", "point_rejected"):
                            reply = await client.recv()
                        if reply["type"] == "point_accepted":
                            claims.append(
                                {"token": reply["token"], "client_ts": queued[reply["id"]]}
                            )
                    queued = []
                end = await client.recv_type("end_game")
                result = await client.call(
                    type="submit_result",
                    start_token=started["start_token"],
                    end_token=end["end_token"],
                    points=claims,
                )
                return result

        async def bot_plays() -> dict[str, Any]:
            async with connect(server) as client:
                await client.login(bot_account)
                await client.enter("sprint", bot_account["user_id"])
                await client.start(now())
                began = trio.current_time()
                sent: list[float] = []
                rng = random.Random(23)
                at = 0.05
                while at < 10.8:
                    if len(sent) >= 12:  # the governor: never 13 in a second
                        at = max(at, sent[-12] + 1.003)
                    await trio.sleep_until(began + at)
                    sent.append(at)
                    await client.call(type="point", client_ts=now())
                    at += rng.lognormvariate(math.log(0.0909), 0.15)
                await client.recv_type("end_game")
                return {}

        results: dict[str, dict[str, Any]] = {}

        async def run(name: str, player: Any) -> None:
            results[name] = await player()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "person", person_plays)
                nursery.start_soon(run, "bot", bot_plays)
        found = await flags(server)
        by_user = {(f["user_id"], f["reason"]) for f in found}
        assert (bot_account["user_id"], "superhuman_rate") in by_user
        assert [f for f in found if f["user_id"] == person_account["user_id"]] == [
            f
            for f in found
            if f["user_id"] == person_account["user_id"] and f["reason"] == "outlier_score"
        ]
        person = results["person"]
        assert person["accepted"] is True and person["saved"] is True
        assert (person["held"], person["held_reason"]) == (True, "review_top_score")
        assert person["score"] > 55
        assert "steady" not in [name for name, _ in await board(server, "sprint")]
        async with http(server) as api:
            mine = (
                await api.get(
                    "/api/me", headers={"authorization": f"Bearer {person_account['token']}"}
                )
            ).json()
        assert mine["results"][0]["held_reason"] == "review_top_score"


async def test_throwaway_accounts_leave_the_range_where_it_was_and_the_next_bot_is_held(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The probe's attack on the old outlier fence, against a game's default settings: ten
    people with accounts older than a day set the range; 20 throwaway bot accounts (new, and
    flagged) score far above it, and five more new accounts score just under it; the range
    stays where it was, and a bot that plays like a fast person after them is held."""
    path = databases.resolve(tmp_path / "test.db")
    databases.add_game(path, "race", **asdict(GameSettings(duration_ms=30_000)))
    async with running_server(make_config(tmp_path, inline=True)) as server:
        store = server.service.store
        day_ago = server.service.clock.now_ms() - 2 * 86_400_000
        people = []
        for n in range(10):
            account = await register(server, f"veteran{n}")
            databases.sql(
                path, "UPDATE users SET created_at = ? WHERE id = ?", (day_ago, account["user_id"])
            )
            people.append(account)
        rng = random.Random(8)
        with trio.fail_after(3_000):  # 36 games of 30 s, virtual time
            for account in people:
                async with connect(server) as client:
                    await client.login(account)
                    game = await play(
                        server, client, "race", account["user_id"], person(rng, 29_000)
                    )
                    assert (await submit(client, game))["held"] is False
            before = await store.review_range("race", server.service.clock.now_ms())
            assert before is not None and before["from"] == "trusted players"
            top = before["top"]
            assert isinstance(top, int)
            for n in range(20):  # metronomes at 9 a second: flagged, far above the range
                account = await register(server, f"throwaway{n}")
                async with connect(server) as client:
                    await client.login(account)
                    game = await play(server, client, "race", account["user_id"], [111.0] * 250)
                    assert (await submit(client, game))["held_reason"] == "flagged"
            for n in range(5):  # human-like, just under the top: not held, not trusted
                account = await register(server, f"patient{n}")
                async with connect(server) as client:
                    await client.login(account)
                    gaps = [29_000 / (top + 1)] * (top - 1)
                    gaps = [g * rng.uniform(0.7, 1.3) for g in gaps]
                    game = await play(server, client, "race", account["user_id"], gaps)
                    result = await submit(client, game)
                    assert result["accepted"] is True and result["score"] <= top
            after = await store.review_range("race", server.service.clock.now_ms())
            assert after is not None and after["top"] == top
            bot = await register(server, "bot")
            async with connect(server) as client:
                await client.login(bot)
                gaps = [rng.lognormvariate(math.log(125), 0.3) for _ in range(210)]
                game = await play(server, client, "race", bot["user_id"], gaps)
                result = await submit(client, game)
        assert (result["held"], result["held_reason"]) == (True, "review_top_score")
        assert "bot" not in [name for name, _ in await board(server, "race")]


async def test_a_players_own_results_refuse_every_bad_credential_at_once(
    timed_server: Server,
) -> None:
    """GET /api/me: no header, another scheme, a bare scheme, a token past any length, bytes
    past ASCII, a token one character off, all sent at once: each 401 with its error code,
    and the owner is served afterwards."""
    server = timed_server
    owner = await register(server, "owner")
    bad: list[dict[str, str | bytes]] = [
        {},
        {"authorization": "Basic b3duZXI6eA=="},
        {"authorization": "Bearer"},
        {"authorization": "Bearer " + "x" * 8000},
        {"authorization": b"Bearer \xff\xfe\x80"},  # bytes past ASCII
        {"authorization": f"Bearer {owner['token']}x"},
    ]
    answers: list[tuple[int, str]] = []
    with trio.fail_after(30):
        async with http(server) as api:

            async def ask(headers: dict[str, str | bytes]) -> None:
                response = await api.get("/api/me", headers=headers)
                answers.append((response.status_code, response.json()["error"]))

            async with trio.open_nursery() as nursery:
                for headers in bad:
                    nursery.start_soon(ask, headers)
            assert answers == [(401, "auth_failed")] * len(bad)
            mine = await api.get("/api/me", headers={"authorization": f"Bearer {owner['token']}"})
            assert mine.status_code == 200
            assert mine.json() == {"user_id": owner["user_id"], "name": "owner", "results": []}


@pytest.mark.parametrize("needed", [1, 5, 40])
def test_the_quick_range_a_save_reads_is_the_range_of_the_whole_population(
    tmp_path: Path, needed: int
) -> None:
    """ops._review_range_quickly (what every save reads, in the writer) against
    core.review.review_range over every trusted best (what /admin and the evidence read),
    on random populations: flagged, cleared, banned, held, hidden, reviewed, young."""
    rng = random.Random(needed)
    conn = open_database(databases.resolve(tmp_path / "q.db"))
    now = 10**12
    settings = GameSettings(duration_ms=30_000, review_min_players=needed)
    with transaction(conn):
        ops.insert_game(conn, "g", settings, 0)
        for user in range(1, 62):  # 61 flags others' sessions only
            young = rng.random() < 0.3
            conn.execute(
                "INSERT INTO users (id, name, password_hash, created_at, banned_until)"
                " VALUES (?, ?, 'x', ?, ?)",
                (
                    user,
                    f"u{user}",
                    now - (3600_000 if young else 10**9),
                    now + 1 if rng.random() < 0.05 else None,
                ),
            )
        for n in range(300):
            user, session = rng.randint(1, 60), f"s{n}"
            conn.execute(
                "INSERT INTO game_sessions (id, game_id, user_id, settings_json, started_at,"
                " client_start_ts, start_token, state) VALUES (?, 'g', ?, '{}', 0, 0, 't',"
                " 'submitted')",
                (session, user),
            )
            conn.execute(
                "INSERT INTO scores (session_id, game_id, user_id, score, created_at, hidden,"
                " held, reviewed_at) VALUES (?, 'g', ?, ?, ?, ?, ?, ?)",
                (
                    session,
                    user,
                    rng.randint(1, 400),
                    now - 1000,
                    int(rng.random() < 0.05),
                    int(rng.random() < 0.05),
                    now if rng.random() < 0.1 else None,
                ),
            )
            if rng.random() < 0.1:
                conn.execute(
                    "INSERT INTO flags (created_at, reason, game_id, session_id, user_id,"
                    " detail_json, status) VALUES (0, 'x', 'g', ?, ?, '{}', ?)",
                    (session, rng.choice([user, 61]), rng.choice(["open", "cleared", "banned"])),
                )
    for _ in range(3):
        whole = core_review.review_range(ops.trusted_bests(conn, "g", now), settings)
        quick = ops._review_range_quickly(conn, "g", settings, now)
        assert (quick.top, quick.source) == (whole.top, whole.source)
        assert min(quick.trusted_players, needed) == min(whole.trusted_players, needed)
        settings = GameSettings(duration_ms=30_000, review_min_players=needed, review_above=50)
    conn.close()
