"""An index of the events that name the folder a run ran in: RunCreated, RunResumed.

Revision ID: 0014
Revises: 0013

Why: a resume that runs in another folder than the run's last (which was gone) records it
(`RunResumed.working_dir`), and the run's relative sink locations resolve there from then on.
Who asks where a run's files are (a new run's check that it strands no crashed run's file, a
resume's that it cuts no later run's rows) reads that folder per run, before its log is read:
the newest of those events that names one. Among a run's own events (migration 0011's index)
are its sink flushes, one per durability point and sink; this index holds only the one or few
events of a run that can name a folder.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX events_run_folder ON events (run_id, seq) WHERE event_type IN ('RunCreated', 'RunResumed')"
    )


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
