"""End to end: `elspeth run` in a real process, killed (SIGKILL) or stopped (SIGTERM, SIGINT) at
random moments, then `elspeth resume`; the sinks must equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import pytest

from landscape.db import Database
from tests.engine_harness import write_csv

ROWS = 3000

PIPELINES = {
    "linear": """
transforms:
- name: screen
  plugin: keyword_filter
  input: raw
  on_success: screened
  on_error: flagged
  options: {fields: [note], blocked_patterns: ['bad']}
- name: trim
  plugin: truncate
  input: screened
  on_success: out
  on_error: discard
  options: {fields: {note: 2}}
""",
    "fork_coalesce": """
gates:
- name: split
  input: raw
  condition: 'True'
  routes: {'true': fork}
  fork_to: [a, b]
transforms:
- name: ta
  plugin: field_mapper
  input: a
  on_success: a_done
  on_error: discard
  options: {mapping: {v: va}}
- name: tb
  plugin: keyword_filter
  input: b
  on_success: b_done
  on_error: flagged
  options: {fields: [note], blocked_patterns: ['bad']}
coalesce:
- name: join
  branches: {a: a_done, b: b_done}
  policy: best_effort
  timeout_seconds: 3600
  merge: nested
  on_success: out
""",
    "aggregation": """
aggregations:
- name: stats
  plugin: batch_stats
  input: raw
  on_success: out
  on_error: flagged
  trigger: {count: 7}
  options: {value_field: v}
""",
}

HEAD = """
source:
  plugin: csv
  on_success: raw
  options:
    path: in.csv
    schema: {mode: fixed, fields: ['id: int', 'v: int', 'note: str']}
    on_validation_failure: discard
"""
TAIL = """
sinks:
  out: {plugin: json, options: {path: out/out.jsonl, format: jsonl}}
  flagged: {plugin: csv, options: {path: out/flagged.csv}}
checkpoint: {frequency: 50}
"""


def _setup(path: Path, kind: str) -> None:
    path.mkdir(parents=True)
    (path / "out").mkdir()
    notes = ["ok", "bad", "fine"]
    write_csv(path / "in.csv", ["id", "v", "note"], [[i, i % 11, notes[i % 3]] for i in range(ROWS)])
    (path / "settings.yaml").write_text(HEAD + PIPELINES[kind] + TAIL, encoding="utf-8")


def _elspeth(db: Database, cwd: Path, *args: str, **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, "ELSPETH_DATABASE_URL": db.conninfo}
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli.main", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL, preexec_fn=_signals_as_a_terminal_leaves_them, **kw,  # type: ignore[call-overload]
    )  # fmt: skip


def _signals_as_a_terminal_leaves_them() -> None:
    """SIGHUP and SIGINT handled as by default, whatever the tests run under (`nohup` ignores
    SIGHUP in every process it starts, a script's background job SIGINT): as a terminal's
    foreground command has them."""
    for signum in (signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)


def _events(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(row[0]) if row else 0


def _latest_run(db: Database, since: int) -> tuple[str, str]:
    with db.connect() as conn:
        row = conn.execute(
            "SELECT run_id FROM events WHERE global_position > %s ORDER BY global_position LIMIT 1", (since,)
        ).fetchone()
        assert row is not None, "the killed run committed nothing"
        status = conn.execute("SELECT status FROM runs WHERE run_id = %s", (row[0],)).fetchone()
    return row[0], status[0] if status else "?"


def _max_position(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT coalesce(max(global_position), 0) FROM events").fetchone()
    return int(row[0]) if row else 0


def _outputs(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((path / "out").iterdir())}


def _wait_for_events(db: Database, proc: subprocess.Popen[str], at_least: int) -> bool:
    """Poll the store until the run has committed `at_least` more events (the process's own pace
    decides when; no fixed delays). False if the process ended first."""
    start = _events(db)
    while proc.poll() is None:
        if _events(db) - start >= at_least:
            return True
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.02)
    return False


@pytest.mark.parametrize("kind", sorted(PIPELINES))
@pytest.mark.parametrize(
    "how", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["kill", "term", "int", "hup"]
)
def test_stopped_or_killed_runs_resume_to_the_same_outputs(db: Database, tmp_path: Path, kind: str, how: int) -> None:
    reference = tmp_path / "reference"
    _setup(reference, kind)
    done = _elspeth(db, reference, "run", "-s", "settings.yaml")
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, out + err

    work = tmp_path / "work"
    _setup(work, kind)
    rnd = random.Random(f"{kind}-{how}")
    since = _max_position(db)
    proc = _elspeth(db, work, "run", "-s", "settings.yaml")
    if _wait_for_events(db, proc, rnd.randint(200, 6000)):
        proc.send_signal(how)
    out, err = proc.communicate(timeout=600)
    run_id, status = _latest_run(db, since)
    if proc.returncode != 0 and status != "completed":  # (a signal can land after the last commit)
        expected_status = "interrupted" if how != signal.SIGKILL else "running"
        if how != signal.SIGKILL and "stopped at once" in err:
            expected_status = "running"  # the graceful stop took longer than its grace (a slow machine): as a kill
        assert status in (expected_status, "draining"), (status, out, err)
        if how != signal.SIGKILL:
            assert proc.returncode == 130 and "elspeth resume" in err
        resumed = _elspeth(db, work, "resume", run_id)
        out, err = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, out + err
        assert "completed" in out
    assert _outputs(work) == _outputs(reference)

    again = _elspeth(db, work, "resume", run_id)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 1 and "already completed" in err and "Traceback" not in err


def test_runs_json_lists_runs_newest_first(db: Database, tmp_path: Path) -> None:
    work = tmp_path / "w"
    _setup(work, "linear")
    for _ in range(2):
        p = _elspeth(db, work, "run", "-s", "settings.yaml")
        p.communicate(timeout=600)
        assert p.returncode == 0
    p = _elspeth(db, work, "runs", "--json")
    out, _err = p.communicate(timeout=60)
    runs = json.loads(out)
    assert runs[0]["status"] == "completed" and "run_id" in runs[0]
    assert runs[0]["writer_alive"] is None  # an ended run has no writer to ask about
    started = [r["started_at"] for r in runs]
    assert started == sorted(started, reverse=True)


def test_a_run_that_loses_its_database_connection_is_resumable(db: Database, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    _setup(reference, "fork_coalesce")
    done = _elspeth(db, reference, "run", "-s", "settings.yaml")
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, out + err

    work = tmp_path / "work"
    _setup(work, "fork_coalesce")
    since = _max_position(db)
    proc = _elspeth(db, work, "run", "-s", "settings.yaml")
    assert _wait_for_events(db, proc, 500), "the run ended before it could be cut off"
    with db.connect() as conn:  # the writer's connections hold the run's advisory locks (its own, its sender's)
        (cut,) = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        ).fetchone()
    out, err = proc.communicate(timeout=600)
    run_id, _status = _latest_run(db, since)
    if cut > 0 and proc.returncode != 0:  # (it may have finished between the poll and the cut)
        assert proc.returncode == 1 and "Traceback" not in err, err
        assert f"elspeth resume {run_id}" in err.splitlines()[-1]
        listed = _elspeth(db, work, "runs", "--json")
        runs = {r["run_id"]: r for r in json.loads(listed.communicate(timeout=60)[0])}
        assert (runs[run_id]["status"], runs[run_id]["writer_alive"]) == ("running", False)
        resumed = _elspeth(db, work, "resume", run_id)
        out, err = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, out + err
    assert _outputs(work) == _outputs(reference)


def test_replay_check_agrees_while_the_run_is_still_being_written(db: Database, tmp_path: Path) -> None:
    work = tmp_path / "live"
    _setup(work, "fork_coalesce")
    proc = _elspeth(db, work, "run", "-s", "settings.yaml")
    try:
        assert _wait_for_events(db, proc, 300)
        run_id, _status = _latest_run(db, _max_position(db) - 1)
        replay = _elspeth(db, work, "replay", run_id, "--check")
        out, err = replay.communicate(timeout=300)
        assert replay.returncode == 0, out + err
        assert "projections agree with the events" in out
    finally:
        proc.communicate(timeout=600)
    usage = _elspeth(db, work, "replay", run_id, "--check", "--as-of", "5")
    _out, err = usage.communicate(timeout=60)
    assert usage.returncode == 2 and "omit --as-of" in err


def test_a_killed_run_on_the_embedded_default_resumes_to_the_same_outputs(tmp_path: Path) -> None:
    """No --database anywhere: the embedded server of ELSPETH_HOME. The killed process cannot
    stop the server on its way out; `db stop` does, and `resume` starts it again."""
    # (The other kill tests use the test server's URL: this is the default a user runs.)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    env["ELSPETH_HOME"] = str(tmp_path / "home")

    def elspeth(cwd: Path, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "engine.cli.main", *args],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def finish(proc: subprocess.Popen[str]) -> str:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out + err
        return out

    reference, work = tmp_path / "reference", tmp_path / "work"
    for path in (reference, work):
        _setup(path, "fork_coalesce")
    finish(elspeth(reference, "run", "-s", "settings.yaml"))
    proc = elspeth(work, "run", "-s", "settings.yaml")
    out_file = work / "out" / "out.jsonl"
    # killed once its first rows are durable (a sink flush comes with the commit that records it)
    while proc.poll() is None and not (out_file.exists() and out_file.stat().st_size > 0):
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    pid = tmp_path / "home" / "pgdata" / "postmaster.pid"
    killed = proc.returncode == -signal.SIGKILL
    if killed:
        assert pid.exists()  # the killed process left its server running...
        assert "stopped" in finish(elspeth(work, "db", "stop"))  # ...until db stop
        assert not pid.exists()
    run = json.loads(finish(elspeth(work, "runs", "--json")))[0]  # newest first: the killed run
    if killed and run["status"] != "completed":  # (the kill can land after the last commit)
        assert run["status"] == "running" and run["writer_alive"] is False
        finish(elspeth(work, "resume", run["run_id"]))
    assert _outputs(work) == _outputs(reference)
    assert not pid.exists()  # the last command stopped the server
