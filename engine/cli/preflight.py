"""Before anything is created: the files a pipeline reads exist, and the folders it writes into.

`validate` and `run` call this once the settings are known to be right, before any audit store is
opened or created, so a mistyped input path costs one line and leaves nothing behind (no store,
no run). Settings problems are exit 2 (fix the file); these are exit 1: the settings may well be
right and the world not yet as they say (an input not delivered, an output folder not made).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from engine.cli.errors import ElspethCliError
from engine.orchestrator import Pipeline


def path_problems(pipeline: Pipeline) -> list[str]:
    """One line per input that is not a readable regular file and per output folder that is not
    there. Plugins that read or write a `path` are checked (the built-in file plugins)."""
    where = pipeline.loaded.path
    problems: list[str] = []
    source_path = getattr(pipeline.source, "path", None)
    if isinstance(source_path, Path):
        why = _unreadable(source_path)
        if why:
            problems.append(f"{where}: source.options.path: the input {source_path} {why}")
    for name, sink in sorted(pipeline.nodes.sinks.items()):
        path = getattr(sink, "path", None)
        if isinstance(path, Path):
            folder = path.parent
            if not folder.is_dir():
                what = "is not a folder" if folder.exists() else "does not exist"
                problems.append(f"{where}: sinks.{name}.options.path: the folder {folder} of {path} {what}")
    return problems


def check_paths(pipeline: Pipeline) -> None:
    problems = path_problems(pipeline)
    if problems:
        raise ElspethCliError("\n".join(problems) + ("\nnothing was run" if len(problems) > 1 else "; nothing was run"))


def _unreadable(path: Path) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        # Only regular files: opening a FIFO or a device to test it could block or consume it.
        return "is not a regular file"
    if not os.access(path, os.R_OK):
        return "is not readable (permission denied)"
    return None
