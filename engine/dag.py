"""The pipeline's graph: nodes wired by connection names, validated before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from engine.settings import Settings

Kind = Literal["transform", "gate", "aggregation", "coalesce", "sink"]


class DagError(Exception):
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
    kind: str
    plugin: str
    settings: Any


@dataclass
class Dag:
    source_output: str
    node_order: list[str]
    nodes: dict[str, NodeInfo]
    fork_branches: dict[str, list[str]]
    coalesce_branches: dict[str, list[str]]
    _consumers: dict[str, Target] = field(default_factory=dict)
    _coalesce_outputs: dict[str, str] = field(default_factory=dict)

    def target(self, connection: str) -> Target:
        return self._consumers[connection]

    def coalesce_output(self, name: str) -> str:
        return self._coalesce_outputs[name]


def build_dag(s: Settings) -> Dag:
    errors: list[str] = []
    sinks = set(s.sinks)
    consumers: dict[str, Target] = {name: Target("sink", name) for name in sinks}
    # connection -> [(producer node, where it is said)]
    producers: dict[str, list[str]] = {}
    edges: dict[str, set[str]] = {}  # node -> nodes it feeds (sinks excluded)
    nodes: dict[str, NodeInfo] = {}

    def consume(connection: str, target: Target, where: str) -> None:
        if connection in sinks:
            errors.append(f"{where}: '{connection}' is a sink; a node cannot read from a sink")
            return
        if connection in consumers:
            other = consumers[connection]
            errors.append(f"{where}: connection '{connection}' is already read by {other.kind} '{other.name}'")
            return
        consumers[connection] = target

    def produce(connection: str, producer: str) -> None:
        if connection in sinks:
            return  # a sink may have any number of producers
        producers.setdefault(connection, []).append(producer)

    produce(s.source.on_success, "source")
    for i, t in enumerate(s.transforms):
        nodes[t.name] = NodeInfo(t.name, "transform", t.plugin, t)
        consume(t.input, Target("transform", t.name), f"transforms[{i}].input")
        produce(t.on_success or t.name, t.name)
    for i, g in enumerate(s.gates):
        nodes[g.name] = NodeInfo(g.name, "gate", "gate", g)
        consume(g.input, Target("gate", g.name), f"gates[{i}].input")
        for label, dest in g.routes.items():
            if dest == "fork":
                continue
            if dest == "continue":
                errors.append(f"gates[{i}].routes.{label}: 'continue' is not supported; name a connection")
                continue
            if dest not in producers or g.name not in producers[dest]:
                produce(dest, g.name)
        for branch in g.fork_to or []:
            produce(branch, g.name)
    coalesce_branches: dict[str, list[str]] = {}
    coalesce_outputs: dict[str, str] = {}
    for i, c in enumerate(s.coalesce):
        nodes[c.name] = NodeInfo(c.name, "coalesce", "coalesce", c)
        inputs = c.branch_inputs()
        coalesce_branches[c.name] = list(inputs)
        for branch, connection in inputs.items():
            consume(connection, Target("coalesce", c.name, branch), f"coalesce[{i}].branches.{branch}")
        out = c.on_success or c.name
        coalesce_outputs[c.name] = out
        produce(out, c.name)
    for i, a in enumerate(s.aggregations):
        nodes[a.name] = NodeInfo(a.name, "aggregation", a.plugin, a)
        consume(a.input, Target("aggregation", a.name), f"aggregations[{i}].input")
        produce(a.on_success, a.name)

    for connection, makers in producers.items():
        if len(makers) > 1:
            errors.append(
                f"connection '{connection}' has {len(makers)} producers ({', '.join(makers)}); "
                "each connection has exactly one (fan out through a gate)"
            )
        if connection not in consumers:
            errors.append(
                f"connection '{connection}' (from {makers[0]}) goes nowhere: no node reads it and no sink has that name"
            )
        else:
            target = consumers[connection]
            for maker in makers:
                if target.kind != "sink":
                    edges.setdefault(maker, set()).add(target.name)
    for connection, target in consumers.items():
        if target.kind != "sink" and connection not in producers:
            errors.append(f"{target.kind} '{target.name}' reads connection '{connection}', which nothing produces")

    fork_branches = {g.name: list(g.fork_to or []) for g in s.gates if g.fork_to}
    all_fork_branches = {b for bs in fork_branches.values() for b in bs}
    for c in s.coalesce:
        for branch in c.branch_inputs():
            if branch not in all_fork_branches:
                errors.append(f"coalesce '{c.name}': branch '{branch}' is not produced by any fork (fork_to of a gate)")

    order = _topological(nodes, edges, errors)
    reachable = _reachable(s.source.on_success, consumers, edges)
    for name in nodes:
        if name not in reachable:
            errors.append(f"{nodes[name].kind} '{name}' is unreachable from the source")
    if errors:
        raise DagError(errors)
    return Dag(
        source_output=s.source.on_success,
        node_order=order,
        nodes=nodes,
        fork_branches=fork_branches,
        coalesce_branches=coalesce_branches,
        _consumers=consumers,
        _coalesce_outputs=coalesce_outputs,
    )


def _topological(nodes: dict[str, NodeInfo], edges: dict[str, set[str]], errors: list[str]) -> list[str]:
    indegree = dict.fromkeys(nodes, 0)
    for origin, dests in edges.items():
        if origin not in nodes:
            continue  # the source
        for d in dests:
            if d in indegree:
                indegree[d] += 1
    ready = [n for n in nodes if indegree[n] == 0]
    order: list[str] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for d in sorted(edges.get(n, ())):
            indegree[d] -= 1
            if indegree[d] == 0:
                ready.append(d)
    if len(order) != len(nodes):
        cyclic = sorted(n for n in nodes if n not in order)
        errors.append(f"the pipeline has a cycle through: {', '.join(cyclic)}")
    return order


def _reachable(start: str, consumers: dict[str, Target], edges: dict[str, set[str]]) -> set[str]:
    first = consumers.get(start)
    if first is None or first.kind == "sink":
        return set()
    seen = {first.name}
    stack = [first.name]
    while stack:
        for d in edges.get(stack.pop(), ()):
            if d not in seen:
                seen.add(d)
                stack.append(d)
    return seen
