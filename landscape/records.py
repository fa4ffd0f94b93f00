"""What the store holds, as plain values: no driver, no I/O, so the offline verifier can use them."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import msgspec

from statecharts.events import EventBase
from statecharts.upcast import upcast

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us_to_datetime(us: int) -> datetime:
    """Exact for every microsecond timestamp (integer arithmetic, no float in between)."""
    return EPOCH + timedelta(microseconds=us)


def datetime_to_us(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)


class StoredEvent(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One event exactly as stored: the body's bytes are those that were hashed.

    A Struct, not a dataclass: a replay makes one per event, and a Struct is built in C from
    positional fields (a frozen dataclass's __init__ was a fifth of reading the log). Its fields
    are strings, ints and bytes, which cannot form cycles, so the garbage collector skips it.
    Encoded (only a verifier does: the pages its chain half is sent, its digest of a read), it is
    an array of its fields, no names."""

    run_id: str
    seq: int
    machine: str
    entity_id: str
    event_type: str
    schema_version: int
    recorded_at_us: int
    payload: bytes
    payload_hash: bytes
    prev_hash: bytes
    hash: bytes

    @property
    def event(self) -> EventBase:
        return upcast(self.event_type, self.schema_version, self.payload)

    @property
    def recorded_at(self) -> datetime:
        return us_to_datetime(self.recorded_at_us)


@dataclass(frozen=True, slots=True)
class GlobalEvent:
    """An event read across runs. `position` is (writing transaction, global_position): pass the
    last one read to `Recorder.read_since` to continue after it."""

    position: tuple[int, int]
    event: StoredEvent


class Payload(NamedTuple):
    """A row's bytes as stored, with the salt of its commitment (see `landscape.canonical`)."""

    salt: bytes
    data: bytes


class Erasure(msgspec.Struct, frozen=True, kw_only=True):
    """The record of one erased payload (see `landscape.erasure`)."""

    hash: str
    run_id: str | None
    row_index: int | None
    kind: str  # retention | request
    reason: str
    erased_at: datetime
    erased_by: str
    seal_id: int | None = None  # the signed note over it (`landscape.seal`); None before migration 0012

    def fields(self) -> tuple[str, str | None, int | None, str, str, str, str]:
        """Its fields as an export writes them: the time in ISO 8601, in UTC (whatever time zone
        the database session reads it in)."""
        return (self.hash, self.run_id, self.row_index, self.kind, self.reason, _utc_iso(self.erased_at),
                self.erased_by)  # fmt: skip

    def digest(self) -> bytes:
        return record_digest(self.fields())

    def describe(self) -> str:
        return f"erased on {self.erased_at:%Y-%m-%d} ({self.reason})"


class Sealed(NamedTuple):
    """A seal as the store holds it (`landscape.seal`): its run, its signed note, and the digest
    of each record that names it."""

    run_id: str
    note: str
    digests: list[bytes]


@functools.lru_cache(maxsize=256)
def _utc_iso(at: datetime) -> str:
    """`at` in ISO 8601, in UTC. Remembered: a purge stamps every record of its transaction with
    the same time, and a replay of a run purged by retention makes hundreds of thousands of
    digests (equal instants in any zone are equal datetimes, and spell the same in UTC)."""
    return at.astimezone(UTC).isoformat()


def record_digest(fields: tuple[object, ...]) -> bytes:
    """SHA-256 of an erasure record's fields (`Erasure.fields`) as one JSON array: what an export's
    `erased` line carries (in hex) and a seal's tree has as a leaf."""
    return hashlib.sha256(msgspec.json.encode(fields)).digest()
