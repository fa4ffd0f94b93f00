"""Load-time checks of where a pipeline writes, before anything is opened: a sink must not
destroy the input, another sink's output, or the audit trail.

- a file sink (or a SQLite database sink) must not write through a symbolic link (a file sink
  also refuses one when it opens its file), nor the settings file, the source's input
  file, a file that another sink writes, the signing key the run signs with (its `.key` and
  `.pub`), or anything inside the ELSPETH home (the audit store's folder) or the witness folder;
- two database sinks must not write one table;
- a `database` sink must not write into the audit store — neither the database the command
  will record into (`--database` / ELSPETH_DATABASE_URL, else a PostgreSQL `landscape.url`,
  else the embedded server of the home) nor, wherever it points, a table named like one of
  the store's tables or their partitions.

These are the early, friendly checks: a URL names a database only as far as can be told
without connecting (a DNS alias, say, is not seen through), so the database sink also asks the
database itself, when it opens, whether it holds an audit store (`audit_store_schema`, engine/plugins/db_catalog.py).

Paths are compared resolved: through symbolic links, a file not yet there through its
resolved folder, and existing files also by device and inode (hard links). Each path is taken
as the code that opens it takes it: a source's or sink's `path` as written (a `~` in it is a
folder named `~`, as the plugins open it), the key and witness folder as engine/signing.py
resolves them. The checks know the built-in plugins; a third-party sink is not checked.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine import signing
from engine.plugins.database_sink import DatabaseSink
from engine.plugins.db_urls import sqlite_file
from engine.plugins.sinks import _FileSink, planted_file
from engine.settings import LoadedSettings
from landscape.db import is_postgresql_url, redact
from landscape.embedded import elspeth_home, embedded_uri
from landscape.keys import KEY_SUFFIX, PUB_SUFFIX
from landscape.table_names import STORE_TABLE_NAMES, is_store_table_name
from landscape.urls import DatabaseName, database_name


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
    # Over the signing key, the run could no longer sign (nor anyone check) its checkpoints.
    for key_file, who in _key_files(loaded, env):
        files.append((_resolve(key_file), _inode(key_file), who, False))
    # Folders nothing may be written into: the store's, and that of the witness files (a run's
    # record of its checkpoints outside the store; overwriting one destroys that evidence).
    folders = [(home, "the ELSPETH home", "where the audit store lives")]
    witness = witness_folder(loaded, env)
    if witness is not None:
        folders.append((_resolve(witness[0]), f"the witness folder ({witness[1]})", "where the witness files live"))
    source_path = getattr(source, "path", None)
    if isinstance(source_path, Path):
        files.append((_resolve(source_path), _inode(source_path), "the source's input (source.options.path)", False))
    # Which database is the store only matters to a database sink (parsing its URL the way the
    # sink will loads SQLAlchemy, a third of a second a run without one need not pay).
    store = _store(loaded, env) if any(isinstance(s, DatabaseSink) for s in sinks.values()) else None
    tables: dict[tuple[object, str], tuple[str, str]] = {}
    for name, sink in sinks.items():
        key = f"sinks.{name}.options"
        path: Path | None = None
        sqlite = isinstance(sink, DatabaseSink)
        if isinstance(sink, _FileSink):
            path, key_path = sink.path, f"{key}.path"
        elif isinstance(sink, DatabaseSink):
            problems.extend(f"{where}: {p}" for p in _table_problems(name, sink, store, env, tables))
            path, key_path = sqlite_file(sink.url), f"{key}.url"
        if path is None:
            continue
        try:
            link = path.is_symlink()
        except OSError as e:  # (a name longer than the file system takes: ENAMETOOLONG, which is_symlink raises)
            problems.append(
                f"{where}: {key_path}: '{path}' cannot be looked at: {e.strerror or e}; allowed: a path this "
                "system can open (names of at most 255 bytes, 4,095 in all)"
            )
            continue
        if link:
            problems.append(
                f"{where}: {key_path}: '{path}' is a symbolic link (to {os.readlink(path)}); allowed: a file, or a "
                "path where there is none yet (name the link's target: a link can be swapped for another by "
                "whoever can write its folder, and the sink would write wherever that one points)"
            )
            continue  # (what it points to now is not what would be written)
        try:
            st = path.stat()
        except (OSError, ValueError):
            st = None
        why = planted_file(path, st) if st is not None and stat.S_ISREG(st.st_mode) else None
        if why is not None:
            problems.append(f"{where}: {key_path}: '{path}' {why}")
            continue
        resolved, inode = _resolve(path), _inode(path)
        note = f" (resolved: {resolved})" if str(resolved) != str(path) else ""
        for folder, what, why in folders:
            if resolved == folder or folder in resolved.parents:
                problems.append(
                    f"{where}: {key_path}: '{path}' is inside {what} {folder}, {why}{note}; allowed: a path outside it"
                )
                break
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
    tables: dict[tuple[object, str], tuple[str, str]],
) -> list[str]:
    key = f"sinks.{name}.options"
    problems: list[str] = []
    table = sink.table_name
    if is_store_table_name(table) or is_store_table_name(table.rsplit(".", 1)[-1]):
        problems.append(
            f"{key}.table: '{table}' is the name of a table of the audit store; allowed: any other name "
            f"(not {', '.join(sorted(STORE_TABLE_NAMES))}, nor one of these followed by _p and a number: "
            "their partitions)"
        )
    target = database_name(sink.url, env) if is_postgresql_url(sink.url) else None
    if target is not None and store is not None and target.same_as(store):
        problems.append(
            f"{key}.url: {redact(sink.url)} is the audit store's database; allowed: another database "
            "(a sink never writes into the audit store)"
        )
    database: object = target if target is not None else sqlite_file(sink.url) or sink.url
    if isinstance(database, Path):
        # An existing file by device and inode: a hard link is the same file, and two sinks
        # writing one table share its bookkeeping (a resume of one would delete the other's rows).
        database = _inode(database) or _resolve(database)
    # SQLite takes a table's name without ASCII case (`t` and `T` are one table); PostgreSQL, which
    # the sink gives every name quoted, takes it as written.
    sqlite = sink.url.lower().startswith("sqlite")
    same = "".join(c.lower() if c.isascii() else c for c in table) if sqlite else table
    # A server by `same_as`, as the audit store's is: its socket and `localhost` on one port were
    # two databases here, and two sinks wrote one table, one's resume deleting the other's rows
    # (their bookkeeping is the table's; a review).
    other = next(
        (found for (d, t), found in tables.items() if t == same and (d == database or (
            isinstance(d, DatabaseName) and isinstance(database, DatabaseName) and d.same_as(database)))),
        None,
    )  # fmt: skip
    if other is not None:
        spelled = "" if other[1] == table else f" (as '{other[1]}': SQLite table names ignore case)"
        problems.append(
            f"{key}.table: '{table}' in that database is also written by sink '{other[0]}'{spelled}; allowed: one "
            "sink per table"
        )
    tables.setdefault((database, same), (name, table))
    return problems


def signing_key(loaded: LoadedSettings, env: Mapping[str, str]) -> tuple[Path, str] | None:
    """The signing key file the run signs with, and what named it (`engine.signing` chooses);
    None: the home's own key (inside the home, which is checked as a whole)."""
    return signing.named_key(loaded.settings.landscape.signing_key, loaded.path.parent, env)


def witness_folder(loaded: LoadedSettings, env: Mapping[str, str]) -> tuple[Path, str] | None:
    """The witness folder ELSPETH_WITNESS_DIR or the settings name, and what named it
    (`engine.signing` chooses); None: the default, `<home>/witness`, inside the home."""
    return signing.named_witness_dir(loaded.settings.landscape.witness_dir, loaded.path.parent, env)


def _key_files(loaded: LoadedSettings, env: Mapping[str, str]) -> list[tuple[Path, str]]:
    """The signing key and the `.pub` that `elspeth keys generate` wrote beside it."""
    named = signing_key(loaded, env)
    if named is None:
        return []
    key, setting = named
    files = [(key, f"the signing key ({setting})")]
    if key.name.endswith(KEY_SUFFIX):
        public = key.with_name(key.name[: -len(KEY_SUFFIX)] + PUB_SUFFIX)
        files.append((public, f"the signing key's public key ({setting})"))
    return files


def _store(loaded: LoadedSettings, env: Mapping[str, str]) -> DatabaseName | None:
    """The database this command records into, as `database_from_ctx` chooses it."""
    url = env.get("ELSPETH_DATABASE_URL") or loaded.settings.landscape.url
    if not url or not is_postgresql_url(url):  # none, or the prior system's SQLite: the embedded one
        url = embedded_uri(env.get("ELSPETH_HOME") or ".elspeth")
    return database_name(url, env)


def _resolve(path: Path) -> Path:
    # Symbolic links followed as far as the path exists; the rest is taken as written. No `~`
    # expansion: a sink's path is opened as written, and the check must mean the same file.
    try:
        return Path(os.path.realpath(path))
    except ValueError:  # a NUL in the path (refused with the settings; never a traceback here)
        return Path(os.path.abspath(path))


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except (OSError, ValueError):  # ValueError: a NUL in the path, which no file has
        return None
    return info.st_dev, info.st_ino
