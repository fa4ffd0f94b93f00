"""The example pipelines, on generated input of any size, for the benchmarks; and the baseline
they are compared with: a plain csv read-and-write of the same input in the same process."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("linear", "fork_coalesce", "aggregation")
HEADER = ["id", "customer_name", "amount", "category", "region", "notes"]
NOTES = [
    "Renewal of the annual subscription for the whole team",
    "New account referred by an existing customer",
    "Contains password for the vendor portal",
    "Confidential pricing, do not share",
    "Standard order",
]


def generate(path: Path, rows: int, seed: int = 42) -> None:
    """`rows` rows of the examples' schema (a few notes hold the words the filters block)."""
    rnd = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i in range(rows):
            w.writerow([i, f"Customer {i}", rnd.randint(10, 20_000), rnd.choice("abc"), rnd.choice("NESW"),
                        rnd.choice(NOTES)])  # fmt: skip


def prepare(name: str, rows: int, work: Path, *, input_rows: Path | None = None) -> Path:
    """Settings for example `name` in `work`, reading `rows` generated rows (or `input_rows`),
    writing under `work/output`. Returns the settings file."""
    if name not in PIPELINES:
        raise SystemExit(f"unknown pipeline {name!r}: one of {', '.join(PIPELINES)}")
    text = (ROOT / "examples" / name / "settings.yaml").read_text(encoding="utf-8")
    text = text.replace(f"examples/{name}/", "")  # the example's paths, relative to `work`
    (work / "output").mkdir(parents=True, exist_ok=True)
    source = work / "input.csv"
    if input_rows is not None:
        source.write_bytes(input_rows.read_bytes())
    elif not source.exists():
        generate(source, rows)
    settings = work / "settings.yaml"
    settings.write_text(text, encoding="utf-8")
    return settings


def baseline(source: Path, target: Path) -> int:
    """Read every row as a dict and write it out again: the least any csv pipeline does."""
    n = 0
    with source.open(newline="", encoding="utf-8") as f, target.open("w", newline="", encoding="utf-8") as out:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames or HEADER)
        writer.writeheader()
        for row in reader:
            row["amount"] = str(int(row["amount"]))  # as a typed source parses it
            writer.writerow(row)
            n += 1
    return n


def busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores) so far; None without /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: the busy ones, steal aside (not ours)
    busy = sum(fields[:3]) + sum(fields[5:7])
    return busy / os.sysconf("SC_CLK_TCK")


def cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def elspeth_command() -> list[str]:
    """The `elspeth` of this interpreter's environment."""
    import sys

    found = Path(sys.executable).with_name("elspeth")
    return [str(found)] if found.exists() else [sys.executable, "-m", "engine.cli.main"]


def run_elspeth(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Run `elspeth ARGS` as a user would; (wall seconds, that process's peak RSS in MB, stdout).
    The peak is the child's own (wait4), not the largest of all children so far."""
    import os
    import subprocess
    import sys
    import tempfile
    import time

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen([*elspeth_command(), *args], cwd=cwd, env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        sys.exit(f"elspeth {' '.join(args)} failed ({proc.returncode}): {stderr.strip() or stdout.strip()}")
    return seconds, usage.ru_maxrss / 1024, stdout
