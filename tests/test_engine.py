"""The processor end to end against the real store: gates, forks and coalesces, aggregations,
quarantine, row errors, deadlines with an idle source."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.clock import FakeClock
from engine.orchestrator import GIL_SLICE_SECONDS, start_run
from engine.plugins.protocol import SourceItem
from engine.settings import SettingsError
from landscape.canonical import decode_row
from landscape.db import Database
from landscape.postgres import PostgresRecorder
from statecharts import events as ev
from tests.engine_harness import ScriptedSource, assert_invariants, item, load_pipeline, run, write_csv

SCHEMA = "schema: {mode: fixed, fields: ['id: int', 'v: int', 'note: str']}"


def _input(tmp_path: Path, rows: list[list[object]]) -> None:
    write_csv(tmp_path / "in.csv", ["id", "v", "note"], rows)


def _fork_pipeline(policy: str, merge: str, extra: str = "") -> str:
    return f"""
source:
  plugin: csv
  on_success: raw
  options: {{path: in.csv, {SCHEMA}, on_validation_failure: discard}}
gates:
- name: split
  input: raw
  condition: 'True'
  routes: {{'true': fork}}
  fork_to: [a, b]
transforms:
- name: ta
  plugin: field_mapper
  input: a
  on_success: a_done
  on_error: discard
  options: {{mapping: {{v: va}}}}
- name: tb
  plugin: keyword_filter
  input: b
  on_success: b_done
  on_error: discard
  options: {{fields: [note], blocked_patterns: ['bad']}}
coalesce:
- name: join
  branches: {{a: a_done, b: b_done}}
  policy: {policy}
  merge: {merge}
  on_success: out
  {extra}
sinks:
  out:
    plugin: json
    options: {{path: out/out.jsonl, format: jsonl}}
"""


ROWS = [[1, 10, "ok"], [2, 20, "bad"], [3, 30, "fine"]]


@pytest.mark.parametrize(
    ("merge", "first_row"),
    [
        ("union", {"id": 1, "va": 10, "note": "ok", "v": 10}),
        ("nested", {"a": {"id": 1, "va": 10, "note": "ok"}, "b": {"id": 1, "v": 10, "note": "ok"}}),
        ("select", {"id": 1, "v": 10, "note": "ok"}),
    ],
)
def test_require_all_merges_complete_rows_and_fails_a_row_that_lost_a_branch(
    db: Database, tmp_path: Path, merge: str, first_row: dict[str, object]
) -> None:
    _input(tmp_path, ROWS)
    extra = "select_branch: b" if merge == "select" else ""
    r = run(db, tmp_path, _fork_pipeline("require_all", merge, extra))
    rows = r.rows("out/out.jsonl")
    assert rows[0] == first_row
    assert len(rows) == 2  # row 2 lost branch b (diverted by the keyword filter)
    assert_invariants(r.fold)
    out = r.outcomes()
    assert out["forked"] == 3 and out["coalesced"] == 4 and out["diverted"] == 1
    assert out["failed"] == 1  # the arrived branch a of row 2: branch_lost
    assert out["completed"] == 2


def test_best_effort_merges_what_arrived_when_a_branch_is_lost(db: Database, tmp_path: Path) -> None:
    _input(tmp_path, ROWS)
    r = run(db, tmp_path, _fork_pipeline("best_effort", "nested", "timeout_seconds: 60"))
    rows = r.rows("out/out.jsonl")
    assert len(rows) == 3
    assert rows[1] == {"a": {"id": 2, "va": 20, "note": "bad"}}
    assert_invariants(r.fold)


def test_quorum_of_one_merges_on_the_first_arrival_and_fails_late_arrivals(db: Database, tmp_path: Path) -> None:
    _input(tmp_path, ROWS)
    r = run(db, tmp_path, _fork_pipeline("quorum", "union", "quorum_count: 1"))
    assert len(r.rows("out/out.jsonl")) == 3
    assert_invariants(r.fold)
    # branch b of rows 1 and 3 arrives after the quorum merged: recorded as late, not lost.
    assert r.outcomes()["failed"] == 2


@pytest.mark.parametrize("order", ["a, b", "b, a"])
def test_a_row_whose_coalesce_failed_is_a_failed_row_whatever_the_fork_order(
    db: Database, tmp_path: Path, order: str
) -> None:
    """Row 2's branch b is lost (discarded by its filter), so its `require_all` coalesce fails.
    With b forked first, the coalesce failed with nothing held, and branch a then failed as a late
    arrival, which the row counts leave out: `failed: 0` for the same output (a hostile review)."""
    from landscape.queries import row_counts

    _input(tmp_path, ROWS)
    r = run(db, tmp_path, _fork_pipeline("require_all", "union").replace("fork_to: [a, b]", f"fork_to: [{order}]"))
    assert [row["id"] for row in r.rows("out/out.jsonl")] == [1, 3]
    counts = row_counts(db, r.outcome.run_id)
    assert (counts.failed, counts.diverted) == (1, 0), counts  # failed wins over its diverted branch


def test_first_takes_the_first_branch_in_fork_order(db: Database, tmp_path: Path) -> None:
    _input(tmp_path, ROWS)
    r = run(db, tmp_path, _fork_pipeline("first", "union"))
    rows = r.rows("out/out.jsonl")
    assert rows[0] == {"id": 1, "va": 10, "note": "ok"}  # branch a arrives first
    assert_invariants(r.fold)


def test_quorum_fails_when_it_becomes_unreachable(db: Database, tmp_path: Path) -> None:
    _input(tmp_path, ROWS)
    r = run(db, tmp_path, _fork_pipeline("quorum", "union", "quorum_count: 2"))
    assert len(r.rows("out/out.jsonl")) == 2
    assert_invariants(r.fold)


def test_a_coalesce_deadline_fires_while_the_source_is_idle(db: Database, tmp_path: Path) -> None:
    """The prior system only checked timeouts when a row arrived. Here the source yields row 1,
    then has nothing for a while: the clock moves past the deadline and the coalesce resolves
    before row 2 exists."""
    settings = _fork_pipeline("best_effort", "nested", "timeout_seconds: 5").replace(
        "on_success: a_done", "on_success: to_agg"
    )
    # branch a is parked in an aggregation with a long count trigger so it never arrives first
    settings = settings.replace(
        "coalesce:",
        """aggregations:
- name: park
  plugin: batch_replicate
  input: to_agg
  on_success: a_done
  on_error: discard
  trigger: {count: 100}
  output_mode: passthrough
coalesce:""",
    )
    clock = FakeClock()
    items = [item(0, id=1, v=10, note="ok"), None, item(1, id=2, v=20, note="ok")]
    r = run(db, tmp_path, settings, clock=clock, source_items=items)
    assert_invariants(r.fold)
    merged = r.rows("out/out.jsonl")
    # row 1 merged on timeout with branch b only (its branch a arrived late at the end)
    assert merged[0] == {"b": {"id": 1, "v": 10, "note": "ok"}}
    assert clock.now() >= 1_700_000_005.0


class _RecordingSink:
    """A sink that notes which tokens were written to it, and when (as the source saw it)."""

    kind = "sink"

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.written: list[str] = []

    def write(self, token_id: str, row: dict[str, object]) -> None:
        self.written.append(token_id)
        self.inner.write(token_id, row)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _IdleSource(ScriptedSource):
    """Row 0, then nothing for a while (None: idle), then row 1. What the sink had received by
    the time the engine came back for row 1 is noted: that is what happened while idle."""

    def __init__(self, sink: _RecordingSink) -> None:
        super().__init__([])
        self.sink = sink
        self.written_while_idle: list[str] | None = None

    def read(self, start: int = 0) -> Iterator[SourceItem | None]:
        yield item(0, id=1, v=10, note="ok")
        yield None
        self.written_while_idle = list(self.sink.written)
        yield item(1, id=2, v=20, note="ok")


def test_the_deadline_fires_during_the_idleness_not_when_the_next_row_arrives(db: Database, tmp_path: Path) -> None:
    """The test above cannot tell "fired while idle" from "fired when row 2 arrived" (the engine
    also fires what is due before each row). Here the source itself looks, before it yields row 2,
    at what the sink received: the merge the timeout made must already be there."""
    settings = _fork_pipeline("best_effort", "nested", "timeout_seconds: 5").replace(
        "on_success: a_done", "on_success: to_agg"
    )
    settings = settings.replace(
        "coalesce:",
        """aggregations:
- name: park
  plugin: batch_replicate
  input: to_agg
  on_success: a_done
  on_error: discard
  trigger: {count: 100}
  output_mode: passthrough
coalesce:""",
    )
    _input(tmp_path, [])
    clock = FakeClock()
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        pipeline = load_pipeline(tmp_path, settings)
        sink = _RecordingSink(pipeline.nodes.sinks["out"])
        pipeline.nodes.sinks["out"] = sink  # type: ignore[assignment]
        source = _IdleSource(sink)
        pipeline.source = source  # type: ignore[assignment]
        start_run(db, pipeline, clock=clock)
    finally:
        os.chdir(old)
    assert source.written_while_idle == ["r0+join"]  # merged on its timeout, before row 2 existed
    assert clock.now() >= 1_700_000_005.0


def _agg_pipeline(trigger: str, mode: str = "transform", plugin: str = "batch_stats", options: str = "") -> str:
    opts = options or "{value_field: v, compute_mean: true}"
    return f"""
source:
  plugin: csv
  on_success: raw
  options: {{path: in.csv, {SCHEMA}, on_validation_failure: discard}}
aggregations:
- name: agg
  plugin: {plugin}
  input: raw
  on_success: out
  on_error: discard
  trigger: {trigger}
  output_mode: {mode}
  options: {opts}
sinks:
  out:
    plugin: csv
    options: {{path: out/out.csv}}
"""


def test_count_trigger_and_end_of_source_flush_through_the_same_path(db: Database, tmp_path: Path) -> None:
    _input(tmp_path, [[i, i * 10, "x"] for i in range(1, 8)])
    r = run(db, tmp_path, _agg_pipeline("{count: 3}"))
    rows = r.rows("out/out.csv")
    assert [row["batch_size"] for row in rows] == ["3", "3", "1"]
    assert [row["sum"] for row in rows] == ["60", "150", "70"]
    assert_invariants(r.fold)
    assert r.outcomes()["consumed_in_batch"] == 7


def test_condition_trigger(db: Database, tmp_path: Path) -> None:
    _input(tmp_path, [[i, i, "x"] for i in range(1, 6)])
    r = run(db, tmp_path, _agg_pipeline("{condition: \"row['batch_count'] >= 2\"}"))
    assert [row["batch_size"] for row in r.rows("out/out.csv")] == ["2", "2", "1"]
    assert_invariants(r.fold)


def test_a_trigger_condition_that_fails_at_run_time_fails_the_run_on_record(db: Database, tmp_path: Path) -> None:
    """It was taken as "not fired": the batch grew to the end of the source without a word."""
    from engine.errors import RunFailedError

    _input(tmp_path, [[i, i, "x"] for i in range(1, 6)])
    condition = "{condition: \"row['batch_count'] / (row['batch_count'] - 2) > 5\"}"  # fine for 1, not for 2
    with pytest.raises(RunFailedError, match=r"agg: its trigger condition cannot be evaluated for batch agg#1 "
                       r"\(batch_count 2, batch_age_seconds [0-9.e-]+\): division by zero") as failed:  # fmt: skip
        run(db, tmp_path, _agg_pipeline(condition))
    with db.connect() as conn:
        (status,) = conn.execute("SELECT status FROM runs WHERE run_id = %s", (failed.value.run_id,)).fetchone()
    assert status == "failed"


@pytest.mark.parametrize("first", [1, 0], ids=["from-1", "index-twice"])
def test_a_source_that_numbers_its_records_otherwise_fails_the_run_naming_it(
    db: Database, tmp_path: Path, first: int
) -> None:
    """A third-party source counting from 1 (or giving an index twice) was told the store had
    failed and to resume (the fold refused the row): it is the source's failure, on record."""
    from engine.errors import RunFailedError

    items = [item(first, id=1, v=1, note="x"), item(first + 1 if first else 0, id=2, v=2, note="x")]
    expected = 1 if first == 0 else 0
    with pytest.raises(RunFailedError, match=rf"source: it gave record index {1 if first else 0} where {expected} "
                       r"was next; allowed: indexes from 0") as failed:  # fmt: skip
        run(db, tmp_path, _agg_pipeline("{count: 5}"), source_items=items)
    with db.connect() as conn:
        (status,) = conn.execute("SELECT status FROM runs WHERE run_id = %s", (failed.value.run_id,)).fetchone()
    assert status == "failed"


def test_timeout_trigger_fires_with_an_idle_source(db: Database, tmp_path: Path) -> None:
    clock = FakeClock()
    items = [item(0, id=1, v=1, note="x"), item(1, id=2, v=2, note="x"), None, item(2, id=3, v=3, note="x")]
    r = run(db, tmp_path, _agg_pipeline("{timeout_seconds: 10, count: 100}"), clock=clock, source_items=items)
    assert [row["batch_size"] for row in r.rows("out/out.csv")] == ["2", "1"]
    assert_invariants(r.fold)


def test_passthrough_mode_keeps_the_tokens(db: Database, tmp_path: Path) -> None:
    _input(tmp_path, [[i, 1, "x"] for i in range(1, 5)])
    r = run(
        db,
        tmp_path,
        _agg_pipeline("{count: 2}", mode="passthrough", plugin="batch_replicate", options="{default_copies: 1}"),
    )
    assert len(r.rows("out/out.csv")) == 4
    assert r.outcomes() == {"completed": 4}
    assert_invariants(r.fold)


def test_a_passthrough_step_records_its_share_of_the_batch_s_time(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each row of a pass-through batch was recorded as taking 0 us. The clock here gives each
    batch 6 ms (a start and an end reading per flush): 3,000 us for each of its 2 rows."""
    import types

    from engine import batching

    readings = iter(range(0, 10**12, 6_000_000))
    monkeypatch.setattr(batching, "time", types.SimpleNamespace(perf_counter_ns=lambda: next(readings)))
    _input(tmp_path, [[i, 1, "x"] for i in range(1, 5)])
    r = run(
        db,
        tmp_path,
        _agg_pipeline("{count: 2}", mode="passthrough", plugin="batch_replicate", options="{default_copies: 1}"),
    )
    steps = [e.event for e in PostgresRecorder(db).read_events(r.outcome.run_id) if e.event_type == "StepCompleted"]
    assert [s.duration_us for s in steps if s.node == "agg"] == [3000] * 4


def test_passthrough_refuses_a_result_that_moves_rows_between_inputs(db: Database, tmp_path: Path) -> None:
    """batch_replicate rejects row 2 (0 copies) and makes two copies of row 1: as many outputs as
    inputs, but the second is row 1's data, which went on as row 2's token (recorded completed,
    row 2 nowhere, its rejection unrecorded). The batch fails instead, saying why."""
    _input(tmp_path, [[1, 2, "x"], [2, 0, "y"], [3, 1, "x"], [4, 1, "y"]])
    r = run(
        db,
        tmp_path,
        _agg_pipeline("{count: 2}", mode="passthrough", plugin="batch_replicate", options="{copies_field: v}"),
    )
    assert_invariants(r.fold)
    assert r.outcomes() == {"failed": 2, "completed": 2}
    assert [row["id"] for row in r.rows("out/out.csv")] == ["3", "4"]
    with db.connect() as conn:
        details = conn.execute(
            "SELECT DISTINCT detail FROM token_outcomes WHERE run_id = %s AND outcome = 'failed'", (r.outcome.run_id,)
        ).fetchall()
    assert details == [("passthrough needs one output per input, and the aggregation rejected input 2 of the batch",)]


def test_a_batch_error_fails_every_token_in_it(db: Database, tmp_path: Path) -> None:
    _input(tmp_path, [[1, 1, "a"], [2, 2, "b"], [3, 3, "a"]])
    r = run(db, tmp_path, _agg_pipeline("{count: 2}", options="{value_field: v, group_by: note}"))
    assert_invariants(r.fold)
    assert r.outcomes()["failed"] == 2  # the first batch mixes 'a' and 'b'
    assert len(r.rows("out/out.csv")) == 1
    with db.connect() as conn:  # the category and the words both reach the analysts' table
        failed = conn.execute(
            "SELECT reason, detail FROM token_outcomes WHERE run_id = %s AND outcome = 'failed'", (r.outcome.run_id,)
        ).fetchall()
    assert len(failed) == 2 and all(
        reason == "batch_failed" and detail == "the batch mixes 2 different values of 'note'"
        for reason, detail in failed
    )


GATE = """
source:
  plugin: csv
  on_success: raw
  options: {{path: in.csv, {schema}, on_validation_failure: bad}}
gates:
- name: g
  input: raw
  condition: "{condition}"
  routes: {{'true': hi, 'false': lo}}
  {on_error}
sinks:
  hi: {{plugin: csv, options: {{path: out/hi.csv}}}}
  lo: {{plugin: csv, options: {{path: out/lo.csv}}}}
  bad: {{plugin: json, options: {{path: out/bad.jsonl, format: jsonl}}}}
"""


@pytest.mark.parametrize(
    "condition",
    ["100 / row['v'] > 1", "row['missing'] > 1", "row['note'] + 1 > 1"],
    ids=["division-by-zero", "missing-field", "type-error"],
)
def test_gate_row_errors_go_to_on_error_and_the_run_goes_on(db: Database, tmp_path: Path, condition: str) -> None:
    _input(tmp_path, [[1, 0, "x"], [2, 5, "y"]])
    schema = "schema: {mode: flexible, fields: ['id: int', 'v: int']}"
    r = run(db, tmp_path, GATE.format(schema=schema, condition=condition, on_error="on_error: bad"))
    assert_invariants(r.fold)
    bad = r.rows("out/bad.jsonl")
    assert bad and bad[0]["id"] == 1
    assert r.outcomes().get("diverted", 0) >= 1


def test_gate_row_error_without_on_error_fails_the_token_not_the_run(db: Database, tmp_path: Path) -> None:
    _input(tmp_path, [[1, 0, "x"], [2, 5, "y"]])
    schema = "schema: {mode: flexible, fields: ['id: int', 'v: int']}"
    r = run(db, tmp_path, GATE.format(schema=schema, condition="100 / row['v'] > 1", on_error=""))
    assert_invariants(r.fold)
    assert r.outcomes() == {"failed": 1, "routed": 1}


def test_a_routed_token_names_the_gate_that_routed_it(db: Database, tmp_path: Path) -> None:
    """In its terminal event, so in `token_outcomes.node` and the gate's `routed` metric, as a
    diverted or failed token names its node."""
    _input(tmp_path, [[1, 0, "x"], [2, 5, "y"], [3, 9, "z"]])
    r = run(db, tmp_path, GATE.format(schema=SCHEMA, condition="row['v'] > 1", on_error=""))
    assert_invariants(r.fold)
    routed = [e.event for e in PostgresRecorder(db).read_events(r.outcome.run_id) if e.event_type == "TokenRouted"]
    assert sorted((e.sink, e.node) for e in routed) == [("hi", "g"), ("hi", "g"), ("lo", "g")]  # type: ignore[attr-defined]
    with db.connect() as conn:
        nodes = conn.execute("SELECT DISTINCT node FROM token_outcomes WHERE run_id = %s", (r.outcome.run_id,))
        metric = conn.execute(
            "SELECT value FROM run_metrics WHERE run_id = %s AND metric = 'node.g.routed'", (r.outcome.run_id,)
        ).fetchone()
        assert [n for (n,) in nodes] == ["g"] and metric == (3,)


def test_rows_that_do_not_fit_the_schema_are_quarantined_with_their_reason(db: Database, tmp_path: Path) -> None:
    _input(tmp_path, [[1, "ten", "x"], [2, 5, "y"]])
    r = run(db, tmp_path, GATE.format(schema=SCHEMA, condition="row['v'] > 1", on_error=""))
    assert_invariants(r.fold)
    assert r.rows("out/bad.jsonl") == [{"id": "1", "v": "ten", "note": "x"}]
    assert r.outcomes() == {"quarantined": 1, "routed": 1}


def test_json_explode_expands_in_output_order(db: Database, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"o": 1, "items": [1, 2, 3]}\n{"o": 2, "items": []}\n')
    settings = """
source:
  plugin: json
  on_success: raw
  options: {path: in.jsonl, format: jsonl, schema: {mode: observed}}
transforms:
- name: explode
  plugin: json_explode
  input: raw
  on_success: out
  on_error: discard
  options: {array_field: items}
sinks:
  out: {plugin: json, options: {path: out/out.json}}
"""
    r = run(db, tmp_path, settings)
    assert r.rows("out/out.json") == [
        {"o": 1, "item": 1, "item_index": 0},
        {"o": 1, "item": 2, "item_index": 1},
        {"o": 1, "item": 3, "item_index": 2},
    ]
    assert r.outcomes() == {"expanded": 1, "completed": 3, "diverted": 1}
    assert_invariants(r.fold)


def test_a_source_record_too_large_to_record_is_quarantined_as_which_record_it_was(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1.1 GB line: its commit failed on the store's 1 GiB limit, the run stopped saying to fix
    the cause and resume, which read the same record again (a review). A row is held to what a
    step's outputs may take (here 4 KiB); past it, valid or not, the record is quarantined, and
    recorded as which record it was and how large."""
    import engine.work

    monkeypatch.setattr(engine.work, "MAX_OUTPUT_BYTES", 4096)
    big = "x" * 5000
    (tmp_path / "in.jsonl").write_text(f'{{"id": 1}}\n{{"id": 2, "v": "{big}"}}\n{{"id": 3, {big}\n{{"id": 4}}\n')
    settings = """
source:
  plugin: json
  on_success: out
  options: {path: in.jsonl, format: jsonl, schema: {mode: observed}, on_validation_failure: bad}
sinks:
  out: {plugin: json, options: {path: out/out.jsonl, format: jsonl}}
  bad: {plugin: json, options: {path: out/bad.jsonl, format: jsonl}}
"""
    r = run(db, tmp_path, settings)
    assert [row["id"] for row in r.rows("out/out.jsonl")] == [1, 4]
    assert r.rows("out/bad.jsonl") == [
        {"__raw_line__": "", "__line_number__": 2},  # (a row: in the keys of a line that did not decode)
        {"__raw_line__": "", "__line_number__": 3},  # (a line that did not decode)
    ]
    events = [e for s in PostgresRecorder(db).read_events(r.outcome.run_id) if (e := s.event)]
    reasons = [e.reason for e in events if isinstance(e, ev.TokenQuarantined | ev.TokenDiverted)]
    assert any("the row takes 5,015 bytes recorded, more than the 4,096 a row may" in x for x in reasons), reasons
    assert any(x.endswith("; takes 5,051 bytes recorded, more than the 4,096 a row may, so only which record it "
                          "was is recorded") for x in reasons), reasons  # fmt: skip


def _to_a_csv_quarantine(plugin: str, options: str) -> str:
    """Settings: `plugin` with `options` (flow-mapping text) into out/o.csv, its bad rows into the
    CSV sink q (out/q.csv)."""
    return f"""
source:
  plugin: {plugin}
  on_success: out
  options: {{{options}, on_validation_failure: q}}
sinks:
  out: {{plugin: csv, options: {{path: out/o.csv}}}}
  q: {{plugin: csv, options: {{path: out/q.csv}}}}
"""


def test_a_quarantine_sink_that_refuses_a_record_keeps_the_sources_reason_in_the_outcome(
    db: Database, tmp_path: Path
) -> None:
    """A CSV quarantine sink takes the fields of the first record it is given: a record with
    another field more is refused there and its token fails (sink_row_refused). Why the source
    refused it was then only in the SinkAssigned event, which an analyst cannot read: the outcome's
    detail says it now (a review)."""
    (tmp_path / "in.csv").write_text("id,amount\n1,x\n2,3,4\n3,5\n")
    r = run(
        db,
        tmp_path,
        _to_a_csv_quarantine("csv", "path: in.csv, schema: {mode: fixed, fields: ['id: int', 'amount: int']}"),
    )
    assert r.outcomes() == {"completed": 1, "quarantined": 1, "failed": 1}
    with db.connect() as conn:
        (detail,) = conn.execute(
            "SELECT detail FROM token_outcomes WHERE run_id = %s AND reason = 'sink_row_refused'",
            (r.outcome.run_id,),
        ).fetchone() or (None,)
    assert detail is not None and detail.startswith("sink 'q' cannot write the row: "), detail
    assert detail.endswith("; it was to be quarantined: expected 2 fields, found 3"), detail


def test_a_record_too_large_to_record_fits_a_csv_quarantine_sink_an_unparsed_line_fixed(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its stub had a key of its own (`__bytes__`): a CSV quarantine sink whose columns a
    ragged line had fixed (`__raw_line__,__line_number__,__row_number__`) refused it, failed
    where the docs said quarantined (a review). It carries an unparsed line's keys now."""
    import engine.work

    monkeypatch.setattr(engine.work, "MAX_OUTPUT_BYTES", 200)
    (tmp_path / "in.csv").write_text("id,note\n1,ok\n2,a,b\n3," + "x" * 500 + "\n4,ok\n5,b,c," + "y" * 500 + "\n")
    settings = _to_a_csv_quarantine("csv", "path: in.csv, schema: {mode: fixed, fields: ['id: int', 'note: str']}")
    r = run(db, tmp_path, settings)
    assert r.outcomes() == {"completed": 2, "quarantined": 3}
    assert r.rows("out/q.csv") == [
        {"__raw_line__": "2,a,b", "__line_number__": "3", "__row_number__": "2"},
        {"__raw_line__": "", "__line_number__": "4", "__row_number__": "3"},  # a row too large
        {"__raw_line__": "", "__line_number__": "6", "__row_number__": "5"},  # a ragged line too large
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_a_row_too_large_first_and_an_unparsed_line_after_fit_one_csv_quarantine_sink(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """A JSON source's unparsed lines have no row number: a valid row too large, sent first as
    `__raw_line__,__row_number__`, fixed a CSV quarantine sink's columns, and the line after it
    that did not parse (`__line_number__`) was refused and the run failed (a review). The stub
    has the source's keys, and the line its record starts on."""
    import engine.work

    monkeypatch.setattr(engine.work, "MAX_OUTPUT_BYTES", 200)
    big = "x" * 500
    if fmt == "jsonl":
        (tmp_path / "in.json").write_text(f'{{"id": 1}}\n\n{{"id": 2, "v": "{big}"}}\n[3]\n{{"id": 4}}\n')
    else:
        (tmp_path / "in.json").write_text(f'[{{"id": 1}}, {{"id": 2, "v": "{big}"}}, [3], {{"id": 4}}]')
    settings = _to_a_csv_quarantine("json", f"path: in.json, format: {fmt}, schema: {{mode: observed}}")
    r = run(db, tmp_path, settings)
    assert r.outcomes() == {"completed": 2, "quarantined": 2}
    line = "3" if fmt == "jsonl" else "2"  # (a JSON array's records are numbered as its lines)
    assert r.rows("out/q.csv") == [
        {"__raw_line__": "", "__line_number__": line},
        {"__raw_line__": "[3]", "__line_number__": str(int(line) + 1)},
    ]


def test_a_row_too_large_names_its_own_line_whatever_keys_it_holds(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row is the input's: one holding `__raw_line__` and `__line_number__` keys, invalid and too
    large, was taken for a line the source could not parse, and its stub named the line the row
    chose (a review). Its own line, whatever it holds."""
    import engine.work

    monkeypatch.setattr(engine.work, "MAX_OUTPUT_BYTES", 200)
    row = {"__raw_line__": "x", "__line_number__": 99, "id": "not a number", "v": "x" * 500}
    (tmp_path / "in.jsonl").write_text('{"id": 1, "v": "a"}\n' + json.dumps(row) + "\n")
    settings = _to_a_csv_quarantine("json", "path: in.jsonl, schema: {mode: fixed, fields: ['id: int', 'v: str']}")
    r = run(db, tmp_path, settings)
    assert r.rows("out/q.csv") == [{"__raw_line__": "", "__line_number__": "2"}]


def test_a_row_that_expands_past_what_a_step_may_make_is_its_row_error(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every child of an exploded row carries the rest of the row: 3,000 items beside 100 KB of
    text took 1 GB of memory and 614 MB of store for a 117 KB input (a hostile review). A step's
    outputs are bounded together (here at 64 KiB); a row past that is diverted with the reason,
    nothing of its children recorded, and the rows around it go on."""
    import engine.work

    monkeypatch.setattr(engine.work, "MAX_OUTPUT_BYTES", 64 * 1024)
    monkeypatch.setattr(engine.work, "MAX_OUTPUT_ROWS", 50)
    pad = "p" * 10_000
    lines = [{"o": 1, "pad": "", "items": [1, 2]}, {"o": 2, "pad": pad, "items": list(range(20))},
             {"o": 3, "pad": pad, "items": [1, 2, 3]}, {"o": 4, "pad": "", "items": list(range(51))}]  # fmt: skip
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    settings = """
source:
  plugin: json
  on_success: raw
  options: {path: in.jsonl, format: jsonl, schema: {mode: observed}}
transforms:
- name: explode
  plugin: json_explode
  input: raw
  on_success: out
  on_error: bad
  options: {array_field: items}
sinks:
  out: {plugin: json, options: {path: out/out.jsonl, format: jsonl}}
  bad: {plugin: json, options: {path: out/bad.jsonl, format: jsonl}}
"""
    r = run(db, tmp_path, settings)
    assert [(row["o"], row["item"]) for row in r.rows("out/out.jsonl")] == [(1, 1), (1, 2), (3, 1), (3, 2), (3, 3)]
    assert [row["o"] for row in r.rows("out/bad.jsonl")] == [2, 4]
    events = [(s.entity_id, e) for s in PostgresRecorder(db).read_events(r.outcome.run_id) if (e := s.event)]
    diverted = [e.reason for t, e in events if isinstance(e, ev.TokenDiverted)]
    assert diverted == ["its output cannot be recorded: its 20 output rows take more than 65536 bytes, the most "
                        "one step may make",
                        "its output cannot be recorded: it made 51 output rows, more than the 50 one step may make"]  # fmt: skip
    assert not [t for t, _e in events if t.startswith("r1.")]  # no child of row 2 recorded
    assert_invariants(r.fold)


def test_a_durability_point_comes_once_enough_is_buffered_whatever_the_row_count(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a batch holds is in memory until its commit: past COMMIT_BYTES the next row boundary
    is a durability point, however few rows since the last."""
    import engine.orchestrator

    monkeypatch.setattr(engine.orchestrator, "COMMIT_BYTES", 1)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"o": i}) + "\n" for i in range(5)))
    settings = """
source:
  plugin: json
  on_success: out
  options: {path: in.jsonl, format: jsonl, schema: {mode: observed}}
sinks:
  out: {plugin: json, options: {path: out/out.jsonl, format: jsonl}}
"""
    r = run(db, tmp_path, settings, commit_every=1000)
    flushes = [
        e for s in PostgresRecorder(db).read_events(r.outcome.run_id) if isinstance(e := s.event, ev.SinkFlushed)
    ]
    assert [f.rows for f in flushes if f.rows] == [1, 1, 1, 1, 1]  # one durability point a row


@pytest.mark.parametrize("merge", ["union", "nested", "select"])
@pytest.mark.parametrize(
    ("policy", "extra", "merged"),
    [
        ("require_all", "", 2),  # row 2 lost branch b: failed, branch_lost
        ("first", "", 3),
        ("quorum", "quorum_count: 1", 3),
        ("best_effort", "timeout_seconds: 60", 3),
    ],
)
def test_every_policy_with_every_merge_resolves_every_row(
    db: Database, tmp_path: Path, policy: str, extra: str, merge: str, merged: int
) -> None:
    _input(tmp_path, ROWS)
    select = "select_branch: a" if merge == "select" else ""
    r = run(db, tmp_path, _fork_pipeline(policy, merge, f"{extra}\n  {select}"))
    rows = r.rows("out/out.jsonl")
    assert len(rows) == merged
    assert_invariants(r.fold)
    if merge == "nested":
        assert set(rows[0]) <= {"a", "b"}
    elif merge == "select":
        assert rows[0] == {"id": 1, "va": 10, "note": "ok"}  # branch a's row
    with db.connect() as conn:
        resolutions = conn.execute(
            "SELECT status, reason, missing FROM coalesces WHERE run_id = %s ORDER BY row_index", (r.outcome.run_id,)
        ).fetchall()
    assert len(resolutions) == 3  # one per forked row, each with a recorded resolution
    if policy == "require_all":
        assert resolutions[1] == ("failed", "branch_lost", "b")


def test_state_kept_between_rows_does_not_grow_with_the_input(db: Database, tmp_path: Path) -> None:
    """ARCHITECTURE §8.7: only waiting tokens and open coalesces/batches are kept in memory."""
    from engine.orchestrator import build_pipeline, start_run
    from engine.settings import load_settings

    _input(tmp_path, [[i, i, "ok" if i % 3 else "bad"] for i in range(600)])
    (tmp_path / "out").mkdir()
    (tmp_path / "s.yaml").write_text(_fork_pipeline("first", "union"))
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        outcome = start_run(db, build_pipeline(load_settings(tmp_path / "s.yaml")), commit_every=50)
    finally:
        os.chdir(old)
    live = outcome.fold
    assert live.tokens == {} and live.coalesces == {} and live.batches == {}
    assert live.resolved_coalesces == {}  # pruned at durability points: nothing kept for 600 rows
    assert live.ended is None  # a live run keeps no set of ended tokens


class _BrokenSink:
    """A sink whose storage is gone: every flush fails."""

    kind = "sink"

    def open(self, run_id: str, position: int | None) -> None:
        pass

    def __init__(self) -> None:
        self.buffered = 0

    def write(self, token_id: str, row: dict[str, object]) -> None:
        self.buffered += 1

    def flush(self) -> int:
        from engine.plugins.protocol import PluginError

        if self.buffered:
            raise PluginError("sink", "disk full")
        return 0

    def close(self) -> None:
        pass

    def release(self) -> None:
        self.buffered = 0

    def location(self) -> str:
        return "nowhere"


WRITE_FAILURE = """
source:
  plugin: csv
  on_success: out
  options: {{path: in.csv, {schema}}}
sinks:
  out: {{plugin: csv, options: {{path: out/out.csv}}{failure}}}
  backup: {{plugin: csv, options: {{path: out/backup.csv}}}}
"""


@pytest.mark.parametrize("failure", ["backup", "discard", None])
def test_a_failed_sink_write_goes_to_on_write_failure(db: Database, tmp_path: Path, failure: str | None) -> None:
    from engine.errors import RunFailedError
    from engine.orchestrator import build_pipeline, start_run
    from engine.settings import load_settings

    _input(tmp_path, [[1, 1, "a"], [2, 2, "b"]])
    (tmp_path / "out").mkdir()
    text = WRITE_FAILURE.format(schema=SCHEMA, failure=f", on_write_failure: {failure}" if failure else "")
    (tmp_path / "s.yaml").write_text(text)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        pipeline = build_pipeline(load_settings(tmp_path / "s.yaml"))
        pipeline.nodes.sinks["out"] = _BrokenSink()  # type: ignore[assignment]
        if failure is None:
            with pytest.raises(RunFailedError, match="disk full"):
                start_run(db, pipeline, run_id=f"run-wf-none-{os.urandom(6).hex()}", clock=FakeClock())
            return
        outcome = start_run(db, pipeline, clock=FakeClock())
    finally:
        os.chdir(old)
    from engine.orchestrator import fold_run

    fold = fold_run(db, outcome.run_id, strict=True)
    assert_invariants(fold)
    if failure == "backup":
        assert (tmp_path / "out" / "backup.csv").read_text().splitlines() == ["id,v,note", "1,1,a", "2,2,b"]
        assert dict(fold.outcomes) == {"diverted": 2}
    else:
        assert dict(fold.outcomes) == {"failed": 2}


class _FlakySink(_BrokenSink):
    """Fails its first `failures` flushes that carry rows, then works (rows kept in memory)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.rows: list[dict[str, object]] = []
        self.pending: list[dict[str, object]] = []

    def write(self, token_id: str, row: dict[str, object]) -> None:
        self.pending.append(row)

    def flush(self) -> int:
        from engine.plugins.protocol import PluginError

        if self.pending and self.failures > 0:
            self.failures -= 1
            raise PluginError("sink", "connection reset")
        self.rows.extend(self.pending)
        self.pending = []
        return len(self.rows)

    def release(self) -> None:
        self.pending = []


def _run_with_sink(
    db: Database, tmp_path: Path, sink: object, retry: str, clock: FakeClock, commit_every: int = 1
) -> object:
    from engine.orchestrator import build_pipeline, fold_run, start_run
    from engine.settings import load_settings

    _input(tmp_path, [[1, 1, "a"], [2, 2, "b"]])
    (tmp_path / "out").mkdir(exist_ok=True)
    text = WRITE_FAILURE.format(schema=SCHEMA, failure=", on_write_failure: backup") + retry
    (tmp_path / "s.yaml").write_text(text)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        pipeline = build_pipeline(load_settings(tmp_path / "s.yaml"))
        pipeline.nodes.sinks["out"] = sink  # type: ignore[assignment]
        outcome = start_run(db, pipeline, clock=clock, commit_every=commit_every)
    finally:
        os.chdir(old)
    return fold_run(db, outcome.run_id, strict=True)


def test_a_failing_sink_write_is_retried_with_backoff_and_every_attempt_recorded(db: Database, tmp_path: Path) -> None:
    clock = FakeClock()
    sink = _FlakySink(failures=2)
    retry = "retry: {max_attempts: 3, initial_delay_seconds: 2, exponential_base: 3}\n"
    fold = _run_with_sink(db, tmp_path, sink, retry, clock)
    assert_invariants(fold)  # type: ignore[arg-type]
    assert sink.rows == [{"id": 1, "v": 1, "note": "a"}, {"id": 2, "v": 2, "note": "b"}]
    assert dict(fold.outcomes) == {"completed": 2}  # type: ignore[attr-defined]
    # the two failed attempts waited 2 s and 6 s, each with jitter in [50 %, 100 %]
    assert 1_700_000_000 + 1 + 3 <= clock.now() <= 1_700_000_000 + 2 + 6
    # `show` lists each failed attempt in the run's lifecycle, with the error and what came next
    from landscape.queries import run_lifecycle

    failed = [e.detail or "" for e in run_lifecycle(db, fold.run_id) if e.event == "SinkWriteFailed"]  # type: ignore[attr-defined]
    assert [d.split(";")[0] for d in failed] == [f"attempt {n}: sink 'out': connection reset" for n in (1, 2)]
    assert all("next attempt" in d for d in failed), failed


class _ChangedSink(_FlakySink):
    """Its first flush fails; opened again, its destination no longer takes rows with v == 2
    (a table altered meanwhile): `write` refuses them, as a database sink then does."""

    def __init__(self) -> None:
        super().__init__(failures=1)
        self.opened = 0

    def open(self, run_id: str, position: int | None) -> None:
        self.opened += 1

    def write(self, token_id: str, row: dict[str, object]) -> None:
        from engine.plugins.protocol import RowError

        if self.opened > 1 and row["v"] == 2:
            raise RowError("field 2 of the row holds an integer its column no longer takes")
        super().write(token_id, row)


def test_a_row_the_sink_no_longer_takes_when_retried_follows_on_write_failure(db: Database, tmp_path: Path) -> None:
    """A retried flush writes its rows again into the sink opened anew, which checks them against
    its destination as it is now: a row refused then was a RowError out of the run's loop (a
    traceback, the run left open). It follows on_write_failure, as at its first write."""
    sink = _ChangedSink()
    retry = "retry: {max_attempts: 2, initial_delay_seconds: 0}\n"
    fold = _run_with_sink(db, tmp_path, sink, retry, FakeClock(), commit_every=10)  # (one flush of both)
    assert_invariants(fold)  # type: ignore[arg-type]
    assert sink.rows == [{"id": 1, "v": 1, "note": "a"}]
    assert (tmp_path / "out" / "backup.csv").read_text().splitlines() == ["id,v,note", "2,2,b"]
    assert dict(fold.outcomes) == {"completed": 1, "diverted": 1}  # type: ignore[attr-defined]


def test_a_long_retry_budget_waits_at_most_its_cap_and_does_not_overflow(db: Database, tmp_path: Path) -> None:
    """max_attempts 2000 with base 2: 2.0 ** 1024 raised OverflowError inside the record of a
    failed attempt, a traceback, and the run was left open (a review). The wait is capped."""
    from engine.sinkwriter import backoff

    assert backoff(0.001, 2, 2000, 60) == 60 and backoff(1, 1e308, 3, 5) == 5 and backoff(0, 2, 2000, 60) == 0
    clock = FakeClock()
    sink = _FlakySink(failures=1030)
    retry = "retry: {max_attempts: 1100, initial_delay_seconds: 0.001, max_delay_seconds: 0.001}\n"
    fold = _run_with_sink(db, tmp_path, sink, retry, clock)
    assert_invariants(fold)  # type: ignore[arg-type]
    assert dict(fold.outcomes) == {"completed": 2}  # type: ignore[attr-defined]


def test_the_circuit_breaker_stops_trying_a_sink_that_keeps_failing(db: Database, tmp_path: Path) -> None:
    clock = FakeClock()
    sink = _FlakySink(failures=1000)
    retry = "retry: {max_attempts: 2, initial_delay_seconds: 1, failure_threshold: 2, reset_seconds: 600}\n"
    fold = _run_with_sink(db, tmp_path, sink, retry, clock)
    assert_invariants(fold)  # type: ignore[arg-type]
    # row 1: two attempts fail, it goes to backup; row 2: the circuit is open, straight to backup
    assert sink.failures == 1000 - 2
    assert (tmp_path / "out" / "backup.csv").read_text().splitlines() == ["id,v,note", "1,1,a", "2,2,b"]


class _ShortNapClock(FakeClock):
    """Waits at most half a second per call, as the system clock does (so that a stop request
    is seen while idle): whoever needs a later time must wait again."""

    def sleep_until(self, when: float) -> None:
        self.t = min(max(self.t, when), self.t + 0.5)


class _TimedFlakySink(_FlakySink):
    """Remembers when each flush that carried rows was tried."""

    def __init__(self, failures: int, clock: FakeClock) -> None:
        super().__init__(failures)
        self.clock, self.tried = clock, []  # type: list[float]

    def flush(self) -> int:
        if self.pending:
            self.tried.append(self.clock.now())
        return super().flush()


def test_a_retry_waits_its_whole_backoff_even_when_the_clock_naps_briefly(db: Database, tmp_path: Path) -> None:
    clock = _ShortNapClock()
    sink = _TimedFlakySink(failures=1, clock=clock)
    retry = "retry: {max_attempts: 3, initial_delay_seconds: 4, exponential_base: 2}\n"
    fold = _run_with_sink(db, tmp_path, sink, retry, clock)
    assert dict(fold.outcomes) == {"completed": 2}  # type: ignore[attr-defined]
    first, second = sink.tried[:2]
    assert second - first >= 2.0  # 4 s with jitter in [50 %, 100 %], not one 0.5 s nap


class _Truthy:
    """Turns the number 1 into `true`: equal in Python (1 == True), other bytes in the output."""

    kind = "transform"

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        return {k: (True if v == 1 and k == "v" else v) for k, v in row.items()}


def _filters(names: list[str]) -> str:
    """Settings: in.csv through keyword_filter steps `names` in a row to out/out.jsonl; the last
    step's plugin is then replaced by `stand_in` (see `_run_with_stand_in`)."""
    steps = "".join(
        f"""- name: {name}
  plugin: keyword_filter
  input: {"raw" if i == 0 else names[i - 1]}
  on_success: {"out" if i == len(names) - 1 else name}
  on_error: discard
  options: {{fields: [note], blocked_patterns: ['secret']}}
"""
        for i, name in enumerate(names)
    )
    return f"""
source:
  plugin: csv
  on_success: raw
  options: {{path: in.csv, {SCHEMA}, on_validation_failure: discard}}
transforms:
{steps}sinks:
  out: {{plugin: json, options: {{path: out/out.jsonl, format: jsonl}}}}
"""


def _run_with_stand_in(db: Database, tmp_path: Path, names: list[str], stand_in: object) -> str:
    """Run `_filters(names)` with its last transform's plugin replaced by `stand_in`; the run id."""
    pipeline = load_pipeline(tmp_path, _filters(names))
    cfg, _ = pipeline.nodes.transforms[names[-1]]
    pipeline.nodes.transforms[names[-1]] = (cfg, stand_in)  # type: ignore[assignment]
    outcome = start_run(db, pipeline)
    pipeline.close()
    return outcome.run_id


def test_a_step_that_keeps_the_bytes_names_the_same_payload_and_one_that_changes_them_a_new_one(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _input(tmp_path, [[1, 1, "fine"]])
    monkeypatch.chdir(tmp_path)
    run_id = _run_with_stand_in(db, tmp_path, ["keep", "truthy"], _Truthy())
    steps = {}
    for stored in PostgresRecorder(db).read_events(run_id):
        event = stored.event
        if isinstance(event, ev.StepCompleted):
            steps[event.node] = event
    assert steps["keep"].output_hash == steps["keep"].input_hash  # one copy of unchanged bytes
    assert steps["truthy"].output_hash != steps["truthy"].input_hash  # 1 == True, but not the same bytes
    data = PostgresRecorder(db).payloads(run_id, [steps["truthy"].output_hash])
    assert decode_row(data[steps["truthy"].output_hash].data)["v"] is True


@pytest.mark.parametrize("commit_every", [1, 2, 1000])
def test_the_batch_and_metric_projections_say_what_the_run_did(db: Database, tmp_path: Path, commit_every: int) -> None:
    """Written a durability point at a time (a batch opened in one and flushed in a later one),
    the analyst tables hold each batch's final status, trigger and size, and the run's counts."""
    _input(tmp_path, [[i, i * 10, "x"] for i in range(1, 8)])
    r = run(db, tmp_path, _agg_pipeline("{count: 3}"), commit_every=commit_every)
    with db.connect() as conn:
        batches = conn.execute(
            "SELECT aggregation, status, trigger, size FROM batches WHERE run_id = %s ORDER BY size DESC, batch_id",
            (r.outcome.run_id,),
        ).fetchall()
        metrics = dict(
            conn.execute("SELECT metric, value FROM run_metrics WHERE run_id = %s", (r.outcome.run_id,)).fetchall()
        )
    assert batches == [
        ("agg", "completed", "count", 3),
        ("agg", "completed", "count", 3),
        ("agg", "completed", "end_of_source", 1),
    ]
    assert metrics["rows_in"] == 7
    assert metrics["batch.completed"] == 3
    assert metrics["outcome.consumed_in_batch"] == 7


class _SliceSpy:
    kind = "transform"
    seen: list[float] = []

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        _SliceSpy.seen.append(sys.getswitchinterval())
        return row


def test_a_run_takes_short_gil_slices_for_its_writer_and_gives_them_back(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _input(tmp_path, [[1, 1, "x"]])
    monkeypatch.chdir(tmp_path)
    before = sys.getswitchinterval()
    _run_with_stand_in(db, tmp_path, ["spy"], _SliceSpy())
    assert _SliceSpy.seen == [pytest.approx(GIL_SLICE_SECONDS)] and before > 10 * GIL_SLICE_SECONDS
    assert sys.getswitchinterval() == before


def test_a_row_json_cannot_hold_is_never_recorded_as_another(db: Database, tmp_path: Path) -> None:
    """The canonical encoder writes null for an infinity: recorded so, the audit trail would say
    the row held null. A source row holding one is quarantined; an aggregation whose output
    overflows to one fails its batch, with the reason; nothing reads null."""
    write_csv(tmp_path / "in.csv", ["id", "v"], [])
    settings = """
source:
  plugin: csv
  on_success: src
  options: {path: in.csv, schema: {mode: observed}, on_validation_failure: discard}
aggregations:
- name: stats
  plugin: batch_stats
  input: src
  on_success: out
  on_error: discard
  trigger: {count: 2}
  options: {value_field: v}
sinks:
  out: {plugin: json, options: {path: out.jsonl, format: jsonl}}
"""
    items = [item(0, id=0, v=float("inf")), item(1, id=1, v=1e308), item(2, id=2, v=1e308), item(3, id=3, v=1.5)]
    result = run(db, tmp_path, settings, source_items=[*items, None])
    events = [(s.entity_id, e) for s in PostgresRecorder(db).read_events(result.outcome.run_id) if (e := s.event)]
    quarantined = [e.reason for t, e in events if isinstance(e, ev.TokenQuarantined)]
    assert [t for t, e in events if isinstance(e, ev.TokenQuarantined)] == ["r0"]
    assert "not finite" in quarantined[0]
    failed = [e.reason for _t, e in events if isinstance(e, ev.BatchFailed)]
    assert len(failed) == 1 and "cannot be recorded" in failed[0] and "not finite" in failed[0]
    assert not (tmp_path / "out.jsonl").exists() or "Infinity" not in (tmp_path / "out.jsonl").read_text()


def test_an_aggregation_output_past_what_can_be_recorded_fails_its_batch_not_the_run(
    db: Database, tmp_path: Path
) -> None:
    """Valid source ints whose mean leaves a float's range, or whose sum has more digits than
    Python writes out: each fails its batch with the reason (the run failed for good, or ended
    in a traceback with the run left running), and the run completes."""
    write_csv(tmp_path / "in.csv", ["id", "v"], [])
    settings = """
source:
  plugin: csv
  on_success: src
  options: {path: in.csv, schema: {mode: observed}, on_validation_failure: discard}
aggregations:
- name: mean
  plugin: batch_stats
  input: src
  on_success: sums
  on_error: discard
  trigger: {count: 2}
  options: {value_field: v}
- name: sum
  plugin: batch_stats
  input: sums
  on_success: out
  on_error: discard
  trigger: {count: 1}
  options: {value_field: sum, compute_mean: false}
sinks:
  out: {plugin: json, options: {path: out.jsonl, format: jsonl}}
"""
    long = int("9" * 4300)
    items = [item(0, id=0, v=10**400), item(1, id=1, v=1), item(2, id=2, v=5), item(3, id=3, v=7)]
    result = run(db, tmp_path, settings, source_items=[*items, None])
    assert result.outcome.status == "completed"
    events = [e for s in PostgresRecorder(db).read_events(result.outcome.run_id) if (e := s.event)]
    failed = [e.reason for e in events if isinstance(e, ev.BatchFailed)]
    assert failed == ["the mean of 'v' is out of a float's range"]
    assert [json.loads(line)["sum"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [12]

    items = [item(0, id=0, v=long), item(1, id=1, v=long)]
    settings = settings.replace("{value_field: v}", "{value_field: v, compute_mean: false}")
    result = run(db, tmp_path, settings.replace("out.jsonl", "out2.jsonl"), source_items=[*items, None])
    assert result.outcome.status == "completed"
    events = [e for s in PostgresRecorder(db).read_events(result.outcome.run_id) if (e := s.event)]
    failed = [e.reason for e in events if isinstance(e, ev.BatchFailed)]
    assert failed == ["an output row cannot be recorded: an integer has more than 4300 digits, more than Python "
                      "writes out"]  # fmt: skip


class _TimedSource(ScriptedSource):
    """Scripted records, each read at the time `times` gives it (the system clock set back once)."""

    def __init__(self, items: list[SourceItem | None], clock: FakeClock, times: list[float]) -> None:
        super().__init__(items)
        self.clock, self.times = clock, times

    def read(self, start: int = 0) -> Iterator[SourceItem | None]:
        for it, t in zip(self.items, self.times, strict=True):
            self.clock.t = t
            yield it


def test_a_clock_set_back_does_not_hold_up_the_durability_points(db: Database, tmp_path: Path) -> None:
    """Durability points come every second of the clock (and every `commit_every` records): a
    clock set back an hour must not mean an hour without one."""
    settings = f"""
source: {{plugin: csv, on_success: out, options: {{path: in.csv, {SCHEMA}, on_validation_failure: discard}}}}
sinks:
  out: {{plugin: json, options: {{path: out/out.jsonl}}}}
"""
    clock = FakeClock()
    t0 = clock.now()
    times = [t0, t0 - 3600, *(t0 - 3600 + 0.1 * k for k in range(1, 29))]  # 30 records, 0.1 s apart
    items: list[SourceItem | None] = [item(i, id=i, v=i, note="ok") for i in range(30)]
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        pipeline = load_pipeline(tmp_path, settings)
        pipeline.source = _TimedSource(items, clock, times)  # type: ignore[assignment]
        outcome = start_run(db, pipeline, clock=clock, commit_every=1000)
        pipeline.close()
    finally:
        os.chdir(old)
    commits = len(PostgresRecorder(db).checkpoints(outcome.run_id))  # every commit signs one
    assert commits >= 4, commits  # the first, when the clock went back, then each second, and the last


def _batch_on_a_branch(aggregation: str, other: str) -> str:
    """Every row forked to branches a and b; on b a gate sends every row to `aggregation` (input
    b_in), its other route going to `other`; branch b of the coalesce (require_all) reads b_done."""
    return f"""
source:
  plugin: csv
  on_success: raw
  options: {{path: in.csv, {SCHEMA}, on_validation_failure: discard}}
gates:
- name: split
  input: raw
  condition: 'True'
  routes: {{'true': fork}}
  fork_to: [a, b]
- name: gb
  input: b
  condition: 'True'
  routes: {{'true': b_in, 'false': {other}}}
transforms:
- name: ta
  plugin: passthrough
  input: a
  on_success: a_done
  on_error: discard
aggregations:
{aggregation}
coalesce:
- name: join
  branches: {{a: a_done, b: b_done}}
  policy: require_all
  merge: nested
  on_success: out
sinks:
  out: {{plugin: json, options: {{path: out/out.jsonl, format: jsonl}}}}
  spare: {{plugin: json, options: {{path: out/spare.jsonl, format: jsonl}}}}
"""


@pytest.mark.parametrize(
    ("aggregation", "other", "lost_as"),
    [
        # a batch error (passthrough with one output for two inputs): every member failed (the
        # timeout, which never comes, keeps validate from refusing it: with a count alone it is)
        (
            "- {name: agg, plugin: batch_stats, input: b_in, on_success: b_done, on_error: discard, output_mode: "
            "passthrough, trigger: {count: 2, timeout_seconds: 3600}, options: {value_field: v}}",
            "spare",
            "failed",
        ),
        # a row the plugin rejects: quarantined (new rows, which go to a sink: no coalesce takes them)
        (
            "- {name: agg, plugin: batch_replicate, input: b_in, on_success: spare, on_error: discard, "
            "trigger: {count: 2}, options: {copies_field: v, max_copies: 5}}",
            "b_done",
            "quarantined",
        ),
        # consumed into new rows, which are no branch's
        (
            "- {name: agg, plugin: batch_stats, input: b_in, on_success: spare, on_error: discard, "
            "trigger: {count: 2}, options: {value_field: v}}",
            "b_done",
            "consumed by batch agg#",
        ),
    ],
    ids=["batch-failed", "quarantined", "consumed"],
)
def test_a_branch_that_ends_in_a_batch_is_lost_there(db: Database, tmp_path: Path, aggregation: str, other: str,
                                                    lost_as: str) -> None:  # fmt: skip
    """SETTINGS: a branch token that fails or is quarantined is lost, and require_all fails at
    once. A batch's members were not: their coalesces waited for the end of the source (the other
    branch's rows held meanwhile) and then failed as incomplete."""
    _input(tmp_path, [[i, 10 * i, "x"] for i in range(1, 7)])  # v 10..60: above max_copies
    r = run(db, tmp_path, _batch_on_a_branch(aggregation, other))
    assert_invariants(r.fold)
    events = list(PostgresRecorder(db).read_events(r.outcome.run_id))
    exhausted = next(e.seq for e in events if e.event_type == "SourceExhausted")
    lost = [e for e in events if e.event_type == "BranchLost"]
    failed = [e for e in events if e.event_type == "CoalesceFailed"]
    assert len(lost) == len(failed) == 6, [e.event_type for e in events]
    assert all(e.event.reason.startswith(lost_as) for e in lost)  # type: ignore[attr-defined]
    assert all(e.event.reason == "branch_lost" and e.seq < exhausted for e in failed)  # type: ignore[attr-defined]


def test_a_branch_forked_again_is_lost_to_its_coalesce_at_once(db: Database, tmp_path: Path) -> None:
    """SETTINGS: a branch token that leaves its way to the coalesce is lost, and require_all
    fails at once. Forked again (its children are another fork's branches, which this coalesce
    does not join), it was not: row 2's coalesce held branch b until the end of the source."""
    write_csv(tmp_path / "in.csv", ["id", "v"], [[1, 10], [2, 20], [3, 30]])
    settings = (
        "source: {plugin: csv, on_success: raw, options: {path: in.csv, "
        "schema: {mode: fixed, fields: ['id: int', 'v: int']}}}\n"
        "gates:\n- {name: split, input: raw, condition: 'True', routes: {'true': fork}, fork_to: [a, b]}\n"
        "- {name: again, input: a, condition: \"row['id'] != 2\", routes: {'true': a_ok, 'false': fork}, "
        "fork_to: [a1, a2]}\n"
        "coalesce:\n- {name: join, branches: {a: a_ok, b: b}, on_success: out}\n"
        "sinks:\n  out: {plugin: jsonl, options: {path: out/out.jsonl}}\n"
        "  a1: {plugin: jsonl, options: {path: out/a1.jsonl}}\n  a2: {plugin: jsonl, options: {path: out/a2.jsonl}}\n"
    )
    r = run(db, tmp_path, settings)
    assert_invariants(r.fold)
    events = list(PostgresRecorder(db).read_events(r.outcome.run_id))
    failed = [e for e in events if e.event_type == "CoalesceFailed"]
    assert [(e.entity_id, e.event.reason) for e in failed] == [("join:r1", "branch_lost")]  # type: ignore[attr-defined]
    lost = next(e for e in events if e.event_type == "BranchLost")
    assert lost.event.reason == "forked by gate again"  # type: ignore[attr-defined]
    row_3 = next(e.seq for e in events if e.entity_id == "r2")
    assert failed[0].seq < row_3  # at once, not at the end of the source
    assert [row["id"] for row in r.rows("out/out.jsonl")] == [1, 3]
    # explain shows that coalesce with the row, though none of its tokens was held there
    from landscape.lineage import explain_rows

    (row,) = explain_rows(PostgresRecorder(db), r.outcome.run_id, [1]).rows
    assert [(c.id, c.outcome, c.reason, c.arrived) for c in row.coalesces] == [("join:r1", "failed", "branch_lost", [])]


def test_an_expansion_on_a_joined_branch_is_refused_at_load(db: Database, tmp_path: Path) -> None:
    """One row per branch merges: every element but one failed there (`duplicate_branch`),
    while the row counted as written."""
    settings = (
        "source: {plugin: jsonl, on_success: raw, options: {path: in.jsonl}}\n"
        "gates:\n- {name: split, input: raw, condition: 'True', routes: {'true': fork}, fork_to: [a, b]}\n"
        "transforms:\n- {name: explode, plugin: json_explode, input: a, on_success: a_done, on_error: discard, "
        "options: {array_field: items}}\n"
        "coalesce:\n- {name: join, branches: {a: a_done, b: b}, merge: nested, on_success: out}\n"
        "sinks:\n  out: {plugin: jsonl, options: {path: out/out.jsonl}}\n"
    )
    (tmp_path / "in.jsonl").write_text('{"id": 1, "items": [1, 2, 3]}\n')
    with pytest.raises(SettingsError) as refused:
        load_pipeline(tmp_path, settings)
    assert refused.value.errors == [
        f"{tmp_path / 'settings.yaml'}: transforms[0].plugin: json_explode makes several rows of one, on branch 'a', "
        "which coalesce 'join' joins one row per branch: all but one would fail there; allowed: the expansion "
        "before the fork or after the coalesce"
    ]


class _Doubles:
    """A transform that returns two rows of one and does not say so (no `expands`)."""

    kind = "transform"

    def process(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        return [dict(row), dict(row)]


def test_an_undeclared_expansion_on_a_joined_branch_is_a_row_error(db: Database, tmp_path: Path) -> None:
    """Held to one row per branch at run time: before, its second row failed at the coalesce as
    `duplicate_branch` while the first merged."""
    write_csv(tmp_path / "in.csv", ["id", "v"], [[1, 10], [2, 20]])
    settings = (
        "source: {plugin: csv, on_success: raw, options: {path: in.csv}}\n"
        "gates:\n- {name: split, input: raw, condition: 'True', routes: {'true': fork}, fork_to: [a, b]}\n"
        "transforms:\n- {name: twice, plugin: passthrough, input: a, on_success: a_done, on_error: discard}\n"
        "coalesce:\n- {name: join, branches: {a: a_done, b: b}, on_success: out}\n"
        "sinks:\n  out: {plugin: jsonl, options: {path: out/out.jsonl}}\n"
    )
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        pipeline = load_pipeline(tmp_path, settings)
        cfg, _ = pipeline.nodes.transforms["twice"]
        pipeline.nodes.transforms["twice"] = (cfg, _Doubles())
        outcome = start_run(db, pipeline)
        pipeline.close()
    finally:
        os.chdir(old)
    events = list(PostgresRecorder(db).read_events(outcome.run_id))
    diverted = [e.event for e in events if e.event_type == "TokenDiverted"]
    assert [d.reason for d in diverted] == [  # type: ignore[attr-defined]
        "it made 2 rows of one, on branch 'a', which coalesce 'join' joins one row per branch"
    ] * 2
    assert not [e for e in events if e.event_type == "TokenExpanded"]
    assert {e.event.reason for e in events if e.event_type == "CoalesceFailed"} == {"branch_lost"}  # type: ignore[attr-defined]


def test_a_row_an_aggregation_rejects_is_quarantined_at_that_aggregation(db: Database, tmp_path: Path) -> None:
    """The token's outcome names the node that quarantined it (`token_outcomes.node`, the
    per-node metrics, `explain`), as it does for a node that diverted or failed one."""
    write_csv(tmp_path / "in.csv", ["id", "copies"], [[1, 1], [2, 9], [3, 2]])
    settings = (
        "source: {plugin: csv, on_success: raw, options: {path: in.csv, "
        "schema: {mode: fixed, fields: ['id: int', 'copies: int']}}}\n"
        "aggregations:\n- {name: rep, plugin: batch_replicate, input: raw, on_success: out, on_error: discard, "
        "trigger: {count: 3}, options: {copies_field: copies, max_copies: 2}}\n"
        "sinks:\n  out: {plugin: jsonl, options: {path: out/out.jsonl}}\n"
    )
    r = run(db, tmp_path, settings)
    assert_invariants(r.fold)
    assert r.outcomes()["quarantined"] == 1
    with db.connect() as conn:
        ended = conn.execute(
            "SELECT token_id, node FROM token_outcomes WHERE run_id = %s AND outcome = 'quarantined'",
            (r.outcome.run_id,),
        ).fetchall()
        metric = conn.execute(
            "SELECT value FROM run_metrics WHERE run_id = %s AND metric = 'node.rep.quarantined'", (r.outcome.run_id,)
        ).fetchall()
    assert ended == [("r1", "rep")]  # the second row (index 1): 9 copies, more than max_copies
    assert metric == [(1,)]
    from engine.cli.inspect import NodeCounts  # what `replay` counts per node

    counts = NodeCounts()
    for e in PostgresRecorder(db).read_events(r.outcome.run_id):
        counts(e, e.event)
    assert counts.as_dict()["rep"] == {"consumed": 2, "quarantined": 1}


def test_tokens_made_from_an_aggregations_outputs_keep_the_row_their_output_came_from(
    db: Database, tmp_path: Path
) -> None:
    """batch_replicate names each copy's one source row: a copy, and the tokens a gate forks it
    into, belong to that row (`explain --row`, `tokens.row_index`), not to the batch's last."""
    write_csv(tmp_path / "in.csv", ["id", "name", "copies"], [[1, "alice", 1], [2, "bob", 1], [3, "carol", 1]])
    settings = (
        "source: {plugin: csv, on_success: raw, options: {path: in.csv, "
        "schema: {mode: fixed, fields: ['id: int', 'name: str', 'copies: int']}}}\n"
        "aggregations:\n- {name: rep, plugin: batch_replicate, input: raw, on_success: rep_out, on_error: discard, "
        "trigger: {count: 3}}\n"
        "gates:\n- {name: split, input: rep_out, condition: 'True', routes: {'true': fork}, fork_to: [a, b]}\n"
        "sinks:\n  a: {plugin: jsonl, options: {path: out/a.jsonl}}\n  b: {plugin: jsonl, options: {path: out/b.jsonl}}\n"
    )
    result = run(db, tmp_path, settings)
    created = {
        e.entity_id: e.event.row_index  # type: ignore[attr-defined]
        for e in PostgresRecorder(db).read_events(result.outcome.run_id)
        if e.event_type == "TokenCreated"
    }
    copies = sorted(t for t in created if t.startswith("rep#") and t.count(".") == 1)
    assert [created[c] for c in copies] == [0, 1, 2]
    for c in copies:
        assert created[f"{c}.a"] == created[f"{c}.b"] == created[c], created


def test_a_branch_late_to_a_decided_coalesce_does_not_make_its_row_failed(db: Database, tmp_path: Path) -> None:
    """Under `first` the second branch always arrives after the merge and fails `late_arrival`
    (ARCHITECTURE: the coalesce machine): the policy at work, not a row lost. The rows were
    merged and written, so the row counts (`show`, the run's summary) say none failed."""
    from landscape.queries import row_counts

    write_csv(tmp_path / "in.csv", ["id", "note"], [[1, "a"], [2, "b"], [3, "c"]])
    settings = (
        "source: {plugin: csv, on_success: raw, options: {path: in.csv}}\n"
        "gates:\n- {name: split, input: raw, condition: 'True', routes: {'true': fork}, fork_to: [a, b]}\n"
        "transforms:\n- {name: ta, plugin: passthrough, input: a, on_success: a2, on_error: discard}\n"
        "- {name: tb, plugin: passthrough, input: b, on_success: b2, on_error: discard}\n"
        "coalesce:\n- {name: join, branches: {a: a2, b: b2}, policy: first, merge: nested, on_success: out}\n"
        "sinks:\n  out: {plugin: jsonl, options: {path: out/o.jsonl}}\n"
    )
    result = run(db, tmp_path, settings)
    assert result.fold.outcomes["failed"] == 3  # the late branches, one a row
    counts = row_counts(db, result.outcome.run_id)
    assert (counts.rows_in, counts.written, counts.failed) == (3, {"out": 3}, 0)


_BATCHES = (
    "source: {plugin: csv, on_success: raw, options: {path: in.csv, schema: {mode: fixed, fields: ['id: int', "
    "'amount: int']}}}\n"
    "aggregations:\n- {name: stats, plugin: batch_stats, input: raw, on_success: out, on_error: discard, "
    "trigger: {count: COUNT}, options: {value_field: amount}}\n"
    # (no `mean` in the sink's schema: the sink refuses every batch's output)
    "sinks:\n  out: {plugin: csv, options: {path: out/o.csv, schema: {mode: fixed, fields: ['count: int', "
    "'sum: int', 'batch_size: int']}}}\n"
)


def test_a_failed_batch_output_fails_every_row_of_its_batch(db: Database, tmp_path: Path) -> None:
    """The output token is numbered by one of its batch's rows; each of them was lost in it. The
    counts followed that number: a failed output of four rows was one failed row, and three
    were counted nowhere (an investigator's review)."""
    from landscape.queries import row_counts, run_end

    write_csv(tmp_path / "in.csv", ["id", "amount"], [[i, i] for i in range(1, 7)])
    r = run(db, tmp_path, _BATCHES.replace("COUNT", "3"))
    assert r.fold.outcomes["failed"] == 2  # two outputs
    counts = row_counts(db, r.outcome.run_id)
    assert (counts.rows_in, counts.written, counts.failed, counts.unfinished) == (6, {}, 6, 0), counts
    assert run_end(db, r.outcome.run_id).first_failed == (0, "out", "sink_row_refused")


def test_a_stopped_runs_rows_in_an_open_batch_are_unfinished(db: Database, tmp_path: Path) -> None:
    """`show` of a crashed run gave rows in, none written, none failed: where the rest were, only
    `replay` said (an investigator's review)."""
    from landscape.queries import row_counts
    from tests.engine_harness import crashed_run

    write_csv(tmp_path / "in.csv", ["id", "amount"], [[i, i] for i in range(1, 7)])
    (tmp_path / "settings.yaml").write_text(_BATCHES.replace("COUNT", "100"), encoding="utf-8")
    (tmp_path / "out").mkdir()
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        run_id = crashed_run(db, tmp_path / "settings.yaml", "committed:5", name="open-batch")
    finally:
        os.chdir(old)
    counts = row_counts(db, run_id)
    assert (counts.failed, counts.quarantined, counts.diverted) == (0, 0, 0)
    assert 0 < counts.unfinished == counts.rows_in, counts
    from engine.cli.show import run_report

    report = run_report(db, run_id)
    assert report["rows"]["unfinished"] == counts.unfinished and report["writer_alive"] is False
    (stats,) = [n for n in report["nodes"] if n["node"] == "stats"]
    assert stats["groups"] == {"collecting": 1, "collecting_rows": counts.unfinished}, stats
    # their tokens, held in the batch, never ended: pending, not "tokens: none" (a hostile review)
    assert report["tokens_pending"] == counts.unfinished and report["tokens"] == {}, report
    from tests.test_cli import elspeth

    shown = elspeth("show", run_id, cwd=tmp_path, db=db)
    assert shown.returncode == 0, shown.stderr
    assert f"  tokens: none ended; pending {counts.unfinished} (not ended when the run stopped)\n" in shown.stdout


def test_a_gate_with_no_route_for_false_names_the_label(db: Database, tmp_path: Path) -> None:
    """true and false are no row data: the reason said 'the label it gave (a str of 5 characters)'."""
    write_csv(tmp_path / "in.csv", ["id"], [[1], [2]])
    settings = (
        "source: {plugin: csv, on_success: raw, options: {path: in.csv, schema: {mode: fixed, fields: ['id: int']}}}\n"
        "gates:\n- {name: g, input: raw, condition: \"row['id'] == 1\", routes: {'true': out}}\n"
        "sinks:\n  out: {plugin: jsonl, options: {path: out/out.jsonl}}\n"
    )
    r = run(db, tmp_path, settings)
    failed = [e.event for e in PostgresRecorder(db).read_events(r.outcome.run_id) if e.event_type == "TokenFailed"]
    assert [f.reason for f in failed] == ["no route for label 'false'; routes: true"]  # type: ignore[attr-defined]


def test_a_sink_at_dev_null_completes_the_run(db: Database, tmp_path: Path) -> None:
    """`/dev/null` is allowed as a sink's file (docs/settings.md), but fsync refuses a character
    device: every run failed at its first flush, and so did each resume (a careless operator's
    review)."""
    (tmp_path / "in.jsonl").write_text('{"o": 1}\n{"o": 2}\n')
    settings = """
source:
  plugin: json
  on_success: out
  options: {path: in.jsonl, format: jsonl, schema: {mode: observed}}
sinks:
  out: {plugin: csv, options: {path: /dev/null}}
"""
    r = run(db, tmp_path, settings)
    assert r.outcome.status == "completed"
    assert r.outcomes() == {"completed": 2}
