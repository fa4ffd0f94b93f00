"""runs.source_fingerprint, and the events' hashes, out of the analyst's reach.

Revision ID: 0016
Revises: 0015

Why, found by a hostile review after `elspeth purge --row`: `runs.source_fingerprint` is a plain
SHA-256 of the whole input file. For a small input, or one whose other rows are known, an analyst
could confirm a guess at an erased row by hashing the guessed file, the very guess payloads are
salted against (as `artifacts.sha256`, migration 0013). The analyst now reads the table's other
columns only (landscape/roles.py, `ROW_DATA_COLUMNS`); its table-wide SELECT is taken here, and
`db upgrade` then grants the columns. The auditor keeps it, and the run events that carry it.

And the analyst read each event's `payload_hash` (and chain `hash` and `prev_hash`, of which the
hash is computed from its visible columns and the payload hash): the SHA-256 of its body, which a
guess at the body confirms (a second review). A plain RunResumed's body is the input file's
fingerprint and no more, and a SinkFlushed's holds the sink file's hash that 0013 took from them.
Those three columns are taken too; the analyst keeps the events' other columns.
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'elspeth_analyst') THEN "
        "REVOKE SELECT ON runs FROM elspeth_analyst; "
        "REVOKE SELECT (payload_hash, hash, prev_hash) ON events FROM elspeth_analyst; END IF; END $$"
    )


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
