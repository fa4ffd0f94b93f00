"""`elspeth validate -s FILE`: check a settings file (settings, DAG, plugin options) without running."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("validate")
@click.option(
    "-s", "--settings", "settings_path", required=True, type=click.Path(path_type=Path), help="The settings file."
)
def validate_cmd(settings_path: Path) -> None:
    """Check a settings file without running it: exit 2 listing the problems of the settings
    (each plugin's options stop at its first); then exit 1 if an input file is missing or
    unreadable or an output folder does not exist."""
    # The same path as `run` up to the first row: settings, DAG and plugins are built, so what
    # validate accepts, run accepts. Errors become SettingsCliError (exit 2), one line each.
    from engine.cli.preflight import check_paths
    from engine.cli.run import describe, load_pipeline
    from landscape.visible import one_line

    pipeline = load_pipeline(settings_path)
    try:
        check_paths(pipeline)  # the input is there and the output folders: exit 1 otherwise
        click.echo(f"OK: {one_line(settings_path)}: {describe(pipeline)}")
    finally:
        pipeline.close()
