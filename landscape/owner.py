"""Whether a file or folder that vouches for something is the effective user's alone.

The signing key, the fingerprint key and the witness files are trusted because only the account
running ELSPETH can change them. A folder or file another account owns, or may write, could have
been swapped for one saying something else: refused, never followed. The server's own account
(`elspeth`, when ELSPETH runs as root) is such another account: a database superuser runs
programs as it. No driver here: `elspeth verify` loads keys through this module's callers.

A key the operator names (`ELSPETH_SIGNING_KEY`, `landscape.signing_key`) is checked by
`mistrust_named_key` instead: it may be kept by an account of its own and reached through a link,
but still nobody but its owner may change it, nor anyone outside its group read it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def _who(bits: int) -> str:
    """Who besides the owner `bits` (the group and other parts of a mode, one permission) opens
    the file to: 'its group', 'others' or both."""
    group, other = bool(bits & 0o070), bool(bits & 0o007)
    return "its group and by others" if group and other else "its group" if group else "others"


def _writable(mode: int, path: Path | None) -> str:
    bits = mode & 0o022
    fix = "g-w" if bits == 0o020 else "o-w" if bits == 0o002 else "go-w"
    hint = f"; chmod {fix} {path} fixes that" if path is not None else ""
    return f"writable by {_who(bits)} (mode {mode:o}{hint})"


def mistrust(info: os.stat_result, *, secret: bool = False, path: Path | None = None) -> str | None:
    """Why the file or folder `info` describes must not be relied on, or None: it must belong to
    the effective user, and nobody else may write it (nor read it, when it is a `secret`).
    `path`, when given, is named in the chmod that would fix a mode."""
    if info.st_uid != os.geteuid():
        return f"it belongs to another user (uid {info.st_uid}), not to the one running ELSPETH (uid {os.geteuid()})"
    mode = stat.S_IMODE(info.st_mode)
    if secret and mode & 0o077:
        return f"it is readable by others (mode {mode:o})"
    if mode & 0o022:
        return f"it is {_writable(mode, path)}"
    return None


def _mistrust_holder(parent: Path, owners: tuple[int, ...]) -> str | None:
    """Why the folder `parent` must not hold a trusted file or folder: whoever can write there can
    rename ours away and put another in its place. It must belong to one of `owners` and be
    writable by nobody else (unless sticky, like /tmp, where only an entry's owner may rename it)."""
    try:
        above = os.stat(parent)
    except OSError as e:
        return f"cannot read the folder holding it, {parent} ({e.strerror})"
    if above.st_uid not in owners:
        return f"the folder holding it, {parent}, belongs to another user (uid {above.st_uid})"
    if above.st_mode & 0o022 and not above.st_mode & stat.S_ISVTX:
        return f"the folder holding it, {parent}, is {_writable(stat.S_IMODE(above.st_mode), parent)}"
    return None


def mistrust_folder(path: Path) -> str | None:
    """Why the folder `path` must not hold keys or witness files, or None. The folder itself must
    pass `mistrust`, and is never followed if it is a link. The folder holding it must belong to
    the effective user or root and be writable by nobody else (see `_mistrust_holder`)."""
    try:
        info = os.lstat(path)
    except OSError as e:
        return f"cannot read it ({e.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a folder"
    return mistrust(info, path=path) or _mistrust_holder(path.parent, (os.geteuid(), 0))


def mistrust_new_folder(path: Path) -> str | None:
    """Why `mistrust_folder` would refuse the folder `path` once made (with any missing parents,
    as the witness folder is at a run's first checkpoint), or None. Asked before a run is
    recorded, so that a folder the run could not use fails at once, not after the run began. The
    folder itself is made private; a missing folder holding it is made with this process's umask."""
    if os.path.lexists(path):
        return mistrust_folder(path)
    parent = path.parent
    if os.path.lexists(parent):
        return _mistrust_holder(parent, (os.geteuid(), 0))
    umask = os.umask(0o077)  # the only way to read it; set back at once
    os.umask(umask)
    made = 0o777 & ~umask
    if made & 0o022:
        return (
            f"the folder holding it, {parent}, would be made writable by {_who(made & 0o022)} (umask {umask:03o}); "
            f"make it first: mkdir -p -m 755 {parent}"
        )
    return None


def mistrust_named_key(path: Path) -> str | None:
    """Why the private key file the operator named at `path` must not be signed with, or None.

    Unlike the home's own key it may belong to another account (one kept for signing, whose
    group this user is in) and be reached through a link: the operator chose it. What no choice
    makes safe is refused: a key anyone outside its owner and group can read (a secret no more),
    one anyone but its owner can write, one in a folder anyone but its owner (or root, or this
    user) can write, and a link in such a folder: each of these can be swapped for another key."""
    try:
        link = os.lstat(path)
    except OSError:
        return None  # missing or unreadable: the read that follows says so
    owners = (os.geteuid(), 0)
    if stat.S_ISLNK(link.st_mode):
        if link.st_uid not in owners:
            return f"it is a symbolic link belonging to another user (uid {link.st_uid})"
        why = _mistrust_holder(path.absolute().parent, owners)
        if why:
            return f"it is a symbolic link and {why}"
    try:
        real = Path(os.path.realpath(path))
        info = os.stat(real)
    except (OSError, ValueError):
        return None
    if stat.S_ISDIR(info.st_mode):
        return None  # the read says so
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"  # a FIFO would block the read
    mode = stat.S_IMODE(info.st_mode)
    shown = f" ({real})" if real != path.absolute() else ""
    if mode & 0o007:
        return f"it{shown} is open to others (mode {mode:o}); chmod o= {real} fixes that"
    if mode & 0o020:
        return f"it{shown} is {_writable(mode, real)}"
    return _mistrust_holder(real.parent, (*owners, info.st_uid))


def keep_home_private(home: Path) -> None:
    """Take write access to the ELSPETH home `home` from its group and others, if it is this
    user's and they have it (a home made with `mkdir` under umask 002, the default where each user
    has a group of their own). The home is ELSPETH's folder; `keys/` and `witness/` in it are
    refused while anyone else can write it (see `mistrust_folder`), so this is what makes such a
    home usable. What is in it is still checked by its readers. Nothing is done to a home that is
    not there or not this user's (root's own home is kept so by `landscape.embedded`)."""
    try:
        fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return  # not there (yet), or not a folder: whoever uses it next says so
    try:
        info = os.fstat(fd)
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid == os.geteuid() and mode & 0o022:
            os.fchmod(fd, mode & ~0o022)
    finally:
        os.close(fd)
