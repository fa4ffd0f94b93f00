"""Two runs of the store writing one sink file at once (a review).

A file sink opens its file at its first write, so a run that has written nothing yet holds no
lock on it, and has nothing durable there (position 0, or no file at all). A second run started
then wrote the file and completed; the first then replaced it (mode `write`) or failed and was
resumed, as its error said, and the resume cut the second run's rows (mode `append`). Either way
the second run's trail said its rows were in the file, and they were not.

Run A here is in-process; its source starts run B before giving A its first row (A has recorded
its start and holds its writer lock, its sink has not opened the file)."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import orchestrator
from engine.errors import ResumeRefused, RunFailedError, RunRefused
from engine.orchestrator import Pipeline, fold_run, resume_run, start_run
from landscape.db import Database
from landscape.postgres import PostgresRecorder
from tests.engine_harness import load, workdir

SETTINGS = """
source:
  plugin: csv
  on_success: out
  options:
    path: in.csv
    schema: {{mode: fixed, fields: ['id: int']}}
sinks:
  out: {{plugin: csv, options: {{path: out/shared.csv, mode: {mode}}}}}
retry: {{max_attempts: 1}}
"""


class _FirstRowAfter:
    """The source of a pipeline, which does `then` before its first row."""

    def __init__(self, inner: Any, then: Callable[[], None]) -> None:
        self._inner, self._then = inner, then

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def read(self, start: int = 0) -> Iterator[Any]:
        for n, item in enumerate(self._inner.read(start)):
            if n == 0:
                self._then()
            yield item


def _pipeline(path: Path, then: Callable[[], None]) -> Pipeline:
    pipeline = load(path / "settings.yaml")
    pipeline.source = _FirstRowAfter(pipeline.source, then)  # type: ignore[assignment]
    return pipeline


def _inputs(path: Path) -> None:
    with (path / "in.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["id"], *([i] for i in range(1, 4))])


def _ids(path: Path) -> list[str]:
    return [line.split(",")[0] for line in path.read_text().splitlines()[1:]]


@pytest.mark.parametrize("mode", ["write", "append"])
def test_a_run_is_not_started_on_a_file_a_running_run_will_write(db: Database, mode: str) -> None:
    """B is refused at its start, naming A, whatever A has made durable there (nothing yet)."""
    refused: list[str] = []

    def start_b() -> None:
        with pytest.raises(RunRefused) as e:
            start_run(db, load(Path("settings.yaml")))
        refused.append(str(e.value))

    with workdir("two-runs", SETTINGS.format(mode=mode), _inputs) as path:
        a = start_run(db, _pipeline(path, start_b), commit_every=1)
        assert a.status == "completed"
        assert len(refused) == 1 and f"is being written by run {a.run_id}, which is still running" in refused[0]
        assert _ids(path / "out" / "shared.csv") == ["1", "2", "3"]


@pytest.mark.parametrize("mode", ["write", "append"])
def test_two_runs_started_at_once_on_one_file_lose_no_rows(
    db: Database, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where neither start sees the other (B's checks and the file's lock skipped here, as for
    runs of two audit stores, which see nothing of each other): B completes; A, at its first
    write, finds the file written since it started and fails, not replacing it; A's resume
    refuses to cut B's rows (it measured "since" from A's failure, which came after B's flushes)."""
    b_ids: list[str] = []

    def start_b() -> None:
        with monkeypatch.context() as m:
            m.setattr(orchestrator.Execution, "_refuse_to_share_a_file_being_written", lambda *a, **k: None)
            m.setattr(orchestrator.Execution, "_hold_sink_files", lambda *a, **k: None)
            b_ids.append(start_run(db, load(Path("settings.yaml"))).run_id)

    with workdir("two-runs", SETTINGS.format(mode=mode), _inputs) as path:
        shared = path / "out" / "shared.csv"
        with pytest.raises(RunFailedError, match="was written by another process"):
            start_run(db, _pipeline(path, start_b), commit_every=1, run_id=f"run-a-{mode}")
        b_rows = shared.read_bytes()
        assert _ids(shared) == ["1", "2", "3"] and fold_run(db, b_ids[0]).status == "completed"
        with pytest.raises(ResumeRefused, match=f"holds rows after this run's durable position .* run {b_ids[0]}"):
            resume_run(db, f"run-a-{mode}", load)
        assert shared.read_bytes() == b_rows


@pytest.mark.parametrize("mode", ["write", "append"])
def test_of_two_runs_starting_at_one_moment_on_one_file_the_second_is_refused(
    db: Database, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B starts while A is between its checks and its first commit: neither has recorded anything
    the other's checks could read. B is refused by the file's lock A holds in the store; A goes
    on and completes. (Without the lock B completed, and A failed at its first write.)"""
    refused: list[str] = []
    checked = orchestrator.Execution._refuse_to_read_a_crash_tail

    def start_b_then(self: orchestrator.Execution) -> None:
        if self.run_id == f"at-once-a-{mode}":
            with pytest.raises(RunRefused) as e:
                start_run(db, load(Path("settings.yaml")), run_id=f"at-once-b-{mode}")
            refused.append(str(e.value))
        checked(self)

    with workdir("two-runs", SETTINGS.format(mode=mode), _inputs) as path:
        monkeypatch.setattr(orchestrator.Execution, "_refuse_to_read_a_crash_tail", start_b_then)
        a = start_run(db, load(path / "settings.yaml"), commit_every=1, run_id=f"at-once-a-{mode}")
        assert a.status == "completed"
        assert len(refused) == 1 and "is being written right now by another run" in refused[0], refused
        assert _ids(path / "out" / "shared.csv") == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("a", "b"), [("replace", "replace"), ("append", "replace"), ("replace", "append"), ("append", "append")]
)
def test_of_two_runs_starting_at_one_moment_on_one_table_one_replacing_it_the_second_is_refused(
    db: Database, monkeypatch: pytest.MonkeyPatch, a: str, b: str
) -> None:
    """`if_exists: replace` drops the table at the sink's open: B, started while A was between its
    checks and its first commit, dropped the table A had just made (or was appending to: its rows
    went), and both wrote into B's (reviews). The table's lock refuses B when either replaces it;
    appending runs share it. Spelled in another case (SQLite's names ignore it) it is one table."""
    import sqlite3

    def settings(if_exists: str, table: str = "t") -> str:
        return SETTINGS.format(mode="write").replace(
            "out: {plugin: csv, options: {path: out/shared.csv, mode: write}}",
            f"out: {{plugin: database, options: {{url: 'sqlite:///out/o.db', table: {table}, if_exists: {if_exists}}}}}",
        )

    outcomes: list[str] = []
    checked = orchestrator.Execution._refuse_to_read_a_crash_tail

    def start_b_then(self: orchestrator.Execution) -> None:
        if self.run_id == f"table-a-{a}-{b}":
            Path("b.yaml").write_text(settings(b, "T"))
            try:
                outcomes.append(start_run(db, load(Path("b.yaml")), run_id=f"table-b-{a}-{b}").status)
            except RunRefused as e:
                outcomes.append(str(e))
        checked(self)

    with workdir("two-runs", settings(a), _inputs) as path:
        monkeypatch.setattr(orchestrator.Execution, "_refuse_to_read_a_crash_tail", start_b_then)
        assert start_run(db, load(path / "settings.yaml"), run_id=f"table-a-{a}-{b}").status == "completed"
        rows = sqlite3.connect(path / "out" / "o.db").execute("SELECT count(*) FROM t").fetchone()[0]
        if a == b == "append":
            assert outcomes == ["completed"] and rows == 6
        else:
            assert len(outcomes) == 1 and "table sqlite:///out/o.db#T is being written right now" in outcomes[0]
            assert rows == 3


def test_a_server_table_is_one_place_however_its_url_is_spelled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyed by the URL as written, `localhost` and `127.0.0.1`, another user or driver were two
    places and the race stayed open (a review). A server on this machine is this machine's: the
    same URL on another machine is another server; a server elsewhere is one for all."""
    from types import SimpleNamespace

    def places(url: str, table: str = "t") -> set[str]:
        sink = SimpleNamespace(url=url, table_name=table, location=lambda: f"{url}#{table}")
        return set(orchestrator._table_places(sink))

    local = places("postgresql://u:p@localhost:5433/db")
    assert local == places("postgresql+psycopg://other@127.0.0.1:5433/db?sslmode=disable")
    assert local & places("postgresql://u@/db?host=/var/run/postgresql&port=5433")  # (its socket)
    assert not local & places("postgresql://u@/db?host=/var/run/postgresql")  # (another port)
    assert not local & places("postgresql://u@localhost:5433/db", "T")  # (a server's names keep case)
    assert not local & places("postgresql://u@localhost:5433/other")
    remote = places("postgresql://u@10.1.2.3:5432/db")
    monkeypatch.setattr(orchestrator, "_machine", lambda: b"another-machine")
    assert not local & places("postgresql://u@localhost:5433/db")
    assert remote == places("postgresql://someone@10.1.2.3/db")


def _holds(writer: Any, path: Path) -> bool:
    return all(writer.hold(place) is None for place in orchestrator._places(path))


def test_a_file_is_held_by_its_folder_and_name_and_by_itself_until_its_run_ends(db: Database) -> None:
    """Another spelling of the path, or a link to the file, is the same place; the lock goes with
    the run's writer, so the next run may start."""
    with workdir("two-runs", SETTINGS.format(mode="append"), _inputs) as path:
        (path / "out" / "shared.csv").write_text("id\n")
        (path / "out" / "link.csv").symlink_to(path / "out" / "shared.csv")
        (path / "out" / "hard.csv").hardlink_to(path / "out" / "shared.csv")
        (path / "elsewhere").symlink_to(path / "out")
        recorder = PostgresRecorder(db)
        first = recorder.open_writer("run-holds-1")
        try:
            assert _holds(first, path / "out" / "shared.csv")
            second = recorder.open_writer("run-holds-2")
            try:
                for other in ("out/link.csv", "out/hard.csv", "out/../out/shared.csv", "elsewhere/shared.csv"):
                    assert not _holds(second, Path(other)), other
                assert _holds(second, Path("out/other.csv")) and _holds(second, Path("new/folder/other.csv"))
            finally:
                second.close()
        finally:
            first.close()
        third = recorder.open_writer("run-holds-3")
        try:
            assert _holds(third, path / "out" / "shared.csv")
        finally:
            third.close()


def test_a_file_not_there_yet_is_held_by_the_folders_that_are(db: Database, tmp_path: Path) -> None:
    """A sink's folder may not exist yet (the sink makes it): another spelling of the path
    through the folders that do is still the same place. And a path that is no text (bytes
    no encoding gives) is held like any other, not a traceback (a review)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    recorder = PostgresRecorder(db)
    first, second = recorder.open_writer("run-new-folder-1"), recorder.open_writer("run-new-folder-2")
    try:
        assert _holds(first, tmp_path / "real" / "new" / "out.csv")
        assert not _holds(second, tmp_path / "alias" / "new" / "out.csv")
        odd = tmp_path / os.fsdecode(b"caf\xe9") / "out.csv"
        assert _holds(first, odd) and not _holds(second, odd)
    finally:
        first.close()
        second.close()


def test_one_path_on_two_machines_is_two_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One store may serve many machines, whose paths (and inode numbers) repeat: a run on one is
    not refused for a file of the same name on another."""
    (tmp_path / "out.csv").write_text("id\n")
    here = orchestrator._places(tmp_path / "out.csv")
    monkeypatch.setattr(orchestrator, "_machine", lambda: b"another-machine")
    there = orchestrator._places(tmp_path / "out.csv")
    assert len(here) == len(there) == 2 and not set(here) & set(there)


def test_a_file_held_by_a_session_that_is_no_run_is_refused_naming_it(db: Database) -> None:
    """Any session of the store may take an advisory lock (an analyst's, where `db upgrade` could
    not revoke that): the refusal names who holds it, which `elspeth runs` would not show."""
    with workdir("two-runs", SETTINGS.format(mode="append"), _inputs) as path:
        with db.connect(autocommit=True) as other:
            other.execute("SET application_name = 'a-hand-held-session'")
            for place in orchestrator._places(path / "out" / "shared.csv"):
                other.execute("SELECT pg_advisory_lock(hashtextextended(%s, 2))", (place,))
            with pytest.raises(
                RunRefused, match=r"its lock is held by the store's session \d+ .*'a-hand-held-session'"
            ):
                start_run(db, load(path / "settings.yaml"))
        assert start_run(db, load(path / "settings.yaml")).status == "completed"


def test_a_file_written_while_a_run_was_starting_is_not_replaced(db: Database) -> None:
    """Run A's start was slow (an earlier sink slow to open): B wrote the file and completed in
    between, before A had recorded anything of its sinks, so neither start saw the other. A's
    sink took the file as it found it at its open, B's output, and replaced it unseen (a review).
    The file is held to what it was when A's sink was made, before A's start asked about it."""
    with workdir("two-runs", SETTINGS.format(mode="write"), _inputs) as path:
        shared = path / "out" / "shared.csv"
        a = load(path / "settings.yaml")  # A is made (its settings loaded, its sinks built)...
        b = start_run(db, load(path / "settings.yaml"))  # ...B runs whole meanwhile...
        assert b.status == "completed"
        b_rows = shared.read_bytes()
        with pytest.raises(RunFailedError, match="was written by another process"):
            start_run(db, a, commit_every=1)  # ...then A goes on
        assert shared.read_bytes() == b_rows


def test_runs_may_share_a_device(db: Database) -> None:
    """A device keeps nothing it is given: a run writing /dev/null does not keep another from it."""
    dev_null = SETTINGS.format(mode="write").replace("out/shared.csv", "/dev/null")
    started: list[str] = []

    def start_b() -> None:
        started.append(start_run(db, load(Path("settings.yaml"))).status)

    with workdir("two-runs", dev_null, _inputs) as path:
        assert start_run(db, _pipeline(path, start_b), commit_every=1).status == "completed"
        assert started == ["completed"]
