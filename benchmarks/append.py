"""Append throughput of the real store path against a bare COPY of the same rows.

    python benchmarks/append.py [--events N] [--commit-every N] [--rounds N]

Uses the embedded PostgreSQL (or ELSPETH_DATABASE_URL). The store path encodes each event with
msgspec, hashes it into the chain, stores a row payload for every TokenCreated, and commits with
COPY once per durability point; the baseline COPYs the already-encoded event rows it produced.
Both alternate for a few rounds and the best of each is reported (the server's checkpoints and
autovacuum make single runs noisy on a 2-core machine).
Last line: store_events_per_s=N copy_events_per_s=M ratio=R
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from typing import Any

from landscape.canonical import commit_row
from landscape.db import Database, open_database
from landscape.postgres import _EVENT_COLUMNS, PostgresRecorder
from statecharts import events as ev


def store_path(db: Database, events: int, commit_every: int) -> tuple[float, list[tuple[Any, ...]]]:
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    writer = PostgresRecorder(db).open_writer(run_id, pipelined=True)  # as the engine uses it
    sent: list[tuple[Any, ...]] = []  # the exact rows the store sent, for the baseline
    started = time.perf_counter()
    n = i = 0
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
        if writer.pending >= commit_every:
            sent.extend(writer._events)  # counted in the store's time: a slight handicap
            writer.commit(wait=False)
    sent.extend(writer._events)
    writer.commit()
    seconds = time.perf_counter() - started
    writer.close()
    return seconds, sent


def bare_copy(db: Database, rows: list[tuple[Any, ...]], commit_every: int) -> float:
    copy_run = f"copy-{uuid.uuid4().hex[:8]}"
    encoded = [(copy_run, *r[1:]) for r in rows]
    conn = db.connect()
    started = time.perf_counter()
    for k in range(0, len(encoded), commit_every):
        with conn.cursor() as cur, cur.copy(f"COPY events ({_EVENT_COLUMNS}) FROM STDIN") as cp:
            for r in encoded[k : k + commit_every]:
                cp.write_row(r)
        conn.commit()
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--commit-every", type=int, default=5_000, help="events per commit")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    store_times, copy_times = [], []
    with open_database(os.environ.get("ELSPETH_DATABASE_URL")) as db:
        for _ in range(args.rounds):
            seconds, rows = store_path(db, args.events, args.commit_every)
            store_times.append(seconds)
            copy_times.append(bare_copy(db, rows, args.commit_every))
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
