"""Where the audit store is, and connections to it. Driver errors become ours here, once."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import Loader
from psycopg.conninfo import make_conninfo
from psycopg.types.datetime import TimestamptzLoader

from landscape import roles
from landscape.embedded import embedded_server, server_gone
from landscape.errors import (
    DISK_FULL,
    ConcurrentWriter,
    CorruptLog,
    DatabaseUnavailable,
    LandscapeError,
    PermissionDenied,
    SchemaOutdated,
    SchemaTooNew,
    StoreError,
    connection_lost,
    first_line,
)
from landscape.roles import Role
from landscape.urls import redact as redact_secrets
from landscape.urls import scrub

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
    normal = "postgresql" + url[len(parts.scheme) :]
    try:  # as the driver will read it: a '%' not starting an escape failed each connect, password shown
        psycopg.conninfo.conninfo_to_dict(normal)
    except (psycopg.Error, ValueError) as e:  # (ValueError: an escape that decodes to no UTF-8, `%C3t`)
        why = scrub(first_line(e), url) if isinstance(e, psycopg.Error) else "an escape decodes to no UTF-8 text"
        raise DatabaseUnavailable(
            f"malformed database URL {redact(url)!r}: {why} (a '%' in a URL starts an escape of two hex digits, of "
            "UTF-8 bytes: write a '%' itself as %25)"
        ) from None
    return normal


def redact(url: str) -> str:
    """A database URL or conninfo fit to print: every password replaced by ***."""
    return redact_secrets(url)


def translate(e: psycopg.Error, what: str, run_id: str | None = None) -> LandscapeError:
    """The one place where a driver error becomes one of the landscape's errors."""
    if isinstance(e, psycopg.errors.UniqueViolation) and run_id is not None and _is_events(e.diag.table_name):
        return ConcurrentWriter(f"run {run_id} is being written by another process (seq already taken)")
    if isinstance(e, psycopg.OperationalError) and connection_lost(e.sqlstate):
        # A connection lost during COMMIT leaves it unknown whether the commit was made (the
        # server may have made it durable and lost only the answer): the log says which.
        resume = (
            f"; `elspeth resume {run_id}` continues it from what the log holds (a commit in flight may have been made)"
            if run_id is not None
            else ""
        )
        if e.sqlstate == DISK_FULL:  # (the server is there, and said why: not "lost")
            return DatabaseUnavailable(
                f"the audit store's disk is full (the database server could not write) while {what}: free space where "
                f"its data lives{resume}: {first_line(e)}"
            )
        return DatabaseUnavailable(f"lost the database while {what}{resume}: {first_line(e)}")
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        return PermissionDenied(f"{what}: {first_line(e)}")
    return StoreError(f"{what}: {first_line(e)}")


def _is_events(table: str | None) -> bool:
    """The events table or one of its partitions (`events_p0`…): a seq taken there means another
    writer. A key taken in any other table (a projection's row that someone wrote ahead of the
    writer) is no such thing, and is reported as what it is."""
    return table is not None and (table == "events" or (table.startswith("events_p") and table[8:].isdigit()))


def read_any_time(conn: Connection) -> None:
    """Have `conn` read a timestamptz Python cannot hold ('infinity', a year past 9999: only an
    edited store has one) as the server's text, not fail the read: a check then names it."""
    conn.adapters.register_loader("timestamptz", _AnyTime)


class _AnyTime(Loader):
    """A timestamptz as a datetime, or as the server's text when no datetime can hold it."""

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        self._time = TimestamptzLoader(oid, context)

    def load(self, data: Buffer) -> datetime | str:
        try:
            return self._time.load(data)
        except psycopg.DataError:
            return bytes(data).decode("utf-8", "replace")


def read_as_written(cur: psycopg.Cursor[Any], table: str, types: tuple[str, ...]) -> None:
    """The columns of `cur`'s result are of the `types` ELSPETH made them (PostgreSQL's names),
    or the statement read a table changed under it: CorruptLog, naming the column. A superuser who
    altered a column's type (the events' body bytea to text, say) would have its values arrive as
    other Python types and end a verification in a TypeError deep inside it. Asked once per
    statement, of the server's description of its result, not per row."""
    for column, name in zip(cur.description or (), types, strict=False):
        expected = psycopg.postgres.types[name].oid
        if column.type_code != expected:
            found = cur.adapters.types.get(column.type_code)
            raise CorruptLog(
                f"the {table} table's column {column.name} is of type {found.name if found else column.type_code}, "
                f"not {name}: the audit store's schema was changed after ELSPETH made it (ALTER TABLE by a superuser?), "
                "and what it holds cannot be read as ELSPETH wrote it"
            )


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
                e.add_note(f"and the rollback failed: {first_line(again)}")
        raise translate(e, what, run_id) from e


@dataclass
class Database:
    """Where the audit store is, and which role `connect()` acts as unless told otherwise.

    A role other than OWNER is reached in one of two ways. On the embedded server the
    connection logs in as that role: its peer map lets the OS user running ELSPETH do so, and
    the session can never become anything more. Elsewhere it logs in as the URL's user and,
    when that user may (a member of the role, or a superuser), becomes the role first thing
    (SET ROLE for the whole session, committed, so a rollback does not undo it; a statement,
    not the startup option `-c role=…`, which PgBouncer refuses or, told to ignore it, drops).
    That keeps ELSPETH's own statements within the role's grants, but it is no wall against
    whoever holds the URL's password: `RESET ROLE` gives the user back. For that, log in as the
    role itself (`elspeth db roles --set-password`). A user who may not become the role, and the
    OWNER, act as the URL's user, or the default role its login is given (RESET ROLE, should a
    pooler hand on a session set to another), as before the roles existed."""

    conninfo: str
    location: str  # for people: where the audit trail is
    role: Role = Role.OWNER
    embedded: bool = False
    pgdata: Path | None = None  # the embedded server's data folder
    _may_become: dict[Role, bool] = field(default_factory=dict, repr=False, compare=False)

    @property
    def sqlalchemy_url(self) -> str:
        return "postgresql+psycopg" + self.conninfo[len("postgresql") :]

    def as_role(self, role: Role) -> Database:
        return replace(self, role=role)

    def connect(self, autocommit: bool = False, *, role: Role | None = None) -> Connection:
        """A new connection, acting as `role` (default: this Database's role)."""
        role = self.role if role is None else role
        conninfo = make_conninfo(self.conninfo, **self._login(role))
        becomes = self._sets_role(role)  # (asked first: it may connect, once per role)
        try:
            conn = psycopg.connect(conninfo, autocommit=autocommit, connect_timeout=10)
        except psycopg.Error as e:
            first = scrub(first_line(e), self.conninfo)
            raise DatabaseUnavailable(
                f"cannot connect to {redact(self.location)}: {first} — check the server is up and the URL "
                "(--database / ELSPETH_DATABASE_URL / landscape.url), or omit them for the embedded one"
            ) from e
        # No JIT: the store's queries are short and many, and the planner's estimates for the
        # partitioned tables are far above jit_above_cost, so a server built with LLVM (Debian's,
        # most managed ones) compiled each for seconds: measured on PostgreSQL 15, a run's start
        # asking for the open sink positions took 2.1 s, 2.0 of them compiling, and 1 ms without.
        # Set here, not by `options=-c jit=off`: poolers refuse startup options they do not track.
        # (Where the server has the setting: some that speak PostgreSQL's protocol do not.)
        try:
            self._begin(conn, role, becomes)
            if not autocommit:
                conn.commit()  # (a setting made in a transaction rolled back would be undone with it)
        except psycopg.Error as e:
            conn.close()
            raise DatabaseUnavailable(f"{redact(self.location)}: {scrub(first_line(e), self.conninfo)}") from e
        except BaseException:
            conn.close()
            raise
        return conn

    def _begin(self, conn: Connection, role: Role, becomes: bool) -> None:
        """A new session's settings: the role it acts as (`becomes` it, see the class), JIT off.
        Not becoming one, an external server's session is put back to its login's own role,
        should a pooler's last client have set another; its login's default (`ALTER ROLE … SET
        role`, which a managed server's owner may be given) is kept, as RESET ROLE would."""
        if becomes:
            conn.execute("SELECT set_config('role', %s, false)", (role.value,))
        elif not self.embedded:
            conn.execute("RESET ROLE")
        conn.execute("SELECT set_config('jit', 'off', false) WHERE current_setting('jit', true) IS NOT NULL")

    def describe(self) -> str:
        return redact(self.location)

    def gone(self) -> bool:
        """Whether the embedded server this process started is certainly no more (killed, stopped
        by hand): see `server_gone`. Always False for a server given by URL, which ELSPETH does
        not run and cannot judge from outside; a refused connection is no proof either way."""
        return self.pgdata is not None and server_gone(self.pgdata)

    def acts_as(self, role: Role) -> bool:
        """Whether connections for `role` really act as it (else as the URL's user)."""
        return role is not Role.OWNER and (self.embedded or self._may(role))

    def _may(self, role: Role) -> bool:
        if role not in self._may_become:
            with self.connect(role=Role.OWNER) as conn:
                self._may_become[role] = roles.may_become(conn, role.value)
        return self._may_become[role]

    def _login(self, role: Role) -> dict[str, str]:
        """The embedded server's connections log in as the role itself."""
        return {"user": role.value} if self.embedded and role is not Role.OWNER else {}

    def _sets_role(self, role: Role) -> bool:
        """Whether a connection for `role` becomes it once connected (see the class)."""
        return role is not Role.OWNER and not self.embedded and self._may(role)


@contextmanager
def open_database(
    url: str | None = None,
    *,
    upgrade: bool = False,
    home: str | os.PathLike[str] | None = None,
    role: Role = Role.WRITER,
) -> Iterator[Database]:
    """The configured database, or the embedded server (started now, stopped on exit), whose
    connections act as `role`.

    An empty database gets the schema on first use. Anything else (an older schema, or a database
    holding other tables) is changed only when asked (`upgrade=True`, i.e. `elspeth db upgrade`):
    changing a database is a decision, not a side effect of listing runs. Otherwise
    SchemaOutdated says what to run. The embedded server is ELSPETH's own: its roles and grants
    are brought up to date on the way in, so nobody has to set them up."""
    with ExitStack() as stack:
        resolved = resolve_url(url)
        if resolved is None:
            server = stack.enter_context(embedded_server(home))
            db = Database(
                server.uri("elspeth"), f"embedded PostgreSQL in {server.pgdata}", embedded=True, pgdata=server.pgdata
            )
        else:
            db = Database(resolved, resolved)
            db.connect().close()  # fail now, with one clear line, if it is unreachable
        # (A server that dies here, of a full disk say, is one line naming the store, not a traceback.)
        with driver_errors(f"preparing the audit store in {redact(db.location)}"):
            _prepare(db, upgrade=upgrade, role=role)
        yield db.as_role(role)


def _prepare(db: Database, *, upgrade: bool, role: Role) -> None:
    """The schema and the roles as `open_database` promises them."""
    if upgrade or (current_revision(db) is None and not _has_tables(db)):
        # A first use elsewhere goes on without roles when the URL's user may not make them.
        migrate(db, roles_required=upgrade or db.embedded)
        return
    check_schema(db)
    if db.embedded:
        with db.connect() as conn:
            current = roles.grants_current(conn)
        if not current:  # a data folder made before the roles existed
            migrate(db)
    elif db.acts_as(role):
        with db.connect() as conn:
            if not roles.grants_current(conn):
                raise SchemaOutdated(
                    f"the role {role.value} exists but lacks its grants in {redact(db.location)}: "
                    "run `elspeth db upgrade`"
                )


def _has_tables(db: Database) -> bool:
    with db.connect(role=Role.OWNER) as conn:
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


_REVISION_LINE = re.compile(r"^(revision|down_revision) = (?:\"([^\"]+)\"|None)$", re.MULTILINE)


def head_revision() -> str:
    """The newest revision of migrations/versions, read from the files' `revision` and
    `down_revision` lines: every command checks it, and loading alembic (and with it SQLAlchemy's
    engine) to read two lines per file cost a short run a noticeable part of its start. The
    one revision nobody revises is the head; anything else (no such revision, a branch) is left
    to alembic, which says what is wrong."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in MIGRATIONS.joinpath("versions").glob("[0-9]*.py"):
        found: dict[str, str] = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        if "revision" in found:
            revisions.add(found["revision"])
        if found.get("down_revision"):
            revised.add(found["down_revision"])
    heads = revisions - revised
    if len(heads) == 1:
        return heads.pop()
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(Database("postgresql://", ""))).get_current_head()
    assert head is not None
    return head


def current_revision(db: Database) -> str | None:
    """The store's schema revision; None without one. An `alembic_version` beside no ELSPETH
    table is another application's (its revision was read as a newer ELSPETH's, or as one to
    upgrade, which then failed half-way): SchemaOutdated, before anything is done to it."""
    with db.connect(role=Role.OWNER) as conn:
        found = conn.execute(
            "SELECT to_regclass('alembic_version') IS NOT NULL, to_regclass('events') IS NOT NULL"
        ).fetchone()
        if not found or not found[0]:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    if not found[1]:
        raise SchemaOutdated(
            f"{redact(db.location)} holds another application's schema (alembic_version "
            f"{row[0] if row else 'empty'}, and no ELSPETH table): point at a database of ELSPETH's own"
        )
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


def migrate(db: Database, *, roles_required: bool = True) -> str:
    """Upgrade the schema to head (a no-op when it is current), then create or update the
    ELSPETH roles and their grants (landscape/roles.py). Returns the head revision.

    Run as the owner of the tables. `roles_required=False` lets a first use go on, as the URL's
    user, when that user may not create roles; `elspeth db upgrade` always requires them."""
    head = head_revision()
    check_not_newer(db)
    from alembic import command

    with db.connect(role=Role.OWNER) as conn:
        # Two processes upgrading at once would race on CREATE TABLE and on grants of one table
        # ("tuple concurrently updated"): serialise on a lock. It is per database; roles, which
        # are per server, are made so that a concurrent creation elsewhere is harmless.
        _lock_schema(conn, db)
        try:
            if current_revision(db) != head:
                try:
                    command.upgrade(_alembic_config(db), "head")
                except Exception as e:  # e.g. a table of the same name already there
                    cause = getattr(e, "orig", None) or e  # (the driver's words, not SQLAlchemy's wrapping)
                    raise DatabaseUnavailable(
                        f"cannot create or upgrade the ELSPETH schema in {redact(db.location)}: {first_line(cause)}"
                    ) from e
            try:
                roles.ensure_roles(conn, login=db.embedded)
                roles.apply_grants(conn)
            except roles.RolesUnavailable:
                if roles_required:
                    raise
                conn.rollback()
        finally:
            _unlock_schema(conn)
    return head


def _unlock_schema(conn: Connection) -> None:
    """A session that was cut off (a server that died of a full disk) released its lock by ending,
    and its unlock fails: that is not an error of its own, to hide why the session ended. One whose
    statement failed (a full disk the server survived) is rolled back first, or the unlock would
    fail as 'current transaction is aborted' and hide why; the lock is the session's, and stays."""
    try:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            conn.rollback()
        conn.execute("SELECT pg_advisory_unlock(7419001)")
        conn.commit()
    except psycopg.OperationalError:
        if not conn.broken:
            raise


# How long `db upgrade` waits for another session's schema lock before it says whose it is.
SCHEMA_LOCK_WAIT = "60s"


def _lock_schema(conn: Connection, db: Database) -> None:
    """Take the schema lock (see `migrate`), waiting at most SCHEMA_LOCK_WAIT: another upgrade
    is done well within it, and a session that sits on the lock is named rather than waited on
    for ever."""
    try:
        with conn.transaction():
            # For this transaction only; the session lock it takes outlives it.
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (SCHEMA_LOCK_WAIT,))
            conn.execute("SELECT pg_advisory_lock(7419001)")
    except psycopg.errors.InsufficientPrivilege as e:  # (an analyst's or an auditor's role)
        conn.rollback()
        raise StoreError(
            f"{redact(db.location)}: this role may not take the schema lock ({e.diag.message_primary}): "
            "`elspeth db upgrade` is for the store's owner or a superuser; nothing was changed"
        ) from None
    except psycopg.errors.LockNotAvailable as e:
        holder = conn.execute(
            "SELECT l.pid, a.usename, a.application_name FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid = 0 AND l.objid = 7419001 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
        conn.rollback()
        who = "another session" if holder is None else f"session pid {holder[0]} (role {holder[1]}, '{holder[2]}')"
        raise StoreError(
            f"{who} holds the schema lock of {redact(db.location)} (another `elspeth db upgrade`, or a stuck "
            f"session); waited {SCHEMA_LOCK_WAIT}: let it finish or end it (SELECT pg_terminate_backend(pid)), "
            "then upgrade again"
        ) from e
    conn.commit()


def check_not_newer(db: Database) -> None:
    current = current_revision(db)
    if current is None:
        return
    from alembic.script import ScriptDirectory

    known = {s.revision for s in ScriptDirectory.from_config(_alembic_config(db)).walk_revisions()}
    if current not in known:
        raise SchemaTooNew(f"the database schema is at revision {current}, written by a newer ELSPETH: upgrade ELSPETH")
