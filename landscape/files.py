"""Small files a user names (a key, a checkpoint kept by an auditor): read as regular files only,
up to a limit. `/dev/zero` named as a key was read until memory ran out, and a FIFO waited on
for a writer that never came (a hostile review)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path


class NotASmallFile(ValueError):
    """The path is not a regular file, or is larger than the limit: the reason, to be shown."""


def read_small_file(
    path: Path, limit: int, *, follow: bool = True, check: Callable[[os.stat_result], None] | None = None
) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes. OSError as opening it raises
    it (no such file, a folder, a link when `follow` is false: ELOOP); NotASmallFile otherwise.
    `check` sees the opened file's status first (the very file then read) and may raise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, "Is a directory")
        if check is not None:
            check(info)
        if not stat.S_ISREG(info.st_mode):
            raise NotASmallFile("it is not a regular file (a FIFO, a device or a socket)")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise NotASmallFile(f"it is larger than {limit} bytes, more than such a file holds")
    return data
