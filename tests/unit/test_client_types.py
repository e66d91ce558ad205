"""The JavaScript client as a package (issue 30): its types checked by TypeScript's own
compiler against an example that uses every export (and refused for wrong calls), the
classic-script build up to date with the module, and `npm pack` taking the three files.

tsc comes from the npm registry (`.ci/run` installs it; SCORESERVER_TSC names it); without
it these checks say so and skip, and fail when SCORESERVER_REQUIRE_TSC is set (CI)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scoreserver.ops import jsbuild

ROOT = Path(__file__).parents[2]
STATIC = ROOT / "scoreserver" / "static"
EXAMPLES = ROOT / "clients" / "js"
TSC_FLAGS = [
    "--strict",
    "--noEmit",
    "--target",
    "es2022",
    "--module",
    "es2022",
    "--moduleResolution",
    "bundler",
    "--lib",
    "es2022,dom",
]


def tool(env: str, default: str | None) -> str:
    found = os.environ.get(env) or default
    if found and Path(found).exists():
        return found
    if os.environ.get("SCORESERVER_REQUIRE_TSC"):
        pytest.fail(f"{env} names no program ({found}), and SCORESERVER_REQUIRE_TSC is set")
    pytest.skip(f"no {env} here: the TypeScript checks need it (.ci/run installs it)")


def tsc() -> str:
    return tool(
        "SCORESERVER_TSC", str(Path.home() / ".cache/scoreserver-tsc/node_modules/.bin/tsc")
    )


def test_the_example_using_every_export_type_checks_strictly() -> None:
    run = subprocess.run(
        [tsc(), *TSC_FLAGS, "example.ts"], cwd=EXAMPLES, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_wrong_calls_are_refused_by_the_types() -> None:
    run = subprocess.run(
        [tsc(), *TSC_FLAGS, "wrong.ts"], cwd=EXAMPLES, capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0
    # An unknown option, an argument start() does not take, a number used as a string.
    assert {"TS2353", "TS2554", "TS2322"} <= set(re.findall(r"TS\d+", run.stdout))


def exported(text: str) -> set[str]:
    return set(re.findall(r"^export (?:async function|function|class|const) (\w+)", text, re.M))


def test_the_types_declare_every_export_of_the_module() -> None:
    module = exported((STATIC / "scoreclient.js").read_text())
    declared = exported((STATIC / "scoreclient.d.ts").read_text())
    assert module == declared
    assert module >= {"ScoreClient", "Game", "ScoreError", "explain", "verifyReceipt"}
    example = (EXAMPLES / "example.ts").read_text()
    assert all(re.search(rf"\b{name}\b", example) for name in module)


def test_the_classic_script_is_what_the_module_makes() -> None:
    built = (STATIC / "scoreclient.global.js").read_text()
    assert built == jsbuild.build((STATIC / "scoreclient.js").read_text())
    assert "export " not in re.sub(r"//.*", "", built) and "import.meta" not in built


def test_the_build_refuses_a_module_it_cannot_follow() -> None:
    module = (STATIC / "scoreclient.js").read_text()
    with pytest.raises(ValueError, match="imports"):
        jsbuild.build('import x from "./x.js";\n' + module)
    with pytest.raises(ValueError, match="import.meta"):
        jsbuild.build(module.replace("import.meta.url", "location.href"))


def test_npm_pack_takes_the_module_the_classic_script_and_the_types() -> None:
    npm = tool("SCORESERVER_NPM", shutil.which("npm"))
    run = subprocess.run(
        [npm, "pack", "--dry-run", "--json", str(STATIC)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    files = {f["path"] for f in json.loads(run.stdout)[0]["files"]}
    assert files == {"package.json", "scoreclient.js", "scoreclient.global.js", "scoreclient.d.ts"}
    package = json.loads((STATIC / "package.json").read_text())
    assert package["exports"]["."]["types"] == "./scoreclient.d.ts"
