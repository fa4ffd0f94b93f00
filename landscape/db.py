"""Where the audit store is, and connections to it. Driver errors become ours here, once."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

from landscape.embedded import embedded_server
from landscape.errors import (
    ConcurrentWriter,
    DatabaseUnavailable,
    LandscapeError,
    PermissionDenied,
    SchemaOutdated,
    SchemaTooNew,
    StoreError,
)

# A connection to the audit store, for the landscape's own modules (they never import the driver).
Connection = psycopg.Connection[Any]

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def resolve_url(explicit: str | None) -> str | None:
    """`--database` wins, then ELSPETH_DATABASE_URL; None means the embedded server."""
    url = explicit or os.environ.get("ELSPETH_DATABASE_URL") or None
    return None if url is None else normalise_url(url)


def is_postgresql_url(url: str) -> bool:
    """postgresql://, postgres://, or a SQLAlchemy form such as postgresql+psycopg2:// (the
    driver part is dropped: ELSPETH always talks to PostgreSQL through psycopg 3)."""
    scheme = url.partition("://")[0].lower()
    return scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+")


def normalise_url(url: str) -> str:
    """A libpq URL psycopg accepts, or DatabaseUnavailable naming what is wrong with it."""
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise DatabaseUnavailable(f"malformed database URL {redact(url)!r}: {e}") from e
    if not is_postgresql_url(url):
        raise DatabaseUnavailable(f"malformed database URL {redact(url)!r}: expected postgresql://user@host/dbname")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError as e:
        raise DatabaseUnavailable(f"malformed database URL {redact(url)!r}: {e}") from e
    return "postgresql" + url[len(parts.scheme) :]


_USERINFO_PASSWORD = re.compile(r"(//[^:/@]*:)[^/?#]*@")  # up to the last '@' before the host
# `?password=...` (and sslpassword=...) in a URL, or in a libpq keyword string, quoted or not.
_PASSWORD_PARAM = re.compile(r"((?:^|[?&\s])\w*password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)", re.IGNORECASE)


def redact(url: str) -> str:
    """A database URL or conninfo fit to print: every password replaced by ***."""
    return _PASSWORD_PARAM.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", url))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def translate(e: psycopg.Error, what: str, run_id: str | None = None) -> LandscapeError:
    """The one place where a driver error becomes one of the landscape's errors."""
    if isinstance(e, psycopg.errors.UniqueViolation) and run_id is not None:
        return ConcurrentWriter(f"run {run_id} is being written by another process (seq already taken)")
    if isinstance(e, psycopg.OperationalError):
        resume = f"; `elspeth resume {run_id}` continues it" if run_id is not None else ""
        return DatabaseUnavailable(f"lost the database while {what}{resume}: {_first_line(e)}")
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        return PermissionDenied(f"{what}: {_first_line(e)}")
    return StoreError(f"{what}: {_first_line(e)}")


@contextmanager
def driver_errors(what: str, *, conn: Connection | None = None, run_id: str | None = None) -> Iterator[None]:
    """Run a block against the database; a driver error leaves it as a LandscapeError (`from`
    the original, so nothing is lost). `conn`: rolled back first, if still usable."""
    try:
        yield
    except psycopg.Error as e:
        if conn is not None and not conn.closed and not isinstance(e, psycopg.OperationalError):
            try:
                conn.rollback()
            except psycopg.Error as again:
                e.add_note(f"and the rollback failed: {_first_line(again)}")
        raise translate(e, what, run_id) from e


@dataclass
class Database:
    conninfo: str
    location: str  # for people: where the audit trail is

    @property
    def sqlalchemy_url(self) -> str:
        return "postgresql+psycopg" + self.conninfo[len("postgresql") :]

    def connect(self, autocommit: bool = False) -> Connection:
        try:
            return psycopg.connect(self.conninfo, autocommit=autocommit, connect_timeout=10)
        except psycopg.Error as e:
            first = _first_line(e)
            raise DatabaseUnavailable(
                f"cannot connect to {redact(self.location)}: {first} — check the server is up and the URL "
                "(--database / ELSPETH_DATABASE_URL / landscape.url), or omit them for the embedded one"
            ) from e

    def describe(self) -> str:
        return redact(self.location)


@contextmanager
def open_database(
    url: str | None = None, *, upgrade: bool = False, home: str | os.PathLike[str] | None = None
) -> Iterator[Database]:
    """The configured database, or the embedded server (started now, stopped on exit).

    An empty database gets the schema on first use. Anything else (an older schema, or a database
    holding other tables) is changed only when asked (`upgrade=True`, i.e. `elspeth db upgrade`):
    changing a database is a decision, not a side effect of listing runs. Otherwise
    SchemaOutdated says what to run."""
    with ExitStack() as stack:
        resolved = resolve_url(url)
        if resolved is None:
            server = stack.enter_context(embedded_server(home))
            db = Database(server.uri("elspeth"), f"embedded PostgreSQL in {server.pgdata}")
        else:
            db = Database(resolved, resolved)
            db.connect().close()  # fail now, with one clear line, if it is unreachable
        if upgrade or (current_revision(db) is None and not _has_tables(db)):
            migrate(db)
        else:
            check_schema(db)
        yield db


def _has_tables(db: Database) -> bool:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema'))"
        ).fetchone()
    return bool(row and row[0])


def _alembic_config(db: Database) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["conninfo"] = db.conninfo
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(Database("postgresql://", ""))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(db: Database) -> str | None:
    with db.connect() as conn:
        exists = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


def check_schema(db: Database) -> None:
    head, current = head_revision(), current_revision(db)
    if current == head:
        return
    from alembic.script import ScriptDirectory

    known = {s.revision for s in ScriptDirectory.from_config(_alembic_config(db)).walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNew(f"the database schema is at revision {current}, written by a newer ELSPETH: upgrade ELSPETH")
    if current is None and _has_tables(db):
        raise SchemaOutdated(
            f"{redact(db.location)} holds other tables and no ELSPETH schema: point at an empty database, "
            "or run `elspeth db upgrade` to add ELSPETH's tables to this one"
        )
    raise SchemaOutdated(
        f"the database schema is at revision {current or 'none'}, this ELSPETH needs {head}: run `elspeth db upgrade`"
    )


def migrate(db: Database) -> str:
    """Upgrade the schema to head (a no-op when it is current). Returns the head revision."""
    head = head_revision()
    if current_revision(db) == head:
        return head
    check_not_newer(db)
    from alembic import command

    with db.connect() as conn:
        # Two processes upgrading at once would race on CREATE TABLE: serialise on a lock.
        conn.execute("SELECT pg_advisory_lock(7419001)")
        try:
            if current_revision(db) != head:
                try:
                    command.upgrade(_alembic_config(db), "head")
                except Exception as e:  # e.g. a table of the same name already there
                    lines = str(e).strip().splitlines()
                    raise DatabaseUnavailable(
                        f"cannot create the ELSPETH schema in {redact(db.location)}: {lines[0] if lines else e!r}"
                    ) from e
        finally:
            conn.execute("SELECT pg_advisory_unlock(7419001)")
    return head


def check_not_newer(db: Database) -> None:
    current = current_revision(db)
    if current is None:
        return
    from alembic.script import ScriptDirectory

    known = {s.revision for s in ScriptDirectory.from_config(_alembic_config(db)).walk_revisions()}
    if current not in known:
        raise SchemaTooNew(f"the database schema is at revision {current}, written by a newer ELSPETH: upgrade ELSPETH")
