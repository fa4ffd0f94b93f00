"""The plugin contract. Plugins are plain objects built from their options; they keep no durable
state of their own (durable state lives in events), and they never see the database.

Errors: a plugin raises `RowError` for a problem with one row (it goes to `on_error`); any other
exception is wrapped by the engine's error boundary into a `PluginError` naming the node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from engine.errors import EngineError
from engine.plugins.reasons import recorded

Row = dict[str, Any]


class RowError(EngineError):
    """A problem with one row: recorded as the row's error and routed to `on_error`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RowsRefused(EngineError):
    """What a sink's `flush` raises when the destination itself refused some of the rows (a
    constraint of an existing table): `reasons` maps each refused token id to why, holding no
    row data. Nothing of the flush is kept; the refused rows follow `on_write_failure` as a row
    error at `write` does, and the others are written again without them."""

    def __init__(self, reasons: dict[str, str]) -> None:
        super().__init__(f"{len(reasons)} row(s) refused")
        self.reasons = reasons


class PluginConfigError(EngineError):
    """Options that a plugin cannot work with; `path` is the key path inside `options`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class PluginError(EngineError):
    """A plugin failed in a way that is not about one row (I/O, a bug). Fails the run."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"{node}: {message}")
        self.node = node
        self.message = message


def at_node(node: str, error: Exception) -> PluginError:
    """The error boundary: whatever a plugin raised, as a PluginError naming its node (`source`,
    `sink 'name'`, a transform's name), so that it fails the run on record instead of ending in
    a traceback. What is recorded of a foreign exception is `reasons.recorded`: its class name,
    and its message only when that cannot quote the rows the plugin was handling."""
    if isinstance(error, PluginError):
        return PluginError(node, error.message) if error.node in ("sink", "source") else error
    return PluginError(node, recorded(error))


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One record read from a source. `index` is 0-based over all records (valid or not);
    exactly one of `row` (validated and coerced) or `error` (why it was quarantined) is set.
    `raw` is what a quarantine sink receives (see SETTINGS.md, Schemas). `fixed_types` is set by
    the engine on the row that fixes the types of undeclared fields (see `schema.type_locked`).
    `line`: the line of the input the record starts on, where the source knows it (a record too
    large to record is named by it and its index)."""

    index: int
    row: Row | None
    raw: Row
    error: str | None = None
    fixed_types: list[tuple[str, str]] | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What an aggregation returns for one batch. `rejected` holds (input index, reason) for
    input rows left out of the output and recorded as quarantined (batch_replicate). `sources`,
    when given, holds for each output row the indexes of the input rows it was made from (a
    copy: its one input; None: every input, as for a sum): its token's parents, so that
    lineage, `explain --row` and an erasure of one row reach only the outputs holding it."""

    rows: list[Row]
    rejected: list[tuple[int, str]] = field(default_factory=list)
    sources: list[list[int]] | None = None


@runtime_checkable
class Source(Protocol):
    kind: ClassVar[str]  # "source"
    # (Optional) `UNPARSED_KEYS: ClassVar[tuple[str, ...]]`: the keys of what a quarantine sink
    # receives for a line the source could not parse, `__raw_line__` first; a record too large to
    # record is sent in those keys, so that it fits a CSV sink whose columns such a line fixed
    # (and the other way round). Without it: `__raw_line__`, `__row_number__`.

    def fingerprint(self) -> str:
        """sha256 hex of the input, so a resume can tell that the input changed."""
        ...

    def read(self, start: int = 0) -> Iterator[SourceItem | None]:
        """Yield records in order, beginning with the record whose index is `start`. A live
        source yields None when it has nothing yet; the engine then waits for the next deadline
        (coalesce and batch timeouts fire while the source is idle)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Transform(Protocol):
    kind: ClassVar[str]  # "transform"
    # (Optional) `expands: ClassVar[bool] = True` when `process` may return several rows: such a
    # transform is refused on a branch a coalesce joins (docs/plugins.md, "Writing a plugin").
    # (Optional) `named_fields: dict[str, str]`: the fields its options name, each with its option's
    # key path; where no row reaching it can hold one, the settings are refused.
    # (Optional) `output_fields(fields: tuple[str, ...]) -> tuple[str, ...]`: the fields its output
    # rows can hold, given those its input rows can (docs/plugins.md, "Writing a plugin").
    # (Optional) `field_problems(fields: tuple[str, ...], certain: frozenset[str]) -> dict[str, str]`:
    # given the fields rows reaching it may hold and those every one holds (behind a source's
    # schema of mode fixed, as the steps before it left them), its options' key paths that cannot
    # work there, each with the reason.

    def process(self, row: Row) -> Row | list[Row]:
        """Return the new row, or a list of rows (an expansion). Raise RowError for a bad row."""
        ...


@runtime_checkable
class Aggregation(Protocol):
    kind: ClassVar[str]  # "aggregation"
    # (Optional) `named_fields`, as a transform's.
    # (Optional) `one_row_per_batch: ClassVar[bool] = True` when `flush` makes exactly one row:
    # settings that want another count from it are refused (docs/plugins.md, "Writing a plugin").

    def flush(self, rows: list[Row]) -> BatchResult:
        """Process one batch. Raise RowError for a batch error (fails every token in it)."""
        ...


@runtime_checkable
class Sink(Protocol):
    kind: ClassVar[str]  # "sink"

    def open(self, run_id: str, position: int | None) -> None:
        """Prepare for writing. `position` is None for a fresh run; on resume it is the durable
        position returned by the last recorded `flush`, and the sink drops anything after it."""
        ...

    def write(self, token_id: str, row: Row) -> None:
        """Buffer one row. Token ids are stable across resume (a database sink deletes the rows of
        ids it committed after the durable position when it opens, and refuses an id twice)."""
        ...

    def flush(self) -> int:
        """Make every buffered row durable (fsync / commit) and return the durable position.
        Raise `RowsRefused`, keeping nothing, when the destination refuses some rows alone."""
        ...

    def close(self) -> None:
        """Finish the output (e.g. a JSON array's closing bracket). Called once, after the last
        flush of a completed run; never on interruption."""
        ...

    def location(self) -> str:
        """Where the output is, for the audit trail (a path or a redacted URL)."""
        ...

    def release(self) -> None:
        """Let go of files and connections without finishing the output (a run that stopped
        early and will be resumed). Safe to call at any time, more than once."""
        ...


@dataclass(frozen=True, slots=True)
class WriterClaim:
    """Who writes a run's sinks from now on, handed to each sink that has `fence_as(claim)`
    before it opens: a `generation` drawn under the run's lock, higher than any earlier writer's
    of the run (`RunWriter.generation`), a `writer` named for people (its process and host), and
    `held`, which returns only while this process still holds the run (its database session,
    and the run's lock with it, lives). A writer that stalled while
    its run was resumed elsewhere must write nothing the resume wrote: a sink that can, asks
    where the asking and its write cannot be told apart (a file sink: under its file's lock), or
    keeps a claim where it writes (a database sink: in its own transactions)."""

    generation: int
    writer: str
    held: Callable[[], None]


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """A registry entry: how to build the plugin and what options it takes (for
    `elspeth plugins list`)."""

    name: str
    kind: str
    factory: Any  # Callable[[Mapping[str, Any]], plugin]; raises PluginConfigError
    options: Mapping[str, str]  # option name -> short description with its default
