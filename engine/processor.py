"""The one work loop: carries every token through the DAG, one statechart transition at a time.

Every step becomes an event, applied to the run's fold (which checks it is legal) and appended
to the store. The processor keeps no counters and no state of its own beyond the rows of tokens
that are in flight or waiting (held at a coalesce, buffered in a batch) — and those are a cache
of the payload store, rebuilt from it on resume.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.clock import Clock
from engine.dag import Dag
from engine.expressions import Expression, ExpressionError
from engine.plugins.protocol import (
    Aggregation,
    PluginError,
    Row,
    RowError,
    Sink,
    SourceItem,
    Transform,
    at_node,
)
from engine.settings import AggregationSettings, CoalesceSettings, GateSettings, RetrySettings, TransformSettings
from landscape.canonical import hash_row
from landscape.fold import RunFold
from statecharts import events as ev


@dataclass(slots=True)
class Work:
    """A token and its current row."""

    token_id: str
    row: Row
    hash: str
    at: str
    row_index: int
    branch: str | None = None
    fork_id: str | None = None


@dataclass(slots=True)
class PendingWrite:
    token_id: str
    outcome: str
    node: str | None
    reason: str | None
    row: Row  # kept until the write is durable, for `on_write_failure`


@dataclass
class Nodes:
    """Everything the processor needs to know about the pipeline, resolved once."""

    dag: Dag
    transforms: dict[str, tuple[TransformSettings, Transform]]
    gates: dict[str, tuple[GateSettings, Expression]]
    coalesces: dict[str, CoalesceSettings]
    aggregations: dict[str, tuple[AggregationSettings, Aggregation, Expression | None]]
    sinks: dict[str, Sink]
    on_validation_failure: str
    retry: RetrySettings = field(default_factory=RetrySettings)
    coalesce_of_branch: dict[str, str] = field(default_factory=dict)
    write_failure: dict[str, str | None] = field(default_factory=dict)  # sink -> on_write_failure


Emit = Callable[[str, ev.EventBase], None]
PutPayload = Callable[[str, bytes], None]


class Processor:
    def __init__(self, nodes: Nodes, fold: RunFold, emit: Emit, put_payload: PutPayload, clock: Clock) -> None:
        self.n = nodes
        self.fold = fold
        self.emit = emit
        self.put_payload = put_payload
        self.clock = clock
        self.now: Callable[[], float] = clock.now
        # Jitter for retry backoff; seeded by the run so that a run's waits are reproducible.
        self._jitter = random.Random(fold.run_id)
        self.stack: list[Work] = []
        # Rows of tokens waiting at a coalesce or in a batch, by token id.
        self.waiting: dict[str, Work] = {}
        self.pending: dict[str, list[PendingWrite]] = {}
        self._deadlines: list[tuple[float, int, str, str]] = []
        self._deadline_seq = 0

    # -- payloads --------------------------------------------------------------------------------

    def _store(self, row: Row) -> str:
        h, data = hash_row(row)
        self.put_payload(h, data)
        return h

    # -- entry points ----------------------------------------------------------------------------

    def process_record(self, item: SourceItem) -> None:
        token_id = f"r{item.index}"
        if item.row is None:
            raw_hash = self._store(item.raw)
            dest = self.n.on_validation_failure
            self.emit(token_id, ev.TokenCreated(row_index=item.index, data_hash=raw_hash, at=dest))
            reason = item.error or "invalid row"
            if dest == "discard":
                self.emit(token_id, ev.TokenQuarantined(reason=reason))
            else:
                w = Work(token_id, item.raw, raw_hash, dest, item.index)
                self._to_sink(w, dest, "quarantined", None, reason)
            return
        h = self._store(item.row)
        at = self.n.dag.source_output
        self.emit(token_id, ev.TokenCreated(row_index=item.index, data_hash=h, at=at))
        self.stack.append(Work(token_id, item.row, h, at, item.index))
        self.drain()

    def drain(self) -> None:
        while self.stack:
            self._advance(self.stack.pop())

    def resume_token(self, w: Work, state: str, place: str | None, outcome: str | None,
                     node: str | None, reason: str | None) -> None:  # fmt: skip
        """Put a non-terminal token from the fold back where the log says it is."""
        if state in ("created", "in_flight"):
            self.stack.insert(0, w)  # oldest first: the stack pops from the end
        elif state in ("held", "buffered"):
            self.waiting[w.token_id] = w
        elif state == "pending_sink" and place is not None and outcome is not None:
            # The sink was rolled back to its durable position: write the row again.
            self.n.sinks[place].write(w.token_id, w.row)
            self.pending.setdefault(place, []).append(PendingWrite(w.token_id, outcome, node, reason, w.row))

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
                self._to_sink(w, target.name, "completed", None, None)
                return
            elif kind == "coalesce":
                self._arrive(w, target.name, target.branch or w.branch or "")
                return
            else:
                self._buffer(w, target.name)
                return

    def _transform(self, w: Work, name: str) -> bool:
        cfg, plugin = self.n.transforms[name]
        started = time.perf_counter_ns()
        try:
            out = plugin.process(w.row)
        except RowError as e:
            self._row_error(w, name, e.reason, cfg.on_error)
            return False
        except Exception as e:
            raise PluginError(name, f"{type(e).__name__}: {e}") from e
        duration = (time.perf_counter_ns() - started) // 1000
        nxt = cfg.on_success or name
        if isinstance(out, list):
            self._expand(w, name, out, nxt)
            return False
        h = self._store(out)
        self.emit(
            w.token_id,
            ev.StepCompleted(node=name, input_hash=w.hash, output_hash=h, duration_us=duration, next=nxt),
        )
        w.row, w.hash, w.at = out, h, nxt
        return True

    def _expand(self, w: Work, node: str, rows: list[Row], at: str) -> None:
        children = [f"{w.token_id}.{i}" for i in range(len(rows))]
        self.emit(w.token_id, ev.TokenExpanded(node=node, children=children))
        works = []
        for child, row in zip(children, rows, strict=True):
            h = self._store(row)
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
            self._row_error(w, name, f"condition gave {value!r}, not a bool or a route label", cfg.on_error)
            return False
        dest = cfg.routes.get(label)
        if dest is None:
            self._row_error(w, name, f"no route for label {label!r}", cfg.on_error)
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
            self._to_sink(w, target.name, "routed", name, None)
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
            works.append(Work(child, dict(w.row), w.hash, branch, w.row_index, branch, w.token_id))
        self.stack.extend(reversed(works))

    def _row_error(self, w: Work, node: str, reason: str, on_error: str | None) -> None:
        if on_error is None:
            self.emit(w.token_id, ev.TokenFailed(reason=reason, node=node))
            self._lost(w, "failed")
        elif on_error == "discard":
            self.emit(w.token_id, ev.TokenDiverted(node=node, reason=reason))
            self._lost(w, "diverted")
        else:
            self._to_sink(w, on_error, "diverted", node, reason)

    def _to_sink(self, w: Work, sink: str, outcome: str, node: str | None, reason: str | None) -> None:
        self.emit(w.token_id, ev.SinkAssigned(sink=sink, outcome=outcome, node=node, reason=reason))
        self.n.sinks[sink].write(w.token_id, w.row)
        self.pending.setdefault(sink, []).append(PendingWrite(w.token_id, outcome, node, reason, w.row))
        self._lost(w, f"went to sink {sink}")

    # -- durability ------------------------------------------------------------------------------

    def flush_sinks(self, after_flush: Callable[[], None] | None = None) -> None:
        """Make every pending sink write durable, then record it and its tokens' outcomes.

        The order is the guarantee: a token is recorded `completed` only after its row is on
        disk (or committed), so the log never claims a write that a crash could undo. A sink
        whose flush fails hands its rows to its `on_write_failure` (another sink, flushed in
        the same round, or `discard`: the tokens fail); without one, the run fails.
        """
        failed: set[str] = set()
        while names := [n for n in sorted(self.pending) if self.pending[n]]:
            for sink_name in names:
                writes, self.pending[sink_name] = self.pending[sink_name], []
                sink = self.n.sinks[sink_name]
                try:
                    position = self._flush_with_retry(sink_name, sink, writes)
                except PluginError as e:
                    failed.add(sink_name)
                    self._write_failed(sink_name, writes, e, failed)
                    continue
                if after_flush is not None:
                    after_flush()
                flushed = ev.SinkFlushed(sink=sink_name, position=position, rows=len(writes), location=sink.location())
                self.emit(self.fold.run_id, flushed)
                for p in writes:
                    self.emit(p.token_id, _written(p, sink_name))

    def _flush_with_retry(self, sink_name: str, sink: Sink, writes: list[PendingWrite]) -> int:
        """`sink.flush()`, retried with exponential backoff and jitter; every failed attempt is
        an event. A circuit breaker, derived from those events, stops trying a sink that has
        failed `failure_threshold` times in a row until `reset_seconds` have passed."""
        r = self.n.retry
        attempt = 0
        while True:
            failures = self.fold.sink_failures.get(sink_name, 0)
            if r.failure_threshold is not None and failures >= r.failure_threshold:
                reopens = self.fold.sink_failed_at.get(sink_name, 0.0) + (r.reset_seconds or 0.0)
                if self.now() < reopens:
                    raise PluginError(f"sink '{sink_name}'", f"circuit open after {failures} failed writes")
            attempt += 1
            try:
                return sink.flush()
            except Exception as raised:
                e = at_node(f"sink '{sink_name}'", raised)
                now = self.now()
                retry_at = None
                if attempt < r.max_attempts:
                    delay = min(r.max_delay_seconds, r.initial_delay_seconds * r.exponential_base ** (attempt - 1))
                    retry_at = now + delay * self._jitter.uniform(0.5, 1.0)
                failed = ev.SinkWriteFailed(sink=sink_name, attempt=attempt, error=str(e), at=now, retry_at=retry_at)
                self.emit(self.fold.run_id, failed)
                if retry_at is None:
                    raise e from raised
                self.clock.sleep_until(retry_at)
                # Drop what the failed attempt may have left, then write the same rows again.
                self.reopen_sink(sink_name)
                for p in writes:
                    sink.write(p.token_id, p.row)

    def flush_sink(self, sink_name: str) -> int:
        try:
            return self.n.sinks[sink_name].flush()
        except Exception as e:
            raise at_node(f"sink '{sink_name}'", e) from e

    def reopen_sink(self, sink_name: str) -> None:
        """Open a sink at its last durable position (from the log), dropping anything after it."""
        sink = self.n.sinks[sink_name]
        sink.release()
        try:
            sink.open(self.fold.run_id, self.fold.sink_positions.get(sink_name))
        except Exception as e:
            raise at_node(f"sink '{sink_name}'", e) from e

    def _write_failed(self, sink_name: str, writes: list[PendingWrite], error: PluginError, failed: set[str]) -> None:
        fallback = self.n.write_failure.get(sink_name)
        if fallback is None or fallback in failed:
            raise error
        # Drop whatever the failed flush left behind: back to the last durable position.
        self.reopen_sink(sink_name)
        reason = f"write failed: {error}"
        for p in writes:
            if fallback == "discard":
                self.emit(p.token_id, ev.TokenFailed(reason="sink_write_failed", node=sink_name, detail=str(error)))
                continue
            self.emit(p.token_id, ev.SinkAssigned(sink=fallback, outcome="diverted", node=sink_name, reason=reason))
            self.n.sinks[fallback].write(p.token_id, p.row)
            self.pending.setdefault(fallback, []).append(PendingWrite(p.token_id, "diverted", sink_name, reason, p.row))

    # -- coalesce --------------------------------------------------------------------------------

    def _coalesce_id(self, name: str, fork_id: str) -> str:
        return f"{name}:{fork_id}"

    def _open_coalesce(self, name: str, fork_id: str, row_index: int) -> str:
        cid = self._coalesce_id(name, fork_id)
        if cid not in self.fold.coalesces:
            cfg = self.n.coalesces[name]
            deadline = None if cfg.timeout_seconds is None else self.now() + cfg.timeout_seconds
            branches = self.n.dag.coalesce_branches[name]
            self.emit(
                cid,
                ev.CoalesceOpened(
                    coalesce=name, row_index=row_index, policy=cfg.policy, branches=branches,
                    deadline=deadline, fork_id=fork_id,
                ),
            )  # fmt: skip
            if deadline is not None:
                self.schedule(deadline, "coalesce", cid)
        return cid

    def _arrive(self, w: Work, name: str, branch: str) -> None:
        if w.fork_id is None:
            self.emit(w.token_id, ev.TokenFailed(reason="not_a_branch", node=name))
            return
        cid = self._coalesce_id(name, w.fork_id)
        if cid in self.fold.resolved_coalesces:
            detail = f"coalesce {cid} already {self.fold.resolved_coalesces[cid]}"
            self.emit(w.token_id, ev.TokenFailed(reason="late_arrival", node=name, detail=detail))
            return
        cid = self._open_coalesce(name, w.fork_id, w.row_index)
        if branch in self.fold.coalesces[cid].arrived:
            self.emit(w.token_id, ev.TokenFailed(reason="duplicate_branch", node=name, detail=branch))
            return
        self.emit(w.token_id, ev.TokenHeld(coalesce_id=cid, branch=branch))
        self.waiting[w.token_id] = w
        self.emit(cid, ev.BranchArrived(branch=branch, token_id=w.token_id))
        self._decide(cid, None)

    def _lost(self, w: Work, reason: str) -> None:
        """A branch token left its path before reaching its coalesce."""
        if w.branch is None or w.fork_id is None:
            return
        name = self.n.coalesce_of_branch.get(w.branch)
        if name is None:
            return
        cid = self._coalesce_id(name, w.fork_id)
        if cid in self.fold.resolved_coalesces:
            return
        cid = self._open_coalesce(name, w.fork_id, w.row_index)
        self.emit(cid, ev.BranchLost(branch=w.branch, token_id=w.token_id, reason=reason))
        self._decide(cid, None)

    def _decide(self, cid: str, forced: str | None) -> None:
        """Merge or fail a coalesce if its policy says so. `forced` is "timeout" or
        "end_of_source": nothing more will arrive, so the coalesce must resolve now."""
        c = self.fold.coalesces[cid]
        cfg = self.n.coalesces[c.name]
        arrived, lost = c.arrived, c.lost
        pending = [b for b in c.branches if b not in arrived and b not in lost]
        policy = cfg.policy
        if forced is None:
            if policy == "require_all":
                if lost:
                    return self._fail_coalesce(cid, "branch_lost")
                if not pending:
                    return self._merge(cid, "arrivals")
            elif policy == "first":
                if arrived:
                    return self._merge(cid, "arrivals")
                if not pending:
                    return self._fail_coalesce(cid, "branch_lost")
            elif policy == "quorum":
                need = cfg.quorum_count or len(c.branches)
                if len(arrived) >= need:
                    return self._merge(cid, "arrivals")
                if len(arrived) + len(pending) < need:
                    return self._fail_coalesce(cid, "quorum_not_met")
            elif not pending:  # best_effort
                if arrived:
                    return self._merge(cid, "arrivals")
                return self._fail_coalesce(cid, "branch_lost")
            return None
        if policy == "quorum":
            if len(arrived) >= (cfg.quorum_count or len(c.branches)):
                return self._merge(cid, forced)
            return self._fail_coalesce(cid, "quorum_not_met")
        if policy == "best_effort" and arrived:
            return self._merge(cid, forced)
        return self._fail_coalesce(cid, "timeout" if forced == "timeout" else "incomplete_branches")

    def _merge(self, cid: str, trigger: str) -> None:
        c = self.fold.coalesces[cid]
        cfg = self.n.coalesces[c.name]
        works = {b: self.waiting[t] for b, t in c.arrived.items()}
        in_order = [b for b in c.branches if b in works]
        collisions: list[str] = []
        if cfg.merge == "nested":
            merged: Row = {b: works[b].row for b in in_order}
        elif cfg.merge == "select":
            chosen = cfg.select_branch or ""
            if chosen not in works:
                return self._fail_coalesce(cid, "select_missing")
            merged = dict(works[chosen].row)
        else:
            merged = {}
            for b in in_order:
                for k, v in works[b].row.items():
                    if k in merged and merged[k] != v and k not in collisions:
                        collisions.append(k)
                    merged[k] = v
        missing = [b for b in c.branches if b not in works]
        parents = [works[b].token_id for b in in_order]
        fork_id = next(iter(works.values())).fork_id or cid
        into = f"{fork_id}+{c.name}"
        self.emit(
            cid,
            ev.CoalesceMerged(arrived=in_order, missing=missing, into=into, trigger=trigger, collisions=collisions),
        )
        for t in parents:
            self.emit(t, ev.TokenCoalesced(coalesce_id=cid, into=into))
            del self.waiting[t]
        h = self._store(merged)
        at = self.n.dag.coalesce_output(c.name)
        self.emit(into, ev.TokenCreated(row_index=c.row_index, data_hash=h, at=at, parents=parents))
        self.stack.append(Work(into, merged, h, at, c.row_index))
        return None

    def _fail_coalesce(self, cid: str, reason: str) -> None:
        c = self.fold.coalesces[cid]
        arrived = [b for b in c.branches if b in c.arrived]
        missing = [b for b in c.branches if b not in c.arrived]
        tokens = [c.arrived[b] for b in arrived]
        self.emit(cid, ev.CoalesceFailed(reason=reason, arrived=arrived, missing=missing))
        detail = "missing branches: " + ",".join(missing)
        for t in tokens:
            self.emit(t, ev.TokenFailed(reason=reason, node=c.name, detail=detail))
            del self.waiting[t]

    # -- aggregation -----------------------------------------------------------------------------

    def _buffer(self, w: Work, name: str) -> None:
        cfg, _plugin, condition = self.n.aggregations[name]
        batch_id = self.fold.open_batch.get(name)
        if batch_id is None:
            batch_id = f"{name}#{self.fold.batches_opened[name] + 1}"
            now = self.now()
            timeout = cfg.trigger.timeout_seconds
            deadline = None if timeout is None else now + timeout
            self.emit(batch_id, ev.BatchOpened(aggregation=name, opened_at=now, deadline=deadline))
            if deadline is not None:
                self.schedule(deadline, "batch", batch_id)
        self.emit(w.token_id, ev.TokenBuffered(batch_id=batch_id))
        self.waiting[w.token_id] = w
        batch = self.fold.batches[batch_id]
        count = cfg.trigger.count
        if count is not None and len(batch.members) >= count:
            self._flush_batch(batch_id, "count")
        elif condition is not None:
            facts = {"batch_count": len(batch.members), "batch_age_seconds": self.now() - batch.opened_at}
            try:
                fired = bool(condition.evaluate(facts))
            except ExpressionError:
                fired = False  # a condition that cannot be evaluated has not fired
            if fired:
                self._flush_batch(batch_id, "condition")

    def _flush_batch(self, batch_id: str, trigger: str) -> None:
        batch = self.fold.batches[batch_id]
        name = batch.aggregation
        cfg, plugin, _ = self.n.aggregations[name]
        members = [self.waiting[t] for t in batch.members]
        self.emit(batch_id, ev.BatchFlushing(trigger=trigger, size=len(members)))
        try:
            result = plugin.flush([m.row for m in members])
        except RowError as e:
            return self._fail_batch(batch_id, members, e.reason)
        except Exception as e:
            raise PluginError(name, f"{type(e).__name__}: {e}") from e
        if cfg.expected_output_count is not None and len(result.rows) != cfg.expected_output_count:
            reason = f"expected {cfg.expected_output_count} output rows, got {len(result.rows)}"
            return self._fail_batch(batch_id, members, reason)
        if cfg.output_mode == "passthrough":
            if len(result.rows) != len(members):
                reason = f"passthrough needs one output per input: {len(members)} in, {len(result.rows)} out"
                return self._fail_batch(batch_id, members, reason)
            works = []
            for m, out in zip(members, result.rows, strict=True):
                h = self._store(out)
                self.emit(
                    m.token_id,
                    ev.StepCompleted(node=name, input_hash=m.hash, output_hash=h, duration_us=0, next=cfg.on_success),
                )
                del self.waiting[m.token_id]
                works.append(Work(m.token_id, out, h, cfg.on_success, m.row_index, m.branch, m.fork_id))
            self.emit(batch_id, ev.BatchCompleted(outputs=len(works)))
            self.stack.extend(reversed(works))
            return None
        rejected = dict(result.rejected)
        parents = []
        for i, m in enumerate(members):
            if i in rejected:
                self.emit(m.token_id, ev.TokenQuarantined(reason=rejected[i]))
            else:
                self.emit(m.token_id, ev.TokenConsumed(batch_id=batch_id))
                parents.append(m.token_id)
            del self.waiting[m.token_id]
        row_index = members[-1].row_index if members else 0
        works = []
        for i, out in enumerate(result.rows):
            h = self._store(out)
            child = f"{batch_id}.{i}"
            self.emit(
                child,
                ev.TokenCreated(row_index=row_index, data_hash=h, at=cfg.on_success, parents=parents or [batch_id]),
            )
            works.append(Work(child, out, h, cfg.on_success, row_index))
        self.emit(batch_id, ev.BatchCompleted(outputs=len(works)))
        self.stack.extend(reversed(works))
        return None

    def _fail_batch(self, batch_id: str, members: list[Work], reason: str) -> None:
        name = self.fold.batches[batch_id].aggregation
        self.emit(batch_id, ev.BatchFailed(reason=reason))
        for m in members:
            self.emit(m.token_id, ev.TokenFailed(reason="batch_failed", node=name, detail=reason))
            del self.waiting[m.token_id]

    # -- time and the end of the source -----------------------------------------------------------

    def schedule(self, when: float, kind: str, entity: str) -> None:
        self._deadline_seq += 1
        heapq.heappush(self._deadlines, (when, self._deadline_seq, kind, entity))

    def next_deadline(self) -> float | None:
        while self._deadlines:
            when, _, kind, entity = self._deadlines[0]
            if self._is_open(kind, entity):
                return when
            heapq.heappop(self._deadlines)
        return None

    def _is_open(self, kind: str, entity: str) -> bool:
        if kind == "coalesce":
            return entity in self.fold.coalesces
        batch = self.fold.batches.get(entity)
        return batch is not None and batch.state == "collecting"

    def fire_due(self) -> None:
        """Resolve every coalesce and flush every batch whose deadline has passed."""
        now = self.now()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, kind, entity = heapq.heappop(self._deadlines)
            if not self._is_open(kind, entity):
                continue
            if kind == "coalesce":
                self._decide(entity, "timeout")
            else:
                self._flush_batch(entity, "timeout")
            self.drain()

    def end_of_source(self) -> None:
        """Nothing more will arrive: resolve every open coalesce and flush every batch, node by
        node in topological order (what one flush emits can only reach nodes downstream)."""
        for name in self.n.dag.node_order:
            if name in self.n.coalesces:
                for cid in [cid for cid, c in self.fold.coalesces.items() if c.name == name]:
                    self._decide(cid, "end_of_source")
                    self.drain()
            elif name in self.n.aggregations:
                batch_id = self.fold.open_batch.get(name)
                if batch_id is not None:
                    self._flush_batch(batch_id, "end_of_source")
                    self.drain()


def _written(p: PendingWrite, sink: str) -> ev.EventBase:
    if p.outcome == "completed":
        return ev.TokenCompleted(sink=sink)
    if p.outcome == "routed":
        return ev.TokenRouted(sink=sink)
    if p.outcome == "quarantined":
        return ev.TokenQuarantined(reason=p.reason or "invalid row", sink=sink)
    return ev.TokenDiverted(node=p.node or "", reason=p.reason or "", sink=sink)
