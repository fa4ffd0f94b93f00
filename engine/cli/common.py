"""What every command that needs the audit store shares: opening it the same way."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from engine.cli.errors import ElspethCliError
from landscape.db import Database, open_database
from landscape.errors import LandscapeError


@contextmanager
def database_from_ctx(ctx: click.Context, *, upgrade: bool = True) -> Iterator[Database]:
    """The database of `--database` / ELSPETH_DATABASE_URL, or the embedded one in `--home`."""
    obj = ctx.find_root().obj or {}
    try:
        with open_database(obj.get("database"), upgrade=upgrade, home=obj.get("home")) as db:
            yield db
    except LandscapeError as e:
        raise ElspethCliError(str(e)) from e
