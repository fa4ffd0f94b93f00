"""Erasure records signed by the key that signs the runs: `erasure_seals`.

Revision ID: 0012
Revises: 0011

Why: an erasure record explains why a payload the log references is gone, and was signed by
nothing. Whoever could write to the store as its owner or a superuser could delete a payload and
write a record that explains it, and no verifier could tell that record from a genuine one. From
here `elspeth purge` signs, in the transaction that records and deletes, one note per run it
erases from: the Merkle root of the digests of the records it writes (landscape/seal.py). Each
record names its seal (`erasures.seal_id`); records from before this revision name none, and a
verifier given a key says they are signed by nothing.

`erasure_seals` is append-only and written by the owner alone, as `erasures` is (the grant rule
in landscape/roles.py). The trigger that stamps each record's time and role now resolves `now()`
in `pg_catalog` only: purge signs the time it reads with `pg_catalog.now()`, and a `now()` of
another schema earlier on a role's search path would otherwise put another time on the record.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

DDL = """
CREATE TABLE erasure_seals (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id TEXT NOT NULL,
    note TEXT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX erasure_seals_run ON erasure_seals (run_id);
CREATE TRIGGER erasure_seals_no_update_delete BEFORE UPDATE OR DELETE ON erasure_seals
    FOR EACH ROW EXECUTE FUNCTION elspeth_append_only();
CREATE TRIGGER erasure_seals_no_truncate BEFORE TRUNCATE ON erasure_seals
    FOR EACH STATEMENT EXECUTE FUNCTION elspeth_append_only();

ALTER TABLE erasures ADD COLUMN seal_id BIGINT REFERENCES erasure_seals (id);
ALTER FUNCTION elspeth_erasure_stamp() SET search_path = pg_catalog, public;
CREATE INDEX erasures_seal ON erasures (seal_id);
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
