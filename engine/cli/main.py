"""The `elspeth` command."""

from __future__ import annotations

import importlib
import os
import sys

import click

from engine.cli.errors import ElspethGroup

# Commands that run offline, with no database: their modules must not bring the driver (a test
# runs `elspeth verify` where psycopg is not installed), so they are imported on their own.
_OFFLINE = {"verify": ("engine.cli.verify", "verify_cmd")}


class _Cli(ElspethGroup):
    """Imports command modules when a command is looked up, not when `elspeth` starts: most of
    them bring the database driver, which an offline command must not need."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _OFFLINE:
            module, name = _OFFLINE[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), name)
            return command
        _register()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        _register()
        return sorted({*super().list_commands(ctx), *_OFFLINE})


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database", envvar="ELSPETH_DATABASE_URL", help="PostgreSQL URL of the audit store.")
@click.option("--home", envvar="ELSPETH_HOME", help="Folder of the embedded database [./.elspeth].")
@click.version_option(package_name="elspeth")
@click.pass_context
def cli(ctx: click.Context, database: str | None, home: str | None) -> None:
    """ELSPETH: data pipelines whose every decision is recorded in a hash-chained event log."""
    ctx.obj = {"database": database, "home": home}
    if ctx.invoked_subcommand in _OFFLINE:
        return  # no home and no database: nothing to pin (and no driver to find them with)
    from landscape.embedded import elspeth_home  # imported here: see _Cli

    # One home for the whole command, as an absolute path: the fingerprint key lives there even
    # with an external --database, and `resume` changes folder before it loads the settings.
    os.environ["ELSPETH_HOME"] = str(elspeth_home(home))
    if database:  # so that the load-time checks compare sinks with the store this command uses
        os.environ["ELSPETH_DATABASE_URL"] = database


_registered = False


def _register() -> None:
    # Each command lives in its own module; registering one is one line here. Called on the
    # first lookup of a command (see _Cli), once.
    global _registered
    if _registered:
        return
    _registered = True
    from engine.cli.audit import checkpoint_cmd, export_cmd, prove_cmd
    from engine.cli.db import db_group
    from engine.cli.dbstop import db_stop
    from engine.cli.explain import explain_cmd
    from engine.cli.inspect import projections_group, replay_cmd
    from engine.cli.keys import keys_group
    from engine.cli.plugins import plugins_group
    from engine.cli.purge import purge_cmd
    from engine.cli.run import resume_cmd, run_cmd
    from engine.cli.show import runs_cmd, show_cmd
    from engine.cli.statecharts import statecharts_cmd
    from engine.cli.validate import validate_cmd

    for command in (run_cmd, resume_cmd, validate_cmd, runs_cmd, show_cmd, replay_cmd, explain_cmd,
                    projections_group, plugins_group, statecharts_cmd, purge_cmd, db_group, keys_group,
                    export_cmd, prove_cmd, checkpoint_cmd):  # fmt: skip
        cli.add_command(command)
    db_group.add_command(db_stop)


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


if __name__ == "__main__":
    main()
