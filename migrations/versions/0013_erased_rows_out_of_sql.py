"""What SQL could still read of an erased row: planner statistics, and sink files' hashes.

Revision ID: 0013
Revises: 0012

Why, found by a hostile review after `elspeth purge --row`:

- ANALYZE (run by autovacuum) keeps sampled column values, and any role that may read a table
  reads them back through the `pg_stats` view: the most common values and the histogram of
  `payloads.data` are whole rows, and the auditor read erased rows back in full. A statistics
  target of 0 makes ANALYZE skip `data` and `salt`; it does not remove what was sampled
  already, but a change of a column's type does, so each is "changed" to the type it has (bytea
  to bytea: no rewrite). The planner loses nothing it needs: payloads are found by their key.
- `artifacts.sha256` is a plain SHA-256 of a sink file's first bytes. For a flush of one row
  (a quarantine sink, `--commit-every 1`) the difference of two such prefixes is that row, and
  an analyst could confirm a guess at an erased row by hashing it, the very guess payloads are
  salted against. The analyst now reads the table's other columns only (landscape/roles.py,
  `ROW_DATA_COLUMNS`); its table-wide SELECT is taken here, and `db upgrade` then grants the
  columns. The auditor, who reads the payloads themselves, keeps it.
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE payloads ALTER COLUMN data SET STATISTICS 0, ALTER COLUMN salt SET STATISTICS 0, "
        "ALTER COLUMN data TYPE bytea, ALTER COLUMN salt TYPE bytea"
    )
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'elspeth_analyst') THEN "
        "REVOKE SELECT ON artifacts FROM elspeth_analyst; END IF; END $$"
    )


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
