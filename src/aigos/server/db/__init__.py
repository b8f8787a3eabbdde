"""Persistence: the async engine, sessions with tenant context, column types and migrations."""

from aigos.server.db.base import Base
from aigos.server.db.database import Database

__all__ = ["Base", "Database"]
