"""The pipeline's graph: nodes wired by connection names, validated before anything runs.

Every node reads one connection (`input`; a coalesce reads one per branch) and writes to one
(`on_success`) or, for a gate, to its routes and fork branches. A connection named like a sink
delivers to that sink. `build_dag` reports every wiring problem at once, each with its key path.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import EngineError
from engine.settings import CoalesceSettings, Settings

Kind = Literal["transform", "gate", "aggregation", "coalesce", "sink"]


class DagError(EngineError):
    """Everything wrong with the wiring, one problem per line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Target:
    """Who consumes a connection. `branch` is set when a coalesce consumes it as that branch."""

    kind: Kind
    name: str
    branch: str | None = None


@dataclass(frozen=True)
class NodeInfo:
    name: str
    kind: str  # transform, gate, aggregation or coalesce
    plugin: str  # the plugin name; 'gate' / 'coalesce' for those
    settings: Any  # its TransformSettings, GateSettings, ...


@dataclass
class Dag:
    source_output: str
    node_order: list[str]
    nodes: dict[str, NodeInfo]
    fork_branches: dict[str, list[str]]
    coalesce_branches: dict[str, list[str]]
    # node -> (branch, coalesce): the nodes on a branch's way to the coalesce that joins it
    on_joined_branch: dict[str, tuple[str, str]] = field(default_factory=dict)
    _consumers: dict[str, Target] = field(default_factory=dict)
    _coalesce_outputs: dict[str, str] = field(default_factory=dict)

    def target(self, connection: str) -> Target:
        """Who reads `connection` (a sink's name resolves to that sink)."""
        return self._consumers[connection]

    def coalesce_output(self, name: str) -> str:
        """The connection a coalesce writes its merged row to: its on_success, or its own name."""
        return self._coalesce_outputs[name]


@dataclass
class _Producer:
    node: str  # node name, or "source"
    where: str  # key path, e.g. "transforms[0].on_success"
    upstream: str | None  # the connection this producer reads (to trace coalesce branches back)
    fork_of: str | None = None  # set when the connection is a fork branch of that gate
    # An aggregation in `transform` mode: its rows are new tokens, made from a batch of rows
    # that may come from many forks, so they belong to no branch and no coalesce takes them.
    regroups: bool = False


@dataclass
class _Wiring:
    sinks: set[str]
    errors: list[str] = field(default_factory=list)
    consumers: dict[str, Target] = field(default_factory=dict)
    consumed_at: dict[str, str] = field(default_factory=dict)  # connection -> key path reading it
    producers: dict[str, list[_Producer]] = field(default_factory=dict)

    def consume(self, connection: str, target: Target, where: str) -> None:
        if connection in self.sinks:
            self.errors.append(f"{where}: '{connection}' is a sink; allowed: a connection (nodes cannot read sinks)")
        elif connection in self.consumers:
            other = self.consumers[connection]
            self.errors.append(
                f"{where}: connection '{connection}' is already read by {other.kind} '{other.name}'; "
                "allowed: one reader per connection (fan out through a gate)"
            )
        else:
            self.consumers[connection] = target
            self.consumed_at[connection] = where

    def produce(self, connection: str, producer: _Producer) -> None:
        if connection in self.sinks:
            return  # a sink may be fed by any number of nodes
        makers = self.producers.setdefault(connection, [])
        if not any(m.node == producer.node for m in makers):  # a gate may route two labels to one place
            makers.append(producer)


def build_dag(s: Settings) -> Dag:
    """Wire and check the pipeline; raise DagError listing every problem."""
    w = _Wiring(sinks=set(s.sinks))
    nodes: dict[str, NodeInfo] = {}
    w.produce(s.source.on_success, _Producer("source", "source.on_success", None))
    for i, t in enumerate(s.transforms):
        nodes[t.name] = NodeInfo(t.name, "transform", t.plugin, t)
        w.consume(t.input, Target("transform", t.name), f"transforms[{i}].input")
        w.produce(t.on_success or t.name, _Producer(t.name, f"transforms[{i}].on_success", t.input))
    for i, g in enumerate(s.gates):
        nodes[g.name] = NodeInfo(g.name, "gate", "gate", g)
        w.consume(g.input, Target("gate", g.name), f"gates[{i}].input")
        for label, dest in g.routes.items():
            if dest == "fork":
                continue
            if dest == "continue":
                w.errors.append(
                    f"gates[{i}].routes.{label}: 'continue' is not supported; allowed: a sink, a connection or fork"
                )
                continue
            w.produce(dest, _Producer(g.name, f"gates[{i}].routes.{label}", g.input))
        for j, branch in enumerate(g.fork_to or []):
            w.produce(branch, _Producer(g.name, f"gates[{i}].fork_to[{j}]", g.input, fork_of=g.name))
    coalesce_branches: dict[str, list[str]] = {}
    coalesce_outputs: dict[str, str] = {}
    for i, c in enumerate(s.coalesce):
        nodes[c.name] = NodeInfo(c.name, "coalesce", "coalesce", c)
        inputs = c.branch_inputs()
        coalesce_branches[c.name] = list(inputs)
        for branch, connection in inputs.items():
            where = f"coalesce[{i}].branches" + (f".{branch}" if isinstance(c.branches, dict) else f"[{branch}]")
            w.consume(connection, Target("coalesce", c.name, branch), where)
        coalesce_outputs[c.name] = c.on_success or c.name
        w.produce(coalesce_outputs[c.name], _Producer(c.name, f"coalesce[{i}].on_success", None))
    for i, a in enumerate(s.aggregations):
        nodes[a.name] = NodeInfo(a.name, "aggregation", a.plugin, a)
        w.consume(a.input, Target("aggregation", a.name), f"aggregations[{i}].input")
        regroups = a.output_mode == "transform"
        w.produce(a.on_success, _Producer(a.name, f"aggregations[{i}].on_success", a.input, regroups=regroups))

    edges = _check_connections(w)
    fork_branches = {g.name: list(g.fork_to) for g in s.gates if g.fork_to}
    on_joined_branch = _check_coalesce_branches(s, w)
    order = _topological(nodes, edges, w.errors)
    reachable = _reachable(s.source.on_success, w.consumers, edges)
    for name, info in nodes.items():
        if name not in reachable:
            w.errors.append(
                f"{info.kind} '{name}': unreachable from the source; allowed: nodes the source's rows reach"
            )
    if w.errors:
        raise DagError(w.errors)
    return Dag(
        source_output=s.source.on_success,
        node_order=order,
        nodes=nodes,
        fork_branches=fork_branches,
        coalesce_branches=coalesce_branches,
        on_joined_branch=on_joined_branch,
        _consumers={**{name: Target("sink", name) for name in s.sinks}, **w.consumers},
        _coalesce_outputs=coalesce_outputs,
    )


def _check_connections(w: _Wiring) -> dict[str, set[str]]:
    """One producer and one consumer per connection; returns node -> the nodes it feeds."""
    edges: dict[str, set[str]] = {}
    sinks = ", ".join(sorted(w.sinks)) or "(no sinks)"
    for connection, makers in w.producers.items():
        if len(makers) > 1:
            w.errors.append(
                f"connection '{connection}' has {len(makers)} producers ({', '.join(m.where for m in makers)}); "
                "allowed: exactly one (fan out through a gate)"
            )
        target = w.consumers.get(connection)
        if target is None:
            w.errors.append(
                f"{makers[0].where}: connection '{connection}' goes nowhere (no node reads it and no sink has that "
                f"name); allowed: a sink ({sinks}) or a connection a node reads"
            )
            continue
        for m in makers:
            edges.setdefault(m.node, set()).add(target.name)
    for connection in w.consumers:
        if connection not in w.producers:
            w.errors.append(
                f"{w.consumed_at[connection]}: connection '{connection}' is produced by nothing; allowed: the "
                "source's on_success or a connection a node writes"
            )
    return edges


def _check_coalesce_branches(s: Settings, w: _Wiring) -> dict[str, tuple[str, str]]:
    """Each coalesce branch is a fork branch, all of one gate's fork, and its input comes from
    that branch. Returns the nodes on each branch's way to its coalesce (see `Dag`)."""
    forked = {b: g.name for g in s.gates for b in g.fork_to or []}
    claimed: dict[str, str] = {}
    on_branch: dict[str, tuple[str, str]] = {}
    for i, c in enumerate(s.coalesce):
        # A coalesce joins the branches of one fork of one row (its instance is keyed by the
        # forked token): branches of two gates are forks of two tokens, which never meet, and
        # each arrival would open an instance of its own.
        gates = sorted({forked[b] for b in c.branch_inputs() if b in forked})
        if len(gates) > 1:
            w.errors.append(
                f"coalesce[{i}].branches: branches of {len(gates)} gates' forks ({', '.join(gates)}), which never "
                "meet: each row's branches would be merged apart, or never; allowed: the fork_to branches of one gate"
            )
        for branch, connection in c.branch_inputs().items():
            where = f"coalesce[{i}].branches" + (f".{branch}" if isinstance(c.branches, dict) else f"[{branch}]")
            if branch not in forked:
                allowed = ", ".join(sorted(forked)) or "none: no gate forks"
                w.errors.append(f"{where}: '{branch}' is not a branch any gate forks to (fork_to); allowed: {allowed}")
                continue
            if branch in claimed and claimed[branch] != c.name:
                w.errors.append(f"{where}: branch '{branch}' is already merged by coalesce '{claimed[branch]}'")
            claimed.setdefault(branch, c.name)
            origin, passed = _trace_fork_branch(connection, w)
            if origin != branch:
                found = f"from fork branch '{origin}'" if origin else "not from a fork branch"
                w.errors.append(
                    f"{where}: connection '{connection}' comes {found}; allowed: a connection downstream of "
                    f"gate '{forked[branch]}' fork branch '{branch}'"
                )
            elif regrouped := next((p.node for p in passed if p.regroups), None):
                w.errors.append(
                    f"{where}: aggregation '{regrouped}' on branch '{branch}' makes new rows (output_mode: transform), "
                    "which belong to no branch: none would reach this coalesce; allowed: output_mode: passthrough "
                    "there, or the aggregation after the coalesce"
                )
            else:
                on_branch.update((p.node, (branch, c.name)) for p in passed)
    return on_branch


def _trace_fork_branch(connection: str, w: _Wiring) -> tuple[str | None, list[_Producer]]:
    """The fork branch a connection's tokens belong to, following producers upstream, and the
    producers on the way there."""
    seen: set[str] = set()
    passed: list[_Producer] = []
    current: str | None = connection
    while current is not None and current not in seen:
        seen.add(current)
        makers = w.producers.get(current)
        if not makers:
            return None, passed
        maker = makers[0]
        if maker.fork_of is not None:
            return current, passed
        passed.append(maker)
        current = maker.upstream
    return None, passed


def _topological(nodes: dict[str, NodeInfo], edges: dict[str, set[str]], errors: list[str]) -> list[str]:
    """Kahn's algorithm; ties go to the node declared first, so the order is stable."""
    position = {name: i for i, name in enumerate(nodes)}
    indegree = dict.fromkeys(nodes, 0)
    for origin, dests in edges.items():
        if origin in nodes:  # edges from the source do not count
            for d in dests:
                indegree[d] += 1
    ready = [(position[n], n) for n in nodes if indegree[n] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        for d in edges.get(n, ()):
            indegree[d] -= 1
            if indegree[d] == 0:
                heapq.heappush(ready, (position[d], d))
    if len(order) != len(nodes):
        left = {n for n in nodes if n not in order}
        cycle = _a_cycle(left, edges)
        first = cycle.index(min(cycle, key=position.__getitem__))  # start at the node declared first
        cycle = cycle[first:] + cycle[:first]
        errors.append(f"the pipeline has a cycle: {' -> '.join([*cycle, cycle[0]])}; allowed: no cycles")
    return order


def _a_cycle(left: set[str], edges: dict[str, set[str]]) -> list[str]:
    """One cycle among the nodes Kahn's algorithm could not order: each has a predecessor among
    them, so walking predecessors must come back to a node already seen."""
    preds: dict[str, list[str]] = {n: [] for n in left}
    for origin, dests in edges.items():
        for d in dests:
            if origin in left and d in left:
                preds[d].append(origin)
    walk: list[str] = []
    node = min(left)
    while node not in walk:
        walk.append(node)
        node = min(preds[node])
    cycle = walk[walk.index(node) :]
    cycle.reverse()
    return cycle


def _reachable(start: str, consumers: dict[str, Target], edges: dict[str, set[str]]) -> set[str]:
    first = consumers.get(start)
    if first is None:
        return set()
    seen = {first.name}
    stack = [first.name]
    while stack:
        for d in edges.get(stack.pop(), ()):
            if d not in seen:
                seen.add(d)
                stack.append(d)
    return seen


@dataclass(frozen=True, slots=True)
class Shape:
    """The most a row on a connection can hold: `fields` in order, as the source's schema gave
    them and the transforms in `changed_by` (on the way, in order) changed them."""

    fields: tuple[str, ...]
    changed_by: tuple[str, ...] = ()
    # Those of `fields` some rows may lack: one a transform made (it may make it only for some
    # rows), or a branch some of a coalesce's merges may lack. The others every row holds.
    maybe: frozenset[str] = frozenset()

    @property
    def certain(self) -> frozenset[str]:
        return frozenset(self.fields) - self.maybe


Made = Callable[[str, tuple[str, ...], frozenset[str]], tuple[tuple[str, ...], frozenset[str]] | None]


def row_shapes(s: Settings, fields: Sequence[str], transform: Made) -> dict[str, Shape]:
    """The connections whose rows can hold only known fields: from the source's `fields`, through
    gates, which route or copy a row as it is, and through transforms whose output fields
    `transform(name, input fields, those every input row holds)` tells with those every output
    row holds (None: not known), and through a coalesce all of whose
    branches' rows are known (its merge makes its rows of theirs). An aggregation makes rows of its
    own: what comes out of one is not known. For settings `build_dag` accepts (one producer each)."""
    shapes = {s.source.on_success: Shape(tuple(fields))}
    while True:  # until nothing is added: a step may be listed before the step that feeds it
        more: dict[str, Shape] = {}
        for g in s.gates:
            if g.input in shapes:
                more |= {c: shapes[g.input] for c in (*g.routes.values(), *(g.fork_to or [])) if c != "fork"}
        for t in s.transforms:
            before = shapes.get(t.input)
            if before is not None and (out := transform(t.name, before.fields, before.certain)) is not None:
                made, held = out
                changed = before.changed_by + ((f"transform '{t.name}'",) if made != before.fields else ())
                more[t.on_success or t.name] = Shape(made, changed, frozenset(made) - held)
        for c in s.coalesce:
            if (merged := _merged_shape(c, shapes)) is not None:
                more[c.on_success or c.name] = merged
        more = {c: shape for c, shape in more.items() if c not in shapes}
        if not more:
            return shapes
        shapes |= more


def _merged_shape(c: CoalesceSettings, shapes: dict[str, Shape]) -> Shape | None:
    """The rows a coalesce makes, when the rows of every branch are known: `union` the branches'
    fields in branch order, `nested` one field per branch, `select` the chosen branch's."""
    branches = {b: shapes.get(conn) for b, conn in c.branch_inputs().items()}
    known = [shape for shape in branches.values() if shape is not None]
    if len(known) < len(branches):
        return None
    every = c.policy == "require_all"  # (else a merge may lack some branches)
    if c.merge == "nested":
        fields = tuple(branches)
        maybe = frozenset() if every else frozenset(fields)
    elif c.merge == "select":
        if (chosen := branches.get(c.select_branch or "")) is None:
            return None
        fields, maybe = chosen.fields, chosen.maybe
    else:
        fields = tuple(dict.fromkeys(f for shape in known for f in shape.fields))
        held = (
            frozenset.union(*(s.certain for s in known))
            if every
            else frozenset.intersection(*(s.certain for s in known))
        )
        maybe = frozenset(fields) - held
    changed = tuple(dict.fromkeys(step for shape in known for step in shape.changed_by))
    if any(shape.fields != fields for shape in known):
        changed += (f"coalesce '{c.name}'",)
    return Shape(fields, changed, maybe)
