"""What a resume of a SQLite table counts as the run's durable rows (`DatabaseSink._rows_as_written`).

A rowid says where a row is, not which: VACUUM renumbers a table without an INTEGER PRIMARY KEY
(keeping the rows' order), so the rows are counted by what they hold, as each flush read them back.
Each case is one a review found: a resume going on over a deleted row, or refused with every row
there.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine.plugins.protocol import PluginError
from engine.plugins.registry import build_plugin
from tests.test_plugins_sinks import _SCHEMA, _execute, _flushes, _select


@pytest.fixture
def out(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    url = f"sqlite:///{tmp_path / 'out.db'}"
    return url, {"url": url, "table": "t", "schema": _SCHEMA}


def _crashed(options: dict[str, Any], run_id: str, *batches: list[tuple[str, int]]) -> None:
    """A run that made these batches durable, then died (its sink not closed)."""
    s = build_plugin("sink", "database", options)
    _flushes(s, run_id, None, *batches)
    s.release()


def _written(options: dict[str, Any], run_id: str, *batches: list[tuple[str, int]]) -> None:
    s = build_plugin("sink", "database", options)
    _flushes(s, run_id, None, *batches)
    s.close()


def _resumed(options: dict[str, Any], run_id: str, position: int) -> None:
    s = build_plugin("sink", "database", options)
    s.open(run_id, position)
    s.release()


def _refused(options: dict[str, Any], run_id: str, position: int, held: int) -> None:
    with pytest.raises(PluginError, match=f"holds {held} of the {position} rows the run had made durable"):
        _resumed(options, run_id, position)


def test_a_deleted_row_whose_rowid_vacuum_gave_another_runs_row_is_missed(out: tuple[str, dict[str, Any]]) -> None:
    url, options = out
    _crashed(options, "run-1", [("t1", 1), ("t2", 2)])
    _written(options, "run-0", [("u1", 101), ("u2", 102)])
    _execute(url, "DELETE FROM t WHERE id = 1")
    _execute(url, "VACUUM")
    assert _select(url, "SELECT rowid, id FROM t ORDER BY rowid") == [(1, 2), (2, 101), (3, 102)]
    _refused(options, "run-1", 2, held=1)
    assert _select(url, "SELECT id FROM t ORDER BY id") == [(2,), (101,), (102,)]


def test_the_runs_rows_moved_to_rowids_another_run_recorded_are_there(out: tuple[str, dict[str, Any]]) -> None:
    url, options = out
    _written(options, "run-0", [("u1", 101)])
    _crashed(options, "run-1", [("t1", 1), ("t2", 2)])
    _execute(url, "DELETE FROM t WHERE id = 101")  # run-0's consumer cleaned up
    _execute(url, "VACUUM")
    assert _select(url, "SELECT rowid, id FROM t ORDER BY rowid") == [(1, 1), (2, 2)]
    resumed = build_plugin("sink", "database", options)
    assert _flushes(resumed, "run-1", 2, [("t3", 3)]) == [3]
    resumed.close()


@pytest.mark.parametrize("appended", [False, True])
def test_of_two_equal_rows_one_deleted_the_runs_is_taken_for_the_gone_one(
    out: tuple[str, dict[str, Any]], appended: bool
) -> None:
    """Another run wrote a row equal to the run's after it; the run's was deleted, the table
    vacuumed (the other's moved to the run's rowid) and, in the second case, a row appended where
    the other's was (its entry is then no longer the last at its rowid)."""
    url, options = out
    _crashed(options, "run-1", [("t1", 1)])
    _written(options, "run-0", [("t1", 1)])  # (equal: the row is its token's name and id)
    _execute(url, "DELETE FROM t WHERE rowid = 1")
    _execute(url, "VACUUM")
    if appended:
        _written(options, "run-2", [("v1", 7)])
    _refused(options, "run-1", 1, held=0)


def test_an_equal_row_moved_below_an_appended_one_is_still_the_other_runs(out: tuple[str, dict[str, Any]]) -> None:
    """The same through the whole table's count (the run's rowid holds another row now)."""
    url, options = out
    _written(options, "run-0", [("x", 100)])
    _crashed(options, "run-1", [("t1", 1)])
    _written(options, "run-3", [("t1", 1)])
    _execute(url, "DELETE FROM t WHERE rowid IN (1, 2)")
    _execute(url, "VACUUM")
    _written(options, "run-2", [("v1", 7), ("v2", 8), ("v3", 9)])
    _refused(options, "run-1", 1, held=0)


def test_another_runs_equal_row_deleted_leaves_the_runs_own(out: tuple[str, dict[str, Any]]) -> None:
    """Runs writing equal rows are common; another run's copy deleted (by a consumer) is no reason
    to refuse a resume whose row is where it was written: the other's row could only be below it."""
    url, options = out
    _written(options, "run-0", [("t1", 1), ("u2", 2)])
    _execute(url, "DELETE FROM t WHERE rowid = 1")
    _crashed(options, "run-1", [("t1", 1)])
    resumed = build_plugin("sink", "database", options)
    assert _flushes(resumed, "run-1", 1, [("t2", 5)]) == [2]
    resumed.close()


def test_an_earlier_equal_row_with_the_runs_deleted_and_vacuumed_is_not_the_runs(
    out: tuple[str, dict[str, Any]],
) -> None:
    url, options = out
    _written(options, "run-0", [("t1", 1)])
    _crashed(options, "run-1", [("t1", 1)])
    _execute(url, "DELETE FROM t WHERE rowid = 2")
    _execute(url, "VACUUM")
    _refused(options, "run-1", 1, held=0)


def test_another_runs_entries_of_an_older_elspeth_make_the_count_by_rowid(out: tuple[str, dict[str, Any]]) -> None:
    """Entries with a rowid and no digest (an older ELSPETH's): their rows cannot be told by what
    they hold, and counted as rows no run wrote, they stood in for the run's deleted one."""
    url, options = out
    _written(options, "run-0", [("x", 100)])
    _execute(url, "UPDATE elspeth_sink_tokens SET row_digest = NULL WHERE run_id = 'run-0'")
    _crashed(options, "run-1", [("t1", 1)])
    _execute(url, "DELETE FROM t WHERE id = 1")
    _refused(options, "run-1", 1, held=0)


def test_the_runs_own_entries_of_an_older_elspeth_are_counted_by_rowid(out: tuple[str, dict[str, Any]]) -> None:
    url, options = out
    _written(options, "run-0", [("t1", 1)])
    _crashed(options, "run-1", [("t1", 1), ("t2", 2)])
    _execute(url, "UPDATE elspeth_sink_tokens SET row_digest = NULL WHERE run_id = 'run-1' AND token_id = 't1'")
    _resumed(options, "run-1", 2)
    _execute(url, "DELETE FROM t WHERE rowid = 2")  # (by rowid: the run's row at its rowid is gone)
    _refused(options, "run-1", 2, held=1)


@pytest.mark.parametrize("vacuumed", [False, True])
def test_a_column_added_since_makes_no_other_runs_row_the_runs(out: tuple[str, dict[str, Any]], vacuumed: bool) -> None:
    """A column added changes every row's digest: a row no run wrote as it is now counts only
    where the run's rows were written last or no entry says (not every row of the table). With
    the run's rows there, it is resumed; without them, refused (but for a VACUUM that moved other
    rows, as changed, to the run's rowids: those may be the run's)."""
    url, options = out
    _crashed(options, "run-1", [("t1", 1), ("t2", 2)])
    _written(options, "run-0", [("u1", 101), ("u2", 102)])
    _execute(url, "ALTER TABLE t ADD COLUMN note TEXT")
    _resumed(options, "run-1", 2)
    _execute(url, "DELETE FROM t WHERE id IN (1, 2)")
    if vacuumed:
        _execute(url, "VACUUM")
        _resumed(options, "run-1", 2)
    else:
        _refused(options, "run-1", 2, held=0)


def test_a_retried_open_checks_again(out: tuple[str, dict[str, Any]]) -> None:
    """Opened again for the same run after an open that failed its checks, a sink took itself for
    the process that wrote the rows, and counted by rowid."""
    url, options = out
    _crashed(options, "run-1", [("t1", 1), ("t2", 2)])
    _written(options, "run-0", [("u1", 101), ("u2", 102)])
    _execute(url, "DELETE FROM t WHERE id = 1")
    _execute(url, "VACUUM")
    s = build_plugin("sink", "database", options)
    for _ in range(2):
        with pytest.raises(PluginError, match="holds 1 of the 2"):
            s.open("run-1", 2)


def test_a_reopen_after_a_vacuum_during_the_run_counts_the_moved_rows(out: tuple[str, dict[str, Any]]) -> None:
    """The sink writer's reopen (after a refused row) counts by rowid; found short so, by digest."""
    url, options = out
    _written(options, "run-0", [("u1", 101)])
    s = build_plugin("sink", "database", options)
    assert _flushes(s, "run-1", None, [("t1", 1), ("t2", 2)]) == [2]
    _execute(url, "DELETE FROM t WHERE id = 101")
    _execute(url, "VACUUM")
    s.open("run-1", 2)
    s.close()


def test_only_a_resume_reads_all_the_runs_rows_back(
    out: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reopen by the process whose flushes read each row back counts by rowid: reading every
    row of the run again at each would make a run with many refused rows quadratic."""
    from engine.plugins.database_sink import DatabaseSink

    read = DatabaseSink._rows_as_written
    calls: list[str] = []

    def counted(self: Any, conn: Any, position: int) -> int | None:
        calls.append(self.run_id)
        return read(self, conn, position)

    monkeypatch.setattr(DatabaseSink, "_rows_as_written", counted)
    _, options = out
    s = build_plugin("sink", "database", options)
    assert _flushes(s, "run-1", None, [("t1", 1), ("t2", 2)]) == [2]
    s.open("run-1", 2)  # (the sink writer's reopen)
    assert calls == []
    s.release()
    _resumed(options, "run-1", 2)
    assert calls == ["run-1"]


@pytest.mark.parametrize("whole_table", [False, True])
def test_a_row_of_text_that_is_not_utf8_does_not_fail_the_count(
    out: tuple[str, dict[str, Any]], tmp_path: Path, whole_table: bool
) -> None:
    """Another tool's row of bytes that are not UTF-8 failed the read of the table, and the error
    showed its text."""
    _, options = out
    if whole_table:  # (an equal row written after the run's: the whole table is read)
        _crashed(options, "run-1", [("t1", 1)])
        _written(options, "run-0", [("t1", 1)])
    else:
        _written(options, "run-0", [("t1", 1)])
        _crashed(options, "run-1", [("t1", 1)])
    with sqlite3.connect(tmp_path / "out.db") as conn:
        conn.execute("INSERT INTO t (id, name) VALUES (9, CAST(x'ff41' AS TEXT))")
    _resumed(options, "run-1", 1)


def _rows(options: dict[str, Any], run_id: str, *flushes: list[tuple[str, dict[str, Any]]]) -> Any:
    s = build_plugin("sink", "database", options)
    s.open(run_id, None)
    for rows in flushes:
        for token, row in rows:
            s.write(token, row)
        s.flush()
    return s


def test_copies_of_one_of_the_runs_rows_do_not_stand_in_for_another(out: tuple[str, dict[str, Any]]) -> None:
    url, options = out
    _crashed(options, "run-1", [("t1", 1), ("t2", 2)])
    _execute(url, "DELETE FROM t WHERE id = 2")
    _execute(url, "INSERT INTO t SELECT * FROM t WHERE id = 1")  # (two copies of the run's first row)
    _execute(url, "INSERT INTO t SELECT * FROM t WHERE id = 1 LIMIT 1")
    _refused(options, "run-1", 2, held=1)


def test_two_equal_rows_of_the_run_at_one_rowid_are_one_row(out: tuple[str, dict[str, Any]]) -> None:
    """The table emptied during the run, whose next flush wrote a row equal to its first at the
    same rowid: the rowid's first entry is no longer the last there, and its row is gone."""
    url, options = out
    row = {"id": 1, "name": "same", "score": 1.0, "ok": True}
    s = _rows(options, "run-1", [("t1", row)])
    _execute(url, "DELETE FROM t")
    s.write("t2", row)
    assert s.flush() == 2
    s.release()
    assert _select(url, "SELECT rowid FROM t") == [(1,)]
    _refused(options, "run-1", 2, held=1)


def test_a_table_named_with_quotes_braces_and_spaces_is_counted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'out.db'}"
    options = {"url": url, "table": "my \"t{0}\" 'x'", "schema": _SCHEMA}
    _crashed(options, "run-1", [("t1", 1)])
    _written(options, "run-0", [("t1", 1)])  # (an equal row after the run's: the whole table is read)
    _resumed(options, "run-1", 1)


@pytest.mark.parametrize("first", [False, True])
def test_another_runs_rows_recorded_without_rowids_do_not_stand_in(
    out: tuple[str, dict[str, Any]], first: bool
) -> None:
    """Entries of an ELSPETH from before rowids were recorded: their rows, as written, counted as
    rows no run wrote, in place of the run's deleted one. As many rows as such entries are taken
    for theirs."""
    url, options = out
    if first:
        _written(options, "run-0", [("u1", 101)])
    _crashed(options, "run-1", [("t1", 1), ("t2", 2)])
    if not first:
        _written(options, "run-0", [("u1", 101)])
    _execute(url, "UPDATE elspeth_sink_tokens SET row_locator = NULL, row_digest = NULL, sink_position = NULL "
                  "WHERE run_id = 'run-0'")  # fmt: skip
    _execute(url, "DELETE FROM t WHERE id = 1")
    _refused(options, "run-1", 2, held=1)


def test_a_row_of_another_tool_above_the_runs_rows_does_not_stand_in(out: tuple[str, dict[str, Any]]) -> None:
    """A row no run wrote may be the run's, changed, only where a row of the run can be: no row
    moves to a higher rowid, so not above the run's highest (another application appending to
    the table hid the deletion of the run's rows)."""
    url, options = out
    _crashed(options, "run-1", [("t1", 1), ("t2", 2)])
    _execute(url, "INSERT INTO t (id, name) VALUES (500, 'another tool')")
    _execute(url, "DELETE FROM t WHERE id = 1")
    _refused(options, "run-1", 2, held=1)
    _execute(url, "UPDATE elspeth_sink_tokens SET row_digest = NULL WHERE token_id = 't2'")  # (counted by rowid)
    _refused(options, "run-1", 2, held=1)


def test_a_row_of_the_run_changed_since_still_counts(out: tuple[str, dict[str, Any]]) -> None:
    """A consumer marking the run's rows read: each may be the run's, and counts, by digest and
    by rowid alike."""
    url, options = out
    _written(options, "run-0", [("u1", 101)])
    _crashed(options, "run-1", [("t1", 1), ("t2", 2)])
    _execute(url, "UPDATE t SET ok = 0")
    _resumed(options, "run-1", 2)
    _execute(url, "UPDATE elspeth_sink_tokens SET row_digest = NULL")
    _resumed(options, "run-1", 2)
