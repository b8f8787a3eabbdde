"""Telling an outage (the database cannot be reached or written now) from a fault in what was sent.

An outage answers 503 with a stable code and ``Retry-After``; the same work may succeed later:

- ``DATABASE_BUSY``: no connection came free in time, or SQLite's write lock stayed taken;
- ``STORAGE_FULL``: the disk the database writes to is full;
- ``DATABASE_UNAVAILABLE``: the database cannot be reached (refused, lost, shutting down);
- ``OUTCOME_UNKNOWN``: the connection was lost while a commit was under way: the change may have been
  made. The client reads to find out before retrying.

Each of the others means nothing was changed.
"""

from __future__ import annotations

import errno

from sqlalchemy import exc

from aigos.server.errors import ServiceUnavailable

#: SQLite's words for a database it cannot write to now (full disk, lock held past the busy timeout).
_SQLITE_UNAVAILABLE = ("database or disk is full", "disk i/o error", "database is locked", "unable to open")
_SQLITE_FULL = "database or disk is full"
_SQLITE_BUSY = "database is locked"
#: How soon to come back, by code: a full disk is not freed within a second.
RETRY_AFTER = {
    "DATABASE_BUSY": "1",
    "DATABASE_UNAVAILABLE": "1",
    "STORAGE_FULL": "10",
    "OUTCOME_UNKNOWN": "1",
}
_DETAIL = {
    "DATABASE_BUSY": "The database is busy; nothing was changed. Retry shortly.",
    "DATABASE_UNAVAILABLE": "The database is unavailable; nothing was changed. Retry later.",
    "STORAGE_FULL": "The database's storage is full; nothing was changed. Retry once space is freed.",
    "OUTCOME_UNKNOWN": "The database was lost while the change was being committed: it may or may not "
    "have been made. Read it back before retrying.",
}


class DatabaseUnavailable(ServiceUnavailable):
    """503: the database cannot take the work now (busy, unreachable, out of space, lost mid-commit).

    Raised in place of the driver's error, which stays its ``__cause__``; ``is_outage`` is true for it, so
    background writers keep what they could not write for their next attempt instead of setting it aside.
    """

    def __init__(self, code: str, detail: str | None = None) -> None:
        super().__init__(
            detail or _DETAIL[code],
            code=code,
            headers={"Retry-After": RETRY_AFTER[code]},
            dependency="database",
        )


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot be reached or written now, rather than a fault of ours.

    A lost connection, a pool with no connection to give, a server refusing connections or shutting down,
    a full disk: the same work may succeed later. Anything else the database refuses (a value it cannot
    store, a broken constraint) fails again however often it is retried.
    """
    return outage_code(error) is not None


def outage_code(error: BaseException) -> str | None:
    """The 503 code for ``error`` when it is an outage (see the module's list), else None."""
    if isinstance(error, DatabaseUnavailable):
        return error.instance_code
    if isinstance(error, exc.TimeoutError):
        # The pool handed out no connection within its timeout: every connection is in use.
        return "DATABASE_BUSY"
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return "STORAGE_FULL"
    if isinstance(error, ConnectionError | TimeoutError | OSError):
        return "DATABASE_UNAVAILABLE"
    cause: BaseException | None = error
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated or isinstance(error, exc.InterfaceError):
            return "DATABASE_UNAVAILABLE"
        original = error.orig
        cause = getattr(original, "__cause__", None) or original
        if isinstance(cause, ConnectionError | OSError | TimeoutError):
            return "DATABASE_UNAVAILABLE"
    elif not _is_driver_error(error):
        return None
    sqlstate = str(getattr(cause, "sqlstate", None) or "")
    if sqlstate.startswith("53"):
        # Class 53, insufficient resources: 53100 is a full disk; 53200 (memory) and 53300 (too many
        # connections) pass as the database being busy.
        return "STORAGE_FULL" if sqlstate == "53100" else "DATABASE_BUSY"
    # 57014: a statement ran past ``statement_timeout`` (or was cancelled); 55P03: a lock was not granted.
    if sqlstate in ("57014", "55P03"):
        return "DATABASE_BUSY"
    # Class 08: connection exception; 57P: the server is stopping or starting.
    if sqlstate.startswith(("08", "57P")):
        return "DATABASE_UNAVAILABLE"
    message = str(getattr(error, "orig", None) or error).lower()
    if _SQLITE_FULL in message:
        return "STORAGE_FULL"
    if _SQLITE_BUSY in message:
        return "DATABASE_BUSY"
    if any(words in message for words in _SQLITE_UNAVAILABLE):
        return "DATABASE_UNAVAILABLE"
    if _is_closed_connection(error):
        return "DATABASE_UNAVAILABLE"
    return None


def unavailable(error: BaseException) -> DatabaseUnavailable | None:
    """The 503 problem to answer for ``error`` when it is an outage, else None."""
    if isinstance(error, DatabaseUnavailable):
        return error
    code = outage_code(error)
    return None if code is None else DatabaseUnavailable(code)


def _is_driver_error(error: BaseException) -> bool:
    # asyncpg's own errors reach us unwrapped from ``Database.driver()`` (no SQLAlchemy in between).
    return type(error).__module__.startswith("asyncpg")


def _is_closed_connection(error: BaseException) -> bool:
    # asyncpg's "cannot perform operation: connection is closed" carries no SQLSTATE.
    closed = "closed" in str(error).lower()
    return closed and type(error).__name__ in ("InterfaceError", "InternalClientError")
