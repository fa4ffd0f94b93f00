"""Erasing row data without breaking a proof: retention and a data subject's request.

What goes is a payload's data and its salt (the row `payloads(hash, salt, data)`); what stays is
the commitment the events hold, so the chain, the Merkle tree and every proof still verify, while
a guessed value can no longer be confirmed (see `landscape.canonical`). Each erased payload gets
an append-only `erasures` record — when, which run and row, why, by which database role — written
in the same transaction as the delete; the database refuses to delete a payload without one.

A row's payloads are found from the events, not the projections (`landscape.export.lineage`):
every token descending from the row's source token (fork branches, expansions, merges and batch
outputs that contain it, through `TokenCreated.parents`) and every payload their creation and
steps reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from landscape.db import Database, driver_errors
from landscape.errors import LandscapeError, UnknownRun
from landscape.export import lineage
from landscape.postgres import PostgresRecorder
from landscape.verify import row_hashes


class ErasureRefused(LandscapeError):
    """An erasure that must not happen as asked (unknown row, a run still being written, ...)."""


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What an erasure would remove: payload hash -> (run, row) it belongs to."""

    kind: str
    payloads: dict[str, tuple[str | None, int | None]]
    tokens: list[str]  # the tokens whose data goes (requests only)
    already_erased: int


def plan_rows(db: Database, run_id: str, rows: Sequence[int]) -> Plan:
    """Every payload of the given source rows of a run, across all tokens that contain them."""
    recorder = PostgresRecorder(db)
    if not recorder.run_exists(run_id):
        raise UnknownRun(f"no run {run_id} in {db.describe()} (see `elspeth runs`)")
    if recorder.writer_alive(run_id):
        raise ErasureRefused(f"run {run_id} is being written right now; erase its rows once it has stopped")
    wanted = set(rows)
    found: dict[str, tuple[str | None, int | None]] = {}
    tokens: dict[str, int] = {}
    for row, stored in lineage(recorder.read_events(run_id), wanted):
        tokens[stored.entity_id] = row
        for h in row_hashes(stored.event):
            found.setdefault(h, (run_id, row))
    missing = sorted(wanted - set(tokens.values()))
    if missing:
        # Said in the CLI's numbering: rows counted from 1 (row_index + 1, as __row_number__).
        shown = ", ".join(str(m + 1) for m in missing)
        raise ErasureRefused(f"run {run_id} has no row {shown}; nothing was erased")
    present = recorder.payloads(run_id, found)
    return Plan(
        kind="request",
        payloads={h: where for h, where in found.items() if h in present},
        tokens=sorted(tokens),
        already_erased=len(found) - len(present),
    )


def plan_retention(db: Database, cutoff: datetime) -> Plan:
    """Every payload written before `cutoff` that is still there, with the run that wrote it
    (None for payloads written before payloads were kept by run)."""
    with driver_errors("planning retention"), db.connect() as conn:
        rows = conn.execute("SELECT hash, run_id FROM payloads WHERE recorded_at < %s", (cutoff,)).fetchall()
    return Plan(
        kind="retention", payloads={bytes(h).hex(): (run or None, None) for h, run in rows}, tokens=[], already_erased=0
    )


def erase(db: Database, plan: Plan, reason: str, now: datetime) -> int:
    """Record and delete, in one transaction. Returns the number of payloads erased."""
    if not reason.strip():
        raise ErasureRefused("an erasure needs a reason (--reason TEXT): it is recorded for good")
    hashes = sorted(plan.payloads)
    with driver_errors("erasing row data"), db.connect() as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO erasures (hash, run_id, row_index, kind, reason, erased_at) VALUES (%s,%s,%s,%s,%s,%s)",
                [(bytes.fromhex(h), *plan.payloads[h], plan.kind, reason, now) for h in hashes],
            )
            # By run and hash, the payloads' key; a payload from before 0007 is kept under run ''.
            cur.execute(
                "DELETE FROM payloads AS p USING unnest(%s::text[], %s::bytea[]) AS u(run_id, hash) "
                "WHERE p.hash = u.hash AND p.run_id IN (u.run_id, '')",
                ([plan.payloads[h][0] or "" for h in hashes], [bytes.fromhex(h) for h in hashes]),
            )
            erased = cur.rowcount
        conn.commit()
    return erased
