"""The one translation of database-driver errors into storage's own: nothing above storage
knows the driver. Wrap database work in `translated()` and catch these:

  StorageError
    Unavailable    the database cannot be reached, the connection broke, or it did not
                   answer in time: retry later; nothing of the work is known to be done
    ValueRefused   the database refused what was written (a value out of range, a
                   constraint, a row the engine cannot lock); the same work will be
                   refused again
    QueryRefused   the database refused a question's parameter (a time zone it does not
                   know, a value out of range); the message may be shown to the asker
    OverBudget     the statement ran past its time budget and was cancelled
    MissingSchema  the tables are not there (the migrations have not run)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg


class StorageError(Exception):
    """A database failure, in storage's terms (the driver's error is its __cause__)."""


class Unavailable(StorageError):
    pass


class ValueRefused(StorageError):
    pass


class QueryRefused(StorageError):
    pass


class OverBudget(StorageError):
    pass


class MissingSchema(StorageError):
    pass


# what a value encoded for the driver can raise on the way in (the writer's refusals)
_ENCODING = (TypeError, ValueError, OverflowError)


def translate(
    exc: BaseException, *, encoding: bool = False, timeouts: type[StorageError] = Unavailable
) -> StorageError | None:
    """Storage's error for a driver (or socket) error, None for anything else. With
    `encoding`, TypeError/ValueError/OverflowError count as refused values: the driver
    raises them for a value it cannot encode (only say so around driver calls). A
    TimeoutError (a client-side deadline) becomes `timeouts`: OverBudget for questions."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, TimeoutError):
        return timeouts(str(exc) or "timed out")
    if isinstance(exc, asyncpg.QueryCanceledError):
        return OverBudget(str(exc))
    if isinstance(exc, asyncpg.UndefinedTableError):
        return MissingSchema(str(exc))
    if isinstance(exc, asyncpg.InvalidParameterValueError):
        return QueryRefused(f"invalid parameter: {exc.args[0] if exc.args else exc}")
    # FeatureNotSupported: what this row needs the engine cannot do (TimescaleDB does not
    # lock rows of compressed chunks): a refusal of this write, not an outage
    if isinstance(
        exc,
        asyncpg.DataError
        | asyncpg.IntegrityConstraintViolationError
        | asyncpg.FeatureNotSupportedError,
    ):
        return ValueRefused(str(exc))
    if encoding and isinstance(exc, _ENCODING):
        return ValueRefused(str(exc))
    if isinstance(
        exc,
        OSError | asyncpg.PostgresError | asyncpg.InterfaceError | asyncpg.InternalClientError,
    ):
        return Unavailable(str(exc) or type(exc).__name__)
    return None


@contextlib.contextmanager
def translated(
    *, encoding: bool = False, timeouts: type[StorageError] = Unavailable
) -> Iterator[None]:
    """Raise storage's error in place of a driver's (see translate); async work inside a
    `with` block is covered too."""
    try:
        yield
    except Exception as exc:
        mapped = translate(exc, encoding=encoding, timeouts=timeouts)
        if mapped is None or mapped is exc:
            raise
        raise mapped from exc


def cause_name(exc: BaseException) -> str:
    """The name of the error underneath (the driver's, for a translated one), for logs."""
    return type(exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ else exc).__name__
