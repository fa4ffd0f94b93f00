"""Append throughput of the real store path against a bare COPY of the same rows.

    python benchmarks/append.py [--events N] [--commit-every N] [--rounds N] [--merkle-only]

Uses the embedded PostgreSQL (or ELSPETH_DATABASE_URL). The store path encodes each event with
msgspec, stores a row payload for every TokenCreated, and commits with COPY once per durability
point, its sender process hashing the events into the chain; the baseline COPYs the same rows,
read back from the store and encoded beforehand (untimed), under another run id.
Both alternate for a few rounds and the best of each is reported (the server's checkpoints and
autovacuum make single runs noisy on a 2-core machine).
It also measures the run's Merkle tree alone (no database): the leaf hash and accumulator
append of every event, plus one root per durability point, as a writer checkpointing there would.
Line: merkle_events_per_s=N merkle_us_per_event=U merkle_root_us=R (`--merkle-only`: just that).
Last line: store_events_per_s=N copy_events_per_s=M ratio=R
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import uuid

from landscape import copybin
from landscape.canonical import commit_row
from landscape.commits import EVENT_COLUMNS
from landscape.db import Database, open_database
from landscape.merkle import MerkleAccumulator, leaf_hash
from landscape.postgres import PostgresRecorder
from statecharts import events as ev


def store_path(db: Database, events: int, commit_every: int) -> tuple[float, str]:
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    writer = PostgresRecorder(db).open_writer(run_id, sending="process")  # as `elspeth run` uses it
    started = time.perf_counter()
    n = i = committed = 0
    while n < events:
        h, payload = commit_row({"id": i, "name": f"customer {i}", "amount": i * 7 % 10_000, "region": "north"})
        writer.put_payload(h, payload)
        writer.append("token", f"r{i}", ev.TokenCreated(row_index=i, data_hash=h, at="validated"))
        n += 1
        if n < events:
            step = ev.StepCompleted(node="gate", input_hash=h, output_hash=h, duration_us=3, next="out", route="true")
            writer.append("token", f"r{i}", step)
            n += 1
        i += 1
        if writer.next_seq - committed >= commit_every:
            writer.commit(wait=False)
            committed = writer.next_seq
    writer.commit()
    seconds = time.perf_counter() - started
    writer.close()
    return seconds, run_id


def bare_copy(db: Database, run_id: str, commit_every: int) -> float:
    """The run's rows under another run id, encoded beforehand (untimed): a bare binary COPY."""
    copy_id = f"copy-{uuid.uuid4().hex[:8]}"
    conn = db.connect()
    stored = conn.execute(
        "SELECT seq, machine, entity_id, event_type, schema_version, "
        "(extract(epoch FROM recorded_at) * 1000000)::bigint, payload, payload_hash, prev_hash, hash "
        "FROM events WHERE run_id = %s ORDER BY seq",
        (run_id,),
    ).fetchall()
    encoded = [
        b"".join((copybin.count(11), copybin.text(copy_id), copybin.int8(seq), copybin.text(machine),
                  copybin.text(entity), copybin.text(kind), copybin.int2(version), copybin.timestamptz(at_us),
                  copybin.bytea(body), copybin.bytea(body_hash), copybin.bytea(prev), copybin.bytea(h)))
        for seq, machine, entity, kind, version, at_us, body, body_hash, prev, h in stored
    ]  # fmt: skip
    started = time.perf_counter()
    for k in range(0, len(encoded), commit_every):
        with conn.cursor() as cur, cur.copy(f"COPY events ({EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)") as cp:
            cp.write(copybin.block(encoded[k : k + commit_every]))
        conn.commit()
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


def merkle_cost(events: int, commit_every: int) -> tuple[float, float]:
    """(seconds for all events, seconds per root): leaf = the event's 32-byte chain hash."""
    chain = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(events)]  # stand-ins
    acc = MerkleAccumulator()
    roots = 0
    started = time.perf_counter()
    for n, event_hash in enumerate(chain, start=1):
        acc.append(leaf_hash(event_hash))
        if n % commit_every == 0:
            acc.root()
            roots += 1
    acc.root()
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(1000):
        acc.root()
    return seconds, (time.perf_counter() - started) / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--commit-every", type=int, default=5_000, help="events per commit")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--merkle-only", action="store_true", help="measure the Merkle tree alone, no database")
    args = ap.parse_args()
    merkle_seconds, root_seconds = min(merkle_cost(args.events, args.commit_every) for _ in range(args.rounds))
    print(
        f"merkle_events_per_s={args.events / merkle_seconds:.0f} "
        f"merkle_us_per_event={merkle_seconds / args.events * 1e6:.2f} merkle_root_us={root_seconds * 1e6:.1f}"
    )
    if args.merkle_only:
        return
    store_times, copy_times = [], []
    with open_database(os.environ.get("ELSPETH_DATABASE_URL")) as db:
        for _ in range(args.rounds):
            seconds, run_id = store_path(db, args.events, args.commit_every)
            store_times.append(seconds)
            copy_times.append(bare_copy(db, run_id, args.commit_every))
    store_rate = args.events / min(store_times)
    copy_rate = args.events / min(copy_times)
    print(
        f"events={args.events} commit_every={args.commit_every} rounds={args.rounds} "
        f"store_seconds={','.join(f'{t:.2f}' for t in store_times)} "
        f"copy_seconds={','.join(f'{t:.2f}' for t in copy_times)}"
    )
    print(f"store_events_per_s={store_rate:.0f} copy_events_per_s={copy_rate:.0f} ratio={store_rate / copy_rate:.2f}")


if __name__ == "__main__":
    main()
