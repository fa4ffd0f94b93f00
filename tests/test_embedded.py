"""The embedded server under pressure: concurrent first use, a server stuck shutting down, old
`trust` data folders, and folders in /tmp that someone else got to first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from landscape import embedded
from landscape.db import Database, open_database
from landscape.embedded import _postmaster_status, _socket_dir, embedded_server, server_gone
from landscape.errors import DatabaseUnavailable
from tests.engine_harness import write_csv

pytestmark = pytest.mark.skipif(bool(os.environ.get("ELSPETH_TEST_DATABASE_URL")), reason="about the embedded server")

PIPELINE = """
source:
  plugin: csv
  on_success: out
  options: {path: in.csv, schema: {mode: fixed, fields: ['id: int']}, on_validation_failure: discard}
sinks:
  out: {plugin: csv, options: {path: out/OUT.csv}}
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}


def test_two_runs_started_together_in_a_fresh_folder_both_succeed(tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", ["id"], [[1], [2]])
    (tmp_path / "out").mkdir()
    procs = []
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(PIPELINE.replace("OUT", name))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "engine.cli.main", "run", "-s", f"{name}.yaml"],
                cwd=tmp_path,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert (tmp_path / "out" / "a.csv").exists() and (tmp_path / "out" / "b.csv").exists()


def _wait_for(predicate: object, what: str) -> None:
    # Waiting on another process's state (not asserting on time): generous, and it fails loudly.
    deadline = time.monotonic() + 60
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.05)


def _server_account() -> tuple[int | None, int | None]:
    return embedded._system_user() if os.geteuid() == 0 else (None, None)


def test_a_server_stuck_shutting_down_is_stopped_and_started_again(tmp_path: Path) -> None:
    home = tmp_path / ".elspeth"
    with embedded_server(home) as server:
        # A smart shutdown waits for every client to leave: with one connected, the server stays
        # "stopping" and refuses new connections, as one stuck after a panic on a full disk.
        client = psycopg.connect(server.uri("postgres"))
        uid, gid = _server_account()
        stop = embedded._run(
            embedded._bin_dir(), "pg_ctl", ["-D", str(server.pgdata), "-m", "smart", "-W", "stop"], uid, gid
        )
        assert stop.returncode == 0, stop.stderr
        _wait_for(lambda: _postmaster_status(server.pgdata) == "stopping", "the server to begin shutting down")
        said: list[str] = []
        with embedded_server(home, say=said.append) as again, psycopg.connect(again.uri("elspeth")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert len(said) == 1 and "stuck shutting down" in said[0] and "immediate" in said[0]
        client.close()


def test_a_server_up_but_taking_no_connections_is_stopped_at_once_in_immediate_mode(tmp_path: Path) -> None:
    """A server recovering from a killed backend takes no connections while its postmaster.pid
    still says "ready"; asked for a fast stop then, PostgreSQL 18 waited out pg_ctl's 30 s before
    the immediate one, and every run that lost its backend took 30 s more to exit (a crash
    campaign). A standby that is not hot takes no connections either, and stays so: with its
    postmaster.pid saying "ready" as a recovering server's does, it stands in for one here."""
    home = tmp_path / ".elspeth"
    uid, gid = _server_account()
    with embedded_server(home) as server:
        assert embedded._stop_modes(server) == ("fast", "immediate")  # (taking connections: a clean stop)
        pg_ctl = ["-D", str(server.pgdata), "-w", "-t", "60"]
        stop = embedded._run(embedded._bin_dir(), "pg_ctl", [*pg_ctl, "-m", "fast", "stop"], uid, gid)
        assert stop.returncode == 0, stop.stderr
        (server.pgdata / "standby.signal").touch()
        opts = f"-h '' -k {server.socket_dir} -c hot_standby=off"
        log = home / "postgresql.log"
        start = embedded._run(embedded._bin_dir(), "pg_ctl", [*pg_ctl, "-l", str(log), "-o", opts, "start"], uid, gid)
        assert start.returncode == 0, start.stderr
        assert embedded._stop_modes(server) == ("fast", "immediate")  # (its file says it is not ready: left as ever)
        pid_file = server.pgdata / "postmaster.pid"
        lines = pid_file.read_text().splitlines(keepends=True)
        pid_file.write_text("".join([*lines[:7], "ready   \n", *lines[8:]]))
        assert embedded._stop_modes(server) == ("immediate",)
        before = log.read_text()
    after = log.read_text()[len(before) :]
    assert "received immediate shutdown request" in after and "fast shutdown" not in after
    (server.pgdata / "standby.signal").unlink()
    with embedded_server(home) as again, psycopg.connect(again.uri("elspeth")) as conn:  # (and it starts again)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_home_whose_path_holds_a_space_or_a_quote_starts_and_shell_syntax_in_it_is_refused() -> None:
    """pg_ctl starts the server through /bin/sh: the socket folder went unquoted (a home with a
    space could not start its server), and `$(...)` in the home's path ran (a hostile review)."""
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="e s'"))  # short: the socket folder stays <home>/run
    try:
        home = top / "my home"
        assert _socket_dir(home) == home / "run"
        with embedded_server(home) as server, psycopg.connect(server.uri("elspeth")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        planted = top / "PWNED"
        for spelled in (f"h$(touch '{planted}')", f"h`touch '{planted}'`", 'h"x', "h\\x"):
            with (
                pytest.raises(DatabaseUnavailable, match=r"pg_ctl hands it to a shell"),
                embedded_server(top / spelled),
            ):
                pass
            assert not (top / spelled).exists()
        assert not planted.exists()
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_server_that_does_not_start_is_reported_with_its_own_log_lines(tmp_path: Path) -> None:
    home = tmp_path / ".elspeth"
    with embedded_server(home) as server:
        pgdata = server.pgdata
    (pgdata / "postgresql.auto.conf").write_text("shared_buffers = 'banana'\n")
    with pytest.raises(DatabaseUnavailable) as err, embedded_server(home):
        pass
    message = str(err.value)
    assert "did not start" in message and 'invalid value for parameter "shared_buffers"' in message
    assert str(home / "postgresql.log") in message


def test_a_data_folder_made_with_trust_is_closed_on_its_next_start(tmp_path: Path) -> None:
    # Deep enough that the socket folder moves to /tmp/elspeth-<digest>.
    home = tmp_path / ("d" * 60) / ".elspeth"
    with embedded_server(home) as server:
        pgdata = server.pgdata
        assert str(server.socket_dir).startswith("/tmp/elspeth-")
    (pgdata / "pg_hba.conf").write_text("local all all trust\nhost all all 0.0.0.0/0 trust\n")
    (pgdata / "pg_ident.conf").write_text("")
    with embedded_server(home) as server, psycopg.connect(server.uri("postgres")) as conn:
        rules = conn.execute("SELECT type, auth_method FROM pg_hba_file_rules").fetchall()
        st = os.lstat(server.socket_dir)
    assert rules == [("local", "peer")]
    uid, _gid = _server_account()
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == (os.geteuid() if uid is None else uid)
    server.socket_dir.rmdir()


@pytest.mark.parametrize("planted", ["symlink", "foreign folder"])
def test_a_socket_folder_planted_in_tmp_is_refused_and_its_target_untouched(tmp_path: Path, planted: str) -> None:
    home = tmp_path / ("d" * 80) / ".elspeth"
    sockets = _socket_dir(home)
    assert str(sockets).startswith("/tmp/elspeth-")
    target = tmp_path / "somebody-elses"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    try:
        if planted == "symlink":
            os.symlink(target, sockets)
        elif os.geteuid() != 0:
            pytest.skip("needs root to plant a folder owned by another user")
        else:
            sockets.mkdir(mode=0o777)
            os.chown(sockets, 65534, 65534)  # nobody's
        before = os.stat(target)
        with pytest.raises(DatabaseUnavailable) as err, embedded_server(home):
            pass
        assert f"refusing to use {sockets}" in str(err.value)
        after = os.stat(target)
        assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
        assert not (target / ".s.PGSQL.5432").exists()
    finally:
        if sockets.is_symlink():
            sockets.unlink()
        elif sockets.exists():
            sockets.rmdir()


def test_an_ordinary_users_home_its_group_can_write_is_made_theirs_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Made with mkdir under umask 002 (each user a group of their own): keys/ and witness/ in it
    # would be refused for the folder holding them, after initdb ran. The home is ELSPETH's, so
    # its group's and others' write bits go, as root's do. Only the start's first steps are run:
    # this test may run as root, and an ordinary user's server cannot.
    class Stop(Exception):
        pass

    def stop(*_: object) -> Path:
        raise Stop

    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o775)
    monkeypatch.setattr(embedded, "_as_root", lambda: False)
    monkeypatch.setattr(embedded, "_runnable_bin_dir", stop)
    with pytest.raises(Stop), embedded_server(home):
        pass
    assert home.stat().st_mode & 0o777 == 0o755


def test_an_ordinary_user_refuses_a_home_of_another_user_even_one_open_to_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A home of another user's, mode 0777: initdb ran and the server started in it, and its owner
    # could then rename what was made there (a hostile review). Refused before anything is made.
    home = tmp_path / "theirs"
    home.mkdir()
    home.chmod(0o777)
    os.chown(home, 65534, 65534)
    monkeypatch.setattr(embedded, "_as_root", lambda: False)
    monkeypatch.setattr(embedded.os, "geteuid", lambda: 4242)
    refused = r"refusing the ELSPETH home .*theirs: it belongs to"
    with pytest.raises(DatabaseUnavailable, match=refused), embedded_server(home):
        pass
    assert list(home.iterdir()) == []


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="as an ordinary user the server runs as you: no other account"
)


@needs_root
def test_as_root_a_database_superuser_cannot_touch_the_home_outside_pgdata(tmp_path: Path) -> None:
    # A database superuser runs programs as the server's account (COPY ... TO PROGRAM): that
    # account must not be able to swap root's keys/ or witness/, nor plant a link at a lock.
    from landscape.keys import default_signer

    home = tmp_path / ".elspeth"
    signer = default_signer(home)
    (home / "witness").mkdir(mode=0o700)
    with embedded_server(home) as server, psycopg.connect(server.uri("postgres"), autocommit=True) as conn:
        uid, _gid = _server_account()
        info = os.stat(home)
        assert info.st_uid == 0 and not info.st_mode & 0o066 and info.st_mode & 0o001  # passable, not listable
        assert [os.stat(home / name).st_uid for name in ("pgdata", "run", "postgresql.log")] == [uid] * 3
        conn.execute(f"COPY (SELECT 1) TO PROGRAM 'touch {server.pgdata}/reached'")  # the programs do run
        assert (server.pgdata / "reached").exists()
        for program in (
            f"mv {home}/keys {home}/keys.real",
            f"mv {home}/witness {home}/witness.real",
            f"rm -f {home}/start.lock",
            f"ln -s /tmp {home}/users.lock.new",
            f"mkdir {home}/planted",
        ):
            with pytest.raises(psycopg.errors.ExternalRoutineException):
                conn.execute(f"COPY (SELECT 1) TO PROGRAM '{program}'")
    assert sorted(p.name for p in home.iterdir()) == [
        "keys", "pgdata", "postgresql.log", "run", "start.lock", "users.lock", "witness"
    ]  # fmt: skip
    assert default_signer(home).verifier == signer.verifier


@needs_root
@pytest.mark.parametrize(
    "how",
    ["the home a link", "the home another user's link in a sticky folder", "a folder above it another user's",
     "a folder above it 0777", "root's link through another user's link", "'..' after another user's link"],
)  # fmt: skip
def test_as_root_a_home_another_user_could_swap_for_a_link_is_refused_untouched(tmp_path: Path, how: str) -> None:
    """Root followed a user's link at the home (in a folder of theirs) and gave the target's run/
    to the server's account, and ran initdb there (a hostile review)."""
    victim = tmp_path / "victim"
    (victim / "run").mkdir(parents=True)
    (victim / "run" / "important").write_text("data")
    folder = tmp_path / "project"
    folder.mkdir()
    if how == "the home a link":  # (made by another user, in a folder of theirs)
        (folder / ".elspeth").symlink_to(victim)
        os.chown(folder, 65534, 65534)
    elif how == "the home another user's link in a sticky folder":  # (which its owner may repoint)
        folder.chmod(0o1777)
        (folder / ".elspeth").symlink_to(victim)
        os.lchown(folder / ".elspeth", 65534, 65534)
    elif how == "a folder above it another user's":
        os.chown(folder, 65534, 65534)
    elif how == "a folder above it 0777":
        folder.chmod(0o777)
    else:  # a user's link in a sticky folder, reached through a link of root's, or left by '..'
        folder.chmod(0o1777)
        (victim / "sub").mkdir()
        (folder / "theirs").symlink_to(victim / "sub")
        os.lchown(folder / "theirs", 65534, 65534)
        (tmp_path / "roots").symlink_to(folder / "theirs")
    home = {
        "root's link through another user's link": tmp_path / "roots" / ".elspeth",
        "'..' after another user's link": folder / "theirs" / ".." / ".elspeth",
    }.get(how, folder / ".elspeth" if "link" in how else folder / "sub" / ".elspeth")
    refused = r"refusing the ELSPETH home .*(the folder .*project|symbolic link of)"
    with pytest.raises(DatabaseUnavailable, match=refused), embedded_server(home):
        pass
    # Nor is the fingerprint key written there first (`run` and `validate` make it as they read
    # the settings, before the store opens: a new user's review found it written through the link).
    from landscape.fingerprint import FingerprintKeyError, fingerprint_key

    with pytest.raises(FingerprintKeyError, match=refused):
        fingerprint_key(home, {})
    # Nor the signing key and witness files, with the fingerprint key given and the store elsewhere.
    from engine import signing

    with pytest.raises(DatabaseUnavailable, match=refused):
        signing.signer(home)
    with pytest.raises(DatabaseUnavailable, match=refused):
        signing.witness_dir(home)
    assert sorted(p.name for p in victim.iterdir()) in (["run"], ["run", "sub"])
    assert not any((victim / "sub").iterdir()) if (victim / "sub").exists() else True
    assert os.stat(victim / "run").st_uid == 0 and (victim / "run" / "important").read_text() == "data"
    assert not (folder / "sub").exists()


@needs_root
def test_as_root_a_home_of_another_ordinary_user_is_refused_untouched(tmp_path: Path) -> None:
    # Root would write fingerprint.key, run initdb and start the server in it, and its owner could
    # then rename pgdata/, run/ or the key from under root.
    home = tmp_path / "alices"
    home.mkdir(mode=0o755)
    os.chown(home, 4242, 4242)
    with pytest.raises(DatabaseUnavailable) as e, embedded_server(home):
        pass
    assert str(e.value).startswith(f"refusing the ELSPETH home {home}: it belongs to uid 4242, and as root ")
    assert "'elspeth'" in str(e.value) and "\n" not in str(e.value)
    assert list(home.iterdir()) == [] and os.stat(home).st_uid == 4242


@needs_root
def test_a_home_an_earlier_elspeth_gave_to_the_server_account_is_taken_back(tmp_path: Path) -> None:
    home = tmp_path / ".elspeth"
    with embedded_server(home):
        pass
    uid, gid = _server_account()
    assert uid is not None and gid is not None
    os.chown(home, uid, gid)  # what an earlier ELSPETH did
    # ... after which the server's account could put a link where root opens a lock file
    target = tmp_path / "made-by-root"
    (home / "start.lock").unlink()
    os.symlink(target, home / "start.lock")
    os.lchown(home / "start.lock", uid, gid)
    said: list[str] = []
    with embedded_server(home, say=said.append):
        pass
    assert os.stat(home).st_uid == 0 and not os.stat(home).st_mode & 0o022
    assert not target.exists() and not (home / "start.lock").is_symlink()
    assert len(said) == 1 and "it is root's again" in said[0] and "keys/default.pub" in said[0]
    with embedded_server(home, say=said.append):
        pass
    assert len(said) == 1  # said once: the home is root's now


def test_a_link_at_a_lock_file_is_refused_not_followed(tmp_path: Path) -> None:
    home = tmp_path / ".elspeth"
    home.mkdir()
    target = tmp_path / "somewhere"
    os.symlink(target, home / "users.lock")
    refused = r"refusing the lock file .*users\.lock: it is a symbolic link"
    with pytest.raises(DatabaseUnavailable, match=refused), embedded_server(home):
        pass
    assert not target.exists()


def _dead_pid() -> int:
    return 4194305  # above the largest pid_max Linux allows: no process has it


def _half_made(pgdata: Path, pid: int) -> None:
    """A data folder as an earlier ELSPETH's initdb, killed half-way, left it: PG_VERSION, some
    catalog files, and the postmaster.pid of its single-user backend (a negative pid)."""
    (pgdata / "base" / "1").mkdir(parents=True)
    (pgdata / "base" / "1" / "1259").write_bytes(b"\0" * 8192)
    (pgdata / "global").mkdir()
    (pgdata / "PG_VERSION").write_text("18\n")
    (pgdata / "postmaster.pid").write_text(f"-{pid}\n{pgdata}\n1700000000\n0\n\n\n\n")


def test_initdb_works_beside_pgdata_which_appears_only_once_it_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kill during initdb (which cannot be timed in a test) then leaves no half-made pgdata.
    home = tmp_path / ".elspeth"
    real = embedded._run
    seen: list[tuple[str, bool]] = []

    def watching(bin_dir: Path, exe: str, args: list[str], uid: int | None, gid: int | None) -> object:
        if exe == "initdb":
            seen.append((args[args.index("-D") + 1], (home / "pgdata").exists()))
        return real(bin_dir, exe, args, uid, gid)

    monkeypatch.setattr(embedded, "_run", watching)
    with embedded_server(home):
        pass
    [(data_dir, pgdata_existed)] = seen
    assert data_dir != str(home / "pgdata") and Path(data_dir).parent == home and not pgdata_existed
    assert (home / "pgdata" / "PG_VERSION").exists() and not Path(data_dir).exists()


def test_a_folder_left_by_a_first_start_killed_during_initdb_is_removed(tmp_path: Path) -> None:
    home = tmp_path / ".elspeth"
    leftover = home / "pgdata.new-12345"
    leftover.mkdir(parents=True)
    (leftover / "PG_VERSION").write_text("18\n")
    (leftover / "postmaster.pid").write_text(f"-{_dead_pid()}\n")
    with embedded_server(home) as server, psycopg.connect(server.uri("elspeth")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not leftover.exists()
    assert not list(home.glob("pgdata.new-*"))  # made beside pgdata, renamed into place


def test_a_pgdata_half_made_by_an_earlier_initdb_is_made_again(tmp_path: Path) -> None:
    home = tmp_path / ".elspeth"
    _half_made(home / "pgdata", _dead_pid())
    said: list[str] = []
    with embedded_server(home, say=said.append) as server, psycopg.connect(server.uri("elspeth")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert len(said) == 1 and "half-made" in said[0]


def test_a_half_made_looking_pgdata_holding_a_database_is_never_removed(tmp_path: Path) -> None:
    pgdata = tmp_path / ".elspeth" / "pgdata"
    _half_made(pgdata, _dead_pid())
    (pgdata / "base" / "16384").mkdir()  # a database made after initdb: it may hold events
    (pgdata / "base" / "16384" / "16390").write_bytes(b"\0" * 8192)
    with pytest.raises(DatabaseUnavailable), embedded_server(pgdata.parent, say=lambda _message: None):
        pass
    assert (pgdata / "base" / "16384" / "16390").exists()


def test_a_pgdata_with_a_live_single_user_server_is_refused_not_removed(tmp_path: Path) -> None:
    pgdata = tmp_path / ".elspeth" / "pgdata"
    _half_made(pgdata, os.getpid())  # alive
    refused = r"a single-user PostgreSQL \(pid \d+\) is using .*run again"
    with pytest.raises(DatabaseUnavailable, match=refused), embedded_server(pgdata.parent):
        pass
    assert (pgdata / "PG_VERSION").exists()


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="a process's folder is read from /proc")
def test_a_stale_postmaster_pid_naming_another_process_is_removed_and_that_process_left_alone(tmp_path: Path) -> None:
    """A server killed with its machine leaves postmaster.pid; after a reboot its number may be
    another process's (another home's server, say). `pg_ctl status` asks only whether the number
    lives, and the way out would have `pg_ctl stop` signal it. The file is seen to be stale (the
    process does not work in this data folder), removed, and the server started."""
    home = tmp_path / ".elspeth"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], cwd=tmp_path)
    with embedded_server(home) as server:
        pgdata = server.pgdata
        real = (pgdata / "postmaster.pid").read_text()
        pid = int(real.splitlines()[0])
        # While a server answers on the socket the file names, a number that is another process's
        # here is the server's in another PID namespace (a container sharing the home): not stale.
        (pgdata / "postmaster.pid").write_text("\n".join([str(other.pid), *real.splitlines()[1:]]) + "\n")
        try:
            assert embedded._stale_pid(pgdata) is None
        finally:
            (pgdata / "postmaster.pid").write_text(real)
    # The server is stopped; its file, as a killed server leaves it, names a live process instead.
    try:
        lines = [str(other.pid), *[line for line in _pid_file_of(pid, pgdata)[1:]]]
        (pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")
        assert embedded._stale_pid(pgdata) == other.pid
        said: list[str] = []
        with embedded_server(home, say=said.append) as again, psycopg.connect(again.uri("elspeth")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert embedded._stale_pid(pgdata) is None  # the file is the new server's
        assert len(said) == 1 and f"named process {other.pid}, which is not this home's server" in said[0]
        assert other.poll() is None  # never signalled
    finally:
        other.kill()
        other.wait()


def _pid_file_of(pid: int, pgdata: Path) -> list[str]:
    """A postmaster.pid as the server writes it (its number, folder, start time, port, socket
    folder, listen address, shared memory key, status), for a server no longer running."""
    return [str(pid), str(pgdata), "1700000000", "5432", "/nowhere", "", "0 0", "ready"]


def test_a_stalled_server_is_not_taken_for_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`db serve` used to ping its server and end at the first failure, stopping the server under
    every SQL session: a postmaster stalled past the connect timeout (or one with every session
    taken) was taken for dead. Whether it is gone is judged by its process, with no connection."""
    monkeypatch.delenv("ELSPETH_DATABASE_URL", raising=False)
    with open_database(home=tmp_path / ".elspeth") as db:
        assert db.pgdata is not None
        postmaster = int((db.pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGSTOP)
        try:
            assert not db.gone()
        finally:
            os.kill(postmaster, signal.SIGCONT)


def test_a_server_stopped_by_hand_or_killed_is_gone_and_a_half_written_pid_file_is_no_proof(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    assert server_gone(pgdata)  # no postmaster.pid: stopped by hand (pg_ctl stop removes it)
    (pgdata / "postmaster.pid").write_text("\n".join(_pid_file_of(_dead_pid(), pgdata)) + "\n")
    assert server_gone(pgdata)  # killed: the number is no process's
    if Path("/proc/self/cwd").exists():  # killed, the number given again: not a process of this folder
        (pgdata / "postmaster.pid").write_text("\n".join(_pid_file_of(os.getpid(), pgdata)) + "\n")
        assert server_gone(pgdata)
    (pgdata / "postmaster.pid").write_text("")  # a server starting, its file not written yet
    assert not server_gone(pgdata)


def test_an_external_server_is_never_judged_gone(tmp_path: Path) -> None:
    assert not Database("postgresql://nobody@/nowhere?host=/nonexistent", "an external server").gone()


def test_the_embedded_servers_log_keeps_no_row_values(server_url: str) -> None:
    """A database sink's refused row was written to the server's log ("Failing row contains
    (…)", its CONTEXT and statement), in the home, where `purge` cannot reach it."""
    if os.environ.get("ELSPETH_TEST_DATABASE_URL"):
        pytest.skip("the log of an external server is its administrator's")
    from tests.conftest import scratch_database

    marker = f"Customer-{os.urandom(4).hex()}"
    with scratch_database(server_url, "t_log") as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE deals (name text CHECK (name <> name), day date)")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO deals VALUES (%s)", (marker,))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(f"INSERT INTO deals VALUES ('{marker}')")  # the value in the statement's text
        with pytest.raises(psycopg.errors.InvalidDatetimeFormat):
            conn.execute("INSERT INTO deals (day) VALUES (%s::text::date)", (marker,))  # in the message itself
        data = conn.execute("SHOW data_directory").fetchone()
    assert data is not None
    log = (Path(data[0]).parent / "postgresql.log").read_text(errors="replace")
    assert "database system is ready" in log  # the server's own life is logged
    assert marker not in log


def test_an_initdb_that_fails_is_reported_by_its_cause_not_its_last_line() -> None:
    """On a full disk initdb's last line is "removing contents of data directory": the cause,
    its FATAL line, was dropped (a careless operator's review, on a 64 KiB tmpfs)."""
    from landscape.embedded import _initdb_why

    full = (
        'The files belonging to this database system will be owned by user "postgres".\n'
        "creating directory /h/pgdata.new-1 ... ok\n"
        '2026-12-02 12:00:00.000 UTC [7] FATAL:  could not write to file "pg_wal/xlogtemp.7": No space left on device\n'
        "child process exited with exit code 1\n"
        'initdb: removing contents of data directory "/h/pgdata.new-1"\n'
    )
    assert _initdb_why(full).endswith('FATAL:  could not write to file "pg_wal/xlogtemp.7": No space left on device')
    assert _initdb_why('initdb: error: invalid locale name "x"\n') == 'initdb: error: invalid locale name "x"'
    assert _initdb_why("something odd\nlast words\n") == "last words"
    assert _initdb_why("") == "initdb failed"


def test_what_the_embedded_server_says_shows_terminal_controls_as_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    """Its notes quote the home's paths and the server's log: text to show, not to obey."""
    from landscape.embedded import _say_stderr

    _say_stderr("removed /tmp/h\x1b[2J/pgdata/postmaster.pid; its log ends: \x9b31m")
    err = capsys.readouterr().err
    assert err == "elspeth: removed /tmp/h\\u001b[2J/pgdata/postmaster.pid; its log ends: \\u009b31m\n"


def _until_it_says_it_waits(proc: subprocess.Popen[bytes]) -> bytes:
    """What `proc` wrote on standard error up to the end of its line saying it waits for a lock."""
    import select

    assert proc.stderr is not None
    said = b""
    while b"elspeth: waiting" not in said or not said.endswith(b"\n"):
        ready, _, _ = select.select([proc.stderr], [], [], 60)  # (a bound on failure, not a timing)
        assert ready, f"it never said that it waits: {said!r}"
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"it ended without saying that it waits: {said!r}"
        said += chunk
    return said


def test_a_command_paused_holding_the_start_lock_is_named_and_a_signal_ends_the_wait(tmp_path: Path) -> None:
    """A hostile review: a command stopped (Ctrl-Z) while it started or stopped the server held
    every other command of the home still, without a word, for ever; one SIGTERM did not end
    them (the exit path waited on the same lock again). Here the test holds the lock."""
    import fcntl

    write_csv(tmp_path / "in.csv", ["id"], [[1]])
    (tmp_path / "out").mkdir()
    (tmp_path / "s.yaml").write_text(PIPELINE.replace("OUT", "a"))
    home = tmp_path / ".elspeth"
    home.mkdir(mode=0o700)
    held = embedded.open_lock(home / "start.lock")
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli.main", "run", "-s", "s.yaml"], cwd=tmp_path, env=_env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
        )  # fmt: skip
        try:
            said = _until_it_says_it_waits(proc)
            expected = f"\nelspeth: waiting for process {os.getpid()}, which holds {home / 'start.lock'} (starting"
            assert expected in said.decode(), said  # (the line whole: "elspeth: elspeth: waiting" was said)
            proc.send_signal(signal.SIGTERM)
            _out, rest = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        held.close()
    err = (said + rest).decode()
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip().splitlines()[-1] == "elspeth: interrupted", err


def test_a_signal_while_the_exit_waits_for_the_start_lock_says_the_server_may_be_left_running(
    tmp_path: Path,
) -> None:
    """The last user of the embedded server stops it on its way out, under the home's start lock.
    Stopped by a signal while it waits for that lock, it left the server running without a word.
    Here the test holds the lock from the run's end (a fault point stops it before its summary)."""
    import fcntl

    write_csv(tmp_path / "in.csv", ["id"], [[1]])
    (tmp_path / "out").mkdir()
    (tmp_path / "s.yaml").write_text(PIPELINE.replace("OUT", "a"))
    home = tmp_path / ".elspeth"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli.main", "run", "-s", "s.yaml"], cwd=tmp_path,
        env={**_env(), "ELSPETH_FAULT": "summary:1:stop"},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, bufsize=0,
    )  # fmt: skip
    held = None
    try:
        _, status = os.waitpid(proc.pid, os.WUNTRACED)  # its run ended; the server still up
        assert os.WIFSTOPPED(status), status
        held = embedded.open_lock(home / "start.lock")
        fcntl.flock(held, fcntl.LOCK_EX)
        os.kill(proc.pid, signal.SIGCONT)
        said = _until_it_says_it_waits(proc)
        proc.send_signal(signal.SIGTERM)
        _out, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if held is not None:
            held.close()
        subprocess.run([sys.executable, "-m", "engine.cli.main", "db", "stop"], cwd=tmp_path, env=_env(),
                       capture_output=True, timeout=120)  # fmt: skip
    err = (said + rest).decode()
    assert f"stopped while waiting for {home / 'start.lock'}: the embedded server was not stopped" in err, err
    assert "`elspeth db stop` stops it" in err, err


def test_the_start_lock_is_given_up_on_naming_its_holder(tmp_path: Path) -> None:
    import fcntl

    held = embedded.open_lock(tmp_path / "start.lock")
    fcntl.flock(held, fcntl.LOCK_EX)
    now = [0.0]
    said: list[str] = []

    def pause(seconds: float) -> None:
        now[0] += seconds

    waiting = embedded.open_lock(tmp_path / "start.lock")
    try:
        holder = embedded.take_start_lock(waiting, tmp_path / "start.lock", said.append, wait_s=10,
                                          clock=lambda: now[0], pause=pause)  # fmt: skip
        assert holder == f"process {os.getpid()}" and now[0] >= 10
        assert len(said) == 1 and said[0].startswith(f"waiting for process {os.getpid()}, which holds"), said
        held.close()  # let go: taken at once
        assert embedded.take_start_lock(waiting, tmp_path / "start.lock", said.append, clock=lambda: now[0],
                                        pause=pause) is None  # fmt: skip
    finally:
        held.close()
        waiting.close()
