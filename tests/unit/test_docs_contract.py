"""docs/protocol.md names every code the server can send, and the contract's 1.1 and 1.2
names; the shared contract (../shared/protocol.md, beside the clone) holds them too. Without
../shared that check says so (skipped), and fails when SCORESERVER_REQUIRE_SHARED is set (CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scoreserver.codes import ErrorCode, HttpCode

ROOT = Path(__file__).parents[2]
DOC = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")


def test_every_error_code_is_documented() -> None:
    missing = [code.value for code in [*ErrorCode, *HttpCode] if f"`{code.value}`" not in DOC]
    assert missing == []


NAMES_1_1 = ["session_elsewhere", "--workers", "--node-url", "`url`", "session_active"]
NAMES_1_2 = [
    "held_reason",
    "review_top_score",
    "superhuman_rate",
    "--human-max-rate",
    "--trusted-proxy",
    "`receipt`",
    "log_index",
    "/api/log/checkpoint",
    "/api/log/proof",
    "/api/log/consistency",
    "/api/log/entries",
    "/verify",
    "verifyReceipt",
    "scoreclient.d.ts",
    "scoreclient.global.js",
    "clients/python",
    "scoreserver verify",
    "log verify",
    "log watch",
    "boards snapshot",
    "reset-password",
    "games archive",
    "--webhook",
]


def test_the_contracts_names_are_documented() -> None:
    assert [name for name in [*NAMES_1_1, *NAMES_1_2] if name not in DOC] == []


def test_the_names_checked_are_the_shared_contracts() -> None:
    shared = ROOT.parent / "shared" / "protocol.md"
    if not shared.exists():
        if os.environ.get("SCORESERVER_REQUIRE_SHARED"):
            pytest.fail(f"{shared} is missing, and SCORESERVER_REQUIRE_SHARED is set")
        pytest.skip(f"{shared} is not beside this clone: the contract itself is not checked")
    text = shared.read_text(encoding="utf-8")
    assert [name for name in [*NAMES_1_1, *NAMES_1_2] if name.strip("`") not in text] == []
