"""Projection tables, maintained from the events in the same transaction that stores them.

A `Projector` is a writer hook (`landscape.recorder.TransactionHook`): it is fed every event as
it is appended and turns each into rows for the analyst tables, gathered in a `ProjectionBatch`;
at each commit the writer takes the batch and `apply` writes it in that commit's transaction
(COPY for the insert-only tables, one upsert per changed run / coalesce / batch / metric).
`rebuild` runs the very same projector over the stored log, so a rebuilt table equals the
incrementally maintained one, row for row. Which event ends a run or a token, and in which state,
is read off the statechart definitions (`RUN_STATUS_AFTER`, `TOKEN_OUTCOME_OF`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from landscape.db import Database, driver_errors
from landscape.errors import UnknownRun
from landscape.postgres import PostgresRecorder
from landscape.records import StoredEvent
from landscape.table_names import PROJECTION_TABLE_NAMES
from statecharts import events as ev
from statecharts.machines import (
    RUN_ENDED,
    RUN_STATUS_AFTER,
    TOKEN_OUTCOME_OF,
    BatchState,
    CoalesceState,
    RunState,
    TokenState,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Insert-only tables and their columns, in the order the projector produces them.
_COPY_TABLES: dict[str, tuple[str, ...]] = {
    "nodes": ("run_id", "node", "kind", "plugin", "config_hash"),
    "rows": ("run_id", "row_index", "token_id", "data_hash"),
    "tokens": ("run_id", "token_id", "row_index", "branch", "data_hash", "created_seq"),
    "token_parents": ("run_id", "token_id", "parent_id", "ordinal"),
    "node_states": (
        "run_id",
        "seq",
        "token_id",
        "node",
        "input_hash",
        "output_hash",
        "route",
        "duration_us",
    ),
    "token_outcomes": ("run_id", "token_id", "outcome", "node", "sink", "reason", "detail", "seq"),
    "batch_members": ("run_id", "batch_id", "token_id", "seq"),
    "artifacts": ("run_id", "seq", "sink", "position", "rows", "location"),
}


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class Projector:
    """The projections' writer hook for one run: feeds a batch, hands it over at each commit."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._batch = ProjectionBatch(run_id)

    def feed(self, seq: int, entity_id: str, event: ev.EventBase, at_us: int) -> None:
        self._batch.feed(seq, entity_id, event, at_us)

    def take(self) -> ProjectionBatch:
        batch, self._batch = self._batch, ProjectionBatch(self.run_id)
        return batch


class ProjectionBatch:
    """One durability point's projection rows for one run."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in _COPY_TABLES}
        self._metrics: Counter[str] = Counter()
        self._run_insert: tuple[Any, ...] | None = None
        self._run_update: dict[str, Any] = {}
        self._nodes_changed: list[tuple[str, str, str, str, str]] = []
        self._coalesces: dict[str, dict[str, Any]] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._last_seq = -1

    # -- feeding -------------------------------------------------------------------------------

    def feed(self, seq: int, entity_id: str, event: ev.EventBase, at_us: int) -> None:
        self._last_seq = seq
        kind = type(event)
        handler, outcome, status = _DISPATCH.get(kind) or _dispatch(kind)
        if handler is not None:
            handler(self, seq, entity_id, event, at_us)
        if outcome is not None:
            self._outcome(seq, entity_id, outcome, event)
        if status is not None and status != RunState.CREATED:  # `created` is the inserted row's
            self._run_update["status"] = str(status)
            if status in RUN_ENDED:
                self._run_update["ended_at"] = _at(at_us)
            elif kind is ev.RunResumed:
                self._run_update["resumes"] = self._run_update.get("resumes", 0) + 1
                self._run_update["ended_at"] = None

    def _run_created(self, seq: int, run_id: str, e: ev.RunCreated, at_us: int) -> None:
        self._run_insert = (
            run_id,
            str(RunState.CREATED),
            e.settings_path,
            e.settings_hash,
            e.source_fingerprint,
            _at(at_us),
            None,
            0,
            seq,
        )
        for n in e.nodes:
            self._rows["nodes"].append((run_id, n.name, n.kind, n.plugin, n.config_hash))

    def _run_resumed(self, seq: int, run_id: str, e: ev.RunResumed, at_us: int) -> None:
        self._run_update["source_fingerprint"] = e.source_fingerprint
        if e.settings_hash is not None:  # continued under other settings (see RunResumed)
            self._run_update["settings_hash"] = e.settings_hash
        if e.settings_path is not None:
            self._run_update["settings_path"] = e.settings_path
        for n in e.nodes or ():
            self._nodes_changed.append((run_id, n.name, n.kind, n.plugin, n.config_hash))

    def _token_created(self, seq: int, token_id: str, e: ev.TokenCreated, at_us: int) -> None:
        r = self.run_id
        self._rows["tokens"].append((r, token_id, e.row_index, e.branch, e.data_hash, seq))
        for i, parent in enumerate(e.parents):
            self._rows["token_parents"].append((r, token_id, parent, i))
        if not e.parents:
            self._rows["rows"].append((r, e.row_index, token_id, e.data_hash))
            self._metrics["rows_in"] += 1

    def _step(self, seq: int, token_id: str, e: ev.StepCompleted, at_us: int) -> None:
        self._rows["node_states"].append(
            (self.run_id, seq, token_id, e.node, e.input_hash, e.output_hash, e.route, e.duration_us)
        )
        self._metrics[f"node.{e.node}.processed"] += 1

    def _outcome(self, seq: int, token_id: str, outcome: str, e: Any) -> None:
        node = getattr(e, "node", None)
        sink = getattr(e, "sink", None)
        reason = getattr(e, "reason", None)
        detail = getattr(e, "detail", None)
        self._rows["token_outcomes"].append((self.run_id, token_id, str(outcome), node, sink, reason, detail, seq))
        self._metrics[f"outcome.{outcome}"] += 1
        if sink is not None:
            self._metrics[f"sink.{sink}.rows"] += 1
        if node is not None:
            self._metrics[f"node.{node}.{outcome}"] += 1

    def _buffered(self, seq: int, token_id: str, e: ev.TokenBuffered, at_us: int) -> None:
        self._rows["batch_members"].append((self.run_id, e.batch_id, token_id, seq))
        self._batch(e.batch_id)  # touched: its size is recounted from batch_members in apply

    def _sink_flushed(self, seq: int, _id: str, e: ev.SinkFlushed, at_us: int) -> None:
        self._rows["artifacts"].append((self.run_id, seq, e.sink, e.position, e.rows, e.location))

    def _sink_write_failed(self, seq: int, _id: str, e: ev.SinkWriteFailed, at_us: int) -> None:
        self._metrics[f"sink.{e.sink}.write_failures"] += 1

    def _coalesce(self, coalesce_id: str) -> dict[str, Any]:
        return self._coalesces.setdefault(coalesce_id, {})

    def _coalesce_opened(self, seq: int, cid: str, e: ev.CoalesceOpened, at_us: int) -> None:
        self._coalesce(cid).update(
            coalesce=e.coalesce,
            row_index=e.row_index,
            policy=e.policy,
            status=str(CoalesceState.WAITING),
            arrived="",
            missing=",".join(e.branches),
            reason=None,
        )

    def _coalesce_merged(self, seq: int, cid: str, e: ev.CoalesceMerged, at_us: int) -> None:
        self._coalesce(cid).update(
            status=str(CoalesceState.MERGED), arrived=",".join(e.arrived), missing=",".join(e.missing), reason=None
        )
        self._metrics["coalesce.merged"] += 1

    def _coalesce_failed(self, seq: int, cid: str, e: ev.CoalesceFailed, at_us: int) -> None:
        self._coalesce(cid).update(
            status=str(CoalesceState.FAILED), arrived=",".join(e.arrived), missing=",".join(e.missing), reason=e.reason
        )
        self._metrics["coalesce.failed"] += 1

    def _batch(self, batch_id: str) -> dict[str, Any]:
        return self._batches.setdefault(batch_id, {})

    def _batch_opened(self, seq: int, bid: str, e: ev.BatchOpened, at_us: int) -> None:
        self._batch(bid).update(aggregation=e.aggregation, status=str(BatchState.COLLECTING), trigger=None, reason=None)

    def _batch_flushing(self, seq: int, bid: str, e: ev.BatchFlushing, at_us: int) -> None:
        self._batch(bid).update(status=str(BatchState.FLUSHING), trigger=e.trigger)

    def _batch_completed(self, seq: int, bid: str, e: ev.BatchCompleted, at_us: int) -> None:
        self._batch(bid)["status"] = str(BatchState.COMPLETED)
        self._metrics["batch.completed"] += 1

    def _batch_failed(self, seq: int, bid: str, e: ev.BatchFailed, at_us: int) -> None:
        self._batch(bid).update(status=str(BatchState.FAILED), reason=e.reason)
        self._metrics["batch.failed"] += 1

    # -- writing -------------------------------------------------------------------------------

    def apply(self, cur: Any) -> None:
        """Write the gathered rows with `cur`, a cursor in the commit's transaction."""
        r = self.run_id
        if self._run_insert is not None:
            cur.execute(
                "INSERT INTO runs (run_id, status, settings_path, settings_hash, source_fingerprint, "
                "started_at, ended_at, resumes, last_seq) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                self._run_insert,
            )
        for table, columns in _COPY_TABLES.items():
            rows = self._rows[table]
            if rows:
                with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
                    for row in rows:
                        cp.write_row(row)
                rows.clear()
        # One statement per kind of change, whatever the number of coalesces, batches and
        # metrics a durability point touched: a statement each was a round trip each.
        opened = [(cid, c) for cid, c in self._coalesces.items() if "coalesce" in c]
        if opened:
            cur.execute(
                "INSERT INTO coalesces (run_id, coalesce_id, coalesce, row_index, status, policy, arrived, missing, "
                "reason) SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], "
                "%s::text[], %s::text[], %s::text[])",
                (r, *_columns(opened, "coalesce", "row_index", "status", "policy", "arrived", "missing", "reason")),
            )
        changed = [(cid, c) for cid, c in self._coalesces.items() if "coalesce" not in c]
        if changed:
            cur.execute(
                "UPDATE coalesces AS c SET status = u.status, arrived = u.arrived, missing = u.missing, "
                "reason = u.reason FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) "
                "AS u(id, status, arrived, missing, reason) WHERE c.run_id = %s AND c.coalesce_id = u.id",
                (*_columns(changed, "status", "arrived", "missing", "reason"), r),
            )
        opened = [(bid, b) for bid, b in self._batches.items() if "aggregation" in b]
        if opened:
            cur.execute(
                "INSERT INTO batches (run_id, batch_id, aggregation, status, trigger, size, reason) "
                "SELECT %s, id, aggregation, status, trigger, 0, reason "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) "
                "AS u(id, aggregation, status, trigger, reason)",
                (r, *_columns(opened, "aggregation", "status", "trigger", "reason")),
            )
        changed = [(bid, b) for bid, b in self._batches.items() if "status" in b and "aggregation" not in b]
        if changed:
            cur.execute(
                "UPDATE batches AS b SET status = u.status, trigger = COALESCE(u.trigger, b.trigger), "
                "reason = COALESCE(u.reason, b.reason) FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) "
                "AS u(id, status, trigger, reason) WHERE b.run_id = %s AND b.batch_id = u.id",
                (*_columns(changed, "status", "trigger", "reason"), r),
            )
        if self._batches:
            cur.execute(
                "UPDATE batches AS b SET size = (SELECT count(*) FROM batch_members m "
                "WHERE m.run_id = b.run_id AND m.batch_id = b.batch_id) "
                "WHERE b.run_id = %s AND b.batch_id = ANY(%s::text[])",
                (r, list(self._batches)),
            )
        if self._metrics:
            metrics = sorted(self._metrics.items())
            cur.execute(
                "INSERT INTO run_metrics (run_id, metric, value) SELECT %s, * FROM unnest(%s::text[], %s::float8[]) "
                "ON CONFLICT (run_id, metric) DO UPDATE SET value = run_metrics.value + EXCLUDED.value",
                (r, [k for k, _ in metrics], [float(v) for _, v in metrics]),
            )
        u = self._run_update
        sets = ["last_seq = %s"]
        params: list[Any] = [self._last_seq]
        for col in ("status", "ended_at", "source_fingerprint", "settings_hash", "settings_path"):
            if col in u:
                sets.append(f"{col} = %s")
                params.append(u[col])
        if "resumes" in u:
            sets.append("resumes = resumes + %s")
            params.append(u["resumes"])
        if self._last_seq >= 0:
            cur.execute(f"UPDATE runs SET {', '.join(sets)} WHERE run_id = %s", [*params, r])
        if self._nodes_changed:
            cur.executemany(
                "INSERT INTO nodes (run_id, node, kind, plugin, config_hash) VALUES (%s,%s,%s,%s,%s) "
                "ON CONFLICT (run_id, node) DO UPDATE SET kind = EXCLUDED.kind, plugin = EXCLUDED.plugin, "
                "config_hash = EXCLUDED.config_hash",
                self._nodes_changed,
            )
            self._nodes_changed = []
        self._metrics.clear()
        self._run_insert = None
        self._run_update = {}
        self._coalesces.clear()
        self._batches.clear()


def _columns(items: list[tuple[str, dict[str, Any]]], *keys: str) -> list[list[Any]]:
    """The ids, then each key's values (None where absent), as columns for `unnest`."""
    return [[i for i, _ in items], *([d.get(k) for _, d in items] for k in keys)]


_Feed = Callable[[ProjectionBatch, int, str, Any, int], None]
_FEED: dict[type[ev.EventBase], _Feed] = {
    ev.RunCreated: ProjectionBatch._run_created,
    ev.RunResumed: ProjectionBatch._run_resumed,
    ev.TokenCreated: ProjectionBatch._token_created,
    ev.StepCompleted: ProjectionBatch._step,
    ev.TokenBuffered: ProjectionBatch._buffered,
    ev.SinkFlushed: ProjectionBatch._sink_flushed,
    ev.SinkWriteFailed: ProjectionBatch._sink_write_failed,
    ev.CoalesceOpened: ProjectionBatch._coalesce_opened,
    ev.CoalesceMerged: ProjectionBatch._coalesce_merged,
    ev.CoalesceFailed: ProjectionBatch._coalesce_failed,
    ev.BatchOpened: ProjectionBatch._batch_opened,
    ev.BatchFlushing: ProjectionBatch._batch_flushing,
    ev.BatchCompleted: ProjectionBatch._batch_completed,
    ev.BatchFailed: ProjectionBatch._batch_failed,
}

# Per event type: its feed handler, the token outcome it records, the run status it leaves
# (looked up once per type, not three times per event).
_DISPATCH: dict[type[ev.EventBase], tuple[_Feed | None, TokenState | None, RunState | None]] = {}


def _dispatch(kind: type[ev.EventBase]) -> tuple[_Feed | None, TokenState | None, RunState | None]:
    found = _DISPATCH[kind] = (_FEED.get(kind), TOKEN_OUTCOME_OF.get(kind), RUN_STATUS_AFTER.get(kind))
    return found


def rebuild(db: Database, run_id: str, chunk: int = 10_000) -> int:
    """Drop a run's projection rows and rebuild them from its events, in one transaction.
    Returns the number of events folded; UnknownRun when the run has no events."""
    recorder = PostgresRecorder(db)
    if not recorder.run_exists(run_id):
        raise UnknownRun(f"no run {run_id} in {db.describe()} (see `elspeth runs`)")
    projector = Projector(run_id)
    n = 0
    with driver_errors(f"rebuilding the projections of run {run_id}"), db.connect() as conn:
        with conn.cursor() as cur:
            for table in PROJECTION_TABLE_NAMES:
                cur.execute(f"DELETE FROM {table} WHERE run_id = %s", (run_id,))
            for e in recorder.read_events(run_id):
                projector.feed(e.seq, e.entity_id, e.event, e.recorded_at_us)
                n += 1
                if n % chunk == 0:
                    projector.take().apply(cur)
            projector.take().apply(cur)
        conn.commit()
    return n


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
    """Every row of every projection table of a run, compared with a rebuild from its events
    (read here; `replay --check` feeds a `Comparison` from its own one pass instead). Returns
    the seq the stored projections reflect and at most `limit` differences per table."""
    with Comparison(db, run_id, limit) as comparison:
        for e in PostgresRecorder(db).read_events(run_id, upto_seq=comparison.upto):
            comparison.feed(e, e.event)
        return comparison.upto, comparison.differences()


class Comparison:
    """A run's projection tables against a rebuild from its events, fed event by event.

    The rebuild runs the same projector into temporary tables of the same shape (a session's
    temporary tables come first on the search path, so the projector's SQL writes them
    unchanged), up to the seq the stored projections say they reflect (`upto`), read in the
    same snapshot as those rows. Events after `upto` are ignored, so a reader may go on past
    it. A reader that verifies the log can feed it as it goes (an `Observer` of
    `landscape.verify`), and the log is read once for both."""

    def __init__(self, db: Database, run_id: str, limit: int = 20, chunk: int = 10_000) -> None:
        self.db, self.run_id, self.limit, self.chunk = db, run_id, limit, chunk
        self.upto = -1
        self._what = f"comparing the projections of run {run_id}"
        self._projector = Projector(run_id)
        self._fed = 0
        self._conn: Any = None
        self._cur: Any = None

    def __enter__(self) -> Comparison:
        conn = self.db.connect()
        try:
            with driver_errors(self._what):
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                row = conn.execute("SELECT last_seq FROM public.runs WHERE run_id = %s", (self.run_id,)).fetchone()
                self.upto = -1 if row is None else int(row[0])
                cur = conn.cursor()
                for table in PROJECTION_TABLE_NAMES:
                    cur.execute(
                        f"CREATE TEMP TABLE {table} (LIKE public.{table} INCLUDING DEFAULTS INCLUDING INDEXES) "
                        "ON COMMIT DROP"
                    )
        except BaseException:
            conn.close()
            raise
        self._conn, self._cur = conn, cur
        return self

    def __exit__(self, *exc: object) -> None:
        # Nothing is kept: the temporary tables go with the connection (and the transaction).
        self._conn.close()

    def feed(self, stored: StoredEvent, event: ev.EventBase) -> None:
        """The next event of the log (in seq order, from 0, every one up to `upto`)."""
        if stored.seq > self.upto:
            return
        if stored.seq != self._fed:
            raise ValueError(f"comparing run {self.run_id}: fed seq {stored.seq}, expected {self._fed}")
        self._projector.feed(stored.seq, stored.entity_id, event, stored.recorded_at_us)
        self._fed += 1
        if self._fed % self.chunk == 0:
            with driver_errors(self._what):
                self._projector.take().apply(self._cur)

    def differences(self) -> list[Difference]:
        """At most `limit` differences per table, once the log is fed (a log shorter than `upto`
        is compared as it is: the rebuild then lacks rows, and `runs.last_seq` differs)."""
        from landscape.schema import PROJECTION_TABLES  # (SQLAlchemy: only when comparing)

        found: list[Difference] = []
        with driver_errors(self._what):
            self._projector.take().apply(self._cur)
            for t in PROJECTION_TABLES:
                found += _differences(
                    self._cur, t.name, [c.name for c in t.primary_key], [c.name for c in t.c], self.run_id, self.limit
                )
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
