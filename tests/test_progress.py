"""The progress display on a terminal: drawn by the engine's own thread, never by a thread of its
own, which would take the GIL from the engine in the short slices a run sets (see
`engine.cli.run.Progress`)."""

from __future__ import annotations

import os
import sys
import threading

import pytest
from rich.live import _RefreshThread

from engine.cli.run import Progress
from landscape.fold import RunFold


def test_the_bar_is_drawn_by_the_caller_and_no_thread_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    master, slave = os.openpty()
    with open(slave, "w", encoding="utf-8") as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        monkeypatch.setattr(sys, "stdout", tty)
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
