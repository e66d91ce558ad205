"""The classic-script build of the client: `static/scoreclient.global.js`, made from the ES
module `static/scoreclient.js` for pages and engines that cannot import modules (a plain
`<script>`, Construct, Unity's WebGL `.jslib` bridge, Godot's `JavaScriptBridge`). It
defines `window.ScoreClient`: the client class, with the module's other exports on it
(`ScoreClient.Game`, `.ScoreError`, `.explain`, `.setWords`, `.readReceipt`,
`.verifyReceipt`).

    python -m scoreserver.ops.jsbuild          write it (after changing the module)
    python -m scoreserver.ops.jsbuild --check  exit 1 if the file is not what the module makes

The transformation is textual and small on purpose (no bundler): the module has no imports,
so dropping `export` and wrapping it in a function is the whole build. `tests/browser` plays
a game with the built file; tests/unit/test_jsbuild.py checks it is up to date.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

STATIC = Path(__file__).parent.parent / "static"
MODULE = STATIC / "scoreclient.js"
GLOBAL = STATIC / "scoreclient.global.js"

_EXPORT = re.compile(r"^export (async function|function|class|const) (\w+)", re.MULTILINE)
# In a classic script the running script's URL stands for the module's own (its origin is
# the server's); read while the script runs, as document.currentScript is null afterwards.
_ORIGIN = "new URL(import.meta.url).origin"
_SCRIPT_ORIGIN = "new URL(SCRIPT_URL).origin"


def build(module: str) -> str:
    if re.search(r"^import ", module, re.MULTILINE):
        raise ValueError("scoreclient.js imports something: this build cannot follow imports")
    names = [m.group(2) for m in _EXPORT.finditer(module)]
    if "ScoreClient" not in names:
        raise ValueError("scoreclient.js exports no ScoreClient")
    if module.count(_ORIGIN) != 1:
        raise ValueError(f"expected `{_ORIGIN}` once in scoreclient.js")
    body = _EXPORT.sub(lambda m: f"{m.group(1)} {m.group(2)}", module).replace(
        _ORIGIN, _SCRIPT_ORIGIN
    )
    others = [n for n in names if n != "ScoreClient"]
    attach = "\n".join(f"  ScoreClient.{name} = {name};" for name in others)
    return (
        "// scoreclient.global.js: scoreclient.js as a classic script. Made by\n"
        "// `python -m scoreserver.ops.jsbuild` from scoreclient.js; do not edit by hand.\n"
        "//\n"
        '//   <script src="http://HOST:8080/static/scoreclient.global.js"></script>\n'
        '//   const scores = new ScoreClient({ gameId: "demo" });   // window.ScoreClient\n'
        "//\n"
        "// The module's other exports are on it: ScoreClient.explain, ScoreClient.Game, ...\n"
        "(function () {\n"
        '  "use strict";\n'
        '  const SCRIPT_URL = (typeof document !== "undefined" && document.currentScript'
        " && document.currentScript.src) || null;\n"
        f"{body}\n"
        f"{attach}\n"
        "  globalThis.ScoreClient = ScoreClient;\n"
        "})();\n"
    )


def main(argv: list[str]) -> int:
    made = build(MODULE.read_text(encoding="utf-8"))
    if "--check" in argv:
        if GLOBAL.read_text(encoding="utf-8") != made:
            print(
                f"{GLOBAL} is not what {MODULE.name} makes: run python -m scoreserver.ops.jsbuild",
                file=sys.stderr,
            )
            return 1
        return 0
    GLOBAL.write_text(made, encoding="utf-8")
    print(f"wrote {GLOBAL}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
