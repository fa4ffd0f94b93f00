"""Resume is replay: a crash at any point, then resume, gives what an uninterrupted run gives
(ARCHITECTURE §8, invariant 5), and the projections equal the fold.

Time is injected: every run here reads its source through a `ClockedSource`, which moves a
`SourceClock` to a time fixed by the record's position. A crashed run and its resume therefore
see the same time at the same record as an uninterrupted run, and coalesce and batch deadlines
fire at the same point of the input (no sleeps)."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from engine import orchestrator
from engine.clock import FakeClock
from engine.errors import ResumeRefused
from engine.orchestrator import Pipeline, fold_run, resume_run, start_run
from landscape import faults
from landscape.db import Database
from landscape.fold import RunFold
from landscape.postgres import PostgresRecorder
from landscape.projections import PROJECTION_TABLE_NAMES, rebuild
from landscape.records import StoredEvent
from statecharts import events as ev
from tests.engine_harness import (
    ClockedSource,
    SourceClock,
    assert_invariants,
    assert_on_the_wiring,
    counting_fault_points,
    crashed_resume,
    crashed_run,
    load,
    workdir,
    write_csv,
)

SOURCE = """
source:
  plugin: csv
  on_success: raw
  options:
    path: in.csv
    schema: {mode: fixed, fields: ['id: int', 'v: int', 'note: str', 'items: str']}
    on_validation_failure: quarantine
"""
JSON_SOURCE = """
source:
  plugin: json
  on_success: raw
  options:
    path: in.jsonl
    format: jsonl
    schema: {mode: fixed, fields: ['id: int', 'v: int', 'note: str', 'items: any']}
    on_validation_failure: quarantine
"""
SINKS = """
sinks:
  out: {plugin: csv, options: {path: out/out.csv}}
  alt: {plugin: json, options: {path: out/alt.json}}
  quarantine: {plugin: json, options: {path: out/q.jsonl, format: jsonl}}
"""


def _fork(policy: str, extra: str = "") -> str:
    return f"""
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
  on_error: alt
  options: {{fields: [note], blocked_patterns: ['bad']}}
coalesce:
- name: join
  branches: {{a: a_done, b: b_done}}
  policy: {policy}
  merge: union
  on_success: out
  {extra}
"""


def _fork_held(policy: str, extra: str = "") -> str:
    """A fork whose branch b waits in a passthrough aggregation until 4 rows are there, so that
    coalesces stay open across rows and their timeout (0.3 s: three records) fires first."""
    return f"""
gates:
- name: split
  input: raw
  condition: 'True'
  routes: {{'true': fork}}
  fork_to: [a, b]
transforms:
- name: ta
  plugin: truncate
  input: a
  on_success: a_done
  on_error: discard
  options: {{fields: {{note: 2}}}}
aggregations:
- name: hold
  plugin: batch_replicate
  input: b
  on_success: b_done
  on_error: alt
  trigger: {{count: 4}}
  output_mode: passthrough
  options: {{copies_field: copies, include_copy_index: false}}
coalesce:
- name: join
  branches: {{a: a_done, b: b_done}}
  policy: {policy}
  merge: union
  on_success: out
  timeout_seconds: 0.3
  {extra}
"""


def _agg(trigger: str, mode: str = "transform", options: str | None = None) -> str:
    plugin = "batch_stats" if mode == "transform" else "batch_replicate"
    if options is None:
        options = "{value_field: v}" if mode == "transform" else "{copies_field: v, max_copies: 100}"
    return f"""
aggregations:
- name: agg
  plugin: {plugin}
  input: raw
  on_success: out
  on_error: alt
  trigger: {trigger}
  output_mode: {mode}
  options: {options}
"""


PIPELINES: dict[str, str] = {
    "linear": """
transforms:
- name: screen
  plugin: keyword_filter
  input: raw
  on_success: screened
  on_error: alt
  options: {fields: [note], blocked_patterns: ['bad']}
- name: trim
  plugin: truncate
  input: screened
  on_success: out
  on_error: discard
  options: {fields: {note: 3}}
""",
    "gate": """
gates:
- name: big
  input: raw
  condition: row['v'] >= 3
  routes: {'true': out, 'false': alt}
""",
    "fork_require_all": _fork("require_all"),
    "fork_first": _fork("first"),
    "fork_quorum": _fork("quorum", "quorum_count: 1"),
    "fork_best_effort": _fork("best_effort", "timeout_seconds: 3600"),
    "agg_count": _agg("{count: 3}"),
    "agg_condition": _agg("{condition: \"row['batch_count'] >= 4\"}"),
    "agg_end_of_source": _agg("{count: 1000}"),
    "agg_passthrough": _agg("{count: 2}", mode="passthrough"),
    # deadlines that fire while the source is read (SourceClock: a record every 0.125 s)
    "fork_timeout_best_effort": _fork_held("best_effort"),
    "fork_timeout_require_all": _fork_held("require_all"),
    "fork_timeout_quorum": _fork_held("quorum", "quorum_count: 2"),
    "agg_timeout": _agg("{count: 1000, timeout_seconds: 0.6}"),
    "agg_timeout_passthrough": _agg(
        "{count: 1000, timeout_seconds: 0.3}", mode="passthrough", options="{copies_field: copies}"
    ),
    "explode": """
transforms:
- name: explode
  plugin: json_explode
  input: raw
  on_success: out
  on_error: alt
  options: {array_field: items}
""",
}


def _rows(n: int) -> list[list[object]]:
    notes = ["ok", "bad", "fine", "good"]
    return [[i, i % 5 + 1, notes[i % 4], "x"] for i in range(n)] + [["oops", 1, "q", "x"]]


def _workdir(kind: str, rows: int) -> AbstractContextManager[Path]:
    source = JSON_SOURCE if kind == "explode" else SOURCE
    return workdir(kind, source + PIPELINES[kind] + SINKS, lambda path: _write_inputs(path, rows))


def _write_inputs(path: Path, rows: int) -> None:
    write_csv(path / "in.csv", ["id", "v", "note", "items"], _rows(rows))
    lines = [json.dumps({"id": i, "v": v, "note": n, "items": list(range(i % 3))}) for i, v, n, _ in _rows(rows)[:-1]]
    (path / "in.jsonl").write_text("\n".join([*lines, "{not json"]) + "\n", encoding="utf-8")


def _clocked(clock: SourceClock) -> Callable[[Path], Pipeline]:
    """A loader (for `resume_run`) whose pipeline reads its source on `clock`."""

    def clocked(path: Path) -> Pipeline:
        pipeline = load(path)
        pipeline.source = ClockedSource(pipeline.source, clock)  # type: ignore[assignment]
        return pipeline

    return clocked


def _outputs(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((path / "out").iterdir())}


def _metrics(db: Database, run_id: str) -> dict[str, int]:
    with db.connect() as conn:
        rows = conn.execute("SELECT metric, value FROM run_metrics WHERE run_id = %s", (run_id,)).fetchall()
    assert all(float(v).is_integer() for _, v in rows), rows
    return {str(k): int(v) for k, v in rows}


def _events(db: Database, run_id: str) -> list[StoredEvent]:
    return list(PostgresRecorder(db).read_events(run_id))


# -- counted once: the projections against an independent fold of the events and the sinks ------

_TERMINAL = {
    "TokenCompleted": "completed",
    "TokenRouted": "routed",
    "TokenDiverted": "diverted",
    "TokenQuarantined": "quarantined",
    "TokenForked": "forked",
    "TokenExpanded": "expanded",
    "TokenCoalesced": "coalesced",
    "TokenConsumed": "consumed_in_batch",
    "TokenFailed": "failed",
}
_COUNTED = {
    "CoalesceMerged": "coalesce.merged",
    "CoalesceFailed": "coalesce.failed",
    "BatchCompleted": "batch.completed",
    "BatchFailed": "batch.failed",
}


def _fold_events(events: list[StoredEvent]) -> tuple[Counter[str], dict[str, tuple[str, str | None]]]:
    """What the metrics must be, counted here from the log itself (not by the projector), and
    each token's one terminal outcome (and the sink it went to)."""
    metrics: Counter[str] = Counter()
    ended: dict[str, tuple[str, str | None]] = {}
    for stored in events:
        e = stored.event
        name = type(e).__name__
        if isinstance(e, ev.TokenCreated) and not e.parents:
            metrics["rows_in"] += 1
        elif isinstance(e, ev.StepCompleted):
            metrics[f"node.{e.node}.processed"] += 1
        elif isinstance(e, ev.SinkWriteFailed):
            metrics[f"sink.{e.sink}.write_failures"] += 1
        elif name in _COUNTED:
            metrics[_COUNTED[name]] += 1
        outcome = _TERMINAL.get(name)
        if outcome is None:
            continue
        assert stored.entity_id not in ended, f"token {stored.entity_id} ended twice (seq {stored.seq})"
        sink, node = getattr(e, "sink", None), getattr(e, "node", None)
        ended[stored.entity_id] = (outcome, sink)
        metrics[f"outcome.{outcome}"] += 1
        if sink is not None:
            metrics[f"sink.{sink}.rows"] += 1
        if node is not None:
            metrics[f"node.{node}.{outcome}"] += 1
    return metrics, ended


def _sink_rows(path: Path) -> Counter[str]:
    """Rows actually in each sink's file."""
    out = path / "out"
    counts: Counter[str] = Counter()
    if (out / "out.csv").exists():
        with (out / "out.csv").open(newline="", encoding="utf-8") as f:
            counts["out"] = sum(1 for _ in csv.DictReader(f))
    if (out / "alt.json").exists() and (text := (out / "alt.json").read_text(encoding="utf-8")).strip():
        counts["alt"] = len(json.loads(text))
    if (out / "q.jsonl").exists():
        counts["quarantine"] = sum(1 for line in (out / "q.jsonl").read_text(encoding="utf-8").splitlines() if line)
    return +counts


def _assert_counted_once(db: Database, run_id: str, path: Path) -> dict[str, int]:
    """The run's metrics and token outcomes (projection tables) equal a fold of its events, and
    the sinks hold exactly the rows the log says went to them. Returns the metrics."""
    expected, ended = _fold_events(_events(db, run_id))
    metrics = _metrics(db, run_id)
    assert metrics == dict(expected)
    with db.connect() as conn:
        stored = conn.execute(
            "SELECT token_id, outcome, sink FROM token_outcomes WHERE run_id = %s", (run_id,)
        ).fetchall()
    assert {t: (o, s) for t, o, s in stored} == ended
    assert len(stored) == len(ended)
    written = +Counter(sink for _, sink in ended.values() if sink is not None)
    assert _sink_rows(path) == written
    assert {k.removeprefix("sink.").removesuffix(".rows"): v for k, v in metrics.items() if k.endswith(".rows")} == (
        dict(written)
    )
    return metrics


def _projection_snapshot(db: Database, run_id: str) -> dict[str, list[tuple[object, ...]]]:
    snap = {}
    with db.connect() as conn:
        for table in PROJECTION_TABLE_NAMES:
            rows = conn.execute(f"SELECT * FROM {table} WHERE run_id = %s", (run_id,)).fetchall()
            snap[table] = sorted(rows, key=repr)
    return snap


def _assert_projections_rebuild_the_same(db: Database, run_id: str) -> None:
    """Projections rebuilt from the events equal the incrementally maintained ones."""
    before = _projection_snapshot(db, run_id)
    rebuild(db, run_id)
    assert _projection_snapshot(db, run_id) == before


# -- uninterrupted references --------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    outputs: dict[str, bytes]
    outcomes: dict[str, int]
    metrics: dict[str, int]
    triggers: dict[str, str | None]  # coalesce / batch id -> what resolved it
    reached: Counter[str]  # how often each fault point was reached: a crash at 1..that many happens
    before_commit: Counter[str]  # how many of those came before the first commit was durable
    # (appends, sink flushes) done before each record was read, by record index
    before_record: dict[int, tuple[int, int]]


_reference: dict[tuple[str, int, int, int | None], Reference] = {}


def _uninterrupted(db: Database, kind: str, rows: int, commit_every: int, gap_at: int | None = None) -> Reference:
    key = (kind, rows, commit_every, gap_at)
    if key not in _reference:
        with _workdir(kind, rows) as path:
            clock = SourceClock(gap_at=gap_at, gap=GAP)
            pipeline = _clocked(clock)(path / "settings.yaml")
            before: dict[int, tuple[int, int]] = {}
            with counting_fault_points() as reached:
                inner = pipeline.source.read

                def read(start: int = 0) -> Iterator[object]:
                    for item in inner(start):
                        if item is not None:
                            before[item.index] = (reached["append"], reached["sink_flush"])
                        yield item

                pipeline.source.read = read  # type: ignore[method-assign,assignment]
                outcome = start_run(db, pipeline, commit_every=commit_every, clock=clock)
            fold = fold_run(db, outcome.run_id, strict=True)
            assert_invariants(fold)
            metrics = _assert_counted_once(db, outcome.run_id, path)
            outcomes = {str(k): v for k, v in fold.outcomes.items()}
            triggers = {s.entity_id: _trigger(s) for s in _events(db, outcome.run_id) if _trigger(s)}
            _reference[key] = Reference(
                _outputs(path), outcomes, metrics, triggers, Counter(reached), reached.before_first_commit, before
            )
    return _reference[key]


GAP = 100.0  # an idle source: longer than every deadline in these pipelines


def _crash(db: Database, path: Path, spec: str, commit_every: int, clock: SourceClock, run_id: str) -> RunFold:
    """Run until the fault `spec` "kills" it; return the fold of what was committed."""
    faults.configure(spec, raise_instead=True)
    try:
        with pytest.raises(faults.SimulatedCrash):
            start_run(
                db, _clocked(clock)(path / "settings.yaml"), commit_every=commit_every, clock=clock, run_id=run_id
            )
    finally:
        faults.configure("")
    return fold_run(db, run_id)


def _resume(db: Database, run_id: str, committed: RunFold, commit_every: int, clock: SourceClock) -> None:
    """Resume in a new 'process': a new clock at the time of the last committed record."""
    clock.resume_at(committed)
    outcome = resume_run(db, run_id, _clocked(clock), commit_every=commit_every, clock=clock)
    assert outcome.status == "completed"


# -- crash anywhere ------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    kind=st.sampled_from(sorted(PIPELINES)),
    point=st.sampled_from(["append", "sink_flush", "commit", "committed"]),
    commit_every=st.integers(min_value=1, max_value=6),
    rows=st.integers(min_value=3, max_value=14),
)
def test_crash_anywhere_then_resume_equals_an_uninterrupted_run(
    db: Database, data: st.DataObject, kind: str, point: str, commit_every: int, rows: int
) -> None:
    ref = _uninterrupted(db, kind, rows, commit_every)
    assert ref.reached[point] > 0  # (every pipeline writes: the quarantined row at least)
    # the crash run is the reference run up to the crash: any nth it reached is a crash
    # (uniform over the points reached: hypothesis's integers favour the first few). A crash
    # before the run's first commit leaves nothing to resume and checks only that: one example
    # in ten goes there, the others crash after it, where resume has work to do
    rng = data.draw(st.randoms(use_true_random=False), label="rng")
    early = ref.before_commit[point]
    if early and (rng.random() < 0.1 or ref.reached[point] <= early):
        nth = rng.randint(1, early)
    else:
        nth = rng.randint(early + 1, ref.reached[point])
    note(f"crash at {point}:{nth} of {ref.reached[point]}")
    with _workdir(kind, rows) as path:
        run_id = f"run-crash-{kind}-{point}-{nth}-{commit_every}-{rows}-{os.urandom(6).hex()}"
        committed = _crash(db, path, f"{point}:{nth}", commit_every, SourceClock(), run_id)
        event(f"crashed at {point}, committed run {committed.status}")
        if committed.status == "initial":
            # died before the run's first commit: nothing to resume
            with pytest.raises(ResumeRefused, match="no run"):
                resume_run(db, run_id, load)
            return
        if committed.status != "completed":  # (died after the last commit: nothing left to do)
            _resume(db, run_id, committed, commit_every, SourceClock())
        os.chdir(path)
        fold = fold_run(db, run_id, strict=True)
        assert_invariants(fold)
        assert_on_the_wiring(db, run_id)
        assert {str(k): v for k, v in fold.outcomes.items()} == ref.outcomes
        assert _outputs(path) == ref.outputs
        # every coalesce and batch resolved as in the uninterrupted run (a timeout too)
        events = _events(db, run_id)
        assert {s.entity_id: _trigger(s) for s in events if _trigger(s)} == ref.triggers
        if any(s.seq > committed.last_seq and _trigger(s) == "timeout" for s in events):
            event("a timeout fired in the resumed run")
        # metrics are a projection: equal to the fold of the events, to the sinks' contents,
        # and to the uninterrupted run's (nothing counted twice, nothing lost)
        assert _assert_counted_once(db, run_id, path) == ref.metrics
        assert ref.metrics["rows_in"] == fold.source_records == rows + 1
        _assert_projections_rebuild_the_same(db, run_id)


def _trigger(stored: StoredEvent) -> str | None:
    """How a coalesce or batch resolved: "timeout", "arrivals", "count", "end_of_source", …"""
    e = stored.event
    if isinstance(e, ev.CoalesceMerged | ev.BatchFlushing):
        return e.trigger
    if isinstance(e, ev.CoalesceFailed):
        return e.trigger or e.reason
    return None


def test_the_generated_pipelines_fire_timeouts(db: Database) -> None:
    """The crash-anywhere property covers deadlines that fire while the source is read."""
    triggers: dict[str, Counter[str]] = {}
    for kind in ("fork_timeout_best_effort", "fork_timeout_require_all", "agg_timeout", "agg_timeout_passthrough"):
        with _workdir(kind, 12) as path:
            outcome = start_run(db, _clocked(clock := SourceClock())(path / "settings.yaml"), clock=clock)
        triggers[kind] = Counter(_trigger(s) for s in _events(db, outcome.run_id) if _trigger(s))
    assert all(t["timeout"] >= 2 for t in triggers.values()), triggers


@pytest.mark.parametrize(("policy", "extra", "reason"), [("require_all", "", "incomplete_branches"),
                                                         ("quorum", "quorum_count: 2", "quorum_not_met")])  # fmt: skip
def test_a_coalesce_failed_at_its_deadline_records_the_reason_settings_names_and_the_trigger(
    db: Database, policy: str, extra: str, reason: str
) -> None:
    """SETTINGS.md: on timeout, require_all fails with `incomplete_branches`, quorum unmet with
    `quorum_not_met`; that the deadline forced it is the event's `trigger`, not its reason."""
    with _workdir(f"fork_timeout_{policy}", 12) as path:
        (path / "settings.yaml").write_text(SOURCE + _fork_held(policy, extra) + SINKS)
        outcome = start_run(db, _clocked(clock := SourceClock())(path / "settings.yaml"), clock=clock)
    failed = [s.event for s in _events(db, outcome.run_id) if isinstance(s.event, ev.CoalesceFailed)]
    assert {(e.reason, e.trigger) for e in failed} == {(reason, "timeout")}, failed
    assert len(failed) >= 2


# -- a deadline that passes while the run is down ------------------------------------------------


def _timeout_after_resume(db: Database, kind: str, crash_at: str) -> None:
    """The run dies with a coalesce (or batch) open; the source is then idle past its deadline
    (`gap_at`), so the timeout fires in the resumed run. The resumed run equals an uninterrupted
    run with the same idle gap, and its metrics count every token once."""
    rows, gap_at, commit_every = 12, 6, 1
    ref = _uninterrupted(db, kind, rows, commit_every, gap_at=gap_at)
    appends, flushes = ref.before_record[gap_at]
    spec = {
        # the first event of record `gap_at`: the timeout firing (lost with the process)
        "append": f"append:{appends + 1}",
        # the last sink flush before it: durable, but the events saying so are not committed
        "sink_flush": f"sink_flush:{flushes}",
        # right after the commit of record gap_at - 1 (a commit by `start`, then one per record)
        "committed": f"committed:{gap_at + 1}",
        # inside the commit of record gap_at, which holds the timeouts
        "commit": f"commit:{gap_at + 2}",
    }[crash_at]
    with _workdir(kind, rows) as path:
        run_id = f"run-timeout-{kind}-{crash_at}-{os.urandom(6).hex()}"
        committed = _crash(db, path, spec, commit_every, SourceClock(gap_at=gap_at, gap=GAP), run_id)
        assert committed.status == "running"
        assert committed.source_records <= gap_at  # the idle gap is still ahead of the resumed run
        open_at_crash = set(committed.coalesces) | {b for b, info in committed.batches.items() if info.deadline}
        _resume(db, run_id, committed, commit_every, SourceClock(gap_at=gap_at, gap=GAP))
        os.chdir(path)
        fold = fold_run(db, run_id, strict=True)
        assert_invariants(fold)
        assert fold.resumes == 1
        # what was open at the crash was resolved in the resumed run, some of it by its timeout
        events = _events(db, run_id)
        after = {s.entity_id: _trigger(s) for s in events if s.seq > committed.last_seq and _trigger(s)}
        assert open_at_crash <= set(after)
        assert {k for k in open_at_crash if after[k] == "timeout"}, f"no timeout fired after the resume ({spec})"
        # each coalesce and batch resolved as in the uninterrupted run
        assert {s.entity_id: _trigger(s) for s in events if _trigger(s)} == ref.triggers
        # ... and everything equals the uninterrupted run: outcomes, sinks, metrics counted once
        assert {str(k): v for k, v in fold.outcomes.items()} == ref.outcomes
        assert _outputs(path) == ref.outputs
        metrics = _assert_counted_once(db, run_id, path)
        assert metrics == ref.metrics
        assert metrics["rows_in"] == rows + 1
        assert sum(v for k, v in metrics.items() if k.startswith("outcome.")) == fold.accounted()
        _assert_projections_rebuild_the_same(db, run_id)


@pytest.mark.parametrize("crash_at", ["append", "sink_flush", "commit", "committed"])
@pytest.mark.parametrize("kind", ["fork_timeout_best_effort", "fork_timeout_require_all"])
def test_a_coalesce_timeout_in_a_resumed_run_is_counted_once(db: Database, kind: str, crash_at: str) -> None:
    """The prior system's resume under-counted rows when coalesce timeouts fired after resume."""
    _timeout_after_resume(db, kind, crash_at)


@pytest.mark.parametrize("crash_at", ["append", "sink_flush", "commit", "committed"])
@pytest.mark.parametrize("kind", ["agg_timeout", "agg_timeout_passthrough"])
def test_an_aggregation_timeout_in_a_resumed_run_is_counted_once(db: Database, kind: str, crash_at: str) -> None:
    _timeout_after_resume(db, kind, crash_at)


def test_a_deadline_passed_while_down_fires_when_the_source_is_done(db: Database) -> None:
    """Died after the last record was read, with a coalesce open; resumed long after its
    deadline (the clock advanced while the run was down): the timeout fires in the resumed run,
    before end of source, once, and the metrics are the fold of the events and the sinks."""
    kind, rows, commit_every = "fork_timeout_best_effort", 9, 1
    ref = _uninterrupted(db, kind, rows, commit_every)
    # commits: one by `start`, one per record, one at end of source, and the last (completed)
    assert ref.reached["commit"] == (rows + 1) + 3
    with _workdir(kind, rows) as path:
        run_id = f"run-late-{os.urandom(6).hex()}"
        committed = _crash(db, path, f"commit:{rows + 3}", commit_every, SourceClock(), run_id)
        assert committed.status == "running"
        assert committed.source_records == rows + 1 and not committed.source_exhausted
        open_at_crash = set(committed.coalesces)
        assert open_at_crash
        clock = SourceClock()
        clock.resume_at(committed)
        clock.advance(GAP)  # the run stayed down past every deadline
        assert all(c.deadline is not None and c.deadline < clock.now() for c in committed.coalesces.values())
        outcome = resume_run(db, run_id, _clocked(clock), commit_every=commit_every, clock=clock)
        assert outcome.status == "completed"
        os.chdir(path)
        fold = fold_run(db, run_id, strict=True)
        assert_invariants(fold)
        resolved = {s.entity_id: _trigger(s) for s in _events(db, run_id) if s.seq > committed.last_seq and _trigger(s)}
        assert {k: resolved.get(k) for k in open_at_crash} == dict.fromkeys(open_at_crash, "timeout")
        metrics = _assert_counted_once(db, run_id, path)
        assert metrics["rows_in"] == fold.source_records == rows + 1
        assert sum(v for k, v in metrics.items() if k.startswith("outcome.")) == fold.accounted()
        # against a run that was never down (join:r8 then waited for its branch b, which the
        # end of source releases): r8's timeout merged branch a alone, and branch b, arriving
        # after it, failed. That one token, counted once, is the whole difference.
        assert open_at_crash == {"join:r8"}
        assert Counter(metrics) - Counter(ref.metrics) == Counter({"outcome.failed": 1, "node.join.failed": 1})
        assert Counter(ref.metrics) - Counter(metrics) == Counter({"outcome.coalesced": 1})
        with db.connect() as conn:
            late = conn.execute(
                "SELECT outcome, reason FROM token_outcomes WHERE run_id = %s AND token_id = 'r8.b'", (run_id,)
            ).fetchall()
        assert late == [("failed", "late_arrival")]
        _assert_projections_rebuild_the_same(db, run_id)


def _crashed(db: Database, settings: Path, name: str, at: str) -> str:
    """A run of `settings` (a durability point per row) crashed at fault point `at`: its id."""
    return crashed_run(db, settings, at, name=name)


def test_resume_refuses_a_completed_run_and_changes_nothing(db: Database) -> None:
    with _workdir("linear", 4) as path:
        outcome = start_run(db, load(path / "settings.yaml"))
        before = fold_run(db, outcome.run_id).last_seq
        with pytest.raises(ResumeRefused, match="already completed"):
            resume_run(db, outcome.run_id, load)
        assert fold_run(db, outcome.run_id).last_seq == before


def test_resume_refuses_a_changed_input_unless_forced(db: Database) -> None:
    with _workdir("linear", 6) as path:
        run_id = _crashed(db, path / "settings.yaml", "changed", "committed:2")
        with (path / "in.csv").open("a") as f:
            f.write("99,1,late,x\n")
        before = fold_run(db, run_id)
        read = before.source_records
        # what --force would do is said before it is asked for: rows that moved into the records the
        # run had read would never be read (a careless operator's review)
        said = rf"read from its record {read + 1} on, its\s+first {read} not"
        with pytest.raises(ResumeRefused, match=said):
            resume_run(db, run_id, load)
        assert fold_run(db, run_id).last_seq == before.last_seq
        outcome = resume_run(db, run_id, load, force=True)
        assert outcome.status == "completed" and outcome.input_changed and outcome.records_before == read
        assert fold_run(db, run_id).resumes == 1
        from landscape.queries import run_lifecycle

        resumed = [e.detail for e in run_lifecycle(db, run_id) if e.event == "RunResumed"]
        assert resumed == [f"input changed, --force: read from its record {read + 1} on"]


def test_a_run_recorded_with_the_earlier_settings_hash_resumes(db: Database) -> None:
    """Earlier ELSPETH recorded a hash of the settings with their secrets in clear; such a run
    still resumes without --force (the hash is compared, never recorded again)."""
    with _workdir("linear", 6) as path:
        settings = path / "settings.yaml"  # a password (in a URL this run does not use) makes the hashes differ
        settings.write_text(settings.read_text() + "landscape: {url: 'postgresql://u:pw@localhost/x'}\n")
        pipeline = load(settings)
        loaded = pipeline.loaded
        loaded.text_hash = loaded.legacy_hash
        run_id = f"run-legacy-{os.urandom(6).hex()}"
        faults.configure("committed:2", raise_instead=True)
        try:
            with pytest.raises(faults.SimulatedCrash):
                start_run(db, pipeline, commit_every=1, run_id=run_id)
        finally:
            faults.configure("")
        assert fold_run(db, run_id).settings_hash == loaded.legacy_hash != load(path / "settings.yaml").loaded.text_hash
        assert resume_run(db, run_id, load).status == "completed"


def test_resume_refuses_while_the_writer_lives(db: Database) -> None:
    from landscape.postgres import PostgresRecorder

    with _workdir("linear", 3) as path:
        outcome = start_run(db, load(path / "settings.yaml"))
        writer = PostgresRecorder(db).open_writer(outcome.run_id)  # someone is writing this run
        try:
            with pytest.raises(ResumeRefused, match="still being written"):
                resume_run(db, outcome.run_id, load)
        finally:
            writer.close()


@pytest.mark.parametrize("commit_every", [1, 4, 10])
def test_durability_points_bound_the_work_a_crash_can_cost(db: Database, commit_every: int) -> None:
    """`checkpoint.frequency` trades commits (events/s) against work redone after a crash: a
    crash anywhere loses at most two durability points of progress (the commit in flight and
    the batch being built), i.e. twice `commit_every` source rows."""
    with _workdir("linear", 30) as path:
        run_id = f"run-dp-{commit_every}-{os.urandom(6).hex()}"
        faults.configure("append:150", raise_instead=True)
        with pytest.raises(faults.SimulatedCrash):
            start_run(db, load(path / "settings.yaml"), commit_every=commit_every, clock=FakeClock(), run_id=run_id)
        faults.configure("")
        with db.connect() as conn:
            commits = conn.execute("SELECT count(DISTINCT tx_id) FROM events WHERE run_id = %s", (run_id,)).fetchone()
            assert commits is not None
    committed = fold_run(db, run_id)
    # ~7 events per row in this pipeline: the crash came while reading row ~21.
    read_when_crashed = 150 // 7
    assert read_when_crashed - committed.source_records <= 2 * commit_every
    # and fewer rows per durability point means more commits for the same work
    assert commits[0] >= committed.source_records // commit_every


def test_resume_refuses_a_crashed_run_whose_log_was_tampered_with(db: Database) -> None:
    """Appending to a broken chain would bury the break under new events: resume verifies first."""
    with _workdir("linear", 6) as path:
        run_id = _crashed(db, path / "settings.yaml", "tampered", "committed:3")
        last = fold_run(db, run_id).last_seq
        with db.connect() as conn:
            conn.execute("SET session_replication_role = replica")  # what only a superuser can do
            conn.execute("UPDATE events SET entity_id = entity_id || 'x' WHERE run_id = %s AND seq = 4", (run_id,))
            conn.commit()
        with pytest.raises(ResumeRefused, match="does not verify at seq 4"):
            resume_run(db, run_id, load)
        from landscape.postgres import PostgresRecorder

        assert max(e.seq for e in PostgresRecorder(db).read_events(run_id)) == last


def test_resume_refuses_a_run_whose_checkpoints_are_all_gone(db: Database) -> None:
    """A superuser who cut the tail and deleted every checkpoint, in the store and the witness
    file: nothing is left to tell the cut from the log's end. Resumed, the run would sign over
    what is left and every later check would pass; so resume refuses, as `replay` does."""
    from landscape.embedded import elspeth_home
    from landscape.notary import witness_path
    from landscape.postgres import PostgresRecorder

    with _workdir("linear", 12) as path:
        run_id = _crashed(db, path / "settings.yaml", "unsigned", "committed:8")
        witness = witness_path(elspeth_home(None) / "witness", run_id)
        assert witness.is_file()
        with db.connect() as conn:
            conn.execute("SET session_replication_role = replica")  # what only a superuser can do
            conn.execute("DELETE FROM events WHERE run_id = %s AND seq > 20", (run_id,))
            conn.execute("DELETE FROM checkpoints WHERE run_id = %s", (run_id,))
            conn.commit()
        rebuild(db, run_id)  # projections to match the cut log
        witness.unlink()
        with pytest.raises(ResumeRefused, match="has no signed checkpoint, in the store or in"):
            resume_run(db, run_id, load)
        assert max(e.seq for e in PostgresRecorder(db).read_events(run_id)) == 20


def test_resume_refuses_projections_that_end_elsewhere_than_the_log(db: Database) -> None:
    """Projection rows are written in the transactions that write the events: a `runs` row that
    ends elsewhere was changed without the log. Resumed, the first commit would fail on a key
    already there, after the sinks were cut back: refused first, with what to run."""
    with _workdir("linear", 6) as path:
        run_id = _crashed(db, path / "settings.yaml", "stale", "committed:3")
        last = fold_run(db, run_id).last_seq
        outputs = _outputs(path)
        with db.connect() as conn:
            conn.execute("UPDATE runs SET last_seq = last_seq - 2 WHERE run_id = %s", (run_id,))
            conn.commit()
        with pytest.raises(ResumeRefused, match=f"up to seq {last - 2}, but the log ends at seq {last}.*rebuild"):
            resume_run(db, run_id, load)
        assert _outputs(path) == outputs and fold_run(db, run_id).last_seq == last
        rebuild(db, run_id)
        assert resume_run(db, run_id, load).status == "completed"


def test_resume_checks_the_key_and_witness_the_settings_name(db: Database) -> None:
    """Settings that name `landscape.signing_key` and `witness_dir`: resume checks the log with
    that key (not the home's) and reads the witness file there. A superuser who cut the log's
    tail and the store's checkpoints over it is caught by that witness file."""
    from landscape.embedded import elspeth_home
    from landscape.keys import default_signer, generate_key_files
    from landscape.postgres import PostgresRecorder

    with _workdir("linear", 12) as path:
        default_signer(elspeth_home(None))  # the home has a key of its own, which did not sign this run
        (path / "keys").mkdir()
        generate_key_files("mine", path / "keys")
        settings = path / "settings.yaml"
        settings.write_text(settings.read_text() + "landscape: {signing_key: keys/mine.key, witness_dir: wit}\n")
        run_id = _crashed(db, settings, "witnessed", "committed:8")
        assert (path / "wit" / f"{run_id}.checkpoints").is_file()
        last = fold_run(db, run_id).last_seq
        with db.connect() as conn:
            conn.execute("SET session_replication_role = replica")  # what only a superuser can do
            conn.execute("DELETE FROM events WHERE run_id = %s AND seq > %s", (run_id, last - 6))
            conn.execute("DELETE FROM checkpoints WHERE run_id = %s AND tree_size > %s", (run_id, last - 6))
            conn.commit()
        with pytest.raises(ResumeRefused, match="does not verify"):
            resume_run(db, run_id, load)
        # An ELSPETH_WITNESS_DIR set now names another folder: the settings' one is read all the same.
        os.environ["ELSPETH_WITNESS_DIR"] = str(path / "elsewhere")
        try:
            with pytest.raises(ResumeRefused, match="does not verify"):
                resume_run(db, run_id, load)
        finally:
            del os.environ["ELSPETH_WITNESS_DIR"]
        assert max(e.seq for e in PostgresRecorder(db).read_events(run_id)) == last - 6
        # Untouched, the same run resumes: the key the settings name verifies its checkpoints.
        (path / "out").rename(path / "out.first")  # (the crashed run's rows: a new run does not replace them)
        (path / "out").mkdir()
        again = _crashed(db, settings, "witnessed", "committed:8")
        assert resume_run(db, again, load).status == "completed"


def test_resume_refuses_a_run_whose_folder_is_gone_unless_given_its_settings(db: Database) -> None:
    with _workdir("linear", 6) as path:
        run_id = _crashed(db, path / "settings.yaml", "gone", "committed:2")
        settings = (path / "settings.yaml").read_text()
        outputs = {p.name: p.read_bytes() for p in (path / "out").iterdir()}
    with pytest.raises(ResumeRefused, match="which no longer exists"):
        resume_run(db, run_id, load)
    with _workdir("linear", 6) as elsewhere:  # the same input, settings and outputs, in another folder
        (elsewhere / "settings.yaml").write_text(settings)
        for name, data in outputs.items():
            (elsewhere / "out" / name).write_bytes(data)
        # and this resume crashes too
        crashed_resume(db, run_id, "committed:2", settings_path=elsewhere / "settings.yaml", commit_every=1)
        # The log says where it ran now: the next resume needs no -s, and `show` finds the files
        assert fold_run(db, run_id).working_dir == os.path.realpath(elsewhere)
        outcome = resume_run(db, run_id, load)
        assert outcome.status == "completed"
        from engine.cli.show import run_report

        report = run_report(db, run_id)
        assert report["working_dir"] == os.path.realpath(elsewhere)
        assert {a["file"] for a in report["artifacts"]} == {"ok"}, report["artifacts"]


def test_a_settings_file_moved_away_is_named_with_the_folder_it_ran_in(db: Database) -> None:
    """Resumed from another folder, a moved settings file was "settings.yaml: the settings file
    does not exist", with no folder and no way on (a careless operator's review)."""
    with _workdir("linear", 6) as path:
        run_id = _crashed(db, path / "settings.yaml", "moved", "committed:2")
        (path / "settings.yaml").rename(path / "s2.yaml")
        with pytest.raises(ResumeRefused) as refused:
            resume_run(db, run_id, load)
        said = str(refused.value)
        assert f"settings.yaml is not there (the run ran in {os.path.realpath(path)})" in said, said
        assert f"elspeth resume {run_id} -s FILE" in said and f"elspeth abandon {run_id}" in said
        assert resume_run(db, run_id, load, settings_path=path / "s2.yaml", force=True).status == "completed"


def test_a_folder_the_store_names_unlike_the_verified_log_is_refused(
    db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where a resume goes is read before the log is verified: a server answering that query
    otherwise than the log says (whoever controls it can) must not have the run go on there."""
    with _workdir("linear", 6) as path:
        run_id = _crashed(db, path / "settings.yaml", "elsewhere", "committed:2")
        (tmp_path / "settings.yaml").write_text((path / "settings.yaml").read_text())
        monkeypatch.setattr(PostgresRecorder, "working_dir", lambda self, run: str(tmp_path))
        with pytest.raises(ResumeRefused, match="is not the one the verified log names"):
            resume_run(db, run_id, load)
        monkeypatch.undo()
        assert resume_run(db, run_id, load).status == "completed"


def test_resume_refuses_a_sink_file_changed_since_and_leaves_it_whole(db: Database) -> None:
    """Another run's output of the same size, or an edit, where the crashed run's file was: the
    first bytes no longer hash to the digest the log recorded with the position. Continuing
    would cut that file back and write on (another run's rows gone, this run's not there)."""
    with _workdir("linear", 12) as path:
        run_id = _crashed(db, path / "settings.yaml", "replaced", "committed:6")
        durable = {n: p for n, p in fold_run(db, run_id).sink_positions.items() if p > 2}
        assert durable, "no sink had made rows durable: crash later"
        name, data = max(_outputs(path).items(), key=lambda item: len(item[1]))
        target = next(p for p in path.rglob(name) if p.is_file())
        changed = data[:1] + (b"Z" if data[1:2] != b"Z" else b"Y") + data[2:]
        target.write_bytes(changed)
        with pytest.raises(ResumeRefused, match="not those the run made durable"):
            resume_run(db, run_id, load)
        assert target.read_bytes() == changed
        target.write_bytes(data)
        assert resume_run(db, run_id, load).status == "completed"


# (Not through a symbolic link: no sink writes through one, see tests/test_hostile_sinks.py.)
@pytest.mark.parametrize("through", ["the same path", "a hard link"])
def test_resume_refuses_to_cut_rows_another_run_appended_since(
    db: Database, through: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append-mode file shared by runs: run A crashes, run B appends its rows after A's, and
    a resume of A would cut the file back to A's durable position, taking B's rows with it.
    Whatever name B reached the file by. A new run now refuses to append there (see
    tests/test_append_after_crash.py): B here runs as a version without that check did."""
    monkeypatch.setattr(orchestrator.Execution, "_refuse_to_strand_open_runs", lambda self, only=None: None)
    with _workdir("linear", 12) as path:
        settings = path / "settings.yaml"
        settings.write_text(settings.read_text().replace("{path: out/out.csv}", "{path: out/out.csv, mode: append}"))
        run_id = _crashed(db, settings, "shared", "committed:6")
        name = "out.csv"
        if through == "a hard link":
            name = "alias.csv"
            os.link(path / "out" / "out.csv", path / "out" / name)
        b = path / "b.yaml"  # B shares only that one file with A
        b.write_text(settings.read_text().replace("out/out.csv", f"out/{name}").replace("out/alt", "out/b-alt")
                     .replace("out/q.", "out/b-q."))  # fmt: skip
        other = start_run(db, load(b))
        assert other.status == "completed"
        after_other = (path / "out" / "out.csv").read_bytes()
        with pytest.raises(ResumeRefused, match=f"sink 'out': .* that run {other.run_id} wrote since"):
            resume_run(db, run_id, load, force=True)
        assert (path / "out" / "out.csv").read_bytes() == after_other


def test_resume_refuses_a_sink_renamed_onto_a_file_the_run_made_rows_durable_in(db: Database) -> None:
    """Settings changed with --force: a new sink `out2` writes `out`'s file (`out` kept, given
    another). The log has no position for `out2`, so it would start the file anew, and `out`'s
    durable rows would go. (Dropping `out` is refused sooner: tests/test_resume_force.py.)"""
    with _workdir("linear", 12) as path:
        settings = path / "settings.yaml"
        run_id = _crashed(db, settings, "renamed", "committed:6")
        assert fold_run(db, run_id).sink_positions.get("out", 0) > 0, "no durable rows in out: crash later"
        before = (path / "out" / "out.csv").read_bytes()
        settings.write_text(settings.read_text().replace(
            "  out: {plugin: csv, options: {path: out/out.csv}}",
            "  out: {plugin: csv, options: {path: out/moved.csv}}\n  out2: {plugin: csv, options: {path: out/out.csv}}",
        ).replace("on_success: out\n", "on_success: out2\n"))  # fmt: skip
        with pytest.raises(ResumeRefused, match="as sink 'out'"):
            resume_run(db, run_id, load, force=True)
        assert (path / "out" / "out.csv").read_bytes() == before


def test_a_run_writing_the_same_relative_path_elsewhere_does_not_stop_a_resume(db: Database) -> None:
    """Locations are compared as files, each resolved in the folder its run ran in: another
    project's `out/out.csv` is another file, and what follows this run's position in its own
    file is what its crash left, which the resume cuts."""
    with _workdir("linear", 12) as path:
        run_id = _crashed(db, path / "settings.yaml", "elsewhere", "committed:6")
        with (path / "out" / "out.csv").open("ab") as f:
            f.write(b"left,by,the,crash\r\n")
        with _workdir("linear", 3) as elsewhere:
            assert start_run(db, load(elsewhere / "settings.yaml")).status == "completed"
        os.chdir(path)
        assert resume_run(db, run_id, load).status == "completed"
        assert b"left,by,the,crash" not in (path / "out" / "out.csv").read_bytes()


def test_a_run_writing_to_dev_null_resumes(db: Database) -> None:
    """A device keeps nothing: the durable position stays 0, so the digest recorded with it must
    be of no bytes. It was of every byte written, and every resume was refused as if the file had
    been replaced (an attacker's review of the fix that let such a run complete)."""
    with _workdir("linear", 6) as path:
        settings = path / "settings.yaml"
        settings.write_text(settings.read_text().replace("{path: out/out.csv}", "{path: /dev/null}"))
        run_id = _crashed(db, settings, "to-dev-null", "committed:3")
        assert fold_run(db, run_id).sink_positions["out"] == 0
        outcome = resume_run(db, run_id, load)
        assert outcome.status == "completed"
        assert_invariants(fold_run(db, run_id, strict=True))
