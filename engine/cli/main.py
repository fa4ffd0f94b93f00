"""The `elspeth` command."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time

import click

from engine.cli import visible
from engine.cli.errors import ElspethCliError, ElspethGroup, settled_before_signal

# Every command: its module, its object, and the line `elspeth --help` shows. A command's module
# is imported only when that command runs, so `elspeth --help` starts fast and `elspeth verify`
# (offline) never brings the database driver (a test runs it where psycopg is not installed).
# Registering a command is one line here.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("engine.cli.run", "run_cmd", "Run a pipeline, recording every step of every row."),
    "resume": ("engine.cli.run", "resume_cmd", "Continue an interrupted, failed or crashed run."),
    "abandon": ("engine.cli.run", "abandon_cmd", "End a stopped run for good (it is then not resumed)."),
    "validate": ("engine.cli.validate", "validate_cmd", "Check a settings file (and its inputs) without running."),
    "runs": ("engine.cli.show", "runs_cmd", "List runs, newest first (filters: --status, --since, --limit)."),
    "show": ("engine.cli.show", "show_cmd", "One run: settings, nodes, outcomes, sink files, durations."),
    "replay": ("engine.cli.inspect", "replay_cmd", "Verify a run's log in one pass; --check also the projections."),
    "explain": ("engine.cli.explain", "explain_cmd", "One row's lineage, from the events, checked."),
    "projections": ("engine.cli.inspect", "projections_group", "The analyst tables derived from the events."),
    "purge": ("engine.cli.purge", "purge_cmd", "Erase row data (retention or a request), keeping every proof."),
    "export": ("engine.cli.audit", "export_cmd", "Write a run's verifiable log to one file."),
    "prove": ("engine.cli.audit", "prove_cmd", "Write an inclusion proof of one event or one row's events."),
    "checkpoint": ("engine.cli.audit", "checkpoint_cmd", "Write a run's newest signed checkpoint (for an auditor)."),
    "verify": ("engine.cli.verify", "verify_cmd", "Verify an export or a proof offline: no database needed."),
    "keys": ("engine.cli.keys", "keys_group", "Signing keys for checkpoints."),
    "db": ("engine.cli.db", "db_group", "The audit store: schema, roles, access for SQL, stop."),
    "plugins": ("engine.cli.plugins", "plugins_group", "The plugins this ELSPETH has."),
    "statecharts": ("engine.cli.statecharts", "statecharts_cmd", "Draw the state machines (docs/statecharts/)."),
}
OFFLINE = frozenset({"verify", "keys", "statecharts", "plugins"})  # need no home and no database


class _Cli(ElspethGroup):
    """Looks commands up in COMMANDS, importing only the module of the one that runs."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = COMMANDS.get(cmd_name)
        if found is None:
            return None
        command: click.Command = getattr(importlib.import_module(found[0]), found[1])
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in sorted(COMMANDS)])


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database", envvar="ELSPETH_DATABASE_URL", help="PostgreSQL URL of the audit store.")
@click.option("--home", envvar="ELSPETH_HOME", help="Folder of the embedded database [./.elspeth].")
@click.version_option(package_name="elspeth")
@click.pass_context
def cli(ctx: click.Context, database: str | None, home: str | None) -> None:
    """ELSPETH: data pipelines whose every decision is recorded in a hash-chained event log."""
    # (`started`: when this command began, for the run summary's "this command took": its store's
    # start, the first one's initdb included)
    ctx.obj = {"database": database, "home": home, "started": time.monotonic()}
    if ctx.invoked_subcommand in OFFLINE:
        return  # no home and no database: nothing to pin (and no driver to find them with)
    from landscape.embedded import elspeth_home  # imported here: see _Cli

    # One home for the whole command, as an absolute path: the fingerprint key lives there even
    # with an external --database, and `resume` changes folder before it loads the settings.
    given = home if home is not None else os.environ.get("ELSPETH_HOME")
    if given is not None and given and not given.strip():  # (" " made a home folder named a space, silently)
        raise ElspethCliError("ELSPETH_HOME (or --home) is blank; allowed: a folder's path, or unset for ./.elspeth")
    try:
        resolved = elspeth_home(home)
        os.environ["ELSPETH_HOME"] = str(resolved)
    except FileNotFoundError:  # (a relative home, from a folder deleted under the command)
        raise ElspethCliError(
            "the folder elspeth was started in no longer exists (deleted or moved?), and the home of its "
            "embedded store (./.elspeth, or a relative --home) is found from it; change to a folder that exists, "
            "or give an absolute --home"
        ) from None
    given = "--home" if ctx.get_parameter_source("home") is click.core.ParameterSource.COMMANDLINE else "ELSPETH_HOME"
    try:
        not_a_folder = resolved.exists() and not resolved.is_dir()
    except OSError as e:  # (a name over 255 bytes: ENAMETOOLONG, which `exists` raises)
        raise ElspethCliError(
            f"the ELSPETH home {resolved} ({given}) cannot be looked at: {e.strerror or e}; allowed: a folder's path "
            "this system can open (names of at most 255 bytes)"
        ) from None
    if not_a_folder:  # (a file there: every command would say something odd)
        raise ElspethCliError(
            f"the ELSPETH home {resolved} ({given}) is not a folder; allowed: a folder (made when missing) that holds "
            "the embedded store and the keys"
        )
    if database:  # so that the load-time checks compare sinks with the store this command uses
        from landscape.db import normalise_url
        from landscape.errors import DatabaseUnavailable

        try:  # a URL that is no URL is text to fix (exit 2), as in landscape.url; not a store out of reach
            normalise_url(database)
        except DatabaseUnavailable as e:
            fromline = ctx.get_parameter_source("database") is click.core.ParameterSource.COMMANDLINE
            hint = "'--database'" if fromline else "ELSPETH_DATABASE_URL"
            raise click.BadParameter(str(e), ctx, param_hint=hint) from None
        os.environ["ELSPETH_DATABASE_URL"] = database
        if ctx.get_parameter_source("database") is click.core.ParameterSource.COMMANDLINE:
            from landscape.urls import redact

            if redact(database) != database:
                visible.say(
                    "elspeth: warning: the password in --database is visible to every user of this machine "
                    "(`ps`) while the command runs: give the URL in ELSPETH_DATABASE_URL instead, or the password "
                    "in ~/.pgpass"
                )


def _terminated(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _output_lost(error: OSError) -> None:
    """Standard output failed: a reader that closed the pipe (`elspeth explain … | head`) wanted
    no more, and the command ends quietly with the status of a process a closed pipe stops (128 +
    SIGPIPE), as `cat` would; any other failure (a full disk) is said, status 1."""
    try:  # nothing left in the stream is written again at exit (Python would complain of it)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    if isinstance(error, BrokenPipeError):
        sys.exit(128 + signal.SIGPIPE)
    reason = error.strerror or str(error)
    visible.say(f"elspeth: error: standard output could not be written ({reason}): what it shows is cut short")
    sys.exit(1)


# The root group's options, which a user may give after a command instead.
_GROUP_OPTIONS = ("--home", "--database")


def main() -> None:
    # SIGTERM (what systemd, docker and Kubernetes send) ends a command as Ctrl-C does: cleanup
    # runs (an embedded server this command started is stopped) and the exit status is 130. A
    # run's loop installs its own handler, which stops at the next record boundary. SIGHUP (the
    # terminal closed) likewise, unless the command was started ignoring it (`nohup`).
    signal.signal(signal.SIGTERM, _terminated)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _terminated)
    visible.install()
    try:
        cli.main(standalone_mode=False)
        sys.stdout.flush()
    except visible.OutputLost as e:
        _output_lost(e.error)
    except click.exceptions.Abort:
        done = settled_before_signal()
        if done is None:
            visible.say("elspeth: interrupted")
            sys.exit(130)
        visible.say(f"elspeth: {done[0]} (a signal then cut short what it prints or the store's stop)")
        sys.exit(done[1])
    except click.ClickException as e:
        if isinstance(e, click.NoSuchOption) and e.option_name in _GROUP_OPTIONS and e.ctx and e.ctx.parent:
            # (`elspeth db stop --home X`: the store's options come before the command)
            names, at = [], e.ctx
            while at.parent is not None:
                names.append(at.info_name or "")
                at = at.parent
            command = " ".join(reversed(names))
            said = f"{e.option_name} is given before the command: elspeth {e.option_name} VALUE {command} ..."
            e = click.UsageError(said, e.ctx)
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
