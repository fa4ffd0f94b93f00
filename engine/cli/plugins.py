"""`elspeth plugins list`: what can go in a pipeline, with each plugin's options."""

from __future__ import annotations

import click


@click.group("plugins")
def plugins_group() -> None:
    """The plugins available to pipelines (built in, and from `elspeth.plugins` entry points)."""


@plugins_group.command("list")
def list_cmd() -> None:
    """List every plugin by kind, with its options and their defaults."""
    from engine.plugins.registry import all_plugins  # here: --help stays fast

    for spec in sorted(all_plugins(), key=lambda s: (s.kind, s.name)):
        click.echo(f"{spec.kind:<12} {spec.name}")
        for option, text in spec.options.items():
            click.echo(f"{'':<14}{option}: {text}")
