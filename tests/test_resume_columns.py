"""A CSV file without a header or a schema has the columns of the first row the run sent it; a
resume continues in those columns, whatever order the next row's fields come in.

A hostile review found the resume taking the columns from the first row it wrote itself: with
rows whose keys came in another order after the crash, half the file had its id and amount
columns swapped, while every check of the audit trail passed."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from engine.errors import ResumeRefused
from engine.orchestrator import fold_run, resume_run, start_run
from landscape.db import Database
from tests.engine_harness import crashed_run, load, workdir

SETTINGS = """
source: {plugin: json, on_success: out, options: {path: in.jsonl}}
sinks:
  out: {plugin: csv, options: {path: out.csv, headers: false}}
"""


def _rows(n: int, turn_at: int) -> list[dict[str, object]]:
    """Rows of the same three fields, in another order from row `turn_at` on."""
    rows: list[dict[str, object]] = []
    for i in range(1, n + 1):
        row = {"id": i, "name": f"n{i}", "amt": i * 10}
        rows.append(row if i < turn_at else {k: row[k] for k in ("amt", "name", "id")})
    return rows


def _workdir(rows: list[dict[str, object]]) -> AbstractContextManager[Path]:
    return workdir("columns", SETTINGS, lambda path: _write_jsonl(path / "in.jsonl", rows))


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _crashed(db: Database, path: Path, at: str) -> str:
    return crashed_run(db, path / "settings.yaml", at, name="columns", commit_every=10, sending="inline")


ROWS = _rows(60, turn_at=21)


def test_a_resume_continues_a_headerless_file_in_its_columns(db: Database) -> None:
    with _workdir(ROWS) as clean:
        assert start_run(db, load(clean / "settings.yaml"), commit_every=10).status == "completed"
        expected = (clean / "out.csv").read_bytes()
    assert expected.splitlines()[-1] == b"60,n60,600", "the columns are the first row's"
    with _workdir(ROWS) as path:
        run_id = _crashed(db, path, "sink_flush:3")
        assert fold_run(db, run_id).sink_positions["out"] > 0, "nothing durable yet: crash later"
        assert resume_run(db, run_id, load).status == "completed"
        assert (path / "out.csv").read_bytes() == expected


def test_a_resume_that_cannot_read_that_first_row_is_refused(db: Database) -> None:
    """Its data gone from the store (erased, or deleted by hand): the resume does not guess."""
    with _workdir(ROWS) as path:
        run_id = _crashed(db, path, "sink_flush:3")
        first = fold_run(db, run_id).sink_first_rows["out"]
        before = (path / "out.csv").read_bytes()
        with db.connect() as conn:  # as a superuser, past the store's triggers
            conn.execute("SET session_replication_role = replica")
            conn.execute("DELETE FROM payloads WHERE hash = %s", (bytes.fromhex(first),))
        with pytest.raises(ResumeRefused) as refused:
            resume_run(db, run_id, load)
        message = str(refused.value)
        assert (
            "sink 'out'" in message
            and "its columns are the fields of the first row the run made durable there" in message
        )
        assert (path / "out.csv").read_bytes() == before


def test_the_row_on_record_is_the_first_one_a_flush_made_durable_not_the_first_sent() -> None:
    """Row A is sent to sink out first, but out's flush fails and A is diverted to spill: the
    file is as it was, and row B, the first row out then makes durable, fixes its columns. The
    fold named A (a review): a resume would have continued the file in A's field order."""
    from landscape.fold import RunFold
    from statecharts import events as ev

    created = ev.RunCreated(settings_path="s.yaml", settings_hash="h", settings={}, source_fingerprint="f",
                            nodes=[], elspeth_version="0", working_dir="/")  # fmt: skip
    log = [
        ("run", created),
        ("run", ev.RunStarted()),
        ("a", ev.TokenCreated(row_index=0, data_hash="hash-a", at="in")),
        ("a", ev.SinkAssigned(sink="out", outcome="completed")),
        ("run", ev.SinkWriteFailed(sink="out", attempt=1, error="disk full", at=1.0, retry_at=None)),
        ("a", ev.SinkAssigned(sink="spill", outcome="diverted", node="out", reason="write failed")),
        ("b", ev.TokenCreated(row_index=1, data_hash="hash-b", at="in")),
        ("b", ev.SinkAssigned(sink="out", outcome="completed")),
        ("run", ev.SinkFlushed(sink="spill", position=10, rows=1, location="spill.csv", sha256=None)),
        ("a", ev.TokenDiverted(node="out", reason="write failed", sink="spill")),
        ("run", ev.SinkFlushed(sink="out", position=10, rows=1, location="out.csv", sha256=None)),
        ("b", ev.TokenCompleted(sink="out")),
    ]
    fold = RunFold("run")
    for seq, (entity, e) in enumerate(log):
        fold.apply(seq, entity, e)
    assert fold.sink_first_rows == {"spill": "hash-a", "out": "hash-b"}


def test_a_failed_first_flush_fixes_no_columns_in_an_appended_headerless_file(tmp_path: Path) -> None:
    """Appending, the sink reopened at its baseline (above 0) after a failed flush kept the
    columns of the rows that flush took (diverted since), while the log names the next row, the
    first made durable: a resume then wrote the rest in that row's order (a review). The columns
    are now fixed by the first row made durable, in the run and in its resume alike."""
    from engine.plugins.protocol import PluginError
    from engine.plugins.registry import build_plugin

    path = tmp_path / "out.csv"
    path.write_text("x,y\n")
    sink = build_plugin("sink", "csv", {"path": str(path), "headers": False, "mode": "append"})
    sink.open("run", None)
    sink.write("a", {"a": 1, "b": 2})
    durable = sink._durable

    def full(data: bytes) -> int:
        raise PluginError("sink", "no space left on device")

    sink._durable = full
    with pytest.raises(PluginError):
        sink.flush()
    sink._durable = durable
    sink.release()
    sink.open("run", 4)  # as the sink writer reopens it, at the run's durable position: the baseline
    sink.write("b", {"b": 20, "a": 10})
    sink.flush()
    sink.write("c", {"a": 100, "b": 200})
    sink.flush()
    sink.release()
    assert path.read_text().replace("\r\n", "\n") == "x,y\n20,10\n200,100\n"


BOM_NAMED = """
source: {plugin: json, on_success: out, options: {path: in.jsonl}}
sinks:
  out: {plugin: csv, options: {path: out.csv}, on_write_failure: discard}
"""


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
def test_a_first_field_named_with_a_byte_order_mark_is_read_back_as_that_name(db: Database, encoding: str) -> None:
    """JSON made from a CSV file with a byte-order mark often has it in its first key (`\\ufeffid`).
    Written as the header's first bytes, the name was read back on resume as a mark before `id`,
    and every later row was refused for a field outside the columns: the resumed file lacked rows
    an uninterrupted run wrote."""
    settings = BOM_NAMED.replace("out.csv}", f"out.csv, encoding: {encoding}}}")
    rows = [{"\ufeffid": i, "v": i} for i in range(6)]

    def inputs(path: Path) -> None:
        _write_jsonl(path / "in.jsonl", rows)

    with workdir("bom", settings, inputs) as clean:
        assert start_run(db, load(clean / "settings.yaml"), commit_every=2).status == "completed"
        expected = (clean / "out.csv").read_bytes()
    assert expected.count(b"\r\n") == 7, expected
    with workdir("bom", settings, inputs) as path:
        run_id = crashed_run(db, path / "settings.yaml", "committed:3", name="bom", commit_every=2, sending="inline")
        assert fold_run(db, run_id).sink_positions["out"] > 0, "nothing durable yet: crash later"
        assert resume_run(db, run_id, load, commit_every=2).status == "completed"
        assert (path / "out.csv").read_bytes() == expected
        assert fold_run(db, run_id).outcomes.get("diverted", 0) == 0


@pytest.mark.parametrize("headers", ["true", "false"])
def test_rows_of_no_field_are_refused_so_the_run_resumes_as_it_went_on(db: Database, headers: str) -> None:
    """A row with no field, where nothing fixed a CSV sink's columns, was written as a blank line
    (its header too): readers skip blank lines, so the file held no trace of rows the trail said
    were in it, and a crashed run could not be resumed at all (a blank first line names no
    column). Refused, as a database sink refuses such a row; the first row with fields fixes the
    columns, crash or not."""
    settings = "source: {plugin: json, on_success: out, options: {path: in.jsonl}}\nsinks:\n" + (
        f"  out: {{plugin: csv, options: {{path: out.csv, headers: {headers}}}, on_write_failure: discard}}\n"
    )
    rows: list[dict[str, object]] = [{}, {}, {"id": 1}, {}, {"id": 2}, {}]

    def inputs(path: Path) -> None:
        _write_jsonl(path / "in.jsonl", rows)

    with workdir("empty", settings, inputs) as clean:
        run_id = start_run(db, load(clean / "settings.yaml"), commit_every=2).run_id
        expected = (clean / "out.csv").read_bytes()
        outcomes = fold_run(db, run_id).outcomes
    assert b"\r\n\r\n" not in b"\r\n" + expected, expected
    assert {str(k): v for k, v in outcomes.items()} == {"completed": 4, "failed": 2}  # (discarded: failed)
    with workdir("empty", settings, inputs) as path:
        run_id = crashed_run(db, path / "settings.yaml", "committed:3", name="empty", commit_every=2, sending="inline")
        assert resume_run(db, run_id, load, commit_every=2).status == "completed"
        assert (path / "out.csv").read_bytes() == expected
        assert fold_run(db, run_id).outcomes == outcomes


# Past the first MiB: a header that long (very many columns, or long names) was read back cut
# short where a resume or an append continued the file, so its last name was another name and
# every row was refused for a field outside the columns.
WIDE = [f"column_{i:07d}" for i in range(80_000)]  # a header of 1,200,000 bytes


def _wide_rows(n: int) -> list[dict[str, object]]:
    return [{name: i for name in WIDE} for i in range(n)]


def test_a_resume_reads_back_a_header_longer_than_a_mib_whole(db: Database) -> None:
    settings = SETTINGS.replace("headers: false", "headers: true")
    rows = _wide_rows(6)
    with workdir("wide", settings, lambda path: _write_jsonl(path / "in.jsonl", rows)) as clean:
        assert start_run(db, load(clean / "settings.yaml"), commit_every=2).status == "completed"
        expected = (clean / "out.csv").read_bytes()
    assert len(expected.split(b"\r\n")[0]) > 1 << 20
    with workdir("wide", settings, lambda path: _write_jsonl(path / "in.jsonl", rows)) as path:
        run_id = crashed_run(db, path / "settings.yaml", "committed:2", name="wide", commit_every=2, sending="inline")
        assert fold_run(db, run_id).sink_positions["out"] > 0, "nothing durable yet: crash later"
        assert resume_run(db, run_id, load, commit_every=2).status == "completed"
        assert fold_run(db, run_id).outcomes.get("failed", 0) == 0
        assert (path / "out.csv").read_bytes() == expected


def test_an_append_reads_back_a_header_longer_than_a_mib_whole(db: Database) -> None:
    settings = SETTINGS.replace("headers: false", "mode: append")

    def inputs(path: Path) -> None:
        _write_jsonl(path / "in.jsonl", _wide_rows(2))
        (path / "out.csv").write_text(",".join(WIDE) + "\r\n" + ",".join("x" for _ in WIDE) + "\r\n")

    with workdir("wide", settings, inputs) as path:
        outcome = start_run(db, load(path / "settings.yaml"), commit_every=2)
        assert outcome.status == "completed"
        assert fold_run(db, outcome.run_id).outcomes.get("failed", 0) == 0
        lines = (path / "out.csv").read_bytes().split(b"\r\n")
        assert lines[0] == ",".join(WIDE).encode() and len(lines) == 5 and lines[-1] == b""
        assert lines[2] == b",".join(b"0" for _ in WIDE)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_a_header_past_the_bound_is_refused_naming_the_file_and_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    """Read a line at a time, the header is held whole, up to a bound: a file with no line end
    in its first gigabytes is not read into memory to find its header."""
    from engine.plugins import sinks
    from engine.plugins.protocol import PluginError
    from engine.plugins.registry import build_plugin

    monkeypatch.setattr(sinks, "_HEADER_MOST", 1000)
    path = tmp_path / "out.csv"
    path.write_bytes(("a" * 1000 + "\n1\n").encode(encoding))  # (the line end is the 1,001st byte)
    sink = build_plugin("sink", "csv", {"path": str(path), "mode": "append", "encoding": encoding})
    with pytest.raises(PluginError, match=r"its header \(first line\) is longer than 1,000 bytes") as e:
        sink.open("run", None)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    path.write_bytes(("a" * 400 + ',"b\n' + "c" * 400 + '"\n1,2\n').encode("utf-8"))  # a name with a line end
    sink = build_plugin("sink", "csv", {"path": str(path), "mode": "append"})
    sink.open("run", None)
    assert sink.fields == ["a" * 400, "b\n" + "c" * 400]
    sink.release()


def test_a_column_name_longer_than_csvs_own_field_limit_is_read_back(tmp_path: Path) -> None:
    """csv's reader takes 131,072 characters a field unless told otherwise (the CSV source tells it,
    for the whole process): with a JSON source, a longer name in the header ended the append in
    a traceback."""
    import csv

    from engine.plugins.registry import build_plugin

    old = csv.field_size_limit(131_072)
    try:
        path = tmp_path / "out.csv"
        path.write_text("n" * 200_000 + ",b\n1,2\n")
        sink = build_plugin("sink", "csv", {"path": str(path), "mode": "append"})
        sink.open("run", None)
        assert sink.fields == ["n" * 200_000, "b"]
        sink.release()
    finally:
        csv.field_size_limit(old)


def test_a_header_csv_cannot_read_is_refused_in_one_line(tmp_path: Path) -> None:
    """A carriage return ending the header in a file whose lines end in LF (`a,b\\r1,2\\n`): csv's
    reader raised its own error, and `elspeth run` ended in a traceback."""
    from engine.plugins.protocol import PluginError
    from engine.plugins.registry import build_plugin

    path = tmp_path / "out.csv"
    path.write_bytes(b"a,b\r1,2\n")
    sink = build_plugin("sink", "csv", {"path": str(path), "mode": "append"})
    with pytest.raises(PluginError) as e:
        sink.open("run", None)
    sink.release()
    said = str(e.value)
    assert (
        f"cannot append to {path}: its header cannot be read as CSV: new-line character seen in unquoted field" in said
    )
    assert "\n" not in said and "universal-newline" not in said, said
