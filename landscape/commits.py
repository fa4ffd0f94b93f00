"""What a run's writer does on its connection: open the run's log for writing, and send one
durability point's batch in one transaction.

They are here, apart from `PgRunWriter`, because the writer can run them on a thread of its own
process or in a child process (`landscape.sender_process`); both call these same functions.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from landscape import copybin, faults
from landscape.chain import GENESIS, header, link
from landscape.db import driver_errors
from landscape.errors import ConcurrentWriter, LandscapeError, StoreError
from landscape.merkle import MerkleAccumulator
from landscape.notary import Notary
from landscape.projection_sql import project
from landscape.role_names import Role

_int8 = struct.Struct(">iq").pack  # a length word and an int8 field

EVENT_COLUMNS = (
    "run_id, seq, machine, entity_id, event_type, schema_version, recorded_at, payload, payload_hash, prev_hash, hash"
)
# 64-bit advisory lock keys derived from the run id (collisions between run ids are negligible).
# The writer's: held by the process that runs the engine, for as long as it may write the run's
# sinks or events. The sender's: held by the connection that commits the run's events. A writer
# sending from its own process holds both on one connection; one sending from a child process
# holds the first and its child the second. A run has a live writer while either is held.
WRITER_LOCK = "hashtextextended(%s, 0)"
SENDER_LOCK = "hashtextextended(%s, 1)"
BOTH_LOCKS = (WRITER_LOCK, SENDER_LOCK)
# A place a run writes (a sink's file), held by the writer's process for as long as the run may
# write it: two runs starting at one moment each ask the store for the other before either has
# recorded anything, and neither would be seen.
PLACE_LOCK = "hashtextextended(%s, 2)"


@dataclass(frozen=True, slots=True)
class Batch:
    """One durability point's worth of work for the sending side: its events as the engine
    appended them, not yet encoded for COPY nor chained (the sender does both: `Chain.seal`, off
    the engine's core in `elspeth run`), and the row payloads they reference."""

    first_seq: int  # the seq of the first event (the others follow it)
    count: int  # how many events
    kinds: list[str]  # each event's `event_kind`: its machine, type and schema version
    entities: list[str]  # each event's entity id
    times: list[int]  # each event's recorded_at, in microseconds since the Unix epoch
    bodies: list[bytes]  # each event's body (its JSON payload)
    payloads: list[Payload]  # the row payloads the events reference, new in this batch
    recorded_at: datetime


# A row payload for `send` to store: its commitment (hex), salt, data, and time (microseconds).
Payload = tuple[str, bytes, bytes, int]


def payload_copy(run_id: str, payloads: list[Payload]) -> bytes:
    """The binary COPY data of these payloads (`COPY payloads (run_id, hash, salt, data,
    recorded_at)`): made where the batch is sent, off the engine's core in `elspeth run`."""
    prefix, hash_field, length = copybin.count(5) + copybin.text(run_id), copybin.HASH_FIELD, copybin.length
    epoch = copybin.PG_EPOCH_US
    rows = [copybin.SIGNATURE]
    for name, salt, data, at_us in payloads:
        rows.append(b"".join((prefix, hash_field, bytes.fromhex(name), length(len(salt)), salt, length(len(data)),
                              data, _int8(8, at_us - epoch))))  # fmt: skip
    rows.append(copybin.TRAILER)
    return b"".join(rows)


def event_kind(machine: str, event_type: str, schema_version: int) -> str:
    """What a batch says of an event's machine, type and version, in one string: the writer makes
    one per kind of event it appends, the sender reads it back once per batch (`_Kinds`)."""
    if "\x1f" in machine or "\x1f" in event_type:  # (a bug: both are names of ours)
        raise StoreError(f"an event kind cannot be named {machine!r}, {event_type!r}: the unit separator splits it")
    return f"{machine}\x1f{event_type}\x1f{schema_version}"


class _Kinds(dict[str, tuple[bytes, bytes, str, str, int]]):
    """Per `event_kind`: its machine's and its type-and-version's binary COPY fields, and the
    machine, type and version themselves (for the chain header)."""

    def __missing__(self, kind: str) -> tuple[bytes, bytes, str, str, int]:
        machine, event_type, version = kind.split("\x1f")
        fields = (copybin.text(machine), copybin.text(event_type) + copybin.int2(int(version)),
                  machine, event_type, int(version))  # fmt: skip
        self[kind] = fields
        return fields


# What a commit signed: (tree size, root, note), after its events.
SignedCheckpoint = tuple[int, bytes, str]


@dataclass(frozen=True, slots=True)
class Sealed:
    """A batch chained before its commit (`Chain.sealed`): its events' binary COPY data, the
    chain as it is once they are committed, and the checkpoint signed after them."""

    on: bytes  # the head of the chain it was sealed on
    copy_data: list[bytes]
    after: Chain
    checkpoint: SignedCheckpoint | None


class Chain:
    """The sending side's end of a run's log: its head hash and Merkle tree, which each batch
    extends (`seal`) once it is committed. The engine only encodes events as it appends them;
    hashing them into the chain and the tree, and signing the checkpoint, is done here, where the
    batch is sent: in `elspeth run` a child process, off the engine's core."""

    def __init__(
        self, run_id: str, tree: MerkleAccumulator, head: bytes, notary: Notary | None, last_from: int | None = None
    ) -> None:
        self.run_id, self.tree, self.head, self.notary = run_id, tree, head, notary
        # The first seq of the batch whose commit made this chain, which ends at `tree.size` (None:
        # the log as it was opened). The next commit reads those events back (`send`).
        self.last_from = last_from

    def seal(self, batch: Batch, write: Callable[[bytes], object]) -> tuple[Chain, SignedCheckpoint | None]:
        """Hand `write` the batch's events as binary COPY data, each linked to the one before,
        `SEAL_CHUNK` events at a time (the server takes each in while the next are hashed).
        Returns the chain as it is once they are committed (this one is left as it was, for a
        commit that fails) and the signed checkpoint after them (size, root, note), when there
        is a notary."""
        self.check_follows(batch)
        sha256, hash_field, length = hashlib.sha256, copybin.HASH_FIELD, copybin.length
        run_id, kinds, epoch = self.run_id, _Kinds(), copybin.PG_EPOCH_US
        run_field = copybin.count(11) + copybin.text(run_id)
        prev = self.head
        tree = self.tree.copy()
        rows: list[bytes] = [copybin.SIGNATURE]
        leaves: list[bytes] = []
        seq = batch.first_seq
        for kind, entity_id, at_us, body in zip(batch.kinds, batch.entities, batch.times, batch.bodies, strict=True):
            machine_field, type_fields, machine, event_type, version = kinds[kind]
            entity = entity_id.encode()
            body_hash = sha256(body).digest()
            h = link(prev, header(run_id, seq, machine, entity_id, event_type, version, at_us), body_hash)
            # The row in binary COPY format (`landscape.copybin`), spelled out: this runs per event.
            rows.append(b"".join((run_field, _int8(8, seq), machine_field, length(len(entity)), entity, type_fields,
                                  _int8(8, at_us - epoch), length(len(body)), body, hash_field, body_hash, hash_field,
                                  prev, hash_field, h)))  # fmt: skip
            leaves.append(h)
            prev = h
            seq += 1
            if len(leaves) == SEAL_CHUNK:
                write(b"".join(rows))
                tree.extend_data(leaves)
                rows, leaves = [], []
        rows.append(copybin.TRAILER)
        write(b"".join(rows))
        tree.extend_data(leaves)
        checkpoint = None
        if self.notary is not None and tree.size > self.tree.size:
            size, root = tree.size, tree.root()
            checkpoint = (size, root, self.notary.sign(self.run_id, size, root))
        return Chain(self.run_id, tree, prev, self.notary, batch.first_seq), checkpoint

    def sealed(self, batch: Batch) -> Sealed:
        """`seal` into memory: the batch chained on this chain, to be sent once the batch before
        it is committed (`send`). A child process seals a batch while the server still works on
        the one before it (`landscape.sender_process`)."""
        data: list[bytes] = []
        after, checkpoint = self.seal(batch, data.append)
        return Sealed(self.head, data, after, checkpoint)

    def check_follows(self, batch: Batch) -> None:
        """StoreError if the batch's events do not start where the log ends (an engine's bug)."""
        if batch.first_seq != self.tree.size:
            raise StoreError(
                f"run {self.run_id}: a batch from seq {batch.first_seq} was handed over where the log ends at "
                f"seq {self.tree.size - 1}: it would leave a gap or a fork in the chain"
            )


# `send`: the rows of a range of seqs, read (by their keys) for their visibility alone.
_SETTLE = (
    "SELECT (SELECT count(*) FROM public.events WHERE run_id = %(r)s AND seq >= %(lo)s AND seq < %(hi)s), "
    "(SELECT count(*) FROM public.node_states WHERE run_id = %(r)s AND seq >= %(lo)s AND seq < %(hi)s)"
)

# Events per piece of a batch's COPY data (about 400 KB of the linear example's events).
SEAL_CHUNK = 1000


def lock(conn: psycopg.Connection[Any], run_id: str, keys: tuple[str, ...]) -> None:
    """Take the run's `keys` (advisory locks, for the session) or none of them: ConcurrentWriter
    if another session holds one. The connection is closed if this fails."""
    try:
        with driver_errors(f"opening the writer of run {run_id}"):
            conn.execute(
                "SELECT set_config('application_name', %s, false)", (f"elspeth writer pid={os.getpid()}"[:63],)
            )
            if any(holds(conn, run_id, key) for key in keys):
                # Granted again, it would be shared with whoever's session this is (`holds`).
                conn.rollback()
                raise held_already(run_id)
            taken: list[str] = []
            for key in keys:
                got = conn.execute(f"SELECT pg_try_advisory_lock({key})", (run_id,)).fetchone()
                if not got or not got[0]:
                    for held in taken:
                        conn.execute(f"SELECT pg_advisory_unlock({held})", (run_id,))
                    conn.commit()
                    holder = lock_holder(conn, run_id)
                    conn.commit()
                    raise ConcurrentWriter(f"run {run_id} is {holding(holder)}")
                taken.append(key)
            conn.commit()
    except LandscapeError:
        conn.close()
        raise


# An advisory lock granted in this database, as pg_locks (`l`) shows it, and its 64-bit key: the
# high half in classid, the low half in objid (objsubid 1 marks a lock of one bigint key).
_GRANTED_HERE = (
    "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
_KEY = "((l.classid::bigint << 32) | l.objid::bigint)"


def holds(conn: Any, run_id: str, key: str) -> bool:
    """Whether this very session holds the run's lock `key`. A session that took it holds it
    until it ends; but behind a pooler of transactions (PgBouncer's transaction mode), a
    connection's next transaction may run on another server session, which holds no lock, while
    the one that took it goes on holding it for nobody: the lock then keeps no second writer out
    (a lock is granted again to the session holding it, whoever's transaction runs there)."""
    row = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE {_GRANTED_HERE} AND l.pid = pg_backend_pid()"
        f" AND {_KEY} = {key})",
        (run_id,),
    ).fetchone()
    return bool(row and row[0])


def held_already(run_id: str) -> StoreError:
    """Why a run's lock is not taken on a session that holds it already (`holds`)."""
    return StoreError(
        f"run {run_id}: this database session holds the run's lock already, before this process took it: another "
        "client's session, handed over by a pooler of transactions? ELSPETH's connections must be sessions of their "
        "own (docs/scaling.md, 'Connections and pooling'); nothing was written"
    )


def not_holding(run_id: str) -> StoreError:
    """Why a writer stops when its transaction's session does not hold the run's lock (`holds`)."""
    return StoreError(
        f"run {run_id}: this transaction's database session does not hold the run's lock, which its connection "
        "took: a pooler of transactions between ELSPETH and the server? ELSPETH's connections must be sessions of "
        "their own (docs/scaling.md, 'Connections and pooling'); nothing more was written"
    )


def writes(holder: str) -> bool:
    """Whether the holder of a run's locks (`PostgresRecorder.lock_holder`) is a process writing
    the run (or a session that does not say): else an erasure or a rebuild, which ends soon and
    leaves the run as it was (`commits.hold_for_transaction` names it)."""
    return not holder.startswith("elspeth ") or holder.startswith("elspeth writer")


def holding(holder: str | None) -> str:
    """What the holder of a run's locks (`lock_holder`) is doing, as a refusal says it; None (it
    ended since the lock was refused) is said as a holder that does not name itself."""
    holder = holder or ""
    name = holder.removeprefix("elspeth ")
    if not writes(holder):
        return f"held right now by another process that is {name}"
    return f"still being written by another process{f' ({name})' if name else ''}"


def lock_holder(conn: Any, run_id: str) -> str | None:
    """Who holds the run's writer or sender lock, as its session names itself ('' when it does
    not); None when no session that may write does. Read from pg_locks rather than by trying the
    lock, so asking never gets in the way of a writer (or a resume) taking it. Any role may take an advisory
    lock unless `db upgrade` could revoke that (landscape/roles.py): a holder counts only if its
    session's user is a member of the writer role or of the tables' owner (a superuser is a
    member of every role). A writer is named before an erasure or a rebuild holding the other."""
    row = conn.execute(
        "SELECT coalesce(a.application_name, '') FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        f" WHERE {_GRANTED_HERE} AND l.pid <> pg_backend_pid() AND {_KEY} IN ({WRITER_LOCK}, {SENDER_LOCK})"
        " AND (pg_has_role(a.usesysid, to_regrole(%s), 'MEMBER')"
        " OR pg_has_role(a.usesysid, (SELECT relowner FROM pg_class WHERE oid = to_regclass('events')), 'MEMBER'))"
        " ORDER BY a.application_name LIKE 'elspeth writer%%' DESC LIMIT 1",
        (run_id, run_id, Role.WRITER.value),
    ).fetchone()
    return None if row is None else str(row[0])


def hold_for_transaction(conn: Any, run_id: str, doing: str) -> bool:
    """Take both of the run's locks (`BOTH_LOCKS`) until `conn`'s transaction (a connection or a
    cursor) ends: False when another session holds either, as a live writer or sender does
    (StoreError when this one does: `held_already`). What
    must not happen while anyone writes the run (a projections rebuild, an erasure) holds them.
    The session is named `elspeth {doing} pid=N` meanwhile, so that a resume refused by the locks
    says what holds them (`PostgresRecorder.lock_holder`), not that the run is being written."""
    if holds(conn, run_id, WRITER_LOCK) or holds(conn, run_id, SENDER_LOCK):
        raise held_already(run_id)  # (a writer's session: the locks would be granted again)
    conn.execute("SELECT set_config('application_name', %s, true)", (f"elspeth {doing} pid={os.getpid()}"[:63],))
    (free,) = conn.execute(
        f"SELECT pg_try_advisory_xact_lock({WRITER_LOCK}) AND pg_try_advisory_xact_lock({SENDER_LOCK})",
        (run_id, run_id),
    ).fetchone() or (False,)
    return bool(free)


def open_log(
    conn: psycopg.Connection[Any],
    run_id: str,
    verified: tuple[MerkleAccumulator, bytes] | None,
    keys: tuple[str, ...] = BOTH_LOCKS,
) -> tuple[MerkleAccumulator, bytes]:
    """Take the run's lock `keys` on `conn` (see `lock`) and return the run's Merkle tree and head
    hash: the connection that sends the run's events.

    `verified` is the tree and head of the log as a reader has just verified it (a resume):
    taken as it is only if the log, now that the lock is held, still ends at that event; anything
    else (another writer came between) is rebuilt from the hash column (the leaves), and the
    caller sees the seq move. The connection is closed if this fails."""
    try:
        with driver_errors(f"opening the writer of run {run_id}"):
            row = conn.execute("SELECT current_setting('server_encoding')").fetchone()
            encoding = row[0] if row else ""
            if encoding != "UTF8":
                # The projections decode the events' JSON in the server, which reads it in the
                # database's encoding: anything else fails on the first character it lacks.
                raise StoreError(
                    f"the audit store's database has encoding {encoding}: ELSPETH needs UTF8 "
                    "(create it with ENCODING 'UTF8', or point landscape.url at one that has it)"
                )
            conn.commit()
        lock(conn, run_id, keys)
        with driver_errors(f"opening the writer of run {run_id}"):
            tip = conn.execute(
                "SELECT seq, hash FROM events WHERE run_id = %s ORDER BY seq DESC LIMIT 1", (run_id,)
            ).fetchone()
            tree: MerkleAccumulator | None = None
            head = GENESIS
            if verified is not None:
                tree, head = verified
                if (tree.size, head) != ((tip[0] + 1, bytes(tip[1])) if tip else (0, GENESIS)):
                    tree = None
            if tree is None:
                hashes = [bytes(r[0]) for r in conn.execute(
                    "SELECT hash FROM events WHERE run_id = %s ORDER BY seq", (run_id,)
                )]  # fmt: skip
                tree = MerkleAccumulator()
                tree.extend_data(hashes)
                head = hashes[-1] if hashes else GENESIS
            conn.commit()
    except LandscapeError:
        conn.close()
        raise
    return tree.copy(), head


def send(
    conn: psycopg.Connection[Any], chain: Chain, batch: Batch, sealed: Sealed | None = None
) -> tuple[Chain, SignedCheckpoint | None]:
    """Copy the batch's payloads, then its events as they are chained (`Chain.seal`; or as `sealed`
    holds them, chained already on this `chain`: `Chain.sealed`), project the events, store the
    signed checkpoint, and commit: all in one transaction. Returns the chain after them and the
    checkpoint, which may be witnessed now that it is durable."""
    run_id = chain.run_id
    chain.check_follows(batch)  # (before the transaction begins)
    if sealed is not None and (sealed.on, sealed.after.tree.size - batch.count) != (chain.head, chain.tree.size):
        raise StoreError(f"run {run_id}: a batch was chained on another end of the log than the one committed")
    after, checkpoint = chain, None
    with driver_errors(f"committing events of run {run_id}", conn=conn, run_id=run_id):
        with conn.cursor() as cur:
            if not holds(cur, run_id, SENDER_LOCK):  # (in this transaction: its session is the one to hold it)
                conn.rollback()  # (not left open: behind a pooler, it would keep a server session)
                raise not_holding(run_id)
            if chain.last_from is not None:
                # The events and steps the commit before this one wrote, read back while their
                # pages are still in memory and changed since the server's last checkpoint: the
                # first read of a committed row notes on its page that it is committed, and with
                # data checksums on (PostgreSQL 18's default), a page's first change after a
                # checkpoint is logged whole. Left to a run's first reader (its replay, export or
                # resume), that logged and wrote back every page of the log once more.
                cur.execute(_SETTLE, {"r": run_id, "lo": chain.last_from, "hi": batch.first_seq})
            if batch.payloads:
                # Commitments are salted at random, so a new payload never meets an old one.
                with cur.copy("COPY payloads (run_id, hash, salt, data, recorded_at) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.write(payload_copy(run_id, batch.payloads))
            if batch.count:
                with cur.copy(f"COPY events ({EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)") as cp:
                    if sealed is None:
                        after, checkpoint = chain.seal(batch, cp.write)
                    else:
                        for data in sealed.copy_data:
                            cp.write(data)
                        after, checkpoint = sealed.after, sealed.checkpoint
                # Where cross-run readers find these events (`read_since`): one row for the
                # commit, its transaction id the server's (a second in this transaction fails).
                cur.execute(
                    "INSERT INTO public.event_commits (run_id, first_seq, last_seq) VALUES (%s, %s, %s)",
                    (run_id, batch.first_seq, after.tree.size - 1),
                )
                # The server derives the analyst tables from the events just copied (on its own
                # core), in this same transaction: they are never behind the log.
                project(cur, run_id, batch.first_seq, after.tree.size - 1)
            if checkpoint is not None and chain.notary is not None:
                size, root, note = checkpoint
                cur.execute(
                    "INSERT INTO public.checkpoints (run_id, tree_size, root, note, verifier, recorded_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    (run_id, size, root, note, chain.notary.verifier.text(), batch.recorded_at),
                )
            faults.reached("commit")
        conn.commit()
    return after, checkpoint


def release(conn: psycopg.Connection[Any], run_id: str, keys: tuple[str, ...] = BOTH_LOCKS) -> None:
    """Drop what was not committed, release the run's lock `keys` and close the connection."""
    try:
        conn.rollback()
        for key in keys:
            conn.execute(f"SELECT pg_advisory_unlock({key})", (run_id,))
        conn.commit()
    except psycopg.Error:
        pass  # the connection is gone, and the lock with it: nothing is left to release
    finally:
        conn.close()
