"""Which database engine the schema lives on, as one value the storage layer consults.

Plain PostgreSQL and TimescaleDB hold the same tables and give the same answers; what
differs is a few pieces of SQL (a bucketing function) and the maintenance the engine does
itself (TimescaleDB's retention and compression policies). The backend is found once per
pool, when its first connection opens, and every connection of the pool carries it
(`Connection.backend`): the code that assembles SQL reads it there, so no flag travels
through the signatures above it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import asyncpg

from app.storage import timescale
from app.storage.driver import Connection


class Backend(enum.StrEnum):
    POSTGRESQL = "postgresql"
    TIMESCALEDB = "timescaledb"

    def bucket_function(self) -> str:
        """The function that cuts local time into fixed-width buckets (same origin and
        the same buckets on both)."""
        return "time_bucket" if self is Backend.TIMESCALEDB else "date_bin"

    @property
    def has_policies(self) -> bool:
        """The engine drops and compresses old data itself (else the server does)."""
        return self is Backend.TIMESCALEDB


if TYPE_CHECKING:
    _Base = asyncpg.Connection[asyncpg.Record]
else:
    _Base = asyncpg.Connection


class Opened(_Base):
    """A connection that knows which backend it talks to (the pools' connection class)."""

    backend: Backend = Backend.POSTGRESQL  # set when it opens (app/storage/db.py)


def dialect(conn: Connection) -> Backend:
    """The backend a connection talks to (a pool's connection forwards to its own)."""
    found = getattr(conn, "backend", Backend.POSTGRESQL)
    assert isinstance(found, Backend)
    return found


async def detect(conn: Connection) -> Backend:
    if await timescale.is_enabled(conn):
        return Backend.TIMESCALEDB
    return Backend.POSTGRESQL
