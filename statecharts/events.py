"""Every event ELSPETH records. One frozen, tagged msgspec Struct per event type, one union.

Each event is emitted by exactly one transition of one machine (see `machines.py`). Evolution
rule: a new field gets a default; an existing field never changes type or meaning. Anything
else is a new `SCHEMA_VERSION` with an upcaster in `upcast.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import msgspec


class EventBase(msgspec.Struct, frozen=True, tag=True, kw_only=True, omit_defaults=True):
    """A field at its default is left out of the stored bytes (smaller events; a field added
    later with a default leaves older events' bytes as they were). Stored bytes are never
    re-encoded, so this changes nothing for events already recorded."""

    SCHEMA_VERSION: ClassVar[int] = 1


# --- Run ---------------------------------------------------------------------------------------


class NodeDecl(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    kind: str
    plugin: str
    config_hash: str


class RunCreated(EventBase, frozen=True):
    settings_path: str
    settings_hash: str
    settings: dict[str, object]  # redacted: secrets appear only as HMAC fingerprints
    source_fingerprint: str
    nodes: list[NodeDecl]
    elspeth_version: str
    working_dir: str  # relative paths in the settings resolve against it, on resume too


class RunStarted(EventBase, frozen=True):
    pass


class RunResumed(EventBase, frozen=True):
    source_fingerprint: str
    forced: bool = False  # resumed despite a changed input (`--force`)
    # Set only when the run continues under other settings: changed text (which needs --force) or
    # another file with the same text (which does not). Later resumes load and compare these.
    settings_path: str | None = None
    settings_hash: str | None = None
    settings: dict[str, object] | None = None  # redacted, as in RunCreated
    nodes: list[NodeDecl] | None = None
    # Set only when the resume ran in another folder than the run's last (which was gone): the
    # settings' relative paths, and the sinks' locations, resolve here from then on.
    working_dir: str | None = None


class SinkFlushed(EventBase, frozen=True):
    sink: str
    position: int  # durable position (file byte offset, or rows committed)
    rows: int  # rows made durable by this flush
    location: str
    # A file sink's bytes up to `position`, as hex sha256 (None: a table, or a run from before
    # this was recorded). What ties the file to the run: a resume, and `show`, compare it.
    sha256: str | None = None


class SinkWriteFailed(EventBase, frozen=True):
    """One failed attempt to make a sink's rows durable."""

    sink: str
    attempt: int  # 1-based, within this durability point
    error: str
    at: float  # clock seconds (the circuit breaker is derived from these)
    retry_at: float | None = None  # when the next attempt is due; None: no more attempts


class SourceExhausted(EventBase, frozen=True):
    records: int  # records read from the source in total (valid and quarantined)


class RunCompleted(EventBase, frozen=True):
    pass


class RunFailed(EventBase, frozen=True):
    reason: str


class RunInterrupted(EventBase, frozen=True):
    reason: str  # "SIGINT", "SIGTERM", "SIGHUP", or "writer lost" when a resume finds a dead writer


class RunAbandoned(EventBase, frozen=True):
    reason: str  # the operator's (`elspeth abandon --reason`): why the run is not to go on


# --- Token -------------------------------------------------------------------------------------


class TokenCreated(EventBase, frozen=True):
    row_index: int  # the source record this token descends from
    data_hash: str
    at: str  # the connection the token enters
    parents: list[str] = []
    branch: str | None = None
    fork_id: str | None = None  # the forked token this branch descends from (coalesce key)
    # Set on the first valid source row of a flexible or observed source: (field, the type its
    # value fixed: str, int, float, bool, null; object and array accept anything). Later rows are
    # checked against it, on resume too: the log, not the source plugin, holds the lock. Pairs,
    # not an object: the canonical encoder sorts an object's keys, and pairs keep the row's field
    # order; and field names, users' data, never read as keys of the event.
    fixed_types: list[tuple[str, str]] | None = None


class StepCompleted(EventBase, frozen=True):
    node: str
    input_hash: str
    output_hash: str
    duration_us: int
    next: str  # the connection the token goes to next
    route: str | None = None  # a gate's route label


class TokenHeld(EventBase, frozen=True):
    coalesce_id: str
    branch: str


class TokenBuffered(EventBase, frozen=True):
    batch_id: str


class SinkAssigned(EventBase, frozen=True):
    sink: str
    outcome: str  # the terminal outcome once the sink is durable: completed|routed|diverted|quarantined
    node: str | None = None
    reason: str | None = None


class TokenCompleted(EventBase, frozen=True):
    sink: str


class TokenRouted(EventBase, frozen=True):
    sink: str
    node: str | None = None  # the gate that routed it (None in events written before it was kept)


class TokenDiverted(EventBase, frozen=True):
    node: str
    reason: str
    sink: str | None = None  # None: on_error was `discard`


class TokenQuarantined(EventBase, frozen=True):
    reason: str
    sink: str | None = None
    # the aggregation whose plugin rejected it; left out for a source row (older events lack it)
    node: str | None = None


class TokenForked(EventBase, frozen=True):
    node: str
    children: list[str]


class TokenExpanded(EventBase, frozen=True):
    node: str
    children: list[str]


class TokenCoalesced(EventBase, frozen=True):
    coalesce_id: str
    into: str


class TokenConsumed(EventBase, frozen=True):
    batch_id: str


class TokenFailed(EventBase, frozen=True):
    reason: str
    node: str | None = None
    detail: str | None = None


# --- Coalesce ----------------------------------------------------------------------------------


class CoalesceOpened(EventBase, frozen=True):
    coalesce: str
    row_index: int
    policy: str
    branches: list[str]
    deadline: float | None = None  # clock seconds
    fork_id: str = ""  # the forked token whose branches this coalesce joins


class BranchArrived(EventBase, frozen=True):
    branch: str
    token_id: str


class BranchLost(EventBase, frozen=True):
    branch: str
    token_id: str
    reason: str


class CoalesceMerged(EventBase, frozen=True):
    arrived: list[str]
    missing: list[str]
    into: str
    trigger: str  # "arrivals", "timeout", "end_of_source"
    collisions: list[str] = []


class CoalesceFailed(EventBase, frozen=True):
    # incomplete_branches | quorum_not_met | branch_lost | select_missing, and timeout: a
    # best_effort coalesce to which nothing arrived before its deadline
    reason: str
    arrived: list[str]
    missing: list[str]
    # "timeout" or "end_of_source" when the failure was forced (nothing more could arrive); left
    # out when arrivals and losses decided it. Older events, which lack it, read as left out.
    trigger: str = ""


# --- Batch -------------------------------------------------------------------------------------


class BatchOpened(EventBase, frozen=True):
    aggregation: str
    opened_at: float  # clock seconds, for `batch_age_seconds`
    deadline: float | None = None


class BatchFlushing(EventBase, frozen=True):
    trigger: str  # count | timeout | condition | end_of_source
    size: int


class BatchCompleted(EventBase, frozen=True):
    outputs: int


class BatchFailed(EventBase, frozen=True):
    reason: str


Event = (
    RunCreated
    | RunStarted
    | RunResumed
    | SinkFlushed
    | SinkWriteFailed
    | SourceExhausted
    | RunCompleted
    | RunFailed
    | RunInterrupted
    | RunAbandoned
    | TokenCreated
    | StepCompleted
    | TokenHeld
    | TokenBuffered
    | SinkAssigned
    | TokenCompleted
    | TokenRouted
    | TokenDiverted
    | TokenQuarantined
    | TokenForked
    | TokenExpanded
    | TokenCoalesced
    | TokenConsumed
    | TokenFailed
    | CoalesceOpened
    | BranchArrived
    | BranchLost
    | CoalesceMerged
    | CoalesceFailed
    | BatchOpened
    | BatchFlushing
    | BatchCompleted
    | BatchFailed
)

EVENT_TYPES: dict[str, type[EventBase]] = {
    cls.__name__: cls
    for cls in (
        RunCreated,
        RunStarted,
        RunResumed,
        SinkFlushed,
        SinkWriteFailed,
        SourceExhausted,
        RunCompleted,
        RunFailed,
        RunInterrupted,
        RunAbandoned,
        TokenCreated,
        StepCompleted,
        TokenHeld,
        TokenBuffered,
        SinkAssigned,
        TokenCompleted,
        TokenRouted,
        TokenDiverted,
        TokenQuarantined,
        TokenForked,
        TokenExpanded,
        TokenCoalesced,
        TokenConsumed,
        TokenFailed,
        CoalesceOpened,
        BranchArrived,
        BranchLost,
        CoalesceMerged,
        CoalesceFailed,
        BatchOpened,
        BatchFlushing,
        BatchCompleted,
        BatchFailed,
    )
}

# One canonical encoder: the bytes it produces are the bytes that are stored and hashed.
_encoder = msgspec.json.Encoder(order="deterministic")
_decoder = msgspec.json.Decoder(Event)


# The codec's own methods, not functions calling them: every event written or verified goes
# through one of them, and each is then one Python call less per event.
encode_event: Callable[[EventBase], bytes] = _encoder.encode
decode_event: Callable[[bytes], Event] = _decoder.decode
