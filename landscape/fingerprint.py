"""The key that fingerprints secrets (HMAC-SHA256), so that two runs' settings can be compared
without a secret ever reaching the store.

`ELSPETH_FINGERPRINT_KEY` wins. Without it each ELSPETH home gets its own random key, in
`<home>/fingerprint.key`, made on first use. It lives beside the audit store, never in it:
whoever can read the store must not be able to confirm a guessed password. Losing the file
means the fingerprints already recorded can no longer be checked against a candidate secret.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from landscape.errors import DatabaseUnavailable, LandscapeError
from landscape.owner import mistrust

ENV = "ELSPETH_FINGERPRINT_KEY"
KEY_FILE = "fingerprint.key"
_KEY_BYTES = 32


class FingerprintKeyError(LandscapeError):
    """The home's key file cannot be made or is not fit to use."""


def fingerprint_key(home: Path, environ: Mapping[str, str]) -> tuple[bytes, Path | None]:
    """The fingerprint key, and the key file's path when this call created it (else None)."""
    given = environ.get(ENV, "")
    if given:
        return given.encode(), None
    path = home / KEY_FILE
    if os.geteuid() == 0:  # root writes nothing in a home another user could point elsewhere
        from landscape.embedded import only_root_can_move  # (here: the embedded server's module)

        try:
            only_root_can_move(home)
        except DatabaseUnavailable as e:
            raise FingerprintKeyError(str(e)) from None
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        dir_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise FingerprintKeyError(
            f"cannot use the ELSPETH home {home} for the fingerprint key: {e.strerror}; allowed: a folder this user "
            f"may write (--home or ELSPETH_HOME), or the key itself in {ENV}"
        ) from e
    try:
        created = _create(dir_fd, path)
        return _read(dir_fd, path), path if created else None
    finally:
        os.close(dir_fd)


def _create(dir_fd: int, path: Path) -> bool:
    """Make the key file unless it exists; True when this process made it.

    Written whole under a private temporary name (O_EXCL, O_NOFOLLOW: a planted file or link is
    refused, never followed) and then linked into place, which fails if the name exists: two
    first uses at once end with one key, and a reader never sees a half-written file."""
    try:
        os.stat(KEY_FILE, dir_fd=dir_fd, follow_symlinks=False)
        return False
    except FileNotFoundError:
        pass
    except OSError as e:
        raise FingerprintKeyError(f"cannot read the fingerprint key {path}: {e.strerror}") from e
    tmp = f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        try:
            os.write(fd, (secrets.token_hex(_KEY_BYTES) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, KEY_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            return False  # another process made it first: use theirs
        finally:
            os.unlink(tmp, dir_fd=dir_fd)
        os.fsync(dir_fd)
    except OSError as e:
        raise FingerprintKeyError(f"cannot create the fingerprint key {path}: {e.strerror}") from e
    return True


def _read(dir_fd: int, path: Path) -> bytes:
    try:
        fd = os.open(KEY_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        why = "it is a symbolic link" if os.path.islink(path) else e.strerror
        raise FingerprintKeyError(
            f"cannot read the fingerprint key {path}: {why}; allowed: a regular file, mode 600"
        ) from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FingerprintKeyError(
                f"the fingerprint key {path} is not a regular file; allowed: a regular file, mode 600"
            )
        why = mistrust(info, secret=True)
        if why:
            raise FingerprintKeyError(
                f"the fingerprint key {path}: {why}; allowed: a file of yours, mode 600 (chmod 600 {path})"
            )
        data = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    if len(data) < 32:
        raise FingerprintKeyError(
            f"the fingerprint key {path} holds {len(data)} bytes; allowed: at least 32 (restore it)"
        )
    return data
