"""The benchmarks run and print what they promise. Figures are not judged here (no stopwatch
in tests), except the one the design guarantees: a crash costs at most two durability points."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from landscape.db import Database

ROOT = Path(__file__).resolve().parents[1]


def test_the_durability_sweep_measures_what_a_crash_costs_within_the_bound(db: Database, tmp_path: Path) -> None:
    env = {**os.environ, "ELSPETH_DATABASE_URL": db.conninfo, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--sweep", "--sweep-rows", "1500", "--rows", "300"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    sweep = [
        re.fullmatch(r"commit_every=(\d+) events_per_s=\d+ rows_lost_at_crash_measured=(\d+) bound=(\d+)", x)
        for x in lines[:4]
    ]
    assert all(sweep), lines
    for m in sweep:
        assert m is not None
        every, lost, bound = (int(g) for g in m.groups())
        assert 0 < lost <= bound == 2 * every  # a crash costs something, never more than two points
    assert re.fullmatch(r"rows=300 seconds=\S+ rows_per_s=\d+ events_per_s=\d+ peak_rss_mb=\d+", lines[-1]), lines


def test_the_append_benchmark_measures_the_merkle_tree_without_a_database(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "append.py"), "--merkle-only", "--events", "3000", "--rounds", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = r"merkle_events_per_s=\d+ merkle_us_per_event=[0-9.]+ merkle_root_us=[0-9.]+"
    assert re.fullmatch(line, proc.stdout.strip()), proc.stdout
