"""Open a database given by `--db`: a SQLite file or a PostgreSQL URL (`engine.Location`)."""

from __future__ import annotations

from pathlib import Path

from .engine import Connection, Location
from .postgres import connect as postgres_connect
from .postgres import open_database as postgres_database
from .sqlite import connect as sqlite_connect
from .sqlite import open_database as sqlite_database


def connect(location: str | Path | Location) -> Connection:
    """A connection with what every part of scoreserver relies on (see each engine)."""
    location = Location.of(location)
    if location.dialect == "postgres":
        return postgres_connect(location.target)
    return sqlite_connect(location.path)


def open_database(location: str | Path | Location) -> Connection:
    """A connection to a database whose schema is created or checked (and upgraded)."""
    location = Location.of(location)
    if location.dialect == "postgres":
        return postgres_database(location.target)
    return sqlite_database(location.path)
