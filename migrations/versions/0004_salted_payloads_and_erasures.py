"""Salted payload commitments, when each payload was written, and the erasure records.

Revision ID: 0004
Revises: 0003

- `payloads.salt`: the random salt of the row's commitment, sha256(salt ‖ data) (see
  landscape/canonical.py); empty for payloads written before this revision, whose commitment is
  the plain sha256 of the data.
- `payloads.recorded_at`: when the writer stored it; retention counts from it. Payloads from
  before this revision get the time of the upgrade.
- `erasures`: append-only, one row per erased payload: when, which run and row, why, by which
  database role, and whether by retention or by request.
- A payload may be deleted only together with an erasure record naming it (same transaction or
  before); updating or truncating payloads stays refused.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DDL = """
ALTER TABLE payloads ADD COLUMN salt BYTEA NOT NULL DEFAULT '\\x'::bytea;
ALTER TABLE payloads ADD COLUMN recorded_at TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX payloads_recorded_at ON payloads (recorded_at);

CREATE TABLE erasures (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hash BYTEA NOT NULL,
    run_id TEXT,
    row_index BIGINT,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    erased_at TIMESTAMPTZ NOT NULL,
    erased_by TEXT NOT NULL DEFAULT current_user
);
CREATE INDEX erasures_hash ON erasures (hash);
CREATE INDEX erasures_run ON erasures (run_id);

CREATE TRIGGER erasures_no_update_delete BEFORE UPDATE OR DELETE ON erasures
    FOR EACH ROW EXECUTE FUNCTION elspeth_append_only();
CREATE TRIGGER erasures_no_truncate BEFORE TRUNCATE ON erasures
    FOR EACH STATEMENT EXECUTE FUNCTION elspeth_append_only();
CREATE TRIGGER payloads_no_truncate BEFORE TRUNCATE ON payloads
    FOR EACH STATEMENT EXECUTE FUNCTION elspeth_append_only();

CREATE FUNCTION elspeth_erasure_recorded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM erasures WHERE hash = OLD.hash) THEN
        RAISE EXCEPTION 'a payload is deleted only with an erasure record (elspeth purge)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END
$$;
CREATE TRIGGER payloads_delete_only_erased BEFORE DELETE ON payloads
    FOR EACH ROW EXECUTE FUNCTION elspeth_erasure_recorded();
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
