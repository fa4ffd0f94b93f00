"""What a run's writer does on its connection: open the run's log for writing, and send one
durability point's batch in one transaction.

They are here, apart from `PgRunWriter`, because the writer can run them on a thread of its own
process or in a child process (`landscape.sender_process`); both call these same functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from landscape import faults
from landscape.chain import GENESIS
from landscape.db import driver_errors
from landscape.errors import ConcurrentWriter, LandscapeError, StoreError
from landscape.merkle import MerkleAccumulator
from landscape.projection_sql import project

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
    """One durability point's worth of work for the database."""

    events: bytes  # binary COPY data (`landscape.copybin`), empty if none
    payloads: bytes  # likewise
    projected: tuple[int, int] | None  # the seqs of these events (first, last), to project
    checkpoint: tuple[int, bytes, str] | None  # (tree size, root, signed note) after these events
    recorded_at: datetime


def lock(conn: psycopg.Connection[Any], run_id: str, keys: tuple[str, ...]) -> None:
    """Take the run's `keys` (advisory locks, for the session) or none of them: ConcurrentWriter
    if another session holds one. The connection is closed if this fails."""
    try:
        with driver_errors(f"opening the writer of run {run_id}"):
            conn.execute(
                "SELECT set_config('application_name', %s, false)", (f"elspeth writer pid={os.getpid()}"[:63],)
            )
            taken: list[str] = []
            for key in keys:
                got = conn.execute(f"SELECT pg_try_advisory_lock({key})", (run_id,)).fetchone()
                if not got or not got[0]:
                    for held in taken:
                        conn.execute(f"SELECT pg_advisory_unlock({held})", (run_id,))
                    conn.commit()
                    raise ConcurrentWriter(
                        f"run {run_id} is being written by another process (its writer still holds the run's lock)"
                    )
                taken.append(key)
            conn.commit()
    except LandscapeError:
        conn.close()
        raise


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


def send(conn: psycopg.Connection[Any], run_id: str, batch: Batch, verifier: str | None) -> None:
    """Copy the batch's payloads and events, project the events, store its signed checkpoint
    (`verifier`: the notary's key, as text), and commit: all in one transaction."""
    with driver_errors(f"committing events of run {run_id}", conn=conn, run_id=run_id):
        with conn.cursor() as cur:
            if batch.payloads:
                # Commitments are salted at random, so a new payload never meets an old one.
                with cur.copy("COPY payloads (run_id, hash, salt, data, recorded_at) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.write(batch.payloads)
            if batch.events:
                with cur.copy(f"COPY events ({EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.write(batch.events)
            if batch.projected is not None:
                # The server derives the analyst tables from the events just copied (on its own
                # core), in this same transaction: they are never behind the log.
                project(cur, run_id, *batch.projected)
            if batch.checkpoint is not None and verifier is not None:
                size, root, note = batch.checkpoint
                cur.execute(
                    "INSERT INTO public.checkpoints (run_id, tree_size, root, note, verifier, recorded_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    (run_id, size, root, note, verifier, batch.recorded_at),
                )
            faults.reached("commit")
        conn.commit()


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
