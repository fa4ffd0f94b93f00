"""CLI errors: one line on stderr, and the exit status as a class attribute."""

from __future__ import annotations

from typing import IO, Any

import click


class ElspethCliError(click.ClickException):
    """A failure (a failed run, an unreachable database, a refused resume): exit 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"elspeth: error: {self.format_message()}", err=True)


class SettingsCliError(ElspethCliError):
    """The user's settings are wrong: exit 2, like any usage error."""

    exit_code = 2
