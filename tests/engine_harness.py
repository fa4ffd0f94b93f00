"""Running small pipelines in-process against the real store, for the engine's tests."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.clock import Clock, FakeClock
from engine.orchestrator import Outcome, Pipeline, build_pipeline, fold_run, resume_run, start_run
from engine.plugins.protocol import SourceItem
from engine.settings import load_settings
from landscape import faults
from landscape.db import Database
from landscape.fold import RunFold
from landscape.postgres import Sending


@dataclass
class Result:
    outcome: Outcome
    fold: RunFold  # folded back from the store, strictly (every transition re-checked)
    workdir: Path

    def rows(self, rel: str) -> list[dict[str, Any]]:
        path = self.workdir / rel
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
        assert isinstance(data, list)
        return data

    def outcomes(self) -> dict[str, int]:
        return {str(k): v for k, v in self.fold.outcomes.items()}


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def load_pipeline(workdir: Path, settings_yaml: str) -> Pipeline:
    (workdir / "out").mkdir(exist_ok=True)
    path = workdir / "settings.yaml"
    path.write_text(settings_yaml, encoding="utf-8")
    return build_pipeline(load_settings(path))


def run(
    db: Database,
    workdir: Path,
    settings_yaml: str,
    *,
    clock: Clock | None = None,
    source_items: list[SourceItem | None] | None = None,
    commit_every: int = 1000,
) -> Result:
    """Run a pipeline whose relative paths resolve in `workdir`; optionally replace its source
    with scripted items (None = the source is idle)."""
    old = os.getcwd()
    os.chdir(workdir)
    try:
        pipeline = load_pipeline(workdir, settings_yaml)
        if source_items is not None:
            pipeline.source = ScriptedSource(source_items)  # type: ignore[assignment]
        outcome = start_run(db, pipeline, clock=clock, commit_every=commit_every)
        pipeline.close()
    finally:
        os.chdir(old)
    return Result(outcome, fold_run(db, outcome.run_id, strict=True), workdir)


class ScriptedSource:
    kind = "source"
    on_validation_failure = "discard"

    def __init__(self, items: list[SourceItem | None], on_idle: Any = None) -> None:
        self.items = items
        self.on_idle = on_idle

    def fingerprint(self) -> str:
        return "scripted"

    def read(self, start: int = 0) -> Iterator[SourceItem | None]:
        for item in self.items:
            if item is None or item.index >= start:
                yield item

    def close(self) -> None:
        pass


def item(index: int, **row: Any) -> SourceItem:
    return SourceItem(index=index, row=dict(row), raw={k: str(v) for k, v in row.items()})


def assert_on_the_wiring(db: Database, run_id: str) -> None:
    """Every token's every event is where the run's settings send it (landscape/wiring.py): what a
    row's proof bundle is held to, so a genuine log must never be found off it."""
    from landscape.postgres import PostgresRecorder
    from landscape.wiring import Wirings, off_the_wiring

    wirings, events = Wirings(), []
    for e in PostgresRecorder(db).read_events(run_id):
        body = e.event
        if e.event_type in ("RunCreated", "RunResumed") and getattr(body, "settings", None) is not None:
            wirings.add(e.seq, body.settings)  # type: ignore[attr-defined]
        events.append((e, body))
    assert wirings.versions, "no settings event"
    off = off_the_wiring(events, wirings)
    assert not off, f"tokens off the wiring: {sorted(off)[:5]}"


def assert_invariants(fold: RunFold) -> None:
    """ARCHITECTURE §8, 1 and 6: nothing left open, every token ended exactly once."""
    assert fold.status == "completed", fold.status
    assert fold.tokens == {}, f"tokens not ended: {sorted(fold.tokens)[:5]}"
    assert fold.coalesces == {}, f"open coalesces: {sorted(fold.coalesces)[:5]}"
    assert fold.batches == {}, f"open batches: {sorted(fold.batches)[:5]}"
    assert fold.ended is not None and len(fold.ended) == fold.accounted()


class SourceClock(FakeClock):
    """Virtual time that is a function of the source position: record `i` is read at
    `time_of(i)` (`step` seconds apart, plus `gap` from record `gap_at` on: the source was idle
    that long before it). A crashed run and its resume therefore see the same time at the same
    record, and deadlines fire at the same point of the input as in an uninterrupted run."""

    def __init__(self, step: float = 0.125, *, gap_at: int | None = None, gap: float = 0.0) -> None:
        super().__init__()
        self.origin = self.t
        self.step = step
        self.gap_at = gap_at
        self.gap = gap

    def time_of(self, index: int) -> float:
        late = self.gap if self.gap_at is not None and index >= self.gap_at else 0.0
        return self.origin + self.step * max(index, 0) + late

    def resume_at(self, fold: RunFold) -> None:
        """Set the time to when the run's last committed record was read (nothing is read
        again before the source continues, so this is where an uninterrupted run stood)."""
        self.t = self.time_of(fold.source_records - 1)


class ClockedSource:
    """A source whose records move a `SourceClock` to their time as they are read."""

    kind = "source"

    def __init__(self, inner: Any, clock: SourceClock) -> None:
        self.inner = inner
        self.clock = clock

    def fingerprint(self) -> str:
        return str(self.inner.fingerprint())

    def read(self, start: int = 0) -> Iterator[SourceItem | None]:
        for it in self.inner.read(start):
            if it is not None:
                self.clock.t = max(self.clock.t, self.clock.time_of(it.index))
            yield it

    def close(self) -> None:
        self.inner.close()


class FaultCounts(Counter[str]):
    """How often each fault point was reached; `before_first_commit`: how many of those came
    before the run's first commit was durable (a crash there leaves no run to resume)."""

    before_first_commit: Counter[str]


@contextmanager
def counting_fault_points() -> Iterator[FaultCounts]:
    """Count how often each fault point (landscape/faults.py) is reached while the block runs,
    by wrapping `faults.reached` (which still does its own work)."""
    counts = FaultCounts()
    counts.before_first_commit = Counter()
    first: list[bool] = []
    lock = threading.Lock()  # `commit` and `committed` are reached on the writer's sender thread
    original = faults.reached

    def reached(point: str) -> None:
        with lock:
            if point == "committed" and not first:
                first.append(True)
                counts.before_first_commit = Counter(counts)  # this `committed` is already after it
            counts[point] += 1
        original(point)

    faults.reached = reached  # type: ignore[assignment]
    try:
        yield counts
    finally:
        faults.reached = original  # type: ignore[assignment]


def load(path: Path) -> Pipeline:
    """The pipeline of the settings file at `path` (resolving as `elspeth run` does)."""
    return build_pipeline(load_settings(path))


@contextmanager
def workdir(name: str, settings: str, inputs: Callable[[Path], None] = lambda path: None) -> Iterator[Path]:
    """A fresh folder holding `settings.yaml`, an empty `out/` and what `inputs` writes there, the
    current directory meanwhile (relative paths in the settings resolve there); removed after."""
    path = Path(tempfile.mkdtemp(prefix=f"elspeth-{name}-"))
    inputs(path)
    (path / "out").mkdir()
    (path / "settings.yaml").write_text(settings, encoding="utf-8")
    old = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(old)
        shutil.rmtree(path, ignore_errors=True)


def crashed_run(
    db: Database, settings: Path, at: str, *, name: str, commit_every: int = 1, sending: Sending = "thread"
) -> str:
    """The id of a run of `settings` crashed at fault point `at` (`landscape.faults`). With
    `sending="inline"` its commits are sent at once: a crash just after one leaves the sinks where
    it recorded them."""
    run_id = f"run-{name}-{os.urandom(6).hex()}"
    faults.configure(at, raise_instead=True)
    try:
        with pytest.raises(faults.SimulatedCrash):
            start_run(db, load(settings), commit_every=commit_every, run_id=run_id, sending=sending)
    finally:
        faults.configure("")
    return run_id


def crashed_resume(db: Database, run_id: str, at: str, **resume: Any) -> None:
    """A resume of `run_id` (with `resume_run`'s other arguments) crashed at fault point `at`."""
    faults.configure(at, raise_instead=True)
    try:
        with pytest.raises(faults.SimulatedCrash):
            resume_run(db, run_id, load, **resume)
    finally:
        faults.configure("")
