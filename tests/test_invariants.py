"""ARCHITECTURE §8 as properties, over generated pipelines and generated rows:

1. every token reaches exactly one terminal outcome; rows in = rows accounted for;
2. every stored event is a legal transition from the state the fold is in (the strict refold);
3. any changed byte of a stored event is detected and located;
6. no coalesce or batch stays open after the end of the source.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import FakeClock
from engine.orchestrator import build_pipeline, fold_run, start_run
from engine.settings import load_settings
from landscape.db import Database
from landscape.errors import ChainBroken
from landscape.postgres import PostgresRecorder
from landscape.verify_store import verify_run
from tests.engine_harness import assert_invariants, assert_on_the_wiring, write_csv
from tests.test_resume import PIPELINES, SINKS, SOURCE

_cell = st.one_of(
    st.integers(min_value=-5, max_value=12),
    st.sampled_from(["", "x", "1.5", "bad", "ok"]),
)
_note = st.sampled_from(["ok", "bad", "fine", "", "BAD news"])
_rows = st.lists(st.tuples(st.integers(0, 10_000), _cell, _note), min_size=0, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(k for k in PIPELINES if k != "explode")), rows=_rows, commit_every=st.integers(1, 5))
def test_every_token_ends_exactly_once_and_nothing_stays_open(
    db: Database, kind: str, rows: list[tuple[int, object, str]], commit_every: int
) -> None:
    with tempfile.TemporaryDirectory(prefix="elspeth-inv-") as tmp:
        path = Path(tmp)
        write_csv(path / "in.csv", ["id", "v", "note", "items"], [[i, v, n, "x"] for i, v, n in rows])
        (path / "out").mkdir()
        (path / "settings.yaml").write_text(SOURCE + PIPELINES[kind] + SINKS, encoding="utf-8")
        old = os.getcwd()
        os.chdir(path)
        try:
            pipeline = build_pipeline(load_settings(path / "settings.yaml"))
            outcome = start_run(db, pipeline, commit_every=commit_every, clock=FakeClock())
        finally:
            os.chdir(old)
    fold = fold_run(db, outcome.run_id, strict=True)  # re-applies every transition: invariant 2
    assert_invariants(fold)  # invariants 1 and 6
    assert fold.source_records == len(rows)  # rows in = rows read; each ended (assert_invariants)
    assert_on_the_wiring(db, outcome.run_id)  # what a row's proof bundle is held to


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_changed_byte_of_any_event_is_found_at_its_seq(db: Database, data: st.DataObject) -> None:
    run_id = _small_run(db)
    with db.connect() as conn:
        count = conn.execute("SELECT count(*) FROM events WHERE run_id = %s", (run_id,)).fetchone()
        assert count is not None
        # Drawn as numbers reduced modulo the sizes: a step's duration (real time) changes an event's
        # length from run to run, and hypothesis needs the same draws for the same choices.
        seq = data.draw(st.integers(0, 10**6), label="seq") % count[0]
        payload = conn.execute("SELECT payload FROM events WHERE run_id = %s AND seq = %s", (run_id, seq)).fetchone()
        assert payload is not None
        body = bytearray(payload[0])
        pos = data.draw(st.integers(0, 10**6), label="byte") % len(body)
        body[pos] ^= data.draw(st.integers(1, 255), label="xor")
        conn.execute("SET session_replication_role = replica")  # what a superuser could do
        conn.execute("UPDATE events SET payload = %s WHERE run_id = %s AND seq = %s", (bytes(body), run_id, seq))
        conn.commit()
        try:
            verify_run(PostgresRecorder(db), run_id)
        except ChainBroken as e:
            assert e.seq == seq
        else:
            raise AssertionError(f"a changed byte at seq {seq} went unnoticed")


def _small_run(db: Database) -> str:
    with tempfile.TemporaryDirectory(prefix="elspeth-chain-") as tmp:
        path = Path(tmp)
        write_csv(path / "in.csv", ["id", "v", "note", "items"], [[i, i % 4, "ok", "x"] for i in range(4)])
        (path / "out").mkdir()
        (path / "settings.yaml").write_text(SOURCE + PIPELINES["fork_require_all"] + SINKS, encoding="utf-8")
        old = os.getcwd()
        os.chdir(path)
        try:
            pipeline = build_pipeline(load_settings(path / "settings.yaml"))
            return start_run(db, pipeline, clock=FakeClock()).run_id
        finally:
            os.chdir(old)
