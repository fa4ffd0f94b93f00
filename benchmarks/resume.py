"""What a crash costs: a run killed near half way, then resumed, against the same run uninterrupted.

    python benchmarks/resume.py [--rows 200000]

Uninterrupted: the linear example on ROWS generated rows, in this process (commits sent from a
child process, as `elspeth run` and `elspeth resume` send them), with the time at
every durability point noted, so the time it spent on the second half of the input is known.
Interrupted: the same run crashed at the event where the first one stood at half way (the writer
dies as a killed process's would, its uncommitted tail lost), then `resume_run`, timed whole:
reading and verifying the log, rebuilding the state, skipping the input already done, the rest.
Before it, and apart (on a run crashed the same way in a folder of its own), the verification a
resume starts with (`verified_to_write_on`: the chain, the Merkle tree, the signed checkpoints,
every transition, folded), so that the line says how much of the resume that is
(`verify_share`, of the second half's time), and the CPU seconds the whole machine was busy
meanwhile (`verify_cpu_s`: this process, its chain child, the server's backends; `/proc/stat`,
Linux, the machine assumed otherwise idle): `verify_floor_s` is that work's wall time were every
core busy all the while, and `ratio_at_floor` the resume's ratio had its verification taken
only that (no arrangement of the same work among processes does better).
Line: rows=N second_half_s=S resume_s=S resume_ratio=R verify_s=S verify_share=F verify_cpu_s=C
verify_floor_s=S ratio_at_floor=R
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pipelines import busy_seconds, cores, prepare
from benchmarks.run import count_events
from engine.orchestrator import Pipeline, build_pipeline, resume_run, start_run, verified_to_write_on
from engine.settings import LandscapeSettings, load_settings
from landscape import faults
from landscape.db import Database, open_database
from landscape.fold import RunFold
from landscape.postgres import PostgresRecorder


def load(path: Path) -> Pipeline:
    return build_pipeline(load_settings(path))


def crash(db: Database, settings: Path, run_id: str, at: int, every: int) -> LandscapeSettings:
    """Run `settings` (from its folder) as `run_id` until its event `at` is appended, where the
    writer dies as a killed process's would, its uncommitted tail lost; the settings' landscape."""
    os.chdir(settings.parent)
    pipeline = load(settings)
    faults.configure(f"append:{at}", raise_instead=True)
    try:
        start_run(db, pipeline, commit_every=every, run_id=run_id, sending="process")
    except faults.SimulatedCrash:
        pass
    finally:
        faults.configure("")
        pipeline.close()
    return pipeline.loaded.settings.landscape


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    args = ap.parse_args()
    home = os.getcwd()
    os.environ.setdefault("ELSPETH_HOME", os.path.join(home, ".elspeth"))
    with (
        tempfile.TemporaryDirectory(prefix="elspeth-resume-") as tmp,
        open_database(os.environ.get("ELSPETH_DATABASE_URL")) as db,
    ):
        work = Path(tmp)
        os.chdir(work)
        try:
            settings = prepare("linear", args.rows, work)
            marks: list[tuple[float, int]] = []  # (seconds since start, rows read) per durability point

            def note(fold: RunFold) -> None:
                marks.append((time.perf_counter() - started, fold.source_records))

            pipeline = load(settings)
            # The example's durability points, or at least twenty of them on a small input, so
            # that where half way stood is known.
            every = min(pipeline.loaded.settings.checkpoint.commit_every_rows(), max(1, args.rows // 20))
            started = time.perf_counter()
            whole = start_run(db, pipeline, commit_every=every, progress=note, sending="process")
            total = time.perf_counter() - started
            pipeline.close()
            half_at, _ = next(m for m in marks if m[1] >= args.rows // 2)
            events = count_events(db, whole.run_id)

            # The verification a resume starts with, timed apart on a log crashed the same way in
            # a folder of its own, not on the log to be resumed: reading that would warm the
            # server's cache for the resume.
            apart = work / "apart"
            apart.mkdir()
            verified = f"{whole.run_id}-verified"
            ls = crash(
                db, prepare("linear", args.rows, apart, input_rows=work / "input.csv"), verified, events // 2, every
            )
            recorder = PostgresRecorder(db)
            before, started = busy_seconds(), time.perf_counter()
            verified_to_write_on(db, recorder, verified, recorder.run_created(verified), ls.signing_key, ls.witness_dir,
                                 apart, None, "resumed")  # fmt: skip
            verify_s, after = time.perf_counter() - started, busy_seconds()
            run_id = f"{whole.run_id}-crashed"
            crash(db, settings, run_id, events // 2, every)
            started = time.perf_counter()
            resume_run(db, run_id, load, commit_every=every, sending="process")
            resume_s = time.perf_counter() - started
        finally:
            os.chdir(home)
    second_half = total - half_at
    busy = None if before is None or after is None else after - before
    floor = (
        "verify_cpu_s=n/a verify_floor_s=n/a ratio_at_floor=n/a"
        if busy is None
        else f"verify_cpu_s={busy:.2f} verify_floor_s={busy / cores():.2f} "
        f"ratio_at_floor={(resume_s - verify_s + busy / cores()) / second_half:.2f}"
    )
    print(
        f"rows={args.rows} second_half_s={second_half:.2f} resume_s={resume_s:.2f} resume_ratio={resume_s / second_half:.2f} "
        f"verify_s={verify_s:.2f} verify_share={verify_s / second_half:.2f} {floor}"
    )


if __name__ == "__main__":
    main()
