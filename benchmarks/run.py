"""Throughput with the full audit trail, on the embedded PostgreSQL (or ELSPETH_DATABASE_URL).

    python benchmarks/run.py PIPELINE ROWS [--progress]
    python benchmarks/run.py [--rows N] [--commit-every N] [--sweep [--sweep-rows N]]

With PIPELINE (linear, fork_coalesce or aggregation: the examples, on ROWS generated rows), the
whole `elspeth run` process is timed, as a user runs it, against the same-process baseline (a
plain csv read-and-write of the same input). baseline_ratio = the run's seconds ÷ the baseline's.
The store is initialised first, untimed (`elspeth db upgrade`: on a new ELSPETH_HOME, initdb,
schema, roles and keys, which a store goes through once); its seconds are init_s. The timed run
still starts and stops the embedded server, as every `elspeth run` does.
Line: pipeline=P rows=N seconds=S rows_per_s=R events_per_s=E peak_rss_mb=M baseline_s=B baseline_ratio=X init_s=I
--progress first runs the pipeline in this process with the progress display off, as periodic
lines, and as the live bar on a terminal (a pseudo-terminal here), and prints what the display
cost: the time spent in its calls and refreshes as a share of the run, and the wall-time difference.
Line: progress_calls=N lines_pct=P tty_pct=P tty_wall_pct=W

Without PIPELINE: csv source → keyword_filter → field_mapper → truncate → gate → two sinks,
in this process. Last line: rows=N seconds=S rows_per_s=R events_per_s=E peak_rss_mb=M
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pipelines import PIPELINES, baseline, prepare, run_elspeth
from benchmarks.progress_cost import progress_cost
from engine.orchestrator import Outcome, Pipeline, build_pipeline, fold_run, start_run
from engine.settings import load_settings
from landscape import faults
from landscape.db import Database, open_database

SETTINGS = """
source:
  plugin: csv
  on_success: raw
  options:
    path: input.csv
    schema:
      mode: fixed
      fields: ['id: int', 'customer: str', 'amount: int', 'category: str', 'notes: str']
    on_validation_failure: discard
transforms:
- name: screen
  plugin: keyword_filter
  input: raw
  on_success: screened
  on_error: flagged
  options: {fields: [notes], blocked_patterns: ['(?i)\\bpassword\\b', '(?i)\\bsecret\\b']}
- name: rename
  plugin: field_mapper
  input: screened
  on_success: renamed
  on_error: discard
  options: {mapping: {customer: customer_name}}
- name: trim
  plugin: truncate
  input: renamed
  on_success: trimmed
  on_error: discard
  options: {fields: {notes: 24}, suffix: '...'}
gates:
- name: value
  input: trimmed
  condition: row['amount'] >= 5000
  routes: {'true': high, 'false': normal}
sinks:
  high: {plugin: csv, options: {path: out/high.csv}}
  normal: {plugin: csv, options: {path: out/normal.csv}}
  flagged: {plugin: csv, options: {path: out/flagged.csv}}
"""

NOTES = [
    "Renewal of the annual subscription for the whole team",
    "New account referred by an existing customer",
    "Contains password for the vendor portal",
    "Standard order",
]


def generate(path: Path, rows: int) -> None:
    rnd = random.Random(42)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "customer", "amount", "category", "notes"])
        for i in range(rows):
            w.writerow([i, f"Customer {i}", rnd.randint(10, 20_000), rnd.choice("abc"), rnd.choice(NOTES)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pipeline", nargs="?", choices=PIPELINES)
    ap.add_argument("n_rows", nargs="?", type=int, metavar="ROWS")
    ap.add_argument("--progress", action="store_true", help="also measure what the progress display costs")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--commit-every", type=int, default=None, help="rows per durability point")
    ap.add_argument(
        "--sweep",
        action="store_true",
        help="first, at several durability-point sizes: events/s, and the most rows a crash cost "
        "(measured: crashes injected at several points, rows read minus rows durable)",
    )
    ap.add_argument("--sweep-rows", type=int, default=20_000, help="rows per sweep run")
    args = ap.parse_args()
    if args.pipeline:
        rows = args.n_rows if args.n_rows is not None else args.rows
        if args.progress:
            print(progress_cost(args.pipeline, rows))
        print(whole_process(args.pipeline, rows))
        return
    if args.sweep:
        for every in (10, 100, 1000, 10_000):
            _, seconds, events, _ = measure(args.sweep_rows, every)
            lost = max(crash_cost(args.sweep_rows, every, round(events * f)) for f in (0.3, 0.55, 0.8))
            # What the design promises: a crash loses at most the durability point in flight and
            # the one being built; a point comes at least every COMMIT_SECONDS, whatever the rows.
            bound = 2 * every
            print(
                f"commit_every={every} events_per_s={events / seconds:.0f} "
                f"rows_lost_at_crash_measured={lost} bound={bound}"
            )
    outcome, seconds, n_events, commit_every = measure(args.rows, args.commit_every)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"run {outcome.run_id} {outcome.status}; commit_every={commit_every}")
    print(
        f"rows={args.rows} seconds={seconds:.2f} rows_per_s={args.rows / seconds:.0f} "
        f"events_per_s={n_events / seconds:.0f} peak_rss_mb={peak_mb:.0f}"
    )


def whole_process(name: str, rows: int) -> str:
    """Time `elspeth run` of example `name` on `rows` rows, and the baseline on the same input."""
    with tempfile.TemporaryDirectory(prefix="elspeth-bench-") as tmp:
        work = Path(tmp)
        settings = prepare(name, rows, work)
        started = time.perf_counter()
        baseline(work / "input.csv", work / "baseline.csv")
        baseline_s = time.perf_counter() - started
        env = {**os.environ}
        env.setdefault("ELSPETH_HOME", os.path.join(os.getcwd(), ".elspeth"))
        init_s, _, _ = run_elspeth(["db", "upgrade"], work, env)
        seconds, peak_mb, stdout = run_elspeth(["run", "-s", str(settings)], work, env)
        run_id = stdout.split()[1]  # "run RUN_ID completed; this command took S s"
        with open_database(os.environ.get("ELSPETH_DATABASE_URL"), home=env["ELSPETH_HOME"]) as db:
            events = count_events(db, run_id)
    return (
        f"pipeline={name} rows={rows} seconds={seconds:.2f} rows_per_s={rows / seconds:.0f} "
        f"events_per_s={events / seconds:.0f} peak_rss_mb={peak_mb:.0f} baseline_s={baseline_s:.3f} "
        f"baseline_ratio={seconds / baseline_s:.1f} init_s={init_s:.2f}"
    )


def count_events(db: Database, run_id: str) -> int:
    from landscape.roles import Role

    with db.connect(role=Role.OWNER) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE run_id = %s", (run_id,)).fetchone()
    return int(row[0]) if row else 0


@contextmanager
def _workspace(rows: int) -> Iterator[tuple[Pipeline, Database]]:
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="elspeth-bench-") as work:
        os.environ.setdefault("ELSPETH_HOME", os.path.join(home, ".elspeth"))
        os.chdir(work)
        try:
            Path("out").mkdir()
            generate(Path("input.csv"), rows)
            Path("settings.yaml").write_text(SETTINGS, encoding="utf-8")
            pipeline = build_pipeline(load_settings(Path("settings.yaml")))
            with open_database(os.environ.get("ELSPETH_DATABASE_URL")) as db:
                yield pipeline, db
            pipeline.close()
        finally:
            os.chdir(home)


def measure(rows: int, commit_every: int | None) -> tuple[Outcome, float, int, int]:
    with _workspace(rows) as (pipeline, db):
        commit_every = commit_every or pipeline.loaded.settings.checkpoint.commit_every_rows()
        started = time.perf_counter()
        outcome = start_run(db, pipeline, commit_every=commit_every)
        seconds = time.perf_counter() - started
        with db.connect() as conn:
            events = conn.execute("SELECT count(*) FROM events WHERE run_id = %s", (outcome.run_id,)).fetchone()
    return outcome, seconds, events[0] if events else 0, commit_every


def crash_cost(rows: int, commit_every: int, at_event: int) -> int:
    """Crash the run at its `at_event`-th event append; return how many source rows it had read
    that the log does not hold as read: the work a resume must redo."""
    with _workspace(rows) as (pipeline, db):
        read = 0
        original = pipeline.source.read

        def counting(start: int = 0) -> Iterator[Any]:
            nonlocal read
            for item in original(start):
                read += item is not None
                yield item

        pipeline.source.read = counting  # type: ignore[method-assign]
        run_id = f"run-crash-{os.urandom(4).hex()}"
        faults.configure(f"append:{at_event}", raise_instead=True)
        try:
            start_run(db, pipeline, commit_every=commit_every, run_id=run_id)
        except faults.SimulatedCrash:
            pass
        finally:
            faults.configure("")
        return read - fold_run(db, run_id).source_records


if __name__ == "__main__":
    main()
