"""A database sink after a crash: the rows it committed after the run's durable position (the
process died between a flush's commit and the commit of the events recording it) are deleted by
the resume, as a file sink is cut back, so that the table holds what the audit trail says.

The scenario needs no --force and nothing left to chance: a CSV sink whose file another process
holds locked fails its flush and hands its rows to its `on_write_failure`, a database sink, which
commits them; the process dies there. The lock gone, the resumed run writes the rows to the CSV
file, and the trail says nothing went to the database sink: nor may its table."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from engine.orchestrator import Pipeline, build_pipeline, fold_run, resume_run, start_run
from engine.settings import load_settings
from landscape import faults
from landscape.db import Database
from landscape.postgres import Sending
from tests.engine_harness import assert_invariants, crashed_run, write_csv

ROWS = 12
SETTINGS = """
source:
  plugin: csv
  on_success: out
  options:
    path: in.csv
    schema: {{mode: fixed, fields: ['id: int', 'amount: int']}}
sinks:
  out:
    plugin: csv
    options: {{path: out/o.csv}}
    on_write_failure: spill
  spill: {{plugin: database, options: {{url: '{url}', table: spill}}}}
checkpoint: {{frequency: 5}}
retry: {{max_attempts: 1}}
"""


def _setup(path: Path, url: str) -> Path:
    (path / "out").mkdir(parents=True)
    write_csv(path / "in.csv", ["id", "amount"], [[i, i * 10] for i in range(1, ROWS + 1)])
    (path / "out" / "o.csv").touch()
    settings = path / "settings.yaml"
    settings.write_text(SETTINGS.format(url=url), encoding="utf-8")
    return settings


def _load(path: Path) -> Pipeline:
    return build_pipeline(load_settings(path))


def _count(url: str, query: str) -> int:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(query)).scalar_one())
    finally:
        engine.dispose()


def _locked(path: Path) -> int:
    """The file, locked as another process writing it would hold it: a sink's flush fails."""
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _assert_what_the_trail_says(db: Database, run_id: str, path: Path, url: str) -> None:
    fold = fold_run(db, run_id, strict=True)
    assert_invariants(fold)
    assert {str(k): v for k, v in fold.outcomes.items()} == {"completed": ROWS}
    with (path / "out" / "o.csv").open(newline="", encoding="utf-8") as f:
        assert sorted(int(r["id"]) for r in csv.DictReader(f)) == list(range(1, ROWS + 1))
    assert _count(url, "SELECT count(*) FROM spill") == 0
    assert _count(url, f"SELECT count(*) FROM elspeth_sink_tokens WHERE run_id = '{run_id}'") == 0


def _crashed_spilling(db: Database, tmp_path: Path, settings: Path, run_id: str) -> None:
    """Run `settings` as `run_id` with its first sink's file locked by another process, so that
    its rows go to the fallback sink, and crash it at that sink's first flush: made durable there,
    never recorded."""
    lock = _locked(tmp_path / "out" / "o.csv")
    faults.configure("sink_flush:1", raise_instead=True)  # the spill sink's first flush
    try:
        with pytest.raises(faults.SimulatedCrash):
            start_run(db, _load(settings), commit_every=5, run_id=run_id)
    finally:
        faults.configure("")
        os.close(lock)


@pytest.mark.parametrize("again", [False, True], ids=["resumed", "resume-crashed-in-the-roll-back"])
def test_rows_a_crash_left_in_a_fallback_table_are_deleted_by_the_resume(
    db: Database, tmp_path: Path, db_url: str, again: bool
) -> None:
    settings = _setup(tmp_path, db_url)
    run_id = f"run-spill-{secrets.token_hex(6)}"
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        _crashed_spilling(db, tmp_path, settings, run_id)
        spilled = _count(db_url, "SELECT count(*) FROM spill")
        assert spilled > 0  # committed to the table, never recorded
        assert fold_run(db, run_id).sink_positions.get("spill") == 0
        if again:  # the resume dies between deleting the rows and their bookkeeping
            faults.configure("sink_rollback:1", raise_instead=True)
            try:
                with pytest.raises(faults.SimulatedCrash):
                    resume_run(db, run_id, _load)
            finally:
                faults.configure("")
            assert _count(db_url, "SELECT count(*) FROM spill") == spilled
        assert resume_run(db, run_id, _load).status == "completed"
        _assert_what_the_trail_says(db, run_id, tmp_path, db_url)
    finally:
        os.chdir(old)


def test_a_process_killed_inside_the_roll_back_resumes_to_what_the_trail_says(db: Database, tmp_path: Path) -> None:
    """The same with real processes: each dies by `os._exit` (as SIGKILL would), the second in
    the middle of the roll back's transaction, which SQLite then undoes from its journal."""
    url = f"sqlite:///{tmp_path / 'spill.db'}"
    _setup(tmp_path, url)
    env = {**os.environ, "ELSPETH_DATABASE_URL": db.conninfo}

    def elspeth(*args: str, fault: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine.cli.main", *args],
            cwd=tmp_path, env={**env, "ELSPETH_FAULT": fault}, capture_output=True, text=True,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip

    with db.connect() as conn:
        since = conn.execute("SELECT coalesce(max(global_position), 0) FROM events").fetchone()
    lock = _locked(tmp_path / "out" / "o.csv")
    try:
        died = elspeth("run", "-s", "settings.yaml", fault="sink_flush:1")
    finally:
        os.close(lock)
    assert died.returncode == faults.FAULT_EXIT_CODE, died.stderr
    with db.connect() as conn:
        row = conn.execute(
            "SELECT run_id FROM events WHERE global_position > %s ORDER BY global_position LIMIT 1", since
        ).fetchone()
    assert row is not None
    run_id = str(row[0])
    spilled = _count(url, "SELECT count(*) FROM spill")
    assert spilled > 0
    died = elspeth("resume", run_id, fault="sink_rollback:1")
    assert died.returncode == faults.FAULT_EXIT_CODE, died.stderr
    assert _count(url, "SELECT count(*) FROM spill") == spilled
    resumed = elspeth("resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    _assert_what_the_trail_says(db, run_id, tmp_path, url)
    explained = elspeth("explain", run_id, "--row", "1")
    assert explained.returncode == 0, explained.stderr
    assert "landed in sink out" in explained.stdout and "landed in sink spill" not in explained.stdout


def test_a_link_swapped_in_for_a_sqlite_file_after_the_checks_is_not_written_through(tmp_path: Path) -> None:
    """The load-time checks refuse a SQLite sink file that is a symbolic link; one planted after
    them is refused by SQLite itself (opened by URI with `nofollow`): the file it points to is
    left as it was. A file that is really there is opened as before."""
    import sqlite3

    from engine.plugins.database_sink import DatabaseSink
    from engine.plugins.protocol import PluginError

    victim = tmp_path / "elsewhere" / "victim.db"
    victim.parent.mkdir()
    sqlite3.connect(victim).close()
    link = tmp_path / "out.db"
    sink = DatabaseSink({"url": f"sqlite:///{link}", "table": "t"})
    os.symlink(victim, link)
    with pytest.raises(PluginError, match=r"is a symbolic link.*not written through"):
        sink.open("run-1", None)
    sink.release()
    assert sqlite3.connect(victim).execute("SELECT name FROM sqlite_master").fetchall() == []
    link.unlink()
    for url in (f"sqlite:///{tmp_path / 'a b%.db'}", f"sqlite+pysqlite:///{tmp_path / 'c.db'}"):
        ok = DatabaseSink({"url": url, "table": "t"})
        ok.open("run-1", None)
        ok.write("tok-1", {"a": 1})
        ok.flush()
        ok.close()
    assert sqlite3.connect(tmp_path / "a b%.db").execute("SELECT a FROM t").fetchall() == [(1,)]


LONG_TEXT = """
source: {{plugin: json, on_success: db, options: {{path: in.jsonl}}}}
sinks:
  db: {{plugin: database, options: {{url: '{url}', table: {table}}}, on_write_failure: spill}}
  spill: {{plugin: json, options: {{path: out/spill.jsonl}}}}
"""
LONG_ROWS = [{"id": i, "note": "x" * (100 if i % 2 == 0 else 10)} for i in range(6)]


def _table(url: str, table: str) -> list[tuple[object, ...]]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return sorted(tuple(r) for r in conn.execute(text(f"SELECT id, note FROM {table}")))
    finally:
        engine.dispose()


def _database_run(
    db: Database,
    path: Path,
    url: str,
    table: str,
    rows: list[dict[str, object]],
    crash_at: str | None,
    *,
    commit_every: int,
    sending: Sending = "thread",
    at_crash: Callable[[str], object] = lambda run_id: None,
) -> str:
    """The id of a run of LONG_TEXT over `rows` into `table`, in `path`: uninterrupted (sending its
    commits by `sending`), or crashed at fault point `crash_at` (its commits sent at once), shown to
    `at_crash`, and resumed to its end."""
    (path / "out").mkdir(parents=True)
    (path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = path / "settings.yaml"
    settings.write_text(LONG_TEXT.format(url=url, table=table), encoding="utf-8")
    old = os.getcwd()
    os.chdir(path)
    try:
        if crash_at is None:
            return start_run(db, _load(settings), commit_every=commit_every, sending=sending).run_id
        run_id = crashed_run(db, settings, crash_at, name="db", commit_every=commit_every, sending="inline")
        at_crash(run_id)
        assert resume_run(db, run_id, _load, commit_every=commit_every).status == "completed"
        return run_id
    finally:
        os.chdir(old)


@pytest.mark.parametrize("crash_at", [None, "sink_flush:1"], ids=["uninterrupted", "resumed"])
def test_text_longer_than_64_characters_before_the_table_is_made_is_written_as_after(
    db: Database, tmp_path: Path, db_url: str, crash_at: str | None
) -> None:
    """A table made from the first row (no schema) has unbounded text columns; the columns guessed
    until it is made had a width of 64 characters, so the rows before the first flush with longer
    text were diverted and those after written. A resume after a crash that left the table made
    (its rows rolled back) judged the same rows by the table, and wrote them: other output than the
    uninterrupted run's. Every such row is written, crash or not."""
    table = f"t_{secrets.token_hex(4)}"
    run_id = _database_run(db, tmp_path / "w", db_url, table, LONG_ROWS, crash_at, commit_every=3)
    assert {str(k): v for k, v in fold_run(db, run_id, strict=True).outcomes.items()} == {"completed": 6}
    assert not (tmp_path / "w" / "out" / "spill.jsonl").exists()
    assert _table(db_url, table) == [(r["id"], r["note"]) for r in LONG_ROWS]


# The first row refused by every database (SQLite stores -0.0 as 0, PostgreSQL text holds no NUL).
REFUSED_FIRST = [
    {"id": 0, "v": -0.0, "note": "a\u0000b"},
    {"id": 1, "v": 1.5, "note": "b", "extra": "z"},
    {"id": 2, "v": 2.5, "note": "c"},
]


def _first_diverted(db: Database, run_id: str) -> None:
    assert fold_run(db, run_id).outcomes.get("diverted") == 1, "the first row's diversion is committed"


@pytest.mark.parametrize("crash_at", [None, "committed:2"], ids=["uninterrupted", "resumed"])
def test_a_first_row_the_sink_refuses_fixes_no_columns(
    db: Database, tmp_path: Path, db_url: str, crash_at: str | None
) -> None:
    """With no schema, the first row a database sink accepts fixes its table's columns, not one it
    refuses: a resume after that refusal was committed starts with no columns, and took the next
    row's, where the run that went on had kept the refused row's and refused the next row too
    (a field outside them). As CsvSink fixes its columns."""
    table = f"t_{secrets.token_hex(4)}"
    run_id = _database_run(db, tmp_path / "w", db_url, table, REFUSED_FIRST, crash_at, commit_every=1,
                           sending="inline", at_crash=lambda run_id: _first_diverted(db, run_id))  # fmt: skip
    fold = fold_run(db, run_id, strict=True)
    assert {str(k): v for k, v in fold.outcomes.items()} == {"completed": 2, "diverted": 1}
    spilled = [json.loads(line)["id"] for line in (tmp_path / "w" / "out" / "spill.jsonl").read_text().splitlines()]
    assert spilled == [0]
    assert _table(db_url, table) == [(1, "b"), (2, "c")]


FILE_SPILL = SETTINGS.replace("{{plugin: database, options: {{url: '{url}', table: spill}}}}", "{spill}")


@pytest.mark.parametrize("spill", ["csv", "json", "jsonl"])
def test_rows_a_crash_left_in_a_fallback_file_are_cut_by_the_resume(db: Database, tmp_path: Path, spill: str) -> None:
    """The same with a file as the fallback: its rows were made durable at its first flush (its
    durable position 0) and the process died before recording them. The resume writes every row
    to the first sink, nothing to the fallback, and a file sink cuts back only when it first
    writes: the crash's rows stayed in the fallback file, which the trail says holds none. (Appending:
    position 0 says the file was empty when the run began. Writing anew, see below.)"""
    plugin = "csv" if spill == "csv" else "json"
    spill_path = tmp_path / "out" / f"spill.{spill}"
    settings = _setup(tmp_path, "unused")
    settings.write_text(
        FILE_SPILL.format(spill=f"{{plugin: {plugin}, options: {{path: out/spill.{spill}, mode: append}}}}"),
        encoding="utf-8",
    )
    run_id = f"run-spill-{secrets.token_hex(6)}"
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        _crashed_spilling(db, tmp_path, settings, run_id)
        assert spill_path.stat().st_size > 0  # durable in the file, never recorded
        assert fold_run(db, run_id).sink_positions.get("spill") == 0
        outcome = resume_run(db, run_id, _load)
        assert outcome.status == "completed"
        # (Said: the resume cannot tell the crash's rows, which went elsewhere, from another's.)
        assert [n.split(":")[0] for n in outcome.notes] == ["sink 'spill'"]
        fold = fold_run(db, run_id, strict=True)
        assert {str(k): v for k, v in fold.outcomes.items()} == {"completed": ROWS}
        assert fold.sink_positions["spill"] == 0
        assert spill_path.read_bytes() == b""
    finally:
        os.chdir(old)


def test_a_file_the_run_would_replace_but_never_wrote_is_left_as_it_was(db: Database, tmp_path: Path) -> None:
    """Writing anew, a sink's position is 0 before it first writes, whatever the file held before the
    run: a resume that writes nothing there leaves the file as an uninterrupted run would."""
    settings = _setup(tmp_path, "unused")
    settings.write_text(FILE_SPILL.format(spill="{plugin: csv, options: {path: out/spill.csv}}"), encoding="utf-8")
    before = b"id,amount\r\n0,0\r\n"  # an earlier run's output
    (tmp_path / "out" / "spill.csv").write_bytes(before)
    run_id = f"run-kept-{secrets.token_hex(6)}"
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        faults.configure("committed:2", raise_instead=True)
        try:
            with pytest.raises(faults.SimulatedCrash):
                start_run(db, _load(settings), commit_every=5, run_id=run_id, sending="inline")
        finally:
            faults.configure("")
        assert fold_run(db, run_id).sink_positions.get("spill") == 0
        outcome = resume_run(db, run_id, _load)
        assert outcome.status == "completed" and outcome.notes == ()  # (an older file: nothing cut)
        assert (tmp_path / "out" / "spill.csv").read_bytes() == before
    finally:
        os.chdir(old)
