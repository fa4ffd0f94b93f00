"""Reading a run back: `elspeth replay --check` and a plain fold, on a run of ≥ 1,000,000 events.

    python benchmarks/replay.py [--events 1000000]

The run is the linear example on enough generated rows for `--events` events (about 4.7 per row),
written in this process. Then, timed: the whole `elspeth replay RUN --check` process (chain,
payloads, fold, projection comparison), and a plain fold of the log in this process (events decoded and folded, no hash checked).
Line: events=N check_s=S check_events_per_s=E check_peak_rss_mb=M check_cpu_s=C check_floor_events_per_s=F
fold_s=S fold_events_per_s=E
(`check_peak_rss_mb`: the replay process's own peak, not its chain child's). `check_cpu_s`: the CPU
seconds the whole machine was busy while the check ran (its process, its chain child, the
server's backends: `/proc/stat`, Linux; the machine assumed otherwise idle), and
`check_floor_events_per_s` the rate that work allows on this machine's cores even were every core
busy all the while: no arrangement of the same work among processes goes faster ("n/a" without
/proc/stat).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pipelines import busy_seconds, cores, prepare, run_elspeth
from benchmarks.run import count_events
from landscape.db import open_database
from landscape.fold import RunFold
from landscape.postgres import PostgresRecorder

EVENTS_PER_ROW = 4.7  # the linear example's, measured


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    args = ap.parse_args()
    rows = int(args.events / EVENTS_PER_ROW) + 1
    with tempfile.TemporaryDirectory(prefix="elspeth-replay-") as tmp:
        work = Path(tmp)
        settings = prepare("linear", rows, work)
        env = {**os.environ}
        env.setdefault("ELSPETH_HOME", os.path.join(os.getcwd(), ".elspeth"))
        _, _, stdout = run_elspeth(["run", "-s", str(settings)], work, env)
        run_id = stdout.split()[1]
        before = busy_seconds()
        check_s, check_rss, _ = run_elspeth(["replay", run_id, "--check"], work, env)
        after = busy_seconds()
        with open_database(os.environ.get("ELSPETH_DATABASE_URL"), home=env["ELSPETH_HOME"]) as db:
            events = count_events(db, run_id)
            started = time.perf_counter()
            RunFold(run_id).apply_all(PostgresRecorder(db).read_events(run_id))  # no chain check
            fold_s = time.perf_counter() - started
    busy = None if before is None or after is None else after - before
    cpu = (
        "check_cpu_s=n/a check_floor_events_per_s=n/a"
        if not busy
        else (f"check_cpu_s={busy:.2f} check_floor_events_per_s={events / (busy / cores()):.0f}")
    )
    print(
        f"events={events} check_s={check_s:.2f} check_events_per_s={events / check_s:.0f} "
        f"check_peak_rss_mb={check_rss:.0f} {cpu} fold_s={fold_s:.2f} fold_events_per_s={events / fold_s:.0f}"
    )


if __name__ == "__main__":
    main()
