"""A resume under settings changed with `--force` that no longer have a place the run still has
rows in is refused, in one line, before anything is written; and a log that completes a run with
rows still in it is no legal log (ARCHITECTURE §8, 1, 2 and 6)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import FakeClock
from engine.errors import ResumeRefused, RunFailedError
from engine.orchestrator import fold_run, resume_run, start_run
from engine.plugins.protocol import Row
from landscape import faults
from landscape.db import Database
from landscape.errors import ChainBroken
from landscape.fold import IllegalEvent, RunFold
from landscape.postgres import PostgresRecorder
from landscape.records import StoredEvent
from landscape.token_ids import EndedIds
from landscape.verify_store import verify_run
from statecharts import events as ev
from statecharts.compiled import EVENT_MACHINE
from tests.engine_harness import assert_invariants, load
from tests.test_cli import elspeth, one_line_error
from tests.test_engine import _BrokenSink
from tests.test_resume import PIPELINES, SINKS, SOURCE, _crashed, _fork_held, _outputs, _workdir


def _edit(settings: Path, *changes: tuple[str, str]) -> None:
    text = settings.read_text()
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new)
    settings.write_text(text)


def _refused(db: Database, run_id: str, path: Path, match: str) -> str:
    """Resume with --force is refused matching `match`; nothing recorded, no output touched."""
    last, before = fold_run(db, run_id).last_seq, _outputs(path)
    with pytest.raises(ResumeRefused, match=match) as refused:
        resume_run(db, run_id, load, force=True)
    message = str(refused.value)
    assert "\n" not in message and "nothing was done" in message, message
    assert fold_run(db, run_id).last_seq == last
    assert _outputs(path) == before
    return message


def _resumes_with_its_own_settings(db: Database, run_id: str, settings: Path, original: str) -> RunFold:
    settings.write_text(original)
    assert resume_run(db, run_id, load).status == "completed"
    fold = fold_run(db, run_id, strict=True)
    assert_invariants(fold)
    return fold


def test_an_aggregation_renamed_while_its_batch_holds_rows_is_refused(db: Database) -> None:
    """The review's case: an aggregation's open batch holds rows; settings renaming it would
    leave them buffered for ever while the run completed."""
    with _workdir("agg_end_of_source", 12) as path:
        settings = path / "settings.yaml"
        original = settings.read_text()
        run_id = _crashed(db, settings, "agg-renamed", "committed:6")
        held = fold_run(db, run_id).batches["agg#1"].members
        assert held, "no rows buffered yet: crash later"
        _edit(settings, ("- name: agg\n", "- name: agg2\n"))
        message = _refused(db, run_id, path, f"aggregation 'agg' \\(its open batch agg#1 holds {len(held)} rows\\)")
        assert "keep each of these under its name" in message
        _resumes_with_its_own_settings(db, run_id, settings, original)


def test_a_coalesce_renamed_while_it_holds_branches_is_refused(db: Database) -> None:
    with _workdir("fork_timeout_require_all", 12) as path:
        settings = path / "settings.yaml"
        # no timeout: the coalesces wait for branch b, which the `hold` aggregation keeps back
        settings.write_text(SOURCE + _fork_held("require_all").replace("timeout_seconds: 0.3", "") + SINKS)
        original = settings.read_text()
        run_id = _crashed(db, settings, "join-renamed", "committed:6")
        held = sum(len(c.arrived) for c in fold_run(db, run_id).coalesces.values())
        assert held, "no coalesce open yet: crash later"
        _edit(settings, ("- name: join\n", "- name: join2\n"))
        _refused(db, run_id, path, f"coalesce 'join' \\(it holds {held} rows? waiting for their other branches")
        _resumes_with_its_own_settings(db, run_id, settings, original)


class _Raises:
    """A transform whose process raises: the run fails with the row on its way to it."""

    def process(self, row: Row) -> Row:
        raise RuntimeError("broken")


def test_a_connection_no_node_reads_any_more_is_refused(db: Database) -> None:
    with _workdir("linear", 6) as path:
        settings = path / "settings.yaml"
        original = settings.read_text()
        pipeline = load(settings)
        cfg, _ = pipeline.nodes.transforms["screen"]
        pipeline.nodes.transforms["screen"] = (cfg, _Raises())  # type: ignore[assignment]
        with pytest.raises(RunFailedError, match="screen"):
            start_run(db, pipeline, run_id=(run_id := f"run-conn-{os.urandom(6).hex()}"), clock=FakeClock())
        assert {t.at for t in fold_run(db, run_id).tokens.values()} == {"raw"}
        _edit(settings, ("on_success: raw\n", "on_success: fresh\n"), ("input: raw\n", "input: fresh\n"))
        _refused(db, run_id, path, "connection 'raw' \\(1 row on the way along it; nothing reads it now\\)")
        _resumes_with_its_own_settings(db, run_id, settings, original)


def test_a_sink_removed_while_rows_wait_to_be_written_to_it_is_refused(db: Database) -> None:
    """The review's traceback (KeyError: 'out'): the disk was full, the operator pointed the
    pipeline at another sink and resumed with --force."""
    with _workdir("gate", 6) as path:
        settings = path / "settings.yaml"
        original = settings.read_text()
        pipeline = load(settings)
        pipeline.nodes.sinks["out"] = _BrokenSink()  # type: ignore[assignment]
        with pytest.raises(RunFailedError, match="disk full"):
            start_run(db, pipeline, run_id=(run_id := f"run-full-{os.urandom(6).hex()}"), clock=FakeClock())
        pending = [t for t in fold_run(db, run_id).tokens.values() if t.place == "out"]
        assert pending, "no rows pending in out"
        _edit(settings, ("'true': out", "'true': out2"), ("  out: {plugin: csv, options: {path: out/out.csv}}",
                                                          "  out2: {plugin: csv, options: {path: out/out2.csv}}"))  # fmt: skip
        _refused(db, run_id, path, f"sink 'out' \\({len(pending)} rows wait to be written to it;")
        _resumes_with_its_own_settings(db, run_id, settings, original)


def test_a_sink_removed_that_holds_durable_rows_is_refused(db: Database) -> None:
    """A JSON array sink dropped from the settings: never reopened, its file would keep what the
    crash wrote after the durable position and never get its closing ']'."""
    with _workdir("gate", 40) as path:
        settings = path / "settings.yaml"
        original = settings.read_text()
        run_id = _crashed(db, settings, "alt-removed", "committed:30")
        assert fold_run(db, run_id).sink_positions.get("alt", 0) > 0, "no durable rows in alt: crash later"
        _edit(
            settings, ("'false': alt", "'false': out"), ("  alt: {plugin: json, options: {path: out/alt.json}}\n", "")
        )
        _refused(db, run_id, path, "sink 'alt' \\(out/alt.json holds this run's output up to a durable position")
        _resumes_with_its_own_settings(db, run_id, settings, original)
        rows = json.loads((path / "out" / "alt.json").read_text())
        assert len(rows) == sum(1 for i in range(40) if i % 5 + 1 < 3)


def _crashed_by_the_command(db: Database, tmp_path: Path, sinks: str = SINKS) -> tuple[Path, str]:
    """An aggregation pipeline's `elspeth run`, crashed after its 8th commit: its settings file
    and its run id."""
    from tests.engine_harness import write_csv

    write_csv(tmp_path / "in.csv", ["id", "v", "note", "items"], [[i, i, "ok", "x"] for i in range(30)])
    (tmp_path / "out").mkdir()
    settings = tmp_path / "settings.yaml"
    settings.write_text(SOURCE + PIPELINES["agg_end_of_source"] + sinks)
    crashed = elspeth("run", "-s", "settings.yaml", "--commit-every", "1", cwd=tmp_path, db=db,
                      env={"ELSPETH_FAULT": "committed:8"})  # fmt: skip
    assert crashed.returncode == 86, crashed.stderr
    run_id = json.loads(elspeth("runs", "--json", cwd=tmp_path, db=db).stdout)[0]["run_id"]
    return settings, run_id


def test_the_one_line_from_the_command(db: Database, tmp_path: Path) -> None:
    """As the review ran it: `elspeth resume --force` names the aggregation, exit 1, no traceback."""
    settings, run_id = _crashed_by_the_command(db, tmp_path)
    _edit(settings, ("- name: agg\n", "- name: agg2\n"))
    err = one_line_error(elspeth("resume", run_id, "--force", cwd=tmp_path, db=db), 1)
    (line,) = [x for x in err.splitlines() if not x.startswith("elspeth: warning:")]  # (its on_error: alt)
    assert "aggregation 'agg' (its open batch agg#1 holds" in line, err


def test_a_resume_refused_for_changed_settings_says_what_changed(db: Database, tmp_path: Path) -> None:
    """ "changed since it started" alone sent the operator to diff the files by hand (a review):
    the key paths that differ (comments and spacing are no change: the settings are compared as
    read)."""
    from engine.orchestrator import changed_keys

    settings, run_id = _crashed_by_the_command(db, tmp_path)
    original = settings.read_text()
    settings.write_text(original.replace("out/out.csv", "out/o2.csv") + "retry: {max_attempts: 2}\n")
    err = one_line_error(elspeth("resume", run_id, cwd=tmp_path, db=db), 1)
    assert "; changed: retry, sinks.out.options.path); resume with --force" in err, err

    was = {"a": {"b": 1, "c": [1, 2]}, "gone": 1, "l": [1]}
    now = {"a": {"b": 2, "c": [1, 3]}, "new": 1, "l": [1, 2]}
    assert changed_keys(was, now) == ["a.b", "a.c[1]", "new", "l", "gone"]
    assert changed_keys(was, was) == [] and changed_keys(1, 2) == ["(the whole file)"]


def test_a_value_the_environment_changed_is_named_with_its_variable(db: Database, tmp_path: Path) -> None:
    """The file untouched, a `${VAR}` set otherwise: the refusal named the key alone, and the
    operator looked for an edit that was never made (a hostile review)."""
    assert "out/out.csv" in SINKS
    _, run_id = _crashed_by_the_command(db, tmp_path, SINKS.replace("out/out.csv", "'${OUT_FOLDER:-out}/out.csv'"))
    err = one_line_error(elspeth("resume", run_id, cwd=tmp_path, db=db, env={"OUT_FOLDER": "elsewhere"}), 1)
    assert (
        "; changed: sinks.out.options.path; the file takes some of these from environment variables: OUT_FOLDER); "
        "resume with --force" in err
    ), err


# -- a batch whose plugin failed while flushing it -------------------------------------------------


class _FlushFails:
    def flush(self, rows: list[Row]) -> object:
        raise RuntimeError("out of memory")


def test_a_batch_left_flushing_by_a_failed_run_is_flushed_by_the_resume(db: Database) -> None:
    """The plugin raised in its flush: the run failed with the batch `flushing` on record. No
    trigger fires for it again; the resume flushes it, and the outputs are an uninterrupted
    run's (without that, its rows stayed buffered and the run could not complete)."""
    with _workdir("agg_count", 7) as clean:
        assert start_run(db, load(clean / "settings.yaml"), clock=FakeClock()).status == "completed"
        expected = _outputs(clean)
    with _workdir("agg_count", 7) as path:
        pipeline = load(path / "settings.yaml")
        cfg, _, condition = pipeline.nodes.aggregations["agg"]
        pipeline.nodes.aggregations["agg"] = (cfg, _FlushFails(), condition)  # type: ignore[assignment]
        with pytest.raises(RunFailedError, match="agg"):
            start_run(db, pipeline, run_id=(run_id := f"run-flushing-{os.urandom(6).hex()}"), clock=FakeClock())
        assert [b.state for b in fold_run(db, run_id).batches.values()] == ["flushing"]
        assert resume_run(db, run_id, load).status == "completed"
        assert_invariants(fold_run(db, run_id, strict=True))
        assert _outputs(path) == expected


# -- the fold: RunCompleted only once nothing is left ----------------------------------------------


def _append(db: Database, run_id: str, events: list[ev.EventBase]) -> None:
    """Events written straight to the store, past the fold: what a faulty engine could write."""
    writer = PostgresRecorder(db).open_writer(run_id)
    try:
        for e in events:
            writer.append(EVENT_MACHINE[type(e).__name__], run_id, e)
        writer.commit(wait=True)
    finally:
        writer.close()


def test_a_log_that_completes_with_rows_still_buffered_does_not_verify(db: Database) -> None:
    """The log the review's resume wrote: `replay --check` passed it with 400 tokens in flight."""
    with _workdir("agg_end_of_source", 12) as path:
        run_id = _crashed(db, path / "settings.yaml", "completes-open", "committed:6")
        fold = fold_run(db, run_id)
        assert fold.batches and fold.status == "running"
        completed_at = fold.last_seq + 4
        _append(db, run_id, [ev.RunInterrupted(reason="writer lost"), ev.RunResumed(source_fingerprint="x"),
                             ev.SourceExhausted(records=fold.source_records), ev.RunCompleted()])  # fmt: skip
        with pytest.raises(ChainBroken, match=r"'RunCompleted' is not allowed .* open batch \(agg#1\)") as bad:
            verify_run(PostgresRecorder(db), run_id)
        assert bad.value.seq == completed_at
        replay = elspeth("replay", run_id, "--check", cwd=path, db=db)
        assert replay.returncode != 0 and "not a legal transition" in replay.stdout + replay.stderr, replay


def test_the_fold_refuses_run_completed_while_anything_is_live() -> None:
    created = ev.RunCreated(settings_path="s.yaml", settings_hash="h", settings={}, source_fingerprint="f",
                            nodes=[], elspeth_version="0", working_dir="/")  # fmt: skip
    start = [
        (0, "run", created),
        (1, "run", ev.RunStarted()),
        (2, "r0", ev.TokenCreated(row_index=0, data_hash="d", at="out")),
    ]
    fold = RunFold("run")
    for seq, entity, e in start:
        fold.apply(seq, entity, e)
    fold.apply(3, "run", ev.SourceExhausted(records=1))
    with pytest.raises(IllegalEvent, match="1 token not ended \\(r0\\)"):
        fold.apply(4, "run", ev.RunCompleted())
    assert fold.status == "draining"  # unchanged by the refused event
    fold.apply(4, "r0", ev.TokenQuarantined(reason="x"))
    fold.apply(5, "run", ev.RunCompleted())
    assert fold.status == "completed"


# -- the property: at any point of any run's log, RunCompleted is legal only when nothing is live --

_LOGS: dict[tuple[str, str], list[StoredEvent]] = {}


def _completed_log(db: Database, kind: str) -> list[StoredEvent]:
    key = (db.conninfo, kind)
    if key not in _LOGS:
        with _workdir(kind, 9) as path:
            run_id = start_run(db, load(path / "settings.yaml"), commit_every=2, clock=FakeClock()).run_id
        _LOGS[key] = list(PostgresRecorder(db).read_events(run_id))
    return _LOGS[key]


def _folded(log: list[StoredEvent], cut: int) -> RunFold:
    """The strict fold of the log's first `cut` events."""
    return RunFold(log[0].run_id, ended=EndedIds()).apply_all(log[:cut])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(k for k in PIPELINES if k != "explode")), at=st.integers(0, 10**6))
def test_run_completed_is_legal_exactly_when_every_token_has_ended(db: Database, kind: str, at: int) -> None:
    """ARCHITECTURE §8, 1 and 6, as the fold enforces them: cut a completed run's log anywhere
    after its source was exhausted and append RunCompleted. The fold accepts it exactly when no
    token is live and no coalesce or batch is open there."""
    log = _completed_log(db, kind)
    exhausted = next(i for i, e in enumerate(log) if isinstance(e.event, ev.SourceExhausted))
    cut = exhausted + 1 + at % (len(log) - exhausted - 1)  # before the log's own RunCompleted, at the latest
    fold = _folded(log, cut)
    live = bool(fold.tokens or fold.coalesces or fold.batches)
    try:
        fold.apply(log[cut - 1].seq + 1, fold.run_id, ev.RunCompleted())
    except IllegalEvent as e:
        assert live, f"refused with nothing live: {e}"
        assert fold.status == "draining"
    else:
        assert not live and fold.status == "completed"
        assert len(fold.ended or ()) == fold.accounted()  # each token ended exactly once


def test_a_sink_that_holds_output_under_another_plugin_is_refused(db: Database) -> None:
    """A position means what its plugin says (bytes of a file, rows of a table). The review's
    case: a database sink's 12 rows, resumed as a csv sink on a user's file, cut it to 12 bytes."""
    with _workdir("gate", 6) as path:
        settings = path / "settings.yaml"
        original = settings.read_text()
        run_id = _crashed(db, settings, "sink-replugged", "committed:4")
        assert fold_run(db, run_id).sink_positions["out"] > 0, "nothing durable in out yet: crash later"
        _edit(settings, ("out: {plugin: csv, options: {path: out/out.csv}}",
                         "out: {plugin: json, options: {path: out/out.csv, format: jsonl}}"))  # fmt: skip
        _refused(db, run_id, path, "sink 'out' as a csv sink \\(it is json now; out/out.csv holds this run's output")
        _resumes_with_its_own_settings(db, run_id, settings, original)


def test_a_sink_that_never_received_a_row_may_be_removed(db: Database) -> None:
    """Every sink has a position from the start; one at 0 whose file was never written holds
    nothing of the run: nothing to cut, nothing to close (found by a review)."""
    with _workdir("gate", 6) as path:
        (path / "in.csv").write_text("id,v,note,items\n" + "".join(f"{i},{i},ok,x\n" for i in range(6)))
        settings = path / "settings.yaml"
        run_id = _crashed(db, settings, "unused-sink", "committed:4")
        assert fold_run(db, run_id).sink_positions["quarantine"] == 0
        assert not (path / "out" / "q.jsonl").exists()
        _edit(settings, ("on_validation_failure: quarantine", "on_validation_failure: discard"),
              ("  quarantine: {plugin: json, options: {path: out/q.jsonl, format: jsonl}}\n", ""))  # fmt: skip
        assert resume_run(db, run_id, load, force=True).status == "completed"
        assert_invariants(fold_run(db, run_id, strict=True))


def test_a_sink_at_position_0_whose_file_holds_bytes_may_not_be_removed(db: Database) -> None:
    """What a crash left after position 0 only the sink cuts off."""
    with _workdir("gate", 6) as path:
        (path / "in.csv").write_text("id,v,note,items\n" + "".join(f"{i},{i},ok,x\n" for i in range(6)))
        settings = path / "settings.yaml"
        run_id = _crashed(db, settings, "unused-sink-bytes", "committed:4")
        (path / "out" / "q.jsonl").write_text('{"id": 1}\n')
        _edit(settings, ("on_validation_failure: quarantine", "on_validation_failure: discard"),
              ("  quarantine: {plugin: json, options: {path: out/q.jsonl, format: jsonl}}\n", ""))  # fmt: skip
        _refused(db, run_id, path, "sink 'quarantine' \\(out/q.jsonl holds this run's output")


def test_a_kept_sink_pointed_at_another_file_that_holds_bytes_is_refused(db: Database) -> None:
    """A resume cuts what follows the durable position, taken for what the crash left; in
    another file than the run wrote (settings changed with --force) those are someone's own
    bytes. The review's case: a sink at position 0 pointed, in append mode, at a user's file,
    which the resume cut to nothing."""
    with _workdir("gate", 6) as path:
        rows = "".join(f"{i},{i},ok,x\n" for i in range(5)) + "5,notanint,bad,x\n"
        (path / "in.csv").write_text("id,v,note,items\n" + rows)
        settings = path / "settings.yaml"
        original = settings.read_text()
        run_id = _crashed(db, settings, "moved-sink", "committed:3")
        assert fold_run(db, run_id).sink_positions["quarantine"] == 0
        precious = path / "out" / "precious.jsonl"
        precious.write_text('{"id": 100}\n{"id": 101}\n')
        _edit(settings, ("quarantine: {plugin: json, options: {path: out/q.jsonl, format: jsonl}}",
                         "quarantine: {plugin: json, options: {path: out/precious.jsonl, format: jsonl, mode: append}}"))  # fmt: skip
        last = fold_run(db, run_id).last_seq
        with pytest.raises(ResumeRefused) as refused:
            resume_run(db, run_id, load, force=True)
        says = "precious.jsonl holds 24 bytes after this run's durable position (0 bytes), but the run wrote to out/q.jsonl"
        assert "sink 'quarantine': " in str(refused.value) and says in str(refused.value), refused.value
        assert precious.read_text() == '{"id": 100}\n{"id": 101}\n' and fold_run(db, run_id).last_seq == last
        _resumes_with_its_own_settings(db, run_id, settings, original)


# -- a sink's layout: the bytes the run made durable are continued only as they were spelled --------

_OUT = "out: {plugin: csv, options: {path: out/out.csv}}"
_ALT = "alt: {plugin: json, options: {path: out/alt.json}}"


@pytest.mark.parametrize(
    ("sink", "options", "says"),
    [
        ("out", "delimiter: ';'", "delimiter ',' (now ';')"),
        ("out", "headers: false", "headers true (now false)"),
        ("out", "encoding: utf-16", "encoding 'utf-8' (now 'utf-16')"),
        ("alt", "format: jsonl", "format 'json' (now 'jsonl')"),
        ("alt", "indent: 2", "indent none (now 2)"),
        ("alt", "encoding: latin-1", "encoding 'utf-8' (now 'iso8859-1')"),
    ],
)
def test_a_sink_that_would_write_its_durable_bytes_in_another_layout_is_refused(
    db: Database, sink: str, options: str, says: str
) -> None:
    """The review's case: `format: jsonl` made `json` under --force; the resume completed, and the
    file began as JSON lines and ended as an array's rows, which no reader takes."""
    with _workdir("gate", 40) as path:
        settings = path / "settings.yaml"
        original = settings.read_text()
        run_id = _crashed(db, settings, "relaid", "committed:30")
        fold = fold_run(db, run_id)
        assert fold.sink_positions[sink] > 0, "nothing durable in the sink yet: crash later"
        was = _OUT if sink == "out" else _ALT
        _edit(settings, (was, was.replace("}}", ", " + options + "}}")))
        message = _refused(db, run_id, path, "in another layout than the bytes the run made durable")
        file = "out/out.csv" if sink == "out" else "out/alt.json"
        held = f"{file} holds the run's output up to its durable position {fold.sink_positions[sink]}"
        assert f"sink '{sink}' ({held}, written with {says})" in message, message
        _resumes_with_its_own_settings(db, run_id, settings, original)


def test_options_that_do_not_change_the_bytes_may_change(db: Database) -> None:
    """A file moved with the run's bytes, its encoding spelled otherwise: the resume continues it,
    and the output is an uninterrupted run's."""
    with _workdir("gate", 40) as clean:
        assert start_run(db, load(clean / "settings.yaml"), clock=FakeClock()).status == "completed"
        expected = _outputs(clean)
    with _workdir("gate", 40) as path:
        settings = path / "settings.yaml"
        run_id = _crashed(db, settings, "moved", "committed:30")
        assert fold_run(db, run_id).sink_positions["alt"] > 0, "nothing durable in alt yet: crash later"
        (path / "out" / "alt.json").rename(path / "out" / "moved.json")
        _edit(settings, (_ALT, "alt: {plugin: json, options: {path: out/moved.json, encoding: UTF8, format: json}}"))
        assert resume_run(db, run_id, load, force=True).status == "completed"
        assert_invariants(fold_run(db, run_id, strict=True))
        moved = _outputs(path)
        assert moved.pop("moved.json") == expected.pop("alt.json")
        assert moved == expected


def test_the_layout_compared_is_the_one_the_last_resume_wrote_with(db: Database) -> None:
    """A sink with nothing durable may change its layout (there are no bytes to continue); the
    resume that did records its settings, and a later resume is compared with those."""
    with _workdir("gate", 6) as path:
        rows = [f"{i},{i % 5 + 1},ok,x\n" for i in range(12)]
        (path / "in.csv").write_text("id,v,note,items\n" + "".join(rows[:4]) + "oops,1,q,x\n" + "".join(rows[4:]))
        settings = path / "settings.yaml"
        original = settings.read_text()
        run_id = _crashed(db, settings, "relaid-twice", "committed:3")
        assert fold_run(db, run_id).sink_positions["quarantine"] == 0, "a row quarantined already: crash earlier"
        q = "quarantine: {plugin: json, options: {path: out/q.jsonl, format: jsonl}}"
        _edit(settings, (q, q.replace("jsonl}", "json}")))
        as_json = settings.read_text()
        faults.configure("committed:8", raise_instead=True)
        try:
            with pytest.raises(faults.SimulatedCrash):
                resume_run(db, run_id, load, force=True, commit_every=1)
        finally:
            faults.configure("")
        assert fold_run(db, run_id).sink_positions["quarantine"] > 0, "nothing quarantined yet: crash later"
        settings.write_text(original)
        _refused(db, run_id, path, "sink 'quarantine' .* written with format 'json' \\(now 'jsonl'\\)")
        settings.write_text(as_json)
        assert resume_run(db, run_id, load).status == "completed"
        assert_invariants(fold_run(db, run_id, strict=True))
        assert json.loads((path / "out" / "q.jsonl").read_text())[0]["id"] == "oops"


@pytest.mark.parametrize("name", ["secrets", "api_key"])
def test_a_sink_named_like_a_secret_resumes_and_its_layout_is_still_held(db: Database, name: str) -> None:
    """A sink named like a secret has all its recorded settings fingerprinted (hmac-sha256:…), its
    plugin's name too: built again from them to find its layout, it built nothing, and every
    resume of its run was refused, unchanged settings too (a review). The same fingerprint is the
    same value: unchanged, it resumes; with a layout option changed, it is refused."""
    with _workdir("gate", 40) as path:
        settings = path / "settings.yaml"
        _edit(
            settings, ("  out: {plugin", f"  {name}: {{plugin"), ("routes: {'true': out", f"routes: {{'true': {name}")
        )
        original = settings.read_text()
        run_id = _crashed(db, settings, "secret-name", "committed:30")
        fold = fold_run(db, run_id)
        assert fold.sink_positions[name] > 0, "nothing durable in the sink yet: crash later"
        assert str(fold.settings["sinks"][name]["plugin"]).startswith("hmac-sha256:")
        _edit(settings, ("path: out/out.csv}", "path: out/out.csv, delimiter: ';'}"))
        _refused(db, run_id, path, f"sink '{name}' .*the layout of its durable bytes is unknown")
        settings.write_text(original)
        assert resume_run(db, run_id, load).status == "completed"
        assert_invariants(fold_run(db, run_id, strict=True))


def test_explain_shows_each_gate_decision_with_the_condition_in_force_when_it_was_made(db: Database) -> None:
    """A forced resume under a changed condition: explain showed the new condition for every gate
    event, also those decided under the old one (a row of v 5, routed 'true' under `>= 3`, shown
    as 'true' under `>= 100`: a careless operator's review). Each decision shows the condition of
    the settings it was made under."""
    from landscape.lineage import Gate, explain_rows

    with _workdir("gate", 8) as path:
        settings = path / "settings.yaml"
        run_id = _crashed(db, settings, "gate-changed", "committed:4")
        _edit(settings, ("row['v'] >= 3", "row['v'] >= 100"))
        assert resume_run(db, run_id, load, force=True).status == "completed"
        explained = explain_rows(PostgresRecorder(db), run_id, range(8))
        shown = {
            r.row_index: [(e.condition, e.route) for t in r.tokens for e in t.entries if isinstance(e, Gate)]
            for r in explained.rows
        }
        resumed_at = next(s.seq for s in PostgresRecorder(db).read_events(run_id) if isinstance(s.event, ev.RunResumed))
        for r in explained.rows:
            gate_seqs = [e.seq for t in r.tokens for e in t.entries if isinstance(e, Gate)]
            (condition, route), seq = shown[r.row_index][0], gate_seqs[0]
            assert condition == ("row['v'] >= 3" if seq < resumed_at else "row['v'] >= 100"), (r.row_index, shown)
            assert route == "false" or condition == "row['v'] >= 3"  # nothing reaches 100 here
        assert {c for conditions in shown.values() for c, _ in conditions} == {"row['v'] >= 3", "row['v'] >= 100"}
        from landscape.queries import run_lifecycle

        resumed = [e.detail for e in run_lifecycle(db, run_id) if e.event == "RunResumed"]
        assert resumed == [f"settings changed, --force: {settings}"]
