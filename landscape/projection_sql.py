"""The projections as SQL: each analyst table computed by the server from a range of a run's events.

`project(cur, run_id, lo, hi)` brings every projection table up to date with the events `lo..hi`
of a run, which must follow the events already projected. The writer runs it in each commit's
transaction, right after copying those events in, so the server does this work on its own core
while the engine goes on. `rebuild` runs it over a whole log, and `replay --check` runs it into
temporary tables to compare: one definition of what the events mean for the tables.

Each statement reads the range once, decodes the JSON bodies of the event types it needs, and
writes its tables (a data-modifying `WITH` where one decoding feeds several). Metrics are counted
where their events are decoded; a metric is added to once per statement, so never twice in one.
Which event ends a run or a token, and in which state, comes from the statechart definitions
(`RUN_STATUS_AFTER`, `TOKEN_OUTCOME_OF`), written into the SQL as literals when this is imported.

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


def _names(*kinds: type[ev.EventBase]) -> str:
    return ", ".join(_literal(k.__name__) for k in kinds)


def _case(column: str, mapping: dict[type[ev.EventBase], str]) -> str:
    """`column` (an event type) mapped to a value; NULL for other types."""
    arms = " ".join(f"WHEN {_literal(k.__name__)} THEN {_literal(v)}" for k, v in mapping.items())
    return f"(CASE {column} {arms} END)"


# The JSON body, with any escaped NUL (an even run of backslashes, then `\u0000`) turned into
# U+FFFD first: the server refuses NUL in text, and so in any JSON value it decodes.
_BODY = (
    r"(CASE WHEN strpos(t, '\u0000') = 0 THEN t "
    r"ELSE regexp_replace(t, '(?<!\\)((?:\\\\)*)\\u0000', '\1\\ufffd', 'g') END)::jsonb"
)


def _events(*kinds: type[ev.EventBase]) -> str:
    """The run's events `lo..hi` of these types, with their decoded body `p`."""
    return (
        f"(SELECT e.seq, e.entity_id AS id, e.event_type AS type, e.recorded_at AS at, {_BODY} AS p "
        "FROM public.events e CROSS JOIN LATERAL convert_from(e.payload, 'UTF8') AS t "
        "WHERE e.run_id = %(r)s AND e.seq BETWEEN %(lo)s AND %(hi)s "
        f"AND e.event_type IN ({_names(*kinds)}))"
    )


def _count_into_metrics(select: str) -> str:
    """An upsert adding `select`'s (metric, count) rows to the run's metrics."""
    return (
        f"INSERT INTO run_metrics (run_id, metric, value) SELECT %(r)s, metric, count(*) FROM ({select}) m(metric) "
        "GROUP BY metric ON CONFLICT (run_id, metric) DO UPDATE SET value = run_metrics.value + EXCLUDED.value"
    )


def _joined(array: str) -> str:
    """A JSON array of strings as one comma-separated string ('' when empty)."""
    return f"array_to_string(ARRAY(SELECT jsonb_array_elements_text({array})), ',')"


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

_RUN_INSERT = (
    "INSERT INTO runs (run_id, status, settings_path, settings_hash, source_fingerprint, started_at, ended_at, "
    f"resumes, last_seq) SELECT %(r)s, {_literal(str(RunState.CREATED))}, p->>'settings_path', p->>'settings_hash', "
    f"p->>'source_fingerprint', at, NULL, 0, seq FROM {_events(ev.RunCreated)} e"
)

# The nodes a run declared, and those a resume under other settings declared again (the last wins).
_NODES = (
    "INSERT INTO nodes (run_id, node, kind, plugin, config_hash) "
    "SELECT DISTINCT ON (n->>'name') %(r)s, n->>'name', n->>'kind', n->>'plugin', n->>'config_hash' "
    f"FROM {_events(ev.RunCreated, ev.RunResumed)} e CROSS JOIN LATERAL jsonb_array_elements("
    "CASE WHEN jsonb_typeof(p->'nodes') = 'array' THEN p->'nodes' ELSE '[]' END) AS n "
    "ORDER BY n->>'name', e.seq DESC "
    "ON CONFLICT (run_id, node) DO UPDATE SET kind = EXCLUDED.kind, plugin = EXCLUDED.plugin, "
    "config_hash = EXCLUDED.config_hash"
)

# A token without parents is a source row's token: a row, and one more row in.
_TOKENS = (
    "WITH c AS MATERIALIZED (SELECT seq, id, p, coalesce(jsonb_array_length(p->'parents'), 0) = 0 AS root "
    f"FROM {_events(ev.TokenCreated)} e), "
    "r AS (INSERT INTO rows (run_id, row_index, token_id, data_hash) "
    "SELECT %(r)s, (p->>'row_index')::bigint, id, p->>'data_hash' FROM c WHERE root), "
    "tp AS (INSERT INTO token_parents (run_id, token_id, parent_id, ordinal) "
    "SELECT %(r)s, c.id, x.parent, x.n - 1 FROM c CROSS JOIN LATERAL "
    "jsonb_array_elements_text(p->'parents') WITH ORDINALITY AS x(parent, n) WHERE NOT root), "
    "m AS (" + _count_into_metrics("SELECT 'rows_in' FROM c WHERE root") + ") "
    "INSERT INTO tokens (run_id, token_id, row_index, branch, data_hash, created_seq) "
    "SELECT %(r)s, id, (p->>'row_index')::bigint, p->>'branch', p->>'data_hash', seq FROM c"
)

_STEPS = (
    f"WITH s AS MATERIALIZED (SELECT seq, id, p->>'node' AS node, p FROM {_events(ev.StepCompleted)} e), "
    "m AS (" + _count_into_metrics("SELECT 'node.' || node || '.processed' FROM s") + ") "
    "INSERT INTO node_states (run_id, seq, token_id, node, input_hash, output_hash, route, duration_us) "
    "SELECT %(r)s, seq, id, node, p->>'input_hash', p->>'output_hash', p->>'route', (p->>'duration_us')::bigint "
    "FROM s"
)

# A token's terminal event: its outcome, and the outcome, sink and node counts. The columns are
# the event's fields of those names (NULL where its type has none).
_OUTCOMES_SQL = (
    f"WITH o AS MATERIALIZED (SELECT seq, id, {_case('type', _OUTCOMES)} AS outcome, p->>'node' AS node, "
    f"p->>'sink' AS sink, p->>'reason' AS reason, p->>'detail' AS detail FROM {_events(*_OUTCOMES)} e), "
    "m AS ("
    + _count_into_metrics(
        "SELECT 'outcome.' || outcome FROM o UNION ALL SELECT 'sink.' || sink || '.rows' FROM o WHERE sink IS NOT NULL "
        "UNION ALL SELECT 'node.' || node || '.' || outcome FROM o WHERE node IS NOT NULL"
    )
    + ") INSERT INTO token_outcomes (run_id, token_id, outcome, node, sink, reason, detail, seq) "
    "SELECT %(r)s, id, outcome, node, sink, reason, detail, seq FROM o"
)

_SINKS = (
    "WITH f AS (INSERT INTO artifacts (run_id, seq, sink, position, rows, location) "
    "SELECT %(r)s, seq, p->>'sink', (p->>'position')::bigint, (p->>'rows')::bigint, p->>'location' "
    f"FROM {_events(ev.SinkFlushed)} e) "
    + _count_into_metrics(f"SELECT 'sink.' || (p->>'sink') || '.write_failures' FROM {_events(ev.SinkWriteFailed)} e")
)

# A coalesce's row holds the state its last event in the range left it in: inserted if it opened in
# the range, else updated. (Arrivals show in `arrived` once it merged or failed.)
_COALESCES = (
    "WITH c AS MATERIALIZED (SELECT seq, id, type, p FROM "
    f"{_events(ev.CoalesceOpened, ev.CoalesceMerged, ev.CoalesceFailed)} e), "
    "opened AS (SELECT id, p FROM c WHERE type = 'CoalesceOpened'), "
    f"last AS (SELECT DISTINCT ON (id) id, {_case('type', _COALESCE_STATUS)} AS status, "
    "CASE WHEN type = 'CoalesceOpened' THEN '' ELSE "
    + _joined("p->'arrived'")
    + " END AS arrived, "
    + _joined("CASE WHEN type = 'CoalesceOpened' THEN p->'branches' ELSE p->'missing' END")
    + " AS missing, "
    "p->>'reason' AS reason FROM c ORDER BY id, seq DESC), "
    "ins AS (INSERT INTO coalesces (run_id, coalesce_id, coalesce, row_index, status, policy, arrived, missing, reason) "
    "SELECT %(r)s, o.id, o.p->>'coalesce', (o.p->>'row_index')::bigint, l.status, o.p->>'policy', l.arrived, "
    "l.missing, l.reason FROM opened o JOIN last l USING (id)), "
    "upd AS (UPDATE coalesces AS t SET status = l.status, arrived = l.arrived, missing = l.missing, reason = l.reason "
    "FROM last l WHERE t.run_id = %(r)s AND t.coalesce_id = l.id AND l.id NOT IN (SELECT id FROM opened)) "
    + _count_into_metrics(
        "SELECT 'coalesce.' || CASE type WHEN 'CoalesceMerged' THEN 'merged' ELSE 'failed' END FROM c "
        "WHERE type <> 'CoalesceOpened'"
    )
)

# Likewise a batch; its size counts the tokens buffered into it so far.
_BATCHES = (
    "WITH b AS MATERIALIZED (SELECT seq, id, type, p FROM "
    f"{_events(ev.BatchOpened, ev.BatchFlushing, ev.BatchCompleted, ev.BatchFailed)} e), "
    f"buffered AS (SELECT p->>'batch_id' AS id, count(*) AS n FROM {_events(ev.TokenBuffered)} e GROUP BY 1), "
    f"life AS (SELECT id, (array_agg({_case('type', _BATCH_STATUS)} ORDER BY seq DESC))[1] AS status, "
    "(array_agg(p->>'trigger' ORDER BY seq DESC) FILTER (WHERE type = 'BatchFlushing'))[1] AS trigger, "
    "(array_agg(p->>'reason' ORDER BY seq DESC) FILTER (WHERE type = 'BatchFailed'))[1] AS reason, "
    "(array_agg(p->>'aggregation') FILTER (WHERE type = 'BatchOpened'))[1] AS aggregation FROM b GROUP BY id), "
    "touched AS (SELECT * FROM life FULL JOIN buffered USING (id)), "
    "ins AS (INSERT INTO batches (run_id, batch_id, aggregation, status, trigger, size, reason) "
    "SELECT %(r)s, id, aggregation, status, trigger, coalesce(n, 0), reason FROM touched "
    "WHERE aggregation IS NOT NULL), "
    "upd AS (UPDATE batches AS t SET status = coalesce(u.status, t.status), trigger = coalesce(u.trigger, t.trigger), "
    "reason = coalesce(u.reason, t.reason), size = t.size + coalesce(u.n, 0) FROM touched u "
    "WHERE t.run_id = %(r)s AND t.batch_id = u.id AND u.aggregation IS NULL) "
    + _count_into_metrics(
        "SELECT 'batch.' || CASE type WHEN 'BatchCompleted' THEN 'completed' ELSE 'failed' END FROM b "
        "WHERE type IN ('BatchCompleted', 'BatchFailed')"
    )
)

_MEMBERS = (
    "INSERT INTO batch_members (run_id, batch_id, token_id, seq) "
    f"SELECT %(r)s, p->>'batch_id', id, seq FROM {_events(ev.TokenBuffered)} e"
)

# The run's row: the status its last status event left, when it ended (a resume clears that),
# how often it was resumed, the settings a resume continued under, and the seq it reflects.
_RUN_UPDATE = (
    f"WITH s AS MATERIALIZED (SELECT seq, type, at, p FROM {_events(*_RUN_STATUS)} e), "
    "ended AS (SELECT type, at FROM s WHERE type IN "
    f"({_names(*_RUN_ENDS, ev.RunResumed)}) ORDER BY seq DESC LIMIT 1), "
    "resumed AS (SELECT p FROM s WHERE type = 'RunResumed') "
    "UPDATE runs SET last_seq = %(hi)s, "
    f"status = coalesce((SELECT {_case('type', _RUN_STATUS)} FROM s ORDER BY seq DESC LIMIT 1), status), "
    "ended_at = CASE (SELECT type FROM ended) WHEN 'RunResumed' THEN NULL "
    "ELSE coalesce((SELECT at FROM ended), ended_at) END, "
    "resumes = resumes + (SELECT count(*) FROM resumed), "
    "source_fingerprint = coalesce((SELECT p->>'source_fingerprint' FROM s WHERE type = 'RunResumed' "
    "ORDER BY seq DESC LIMIT 1), source_fingerprint), "
    "settings_hash = coalesce((SELECT p->>'settings_hash' FROM s WHERE type = 'RunResumed' "
    "AND p->>'settings_hash' IS NOT NULL ORDER BY seq DESC LIMIT 1), settings_hash), "
    "settings_path = coalesce((SELECT p->>'settings_path' FROM s WHERE type = 'RunResumed' "
    "AND p->>'settings_path' IS NOT NULL ORDER BY seq DESC LIMIT 1), settings_path) "
    "WHERE run_id = %(r)s"
)

# In this order: the run's row exists before it is updated.
STATEMENTS = (_RUN_INSERT, _NODES, _TOKENS, _STEPS, _OUTCOMES_SQL, _SINKS, _COALESCES, _BATCHES, _MEMBERS, _RUN_UPDATE)


def project(cur: Any, run_id: str, lo: int, hi: int) -> None:
    """Bring the projection tables (as `cur`'s search path finds them) up to date with events
    `lo..hi` of the run, the ones right after those already projected."""
    params = {"r": run_id, "lo": lo, "hi": hi}
    for sql in STATEMENTS:
        cur.execute(sql, params)
