"""Peak memory of a whole `elspeth run` of the linear example at two sizes.

    python benchmarks/memory.py [--small 100000] [--large 1000000]

A run's memory must not grow with its input: rows stream through, and the writer holds one
durability point at a time. Line: rss_small_mb=M rss_large_mb=M rss_growth=G (large ÷ small)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pipelines import prepare, run_elspeth


def peak_rss(rows: int) -> float:
    with tempfile.TemporaryDirectory(prefix="elspeth-memory-") as tmp:
        work = Path(tmp)
        settings = prepare("linear", rows, work)
        env = {**os.environ}
        env.setdefault("ELSPETH_HOME", os.path.join(os.getcwd(), ".elspeth"))
        _, peak, _ = run_elspeth(["run", "-s", str(settings)], work, env)
    return peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--large", type=int, default=1_000_000)
    args = ap.parse_args()
    small, large = peak_rss(args.small), peak_rss(args.large)
    print(f"rss_small_mb={small:.0f} rss_large_mb={large:.0f} rss_growth={large / small:.2f}")


if __name__ == "__main__":
    main()
