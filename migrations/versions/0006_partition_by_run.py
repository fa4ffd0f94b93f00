"""The events table and the tables keyed by run, hash-partitioned on run_id.

Revision ID: 0006
Revises: 0005

Why: one run's rows stay together (a partition holds whole runs), indexes stay per partition, and
a partition can be detached, archived and dropped without a table-wide DELETE (which the events'
append-only triggers refuse anyway). See docs/scaling.md.

Why 16 partitions of HASH (run_id): runs are named by the engine, not by date, so range
partitioning would need a second key; hash spreads runs evenly. 16 keeps each partition's share
of a large store manageable and the planner's per-partition cost low (every run-keyed query names
run_id, so it touches one partition). A power of two, because a hash partition of modulus 16 can
later be split in place into two of modulus 32 (remainders r and r + 16) without touching the
other fifteen.

An existing store is upgraded in the migration's one transaction: each table is renamed aside,
its identity moved, a partitioned table of the same columns, keys, indexes and triggers is
created under the old name, the rows are moved, and the old table is dropped. The grants are
given again by `migrate` right after (landscape/roles.py), by table name. The partitions get no
grants: nobody but the owner reads or writes them other than through the parent.
"""

from __future__ import annotations

import re
from typing import Any

from alembic import op
from sqlalchemy import text

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

MODULUS = 16

# Tables keyed by run: the log, the signed checkpoints and every projection.
TABLES = (
    "events",
    "checkpoints",
    "runs",
    "nodes",
    "rows",
    "tokens",
    "token_parents",
    "node_states",
    "token_outcomes",
    "coalesces",
    "batches",
    "batch_members",
    "artifacts",
    "run_metrics",
)


def _one(conn: Any, sql: str, **params: Any) -> list[Any]:
    return list(conn.execute(text(sql), params).fetchall())


def _rebuild(conn: Any, table: str, *, partitioned: bool) -> None:
    """Replace `table` with a table of the same columns, keys, indexes and triggers (partitioned
    by HASH (run_id) or not), holding the same rows."""
    old = f"{table}_before_0006"
    # What the new table must carry, read before anything is renamed.
    indexes = _one(
        conn,
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), con.conname, pg_get_constraintdef(con.oid) "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid "
        "WHERE i.indrelid = CAST(:t AS regclass) ORDER BY c.relname",
        t=table,
    )
    triggers = _one(
        conn,
        "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
        "WHERE tgrelid = CAST(:t AS regclass) AND NOT tgisinternal AND tgparentid = 0 ORDER BY tgname",
        t=table,
    )
    identity = _one(
        conn,
        "SELECT attname, attidentity FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
        "AND attidentity <> '' AND NOT attisdropped",
        t=table,
    )
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    for name, _, _, _ in indexes:  # renaming a key's index renames its constraint too
        op.execute(f"ALTER INDEX {name} RENAME TO {name}_before_0006")
    for column, _ in identity:  # its sequence goes with it; the new table gets its own below
        op.execute(f"ALTER TABLE {old} ALTER COLUMN {column} DROP IDENTITY")
    by = " PARTITION BY HASH (run_id)" if partitioned else ""
    op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMMENTS){by}")
    if partitioned:
        for r in range(MODULUS):
            op.execute(
                f"CREATE TABLE {table}_p{r:02d} PARTITION OF {table} FOR VALUES WITH (MODULUS {MODULUS}, REMAINDER {r})"
            )
    for column, kind in identity:
        always = "ALWAYS" if kind == "a" else "BY DEFAULT"
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} ADD GENERATED {always} AS IDENTITY")
    for _, definition, constraint, constraint_def in indexes:
        if constraint is not None:
            op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} {constraint_def}")
        else:
            op.execute(definition)  # names `table`, which is the new one now
    overriding = " OVERRIDING SYSTEM VALUE" if any(kind == "a" for _, kind in identity) else ""
    op.execute(f"INSERT INTO {table}{overriding} SELECT * FROM {old}")
    for column, _ in identity:
        op.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
            f"coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)"
        )
    op.execute(f"DROP TABLE {old}")
    for _, definition in triggers:
        # A row trigger on the parent is cloned onto every partition; a statement trigger is
        # not, and TRUNCATE of one partition fires that partition's own, so each gets its own.
        op.execute(definition)
        if partitioned and " FOR EACH STATEMENT " in definition:
            for r in range(MODULUS):
                op.execute(re.sub(rf" ON ((?:\S+\.)?){table} ", rf" ON \g<1>{table}_p{r:02d} ", definition, count=1))


def upgrade() -> None:
    conn = op.get_bind()
    for table in TABLES:
        _rebuild(conn, table, partitioned=True)


def downgrade() -> None:
    raise RuntimeError("the audit store is not downgraded: its history must not be dropped")
