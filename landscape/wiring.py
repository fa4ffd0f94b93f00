"""Where a run's settings send a token next, and the tokens whose recorded steps skip a place.

A token's events say where it is: its creation the connection it enters (`at`), each step the
node that took it and the connection it goes to next (`next`). The settings recorded with the run
(`RunCreated`, and a forced `RunResumed` that changed them) say which node reads each connection,
so each step of a token must be taken by the node that reads where the token was: a step left out
of a row's proof bundle, even one that kept the data as it was (a gate, a filter that passed),
leaves the next event at a node that does not read where the token was. This reads the settings
as recorded (a dict), without the engine that checked them: an auditor's `verify` has no engine.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from landscape.records import StoredEvent
from statecharts import events as ev


@dataclass(frozen=True, slots=True)
class Wiring:
    """One version of the settings' wiring: connection -> the node that reads it (a coalesce: its
    name and the branch), and the sinks."""

    readers: dict[str, tuple[str, str | None]]
    sinks: frozenset[str]
    # Some connection is recorded as its fingerprint: a coalesce branch named like a secret
    # (`credentials`) has its connection so recorded (`redact_settings`), and no one can read it.
    hides: bool = False
    aggregations: frozenset[str] = frozenset()


def wiring_of(settings: Mapping[str, object]) -> Wiring:
    """The wiring the (recorded) settings describe; what is not as the settings format has it is
    left out, so that a token at such a place is held to nothing rather than to a guess."""
    readers: dict[str, tuple[str, str | None]] = {}
    hides = False
    for section in ("transforms", "gates", "aggregations"):
        for node in _dicts(settings.get(section)):
            name, connection = node.get("name"), node.get("input")
            if isinstance(name, str) and isinstance(connection, str):
                readers[connection] = (name, None)
    batching = frozenset(name for n in _dicts(settings.get("aggregations")) if isinstance(name := n.get("name"), str))
    for node in _dicts(settings.get("coalesce")):
        name, branches = node.get("name"), node.get("branches")
        if not isinstance(name, str):
            continue
        pairs = branches.items() if isinstance(branches, dict) else ((b, b) for b in _list(branches))
        for branch, connection in pairs:
            if isinstance(connection, str) and connection.startswith(FINGERPRINT):
                hides = True
            elif isinstance(branch, str) and isinstance(connection, str):
                readers[connection] = (name, branch)
    sinks = settings.get("sinks")
    names = frozenset(s for s in sinks if isinstance(s, str)) if isinstance(sinks, dict) else frozenset()
    return Wiring(readers, names, hides, batching)


FINGERPRINT = "hmac-sha256:"  # how recorded settings hold a value named like a secret (engine/secrets.py)


def _dicts(value: object) -> list[dict[str, object]]:
    return [v for v in _list(value) if isinstance(v, dict)]


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


@dataclass
class Wirings:
    """The wiring in force from each settings event's seq on (a forced resume may change it)."""

    starts: list[int] = field(default_factory=list)
    versions: list[Wiring] = field(default_factory=list)

    def add(self, seq: int, settings: Mapping[str, object]) -> None:
        self.starts.append(seq)
        self.versions.append(wiring_of(settings))

    def between(self, before: int, seq: int) -> list[Wiring]:
        """The versions in force at some point from seq `before` (a token's event before this
        one) to `seq`: the one in force at `before` and those recorded after it, before `seq`. A
        token in flight across a forced resume that changed the settings may be taken up by
        either; one whose events all follow the resume, only by the settings it made."""
        first = max(bisect.bisect_right(self.starts, before) - 1, 0)
        return self.versions[first : bisect.bisect_left(self.starts, seq)]


def off_the_wiring(events: Iterable[tuple[StoredEvent, ev.EventBase]], wirings: Wirings) -> set[str]:
    """The tokens created in `events` (in seq order) of which an event is not where the wiring
    has the token: a step taken by a node that does not read the connection the token was on, a
    sink reached from elsewhere than its connection. A token is followed from its creation; one
    whose place no version of the wiring knows is not judged further."""
    place: dict[str, str | None] = {}  # token -> the connection (or sink) it is at; None: not judged
    since: dict[str, int] = {}  # token -> the seq of its event before
    assigned: dict[str, str] = {}  # token -> the sink it was last assigned to
    buffered: dict[str, str] = {}  # token -> the aggregation whose batch it was buffered in
    off: set[str] = set()
    for stored, e in events:
        token = stored.entity_id
        if stored.machine != "token":
            continue
        if isinstance(e, ev.TokenCreated):
            place[token], since[token] = e.at, stored.seq
            continue
        at = place.get(token)
        if at is None or token in off:
            continue
        versions = wirings.between(since[token], stored.seq)
        since[token] = stored.seq
        expected = _expected(e)
        if expected is None:
            continue
        if not any(at in w.readers or at in w.sinks for w in versions) and any(w.hides for w in versions):
            # A place the recorded settings do not show, which may be one they hold as its
            # fingerprint: not judged. (Where they hide none, such a place is off the wiring: a
            # forced resume's settings left out of the bundle, with steps only they explain.)
            place[token] = None
            continue
        kind, name, branch = expected
        if kind == "read":
            ok = any(w.readers.get(at, (None, None))[0] == name for w in versions)
        elif kind == "branch":
            ok = any(w.readers.get(at) == (name, branch) for w in versions)
        elif kind == "read_or_sink":  # a node's row error, or a refusal by the sink it was assigned to
            ok = any(w.readers.get(at, (None, None))[0] == name for w in versions) or (
                at == name and assigned.get(token) == name
            )
        else:  # "sink": the token is at that sink
            ok = at == name
        if ok and isinstance(e, ev.StepCompleted | ev.TokenFailed) and any(name in w.aggregations for w in versions):
            # An aggregation's step (passthrough) or failure (its batch's) is of a token it buffered.
            ok = buffered.get(token) == name
        if not ok:
            off.add(token)
            continue
        if isinstance(e, ev.TokenBuffered):
            buffered[token] = name
        elif isinstance(e, ev.StepCompleted):
            place[token] = e.next
        elif isinstance(e, ev.SinkAssigned):
            place[token] = assigned[token] = e.sink
    return off


def _expected(e: ev.EventBase) -> tuple[str, str, str | None] | None:
    """What `e` requires of the token's place: ("read", node) that node reads it; ("branch",
    coalesce, branch) that coalesce reads it as that branch; ("sink", sink) it is that sink;
    ("read_or_sink", name) that node reads it, or it is that sink, which it was assigned to (a
    sink's refusal). None: nothing (an end after its sink's assignment was checked, a
    consumption after the buffering)."""
    if isinstance(e, ev.StepCompleted | ev.TokenForked | ev.TokenExpanded):
        return "read", e.node, None
    if isinstance(e, ev.TokenHeld):
        return "branch", e.coalesce_id.partition(":")[0], e.branch
    if isinstance(e, ev.TokenBuffered):
        return "read", e.batch_id.partition("#")[0], None
    if isinstance(e, ev.SinkAssigned):
        # Diverted: by the node whose row error it was, or by the sink that refused the row.
        return ("read_or_sink", e.node, None) if e.outcome == "diverted" and e.node else ("sink", e.sink, None)
    if isinstance(e, ev.TokenCompleted | ev.TokenRouted):
        return "sink", e.sink, None
    if isinstance(e, ev.TokenDiverted | ev.TokenQuarantined) and e.sink is not None:
        return "sink", e.sink, None
    if isinstance(e, ev.TokenDiverted) and e.node:  # (to discard: where its row error was)
        return "read_or_sink", e.node, None
    if isinstance(e, ev.TokenFailed) and e.node:
        return "read_or_sink", e.node, None
    return None
