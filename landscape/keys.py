"""Key files: `NAME.key` holds the signer key text (`PRIVATE+KEY+NAME+ID+…`, secret, mode 600),
`NAME.pub` the verifier key text (`NAME+ID+…`, for auditors). Both are one line, the forms of
`landscape.note`, which other signed-note tools read too.

Keys are never overwritten: a key that signed checkpoints is the only thing that can vouch for
them, so losing it to a second `generate` would orphan every checkpoint it signed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
from pathlib import Path

from landscape.errors import LandscapeError
from landscape.files import NotASmallFile, read_small_file
from landscape.note import NoteError, Signer, Verifier
from landscape.owner import keep_home_private, mistrust, mistrust_folder, mistrust_named_key

KEY_SUFFIX = ".key"
PUB_SUFFIX = ".pub"
DEFAULT_KEY = "default"
# A NAME is a file stem and a key name at once, so it takes what is safe as both.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class KeyFileError(LandscapeError):
    """A key file is missing, unreadable, of the wrong kind, malformed, or already there."""


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise KeyFileError(
            f"key name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create `path` holding `text`, or raise FileExistsError; never replaces a file.

    The text goes to a fresh temporary file (O_EXCL) that is then hard-linked to `path`: link()
    fails if `path` exists, and a reader never sees the key half-written (two processes making
    the default key at once both end up reading the one complete file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def generate_key_files(name: str, directory: str | os.PathLike[str], *, key_name: str | None = None) -> Signer:
    """Write `<directory>/<name>.key` (mode 600) and `<name>.pub` for a new Ed25519 key named
    `key_name` (default `name`); refuse if either exists. On failure nothing is left behind."""
    check_name(name)
    folder = Path(directory)
    key_path, pub_path = folder / f"{name}{KEY_SUFFIX}", folder / f"{name}{PUB_SUFFIX}"
    try:
        signer = Signer.generate(key_name or name)
    except NoteError as e:
        raise KeyFileError(str(e)) from None
    if not folder.is_dir():
        raise KeyFileError(f"{folder} is not an existing folder")
    written: list[Path] = []
    for path, text, mode in ((key_path, signer.text(), 0o600), (pub_path, signer.verifier.text(), 0o644)):
        try:
            _write_new(path, text + "\n", mode)
        except FileExistsError:
            _remove(written)
            raise KeyFileError(f"{path} already exists; a key is never overwritten (choose another name)") from None
        except OSError as e:
            _remove(written)
            raise KeyFileError(f"cannot write {path}: {e.strerror}") from None
        written.append(path)
    return signer


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


# A key file is one line of about a hundred bytes: anything this large is no key file.
_KEY_FILE_LIMIT = 64 * 1024


def _read_key_text(path: str | os.PathLike[str], what: str, *, owned: bool = False) -> str:
    """The one line of a key file. `owned`: the file must be the effective user's alone (see
    `landscape.owner`), and a link there is refused rather than followed."""
    p = Path(path)

    def yours(info: os.stat_result) -> None:
        why = mistrust(info, secret=True) if stat.S_ISREG(info.st_mode) else "it is not a regular file"
        if why:
            raise KeyFileError(f"{what} {p}: {why}; allowed: a file of yours, mode 600")

    try:
        raw = read_small_file(p, _KEY_FILE_LIMIT, follow=not owned, check=yours if owned else None)
    except NotASmallFile as e:
        raise KeyFileError(f"{what} {p}: {e}; allowed: a key file `elspeth keys generate` wrote") from None
    except FileNotFoundError:
        raise KeyFileError(f"{what} {p}: no such file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{what} {p} is a folder, not a key file") from None
    except OSError as e:
        if owned and e.errno == errno.ELOOP:
            raise KeyFileError(f"{what} {p} is a symbolic link; allowed: a file of yours, mode 600") from None
        raise KeyFileError(f"{what} {p}: cannot read it: {e.strerror}") from None
    if raw.startswith(b"-----BEGIN"):
        raise KeyFileError(f"{what} {p} is a PEM file; ELSPETH reads the one-line keys `elspeth keys generate` writes")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{what} {p} is not a text key file") from None
    lines = text.splitlines()
    if len(lines) != 1:
        raise KeyFileError(f"{what} {p} should hold one line, it holds {len(lines)}")
    return lines[0].strip()


def load_signer(path: str | os.PathLike[str], *, owned: bool = False) -> Signer:
    """The signing key in a `.key` file; KeyFileError naming the file and the problem. `owned`:
    a key the home vouches for, which must be the effective user's alone."""
    text = _read_key_text(path, "signing key", owned=owned)
    try:
        return Signer.parse(text)
    except NoteError as e:
        raise KeyFileError(f"signing key {path}: {e}") from None


def load_named_signer(path: str | os.PathLike[str]) -> Signer:
    """The signing key the operator named (`ELSPETH_SIGNING_KEY`, `landscape.signing_key`),
    refused when someone other than its owner could read or swap it (see
    `landscape.owner.mistrust_named_key`); KeyFileError naming the file and the problem."""
    why = mistrust_named_key(Path(path))
    # A file that is no signing key at all (a .pub named by mistake: mode 644) is better told as
    # that; only a regular file is read first (a FIFO would block).
    signer = load_signer(path) if why is None or os.path.isfile(path) else None
    if why or signer is None:
        raise KeyFileError(
            f"signing key {path}: {why}; allowed: a key file no one but its owner can write and no one outside "
            "its owner and group can read (mode 600 or 640), in a folder no one else can write"
        )
    return signer


def load_verifier(path: str | os.PathLike[str]) -> Verifier:
    """The public key in a `.pub` file; KeyFileError naming the file and the problem."""
    text = _read_key_text(path, "public key")
    try:
        return Verifier.parse(text)
    except NoteError as e:
        raise KeyFileError(f"public key {path}: {e}") from None


def default_key_name() -> str:
    """`<host>/elspeth`: says which machine's default key signed a checkpoint."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "localhost"
    return f"{host}/elspeth"


def default_signer(home: str | os.PathLike[str]) -> Signer:
    """The ELSPETH home's own key, `<home>/keys/default.key`, created on first use (the folder
    mode 700, the key 600) and the same for every later run in that home. `home` is the resolved
    home folder (`landscape.embedded.elspeth_home(...)`); not resolved here, because that module
    brings the database driver and `elspeth verify` loads keys from this one without it."""
    folder = Path(home) / "keys"
    key_path = folder / f"{DEFAULT_KEY}{KEY_SUFFIX}"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise KeyFileError(f"cannot create {folder}: {e.strerror}") from None
    keep_home_private(Path(home))  # made just now with the umask, or by the user with mkdir
    # Before writing a key into it or reading one from it: a keys/ folder someone else made or
    # can write may hold their key, and its default.pub is what the operator gives auditors.
    _check_key_folder(folder)
    if not key_path.exists():
        try:
            generate_key_files(DEFAULT_KEY, folder, key_name=default_key_name())
        except KeyFileError:
            # Another process made it first (it won the O_EXCL race), or a stale .pub is in the
            # way; what matters is whether a complete key is there now, which loading tells.
            if not key_path.exists():
                raise
    return load_signer(key_path, owned=True)


def existing_default_signer(home: str | os.PathLike[str]) -> Signer | None:
    """The home's own key when it has one (checked as `default_signer` does), else None."""
    folder = Path(home) / "keys"
    key_path = folder / f"{DEFAULT_KEY}{KEY_SUFFIX}"
    if not os.path.lexists(key_path):
        return None
    keep_home_private(Path(home))
    _check_key_folder(folder)
    return load_signer(key_path, owned=True)


def check_default_key(home: str | os.PathLike[str]) -> None:
    """What `default_signer` would refuse in this home (its keys/ folder, its key), asked without
    making anything: for the checks before a run. KeyFileError naming the problem.

    The home is first kept private as the run keeps it (`keep_home_private`: a home of this user
    its group can write, as mkdir under umask 002 leaves it, loses that write access): the run
    does so before it checks keys/, so checking without it refused a home the run accepts."""
    keep_home_private(Path(home))
    folder = Path(home) / "keys"
    if os.path.lexists(folder):
        _check_key_folder(folder)
    key_path = folder / f"{DEFAULT_KEY}{KEY_SUFFIX}"
    if os.path.lexists(key_path):
        load_signer(key_path, owned=True)


def _check_key_folder(folder: Path) -> None:
    why = mistrust_folder(folder)
    if why:
        raise KeyFileError(
            f"the key folder {folder}: {why}; allowed: a folder of yours that nobody else can write, in a folder "
            "nobody else can write (move it away if you did not make it: the key in it may not be yours)"
        )
