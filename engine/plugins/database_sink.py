"""The `database` sink: rows into a table of the user's own database (SQLAlchemy: SQLite or
PostgreSQL). `flush` commits and returns the number of rows this run committed.

Nothing is lost without a record: the table's columns are fixed by the schema, an existing
table or the first row, and a row with a field that has no column, or a value its column
cannot hold, is refused at `write` (RowError, routed by `on_write_failure`) with the field
named — never inserted without it. So is a value an existing column would store as another
without an error (`exactly_held`): a float a 4-byte `real` or an 8-byte float rounds, a number a
`numeric(p, s)` or `money` rounds, a string a `char(n)` pads or a `varchar(n)`, `name` or `"char"`
cuts; a PostgreSQL domain's column is checked as the type it is over (`pg_column_kinds`). A
PostgreSQL date or time column refuses text it would store as another date or time: what the text
alone shows at `write` (`text_loss`: digits beyond microseconds, `now`, a date given to a `time`,
`1/2/2024`, which another DateStyle reads as another date),
what the server reads as the flush writes (`_temporal_refusals`: an offset a `timestamp` drops, a
time of day a `date` drops, digits a precision rounds), the rest of the flush written; an array of
them (`date[]`) element by element. Columns of other types (uuids, other arrays, ...) take what the
server makes of the value, unchecked. A text column
is given text (`for_column`), and a table that takes fewer rows than it is given, or that
replaces rows on a conflict, is refused (the trail would claim rows the table does not hold).

Its parts, each in a module of its own: what a column holds and whether it holds a value as given
(`db_columns`), the URL and its SQLite file (`db_urls`), what the sink reads of the catalog and its
bookkeeping table (`db_catalog`), and what a failed write records (`db_errors`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from engine.plugins.db_catalog import (
    LATER_COLUMNS,
    NO_LOCATOR,
    REPLACES,
    TOKENS,
    WRITERS,
    add_later_columns,
    audit_store_schema,
    row_locator,
    sqlite_folded,
    table_shape,
)
from engine.plugins.db_columns import (
    EXACT_NUMBERS,
    TEMPORAL_LOSS,
    UNCHECKABLE,
    column_kind,
    exactly_held,
    for_column,
    new_column_kind,
    pg_column_kinds,
    sqlite_numeric,
    text_loss,
    undomained,
)
from engine.plugins.db_errors import Refused, about_rows, row_refusal, write_failure
from engine.plugins.db_urls import check_url, engine_for, sqlite_file, through_a_link
from engine.plugins.options import Options
from engine.plugins.protocol import PluginConfigError, PluginError, Row, RowError, RowsRefused, WriterClaim
from engine.plugins.reasons import described, field_named
from engine.plugins.schema import parse_schema, reads_as_number
from landscape import faults
from landscape.db import redact
from landscape.urls import scrub

_NODE = "sink"
_IN_CHUNK = 500  # token ids per IN (...) query: well under every backend's parameter limit
_SCHEMA_KINDS = {"int": "int", "float": "float", "bool": "bool", "str": "text", "any": "text"}
# The most columns a table can have: SQLite's default SQLITE_MAX_COLUMN, PostgreSQL's MaxHeapAttributeNumber.
_MOST_COLUMNS_SQLITE = 2000
_MOST_COLUMNS_POSTGRESQL = 1600
# Names every PostgreSQL table has already: a first row with one cannot make its table.
_SYSTEM_COLUMNS = frozenset({"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"})
# Why a flush that recorded no row ids did so, as far as a later session can tell: the table gave
# row ids then only if RETURNING gave one per row, and the role's privileges may have changed since.
_NOT_AS_WRITTEN = (
    "their rows were changed or deleted since (or a column added or dropped, or the table rebuilt: SQLite's VACUUM "
    "renumbers the rows of a table without an INTEGER PRIMARY KEY, and where their flush recorded them may now be "
    "rows of other runs)"
)
_NONE_RECORDED = (
    "their flush recorded no row ids to find them by (the insert returned fewer rows than it inserted, as a "
    "trigger that skips or re-routes rows makes it, or the table gave none then)"
)


class DatabaseSink:
    """Rows go to `table`; in the same transaction each token id goes to `elspeth_sink_tokens` in
    the target database, with the flush's position and where its row is, so that a resume deletes
    what the run committed after its durable position (never writes a row twice).

    `if_exists: replace` drops the table when a run starts; a table that holds rows (of other
    runs, or written outside ELSPETH) is dropped only with `replace_rows_of_other_runs: true`."""

    kind: ClassVar[str] = "sink"

    def __init__(self, options: Mapping[str, Any]) -> None:
        o = Options(options, "url", "table", "if_exists", "replace_rows_of_other_runs")
        self.url = o.str_("url", required=True)
        check_url(self.url)
        self.table_name = o.str_("table", required=True)
        if not self.table_name.strip():
            raise PluginConfigError("table", "found an empty name; allowed: a table's name")
        if "#" in self.table_name:
            # A run records where it wrote as `URL#table`, and the table is read back after the last
            # `#`: `a#b` would never be "the same table", so `if_exists: replace` could drop the
            # rows of an unfinished run that wrote it (a review).
            raise PluginConfigError("table", f"{self.table_name!r} holds a '#'; allowed: a table's name without '#'")
        if "." in self.table_name:
            # The name is taken whole, in the connection's default schema: `main.t` or `sales.t`
            # made a table called "main.t" beside the one meant (a careless user's review).
            raise PluginConfigError(
                "table",
                f"{self.table_name!r} holds a '.', which would name a table called so, not a table in a schema: the "
                "table is made or found in the connection's default schema (PostgreSQL's search_path, SQLite's "
                "main); allowed: a table's name without '.'",
            )
        self.if_exists = o.str_("if_exists", "append")
        if self.if_exists not in ("append", "replace"):
            raise PluginConfigError("if_exists", f"{self.if_exists!r} is not allowed; allowed: append, replace")
        self.replace_others = o.bool_("replace_rows_of_other_runs", False)
        if self.replace_others and self.if_exists != "replace":
            raise PluginConfigError("replace_rows_of_other_runs", "only with if_exists: replace")
        self._sqlite = self.url.lower().startswith("sqlite")
        if not self._sqlite and len(self.table_name.encode()) > 63:  # (SQLAlchemy refuses it at each flush)
            raise PluginConfigError("table", "a name longer than PostgreSQL's 63 bytes; allowed: a shorter one")
        if (sqlite_folded(self.table_name) if self._sqlite else self.table_name) in (TOKENS, WRITERS):
            raise PluginConfigError("table", f"{self.table_name!r} is the sink's own bookkeeping table")
        if self._sqlite and sqlite_folded(self.table_name).startswith("sqlite_"):
            # SQLite's own (sqlite_master, sqlite_sequence, …): every row was refused, in a run that completed.
            raise PluginConfigError(
                "table", f"{self.table_name!r}: names beginning with 'sqlite_' are SQLite's own; allowed: another name"
            )
        self.schema = parse_schema(o.raw("schema"))
        self._shown = redact(self.url)
        self._buffer: list[tuple[str, Row]] = []
        self._engine: Any = None
        self._table: Any = None
        self._insert_into: Any = None  # the table as rows are inserted into it (`_use_table`)
        self._tokens: Any = None
        self._columns: dict[str, tuple[str, int, int]] | None = None  # name -> `column_kind`
        self._temporal: dict[str, tuple[str, str]] = {}  # PostgreSQL date/time column -> its type, declared type
        self._locator: str | None = None  # how a row of the table is found again (`row_locator`)
        self._counts_rows = False  # a SQLite table (not a view): its change count is exact (`flush`)
        self._no_locator = NO_LOCATOR  # why the table gives none, when it does not
        self._first: Row | None = None  # the row that fixed the columns of a table not made yet
        self._shape: object = None  # the table's definition as checked (`table_shape`)
        self._committed = 0
        self.run_id = ""
        self._opened_for: str | None = None  # the run this sink was last opened for, its checks passed
        self._writers: Any = None  # the `elspeth_sink_writers` table
        self._writer: tuple[int, str] | None = None  # this process's claim: (generation, name); see `fence_as`

    def layout(self) -> dict[str, object]:
        """None of its options changes how the rows it adds are written: `if_exists` acts only when
        a run starts, another `table` holds none of the run's rows (refused at `open`, by its
        bookkeeping), and the URL may change (a new password, another name for the server)."""
        return {}

    def location(self) -> str:
        return f"{self._shown}#{self.table_name}"

    def _fail(self, what: str, e: Exception) -> PluginError:
        lines = str(e).strip().splitlines()
        first = scrub(lines[0], self.url) if lines else type(e).__name__
        return PluginError(_NODE, f"database sink {self.location()}: {what}: {first}")

    def fence_as(self, claim: WriterClaim) -> None:
        """Write the run's rows here as `claim.writer` of the run's `claim.generation`: `open`
        claims the table for it, unless a later generation has, and each flush, in its
        transaction, first checks that the claim is still its own. A writer that stalled while
        its run was resumed elsewhere then writes nothing after the resume opened the table, and
        deletes nothing it wrote. (Whether this process still holds the run, `claim.held`, is a
        question to another database: no transaction here could hold its answer.)"""
        self._writer = (claim.generation, claim.writer)

    def open(self, run_id: str, position: int | None) -> None:
        from sqlalchemy import BigInteger, Column, MetaData, Table, Text, func, inspect, select

        self.release()
        # A reopen by the process that wrote the run's rows since it opened (after a failed
        # write): its flushes read them back, and the rows are not all read again at each.
        reopened, self._opened_for = self._opened_for == run_id, None
        self.run_id = run_id
        self._buffer = []
        self._table = None
        self._columns = None
        self._temporal = {}
        self._locator = None
        self._counts_rows = False
        self._first = None
        what = "cannot connect"
        refused: str | None = None
        path = sqlite_file(self.url) if self._sqlite else None
        try:
            if path is not None and path.is_symlink():  # (see `through_a_link`)
                raise Refused(f"database sink {self.location()}: {path} is a symbolic link: not written through")
            self._engine = engine_for(self.url)
            with self._engine.begin() as conn:
                if path is not None:
                    through_a_link(conn, path, self.location())
                # Before any table is made or dropped. The load-time check compares URLs, which
                # a DNS alias, a libpq service or a host list can spell otherwise; the database
                # itself cannot be mistaken about what it holds.
                what = "cannot tell whether it holds an ELSPETH audit store"
                store = audit_store_schema(conn)
                if store is not None:
                    raise Refused(
                        f"database sink {self.location()}: that database holds an ELSPETH audit store "
                        f"(schema '{store}'); allowed: a database of its own (a sink never writes into the "
                        "audit store)"
                    )
                what = "cannot prepare its tables"
                meta = MetaData()
                self._tokens = tokens = Table(
                    TOKENS, meta,
                    Column("run_id", Text, primary_key=True),
                    Column("sink_table", Text, primary_key=True),
                    Column("token_id", Text, primary_key=True),
                    *(Column(name, BigInteger if kind == "int" else Text) for name, kind in LATER_COLUMNS),
                )  # fmt: skip
                self._writers = Table(
                    WRITERS, meta,
                    Column("run_id", Text, primary_key=True),
                    Column("sink_table", Text, primary_key=True),
                    Column("generation", BigInteger, nullable=False),
                    Column("writer", Text, nullable=False),
                )  # fmt: skip
                meta.create_all(conn)
                add_later_columns(conn, self._sqlite)
                if self._sqlite:
                    # The write transaction from here (pysqlite begins one only at a first DML
                    # statement): the roll back's checks and its deletes, and the count after,
                    # see one state of the file, which no other writer (a VACUUM) changes
                    # between them (a review).
                    conn.exec_driver_sql(f"DELETE FROM {TOKENS} WHERE 0 = 1")
                mine = (tokens.c.run_id == run_id) & self._this_table()
                self._claim(conn)  # (before anything is dropped or deleted)
                exists = inspect(conn).has_table(self.table_name)
                if position is None and self.if_exists == "replace" and exists:
                    # A fresh run replaces the table; a resume keeps what the run wrote so far.
                    refused = self._others_rows(conn)
                    if refused is None:
                        Table(self.table_name, MetaData()).drop(conn)
                        conn.execute(tokens.delete().where(self._this_table()))
                        exists = False
                if exists:
                    self._use_table(conn, Table(self.table_name, MetaData(), autoload_with=conn))
                if position is not None:
                    what = f"cannot roll back to position {position}"
                    self._roll_back(conn, position)
                what = "cannot count the rows the run wrote"
                self._committed = conn.execute(select(func.count()).select_from(tokens).where(mine)).scalar_one()
                in_table = 0
                if position and exists:
                    in_table = self._rows_still_there(conn, position, reopened)
                if position is not None and self._committed > position:
                    # Left after the roll back: rows without a position, which only an ELSPETH
                    # from before positions were recorded wrote; which came after the durable
                    # point cannot be told.
                    raise Refused(
                        f"cannot continue {self.location()}: it holds {self._committed} rows of the run, "
                        f"{self._committed - position} more than the {position} the run had made durable, and "
                        f"{TOKENS} does not say which (an older ELSPETH wrote them); delete the run's rows "
                        "that its audit trail does not record, and their entries there, or start a new run"
                    )
                if position and min(self._committed, in_table) < position:
                    # As for files: rows the log says are durable are gone (the table dropped or
                    # emptied, rows deleted or changed, or their bookkeeping deleted), so this is
                    # not what the run wrote; carrying on would leave a hole nobody would see.
                    raise Refused(
                        f"cannot continue {self.location()}: it holds {min(self._committed, in_table)} of the "
                        f"{position} rows the run had made durable, so rows were deleted or changed since; "
                        "restore them, or start a new run"
                    )
                if not exists and refused is None and self.schema.field_names is not None:
                    self._create_table(conn)
        except Refused as e:
            self.release()
            raise PluginError(_NODE, str(e)) from None
        except Exception as e:
            self.release()
            raise self._fail(what, e) from e
        except BaseException:  # (a crash a test simulates): the transaction rolls back, let go too
            self.release()
            raise
        if refused is not None:
            self.release()
            raise PluginError(_NODE, refused)
        self._opened_for = run_id  # (only once its checks passed: a retried open checks again)

    def _claim_of_this_table(self) -> Any:
        """The run's claim on the sink's table in `elspeth_sink_writers` (names compared as in
        `_this_table`)."""
        w = self._writers
        table = (
            w.c.sink_table.collate("NOCASE") == self.table_name if self._sqlite else w.c.sink_table == self.table_name
        )
        return (w.c.run_id == self.run_id) & table

    def _writers_row(self, conn: Any) -> tuple[int, str] | None:
        """The claim on this table for the run, read for update (PostgreSQL locks the row; a
        SQLite transaction that has written is the only writer of its file). The highest: SQLite
        takes `t` and `T` for one table, which its key holds apart (a resume under settings that
        spell it otherwise claims it in a row of its own; an update reaches both)."""
        from sqlalchemy import select

        w = self._writers
        query = select(w.c.generation, w.c.writer).where(self._claim_of_this_table())
        row = conn.execute(query.order_by(w.c.generation.desc()).with_for_update()).first()
        return None if row is None else (int(row[0]), str(row[1]))

    def _claim(self, conn: Any) -> None:
        """Claim the table for this writer (`fence_as`), in the open's transaction, or refuse: a
        later writer of the run (a resume since this process drew its generation) has claimed it."""
        if self._writer is None:
            return
        from sqlalchemy.exc import OperationalError

        generation, writer = self._writer
        w = self._writers
        from sqlalchemy.dialects import postgresql

        # (SQLite: OR IGNORE, which every version takes; ON CONFLICT needs 3.24)
        if not self._sqlite:  # a writer stalled inside a flush holds the claim's row: say so, not wait for ever
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{CLAIM_WAIT_S}s'")
        try:
            # (Made if missing, then read: two writers finding none at once do not both insert.)
            values = {"run_id": self.run_id, "sink_table": self.table_name, "generation": generation, "writer": writer}
            if self._sqlite:
                conn.execute(w.insert().prefix_with("OR IGNORE").values(**values))
            else:
                conn.execute(postgresql.insert(w).values(**values).on_conflict_do_nothing())
            held = self._writers_row(conn)
        except OperationalError as e:
            if (
                getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
            ) != "55P03":  # lock_not_available (psycopg 3; psycopg2)
                raise
            raise Refused(
                f"database sink {self.location()}: the run's claim on the table is held by another session of its "
                f"database, waited on for {CLAIM_WAIT_S} s: a writer of this run that stalled inside a flush? End that session "
                f"(pg_stat_activity shows it, on {WRITERS}) or the process, then try again"
            ) from None
        if not self._sqlite:
            conn.exec_driver_sql("SET LOCAL lock_timeout = DEFAULT")
        assert held is not None
        if held[0] > generation:
            raise Refused(self._taken_over(held))
        if held != self._writer:
            conn.execute(w.update().where(self._claim_of_this_table()).values(generation=generation, writer=writer))

    def _still_claimed(self, conn: Any) -> None:
        """Refuse a flush once another writer has claimed the table (`_claim`)."""
        if self._writer is None:
            return
        held = self._writers_row(conn)
        if held != self._writer:
            raise Refused(self._taken_over(held))

    def _taken_over(self, held: tuple[int, str] | None) -> str:
        by = (
            f"its claim in {WRITERS} is gone"
            if held is None
            else f"a later writer of the run ({held[1]}, generation {held[0]}) claimed it since"
        )
        mine = f"{self._writer[1]}, generation {self._writer[0]}" if self._writer else "?"
        return (
            f"database sink {self.location()}: this process ({mine}) no longer writes run {self.run_id}'s rows "
            f"there: {by}; nothing was written or deleted (a resume may have taken the run over: see `elspeth runs`)"
        )

    def _roll_back(self, conn: Any, position: int) -> None:
        """Delete what the run committed after `position`, its durable position in the log, as
        a file sink is cut back to it: the rows a crash left between a flush's commit and the
        commit of the events recording it. The run writes them again, maybe otherwise (a batch
        closed by a timeout holds other rows the second time), and the table must hold what the
        trail says. In the caller's transaction: a crash midway leaves everything as it was."""
        from sqlalchemy import Integer, cast, func, literal_column, select

        t = self._tokens
        mine = (t.c.run_id == self.run_id) & self._this_table()
        beyond = mine & (t.c.sink_position > position)
        found = conn.execute(
            select(t.c.token_id, t.c.sink_position, t.c.row_locator, t.c.row_xid, t.c.row_digest).where(beyond)
        ).all()
        if not found:
            return
        if self._table is not None and self._sqlite:
            # A rowid another run recorded after this run did is that run's row now (the table
            # emptied or made again meanwhile); one recorded before is a leftover of the past.
            # (Compared as integers: an older ELSPETH recorded some as '1.0', see `_rowid`.)
            o, theirs = self._others_entries()
            at, their_at = cast(t.c.row_locator, Integer), cast(o.c.row_locator, Integer)
            recorded = dict(conn.execute(select(at, func.max(literal_column("rowid"))).where(beyond)
                                         .group_by(at)).all())  # fmt: skip
            later = select(o.c.run_id, their_at, literal_column("others.rowid")).where(
                theirs, their_at.in_(select(at).where(beyond))
            )
            runs = sorted({run for run, where, entry in conn.execute(later) if entry > recorded[where]})
            if runs:
                why = (f"the bookkeeping of run(s) {', '.join(runs[:3])} says rows there are theirs (the table was "
                       "emptied or made again since, and their rows took those rowids)")  # fmt: skip
                raise Refused(self._unrollable(position, sorted(token for token, *_ in found), why))
        if self._table is not None:  # no table: its rows went with it
            flushes: dict[tuple[int, int | None], list[tuple[str, str | None, str | None]]] = {}
            for token, at, locator, xid, digest in found:
                flushes.setdefault((at, xid), []).append((token, locator, digest))
            for (_, xid), rows in sorted(flushes.items(), key=lambda f: f[0][0]):
                tokens = sorted(token for token, *_ in rows)
                if self._locator is None:
                    raise Refused(self._unrollable(position, tokens, self._no_locator))
                if any(locator is None for _, locator, _ in rows):
                    raise Refused(self._unrollable(position, tokens, _NONE_RECORDED))
                # A rowid says where a row is, not which: VACUUM renumbers the rows of a table without
                # an INTEGER PRIMARY KEY, and the rowids a flush recorded then hold other rows (a
                # review). Each is deleted only when it holds the row as the flush left it. (An
                # older ELSPETH's entries have no digest: found by the rowid alone, as then.)
                wanted = {locator: digest for _, locator, digest in rows if locator is not None and digest is not None}
                if wanted and self._sqlite:
                    now = self._row_digests(conn, list(wanted))
                    if any(now.get(locator) != digest for locator, digest in wanted.items()):
                        raise Refused(self._unrollable(position, tokens, _NOT_AS_WRITTEN))
                deleted = self._delete_rows(conn, [locator for _, locator, _ in rows if locator is not None], xid)
                if deleted != len(rows):
                    raise Refused(self._unrollable(position, tokens, "their rows were changed or deleted since"))
        faults.reached("sink_rollback")
        conn.execute(t.delete().where(beyond))

    def _rows_still_there(self, conn: Any, position: int, reopened: bool) -> int:
        """How many of the rows the run made durable (up to `position`) the table may still hold.
        The whole table's count let another run's rows appended since hide the deletion of this
        run's (a review): the rows are found where the flushes recorded them. A row counts when it
        is one the run wrote (PostgreSQL: it holds the id of one of its flushes' transactions, xmin;
        SQLite: its digest, as its flush read it back, `_rows_as_written`), or when no run's flush
        wrote it as it is now (updated since, say by a consumer marking it read, or the table
        rebuilt by a copy: it may be the run's). Other runs' rows as they wrote them do not count
        where they can be told apart. A flush that recorded no row ids (see `row_locator`) has the
        whole table counted, as before. A reopen in the writing process reads the table with one
        statement (SQLite: by rowid, and by digest when short); a resume in SQLite reads the run's
        rows, and the whole table when one is not as written."""
        from sqlalchemy import (
            ARRAY,
            Integer,
            Text,
            all_,
            any_,
            bindparam,
            cast,
            func,
            literal_column,
            or_,
            select,
            table,
        )

        t = self._tokens
        # (an older ELSPETH's entries have no position: durable ones, as `open` has found)
        at = (t.c.sink_position <= position) | t.c.sink_position.is_(None)
        mine = (t.c.run_id == self.run_id) & self._this_table() & at
        unrecorded = select(t.c.token_id).where(mine, t.c.row_locator.is_(None)).exists()
        if self._locator is None or conn.execute(select(unrecorded)).scalar_one():
            return int(conn.execute(select(func.count()).select_from(table(self.table_name))).scalar_one())
        entries = (self._this_table(), t.c.row_locator.is_not(None))
        if self._sqlite:
            if not reopened and (found := self._rows_as_written(conn, position)) is not None:
                return found
            # A reopen in the process that wrote them, or entries of an older ELSPETH: by rowid;
            # a reopen found short so (a VACUUM during the run may have moved them), by digest.
            entry: Any = literal_column("rowid")  # (the bookkeeping's own: later entries have larger ones)
            latest = select(func.max(entry)).where(*entries).group_by(cast(t.c.row_locator, Integer))
            ours = select(cast(t.c.row_locator, Integer)).where(mine, entry.in_(latest))
            anyones = select(cast(t.c.row_locator, Integer)).where(*entries)
            rowid: Any = literal_column(self._locator)
            highest = select(func.max(cast(t.c.row_locator, Integer))).where(mine).scalar_subquery()
            count = select(func.count()).select_from(self._table)
            in_place = int(conn.execute(count.where(rowid.in_(ours))).scalar_one())
            # Rows at no recorded rowid (not above the run's highest: no row of its moves up) may
            # be the run's, changed; as many as other runs' entries without a rowid (an older
            # ELSPETH's) may be theirs.
            free = int(conn.execute(count.where(rowid.not_in(anyones), rowid <= highest)).scalar_one())
            theirs = (t.c.run_id != self.run_id) & self._this_table() & t.c.row_locator.is_(None)
            unplaced = int(conn.execute(select(func.count()).select_from(t).where(theirs)).scalar_one())
            by_rowid = in_place + max(0, free - unplaced)
            if reopened and by_rowid < position and (found := self._rows_as_written(conn, position)) is not None:
                return found
            return by_rowid
        wrote = sorted({str(x) for x in conn.execute(select(t.c.row_xid).where(mine).distinct()).scalars()})
        xmin: Any = literal_column("CAST(xmin AS text)")
        by_us = xmin == any_(bindparam("xids", wrote, type_=ARRAY(Text)))
        # Bound as an array (a value per flush): NOT IN a subquery larger than the server's hash
        # memory is read again for every row of the table (a review saw a resume time out).
        flushed = sorted({str(x) for x in conn.execute(select(t.c.row_xid).where(*entries).distinct()).scalars()})
        # Not capped at what each flush wrote: a trigger updating the run's earlier rows in a later
        # flush gives them that flush's id, and they are there.
        by_no_run = xmin != all_(bindparam("flushed", flushed, type_=ARRAY(Text)))
        return int(
            conn.execute(select(func.count()).select_from(self._table).where(or_(by_us, by_no_run))).scalar_one()
        )

    def _rows_as_written(self, conn: Any, position: int) -> int | None:
        """`_rows_still_there` for SQLite, by the digests the run's flushes recorded (each row as
        SQLite held it); None when an entry of the table has none (an older ELSPETH's: by rowid).
        A rowid says where a row is, not which: after a row was deleted, VACUUM renumbers a table
        without an INTEGER PRIMARY KEY, and a count by rowid took another run's row moved to a
        rowid of the run's for the deleted one, and missed the run's rows moved to rowids other
        runs recorded (a review).

        VACUUM keeps the rows' order: a row is at most at the rowid its flush recorded, and below
        it when a later entry was recorded there (its row was gone from there by then): that is
        each entry's bound. First the rows at the run's rowids: when each holds what its flush
        read back, and no other run recorded an equal row that may have moved there, they are
        all there. Else the whole table, each row by what it holds: of the rows equal to one of
        the run's, as many as other runs' entries may be (each a row within its bound) are
        taken for theirs (of two equal rows, one deleted, the run's is taken for the gone one);
        a row no run wrote as it is now, at a rowid the run recorded last or no entry records,
        not above the run's highest, may be the run's updated since, and counts. (A row inserted
        by hand at a rowid of 0 or less, or a table rebuilt in another order, moves rows up: what
        then moved onto the run's rowids is beyond this.)"""
        mine = f"run_id = :run AND {_ENTRY} AND (sink_position <= :position OR sink_position IS NULL)"
        parts = {"tokens": TOKENS, "entry": _ENTRY, "mine": mine}
        parts["claims"] = "SELECT max(rowid) FROM {tokens} WHERE {entry} GROUP BY CAST(row_locator AS INTEGER)".format(
            **parts
        )
        parts["bound"] = f"CAST(o.row_locator AS INTEGER) - (o.rowid NOT IN ({parts['claims']}))"
        params: dict[str, Any] = {"run": self.run_id, "table": self.table_name, "position": position}

        def query(sql: str) -> Any:
            return conn.exec_driver_sql(sql.format(**parts), params)

        # (an older ELSPETH's entries, of any run, have no digest, nor a rowid before that)
        older = "SELECT EXISTS (SELECT 1 FROM {tokens} WHERE sink_table = :table COLLATE NOCASE AND row_digest IS NULL)"
        if query(older).scalar_one():
            return None
        found = query(
            "SELECT CAST(row_locator AS INTEGER), row_digest, rowid IN ({claims}) FROM {tokens} WHERE {mine}"
        ).all()
        if not found:  # (the run's entries deleted)
            return 0
        ours = Counter(digest for _, digest, _ in found)
        lowest: dict[str, int] = {}
        for at, digest, _ in found:
            lowest[digest] = min(at, lowest.get(digest, at))
        bounds: dict[str, list[int]] = {}  # other runs' entries of rows equal to one of the run's
        for digest, bound in query(
            "SELECT o.row_digest, {bound} FROM {tokens} AS o WHERE o.run_id <> :run AND "
            "o.rowid IN (SELECT rowid FROM {tokens} WHERE {entry}) AND "
            "o.row_digest IN (SELECT row_digest FROM {tokens} WHERE {mine})"
        ):
            bounds.setdefault(digest, []).append(bound)
        moved_there = any(max(bound) >= lowest[digest] for digest, bound in bounds.items())
        if not moved_there and all(claimed for *_, claimed in found):
            wanted = {str(at): digest for at, digest, _ in found}
            now = self._row_digests(conn, list(wanted))
            if all(now.get(at) == digest for at, digest in wanted.items()):
                return len(found)
        held: dict[str, list[int]] = {}
        other: list[str] = []  # the digests of rows that may be the run's, updated since
        at = self._locator or "rowid"
        highest = max(where for where, _, _ in found)  # (none of the run's rows can be above it)
        scan = (
            f"SELECT {at}, {at} > {highest} OR ({at} IN (SELECT CAST(row_locator AS INTEGER) FROM {TOKENS} "
            f"WHERE {_ENTRY}) AND {at} NOT IN (SELECT CAST(row_locator AS INTEGER) FROM {TOKENS} WHERE {mine} "
            f"AND rowid IN ({parts['claims']}))), * FROM {conn.dialect.identifier_preparer.quote(self.table_name)}"
        )  # (not formatted again: the table's name may hold braces)
        with _any_text(conn):
            for where, elsewhere, *values in conn.exec_driver_sql(scan, params):
                digest = _row_digest(values)
                if digest in ours:
                    held.setdefault(digest, []).append(where)
                elif not elsewhere:
                    other.append(digest)
        # Of those, the ones some run wrote as they are are not the run's: one pass over the entries
        # (an IN list a chunk at a time read them all for each: a column added, 2 minutes a review).
        asked = set(other)
        digests = conn.exec_driver_sql(f"SELECT row_digest FROM {TOKENS} WHERE {_ENTRY}", params).scalars()
        recorded = {digest for digest in digests if digest in asked}
        unknown = sum(digest not in recorded for digest in other)
        return unknown + sum(min(n, _unmatched(held.get(d, []), bounds.get(d, []))) for d, n in ours.items())

    def _others_entries(self) -> tuple[Any, Any]:
        """Other runs' bookkeeping entries with a rowid for this SQLite table: the alias and its
        condition. A rowid says where a row is, not whose: a table emptied or made again hands
        its rowids to the next rows, and a run's resume deleted another run's rows there (a
        review). PostgreSQL's rows are told apart by their transaction ids instead."""
        o = self._tokens.alias("others")
        theirs = (o.c.sink_table.collate("NOCASE") == self.table_name) & (o.c.run_id != self.run_id)
        return o, theirs & o.c.row_locator.is_not(None)

    def _row_digests(self, conn: Any, locators: list[str]) -> dict[str, str]:
        """The rows of a SQLite table at these rowids, each as a digest of its columns' values as
        the table holds them (read back: RETURNING shows 5 where a REAL column stores 5.0, and
        not what an AFTER trigger made of the row), by rowid; a rowid holding no row is absent."""
        # As SQLite gives them, every column the table has now: not through SQLAlchemy's types,
        # whose DATE conversion failed on text that is not ISO, and so every flush (a review).
        column = self._locator or "rowid"
        table = conn.dialect.identifier_preparer.quote(self.table_name)
        found: dict[str, str] = {}
        with _any_text(conn):  # (VACUUM may have moved another tool's row there)
            for i in range(0, len(locators), _IN_CHUNK):
                chunk = ", ".join(str(_rowid(x)) for x in locators[i : i + _IN_CHUNK])  # (integers)
                for at, *values in conn.exec_driver_sql(f"SELECT {column}, * FROM {table} WHERE {column} IN ({chunk})"):
                    found[str(at)] = _row_digest(values)
        return found

    def _unrollable(self, position: int, tokens: list[str], why: str) -> str:
        shown = ", ".join(tokens[:5]) + (f" and {len(tokens) - 5} more" if len(tokens) > 5 else "")
        return (
            f"cannot continue {self.location()}: the rows of token(s) {shown}, committed after the run's durable "
            f"position {position} and not in its audit trail, cannot be deleted: {why}; delete them and their "
            f"entries in {TOKENS}, or start a new run"
        )

    def _delete_rows(self, conn: Any, locators: list[str], xid: int | None) -> int:
        """Delete the rows one flush inserted, found where it recorded them; how many were."""
        from sqlalchemy import literal_column, text

        column = self._locator
        assert column is not None
        deleted = 0
        for i in range(0, len(locators), _IN_CHUNK):
            chunk = locators[i : i + _IN_CHUNK]
            if self._sqlite:
                where = literal_column(column).in_([_rowid(x) for x in chunk])
                deleted += conn.execute(self._table.delete().where(where)).rowcount
            else:
                # A row's ctid is where it was written; the id of the transaction that wrote it
                # (xmin) makes sure it is still that row: one updated since, or a table rewritten
                # (VACUUM FULL), has the row elsewhere or another there, and is not deleted.
                at = text("ctid = ANY(CAST(:ctids AS tid[]))").bindparams(ctids=chunk)
                by = text("CAST(xmin AS text) = :xid").bindparams(xid=str(xid))
                deleted += conn.execute(self._table.delete().where(at, by)).rowcount
        return deleted

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
            select(t.c.run_id).where(self._this_table()).distinct().order_by(t.c.run_id).limit(4)
        ).scalars())  # fmt: skip
        whose = (
            f"of run(s) {', '.join(runs[:3])}{', ...' if len(runs) > 3 else ''}" if runs else "written outside ELSPETH"
        )
        return (
            f"database sink {self.location()}: if_exists replace would drop table '{self.table_name}', which holds "
            f"{rows} row(s) {whose}; allowed: replace_rows_of_other_runs: true in the sink's options to drop them, "
            "if_exists: append, or another table"
        )

    def _this_table(self) -> Any:
        """Bookkeeping rows of the sink's table. SQLite takes table names that differ only in
        ASCII case for one table (`t` and `T`), so its rows are compared as SQLite compares names:
        NOCASE folds ASCII only, as SQLite's names do (lower() would fold more where ICU is
        loaded). Otherwise run `T` replacing the table would keep run `t`'s entries, whose
        rowids the new rows take, and a resume of `t` would delete those. PostgreSQL names (quoted)
        are compared exactly."""
        column = self._tokens.c.sink_table
        return column.collate("NOCASE") == self.table_name if self._sqlite else column == self.table_name

    def _use_table(self, conn: Any, t: Any) -> None:
        from sqlalchemy import Column, MetaData, Table
        from sqlalchemy.types import NullType

        if self._sqlite:
            from sqlalchemy import text

            made = conn.execute(
                text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name COLLATE NOCASE"),
                {"name": self.table_name},
            ).scalar()
            self._counts_rows = isinstance(made, str)  # a table, not a view (see `flush`)
            if isinstance(made, str) and REPLACES.search(made):
                # A row given that conflicts with one in the table deletes that one, silently: the
                # trail would go on saying it was written (an earlier row of this run, say).
                raise Refused(
                    f"database sink {self.location()}: table '{self.table_name}' resolves a conflict by REPLACE: a "
                    "row written could silently delete another row the audit trail says was written; allowed: a "
                    "table without ON CONFLICT REPLACE (a conflict then fails the flush, and is recorded)"
                )
        self._table = t
        if self._sqlite:
            self._columns = {c.name: column_kind(c.type) for c in t.columns}
        else:
            kinds, self._temporal = pg_column_kinds(conn, t.name)
            self._columns = {c.name: kinds.get(c.name, ("other", 0, 0)) for c in t.columns}
        # What the rows are inserted into: the table's columns, but those of other types (dates,
        # times, uuids, binary) bound without SQLAlchemy's conversion, which refuses a string for
        # a SQLite DATE: such a column takes what the database makes of the value (as documented).
        # A domain's column is bound as the type it is over (a JSON column's value as JSON).
        self._insert_into = Table(
            t.name, MetaData(),
            *(Column(c.name, NullType() if self._columns[c.name][0] in ("other", "numeric affinity") else undomained(c.type))
              for c in t.columns),
        )  # fmt: skip
        self._locator, self._no_locator = row_locator(conn, t, self._sqlite)
        self._shape = table_shape(conn, t.name, self._sqlite, self._columns)

    def _create_table(self, conn: Any) -> None:
        from sqlalchemy import BigInteger, Boolean, Column, Float, MetaData, Table, Text

        types = {"int": BigInteger, "float": Float, "bool": Boolean, "text": Text}
        if self.schema.field_names is not None:
            columns: list[Any] = [Column(f.name, types[_SCHEMA_KINDS[f.type]]) for f in self.schema.fields]
        else:
            assert self._first is not None
            columns = [Column(k, types[new_column_kind(v)]) for k, v in self._first.items()]
        meta = MetaData()
        Table(self.table_name, meta, *columns)
        meta.create_all(conn)  # (not if there: see below)
        # The table as the database has it: another run appending to it may have made it since
        # this sink looked (runs appending to one table run at once), with the columns its own
        # first row asked for. Taken for this sink's guess, a bigint column rounded 1.5 to 2
        # without a word while the trail held 1.5 (a review).
        self._use_table(conn, Table(self.table_name, MetaData(), autoload_with=conn))

    def write(self, token_id: str, row: Row) -> None:
        fixing = self._columns is None
        if fixing:  # no table yet and no schema: this row fixes the columns, if it is accepted
            clash = self._unmakeable(row)
            if clash is not None:  # found when the table is made, it would fail the whole flush
                raise RowError(f"{clash}: no table can be made from this row ({self._shown})")
            self._first = row
            # As `_create_table` will make them: text unbounded (width 0, as `_use_table` reads
            # the table back), numbers and booleans of 64 bits. A text width of 64 here refused
            # longer text before the first flush only, which a resume, reading the table, took.
            kinds = {k: new_column_kind(v) for k, v in row.items()}
            self._columns = {k: (kind, 0 if kind == "text" else 64, 0) for k, kind in kinds.items()}
        problems = [p for k, v in row.items() if (p := self._unfit(row, k, v)) is not None]
        if problems:
            if fixing:
                # A refused row fixes nothing (as in CsvSink): a resume after its refusal was
                # committed starts with no columns, and takes the next accepted row's; so must this.
                self._first, self._columns = None, None
            raise RowError(f"{'; '.join(problems)} (table {self.table_name} in {self._shown})")
        self._buffer.append((token_id, row))

    def _unmakeable(self, row: Row) -> str | None:
        """Why the columns this row would fix cannot be made, or None: a table has a column, and
        at most so many; no column has an empty name or a NUL in it, SQLite compares column names
        without case (`id` and `ID` are one), PostgreSQL cuts them at 63 bytes."""
        named = self.schema.field_names or []
        most = _MOST_COLUMNS_SQLITE if self._sqlite else _MOST_COLUMNS_POSTGRESQL
        if not row:
            return "the row has no field: a table of no column takes no other row"
        if len(row) > most:
            past = field_named(row, list(row)[most], named)
            return (
                f"the row has {len(row)} fields: {past} and those after it are past the {most} columns a table can have"
            )
        seen: set[str] = set()
        for name in row:
            if name == "":
                return f"{field_named(row, name, named)} has an empty name, which no column can have"
            if "\x00" in name:
                return f"{field_named(row, name, named)} has a NUL character in its name, which no column can have"
            if not self._sqlite and len(name.encode()) > 63:
                return f"{field_named(row, name, named)} has a name longer than PostgreSQL's 63 bytes"
            if not self._sqlite and name in _SYSTEM_COLUMNS:
                return f"{field_named(row, name, named)} has the name of a PostgreSQL system column"
            folded = sqlite_folded(name) if self._sqlite else name
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
        value = self._as_given(name, value)
        kind, bits, scale = self._columns[name]
        found = described(value)
        given = for_column(kind, value)
        exact = exactly_held(kind, bits, scale, given)
        if exact is not None:
            return f"{field} holds {found}, which its column {exact}"
        if kind not in EXACT_NUMBERS:  # (given as a Decimal: below, the row's own value is checked)
            value = given
        if kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                return f"{field} holds {found}; its column takes integers"
            if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
                return f"{field} holds an integer outside the column's {bits}-bit range"
        elif kind in ("float", "real", *EXACT_NUMBERS):
            if not isinstance(value, int | float) or isinstance(value, bool):
                return f"{field} holds {found}; its column takes numbers"
            if self._sqlite and isinstance(value, float) and math.isnan(value):
                return f"{field} holds NaN, which SQLite would store as NULL"
            if self._sqlite and isinstance(value, float) and value == 0 and math.copysign(1.0, value) < 0:
                return f"{field} holds -0.0, which SQLite would store as 0"
        elif kind == "bool" and not isinstance(value, bool):
            return f"{field} holds {found}; its column takes true or false"
        elif kind == "oid" and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32):
            # (given -1, as a number or as text, an oid column stores 4294967295)
            return f"{field} holds {found}; its column (oid) takes integers of 0 to 4294967295"
        elif name in self._temporal and isinstance(value, str) and (lost := self._text_loss(name, value)):
            return f"{field} holds {found} {lost}"
        elif kind == "numeric affinity" and isinstance(value, str) and reads_as_number(value):
            # ('007' would be stored as 7, '1.50' as 1.5: another value than the row's, without a word)
            return (
                f"{field} holds {found} that reads as a number, which its column (SQLite NUMERIC affinity) would "
                "store as that number, not as the text"
            )
        elif kind == "json" and self._sqlite and isinstance(value, int | float) and not isinstance(value, bool):
            # A column declared JSON has NUMERIC affinity: the JSON text of a number is stored as the
            # number SQLite reads in it (10**30 as 1e30, 1.0 as 1), and no spelling of it is kept as text.
            stored = sqlite_numeric(json.dumps(value))
            if type(stored) is not type(value) or stored != value:
                why = "another number" if isinstance(stored, int | float) else "text (JSON has no NaN or infinity)"
                return f"{field} holds {found}, which its column (SQLite JSON: NUMERIC affinity) would store as {why}"
        elif kind in ("text", "char", "name") and not self._sqlite and isinstance(value, str) and "\x00" in value:
            return f"{field} holds a NUL character, which PostgreSQL text cannot store"
        return None

    def _text_loss(self, name: str, value: str) -> str | None:
        """`text_loss` of a text for a date or time column; an array's elements are judged at the
        flush, as the server reads them (`_temporal_refusals`)."""
        base, declared = self._temporal[name]
        return None if declared.endswith("[]") else text_loss(base, declared, value)

    def flush(self) -> int:
        rows, self._buffer = self._buffer, []
        if not rows:
            return self._committed
        if self._engine is None:
            raise PluginError(_NODE, f"database sink {self.location()}: written before open (or after release)")
        from sqlalchemy import literal_column, select, text

        t = self._tokens
        position = self._committed + len(rows)
        unmade = self._table is None
        try:
            with self._engine.begin() as conn:
                if self._sqlite:  # (the write transaction from here: the claim read stays the claim)
                    conn.exec_driver_sql(f"DELETE FROM {TOKENS} WHERE 0 = 1")
                self._still_claimed(conn)
                if unmade:
                    self._create_table(conn)
                    # The rows were checked against the columns guessed from the first; the table
                    # made may be another run's, whose columns cannot hold them all.
                    unfit = {token: "; ".join(problems) for token, row in rows
                             if (problems := [p for k, v in row.items() if (p := self._unfit(row, k, v)) is not None])}  # fmt: skip
                    if unfit:
                        raise RowsRefused(
                            {token: f"{why} (table {self.table_name} in {self._shown}, made meanwhile by another writer)"
                             for token, why in unfit.items()}
                        )  # fmt: skip
                table = self._insert_into
                # A token is written once: the run's tokens committed after its durable position
                # were deleted when the sink opened, so one recorded here is durable in the log
                # too, and writing it again would put a second row in no trail.
                ids = [token for token, _ in rows]
                twice = {token for token, n in Counter(ids).items() if n > 1}
                for i in range(0, len(ids), _IN_CHUNK):
                    query = select(t.c.token_id).where(
                        t.c.run_id == self.run_id,
                        self._this_table(),
                        t.c.token_id.in_(ids[i : i + _IN_CHUNK]),
                    )
                    twice.update(conn.execute(query).scalars())
                if twice:
                    raise Refused(
                        f"database sink {self.location()}: token(s) {', '.join(sorted(twice)[:5])} written twice "
                        "by the run; allowed: one row per token"
                    )
                xid = None
                locators: list[str | None] = [None] * len(rows)
                insert = table.insert()
                if self._locator is not None:
                    if not self._sqlite:
                        xid = conn.execute(text("SELECT txid_current() % 4294967296")).scalar_one()
                    # (SQLite: `rowid + 0`, an integer; the bare rowid comes back as a real when the
                    # first column has REAL affinity, rounded beyond 2**53)
                    insert = insert.returning(literal_column(f"{self._locator} + 0" if self._sqlite else self._locator))
                returned: list[str] = []  # in no particular order: a flush is only ever deleted whole
                counted = 0
                for values in self._inserts(rows):
                    result = conn.execute(insert, values) if values[0] else _one_by_one(conn, insert, len(values))
                    if self._locator is not None:
                        returned += [str(found) for found in result.scalars()]
                    elif self._counts_rows:
                        counted += result.rowcount
                # What the table took: the rows RETURNING gave; in a SQLite table without row ids
                # (WITHOUT ROWID) the changes SQLite counted, exact there. Elsewhere nothing tells:
                # a view's INSTEAD OF trigger counts 0 in SQLite, psycopg2 gives one page's count,
                # an INSERT-only role has no RETURNING: such a table is written as ever.
                taken = len(returned) if self._locator is not None else counted if self._counts_rows else len(rows)
                if taken < len(rows):
                    # A trigger that skips a row (SQLite's RAISE(IGNORE), PostgreSQL's RETURN NULL,
                    # one moving it to another table or a child table), a rule doing something
                    # instead, or a conflict clause ignoring it: the trail would say rows were
                    # written that the table does not return. Nothing of the flush is kept.
                    raise Refused(
                        f"database sink {self.location()}: the table took {taken} of the {len(rows)} rows "
                        "inserted (a trigger, a rule or a conflict clause skipped or moved the others), so the audit "
                        "trail cannot say they were written; allowed: a table that keeps each row it is given "
                        "(PostgreSQL's declarative partitioning does; inheritance routed by a trigger does not)"
                    )
                if self._temporal:
                    lossy = self._temporal_refusals(conn, rows)
                    if lossy:  # (nothing of the flush is kept: the writer writes the others again)
                        raise RowsRefused({token: f"{why} (table {self.table_name} in {self._shown})"
                                           for token, why in lossy.items()})  # fmt: skip
                digests: list[str | None] = [None] * len(rows)
                if self._locator is not None and len(returned) == len(rows):
                    locators = list(returned)
                    if self._sqlite:
                        held = self._row_digests(conn, returned)
                        if len(held) < len(returned):
                            # (an AFTER trigger deleted them: RETURNING counts the rows inserted)
                            raise Refused(
                                f"database sink {self.location()}: the table holds {len(held)} of the {len(rows)} "
                                "rows inserted (a trigger removed the others), so the audit trail cannot say they "
                                "were written; allowed: a table that keeps each row it is given"
                            )
                        digests = [held[locator] for locator in returned]
                conn.execute(
                    t.insert(),
                    [
                        {"run_id": self.run_id, "sink_table": self.table_name, "token_id": token,
                         "sink_position": position, "row_locator": locator, "row_xid": xid, "row_digest": digest}
                        for token, locator, digest in zip(ids, locators, digests, strict=True)
                    ],
                )  # fmt: skip
                # Last, so that nothing can change it before the commit: the inserts hold the table
                # (PostgreSQL's ALTER waits on them; SQLite's writer is this transaction). A column
                # altered since the sink checked the rows against it took 2.5 as 2, a SQLite table
                # made again with ON CONFLICT REPLACE deleted a durable row (a review).
                if table_shape(conn, self.table_name, self._sqlite, self._columns or ()) != self._shape:
                    raise Refused(
                        f"database sink {self.location()}: table '{self.table_name}' was changed (its columns or "
                        "its definition) since the sink checked its rows against it; nothing of this flush was "
                        "kept, and a retry checks the rows against the table as it is now"
                    )
        except Refused as e:
            raise PluginError(_NODE, str(e)) from None
        except RowsRefused:
            self._table = None  # (the writer opens the sink again, which takes the table as it is)
            raise
        except Exception as e:
            if unmade:  # the table was not made: the next open decides again
                self._table = None
            refused = self._refused_rows(rows) if about_rows(e) else {}
            if refused:
                raise RowsRefused(refused) from e
            raise PluginError(
                _NODE, f"database sink {self.location()}: cannot write: {write_failure(e, self.url)}"
            ) from e
        self._committed = position
        return self._committed

    def _refused_rows(self, rows: list[tuple[str, Row]]) -> dict[str, str]:
        """Which of a failed flush's rows the table refuses (a unique, not-null, check or foreign
        key constraint, a value its type does not take, a trigger raising), and why; in one
        transaction, rolled back, so that one bad row does not fail the rows flushed with it.

        Each row is inserted in a savepoint after the ones the table took before it. A multi-row
        insert checks a foreign key at its end, so a row refused in one pass is tried again in the
        next, after all the others (its parent may have come later in the flush), until a pass
        takes none. Deferred constraints are checked at each insert (the commit never comes).
        When every row is refused for one same reason, that is taken for the table's, not the
        rows' (a not-null column no row fills, a trigger raising for any row, as a table closed
        for maintenance): none is refused, and the flush fails as a whole (retried, then
        `on_write_failure` or the run fails, to be resumed), as it does when the trial fails for
        what is not about a row (the connection, a privilege, a SQLite table whose conflict clause
        rolls back all). A flush of one row has no other to tell by: its refusal fails it so too."""
        from sqlalchemy.exc import SQLAlchemyError

        unmade = self._table is None
        why: dict[str, str] = {}  # token -> reason
        try:
            with self._engine.connect() as conn:
                trial = conn.begin()
                try:
                    if self._table is None:
                        self._create_table(conn)
                    if self._sqlite:  # (a DML statement begins the transaction, so no savepoint is the outermost)
                        conn.exec_driver_sql(f"DELETE FROM {TOKENS} WHERE 0 = 1")
                    else:
                        conn.exec_driver_sql("SET CONSTRAINTS ALL IMMEDIATE")
                    names = self._own_names(conn)
                    insert = self._insert_into.insert()
                    waiting = self._values(rows)
                    while waiting:
                        left = []
                        for token, values in waiting:
                            try:
                                with conn.begin_nested():
                                    if values:
                                        conn.execute(insert, [values])
                                    else:  # (a row with no field: the table's defaults)
                                        conn.execute(insert)
                            except Exception as e:
                                if not about_rows(e):
                                    raise
                                why[token] = row_refusal(e, names)
                                left.append((token, values))
                            else:
                                why.pop(token, None)
                        if len(left) == len(waiting):
                            break
                        waiting = left
                finally:
                    trial.rollback()
        except (SQLAlchemyError, UnicodeError):
            return {}
        finally:
            if unmade:  # (made in the trial, which is rolled back)
                self._table = None
        if len(why) == len(rows) and len(set(why.values())) == 1:
            return {}
        return {token: f"the table refused it: {reason}" for token, reason in why.items()}

    def _temporal_refusals(self, conn: Any, rows: list[tuple[str, Row]]) -> dict[str, str]:
        """The rows holding a text that a date or time column of the table stores as another date
        or time (`TEMPORAL_LOSS`), and why. Asked of the server in the flush's transaction once
        its insert took the rows (so every such text reads as a date or time), in the session's
        time zone, the one the insert read them in and the server's own conversions use. A
        comparison the server cannot compute (a date at the end of its range: the casts overflow)
        would fail the statement: the values are then asked again in halves (`asked`), and one
        it cannot compute is refused, not written unchecked (a review saw one such row fail its
        whole flush)."""
        from sqlalchemy import ARRAY, Text, bindparam, text
        from sqlalchemy.exc import DBAPIError

        named = self.schema.field_names or []
        why: dict[str, list[str]] = {}
        for column, (base, declared) in self._temporal.items():
            given = [
                (token, {**row, column: spelled}) for token, row in rows
                if isinstance(spelled := self._as_given(column, row.get(column)), str)
            ]  # fmt: skip
            if not given:
                continue
            checks = TEMPORAL_LOSS[base]
            element = declared.removesuffix("[]")  # (an array column's text is an array literal: `{a,b}`)
            tests = ", ".join(f"({sql.format(base=base, declared=element)})" for sql, _ in checks)
            if element != declared:
                # Each element as the server reads it (quotes and backslashes undone), for the text's
                # checks too: the literal's own text hid `{n\\ow}` and took its commas for decimal ones.
                tests = (
                    ", ".join(
                        f"(SELECT coalesce(bool_or({sql.format(base=base, declared=element)}), false) "
                        "FROM unnest(CAST(x.v AS text[])) AS e(v))"
                        for sql, _ in checks
                    )
                    + ", (SELECT array_agg(e.v) FROM unnest(CAST(x.v AS text[])) AS e(v) WHERE e.v IS NOT NULL)"
                )
            query = text(f"SELECT {tests} FROM unnest(:v) WITH ORDINALITY AS x(v, i) ORDER BY i").bindparams(
                bindparam("v", type_=ARRAY(Text))
            )

            def asked(values: list[str], query: Any = query) -> list[Any]:
                """Each value's answers; None for one the server cannot compare. A failed statement
                is asked again in halves (a few statements for one such value among thousands:
                one by one, 5,000 values took 2.8 s, a review)."""
                try:
                    with conn.begin_nested():  # (a failed statement leaves the flush's transaction usable)
                        return list(conn.execute(query, {"v": values}).all())
                except DBAPIError:
                    if len(values) == 1:
                        return [None]
                    half = len(values) // 2
                    return asked(values[:half]) + asked(values[half:])

            found = asked([row[column] for _, row in given])
            for (token, row), hits in zip(given, found, strict=True):
                if hits is None:
                    causes = [UNCHECKABLE.format(declared=declared)]
                else:
                    *hits, elements = hits if element != declared else (*hits, None)
                    causes = [lost for e in elements or () if (lost := text_loss(base, declared, e)) is not None]
                    causes += [
                        said.format(declared=declared) for (_, said), hit in zip(checks, hits, strict=True) if hit
                    ]
                if causes:
                    held = f"{field_named(row, column, named)} holds {described(row[column])}"
                    why.setdefault(token, []).append(f"{held} {causes[0]}")
        return {token: "; ".join(reasons) for token, reasons in why.items()}

    def _own_names(self, conn: Any) -> frozenset[str]:
        """The names a refusal may show: the table's, its columns' and (PostgreSQL) its constraints'
        and indexes' from the catalog. A trigger can put anything in an error's fields (`RAISE
        ... USING COLUMN = NEW.secret`), and the reason outlives the row's erasure."""
        from sqlalchemy import text

        assert self._columns is not None
        names = {self.table_name, *self._columns}
        if not self._sqlite:
            quoted = conn.dialect.identifier_preparer.quote(self.table_name)
            names.update(
                conn.execute(
                    text(
                        "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(:t) UNION "
                        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                        "WHERE i.indrelid = to_regclass(:t)"
                    ),
                    {"t": quoted},
                ).scalars()
            )
        return frozenset(names)

    def _values(self, rows: list[tuple[str, Row]]) -> list[tuple[str, dict[str, Any]]]:
        assert self._columns is not None
        columns = self._columns
        return [
            (token, {k: for_column(columns[k][0], self._as_given(k, v)) for k, v in row.items()}) for token, row in rows
        ]

    def _as_given(self, name: str, value: Any) -> Any:
        """A plugin's date, time or datetime for a PostgreSQL date or time column as its ISO text,
        which the checks judge as any text: psycopg sent it typed, and the server dropped an aware
        time's offset, a datetime's time of day in a date, rounded to a precision (a review)."""
        if name in self._temporal and isinstance(value, datetime.date | datetime.time):
            return value.isoformat()
        return value

    def _inserts(self, rows: list[tuple[str, Row]]) -> list[list[dict[str, Any]]]:
        """The rows' values, each as its column is given it, in runs of rows with the same fields:
        a column a row has no field for is left out of its insert, so that the column's default
        (a serial, a timestamp) applies; a field holding null is a NULL."""
        assert self._columns is not None
        runs: list[list[dict[str, Any]]] = []
        last: tuple[str, ...] | None = None
        for _, values in self._values(rows):
            keys = tuple(values)
            if keys != last:
                runs.append([])
                last = keys
            runs[-1].append(values)
        return runs

    def close(self) -> None:
        self.release()

    def release(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.dispose()


# How long a sink's open waits on the run's claim on its table (PostgreSQL), held by a writer that
# stalled inside a flush, before it says so.
CLAIM_WAIT_S = 10

# The sink's entries with a rowid for its table, names compared as SQLite compares them (`_this_table`).
_ENTRY = "sink_table = :table COLLATE NOCASE AND row_locator IS NOT NULL"


def _unmatched(rows: list[int], bounds: list[int]) -> int:
    """How many of these rows (rowids) are left when as many as can be are taken by entries, each
    taking one row at most at its bound: greedy from the highest rowid, which takes the most
    (every entry's rows are a prefix)."""
    rows, bounds = sorted(rows, reverse=True), sorted(bounds, reverse=True)
    i = free = taken = 0
    for at in rows:
        while i < len(bounds) and bounds[i] >= at:
            i, free = i + 1, free + 1
        if free:
            free, taken = free - 1, taken + 1
    return len(rows) - taken


@contextlib.contextmanager
def _any_text(conn: Any) -> Iterator[None]:
    """Reads of a SQLite table whose text may not be UTF-8 (a row another tool wrote): decoded
    with the bytes that are not kept apart (`surrogateescape`), not failing the read. Text that
    is UTF-8 reads as ever, so the digests are those the flushes recorded."""
    raw = conn.connection.driver_connection
    before = raw.text_factory
    raw.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
    try:
        yield
    finally:
        raw.text_factory = before


def _rowid(locator: str) -> int:
    """A SQLite rowid as the bookkeeping holds it: '1.0' from an ELSPETH that recorded what
    RETURNING gave for a table whose first column has REAL affinity."""
    return int(float(locator)) if "." in locator else int(locator)


def _row_digest(values: list[Any]) -> str:
    """SHA-256 of a row's values as SQLite gives them (int, float, str, bytes, None), in the
    table's column order: `repr` spells each apart (5 from 5.0 and '5', b'5' from '5')."""
    return hashlib.sha256(repr(tuple(values)).encode("utf-8", "backslashreplace")).hexdigest()


class _Results:
    """The results of inserts made one at a time, read as one."""

    def __init__(self, results: list[Any]) -> None:
        self.results = results
        self.rowcount = sum(r.rowcount for r in results)

    def scalars(self) -> list[Any]:
        return [x for r in self.results for x in r.scalars()]


def _one_by_one(conn: Any, insert: Any, n: int) -> _Results:
    """`n` rows with no field: each an insert of the table's defaults (an empty run of values
    is no statement)."""
    return _Results([conn.execute(insert) for _ in range(n)])
