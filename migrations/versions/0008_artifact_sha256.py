"""The sha256 of a file sink's bytes up to each durable position (`SinkFlushed.sha256`), in the
artifacts projection beside the position.

Revision ID: 0008
Revises: 0007

Why: the log recorded only how far a sink file was durable, so a file replaced by another of
the same size or larger (another run's output, an edit) still passed as the run's: `show` printed
the new file's hash, and a resume cut that file back and wrote on. With the digest recorded, a
resume refuses a file whose first bytes are not those the run made durable, and `show` says
`changed`. The column is filled from each row's own SinkFlushed event (a projection holds what
the events say): flushes recorded before events carried the digest have none (NULL).
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE artifacts ADD COLUMN sha256 text")
    op.execute(
        "UPDATE artifacts a SET sha256 = convert_from(e.payload, 'UTF8')::json ->> 'sha256' "
        "FROM events e WHERE e.run_id = a.run_id AND e.seq = a.seq AND e.event_type = 'SinkFlushed'"
    )


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
