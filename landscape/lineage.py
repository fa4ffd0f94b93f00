"""A row's lineage read from the events themselves, for `elspeth explain`.

The projection tables can be changed with a plain UPDATE; the log cannot be changed without the
verifier noticing. So this reads the run's log once through `verify_run` (chain, seq, legal
transitions, and the signed checkpoints given: a log cut short is refused, not shown as a row
that never got further) and keeps the events of the selected rows' tokens: every token whose TokenCreated
carries the row's index (fork branches, expansions and merges do), and every token created from
one of them (an aggregation's outputs, which carry the index of the batch's last row). The row
data the kept events reference is fetched and checked against its hash before it is shown: a
payload that is missing or altered is reported as such, never shown as if it were true.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from landscape.canonical import decode_row
from landscape.errors import UnknownRun
from landscape.notary import Witnessed
from landscape.note import Verifier
from landscape.postgres import PostgresRecorder
from landscape.records import StoredEvent, us_to_datetime
from landscape.seal import Verdict, unsealed
from landscape.verify import Observer, Verification, payload_matches
from landscape.verify_store import verify_run
from landscape.visible import one_line
from statecharts import events as ev

# -- what explain shows (the shape of `explain --json`, see docs/cli.md) --------------------------


class Data(msgspec.Struct, frozen=True, kw_only=True):
    """Row data referenced by an event, as checked against its commitment: `status` is `ok` (then
    `value` is the data), `erased` (removed by `elspeth purge`; `why` quotes the erasure record),
    `missing` (not in the payload store, and no erasure explains it) or `altered` (its bytes do
    not match what the log committed to); `value` is None unless the status is `ok`."""

    hash: str
    status: str
    value: Any = None
    why: str | None = None


class Change(msgspec.Struct, frozen=True, kw_only=True):
    field: str
    change: str  # added | removed | changed
    old: Any = None
    new: Any = None


class Landed(msgspec.Struct, frozen=True, kw_only=True):
    """Where a row was made durable: the SinkFlushed event (`flush_seq`) that covered it, the
    sink's durable position before and after that flush (bytes for a file, rows for a table)."""

    sink: str
    location: str
    flush_seq: int
    from_position: int
    to_position: int


class Created(msgspec.Struct, frozen=True, kw_only=True, tag="created", tag_field="kind"):
    seq: int
    time: datetime
    at: str  # the connection the token entered
    via: str  # source | fork | expand | merge | batch
    parents: list[str]
    branch: str | None
    data: Data


class Step(msgspec.Struct, frozen=True, kw_only=True, tag="step", tag_field="kind"):
    seq: int
    time: datetime
    node: str
    duration_us: int
    next: str
    input_hash: str
    output_hash: str
    changes: list[Change] | None  # None: the data of either side could not be checked
    unchecked: Data | None = None  # then the side that could not: one missing or altered before one erased


class Gate(msgspec.Struct, frozen=True, kw_only=True, tag="gate", tag_field="kind"):
    seq: int
    time: datetime
    node: str
    condition: str | None  # the gate's expression in the settings it was decided under
    route: str  # the value the condition gave: "true", "false" or a route label
    next: str


class Forked(msgspec.Struct, frozen=True, kw_only=True, tag="forked", tag_field="kind"):
    seq: int
    time: datetime
    node: str
    condition: str | None
    children: list[str]


class Expanded(msgspec.Struct, frozen=True, kw_only=True, tag="expanded", tag_field="kind"):
    seq: int
    time: datetime
    node: str
    children: list[str]


class Held(msgspec.Struct, frozen=True, kw_only=True, tag="held", tag_field="kind"):
    seq: int
    time: datetime
    coalesce_id: str
    branch: str


class Buffered(msgspec.Struct, frozen=True, kw_only=True, tag="buffered", tag_field="kind"):
    seq: int
    time: datetime
    batch_id: str


class Assigned(msgspec.Struct, frozen=True, kw_only=True, tag="assigned", tag_field="kind"):
    seq: int
    time: datetime
    sink: str
    outcome: str  # what the token becomes once the sink is durable
    node: str | None
    reason: str | None


class Ended(msgspec.Struct, frozen=True, kw_only=True, tag="ended", tag_field="kind"):
    """The token's terminal outcome. `landed` is set when its row was made durable in a sink;
    otherwise `reason`/`detail` say why not, and `into` names the tokens it continued as (a fork's
    branches, a merge's token, a batch's outputs)."""

    seq: int
    time: datetime
    outcome: str
    node: str | None = None
    sink: str | None = None
    reason: str | None = None
    detail: str | None = None
    into: list[str] = []
    landed: Landed | None = None


class Resolution(msgspec.Struct, frozen=True, kw_only=True):
    """How a coalesce or a batch the row's tokens waited in was resolved."""

    id: str
    seq: int
    time: datetime
    outcome: str  # merged | failed (coalesce); completed | failed (batch)
    trigger: str | None  # arrivals | timeout | end_of_source | count | condition
    arrived: list[str] = []  # coalesce: branches that arrived
    missing: list[str] = []  # coalesce: branches that did not
    reason: str | None = None
    size: int | None = None  # batch: rows flushed
    # coalesce, merge union: fields the branches gave different values (the later branch's won)
    collisions: list[str] = []


Entry = Created | Step | Gate | Forked | Expanded | Held | Buffered | Assigned | Ended


class TokenHistory(msgspec.Struct, frozen=True, kw_only=True):
    token_id: str
    row_index: int
    branch: str | None
    parents: list[str]
    entries: list[Entry]
    outcome: str | None  # None: not ended yet
    state: str  # where the token is: its outcome, or pending/held/buffered/in_flight


class RowLineage(msgspec.Struct, frozen=True, kw_only=True):
    row: int  # 1-based, as a quarantine record's __row_number__
    row_index: int  # 0-based, as stored in the events and the projection tables
    tokens: list[TokenHistory]
    coalesces: list[Resolution]
    batches: list[Resolution]


class Explained(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    events_verified: int  # the log was verified up to here (chain, seq, transitions)
    head: str  # hash of the last verified event
    rows: list[RowLineage]
    run_status: str = ""  # the run's state where the verified log ends (abandoned: its unended tokens never end)


# -- building it ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Token:
    token_id: str
    row_index: int
    branch: str | None
    parents: list[str]
    events: list[tuple[StoredEvent, ev.EventBase]] = field(default_factory=list)
    landed: Landed | None = None


@dataclass(slots=True)
class _Collector:
    """The observer given to the verifier: keeps the selected rows' events as they pass."""

    select_row: Callable[[int], bool]
    select_token: str | None = None
    tokens: dict[str, _Token] = field(default_factory=dict)
    coalesces: dict[str, list[tuple[StoredEvent, ev.EventBase]]] = field(default_factory=dict)
    batches: dict[str, list[tuple[StoredEvent, ev.EventBase]]] = field(default_factory=dict)
    # gate name -> its settings, as each RunCreated or RunResumed set them, from its seq on: a gate
    # event is shown with the condition in force when it was recorded (a forced resume may change it)
    gates: list[tuple[int, dict[str, dict[str, Any]]]] = field(default_factory=list)
    flushes: dict[str, tuple[int, int, int, str]] = field(default_factory=dict)  # sink -> seq, from, to, location
    found_row: int | None = None  # the row of `select_token`, once seen
    children: dict[str, list[str]] | None = None  # parent -> tokens made from it (`made_from`)
    order: dict[str, int] | None = None  # token -> its place among `tokens`

    def gate_at(self, seq: int, node: str) -> dict[str, Any]:
        """Gate `node`'s settings in force at `seq`: those of the last RunCreated or RunResumed
        before it that gave settings."""
        at = bisect.bisect_right([start for start, _ in self.gates], seq) - 1
        return self.gates[at][1].get(node, {}) if at >= 0 else {}

    def __call__(self, stored: StoredEvent, event: ev.EventBase) -> None:
        # It sees every event of the run, most of them of other rows' tokens, passed over at
        # once: told apart by their types' identity, not by a chain of isinstance tests (per
        # event 1.1 us instead of 2.2, of the process that folds the log, on a linear run).
        kind = type(event)
        entity = stored.entity_id
        if kind is ev.TokenCreated:
            assert isinstance(event, ev.TokenCreated)
            if entity == self.select_token:
                self.found_row = event.row_index
            related = any(p in self.tokens or p in self.batches for p in event.parents)
            if not (related or self.select_row(event.row_index)):
                return
            self.tokens[entity] = _Token(entity, event.row_index, event.branch, list(event.parents))
        elif kind in _RUN_SETTINGS:
            assert isinstance(event, ev.RunCreated | ev.RunResumed)
            settings = event.settings
            if settings is not None:
                self.gates.append((stored.seq, _gates(settings)))
            return
        elif kind is ev.SinkFlushed:
            assert isinstance(event, ev.SinkFlushed)
            before = self.flushes.get(event.sink)
            start = before[2] if before is not None else 0
            self.flushes[event.sink] = (stored.seq, start, event.position, event.location)
            return
        token = self.tokens.get(entity)
        if token is not None:
            token.events.append((stored, event))
            if isinstance(event, ev.TokenHeld):
                self.coalesces.setdefault(event.coalesce_id, [])
            elif isinstance(event, ev.TokenBuffered):
                self.batches.setdefault(event.batch_id, [])
            elif isinstance(event, _TERMINAL) and event.sink is not None:
                # The sink's last flush is the one that made this row durable: a flush is
                # recorded first, then the outcomes of the rows it covered.
                flush = self.flushes.get(event.sink)
                if flush is not None:
                    token.landed = Landed(sink=event.sink, location=flush[3], flush_seq=flush[0],
                                          from_position=flush[1], to_position=flush[2])  # fmt: skip
            return
        if entity in self.coalesces:
            self.coalesces[entity].append((stored, event))
        elif entity in self.batches:
            self.batches[entity].append((stored, event))
        elif stored.machine == "coalesce" and entity.partition(":")[2] in self.tokens:
            # A coalesce of a fork of these rows that none of their tokens was held in: its
            # branches were lost (or arrived late) before any arrived (`name:fork token`).
            self.coalesces[entity] = [(stored, event)]

    def made_from(self, *parents: str) -> list[str]:
        """The tokens made from any of `parents`, in the order they were made (indexed once, after
        the log was read: a batch's outputs for each of its members was quadratic)."""
        if self.children is None:
            self.children = {}
            for t in self.tokens.values():
                for p in dict.fromkeys(t.parents):
                    self.children.setdefault(p, []).append(t.token_id)
        made = dict.fromkeys(x for p in parents for x in self.children.get(p, ()))
        return sorted(made, key=lambda x: self.children_order[x]) if len(made) > 1 else list(made)

    @property
    def children_order(self) -> dict[str, int]:
        if self.order is None:
            self.order = {x: i for i, x in enumerate(self.tokens)}
        return self.order


# The outcomes that can end in a sink.
_TERMINAL = (ev.TokenCompleted, ev.TokenRouted, ev.TokenDiverted, ev.TokenQuarantined)
_RUN_SETTINGS = frozenset((ev.RunCreated, ev.RunResumed))


def _gates(settings: dict[str, object]) -> dict[str, dict[str, Any]]:
    gates = settings.get("gates")
    if not isinstance(gates, list):
        return {}
    return {str(g["name"]): g for g in gates if isinstance(g, dict) and "name" in g}


def find_token_row(
    recorder: PostgresRecorder,
    run_id: str,
    token_id: str,
    *,
    checkpoints: Sequence[Witnessed] = (),
    verifier: Verifier | None = None,
) -> int:
    """The row index a token belongs to, read from the verified log. UnknownRun if none."""
    collector = _Collector(select_row=lambda _i: False, select_token=token_id)
    _verified(recorder, run_id, collector, None, checkpoints, verifier)
    if collector.found_row is None:
        raise UnknownRun(f"run {one_line(run_id)} has no token {one_line(token_id)}")
    return collector.found_row


def source_rows(
    recorder: PostgresRecorder,
    run_id: str,
    *,
    checkpoints: Sequence[Witnessed] = (),
    verifier: Verifier | None = None,
) -> tuple[list[tuple[int, str]], set[int], int]:
    """Every source row's (row index, hash of its first data), from the verified log; the rows
    the source quarantined (their data is as it was read: text, not the schema's types); and the
    last seq read (pass it to `explain_rows` so both read the same log)."""
    roots: list[tuple[int, str]] = []
    root_tokens: dict[str, int] = {}
    quarantined: set[int] = set()

    def observe(stored: StoredEvent, event: ev.EventBase) -> None:
        if isinstance(event, ev.TokenCreated) and not event.parents:
            roots.append((event.row_index, event.data_hash))
            root_tokens[stored.entity_id] = event.row_index
        elif isinstance(event, ev.TokenQuarantined) and event.node is None and stored.entity_id in root_tokens:
            quarantined.add(root_tokens[stored.entity_id])

    verified = _verified(recorder, run_id, observe, None, checkpoints, verifier)
    return roots, quarantined, verified.events - 1


def checked_payloads(
    recorder: PostgresRecorder,
    run_id: str,
    hashes: Iterable[str],
    verifier: Verifier | None,
    seals_checked: dict[int, Verdict] | None = None,
    *,
    accept_unsigned: bool = False,
) -> dict[str, Data]:
    """Each hash's data, fetched and checked against its commitment: missing (and whether an
    erasure record explains it: one signed by `verifier`, see `landscape.seal.unsealed`) and
    altered are said so, and their data is not given. `seals_checked`: the seals' verdicts, kept
    by a caller that asks in parts; `accept_unsigned`: `--unsigned-erasures` (see `unsealed`)."""
    wanted = set(hashes)
    found = recorder.payloads(run_id, wanted)
    absent = [h for h in wanted if h not in found]
    erased = recorder.erasures(run_id, absent) if absent else {}
    checked = {} if seals_checked is None else seals_checked
    seals = recorder.erasure_seals(
        e.seal_id for e in erased.values() if e.seal_id is not None and e.seal_id not in checked
    )
    unsigned = (
        unsealed(erased, seals, verifier, recorder.store_id(), checked, accept_unsigned=accept_unsigned)
        if erased
        else {}
    )
    out: dict[str, Data] = {}
    for h in wanted:
        payload = found.get(h)
        if payload is None:
            e = erased.get(h)
            if e is None:
                out[h] = Data(hash=h, status="missing")
            elif h in unsigned:
                out[h] = Data(hash=h, status="missing", why=f"its erasure record does not count: {unsigned[h]}")
            else:
                taken = " [its record is signed by no seal: taken on the store's word]" if e.seal_id is None else ""
                out[h] = Data(hash=h, status="erased", why=e.describe() + (taken if verifier is not None else ""))
        elif not payload_matches(h, payload):
            out[h] = Data(hash=h, status="altered")
        else:
            out[h] = Data(hash=h, status="ok", value=decode_row(payload.data))
    return out


def explain_rows(
    recorder: PostgresRecorder,
    run_id: str,
    row_indexes: Iterable[int],
    upto_seq: int | None = None,
    *,
    checkpoints: Sequence[Witnessed] = (),
    verifier: Verifier | None = None,
    unsigned_erasures: bool = False,
) -> Explained:
    """The lineage of the given rows (0-based indexes), built from the verified log (checked
    against the signed `checkpoints`, their signatures with `verifier` when given)."""
    wanted = set(row_indexes)
    collector = _Collector(select_row=wanted.__contains__)
    verified = _verified(recorder, run_id, collector, upto_seq, checkpoints, verifier)
    hashes: set[str] = set()
    for t in collector.tokens.values():
        for _s, e in t.events:
            if isinstance(e, ev.TokenCreated):
                hashes.add(e.data_hash)
            elif isinstance(e, ev.StepCompleted):
                hashes.update((e.input_hash, e.output_hash))
    data = checked_payloads(recorder, run_id, hashes, verifier, accept_unsigned=unsigned_erasures)
    rows = []
    by_row = _tokens_by_row(collector, wanted)
    for index in sorted(wanted):
        mine = by_row.get(index, [])
        if not mine:
            continue
        rows.append(
            RowLineage(
                row=index + 1,
                row_index=index,
                tokens=[_history(t, collector, data) for t in mine],
                coalesces=_resolutions(collector.coalesces, mine, ev.TokenHeld),
                batches=_resolutions(collector.batches, mine, ev.TokenBuffered),
            )
        )
    return Explained(
        run_id=run_id, events_verified=verified.events, head=verified.head.hex(), rows=rows,
        run_status=str(verified.fold.status),
    )  # fmt: skip


def _verified(
    recorder: PostgresRecorder,
    run_id: str,
    observe: Observer,
    upto_seq: int | None,
    checkpoints: Sequence[Witnessed],
    verifier: Verifier | None,
) -> Verification:
    if not recorder.run_exists(run_id):
        raise UnknownRun(f"no run {one_line(run_id)} in {recorder.db.describe()} (see `elspeth runs`)")
    return verify_run(
        recorder, run_id, upto_seq=upto_seq, observe=observe, checkpoints=checkpoints, verifier=verifier, payloads=False
    )


def _tokens_by_row(c: _Collector, wanted: set[int]) -> dict[int, list[_Token]]:
    """The tokens of each wanted row, in the order they were made: its own, and those made from
    them (a merge, a batch's outputs: kept because they descend from this row's tokens, whatever
    row index they carry). One pass: each token's rows are its own and its parents' (a batch's,
    as an outputs' parent when all its members were rejected: its members')."""
    members: dict[str, list[str]] = {}
    for t in c.tokens.values():
        for _s, e in t.events:
            if isinstance(e, ev.TokenBuffered):
                members.setdefault(e.batch_id, []).append(t.token_id)
    rows: dict[str, frozenset[int]] = {}

    def rows_of(token_id: str) -> frozenset[int]:
        # Parents come before their children in the log, so this recursion is as deep as the
        # pipeline is long; each token's rows are worked out once.
        found = rows.get(token_id)
        if found is not None:
            return found
        t = c.tokens.get(token_id)
        if t is not None:
            mine = {t.row_index}
            for p in t.parents:
                mine |= rows_of(p)
        else:  # a batch (or a parent not kept: no row of those wanted)
            mine = set()
            for m in members.get(token_id, ()):
                mine |= rows_of(m)
        rows[token_id] = found = frozenset(mine)
        return found

    by_row: dict[int, list[_Token]] = {}
    for t in c.tokens.values():
        for index in rows_of(t.token_id) & wanted:
            by_row.setdefault(index, []).append(t)
    return by_row


def _at(stored: StoredEvent) -> datetime:
    return us_to_datetime(stored.recorded_at_us)


def _history(t: _Token, c: _Collector, data: dict[str, Data]) -> TokenHistory:
    entries: list[Entry] = []
    outcome: str | None = None
    state = "created"
    for s, e in t.events:
        at = _at(s)
        if isinstance(e, ev.TokenCreated):
            via = "source" if not e.parents else _via(e, c)
            entries.append(Created(seq=s.seq, time=at, at=e.at, via=via, parents=list(e.parents), branch=e.branch,
                                   data=data[e.data_hash]))  # fmt: skip
            state = "in_flight"
        elif isinstance(e, ev.StepCompleted):
            if e.route is not None:
                condition = c.gate_at(s.seq, e.node).get("condition")
                entries.append(Gate(seq=s.seq, time=at, node=e.node, condition=None if condition is None
                                    else str(condition), route=e.route, next=e.next))  # fmt: skip
            else:
                before, after = data[e.input_hash], data[e.output_hash]
                entries.append(Step(seq=s.seq, time=at, node=e.node, duration_us=e.duration_us, next=e.next,
                                    input_hash=e.input_hash, output_hash=e.output_hash,
                                    changes=_changes(before, after), unchecked=_unchecked(before, after)))  # fmt: skip
            state = "in_flight"
        elif isinstance(e, ev.TokenForked):
            condition = c.gate_at(s.seq, e.node).get("condition")
            entries.append(Forked(seq=s.seq, time=at, node=e.node, children=list(e.children),
                                  condition=None if condition is None else str(condition)))  # fmt: skip
            entries.append(Ended(seq=s.seq, time=at, outcome="forked", node=e.node, into=list(e.children)))
            outcome = "forked"
        elif isinstance(e, ev.TokenExpanded):
            entries.append(Expanded(seq=s.seq, time=at, node=e.node, children=list(e.children)))
            entries.append(Ended(seq=s.seq, time=at, outcome="expanded", node=e.node, into=list(e.children)))
            outcome = "expanded"
        elif isinstance(e, ev.TokenHeld):
            entries.append(Held(seq=s.seq, time=at, coalesce_id=e.coalesce_id, branch=e.branch))
            state = "held"
        elif isinstance(e, ev.TokenBuffered):
            entries.append(Buffered(seq=s.seq, time=at, batch_id=e.batch_id))
            state = "buffered"
        elif isinstance(e, ev.SinkAssigned):
            entries.append(Assigned(seq=s.seq, time=at, sink=e.sink, outcome=e.outcome, node=e.node, reason=e.reason))
            state = "pending_sink"
        else:
            end = _ended(s, e, t, c)
            entries.append(end)
            outcome = end.outcome
    return TokenHistory(token_id=t.token_id, row_index=t.row_index, branch=t.branch, parents=t.parents,
                        entries=entries, outcome=outcome, state=outcome or state)  # fmt: skip


def _via(e: ev.TokenCreated, c: _Collector) -> str:
    """How a child token came to be, from how its parents ended."""
    for p in e.parents:
        parent = c.tokens.get(p)
        last = parent.events[-1][1] if parent is not None and parent.events else None
        if isinstance(last, ev.TokenForked):
            return "fork"
        if isinstance(last, ev.TokenExpanded):
            return "expand"
        if isinstance(last, ev.TokenCoalesced):
            return "merge"
    # Only an aggregation makes a token from parents that are not this row's (or from its batch).
    return "batch"


def _ended(s: StoredEvent, e: ev.EventBase, t: _Token, c: _Collector) -> Ended:
    at = _at(s)
    outcome = _OUTCOME[type(e)]
    if isinstance(e, ev.TokenCoalesced):
        return Ended(seq=s.seq, time=at, outcome=outcome, into=[e.into], detail=e.coalesce_id)
    if isinstance(e, ev.TokenConsumed):
        outputs = c.made_from(e.batch_id, t.token_id)
        return Ended(seq=s.seq, time=at, outcome=outcome, into=outputs, detail=e.batch_id)
    if isinstance(e, ev.TokenFailed):
        return Ended(seq=s.seq, time=at, outcome=outcome, node=e.node, reason=e.reason, detail=e.detail)
    sink = getattr(e, "sink", None)
    return Ended(
        seq=s.seq,
        time=at,
        outcome=outcome,
        node=getattr(e, "node", None),
        sink=sink,
        reason=getattr(e, "reason", None),
        landed=t.landed if sink is not None else None,
    )


_OUTCOME: dict[type[ev.EventBase], str] = {
    ev.TokenCompleted: "completed",
    ev.TokenRouted: "routed",
    ev.TokenDiverted: "diverted",
    ev.TokenQuarantined: "quarantined",
    ev.TokenCoalesced: "coalesced",
    ev.TokenConsumed: "consumed_in_batch",
    ev.TokenFailed: "failed",
}


def _unchecked(before: Data, after: Data) -> Data | None:
    """The side of a step whose data cannot be compared: an erasure explains itself, so a side
    missing or altered (which nothing explains) is the one to show."""
    sides = [d for d in (before, after) if d.status != "ok"]
    return min(sides, key=lambda d: d.status == "erased", default=None)


def _changes(before: Data, after: Data) -> list[Change] | None:
    if before.status != "ok" or after.status != "ok":
        return None
    old, new = before.value, after.value
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [] if old == new else [Change(field="", change="changed", old=old, new=new)]
    out = [Change(field=k, change="removed", old=v) for k, v in old.items() if k not in new]
    for k, v in new.items():
        if k not in old:
            out.append(Change(field=k, change="added", new=v))
        elif old[k] != v or type(old[k]) is not type(v):
            out.append(Change(field=k, change="changed", old=old[k], new=v))
    return out


def _resolutions(
    entities: dict[str, list[tuple[StoredEvent, ev.EventBase]]], mine: list[_Token], joined: type[ev.EventBase]
) -> list[Resolution]:
    ids: list[str] = []
    for t in mine:
        for _s, e in t.events:
            if isinstance(e, ev.TokenHeld) and joined is ev.TokenHeld and e.coalesce_id not in ids:
                ids.append(e.coalesce_id)
            elif isinstance(e, ev.TokenBuffered) and joined is ev.TokenBuffered and e.batch_id not in ids:
                ids.append(e.batch_id)
    if joined is ev.TokenHeld:  # and those of the rows' forks that held none of their tokens
        forks = {t.token_id for t in mine}
        ids += [c for c in entities if c not in ids and c.partition(":")[2] in forks]
    out = []
    for entity in ids:
        trigger: str | None = None
        size: int | None = None
        for s, e in entities.get(entity, []):
            at = _at(s)
            if isinstance(e, ev.CoalesceMerged):
                out.append(Resolution(id=entity, seq=s.seq, time=at, outcome="merged", trigger=e.trigger,
                                      arrived=list(e.arrived), missing=list(e.missing),
                                      collisions=list(e.collisions)))  # fmt: skip
            elif isinstance(e, ev.CoalesceFailed):
                out.append(Resolution(id=entity, seq=s.seq, time=at, outcome="failed",
                                      # as the `coalesces` table says it: a failure no deadline forced
                                      trigger=e.trigger or "arrivals", arrived=list(e.arrived), missing=list(e.missing),
                                      reason=e.reason))  # fmt: skip
            elif isinstance(e, ev.BatchFlushing):
                trigger, size = e.trigger, e.size
            elif isinstance(e, ev.BatchCompleted):
                out.append(Resolution(id=entity, seq=s.seq, time=at, outcome="completed", trigger=trigger, size=size))
            elif isinstance(e, ev.BatchFailed):
                out.append(Resolution(id=entity, seq=s.seq, time=at, outcome="failed", trigger=trigger, size=size,
                                      reason=e.reason))  # fmt: skip
    return out
