"""The browser side in real headless Chromium (Debian's), driven by Playwright.

A server process is started with a 4-second demo game. Screenshots go to tests/artifacts/.
Without /usr/bin/chromium these tests skip, unless SCORESERVER_REQUIRE_BROWSER is set (CI).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from scoreserver.server.launch import parse_banner, serve_command

from ..players import LONG_NAME, honest_score, metronome_bot

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent.parent / "artifacts"
DATABASES: dict[str, str] = {}  # the database file behind each server URL

pytestmark = pytest.mark.browser

if not Path(CHROMIUM).exists():
    if os.environ.get("SCORESERVER_REQUIRE_BROWSER"):
        raise RuntimeError(f"{CHROMIUM} is required (SCORESERVER_REQUIRE_BROWSER is set)")
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server process with a 4 s demo game; yields its HTTP base URL."""
    folder = tmp_path_factory.mktemp("browser")
    db = str(folder / "b.db")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "scoreserver.ops.cli",
            "games",
            "add",
            "demo",
            "--duration",
            "4",
            "--db",
            db,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    process = subprocess.Popen(
        serve_command(folder / "b.db", folder / "b.key"), stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        ports = parse_banner(line)
        assert ports, f"no banner: {line!r}"
        url = f"http://127.0.0.1:{ports[1]}"
        DATABASES[url] = db
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)
        if process.stdout:
            process.stdout.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def shot(page: object, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))  # type: ignore[attr-defined]


def hit_targets(page: object, times: int) -> None:
    """Click the moving target like a person: one hit every 150 ms."""
    for _ in range(times):
        page.locator("#target").click()  # type: ignore[attr-defined]
        page.wait_for_timeout(150)  # type: ignore[attr-defined]


def test_a_guest_is_warned_and_plays_a_short_game(server_url: str, page: object) -> None:
    page.goto(server_url + "/")  # type: ignore[attr-defined]
    warning = page.locator("#guest-warning")  # type: ignore[attr-defined]
    sync_api.expect(warning).to_be_visible()
    sync_api.expect(warning).to_contain_text("scores won't be saved unless you log in")
    sync_api.expect(page.locator("#time")).to_have_text("4.0")  # type: ignore[attr-defined]
    shot(page, "demo-guest-start")
    page.locator("#start").click()  # type: ignore[attr-defined]
    hit_targets(page, 5)
    sync_api.expect(page.locator("#score")).to_have_text("5")  # type: ignore[attr-defined]
    shot(page, "demo-playing")
    result = page.locator("#result")  # type: ignore[attr-defined]
    sync_api.expect(result).to_have_text(
        "Accepted: 5 points (not saved: guests' scores are not kept).", timeout=15_000
    )
    shot(page, "demo-guest-result")
    # Registering now: what the guest was told no longer holds.
    page.fill("#name", "Guestless")  # type: ignore[attr-defined]
    page.fill("#password", "correct horse battery")  # type: ignore[attr-defined]
    page.locator("#register").click()  # type: ignore[attr-defined]
    sync_api.expect(result).to_have_text(
        "Logged in as Guestless: your scores are saved from now on."
    )
    # Logging out on a shared machine leaves nothing for the next person to click.
    page.locator("#logout").click()  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#who")).to_have_text("guest")  # type: ignore[attr-defined]
    assert page.input_value("#name") == "" and page.input_value("#password") == ""  # type: ignore[attr-defined]


def test_a_player_registers_plays_and_the_board_updates_live(
    server_url: str, browser: object, page: object
) -> None:
    board_context = browser.new_context(viewport={"width": 1280, "height": 720})  # type: ignore[attr-defined]
    board = board_context.new_page()
    board.goto(server_url + "/board/demo")
    sync_api.expect(board.locator("#status")).to_have_text("live", timeout=10_000)

    page.goto(server_url + "/")  # type: ignore[attr-defined]
    page.fill("#name", "Rosa")  # type: ignore[attr-defined]
    page.fill("#password", "correct horse battery")  # type: ignore[attr-defined]
    page.locator("#register").click()  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#who")).to_have_text("logged in: Rosa")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#guest-warning")).to_be_hidden()  # type: ignore[attr-defined]
    page.locator("#start").click()  # type: ignore[attr-defined]
    hit_targets(page, 7)
    sync_api.expect(page.locator("#result")).to_have_text(  # type: ignore[attr-defined]
        "Accepted: 7 points, saved. Your receipt: check it", timeout=15_000
    )
    shot(page, "demo-saved")
    # The receipt's link opens /verify, which checks it in this browser and finds it in the log.
    href = page.locator("#receipt-link").get_attribute("href")  # type: ignore[attr-defined]
    verify = board_context.new_page()
    verify.goto(server_url + href)
    sync_api.expect(verify.locator("#verdict")).to_have_text(
        "Genuine: Rosa scored 7 in demo.", timeout=10_000
    )
    sync_api.expect(verify.locator("#facts")).to_contain_text("In the results log: entry")
    shot(verify, "verify-receipt")
    # One character of the receipt changed: refused, in words.
    receipt = href.split("#", 1)[1]
    middle = len(receipt) // 2
    changed = receipt[:middle] + ("A" if receipt[middle] != "A" else "B") + receipt[middle + 1 :]
    verify.fill("#receipt", changed)
    verify.locator("#check").click()
    sync_api.expect(verify.locator("#verdict")).to_have_text(
        re.compile(r"^Not verified: (This receipt was changed|That is not a scoreserver receipt)")
    )
    verify.close()
    # The board, another browser page, shows the score arrive without a reload.
    row = board.locator("#rows-all tr", has_text="Rosa")
    sync_api.expect(row).to_contain_text("7", timeout=10_000)
    shot(board, "board-live")
    board_context.close()
    reply = httpx.get(server_url + "/api/games/demo/leaderboard").json()
    assert {"name": "Rosa", "score": 7} in [
        {"name": e["name"], "score": e["score"]} for e in reply["entries"]
    ]


def test_a_scripted_cheat_is_stopped_and_the_page_says_why(server_url: str, page: object) -> None:
    page.goto(server_url + "/")  # type: ignore[attr-defined]
    page.fill("#name", "Speedy")  # type: ignore[attr-defined]
    page.fill("#password", "correct horse battery")  # type: ignore[attr-defined]
    page.locator("#register").click()  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#who")).to_have_text("logged in: Speedy")  # type: ignore[attr-defined]
    page.locator("#start").click()  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#target")).to_be_visible()  # type: ignore[attr-defined]
    # What a cheater types in the console: points fired in a tight loop.
    outcomes = page.evaluate(  # type: ignore[attr-defined]
        """async () => {
            const game = window.scoreClient.game;
            const replies = await Promise.all(Array.from({ length: 80 }, () => game.point()));
            return replies.map((r) => r.accepted ? "ok" : r.reason);
        }"""
    )
    assert outcomes.count("ok") == 12  # the default burst threshold, then nothing counts
    assert "burst" in outcomes
    # The player reads plain words, not codes; the clock shows what was left when it stopped.
    message = page.locator("#message")  # type: ignore[attr-defined]
    sync_api.expect(message).to_have_text(
        "Game stopped: too many points too fast. It will be reviewed.", timeout=10_000
    )
    log = page.locator("#log")  # type: ignore[attr-defined]
    sync_api.expect(log).to_contain_text(
        "Point not counted: Too fast: points that close together do not count."
    )
    assert "burst" not in log.inner_text() and "burst_limit" not in message.inner_text()
    assert float(page.locator("#time").inner_text()) > 1.0  # type: ignore[attr-defined]
    shot(page, "demo-cheat-stopped")


def test_a_point_is_stamped_when_the_player_acted_however_busy_the_page(
    server_url: str, page: object
) -> None:
    """Three taps 150 ms apart whose handlers a long task held back and then ran together: the
    events' own times stamp them 150 ms apart, not a millisecond; a time in the future or over
    a second old is not taken, and stamps never go back."""
    page.goto(server_url + "/")  # type: ignore[attr-defined]
    page.locator("#start").click()  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#target")).to_be_visible()  # type: ignore[attr-defined]
    stamps = page.evaluate(  # type: ignore[attr-defined]
        """async () => {
            const game = window.scoreClient.game;
            const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
            const taps = [];
            for (let n = 0; n < 3; n++) {
                taps.push(new PointerEvent("pointerdown"));
                await sleep(150);
            }
            const busyUntil = performance.now() + 400;  // a long task
            while (performance.now() < busyUntil) {}
            const replies = [];
            for (const tap of taps) replies.push(await game.point(tap));
            const before = Math.round(performance.timeOrigin + performance.now());
            replies.push(await game.point(performance.now() + 5000));  // the future
            replies.push(await game.point(performance.now() - 5000));  // too old
            replies.push(await game.point(taps[0]));  // earlier than the last stamp
            return {
                accepted: replies.map((r) => r.accepted),
                events: taps.map((t) => Math.round(performance.timeOrigin + t.timeStamp)),
                sent: game.points.map((p) => p.client_ts),
                before,
            };
        }"""
    )
    assert stamps["accepted"] == [True] * 6
    sent, events = stamps["sent"], stamps["events"]
    assert sent[:3] == events
    gaps = [b - a for a, b in zip(sent, sent[1:3], strict=False)]
    assert all(140 <= gap <= 400 for gap in gaps), gaps
    assert sent[3] >= stamps["before"] and sent[4] >= sent[3]  # now, not the given time
    assert sent[3] < events[2] + 5000
    assert sent[5] == sent[4]  # not back to the first tap's time


def test_the_client_module_is_served_as_javascript(server_url: str) -> None:
    reply = httpx.get(server_url + "/static/scoreclient.js")
    assert reply.status_code == 200
    assert "javascript" in reply.headers["content-type"]
    assert "export class ScoreClient" in reply.text
    config = httpx.get(server_url + "/api/config").json()
    assert isinstance(config["ws_port"], int) and config["ws_port"] > 0
    started = time.monotonic()
    assert httpx.get(server_url + "/board/demo").status_code == 200
    assert time.monotonic() - started < 10


def test_the_client_resumes_by_itself_when_its_socket_drops(server_url: str, page: object) -> None:
    page.goto(server_url + "/")  # type: ignore[attr-defined]
    page.fill("#name", "Dropper")  # type: ignore[attr-defined]
    page.fill("#password", "correct horse battery")  # type: ignore[attr-defined]
    page.locator("#register").click()  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#who")).to_have_text("logged in: Dropper")  # type: ignore[attr-defined]
    page.locator("#start").click()  # type: ignore[attr-defined]
    hit_targets(page, 2)
    # The network drops the socket mid-game (a close the page did not ask for).
    page.evaluate("window.scoreClient._ws.close(4000, 'network gone')")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#log")).to_contain_text("reconnected; the game goes on")  # type: ignore[attr-defined]
    hit_targets(page, 2)
    sync_api.expect(page.locator("#result")).to_have_text(  # type: ignore[attr-defined]
        "Accepted: 4 points, saved. Your receipt: check it", timeout=15_000
    )
    assert "connection lost" in page.locator("#log").inner_text()  # type: ignore[attr-defined]


def set_admin_password(server_url: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "scoreserver.ops.cli",
            "admin",
            "set-password",
            "--password-stdin",
            "--db",
            DATABASES[server_url],
        ],
        input="a long admin secret\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )


def answer_dialogs(page: object, answers: list[str | bool]) -> list[str | bool]:
    """Answer the page's next dialogs in turn: a string is typed into a prompt and accepted,
    True accepts (an alert, a confirm), False dismisses. The list empties as they are used."""

    def answer(dialog: Any) -> None:
        if not answers:
            dialog.dismiss()
            return
        reply = answers.pop(0)
        if reply is False:
            dialog.dismiss()
        elif reply is True:
            dialog.accept()
        else:
            dialog.accept(reply)

    page.on("dialog", answer)  # type: ignore[attr-defined]
    return answers


def admin_login(page: object, server_url: str) -> None:
    set_admin_password(server_url)
    page.goto(f"{server_url}/admin")  # type: ignore[attr-defined]
    page.fill("#password", "a long admin secret")  # type: ignore[attr-defined]
    page.click("#login-form button")  # type: ignore[attr-defined]


def test_the_review_console_bans_by_id_and_logs_out_on_the_server(
    server_url: str, page: object
) -> None:
    """A name made of path characters is banned from /admin (the API takes the id), and
    "Log out" ends the session on the server, not only in the page."""
    registered = httpx.post(
        f"{server_url}/api/register", json={"name": "../dot", "password": "hunter2hunter2"}
    )
    assert registered.status_code == 201, registered.text
    set_admin_password(server_url)
    page.goto(f"{server_url}/admin")  # type: ignore[attr-defined]
    page.fill("#password", "a long admin secret")  # type: ignore[attr-defined]
    page.click("#login-form button")  # type: ignore[attr-defined]
    page.click("#tab-button-players")  # type: ignore[attr-defined]
    row = page.locator("#users tr", has_text="../dot")  # type: ignore[attr-defined]
    row.wait_for()
    # A note, a length (empty: until lifted), and, for a ban without end, a confirmation.
    answers = answer_dialogs(page, ["alt account", "", True])
    row.locator("button", has_text="Ban").click()
    page.locator("#users tr", has_text="../dot").locator("button", has_text="Unban").wait_for()  # type: ignore[attr-defined]
    assert answers == [], answers  # every question was asked
    token = page.evaluate("sessionStorage.getItem('scoreserver.admin')")  # type: ignore[attr-defined]
    auth = {"authorization": f"Bearer {token}"}
    users = httpx.get(f"{server_url}/api/admin/users", headers=auth).json()["users"]
    assert [u["banned_until"] is not None for u in users if u["name"] == "../dot"] == [True]
    shot(page, "admin-after-ban")
    page.click("#logout")  # type: ignore[attr-defined]
    page.locator("#login").wait_for()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while httpx.get(f"{server_url}/api/admin/users", headers=auth).status_code != 401:
        assert time.monotonic() < deadline, "the session outlived Log out"
        time.sleep(0.1)  # the page's logout request is in flight (real time: a browser)


def test_the_review_console_draws_a_flagged_sessions_evidence(
    server_url: str, browser: object
) -> None:
    user_id = metronome_bot(server_url)
    for size, name in (((1280, 800), "desktop"), ((390, 844), "phone")):
        context = browser.new_context(viewport={"width": size[0], "height": size[1]})  # type: ignore[attr-defined]
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
        admin_login(page, server_url)
        row = page.locator("#flags tr", has_text="robotic_rhythm")
        row.first.wait_for()
        row.first.click()
        page.locator("#charts figure").nth(3).wait_for()
        titles = page.locator("#charts figcaption b").all_inner_texts()
        assert titles == ["Timeline", "Intervals", "Rhythm", "Clock"]
        # Drawn: marks in each chart, the flagged figure and the human floor labelled.
        assert page.locator("#charts figure").nth(0).locator("line").count() > 40
        assert page.locator("#charts figure").nth(1).locator("rect").count() >= 1
        rhythm_text = " ".join(
            page.locator("#charts figure").nth(2).locator("text").all_text_contents()
        )
        assert "this session 0.0" in rhythm_text and "flags below 0.05" in rhythm_text
        assert "human floor" in page.locator("#charts figure").nth(1).text_content()
        # Nothing cut off: no horizontal overflow, every chart inside the viewport.
        overflow = page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth,"
            " Math.max(...[...document.querySelectorAll('#charts svg')]"
            ".map(s => s.getBoundingClientRect().right))]"
        )
        scroll_width, client_width, rightmost = overflow
        assert rightmost <= client_width, (name, overflow)
        assert scroll_width <= client_width, (name, overflow)
        page.locator("#charts").screenshot(path=str(ARTIFACTS / f"evidence-{name}.png"))
        shot(page, f"admin-evidence-{name}")
        page.click("#tab-button-players")
        sync_api.expect(page.locator("#users")).to_contain_text(LONG_NAME)
        context.close()
        assert errors == [], errors
    assert user_id > 0


def cli(server_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's command, in a process of its own, on the server's database."""
    return subprocess.run(
        [sys.executable, "-m", "scoreserver.ops.cli", *args, "--db", DATABASES[server_url]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_a_board_drops_a_banned_player_within_two_seconds_and_brings_them_back(
    server_url: str, page: object
) -> None:
    honest_score(server_url, "carol", 6)
    page.goto(f"{server_url}/board/demo")  # type: ignore[attr-defined]
    row = page.locator("#rows-all tr", has_text="carol")  # type: ignore[attr-defined]
    row.wait_for(timeout=10_000)
    cli(server_url, "users", "ban", "carol", "--note", "scripted, seen on stream")
    banned_at = time.monotonic()
    row.wait_for(state="detached", timeout=2_000)  # within 2 s of the command
    assert time.monotonic() - banned_at < 2.0
    cli(server_url, "users", "unban", "carol", "--note", "appeal upheld")
    page.locator("#rows-all tr", has_text="carol").wait_for(timeout=2_000)  # type: ignore[attr-defined]
    shot(page, "board-after-unban")


def test_cancel_on_the_consoles_prompts_changes_nothing(server_url: str, page: object) -> None:
    account = httpx.post(
        f"{server_url}/api/register", json={"name": "dora", "password": "hunter2hunter2"}
    ).json()
    admin_login(page, server_url)
    page.click("#tab-button-players")  # type: ignore[attr-defined]
    row = page.locator("#users tr", has_text="dora")  # type: ignore[attr-defined]
    row.wait_for()
    audit_before = cli(server_url, "audit").stdout
    page.once("dialog", lambda dialog: dialog.dismiss())  # type: ignore[attr-defined]
    row.locator("button", has_text="Ban").click()
    page.wait_for_timeout(500)  # type: ignore[attr-defined]  # give a wrong request time to land
    page.once("dialog", lambda dialog: dialog.accept(""))  # type: ignore[attr-defined]
    page.once("dialog", lambda dialog: dialog.accept())  # type: ignore[attr-defined]  # the alert
    row.locator("button", has_text="Ban").click()
    page.wait_for_timeout(500)  # type: ignore[attr-defined]
    import sqlite3

    conn = sqlite3.connect(DATABASES[server_url])
    try:
        banned_until = conn.execute(
            "SELECT banned_until FROM users WHERE id = ?", (account["user_id"],)
        ).fetchone()
    finally:
        conn.close()
    assert banned_until == (None,)
    assert cli(server_url, "audit").stdout == audit_before


def wait_for_game(server_url: str, game_id: str) -> None:
    """Until the server lists a game just added from the command line."""
    deadline = time.monotonic() + 10
    while game_id not in [
        g["game_id"] for g in httpx.get(f"{server_url}/api/games").json()["games"]
    ]:
        assert time.monotonic() < deadline, "the server did not pick up the new game"
        time.sleep(0.1)  # the server reloads settings within about 2 s (real time: a process)


def test_a_mistyped_game_and_the_pages_browsers_ask_for(server_url: str, page: object) -> None:
    """A game that does not exist is said so (not "cannot reach the server"); /board/ lists
    the games; favicon.ico is an icon; an empty board has no "1." before its message."""
    page.goto(f"{server_url}/?game=nope")  # type: ignore[attr-defined]
    message = page.locator("#message")  # type: ignore[attr-defined]
    sync_api.expect(message).to_contain_text("There is no game called “nope” on this server.")
    assert "reach" not in message.inner_text()
    sync_api.expect(message.locator("a", has_text="demo")).to_have_attribute("href", "/?game=demo")
    answer = page.goto(f"{server_url}/board/nope")  # type: ignore[attr-defined]
    assert answer.status == 404
    sync_api.expect(page.locator("h1")).to_have_text("There is no game called “nope”")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#games a", has_text="demo").first).to_be_visible()  # type: ignore[attr-defined]
    page.goto(f"{server_url}/board/")  # type: ignore[attr-defined]
    link = page.locator("#games a", has_text="demo").first  # type: ignore[attr-defined]
    sync_api.expect(link).to_have_attribute("href", "/board/demo")
    icon = httpx.get(f"{server_url}/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    cli(server_url, "games", "add", "empty", "--duration", "5", "--title", "The Empty Cup")
    wait_for_game(server_url, "empty")
    page.goto(f"{server_url}/board/empty")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#title")).to_have_text("The Empty Cup", timeout=10_000)  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#empty-all")).to_have_text("No scores yet. Be the first!")  # type: ignore[attr-defined]
    shot(page, "board-empty")
    page.goto(f"{server_url}/?game=empty")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#board-empty")).to_have_text("No scores yet.")  # type: ignore[attr-defined]
    assert page.locator("#board li").count() == 0  # type: ignore[attr-defined]
    # A 32-character name with no space stays inside the demo's sidebar.
    honest_score(server_url, "W" * 32, 3)
    page.goto(f"{server_url}/")  # type: ignore[attr-defined]
    entry = page.locator("#board li", has_text="W" * 32)  # type: ignore[attr-defined]
    entry.wait_for()
    inside = page.evaluate(
        "() => { const li = [...document.querySelectorAll('#board li')].find("
        "l => l.textContent.includes('WWWW')); const box = li.closest('.panel')"
        ".getBoundingClientRect(); const r = li.getBoundingClientRect();"
        " return r.right <= box.right && li.scrollWidth <= li.clientWidth; }"
    )
    assert inside


def test_a_player_deletes_their_account_from_the_demo(server_url: str, page: object) -> None:
    page.goto(server_url + "/")  # type: ignore[attr-defined]
    page.fill("#name", "Fleeting")  # type: ignore[attr-defined]
    page.fill("#password", "correct horse battery")  # type: ignore[attr-defined]
    page.locator("#register").click()  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#who")).to_have_text("logged in: Fleeting")  # type: ignore[attr-defined]
    page.locator("#erase summary").click()  # type: ignore[attr-defined]
    page.fill("#erase-password", "not the password")  # type: ignore[attr-defined]
    page.locator("#erase-confirm").click()  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#account-error")).not_to_be_empty()  # type: ignore[attr-defined]
    page.fill("#erase-password", "correct horse battery")  # type: ignore[attr-defined]
    page.locator("#erase-confirm").click()  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#message")).to_have_text("Your account was deleted.")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#who")).to_have_text("guest")  # type: ignore[attr-defined]
    login = httpx.post(
        f"{server_url}/api/login", json={"name": "Fleeting", "password": "correct horse battery"}
    )
    assert login.status_code == 401


def test_the_console_shows_session_ids_and_hides_and_restores_a_score(
    server_url: str, page: object
) -> None:
    account = honest_score(server_url, "Hana", 4)

    def on_board() -> bool:
        entries = httpx.get(f"{server_url}/api/games/demo/leaderboard?limit=100").json()["entries"]
        return any(e["user_id"] == account["user_id"] for e in entries)

    assert on_board()
    admin_login(page, server_url)
    page.click("#tab-button-scores")  # type: ignore[attr-defined]
    row = page.locator("#scores tr", has_text="Hana")  # type: ignore[attr-defined]
    row.wait_for()
    results = cli(server_url, "export", "demo", "--results").stdout
    session = next(
        r["session_id"] for r in csv.DictReader(io.StringIO(results)) if r["player"] == "Hana"
    )
    assert session[:12] in row.inner_text()
    page.once("dialog", lambda dialog: dialog.accept("test: hide"))  # type: ignore[attr-defined]
    row.locator("button", has_text="Hide").click()
    page.locator("#scores tr", has_text="Hana").locator("button", has_text="Restore").wait_for()  # type: ignore[attr-defined]
    assert not on_board()
    page.once("dialog", lambda dialog: dialog.accept("test: restore"))  # type: ignore[attr-defined]
    page.locator("#scores tr", has_text="Hana").locator("button", has_text="Restore").click()  # type: ignore[attr-defined]
    page.locator("#scores tr", has_text="Hana").locator("button", has_text="Hide").wait_for()  # type: ignore[attr-defined]
    assert on_board()
    audit = cli(server_url, "audit").stdout
    assert "test: hide" in audit and "test: restore" in audit


@pytest.fixture(scope="module")
def workers_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str], str]]:
    """`serve --workers 2` with a 6 s demo game: (HTTP URL, each worker's socket URL, db)."""
    folder = tmp_path_factory.mktemp("workers")
    db = str(folder / "w.db")
    subprocess.run(
        [sys.executable, "-m", "scoreserver.ops.cli", "games", "add", "demo"]
        + ["--duration", "6", "--db", db],
        check=True,
        capture_output=True,
        timeout=60,
    )
    process = subprocess.Popen(
        serve_command(db, folder / "w.key", "--workers", "2"), stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        ports = parse_banner(line)
        assert ports, f"no banner: {line!r}"
        workers = [w for w in line.split() if w.startswith("ws://")][1:]
        assert len(workers) == 2, line
        yield f"http://127.0.0.1:{ports[1]}", workers, db
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout:
            process.stdout.close()


def test_the_client_follows_session_elsewhere_to_the_worker_that_has_its_game(
    workers_url: tuple[str, list[str], str], page: object
) -> None:
    """Two workers: the game runs on one; the page's socket drops and comes back on the other,
    which answers `session_elsewhere`; the client moves to the right one by itself, resumes,
    and the game is saved."""
    url, workers, db = workers_url
    page.goto(url + "/")  # type: ignore[attr-defined]
    page.fill("#name", "Mover")  # type: ignore[attr-defined]
    page.fill("#password", "correct horse battery")  # type: ignore[attr-defined]
    page.locator("#register").click()  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#who")).to_have_text("logged in: Mover")  # type: ignore[attr-defined]
    page.evaluate(  # type: ignore[attr-defined]
        "window.scoreClient.addEventListener('moved', (e) => { window.movedTo = e.detail.url; })"
    )
    page.locator("#start").click()  # type: ignore[attr-defined]
    hit_targets(page, 2)
    with sqlite3.connect(db) as conn:
        owner = conn.execute(
            "SELECT nodes.url FROM game_sessions JOIN nodes ON nodes.id = node_id"
            " WHERE state = 'running'"
        ).fetchone()[0]
    other = next(w for w in workers if w != owner)
    # The network drops the socket; the next connection lands on the other worker.
    page.evaluate(f"window.scoreClient.socketUrl = {other!r}")  # type: ignore[attr-defined]
    page.evaluate("window.scoreClient._ws.close(4000, 'network gone')")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#log")).to_contain_text("reconnected; the game goes on")  # type: ignore[attr-defined]
    assert page.evaluate("window.movedTo") == owner  # type: ignore[attr-defined]
    hit_targets(page, 1)
    sync_api.expect(page.locator("#result")).to_have_text(  # type: ignore[attr-defined]
        "Accepted: 3 points, saved. Your receipt: check it", timeout=15_000
    )


# --- the consoles round two (issue 26) ------------------------------------------------------

# Every control and heading inside the page's width, and no two of them on top of each other.
LAYOUT_CHECK = (Path(__file__).parent / "layout.js").read_text()

SIZES = (((1280, 800), "desktop"), ((1920, 1080), "wide"), ((390, 844), "phone"))


def laid_out(page: object, where: str, root: str = "body") -> None:
    problems = page.evaluate(LAYOUT_CHECK, root)  # type: ignore[attr-defined]
    assert problems == [], (where, problems)


def test_the_console_at_three_widths_lays_out_every_tab(server_url: str, browser: object) -> None:
    """/admin's flag list, evidence, players, a player's page, games and audit at 1280, 1920
    and 390 px: nothing cut off, nothing on top of anything else; on a phone, picking a flag
    brings its evidence into view."""
    metronome_bot(server_url, "LayoutBot")
    honest_score(server_url, "Layla", 3)
    set_admin_password(server_url)
    for (width, height), name in SIZES:
        context = browser.new_context(viewport={"width": width, "height": height})  # type: ignore[attr-defined]
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
        admin_login(page, server_url)
        page.locator("#flags tr").first.wait_for()
        laid_out(page, f"flags {name}")
        page.locator("#flags tr", has_text="LayoutBot").first.click()
        page.locator("#charts figure").nth(3).wait_for()
        laid_out(page, f"evidence {name}")
        if name == "phone":  # the evidence is where the reader is, not 2,800 px below
            top = page.evaluate("document.getElementById('detail').getBoundingClientRect().top")
            assert abs(top) < height, top
        shot(page, f"admin-evidence-{name}")
        page.click("#tab-button-players")
        page.locator("#users tr", has_text="Layla").click()
        sync_api.expect(page.locator("#player-name")).to_contain_text("Layla")
        page.locator("#player-results tr").first.wait_for()
        laid_out(page, f"player page {name}")
        shot(page, f"admin-player-{name}")
        page.click("#tab-button-games")
        page.locator("#games tr", has_text="demo").wait_for()
        laid_out(page, f"games {name}")
        page.click("#tab-button-scores")
        page.locator("#scores tr").first.wait_for()
        laid_out(page, f"scores {name}")
        page.click("#tab-button-audit")
        page.locator("#audit tr").first.wait_for()
        laid_out(page, f"audit {name}")
        # The audit's note column is a column, not a sliver: at least a fifth of the table.
        note, table = page.evaluate(
            "[document.querySelector('#tab-audit th:last-child').getBoundingClientRect().width,"
            " document.querySelector('#tab-audit table').getBoundingClientRect().width]"
        )
        assert note >= table / 5, (name, note, table)
        context.close()
        assert errors == [], errors


def test_a_new_flag_appears_in_the_console_within_two_seconds(
    server_url: str, page: object
) -> None:
    admin_login(page, server_url)
    page.locator("#flags").wait_for()  # type: ignore[attr-defined]
    page.wait_for_function("document.title.includes('scoreserver review')")  # type: ignore[attr-defined]
    # A stranger claims to be someone else: a flag, raised while the console is open.
    from websockets.sync.client import connect as ws_connect

    port = httpx.get(f"{server_url}/api/config").json()["ws_port"]
    with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "enter_game_room", "game_id": "demo", "user_id": 424242}))
        assert json.loads(ws.recv(timeout=10))["code"] == "identity_mismatch"
    raised = time.monotonic()
    row = page.locator("#flags tr", has_text="identity_mismatch")  # type: ignore[attr-defined]
    row.first.wait_for(timeout=4_000)
    assert time.monotonic() - raised < 3.0  # polled every 2 s, fetched at once
    title = page.title()  # type: ignore[attr-defined]
    assert re.match(r"\(\d+\) scoreserver review", title), title


def test_the_demo_forgets_the_last_player_says_why_a_login_fails_and_resets_a_password(
    server_url: str, page: object
) -> None:
    honest_score(server_url, "Olga", 2)
    page.goto(server_url + "/")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#board-title")).to_have_text("demo")  # type: ignore[attr-defined]
    # A wrong password is said so, in words (not "your login has expired").
    page.fill("#name", "Olga")  # type: ignore[attr-defined]
    page.fill("#password", "not her password")  # type: ignore[attr-defined]
    page.click("#login")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#account-error")).to_have_text("Wrong name or password.")  # type: ignore[attr-defined]
    # A name too long is said so as it is typed, not cut short.
    page.fill("#name", "x" * 38)  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#account-error")).to_contain_text(
        "at most 32 characters (this one has 38)"
    )  # type: ignore[attr-defined]
    # The organiser's reset code sets a new password from the page.
    code = re.search(
        r"reset code for Olga: (\S+)", cli(server_url, "users", "reset-password", "Olga").stdout
    )
    assert code is not None
    page.fill("#name", "Olga")  # type: ignore[attr-defined]
    page.locator("#forgot summary").click()  # type: ignore[attr-defined]
    page.fill("#reset-code", code[1].lower())  # type: ignore[attr-defined]
    page.fill("#reset-password", "a brand new one")  # type: ignore[attr-defined]
    page.click("#reset-confirm")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#who")).to_have_text("logged in: Olga")  # type: ignore[attr-defined]
    # Her own results and their status, and her entry in bold on the board.
    sync_api.expect(page.locator("#my-results li").first).to_contain_text("2 points")  # type: ignore[attr-defined]
    bold = page.locator("#board li", has_text="Olga")  # type: ignore[attr-defined]
    sync_api.expect(bold).to_have_css("font-weight", "700")
    for size, name in (((1280, 800), "desktop"), ((1920, 1080), "wide"), ((390, 844), "phone")):
        page.set_viewport_size({"width": size[0], "height": size[1]})  # type: ignore[attr-defined]
        laid_out(page, f"demo {name}")
    page.set_viewport_size({"width": 1200, "height": 800})  # type: ignore[attr-defined]
    # Logging out leaves nothing of hers on the page.
    page.click("#logout")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#who")).to_have_text("guest")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#mine")).to_be_hidden()  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#board li", has_text="Olga")).to_have_css("font-weight", "400")  # type: ignore[attr-defined]
    # Banned: the login says so, with the ban's end.
    cli(server_url, "users", "ban", "Olga", "--days", "2", "--note", "test")
    page.fill("#name", "Olga")  # type: ignore[attr-defined]
    page.fill("#password", "a brand new one")  # type: ignore[attr-defined]
    page.click("#login")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#account-error")).to_contain_text("This account is banned until")  # type: ignore[attr-defined]
    cli(server_url, "users", "unban", "Olga", "--note", "test over")


def test_another_games_page_says_its_title_and_the_big_screen_uses_its_space(
    server_url: str, browser: object
) -> None:
    honest_score(server_url, "Bigscreen", 2)
    cli(server_url, "games", "add", "sprint", "--duration", "5", "--title", "Sprint Cup")
    wait_for_game(server_url, "sprint")
    for (width, height), name in SIZES:
        context = browser.new_context(viewport={"width": width, "height": height})  # type: ignore[attr-defined]
        page = context.new_page()
        page.goto(f"{server_url}/?game=sprint")
        sync_api.expect(page.locator("#game-title")).to_have_text("Sprint Cup")
        sync_api.expect(page.locator("#board-title")).to_have_text("Sprint Cup")
        assert page.title() == "scoreserver demo: Sprint Cup"
        page.goto(f"{server_url}/board/demo")
        page.locator("#rows-all tr").first.wait_for()
        sync_api.expect(page.locator("#status")).to_have_text("live")
        sync_api.expect(page.locator("#play")).to_be_visible()
        assert "/?game=demo" in page.locator("#play-url").inner_text()
        page.wait_for_function("document.getElementById('qr').naturalWidth > 0")
        for window in ("week", "day"):
            assert page.locator(f"#rows-{window} tr").count() >= 1
        laid_out(page, f"board {name}")
        if name == "wide":  # the side column beside the board, not under it
            side, main = page.evaluate(
                "[document.querySelector('aside').getBoundingClientRect().left,"
                " document.querySelector('#all').getBoundingClientRect().right]"
            )
            assert side >= main, (side, main)
        shot(page, f"board-{name}")
        context.close()
    cli(server_url, "games", "remove", "sprint")


def test_the_big_screen_says_in_words_when_it_cannot_reach_the_server(
    server_url: str, page: object
) -> None:
    # The network drops every leaderboard request: the board says so in words (it said
    # "offline (Failed to fetch)") and keeps trying.
    page.route("**/leaderboard*", lambda route: route.abort())  # type: ignore[attr-defined]
    page.goto(f"{server_url}/board/demo")  # type: ignore[attr-defined]
    status = page.locator("#status")  # type: ignore[attr-defined]
    sync_api.expect(status).to_have_text("offline: cannot reach the server; retrying…")
    assert "Failed to fetch" not in status.inner_text()
    page.unroute("**/leaderboard*")  # type: ignore[attr-defined]
    sync_api.expect(status).to_have_text("live", timeout=20_000)


def test_the_classic_script_build_plays_and_saves_a_game(server_url: str, page: object) -> None:
    """`<script src=".../scoreclient.global.js">` (engines that cannot import modules):
    window.ScoreClient plays the demo, saves it, and its receipt verifies in the browser."""
    page.goto(server_url + "/board/")  # type: ignore[attr-defined]
    page.add_script_tag(url="/static/scoreclient.global.js")  # type: ignore[attr-defined]
    outcome = page.evaluate(  # type: ignore[attr-defined]
        """async () => {
            const S = window.ScoreClient;
            const scores = new S({ gameId: "demo" });
            await scores.register("Classic", "correct horse battery");
            const game = await scores.start();
            for (let i = 0; i < 3; i++) {
                await new Promise((resolve) => setTimeout(resolve, 300));
                await game.point();
            }
            const result = await game.result;
            const claims = await S.verifyReceipt(result.receipt);
            S.setWords({ time_up: "Fin !" });
            return { accepted: result.accepted, saved: result.saved, score: result.score,
                     name: claims.name, index: claims.logIndex === result.log_index,
                     words: S.explain("time_up"),
                     isError: new S.ScoreError("busy") instanceof Error };
        }"""
    )
    assert outcome == {
        "accepted": True,
        "saved": True,
        "score": 3,
        "name": "Classic",
        "index": True,
        "words": "Fin !",
        "isError": True,
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_after_a_server_restart_play_starts_again_without_a_reload(
    tmp_path: Path, browser: object
) -> None:
    """Play, restart the server between games, press play again: the demo (the module) and a
    page using the classic-script build both start a game without a reload."""
    db = tmp_path / "r.db"
    subprocess.run(
        [sys.executable, "-m", "scoreserver.ops.cli", "games", "add", "demo", "--duration", "2"]
        + ["--db", str(db)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    ports = ["--ws-port", str(free_port()), "--http-port", str(free_port())]

    def launch() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            serve_command(db, tmp_path / "r.key", *ports), stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        assert parse_banner(process.stdout.readline()), "no banner"
        return process

    server = launch()
    url = f"http://127.0.0.1:{ports[3]}"
    context = browser.new_context(viewport={"width": 1280, "height": 720})  # type: ignore[attr-defined]
    page = context.new_page()
    try:
        page.goto(url + "/")
        page.locator("#start").click()
        hit_targets(page, 2)
        sync_api.expect(page.locator("#result")).to_contain_text(
            "Accepted: 2 points", timeout=15_000
        )
        page.add_script_tag(url="/static/scoreclient.global.js")
        room = page.evaluate(
            "async () => { window.classic = new window.ScoreClient({ gameId: 'demo' });"
            " return (await window.classic.enter()).duration_ms; }"
        )
        assert room == 2000

        server.terminate()
        server.wait(timeout=15)
        assert server.stdout is not None
        server.stdout.close()
        server = launch()

        page.locator("#start").click()
        hit_targets(page, 3)
        sync_api.expect(page.locator("#result")).to_contain_text(
            "Accepted: 3 points", timeout=20_000
        )
        outcome = page.evaluate(
            """async () => {
                const game = await window.classic.start();
                await game.point();
                const result = await game.result;
                return [result.accepted, result.score];
            }"""
        )
        assert outcome == [True, 1]
    finally:
        context.close()
        server.terminate()
        server.wait(timeout=15)
        if server.stdout:
            server.stdout.close()
