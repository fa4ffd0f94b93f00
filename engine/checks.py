"""Load-time checks of where a pipeline writes, before anything is opened: a sink must not
destroy the input, another sink's output, or the audit trail.

- a file sink (or a SQLite database sink) must not write the source's input file, a file that
  another sink writes, or anything inside the ELSPETH home (the audit store's folder);
- two database sinks must not write one table;
- a `database` sink must not write into the audit store — neither the database the command
  will record into (`--database` / ELSPETH_DATABASE_URL, else a PostgreSQL `landscape.url`,
  else the embedded server of the home) nor, wherever it points, a table named like one of
  the store's tables.

Paths are compared resolved: through symbolic links, a file not yet there through its
resolved folder, and existing files also by device and inode (hard links). The checks know the
built-in plugins; a third-party sink is not checked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.plugins.database_sink import DatabaseSink
from engine.plugins.sinks import _FileSink
from engine.settings import LoadedSettings
from landscape.db import is_postgresql_url, redact
from landscape.embedded import elspeth_home, embedded_uri
from landscape.table_names import STORE_TABLE_NAMES
from landscape.urls import DatabaseName, database_name

# The store's tables, from its schema, and alembic's own bookkeeping table.
STORE_TABLES = STORE_TABLE_NAMES


def output_problems(
    loaded: LoadedSettings, source: Any, sinks: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> list[str]:
    """Every problem with where the sinks write, one line each (with the file and key path)."""
    env = os.environ if environ is None else environ
    where = loaded.path
    problems: list[str] = []
    home = _resolve(elspeth_home(env.get("ELSPETH_HOME") or ".elspeth"))
    # resolved path, inode, who writes or reads it, and whether it is a SQLite sink's database
    files: list[tuple[Path, tuple[int, int] | None, str, bool]] = []
    # A sink writing over the settings file would destroy the pipeline's definition.
    files.append((_resolve(where), _inode(where), "the settings file itself", False))
    source_path = getattr(source, "path", None)
    if isinstance(source_path, Path):
        files.append((_resolve(source_path), _inode(source_path), "the source's input (source.options.path)", False))
    # Which database is the store only matters to a database sink (parsing its URL the way the
    # sink will loads SQLAlchemy, a third of a second a run without one need not pay).
    store = _store(loaded, env) if any(isinstance(s, DatabaseSink) for s in sinks.values()) else None
    tables: dict[tuple[object, str], str] = {}
    for name, sink in sinks.items():
        key = f"sinks.{name}.options"
        path: Path | None = None
        sqlite = isinstance(sink, DatabaseSink)
        if isinstance(sink, _FileSink):
            path, key_path = sink.path, f"{key}.path"
        elif isinstance(sink, DatabaseSink):
            problems.extend(f"{where}: {p}" for p in _table_problems(name, sink, store, env, tables))
            path, key_path = _sqlite_file(sink.url), f"{key}.url"
        if path is None:
            continue
        resolved, inode = _resolve(path), _inode(path)
        note = f" (resolved: {resolved})" if str(resolved) != str(path) else ""
        if resolved == home or home in resolved.parents:
            problems.append(
                f"{where}: {key_path}: '{path}' is inside the ELSPETH home {home}, where the audit store "
                f"lives{note}; allowed: a path outside it"
            )
        for other, other_inode, who, other_sqlite in files:
            if sqlite and other_sqlite:
                continue  # two tables of one SQLite file are fine; one table twice is checked above
            if other == resolved or (inode is not None and inode == other_inode):
                problems.append(
                    f"{where}: {key_path}: '{path}' is also {who}{note}; allowed: a file of its own "
                    "(writing it would destroy the other's data)"
                )
                break
        files.append((resolved, inode, f"the output of sink '{name}' ({key_path})", sqlite))
    return problems


def _table_problems(
    name: str,
    sink: DatabaseSink,
    store: DatabaseName | None,
    env: Mapping[str, str],
    tables: dict[tuple[object, str], str],
) -> list[str]:
    key = f"sinks.{name}.options"
    problems: list[str] = []
    table = sink.table_name
    if table.casefold() in STORE_TABLES or table.rsplit(".", 1)[-1].casefold() in STORE_TABLES:
        problems.append(
            f"{key}.table: '{table}' is the name of a table of the audit store; allowed: any other name "
            f"(not {', '.join(sorted(STORE_TABLES))})"
        )
    target = database_name(sink.url, env) if is_postgresql_url(sink.url) else None
    if target is not None and store is not None and target.same_as(store):
        problems.append(
            f"{key}.url: {redact(sink.url)} is the audit store's database; allowed: another database "
            "(a sink never writes into the audit store)"
        )
    database: object = target if target is not None else _sqlite_file(sink.url) or sink.url
    if isinstance(database, Path):
        database = _resolve(database)
    other = tables.get((database, table))
    if other is not None:
        problems.append(
            f"{key}.table: '{table}' in that database is also written by sink '{other}'; allowed: one sink per table"
        )
    tables.setdefault((database, table), name)
    return problems


def _store(loaded: LoadedSettings, env: Mapping[str, str]) -> DatabaseName | None:
    """The database this command records into, as `database_from_ctx` chooses it."""
    url = env.get("ELSPETH_DATABASE_URL") or loaded.settings.landscape.url
    if not url or not is_postgresql_url(url):  # none, or the prior system's SQLite: the embedded one
        url = embedded_uri(env.get("ELSPETH_HOME") or ".elspeth")
    return database_name(url, env)


def _sqlite_file(url: str) -> Path | None:
    """The file of a `sqlite:///file` URL (None for others and for an in-memory database)."""
    if not url.lower().startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(url).database
    except (ArgumentError, ValueError):
        return None
    if database and database.startswith("file:"):  # a URI filename (`?uri=true`): its path part
        from urllib.parse import parse_qs, unquote, urlsplit

        parts = urlsplit(database)
        if "memory" in parse_qs(parts.query).get("mode", []):
            return None
        database = unquote(parts.path)
    if not database or database == ":memory:":
        return None
    return Path(database)


def _resolve(path: Path) -> Path:
    # Symbolic links followed as far as the path exists; the rest is taken as written.
    return Path(os.path.realpath(path.expanduser()))


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino
