"""The store's table names, without SQLAlchemy: `landscape.schema` defines the tables, and
importing it costs a third of a second (SQLAlchemy), which a short `elspeth run` should not pay
for names alone. `tests/test_store.py` checks that these are the names schema.py defines."""

from __future__ import annotations

# The analyst tables, every one a projection of the events, in schema.py's order.
PROJECTION_TABLE_NAMES = (
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

# Every table of the store (alembic's own bookkeeping table included).
STORE_TABLE_NAMES = frozenset(
    {*PROJECTION_TABLE_NAMES, "events", "payloads", "erasures", "checkpoints", "store_meta", "alembic_version"}
)
