"""Signed checkpoints of each run's Merkle tree, and the store's own id.

Revision ID: 0005
Revises: 0004

- `store_meta`: facts about this audit store; `store_id` (random, made here) names the store in
  every checkpoint's origin (`elspeth/<store_id>/<run_id>`), so a checkpoint cannot be passed
  off as one of another store.
- `checkpoints`: append-only, one signed note (C2SP signed-note form) per durability point of a
  run: tree size, root, the note itself and the verifier key it was signed with.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DDL = """
CREATE TABLE store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO store_meta (key, value) VALUES ('store_id', replace(gen_random_uuid()::text, '-', ''));
CREATE TRIGGER store_meta_no_update_delete BEFORE UPDATE OR DELETE ON store_meta
    FOR EACH ROW EXECUTE FUNCTION elspeth_append_only();

CREATE TABLE checkpoints (
    run_id TEXT NOT NULL,
    tree_size BIGINT NOT NULL,
    root BYTEA NOT NULL,
    note TEXT NOT NULL,
    verifier TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, tree_size)
);
CREATE TRIGGER checkpoints_no_update_delete BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION elspeth_append_only();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION elspeth_append_only();
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
