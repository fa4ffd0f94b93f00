"""An index in (tx_id, global_position) order, the order cross-run readers page in.

Revision ID: 0003
Revises: 0002

`Recorder.read_since` reads the events of finished transactions in that order (see
landscape/postgres.py for why position alone could skip a late commit).
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("events_tx_order", "events", ["tx_id", "global_position"])


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
