"""The recorder on PostgreSQL: appending a run's events (one writer per run), reading them back.

Appends are buffered in memory, hash-chained as they arrive, and sent with `COPY` in one
transaction per durability point, together with the payloads they reference; in the same
transaction the server projects the new events into the analyst tables
(`landscape.projection_sql`, `landscape.commits`). A crash loses only the uncommitted tail, which the
engine can redo. Driver errors become the landscape's own through `db.driver_errors`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from itertools import starmap
from typing import Any, Literal, NamedTuple

import psycopg
from psycopg import sql
from psycopg.types.numeric import Int8BinaryLoader

from landscape import commits, faults
from landscape.canonical import is_name
from landscape.commits import EVENT_COLUMNS, Batch, event_kind
from landscape.db import Database, driver_errors, read_as_written
from landscape.errors import StoreError
from landscape.merkle import MerkleAccumulator
from landscape.notary import Notary, Witnessed
from landscape.records import Erasure, GlobalEvent, Payload, Sealed, StoredEvent, us_to_datetime
from landscape.sender_process import SenderProcess
from statecharts.events import EventBase, RunCreated, encode_event
from statecharts.machines import RUN_FINAL, RunState

# What the sending side makes of an appended event besides its body and entity id: its other
# COPY fields (about 100 bytes) and its chain header (about 80). For `pending_bytes`: what a
# batch weighs where it is sent.
_EVENT_BYTES = 180
# A payload's COPY fields besides its data (about 70 bytes with a run id) and its salt.
_PAYLOAD_BYTES = 90
# A commit's signed checkpoint (tree size, root, note; None without a notary) and its time.
Checkpointed = tuple[commits.SignedCheckpoint | None, datetime]
# How a writer's commits reach the database: on the engine's thread, on a thread of their own,
# or from a child process (see `landscape.sender_process`).
Sending = Literal["inline", "thread", "process"]


# What a reader selects: `StoredEvent`'s fields in its order, so that a row (read in binary: bytea
# arrives as bytes, integers as ints) is the Struct's positional arguments as it is. The time is
# wanted as integer microseconds since the Unix epoch, and is read so without arithmetic per event
# here or on the server: a timestamptz travels in binary as an int8 of microseconds since
# 2000-01-01, so the time 30 years later (an interval of seconds only: one integer addition) is
# read by the int8 loader (`_read_us`) as the microseconds since 1970. (A numeric computed by
# `extract(epoch …)`, as before, was a fifth of the server's work in a read: 0.2 s per 1,000,000
# events.) A time in timestamptz's last 30 years, which only an edited store holds, is read as
# 'infinity' (the largest int8), whose event then fails its hash, instead of failing the read.
_READ_COLUMNS = EVENT_COLUMNS.replace(
    "recorded_at",
    "CASE WHEN recorded_at < '290000-01-01' THEN recorded_at + interval '946684800 seconds' ELSE 'infinity' END",
)
# The types of `_READ_COLUMNS` (`read_as_written`), and of a payload's hash, salt and data.
_EVENT_TYPES = ("text", "int8", "text", "text", "text", "int2", "timestamptz", "bytea", "bytea", "bytea", "bytea")
_PAYLOAD_TYPES = ("bytea", "bytea", "bytea")
# Rows per page of a streamed read: large enough that round trips do not count, small enough
# that a page stays in the CPU's cache while it is verified.
_PAGE = 5000
# Asked for more payloads than this, a reader scans the run's payloads instead of probing each.
_SCAN_AT = 20_000
# Payload names per statement of `probe_payloads`: measured over 468,236 of them, 10,000 a
# statement took 3.4 s, 100,000 1.6 s (a scan of them all: 0.5 s).
_PROBE = 100_000
# The payloads of a run that an erasure record of the run (or one without a run: retention of
# payloads kept before 0007) says were erased, yet are in the store. The writer may insert
# payloads, so it can put erased ones back (from an older export); the record, which only the
# owner writes, wins: the readers below skip them, so explain, replay, export, resume and purge
# all take them as erased. Found from the run's records, each looked up by the payloads' key:
# nothing when the run has none. (A filter in the scan itself, an index probe of `erasures` per
# payload, made a run's scan four times slower.)
_ERASED_AMONG = "SELECT DISTINCT hash FROM erasures WHERE hash = ANY(%b) AND (run_id = %s OR run_id IS NULL)"
# An erasure record's columns as `erasures` reads them (`id` ranks records of the same payload).
_ERASURE_COLUMNS = "id, hash, run_id, row_index, kind, reason, erased_at, erased_by, seal_id"
_REINSTATED = (
    "SELECT DISTINCT e.hash FROM erasures e WHERE (e.run_id = %s OR e.run_id IS NULL) "
    "AND EXISTS (SELECT 1 FROM payloads p WHERE p.hash = e.hash AND p.run_id IN (%s, ''))"
)
# `flushed_since`: a run's last event (by the run's key, newest first), then every flush of the
# other runs whose event came after it by either measure: a later writing transaction (`tx_id`),
# or a later position (`global_position`). Either alone misses a case: a transaction that took
# its positions before the run's last event can commit after it, and `tx_id` means nothing across
# clusters (a store moved with pg_dump keeps its positions, not its transaction ids, so a run
# written after the move can have lower ids than one written before). Driven by the flushes
# (`artifacts`, one row per SinkFlushed), each event looked up by key: the work grows with the
# store's flushes, not its events (OFFSET 0 keeps the planner from joining whole tables).
_LAST_EVENT = "SELECT tx_id, global_position FROM events WHERE run_id = %s ORDER BY seq DESC LIMIT 1"
# Its last flush (a SinkFlushed, whose seq the artifacts projection holds): where its files stopped.
_LAST_FLUSH = (
    "SELECT tx_id, global_position FROM events WHERE run_id = %s "
    "AND seq = (SELECT max(seq) FROM artifacts WHERE run_id = %s)"
)
# The folders run `{run}` ran in, where its relative sink locations resolve: its RunCreated's, and
# that of each resume that ran elsewhere (RunResumed.working_dir). An index holds just those
# events (migration 0014): a run has one, and one per resume. The folder the run ran in last is
# where it goes on (`working_dir`); the guards of its files look in every one, since a folder it
# left may be back (renamed back, restored) with its rows in it.
_FOLDER = "convert_from(c.payload, 'UTF8')::json ->> 'working_dir'"
_FOLDER_EVENTS = "c.run_id = {run} AND c.event_type IN ('RunCreated', 'RunResumed') AND " + _FOLDER + " IS NOT NULL"
_LAST_FOLDER = f"SELECT {_FOLDER} FROM events c WHERE {_FOLDER_EVENTS} ORDER BY c.seq DESC LIMIT 1"
_EVERY_FOLDER = f"LEFT JOIN LATERAL (SELECT DISTINCT {_FOLDER} AS dir FROM events c WHERE {_FOLDER_EVENTS}) w ON true"
_FLUSHED_AFTER = (
    "SELECT f.run_id, f.location, coalesce(w.dir, '') "
    "FROM (SELECT DISTINCT a.run_id, a.location FROM artifacts a CROSS JOIN LATERAL ("
    "    SELECT e.tx_id, e.global_position FROM events e WHERE e.run_id = a.run_id AND e.seq = a.seq OFFSET 0"
    "  ) e WHERE a.run_id <> %(run)s AND a.rows > 0 AND (e.tx_id > %(tx)s OR e.global_position > %(pos)s)) f "
    + _EVERY_FOLDER.format(run="f.run_id")
)
# `read_since`: the commits of finished transactions after a reader's position, from
# `event_commits` (a row per commit; a transaction that wrote two runs has two) in transaction
# order, each commit's events found by the events' key (a lateral join: never a scan), ordered by
# (tx_id, global_position) a transaction at a time: the commits arrive in tx_id order, so an
# incremental sort orders each transaction's events (from one commit or several) and the limit
# stops the reading once the page is full. Events are counted as read, not as the rows say: a
# commit row whose events are not there (an archived partition's, or one inserted by hand) costs a
# probe of the key and gives none. A page that begins inside a transaction reads that
# transaction's commits from their start (a commit holds at most a durability point's events).
# A commit's range is read only when the events at both of its ends are the commit's own: a
# writer's row naming another run's events over any range (its tx_id is its own, its range is
# not checked) made every page that reached it scan that run's events one by one, as the
# events' tx_id is not in their key (a review: 50 such rows over a run of 200,000 events, a
# second a page). Two probes of the key, evaluated once per commit before the range is read.
_ENDS = "EXISTS (SELECT 1 FROM public.events x WHERE x.run_id = c.run_id AND x.seq = c.{end} AND x.tx_id = c.tx_id)"
_SINCE = (
    "SELECT c.tx_id, e.* FROM (SELECT tx_id, run_id, first_seq, last_seq FROM public.event_commits "
    "WHERE tx_id >= %(tx)s AND tx_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint ORDER BY tx_id) c "
    f"CROSS JOIN LATERAL (SELECT global_position, {_READ_COLUMNS} FROM public.events e WHERE e.run_id = c.run_id "
    "AND e.seq BETWEEN c.first_seq AND c.last_seq AND e.tx_id = c.tx_id AND (e.tx_id, e.global_position) > (%(tx)s, %(pos)s) "
    f"AND {_ENDS.format(end='first_seq')} AND {_ENDS.format(end='last_seq')} "
    "OFFSET 0) e ORDER BY c.tx_id, e.global_position LIMIT %(limit)s"
)
# The commits in their key's order, never sorted whole: planned with sorts allowed, every commit
# row after the position was read and sorted at each page. A transaction's events are sorted in
# memory (a commit's, up to 64 MB of them, would spill to disk).
_SINCE_PLAN = ("SET LOCAL enable_sort = off", "SET LOCAL work_mem = '64MB'")
# `open_positions`: the runs that can still be resumed (not completed nor abandoned; one row each
# in `runs`), and per sink of each its last flush (a run's flushes, by its key), which is where a
# resume would continue the sink; once per folder the run ran in.
_POSITIONS = (
    "SELECT r.run_id, r.status, f.location, coalesce(w.dir, ''), f.position, f.sha256 "
    "FROM runs r CROSS JOIN LATERAL ("
    "  SELECT DISTINCT ON (a.sink) a.location, a.position, a.sha256 FROM artifacts a "
    "  WHERE a.run_id = r.run_id ORDER BY a.sink, a.seq DESC"
    f") f {_EVERY_FOLDER.format(run='r.run_id')} "
)
_OPEN_POSITIONS = _POSITIONS + f"WHERE r.status NOT IN ({', '.join(repr(str(s)) for s in sorted(RUN_FINAL))})"
_ABANDONED_POSITIONS = _POSITIONS + f"WHERE r.status = '{RunState.ABANDONED}'"


class OpenPosition(NamedTuple):
    """Where a resume of a run that is not completed would continue one of its sinks."""

    run_id: str
    status: str  # as `runs` has it: a run `running` whose writer is gone crashed
    location: str  # as the run's settings spell it
    working_dir: str  # where `location` resolves ('' when the log does not say)
    position: int  # durable bytes (rows of a table)
    sha256: str | None  # of a file's first `position` bytes (None: not recorded)


class PgRunWriter:
    """The single writer of one run's events.

    The hash chain and the gap-free `seq` need exactly one writer per run, so the writer holds
    session-level advisory locks keyed by the run id for as long as it lives (`landscape.commits`:
    the writer's and the sender's). A second writer is refused at once, and because PostgreSQL
    drops the locks with the connections, a later `resume` can tell a dead writer (locks free)
    from a live one (a lock held) without trusting pid files.

    `sending` says where commits are sent from (`Sending`). On a thread or from a child process,
    a commit is sent while the engine goes on with the next batch; at most one is in flight while
    the engine works (a child is handed the next just before the answer to that one is read), so
    memory stays bounded and commits stay in order. Sending from a child, this process holds the
    writer's lock and the child the sender's. After a failed commit nothing more is committed;
    after a failure on this side with a batch in the child (its witness line could not be
    written), the child is ended as in a crash.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        run_id: str,
        *,
        sending: Sending = "inline",
        now_us: Callable[[], int] | None = None,
        notary: Notary | None = None,
        verified: tuple[MerkleAccumulator, bytes] | None = None,
    ) -> None:
        self.run_id = run_id
        self._notary = notary
        self._now_us = now_us or (lambda: time.time_ns() // 1000)
        # Per event, the clock itself when it is the system's (a call to a lambda was 2 % of the
        # engine's time): the events' times are in nanoseconds until their batch is made.
        self._now_ns: Callable[[], int] = time.time_ns if now_us is None else (lambda: now_us() * 1000)
        self._conn: psycopg.Connection[Any] | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._process: SenderProcess | None = None
        self._in_flight: Future[None] | None = None  # on the thread
        # The times of the batches handed to the process, not yet answered (at most two).
        self._handed: deque[datetime] = deque()
        self._failed: BaseException | None = None  # a commit that failed: nothing more is committed
        # The log's end as the sending side holds it (on a thread or inline; a child process
        # holds its own): each commit chains its events on and replaces it.
        self._chain: commits.Chain | None = None
        if sending == "process" and threading.active_count() > 1:
            # A fork copies every lock as it is that moment, held ones too, and the child could
            # wait forever on one that another thread held: with other threads about, no fork.
            sending = "thread"
        if sending == "process":
            self._conn = connect()
            commits.lock(self._conn, run_id, (commits.WRITER_LOCK,))
            try:
                self._process = SenderProcess(connect, run_id, verified, notary)
            except BaseException:
                commits.release(self._conn, run_id, (commits.WRITER_LOCK,))
                raise
            self.next_seq: int = self._process.size
        else:
            self._conn = connect()
            tree, head = commits.open_log(self._conn, run_id, verified)
            self._chain = commits.Chain(run_id, tree, head, notary)
            self.next_seq = tree.size
            if sending == "thread":
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="elspeth-commit")
        # The events appended since the last commit, as the engine made them: the sending side
        # encodes them for COPY and chains them (`commits.Batch`, `commits.Chain.seal`).
        self._kinds: list[str] = []
        self._entities: list[str] = []
        self._times: list[int] = []  # (nanoseconds)
        self._bodies: list[bytes] = []
        self._payloads: list[commits.Payload] = []
        self._named: set[str] = set()  # the commitments of `_payloads`
        self._kind_of: dict[tuple[str, type[EventBase]], str] = {}  # -> `commits.event_kind`
        self._buffered = 0  # bytes of the events and payloads buffered

    @property
    def pending_bytes(self) -> int:
        """The bytes of events and payloads appended since the last commit."""
        return self._buffered

    def append(self, machine: str, entity_id: str, event: EventBase) -> int:
        body = encode_event(event)
        kind = self._kind_of.get((machine, type(event)))
        if kind is None:
            kind = self._kind_of[(machine, type(event))] = event_kind(
                machine, type(event).__name__, event.SCHEMA_VERSION
            )
        # This runs per event: the rest of its row (its COPY fields, its hashes) is made where the
        # batch is sent, off the engine's core in `elspeth run`.
        # Its bytes as the sender will encode them: refused here, not there, when UTF-8 cannot
        # hold it (a lone surrogate), which would fail the whole commit and end the writer.
        entity_bytes = len(entity_id) if entity_id.isascii() else len(entity_id.encode())
        self._kinds.append(kind)
        self._entities.append(entity_id)
        self._times.append(self._now_ns())
        self._bodies.append(body)
        self._buffered += len(body) + entity_bytes + _EVENT_BYTES
        seq = self.next_seq
        self.next_seq = seq + 1
        faults.reached("append")
        return seq

    def put_payload(self, hash_hex: str, payload: Payload) -> None:
        """Store a row's bytes under their commitment, with this run's events at the next commit.
        The same commitment twice (only a repeated salt could do that) is stored once."""
        named = self._named
        if hash_hex not in named:
            # (Its COPY row is made where the batch is sent: `commits.payload_copy`.)
            named.add(hash_hex)
            salt, data = payload
            self._payloads.append((hash_hex, salt, data, self._now_us()))
            self._buffered += len(data) + _PAYLOAD_BYTES

    def commit(self, *, wait: bool = True) -> None:
        """Send everything buffered in one transaction and commit it (a durability point).

        Sent from a thread or a child process, with `wait=False`, the commit is handed over and
        this returns once the one before it is done; an error surfaces at the next commit.
        `wait=True` returns only when everything appended so far is committed. The sending side
        chains the events, grows the Merkle tree and signs the checkpoint (`commits.Chain`)."""
        if self._bodies or self._payloads:
            batch = Batch(
                self.next_seq - len(self._bodies),
                len(self._bodies),
                self._kinds,
                self._entities,
                [t // 1000 for t in self._times],
                self._bodies,
                self._payloads,
                us_to_datetime(self._now_us()),
            )
            self._kinds, self._entities, self._times, self._bodies = [], [], [], []
            self._payloads, self._named, self._buffered = [], set(), 0
            if self._process is not None:
                # Handed over before the answer to the batch before is read: the child chains this
                # one while the server finishes that one (`sender_process`). Should that one fail,
                # the child commits none after it, and its error is raised here, as below.
                self._refuse_after_a_failure()
                try:
                    self._process.submit(batch)
                except BaseException as e:
                    self._failed = e
                    raise
                self._handed.append(batch.recorded_at)
                self._wait(keep=1)
            else:
                self._wait()
                self._refuse_after_a_failure()
                if self._thread is not None:
                    self._in_flight = self._thread.submit(self._send, batch)
                else:
                    self._send(batch)
        if wait:
            self._wait()

    def _refuse_after_a_failure(self) -> None:
        if self._failed is not None:
            # The log ends where the failed commit began; this batch's seqs follow the failed
            # one's: sending it would leave a gap in the chain, which no resume could verify.
            raise StoreError(
                f"run {self.run_id}: nothing more can be committed after a failed commit ({self._failed})"
            ) from self._failed

    def _wait(self, keep: int = 0) -> None:
        """Until at most `keep` commits handed over are not done; the error of one that failed
        (then and after)."""
        try:
            if self._in_flight is not None:
                future, self._in_flight = self._in_flight, None
                future.result()
            while len(self._handed) > keep and self._process is not None:
                checkpoint = self._process.wait()
                recorded_at = self._handed.popleft()
                try:
                    self._witness((checkpoint, recorded_at))
                except BaseException:
                    if self._handed:  # a batch is in the child still: ended as in a crash, not committed on
                        self._process.cut_off()
                    raise
        except BaseException as e:
            self._handed.clear()  # (the child's answers to those after it: read when it closes)
            self._failed = self._failed or e
            raise

    def _send(self, batch: Batch) -> None:
        assert self._conn is not None and self._chain is not None
        try:
            self._chain, checkpoint = commits.send(self._conn, self._chain, batch)
        except BaseException as e:
            self._failed = self._failed or e
            raise
        self._witness((checkpoint, batch.recorded_at))
        faults.reached("committed")

    def _witness(self, checkpointed: Checkpointed) -> None:
        # Only once durable: a witnessed checkpoint must never cover events a crash undid.
        checkpoint, recorded_at = checkpointed
        if checkpoint is not None and self._notary is not None:
            size, _root, note = checkpoint
            self._notary.witness(self.run_id, size, note, recorded_at)

    def still_writer(self) -> None:
        """Return only while this writer still holds the run: the session its lock is held by
        answers (session-level advisory locks go only with their session). Asked before a sink
        cuts back to its durable position (a retry reopening it). A writer that stalled (a
        debugger, a paused VM) while its sessions were cut off may have been taken over by a
        resume meanwhile, which wrote past that position and may have completed the run; cutting
        back then would destroy that run's rows (a test of a stalled writer). DatabaseUnavailable
        when the session is gone, as for a commit that finds it so."""
        what = (
            f"making sure this process still writes run {self.run_id} (its session held the run's lock: another process "
            "may have taken the run over since, see `elspeth runs`, so nothing was cut back)"
        )
        self._ask(None, what)

    def generation(self) -> int:
        """A number no writer of any run has had before, nor will again, drawn under the run's
        lock: the server's next transaction id (64 bits, never reused; a restored backup aside).
        A sink keeps the highest it has seen for a run and refuses a writer with a lower one
        (`WriterClaim`): of two writers of one run, the later to take its lock has the higher.
        A count of the run's resumes would not do: a resume that stalled before recording itself
        has the number of the resume that took the run over from it (a review)."""
        what = f"drawing run {self.run_id}'s writer generation"
        return int(self._ask("SELECT pg_current_xact_id()::text", what, run_id=self.run_id))

    def _ask(self, query: str | None, what: str, *, run_id: str | None = None) -> Any:
        """The one value `query` gives on the session holding the run's lock (None for none), its
        transaction ended as begun: left open, the session sat idle in a transaction for the rest
        of the run, which a server's idle_in_transaction_session_timeout ends, locks and all (a
        review). StoreError when the session it runs on is not the one holding the lock
        (`commits.holds`: a pooler of transactions)."""
        if self._conn is None:
            raise StoreError(f"run {self.run_id}: the writer is closed")
        if self._thread is not None:
            self._wait()  # (a commit on the thread may be using the connection; a child has its own)
        with driver_errors(what, run_id=run_id):  # (`run_id`: a lost session says how to resume it)
            idle = self._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            held = commits.holds(self._conn, self.run_id, commits.WRITER_LOCK)
            row = self._conn.execute(query).fetchone() if held and query is not None else None
            if idle:
                self._conn.rollback()
        if not held:
            raise commits.not_holding(self.run_id)
        return None if row is None else row[0]

    def hold(self, place: str, *, shared: bool = False) -> str | None:
        """Take the lock of `place` (a sink's file or table, as the engine names it) for as long
        as this writer lives, on its own connection, alone or `shared` with others that share
        it: None when taken, else who holds it (any session may take an advisory lock, not only
        a writer's: it is named, not guessed). Before the first commit only: after it, the
        connection may be sending one on another thread."""
        if self._conn is None or self._in_flight is not None or self._handed:
            raise StoreError(f"run {self.run_id}: a place is held before the run's first commit, not after")
        with driver_errors(f"run {self.run_id}: holding its sink files"):
            take = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
            row = self._conn.execute(f"SELECT {take}({commits.PLACE_LOCK})", (place,)).fetchone()
            holder = None
            if not (row and row[0]):
                holder = self._conn.execute(
                    "SELECT a.pid, a.usename, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                    f" AND ((l.classid::bigint << 32) | l.objid::bigint) = {commits.PLACE_LOCK} LIMIT 1",
                    (place,),
                ).fetchone()
            self._conn.commit()
        if row and row[0]:
            return None
        if holder is None:
            return "a session of the store that has just ended"
        pid, user, app = holder
        return f"the store's session {pid} (user {user}, {app or 'no application name'!r})"

    def close(self) -> None:
        """Release the run's lock. Uncommitted appends are dropped, as a crash would drop them.
        A commit already handed over is finished first; if it failed, that error is raised here
        once the lock and the connection are released (never swallowed)."""
        pending_error: BaseException | None = None
        try:
            self._wait()
        except BaseException as e:  # reported below, after cleaning up
            pending_error = e
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        # The sender first: the engine's process lets go of the run only once nothing can be
        # committed for it any more.
        if self._process is not None:
            self._process.close()
        if self._conn is not None:
            commits.release(self._conn, self.run_id, (commits.WRITER_LOCK,) if self._process else commits.BOTH_LOCKS)
            self._conn = None
        if pending_error is not None:
            raise pending_error


# `run_ids_in`: the first run id, then again and again the first after the last one found.
_RUN_IDS_IN = (
    "WITH RECURSIVE r(run_id) AS ("
    "(SELECT run_id FROM {table} ORDER BY run_id LIMIT 1) UNION ALL "
    "SELECT (SELECT t.run_id FROM {table} t WHERE t.run_id > r.run_id ORDER BY t.run_id LIMIT 1) "
    "FROM r WHERE r.run_id IS NOT NULL) "
    "SELECT run_id FROM r WHERE run_id IS NOT NULL"
)


def run_ids_in(conn: psycopg.Connection[Any], table: str) -> list[str]:
    """The runs table `table` of the store (keyed by `run_id` first, as they all are) holds rows
    of, in order: one probe of its key per run. A `DISTINCT` read all of its rows, a time that
    grew with the store (0.22 s over 1,500,000 events; 2 ms so): this grows with the runs."""
    return [str(row[0]) for row in conn.execute(_RUN_IDS_IN.format(table=table)).fetchall()]


def _read_us(cur: psycopg.Cursor[Any]) -> None:
    """A cursor reading `_READ_COLUMNS` in binary: timestamps arrive as their int8 microseconds."""
    cur.adapters.register_loader("timestamptz", Int8BinaryLoader)


@contextlib.contextmanager
def _transaction(conn: psycopg.Connection[Any], snapshot: str | None) -> Iterator[None]:
    """A read-only transaction, in `snapshot` (an exported one: `shared_snapshot`) when given."""
    conn.read_only = True
    if snapshot is not None:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    with conn.transaction():
        if snapshot is not None:  # the first statement: the transaction then sees what the exporter saw
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        yield


def _reinstated(conn: psycopg.Connection[Any], run_id: str) -> set[bytes]:
    """The hashes of `_REINSTATED`, in the connection's transaction (and so its snapshot)."""
    with conn.cursor(binary=True) as cur:
        return {bytes(r[0]) for r in cur.execute(_REINSTATED, (run_id, run_id))}


class PostgresRecorder:
    """The `Recorder` on one PostgreSQL database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def open_writer(
        self,
        run_id: str,
        *,
        sending: Sending = "inline",
        now_us: Callable[[], int] | None = None,
        notary: Notary | None = None,
        verified: tuple[MerkleAccumulator, bytes] | None = None,
    ) -> PgRunWriter:
        """The run's single writer; `verified`: the Merkle tree and head hash of the log as just
        verified (see `PgRunWriter`), which spares reading every hash again."""
        return PgRunWriter(self.db.connect, run_id, sending=sending, now_us=now_us, notary=notary, verified=verified)

    def read_events(
        self, run_id: str, after_seq: int = -1, upto_seq: int | None = None, *, snapshot: str | None = None
    ) -> Generator[StoredEvent, None, None]:
        """A run's events in seq order (`read_pages`, one at a time)."""
        pages = self.read_pages(run_id, after_seq, upto_seq, snapshot=snapshot)
        try:
            for page in pages:
                yield from page
        finally:
            pages.close()  # (now, not when collected: the reader holds a transaction)

    def read_pages(
        self, run_id: str, after_seq: int = -1, upto_seq: int | None = None, *, snapshot: str | None = None
    ) -> Generator[list[StoredEvent], None, None]:
        """A run's events in seq order, in pages of up to a few thousand, streamed with a
        server-side cursor; in the `snapshot` of `shared_snapshot` when given (another process may
        read in it too). A verifier's digest of what it read takes them a page at a time."""
        query = (
            f"SELECT {_READ_COLUMNS} FROM events WHERE run_id = %s AND seq > %s"
            + (" AND seq <= %s" if upto_seq is not None else "")
            + " ORDER BY seq"
        )
        params: tuple[Any, ...] = (run_id, after_seq) if upto_seq is None else (run_id, after_seq, upto_seq)
        # The next page is fetched by a thread while this one is consumed: the server produces
        # it meanwhile (on a fold, about a quarter of the time was spent waiting for pages).
        pages: queue.Queue[list[Any] | BaseException] = queue.Queue(maxsize=2)
        stop = threading.Event()

        def fetch() -> None:
            try:
                with (
                    driver_errors(f"reading events of run {run_id}"),
                    self.db.connect() as conn,
                    _transaction(conn, snapshot),
                    conn.cursor(name=f"events_{os.getpid()}", binary=True) as cur,
                ):
                    _read_us(cur)
                    cur.execute(query, params)
                    read_as_written(cur, "events", _EVENT_TYPES)
                    while not stop.is_set():
                        rows = cur.fetchmany(_PAGE)
                        pages.put(rows)
                        if not rows:
                            return
            except BaseException as e:  # handed to the reader, who raises it
                pages.put(e)

        fetcher = threading.Thread(target=fetch, name="elspeth-read", daemon=True)
        fetcher.start()
        try:
            while True:
                page = pages.get()
                if isinstance(page, BaseException):
                    raise page
                if not page:
                    return
                yield list(starmap(StoredEvent, page))
        finally:
            # A reader stopped early (or failing) ends the fetcher, and with it the transaction
            # and its locks, before returning: a put waiting on a full queue is let through.
            stop.set()
            while fetcher.is_alive():
                with contextlib.suppress(queue.Empty):
                    pages.get(timeout=0.05)
            fetcher.join()

    def flushed_since(self, run_id: str, *, its_last_flush: bool = False) -> list[tuple[str, str, str]]:
        """The sink locations other runs made rows durable in after this run's last event (or,
        `its_last_flush`, after its last flush: an abandoned run's files stopped there, and a
        rerun between its crash and its abandoning wrote them after), each
        with its run and a folder its relative paths resolve in (every folder the run ran in):
        (run id, location, working folder), once each. A resume that would cut a file back asks
        first (by the file, not its name: a link or another spelling of the path is the same file).

        "After" is by writing transaction or by position, whichever says so (see `_FLUSHED_AFTER`):
        the store keeps no commit order, and a resume had better refuse once too often than cut
        another run's durable rows."""
        with driver_errors(f"reading run {run_id}"), self.db.connect(autocommit=True) as conn:
            last = conn.execute(_LAST_FLUSH, (run_id, run_id)).fetchone() if its_last_flush else None
            last = last or conn.execute(_LAST_EVENT, (run_id,)).fetchone()
            if last is None:
                return []
            rows = conn.execute(
                _FLUSHED_AFTER, {"tx": last[0], "pos": last[1], "run": run_id}, prepare=False
            ).fetchall()
        return [(str(r), str(loc), str(wd)) for r, loc, wd in rows]

    def open_positions(self) -> list[OpenPosition]:
        """Each sink's durable position in every run of the store that can still be resumed (not
        completed, not abandoned), once per folder the run ran in. A new run asks before appending
        to a file: rows it wrote there first would make such a run's resume refuse (see
        `flushed_since`)."""
        with driver_errors("reading the runs that can be resumed"), self.db.connect(autocommit=True) as conn:
            rows = conn.execute(_OPEN_POSITIONS, prepare=False).fetchall()
        return [OpenPosition(str(r), str(st), str(loc), str(wd), int(pos), sha) for r, st, loc, wd, pos, sha in rows]

    def abandoned_positions(self) -> list[OpenPosition]:
        """Each sink's last durable position in every abandoned run, as `open_positions` has them
        for the runs that can be resumed: bytes after it, in a file that still starts with the
        run's, are what its crash left, which no log accounts for."""
        with driver_errors("reading the abandoned runs"), self.db.connect(autocommit=True) as conn:
            rows = conn.execute(_ABANDONED_POSITIONS, prepare=False).fetchall()
        return [OpenPosition(str(r), str(st), str(loc), str(wd), int(pos), sha) for r, st, loc, wd, pos, sha in rows]

    def run_created(self, run_id: str) -> RunCreated | None:
        """The run's first event, read as it is, before the log is verified: where it ran, with
        what settings (None when seq 0 is not a readable RunCreated; verifying names why)."""
        import msgspec

        # Closed here, not when collected: a signal's KeyboardInterrupt raised while a collected
        # reader waits for its fetcher is dropped ("Exception ignored"), and the command went on.
        with contextlib.closing(self.read_events(run_id, upto_seq=0)) as events:
            first = next(events, None)
        if first is None:
            return None
        try:
            event = first.event
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None
        return event if isinstance(event, RunCreated) else None

    def working_dir(self, run_id: str) -> str | None:
        """The folder the run ran in last (see `_FOLDER_EVENTS`), read before the log is verified
        (None when the log names none)."""
        with driver_errors(f"reading run {run_id}"), self.db.connect(autocommit=True) as conn:
            row = conn.execute(_LAST_FOLDER.format(run="%s"), (run_id,)).fetchone()
        return str(row[0]) if row is not None and row[0] else None

    def last_seq(self, run_id: str) -> int:
        """The run's last seq now (-1: no events)."""
        with driver_errors(f"reading run {run_id}"), self.db.connect(autocommit=True) as conn:
            row = conn.execute("SELECT max(seq) FROM events WHERE run_id = %s", (run_id,)).fetchone()
        return -1 if row is None or row[0] is None else int(row[0])

    @contextlib.contextmanager
    def shared_snapshot(self) -> Iterator[str]:
        """A snapshot of the whole database that other connections, of this process or another,
        can read in (`read_events`, `scan_payloads`): they all see exactly the same rows, whatever
        is written or changed meanwhile. Yields its id; it can be read in until the block ends.

        The exporting transaction reads no table, so it holds no lock while it waits for its
        readers: a lock it held would let a waiting `ALTER`, `VACUUM FULL` or upgrade queue every
        later reader behind it, a wait the server cannot see as a deadlock. It is idle all the
        while, so the server's idle-in-transaction timeout is lifted for this one session."""
        with driver_errors("sharing a snapshot of the audit store"), self.db.connect(autocommit=True) as conn:
            conn.execute("SET idle_in_transaction_session_timeout = 0")
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                row = conn.execute("SELECT pg_export_snapshot()").fetchone()
                assert row is not None
                yield str(row[0])

    def scan_payloads(self, run_id: str, snapshot: str | None = None) -> Iterator[tuple[bytes, bytes, bytes]]:
        """Every payload kept for run `run_id`, as (hash, salt, data), in pages; in `snapshot`
        (see `shared_snapshot`) when given. None an erasure record covers (`_REINSTATED`)."""
        with (
            driver_errors("reading row payloads"),
            self.db.connect() as conn,
            _transaction(conn, snapshot),
            conn.cursor(name=f"payloads_{os.getpid()}", binary=True) as cur,
        ):
            erased = _reinstated(conn, run_id)
            cur.execute("SELECT hash, salt, data FROM payloads WHERE run_id = %s", (run_id,))
            read_as_written(cur, "payloads", _PAYLOAD_TYPES)
            while rows := cur.fetchmany(_PAGE):
                yield from (r for r in rows if r[0] not in erased) if erased else rows

    def probe_payloads(
        self, run_id: str, hashes: Iterable[str], snapshot: str | None = None
    ) -> Iterator[tuple[bytes, bytes, bytes]]:
        """Those of `hashes` (payload names) kept for run `run_id`, or kept before payloads were
        kept by run, as (hash, salt, data), looked up by key; in `snapshot` when given. For a
        part of a run's payloads: all of them are read faster by `scan_payloads`. None an erasure
        record covers (as `_REINSTATED`, asked of the names probed only)."""
        wanted = [bytes.fromhex(h) for h in hashes if is_name(h)]
        if not wanted:
            return
        with (
            driver_errors("reading row payloads"),
            self.db.connect() as conn,
            _transaction(conn, snapshot),
            conn.cursor(name=f"probe_{os.getpid()}", binary=True) as cur,
        ):
            for i in range(0, len(wanted), _PROBE):
                batch = wanted[i : i + _PROBE]
                # Those of them an erasure record covers, by the records' hash index: a probe of a
                # few names (an export's chunk) does not pay for the run's every record.
                erased = {bytes(r[0]) for r in conn.execute(_ERASED_AMONG, (batch, run_id), binary=True)}
                # Binary both ways: a text bytea array is escaped per element by the driver, and
                # text results are hex the server writes and the driver parses back. In pages:
                # a statement's payloads at once were 60 MB more at a replay's peak.
                cur.execute(
                    "SELECT hash, salt, data FROM payloads WHERE run_id IN (%s, '') AND hash = ANY(%b)", (run_id, batch)
                )
                read_as_written(cur, "payloads", _PAYLOAD_TYPES)
                while rows := cur.fetchmany(_PAGE):
                    yield from (r for r in rows if r[0] not in erased) if erased else rows

    def read_since(self, position: tuple[int, int] = (0, 0), limit: int = 10_000) -> list[GlobalEvent]:
        """Events of all runs after `position`, oldest transaction first, at most `limit`; none
        only when no finished transaction holds one after it.

        Identity values are handed out before commit, so ordering by global_position alone would
        skip a transaction that took its positions early but committed late. Instead, only
        transactions older than every one still in progress (tx_id below the snapshot's xmin)
        are read, in (tx_id, global_position) order: that set can no longer grow, so a reader
        that continues from the last pair it saw never misses a late commit. The transactions
        are found in `event_commits` (migration 0017): events appended without a row there, by
        hand, are not read here."""
        tx, pos = position
        with driver_errors("reading events across runs"), self.db.connect() as conn, conn.cursor(binary=True) as cur:
            _read_us(cur)
            for setting in _SINCE_PLAN:
                cur.execute(setting)
            cur.execute(_SINCE, {"tx": tx, "pos": pos, "limit": limit})
            read_as_written(cur, "events", ("int8", "int8", *_EVENT_TYPES))
            page = [GlobalEvent((r[0], r[1]), StoredEvent(*r[2:])) for r in cur.fetchall()]
        return page

    def payloads(self, run_id: str, hashes: Iterable[str]) -> dict[str, Payload]:
        """hash hex -> (salt, data) as stored, for those of `hashes` the payload store holds for
        run `run_id` (or holds from before payloads were kept by run, migration 0007). Text not
        spelled as payload names are (`is_name`) names none."""
        wanted = sorted({h for h in hashes if is_name(h)})
        found: dict[str, Payload] = {}
        if len(wanted) > _SCAN_AT:
            # Most of a run's payloads (a replay's check): one pass along the run's range of the
            # (run_id, hash) key beats a probe per hash; any left are looked up below.
            asked = set(wanted)
            for h, salt, data in self.scan_payloads(run_id):
                key = h.hex()
                if key in asked:
                    found[key] = Payload(salt, data)
            wanted = [h for h in wanted if h not in found]
        for h, salt, data in self.probe_payloads(run_id, wanted):
            found[h.hex()] = Payload(salt, data)
        return found

    def erasures(self, run_id: str, hashes: Iterable[str]) -> dict[str, Erasure]:
        """The erasure record of each of `hashes` erased from run `run_id` (the first, if
        several: a sealed one before one no seal signs, `landscape.seal`). A record names its run;
        one without (retention of a payload kept before payloads were kept by run, migration 0007)
        serves any run, after the run's own."""
        wanted = sorted({h for h in hashes if is_name(h)})
        if not wanted:
            return {}
        chosen: dict[str, tuple[tuple[bool, bool, int], Erasure]] = {}

        def take(rows: Iterable[Any]) -> None:
            for r in rows:
                h = bytes(r[1]).hex()
                rank = (r[8] is None, r[2] is None, r[0])  # (see the docstring's order)
                if h in asked and (h not in chosen or rank < chosen[h][0]):
                    chosen[h] = rank, Erasure(hash=h, run_id=r[2], row_index=r[3], kind=r[4], reason=r[5],
                                              erased_at=r[6], erased_by=r[7], seal_id=r[8])  # fmt: skip

        asked = set(wanted)
        with driver_errors("reading erasure records"), self.db.connect() as conn:
            # Most runs have no record, and most stores none of no run: two probes of the run
            # index say so, and spare a lookup of every name (`verify_run` asks for them all).
            of_run = conn.execute("SELECT 1 FROM erasures WHERE run_id = %s LIMIT 1", (run_id,)).fetchone() is not None
            of_none = conn.execute("SELECT 1 FROM erasures WHERE run_id IS NULL LIMIT 1").fetchone() is not None
            if of_run and len(wanted) > _SCAN_AT:
                # Most of a run's payloads (a replay of a run purged by retention): the run's
                # records by its index, in one pass, beat a probe per name.
                with conn.cursor(name=f"erasures_{os.getpid()}", binary=True) as cur:
                    cur.itersize = _PAGE
                    take(cur.execute(f"SELECT {_ERASURE_COLUMNS} FROM erasures WHERE run_id = %s", (run_id,)))
                of_run = False  # (all read)
            whose = [w for w, has in (("run_id = %(run)s", of_run), ("run_id IS NULL", of_none)) if has]
            if whose:
                query = (
                    f"SELECT {_ERASURE_COLUMNS} FROM erasures WHERE hash = ANY(%(names)s) AND ({' OR '.join(whose)})"
                )
                for i in range(0, len(wanted), 10_000):
                    names = [bytes.fromhex(h) for h in wanted[i : i + 10_000]]
                    take(conn.execute(query, {"names": names, "run": run_id}))
        return {h: e for h, (_, e) in chosen.items()}

    def erasure_seals(self, ids: Iterable[int]) -> dict[int, Sealed]:
        """Each of these seals (`landscape.seal`): its run, its note and the digests of every
        record that names it, however many (streamed: a retention of a long run seals hundreds of
        thousands)."""
        wanted = sorted(set(ids))
        out: dict[int, Sealed] = {}
        if not wanted:
            return out
        with driver_errors("reading erasure seals"), self.db.connect() as conn:
            for seal_id, run, note in conn.execute(
                "SELECT id, run_id, note FROM erasure_seals WHERE id = ANY(%s)", (wanted,)
            ):
                out[seal_id] = Sealed(run, note, [])
            with conn.cursor(name=f"seals_{os.getpid()}", binary=True) as cur:
                cur.itersize = 10_000
                cur.execute(
                    "SELECT seal_id, hash, run_id, row_index, kind, reason, erased_at, erased_by FROM erasures "
                    "WHERE seal_id = ANY(%s)",
                    (list(out),),
                )
                for r in cur:
                    record = Erasure(hash=bytes(r[1]).hex(), run_id=r[2], row_index=r[3], kind=r[4], reason=r[5],
                                     erased_at=r[6], erased_by=r[7])  # fmt: skip
                    out[r[0]].digests.append(record.digest())
        return out

    def reinstated(self, run_id: str) -> int:
        """How many payloads of run `run_id` are in the store although an erasure record says
        they were erased: put back after `purge` (readers take them as erased: `_REINSTATED`)."""
        with driver_errors("reading erasure records"), self.db.connect() as conn:
            return len(_reinstated(conn, run_id))

    def store_id(self) -> str:
        """This store's id (migration 0005), which every checkpoint's origin names."""
        with driver_errors("reading the store's id"), self.db.connect() as conn:
            row = conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()
        if row is None:
            raise StoreError("the store has no store_id (store_meta): run `elspeth db upgrade`")
        return str(row[0])

    def checkpoints(self, run_id: str) -> list[Witnessed]:
        """The run's signed checkpoints as the store holds them, smallest tree first."""
        with driver_errors(f"reading the checkpoints of run {run_id}"), self.db.connect() as conn:
            rows = conn.execute(
                "SELECT tree_size, root, note, recorded_at FROM checkpoints WHERE run_id = %s ORDER BY tree_size",
                (run_id,),
            ).fetchall()
        return [Witnessed(r[0], bytes(r[1]), r[2], r[3].isoformat(), "store") for r in rows]

    def writer_alive(self, run_id: str) -> bool:
        """True while a process that may write the run holds its writer lock (`lock_holder`)."""
        return self.lock_holder(run_id) is not None

    def lock_holder(self, run_id: str) -> str | None:
        """Who holds the run's writer or sender lock, as its session names itself (a writer
        `elspeth writer pid=N`, an erasure or a rebuild `elspeth erasing pid=N`, ...; '' when
        unnamed); None when nobody that may write does (`commits.lock_holder`)."""
        with driver_errors(f"checking the writer of run {run_id}"), self.db.connect() as conn:
            return commits.lock_holder(conn, run_id)

    def run_exists(self, run_id: str) -> bool:
        with driver_errors(f"looking up run {run_id}"), self.db.connect() as conn:
            return conn.execute("SELECT 1 FROM events WHERE run_id = %s LIMIT 1", (run_id,)).fetchone() is not None

    def run_ids(self) -> list[str]:
        with driver_errors("listing runs"), self.db.connect() as conn:
            return run_ids_in(conn, "events")
