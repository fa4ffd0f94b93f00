"""The `elspeth` command."""

from __future__ import annotations

import json
import sys

import click

from engine.cli.common import database_from_ctx
from engine.cli.errors import ElspethCliError
from landscape.roles import Role
from landscape.store import writer_alive

# Run states in which a writer is (or should be) at work.
_OPEN = ("running", "draining")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database", envvar="ELSPETH_DATABASE_URL", help="PostgreSQL URL of the audit store.")
@click.option("--home", envvar="ELSPETH_HOME", help="Folder of the embedded database [./.elspeth].")
@click.version_option(package_name="elspeth")
@click.pass_context
def cli(ctx: click.Context, database: str | None, home: str | None) -> None:
    """ELSPETH: data pipelines whose every decision is recorded in a hash-chained event log."""
    ctx.obj = {"database": database, "home": home}


@cli.command("runs")
@click.option("--json", "as_json", is_flag=True, help="An array of objects, newest first.")
@click.pass_context
def runs_cmd(ctx: click.Context, as_json: bool) -> None:
    """List runs, newest first. A run still `running` whose writer is gone crashed (or lost its
    database): it says so, with the command that continues it."""
    with database_from_ctx(ctx, role=Role.AUDITOR) as db, db.connect() as conn:
        rows = conn.execute(
            "SELECT r.run_id, r.status, r.started_at, r.ended_at, r.resumes, "
            "coalesce(m.value, 0)::bigint, r.settings_path FROM runs r "
            "LEFT JOIN run_metrics m ON m.run_id = r.run_id AND m.metric = 'rows_in' "
            "ORDER BY r.started_at DESC, r.run_id DESC"
        ).fetchall()
        # Only runs the log leaves open can have a writer; ended ones report None.
        alive = {r[0]: writer_alive(conn, r[0]) for r in rows if r[1] in _OPEN}
    if as_json:
        out = [
            {
                "run_id": r[0],
                "status": r[1],
                "started_at": r[2].isoformat(),
                "ended_at": r[3].isoformat() if r[3] else None,
                "resumes": r[4],
                "rows": r[5],
                "settings": r[6],
                "writer_alive": alive.get(r[0]),
            }
            for r in rows
        ]
        click.echo(json.dumps(out, indent=2))
        return
    if not rows:
        click.echo("no runs yet")
        return
    click.echo(f"{'run id':<32} {'status':<12} {'started':<20} {'rows':>10}")
    for r in rows:
        note = f"  writer gone: elspeth resume {r[0]}" if alive.get(r[0]) is False else ""
        click.echo(f"{r[0]:<32} {r[1]:<12} {r[2].strftime('%Y-%m-%d %H:%M:%S'):<20} {r[5]:>10}{note}")


def _register() -> None:
    # Each command lives in its own module; registering one is one line here.
    from engine.cli.db import db_group
    from engine.cli.inspect import explain_cmd, projections_group, replay_cmd
    from engine.cli.plugins import plugins_group
    from engine.cli.run import resume_cmd, run_cmd
    from engine.cli.statecharts import statecharts_cmd
    from engine.cli.validate import validate_cmd

    for command in (run_cmd, resume_cmd, validate_cmd, replay_cmd, explain_cmd, projections_group,
                    plugins_group, statecharts_cmd, db_group):  # fmt: skip
        cli.add_command(command)


_register()


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("elspeth: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except ElspethCliError as e:  # pragma: no cover - a ClickException, handled above
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
