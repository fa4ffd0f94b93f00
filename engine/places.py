"""Where a run's log still has rows, checked against the pipeline a resume continues it under.

A resume puts every live token back where the log says it is: on its way along a connection,
held in a coalesce, buffered in an aggregation's batch, pending in a sink. Settings changed with
`--force` may no longer have that place. Continued anyway, the token would wait there for ever
(nothing flushes an aggregation the pipeline no longer has) or the resume would stop half-way
(a sink it no longer has). And a sink that holds rows the run made durable must stay, with its
plugin: only reopening it cuts off what the crash left after its position and closes it at the
end, and its position means what its plugin says (bytes of a file, rows of a table). Its bytes
mean what its layout says, too: the rest of a JSON-lines file written as an array's rows, or a
CSV file continued with another delimiter, would leave a file that is neither.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.dag import Dag
from engine.plugins.protocol import PluginConfigError
from engine.plugins.registry import build_plugin
from engine.work import Nodes
from landscape.fold import RunFold
from statecharts import events as ev
from statecharts.machines import TokenState


def places_gone(fold: RunFold, nodes: Nodes, decls: list[ev.NodeDecl]) -> list[str]:
    """Every place the run still has rows in that `nodes` (declared as `decls`) no longer has,
    one phrase each, naming it and what it holds (empty: the run can continue there)."""
    gone: list[str] = []
    on_the_way: Counter[str] = Counter()
    pending: Counter[str] = Counter()
    for t in fold.tokens.values():
        if t.state in (TokenState.CREATED, TokenState.IN_FLIGHT) and not _read(nodes.dag, t.at):
            on_the_way[t.at] += 1
        elif t.state == TokenState.PENDING_SINK and t.place is not None and t.place not in nodes.sinks:
            pending[t.place] += 1
    for connection, n in on_the_way.items():
        gone.append(f"connection '{connection}' ({_rows(n)} on the way along it; nothing reads it now)")
    # Held and buffered tokens are counted through the coalesce or batch that holds them: each
    # of those is open until its tokens have ended, and its own name may be all that is gone.
    held: Counter[str] = Counter()
    for c in fold.coalesces.values():
        if c.name not in nodes.coalesces:
            held[c.name] += len(c.arrived)
    for name, n in held.items():
        gone.append(f"coalesce '{name}' (it holds {_rows(n)} waiting for their other branches)")
    buffered: dict[str, list[str]] = {}
    for batch_id, b in fold.batches.items():
        if b.aggregation not in nodes.aggregations:
            buffered.setdefault(b.aggregation, []).append(batch_id)
    for name, batches in buffered.items():
        n = sum(len(fold.batches[b].members) for b in batches)
        gone.append(f"aggregation '{name}' (its open batch {', '.join(batches)} holds {_rows(n)})")
    was = {d.name: d.plugin for d in fold.nodes if d.kind == "sink"}
    now = {d.name: d.plugin for d in decls if d.kind == "sink"}
    for sink in sorted(set(pending) | set(fold.sink_positions)):
        if sink in nodes.sinks:
            if sink in fold.sink_positions and was.get(sink, now[sink]) != now[sink]:
                # A position means what its plugin says: bytes of a file, rows of a table. Another
                # plugin would take it for its own (a file cut to a row count, say).
                gone.append(f"sink '{sink}' as a {was[sink]} sink (it is {now[sink]} now; {fold.sink_locations.get(sink)} "
                            f"holds this run's output up to its durable position {fold.sink_positions[sink]}, which "
                            f"only a {was[sink]} sink reads)")  # fmt: skip
            continue
        if not pending[sink] and _nothing_written(fold, sink):
            continue  # (every sink has a position from the start: this one never received a row)
        what = []
        if pending[sink]:
            what.append(f"{_rows(pending[sink])} wait to be written to it")
        if sink in fold.sink_positions:
            where = fold.sink_locations.get(sink) or "its output"
            what.append(f"{where} holds this run's output up to a durable position: only this sink cuts off what a "
                        "crash left after it, and closes it at the end")  # fmt: skip
        gone.append(f"sink '{sink}' ({'; '.join(what)})")
    return gone


def layouts_changed(fold: RunFold, sinks: Mapping[str, object], redacted: Mapping[str, Any]) -> list[str]:
    """Every sink holding bytes the run made durable whose options now spell rows otherwise than
    the settings the run last wrote under (each by its `layout()`, the options that decide the
    bytes), one phrase each naming the options, what they were and what they are now. Options
    outside the layout (a moved file's path, a URL's password) may change. `redacted`: these
    settings as a run records them (`LoadedSettings.redacted`)."""
    recorded, current = fold.settings.get("sinks"), redacted.get("sinks")
    changed: list[str] = []
    for name, sink in sorted(sinks.items()):
        layout = getattr(sink, "layout", None)
        was = recorded.get(name) if isinstance(recorded, dict) else None
        if not fold.sink_positions.get(name) or layout is None or not isinstance(was, dict):
            continue  # nothing durable to continue, no layout to compare, or none recorded
        now = layout()
        is_now = current.get(name) if isinstance(current, dict) else None
        if not now or was == is_now:
            continue  # (the database sink: nothing to build it again for; or the sink as recorded)
        where = fold.sink_locations.get(name) or "its output"
        try:  # the sink as the run's settings built it (a built-in's constructor touches no file)
            before = build_plugin("sink", str(was.get("plugin")), was.get("options")).layout()
        except PluginConfigError as e:
            # Recorded redacted past building: a sink under a secret's name has every value of it
            # as its fingerprint (hmac-sha256:…). The same fingerprint is the same value: with
            # only the options outside any layout changed, the layout is the run's.
            if isinstance(is_now, dict) and _but_where(was) == _but_where(is_now):
                continue
            changed.append(f"sink '{name}' ({where}: the options the run wrote it with do not build here ({e}), so "
                           "the layout of its durable bytes is unknown)")  # fmt: skip
            continue
        keys = [*before, *(k for k in now if k not in before)]
        diff = [f"{k} {_shown(before.get(k))} (now {_shown(now.get(k))})" for k in keys if before.get(k) != now.get(k)]
        if diff:
            changed.append(f"sink '{name}' ({where} holds the run's output up to its durable position "
                           f"{fold.sink_positions[name]}, written with {', '.join(diff)})")  # fmt: skip
    return changed


def _but_where(sink: Mapping[str, Any]) -> tuple[object, dict[str, object]]:
    """A recorded sink's plugin and options but for those that say where its output is (which a
    resume may change: a moved file, a new password in a URL) or when it starts (`mode`)."""
    options = sink.get("options")
    kept = {k: v for k, v in options.items() if k not in ("path", "url", "mode")} if isinstance(options, dict) else {}
    return sink.get("plugin"), kept


def _shown(value: object) -> str:
    """An option's value as the settings would spell it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return f"[{', '.join(map(str, value))}]"
    return repr(value) if isinstance(value, str) else str(value)


def _nothing_written(fold: RunFold, sink: str) -> bool:
    """Whether a file sink holds nothing of the run: at position 0, its file absent or empty (a
    crash could have left bytes after position 0 that only the sink would cut off). A database
    sink (no digest) is not looked into: its table may hold rows committed after the position."""
    if fold.sink_positions.get(sink) != 0 or fold.sink_digests.get(sink) is None:
        return False
    path = Path(fold.working_dir or ".") / (fold.sink_locations.get(sink) or "")
    try:
        return not path.exists() or (path.is_file() and path.stat().st_size == 0)
    except OSError:
        return False


def _read(dag: Dag, connection: str) -> bool:
    """Whether a node or a sink of the pipeline reads `connection`."""
    try:
        dag.target(connection)
    except KeyError:
        return False
    return True


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"
