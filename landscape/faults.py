"""Test-only fault injection: make the process die at a chosen point, as SIGKILL would.

Set ELSPETH_FAULT to `POINT:N` to call `os._exit(FAULT_EXIT_CODE)` the N-th time POINT is reached
(1-based); `POINT:N:stop` stops the process there instead (SIGSTOP, as a debugger, a paused VM
or a stalled machine would), to be continued by the test. Points:

- `append`        after the N-th event is appended to the writer's buffer (not yet committed)
- `sink_flush`    after a sink's N-th flush is durable but before the events recording it commit
- `commit`        inside the N-th commit: events sent, transaction not yet committed
- `committed`     right after the N-th commit
- `sink_rollback` inside a database sink's N-th roll back to its durable position: its rows
                  deleted, their bookkeeping not yet, the transaction not committed
- `summary`       when `elspeth run` or `resume` has its run's outcome, before it prints the summary

Unset (the default), every check is one string comparison returning at once. In-process
property tests use `configure(..., raise_instead=True)`: the fault then raises `SimulatedCrash`
(a BaseException, so nothing in the engine catches it) instead of ending the process.
"""

from __future__ import annotations

import os
import signal

FAULT_EXIT_CODE = 86

_spec = os.environ.get("ELSPETH_FAULT", "")
_point, _, _n = _spec.partition(":")
_n, _, _action = _n.partition(":")
_target = int(_n) if _n.isdigit() else 0
_stop = _action == "stop"
_count = 0
_raise = False


class SimulatedCrash(BaseException):
    """The process 'died' here (tests only)."""


def reached(point: str) -> None:
    global _count, _target
    if point != _point or not _target:
        return
    _count += 1
    if _count >= _target:
        if _stop:
            _target = 0  # (once: continued, the process goes on as it would have)
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        if _raise:
            _target = 0  # a crash happens once; the resumed run must not crash again
            raise SimulatedCrash(f"{point}:{_count}")
        os._exit(FAULT_EXIT_CODE)


def configure(spec: str, *, raise_instead: bool = False) -> None:
    """Set (or with "" clear) the fault from code."""
    global _point, _target, _count, _raise, _stop
    _point, _, n = spec.partition(":")
    n, _, action = n.partition(":")
    _target = int(n) if n.isdigit() else 0
    _stop = action == "stop"
    _count = 0
    _raise = raise_instead


def died_in_child(exit_code: int) -> None:
    """A child process of this one (the writer's sender) ended with `exit_code`: if that was a
    fault, end this process the same way, as the fault would have ended it on a thread."""
    if exit_code == FAULT_EXIT_CODE:
        os._exit(FAULT_EXIT_CODE)
