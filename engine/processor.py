"""The one work loop: carries every token through the DAG, one statechart transition at a time.

Every step becomes an event, applied to the run's fold (which checks it is legal) and appended
to the store. The processor keeps no counters and no state of its own beyond the rows of tokens
that are in flight or waiting (held at a coalesce, buffered in a batch) — and those are a cache
of the payload store, rebuilt from it on resume. Its parts: token steps (here), coalesces
(`coalescing`), batches (`batching`), sink writes with retry (`sinkwriter`), deadlines
(`scheduler`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from engine import work
from engine.batching import Batcher
from engine.clock import Clock
from engine.coalescing import Coalescer
from engine.expressions import ExpressionError
from engine.plugins.protocol import PluginError, Row, RowError, SourceItem
from engine.plugins.reasons import described, recorded
from engine.scheduler import Deadlines
from engine.sinkwriter import SinkWriter
from engine.work import Context, Emit, Nodes, PutPayload, Work, encode_outputs
from landscape.canonical import UnrecordableRow, encode_row
from landscape.fold import RunFold
from statecharts import events as ev
from statecharts.machines import BatchState, TokenState

__all__ = ["Nodes", "Processor", "Work"]


class Processor:
    def __init__(
        self, nodes: Nodes, fold: RunFold, emit: Emit, put_payload: PutPayload, clock: Clock, fence: Callable[[], None]
    ) -> None:
        self.n = nodes
        self.fold = fold
        self.emit = emit
        self.clock = clock
        self.now: Callable[[], float] = clock.now
        self.ctx = Context(nodes, fold, emit, put_payload, clock.now, fence)
        self.stack = self.ctx.stack
        self.waiting = self.ctx.waiting
        self.deadlines = Deadlines(self._is_open)
        self.sinks = SinkWriter(self.ctx, clock)
        self.coalescer = Coalescer(self.ctx, self.deadlines.schedule)
        self.batcher = Batcher(self.ctx, self.deadlines.schedule, self.coalescer.lost)

    # -- entry points ----------------------------------------------------------------------------

    def process_record(self, item: SourceItem) -> None:
        if item.index != self.ctx.fold.source_records:
            # The log counts source rows, and a resume starts its source at that count: a record
            # numbered otherwise would be recorded as another row than it is (the fold refuses it).
            raise PluginError(
                "source",
                f"it gave record index {item.index} where {self.ctx.fold.source_records} was next; allowed: indexes "
                "from 0 (or the start a resume gives it), one after another",
            )
        token_id = f"r{item.index}"
        if item.row is None:
            try:
                raw_data = encode_row(item.raw)
            except UnrecordableRow as e:
                # The record as read holds what no log can (a lone surrogate, which a codec such as
                # utf-7 makes of hostile bytes): it failed the run, and every resume (a review).
                why = item.error or "invalid row"
                if str(e) not in why:  # (a row that could not be recorded is here for that reason)
                    why += f"; the record as read cannot be recorded: {e}"
                raw, not_so = _recordable(item.raw)
                if raw is not None:
                    item = replace(item, raw=raw, error=f"{why}; recorded as read with each lone surrogate as U+FFFD")
                else:  # (which record it was, and why)
                    item = SourceItem(item.index, None, self._too_large(item), f"{why}{not_so}")
                raw_data = encode_row(item.raw)
            if len(raw_data) > work.MAX_OUTPUT_BYTES:  # (recorded in its place: which record, and why)
                why = f"{item.error or 'invalid row'}; {_too_large_why(len(raw_data))}"
                item = SourceItem(item.index, None, self._too_large(item), why)
                raw_data = encode_row(item.raw)
            raw_hash = self.ctx.store_data(raw_data)
            dest = self.n.on_validation_failure
            self.emit(token_id, ev.TokenCreated(row_index=item.index, data_hash=raw_hash, at=dest))
            reason = item.error or "invalid row"
            if dest == "discard":
                self.emit(token_id, ev.TokenQuarantined(reason=reason))
            else:
                w = Work(token_id, item.raw, raw_hash, dest, item.index)
                self._to_sink(w, dest, TokenState.QUARANTINED, None, reason)
            return
        try:
            data = encode_row(item.row)
        except UnrecordableRow as e:  # a source that let it through: quarantined like any bad row
            self.process_record(replace(item, row=None, error=f"the row cannot be recorded: {e}", fixed_types=None))
            return
        if len(data) > work.MAX_OUTPUT_BYTES:
            # The store takes no value past 1 GiB: the commit failed, the run stopped saying to fix
            # the cause and resume, which read the same record again (a review). As a step's
            # outputs are, a row is held to MAX_OUTPUT_BYTES.
            why = f"the row {_too_large_why(len(data))}"
            stub = SourceItem(item.index, None, self._too_large(replace(item, raw={})), why)
            self.process_record(stub)
            return
        h = self.ctx.store_data(data)
        at = self.n.dag.source_output
        self.emit(token_id, ev.TokenCreated(row_index=item.index, data_hash=h, at=at, fixed_types=item.fixed_types))
        self.stack.append(Work(token_id, item.row, h, at, item.index, data=data))
        self.drain()

    def _too_large(self, item: SourceItem) -> Row:
        """What a record too large to record is recorded as, and sent to the quarantine sink as:
        which record it was, in the keys the source gives a line it could not parse (with a key
        of their own, or fewer, a CSV quarantine sink whose columns such a line had fixed refused
        it, or one it had fixed refused that line: a review), `__raw_line__` empty (its size is
        in the reason). Its line and row number as an unparsed line has them, else as the source
        said where the record starts (`SourceItem.line`) and its index."""
        # A line the source could not parse carries its own numbers (and no `line`); a row's raw
        # is the row as read, whose keys are the input's to choose (a review).
        unparsed = item.line is None and "__raw_line__" in item.raw
        said = {k: v for k in ("__line_number__", "__row_number__") if unparsed and type(v := item.raw.get(k)) is int}
        known: Row = {"__raw_line__": "", "__line_number__": item.line, "__row_number__": item.index + 1, **said}
        return {k: known.get(k) for k in self.n.unparsed_keys}

    def drain(self) -> None:
        while self.stack:
            self._advance(self.stack.pop())

    def resume_token(self, w: Work, state: str, place: str | None, outcome: str | None,
                     node: str | None, reason: str | None) -> None:  # fmt: skip
        """Put a non-terminal token from the fold back where the log says it is."""
        if state in (TokenState.CREATED, TokenState.IN_FLIGHT):
            self.stack.insert(0, w)  # oldest first: the stack pops from the end
        elif state in (TokenState.HELD, TokenState.BUFFERED):
            self.waiting[w.token_id] = w
        elif state == TokenState.PENDING_SINK and place is not None and outcome is not None:
            # The sink was rolled back to its durable position: write the row again.
            self.sinks.write(w.token_id, w.row, place, outcome, node, reason)

    def resume_flush(self, batch_id: str) -> None:
        """Flush again a batch the log left flushing: a run that failed in its plugin's flush."""
        self.batcher.flush(batch_id, "resumed")

    # -- the step ----------------------------------------------------------------------------------

    def _advance(self, w: Work) -> None:
        dag = self.n.dag
        while True:
            target = dag.target(w.at)
            kind = target.kind
            if kind == "transform":
                if not self._transform(w, target.name):
                    return
            elif kind == "gate":
                if not self._gate(w, target.name):
                    return
            elif kind == "sink":
                self._to_sink(w, target.name, TokenState.COMPLETED, None, None)
                return
            elif kind == "coalesce":
                self.coalescer.arrive(w, target.name, target.branch or w.branch or "")
                return
            else:
                self.batcher.buffer(w, target.name)
                return

    def _transform(self, w: Work, name: str) -> bool:
        cfg, plugin = self.n.transforms[name]
        started = time.perf_counter_ns()
        try:
            out = plugin.process(w.row)
        except RowError as e:
            self._row_error(w, name, e.reason, cfg.on_error)
            return False
        except Exception as e:  # recorded without a message that may quote the row (reasons.recorded)
            raise PluginError(name, f"{recorded(e)}, on row {w.row_index + 1}") from e
        duration = (time.perf_counter_ns() - started) // 1000
        nxt = cfg.on_success or name
        try:  # what the step made, as it will be recorded; a row that cannot be is its row error
            if isinstance(out, list):
                # One row per branch merges: a plugin that did not say it expands (`expands`,
                # refused there at load) is held to it here.
                joined = self.n.dag.on_joined_branch.get(name)
                if joined is not None and len(out) != 1:
                    why = f"it made {len(out)} rows of one, on branch '{joined[0]}', which coalesce '{joined[1]}' joins"
                    self._row_error(w, name, f"{why} one row per branch", cfg.on_error)
                    return False
                self._expand(w, name, encode_outputs(out), out, nxt)
                return False
            data = encode_row(out)
        except UnrecordableRow as e:
            self._row_error(w, name, f"its output cannot be recorded: {e}", cfg.on_error)
            return False
        # Unchanged bytes (a filter that let the row through): the same commitment, one copy.
        h = w.hash if data == w.data else self.ctx.store_data(data)
        self.emit(
            w.token_id,
            ev.StepCompleted(node=name, input_hash=w.hash, output_hash=h, duration_us=duration, next=nxt),
        )
        w.row, w.hash, w.at, w.data = out, h, nxt, data
        return True

    def _expand(self, w: Work, node: str, encoded: list[bytes], rows: list[Row], at: str) -> None:
        children = [f"{w.token_id}.{i}" for i in range(len(rows))]
        self.emit(w.token_id, ev.TokenExpanded(node=node, children=children))
        works = []
        for child, row, data in zip(children, rows, encoded, strict=True):
            h = self.ctx.store_data(data)
            self.emit(
                child,
                ev.TokenCreated(
                    row_index=w.row_index, data_hash=h, at=at, parents=[w.token_id],
                    branch=w.branch, fork_id=w.fork_id,
                ),
            )  # fmt: skip
            works.append(Work(child, row, h, at, w.row_index, w.branch, w.fork_id))
        self.stack.extend(reversed(works))

    def _gate(self, w: Work, name: str) -> bool:
        cfg, condition = self.n.gates[name]
        started = time.perf_counter_ns()
        try:
            value = condition.evaluate(w.row)
        except ExpressionError as e:
            self._row_error(w, name, f"condition failed: {e}", cfg.on_error)
            return False
        if isinstance(value, bool):
            label = "true" if value else "false"
        elif isinstance(value, str):
            label = value
        else:
            why = f"condition gave {described(value)}, not a bool or a route label"
            self._row_error(w, name, why, cfg.on_error)
            return False
        dest = cfg.routes.get(label)
        if dest is None:
            # A label the settings spell (a literal of the condition) is named; one computed from
            # the row is row data: only its size is recorded (the row's payload has it).
            named = isinstance(value, bool) or label in condition.literals  # (true and false are no row data)
            shown = f"label '{label}'" if named else f"the label it gave ({described(label)})"
            self._row_error(w, name, f"no route for {shown}; routes: {', '.join(cfg.routes)}", cfg.on_error)
            return False
        if dest == "fork":
            self._fork(w, name, cfg.fork_to or [])
            return False
        duration = (time.perf_counter_ns() - started) // 1000
        self.emit(
            w.token_id,
            ev.StepCompleted(
                node=name, input_hash=w.hash, output_hash=w.hash, duration_us=duration, next=dest,
                route=label,
            ),
        )  # fmt: skip
        w.at = dest
        target = self.n.dag.target(dest)
        if target.kind == "sink":
            self._to_sink(w, target.name, TokenState.ROUTED, name, None)
            return False
        return True

    def _fork(self, w: Work, node: str, branches: list[str]) -> None:
        children = [f"{w.token_id}.{b}" for b in branches]
        self.emit(w.token_id, ev.TokenForked(node=node, children=children))
        works = []
        for child, branch in zip(children, branches, strict=True):
            self.emit(
                child,
                ev.TokenCreated(
                    row_index=w.row_index, data_hash=w.hash, at=branch, parents=[w.token_id],
                    branch=branch, fork_id=w.token_id,
                ),
            )  # fmt: skip
            works.append(Work(child, dict(w.row), w.hash, branch, w.row_index, branch, w.token_id, w.data))
        # A branch forked again is lost to the coalesce that waits for it: its children are
        # branches of this fork, which that coalesce does not join (engine/dag.py).
        self.coalescer.lost(w, f"forked by gate {node}")
        self.stack.extend(reversed(works))

    def _row_error(self, w: Work, node: str, reason: str, on_error: str | None) -> None:
        if on_error is None:
            self.emit(w.token_id, ev.TokenFailed(reason=reason, node=node))
            self.coalescer.lost(w, "failed")
        elif on_error == "discard":
            self.emit(w.token_id, ev.TokenDiverted(node=node, reason=reason))
            self.coalescer.lost(w, "diverted")
        else:
            self._to_sink(w, on_error, TokenState.DIVERTED, node, reason)

    def _to_sink(self, w: Work, sink: str, outcome: str, node: str | None, reason: str | None) -> None:
        self.emit(w.token_id, ev.SinkAssigned(sink=sink, outcome=str(outcome), node=node, reason=reason))
        self.sinks.write(w.token_id, w.row, sink, str(outcome), node, reason)
        self.coalescer.lost(w, f"went to sink {sink}")

    # -- durability ------------------------------------------------------------------------------

    def flush_sinks(self, after_flush: Callable[[], None] | None = None) -> None:
        self.sinks.flush_all(after_flush)

    def flush_sink(self, sink_name: str) -> int:
        return self.sinks.flush(sink_name)

    def reopen_sink(self, sink_name: str) -> None:
        self.sinks.reopen(sink_name)

    # -- time and the end of the source -----------------------------------------------------------

    def schedule(self, when: float, kind: str, entity: str) -> None:
        self.deadlines.schedule(when, kind, entity)

    def next_deadline(self) -> float | None:
        return self.deadlines.next()

    def _is_open(self, kind: str, entity: str) -> bool:
        if kind == "coalesce":
            return entity in self.fold.coalesces
        batch = self.fold.batches.get(entity)
        return batch is not None and batch.state == BatchState.COLLECTING

    def fire_due(self) -> None:
        """Resolve every coalesce and flush every batch whose deadline has passed."""
        for kind, entity in self.deadlines.due(self.now()):
            if kind == "coalesce":
                self.coalescer.decide(entity, "timeout")
            else:
                self.batcher.flush(entity, "timeout")
            self.drain()

    def end_of_source(self) -> None:
        """Nothing more will arrive: resolve every open coalesce and flush every batch, node by
        node in topological order (what one flush emits can only reach nodes downstream)."""
        for name in self.n.dag.node_order:
            if name in self.n.coalesces:
                for cid in [cid for cid, c in self.fold.coalesces.items() if c.name == name]:
                    self.coalescer.decide(cid, "end_of_source")
                    self.drain()
            elif name in self.n.aggregations:
                batch_id = self.fold.open_batch.get(name)
                if batch_id is not None:
                    self.batcher.flush(batch_id, "end_of_source")
                    self.drain()


def _too_large_why(size: int) -> str:
    return (
        f"takes {size:,} bytes recorded, more than the {work.MAX_OUTPUT_BYTES:,} a row may, so only which record "
        "it was is recorded"
    )


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _recordable(raw: Row) -> tuple[Row | None, str]:
    """A quarantined record's raw form that cannot be recorded, its strings with each lone
    surrogate shown as U+FFFD; None (and why, if it is another reason) if it still cannot be."""

    def replaced(value: Any) -> Any:
        if isinstance(value, str):
            return _LONE_SURROGATE.sub("\ufffd", value)
        if isinstance(value, dict):
            out = {replaced(k): replaced(v) for k, v in value.items()}
            if len(out) < len(value):  # two keys made one (a review: a field gone, unsaid)
                raise UnrecordableRow("two of its keys differ only in lone surrogates")
            return out
        if isinstance(value, list):
            return [replaced(v) for v in value]
        return value

    try:
        shown = replaced(raw)
        encode_row(shown)
    except UnrecordableRow as e:
        return None, f"; {e}"
    except RecursionError:
        return None, ""
    return shown, ""
