"""The one door to the audit store: what the engine, the CLI and the tools may ask of it.

`Recorder` is the interface; `landscape.postgres.PostgresRecorder` is its implementation (and,
with `landscape/db.py`, the only module that talks to the driver). Reading for people (lists,
details, lineage) is in `landscape.queries`; verifying is in `landscape.verify`, which needs no
database at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from landscape.notary import Witnessed
from landscape.records import Erasure, GlobalEvent, Payload, Sealed, StoredEvent
from statecharts.events import EventBase


class RunWriter(Protocol):
    """The single writer of one run's events (see `PostgresRecorder.open_writer`)."""

    run_id: str
    next_seq: int

    @property
    def pending_bytes(self) -> int: ...

    def append(self, machine: str, entity_id: str, event: EventBase) -> int: ...

    def put_payload(self, hash_hex: str, payload: Payload) -> None: ...

    def commit(self, *, wait: bool = True) -> None: ...

    def still_writer(self) -> None: ...

    def generation(self) -> int: ...

    def hold(self, place: str, *, shared: bool = False) -> str | None: ...

    def close(self) -> None: ...


class Recorder(Protocol):
    def open_writer(self, run_id: str) -> RunWriter: ...

    def read_events(self, run_id: str, after_seq: int = -1, upto_seq: int | None = None) -> Iterator[StoredEvent]: ...

    def read_since(self, position: tuple[int, int], limit: int = 10_000) -> list[GlobalEvent]: ...

    def payloads(self, run_id: str, hashes: Iterable[str]) -> dict[str, Payload]: ...

    def erasures(self, run_id: str, hashes: Iterable[str]) -> dict[str, Erasure]: ...

    def erasure_seals(self, ids: Iterable[int]) -> dict[int, Sealed]: ...

    def checkpoints(self, run_id: str) -> list[Witnessed]: ...

    def store_id(self) -> str: ...

    def writer_alive(self, run_id: str) -> bool: ...

    def run_exists(self, run_id: str) -> bool: ...

    def run_ids(self) -> list[str]: ...
