"""The projections as SQL: every analyst table computed by the server from a range of a run's events.

`project(cur, run_id, lo, hi)` brings every projection table up to date with the events `lo..hi`
of a run, which must follow the events already projected. The writer runs it in each commit's
transaction, right after copying those events in, so the server does this work on its own core
while the engine goes on. `rebuild` runs it over a whole log, and `replay --check` runs it into
temporary tables to compare: one definition of what the events mean for the tables.

It is one statement: the range is read once (`ev`: the events of the types some table reads, each
body turned into text once), each event type's JSON body is decoded once into typed columns where a
table needs it, and data-modifying `WITH` clauses write the tables.
They all see the tables as they were before the statement, so each row is written by exactly one
clause: a coalesce or a batch is inserted if it opened in the range (with the state the range
left it in) and updated otherwise; likewise the run's row; every metric is added to in one upsert.
Which event ends a run or a token, and in which state, comes from the statechart definitions
(`RUN_STATUS_AFTER`, `TOKEN_OUTCOME_OF`), written into the SQL as literals when this is imported.
Bodies are read as schema version 1 spells them, the version of every event type today; a test
fails when a type moves to another, so that its new shape is read here too.

The server's JSON types cannot hold the character NUL: a body that spells one (`\\u0000`, which
user data can put into a reason or a field name) has it read as U+FFFD, the replacement
character. Only the projections see that; the events keep their bytes.
"""

from __future__ import annotations

from typing import Any

from statecharts import events as ev
from statecharts.machines import (
    RUN_ENDED,
    RUN_STATUS_AFTER,
    TOKEN_OUTCOME_OF,
    BatchState,
    CoalesceState,
    RunState,
)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _names(kinds: list[type[ev.EventBase]]) -> str:
    return ", ".join(_literal(k.__name__) for k in kinds)


def _case(mapping: dict[type[ev.EventBase], str]) -> str:
    """An event's `type` mapped to a value; NULL for other types."""
    return (
        "CASE type " + " ".join(f"WHEN {_literal(k.__name__)} THEN {_literal(v)}" for k, v in mapping.items()) + " END"
    )


_OUTCOMES = {kind: str(state) for kind, state in TOKEN_OUTCOME_OF.items()}
_RUN_STATUS = {kind: str(state) for kind, state in RUN_STATUS_AFTER.items() if state != RunState.CREATED}
_RUN_ENDS = [kind for kind, state in RUN_STATUS_AFTER.items() if state in RUN_ENDED]
_COALESCE_STATUS: dict[type[ev.EventBase], str] = {
    ev.CoalesceOpened: str(CoalesceState.WAITING),
    ev.CoalesceMerged: str(CoalesceState.MERGED),
    ev.CoalesceFailed: str(CoalesceState.FAILED),
}
_BATCH_STATUS: dict[type[ev.EventBase], str] = {
    ev.BatchOpened: str(BatchState.COLLECTING),
    ev.BatchFlushing: str(BatchState.FLUSHING),
    ev.BatchCompleted: str(BatchState.COMPLETED),
    ev.BatchFailed: str(BatchState.FAILED),
}

# The statement. Each `{...}` that names events is `_body(kinds, columns)`: those events of the
# range with their bodies decoded into typed columns (each body parsed once, and only where used).
_SQL = r"""
WITH ev AS MATERIALIZED (
  SELECT seq, id, type, at, {sanitized} AS body FROM (
    SELECT seq, entity_id AS id, event_type AS type, recorded_at AS at, convert_from(payload, 'UTF8') AS t
    FROM public.events WHERE run_id = %(r)s AND seq BETWEEN %(lo)s AND %(hi)s AND event_type IN ({read})
    OFFSET 0) AS range),
last AS (SELECT max(seq) AS seq FROM public.events WHERE run_id = %(r)s AND seq BETWEEN %(lo)s AND %(hi)s),
-- the run's own events (a few per commit), and those of coalesces and batches, apart: the clauses
-- that read them scan these, not all of `ev` each
run_ev AS MATERIALIZED (SELECT * FROM ev WHERE type IN ({run_level})),
group_ev AS MATERIALIZED (SELECT * FROM ev WHERE type IN ({group_level})),
created AS MATERIALIZED ({created}),
status AS MATERIALIZED ({status}),
ended AS (SELECT type, at FROM status WHERE type IN ({run_ends}) ORDER BY seq DESC LIMIT 1),
run AS (SELECT
    (SELECT {run_status} FROM status ORDER BY seq DESC LIMIT 1) AS status,
    (SELECT type FROM ended) AS end_type, (SELECT at FROM ended) AS end_at,
    (SELECT count(*) FROM status WHERE type = 'RunResumed') AS resumes,
    (SELECT source_fingerprint FROM status WHERE type = 'RunResumed' ORDER BY seq DESC LIMIT 1) AS fingerprint,
    (SELECT settings_hash FROM status WHERE settings_hash IS NOT NULL ORDER BY seq DESC LIMIT 1) AS settings_hash,
    (SELECT settings_path FROM status WHERE settings_path IS NOT NULL ORDER BY seq DESC LIMIT 1) AS settings_path),
run_inserted AS (
  INSERT INTO {into}.runs (run_id, status, settings_path, settings_hash, source_fingerprint, started_at, ended_at,
                    resumes, last_seq)
  SELECT %(r)s, coalesce(run.status, {created_status}), coalesce(run.settings_path, c.settings_path),
         coalesce(run.settings_hash, c.settings_hash), coalesce(run.fingerprint, c.source_fingerprint), c.at,
         CASE WHEN run.end_type = 'RunResumed' THEN NULL ELSE run.end_at END, run.resumes,
         (SELECT seq FROM last)
  FROM created c, run),
-- the nodes a run declared, and those a resume under other settings declared again (the last wins)
nodes_upserted AS (
  INSERT INTO {into}.nodes (run_id, node, kind, plugin, config_hash)
  SELECT DISTINCT ON (n->>'name') %(r)s, n->>'name', n->>'kind', n->>'plugin', n->>'config_hash'
  FROM (SELECT seq, nodes FROM created UNION ALL SELECT seq, nodes FROM status) d
  CROSS JOIN LATERAL json_array_elements(CASE WHEN json_typeof(d.nodes) = 'array' THEN d.nodes END) AS n
  ORDER BY n->>'name', d.seq DESC
  ON CONFLICT (run_id, node) DO UPDATE
  SET kind = EXCLUDED.kind, plugin = EXCLUDED.plugin, config_hash = EXCLUDED.config_hash),
-- a token without parents is a source row's token: a row, and one more row in
new_tokens AS MATERIALIZED ({new_tokens}),
rows_inserted AS (
  INSERT INTO {into}.rows (run_id, row_index, token_id, data_hash)
  SELECT %(r)s, row_index, id, data_hash FROM new_tokens WHERE root),
tokens_inserted AS (
  INSERT INTO {into}.tokens (run_id, token_id, row_index, branch, data_hash, created_seq)
  SELECT %(r)s, id, row_index, branch, data_hash, seq FROM new_tokens),
parents_inserted AS (
  INSERT INTO {into}.token_parents (run_id, token_id, parent_id, ordinal)
  SELECT %(r)s, t.id, x.parent, x.n - 1
  FROM new_tokens t CROSS JOIN LATERAL json_array_elements_text(t.parents) WITH ORDINALITY AS x(parent, n)
  WHERE NOT t.root),
steps AS MATERIALIZED ({steps}),
steps_inserted AS (
  INSERT INTO {into}.node_states (run_id, seq, token_id, node, input_hash, output_hash, route, duration_us)
  SELECT %(r)s, seq, id, node, input_hash, output_hash, route, duration_us FROM steps),
-- a token's terminal event; the columns are its fields of those names (NULL where it has none)
ends AS MATERIALIZED ({ends}),
ends_inserted AS (
  INSERT INTO {into}.token_outcomes (run_id, token_id, outcome, node, sink, reason, detail, seq)
  SELECT %(r)s, id, outcome, node, sink, reason, detail, seq FROM ends),
flushes_inserted AS (
  INSERT INTO {into}.artifacts (run_id, seq, sink, position, rows, location, sha256)
  SELECT %(r)s, seq, sink, position, rows, location, sha256 FROM ({flushes}) f),
buffered AS MATERIALIZED ({buffered}),
members_inserted AS (
  INSERT INTO {into}.batch_members (run_id, batch_id, token_id, seq) SELECT %(r)s, batch_id, id, seq FROM buffered),
-- a coalesce's row holds the state its last event in the range left it in (arrivals show once it
-- merged or failed); one group per coalesce, as a join of these few rows would be planned blind.
-- The rows to update are looked up key by key: the run id is a value the planner cannot see (a
-- scalar subquery), so it does not take the run for the one row a partition's statistics give a
-- run they do not know (one whose statistics hold two earlier runs): planned for one row, the
-- server read all of the run's rows at every commit, 1,100 rows/s instead of 5,000. (The keys as
-- `= ANY (array)` were an index condition on PostgreSQL 18, a filter on 15.)
coalesce_events AS MATERIALIZED ({coalesce_events}),
coalesce_state AS (
  SELECT id, bool_or(type = 'CoalesceOpened') AS opened,
         min(coalesce) FILTER (WHERE type = 'CoalesceOpened') AS coalesce,
         min(row_index) FILTER (WHERE type = 'CoalesceOpened') AS row_index,
         min(policy) FILTER (WHERE type = 'CoalesceOpened') AS policy,
         (array_agg({coalesce_status} ORDER BY seq DESC))[1] AS status,
         array_to_string(ARRAY(SELECT json_array_elements_text((array_agg(
           CASE WHEN type = 'CoalesceOpened' THEN NULL ELSE arrived END ORDER BY seq DESC))[1])), ',') AS arrived,
         array_to_string(ARRAY(SELECT json_array_elements_text((array_agg(
           CASE WHEN type = 'CoalesceOpened' THEN branches ELSE missing END ORDER BY seq DESC))[1])), ',') AS missing,
         (array_agg(reason ORDER BY seq DESC))[1] AS reason,
         -- what decided it: a merge's trigger, a failure's ("arrivals" when it names none)
         (array_agg(CASE WHEN type = 'CoalesceOpened' THEN NULL ELSE coalesce(trigger, 'arrivals') END
                    ORDER BY seq DESC))[1] AS trigger,
         -- a merge's colliding fields, as an array (a field name may hold a comma); NULL unless merged
         CASE WHEN bool_or(type = 'CoalesceMerged') THEN ARRAY(SELECT json_array_elements_text(
           (array_agg(coalesce(collisions, '[]')) FILTER (WHERE type = 'CoalesceMerged'))[1])) END AS collisions
  FROM coalesce_events GROUP BY id),
coalesces_inserted AS (
  INSERT INTO {into}.coalesces (run_id, coalesce_id, coalesce, row_index, status, policy, arrived, missing, reason,
                                trigger, collisions)
  SELECT %(r)s, id, coalesce, row_index, status, policy, arrived, missing, reason, trigger, collisions
  FROM coalesce_state WHERE opened),
coalesces_updated AS (
  UPDATE {into}.coalesces AS t SET status = s.status, arrived = s.arrived, missing = s.missing, reason = s.reason,
         trigger = s.trigger, collisions = s.collisions
  FROM coalesce_state s WHERE t.run_id = (SELECT %(r)s::text) AND t.coalesce_id = s.id AND NOT s.opened),
-- likewise a batch; its size counts the tokens buffered into it so far
batch_events AS MATERIALIZED ({batch_events}),
batch_touched AS (
  SELECT * FROM (
    SELECT id, (array_agg({batch_status} ORDER BY seq DESC))[1] AS status,
           (array_agg(trigger ORDER BY seq DESC) FILTER (WHERE type = 'BatchFlushing'))[1] AS trigger,
           (array_agg(reason ORDER BY seq DESC) FILTER (WHERE type = 'BatchFailed'))[1] AS reason,
           (array_agg(aggregation) FILTER (WHERE type = 'BatchOpened'))[1] AS aggregation
    FROM batch_events GROUP BY id) life
  FULL JOIN (SELECT batch_id AS id, count(*) AS n FROM buffered GROUP BY 1) members USING (id)),
batches_inserted AS (
  INSERT INTO {into}.batches (run_id, batch_id, aggregation, status, trigger, size, reason)
  SELECT %(r)s, id, aggregation, status, trigger, coalesce(n, 0), reason FROM batch_touched
  WHERE aggregation IS NOT NULL),
batches_updated AS (
  UPDATE {into}.batches AS t SET status = coalesce(u.status, t.status), trigger = coalesce(u.trigger, t.trigger),
         reason = coalesce(u.reason, t.reason), size = t.size + coalesce(u.n, 0)
  FROM batch_touched u WHERE t.run_id = (SELECT %(r)s::text) AND t.batch_id = u.id AND u.aggregation IS NULL),
metrics_added AS (
  INSERT INTO {into}.run_metrics (run_id, metric, value)
  SELECT %(r)s, metric, count(*) FROM (
    SELECT 'rows_in' FROM new_tokens WHERE root
    UNION ALL SELECT 'node.' || node || '.processed' FROM steps
    UNION ALL SELECT 'outcome.' || outcome FROM ends
    UNION ALL SELECT 'sink.' || sink || '.rows' FROM ends WHERE sink IS NOT NULL
    UNION ALL SELECT 'node.' || node || '.' || outcome FROM ends WHERE node IS NOT NULL
    UNION ALL SELECT 'sink.' || sink || '.write_failures' FROM ({write_failures}) w
    UNION ALL SELECT 'coalesce.merged' FROM coalesce_events WHERE type = 'CoalesceMerged'
    UNION ALL SELECT 'coalesce.failed' FROM coalesce_events WHERE type = 'CoalesceFailed'
    UNION ALL SELECT 'batch.completed' FROM batch_events WHERE type = 'BatchCompleted'
    UNION ALL SELECT 'batch.failed' FROM batch_events WHERE type = 'BatchFailed') m(metric)
  GROUP BY metric
  ON CONFLICT (run_id, metric) DO UPDATE SET value = run_metrics.value + EXCLUDED.value)
-- the run's row, when the range did not create it: the status its last status event left, when it
-- ended (a resume clears that), how often it was resumed, the settings a resume continued under
UPDATE {into}.runs SET last_seq = (SELECT seq FROM last), status = coalesce(run.status, runs.status),
       ended_at = CASE run.end_type WHEN 'RunResumed' THEN NULL ELSE coalesce(run.end_at, runs.ended_at) END,
       resumes = runs.resumes + run.resumes,
       source_fingerprint = coalesce(run.fingerprint, runs.source_fingerprint),
       settings_hash = coalesce(run.settings_hash, runs.settings_hash),
       settings_path = coalesce(run.settings_path, runs.settings_path)
FROM run WHERE runs.run_id = %(r)s AND NOT EXISTS (SELECT 1 FROM created)
"""


def _body(kinds: list[type[ev.EventBase]], columns: str, extra: str = "") -> str:
    """The events of `kinds` in the range with their bodies decoded into `columns`; read from
    `run_ev` or `group_ev` when all are of those (each scan of `ev` passes over every event)."""
    _READ.update(kinds)
    source = "run_ev" if set(kinds) <= _RUN_LEVEL else "group_ev" if set(kinds) <= _GROUP_LEVEL else "ev"
    names = ", ".join(c.split()[0] for c in columns.split(", "))
    return (
        f"SELECT ev.seq, ev.id, ev.type, ev.at{extra}, {names} FROM {source} AS ev "
        f"CROSS JOIN LATERAL json_to_record(ev.body::json) AS p({columns}) WHERE ev.type IN ({_names(kinds)})"
    )


# The run's own events, not a token's: a few per commit (`run_ev`).
_RUN_LEVEL: set[type[ev.EventBase]] = {ev.RunCreated, *_RUN_STATUS, ev.SinkFlushed, ev.SinkWriteFailed}
# A coalesce's and a batch's events, and a token's buffering into a batch (`group_ev`).
_GROUP_LEVEL: set[type[ev.EventBase]] = {*_COALESCE_STATUS, *_BATCH_STATUS, ev.TokenBuffered}
# The event types the statement reads: `ev` holds only these (each `_body` adds its own).
_READ: set[type[ev.EventBase]] = set()
# A body as text, with an escaped NUL (after an even run of backslashes) read as U+FFFD: see the
# module's docstring. E'' literals: their backslashes mean the same whatever
# standard_conforming_strings says. Decoded once per event, in `ev`, not once per table.
_SANITIZED = (
    r"CASE WHEN strpos(t, E'\\u0000') = 0 THEN t "
    r"ELSE regexp_replace(t, E'(?<!\\\\)((?:\\\\\\\\)*)\\\\u0000', E'\\1\\\\ufffd', 'g') END"
)

_PARTS = dict(
    created=_body([ev.RunCreated], "settings_path text, settings_hash text, source_fingerprint text, nodes json"),
    status=_body(list(_RUN_STATUS), "source_fingerprint text, settings_path text, settings_hash text, nodes json"),
    run_ends=_names([*_RUN_ENDS, ev.RunResumed]),
    run_status=_case(_RUN_STATUS),
    created_status=_literal(str(RunState.CREATED)),
    new_tokens=_body(
        [ev.TokenCreated],
        "row_index bigint, data_hash text, branch text, parents json",
        ", coalesce(json_array_length(p.parents), 0) = 0 AS root",
    ),
    steps=_body([ev.StepCompleted], "node text, input_hash text, output_hash text, route text, duration_us bigint"),
    ends=_body(list(_OUTCOMES), "node text, sink text, reason text, detail text", f", {_case(_OUTCOMES)} AS outcome"),
    flushes=_body([ev.SinkFlushed], "sink text, position bigint, rows bigint, location text, sha256 text"),
    buffered=_body([ev.TokenBuffered], "batch_id text"),
    coalesce_events=_body(
        list(_COALESCE_STATUS),
        "coalesce text, row_index bigint, policy text, branches json, arrived json, missing json, reason text, "
        "trigger text, collisions json",
    ),
    coalesce_status=_case(_COALESCE_STATUS),
    batch_events=_body(list(_BATCH_STATUS), "aggregation text, trigger text, reason text"),
    batch_status=_case(_BATCH_STATUS),
    write_failures=_body([ev.SinkWriteFailed], "sink text"),
)
_PARTS.update(
    sanitized=_SANITIZED,
    read=_names(sorted(_READ, key=lambda k: k.__name__)),
    run_level=_names(sorted(_RUN_LEVEL, key=lambda k: k.__name__)),
    group_level=_names(sorted(_GROUP_LEVEL, key=lambda k: k.__name__)),
)

# The tables the statement changes rows of (`UPDATE`, `ON CONFLICT`), and so looks rows up in by
# key; it only inserts into the others. A comparison's copies of those others go without indexes:
# maintaining them was a quarter of a rebuild (1,044,437 events: 5.5-5.8 s -> 4.1-4.3 s).
UPDATED_IN_PLACE = frozenset({"runs", "nodes", "coalesces", "batches", "run_metrics"})

# The statement writing the tables of each schema: `public`, or `pg_temp` (a comparison's copies).
SQL = {into: _SQL.format(into=into, **_PARTS) for into in ("public", "pg_temp")}


def project(cur: Any, run_id: str, lo: int, hi: int, *, into: str = "public") -> None:
    """Bring the projection tables in schema `into` up to date with events `lo..hi` of the run,
    the ones right after those already projected.

    Names are looked up in `pg_catalog` only, for the rest of the transaction: a function or an
    operator that someone created in a schema on the search path could otherwise be a better
    match than the built-in one (`convert_from(bytea, text)` beats the built-in `(bytea, name)`),
    and would then write the tables and the comparison's copies alike."""
    cur.execute("SET LOCAL search_path = pg_catalog, pg_temp")
    cur.execute(SQL[into], {"r": run_id, "lo": lo, "hi": hi})
