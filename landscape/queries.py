"""Questions people ask of the audit store, as functions returning msgspec Structs.

The CLI (and later a web explorer) reads through these; none of them writes. They read the
projection tables, which commit with the events they derive from; `replay --check` is what proves
those tables still agree with the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from landscape.db import Connection, Database, driver_errors, read_as_written
from landscape.errors import UnknownRun
from landscape.visible import one_line
from statecharts import events as ev
from statecharts.machines import TOKEN_OUTCOME_OF, RunState
from statecharts.upcast import upcast


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    status: str
    started_at: datetime
    ended_at: datetime | None
    resumes: int
    rows_in: int
    settings_path: str


class NodeSummary(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    kind: str
    plugin: str
    config_hash: str
    processed: int  # steps completed at this node
    outcomes: dict[str, int]  # terminal outcome recorded at this node -> tokens
    total_us: int  # time spent in this node's steps
    # A coalesce's instances by state (`merged`, `failed`, `waiting`), an aggregation's batches by
    # state with the rows in them (`completed`, `completed_rows`, …); nothing for other kinds.
    groups: dict[str, int] = {}
    late_arrivals: int = 0  # of `outcomes['failed']` at a coalesce: branches after it was decided


class Artifact(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    sink: str
    position: int
    rows: int
    location: str
    sha256: str | None = None  # of the file's bytes up to `position`, as the run recorded it


class RunDetail(msgspec.Struct, frozen=True, kw_only=True):
    run: RunSummary
    settings_hash: str
    source_fingerprint: str
    last_seq: int
    nodes: list[NodeSummary]
    outcomes: dict[str, int]  # terminal outcome -> tokens
    pending: int  # tokens that have not ended (none in a completed run)
    sink_rows: dict[str, int]  # sink -> rows made durable there
    metrics: dict[str, float]
    artifacts: list[Artifact]
    seconds: float | None  # wall time from start to end (None while running)


class Step(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    node: str
    route: str | None
    input_hash: str
    output_hash: str
    duration_us: int


class TokenLineage(msgspec.Struct, frozen=True, kw_only=True):
    token_id: str
    row_index: int
    branch: str | None
    data_hash: str
    created_seq: int
    parents: list[str]
    steps: list[Step]
    outcome: str | None  # None: not yet ended
    node: str | None
    sink: str | None
    reason: str | None
    detail: str | None
    outcome_seq: int | None


class Lineage(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    row_index: int
    tokens: list[TokenLineage]  # in creation order


class MetricsAt(msgspec.Struct, frozen=True, kw_only=True):
    last_seq: int  # the seq the projections reflect
    metrics: dict[str, float]


_OUTCOMES = frozenset(str(s) for s in TOKEN_OUTCOME_OF.values())
_RUN_COLUMNS = "r.run_id, r.status, r.started_at, r.ended_at, r.resumes, coalesce(m.value, 0)::bigint, r.settings_path"
_RUN_FROM = "runs r LEFT JOIN run_metrics m ON m.run_id = r.run_id AND m.metric = 'rows_in'"


def _summary(r: Sequence[Any]) -> RunSummary:
    return RunSummary(
        run_id=r[0], status=r[1], started_at=r[2], ended_at=r[3], resumes=r[4], rows_in=r[5], settings_path=r[6]
    )


def list_runs(
    db: Database,
    *,
    status: Sequence[str] = (),
    since: datetime | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[RunSummary]:
    """Runs, newest first; `status` and `since` (started at or after) filter, `limit`/`offset` page."""
    where: list[str] = ["true"]
    params: list[Any] = []
    if status:
        where.append("r.status = ANY(%s)")
        params.append(list(status))
    if since is not None:
        where.append("r.started_at >= %s")
        params.append(since)
    sql = (
        f"SELECT {_RUN_COLUMNS} FROM {_RUN_FROM} WHERE {' AND '.join(where)} "
        "ORDER BY r.started_at DESC, r.run_id DESC LIMIT %s OFFSET %s"
    )
    with driver_errors("listing runs"), db.connect() as conn:
        return [_summary(r) for r in conn.execute(sql, [*params, limit, offset]).fetchall()]


def run_summary(db: Database, run_id: str) -> RunSummary | None:
    with driver_errors(f"reading run {run_id}"), db.connect() as conn:
        row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM {_RUN_FROM} WHERE r.run_id = %s", (run_id,)).fetchone()
    return None if row is None else _summary(row)


def metrics_at(db: Database, run_id: str) -> MetricsAt | None:
    """The run's metrics and the seq they reflect, read in one statement: they are committed
    together, so a live run's later events cannot make them look inconsistent."""
    with driver_errors(f"reading the metrics of run {run_id}"), db.connect() as conn:
        rows = conn.execute(
            "SELECT r.last_seq, m.metric, m.value FROM runs r "
            "LEFT JOIN run_metrics m ON m.run_id = r.run_id WHERE r.run_id = %s",
            (run_id,),
        ).fetchall()
    if not rows:
        return None
    return MetricsAt(last_seq=rows[0][0], metrics={m: v for _s, m, v in rows if m is not None})


def run_detail(db: Database, run_id: str) -> RunDetail:
    """Everything `elspeth show` prints about one run. UnknownRun when there is none."""
    with driver_errors(f"reading run {run_id}"), db.connect() as conn:
        row = conn.execute(
            f"SELECT {_RUN_COLUMNS}, r.settings_hash, r.source_fingerprint, r.last_seq FROM {_RUN_FROM} "
            "WHERE r.run_id = %s",
            (run_id,),
        ).fetchone()
        if row is None:
            raise UnknownRun(f"no run {one_line(run_id)} in {db.describe()} (see `elspeth runs`)")
        metrics = _metrics(conn, run_id)
        timings = {
            n: int(us)
            for n, us in conn.execute(
                "SELECT node, sum(duration_us) FROM node_states WHERE run_id = %s GROUP BY node", (run_id,)
            )
        }
        nodes = conn.execute(
            "SELECT node, kind, plugin, config_hash FROM nodes WHERE run_id = %s ORDER BY node", (run_id,)
        ).fetchall()
        # A coalesce's or an aggregation's steps are not what it did: how many rows it merged, or
        # batched, are its instances (an investigator read "join: 0 steps, failed 9", late arrivals).
        groups: dict[str, dict[str, int]] = {}
        for node, status, n in conn.execute(
            "SELECT coalesce, status, count(*) FROM coalesces WHERE run_id = %s GROUP BY 1, 2", (run_id,)
        ):
            groups.setdefault(node, {})[status] = int(n)
        for node, status, n, size in conn.execute(
            "SELECT aggregation, status, count(*), sum(size) FROM batches WHERE run_id = %s GROUP BY 1, 2", (run_id,)
        ):
            groups.setdefault(node, {}).update({status: int(n), f"{status}_rows": int(size)})
        late = dict(
            conn.execute(
                "SELECT node, count(*) FROM token_outcomes WHERE run_id = %s AND outcome = 'failed' "
                "AND reason = 'late_arrival' GROUP BY node",
                (run_id,),
            ).fetchall()
        )
        # The outcomes count only tokens that ended: of a stopped run, those in an open batch, at
        # a coalesce or on their way are counted here (`tokens: none` was said of a run holding
        # some). A completed run's every token ended: its completion says so.
        pending = 0
        if row[1] != str(RunState.COMPLETED):
            without_nested_loops(conn)
            found = conn.execute(
                "SELECT count(*) FROM tokens t WHERE t.run_id = %(run)s AND NOT EXISTS"
                " (SELECT 1 FROM token_outcomes o WHERE o.run_id = %(run)s AND o.token_id = t.token_id)",
                {"run": run_id},
            ).fetchone()
            pending = int(found[0]) if found else 0
        artifacts = _artifacts(conn, run_id)
    summary = _summary(row)
    outcomes = _prefixed(metrics, "outcome.")
    node_list = []
    for name, kind, plugin, config_hash in nodes:
        per = _prefixed(metrics, f"node.{name}.")
        node_list.append(
            NodeSummary(
                node=name,
                kind=kind,
                plugin=plugin,
                config_hash=config_hash,
                processed=per.get("processed", 0),
                outcomes={k: v for k, v in per.items() if k in _OUTCOMES},
                total_us=timings.get(name, 0),
                groups=dict(sorted(groups.get(name, {}).items())),
                late_arrivals=int(late.get(name, 0)),
            )
        )
    sink_rows = {k.split(".", 1)[1][: -len(".rows")]: int(v) for k, v in metrics.items() if _is_sink_rows(k)}
    seconds = (summary.ended_at - summary.started_at).total_seconds() if summary.ended_at else None
    return RunDetail(
        run=summary,
        settings_hash=row[7],
        source_fingerprint=row[8],
        last_seq=row[9],
        nodes=node_list,
        outcomes=outcomes,
        pending=pending,
        sink_rows=sink_rows,
        metrics=metrics,
        artifacts=artifacts,
        seconds=seconds,
    )


def _artifacts(conn: Any, run_id: str) -> list[Artifact]:
    return [
        Artifact(seq=a[0], sink=a[1], position=a[2], rows=a[3], location=a[4], sha256=a[5])
        for a in conn.execute(
            "SELECT seq, sink, position, rows, location, sha256 FROM artifacts WHERE run_id = %s ORDER BY seq",
            (run_id,),
        )
    ]


def _prefixed(metrics: dict[str, float], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: int(v) for k, v in sorted(metrics.items()) if k.startswith(prefix)}


def _is_sink_rows(metric: str) -> bool:
    return metric.startswith("sink.") and metric.endswith(".rows")


def lineage(db: Database, run_id: str, *, row_index: int | None = None, token_id: str | None = None) -> Lineage:
    """Every token of one source row (found by its index or by one of its tokens), with its steps
    and outcome. UnknownRun when the run or the row is not there."""
    with driver_errors(f"reading the lineage of run {run_id}"), db.connect() as conn:
        if token_id is not None:
            found = conn.execute(
                "SELECT row_index FROM tokens WHERE run_id = %s AND token_id = %s", (run_id, token_id)
            ).fetchone()
            if found is None:
                raise UnknownRun(_missing(conn, run_id, db, f"token {one_line(token_id)}"))
            row_index = found[0]
        tokens = conn.execute(
            "SELECT t.token_id, t.row_index, t.branch, t.data_hash, t.created_seq, "
            "o.outcome, o.node, o.sink, o.reason, o.detail, o.seq "
            "FROM tokens t LEFT JOIN token_outcomes o USING (run_id, token_id) "
            "WHERE t.run_id = %s AND t.row_index = %s ORDER BY t.created_seq",
            (run_id, row_index),
        ).fetchall()
        if not tokens:
            raise UnknownRun(_missing(conn, run_id, db, f"row {row_index}"))
        ids = [t[0] for t in tokens]
        steps: dict[str, list[Step]] = {}
        for s in conn.execute(
            "SELECT token_id, seq, node, route, input_hash, output_hash, duration_us FROM node_states "
            "WHERE run_id = %s AND token_id = ANY(%s) ORDER BY seq",
            (run_id, ids),
        ):
            steps.setdefault(s[0], []).append(
                Step(seq=s[1], node=s[2], route=s[3], input_hash=s[4], output_hash=s[5], duration_us=s[6])
            )
        parents: dict[str, list[str]] = {}
        for tid, parent in conn.execute(
            "SELECT token_id, parent_id FROM token_parents WHERE run_id = %s AND token_id = ANY(%s) "
            "ORDER BY token_id, ordinal",
            (run_id, ids),
        ):
            parents.setdefault(tid, []).append(parent)
    assert row_index is not None
    return Lineage(
        run_id=run_id,
        row_index=row_index,
        tokens=[
            TokenLineage(
                token_id=t[0],
                row_index=t[1],
                branch=t[2],
                data_hash=t[3],
                created_seq=t[4],
                parents=parents.get(t[0], []),
                steps=steps.get(t[0], []),
                outcome=t[5],
                node=t[6],
                sink=t[7],
                reason=t[8],
                detail=t[9],
                outcome_seq=t[10],
            )
            for t in tokens
        ],
    )


def _missing(conn: Connection, run_id: str, db: Database, what: str) -> str:
    if conn.execute("SELECT 1 FROM runs WHERE run_id = %s", (run_id,)).fetchone() is None:
        return f"no run {one_line(run_id)} in {db.describe()} (see `elspeth runs`)"
    return f"run {one_line(run_id)} has no {what}"


class RowCounts(msgspec.Struct, frozen=True, kw_only=True):
    """A run's source rows, as an operator counts them (tokens are counted in RunDetail)."""

    rows_in: int  # source records read (valid and quarantined)
    written: dict[str, int]  # sink -> rows made durable there
    # (each row in one of these three at most: see ROWS_BY_OUTCOME)
    quarantined: int  # source rows a quarantined token holds data of
    failed: int  # source rows a failed token holds data of
    diverted: int  # source rows a token that a row error sent to on_error holds data of
    discarded: int  # of the quarantined and diverted rows, those a token of which went to `discard`
    unfinished: int  # source rows a token that has not ended holds data of (none in a completed run)


# A token holds the data of its row and, through its parents, of every row its ancestors held: a
# batch's output, of the batch's rows. When that output failed, each of them was lost in it, not
# only the row its token is numbered by (`tokens.row_index`, one of them): the count followed the
# index, and three of a failed batch's four rows were counted nowhere (an investigator's review).
#
# A branch that reaches its coalesce after the coalesce was decided fails with reason
# `late_arrival` (ARCHITECTURE: the coalesce machine), whether it merged or failed. Under `first`
# or `quorum` that is how the policy works, and a merged row was written: it is not a failed row
# for that. A row whose coalesce failed is a failed row, whichever of its tokens failed with it:
# when the lost branch came first, nothing was held to fail with the coalesce, and only late
# arrivals followed (a hostile review found the count depending on the order of `fork_to`).
#
# A row is counted under one outcome, the worst its tokens reached: failed, then diverted, then
# quarantined. A row's fork branch diverted by a row error makes its coalesce fail: that row was
# counted both diverted and failed (a hostile review), and the three added up to more rows than
# there were. Failed wins: the row as a whole did not get through, which is what the count is
# read for; the diverted branch is still among the rows written to its sink and the tokens'
# outcomes. (Quarantine happens at the source, to a row's only token: it meets no other outcome.)
#
# The statement also gives the first failed row (`FirstFailure`), from the same walk: a failed
# token's seq, node and reason are carried up to every row it holds data of (a line of its own,
# `first failed`: row index, node, reason).
#
# `discarded`: of the rows counted quarantined or diverted, those a token of which went to
# `discard` (no sink): recorded, written to no sink (the source's default for a row that does not
# fit its schema). Another of the row's tokens, a fork's branch, may have been written: it is not
# "rows written nowhere".
ROWS_BY_OUTCOME = (
    "WITH RECURSIVE ended(outcome, discarded, token_id, seq, node, reason) AS ("
    " SELECT o.outcome, o.sink IS NULL AND o.outcome <> 'failed', o.token_id,"
    " CASE WHEN o.outcome = 'failed' THEN o.seq END, CASE WHEN o.outcome = 'failed' THEN o.node END,"
    " CASE WHEN o.outcome = 'failed' THEN o.reason END FROM token_outcomes o"
    " WHERE o.run_id = %(run)s AND o.outcome IN ('quarantined', 'failed', 'diverted')"
    " AND (o.outcome <> 'failed' OR o.reason IS DISTINCT FROM 'late_arrival')"
    " UNION SELECT e.outcome, e.discarded, p.parent_id, e.seq, e.node, e.reason FROM ended e"
    " JOIN token_parents p ON p.run_id = %(run)s AND p.token_id = e.token_id"
    "), rows AS ("
    " SELECT e.outcome, e.discarded, t.row_index, 0 AS k, e.seq, e.node, e.reason FROM ended e"
    " JOIN tokens t ON t.run_id = %(run)s AND t.token_id = e.token_id"
    " UNION ALL SELECT 'failed', false, c.row_index, 1, 0, c.coalesce, c.reason FROM coalesces c"
    " WHERE c.run_id = %(run)s AND c.status = 'failed'"
    "), final AS ("  # each row once, under its worst outcome
    " SELECT row_index, min(CASE outcome WHEN 'failed' THEN 1 WHEN 'diverted' THEN 2 ELSE 3 END) AS rank,"
    " bool_or(discarded) AS discarded FROM rows GROUP BY row_index"
    ") SELECT (ARRAY['failed', 'diverted', 'quarantined'])[rank], count(*), NULL, NULL FROM final GROUP BY rank"
    " UNION ALL SELECT 'discarded', count(*), NULL, NULL FROM final WHERE discarded AND rank > 1"
    " UNION ALL (SELECT 'first failed', row_index, node, reason FROM rows WHERE outcome = 'failed'"
    " ORDER BY row_index, k, seq LIMIT 1)"
)

# Rows a token that has not ended holds data of: of a run that crashed, failed or was abandoned,
# the rows in an open batch, waiting at a coalesce, or in flight. (Not asked of a completed run,
# whose every token ended: a run's completion says so.)
ROWS_UNFINISHED = (
    "WITH RECURSIVE open(token_id) AS ("
    " SELECT t.token_id FROM tokens t WHERE t.run_id = %(run)s"
    " AND NOT EXISTS (SELECT 1 FROM token_outcomes o WHERE o.run_id = %(run)s AND o.token_id = t.token_id)"
    " UNION SELECT p.parent_id FROM open JOIN token_parents p ON p.run_id = %(run)s AND p.token_id = open.token_id"
    ") SELECT count(DISTINCT t.row_index) FROM open JOIN tokens t ON t.run_id = %(run)s AND t.token_id = open.token_id"
)


def without_nested_loops(conn: Any) -> None:
    """For the rest of this transaction, join by hashing or merging, never row by row.

    A run's partitions are often not analysed yet when it is asked about (the summary at the
    end of `elspeth run`, before autovacuum has come by). The planner then guesses a handful of
    rows per run and may pick a nested loop with a sequential scan inside: quadratic in the run's
    tokens (a 200,000-row run's summary ran for over nine minutes). A hash or merge join is
    linear whatever the guess."""
    conn.execute("SET LOCAL enable_nestloop = off")


def row_counts(db: Database, run_id: str) -> RowCounts:
    """How many source rows ended how. A row whose fork branches failed twice counts once."""
    with driver_errors(f"counting the rows of run {run_id}"), db.connect() as conn:
        return _row_counts(conn, run_id, _metrics(conn, run_id))[0]


def _metrics(conn: Any, run_id: str) -> dict[str, float]:
    return {m: v for m, v in conn.execute("SELECT metric, value FROM run_metrics WHERE run_id = %s", (run_id,))}


# The first failed row of a run, by row number, as `ROWS_BY_OUTCOME` counts failed rows: a row a
# failed token holds data of, but for a late arrival (its row merged and went on, or its
# coalesce's failure says it), or whose coalesce failed. Its row's index, the node and the
# reason: a token's failure before its coalesce's, as the cause, the first by seq. (Not the first
# to fail in time: a coalesce's row in the projection holds no seq. By seq, a review found the
# summary naming a row that had merged, its third branch late; then a later row before a
# coalesce that had failed first, its branch lost.)
FirstFailure = tuple[int, str | None, str | None]


def _row_counts(conn: Any, run_id: str, metrics: dict[str, float]) -> tuple[RowCounts, FirstFailure | None]:
    """The row counts, and the first failed row (None when none failed)."""
    without_nested_loops(conn)
    by_outcome: dict[str, int] = {}
    first: FirstFailure | None = None
    for outcome, n, node, reason in conn.execute(ROWS_BY_OUTCOME, {"run": run_id}):
        if outcome == "first failed":
            first = (int(n), node, reason)
        else:
            by_outcome[outcome] = int(n)
    status = conn.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,)).fetchone()
    unfinished = 0
    if status is not None and status[0] != str(RunState.COMPLETED):
        found = conn.execute(ROWS_UNFINISHED, {"run": run_id}).fetchone()
        unfinished = int(found[0]) if found else 0
    written = {k.split(".", 1)[1][: -len(".rows")]: int(v) for k, v in sorted(metrics.items()) if _is_sink_rows(k)}
    counts = RowCounts(
        rows_in=int(metrics.get("rows_in", 0)),
        written=written,
        quarantined=by_outcome.get("quarantined", 0),
        failed=by_outcome.get("failed", 0),
        diverted=by_outcome.get("diverted", 0),
        discarded=by_outcome.get("discarded", 0),
        unfinished=unfinished,
    )
    return counts, first


class RunEnd(msgspec.Struct, frozen=True, kw_only=True):
    """What `elspeth run` says of a run at its end (`run_end`)."""

    rows: RowCounts
    outcomes: dict[str, int]  # the tokens' terminal outcomes: outcome -> tokens
    artifacts: list[Artifact]  # the sinks' flushes, in order
    first_failed: FirstFailure | None  # when a row failed


def run_end(db: Database, run_id: str) -> RunEnd:
    """The rows, the tokens' outcomes, the sinks' flushes and the first failed row, read in one
    transaction: no more than the summary prints (`run_detail`'s per-node figures, `show`'s, are
    a whole pass over the run's steps, a tenth of a second per 50,000 rows of the fork example)."""
    with driver_errors(f"reading the end of run {run_id}"), db.connect() as conn:
        metrics = _metrics(conn, run_id)
        rows, first = _row_counts(conn, run_id, metrics)
        return RunEnd(rows=rows, outcomes=_prefixed(metrics, "outcome."), artifacts=_artifacts(conn, run_id),
                      first_failed=first)  # fmt: skip


class LifecycleEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a run's own life: created, started, resumed, interrupted, failed, completed, abandoned."""

    seq: int
    time: datetime
    event: str  # the event type, e.g. RunResumed
    detail: str | None  # a failure's or interruption's reason, a forced resume, another settings file
    working_dir: str | None = None  # where relative paths resolve from here (RunCreated; RunResumed elsewhere)


_LIFECYCLE = (
    "RunCreated", "RunStarted", "RunResumed", "SinkWriteFailed", "RunInterrupted", "RunFailed", "RunCompleted",
    "RunAbandoned",
)  # fmt: skip


# How many source records a run had read before seq %s: its rows (a row's first token is made as
# its record is read, quarantined or not).
_READ_BEFORE = (
    "SELECT count(*) FROM rows r JOIN tokens t ON t.run_id = r.run_id AND t.token_id = r.token_id "
    "WHERE r.run_id = %s AND t.created_seq < %s"
)


def run_lifecycle(db: Database, run_id: str) -> list[LifecycleEvent]:
    """The run's lifecycle events in seq order, read from the log (not from a projection; but for a
    forced resume on a changed input, how many records the run had read, counted in `rows`)."""
    out: list[LifecycleEvent] = []
    with driver_errors(f"reading the lifecycle of run {run_id}"), db.connect() as conn:
        cur = conn.execute(
            "SELECT seq, recorded_at, event_type, schema_version, payload FROM events "
            "WHERE run_id = %s AND machine = 'run' AND event_type = ANY(%s) ORDER BY seq",
            (run_id, list(_LIFECYCLE)),
        )
        read_as_written(cur, "events", ("int8", "timestamptz", "text", "int2", "bytea"))
        rows = cur.fetchall()
        settings_hash: str | None = None  # the settings' text the run went on under
        for seq, at, event_type, version, payload in rows:
            e = upcast(event_type, version, bytes(payload))
            detail: str | None = None
            working_dir: str | None = None
            if isinstance(e, ev.RunFailed | ev.RunInterrupted | ev.RunAbandoned):
                detail = e.reason
            elif isinstance(e, ev.RunResumed):
                notes = []
                if e.forced:  # how far the run had read: the changed input was read from there on
                    (read,) = conn.execute(_READ_BEFORE, (run_id, seq)).fetchone() or (0,)
                    notes.append(f"input changed, --force: read from its record {int(read) + 1} on")
                if e.settings_path is not None:
                    changed = e.settings_hash != settings_hash
                    notes.append(f"settings changed, --force: {e.settings_path}" if changed else
                                 f"settings {e.settings_path} (the same text)")  # fmt: skip
                    settings_hash = e.settings_hash
                if e.working_dir is not None:
                    notes.append(f"in {e.working_dir}")
                detail = "; ".join(notes) or None
                working_dir = e.working_dir
            elif isinstance(e, ev.RunCreated):
                working_dir, settings_hash = e.working_dir, e.settings_hash
            elif isinstance(e, ev.SinkWriteFailed):
                then = "no more attempts" if e.retry_at is None else f"next attempt {e.retry_at - e.at:.1f} s later"
                detail = f"attempt {e.attempt}: {e.error}; {then}"  # (the error names the sink)
            out.append(LifecycleEvent(seq=seq, time=at, event=event_type, detail=detail, working_dir=working_dir))
    return out
