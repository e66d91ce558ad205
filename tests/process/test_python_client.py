"""The Python client (clients/python, issue 30) against a real server process: the synchronous
client of game loops and the asyncio one play, submit and get receipts; a dropped socket is
resumed; a guest is told its scores are not saved; the words are the JavaScript client's;
the pygame example plays a whole game headless; the package builds on its own."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scoreserver.server.launch import parse_banner, serve_command

ROOT = Path(__file__).parents[2]
CLIENT = ROOT / "clients" / "python"
sys.path.insert(0, str(CLIENT))

from scoreclient import AsyncScoreClient, ScoreClient, ScoreError, explain  # noqa: E402
from scoreclient.aio import now_ms  # noqa: E402
from scoreclient.words import WORDS  # noqa: E402

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("pyclient")
    db = folder / "p.db"
    subprocess.run(
        [sys.executable, "-m", "scoreserver.ops.cli", "games", "add", "dash", "--duration", "1.5"]
        + ["--db", str(db)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    process = subprocess.Popen(
        serve_command(db, folder / "p.key", "--login-attempts-per-addr", "0"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ports = parse_banner(process.stdout.readline())
        assert ports
        yield f"http://127.0.0.1:{ports[1]}"
    finally:
        process.terminate()
        process.wait(timeout=15)
        if process.stdout:
            process.stdout.close()


def test_the_words_are_the_javascript_clients(server: str) -> None:
    js = (ROOT / "scoreserver" / "static" / "scoreclient.js").read_text()
    block = js[js.index("const WORDS = {") : js.index("\n};", js.index("const WORDS = {"))]
    found = {
        m[0].strip('"'): json.loads(f'"{m[1]}"')
        for m in re.findall(r'^\s*("?[\w.]+"?):\s*"((?:[^"\\]|\\.)*)",\s*$', block, re.M)
    }
    assert found == WORDS
    assert explain("burst") == WORDS["burst"]
    assert explain("auth_failed", {"reason": "wrong_password"}) == "Wrong name or password."


def test_a_game_loop_plays_without_waiting_and_gets_its_receipt(server: str) -> None:
    scores = ScoreClient(server, "dash")
    try:
        scores.register("Loop", "correct horse battery")
        assert scores.enter()["duration_ms"] == 1500
        game = scores.start()
        events: list[tuple[str, dict]] = []
        sent = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(k == "result" for k, _ in events):
            if game.running and sent < 4:
                before = time.perf_counter()
                game.point()  # never waits for the network
                assert time.perf_counter() - before < 0.05
                sent += 1
            events += scores.poll()
            time.sleep(0.2)  # a frame of the game's loop
        kinds = [k for k, _ in events]
        assert kinds.count("point") == 4 and "end" in kinds, kinds
        result = next(d for k, d in events if k == "result")
        assert result["accepted"] and result["saved"] and result["score"] == 4
        assert isinstance(result["receipt"], str) and result["log_index"] >= 0
    finally:
        scores.close()


def test_asyncio_a_guest_is_warned_and_a_dropped_socket_is_resumed(server: str) -> None:
    async def play() -> tuple[list[str], dict]:
        async with AsyncScoreClient(server, "dash") as scores:
            await scores.enter()
            game = await scores.start()
            assert (await game.point())["accepted"]
            await scores._ws.close()  # the network drops the socket mid-game
            for _ in range(50):
                await asyncio.sleep(0.1)
                if scores._ws is not None and scores._room_ws is scores._ws:
                    break
            assert (await game.point())["accepted"]
            result = await game.result()
            kinds = []
            while not scores.events.empty():
                kinds.append(scores.events.get_nowait()[0])
            return kinds, result

    kinds, result = asyncio.run(play())
    assert "guest" in kinds and "disconnect" in kinds and "reconnect" in kinds, kinds
    assert result["accepted"] and result["score"] == 2 and not result["saved"]
    assert WORDS["guest"] == "Playing as a guest: scores are not saved unless you log in."


def test_a_point_is_stamped_when_the_game_called_it(server: str) -> None:
    """`point(at)` stamps the time given (a game's loop that got round to sending late); a
    time in the future or over a second old is not taken; stamps never go back. The
    synchronous client stamps at the call, not when its thread sends."""

    async def play() -> list[int]:
        async with AsyncScoreClient(server, "dash") as scores:
            await scores.enter()
            game = await scores.start()
            earlier = now_ms() - 300
            assert (await game.point(earlier))["accepted"]
            before = now_ms()
            assert (await game.point(before + 5_000))["accepted"]  # the future: now
            assert (await game.point(before - 5_000))["accepted"]  # too old: now
            assert (await game.point(earlier))["accepted"]  # before the last: the last
            stamps = [p["client_ts"] for p in game.points]
            assert stamps[0] == earlier
            assert before <= stamps[1] < before + 1_000 and stamps[2] >= stamps[1]
            assert stamps[3] == stamps[2]
            return stamps

    asyncio.run(play())
    scores = ScoreClient(server, "dash")
    try:
        scores.enter()
        game = scores.start()
        called = []
        # The client's thread is busy for 400 ms (as a long task holds a page) while the
        # game scores three points 50 ms apart: they are sent together, stamped apart.
        scores._loop.call_soon_threadsafe(time.sleep, 0.4)
        for _ in range(3):
            called.append(now_ms())
            game.point()
            time.sleep(0.05)  # a frame of the game's loop (the stamps are what is checked)
        deadline = time.monotonic() + 10
        while len(game._game.points) < 3:
            scores.poll()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stamps = [p["client_ts"] for p in game._game.points]
        # Each stamped at its call (the clock may tick a millisecond between the test's reading
        # and the client's), not 400 ms later when the busy thread sent them all together.
        assert all(0 <= s - c <= 5 for s, c in zip(stamps, called, strict=True)), (stamps, called)
    finally:
        scores.close()


def test_a_wrong_password_is_refused_in_words(server: str) -> None:
    async def attempt() -> None:
        async with AsyncScoreClient(server, "dash") as scores:
            await scores.register("Words", "correct horse battery")
            await scores.login("Words", "not the password")

    with pytest.raises(ScoreError) as refused:
        asyncio.run(attempt())
    assert refused.value.code == "auth_failed"
    assert refused.value.words == "Wrong name or password."


def test_the_pygame_example_plays_a_whole_game_headless(server: str) -> None:
    pytest.importorskip("pygame")
    run = subprocess.run(
        [sys.executable, "examples/pygame_demo.py", "--server", server, "--game", "dash"]
        + ["--name", "Pyga", "--password", "correct horse battery", "--register", "--auto", "3"],
        cwd=CLIENT,
        env={
            **os.environ,
            "SDL_VIDEODRIVER": "dummy",
            "SDL_AUDIODRIVER": "dummy",
            "PYTHONPATH": str(CLIENT),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["accepted"] and result["saved"] and result["score"] == 3
    assert "Event loop is closed" not in run.stderr


def test_the_package_builds_on_its_own(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"]
        + ["-w", str(tmp_path), str(CLIENT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert [p.name for p in tmp_path.glob("scoreclient-1.2.0-*.whl")]
