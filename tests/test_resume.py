"""Resume is replay: a crash at any point, then resume, gives what an uninterrupted run gives
(ARCHITECTURE §8, invariant 5), and the projections equal the fold."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import FakeClock
from engine.errors import ResumeRefused
from engine.orchestrator import build_pipeline, fold_run, resume_run, start_run
from engine.settings import load_settings
from landscape import faults
from landscape.db import Database
from landscape.projections import rebuild
from tests.engine_harness import assert_invariants, write_csv

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


def _agg(trigger: str, mode: str = "transform") -> str:
    plugin = "batch_stats" if mode == "transform" else "batch_replicate"
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


@contextmanager
def _workdir(kind: str, rows: int) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"elspeth-{kind}-"))
    write_csv(path / "in.csv", ["id", "v", "note", "items"], _rows(rows))
    lines = [json.dumps({"id": i, "v": v, "note": n, "items": list(range(i % 3))}) for i, v, n, _ in _rows(rows)[:-1]]
    (path / "in.jsonl").write_text("\n".join([*lines, "{not json"]) + "\n", encoding="utf-8")
    (path / "out").mkdir()
    source = JSON_SOURCE if kind == "explode" else SOURCE
    (path / "settings.yaml").write_text(source + PIPELINES[kind] + SINKS, encoding="utf-8")
    old = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)
        shutil.rmtree(path, ignore_errors=True)


def _load(path: Path):  # type: ignore[no-untyped-def]
    return build_pipeline(load_settings(path))


def _outputs(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((path / "out").iterdir())}


def _metrics(db: Database, run_id: str) -> dict[str, float]:
    with db.connect() as conn:
        return dict(conn.execute("SELECT metric, value FROM run_metrics WHERE run_id = %s", (run_id,)).fetchall())


_reference: dict[tuple[str, int, int], tuple[dict[str, bytes], dict[str, int]]] = {}


def _uninterrupted(db: Database, kind: str, rows: int, commit_every: int) -> tuple[dict[str, bytes], dict[str, int]]:
    key = (kind, rows, commit_every)
    if key not in _reference:
        with _workdir(kind, rows) as path:
            outcome = start_run(db, _load(path / "settings.yaml"), commit_every=commit_every, clock=FakeClock())
            fold = fold_run(db, outcome.run_id, strict=True)
            assert_invariants(fold)
            _reference[key] = (_outputs(path), {str(k): v for k, v in fold.outcomes.items()})
    return _reference[key]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(sorted(PIPELINES)),
    point=st.sampled_from(["append", "sink_flush", "commit", "committed"]),
    nth=st.integers(min_value=1, max_value=80),
    commit_every=st.integers(min_value=1, max_value=6),
    rows=st.integers(min_value=3, max_value=14),
)
def test_crash_anywhere_then_resume_equals_an_uninterrupted_run(
    db: Database, kind: str, point: str, nth: int, commit_every: int, rows: int
) -> None:
    expected_outputs, expected_outcomes = _uninterrupted(db, kind, rows, commit_every)
    with _workdir(kind, rows) as path:
        pipeline = _load(path / "settings.yaml")
        run_id = f"run-crash-{kind}-{point}-{nth}-{commit_every}-{rows}-{os.urandom(3).hex()}"
        faults.configure(f"{point}:{nth}", raise_instead=True)
        try:
            start_run(db, pipeline, commit_every=commit_every, clock=FakeClock(), run_id=run_id)
            crashed = False
        except faults.SimulatedCrash:
            crashed = True
        finally:
            faults.configure("")
        if crashed:
            committed = fold_run(db, run_id)
            if committed.status == "initial":
                return  # died before the run's first commit: nothing to resume, nothing written
            if committed.status != "completed":  # (died after the last commit: nothing left to do)
                resume_run(db, run_id, _load, commit_every=commit_every, clock=FakeClock())
        os.chdir(path)
        fold = fold_run(db, run_id, strict=True)
        assert_invariants(fold)
        assert {str(k): v for k, v in fold.outcomes.items()} == expected_outcomes
        assert _outputs(path) == expected_outputs
        # metrics are a projection: the resumed run's equal the fold's, with no double count
        metrics = _metrics(db, run_id)
        assert {k.removeprefix("outcome."): int(v) for k, v in metrics.items() if k.startswith("outcome.")} == (
            expected_outcomes
        )
        assert metrics["rows_in"] == fold.source_records == rows + 1
        # projections rebuilt from the events equal the incrementally maintained ones
        before = _projection_snapshot(db, run_id)
        with db.connect() as conn:
            rebuild(conn, run_id)
        assert _projection_snapshot(db, run_id) == before


def _projection_snapshot(db: Database, run_id: str) -> dict[str, list[tuple[object, ...]]]:
    from landscape.projections import PROJECTION_TABLE_NAMES

    snap = {}
    with db.connect() as conn:
        for table in PROJECTION_TABLE_NAMES:
            rows = conn.execute(f"SELECT * FROM {table} WHERE run_id = %s", (run_id,)).fetchall()
            snap[table] = sorted(rows, key=repr)
    return snap


def test_a_coalesce_timeout_in_a_resumed_run_is_counted_once(db: Database) -> None:
    """The prior system's resume under-counted rows when coalesce timeouts fired after resume."""
    with _workdir("fork_best_effort", 8) as path:
        run_id = f"run-timeout-{os.urandom(3).hex()}"
        faults.configure("committed:3", raise_instead=True)
        clock = FakeClock()
        with pytest.raises(faults.SimulatedCrash):
            start_run(db, _load(path / "settings.yaml"), commit_every=2, clock=clock, run_id=run_id)
        faults.configure("")
        clock.advance(7200)  # past every open coalesce's deadline
        outcome = resume_run(db, run_id, _load, commit_every=2, clock=clock)
        assert outcome.status == "completed"
        fold = fold_run(db, run_id, strict=True)
        assert_invariants(fold)
        metrics = _metrics(db, run_id)
        assert metrics["rows_in"] == 9
        assert sum(v for k, v in metrics.items() if k.startswith("outcome.")) == fold.accounted()


def test_resume_refuses_a_completed_run_and_changes_nothing(db: Database) -> None:
    with _workdir("linear", 4) as path:
        outcome = start_run(db, _load(path / "settings.yaml"))
        before = fold_run(db, outcome.run_id).last_seq
        with pytest.raises(ResumeRefused, match="already completed"):
            resume_run(db, outcome.run_id, _load)
        assert fold_run(db, outcome.run_id).last_seq == before


def test_resume_refuses_a_changed_input_unless_forced(db: Database) -> None:
    with _workdir("linear", 6) as path:
        run_id = f"run-changed-{os.urandom(3).hex()}"
        faults.configure("committed:2", raise_instead=True)
        with pytest.raises(faults.SimulatedCrash):
            start_run(db, _load(path / "settings.yaml"), commit_every=1, run_id=run_id)
        faults.configure("")
        with (path / "in.csv").open("a") as f:
            f.write("99,1,late,x\n")
        last = fold_run(db, run_id).last_seq
        with pytest.raises(ResumeRefused, match="input of run"):
            resume_run(db, run_id, _load)
        assert fold_run(db, run_id).last_seq == last
        outcome = resume_run(db, run_id, _load, force=True)
        assert outcome.status == "completed"
        assert fold_run(db, run_id).resumes == 1


def test_resume_refuses_while_the_writer_lives(db: Database) -> None:
    from landscape.store import RunWriter

    with _workdir("linear", 3) as path:
        outcome = start_run(db, _load(path / "settings.yaml"))
        writer = RunWriter(db.connect(), outcome.run_id)  # someone is writing this run
        try:
            with pytest.raises(ResumeRefused, match="still being written"):
                resume_run(db, outcome.run_id, _load)
        finally:
            writer.close()


@pytest.mark.parametrize("commit_every", [1, 4, 10])
def test_durability_points_bound_the_work_a_crash_can_cost(db: Database, commit_every: int) -> None:
    """`checkpoint.frequency` trades commits (events/s) against work redone after a crash: a
    crash anywhere loses at most two durability points of progress (the commit in flight and
    the batch being built), i.e. twice `commit_every` source rows."""
    with _workdir("linear", 30) as path:
        run_id = f"run-dp-{commit_every}-{os.urandom(3).hex()}"
        faults.configure("append:150", raise_instead=True)
        with pytest.raises(faults.SimulatedCrash):
            start_run(db, _load(path / "settings.yaml"), commit_every=commit_every, clock=FakeClock(), run_id=run_id)
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
