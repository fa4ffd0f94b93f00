"""What the progress display costs a run: `run.py PIPELINE ROWS --progress`.

The pipeline runs in this process (its commits sent from a child, as `elspeth run` sends them) three times (best of `rounds` each): with no display, with the
periodic lines (stderr not a terminal), and with the live bar (stderr and stdout on a
pseudo-terminal, drained by another process as a terminal would be). The time inside the display's
calls (which redraw the bar, at most once a second) is summed and given (as CPU time) as a share
of the run's wall time; the wall-time difference of bar vs none is printed too
(noisy on a shared machine: the summed share is the figure to trust).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.pipelines import prepare
from engine.cli.run import Progress
from engine.orchestrator import build_pipeline, start_run
from engine.settings import load_settings
from landscape.db import open_database


class _Timed:
    """Wraps a callable, summing the CPU time its calling thread spends in it (across threads).
    CPU, not wall time: the bar's thread waits for the GIL while the engine's thread runs, and
    that wait costs the run nothing."""

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        started = time.thread_time()
        try:
            return self.inner(*args)
        finally:
            with self._lock:
                self.seconds += time.thread_time() - started
                self.calls += 1


@contextmanager
def _terminal() -> Iterator[None]:
    """stdout and stderr on a pseudo-terminal for the duration, its output drained and dropped."""
    master, slave = os.openpty()
    old_out, old_err = sys.stdout, sys.stderr
    tty = open(slave, "w", encoding="utf-8", closefd=True)  # noqa: SIM115 - closed below
    # Drained by another process, as a terminal would be: a thread here would make the run send
    # its commits from a thread too (the writer forks only when it is the process's one thread).
    reader = subprocess.Popen(["cat"], stdin=master, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(master)
    sys.stdout = sys.stderr = tty
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        tty.close()  # the reader sees the terminal hang up and ends
        reader.wait(timeout=5)


def _one(settings: Path, mode: str) -> tuple[float, float, int]:
    """(wall seconds, seconds inside the display, display calls) of one run in `mode`."""
    pipeline = build_pipeline(load_settings(settings))
    with open_database(os.environ.get("ELSPETH_DATABASE_URL")) as db:
        progress: Progress | None = None
        timed: _Timed | None = None
        with _terminal() if mode == "tty" else _quiet():
            if mode != "off":
                progress = Progress()
                timed = _Timed(progress)
            started = time.perf_counter()
            try:
                start_run(db, pipeline, commit_every=pipeline.loaded.settings.checkpoint.commit_every_rows(),
                          progress=timed, sending="process")  # fmt: skip
            finally:
                if progress is not None:
                    progress.close()
            wall = time.perf_counter() - started
    pipeline.close()
    # The bar is redrawn inside these calls (by the engine's thread), so they hold all it costs.
    spent = timed.seconds if timed else 0.0
    calls = timed.calls if timed else 0
    return wall, spent, calls


@contextmanager
def _quiet() -> Iterator[None]:
    """stderr to /dev/null (not a terminal: the periodic lines), as in a log or CI."""
    old = sys.stderr
    with open(os.devnull, "w", encoding="utf-8") as null:
        sys.stderr = null
        try:
            yield
        finally:
            sys.stderr = old


def progress_cost(name: str, rows: int, rounds: int = 2) -> str:
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="elspeth-progress-") as tmp:
        os.environ.setdefault("ELSPETH_HOME", os.path.join(home, ".elspeth"))
        os.chdir(tmp)
        try:
            settings = prepare(name, rows, Path(tmp))
            best: dict[str, tuple[float, float, int]] = {}
            for _ in range(rounds):
                for mode in ("off", "lines", "tty"):
                    got = _one(settings, mode)
                    if mode not in best or got[0] < best[mode][0]:
                        best[mode] = got
        finally:
            os.chdir(home)
    lines, tty, off = best["lines"], best["tty"], best["off"]
    return (
        f"progress_calls={tty[2]} lines_pct={100 * lines[1] / lines[0]:.3f} tty_pct={100 * tty[1] / tty[0]:.3f} "
        f"tty_wall_pct={100 * (tty[0] - off[0]) / off[0]:.1f}"
    )
