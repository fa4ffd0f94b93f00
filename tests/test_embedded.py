"""The embedded server under pressure: concurrent first use, a server stuck shutting down, old
`trust` data folders, and folders in /tmp that someone else got to first."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from landscape import embedded
from landscape.embedded import _postmaster_status, _socket_dir, embedded_server
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
