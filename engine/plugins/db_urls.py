"""The database sink's URL: checked at load, the SQLite file it names, the engine that opens it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.plugins.db_errors import Refused
from engine.plugins.protocol import PluginConfigError
from landscape.db import redact


def check_url(url: str) -> None:
    """Refuse at load a URL that SQLAlchemy cannot parse; whether it connects is known at open."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        parsed.get_dialect()  # (a known database: `sqlit://` was a failed run, not a settings error)
    except NoSuchModuleError:
        raise PluginConfigError(
            "url",
            f"{redact(url)!r} names a kind of database ELSPETH cannot write ({parsed.drivername}); allowed: "
            "sqlite:///file.db or postgresql://user@host/db",
        ) from None
    except (ArgumentError, ValueError):
        raise PluginConfigError(
            "url", f"{redact(url)!r} is not a database URL; allowed: sqlite:///file.db or postgresql://user@host/db"
        ) from None
    try:  # its driver: `mysql://…` passed, and the recorded run failed on "No module named 'MySQLdb'"
        parsed.get_dialect().import_dbapi()
    except ImportError as e:
        raise PluginConfigError(
            "url", f"{redact(url)!r} needs a database driver that is not installed ({e.name or e}); allowed: "
            "sqlite:///file.db or postgresql://user@host/db"
        ) from None  # fmt: skip
    if parsed.get_backend_name() == "sqlite" and (vfs := _sqlite_vfs(url)) is not None:
        # `vfs=memdb` is an in-memory database whatever its name (a review: every flush "durable",
        # no file on disk). Which other VFS keeps a file where is not ours to know: none is taken.
        raise PluginConfigError(
            "url", f"{redact(url)!r} names a SQLite VFS ({vfs}), which may keep the database in memory or "
            "elsewhere than the file named; allowed: a URL without vfs= (sqlite:///file.db, SQLite's own files)"
        )  # fmt: skip
    if parsed.get_backend_name() == "sqlite" and sqlite_file(url) is None:
        # An in-memory database: every flush "durable", every row gone when the run ends (a review).
        raise PluginConfigError(
            "url", f"{redact(url)!r} names no database file (an in-memory database keeps nothing once the run ends); "
            "allowed: sqlite:///file.db (three slashes before a relative path, four before an absolute one)"
        )  # fmt: skip


def sqlite_file(url: str) -> Path | None:
    """The file of a `sqlite:///file` URL (None for others, for an in-memory database, and for
    one kept by a VFS that is named)."""
    named = _sqlite_uri(url)
    if named is None:
        return None
    database, parameters = named
    for key, value in parameters:
        # `mode=memory` (`sqlite:///file:x?mode=memory&uri=true`) and any VFS (`vfs=memdb`).
        if key.lower() == "vfs" or (key.lower() == "mode" and value == "memory"):
            return None
    if not database or database == ":memory:":
        return None
    return Path(database)


def _sqlite_vfs(url: str) -> str | None:
    """The `vfs=` a SQLite URL names (`vfs=memdb`), or None."""
    named = _sqlite_uri(url)
    for key, value in named[1] if named is not None else ():
        if key.lower() == "vfs":
            return f"{key}={value}"
    return None


def _sqlite_uri(url: str) -> tuple[str | None, list[tuple[str, str]]] | None:
    """A `sqlite:` URL's database name (the path of a URI filename, `file:…`) and the parameters
    SQLite may read: those of the URL's query (SQLAlchemy hands them on with `uri=true`) and those
    inside the URI filename (a `?` written as %3F). None for other URLs."""
    if not url.lower().startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    database = parsed.database
    parameters = [
        (key, value) for key, values in parsed.query.items()
        for value in ((values,) if isinstance(values, str) else values)
    ]  # fmt: skip
    if database and database.startswith("file:"):  # a URI filename (`?uri=true`): its path part
        from urllib.parse import parse_qsl, unquote, urlsplit

        parts = urlsplit(database)
        parameters += parse_qsl(parts.query, keep_blank_values=True)
        database = unquote(parts.path)
    return database, parameters


def through_a_link(conn: Any, path: Path, where: str) -> None:
    """Refuse a SQLite file opened through a symbolic link (swapped in after the load-time
    checks, engine/checks.py, by whoever can write its folder): SQLite names the file it opened,
    resolved, and before anything is written here it must be the one at `path` itself."""
    from sqlalchemy import text

    opened = next((row[2] for row in conn.execute(text("PRAGMA database_list")) if row[1] == "main"), "")
    folder = os.path.realpath(path.parent)
    if opened and os.path.normpath(opened) != os.path.join(folder, path.name):
        raise Refused(f"database sink {where}: {path} is a symbolic link (to {opened}): not written through")


def engine_for(url: str) -> Any:
    """A SQLAlchemy engine. A plain `postgresql://` URL meant psycopg2 to SQLAlchemy before 2.1;
    ELSPETH ships psycopg 3, so use that when psycopg2 is not installed."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "postgresql":
        # Whatever the database's default: a sink's open waits on a stalled writer's flush (the
        # claim's row, `DatabaseSink._claim`) and must then see what it committed, to delete it;
        # in a snapshot taken before the wait it did not (a review).
        return create_engine(parsed, isolation_level="READ COMMITTED")
    return create_engine(parsed)
