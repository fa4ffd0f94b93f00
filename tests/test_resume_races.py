"""Two resumes of one run at once: the one that reads the log first and locks it second must
notice that the log moved on, and do nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import engine.orchestrator as orchestrator
from engine.errors import ResumeRefused
from engine.orchestrator import Pipeline, build_pipeline, fold_run, resume_run, start_run
from engine.settings import load_settings
from landscape import faults
from landscape.db import Database
from tests.engine_harness import assert_invariants, write_csv

SETTINGS = """
source:
  plugin: csv
  on_success: raw
  options: {path: in.csv, schema: {mode: fixed, fields: ['id: int', 'note: str']}, on_validation_failure: discard}
transforms:
- name: screen
  plugin: keyword_filter
  input: raw
  on_success: out
  on_error: discard
  options: {fields: [note], blocked_patterns: ['bad']}
sinks:
  out: {plugin: csv, options: {path: out/out.csv}}
"""


def _load(path: Path) -> Pipeline:
    return build_pipeline(load_settings(path))


def _crashed(db: Database, folder: Path, *, rows: int, at: str) -> str:
    """The id of a run of SETTINGS over `rows` rows in `folder` (the working folder), crashed at
    the fault point `at`, five rows a commit."""
    write_csv(folder / "in.csv", ["id", "note"], [[i, "ok"] for i in range(rows)])
    (folder / "out").mkdir()
    (folder / "settings.yaml").write_text(SETTINGS)
    run_id = f"run-race-{os.urandom(6).hex()}"
    faults.configure(at, raise_instead=True)
    try:
        with pytest.raises(faults.SimulatedCrash):
            start_run(db, _load(folder / "settings.yaml"), commit_every=5, run_id=run_id)
    finally:
        faults.configure("")
    return run_id


def test_a_resume_that_lost_the_race_changes_nothing(db: Database, tmp_path: Path, monkeypatch: Any) -> None:
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        run_id = _crashed(db, tmp_path, rows=40, at="committed:3")

        done = fold_run(db, run_id)  # what the log holds before the late resume runs
        # The resume's reading of the log (its fold, head and Merkle tree), made stale by another
        # resume that runs to the end before this one takes the run's lock.
        real_read = orchestrator._verified_log

        def read_then_lose_the_race(*args: Any, **kwargs: Any) -> Any:
            stale = real_read(*args, **kwargs)
            monkeypatch.setattr(orchestrator, "_verified_log", real_read)
            assert resume_run(db, run_id, _load).status == "completed"  # the other resume, start to end
            return stale

        monkeypatch.setattr(orchestrator, "_verified_log", read_then_lose_the_race)
        with pytest.raises(ResumeRefused, match="continued by another process"):
            resume_run(db, run_id, _load)
        after = fold_run(db, run_id, strict=True)
        assert after.last_seq > done.last_seq  # the winner's events are there...
        assert_invariants(after)  # ...and nothing after them: the run is still completed
        lines = (tmp_path / "out/out.csv").read_text().splitlines()
        assert len(lines) == 41 and len(set(lines)) == 41  # header + every row once: no truncation
    finally:
        os.chdir(old)


def test_a_fresh_run_whose_id_is_taken_writes_nothing_onto_the_other(db: Database, tmp_path: Path) -> None:
    # Two runs started in one second under one id (an id's random part is 32 bits): the second
    # must not append its start to the first's log, which would make that run unreadable.
    write_csv(tmp_path / "in.csv", ["id", "note"], [[i, "ok"] for i in range(10)])
    (tmp_path / "out").mkdir()
    (tmp_path / "settings.yaml").write_text(SETTINGS)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        run_id = f"run-taken-{os.urandom(6).hex()}"
        assert start_run(db, _load(tmp_path / "settings.yaml"), run_id=run_id).status == "completed"
        before = fold_run(db, run_id, strict=True)
        written = (tmp_path / "out/out.csv").read_bytes()
        with pytest.raises(ResumeRefused, match=f"a run with id {run_id} is already in this audit store"):
            start_run(db, _load(tmp_path / "settings.yaml"), run_id=run_id)
        after = fold_run(db, run_id, strict=True)
        assert (after.last_seq, after.status) == (before.last_seq, "completed")
        assert (tmp_path / "out/out.csv").read_bytes() == written
    finally:
        os.chdir(old)


def test_a_run_held_by_an_erasure_is_refused_as_such(db: Database, tmp_path: Path) -> None:
    """An erasure (or a rebuild) holds a run's locks for its transaction: a resume, an abandon or
    another erasure started meanwhile is refused naming it, not as if the run were being written
    (which sends an operator looking for a process that does not exist); a live writer is still
    said to be one."""
    from engine.abandon import AbandonRefused, abandon_run
    from landscape.commits import BOTH_LOCKS, hold_for_transaction, lock, lock_holder
    from landscape.erasure import ErasureRefused, plan_rows
    from landscape.errors import ConcurrentWriter
    from landscape.postgres import PostgresRecorder

    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        run_id = _crashed(db, tmp_path, rows=20, at="committed:2")
        erasing = f"held right now by another process that is erasing pid={os.getpid()}"
        with db.connect() as conn:
            assert hold_for_transaction(conn, run_id, "erasing")
            assert lock_holder(conn, run_id) is None  # never itself, in a refusal of its own (a review)
            with pytest.raises(ResumeRefused, match=f"is {erasing}; not resuming it, nothing was done"):
                resume_run(db, run_id, _load)
            with pytest.raises(AbandonRefused, match=f"is {erasing}; abandon it once that has ended"):
                abandon_run(db, run_id, "input withdrawn")
            with pytest.raises(ErasureRefused, match=f"is {erasing}; nothing was erased"):
                plan_rows(db, run_id, [1], force=True)
            with db.connect() as other, pytest.raises(ConcurrentWriter, match=f"is {erasing}$"):
                lock(other, run_id, BOTH_LOCKS)  # a resume that came between the question and the lock
            conn.rollback()
        writer = PostgresRecorder(db).open_writer(run_id)
        try:
            with pytest.raises(
                ResumeRefused, match=f"is still being written by another process \\(writer pid={os.getpid()}\\)"
            ):
                resume_run(db, run_id, _load)
        finally:
            writer.close()
        assert resume_run(db, run_id, _load).status == "completed"
    finally:
        os.chdir(old)
