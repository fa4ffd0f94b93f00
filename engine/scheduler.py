"""Deadlines of coalesces and batches, in one heap, fired by the run loop even while the source
idles (the loop sleeps until the next one)."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

IsOpen = Callable[[str, str], bool]


class Deadlines:
    def __init__(self, is_open: IsOpen) -> None:
        # (when, insertion order, kind, entity): the order breaks ties so heap entries never
        # compare their kind or entity.
        self._heap: list[tuple[float, int, str, str]] = []
        self._added = 0
        self._is_open = is_open

    def schedule(self, when: float, kind: str, entity: str) -> None:
        self._added += 1
        heapq.heappush(self._heap, (when, self._added, kind, entity))

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
