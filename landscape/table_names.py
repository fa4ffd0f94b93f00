"""The store's table names, without SQLAlchemy: `landscape.schema` defines the tables, and
importing it costs a third of a second (SQLAlchemy), which a short `elspeth run` should not pay
for names alone. `tests/test_store.py` checks that these are the names schema.py defines."""

from __future__ import annotations

import re

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
    {
        *PROJECTION_TABLE_NAMES,
        "events",
        "payloads",
        "erasures",
        "erasure_seals",
        "checkpoints",
        "store_meta",
        "alembic_version",
    }
)

# Tables of the store that are not in schema.py: the 16 hash partitions of each partitioned
# table (`events_p00`..`events_p15`, migration 0006) and the copies a migration keeps for a
# moment (`events_before_0006`). A pattern, not a list: partitions may be added or renamed.
_STORE_TABLE_TAIL = re.compile(r"(?:_p[0-9]+|_before_[0-9]+)?")


def is_store_table_name(name: str) -> bool:
    """Whether `name` (in any case) is a table of the store, one of its partitions, or a
    migration's copy of one."""
    folded = name.casefold()
    return any(
        folded.startswith(table) and _STORE_TABLE_TAIL.fullmatch(folded, len(table)) is not None
        for table in STORE_TABLE_NAMES
    )
