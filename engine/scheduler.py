"""Deadlines of coalesces and batches, in one heap, fired by the run loop even while the source
idles (the loop sleeps until the next one)."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

IsOpen = Callable[[str, str], bool]


class Deadlines:
    # Below this many entries the heap is never compacted: scanning a few dozen tuples is not
    # worth doing, and it keeps a run with a handful of open entities from compacting at every
    # schedule.
    compact_floor = 64

    def __init__(self, is_open: IsOpen) -> None:
        # (when, insertion order, kind, entity): the order breaks ties so heap entries never
        # compare their kind or entity.
        self._heap: list[tuple[float, int, str, str]] = []
        self._added = 0
        self._is_open = is_open
        self._compact_at = self.compact_floor

    def schedule(self, when: float, kind: str, entity: str) -> None:
        self._added += 1
        heapq.heappush(self._heap, (when, self._added, kind, entity))
        if len(self._heap) >= self._compact_at:
            self._compact()

    def _compact(self) -> None:
        """Drop the entries of entities already resolved. Nothing tells the heap when a coalesce
        merges or a batch flushes, so those entries would otherwise stay until their deadline
        passes: with an hour's timeout, one entry per row of the last hour. Resolution is final
        (a coalesce or batch id is never reopened), so a dropped entry could never have fired,
        and the surviving entries keep their (when, order) keys: what fires, and in which order,
        is unchanged. Compacting again only once the heap has doubled past what survived keeps
        the scans linear in the number of schedules, and the heap under twice the entries open
        at the last compaction (or the floor)."""
        is_open = self._is_open
        self._heap = [e for e in self._heap if is_open(e[2], e[3])]
        heapq.heapify(self._heap)
        self._compact_at = max(self.compact_floor, 2 * len(self._heap))

    def next(self) -> float | None:
        """The earliest deadline of an entity still open (resolved ones are dropped)."""
        while self._heap:
            when, _, kind, entity = self._heap[0]
            if self._is_open(kind, entity):
                return when
            heapq.heappop(self._heap)
        return None

    def due(self, now: float) -> Iterator[tuple[str, str]]:
        """(kind, entity) of every open entity whose deadline is at or before `now`, earliest
        first (one reading of the clock, so what handling one schedules waits its turn)."""
        while self._heap and self._heap[0][0] <= now:
            _, _, kind, entity = heapq.heappop(self._heap)
            if self._is_open(kind, entity):
                yield kind, entity
