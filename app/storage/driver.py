"""The database driver's types, as storage names them (asyncpg underneath): what storage
functions take and return. Nothing above storage imports the driver itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import asyncpg

Record = asyncpg.Record  # a result row

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # what storage functions take: a connection, or one checked out of a pool
    Connection: TypeAlias = asyncpg.Connection[Record] | PoolConnectionProxy[Record]
    Pool: TypeAlias = asyncpg.Pool[Record]
else:
    Connection = asyncpg.Connection
    Pool = asyncpg.Pool
