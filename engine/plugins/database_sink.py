"""The `database` sink: rows into a table of the user's own database (SQLAlchemy: SQLite or
PostgreSQL). `flush` commits and returns the number of rows this run committed.

Nothing is lost without a record: the table's columns are fixed by the schema, an existing
table or the first row, and a row with a field that has no column, or a value its column
cannot hold, is refused at `write` (RowError, routed by `on_write_failure`) with the field
named — never inserted without it. So is a value an existing column would store as another
without an error (`_exactly_held`): a float a 4-byte `real` or an 8-byte float rounds, a number a
`numeric(p, s)` rounds, a string a `char(n)` pads or a `varchar(n)` cuts. Columns of other types
(dates, times, uuids, ...) take what the server makes of the value, unchecked.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from decimal import Decimal, localcontext
from typing import Any, ClassVar

from engine.plugins.options import Options
from engine.plugins.protocol import PluginConfigError, PluginError, Row, RowError
from engine.plugins.reasons import described, field_named, recorded
from engine.plugins.schema import parse_schema
from landscape.db import redact
from landscape.urls import scrub

_NODE = "sink"
_TOKENS = "elspeth_sink_tokens"
_IN_CHUNK = 500  # token ids per IN (...) query: well under every backend's parameter limit
_SCHEMA_KINDS = {"int": "int", "float": "float", "bool": "bool", "str": "text", "any": "text"}


def _cell(value: Any) -> Any:
    """A value for a text column: structures become JSON text, scalars stay."""
    if isinstance(value, dict | list):
        import json

        return json.dumps(value, ensure_ascii=False)
    return value


def _check_url(url: str) -> None:
    """Refuse at load a URL that SQLAlchemy cannot parse; whether it connects is known at open."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except (ArgumentError, ValueError):
        raise PluginConfigError(
            "url", f"{redact(url)!r} is not a database URL; allowed: sqlite:///file.db or postgresql://user@host/db"
        ) from None


class DatabaseSink:
    """Rows go to `table`; in the same transaction each token id goes to `elspeth_sink_tokens` in
    the target database, so a resumed run skips rows it committed already (never writes twice).

    `if_exists: replace` drops the table when a run starts; a table that holds rows (of other
    runs, or written outside ELSPETH) is dropped only with `replace_rows_of_other_runs: true`."""

    kind: ClassVar[str] = "sink"

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "url", "table", "if_exists", "replace_rows_of_other_runs")
        self.url = o.str_("url", required=True)
        _check_url(self.url)
        self.table_name = o.str_("table", required=True)
        self.if_exists = o.str_("if_exists", "append")
        if self.if_exists not in ("append", "replace"):
            raise PluginConfigError("if_exists", f"{self.if_exists!r} is not allowed; allowed: append, replace")
        self.replace_others = o.bool_("replace_rows_of_other_runs", False)
        if self.replace_others and self.if_exists != "replace":
            raise PluginConfigError("replace_rows_of_other_runs", "only with if_exists: replace")
        if self.table_name == _TOKENS:
            raise PluginConfigError("table", f"{_TOKENS!r} is the sink's own bookkeeping table")
        self.schema = parse_schema(o.raw("schema"))
        self._shown = redact(self.url)
        self._buffer: list[tuple[str, Row]] = []
        self._engine: Any = None
        self._table: Any = None
        self._tokens: Any = None
        self._columns: dict[str, tuple[str, int, int]] | None = None  # name -> `_column_kind`
        self._first: Row | None = None  # the row that fixed the columns of a table not made yet
        self._sqlite = self.url.lower().startswith("sqlite")
        self._committed = 0
        self.run_id = ""

    def location(self) -> str:
        return f"{self._shown}#{self.table_name}"

    def _fail(self, what: str, e: Exception) -> PluginError:
        lines = str(e).strip().splitlines()
        first = scrub(lines[0], self.url) if lines else type(e).__name__
        return PluginError(_NODE, f"database sink {self.location()}: {what}: {first}")

    def open(self, run_id: str, position: int | None) -> None:
        from sqlalchemy import Column, MetaData, Table, Text, func, inspect, select, table

        self.release()
        self.run_id = run_id
        self._buffer = []
        self._table = None
        self._columns = None
        self._first = None
        what = "cannot connect"
        refused: str | None = None
        try:
            self._engine = _engine(self.url)
            with self._engine.begin() as conn:
                # Before any table is made or dropped. The load-time check compares URLs, which
                # a DNS alias, a libpq service or a host list can spell otherwise; the database
                # itself cannot be mistaken about what it holds.
                what = "cannot tell whether it holds an ELSPETH audit store"
                store = _audit_store_schema(conn)
                if store is not None:
                    raise _AuditStore(
                        f"database sink {self.location()}: that database holds an ELSPETH audit store "
                        f"(schema '{store}'); allowed: a database of its own (a sink never writes into the "
                        "audit store)"
                    )
                what = "cannot prepare its tables"
                meta = MetaData()
                self._tokens = tokens = Table(
                    _TOKENS, meta,
                    Column("run_id", Text, primary_key=True),
                    Column("sink_table", Text, primary_key=True),
                    Column("token_id", Text, primary_key=True),
                )  # fmt: skip
                meta.create_all(conn)
                mine = (tokens.c.run_id == run_id) & (tokens.c.sink_table == self.table_name)
                exists = inspect(conn).has_table(self.table_name)
                if position is None and self.if_exists == "replace" and exists:
                    # A fresh run replaces the table; a resume keeps what the run wrote so far.
                    refused = self._others_rows(conn)
                    if refused is None:
                        Table(self.table_name, MetaData()).drop(conn)
                        conn.execute(tokens.delete().where(tokens.c.sink_table == self.table_name))
                        exists = False
                self._committed = conn.execute(select(func.count()).select_from(tokens).where(mine)).scalar_one()
                in_table = 0
                if position and exists:
                    in_table = conn.execute(select(func.count()).select_from(table(self.table_name))).scalar_one()
                if exists:
                    self._use_table(Table(self.table_name, MetaData(), autoload_with=conn))
                elif refused is None and self.schema.field_names is not None:
                    self._create_table(conn)
        except _AuditStore as e:
            self.release()
            raise PluginError(_NODE, str(e)) from None
        except Exception as e:
            self.release()
            raise self._fail(what, e) from e
        if refused is not None:
            self.release()
            raise PluginError(_NODE, refused)
        if position and min(self._committed, in_table) < position:
            # As for files: rows the log says are durable are gone (the table dropped or emptied,
            # or their bookkeeping deleted), so this is not what the run wrote; carrying on would
            # leave a hole nobody would see. Rows of other runs in the same table are not told
            # apart: a partial delete among them can go unnoticed.
            self.release()
            raise PluginError(
                _NODE,
                f"cannot continue {self.location()}: it holds {min(self._committed, in_table)} of the {position} "
                "rows the run had made durable, so rows were deleted since; restore them, or start a new run",
            )

    def _others_rows(self, conn: Any) -> str | None:
        """Why replacing the table now would destroy rows that are not this run's, or None."""
        from sqlalchemy import func, select, table

        if self.replace_others:
            return None
        rows = conn.execute(select(func.count()).select_from(table(self.table_name))).scalar_one()
        if not rows:
            return None
        t = self._tokens
        runs = list(conn.execute(
            select(t.c.run_id).where(t.c.sink_table == self.table_name).distinct().order_by(t.c.run_id).limit(4)
        ).scalars())  # fmt: skip
        whose = (
            f"of run(s) {', '.join(runs[:3])}{', ...' if len(runs) > 3 else ''}" if runs else "written outside ELSPETH"
        )
        return (
            f"database sink {self.location()}: if_exists replace would drop table '{self.table_name}', which holds "
            f"{rows} row(s) {whose}; allowed: replace_rows_of_other_runs: true in the sink's options to drop them, "
            "if_exists: append, or another table"
        )

    def _use_table(self, t: Any) -> None:
        self._table = t
        self._columns = {c.name: _column_kind(c.type, self._sqlite) for c in t.columns}

    def _create_table(self, conn: Any) -> None:
        from sqlalchemy import BigInteger, Boolean, Column, Float, MetaData, Table, Text

        types = {"int": BigInteger, "float": Float, "bool": Boolean, "text": Text}
        if self.schema.field_names is not None:
            columns: list[Any] = [Column(f.name, types[_SCHEMA_KINDS[f.type]]) for f in self.schema.fields]
        else:
            assert self._first is not None
            columns = [Column(k, types[_value_kind(v)]) for k, v in self._first.items()]
        meta = MetaData()
        self._use_table(Table(self.table_name, meta, *columns))
        meta.create_all(conn)

    def write(self, token_id: str, row: Row) -> None:
        if self._columns is None:  # no table yet and no schema: this row fixes the columns
            clash = self._unmakeable(row)
            if clash is not None:  # found when the table is made, it would fail the whole flush
                raise RowError(f"{clash}: no table can be made from this row ({self._shown})")
            self._first = row
            self._columns = {k: (_value_kind(v), 64, 0) for k, v in row.items()}
        problems = [p for k, v in row.items() if (p := self._unfit(row, k, v)) is not None]
        if problems:
            raise RowError(f"{'; '.join(problems)} (table {self.table_name} in {self._shown})")
        self._buffer.append((token_id, row))

    def _unmakeable(self, row: Row) -> str | None:
        """Why the columns this row would fix cannot be made, or None: SQLite compares column
        names without case (`id` and `ID` are one), PostgreSQL cuts them at 63 bytes."""
        named = self.schema.field_names or []
        seen: set[str] = set()
        for name in row:
            if not self._sqlite and len(name.encode()) > 63:
                return f"{field_named(row, name, named)} has a name longer than PostgreSQL's 63 bytes"
            folded = "".join(c.lower() if c.isascii() else c for c in name) if self._sqlite else name
            if folded in seen:
                return f"{field_named(row, name, named)} has the name of another field but for case"
            seen.add(folded)
        return None

    def _unfit(self, row: Row, name: str, value: Any) -> str | None:
        """Why the table cannot hold this field's value as given, or None. The reason is recorded
        and outlives an erasure of the row (docs/erasure.md): it names a field only when the
        sink's schema does (else gives its position) and describes a value, never shows it."""
        assert self._columns is not None
        named = self.schema.field_names or []
        field = field_named(row, name, named)
        if name not in self._columns:
            if set(self._columns) <= set(named):  # the columns are the schema's: settings text
                return f"{field} has no column (columns: {', '.join(self._columns) or 'none'})"
            return f"{field} has no column (the table has {len(self._columns)})"
        if value is None:
            return None
        kind, bits, scale = self._columns[name]
        found = described(value)
        exact = _exactly_held(kind, bits, scale, value)
        if exact is not None:
            return f"{field} holds {found}, which its column {exact}"
        if kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                return f"{field} holds {found}; its column takes integers"
            if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
                return f"{field} holds an integer outside the column's {bits}-bit range"
        elif kind in ("float", "real", "decimal", "number"):
            if not isinstance(value, int | float) or isinstance(value, bool):
                return f"{field} holds {found}; its column takes numbers"
            if self._sqlite and isinstance(value, float) and math.isnan(value):
                return f"{field} holds NaN, which SQLite would store as NULL"
        elif kind == "bool" and not isinstance(value, bool):
            return f"{field} holds {found}; its column takes true or false"
        elif kind == "text" and not self._sqlite and isinstance(value, str) and "\x00" in value:
            return f"{field} holds a NUL character, which PostgreSQL text cannot store"
        return None

    def flush(self) -> int:
        rows, self._buffer = self._buffer, []
        if not rows:
            return self._committed
        if self._engine is None:
            raise PluginError(_NODE, f"database sink {self.location()}: written before open (or after release)")
        from sqlalchemy import select

        t = self._tokens
        try:
            with self._engine.begin() as conn:
                if self._table is None:
                    self._create_table(conn)
                table = self._table
                done: set[str] = set()
                ids = list(dict.fromkeys(token for token, _ in rows))
                for i in range(0, len(ids), _IN_CHUNK):
                    query = select(t.c.token_id).where(
                        t.c.run_id == self.run_id,
                        t.c.sink_table == self.table_name,
                        t.c.token_id.in_(ids[i : i + _IN_CHUNK]),
                    )
                    done.update(conn.execute(query).scalars())
                fresh: dict[str, Row] = {}
                for token, row in rows:
                    if token not in done:
                        fresh.setdefault(token, row)
                if fresh:
                    names = [c.name for c in table.columns]
                    conn.execute(table.insert(), [{k: _cell(row.get(k)) for k in names} for row in fresh.values()])
                    conn.execute(
                        t.insert(),
                        [{"run_id": self.run_id, "sink_table": self.table_name, "token_id": tok} for tok in fresh],
                    )
        except Exception as e:
            if self._first is not None:  # the table was not made: the next open decides again
                self._table = None
            raise PluginError(
                _NODE, f"database sink {self.location()}: cannot write: {_write_failure(e, self.url)}"
            ) from e
        self._committed += len(fresh)
        return self._committed

    def close(self) -> None:
        self.release()

    def release(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.dispose()


def _write_failure(e: Exception, url: str) -> str:
    """Why a write failed, as it is recorded. A server's message about the rows may quote one of
    their values (`invalid input syntax for type date: "..."`), and the record outlives an
    erasure of that row (docs/erasure.md): only a connection's failure, which is about no row,
    keeps its message; any other keeps its class and SQLSTATE (`elspeth explain` shows the rows)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(e, OperationalError | InterfaceError):
        lines = str(e.orig).strip().splitlines()
        return f"{type(e).__name__}: {scrub(lines[0], url)}" if lines else type(e).__name__
    if isinstance(e, DBAPIError):
        code = getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
        return f"{type(e).__name__}{f' (SQLSTATE {code})' if code else ''}"
    return recorded(e)


class _AuditStore(Exception):
    """The sink's database holds an audit store: refused before anything is written."""


# What makes a schema an ELSPETH audit store: its `store_meta` (since migration 0005), or, in a
# store from before it, `events` and `payloads` kept by Alembic (`alembic_version`). Tables named
# `events` and `payloads` alone are common enough in an application's database to be its own. A
# store from before 0005 is refused by every command until `elspeth db upgrade` anyway; this only
# keeps a sink from writing into one that somebody has not upgraded yet.
_STORE_MARKS = (("store_meta",), ("events", "payloads", "alembic_version"))


def _audit_store_schema(conn: Any) -> str | None:
    """The schema of the sink's database that holds an ELSPETH audit store, or None. Every
    schema is asked, not only the sink's: a sink must not write into a store's database at all."""
    from sqlalchemy import inspect

    inspector = inspect(conn)
    for schema in inspector.get_schema_names():
        for marks in _STORE_MARKS:
            if all(inspector.has_table(name, schema=schema) for name in marks):
                return str(schema)
    return None


def _engine(url: str) -> Any:
    """A SQLAlchemy engine. A plain `postgresql://` URL means psycopg2 to SQLAlchemy; ELSPETH
    ships psycopg 3, so use that when psycopg2 is not installed."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed)


def _value_kind(value: Any) -> str:
    """The column kind a first row's value asks for (None and structures: text)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "text"


def _column_kind(sql_type: Any, sqlite: bool) -> tuple[str, int, int]:
    """What an existing column holds, as `_unfit` checks it: kind, then a width (integer bits,
    a float's bits, a decimal's precision, a string's length; 0: none) and a decimal's scale."""
    from sqlalchemy import CHAR, REAL, BigInteger, Float, Numeric, SmallInteger, String

    try:
        python = sql_type.python_type
    except NotImplementedError:
        return "other", 0, 0
    if python is bool:
        return "bool", 64, 0
    if python is int:
        if sqlite or isinstance(sql_type, BigInteger):
            return "int", 64, 0
        return "int", 16 if isinstance(sql_type, SmallInteger) else 32, 0
    if python is float or python.__name__ == "Decimal":
        if sqlite:  # an 8-byte float whatever it was declared (SQLAlchemy binds a NUMERIC's value as one)
            return "float", 64, 0
        if isinstance(sql_type, REAL) or (isinstance(sql_type, Float) and (sql_type.precision or 53) <= 24):
            return "real", 32, 0
        if isinstance(sql_type, Numeric) and not isinstance(sql_type, Float):
            if sql_type.scale is None:
                return "number", 0, 0  # numeric without a scale holds every number given exactly
            return "decimal", sql_type.precision or 0, sql_type.scale
        return "float", 64, 0
    if python is str:
        length = getattr(sql_type, "length", None) or 0
        if not sqlite and isinstance(sql_type, CHAR):
            return "char", length or 1, 0
        return "text", length if isinstance(sql_type, String) and not sqlite else 0, 0
    return "other", 0, 0


def _exactly_held(kind: str, width: int, scale: int, value: Any) -> str | None:
    """Why a column of this kind would store another value than `value` without an error (a
    float rounded, a decimal rounded, a string padded or cut), or None."""
    if isinstance(value, bool) or value is None:
        return None
    if kind in ("float", "real") and isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return None  # NaN and the infinities are checked by kind (SQLite stores NaN as NULL)
        try:
            stored = float(value) if kind == "float" else struct.unpack("f", struct.pack("f", float(value)))[0]
        except OverflowError:
            stored = math.inf
        if stored != value:
            return f"would round ({'a 4-byte' if kind == 'real' else 'an 8-byte'} float)"
    elif kind == "decimal" and isinstance(value, int | float) and (isinstance(value, int) or math.isfinite(value)):
        exact = Decimal(value) if isinstance(value, int) else Decimal(repr(value))
        with localcontext() as ctx:
            ctx.prec = max(len(exact.as_tuple().digits) + scale + 2, 28)
            if exact.quantize(Decimal(1).scaleb(-scale)) != exact:
                return f"would round to {scale} decimal place(s) (numeric({width}, {scale}))"
        whole = len(str(abs(int(exact)))) if int(exact) != 0 else 0
        if width and whole > width - scale:
            return f"cannot hold (numeric({width}, {scale}))"
    elif kind == "char" and isinstance(value, str) and len(value) != width:
        return f"would pad or cut to {width} character(s) (char({width}))"
    elif kind == "text" and width and isinstance(value, str) and len(value) > width:
        return f"would cut or refuse beyond {width} character(s)"
    return None
