"""A writer that stalls (a debugger, a paused VM, a stalled machine) and loses its database
sessions meanwhile is fenced: another process resumes the run and completes it, and the stalled
one, continued, writes none of its files nor any event. Its run's locks went with its sessions,
so only the sinks' own checks stand between it and the files the resume wrote: a file sink
holds the file as it found it when the run started, and a database sink the tokens it wrote.
Real processes, a real server; the stall is SIGSTOP at a chosen point (`landscape.faults`)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from engine.plugins.protocol import PluginError, WriterClaim
from engine.plugins.sinks import CsvSink, JsonSink
from landscape.db import Database
from landscape.postgres import PostgresRecorder
from tests.engine_harness import write_csv
from tests.test_cli import PIPELINE, elspeth


def _wait_stopped(pid: int) -> None:
    # Waiting on another process's state (not on time): os.waitpid reports the stop itself.
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the writer ended instead of stopping (status {status})"


def _cut_off_sessions(db: Database) -> int:
    """End every session in the run's database (the stalled writer's and its sender child's: no
    other process uses it now), as a server restart or a network cut would: the run's locks go
    with them."""
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a "
            "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'"
        ).fetchall()
    return len(rows)


def _table(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM t ORDER BY id").fetchall()


def _outputs(work: Path) -> dict[str, object]:
    """What the run's sinks hold: each file's bytes, a SQLite table's rows."""
    return {p.name: _table(p) if p.suffix == ".db" else p.read_bytes() for p in (work / "out").iterdir()}


@pytest.mark.parametrize("high", ["file", "table"])
def test_a_writer_stalled_before_its_first_write_writes_nothing_once_a_resume_completed_its_run(
    db: Database, tmp_path: Path, high: str
) -> None:
    """Without the fence, the stalled writer's retried flush reopened its sinks at its durable
    position as a resume would: it cut the completed run's file to its own 8 rows, and deleted
    the rows the resume had written to the table (the run's own, by the bookkeeping)."""
    work = tmp_path
    (work / "out").mkdir()
    pipeline = PIPELINE
    if high == "table":
        pipeline = pipeline.replace("{plugin: csv, options: {path: out/high.csv}}",
                                    "{plugin: database, options: {url: 'sqlite:///out/high.db', table: t}}")  # fmt: skip
    # One attempt: the stalled writer's first failure is what it says (a lost session inside a
    # sink's question once read as the sink's own failure, its message not recorded).
    (work / "settings.yaml").write_text(pipeline + "retry: {max_attempts: 1}\n")
    write_csv(work / "in.csv", ["id", "v"], [[i, 9] for i in range(40)] + [[40, "x"]])
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    env["ELSPETH_DATABASE_URL"] = db.conninfo
    # Stopped after its first commit (the run is on record), before any sink wrote a byte: it
    # holds no file's lock, only the store's locks, on the sessions about to be cut off.
    stalled = subprocess.Popen(
        [sys.executable, "-m", "engine.cli.main", "run", "-s", "settings.yaml", "--commit-every", "5"],
        cwd=work, env={**env, "ELSPETH_FAULT": "append:12:stop"}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_stopped(stalled.pid)
        assert {p.name for p in (work / "out").iterdir()} <= {"high.db"}  # (a table's database is made at the start)
        (run,) = [r for r in json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout) if r["status"] == "running"]
        assert _cut_off_sessions(db) >= 2  # (the writer's and its sender's)
        resumed = elspeth("resume", run["run_id"], cwd=work, db=db)
        assert resumed.returncode == 0, resumed.stderr
        written = _outputs(work)
        if high == "file":
            assert set(written) == {"high.csv", "bad.jsonl"} and written["high.csv"].count(b"\n") == 41  # type: ignore[union-attr]
        else:
            assert set(written) == {"high.db", "bad.jsonl"} and len(written["high.db"]) == 40  # type: ignore[arg-type]
        os.kill(stalled.pid, signal.SIGCONT)
        out, err = stalled.communicate(timeout=300)
    finally:
        if stalled.poll() is None:
            stalled.kill()
            stalled.wait()
    assert stalled.returncode != 0, out + err
    assert "Traceback" not in err, err
    assert "not recorded" not in err, err
    if high == "file":  # (its sink asks the question; the table's claim refuses, and the run's commit fails)
        assert "another process may have taken the run over" in err, err
    assert _outputs(work) == written  # nothing of the stalled one's, nothing of the resume's cut
    checked = elspeth("replay", run["run_id"], "--check", cwd=work, db=db)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = {r["run_id"]: r for r in json.loads(elspeth("runs", "--json", cwd=work, db=db).stdout)}
    assert listed[run["run_id"]]["status"] == "completed"


@pytest.mark.parametrize("sending", ["inline", "thread", "process"])
def test_asking_whether_this_process_still_writes_leaves_no_transaction_open(db: Database, sending: str) -> None:
    """The question opened a transaction on the writer's session and never ended it: the session
    then sat idle in a transaction for the rest of the run, which a server's
    idle_in_transaction_session_timeout ends, and the run's lock with it (a review: a run whose
    one refused row came after the timeout stopped, 'lost the database')."""
    from tests.test_store import _created

    run_id = f"run-fence-{sending}"
    writer = PostgresRecorder(db).open_writer(run_id, sending=sending)  # type: ignore[arg-type]
    try:
        writer.append("run", run_id, _created(run_id))
        writer.commit()
        writer.still_writer()
        first = writer.generation()
        assert writer.generation() > first  # (never the same twice)
        with psycopg.connect(db.conninfo, autocommit=True) as conn:
            states = conn.execute(
                "SELECT state FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            ).fetchall()
        assert states and ("idle in transaction",) not in states, states
    finally:
        writer.close()


def _rows(url: str) -> list[tuple[object, ...]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text("SELECT id FROM t ORDER BY id"))]
    finally:
        engine.dispose()


def test_a_table_claimed_by_a_later_writer_of_the_run_takes_nothing_from_an_earlier_one(db_url: str) -> None:
    """The engine asks whether it still holds the run before a sink cuts back, but a writer can
    stall just after the answer; and its flush of a token the resume never wrote (a batch closed
    otherwise) meets no refusal of a token written twice. The table's claim, read in each
    flush's and each open's own transaction, refuses both once a later writer of the run (a
    higher generation, drawn under the run's lock) has opened the table. So is a resume that
    drew its generation, stalled inside its open, and was taken over: a count of resumes gave it
    the same number as the resume after it, and it cut that resume's durable rows (a review)."""
    from engine.plugins.database_sink import DatabaseSink

    def sink(generation: int, name: str) -> DatabaseSink:
        s = DatabaseSink({"url": db_url, "table": "t", "schema": {"mode": "fixed", "fields": ["id: int"]}})
        s.fence_as(WriterClaim(generation, name, lambda: None))  # (the engine's question: always yes here)
        return s

    stalled = sink(10, "the run")
    stalled.open("run", None)
    stalled.write("r1", {"id": 1})
    assert stalled.flush() == 1
    resumed = sink(30, "its second resume")
    resumed.open("run", 1)  # (its log says 1 row is durable)
    resumed.write("r2", {"id": 2})
    resumed.write("r3", {"id": 3})
    assert resumed.flush() == 3
    stalled.write("r9", {"id": 9})  # a token the resume never wrote
    with pytest.raises(PluginError, match=r"a later writer of the run \(its second resume, generation 30\)"):
        stalled.flush()
    stalled.release()
    with pytest.raises(PluginError, match="generation 30"):
        stalled.open("run", 0)  # a retry's cut back to its own durable position: would delete rows 2 and 3
    first_resume = sink(20, "its first resume, stalled in its open")
    with pytest.raises(PluginError, match="generation 30"):
        first_resume.open("run", 1)
    assert _rows(db_url) == [(1,), (2,), (3,)]
    third = sink(40, "its third resume")
    third.open("run", 3)
    resumed.write("r4", {"id": 4})
    with pytest.raises(PluginError, match="no longer writes run run's rows there"):
        resumed.flush()
    for s in (stalled, resumed, first_resume, third):
        s.release()
    assert _rows(db_url) == [(1,), (2,), (3,)]


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_a_file_sink_asks_whether_its_process_still_holds_the_run_under_the_files_lock(
    tmp_path: Path, kind: str
) -> None:
    """The engine asks before it reopens a sink, but a writer can stall just after the answer,
    and a resume can then write the file and let go of it before the stalled writer opens it
    again: its checks then miss a file the resume left no longer than it had made it. Asked once
    the file's lock is taken, the answer stays true while it holds the file (a resume writes only
    under that lock), and a process that no longer holds the run cuts nothing."""
    import fcntl

    from landscape.errors import DatabaseUnavailable

    path = tmp_path / f"o.{kind}"
    answers: list[str] = []

    def held() -> None:
        with path.open("rb") as other:  # (another process's view: flock locks are per open file)
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                answers.append("asked under the lock")
            else:
                answers.append("asked without the lock")
        if len(answers) > 1:
            raise DatabaseUnavailable("lost the database while making sure this process still writes the run")

    sink = (CsvSink if kind == "csv" else JsonSink)({"path": str(path), "schema": {"mode": "observed"}})
    sink.fence_as(WriterClaim(0, "a", held))
    sink.open("run", None)
    sink.write("r1", {"a": 1})
    durable = sink.flush()
    sink.write("r2", {"a": 2})  # (same file, still held: not asked again)
    sink.flush()
    kept = path.read_bytes()
    sink.release()
    with pytest.raises(DatabaseUnavailable):
        sink.open("run", durable)  # a retry's reopen opens the file to cut it: asked again, and refused
    assert answers == ["asked under the lock"] * 2 and path.read_bytes() == kept  # nothing cut
    sink.release()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_claim_held_by_a_writer_stalled_inside_a_flush_is_named_not_waited_on_for_ever(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stopped inside a flush's transaction holds the claim's row; a resume's open
    waited on it with no end and no word (a review)."""
    from sqlalchemy import create_engine, text

    from engine.plugins import database_sink
    from engine.plugins.database_sink import DatabaseSink

    monkeypatch.setattr(database_sink, "CLAIM_WAIT_S", 1)

    def sink(generation: int) -> DatabaseSink:
        s = DatabaseSink({"url": db_url, "table": "t", "schema": {"mode": "fixed", "fields": ["id: int"]}})
        s.fence_as(WriterClaim(generation, f"writer {generation}", lambda: None))
        return s

    first = sink(1)
    first.open("run", None)
    first.release()
    stalled = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with stalled.begin() as conn:  # (as a flush does, and stops there)
            conn.execute(text("SELECT 1 FROM elspeth_sink_writers WHERE run_id = 'run' FOR UPDATE"))
            with pytest.raises(PluginError, match="held by another session of its database, waited on for 1 s"):
                sink(2).open("run", None)
    finally:
        stalled.dispose()
    then = sink(2)
    then.open("run", None)  # (let go: claimed)
    then.release()


def test_a_resume_spelling_a_sqlite_table_otherwise_is_refused_by_the_highest_claim(tmp_path: Path) -> None:
    """SQLite takes `t` and `T` for one table; the claims' key holds them apart. A resume under
    settings spelling it `T` that drew its generation and stalled read its own claim first (the
    key's order) and rolled back the rows a later resume, spelling it `t`, had made durable (a
    review). The highest claim of the table is the one read."""
    from engine.plugins.database_sink import DatabaseSink

    url = f"sqlite:///{tmp_path / 'out.db'}"

    def sink(table: str, generation: int) -> DatabaseSink:
        s = DatabaseSink({"url": url, "table": table, "schema": {"mode": "fixed", "fields": ["id: int"]}})
        s.fence_as(WriterClaim(generation, f"writer {generation}", lambda: None))
        return s

    first = sink("t", 10)
    first.open("run", None)
    first.write("r1", {"id": 1})
    assert first.flush() == 1
    later = sink("t", 30)
    later.open("run", 1)
    later.write("r2", {"id": 2})
    later.write("r3", {"id": 3})
    assert later.flush() == 3
    stalled = sink("T", 20)
    with pytest.raises(PluginError, match="generation 30"):
        stalled.open("run", 1)
    later.write("r4", {"id": 4})
    assert later.flush() == 4
    for s in (first, later, stalled):
        s.release()
    assert _rows(url) == [(1,), (2,), (3,), (4,)]
