"""Telling an outage (the database cannot be reached or written now) from a fault in what was sent."""

from __future__ import annotations

from sqlalchemy import exc

#: SQLite's words for a database it cannot write to now (full disk, lock held past the busy timeout).
_SQLITE_UNAVAILABLE = ("database or disk is full", "disk i/o error", "database is locked", "unable to open")


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot be reached or written now, rather than a fault of ours.

    A lost connection, a pool with no connection to give, a server refusing connections or shutting down,
    a full disk: the same work may succeed later. Anything else the database refuses (a value it cannot
    store, a broken constraint) fails again however often it is retried.
    """
    if isinstance(error, exc.TimeoutError | ConnectionError | TimeoutError | OSError):
        return True
    if not isinstance(error, exc.DBAPIError):
        return False
    if error.connection_invalidated or isinstance(error, exc.InterfaceError):
        return True
    original = error.orig
    cause = getattr(original, "__cause__", None) or original
    if isinstance(cause, ConnectionError | OSError | TimeoutError):
        return True
    sqlstate = str(getattr(cause, "sqlstate", None) or "")
    # Class 08: connection exception; 53: insufficient resources (disk full); 57P: the server is stopping.
    if sqlstate.startswith(("08", "53", "57P")):
        return True
    message = str(original).lower()
    return any(words in message for words in _SQLITE_UNAVAILABLE)
