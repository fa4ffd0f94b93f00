"""The progress display on a terminal: drawn by the engine's own thread, never by a thread of its
own, which would take the GIL from the engine in the short slices a run sets (see
`engine.cli.run.Progress`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rich.live import _RefreshThread

from engine.cli.run import Progress
from landscape.db import Database
from landscape.fold import RunFold
from tests.engine_harness import write_csv


def test_the_bar_is_drawn_by_the_caller_and_no_thread_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    master, slave = os.openpty()
    with open(slave, "w", encoding="utf-8") as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        monkeypatch.setattr(sys, "stdout", tty)
        monkeypatch.setenv("TERM", "xterm")  # (a dumb one gets lines, not a bar)
        progress = Progress()
        try:
            assert progress._bar is not None
            assert not [t for t in threading.enumerate() if isinstance(t, _RefreshThread)]
            drawn: list[int] = []
            inner = progress._bar.live.refresh
            progress._bar.live.refresh = lambda: (drawn.append(1), inner())[1]
            progress.last_drawn = -Progress.REDRAW_SECONDS  # due now
            progress(RunFold("run-x"))
            progress(RunFold("run-x"))  # within the second: not drawn again
            assert len(drawn) == 1
        finally:
            progress.close()
    os.close(master)


def test_the_bar_is_drawn_on_the_terminal_and_gone_before_the_summary(db: Database, tmp_path: Path) -> None:
    """A run whose stderr is a terminal draws its bar there, with the terminal's controls, and takes
    it off before the summary. (The bar once went to standard output, where every control is
    shown as text: a line of escapes, left in front of each line of the summary.)"""
    write_csv(tmp_path / "in.csv", ["id"], [[1], [2]])
    (tmp_path / "out").mkdir()
    (tmp_path / "settings.yaml").write_text(
        "source: {plugin: csv, on_success: out, options: {path: in.csv, schema: {mode: observed}}}\n"
        "sinks: {out: {plugin: csv, options: {path: out/o.csv}}}\n"
    )
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "engine.cli.main", "run", "-s", "settings.yaml"],
            cwd=tmp_path, env={**env, "ELSPETH_DATABASE_URL": db.conninfo, "ELSPETH_HOME": str(tmp_path / "h"),
                               "TERM": "xterm"},
            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, text=True, timeout=300,
        )  # fmt: skip
        os.close(slave)
        terminal = b""
        while chunk := _read_some(master):
            terminal += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0, terminal
    assert proc.stdout.startswith("run run-") and "\\u001b" not in proc.stdout, proc.stdout
    # Drawn there, then stopped (the cursor shown again); the summary went to standard output, not
    # through the live bar (which takes standard output over while it is up).
    assert b"starting" in terminal and b"\x1b[?25h" in terminal and b"run run-" not in terminal, terminal


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # (Linux: EIO once the other end is closed and all was read)
        return b""
