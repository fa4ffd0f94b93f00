"""Erasure records say truly who and when, and explain only their own run's payloads.

Revision ID: 0009
Revises: 0008

Why: the writer role could insert into `erasures`, naming any role as `erased_by`, any time as
`erased_at` and any run; records were then looked up by hash alone, so such a record could
stand for another run's real erasure, or explain a payload that was never stored. From here:

- the writer may only read `erasures` (the grant rule in landscape/roles.py, applied by every
  upgrade): the owner writes the records, when `elspeth purge` deletes payloads;
- a trigger sets `erased_by` to the inserting role and `erased_at` to the transaction's time,
  whatever the insert says;
- a payload may be deleted only with a record of its own run (a payload kept before 0007 has
  no run: any record of its hash, as before); readers look records up by (run, hash) likewise.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

DDL = """
CREATE FUNCTION elspeth_erasure_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.erased_by := current_user;
    NEW.erased_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER erasures_stamp BEFORE INSERT ON erasures
    FOR EACH ROW EXECUTE FUNCTION elspeth_erasure_stamp();

CREATE OR REPLACE FUNCTION elspeth_erasure_recorded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM erasures WHERE hash = OLD.hash AND (run_id = OLD.run_id OR OLD.run_id = '')) THEN
        RAISE EXCEPTION 'a payload is deleted only with an erasure record of its run (elspeth purge)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END
$$;
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
