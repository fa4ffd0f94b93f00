"""Wall time of a 10-row `elspeth run` (store already initialised) and of `elspeth --help`.

    python benchmarks/startup.py [--repeat N]

Each is a fresh process, as a user runs it; the median of N is printed. The embedded store in a
temporary ELSPETH_HOME is initialised by one untimed run first (or ELSPETH_DATABASE_URL is used).
Line: run_10_rows_s=S help_s=S
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.pipelines import elspeth_command as elspeth  # noqa: E402
from benchmarks.pipelines import prepare  # noqa: E402


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"startup: {' '.join(args[1:])} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="elspeth-startup-") as tmp:
        work = Path(tmp)
        settings = prepare("linear", 10, work)
        env = {**os.environ, "ELSPETH_HOME": str(work / ".elspeth")}
        run = [*elspeth(), "run", "-s", str(settings)]
        timed(run, work, env)  # initialises the embedded store (initdb, schema, roles)
        runs = [timed(run, work, env) for _ in range(args.repeat)]
        helps = [timed([*elspeth(), "--help"], work, env) for _ in range(args.repeat)]
    print(f"run_10_rows_s={statistics.median(runs):.3f} help_s={statistics.median(helps):.3f}")


if __name__ == "__main__":
    main()
