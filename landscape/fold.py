"""The fold: a run's events, applied in seq order through the compiled statecharts, give its state.

The engine applies every event it emits to a `RunFold` before appending it, so a fresh run, a
resumed run and `elspeth replay` all hold exactly the state the log describes. An event that is
illegal from the fold's current state is corruption (or an engine bug), reported with its seq.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from landscape.errors import CorruptLog
from landscape.token_ids import EndedIds
from statecharts import events as ev
from statecharts.compiled import BATCH, COALESCE, EVENT_MACHINE, RUN, TOKEN, InvalidTransition
from statecharts.machines import INITIAL, RUN_ENDED, BatchState


class IllegalEvent(CorruptLog):
    def __init__(self, run_id: str, seq: int, message: str) -> None:
        super().__init__(f"run {run_id}: event seq {seq} is not a legal transition: {message}")
        self.seq = seq
        self.detail = message


@dataclass(slots=True)
class TokenInfo:
    state: str
    row_index: int
    data_hash: str
    at: str  # the connection the token is at, or goes to next
    branch: str | None
    fork_id: str | None
    place: str | None = None  # coalesce id when held, batch id when buffered, sink when pending
    outcome: str | None = None  # the outcome a pending_sink token gets once its sink is durable
    reason: str | None = None
    node: str | None = None


@dataclass(slots=True)
class CoalesceInfo:
    state: str
    name: str
    row_index: int
    policy: str
    branches: list[str]
    deadline: float | None
    fork_id: str
    arrived: dict[str, str] = field(default_factory=dict)  # branch -> token id, in arrival order
    lost: list[str] = field(default_factory=list)


@dataclass(slots=True)
class BatchInfo:
    state: str
    aggregation: str
    opened_at: float
    deadline: float | None
    members: list[str] = field(default_factory=list)
    trigger: str | None = None


@dataclass
class RunFold:
    run_id: str
    status: str = INITIAL
    settings_path: str = ""
    settings_hash: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # redacted, as last recorded (RunCreated, RunResumed)
    source_fingerprint: str = ""
    working_dir: str = ""
    nodes: list[ev.NodeDecl] = field(default_factory=list)  # as last declared (RunCreated, RunResumed)
    resumes: int = 0
    last_seq: int = -1
    tokens: dict[str, TokenInfo] = field(default_factory=dict)  # non-terminal tokens only
    outcomes: Counter[str] = field(default_factory=Counter)  # terminal outcome -> tokens
    coalesces: dict[str, CoalesceInfo] = field(default_factory=dict)  # waiting only
    resolved_coalesces: dict[str, str] = field(default_factory=dict)  # id -> merged | failed
    resolved_forks: dict[str, str] = field(default_factory=dict)  # id -> fork id, for pruning
    batches: dict[str, BatchInfo] = field(default_factory=dict)  # not yet completed/failed
    open_batch: dict[str, str] = field(default_factory=dict)  # aggregation -> collecting batch
    batches_opened: Counter[str] = field(default_factory=Counter)  # aggregation -> count
    sink_positions: dict[str, int] = field(default_factory=dict)
    sink_digests: dict[str, str | None] = field(default_factory=dict)  # SinkFlushed.sha256, the last
    sink_locations: dict[str, str] = field(default_factory=dict)  # SinkFlushed.location, the last
    # Each sink's first SinkFlushed position: the bytes its file held before the run wrote to it
    # (the baseline a run records as it first opens a sink: an append-mode file's earlier rows).
    sink_starts: dict[str, int] = field(default_factory=dict)
    # The data hash of the first row made durable in each sink (the first token its first flush of
    # rows wrote): a CSV file without a header or schema has that row's columns, and a resume must
    # continue in them. (Not the first row sent: a flush that failed, its rows diverted, leaves
    # the file as it was, and the next row accepted fixes the columns.)
    sink_first_rows: dict[str, str] = field(default_factory=dict)
    # Consecutive failed attempts per sink and when the last one was: the circuit breaker.
    sink_failures: dict[str, int] = field(default_factory=dict)
    sink_failed_at: dict[str, float] = field(default_factory=dict)
    source_records: int = 0  # source records turned into tokens: the source cursor
    source_exhausted: bool = False
    # The types the first valid source row fixed for undeclared fields (None: not fixed yet).
    fixed_types: dict[str, str] | None = None
    # Ended token ids, kept only when checking a stored log (replay) so that a token created
    # again after it ended is caught (about a bit each: `EndedIds`); a live run does not need them.
    ended: EndedIds | None = None

    # -- applying ----------------------------------------------------------------------------

    def apply(self, seq: int, entity_id: str, event: ev.EventBase) -> None:
        handler = _HANDLERS[type(event)]
        try:
            if self.status in RUN_ENDED and type(event) not in _RUN_EVENTS:
                # Rows move only while the run is not over: after it ended only the run's own
                # events may follow, which its machine checks (a resume first).
                # Appended to an ended run by someone who can write to the store, a row's event
                # would otherwise be a legal transition of its own machine.
                raise InvalidTransition("run", str(self.status), type(event).__name__)
            handler(self, entity_id, event)
        except InvalidTransition as e:
            raise IllegalEvent(self.run_id, seq, f"{entity_id}: {e}") from e
        self.last_seq = seq

    def apply_all(self, stored: Iterable[Any]) -> RunFold:
        """Apply `StoredEvent`s (anything with seq, entity_id and event)."""
        for e in stored:
            self.apply(e.seq, e.entity_id, e.event)
        return self

    # -- run ---------------------------------------------------------------------------------

    def _run(self, event: ev.EventBase) -> None:
        self.status = RUN.apply(self.status, type(event).__name__)

    def _run_created(self, _id: str, e: ev.RunCreated) -> None:
        self._run(e)
        self.settings_path = e.settings_path
        self.settings_hash = e.settings_hash
        self.settings = e.settings
        self.source_fingerprint = e.source_fingerprint
        self.working_dir = e.working_dir
        self.nodes = list(e.nodes)

    def _run_resumed(self, _id: str, e: ev.RunResumed) -> None:
        self._run(e)
        self.resumes += 1
        self.source_fingerprint = e.source_fingerprint
        if e.settings_hash is not None:  # resumed under other settings: later resumes use these
            self.settings_hash = e.settings_hash
        if e.settings_path is not None:
            self.settings_path = e.settings_path
        if e.settings is not None:  # what the sinks wrote under from here (a resume compares layouts)
            self.settings = e.settings
        if e.working_dir is not None:  # where relative paths resolve from here
            self.working_dir = e.working_dir
        if e.nodes is not None:  # declared again under other settings: each name's last declaration
            self.nodes = list({n.name: n for n in [*self.nodes, *e.nodes]}.values())

    def _run_plain(self, _id: str, e: ev.EventBase) -> None:
        self._run(e)

    def _run_completed(self, _id: str, e: ev.RunCompleted) -> None:
        # ARCHITECTURE §8, 1 and 6: a run completes once every token has ended and every
        # coalesce and batch is resolved. The Run machine cannot see its tokens, so the fold
        # says it: a log that completes with rows still in flight lost them on the way, and
        # `replay --check` and `verify` must not pass it.
        after = RUN.apply(self.status, type(e).__name__)
        still = self.unresolved()
        if still:
            raise InvalidTransition("run", f"{self.status}, with {still}", type(e).__name__)
        self.status = after

    def _sink_flushed(self, _id: str, e: ev.SinkFlushed) -> None:
        self._run(e)
        self.sink_starts.setdefault(e.sink, e.position)
        self.sink_positions[e.sink] = e.position
        self.sink_digests[e.sink] = e.sha256
        self.sink_locations[e.sink] = e.location
        self.sink_failures.pop(e.sink, None)

    def _sink_write_failed(self, _id: str, e: ev.SinkWriteFailed) -> None:
        self._run(e)
        self.sink_failures[e.sink] = self.sink_failures.get(e.sink, 0) + 1
        self.sink_failed_at[e.sink] = e.at

    def _source_exhausted(self, _id: str, e: ev.SourceExhausted) -> None:
        self._run(e)
        self.source_exhausted = True

    # -- token -------------------------------------------------------------------------------

    def _token(self, token_id: str, event: ev.EventBase) -> TokenInfo:
        t = self.tokens.get(token_id)
        if t is None:
            raise InvalidTransition("token", "unknown or ended", type(event).__name__)
        t.state = TOKEN.apply(t.state, type(event).__name__)
        return t

    def _token_created(self, token_id: str, e: ev.TokenCreated) -> None:
        if token_id in self.tokens or (self.ended is not None and token_id in self.ended):
            raise InvalidTransition("token", "exists", "TokenCreated")
        state = TOKEN.apply(INITIAL, "TokenCreated")
        self.tokens[token_id] = TokenInfo(state, e.row_index, e.data_hash, e.at, e.branch, e.fork_id)
        if not e.parents:
            # A source row: the next one the source read (a resume starts its source at this
            # count, so a row out of order would move it past a real one, or back over one).
            if e.row_index != self.source_records:
                raise InvalidTransition(
                    "run", f"{self.source_records} source rows read", f"a TokenCreated of row_index {e.row_index}"
                )
            self.source_records += 1
        if e.fixed_types is not None:
            if self.fixed_types is not None:
                raise InvalidTransition("run", "source types fixed", "TokenCreated with fixed_types")
            self.fixed_types = dict(e.fixed_types)

    def _step(self, token_id: str, e: ev.StepCompleted) -> None:
        t = self._token(token_id, e)
        t.data_hash = e.output_hash
        t.at = e.next
        t.place = None

    def _held(self, token_id: str, e: ev.TokenHeld) -> None:
        self._token(token_id, e).place = e.coalesce_id

    def _buffered(self, token_id: str, e: ev.TokenBuffered) -> None:
        batch = self.batches.get(e.batch_id)
        if batch is None or batch.state != BatchState.COLLECTING:
            raise InvalidTransition("batch", "not collecting", "TokenBuffered")
        self._token(token_id, e).place = e.batch_id
        batch.members.append(token_id)

    def _sink_assigned(self, token_id: str, e: ev.SinkAssigned) -> None:
        t = self._token(token_id, e)
        t.place, t.outcome, t.reason, t.node = e.sink, e.outcome, e.reason, e.node

    def _ended(self, token_id: str, e: ev.EventBase) -> None:
        t = self._token(token_id, e)
        sink = getattr(e, "sink", None)  # (its row durable there: the event follows the sink's flush)
        if sink is not None and sink not in self.sink_first_rows:
            self.sink_first_rows[sink] = t.data_hash
        del self.tokens[token_id]
        self.outcomes[t.state] += 1
        if self.ended is not None:
            self.ended.add(token_id)

    # -- coalesce ----------------------------------------------------------------------------

    def _coalesce(self, coalesce_id: str, event: ev.EventBase) -> CoalesceInfo:
        c = self.coalesces.get(coalesce_id)
        if c is None:
            state = self.resolved_coalesces.get(coalesce_id, "unknown")
            raise InvalidTransition("coalesce", state, type(event).__name__)
        c.state = COALESCE.apply(c.state, type(event).__name__)
        return c

    def _coalesce_opened(self, coalesce_id: str, e: ev.CoalesceOpened) -> None:
        if coalesce_id in self.coalesces or coalesce_id in self.resolved_coalesces:
            raise InvalidTransition("coalesce", "exists", "CoalesceOpened")
        state = COALESCE.apply(INITIAL, "CoalesceOpened")
        self.coalesces[coalesce_id] = CoalesceInfo(
            state, e.coalesce, e.row_index, e.policy, list(e.branches), e.deadline, e.fork_id
        )

    def _branch_arrived(self, coalesce_id: str, e: ev.BranchArrived) -> None:
        self._coalesce(coalesce_id, e).arrived[e.branch] = e.token_id

    def _branch_lost(self, coalesce_id: str, e: ev.BranchLost) -> None:
        self._coalesce(coalesce_id, e).lost.append(e.branch)

    def _coalesce_resolved(self, coalesce_id: str, e: ev.EventBase) -> None:
        c = self._coalesce(coalesce_id, e)
        del self.coalesces[coalesce_id]
        # Remembered so that a branch arriving after the resolution is failed as late, not
        # taken for the start of a new coalesce.
        self.resolved_coalesces[coalesce_id] = c.state
        self.resolved_forks[coalesce_id] = c.fork_id

    def prune_resolved(self) -> None:
        """Forget resolved coalesces that no live token can still reach. A branch token
        descends from its fork while it lives, so once no live token carries a fork's id,
        no late arrival for it is possible; keeping them would grow with the input."""
        live = {t.fork_id for t in self.tokens.values() if t.fork_id is not None}
        for cid, fork_id in list(self.resolved_forks.items()):
            if fork_id not in live:
                del self.resolved_forks[cid]
                del self.resolved_coalesces[cid]

    # -- batch -------------------------------------------------------------------------------

    def _batch(self, batch_id: str, event: ev.EventBase) -> BatchInfo:
        b = self.batches.get(batch_id)
        if b is None:
            raise InvalidTransition("batch", "unknown or ended", type(event).__name__)
        b.state = BATCH.apply(b.state, type(event).__name__)
        return b

    def _batch_opened(self, batch_id: str, e: ev.BatchOpened) -> None:
        if batch_id in self.batches or e.aggregation in self.open_batch:
            raise InvalidTransition("batch", "exists", "BatchOpened")
        state = BATCH.apply(INITIAL, "BatchOpened")
        self.batches[batch_id] = BatchInfo(state, e.aggregation, e.opened_at, e.deadline)
        self.open_batch[e.aggregation] = batch_id
        self.batches_opened[e.aggregation] += 1

    def _batch_flushing(self, batch_id: str, e: ev.BatchFlushing) -> None:
        b = self._batch(batch_id, e)
        b.trigger = e.trigger
        del self.open_batch[b.aggregation]

    def _batch_ended(self, batch_id: str, e: ev.EventBase) -> None:
        self._batch(batch_id, e)
        del self.batches[batch_id]

    # -- questions the engine and the CLI ask ------------------------------------------------

    def accounted(self) -> int:
        return sum(self.outcomes.values())

    def unresolved(self) -> str:
        """What keeps the run from completing, in words ("" when nothing): the tokens not ended
        and the coalesces and batches not resolved, how many and the first one's id."""
        parts = []
        for ids, one, many in (
            (self.tokens, "token not ended", "tokens not ended"),
            (self.coalesces, "open coalesce", "open coalesces"),
            (self.batches, "open batch", "open batches"),
        ):
            if ids:
                first, more = next(iter(ids)), ", …" if len(ids) > 1 else ""
                parts.append(f"{len(ids)} {one if len(ids) == 1 else many} ({first}{more})")
        return ", ".join(parts)


_RUN_EVENTS = frozenset(t for t in ev.EVENT_TYPES.values() if EVENT_MACHINE[t.__name__] == "run")

_Handler = Callable[[RunFold, str, Any], None]
_HANDLERS: dict[type[ev.EventBase], _Handler] = {
    ev.RunCreated: RunFold._run_created,
    ev.RunStarted: RunFold._run_plain,
    ev.RunResumed: RunFold._run_resumed,
    ev.SinkFlushed: RunFold._sink_flushed,
    ev.SinkWriteFailed: RunFold._sink_write_failed,
    ev.SourceExhausted: RunFold._source_exhausted,
    ev.RunCompleted: RunFold._run_completed,
    ev.RunFailed: RunFold._run_plain,
    ev.RunInterrupted: RunFold._run_plain,
    ev.RunAbandoned: RunFold._run_plain,
    ev.TokenCreated: RunFold._token_created,
    ev.StepCompleted: RunFold._step,
    ev.TokenHeld: RunFold._held,
    ev.TokenBuffered: RunFold._buffered,
    ev.SinkAssigned: RunFold._sink_assigned,
    ev.TokenCompleted: RunFold._ended,
    ev.TokenRouted: RunFold._ended,
    ev.TokenDiverted: RunFold._ended,
    ev.TokenQuarantined: RunFold._ended,
    ev.TokenForked: RunFold._ended,
    ev.TokenExpanded: RunFold._ended,
    ev.TokenCoalesced: RunFold._ended,
    ev.TokenConsumed: RunFold._ended,
    ev.TokenFailed: RunFold._ended,
    ev.CoalesceOpened: RunFold._coalesce_opened,
    ev.BranchArrived: RunFold._branch_arrived,
    ev.BranchLost: RunFold._branch_lost,
    ev.CoalesceMerged: RunFold._coalesce_resolved,
    ev.CoalesceFailed: RunFold._coalesce_resolved,
    ev.BatchOpened: RunFold._batch_opened,
    ev.BatchFlushing: RunFold._batch_flushing,
    ev.BatchCompleted: RunFold._batch_ended,
    ev.BatchFailed: RunFold._batch_ended,
}
