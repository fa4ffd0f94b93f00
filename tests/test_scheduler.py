"""The deadline heap: bounded by the entities still open, and firing exactly what an uncompacted
heap would, in the same order."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.processor
from engine.scheduler import Deadlines
from landscape.db import Database
from tests.engine_harness import assert_invariants, run, write_csv


class _Open:
    """Which entities are open, as the fold would answer: opened once, resolved once, never
    reopened."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def __call__(self, kind: str, entity: str) -> bool:
        return entity in self.ids


class _Uncompacted:
    """The heap as it was before compaction: entries leave only from the top."""

    def __init__(self, is_open: _Open) -> None:
        self.heap: list[tuple[float, int, str, str]] = []
        self.added = 0
        self.is_open = is_open

    def schedule(self, when: float, kind: str, entity: str) -> None:
        self.added += 1
        heapq.heappush(self.heap, (when, self.added, kind, entity))

    def next(self) -> float | None:
        while self.heap:
            when, _, kind, entity = self.heap[0]
            if self.is_open(kind, entity):
                return when
            heapq.heappop(self.heap)
        return None

    def due(self, now: float) -> Iterator[tuple[str, str]]:
        while self.heap and self.heap[0][0] <= now:
            _, _, kind, entity = heapq.heappop(self.heap)
            if self.is_open(kind, entity):
                yield kind, entity


class _Eager(Deadlines):
    """Compacts from two entries on, so that short sequences of steps compact often."""

    compact_floor = 2


def test_entries_of_resolved_entities_do_not_accumulate() -> None:
    """A long timeout and entities that resolve long before it (each row's coalesce merging as
    soon as its branches arrive): the heap must not keep one entry per row until the hour
    passes."""
    is_open = _Open()
    d = Deadlines(is_open)
    for i in range(10_000):
        entity = f"join:r{i}"
        is_open.ids.add(entity)
        d.schedule(3600.0 + i, "coalesce", entity)
        if i >= 3:  # three stay open, all the others merge right away
            is_open.ids.discard(f"join:r{i - 3}")
        assert len(d._heap) <= max(Deadlines.compact_floor, 2 * len(is_open.ids))
    assert d.next() == 3600.0 + 9_997


def test_after_a_peak_of_open_entities_the_heap_shrinks_back() -> None:
    """Thousands of batches open at once, then all but a few resolve: the heap never holds more
    than twice the most that were open, and once the run goes on it falls back to the few."""
    is_open = _Open()
    d = Deadlines(is_open)
    peak = 0
    for i in range(5_000):
        is_open.ids.add(f"b#{i}")
        d.schedule(float(i % 100), "batch", f"b#{i}")
        peak = max(peak, len(is_open.ids))
    is_open.ids = {f"b#{i}" for i in range(10)}
    for i in range(5_000, 20_000):
        is_open.ids.add(f"b#{i}")
        d.schedule(float(i % 100), "batch", f"b#{i}")
        is_open.ids.discard(f"b#{i}")  # resolves at once
        assert len(d._heap) <= 2 * peak
    assert len(d._heap) <= max(Deadlines.compact_floor, 2 * 10)


_steps = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.integers(0, 50)),
        st.tuples(st.just("resolve"), st.integers(0, 10_000)),
        st.tuples(st.just("due"), st.integers(0, 50)),
        st.tuples(st.just("next"), st.just(0)),
    ),
    max_size=400,
)


@settings(max_examples=200, deadline=None)
@given(_steps)
def test_compaction_never_changes_what_fires_or_when(steps: list[tuple[str, int]]) -> None:
    """Deadlines and their firings are in the event log, and resume replays them: the compacted
    heap must fire the same entities in the same order at the same readings of the clock as the
    heap that kept every entry."""
    is_open = _Open()
    compacted, plain = _Eager(is_open), _Uncompacted(is_open)
    opened = 0
    now = 0
    for op, n in steps:
        if op == "schedule":
            entity = f"e{opened}"
            opened += 1
            is_open.ids.add(entity)
            # many deadlines tie, so the insertion order has to break ties the same way
            compacted.schedule(float(now + n), "coalesce", entity)
            plain.schedule(float(now + n), "coalesce", entity)
        elif op == "resolve" and is_open.ids:
            is_open.ids.discard(sorted(is_open.ids)[n % len(is_open.ids)])
        elif op == "due":
            now += n
            fired = list(compacted.due(float(now)))
            assert fired == list(plain.due(float(now)))
            for _, entity in fired:
                is_open.ids.discard(entity)
        else:
            assert compacted.next() == plain.next()
    assert compacted.next() == plain.next()
    assert list(compacted.due(float("inf"))) == list(plain.due(float("inf")))


def test_compaction_leaves_a_heap_that_pops_in_order() -> None:
    """Dropping an entry from the middle of the heap's list breaks its order below that point;
    here the entry that resolves (deadline 2) sits above 3 and 4, which must still fire before
    10."""
    is_open = _Open()
    d = _Eager(is_open)
    for when in (1, 2, 10, 3, 4, 11, 12):
        is_open.ids.add(f"e{when}")
        d.schedule(float(when), "coalesce", f"e{when}")
    is_open.ids.discard("e2")
    is_open.ids.add("e13")
    d.schedule(13.0, "coalesce", "e13")  # the eighth entry: twice the last compaction's, so it compacts
    assert len(d._heap) == 7
    assert [e for _, e in d.due(100.0)] == ["e1", "e3", "e4", "e10", "e11", "e12", "e13"]


def test_scheduling_while_firing_keeps_the_order() -> None:
    """What handling one deadline schedules (a batch flushed on timeout opening the next one
    downstream) may compact the heap under the loop that is popping it."""
    is_open = _Open()
    d, plain = _Eager(is_open), _Uncompacted(is_open)
    for i in range(200):
        is_open.ids.add(f"e{i}")
        d.schedule(float(i % 7), "batch", f"e{i}")
        plain.schedule(float(i % 7), "batch", f"e{i}")

    def drive(h: Deadlines | _Uncompacted) -> list[str]:
        ids = set(is_open.ids)
        is_open.ids = ids
        fired = []
        for _, entity in h.due(5.0):
            fired.append(entity)
            ids.discard(entity)
            k = len(fired)
            ids.add(f"n{k}")
            h.schedule(float(k % 9), "batch", f"n{k}")
        return fired

    start = set(is_open.ids)
    got = drive(d)
    is_open.ids = start
    assert got == drive(plain)


SETTINGS = """
source:
  plugin: csv
  on_success: raw
  options: {path: in.csv, schema: {mode: fixed, fields: ['id: int', 'v: int']}, on_validation_failure: discard}
gates:
- name: split
  input: raw
  condition: 'True'
  routes: {'true': fork}
  fork_to: [a, b]
coalesce:
- name: join
  branches: {a: a, b: b}
  policy: require_all
  merge: union
  on_success: out
  timeout_seconds: 3600
sinks:
  out:
    plugin: json
    options: {path: out/out.jsonl, format: jsonl}
"""


def test_a_run_of_quickly_merging_coalesces_keeps_the_heap_small(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every row's coalesce merges as soon as both branches arrive, an hour before its deadline:
    the run's heap must stay at the few coalesces open at once, not grow with the rows."""
    sizes: list[int] = []

    class Watched(Deadlines):
        def schedule(self, when: float, kind: str, entity: str) -> None:
            super().schedule(when, kind, entity)
            sizes.append(len(self._heap))

    monkeypatch.setattr(engine.processor, "Deadlines", Watched)
    rows = 3 * Deadlines.compact_floor
    write_csv(tmp_path / "in.csv", ["id", "v"], [[i, i] for i in range(rows)])
    r = run(db, tmp_path, SETTINGS)
    assert_invariants(r.fold)
    assert r.outcomes()["completed"] == rows
    assert len(sizes) == rows
    assert max(sizes) <= Deadlines.compact_floor
