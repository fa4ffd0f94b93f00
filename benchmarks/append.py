"""Append throughput of the real store path against a bare COPY of the same rows.

    python benchmarks/append.py [--events N] [--commit-every N]

Uses the embedded PostgreSQL (or ELSPETH_DATABASE_URL). The store path encodes each event with
msgspec, hashes it into the chain, stores a row payload for every TokenCreated, and commits with
COPY once per durability point; the baseline COPYs the already-encoded rows it produced.
Last line: store_events_per_s=N copy_events_per_s=M ratio=R
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

from landscape.canonical import hash_row
from landscape.db import open_database
from landscape.store import _EVENT_COLUMNS, RunWriter
from statecharts import events as ev


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--commit-every", type=int, default=5_000, help="events per commit")
    args = ap.parse_args()
    with open_database(os.environ.get("ELSPETH_DATABASE_URL")) as db:
        run_id = f"bench-{uuid.uuid4().hex[:8]}"
        writer = RunWriter(db.connect(), run_id)
        baseline: list[tuple[object, ...]] = []  # the exact rows the store sent, for the COPY run
        started = time.perf_counter()
        n = 0
        i = 0
        while n < args.events:
            h, data = hash_row({"id": i, "name": f"customer {i}", "amount": i * 7 % 10_000, "region": "north"})
            writer.put_payload(h, data)
            writer.append("token", f"r{i}", ev.TokenCreated(row_index=i, data_hash=h, at="validated"))
            n += 1
            if n < args.events:
                writer.append(
                    "token",
                    f"r{i}",
                    ev.StepCompleted(node="gate", input_hash=h, output_hash=h, duration_us=3, next="out", route="true"),
                )
                n += 1
            i += 1
            if writer.pending >= args.commit_every:
                baseline.extend(writer._events)  # counted in the store's time, a slight handicap
                writer.commit()
        baseline.extend(writer._events)
        writer.commit()
        store_s = time.perf_counter() - started
        writer.close()

        copy_run = f"{run_id}-copy"
        encoded = [(copy_run, *r[1:]) for r in baseline]
        conn = db.connect()
        started = time.perf_counter()
        for k in range(0, len(encoded), args.commit_every):
            with conn.cursor() as cur, cur.copy(f"COPY events ({_EVENT_COLUMNS}) FROM STDIN") as cp:
                for r in encoded[k : k + args.commit_every]:
                    cp.write_row(r)
            conn.commit()
        copy_s = time.perf_counter() - started
        conn.close()
    store_rate = args.events / store_s
    copy_rate = len(encoded) / copy_s
    print(
        f"events={args.events} commit_every={args.commit_every} store_seconds={store_s:.2f} copy_seconds={copy_s:.2f}"
    )
    print(f"store_events_per_s={store_rate:.0f} copy_events_per_s={copy_rate:.0f} ratio={store_rate / copy_rate:.2f}")


if __name__ == "__main__":
    main()
