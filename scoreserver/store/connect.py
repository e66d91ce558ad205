"""Open a database given by `--db`: a SQLite file or a PostgreSQL URL (`engine.Location`)."""

from __future__ import annotations

from pathlib import Path

from . import postgres, sqlite
from .engine import Connection, Location


def connect(location: str | Path | Location) -> Connection:
    """A connection with what every part of scoreserver relies on (see each engine)."""
    location = Location.of(location)
    if location.dialect == "postgres":
        return postgres.connect(location.target)
    return sqlite.connect(location.path)


def open_database(location: str | Path | Location) -> Connection:
    """A connection to a database whose schema is created or checked (and upgraded)."""
    location = Location.of(location)
    if location.dialect == "postgres":
        return postgres.open_database(location.target)
    return sqlite.open_database(location.path)
