"""What the database sink records of a failed write: whether it may be about some of the rows,
and why, without a value of the row; and `Refused`, its refusal before anything is changed.
"""

from __future__ import annotations

from engine.plugins.reasons import recorded
from landscape.urls import scrub


def write_failure(e: Exception, url: str) -> str:
    """Why a write failed, as it is recorded. A server's message about the rows may quote one of
    their values (`invalid input syntax for type date: "..."`), and the record outlives an
    erasure of that row (docs/erasure.md): only a connection's failure, which is about no row,
    keeps its message; any other keeps its class and SQLSTATE (`elspeth explain` shows the rows),
    and SQLite's, its error name or the message it makes of the table's definition alone, as a
    row's refusal does (`row_refusal`: a review found a flush failing as `IntegrityError` alone)."""
    import sqlite3

    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(e, OperationalError | InterfaceError):
        lines = str(e.orig).strip().splitlines()
        return f"{type(e).__name__}: {scrub(lines[0], url)}" if lines else type(e).__name__
    if isinstance(e, DBAPIError) and isinstance(e.orig, sqlite3.Error):
        return row_refusal(e, frozenset())
    if isinstance(e, DBAPIError):
        code = getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
        return f"{type(e).__name__}{f' (SQLSTATE {code})' if code else ''}"
    return recorded(e)


# The codes of errors that may be about the values of the row inserted: every integrity
# constraint (class 23), every data exception (22) but an exhausted sequence's (2200H, the
# table's), a value of another type than its column's (42804), and what a trigger raises
# (P0001). Whether they were is for `_refused_rows` to tell.
_RAISED_BY_TRIGGERS = frozenset({"P0001", "SQLITE_CONSTRAINT_TRIGGER"})
_TABLE_WIDE = frozenset({"2200H"})
# PostgreSQL's program_limit_exceeded, at an insert a value's: an array's bounds beyond an integer
# (`[1099511627776]` given to an int[] column), a row beyond a page, an index entry beyond its
# limit. One row's, refused alone; every row's for the one reason is the table's (`_refused_rows`).
_TOO_LARGE = "54000"
# SQLite's constraint errors whose messages SQLite writes from the table's definition alone
# (`UNIQUE constraint failed: t.n`). A trigger's RAISE message is the trigger's, and from SQLite
# 3.46 on an expression may build it from the row.
_SQLITE_OWN_MESSAGES = frozenset(
    f"SQLITE_CONSTRAINT_{kind}" for kind in ("UNIQUE", "NOTNULL", "CHECK", "FOREIGNKEY", "PRIMARYKEY", "DATATYPE")
)


def _code(e: BaseException) -> str:
    """The error's SQLSTATE (psycopg 3 and psycopg2 name it apart) or SQLite's error name; else its class."""
    orig = getattr(e, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or getattr(orig, "sqlite_errorname", None)
    return str(code) if code else type(orig if orig is not None else e).__name__


def about_rows(e: BaseException) -> bool:
    """Whether a failed insert may be about some of its rows, not the table or the connection
    (see `_RAISED_BY_TRIGGERS`); also a value SQLAlchemy could not bind, or a character the
    database's encoding cannot hold."""
    from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

    if isinstance(e, UnicodeEncodeError):
        return True
    if isinstance(e, DBAPIError):
        code = _code(e)
        if code in _TABLE_WIDE:
            return False
        return (
            isinstance(e, IntegrityError)
            or code[:2] in ("22", "23")
            or code in {"42804", _TOO_LARGE, *_RAISED_BY_TRIGGERS}
        )
    return isinstance(e, StatementError) and isinstance(e.orig, TypeError | ValueError)


def row_refusal(e: BaseException, names: frozenset[str]) -> str:
    """Why the table refused a row, as it is recorded: no value of the row (the record outlives
    its erasure). PostgreSQL's message may quote one (a trigger's, a type's), so only its class,
    SQLSTATE and the names of the constraint, column and table it gives, each only when it is
    one of the table's own (`names`); of SQLite's, the messages it makes of the table's
    definition alone (`_SQLITE_OWN_MESSAGES`), else its error name."""
    import sqlite3

    from sqlalchemy.exc import DBAPIError

    if isinstance(e, UnicodeEncodeError):
        return "a character the database's encoding cannot hold (UnicodeEncodeError)"
    if not isinstance(e, DBAPIError):
        orig = getattr(e, "orig", None)
        return f"a value its column's type does not take ({type(orig if orig is not None else e).__name__})"
    code = _code(e)
    if isinstance(e.orig, sqlite3.Error):
        return f"{type(e).__name__}: {str(e.orig).strip()[:300] if code in _SQLITE_OWN_MESSAGES else code}"
    diag = getattr(e.orig, "diag", None)
    named = [
        f"{what} '{name}'"
        for what in ("constraint", "column", "table")
        if (name := getattr(diag, f"{what}_name", None)) and name in names
    ]
    return f"{type(e).__name__} (SQLSTATE {code}){', ' if named else ''}{', '.join(named)}"


class Refused(Exception):
    """Refused before anything is changed (the transaction rolls back); the message is the line."""
