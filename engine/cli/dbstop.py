"""`elspeth db stop`: stop an embedded server that a killed process left running.

The embedded server is stopped by the last ELSPETH process using it. A process killed with
SIGKILL cannot do that, and when it was the last one the server stays up until some later
command ends. This is that later command, doing nothing else: it takes part in the usual
start/stop protocol (`landscape.embedded.embedded_server`), so it stops the server only when no
other ELSPETH process is using it.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import click

from engine.cli.errors import ElspethCliError
from landscape.embedded import elspeth_home, embedded_server, open_lock
from landscape.errors import DatabaseUnavailable


@click.command("stop")
@click.pass_context
def db_stop(ctx: click.Context) -> None:
    """Stop the embedded server of --home if no ELSPETH process is using it (one left running
    by a killed process, say). Nothing to do with --database."""
    obj = ctx.find_root().obj or {}
    if obj.get("database"):
        raise ElspethCliError(
            "db stop is for the embedded server; a server given by --database is not ELSPETH's to stop"
        )
    pidfile = elspeth_home(obj.get("home")) / "pgdata" / "postmaster.pid"
    try:
        running = pidfile.exists()
    except OSError as e:  # (a home of another user's: its data folder cannot be looked into)
        raise ElspethCliError(
            f"cannot look into {pidfile.parent}: {e.strerror}; only the user who runs that home's server can stop it"
        ) from None
    if not running:
        click.echo(f"the embedded server of {pidfile.parent.parent} is not running")
        return
    with embedded_server(obj.get("home")):
        pass  # on the way out, the last user stops the server
    if pidfile.exists():
        home = pidfile.parent.parent
        raise ElspethCliError(
            f"the embedded server of {home} is still running: "
            + (
                "another elspeth process (a run, or `db serve`) is using it; it stops when the last of them ends"
                if in_use(home)
                else f"it did not stop (see {home / 'postgresql.log'})"
            )
        )
    click.echo(f"stopped the embedded server of {pidfile.parent.parent}")


def in_use(home: Path) -> bool:
    """Whether an ELSPETH process holds the home's users lock (each one holds it shared while it
    runs; see `embedded_server`)."""
    try:
        with open_lock(home / "users.lock") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except (OSError, DatabaseUnavailable):
        return False
    return False
