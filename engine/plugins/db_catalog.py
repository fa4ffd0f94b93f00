"""What the database sink reads of its database's catalog: an audit store there, its own
bookkeeping table (`elspeth_sink_tokens`), where a table's rows are found again, the table's
shape, and names as SQLite compares them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

TOKENS = "elspeth_sink_tokens"
# Which process writes a run's rows to a table now: its generation, drawn under the run's lock
# (higher for each later writer of the run), and its process and host. A resume claims the table
# as it opens it, and a writer whose claim is gone writes and deletes nothing there
# (`DatabaseSink._claim`).
WRITERS = "elspeth_sink_writers"
# Columns of `elspeth_sink_tokens` that an older ELSPETH did not make (added when missing): the
# sink's position after the flush that committed the token, where its row is (SQLite: its rowid;
# PostgreSQL: its ctid) and, on PostgreSQL, the low 32 bits of the flush's transaction id; on
# SQLite, a digest of the row as the table held it after the flush (`_row_digests`).
LATER_COLUMNS = (("sink_position", "int"), ("row_locator", "text"), ("row_xid", "int"), ("row_digest", "text"))
NO_LOCATOR = "the table gives no row id to find them by"
# A SQLite table's constraint clause, comments allowed between its words (not stripped first: a
# string literal may hold what looks like one). Words of it in a literal refuse a harmless table.
_GAP = r"(?:\s|/\*.*?\*/|--[^\n]*(?:\n|$))+"
REPLACES = re.compile(rf"\bon{_GAP}conflict{_GAP}replace\b", re.IGNORECASE | re.DOTALL)


# What makes a schema an ELSPETH audit store: its `store_meta` (since migration 0005), or, in a
# store from before it, `events` and `payloads` kept by Alembic (`alembic_version`). Tables named
# `events` and `payloads` alone are common enough in an application's database to be its own. A
# store from before 0005 is refused by every command until `elspeth db upgrade` anyway; this only
# keeps a sink from writing into one that somebody has not upgraded yet.
_STORE_MARKS = (("store_meta",), ("events", "payloads", "alembic_version"))


def audit_store_schema(conn: Any) -> str | None:
    """The schema of the sink's database that holds an ELSPETH audit store, or None. Every
    schema is asked, not only the sink's: a sink must not write into a store's database at all."""
    from sqlalchemy import inspect

    inspector = inspect(conn)
    for schema in inspector.get_schema_names():
        for marks in _STORE_MARKS:
            if all(inspector.has_table(name, schema=schema) for name in marks):
                return str(schema)
    return None


def add_later_columns(conn: Any, sqlite: bool) -> None:
    """Give an `elspeth_sink_tokens` made by an older ELSPETH the columns it lacks (NULL in its
    rows: they were written without them)."""
    from sqlalchemy import inspect

    have = {c["name"] for c in inspect(conn).get_columns(TOKENS)}
    for name, kind in LATER_COLUMNS:
        if name in have:
            continue
        sql_type = "BIGINT" if kind == "int" else "TEXT"
        # Two sinks opening at once may both find the column missing: PostgreSQL can be asked to
        # skip it then; SQLite cannot, and tells by the second ALTER failing.
        guard = "" if sqlite else "IF NOT EXISTS "
        try:
            conn.exec_driver_sql(f"ALTER TABLE {TOKENS} ADD COLUMN {guard}{name} {sql_type}")
        except Exception:
            if not sqlite or name not in {c["name"] for c in inspect(conn).get_columns(TOKENS)}:
                raise


def row_locator(conn: Any, t: Any, sqlite: bool) -> tuple[str | None, str]:
    """The column that says where each inserted row is (`INSERT ... RETURNING` it), so that a
    resume can delete the rows a crash left after the durable position; None when the table or
    the driver has none, with why: such rows can only be refused at a resume
    (`DatabaseSink._roll_back`). SQLite: `rowid` (or its other names, when a column takes it),
    not in a WITHOUT ROWID table or a view, and only from SQLite 3.35 on. PostgreSQL: `ctid`, in
    a table, not a view, and only with SELECT on it."""
    from sqlalchemy import text

    if not conn.dialect.insert_executemany_returning:
        return None, f"{NO_LOCATOR} (the driver gives no INSERT ... RETURNING, as SQLite before 3.35)"
    if sqlite:
        found = conn.execute(
            text("SELECT type, sql FROM sqlite_master WHERE name = :name COLLATE NOCASE"), {"name": t.name}
        ).first()
        if found is None or found[0] != "table":
            return None, f"{NO_LOCATOR} (a view)" if found is not None else NO_LOCATOR
        if _without_rowid(conn, t.name, found[1] or ""):
            return None, f"{NO_LOCATOR} (a WITHOUT ROWID table)"
        taken = {c.name.lower() for c in t.columns}
        name = next((name for name in ("rowid", "_rowid_", "oid") if name not in taken), None)
        return name, f"{NO_LOCATOR} (its columns take the names rowid, _rowid_ and oid)"
    quoted = conn.dialect.identifier_preparer.quote(t.name)
    kind, readable = conn.execute(
        text("SELECT relkind, has_table_privilege(oid, 'SELECT') FROM pg_class WHERE oid = to_regclass(:name)"),
        {"name": quoted},
    ).one_or_none() or (None, False)
    if kind not in ("r", "p"):
        return None, f"{NO_LOCATOR} (a view or a foreign table)"
    # RETURNING ctid reads the row, which takes SELECT: a loader role granted INSERT alone would
    # fail every flush. Its rows are written without ids; only a resume that must delete some
    # of them is refused.
    if not readable:
        return None, "the sink's role has no SELECT privilege on the table to find them by"
    return "ctid", NO_LOCATOR


def table_shape(conn: Any, name: str, sqlite: bool, columns: Iterable[str]) -> object:
    """What a table's rows are checked against, to tell whether it changed: which relation it is
    (a table made again is another; in SQLite, whether a conflict clause replaces rows) and the
    declared type of each of `columns`, those the rows were checked against (a column added or
    dropped that the sink does not write changes nothing it checked: a review)."""
    from sqlalchemy import text

    known = set(columns)
    if sqlite:
        made = conn.execute(
            text("SELECT type, sql FROM sqlite_master WHERE name = :name COLLATE NOCASE"), {"name": name}
        ).first()
        # (the plain name: given quoted, `"Orders"` named no table, and no column was compared)
        declared = conn.execute(text("SELECT name, type FROM pragma_table_xinfo(:name)"), {"name": name}).all()
        replaces = made is not None and isinstance(made[1], str) and bool(REPLACES.search(made[1]))
        return (made and made[0], replaces, sorted((c, t) for c, t in declared if c in known))
    found = conn.execute(
        text(
            "SELECT c.oid::bigint, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_class c "
            "JOIN pg_attribute a ON a.attrelid = c.oid "
            "WHERE c.oid = to_regclass(:name) AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        {"name": conn.dialect.identifier_preparer.quote(name)},
    ).all()
    return ({oid for oid, _, _ in found}, sorted((c, t) for _, c, t in found if c in known))


def _without_rowid(conn: Any, name: str, sql: str) -> bool:
    """Whether a SQLite table is WITHOUT ROWID: SQLite's own word from 3.37 on (`table_list`);
    before, its SQL read (a comment between the two words hides them: `rowid` is then asked of
    a table that has none, and every flush fails loudly, losing nothing)."""
    from sqlalchemy import exc, text

    try:
        listed = conn.execute(text("SELECT wr FROM pragma_table_list(:name) WHERE schema = 'main'"), {"name": name})
        row = listed.first()
    except exc.OperationalError:  # no such table-valued function: SQLite before 3.37
        return re.search(r"without\s+rowid", sql, re.IGNORECASE) is not None
    return bool(row and row[0])


def sqlite_folded(name: str) -> str:
    """A name as SQLite compares names of tables and columns: ASCII letters without case, others as they are."""
    return "".join(c.lower() if c.isascii() else c for c in name)
