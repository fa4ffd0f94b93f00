"""What SQL could still read of an erased row: planner statistics, and sink files' hashes.

Revision ID: 0013
Revises: 0012

Why, found by a hostile review after `elspeth purge --row`:

- ANALYZE (run by autovacuum) keeps sampled column values, and any role that may read a table
  reads them back through the `pg_stats` view: the most common values and the histogram of
  `payloads.data` are whole rows, and the auditor read erased rows back in full. A statistics
  target of 0 makes ANALYZE skip `data` and `salt`; it does not remove what was sampled
  already. PostgreSQL 18 clears it (`pg_clear_attribute_stats`); before 18 a change of a
  column's type does, so each is "changed" to the type it has (bytea to bytea: no rewrite),
  which a view or rule reading the column forbids: the upgrade then stops, naming it. The
  planner loses nothing it needs: payloads are found by their key.
- `artifacts.sha256` is a plain SHA-256 of a sink file's first bytes. For a flush of one row
  (a quarantine sink, `--commit-every 1`) the difference of two such prefixes is that row, and
  an analyst could confirm a guess at an erased row by hashing it, the very guess payloads are
  salted against. The analyst now reads the table's other columns only (landscape/roles.py,
  `ROW_DATA_COLUMNS`); its table-wide SELECT is taken here, and `db upgrade` then grants the
  columns. The auditor, who reads the payloads themselves, keeps it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


# What depends on payloads.data or payloads.salt, so that PostgreSQL refuses to change their type:
# views and rules, policies, triggers, functions with a SQL body.
_READERS = """
SELECT DISTINCT CASE
    WHEN d.classid = 'pg_rewrite'::regclass THEN (
        SELECT CASE WHEN r.rulename = '_RETURN' THEN 'view ' || r.ev_class::regclass
                    ELSE 'rule ' || quote_ident(r.rulename) || ' on ' || r.ev_class::regclass END
        FROM pg_rewrite r WHERE r.oid = d.objid)
    WHEN d.classid = 'pg_policy'::regclass THEN (
        SELECT 'policy ' || quote_ident(p.polname) FROM pg_policy p WHERE p.oid = d.objid)
    WHEN d.classid = 'pg_trigger'::regclass THEN (
        SELECT 'trigger ' || quote_ident(t.tgname) FROM pg_trigger t WHERE t.oid = d.objid)
    WHEN d.classid = 'pg_proc'::regclass THEN 'function ' || d.objid::regprocedure
    ELSE 'an object of ' || d.classid::regclass
  END
FROM pg_depend d
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = 'payloads'::regclass AND d.deptype = 'n'
  AND d.refobjsubid IN (SELECT attnum FROM pg_attribute WHERE attrelid = 'payloads'::regclass
                        AND attname IN ('data', 'salt'))
ORDER BY 1
"""


def upgrade() -> None:
    conn = op.get_bind()
    op.execute("ALTER TABLE payloads ALTER COLUMN data SET STATISTICS 0, ALTER COLUMN salt SET STATISTICS 0")
    if conn.dialect.server_version_info >= (18,):
        for column in ("data", "salt"):
            op.execute(f"SELECT pg_clear_attribute_stats(current_schema(), 'payloads', '{column}', false)")
    else:
        readers = [row[0] for row in conn.execute(sa.text(_READERS))]
        if readers:
            raise RuntimeError(
                f"payloads.data or payloads.salt is used by {', '.join(readers)}, and before PostgreSQL 18 their "
                "sampled values can only be cleared by a change of type, which that forbids (migration 0013): drop "
                "it, run `elspeth db upgrade` again, then create it again; nothing was changed"
            )
        op.execute("ALTER TABLE payloads ALTER COLUMN data TYPE bytea, ALTER COLUMN salt TYPE bytea")
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'elspeth_analyst') THEN "
        "REVOKE SELECT ON artifacts FROM elspeth_analyst; END IF; END $$"
    )


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
