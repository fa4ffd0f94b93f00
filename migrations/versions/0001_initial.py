"""The event store, the payload store, the projection tables, and append-only triggers.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from landscape.schema import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = """
CREATE FUNCTION elspeth_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION elspeth_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION elspeth_append_only();
-- Payloads may be purged by retention (the chain covers their hashes), never rewritten.
CREATE TRIGGER payloads_no_update BEFORE UPDATE ON payloads
    FOR EACH ROW EXECUTE FUNCTION elspeth_append_only();
"""


def upgrade() -> None:
    # The first revision is the tables of landscape/schema.py as they stand; later revisions
    # spell out their changes with op.* calls, never by re-reading schema.py.
    metadata.create_all(op.get_bind())
    op.execute(APPEND_ONLY)


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
