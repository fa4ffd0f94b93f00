"""What every command that needs the audit store shares: opening it the same way."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from engine.cli.errors import ElspethCliError
from engine.cli.visible import say

if TYPE_CHECKING:  # the driver is imported when a command opens the store, not for --help
    from landscape.db import Database
    from landscape.postgres import PostgresRecorder
    from landscape.roles import Role


@contextmanager
def database_from_ctx(
    ctx: click.Context,
    *,
    upgrade: bool = False,
    settings_url: str | None = None,
    role: Role | None = None,
    existing: bool = False,
) -> Iterator[Database]:
    """The database of `--database` / ELSPETH_DATABASE_URL (these always win), else a
    PostgreSQL `landscape.url` from the pipeline's settings, else the embedded one in `--home`;
    its connections act as `role` (the writer unless the command only reads). A command that only
    reads, or that works on runs already recorded (`existing`), makes no embedded store."""
    import logging

    from landscape.db import open_database
    from landscape.roles import Role

    # The driver warns (on stderr, through logging's last resort) when closing a connection
    # after a failure it could not roll back, e.g. one a stop at once cut off mid-query: the
    # failure is what the command says, and the rollback's words only confuse.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    obj = ctx.find_root().obj or {}
    url = obj.get("database") or settings_url
    if (role is Role.AUDITOR or existing) and settings_url is None:
        existing_store(ctx)
    with open_database(url, upgrade=upgrade, home=obj.get("home"), role=role or Role.WRITER) as db:
        yield db


def existing_store(ctx: click.Context) -> None:
    """ElspethCliError when no server is named (--database, ELSPETH_DATABASE_URL) and the home
    holds no embedded store. A command that only reads makes no store: run in the wrong folder, or
    with a misspelt --home, it made a whole data folder there and said "no runs yet" (a new user's
    review); `resume RUN` in the wrong folder made one, then said it held no such run (another)."""
    if (ctx.find_root().obj or {}).get("database") or os.environ.get("ELSPETH_DATABASE_URL") is not None:
        return
    home = Path(home_from_ctx(ctx))
    if not os.path.lexists(home / "pgdata"):  # (what is there, the server says)
        raise ElspethCliError(
            f"there is no audit store in {home}: nothing has run with this home. Run from the folder the pipelines "
            "ran in, or give --home FOLDER or --database URL"
        )


def home_from_ctx(ctx: click.Context) -> str:
    """The ELSPETH home (`--home`, ELSPETH_HOME, else ./.elspeth) as an absolute path, resolved
    now: resume changes into the run's folder, and the home must not move with it."""
    from landscape.embedded import elspeth_home

    return str(elspeth_home((ctx.find_root().obj or {}).get("home")))


def warn_reinstated(recorder: PostgresRecorder, run_id: str) -> None:
    """Say on stderr when payloads of the run are back in the store after their erasure: only
    someone who may write payloads (the writer role) could have put them back. Readers take them
    as erased (`landscape.postgres._REINSTATED`); this says that the store was tampered with."""
    n = recorder.reinstated(run_id)
    if n:
        say(
            f"elspeth: warning: {n} payload(s) of run {run_id} are in the payload store although its erasure records "
            "say they were erased: they were put back after `elspeth purge` (tampering by a role that may write "
            "payloads?); they are taken as erased, the records win"
        )


def counted(n: int, noun: str) -> str:
    """`1 row`, `2 rows`, `0 rows`: a count and its noun, in the number the count takes."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
