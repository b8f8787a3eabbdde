"""The embedded database's folder: private to its owner, and served by one server process at a time.

The folder is created ``0700`` and the database file ``0600`` before SQLite first opens it (SQLite gives
its journal files the database file's mode). Two servers on one SQLite file would each hold their own
in-memory state (policy snapshots, kill switches, the in-process bus) and silently enforce different
policies, so a server holds an exclusive ``flock`` on ``<database>.lock`` for as long as it runs; a second
one is refused at once. The kernel drops the lock when the process dies, so a crash leaves nothing stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from sqlalchemy.engine import make_url

from aigos.server.config import ConfigError, Settings

#: Locks this process holds: path -> (descriptor, holders). The CLI takes the lock before uvicorn starts
#: (to refuse with a clear message) and the app's lifespan takes it again in the same process.
_held: dict[Path, tuple[int, int]] = {}


class DataDirInUse(ConfigError):
    """Another server process is already serving this embedded database."""


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by its owner only; an existing folder is left as is."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)  # mkdir's mode is filtered by the umask


def private_file(path: Path) -> None:
    """Create an empty ``path`` with mode 0600 unless it exists (then its mode is left as is)."""
    private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def sqlite_file(settings: Settings) -> Path | None:
    """The embedded database file, or None for PostgreSQL or an in-memory SQLite database."""
    if settings.database_kind != "sqlite":
        return None
    database = make_url(settings.resolved_database_url).database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def prepare(settings: Settings) -> None:
    """Create the embedded database's folder and file privately, before SQLite creates them."""
    path = sqlite_file(settings)
    if path is not None:
        private_file(path)


class DataDirLock:
    """The exclusive claim of one process on an embedded database (a no-op for PostgreSQL)."""

    def __init__(self, settings: Settings) -> None:
        database = sqlite_file(settings)
        self.path = None if database is None else database.with_name(database.name + ".lock").absolute()
        self._acquired = False

    def acquire(self) -> None:
        """Take the lock (again, if this process holds it); ``DataDirInUse`` if another process does."""
        if self.path is None or self._acquired:
            return
        held = _held.get(self.path)
        if held is not None:
            _held[self.path] = (held[0], held[1] + 1)
            self._acquired = True
            return
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"another AIGOS server (pid {holder}) is already using the database in {self.path.parent}. "
                "Stop it, or give this one its own AIGOS_DATA_DIR; to run several servers on one "
                "database use PostgreSQL and Redis."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _held[self.path] = (fd, 1)
        self._acquired = True

    def release(self) -> None:
        """Give the claim up; the lock goes once its last holder in this process released it."""
        if self.path is None or not self._acquired:
            return
        self._acquired = False
        fd, holders = _held.pop(self.path)
        if holders > 1:
            _held[self.path] = (fd, holders - 1)
            return
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
