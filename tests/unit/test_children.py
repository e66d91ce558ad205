"""Helper processes (the database writer, the workers) run the server's own code."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import scoreserver
from scoreserver.children import python_module


def test_helper_processes_import_the_servers_own_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    command, env = python_module("scoreserver.store.writer_child")
    assert command == [sys.executable, "-m", "scoreserver.store.writer_child"]
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert paths == [str(Path(scoreserver.__file__).resolve().parent.parent), "/somewhere/else"]
