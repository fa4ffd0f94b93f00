"""token_outcomes.detail: what exactly made a token fail, next to the reason's category.

Revision ID: 0002
Revises: 0001

Rows projected before this revision have no detail; `elspeth projections rebuild RUN_ID`
fills it in from the events, which always held it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("token_outcomes", sa.Column("detail", sa.Text()))


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
