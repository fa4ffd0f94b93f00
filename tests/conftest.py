"""One real PostgreSQL per test session (the embedded one, unless ELSPETH_TEST_DATABASE_URL is
set), and a fresh, migrated database per test module."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from hypothesis import settings

from engine.cli.dbstop import in_use
from landscape.db import Database, migrate
from landscape.embedded import embedded_server
from landscape.errors import LandscapeError

# CI draws the same examples every time (`.ci/run` sets HYPOTHESIS_PROFILE=ci): a gate that fails
# at random on an example no commit caused blocks what it should let through. Other runs draw new
# ones, and what they find is pinned with `@example`. No deadline in either: an example that took
# over 200 ms because the machine stalled (a slow CI host, the server's checkpoint) is no finding,
# and no test here may depend on the machine's speed.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("local", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "local"))

# The tests send SIGINT to the commands they start, as an operator's Ctrl-C. A suite started in
# the background (`.ci/run &`, a CI runner's shell) has SIGINT ignored, which its children would
# inherit, and a run started ignoring SIGINT keeps ignoring it (engine/stopping.py): handled here,
# the children start with it at its default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def elspeth_home() -> Iterator[str]:
    """Runs started in-process sign their checkpoints with the home's key and write witness
    files there: a home of the session's own, never the repository's `./.elspeth`."""
    with tempfile.TemporaryDirectory(prefix="elspeth-home-") as home:
        old = os.environ.get("ELSPETH_HOME")
        os.environ["ELSPETH_HOME"] = home
        try:
            yield home
        finally:
            if old is None:
                os.environ.pop("ELSPETH_HOME", None)
            else:
                os.environ["ELSPETH_HOME"] = old


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """URL of a maintenance database on the test server (`.../postgres`)."""
    external = os.environ.get("ELSPETH_TEST_DATABASE_URL")
    if external:
        yield external
        return
    _stop_servers_of_killed_sessions()
    with ExitStack() as stack:
        home = stack.enter_context(tempfile.TemporaryDirectory(prefix="elspeth-test-"))
        Path(home, _SESSION_MARK).touch()
        server = stack.enter_context(embedded_server(os.path.join(home, ".elspeth")))
        yield server.uri("postgres")


_SESSION_MARK = "elspeth-test-session"  # in the folder of each session's server, and only there


def _stop_servers_of_killed_sessions() -> None:
    """A test session that was killed (SIGKILL, a CI timeout) left its server running and its
    folder behind; stop and remove those that no process uses any more (`elspeth db stop`'s
    test). A folder younger than a minute is left alone: its session may not have started its
    server yet, and so not yet hold the lock that says it is in use."""
    for marker in Path(tempfile.gettempdir()).glob(f"elspeth-test-*/{_SESSION_MARK}"):
        home = marker.parent / ".elspeth"
        with contextlib.suppress(OSError, LandscapeError):
            # Only a folder a session of this user made: not a link, nothing in it a link, ours.
            paths = (marker.parent, marker, home, home / "users.lock")
            if any(p.is_symlink() or p.lstat().st_uid != os.getuid() for p in paths):
                continue
            if time.time() - marker.parent.stat().st_mtime < 60 or in_use(home):
                continue
            if (home / "pgdata" / "postmaster.pid").exists():
                with embedded_server(home, say=lambda _message: None):
                    pass  # the last user on the way out stops the server
            shutil.rmtree(home.parent)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
def db(server_url: str, request: pytest.FixtureRequest) -> Iterator[Database]:
    module = request.module.__name__.rsplit(".", 1)[-1]
    name = f"t_{module}_{secrets.token_hex(3)}"[:60]
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    # Migrating also makes the ELSPETH roles (once per server) and grants them this database's
    # tables; on the embedded server they log in through its peer map, as the engine's do.
    embedded = not os.environ.get("ELSPETH_TEST_DATABASE_URL")
    database = Database(_with_database(server_url, name), f"test database {name}", embedded=embedded)
    migrate(database)
    try:
        yield database
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True, scope="session")
def _fingerprint_key() -> Iterator[None]:
    """In-process tests fingerprint with a fixed key rather than making key files wherever they
    run; tests of the key file pass their own environment."""
    os.environ.setdefault("ELSPETH_FINGERPRINT_KEY", "test-fingerprint-key")
    yield


def give_to_nobody(path: Path) -> None:
    """Make `path` (itself, not what a link at it points to) another user's: `nobody`'s, uid
    65534. Only root can; the test is skipped otherwise."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    os.chown(path, 65534, 65534, follow_symlinks=False)


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """The URL of a database of its own on the test server, for database sinks (never the audit
    store), dropped after."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database a database sink writes to: a SQLite file, or a `scratch_database`."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'out.db'}"
        return
    with scratch_database(request.getfixturevalue("server_url"), "t_sink") as url:
        yield url
