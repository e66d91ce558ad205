"""The house rules that a newcomer reads in the tree, checked: layers import only downwards
(errors and codes < core < wire < store < server < ops), no import cycles, SQL only inside
store/, and the private names of the libraries we build on only in the two modules
that guard them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).parent.parent.parent / "scoreserver"
LAYERS = ("core", "wire", "store", "server", "ops")  # each may import those before it


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [f"{target}.{alias.name}" for alias in node.names]
            # `from package import module` imports the module, not the package's own code.
            if not any(c in known for c in candidates):
                candidates.append(target)
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.index(parts[1]) + 1 if len(parts) > 1 and parts[1] in LAYERS else 0


def test_every_import_goes_down_the_layers() -> None:
    known = modules()
    upward = [
        f"{name} -> {target}"
        for name, path in known.items()
        for target in imports(name, path, known)
        if layer(target) > layer(name)
    ]
    assert upward == []


def test_there_are_no_import_cycles() -> None:
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    cycles = []

    def visit(node: str, trail: list[str], done: set[str]) -> None:
        if node in trail:
            cycles.append(trail[trail.index(node) :] + [node])
            return
        if node in done:
            return
        for target in sorted(graph[node]):
            visit(target, [*trail, node], done)
        done.add(node)

    finished: set[str] = set()
    for name in sorted(graph):
        visit(name, [], finished)
    assert cycles == []


SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE TABLE)\b")


def test_sql_is_written_only_in_the_store() -> None:
    outside = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in PACKAGE.rglob("*.py")
        if "store" not in path.relative_to(PACKAGE).parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SQL.search(line) or "import sqlite3" in line or "import psycopg" in line
    ]
    assert outside == []


# The private names of trio-websocket and wsproto that the server touches, in the two modules
# that may: each is replaced only where it is what the known versions made (see their
# docstrings), and `tests/trio/test_transport.py` and `tests/test_frames.py` say when not.
PRIVATE_OF_LIBRARIES = re.compile(
    r"\.(_event|_stream|_wsproto|_connection|_reader_running|_stream_lock|_send_channel"
    r"|_proto|_frame_decoder|_message_decoder|_parse_more|_outbound_opcode|_state)\b"
    r"|[\"'](_stream_lock|_send_channel|_wsproto|_proto|_frame_decoder|_message_decoder"
    r"|_parse_more|_outbound_opcode|_events|_state)[\"']"
)
MAY_TOUCH_THEM = {Path("server/transport.py"), Path("server/frames.py")}


def test_private_names_of_trio_websocket_and_wsproto_only_where_they_are_guarded() -> None:
    used = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE) not in MAY_TOUCH_THEM
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_OF_LIBRARIES.search(line) or "trio_websocket._" in line
    ]
    assert used == []
    touched = {
        path.relative_to(PACKAGE)
        for path in PACKAGE.rglob("*.py")
        if PRIVATE_OF_LIBRARIES.search(path.read_text())
    }
    assert touched == MAY_TOUCH_THEM  # the rule still sees them where they are
