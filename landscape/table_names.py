"""The store's table names, without SQLAlchemy: `landscape.schema` defines the tables, and
importing it costs a third of a second (SQLAlchemy), which a short `elspeth run` should not pay
for names alone. `tests/test_store.py` checks that these are the names schema.py defines."""

from __future__ import annotations

import re

# The analyst tables, every one a projection of the events, in schema.py's order: each with its
# primary key and its columns, in order (what `replay --check` compares, without SQLAlchemy).
PROJECTION_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "runs": (
        ("run_id",),
        (
            "run_id",
            "status",
            "settings_path",
            "settings_hash",
            "source_fingerprint",
            "started_at",
            "ended_at",
            "resumes",
            "last_seq",
        ),
    ),
    "nodes": (
        ("run_id", "node"),
        ("run_id", "node", "kind", "plugin", "config_hash"),
    ),
    "rows": (
        ("run_id", "row_index"),
        ("run_id", "row_index", "token_id", "data_hash"),
    ),
    "tokens": (
        ("run_id", "token_id"),
        ("run_id", "token_id", "row_index", "branch", "data_hash", "created_seq"),
    ),
    "token_parents": (
        ("run_id", "token_id", "ordinal"),
        ("run_id", "token_id", "parent_id", "ordinal"),
    ),
    "node_states": (
        ("run_id", "seq"),
        ("run_id", "seq", "token_id", "node", "input_hash", "output_hash", "route", "duration_us"),
    ),
    "token_outcomes": (
        ("run_id", "token_id"),
        ("run_id", "token_id", "outcome", "node", "sink", "reason", "detail", "seq"),
    ),
    "coalesces": (
        ("run_id", "coalesce_id"),
        (
            "run_id",
            "coalesce_id",
            "coalesce",
            "row_index",
            "status",
            "policy",
            "arrived",
            "missing",
            "reason",
            "trigger",
            "collisions",
        ),
    ),
    "batches": (
        ("run_id", "batch_id"),
        ("run_id", "batch_id", "aggregation", "status", "trigger", "size", "reason"),
    ),
    "batch_members": (
        ("run_id", "batch_id", "token_id"),
        ("run_id", "batch_id", "token_id", "seq"),
    ),
    "artifacts": (
        ("run_id", "seq"),
        ("run_id", "seq", "sink", "position", "rows", "location", "sha256"),
    ),
    "run_metrics": (
        ("run_id", "metric"),
        ("run_id", "metric", "value"),
    ),
}
PROJECTION_TABLE_NAMES = tuple(PROJECTION_COLUMNS)

# Every table of the store (alembic's own bookkeeping table included).
STORE_TABLE_NAMES = frozenset(
    {
        *PROJECTION_TABLE_NAMES,
        "events",
        "event_commits",
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
