"""A payload's deletion is checked against the erasure records once per statement, not per row.

Revision ID: 0010
Revises: 0009

Why: the row trigger asked `erasures` once for each deleted payload, by hash and run. `purge`
records the erasures and deletes the payloads in one transaction, so the table's statistics never
knew those records (on a fresh store it had never been analyzed): each lookup was planned to read
every record of the run, and a first retention purge took time in the square of its payloads
(28,013 payloads: 9 s; 55,981: 33 s; a 200,000-row run's, about an hour). One check after the
statement, over all the rows it deleted (a transition table), is one anti-join: 55,981 payloads in
under 2 s. The rule is the same: a payload is deleted only with an erasure record of its own run
(a payload kept before 0007 has no run: any record of its hash), else the whole statement fails.
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

DDL = """
DROP TRIGGER payloads_delete_only_erased ON payloads;
DROP FUNCTION elspeth_erasure_recorded();
CREATE FUNCTION elspeth_erasures_recorded() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, public AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM gone g
        WHERE NOT EXISTS (
            SELECT 1 FROM public.erasures e WHERE e.hash = g.hash AND (e.run_id = g.run_id OR g.run_id = '')
        )
    ) THEN
        RAISE EXCEPTION 'a payload is deleted only with an erasure record of its run (elspeth purge)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER payloads_delete_only_erased AFTER DELETE ON payloads
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION elspeth_erasures_recorded();
"""


def upgrade() -> None:
    op.execute(DDL)


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
