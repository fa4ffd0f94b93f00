"""What a child process of ELSPETH's does first (end with its parent), and its pipes."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> None:
    """Be killed when the parent dies (Linux); elsewhere the closed pipe ends the child."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request above was in place
        os._exit(0)


_F_SETPIPE_SZ = 1031  # Linux: a pipe of 1 MiB (the unprivileged maximum) takes a batch in fewer writes
_PIPE_BYTES = 1 << 20


def widen_pipe(fd: int) -> None:
    """A pipe of 1 MiB where the system allows it (the default works too, in more writes)."""
    with contextlib.suppress(OSError):  # not Linux, or a lower limit
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
