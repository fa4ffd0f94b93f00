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


def test_the_append_benchmark_compares_the_store_with_a_bare_copy(db: Database, tmp_path: Path) -> None:
    out = _bench(db, tmp_path, "append.py", "--events", "400", "--commit-every", "100", "--rounds", "1")
    assert re.search(r"store_events_per_s=\d+ copy_events_per_s=\d+ ratio=[0-9.]+$", out.strip()), out


def _bench(db: Database, tmp_path: Path, script: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    env.update({"ELSPETH_DATABASE_URL": db.conninfo, "PYTHONPATH": str(ROOT)})
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


NUM = r"[0-9.]+"


def test_run_measures_each_example_against_the_baseline(db: Database, tmp_path: Path) -> None:
    for pipeline in ("linear", "fork_coalesce", "aggregation"):
        out = _bench(db, tmp_path, "run.py", pipeline, "60")
        line = (
            rf"pipeline={pipeline} rows=60 seconds={NUM} rows_per_s=\d+ events_per_s=\d+ peak_rss_mb=\d+ "
            rf"baseline_s={NUM} baseline_ratio={NUM} init_s={NUM}"
        )
        assert re.fullmatch(line, out.strip()), out


def test_run_measures_what_the_progress_display_costs(db: Database, tmp_path: Path) -> None:
    lines = _bench(db, tmp_path, "run.py", "linear", "50", "--progress").splitlines()
    assert re.fullmatch(rf"progress_calls=\d+ lines_pct={NUM} tty_pct={NUM} tty_wall_pct=-?{NUM}", lines[0]), lines
    assert lines[1].startswith("pipeline=linear rows=50 "), lines


def test_replay_resume_memory_and_startup_print_their_line(db: Database, tmp_path: Path) -> None:
    out = _bench(db, tmp_path, "replay.py", "--events", "300")
    assert re.fullmatch(
        rf"events=\d+ check_s={NUM} check_events_per_s=\d+ check_peak_rss_mb=\d+ check_cpu_s={NUM} "
        rf"check_floor_events_per_s=\d+ fold_s={NUM} fold_events_per_s=\d+",
        out.strip(),
    )
    out = _bench(db, tmp_path, "resume.py", "--rows", "400")
    assert re.fullmatch(
        rf"rows=400 second_half_s={NUM} resume_s={NUM} resume_ratio={NUM} verify_s={NUM} verify_share={NUM} "
        rf"verify_cpu_s={NUM} verify_floor_s={NUM} ratio_at_floor={NUM}",
        out.strip(),
    ), out
    out = _bench(db, tmp_path, "memory.py", "--small", "50", "--large", "200")
    assert re.fullmatch(rf"rss_small_mb=\d+ rss_large_mb=\d+ rss_growth={NUM}", out.strip()), out
    out = _bench(db, tmp_path, "startup.py", "--repeat", "1")
    assert re.fullmatch(rf"run_10_rows_s={NUM} help_s={NUM}", out.strip()), out


def test_writers_compares_several_writers_with_one(db: Database, tmp_path: Path) -> None:
    out = _bench(db, tmp_path, "writers.py", "--writers", "2", "--rows", "40")
    assert re.fullmatch(
        r"writers=2 one_events_per_s=\d+ all_events_per_s=\d+ scaling=[0-9.]+ cores=\d+ "
        r"one_busy_cores=[0-9.]+ ceiling=[0-9.]+ of_ceiling=[0-9.]+",
        out.strip(),
    ), out
