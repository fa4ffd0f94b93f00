"""Whether a file or folder that vouches for something is the effective user's alone.

The signing key, the fingerprint key and the witness files are trusted because only the account
running ELSPETH can change them. A folder or file another account owns, or may write, could have
been swapped for one saying something else: refused, never followed. The server's own account
(`elspeth`, when ELSPETH runs as root) is such another account: a database superuser runs
programs as it. No driver here: `elspeth verify` loads keys through this module's callers.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def mistrust(info: os.stat_result, *, secret: bool = False) -> str | None:
    """Why the file or folder `info` describes must not be relied on, or None: it must belong to
    the effective user, and nobody else may write it (nor read it, when it is a `secret`)."""
    if info.st_uid != os.geteuid():
        return f"it belongs to another user (uid {info.st_uid}), not to the one running ELSPETH (uid {os.geteuid()})"
    mode = stat.S_IMODE(info.st_mode)
    if secret and mode & 0o077:
        return f"it is readable by others (mode {mode:o})"
    if mode & 0o022:
        return f"it is writable by others (mode {mode:o})"
    return None


def mistrust_folder(path: Path) -> str | None:
    """Why the folder `path` must not hold keys or witness files, or None. The folder itself must
    pass `mistrust`, and is never followed if it is a link. The folder holding it must belong to
    the effective user or root and be writable by nobody else (unless sticky, like /tmp): whoever
    can write there can rename ours away and put another in its place."""
    try:
        info = os.lstat(path)
    except OSError as e:
        return f"cannot read it ({e.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a folder"
    why = mistrust(info)
    if why:
        return why
    parent = path.parent
    try:
        above = os.stat(parent)
    except OSError as e:
        return f"cannot read the folder holding it, {parent} ({e.strerror})"
    if above.st_uid not in (os.geteuid(), 0):
        return f"the folder holding it, {parent}, belongs to another user (uid {above.st_uid})"
    if above.st_mode & 0o022 and not above.st_mode & stat.S_ISVTX:
        return f"the folder holding it, {parent}, is writable by others (mode {stat.S_IMODE(above.st_mode):o})"
    return None
