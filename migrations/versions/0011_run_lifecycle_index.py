"""An index of each run's own events (machine 'run'), for `show` and `runs`.

Revision ID: 0011
Revises: 0010

Why: a run's lifecycle (created, started, resumed, interrupted, failed, completed) is a handful of
events among all of its tokens'; `show` read every event of the run through the primary key to
find them, or the planner scanned the whole partition, other runs' events too (a scale review:
150-330 ms of a 640,000-event run's `show`, 0.76 s in all, for three rows). A partial index holds
only the run-level events: a few entries per run, and nothing for a token's event to maintain.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # On the partitioned table: PostgreSQL builds it on every partition, and on any added later.
    op.execute("CREATE INDEX events_run_level ON events (run_id, seq) WHERE machine = 'run'")


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
