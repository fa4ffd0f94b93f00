"""Four `elspeth run` processes writing different runs into one database at once: every chain
verifies, every run's projections equal a rebuild, and a reader paging by global position while
they write never skips a committed event."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from landscape.db import Database
from landscape.postgres import PostgresRecorder
from landscape.projections import compare
from landscape.records import GlobalEvent
from landscape.roles import Role
from landscape.verify_store import verify_run
from tests.engine_harness import write_csv

ROOT = Path(__file__).resolve().parents[1]
WRITERS = 4
ROWS = 1500

# Small durability points: many commits per run, so the four interleave on the server.
PIPELINE = """
source:
  plugin: csv
  on_success: raw
  options: {path: in.csv, schema: {mode: fixed, fields: ['id: int', 'v: int']}, on_validation_failure: discard}
gates:
- name: big
  input: raw
  condition: row['v'] > 5
  routes: {'true': high, 'false': low}
sinks:
  high: {plugin: csv, options: {path: out/high.csv}}
  low: {plugin: csv, options: {path: out/low.csv}}
"""


def _read_all(recorder: PostgresRecorder, seen: list[GlobalEvent], done: threading.Event) -> None:
    """Page through every run's events as a downstream consumer would, from the last position
    seen, until the writers are done and a page comes back empty at the table's last event. (Not
    at the first empty page after they are done: a transaction open anywhere on the server, such
    as autovacuum's, holds back the newest commits from every reader until it ends.)"""
    position = (0, 0)
    while True:
        finished = done.is_set()  # read before the page: an empty page after it is the end
        page = recorder.read_since(position, limit=500)
        seen.extend(page)
        if page:
            position = page[-1].position
        elif finished and position >= _last_position(recorder):
            return


def _last_position(recorder: PostgresRecorder) -> tuple[int, int]:
    with recorder.db.connect() as conn:
        row = conn.execute("SELECT tx_id, global_position FROM events ORDER BY 1 DESC, 2 DESC LIMIT 1").fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def test_four_writers_at_once_leave_verifiable_runs_and_a_reader_misses_nothing(db: Database, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    env["ELSPETH_DATABASE_URL"] = db.conninfo
    procs = []
    for i in range(WRITERS):
        work = tmp_path / f"w{i}"
        (work / "out").mkdir(parents=True)
        write_csv(work / "in.csv", ["id", "v"], [[n, (n * (i + 3)) % 11] for n in range(ROWS)])
        (work / "settings.yaml").write_text(PIPELINE, encoding="utf-8")
        command = [sys.executable, "-m", "engine.cli.main", "run", "-s", "settings.yaml", "--commit-every", "10"]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "stdin": subprocess.DEVNULL}
        procs.append(subprocess.Popen(command, cwd=work, env=env, text=True, **pipes))
    recorder = PostgresRecorder(db.as_role(Role.AUDITOR))
    seen: list[GlobalEvent] = []
    done = threading.Event()
    reader = threading.Thread(target=_read_all, args=(recorder, seen, done))
    reader.start()
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        done.set()
        reader.join(timeout=600)
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out + err
    run_ids = {out.split()[1] for out, _ in outputs}
    assert len(run_ids) == WRITERS

    with db.connect() as conn:
        table = conn.execute("SELECT tx_id, global_position FROM events ORDER BY tx_id, global_position").fetchall()
    positions = [e.position for e in seen]
    assert positions == sorted(set(positions)), "the reader saw an event twice or out of order"
    assert positions == [tuple(r) for r in table], "the reader skipped a committed event"
    for run_id in run_ids:
        verify_run(recorder, run_id)
        last_seq, differences = compare(db, run_id)
        assert differences == [] and last_seq > 0
