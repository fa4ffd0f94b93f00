"""Alembic environment: runs migrations on the connection ELSPETH resolved (never from a .ini)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from landscape.schema import metadata

config = context.config
conninfo = config.attributes["conninfo"]
engine = create_engine("postgresql+psycopg" + conninfo[len("postgresql") :], poolclass=NullPool)

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
