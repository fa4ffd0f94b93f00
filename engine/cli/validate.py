"""`elspeth validate -s FILE`: check a settings file (settings, DAG, plugin options) without running."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("validate")
@click.option("-s", "--settings", "settings_path", required=True, type=click.Path(path_type=Path))
def validate_cmd(settings_path: Path) -> None:
    """Check a settings file without running it; exit 2 listing every problem."""
    from engine.cli.run import load_pipeline

    pipeline = load_pipeline(settings_path)
    sinks = len(pipeline.nodes.sinks)
    click.echo(f"OK: {settings_path}: {len(pipeline.decls) - sinks - 1} nodes, {sinks} sinks")
    pipeline.close()
