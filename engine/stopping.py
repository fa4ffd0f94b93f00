"""SIGINT, SIGTERM and SIGHUP: stop at the next record boundary, or at once if that takes too long.

The first signal asks the run loop to stop at the next record boundary, where it makes the
sinks durable, records `RunInterrupted` and commits. Every step of a row is bounded
(expressions, RE2 patterns), so that normally takes far less than a second. But a plugin can
still block (a sink waiting on a network, a source waiting on a read): if the run has not
stopped `GRACE_SECONDS` after the signal, or a second signal comes, `StopNow` is raised
wherever the main thread is. That abandons the events not yet committed, exactly as a crash
would: the log ends at its last durability point, which is consistent, and `elspeth resume`
continues from there (ARCHITECTURE §6). Plugin error boundaries catch `Exception`, so
`StopNow` (a BaseException) passes through them to `Stop.installed`, which turns it into
`StoppedAtOnce`.

Python runs signal handlers between bytecodes, and a signal interrupts the blocking system call
it lands in so that its handler runs. But one that lands just before the call is made (after
Python's last look for signals) interrupts nothing: the call then blocks with the handler not
run, forever if nothing else wakes it (a plugin waiting on a lock nobody releases; CI caught it,
about one run in a hundred). So while a run is installed, a timer ticks every `TICK_SECONDS`:
each tick interrupts whatever blocks, and the handlers waiting to run, run. The grace period is
judged by the ticks, so the stop at once comes at most a tick late. Only a long call inside C
code that never returns to Python could delay the stop further.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from engine.errors import EngineError

GRACE_SECONDS = 1.0
TICK_SECONDS = 0.25
# SIGHUP too: a terminal closed under a run sends it, and by default it ended the process where
# it stood (its sender child with it), with the embedded server left up (a new user's review).
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopNow(BaseException):
    """Raised by the signal handler to leave whatever the main thread is doing."""


class StoppedAtOnce(EngineError):
    """The run was stopped without reaching a record boundary; its log ends at the last commit."""

    def __init__(self, run_id: str, signame: str, again: str | None = None) -> None:
        why = (
            f"a second signal ({again}) came before it reached a record boundary"
            if again is not None
            else f"it did not reach a record boundary within {GRACE_SECONDS:g} s"
        )
        super().__init__(
            f"run {run_id} stopped at once on {signame} ({why}); its log ends at its last durability point — "
            f"continue it with `elspeth resume {run_id}`"
        )
        self.run_id = run_id
        self.signame = signame


@dataclass
class Stop:
    """Signals ask the loop to stop at the next record boundary (a durability point)."""

    run_id: str = ""
    requested: str | None = None
    again: str | None = None  # the second signal, when one (not the grace period's end) stopped it
    aborting: bool = False
    handlers: dict[int, Any] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    requested_at: float = 0.0

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.aborting:
            return  # already leaving: let the cleanup run
        if signum == signal.SIGALRM:  # a tick
            if self.requested is not None and self.clock() - self.requested_at >= GRACE_SECONDS:
                self._abort()
            return
        if self.requested is not None:
            if signum == signal.SIGHUP:
                # A terminal that closes hangs its jobs up more than once (the shell passes its
                # own SIGHUP on, then the terminal's arrives): no one asked twice, so no escalation.
                return
            self.again = signal.Signals(signum).name
            self._abort()
        self.requested = signal.Signals(signum).name
        self.requested_at = self.clock()

    def settled(self) -> None:
        """The run has stopped (or ended) on its own: no abort from here on."""
        self.aborting = True
        with suppress(AttributeError, ValueError):
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _abort(self) -> None:
        self.aborting = True
        with suppress(AttributeError):
            signal.setitimer(signal.ITIMER_REAL, 0)
        raise StopNow

    @contextmanager
    def installed(self) -> Iterator[Stop]:
        for sig in (*_SIGNALS, signal.SIGALRM):
            # Outside the main thread there are no signals to handle (and nothing to restore).
            # A signal the process was started ignoring stays ignored: a shell starts background
            # jobs ignoring SIGINT, so that a Ctrl-C meant for the foreground does not stop them
            # (it did, once this was installed, and not before: half a second into a run).
            with suppress(ValueError, AttributeError):
                if sig != signal.SIGALRM and signal.getsignal(sig) is signal.SIG_IGN:
                    continue
                self.handlers[sig] = signal.signal(sig, self._handle)
        if signal.SIGALRM in self.handlers:
            with suppress(AttributeError):  # no interval timers on this platform: a second signal stops
                signal.setitimer(signal.ITIMER_REAL, TICK_SECONDS, TICK_SECONDS)
        try:
            yield self
        except StopNow:
            raise StoppedAtOnce(self.run_id, self.requested or "a signal", self.again) from None
        finally:
            with suppress(ValueError, AttributeError):
                if self.handlers:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            for signum, old in self.handlers.items():
                signal.signal(signum, old)
