"""docs/protocol.md names every code the server can send, and the contract's 1.1 names."""

from __future__ import annotations

from pathlib import Path

from scoreserver.codes import ErrorCode, HttpCode

ROOT = Path(__file__).parents[2]
DOC = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")


def test_every_error_code_is_documented() -> None:
    missing = [code.value for code in [*ErrorCode, *HttpCode] if f"`{code.value}`" not in DOC]
    assert missing == []


def test_the_version_1_1_names_of_the_shared_contract_are_documented() -> None:
    shared = ROOT.parent / "shared" / "protocol.md"
    names = ["session_elsewhere", "--workers", "--node-url", "`url`", "session_active"]
    if shared.exists():  # beside the clone in CI and here
        assert all(name.strip("`") in shared.read_text(encoding="utf-8") for name in names)
    assert [name for name in names if name not in DOC] == []
