"""One conformance suite for every client (issue 30): the scenarios in scenarios.json, kept as
data, run step by step against a real server process (restarted, and its accounts banned,
by this harness) for the JavaScript client in real Chromium and for the Python client in
this process, on SQLite and on PostgreSQL. A scenario may ask for a server of its own (two
workers, for session_elsewhere). A client that skips a scenario says so, with why:
the skips are part of each client's entry below and are printed with the results."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scoreserver.server.launch import parse_banner, serve_command

from .. import databases

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))

from scoreclient import ScoreClient, ScoreError  # noqa: E402

SCENARIOS = json.loads((Path(__file__).with_name("scenarios.json")).read_text())["scenarios"]
PASSWORD = "correct horse battery"
SKIPS: dict[str, dict[str, str]] = {"js": {}, "python": {}}  # scenario: why, per client
JS_WORDS = {
    m[0].strip('"'): json.loads(f'"{m[1]}"')
    for m in re.findall(
        r'^\s*("?[\w.]+"?):\s*"((?:[^"\\]|\\.)*)",\s*$',
        (ROOT / "scoreserver/static/scoreclient.js")
        .read_text()
        .split("const WORDS = {")[1]
        .split("\n};")[0],
        re.M,
    )
}

pytestmark = [pytest.mark.slow]


class Server:
    """A server process on fixed ports, restartable between steps."""

    def __init__(self, tmp_path: Path, workers: int = 1):
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.db = databases.location(tmp_path, "c.db")
        self.key = tmp_path / "c.key"
        for game, flags in (
            ("conf", ["--duration", "1.2"]),
            ("long", ["--duration", "4"]),
            ("strict", ["--duration", "3", "--burst-threshold", "3", "--burst-limit", "1"]),
        ):
            made = subprocess.run(
                [sys.executable, "-m", "scoreserver.ops.cli", "games", "add", game, *flags]
                + ["--human-floor-ms", "0", "--min-rhythm-cv", "0", "--db", self.db],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert made.returncode == 0, made.stderr
        self.flags = ["--login-attempts-per-addr", "0", "--workers", str(workers)]
        self.process = self._launch(["--ws-port", "0", "--http-port", "0"])

    def _launch(self, ports: list[str]) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            serve_command(self.db, self.key, *self.flags, *ports), stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        found = parse_banner(line)
        assert found, "no banner"
        # The shared game socket, then (with --workers) each worker's own.
        self.urls = [word for word in line.split() if word.startswith("ws://")]
        self.ws_port, self.http_port = found
        return process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)
        if self.process.stdout:
            self.process.stdout.close()

    def restart(self) -> None:
        self.stop()
        self.process = self._launch(
            ["--ws-port", str(self.ws_port), "--http-port", str(self.http_port)]
        )

    def ban(self, name: str) -> None:
        run = subprocess.run(
            [sys.executable, "-m", "scoreserver.ops.cli", "users", "ban", name, "--note", "test"]
            + ["--db", self.db],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr


# --- the clients, each behind the same operations ------------------------------------------


class PythonClient:
    def __init__(self, server: Server):
        self.server = server
        self.client: ScoreClient | None = None
        self.game: Any = None
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def new(self, game: str = "conf", url: str | None = None) -> None:
        if self.client is not None:
            self.client.close()
        self.client = ScoreClient(self.server.url, game, socket_url=url)
        self.seen = []

    def _events(self) -> list[tuple[str, dict[str, Any]]]:
        assert self.client is not None
        self.seen += self.client.poll()
        return self.seen

    def account(self, how: str, name: str, password: str) -> dict[str, Any]:
        assert self.client is not None
        try:
            getattr(self.client, how)(name, password)
            return {"ok": True}
        except ScoreError as error:
            return {"ok": False, "code": error.code, "words": error.words}

    def enter(self, game: str | None) -> dict[str, Any]:
        assert self.client is not None
        if game is not None:  # another game, the same player
            self.client._async.game_id = game
            self.client._async.duration_ms = None
        room = self.client.enter()
        time.sleep(0.05)
        return {**room, "guest_warned": any(k == "guest" for k, _ in self._events())}

    def start(self) -> None:
        assert self.client is not None
        self.game = self.client.start()

    def points(self, n: int, spacing: float) -> dict[str, Any]:
        before = sum(1 for k, _ in self._events() if k == "point")
        for _ in range(n):
            self.game.point()
            time.sleep(spacing)
        time.sleep(0.3)
        return {"accepted": sum(1 for k, _ in self._events() if k == "point") - before}

    def result(self) -> dict[str, Any]:
        result = self.game.result(timeout=30)
        end = self.game._game.end or {}
        return {**result, "receipt": "receipt" in result, "end": end.get("reason")}

    def drop(self, url: str | None = None) -> None:
        assert self.client is not None
        if url is not None:  # the network sends the next connection to another worker
            self.client._async.socket_url = url
        self.client._call(self.client._async._ws.close())

    def seen_kind(self, kind: str) -> dict[str, Any]:
        return {"seen": any(k == kind for k, _ in self._events())}

    def words(self, codes: list[str]) -> dict[str, str]:
        from scoreclient import explain

        return {code: explain(code) for code in codes}

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


JS_DRIVER = Path(__file__).with_name("driver.js").read_text()


class JsClient:
    def __init__(self, server: Server, page: Any):
        self.server = server
        self.page = page

    def load(self) -> None:
        self.page.goto(self.server.url + "/board/")
        self.page.add_script_tag(content=JS_DRIVER, type="module")
        self.page.wait_for_function("window.__ready === true")

    def op(self, **op: Any) -> dict[str, Any]:
        return self.page.evaluate("(op) => window.__op(op)", op)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.page.close()


# --- the harness ----------------------------------------------------------------------------


def matches(got: dict[str, Any], expected: dict[str, Any]) -> bool:
    return all(got.get(k) == v for k, v in expected.items())


def run_scenarios(
    client_name: str, server: Server, make: Any, engine: str, tmp_path: Path
) -> list[str]:
    report = []
    for scenario in SCENARIOS:
        name = scenario["name"]
        if name in SKIPS[client_name]:
            report.append(f"SKIP {client_name} {name}: {SKIPS[client_name][name]}")
            continue
        workers = scenario.get("server", {}).get("workers", 1)
        own = Server(tmp_path / name, workers) if workers > 1 else None
        try:
            run_scenario(client_name, own or server, make(own or server), engine, scenario)
        finally:
            if own is not None:
                own.stop()
        report.append(f"PASS {client_name} {name}")
    return report


def run_scenario(
    client_name: str, server: Server, client: Any, engine: str, scenario: dict[str, Any]
) -> None:
    name = scenario["name"]
    try:
        for step in scenario["steps"]:
            step = {
                k: (v.format(client=client_name, engine=engine) if isinstance(v, str) else v)
                for k, v in step.items()
            }
            if "worker" in step:  # a worker's own game socket (with --workers)
                step["url"] = server.urls[1 + step["worker"]]
            do, expected = step["do"], step.get("expect", {})
            if do == "restart":
                server.restart()
                got: dict[str, Any] = {}
            elif do == "ban":
                server.ban(step["name"])
                got = {}
            elif do == "wait":
                time.sleep(step["seconds"])
                got = {}
            elif isinstance(client, PythonClient):
                got = python_step(client, step)
            else:
                got = client.op(**{**step, "password": step.get("password", PASSWORD)})
            if do == "words":
                expected = {code: JS_WORDS[code] for code in step["codes"]}
            assert matches(got, expected), f"{client_name} {name}: {do} gave {got}, not {expected}"
    finally:
        client.close()


def python_step(client: PythonClient, step: dict[str, Any]) -> dict[str, Any]:
    do = step["do"]
    if do == "new":
        client.new(step.get("game", "conf"), step.get("url"))
        return {}
    if do in ("register", "login"):
        return client.account(do, step["name"], step.get("password", PASSWORD))
    if do == "enter":
        return client.enter(step.get("game"))
    if do == "start":
        client.start()
        return {}
    if do == "points":
        return client.points(step["n"], step.get("spacing", 0.12))
    if do == "result":
        return client.result()
    if do in ("drop", "move"):
        client.drop(step.get("url"))
        return {}
    if do == "seen":
        return client.seen_kind(step["kind"])
    if do == "words":
        return client.words(step["codes"])
    raise AssertionError(f"unknown step {do}")


@pytest.fixture
def server(tmp_path: Path, engine: str) -> Iterator[Server]:
    running = Server(tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("engine", databases.ENGINES, indirect=True)
def test_the_python_client_conforms(server: Server, engine: str, tmp_path: Path) -> None:
    report = run_scenarios("python", server, PythonClient, engine, tmp_path)
    print("\n".join(report))
    assert sum(line.startswith("PASS") for line in report) == len(SCENARIOS) - len(SKIPS["python"])


@pytest.mark.parametrize("engine", databases.ENGINES, indirect=True)
def test_the_javascript_client_conforms_in_chromium(
    server: Server, engine: str, tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    from ..browser.test_browser import CHROMIUM  # the browser the browser tests use

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)

        def make(where: Server) -> JsClient:
            client = JsClient(where, browser.new_page())
            client.load()
            return client

        try:
            report = run_scenarios("js", server, make, engine, tmp_path)
        finally:
            browser.close()
    print("\n".join(report))
    assert sum(line.startswith("PASS") for line in report) == len(SCENARIOS) - len(SKIPS["js"])


BRIDGES = ROOT / "clients" / "js" / "bridges"
UNITY_STUBS = """
window.LibraryManager = { library: {} };
window.mergeInto = (library, functions) => Object.assign(library, functions);
window.UTF8ToString = (text) => text;  // Unity passes pointers; the stub passes the strings
window.unityMessages = [];
window.SendMessage = (target, method, json) =>
  window.unityMessages.push([target, method, JSON.parse(json)]);
"""


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_the_engine_bridges_play_a_game_in_chromium(server: Server, engine: str) -> None:
    """The JavaScript each engine's bridge runs (clients/js/bridges): Unity's .jslib with
    Unity's helpers stubbed, and the Godot glue, each plays a game through the classic build."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from ..browser.test_browser import CHROMIUM

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.goto(server.url + "/board/")
            page.add_script_tag(url="/static/scoreclient.global.js")
            page.add_script_tag(content=UNITY_STUBS)
            page.add_script_tag(content=(BRIDGES / "scoreserver.jslib").read_text())
            page.evaluate("LibraryManager.library.ScoreServerStart('conf', 'Scores')")
            page.wait_for_function(
                "unityMessages.some(([, m]) => m === 'OnScoreStarted')", timeout=10_000
            )
            for _ in range(2):
                page.evaluate("LibraryManager.library.ScoreServerPoint()")
                page.wait_for_timeout(150)
            page.wait_for_function(
                "unityMessages.some(([, m]) => m === 'OnScoreResult')", timeout=15_000
            )
            unity = page.evaluate("unityMessages")
            methods = [m for _, m, _ in unity]
            assert methods.count("OnScorePoint") == 2 and "OnScoreEnded" in methods, methods
            result = next(v for _, m, v in unity if m == "OnScoreResult")
            assert (result["accepted"], result["score"], result["saved"]) == (True, 2, False)
            assert {target for target, _, _ in unity} == {"Scores"}

            page.add_script_tag(content=(BRIDGES / "godot_glue.js").read_text())
            page.evaluate("godotScore.start('conf')")
            taken: list[dict[str, Any]] = []
            for _ in range(100):
                taken += json.loads(page.evaluate("godotScore.take()"))
                if any(e["kind"] == "started" for e in taken):
                    break
                page.wait_for_timeout(50)
            for _ in range(3):
                page.evaluate("godotScore.point()")
                page.wait_for_timeout(150)
            for _ in range(300):
                taken += json.loads(page.evaluate("godotScore.take()"))
                if any(e["kind"] == "result" for e in taken):
                    break
                page.wait_for_timeout(50)
            kinds = [e["kind"] for e in taken]
            assert kinds.count("point") == 3 and "end" in kinds, kinds
            result = next(e["detail"] for e in taken if e["kind"] == "result")
            assert (result["accepted"], result["score"]) == (True, 3)
        finally:
            browser.close()
