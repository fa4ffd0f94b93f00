"""CLI errors: one line on stderr, and the exit status as a class attribute.

`ElspethGroup` is the one place where the packages' own errors become these: a command lets
`EngineError`, `LandscapeError` and `StatechartError` propagate, and the root group turns each
into one line and an exit code (2 for what the user must fix in the settings, 1 otherwise). The
original stays chained as `__cause__`, so nothing is swallowed.
"""

from __future__ import annotations

import errno
import sys
from typing import IO, Any

import click

from engine.cli.visible import say
from engine.errors import EngineError
from landscape.errors import DISK_FULL, LandscapeError, connection_lost, first_line
from statecharts.errors import StatechartError

# What a command had done for good when a signal (Ctrl-C, SIGTERM) came after it: the signal
# cuts short only what follows (a run's summary, the embedded server's stop), and `main` says
# what was done, with its exit status, rather than that the command was interrupted.
_settled: tuple[str, int] | None = None


def settled(what: str, status: int) -> None:
    """The command's work is done, as `what` says, and it exits with `status`."""
    global _settled
    _settled = (what, status)


def settled_before_signal() -> tuple[str, int] | None:
    return _settled


class ElspethCliError(click.ClickException):
    """A failure (a failed run, an unreachable database, a refused resume): exit 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        say(f"elspeth: error: {self.format_message()}")


class SettingsCliError(ElspethCliError):
    """The user's settings are wrong: exit 2, like any usage error."""

    exit_code = 2


# Named, not imported: the settings modules bring the database driver, and `elspeth verify` must
# run where it is not installed. An error of a class whose module was never imported cannot have
# been raised, so looking the classes up among the loaded modules loses nothing.
_SETTINGS_ERRORS = (
    ("engine.settings", "SettingsError"),
    ("engine.dag", "DagError"),
    ("engine.plugins.protocol", "PluginConfigError"),
    ("engine.expressions", "ExpressionSyntaxError"),
)
OUR_ERRORS = (EngineError, LandscapeError, StatechartError)


def _is_settings_error(e: BaseException) -> bool:
    for module, name in _SETTINGS_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(e, getattr(loaded, name)):
            return True
    return False


def _is_lost_database(e: BaseException) -> bool:
    """A connection the server or the network ended (a crash, a full disk, an administrator's
    shutdown): the operator's to fix, never a bug to show a traceback for. Looked up among the
    loaded modules, as the settings errors are: `verify` runs without the driver."""
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(e, psycopg.OperationalError)


def _lost_words(e: BaseException) -> str:
    """What the one line says of an operational error: the database lost, or (a statement
    timeout, a lock not available) the server's answer."""
    state = getattr(e, "sqlstate", None)
    if state == DISK_FULL:
        return f"the audit store's disk is full (the database server could not write): {first_line(e)}"
    lost = connection_lost(state)
    return f"lost the database: {first_line(e)}" if lost else f"the database stopped the command: {first_line(e)}"


def cli_error(e: EngineError | LandscapeError | StatechartError) -> ElspethCliError:
    if _is_settings_error(e):
        return SettingsCliError(str(e))
    return ElspethCliError(str(e))


class ElspethGroup(click.Group):
    """The root command group: our errors become one line and an exit code here, once."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OUR_ERRORS as e:
            raise cli_error(e) from e
        except MemoryError as e:  # (what the command needed, not a mistake to show a traceback for)
            raise ElspethCliError(
                "out of memory: this machine cannot hold what the command needed (docs/scaling.md, memory)"
            ) from e
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:  # (a path given to the command that no file can have)
                raise ElspethCliError(
                    f"{e.filename}: {e.strerror}; allowed: a path this system can open (names of at most 255 "
                    "bytes, 4,095 in all)"
                ) from e
            raise
        except Exception as e:
            if _is_lost_database(e):  # (a server that died or was shut down under any command)
                raise ElspethCliError(_lost_words(e)) from e
            raise
