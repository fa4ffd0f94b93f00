"""`elspeth db`: the audit store's schema, its roles, and access for SQL tools."""

from __future__ import annotations

import signal
import sys
import threading

import click

from engine.cli.common import database_from_ctx
from engine.cli.errors import ElspethCliError
from engine.cli.visible import say
from landscape.errors import LandscapeError
from landscape.role_names import ELSPETH_ROLES, Role


@click.group("db")
def db_group() -> None:
    """The audit store: its schema, its roles, and access for SQL."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or upgrade the audit store's schema, and create or update the ELSPETH roles
    (elspeth_writer, elspeth_analyst, elspeth_auditor) and their grants. Run it as the owner of
    the tables; on an external server that account needs CREATEROLE."""
    from landscape.db import migrate  # here, as every heavy import of the CLI: --help stays fast
    from landscape.roles import readers_may_lock

    with database_from_ctx(ctx, upgrade=True, role=Role.OWNER) as db:
        revision = migrate(db)
        click.echo(f"schema at revision {revision} in {db.describe()}")
        click.echo(f"roles: {', '.join(ELSPETH_ROLES)} (see `elspeth db roles`)")
        with db.connect() as conn:
            open_locks = readers_may_lock(conn)
    if open_locks:
        say(
            "elspeth: the analyst and auditor roles may take advisory locks here (this account does not own "
            "PostgreSQL's lock functions), so one could sit on a run's lock and keep its resume out: have a "
            "superuser run `elspeth db upgrade` once"
        )


@db_group.command("roles")
@click.option(
    "--set-password",
    "set_password_of",
    type=click.Choice(ELSPETH_ROLES),
    help="Let this role log in with a password, read from a prompt (or from stdin when it is not a terminal).",
)
@click.pass_context
def db_roles(ctx: click.Context, set_password_of: str | None) -> None:
    """Show the ELSPETH roles and what each may do here; on an external server, set a password."""
    from landscape.roles import beyond_the_parents, describe, set_password

    with database_from_ctx(ctx, role=Role.OWNER) as db:
        if set_password_of is not None:
            if db.embedded:
                raise ElspethCliError(
                    "the embedded server admits only the OS user running ELSPETH, without passwords (its peer map); "
                    "passwords are for an external server (--database URL)"
                )
            password = _read_password(set_password_of)
            with db.connect() as conn:
                try:
                    set_password(conn, set_password_of, password)
                except LandscapeError as e:
                    raise ElspethCliError(str(e)) from e
            click.echo(f"{set_password_of} may now log in with that password")
            return
        with db.connect() as conn:
            infos = describe(conn)
            beyond = beyond_the_parents(conn) if all(info.exists for info in infos) else []
    click.echo(f"roles in {db.describe()}:")
    for info in infos:
        if not info.exists:
            click.echo(f"  {info.name:<16} missing: run `elspeth db upgrade`")
            continue
        login = "can log in" if info.can_login else "cannot log in"
        click.echo(f"  {info.name:<16} {login}")
        for privileges, tables in info.privileges:
            click.echo(f"      {privileges:<30} {', '.join(tables)}")
    if beyond:  # (the lines above are of the partitioned tables, which every statement goes through)
        click.echo(
            "  beyond the rule: a grant to PUBLIC, the writer or the auditor, a grant option of theirs, or their "
            f"ownership, on {', '.join(beyond)}: `elspeth db upgrade` takes it back"
        )


def _read_password(role: str) -> str:
    # Never from argv: a command line is visible to every user of the machine (ps) and kept in
    # shell histories.
    if sys.stdin.isatty():
        password: str = click.prompt(f"password for {role}", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ElspethCliError("empty password: nothing changed")
    return password


_SERVE_CHECK_SECONDS = 2.0


@db_group.command("serve")
@click.pass_context
def db_serve(ctx: click.Context) -> None:
    """Keep the audit store reachable for SQL tools until Ctrl-C, and print how to connect.

    The embedded server otherwise stops when the last `elspeth` command ends."""
    from landscape.db import redact

    with database_from_ctx(ctx, role=Role.OWNER) as db:
        # Before the first line: whoever reads how to connect may stop it at once (a script, a
        # test), and a SIGTERM before the handler would end the process with the server left up.
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # (SIGHUP: its terminal closed)
            # A SIGHUP ignored stays so (`nohup`: it stays up); SIGINT is taken even when a shell
            # started it ignoring it, as a script's background job: `kill -INT` is how scripts stop it.
            if signum != signal.SIGHUP or signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, lambda *_: stop.set())
        click.echo(f"audit store: {db.describe()}")
        click.echo(f"connect with: psql '{redact(db.conninfo)}'   (tables: docs/sql-cookbook.md)")
        if db.embedded:
            as_analyst = db.conninfo.replace("postgresql://postgres@", f"postgresql://{Role.ANALYST.value}@", 1)
            click.echo(f"as an analyst: psql '{as_analyst}'")
        say("serving until Ctrl-C")
        # On exit the embedded server stops, unless another elspeth uses it. Until then, a server
        # that went away (killed, out of memory, stopped by hand) is said, not served in silence.
        # Judged by its process, never by a connection: a server with every session taken, or
        # stalled a while, refuses or keeps one waiting, and ending here would stop it under
        # every SQL session it still serves.
        while not stop.wait(_SERVE_CHECK_SECONDS):
            if db.gone():
                raise ElspethCliError(
                    f"the audit store stopped answering, so serving it ended: {db.describe()} is gone "
                    "(its postmaster.pid was removed, or names a process that is no more)"
                )


def _add_stop() -> None:
    from engine.cli.dbstop import db_stop  # its own module: the embedded server's start/stop protocol

    db_group.add_command(db_stop)


_add_stop()
