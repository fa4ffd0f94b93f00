"""Several writers on one server: N `elspeth run` processes of the linear example at once, each
its own run, against one writing alone.

    python benchmarks/writers.py [--writers 4] [--rows 20000]

Line: writers=N one_events_per_s=E all_events_per_s=E scaling=S (all ÷ one) cores=C
one_busy_cores=B ceiling=X of_ceiling=F (scaling ÷ ceiling)

What one writer alone keeps busy (its engine, its sender, the server's backend) is measured from
the machine's CPU counters (`/proc/stat`, Linux; time a hypervisor gave to others is not counted):
the writers together cannot go faster than the cores this process may use ÷ that (`ceiling`),
whatever the store does. The machine is assumed otherwise idle: others' work would count as the
writer's. On 2 cores one writer keeps about 1.6 busy.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pipelines import busy_seconds, elspeth_command, prepare
from benchmarks.pipelines import cores as machine_cores
from benchmarks.run import count_events
from landscape.db import open_database


def together(n: int, rows: int, env: dict[str, str]) -> tuple[float, list[str]]:
    """Start `n` runs at once; (seconds until the last ended, their run ids)."""
    with tempfile.TemporaryDirectory(prefix="elspeth-writers-") as tmp:
        works = [Path(tmp) / f"w{i}" for i in range(n)]
        settings = [prepare("linear", rows, w) for w in works]
        started = time.perf_counter()
        procs = [
            subprocess.Popen([*elspeth_command(), "run", "-s", str(s)], cwd=w, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            for s, w in zip(settings, works, strict=True)
        ]  # fmt: skip
        outputs = [p.communicate() for p in procs]
        seconds = time.perf_counter() - started
    for p, (out, err) in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            sys.exit(f"writers.py: a run failed: {err.strip() or out.strip()}")
    return seconds, [out.split()[1] for out, _ in outputs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--rows", type=int, default=20_000)
    args = ap.parse_args()
    env = {**os.environ}
    env.setdefault("ELSPETH_HOME", os.path.join(os.getcwd(), ".elspeth"))
    # Keep the embedded server up for the whole measurement, so no run pays for its start.
    with open_database(os.environ.get("ELSPETH_DATABASE_URL"), home=env["ELSPETH_HOME"]) as db:
        before = busy_seconds()
        one_s, one = together(1, args.rows, env)
        after = busy_seconds()
        all_s, many = together(args.writers, args.rows, env)
        one_events = count_events(db, one[0])
        all_events = sum(count_events(db, r) for r in many)
    one_rate, all_rate = one_events / one_s, all_events / all_s
    cores = machine_cores()
    busy = None if before is None or after is None else (after - before) / one_s
    scaling = all_rate / one_rate
    limits = (
        "one_busy_cores=n/a ceiling=n/a of_ceiling=n/a"
        if not busy
        else f"one_busy_cores={busy:.2f} ceiling={cores / busy:.2f} of_ceiling={scaling * busy / cores:.2f}"
    )
    print(
        f"writers={args.writers} one_events_per_s={one_rate:.0f} all_events_per_s={all_rate:.0f} "
        f"scaling={scaling:.2f} cores={cores} {limits}"
    )


if __name__ == "__main__":
    main()
