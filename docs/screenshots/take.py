"""Take the screenshots README shows: the demo, the live board and /admin (a flag's evidence and
a player's page), at a desktop size (1280x800) and a phone's (390x844), and the board on a big
screen (1920x1080), in real headless Chromium.

    .venv/bin/python docs/screenshots/take.py       # needs Debian's chromium (see .ci/run)

It starts a server of its own (a temporary database, a 4 s demo game, free ports), fills it
with a few players who play over the game socket and one metronome bot that gets flagged, and
writes PNGs beside this file.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from scoreserver.server.app import parse_banner, serve_command  # noqa: E402
from tests.players import honest_score, metronome_bot  # noqa: E402

SIZES = {"desktop": (1280, 800), "phone": (390, 844), "wide": (1920, 1080)}
PASSWORD = "a long admin secret"


def cli(db: Path, *args: str, stdin: str | None = None) -> None:
    subprocess.run(
        [sys.executable, "-m", "scoreserver.ops.cli", *args, "--db", str(db)],
        input=stdin,
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "shots.db"
        cli(db, "games", "add", "demo", "--duration", "4", "--title", "Target practice")
        cli(db, "admin", "set-password", "--password-stdin", stdin=PASSWORD + "\n")
        server = subprocess.Popen(
            serve_command(db, Path(folder) / "shots.key"), stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            ports = parse_banner(server.stdout.readline())
            assert ports, "the server did not start"
            url = f"http://127.0.0.1:{ports[1]}"
            # Names this machine has fonts for (its Chromium has no CJK or emoji fonts).
            for name, points in (("Rosa", 9), ("Kenji", 7), ("Zoë", 6), ("Ana", 4)):
                honest_score(url, name, points)
            metronome_bot(url, "metronome")
            time.sleep(1.5)  # the boards catch up (real time: the server is a process)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
                )
                for size, (width, height) in SIZES.items():
                    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
                    if size != "wide":
                        page.goto(f"{url}/")
                        page.locator("#board li").first.wait_for()
                        page.screenshot(path=str(HERE / f"demo-{size}.png"))
                    page.goto(f"{url}/board/demo")
                    page.locator("#rows-all tr").first.wait_for()
                    page.wait_for_function("document.getElementById('qr').naturalWidth > 0")
                    page.wait_for_timeout(2600)  # the rows' arrival highlight fades
                    page.screenshot(path=str(HERE / f"board-{size}.png"))
                    if size == "wide":
                        page.context.close()
                        continue
                    page.goto(f"{url}/admin")
                    page.fill("#password", PASSWORD)
                    page.click("#login-form button")
                    page.locator("#flags tr", has_text="robotic_rhythm").first.click()
                    page.locator("#charts figure").nth(3).wait_for()
                    page.screenshot(path=str(HERE / f"admin-{size}.png"), full_page=size == "phone")
                    if size == "desktop":
                        page.click("#tab-button-players")
                        page.locator("#users tr", has_text="Rosa").click()
                        page.locator("#player-results tr").first.wait_for()
                        page.screenshot(path=str(HERE / "admin-player-desktop.png"))
                    page.context.close()
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=15)
    for shot in sorted(HERE.glob("*.png")):
        print(shot.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
