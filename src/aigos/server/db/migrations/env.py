"""Alembic environment: runs on the connection that ``aigos.server.db.migrate`` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from aigos.server.db.base import Base
from aigos.server.db.migrate import include_name
from aigos.server.models import import_all_models

import_all_models()
target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    """Run pending migrations inside one transaction."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `aigos migrate`, which supplies the connection")
run_migrations(connection)
