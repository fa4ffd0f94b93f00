"""Test-only fault injection: make the process die at a chosen point, as SIGKILL would.

Set ELSPETH_FAULT to `POINT:N` to call `os._exit(FAULT_EXIT_CODE)` the N-th time POINT is reached
(1-based). Points:

- `append`        after the N-th event is appended to the writer's buffer (not yet committed)
- `sink_flush`    after a sink's N-th flush is durable but before the events recording it commit
- `commit`        inside the N-th commit: events sent, transaction not yet committed
- `committed`     right after the N-th commit

Unset (the default), every check is one dictionary lookup returning at once.
"""

from __future__ import annotations

import os

FAULT_EXIT_CODE = 86

_spec = os.environ.get("ELSPETH_FAULT", "")
_point, _, _n = _spec.partition(":")
_target = int(_n) if _n.isdigit() else 0
_count = 0


def reached(point: str) -> None:
    global _count
    if point != _point or not _target:
        return
    _count += 1
    if _count >= _target:
        os._exit(FAULT_EXIT_CODE)


def configure(spec: str) -> None:
    """Set the fault from code (tests running the engine in-process use a subprocess instead)."""
    global _point, _target, _count
    _point, _, n = spec.partition(":")
    _target = int(n) if n.isdigit() else 0
    _count = 0
