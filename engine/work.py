"""What the processor's parts share: a token at work, a pending sink write, the resolved
pipeline, and the context (the fold, the event sink, the run's in-memory rows)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.dag import Dag
from engine.expressions import Expression
from engine.plugins.protocol import Aggregation, Row, Sink, Transform
from engine.settings import AggregationSettings, CoalesceSettings, GateSettings, RetrySettings, TransformSettings
from landscape.canonical import UnrecordableRow, commit_data, encode_row
from landscape.fold import RunFold
from landscape.records import Payload
from statecharts import events as ev

Emit = Callable[[str, ev.EventBase], None]
PutPayload = Callable[[str, Payload], None]


# A step's output rows are recorded together, before the next durability point: a row that
# expands into many (json_explode of a large row, batch_replicate) may make at most this much. A
# hostile review's 117 KB row (100 KB of text and an array of 3,000) took 1 GB of memory and 614 MB
# of store; unbounded, a 2 MB line could ask for tens of GB.
MAX_OUTPUT_BYTES = 256 * 2**20
# And at most this many rows: each output becomes a token with its events and its place in memory
# until the next durability point (about 3.4 KB each), however small its row (a review's 200 rows
# asking batch_replicate for 10,000 copies each took 6.8 GB).
MAX_OUTPUT_ROWS = 100_000


def encode_outputs(rows: list[Row]) -> list[bytes]:
    """The canonical bytes of a step's output rows; UnrecordableRow for one that cannot be
    recorded as it is, for more than MAX_OUTPUT_ROWS of them, or once they take more than
    MAX_OUTPUT_BYTES together."""
    if len(rows) > MAX_OUTPUT_ROWS:
        raise UnrecordableRow(f"it made {len(rows)} output rows, more than the {MAX_OUTPUT_ROWS} one step may make")
    encoded, total = [], 0
    for row in rows:
        data = encode_row(row)
        total += len(data)
        if total > MAX_OUTPUT_BYTES:
            limit = f"{MAX_OUTPUT_BYTES >> 20} MiB" if MAX_OUTPUT_BYTES % 2**20 == 0 else f"{MAX_OUTPUT_BYTES} bytes"
            raise UnrecordableRow(f"its {len(rows)} output rows take more than {limit}, the most one step may make")
        encoded.append(data)
    return encoded


@dataclass(slots=True)
class Work:
    """A token and its current row."""

    token_id: str
    row: Row
    hash: str
    at: str
    row_index: int
    branch: str | None = None
    fork_id: str | None = None
    # The row's canonical bytes when known (b"" otherwise): a step whose output has the same
    # bytes records the input's commitment again instead of a second copy of the data.
    data: bytes = b""


@dataclass(slots=True)
class PendingWrite:
    token_id: str
    outcome: str
    node: str | None
    reason: str | None
    row: Row  # kept until the write is durable, for `on_write_failure`
    tried: tuple[str, ...] = ()  # the sinks that refused the row before this one (no loop of fallbacks)


@dataclass
class Nodes:
    """Everything the processor needs to know about the pipeline, resolved once."""

    dag: Dag
    transforms: dict[str, tuple[TransformSettings, Transform]]
    gates: dict[str, tuple[GateSettings, Expression]]
    coalesces: dict[str, CoalesceSettings]
    aggregations: dict[str, tuple[AggregationSettings, Aggregation, Expression | None]]
    sinks: dict[str, Sink]
    on_validation_failure: str
    retry: RetrySettings = field(default_factory=RetrySettings)
    coalesce_of_branch: dict[str, str] = field(default_factory=dict)
    write_failure: dict[str, str | None] = field(default_factory=dict)  # sink -> on_write_failure
    unparsed_keys: tuple[str, ...] = ("__raw_line__", "__row_number__")  # the source's (`Source`)


@dataclass
class Context:
    """The state the processor's parts share for one run. Only `stack` and `waiting` are the
    processor's own, and they are a cache of the payload store (rebuilt from it on resume)."""

    nodes: Nodes
    fold: RunFold
    emit: Emit
    put_payload: PutPayload
    now: Callable[[], float]
    # Returns only while this process still writes the run (`RunWriter.still_writer`): asked
    # before a sink is cut back to its durable position.
    fence: Callable[[], None]
    stack: list[Work] = field(default_factory=list)  # tokens to advance, the last one first
    # Rows of tokens waiting at a coalesce or in a batch, by token id.
    waiting: dict[str, Work] = field(default_factory=dict)

    def store(self, row: Row) -> str:
        """Put a row in the payload store; returns its hash."""
        return self.store_data(encode_row(row))

    def store_data(self, data: bytes) -> str:
        """Put a row's canonical bytes in the payload store; returns their commitment."""
        h, payload = commit_data(data)
        self.put_payload(h, payload)
        return h
