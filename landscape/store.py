"""Appending a run's events (one writer per run), reading them back in order, verifying the chain.

Appends are buffered in memory, hash-chained as they arrive, and sent with `COPY` in one
transaction per durability point, together with the payloads they reference and the projection
rows they imply. A crash loses only the uncommitted tail, which the engine can redo.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from landscape import faults
from landscape.chain import GENESIS, header, link
from landscape.errors import ChainBroken, ConcurrentWriter, CorruptLog, DatabaseUnavailable
from landscape.projections import Projector
from statecharts.events import EventBase, encode_event
from statecharts.upcast import upcast

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EVENT_COLUMNS = (
    "run_id, seq, machine, entity_id, event_type, schema_version, recorded_at, payload, payload_hash, prev_hash, hash"
)


def _lock_key_sql() -> str:
    # A 64-bit key derived from the run id; collisions between run ids are negligible.
    return "hashtextextended(%s, 0)"


def _us_to_datetime(us: int) -> datetime:
    # Exact: a double holds any microsecond timestamp of this era to well under half a
    # microsecond, and fromtimestamp rounds to the nearest one (checked by a test).
    return datetime.fromtimestamp(us / 1_000_000, UTC)


def _datetime_to_us(dt: datetime) -> int:
    return (dt - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class _Batch:
    """One durability point's worth of work for the database."""

    events: list[tuple[Any, ...]]
    payloads: dict[str, bytes]
    projector: Projector | None


@dataclass(frozen=True, slots=True)
class StoredEvent:
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
        return _us_to_datetime(self.recorded_at_us)


class RunWriter:
    """The single writer of one run's events.

    The hash chain and the gap-free `seq` need exactly one writer per run, so the writer holds a
    session-level advisory lock keyed by the run id for as long as it lives. A second writer is
    refused at once, and because PostgreSQL drops the lock with the connection, a later `resume`
    can tell a dead writer (lock free) from a live one (lock held) without trusting pid files.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        run_id: str,
        *,
        project: bool = False,
        pipelined: bool = False,
        now_us: Any = None,
    ) -> None:
        self.run_id = run_id
        self._conn = conn
        self._project = project
        self._projector = Projector(run_id) if project else None
        # Pipelined: a commit is sent by one background thread while the engine goes on with
        # the next batch (psycopg waits on the network without the GIL). At most one commit is
        # in flight, so memory stays bounded and commits stay in order.
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="elspeth-commit") if pipelined else None
        self._in_flight: Future[None] | None = None
        self._now_us = now_us or (lambda: time.time_ns() // 1000)
        conn.execute(
            "SELECT set_config('application_name', %s, false)",
            (f"elspeth writer pid={os.getpid()}"[:63],),
        )
        got = conn.execute(f"SELECT pg_try_advisory_lock({_lock_key_sql()})", (run_id,)).fetchone()
        conn.commit()
        if not got or not got[0]:
            conn.close()
            raise ConcurrentWriter(
                f"run {run_id} is being written by another process (its writer still holds the run's lock)"
            )
        row = conn.execute(
            "SELECT seq, hash FROM events WHERE run_id = %s ORDER BY seq DESC LIMIT 1", (run_id,)
        ).fetchone()
        conn.commit()
        self.next_seq: int = 0 if row is None else row[0] + 1
        self.head: bytes = GENESIS if row is None else bytes(row[1])
        self._events: list[tuple[Any, ...]] = []
        self._payloads: dict[str, bytes] = {}

    @property
    def pending(self) -> int:
        return len(self._events)

    def append(self, machine: str, entity_id: str, event: EventBase) -> int:
        payload = encode_event(event)
        payload_hash = hashlib.sha256(payload).digest()
        seq = self.next_seq
        event_type = type(event).__name__
        version = event.SCHEMA_VERSION
        at_us = self._now_us()
        h = link(
            self.head,
            header(self.run_id, seq, machine, entity_id, event_type, version, at_us),
            payload_hash,
        )
        self._events.append(
            (
                self.run_id,
                seq,
                machine,
                entity_id,
                event_type,
                version,
                _us_to_datetime(at_us),
                payload,
                payload_hash,
                self.head,
                h,
            )
        )
        self.head = h
        self.next_seq = seq + 1
        if self._projector is not None:
            self._projector.feed(seq, entity_id, event, at_us)
        faults.reached("append")
        return seq

    def put_payload(self, hash_hex: str, data: bytes) -> None:
        self._payloads[hash_hex] = data

    def commit(self, *, wait: bool = True) -> None:
        """Send everything buffered in one transaction and commit it (a durability point).

        With a pipelined writer and `wait=False` the commit is handed to the sender thread and
        this returns at once; an error surfaces at the next commit. `wait=True` returns only
        when everything appended so far is committed."""
        if self._events or self._payloads:
            batch = _Batch(self._events, self._payloads, self._projector)
            self._events, self._payloads = [], {}
            self._projector = Projector(self.run_id) if self._project else None
            if self._sender is None:
                self._send(batch)
            else:
                self._wait()
                self._in_flight = self._sender.submit(self._send, batch)
        if wait:
            self._wait()

    def _wait(self) -> None:
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            future.result()

    def _send(self, batch: _Batch) -> None:
        conn = self._conn
        try:
            with conn.cursor() as cur:
                if batch.payloads:
                    # One statement, the hashes and bodies as two binary arrays: no staging
                    # table, and the batch's payloads are distinct already (a dict by hash).
                    cur.execute(
                        "INSERT INTO payloads (hash, data) SELECT * FROM unnest(%b::bytea[], %b::bytea[]) "
                        "ON CONFLICT (hash) DO NOTHING",
                        ([bytes.fromhex(h) for h in batch.payloads], list(batch.payloads.values())),
                    )
                if batch.events:
                    with cur.copy(f"COPY events ({_EVENT_COLUMNS}) FROM STDIN") as cp:
                        for r in batch.events:
                            cp.write_row(r)
                if batch.projector is not None:
                    batch.projector.apply(cur)
                faults.reached("commit")
            conn.commit()
        except psycopg.errors.UniqueViolation as e:
            conn.rollback()
            raise ConcurrentWriter(f"run {self.run_id} is being written by another process (seq already taken)") from e
        except psycopg.OperationalError as e:
            raise DatabaseUnavailable(
                f"lost the database while committing run {self.run_id}; "
                f"`elspeth resume {self.run_id}` continues it: {str(e).strip().splitlines()[0]}"
            ) from e
        except psycopg.Error as e:
            conn.rollback()
            raise CorruptLog(f"could not commit events of run {self.run_id}: {e}") from e
        faults.reached("committed")

    def close(self) -> None:
        """Release the run's lock. Uncommitted appends are dropped, as a crash would drop them;
        a commit already handed to the sender thread is finished first."""
        if self._sender is not None:
            with suppress(BaseException):  # its error, if any, was already reported or is moot
                self._wait()
            self._sender.shutdown(wait=True)
        try:
            self._conn.rollback()
            self._conn.execute(f"SELECT pg_advisory_unlock({_lock_key_sql()})", (self.run_id,))
            self._conn.commit()
        except psycopg.Error:
            pass  # the connection is gone, and the lock with it
        finally:
            self._conn.close()


def writer_alive(conn: psycopg.Connection[Any], run_id: str) -> bool:
    """True while some process holds the run's writer lock. Read from pg_locks rather than by
    trying the lock, so asking never gets in the way of a writer (or a resume) taking it. A
    64-bit advisory key is shown there as classid (high half) and objid (low half)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        f" AND ((classid::bigint << 32) | objid::bigint) = {_lock_key_sql()})",
        (run_id,),
    ).fetchone()
    conn.commit()
    return bool(row and row[0])


def read_events(
    conn: psycopg.Connection[Any], run_id: str, after_seq: int = -1, upto_seq: int | None = None
) -> Iterator[StoredEvent]:
    """A run's events in seq order, streamed with a server-side cursor."""
    sql = (
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE run_id = %s AND seq > %s"
        + (" AND seq <= %s" if upto_seq is not None else "")
        + " ORDER BY seq"
    )
    params: tuple[Any, ...] = (run_id, after_seq) if upto_seq is None else (run_id, after_seq, upto_seq)
    with conn.transaction(), conn.cursor(name=f"events_{os.getpid()}") as cur:
        cur.itersize = 5000
        cur.execute(sql, params)
        for r in cur:
            yield StoredEvent(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                _datetime_to_us(r[6]),
                bytes(r[7]),
                bytes(r[8]),
                bytes(r[9]),
                bytes(r[10]),
            )


@dataclass(frozen=True, slots=True)
class VerifyResult:
    events: int
    head: bytes


def verify_chain(conn: psycopg.Connection[Any], run_id: str) -> VerifyResult:
    """Check seq continuity, every payload hash and link, and every referenced row payload.

    Raises ChainBroken naming the first bad seq.
    """
    prev = GENESIS
    expected_seq = 0
    referenced: dict[str, int] = {}  # payload hash -> first seq that references it
    for e in read_events(conn, run_id):
        if e.seq != expected_seq:
            raise ChainBroken(run_id, expected_seq, f"seq {expected_seq} is missing")
        if hashlib.sha256(e.payload).digest() != e.payload_hash:
            raise ChainBroken(run_id, e.seq, "the event body does not match its payload hash")
        if e.prev_hash != prev:
            raise ChainBroken(run_id, e.seq, "prev_hash does not match the previous event's hash")
        hdr = header(run_id, e.seq, e.machine, e.entity_id, e.event_type, e.schema_version, e.recorded_at_us)
        if link(prev, hdr, e.payload_hash) != e.hash:
            raise ChainBroken(run_id, e.seq, "the event header or hash was altered")
        for hx in _row_hashes(e.payload):
            referenced.setdefault(hx, e.seq)
        prev = e.hash
        expected_seq += 1
    if expected_seq == 0:
        raise CorruptLog(f"run {run_id} has no events")
    _verify_payloads(conn, run_id, referenced)
    return VerifyResult(expected_seq, prev)


_HASH_KEYS = (b'"data_hash":"', b'"output_hash":"')


def _row_hashes(payload: bytes) -> Iterator[str]:
    # Only TokenCreated and StepCompleted reference row payloads; scanning the bytes avoids
    # decoding every event during verification.
    for key in _HASH_KEYS:
        i = payload.find(key)
        if i >= 0:
            start = i + len(key)
            yield payload[start : start + 64].decode()


def _verify_payloads(conn: psycopg.Connection[Any], run_id: str, referenced: dict[str, int]) -> None:
    hashes = list(referenced)
    bad: list[int] = []
    for i in range(0, len(hashes), 5000):
        chunk = [bytes.fromhex(h) for h in hashes[i : i + 5000]]
        rows = conn.execute("SELECT hash, data FROM payloads WHERE hash = ANY(%s)", (chunk,)).fetchall()
        for h, data in rows:
            if hashlib.sha256(bytes(data)).digest() != bytes(h):
                bad.append(referenced[bytes(h).hex()])
    conn.commit()
    if bad:
        raise ChainBroken(run_id, min(bad), "a row payload it references was altered")
