"""Indexes a run's writes can afford: payloads keyed by (run_id, hash), a BRIN index for their
age, and no index on the events' global_position alone.

Revision ID: 0007
Revises: 0006

Why: a payload's name is `sha256(salt ‖ data)`, a random value, so an index on the hash alone
takes every new payload at a random place among all the store's payloads. A run then dirties
nearly every leaf page of that index (each with a full-page image in the WAL after a
checkpoint) and the cost of a row grows with the size of the store: measured here, 3,000
payloads into a store of 1.5 million took 265 ms, and 15 ms under (run_id, hash), where a run's
payloads share a narrow range of the index. Everything that reads payloads knows the run it
reads them for.

Payloads written before this revision get run_id '' (their run is not recorded on them; before
0004 one payload could serve several runs): readers look under the run and under ''.

`payloads.recorded_at` is only asked for ranges (retention: older than a date) and grows with
the table's physical order (rows are only appended), which is what a BRIN index is for: a few
pages summarise the whole table, and an insert costs next to nothing, where a b-tree took an
entry per payload. `events.global_position` alone has had no reader since 0003 (cross-run
readers page in (tx_id, global_position) order, which has its own index): its b-tree was a
third index entry per event for nothing.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE payloads ADD COLUMN run_id text NOT NULL DEFAULT ''")
    op.execute("ALTER TABLE payloads DROP CONSTRAINT payloads_pkey")
    op.execute("ALTER TABLE payloads ADD CONSTRAINT payloads_pkey PRIMARY KEY (run_id, hash)")
    op.execute("DROP INDEX payloads_recorded_at")
    op.execute("CREATE INDEX payloads_recorded_at ON payloads USING brin (recorded_at)")
    op.execute("DROP INDEX events_global_position")


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
