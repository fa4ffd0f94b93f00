"""CLI errors: one line on stderr, and the exit status as a class attribute.

`ElspethGroup` is the one place where the packages' own errors become these: a command lets
`EngineError`, `LandscapeError` and `StatechartError` propagate, and the root group turns each
into one line and an exit code (2 for what the user must fix in the settings, 1 otherwise). The
original stays chained as `__cause__`, so nothing is swallowed.
"""

from __future__ import annotations

from typing import IO, Any

import click

from engine.dag import DagError
from engine.errors import EngineError
from engine.expressions import ExpressionSyntaxError
from engine.plugins.protocol import PluginConfigError
from engine.settings import SettingsError
from landscape.errors import LandscapeError
from statecharts.errors import StatechartError


class ElspethCliError(click.ClickException):
    """A failure (a failed run, an unreachable database, a refused resume): exit 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"elspeth: error: {self.format_message()}", err=True)


class SettingsCliError(ElspethCliError):
    """The user's settings are wrong: exit 2, like any usage error."""

    exit_code = 2


_SETTINGS_ERRORS = (SettingsError, DagError, PluginConfigError, ExpressionSyntaxError)
OUR_ERRORS = (EngineError, LandscapeError, StatechartError)


def cli_error(e: EngineError | LandscapeError | StatechartError) -> ElspethCliError:
    if isinstance(e, _SETTINGS_ERRORS):
        return SettingsCliError(str(e))
    return ElspethCliError(str(e))


class ElspethGroup(click.Group):
    """The root command group: our errors become one line and an exit code here, once."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OUR_ERRORS as e:
            raise cli_error(e) from e
