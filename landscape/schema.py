"""The store's tables: SQLAlchemy Core only. Alembic's migrations create exactly these.

`events` and `payloads` are the source of truth. Every other table is a projection of the
events and can be dropped and rebuilt from them (`elspeth projections rebuild`).
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    text,
)

metadata = MetaData()

# The events and every table keyed by run are hash-partitioned on run_id (migration 0006): a run's
# rows stay in one partition, and old partitions can be detached and archived (docs/scaling.md).
PARTITION_BY = "HASH (run_id)"  # in 16 partitions: why, in migrations/versions/0006

# --- source of truth -------------------------------------------------------------------------

events = Table(
    "events",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    # Physical order across runs; an identity column may have gaps, seq never does.
    Column("global_position", BigInteger, Identity(), nullable=False),
    # The writing transaction, for cross-run readers that must not skip a late commit.
    Column("tx_id", BigInteger, nullable=False, server_default=text("(pg_current_xact_id()::text)::bigint")),
    Column("machine", Text, nullable=False),
    Column("entity_id", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("schema_version", SmallInteger, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    # The exact bytes that were hashed; never re-encoded.
    Column("payload", LargeBinary, nullable=False),
    Column("payload_hash", LargeBinary, nullable=False),
    Column("prev_hash", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    PrimaryKeyConstraint("run_id", "seq", name="events_pkey"),
    postgresql_partition_by=PARTITION_BY,
)
# A run's own events, a few among its tokens' (0011): `show` finds its lifecycle without the rest.
Index("events_run_level", events.c.run_id, events.c.seq, postgresql_where=text("machine = 'run'"))
# The events that can name the folder a run ran in (0014): one per run and per resume.
Index(
    "events_run_folder",
    events.c.run_id,
    events.c.seq,
    postgresql_where=text("event_type IN ('RunCreated', 'RunResumed')"),
)

# One row per transaction that appended a run's events, with the range of seqs it appended:
# where cross-run readers (`read_since`) find the events of finished transactions, in transaction
# order (0017). An index of the events on (tx_id, global_position) did that before at a fifth of
# the events' COPY; a row per commit costs one insert. Not partitioned: read across runs.
event_commits = Table(
    "event_commits",
    metadata,
    Column("tx_id", BigInteger, nullable=False, server_default=text("(pg_current_xact_id()::text)::bigint")),
    Column("run_id", Text, nullable=False),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("tx_id", "run_id", name="event_commits_pkey"),
)

payloads = Table(
    "payloads",
    metadata,
    # The run that wrote it ('' before 0007): the key leads with it, so a run's payloads are
    # together in the index (migration 0007 says why).
    Column("run_id", Text, nullable=False, server_default=text("''")),
    Column("hash", LargeBinary, nullable=False),  # sha256(salt ‖ data): the commitment events hold
    Column("data", LargeBinary, nullable=False),
    Column("salt", LargeBinary, nullable=False, server_default=text("'\\x'::bytea")),  # (0004)
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),  # (0004)
    PrimaryKeyConstraint("run_id", "hash", name="payloads_pkey"),
)
Index("payloads_recorded_at", payloads.c.recorded_at, postgresql_using="brin")  # ranges only (0007)

# Append-only: one row per erased payload (retention or a data subject's request), kept forever.
erasures = Table(
    "erasures",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("hash", LargeBinary, nullable=False),
    Column("run_id", Text),  # the run whose row was erased (retention: None before 0007)
    Column("row_index", BigInteger),
    Column("kind", Text, nullable=False),  # retention | request
    Column("reason", Text, nullable=False),
    Column("erased_at", DateTime(timezone=True), nullable=False),
    Column("erased_by", Text, nullable=False, server_default=text("CURRENT_USER")),
    # The signed note over this record and the others `purge` wrote with it (None before 0012).
    Column("seal_id", BigInteger, ForeignKey("erasure_seals.id")),
)
Index("erasures_hash", erasures.c.hash)
Index("erasures_run", erasures.c.run_id)
Index("erasures_seal", erasures.c.seal_id)

# Append-only: one signed note per run and `purge` over the erasure records it wrote (0012;
# landscape/seal.py).
erasure_seals = Table(
    "erasure_seals",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("run_id", Text, nullable=False),
    Column("note", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)
Index("erasure_seals_run", erasure_seals.c.run_id)

# Facts about this store; `store_id` names it in every checkpoint's origin (0005).
store_meta = Table(
    "store_meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

# Append-only: one signed checkpoint (C2SP signed note) per durability point of a run (0005).
checkpoints = Table(
    "checkpoints",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("tree_size", BigInteger, nullable=False),
    Column("root", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),
    Column("verifier", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("run_id", "tree_size"),
    postgresql_partition_by=PARTITION_BY,
)

# --- projections -----------------------------------------------------------------------------

runs = Table(
    "runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("settings_path", Text, nullable=False),
    Column("settings_hash", Text, nullable=False),
    Column("source_fingerprint", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("resumes", Integer, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    postgresql_partition_by=PARTITION_BY,
)

nodes = Table(
    "nodes",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("node", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("plugin", Text, nullable=False),
    Column("config_hash", Text, nullable=False),
    PrimaryKeyConstraint("run_id", "node"),
    postgresql_partition_by=PARTITION_BY,
)

rows = Table(
    "rows",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("row_index", BigInteger, nullable=False),
    Column("token_id", Text, nullable=False),
    Column("data_hash", Text, nullable=False),
    PrimaryKeyConstraint("run_id", "row_index"),
    postgresql_partition_by=PARTITION_BY,
)

tokens = Table(
    "tokens",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("token_id", Text, nullable=False),
    Column("row_index", BigInteger, nullable=False),
    Column("branch", Text),
    Column("data_hash", Text, nullable=False),
    Column("created_seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "token_id"),
    postgresql_partition_by=PARTITION_BY,
)

token_parents = Table(
    "token_parents",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("token_id", Text, nullable=False),
    Column("parent_id", Text, nullable=False),
    Column("ordinal", Integer, nullable=False),
    PrimaryKeyConstraint("run_id", "token_id", "ordinal"),
    postgresql_partition_by=PARTITION_BY,
)

node_states = Table(
    "node_states",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("token_id", Text, nullable=False),
    Column("node", Text, nullable=False),
    Column("input_hash", Text, nullable=False),
    Column("output_hash", Text, nullable=False),
    Column("route", Text),
    Column("duration_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "seq"),
    postgresql_partition_by=PARTITION_BY,
)
Index("node_states_token", node_states.c.run_id, node_states.c.token_id)

token_outcomes = Table(
    "token_outcomes",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("token_id", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("node", Text),
    Column("sink", Text),
    Column("reason", Text),  # a category: row_error, batch_failed, late_arrival, ...
    Column("detail", Text),  # what exactly went wrong, in words (migration 0002)
    Column("seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "token_id"),
    postgresql_partition_by=PARTITION_BY,
)

coalesces = Table(
    "coalesces",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("coalesce_id", Text, nullable=False),
    Column("coalesce", Text, nullable=False),
    Column("row_index", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("policy", Text, nullable=False),
    Column("arrived", Text, nullable=False),
    Column("missing", Text, nullable=False),
    Column("reason", Text),
    Column("trigger", Text),  # arrivals | timeout | end_of_source once decided (0015)
    Column("collisions", ARRAY(Text)),  # a merge's fields that differed between branches (0015)
    PrimaryKeyConstraint("run_id", "coalesce_id"),
    postgresql_partition_by=PARTITION_BY,
)

batches = Table(
    "batches",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("aggregation", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("trigger", Text),
    Column("size", Integer, nullable=False),
    Column("reason", Text),
    PrimaryKeyConstraint("run_id", "batch_id"),
    postgresql_partition_by=PARTITION_BY,
)

batch_members = Table(
    "batch_members",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("token_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("run_id", "batch_id", "token_id"),
    postgresql_partition_by=PARTITION_BY,
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("sink", Text, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("location", Text, nullable=False),
    Column("sha256", Text),  # of a file's bytes up to `position` (SinkFlushed.sha256); NULL: none recorded
    PrimaryKeyConstraint("run_id", "seq"),
    postgresql_partition_by=PARTITION_BY,
)

run_metrics = Table(
    "run_metrics",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("metric", Text, nullable=False),
    Column("value", Float, nullable=False),
    PrimaryKeyConstraint("run_id", "metric"),
    postgresql_partition_by=PARTITION_BY,
)

PROJECTION_TABLES = (
    runs,
    nodes,
    rows,
    tokens,
    token_parents,
    node_states,
    token_outcomes,
    coalesces,
    batches,
    batch_members,
    artifacts,
    run_metrics,
)
