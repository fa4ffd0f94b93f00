"""Time, injected. The engine never reads the system clock directly, so tests can drive deadlines."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall time: deadlines survive a restart and a resume)."""
        ...

    def sleep_until(self, when: float) -> None:
        """Wait (the source has nothing for us) until `when` at the latest."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep_until(self, when: float) -> None:
        delay = when - time.time()
        if delay > 0:
            time.sleep(min(delay, 0.5))


class FakeClock:
    """Virtual time for tests: waiting jumps straight to the deadline."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def sleep_until(self, when: float) -> None:
        self.t = max(self.t, when)
