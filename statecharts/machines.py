"""The four state machines, as data. Each transition names the event type it emits.

`INITIAL` is the pseudo-state an entity is in before its first event; the first transition of
every machine leaves it. Terminal states have no outgoing transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from statecharts import events as ev

INITIAL = "initial"


class RunState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    DRAINING = "draining"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    ABANDONED = "abandoned"


class TokenState(StrEnum):
    CREATED = "created"
    IN_FLIGHT = "in_flight"
    HELD = "held"
    BUFFERED = "buffered"
    PENDING_SINK = "pending_sink"
    # terminal outcomes
    COMPLETED = "completed"
    ROUTED = "routed"
    FORKED = "forked"
    COALESCED = "coalesced"
    CONSUMED_IN_BATCH = "consumed_in_batch"
    EXPANDED = "expanded"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    DIVERTED = "diverted"


class CoalesceState(StrEnum):
    WAITING = "waiting"
    MERGED = "merged"
    FAILED = "failed"


class BatchState(StrEnum):
    COLLECTING = "collecting"
    FLUSHING = "flushing"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Transition:
    trigger: str
    sources: tuple[str, ...]
    dest: str | None  # None: stays in its source state (a self-transition that still emits)
    event: type[ev.EventBase]


@dataclass(frozen=True, slots=True)
class MachineDef:
    name: str
    states: tuple[str, ...]  # without INITIAL
    terminal: frozenset[str]
    transitions: tuple[Transition, ...]


def _t(trigger: str, sources: str, dest: str | None, event: type[ev.EventBase]) -> Transition:
    # Plain strings: `transitions` treats Enum members specially, and stored events hold text.
    return Transition(trigger, tuple(sources.split("|")), None if dest is None else str(dest), event)


_R = RunState
RUN = MachineDef(
    name="run",
    states=tuple(str(s) for s in _R),
    terminal=frozenset(str(s) for s in (_R.COMPLETED, _R.ABANDONED)),
    transitions=(
        _t("create", INITIAL, _R.CREATED, ev.RunCreated),
        _t("start", _R.CREATED, _R.RUNNING, ev.RunStarted),
        _t("flush_sink", f"{_R.RUNNING}|{_R.DRAINING}", None, ev.SinkFlushed),
        _t("sink_write_failed", f"{_R.RUNNING}|{_R.DRAINING}", None, ev.SinkWriteFailed),
        _t("exhaust", _R.RUNNING, _R.DRAINING, ev.SourceExhausted),
        # Also refused by the fold while a token is live or a coalesce or batch open (fold.py).
        _t("complete", _R.DRAINING, _R.COMPLETED, ev.RunCompleted),
        _t("fail", f"{_R.RUNNING}|{_R.DRAINING}", _R.FAILED, ev.RunFailed),
        _t("interrupt", f"{_R.RUNNING}|{_R.DRAINING}", _R.INTERRUPTED, ev.RunInterrupted),
        _t("resume", f"{_R.FAILED}|{_R.INTERRUPTED}", _R.RUNNING, ev.RunResumed),
        # An operator's decision that a stopped run is not to go on (`elspeth abandon`): whatever
        # it still had in flight stays unfinished for good, and nothing may follow. A run whose
        # writer died is first recorded interrupted, as a resume does.
        _t("abandon", f"{_R.FAILED}|{_R.INTERRUPTED}", _R.ABANDONED, ev.RunAbandoned),
    ),
)

_T = TokenState
_LIVE = f"{_T.CREATED}|{_T.IN_FLIGHT}"
TOKEN = MachineDef(
    name="token",
    states=tuple(str(s) for s in _T),
    terminal=frozenset(
        {
            _T.COMPLETED,
            _T.ROUTED,
            _T.FORKED,
            _T.COALESCED,
            _T.CONSUMED_IN_BATCH,
            _T.EXPANDED,
            _T.FAILED,
            _T.QUARANTINED,
            _T.DIVERTED,
        }
    ),
    transitions=(
        _t("create", INITIAL, _T.CREATED, ev.TokenCreated),
        # A passthrough aggregation releases its buffered tokens with their enriched data.
        _t("step", f"{_LIVE}|{_T.BUFFERED}", _T.IN_FLIGHT, ev.StepCompleted),
        _t("hold", _LIVE, _T.HELD, ev.TokenHeld),
        _t("buffer", _LIVE, _T.BUFFERED, ev.TokenBuffered),
        # From pending_sink too: a failed write sends the row on to `on_write_failure`.
        _t("assign_sink", f"{_LIVE}|{_T.PENDING_SINK}", _T.PENDING_SINK, ev.SinkAssigned),
        _t("complete", _T.PENDING_SINK, _T.COMPLETED, ev.TokenCompleted),
        _t("route", _T.PENDING_SINK, _T.ROUTED, ev.TokenRouted),
        _t("divert", f"{_LIVE}|{_T.PENDING_SINK}", _T.DIVERTED, ev.TokenDiverted),
        _t("quarantine", f"{_T.CREATED}|{_T.BUFFERED}|{_T.PENDING_SINK}", _T.QUARANTINED, ev.TokenQuarantined),
        _t("fork", _LIVE, _T.FORKED, ev.TokenForked),
        _t("expand", _LIVE, _T.EXPANDED, ev.TokenExpanded),
        _t("coalesce", _T.HELD, _T.COALESCED, ev.TokenCoalesced),
        _t("consume", _T.BUFFERED, _T.CONSUMED_IN_BATCH, ev.TokenConsumed),
        _t(
            "fail",
            f"{_LIVE}|{_T.HELD}|{_T.BUFFERED}|{_T.PENDING_SINK}",
            _T.FAILED,
            ev.TokenFailed,
        ),
    ),
)

_C = CoalesceState
COALESCE = MachineDef(
    name="coalesce",
    states=tuple(str(s) for s in _C),
    terminal=frozenset(
        str(s)
        for s in (
            _C.MERGED,
            _C.FAILED,
        )
    ),
    transitions=(
        _t("open", INITIAL, _C.WAITING, ev.CoalesceOpened),
        _t("arrive", _C.WAITING, None, ev.BranchArrived),
        _t("lose", _C.WAITING, None, ev.BranchLost),
        _t("merge", _C.WAITING, _C.MERGED, ev.CoalesceMerged),
        _t("fail", _C.WAITING, _C.FAILED, ev.CoalesceFailed),
    ),
)

_B = BatchState
BATCH = MachineDef(
    name="batch",
    states=tuple(str(s) for s in _B),
    terminal=frozenset(
        str(s)
        for s in (
            _B.COMPLETED,
            _B.FAILED,
        )
    ),
    transitions=(
        _t("open", INITIAL, _B.COLLECTING, ev.BatchOpened),
        _t("flush", _B.COLLECTING, _B.FLUSHING, ev.BatchFlushing),
        _t("complete", _B.FLUSHING, _B.COMPLETED, ev.BatchCompleted),
        _t("fail", _B.FLUSHING, _B.FAILED, ev.BatchFailed),
    ),
)

MACHINES: dict[str, MachineDef] = {m.name: m for m in (RUN, TOKEN, COALESCE, BATCH)}

# Derived views for readers of the log (projections, queries): what a recorded event says about
# its entity's state, read off the definitions above rather than restated by hand.
RUN_STATUS_AFTER: dict[type[ev.EventBase], RunState] = {
    t.event: RunState(t.dest) for t in RUN.transitions if t.dest is not None
}
TOKEN_OUTCOME_OF: dict[type[ev.EventBase], TokenState] = {
    t.event: TokenState(t.dest) for t in TOKEN.transitions if t.dest is not None and t.dest in TOKEN.terminal
}
# Ended: its writer stopped (a resume may go on from failed and interrupted). Final: no resume.
RUN_ENDED: frozenset[RunState] = frozenset(
    {RunState.COMPLETED, RunState.FAILED, RunState.INTERRUPTED, RunState.ABANDONED}
)
RUN_FINAL: frozenset[RunState] = frozenset(RunState(s) for s in RUN.terminal)
RUN_OPEN: frozenset[RunState] = frozenset({RunState.RUNNING, RunState.DRAINING})
