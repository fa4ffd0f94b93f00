"""A new run appending to a file that a run not completed would continue.

Run A (appending) crashes after a sink flush is durable but before its events are committed;
the operator starts the pipeline again (run B) instead of resuming A. B would append after the
rows A's crash left unrecorded (some of them B writes again), and A's resume would then refuse to
cut B's rows: nothing would ever reconcile the file. So B refuses, before recording anything.
(The resume's own refusal, for a file written so by an earlier version, is in test_resume.py.)"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from engine import orchestrator
from engine.abandon import abandon_run
from engine.errors import ResumeRefused, RunRefused
from engine.orchestrator import fold_run, resume_run, start_run
from engine.settings import SettingsError
from landscape.db import Database
from landscape.postgres import PostgresRecorder
from tests.engine_harness import crashed_resume, crashed_run, load, workdir
from tests.test_cli import elspeth, one_line_error

ROWS = 12
SETTINGS = """
source:
  plugin: csv
  on_success: raw
  options:
    path: in.csv
    schema: {mode: fixed, fields: ['id: int', 'v: int']}
gates:
- name: route
  input: raw
  condition: "row['v'] < 0"
  routes: {'true': zbad, 'false': out}
sinks:
  out: {plugin: csv, options: {path: out/log.csv, mode: append}}
  zbad: {plugin: json, options: {path: /dev/full, format: jsonl, mode: append}}
retry: {max_attempts: 1}
"""


def _write_input(path: Path, rows: int, bad_at: int | None = None) -> None:
    with (path / "in.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "v"])
        w.writerows([i, -1 if i == bad_at else i] for i in range(1, rows + 1))


def _workdir(settings: str = SETTINGS) -> AbstractContextManager[Path]:
    return workdir("append", settings, lambda path: _write_input(path, ROWS))


def _crashed(db: Database, settings: Path, at: str) -> str:
    """A run of `settings` (a durability point per row) crashed at fault point `at`: its id.
    Its commits are sent inline: a crash just after one leaves the sinks where they recorded them."""
    return crashed_run(db, settings, at, name="append", sending="inline")


def _crashed_with_a_tail(db: Database, path: Path) -> tuple[Path, str, int, bytes]:
    """A run of the workdir's settings crashed after a sink flush, before its commit: its file
    (holding rows after what the run made durable), its id, its durable position, the file's bytes."""
    log = path / "out" / "log.csv"
    crashed = _crashed(db, path / "settings.yaml", "sink_flush:5")
    durable = fold_run(db, crashed).sink_positions["out"]
    before = log.read_bytes()
    assert len(before) > durable, "the crash left no unrecorded rows: crash elsewhere"
    return log, crashed, durable, before


def _refused(db: Database, settings: Path, match: str) -> str:
    """Start a run of `settings`, see it refused with a message matching `match`; nothing of it
    is recorded. The message."""
    runs = PostgresRecorder(db).run_ids()
    with pytest.raises(RunRefused, match=match) as refused:
        start_run(db, load(settings), commit_every=1)
    assert PostgresRecorder(db).run_ids() == runs
    return str(refused.value)


def _ids(path: Path) -> list[str]:
    return [line.split(",")[0] for line in path.read_text().splitlines()[1:]]


def test_a_new_run_refuses_to_append_after_what_a_crashed_run_left(db: Database) -> None:
    with _workdir() as path:
        log, crashed, durable, before = _crashed_with_a_tail(db, path)
        message = _refused(db, path / "settings.yaml", f"run {crashed} made durable")
        assert f"`elspeth resume {crashed}`" in message and "move the file aside" in message
        assert f"then {len(before) - durable} bytes its crash left" in message and "crashed" in message
        assert log.read_bytes() == before
        # Doing as it says: the crashed run finishes the file, and a new run appends after it.
        assert resume_run(db, crashed, load).status == "completed"
        assert start_run(db, load(path / "settings.yaml")).status == "completed"
        assert _ids(log) == [str(i) for i in range(1, ROWS + 1)] * 2


def test_a_resume_that_adds_an_append_sink_on_such_a_file_is_refused_too(db: Database) -> None:
    """Settings changed with --force can add a sink: it starts appending as a new run's does."""
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:5")
        log = path / "out" / "log.csv"
        before = log.read_bytes()
        other = path / "other.yaml"
        other.write_text(SETTINGS.replace("path: out/log.csv", "path: out/other.csv"))
        resumed = _crashed(db, other, "sink_flush:3")
        other.write_text(other.read_text().replace("  zbad:", "  extra: {plugin: csv, options: {path: out/log.csv, "
                                                              "mode: append}}\n  zbad:"))  # fmt: skip
        last = fold_run(db, resumed).last_seq
        with pytest.raises(RunRefused, match=f"sink 'extra': .* holds what run {crashed} made durable"):
            resume_run(db, resumed, load, force=True)
        assert log.read_bytes() == before and fold_run(db, resumed).last_seq == last


@pytest.mark.parametrize("through", ["another spelling", "a symbolic link", "a hard link"])
def test_the_same_file_by_another_name_is_refused_too(db: Database, through: str) -> None:
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:5")
        log = path / "out" / "log.csv"
        name = "out/../out/log.csv"
        if through == "a symbolic link":
            name = "alias.csv"
            (path / name).symlink_to(log)
        elif through == "a hard link":
            name = "alias.csv"
            os.link(log, path / name)
        b = path / "b.yaml"
        b.write_text(SETTINGS.replace("path: out/log.csv", f"path: {name}"))
        before = log.read_bytes()
        if through == "a symbolic link":  # refused before that: no sink writes through a link
            with pytest.raises(SettingsError, match=r"'alias\.csv' is a symbolic link"):
                load(b)
        else:
            _refused(db, b, f"run {crashed} made durable")
        assert log.read_bytes() == before


def test_refused_too_when_the_file_ends_where_the_crashed_run_made_it_durable(db: Database) -> None:
    """No unrecorded rows (the crash came after a commit): the rows appended would still leave
    the crashed run unable to resume, and the rest of its input would never be written."""
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "committed:6")
        log = path / "out" / "log.csv"
        assert log.stat().st_size == fold_run(db, crashed).sink_positions["out"] > 0
        message = _refused(db, path / "settings.yaml", f"run {crashed} made durable")
        assert "its crash left" not in message


@pytest.mark.parametrize("alive_then", [True, False], ids=["alive when asked", "gone when asked"])
def test_a_run_that_ends_while_it_is_asked_about_is_not_called_crashed(
    alive_then: bool, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The positions are read, then whether their writer is alive: a run that completed about
    then (seen alive or not) holds no position any more, and the new run appends after its rows.
    (Within one store, the file's lock the new run holds now refuses such a resume; the resume
    here goes on without it, as one that took the lock first and ended just then.)"""
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:5")
        alive = PostgresRecorder.writer_alive
        ended: list[str] = []

        def ends_meanwhile(self: PostgresRecorder, run_id: str) -> bool:
            if run_id == crashed and not ended:
                ended.append(run_id)  # (once: the resume asks too)
                with monkeypatch.context() as m:
                    m.setattr(orchestrator.Execution, "_hold_sink_files", lambda *a, **k: None)
                    assert resume_run(db, crashed, load).status == "completed"
                return alive_then  # what it said as it was asked: alive, or not yet seen to end
            return alive(self, run_id)

        monkeypatch.setattr(PostgresRecorder, "writer_alive", ends_meanwhile)
        assert start_run(db, load(path / "settings.yaml")).status == "completed"
        assert ended == [crashed]
        assert _ids(path / "out" / "log.csv") == [str(i) for i in range(1, ROWS + 1)] * 2


def test_a_failed_run_holding_rows_in_the_file_refuses_a_new_run_too(db: Database) -> None:
    """A failed run can be resumed (there is no ending it for good): the same as a crashed one.
    The message says how to go on without it."""
    with _workdir() as path:
        _write_input(path, ROWS, bad_at=5)  # row 5 goes to a full device: the run fails
        runs = set(PostgresRecorder(db).run_ids())
        with pytest.raises(orchestrator.RunFailedError):
            start_run(db, load(path / "settings.yaml"), commit_every=1)
        (failed,) = set(PostgresRecorder(db).run_ids()) - runs
        assert fold_run(db, failed).status == "failed" and _ids(path / "out" / "log.csv") == ["1", "2", "3", "4"]
        message = _refused(db, path / "settings.yaml", f"run {failed} made durable")
        assert (
            "that run failed" in message
            and f"if it is not to go on, end it (`elspeth abandon {failed} --reason TEXT`)" in message
        )


def test_a_file_moved_aside_or_replaced_lets_a_new_run_start(db: Database) -> None:
    """The crashed run's rows are no longer in the file at that path (the check is by the bytes
    its log recorded, not by the name): a new run starts. Even when the new file is longer than
    the crashed run's position."""
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:5")
        log = path / "out" / "log.csv"
        os.replace(log, path / "out" / "crashed.csv")
        log.write_text("id,v\n" + "".join(f"{i},{i}\n" for i in range(100, 200)))
        assert log.stat().st_size > fold_run(db, crashed).sink_positions["out"]
        assert start_run(db, load(path / "settings.yaml")).status == "completed"
        assert _ids(log) == [str(i) for i in range(100, 200)] + [str(i) for i in range(1, ROWS + 1)]


def test_a_run_another_run_appended_after_already_does_not_stop_the_next(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written by a version without this check: run B appended after crashed run A. A can
    never be resumed on that file (its resume refuses to cut B's rows), so a third run appending
    changes nothing for it, and is not refused (the resume's refusal suggests a new run)."""
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:5")
        with monkeypatch.context() as m:  # as an earlier version did
            m.setattr(orchestrator.Execution, "_refuse_to_strand_open_runs", lambda self, only=None: None)
            assert start_run(db, load(path / "settings.yaml")).status == "completed"
        with pytest.raises(ResumeRefused, match="wrote since"):
            resume_run(db, crashed, load)
        assert start_run(db, load(path / "settings.yaml")).status == "completed"


def test_a_run_still_writing_the_file_is_named_as_such(db: Database) -> None:
    """Its writer's lock is held (by this test, as a live process would): wait, not resume."""
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:5")
        writer = PostgresRecorder(db).open_writer(crashed)
        try:
            message = _refused(db, path / "settings.yaml", f"being written by run {crashed}, which is still running")
        finally:
            writer.close()
        assert "Wait for it to end" in message and "elspeth resume" not in message


def test_a_sink_that_replaces_its_file_is_refused_too(db: Database) -> None:
    """Mode `write` starts the file anew, which would destroy the crashed run's durable rows (it
    was let through once: the new run's trail was exact, the crashed run's rows gone)."""
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:5")
        b = path / "b.yaml"
        b.write_text(SETTINGS.replace("path: out/log.csv, mode: append", "path: out/log.csv"))
        before = (path / "out" / "log.csv").read_bytes()
        _refused(db, b, f"run {crashed} made durable .*replacing the file \\(mode write\\)")
        assert (path / "out" / "log.csv").read_bytes() == before
        assert resume_run(db, crashed, load).status == "completed"


def test_a_fifo_where_the_crashed_run_had_its_file_is_no_file_to_strand(db: Database) -> None:
    """A FIFO keeps no rows, and a resume never cuts it: a run appending to it is not refused."""
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "committed:1")  # the start: position 0, no file yet
        assert fold_run(db, crashed).sink_positions["out"] == 0
        os.mkfifo(path / "out" / "log.csv")
        _write_input(path, 0)  # no rows: the sink never opens the FIFO
        assert start_run(db, load(path / "settings.yaml")).status == "completed"


@pytest.mark.parametrize("longer", [True, False], ids=["as long", "shorter"])
def test_a_position_recorded_without_a_digest_is_taken_by_the_file_being_that_long(db: Database, longer: bool) -> None:
    """Flushes recorded before the log held a digest (migration 0008; here the projection made to
    look so): a file at least as long as the position may hold the run's bytes, and is taken to;
    a shorter one cannot."""
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:5")
        with db.connect() as conn:
            conn.execute("UPDATE artifacts SET sha256 = NULL WHERE run_id = %s", (crashed,))
        log = path / "out" / "log.csv"
        if longer:
            log.write_bytes(b"x" * (log.stat().st_size - 1) + b"\n")
            _refused(db, path / "settings.yaml", f"run {crashed} made durable")
        else:
            log.write_text("id,v\n")
            assert start_run(db, load(path / "settings.yaml")).status == "completed"


def test_the_command_line_says_it_in_one_line_and_records_no_run(db: Database, tmp_path: Path) -> None:
    _write_input(tmp_path, ROWS)
    (tmp_path / "out").mkdir()
    (tmp_path / "settings.yaml").write_text(SETTINGS + "checkpoint: {frequency: 1}\n")
    crash = elspeth("run", "-s", "settings.yaml", cwd=tmp_path, db=db, env={"ELSPETH_FAULT": "sink_flush:5"})
    assert crash.returncode != 0
    runs = PostgresRecorder(db).run_ids()
    before = (tmp_path / "out" / "log.csv").read_bytes()
    err = one_line_error(elspeth("run", "-s", "settings.yaml", cwd=tmp_path, db=db), 1)
    assert len(err.strip().splitlines()) == 1 and "elspeth: error: sink 'out': " in err and "elspeth resume run-" in err
    assert PostgresRecorder(db).run_ids() == runs
    assert (tmp_path / "out" / "log.csv").read_bytes() == before


@contextmanager
def _moved_and_back(path: Path) -> Iterator[Path]:
    """The folder renamed (the process in it goes with it), then renamed back."""
    moved = path.with_name(path.name + "-moved")
    os.rename(path, moved)
    try:
        yield moved
    finally:
        os.rename(moved, path)
        os.chdir(path)


def test_a_run_that_moved_is_guarded_in_every_folder_it_ran_in(db: Database) -> None:
    """Resumed in another folder (its own gone), crashed again there, and its folder renamed back:
    its file is where it first ran again. The guard looked only in the folder it ran in last."""
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:5")
        with _moved_and_back(path) as moved:
            crashed_resume(db, crashed, "committed:2", settings_path=moved / "settings.yaml", commit_every=1)
            assert fold_run(db, crashed).working_dir == os.path.realpath(moved)
        _refused(db, path / "settings.yaml", f"run {crashed} made durable")


def test_rows_a_run_wrote_before_it_moved_are_not_cut_by_another_runs_resume(db: Database) -> None:
    """Run b (mode write) made its first rows durable here, moved, completed elsewhere, and the
    folder came back: those rows are still b's, later than the crashed run's, and its resume must
    not cut them. The check looked for b's rows only in the folder b ran in last."""
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:5")
        log = path / "out" / "log.csv"
        b = path / "b.yaml"
        b.write_text(SETTINGS.replace("path: out/log.csv, mode: append", "path: out/log.csv"))
        log.unlink()  # (else b refuses to replace the crashed run's rows)
        other = crashed_run(db, b, "committed:6", name="other", sending="inline")
        with _moved_and_back(path) as moved:
            assert resume_run(db, other, load, settings_path=moved / "b.yaml").status == "completed"
        after = (path / "out" / "log.csv").read_bytes()
        with pytest.raises(ResumeRefused, match=f"that run {other} wrote since"):
            resume_run(db, crashed, load)
        assert (path / "out" / "log.csv").read_bytes() == after


WRITE = SETTINGS.replace("path: out/log.csv, mode: append", "path: out/log.csv, mode: write")


def test_a_new_run_in_mode_write_refuses_to_replace_what_a_crashed_run_made_durable(db: Database) -> None:
    """`run` where `resume` was meant: mode write would destroy the rows the crashed run made
    durable, and strand it. Refused the same way, naming the ways on; once the run is abandoned
    (or its file moved aside) the new run replaces the file."""
    with _workdir(WRITE) as path:
        log = path / "out" / "log.csv"
        crashed = _crashed(db, path / "settings.yaml", "committed:6")
        before = log.read_bytes()
        message = _refused(db, path / "settings.yaml", f"run {crashed} made durable")
        assert "replacing the file (mode write) would destroy those rows" in message
        assert f"`elspeth resume {crashed}`" in message and f"`elspeth abandon {crashed} --reason TEXT`" in message
        assert log.read_bytes() == before
        abandon_run(db, crashed, "run again from the start", home=None)
        assert start_run(db, load(path / "settings.yaml")).status == "completed"
        assert _ids(log) == [str(i) for i in range(1, ROWS + 1)]


def test_a_crashed_run_whose_file_another_run_replaced_is_told_so_on_resume(db: Database) -> None:
    """Its file moved aside, a new run in mode write made a new one there: the crashed run's
    resume does not speak of rows after its position (the file is not its own at all)."""
    with _workdir(WRITE) as path:
        log = path / "out" / "log.csv"
        crashed = _crashed(db, path / "settings.yaml", "committed:6")
        os.replace(log, path / "out" / "aside.csv")
        (path / "in2.csv").write_text("id,v\n" + "".join(f"{i},{i}\n" for i in range(100, 120)))
        (path / "b.yaml").write_text(WRITE.replace("path: in.csv", "path: in2.csv"))
        other = start_run(db, load(path / "b.yaml"))
        assert other.status == "completed"
        with pytest.raises(ResumeRefused, match="no longer holds this run's output") as refused:
            resume_run(db, crashed, load)
        assert f"run {other.run_id} has written the file since" in str(refused.value)
        assert f"`elspeth abandon {crashed} --reason TEXT`" in str(refused.value)
        os.replace(path / "out" / "aside.csv", log)  # its file put back: it goes on
        assert resume_run(db, crashed, load).status == "completed"
        assert _ids(log) == [str(i) for i in range(1, ROWS + 1)]


def test_a_new_run_refuses_to_append_after_what_an_abandoned_runs_crash_left(db: Database) -> None:
    """Abandoning leaves the bytes the crash wrote after the last durable position (and says
    so); a new run appending after them made them look audited, its digest covering them, and a
    rerun of the input duplicated them (a review). Refused, naming the cut; once cut, it appends."""
    with _workdir() as path:
        log, crashed, durable, before = _crashed_with_a_tail(db, path)
        abandon_run(db, crashed, "input withdrawn", home=None)
        message = _refused(db, path / "settings.yaml", f"run {crashed} \\(abandoned\\) made durable")
        assert f"holds {len(before) - durable} bytes after" in message and f"truncate -s {durable} " in message
        assert log.read_bytes() == before
        os.truncate(log, durable)  # as it says
        assert start_run(db, load(path / "settings.yaml")).status == "completed"
        assert _ids(log)[: len(_ids(log)) - ROWS] == [
            line.split(",")[0] for line in before[:durable].decode().splitlines()[1:]
        ]


def test_an_abandoned_run_whose_file_ends_at_its_position_is_appended_after(db: Database) -> None:
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "committed:6")
        abandon_run(db, crashed, "input withdrawn", home=None)
        assert start_run(db, load(path / "settings.yaml")).status == "completed"


DB = SETTINGS.replace("out: {plugin: csv, options: {path: out/log.csv, mode: append}}",
                      "out: {plugin: database, options: {url: 'sqlite:///out/o.db', table: t}}")  # fmt: skip


def test_a_new_run_does_not_drop_a_table_an_unfinished_run_made_rows_durable_in(db: Database) -> None:
    """if_exists: replace with replace_rows_of_other_runs dropped the table under a run still
    writing it, which went on into the new table and completed saying its rows were all there;
    or under a crashed run, whose resume then found none (a review). Refused, as for a file; once
    that run has ended, the table is replaced."""
    import sqlite3

    with _workdir(DB) as path:
        crashed = _crashed(db, path / "settings.yaml", "committed:6")
        before = sqlite3.connect(path / "out" / "o.db").execute("SELECT count(*) FROM t").fetchone()[0]
        assert before > 0
        b = path / "b.yaml"
        b.write_text(DB.replace("table: t}", "table: t, if_exists: replace, replace_rows_of_other_runs: true}"))
        message = _refused(db, b, f"table sqlite:///out/o.db#t holds {before} rows run {crashed} made durable")
        assert "if_exists: replace would drop them" in message and f"`elspeth resume {crashed}`" in message
        assert sqlite3.connect(path / "out" / "o.db").execute("SELECT count(*) FROM t").fetchone()[0] == before
        abandon_run(db, crashed, "superseded", home=None)
        assert start_run(db, load(b)).status == "completed"
        assert sqlite3.connect(path / "out" / "o.db").execute("SELECT count(*) FROM t").fetchone()[0] == ROWS


def test_a_pipeline_reading_a_crashed_runs_output_is_refused_while_it_holds_the_crash_tail(db: Database) -> None:
    """B reads what A wrote: with A crashed, B read the rows A's crash left after its durable
    position too, which A's log says were never written, and B's trail vouched for them (a
    review). Refused, naming A; once A is resumed, B reads its whole output."""
    with _workdir() as path:
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:5")
        log = path / "out" / "log.csv"
        durable = fold_run(db, crashed).sink_positions["out"]
        assert log.stat().st_size > durable
        b = path / "b.yaml"
        b.write_text(
            "source: {plugin: csv, on_success: o, options: {path: out/log.csv, schema: {mode: observed}}}\n"
            "sinks:\n  o: {plugin: csv, options: {path: out/b.csv}}\n"
        )
        message = _refused(
            db, b, f"source: the input .*log.csv is a sink's output which holds {log.stat().st_size - durable}"
        )
        assert f"run {crashed} (crashed) made durable" in message and f"`elspeth resume {crashed}`" in message
        assert resume_run(db, crashed, load).status == "completed"
        assert start_run(db, load(b)).status == "completed"
        assert (path / "out" / "b.csv").read_text().splitlines()[1:] == log.read_text().splitlines()[1:]


def test_a_run_abandoned_after_a_rerun_replaced_its_file_strands_nothing(db: Database) -> None:
    """The crashed run's file moved aside, the pipeline rerun (its first bytes the same: same
    input), then the crashed run abandoned: readers and appenders were refused, told to truncate
    the completed rerun's output, because 'since' was measured from the abandoning, not from the
    crashed run's last flush (a review)."""
    with _workdir(WRITE) as path:
        log = path / "out" / "log.csv"
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:5")
        os.replace(log, path / "out" / "aside.csv")
        assert start_run(db, load(path / "settings.yaml")).status == "completed"
        done = abandon_run(db, crashed, "superseded by the rerun", home=None)
        assert not any("truncate" in n for n in done.notes) and any("was written by run" in n for n in done.notes)
        b = path / "b.yaml"
        b.write_text(
            "source: {plugin: csv, on_success: o, options: {path: out/log.csv, schema: {mode: observed}}}\n"
            "sinks:\n  o: {plugin: csv, options: {path: out/b.csv}}\n"
        )
        assert start_run(db, load(b)).status == "completed"
        (path / "app.yaml").write_text(SETTINGS)  # the next run appending to the rerun's file
        assert start_run(db, load(path / "app.yaml")).status == "completed"


def test_one_table_by_another_spelling_of_its_server_is_the_same_table(tmp_path: Path) -> None:
    """The replace guard compared PostgreSQL URLs as text: 127.0.0.1 where the run wrote
    localhost dropped its rows (a review)."""
    from engine.orchestrator import _same_table
    from engine.plugins.registry import build_plugin
    from landscape.postgres import OpenPosition

    def held(location: str) -> OpenPosition:
        return OpenPosition("run-a", "running", location, str(tmp_path), 5, None)

    sink = build_plugin("sink", "database", {"url": "postgresql+psycopg://x:pw@127.0.0.1:5999/audit", "table": "t"})
    assert _same_table(held("postgresql://app@localhost:5999/audit#t"), sink)
    assert not _same_table(held("postgresql://app@localhost:5999/other#t"), sink)
    assert not _same_table(held("postgresql://app@localhost:5998/audit#t"), sink)
    assert not _same_table(held("postgresql://app@localhost:5999/audit#u"), sink)
    (tmp_path / "o.db").write_bytes(b"")
    lite = build_plugin("sink", "database", {"url": f"sqlite:///{tmp_path}/o.db", "table": "T"})
    assert _same_table(held("sqlite:///o.db#t"), lite)  # (resolved in the run's folder; names ignore case)
    assert not _same_table(held("sqlite:///p.db#t"), lite)


def test_a_run_that_made_nothing_durable_in_a_file_ties_no_file_to_it(db: Database) -> None:
    """At position 0 the digest of the run's bytes is of none, every file's: a file restored or
    made anew at an abandoned run's path was refused to readers and appenders as that run's crash
    tail, and the refusal prescribed `truncate -s 0`, wiping it (a review). Nothing ties it."""
    with _workdir() as path:
        log = path / "out" / "log.csv"
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:1")
        assert fold_run(db, crashed).sink_positions["out"] == 0 and log.stat().st_size > 0
        done = abandon_run(db, crashed, "superseded", home=None)
        assert not any("truncate" in n for n in done.notes) and any("made none durable" in n for n in done.notes)
        log.write_text("id,v\n100,100\n")  # another file put there since (restored from a backup)
        b = path / "b.yaml"
        b.write_text(
            "source: {plugin: csv, on_success: o, options: {path: out/log.csv, schema: {mode: observed}}}\n"
            "sinks:\n  o: {plugin: csv, options: {path: out/b.csv}}\n"
        )
        assert start_run(db, load(b)).status == "completed"
        assert start_run(db, load(path / "settings.yaml")).status == "completed"  # appends after it
        assert _ids(log) == ["100", *(str(i) for i in range(1, ROWS + 1))]


def test_a_crashed_run_that_made_nothing_durable_still_keeps_readers_from_its_crash_tail(db: Database) -> None:
    """Position 0 unties an abandoned run's file only (its cut was prescribed): a crashed run,
    which a resume decides about, still keeps a reader from the bytes its crash may have left."""
    with _workdir() as path:
        log = path / "out" / "log.csv"
        crashed = _crashed(db, path / "settings.yaml", "sink_flush:1")
        assert fold_run(db, crashed).sink_positions["out"] == 0 and log.stat().st_size > 0
        b = path / "b.yaml"
        b.write_text(
            "source: {plugin: csv, on_success: o, options: {path: out/log.csv, schema: {mode: observed}}}\n"
            "sinks:\n  o: {plugin: csv, options: {path: out/b.csv}}\n"
        )
        _refused(db, b, f"run {crashed} \\(crashed\\) made durable there \\(0 bytes\\)")


def test_a_resume_says_so_when_it_cut_bytes_it_did_not_write_again(db: Database) -> None:
    """A resume cuts a file sink back to the run's durable position. What a crash left there is
    the start of what the resume writes again, and goes unsaid; a line someone appended after the
    crash is cut too, and is not written again: the resume says so (a review: it went unsaid)."""
    with _workdir() as path:
        log, crashed, durable, before = _crashed_with_a_tail(db, path)
        outcome = resume_run(db, crashed, load)
        assert outcome.status == "completed" and outcome.notes == ()
        assert log.read_bytes()[: len(before)] == before  # (the crash's tail, written again)
    with _workdir() as path:
        log, crashed, durable, before = _crashed_with_a_tail(db, path)
        with log.open("ab") as f:
            f.write(b"a line the operator added\n")
        outcome = resume_run(db, crashed, load)
        assert outcome.status == "completed"
        (note,) = outcome.notes
        cut = len(before) - durable + len(b"a line the operator added\n")
        assert (
            f"sink 'out': the resume cut {cut} bytes that out/log.csv held after the run's last durable position"
            in note
        )
        assert b"operator" not in log.read_bytes()


def test_a_resume_that_replaces_an_older_file_says_nothing_was_cut(db: Database) -> None:
    """A sink writing its file anew leaves an older file as it is until its first rows (position
    0): a resume that then replaces it cut nothing of the run's, and says nothing."""
    settings = SETTINGS.replace("out/log.csv, mode: append", "out/log.csv")
    with _workdir(settings) as path:
        log = path / "out" / "log.csv"
        log.write_bytes(b"an older run's output\n")
        crashed = crashed_run(db, path / "settings.yaml", "committed:1", name="anew", sending="inline")
        assert fold_run(db, crashed).sink_positions["out"] == 0 and log.read_bytes() == b"an older run's output\n"
        outcome = resume_run(db, crashed, load)
        assert outcome.status == "completed" and outcome.notes == ()
        assert _ids(log) == [str(i) for i in range(1, ROWS + 1)]


def test_a_resume_appending_to_a_json_array_says_nothing_of_the_bracket_it_replaces(db: Database) -> None:
    """A run appending to a JSON array starts where its closing ']' was: the bracket after that
    position is the file's, which the run's first rows replace, uninterrupted or resumed. A crash
    before its first flush leaves it there; the resume that replaces it cut nothing of anyone's."""
    settings = SETTINGS.replace("out: {plugin: csv, options: {path: out/log.csv, mode: append}}",
                                "out: {plugin: json, options: {path: out/a.json, mode: append}}")  # fmt: skip
    with _workdir(settings) as path:
        array = path / "out" / "a.json"
        array.write_bytes(b'[\n{"id": 0, "v": 0}\n]\n')
        crashed = crashed_run(db, path / "settings.yaml", "committed:1", name="array", sending="inline")
        durable = fold_run(db, crashed).sink_positions["out"]
        assert 0 < durable < array.stat().st_size, "the crash left no bracket after the durable position"
        outcome = resume_run(db, crashed, load)
        assert outcome.status == "completed"
        assert outcome.notes == ()
        assert [r["id"] for r in __import__("json").loads(array.read_text())] == list(range(ROWS + 1))


def test_a_resume_that_fails_after_writing_over_a_line_someone_added_says_so(db: Database) -> None:
    """A resume that cuts a line appended after the crash, writes other rows there, then fails:
    the line is gone for good (the next resume starts after those rows), so the failure says so
    as a completed resume would, not only the failure."""
    with _workdir() as path:
        _write_input(path, ROWS, bad_at=10)  # row 10 goes to a full device: the resume fails there
        log, crashed, _, _ = _crashed_with_a_tail(db, path)
        with log.open("ab") as f:
            f.write(b"a line the operator added\n")
        with pytest.raises(orchestrator.RunFailedError) as failed:
            resume_run(db, crashed, load)
        assert b"operator" not in log.read_bytes()
        (note,) = getattr(failed.value, "notes", ())
        assert "sink 'out': the resume cut " in note
