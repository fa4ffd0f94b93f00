"""Projection tables: rebuilding them from the events, and comparing them with such a rebuild.

What the events mean for each table is `landscape.projection_sql`, which the writer runs in each
commit's transaction; `rebuild` runs it over a run's whole log, and `Comparison` into temporary
tables, so a rebuilt table equals the incrementally maintained one row for row.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec

from landscape.commits import hold_for_transaction, holding, lock_holder
from landscape.db import Database, driver_errors, read_any_time
from landscape.errors import ConcurrentWriter, StoreError, UnknownRun
from landscape.postgres import PostgresRecorder, run_ids_in
from landscape.projection_sql import UPDATED_IN_PLACE, project
from landscape.role_names import ELSPETH_ROLES
from landscape.table_names import PROJECTION_COLUMNS, PROJECTION_TABLE_NAMES, STORE_TABLE_NAMES, is_store_table_name
from landscape.visible import one_line


def without_events(db: Database) -> list[str]:
    """Runs the projection tables hold rows of, though the store has no event of them: rows
    written without the log (the writer role maintains these tables, and could). Each table's
    runs are found by key (`run_ids_in`), not by reading all of its rows."""
    with driver_errors("reading the projection tables"), db.connect(autocommit=True) as conn:
        held = sorted({run_id for table in PROJECTION_TABLE_NAMES for run_id in run_ids_in(conn, table)})
        rows = conn.execute(
            "SELECT r FROM unnest(%s::text[]) AS r "
            "WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.run_id = r AND e.seq = 0) ORDER BY r",
            (held,),
        ).fetchall()
    return [str(r[0]) for r in rows]


def has_projection_rows(db: Database, run_id: str) -> bool:
    with driver_errors(f"reading the projection tables of run {run_id}"), db.connect(autocommit=True) as conn:
        return any(
            conn.execute(f"SELECT 1 FROM {table} WHERE run_id = %s LIMIT 1", (run_id,)).fetchone()
            for table in PROJECTION_TABLE_NAMES
        )


def rebuild(db: Database, run_id: str) -> int:
    """Drop a run's projection rows and rebuild them from its events, in one transaction.
    Returns the number of events projected: 0 for a run with no events whose projection rows
    were removed (they came from no log); UnknownRun when it has neither."""
    recorder = PostgresRecorder(db)
    if not recorder.run_exists(run_id) and not has_projection_rows(db, run_id):
        raise UnknownRun(f"no run {one_line(run_id)} in {db.describe()} (see `elspeth runs`)")
    with driver_errors(f"rebuilding the projections of run {run_id}"), db.connect() as conn:
        with conn.cursor() as cur:
            # The run's locks, both, for this transaction: a live writer's commits also write
            # these rows, and none may start while they are rebuilt. The sender's too: a run
            # whose engine lost its own lock's connection goes on committing through it.
            if not hold_for_transaction(cur, run_id, "rebuilding projections"):
                held = holding(lock_holder(cur, run_id))
                raise ConcurrentWriter(f"run {run_id} is {held}: rebuild it once that ends")
            cur.execute(_WORK_MEM)
            (last,) = cur.execute("SELECT max(seq) FROM events WHERE run_id = %s", (run_id,)).fetchone() or (None,)
            for table in PROJECTION_TABLE_NAMES:
                cur.execute(f"DELETE FROM {table} WHERE run_id = %s", (run_id,))
            if last is not None:
                _project_all(cur, run_id, int(last), "public")
        conn.commit()
    return 0 if last is None else int(last) + 1


# Events per statement of a rebuild: what the server holds at once stays bounded on a long log.
REBUILD_CHUNK = 200_000
# Memory per sort, hash or stored CTE for a rebuild's statements and a comparison's joins: enough
# for a chunk's events (about 35 MB as text) to stay in memory rather than be written to temporary
# files and read back by each clause that scans them, and for the largest table's join to be one
# batch. The default 4 MB made a comparison of 1,044,437 events 0.45 s slower (4.4 s -> 3.9 s).
_WORK_MEM = "SET LOCAL work_mem = '64MB'"


_DEFAULT_PATH = '"$user",public'


def reading_hazards(conn: Any, path: str = _DEFAULT_PATH) -> list[str]:
    """What would show the store's readers other rows than a comparison reads, each said in a
    line: a row-level security policy on a table of the store (rows an analyst does not see, or
    sees that nobody else does), a relation named like one of its tables outside `public` (a
    role's own schema, `"$user"`, comes first on the default search path: an analyst's
    unqualified query would read it), and a search path set for ELSPETH's roles or for every
    role (which can put such a schema, or another's functions, first). The comparison reads
    `public`'s tables, qualified, as itself: it would agree while the others read a forgery.
    Only a superuser or the tables' owner makes any of these. Also what could make the comparison
    itself lie (a hostile review's findings): an event trigger, a function or type of another
    schema than pg_catalog that a store table's columns, defaults, indexes or constraints use (it
    runs in the check's own session, or turns the rebuild's values into the forged ones), a store
    table that is not a table (a view can show each reader other rows), a nondeterministic
    collation, and the session's own search path (`path`, as it was before the check set its
    own) if it is not the default. Read with the check's search path (pg_catalog, pg_temp)
    already set: an operator or function of another schema cannot answer these queries."""
    found: list[str] = []
    if path.replace(" ", "") != _DEFAULT_PATH:
        found.append(
            f"this session's search path is {path!r} (a setting of the server, the database or the role): "
            "unqualified names may not be public's tables"
        )
    policed = conn.execute(
        "SELECT c.relname, c.relrowsecurity OR c.relforcerowsecurity, "
        "(SELECT count(*) FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid) "
        "FROM pg_catalog.pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') "
        "AND (c.relrowsecurity OR c.relforcerowsecurity "
        "OR EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid)) ORDER BY 1"
    ).fetchall()
    for name, enabled, policies in policed:
        if is_store_table_name(name):
            found.append(
                f"the table {name} has row-level security {'on' if enabled else 'off'} and {policies} "
                "polic(ies): readers of it may be shown other rows than those compared"
            )
    # (In every schema but public, pg_catalog and information_schema too: a superuser may make a
    # table there, and pg_catalog is searched first. Not sessions' temporary schemas: another
    # check's copies are there.)
    shadows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname <> 'public' "
        "AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%' ORDER BY 1, 2"
    ).fetchall()
    for schema, name in shadows:
        if is_store_table_name(name):
            found.append(
                f"{schema}.{name} is named like a table of the store: a reader whose search path puts "
                f"{schema} first reads it instead of public.{name}"
            )
    paths = conn.execute(
        "SELECT coalesce(r.rolname, ''), s.setdatabase = 0, cfg FROM pg_catalog.pg_db_role_setting s "
        "LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole, unnest(s.setconfig) AS cfg "
        "WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())) "
        "AND (s.setrole = 0 OR r.rolname = ANY(%s)) AND lower(cfg) LIKE 'search\\_path=%%' ORDER BY 1, 2",
        (list(ELSPETH_ROLES),),
    ).fetchall()
    for role, every_database, setting in paths:
        who = f"the role {role}" if role else "every role"
        where = "in every database" if every_database else "in this database"
        found.append(f"{who} has {setting!r} set {where}: its unqualified names may not be public's tables")
    for name, kind in conn.execute(
        "SELECT c.relname, c.relkind FROM pg_catalog.pg_class c WHERE c.relnamespace = 'public'::regnamespace "
        "AND c.relkind NOT IN ('r', 'p', 'i', 'I', 'S', 't', 'c') ORDER BY 1"
    ).fetchall():
        if is_store_table_name(name):
            found.append(f"public.{name} is not a table (relkind {kind}): it can show each reader other rows")
    for table, what in conn.execute(_FOREIGN_PARTS, (list(STORE_TABLE_NAMES),)).fetchall():
        found.append(
            f"the table {table} uses {what}, which is not PostgreSQL's own: it can change what is read or rebuilt"
        )
    # An event trigger runs on the comparison's own statements: one that fires on its `CREATE TEMP
    # TABLE` can put a trigger on the copy that makes each rebuilt row the stored one (a hostile
    # review's forgery, passed as agreeing). Any but a disabled one ('D'): which of the others fire
    # depends on `session_replication_role`, which a superuser can set for the auditor's role.
    for name, event in conn.execute(
        "SELECT evtname, evtevent FROM pg_catalog.pg_event_trigger WHERE evtenabled <> 'D' ORDER BY 1"
    ).fetchall():
        found.append(
            f"the event trigger {name} (on {event}) runs on a check's own statements and can change its rebuild"
        )
    # A nondeterministic collation makes texts that differ equal ('Failed', 'failed'): the
    # comparison's copies, and its joins, take the column's.
    for table, column, collation in conn.execute(
        "SELECT c.relname, a.attname, co.collname FROM pg_catalog.pg_attribute a "
        "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation "
        "WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped "
        "AND NOT co.collisdeterministic ORDER BY 1, 2"
    ).fetchall():
        if is_store_table_name(table):
            found.append(
                f"{table}.{column} has the nondeterministic collation {collation}: texts that differ compare equal"
            )
    return found


# What a store table (or a partition of one), its columns, defaults, indexes and constraints
# depend on outside pg_catalog: a type (an enum whose cast forges), a function (run as the rebuild
# writes a copy made `LIKE` it, in the check's session), an operator, a collation.
_FOREIGN_PARTS = """
WITH store AS (
  SELECT c.oid, c.relname FROM pg_catalog.pg_class c
  WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY(%s)
), tables AS (
  SELECT oid, relname FROM store
  UNION SELECT i.inhrelid, s.relname FROM pg_catalog.pg_inherits i JOIN store s ON s.oid = i.inhparent
), parts AS (
  SELECT 'pg_catalog.pg_class'::pg_catalog.regclass AS classid, t.oid AS objid, t.relname FROM tables t
  UNION SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, x.indexrelid, t.relname
    FROM pg_catalog.pg_index x JOIN tables t ON t.oid = x.indrelid
  UNION SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass, d.oid, t.relname
    FROM pg_catalog.pg_attrdef d JOIN tables t ON t.oid = d.adrelid
  UNION SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, k.oid, t.relname
    FROM pg_catalog.pg_constraint k JOIN tables t ON t.oid = k.conrelid
)
SELECT DISTINCT p.relname, o.type || ' ' || o.identity
FROM parts p
JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) p.classid AND d.objid OPERATOR(pg_catalog.=) p.objid
CROSS JOIN LATERAL pg_catalog.pg_identify_object(d.refclassid, d.refobjid, 0) o
WHERE d.refclassid OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog.pg_proc', 'pg_catalog.pg_type',
  'pg_catalog.pg_operator', 'pg_catalog.pg_collation', 'pg_catalog.pg_opclass']::pg_catalog.regclass[])
  AND o.schema IS DISTINCT FROM 'pg_catalog'
ORDER BY 1, 2
"""


def altered_copies(conn: Any) -> list[str]:
    """Triggers, rules and policies on the session's own temporary tables (the comparison's
    copies, which it made with none): whatever put one there can change the rebuild it holds."""
    rows = conn.execute(
        "SELECT c.relname, 'trigger ' || t.tgname FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c "
        "ON c.oid = t.tgrelid WHERE c.relnamespace = pg_catalog.pg_my_temp_schema() "
        "UNION ALL SELECT c.relname, 'rule ' || r.rulename FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c "
        "ON c.oid = r.ev_class WHERE c.relnamespace = pg_catalog.pg_my_temp_schema() "
        "UNION ALL SELECT c.relname, 'policy ' || p.polname FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c "
        "ON c.oid = p.polrelid WHERE c.relnamespace = pg_catalog.pg_my_temp_schema() ORDER BY 1, 2"
    ).fetchall()
    return [f"the check's copy of {table} was given a {what} when it was made" for table, what in rows]


def _project_all(cur: Any, run_id: str, last: int, into: str) -> None:
    for lo in range(0, last + 1, REBUILD_CHUNK):
        project(cur, run_id, lo, min(lo + REBUILD_CHUNK - 1, last), into=into)


class Difference(msgspec.Struct, frozen=True, kw_only=True):
    """One projection row that is not what the events say: `column` is None when the whole row
    is missing from the table (`stored` None) or is there without the events implying it
    (`rebuilt` None)."""

    table: str
    key: dict[str, Any]
    column: str | None
    stored: Any
    rebuilt: Any

    def describe(self) -> str:
        key = ", ".join(f"{k}={v!r}" for k, v in self.key.items() if k != "run_id")
        if self.column is None:
            what = "missing from the table" if self.stored is None else "in the table, not in the events"
            return f"{self.table} ({key}): row {what}"
        return f"{self.table} ({key}): {self.column} is {self.stored!r}, the events say {self.rebuilt!r}"


def compare(db: Database, run_id: str, limit: int = 20) -> tuple[int, list[Difference]]:
    """Every row of every projection table of a run, compared with a rebuild from its events.
    Returns the seq the stored projections reflect and at most `limit` differences per table."""
    with Comparison(db, run_id, limit) as comparison:
        found = comparison.differences()
        if comparison.hazards:  # (not compared: no answer, rather than none found)
            raise StoreError(f"run {run_id}: the projections were not compared: {'; '.join(comparison.hazards)}")
        return comparison.upto, found


_SEARCH_PATH = "SET LOCAL search_path = pg_catalog, pg_temp"


class Comparison:
    """A run's projection tables against a rebuild from its events.

    The rebuild is `landscape.projection_sql` run by the server into temporary tables of the
    same shape (a session's temporary tables come first on the search path, so the same SQL
    writes them), over the run's events up to the last one (`upto`), read in the same snapshot
    as those rows. A reader may go on past `upto` (a live run). `differences` may run while the
    caller reads the log: it waits on the server, which does the work on its own core."""

    def __init__(self, db: Database, run_id: str, limit: int = 20) -> None:
        self.db, self.run_id, self.limit = db, run_id, limit
        self.upto = -1
        self.hazards: list[str] = []
        self._what = f"comparing the projections of run {run_id}"
        self._conn: Any = None

    def __enter__(self) -> Comparison:
        conn = self.db.connect()
        try:
            with driver_errors(self._what):
                read_any_time(conn)  # a forged time is a difference to name, not a failed read
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                (path,) = conn.execute("SELECT pg_catalog.current_setting('search_path')").fetchone() or ("",)
                conn.execute(_SEARCH_PATH)  # (before anything else is asked: see `reading_hazards`)
                conn.execute(_WORK_MEM)
                # A row-level security policy that applies to these reads is an error, not a
                # filter: what is compared is every row (`reading_hazards` says why one is there).
                conn.execute("SET LOCAL row_security = off")
                self.hazards = reading_hazards(conn, path)
                # The log's end, not the `runs` row's `last_seq`: that row is one of the rows being
                # checked, and a run whose rows were all deleted would otherwise be compared as
                # an empty log (nothing rebuilt, nothing stored: "agree"). Events and projection
                # rows are committed together, so in one snapshot the two are the same seq.
                row = conn.execute("SELECT max(seq) FROM public.events WHERE run_id = %s", (self.run_id,)).fetchone()
                self.upto = -1 if row is None or row[0] is None else int(row[0])
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self

    def __exit__(self, *exc: object) -> None:
        # Nothing is kept: the temporary tables go with the connection (and the transaction).
        self._conn.close()

    def cancel(self) -> None:
        """Stop the server's work on `differences` (from another thread): it then raises."""
        with contextlib.suppress(Exception):  # best effort: the connection may be gone already
            self._conn.cancel_safe()

    def differences(self) -> list[Difference]:
        """At most `limit` differences per table (a log with seqs missing is rebuilt as it is:
        the verification that runs meanwhile names the gap)."""
        found: list[Difference] = []
        if self.hazards:  # (what is read here is not what others read: said, not compared)
            return found
        with driver_errors(self._what), self._conn.cursor() as cur:
            for table in PROJECTION_TABLE_NAMES:
                # (A copy without its key's index can hold a key twice; only a log the fold finds
                # illegal, which the verification that runs meanwhile names, makes one.)
                indexes = "INCLUDING INDEXES" if table in UPDATED_IN_PLACE else ""
                cur.execute(
                    f"CREATE TEMP TABLE {table} (LIKE public.{table} INCLUDING DEFAULTS {indexes}) ON COMMIT DROP"
                )
            self.hazards = altered_copies(cur)
            if self.hazards:
                return found
            if self.upto >= 0:
                _project_all(cur, self.run_id, self.upto, "pg_temp")
            cur.execute(_SEARCH_PATH)  # (the comparison's operators are pg_catalog's, whatever ran before)
            for table, (key, columns) in PROJECTION_COLUMNS.items():
                found += _differences(cur, table, list(key), list(columns), self.run_id, self.limit)
        return found


def _differences(cur: Any, table: str, key: list[str], columns: list[str], run_id: str, limit: int) -> list[Difference]:
    on = " AND ".join(f"s.{k} = r.{k}" for k in key)
    values = [c for c in columns if c not in key]
    differs = " OR ".join(f"s.{c} IS DISTINCT FROM r.{c}" for c in values) or "false"
    select = ", ".join([*(f"coalesce(s.{k}, r.{k})" for k in key), "s.run_id IS NULL", "r.run_id IS NULL"]
                       + [f"s.{c}" for c in values] + [f"r.{c}" for c in values])  # fmt: skip
    rows = cur.execute(
        f"SELECT {select} FROM (SELECT * FROM public.{table} WHERE run_id = %s) s "
        f"FULL JOIN pg_temp.{table} r ON {on} WHERE s.run_id IS NULL OR r.run_id IS NULL OR {differs} "
        f"ORDER BY {', '.join(str(i + 1) for i in range(len(key)))} LIMIT %s",
        (run_id, limit),
    ).fetchall()
    out = []
    for r in rows:
        k = dict(zip(key, r[: len(key)], strict=True))
        not_stored, not_rebuilt = r[len(key)], r[len(key) + 1]
        stored = r[len(key) + 2 : len(key) + 2 + len(values)]
        rebuilt = r[len(key) + 2 + len(values) :]
        if not_stored or not_rebuilt:
            out.append(Difference(table=table, key=k, column=None, stored=None if not_stored else "row",
                                  rebuilt=None if not_rebuilt else "row"))  # fmt: skip
            continue
        for c, a, b in zip(values, stored, rebuilt, strict=True):
            if a != b:
                out.append(Difference(table=table, key=k, column=c, stored=a, rebuilt=b))
    return out
