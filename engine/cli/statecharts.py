"""`elspeth statecharts`: write (or check) the Mermaid diagrams of the four machines."""

from __future__ import annotations

import os
from pathlib import Path

import click

from engine.cli.errors import ElspethCliError
from landscape.visible import one_line


@click.command("statecharts")
@click.option("--check", is_flag=True, help="Exit 1 if the committed diagrams differ.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs/statecharts"),
    show_default=True,
)
def statecharts_cmd(check: bool, out: Path) -> None:
    """Write Mermaid diagrams of the Run, Token, Coalesce and Batch machines."""
    from statecharts.mermaid import render_all  # here: --help stays fast

    if not out.is_absolute():
        try:
            os.getcwd()
        except FileNotFoundError:  # (or every diagram would be "out of date", or a traceback)
            raise ElspethCliError(
                f"the folder elspeth was started in no longer exists (deleted or moved?), and --out {one_line(out)} is "
                "relative to it; change to a folder that exists, or give an absolute --out"
            ) from None
    stale = []
    for name, text in render_all().items():
        path = out / name
        try:
            current = path.read_text(encoding="utf-8") if path.exists() else None
            if current == text:
                continue
            if check:
                stale.append(str(path))
            else:
                out.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                click.echo(f"wrote {one_line(path)}")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ElspethCliError(f"{one_line(path)}: {reason}") from None
    if stale:
        raise ElspethCliError(
            "statechart diagrams are out of date: " + ", ".join(stale) + " (run `elspeth statecharts`)"
        )
    if check:
        click.echo(f"statecharts in {one_line(out)} are up to date")
