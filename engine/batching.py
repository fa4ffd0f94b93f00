"""Aggregation batches: tokens buffered until a trigger fires (count, condition, timeout, end of
source), then flushed through the aggregation plugin — an instance of the Batch statechart."""

from __future__ import annotations

import time
from collections.abc import Callable

from engine.expressions import ExpressionError
from engine.plugins.protocol import BatchResult, PluginError, RowError
from engine.plugins.reasons import recorded
from engine.work import Context, Work, encode_outputs
from landscape.canonical import UnrecordableRow
from statecharts import events as ev
from statecharts.machines import BatchState

Schedule = Callable[[float, str, str], None]
Lost = Callable[[Work, str], None]


class Batcher:
    """`lost` is told of every member that does not go on as itself (failed, quarantined or
    consumed into new rows): one on a fork branch is then a lost branch, and its coalesce
    decides at once rather than wait for the end of the source with its other branches held."""

    def __init__(self, ctx: Context, schedule: Schedule, lost: Lost) -> None:
        self.ctx = ctx
        self.schedule = schedule
        self.lost = lost

    def buffer(self, w: Work, name: str) -> None:
        ctx = self.ctx
        cfg, _plugin, condition = ctx.nodes.aggregations[name]
        batch_id = ctx.fold.open_batch.get(name)
        if batch_id is None:
            batch_id = f"{name}#{ctx.fold.batches_opened[name] + 1}"
            now = ctx.now()
            timeout = cfg.trigger.timeout_seconds
            deadline = None if timeout is None else now + timeout
            ctx.emit(batch_id, ev.BatchOpened(aggregation=name, opened_at=now, deadline=deadline))
            if deadline is not None:
                self.schedule(deadline, "batch", batch_id)
        ctx.emit(w.token_id, ev.TokenBuffered(batch_id=batch_id))
        ctx.waiting[w.token_id] = w
        batch = ctx.fold.batches[batch_id]
        count = cfg.trigger.count
        if count is not None and len(batch.members) >= count:
            self.flush(batch_id, "count")
        elif condition is not None:
            facts = {"batch_count": len(batch.members), "batch_age_seconds": ctx.now() - batch.opened_at}
            try:
                fired = bool(condition.evaluate(facts))
            except ExpressionError as e:
                # The settings' mistake, not a row's: taken as "not fired", the batch grew to the
                # end of the source without a word. The run fails, on record; fixed, it resumes.
                raise PluginError(
                    name,
                    f"its trigger condition cannot be evaluated for batch {batch_id} (batch_count "
                    f"{facts['batch_count']}, batch_age_seconds {facts['batch_age_seconds']:g}): {e}",
                ) from e
            if fired:
                self.flush(batch_id, "condition")

    def flush(self, batch_id: str, trigger: str) -> None:
        ctx = self.ctx
        batch = ctx.fold.batches[batch_id]
        name = batch.aggregation
        cfg, plugin, _ = ctx.nodes.aggregations[name]
        members = [ctx.waiting[t] for t in batch.members]
        if batch.state == BatchState.COLLECTING:
            ctx.emit(batch_id, ev.BatchFlushing(trigger=trigger, size=len(members)))
        # else a resumed run's batch whose flush its plugin's failure cut short: flushed again,
        # the trigger already on record (its members are still buffered, their rows read back)
        started = time.perf_counter_ns()
        try:
            result = plugin.flush([m.row for m in members])
        except RowError as e:
            return self._fail(batch_id, members, e.reason)
        except Exception as e:  # recorded without a message that may quote the rows (reasons.recorded)
            raise PluginError(name, f"{recorded(e)}, on batch {batch_id}") from e
        try:  # the outputs as they will be recorded; one that cannot be fails the batch, recorded
            encoded = encode_outputs(result.rows)
        except UnrecordableRow as e:
            return self._fail(batch_id, members, f"an output row cannot be recorded: {e}")
        if cfg.expected_output_count is not None and len(result.rows) != cfg.expected_output_count:
            reason = f"expected {cfg.expected_output_count} output rows, got {len(result.rows)}"
            return self._fail(batch_id, members, reason)
        if cfg.output_mode == "passthrough":
            why = _not_passthrough(result, len(members))
            if why is not None:
                return self._fail(batch_id, members, why)
            works = []
            # Each row's step takes its share of the plugin's time on the batch (0 was recorded:
            # the slowest-nodes query and `show` took such a node for free).
            share = (time.perf_counter_ns() - started) // 1000 // max(len(members), 1)
            for m, out, data in zip(members, result.rows, encoded, strict=True):
                h = ctx.store_data(data)
                ctx.emit(
                    m.token_id,
                    ev.StepCompleted(
                        node=name, input_hash=m.hash, output_hash=h, duration_us=share, next=cfg.on_success
                    ),
                )
                del ctx.waiting[m.token_id]
                works.append(Work(m.token_id, out, h, cfg.on_success, m.row_index, m.branch, m.fork_id))
            ctx.emit(batch_id, ev.BatchCompleted(outputs=len(works)))
            ctx.stack.extend(reversed(works))
            return None
        rejected = dict(result.rejected)
        why = _bad_sources(result, len(members), rejected)
        if why is not None:
            return self._fail(batch_id, members, why)
        parents = []
        for i, m in enumerate(members):
            if i in rejected:
                ctx.emit(m.token_id, ev.TokenQuarantined(reason=rejected[i], node=name))
                self.lost(m, "quarantined")
            else:
                ctx.emit(m.token_id, ev.TokenConsumed(batch_id=batch_id))
                self.lost(m, f"consumed by batch {batch_id}")  # its outputs are no branch's
                parents.append(m.token_id)
            del ctx.waiting[m.token_id]
        row_index = members[-1].row_index if members else 0
        works = []
        for i, (out, data) in enumerate(zip(result.rows, encoded, strict=True)):
            h = ctx.store_data(data)
            child = f"{batch_id}.{i}"
            mine, index = parents or [batch_id], row_index
            if result.sources is not None:  # made from some inputs only: those are its parents
                mine = [members[k].token_id for k in result.sources[i]]
                index = members[result.sources[i][0]].row_index
            ctx.emit(child, ev.TokenCreated(row_index=index, data_hash=h, at=cfg.on_success, parents=mine))
            works.append(Work(child, out, h, cfg.on_success, index))
        ctx.emit(batch_id, ev.BatchCompleted(outputs=len(works)))
        ctx.stack.extend(reversed(works))
        return None

    def _fail(self, batch_id: str, members: list[Work], reason: str) -> None:
        ctx = self.ctx
        name = ctx.fold.batches[batch_id].aggregation
        ctx.emit(batch_id, ev.BatchFailed(reason=reason))
        for m in members:
            ctx.emit(m.token_id, ev.TokenFailed(reason="batch_failed", node=name, detail=reason))
            self.lost(m, "failed")
            del ctx.waiting[m.token_id]


def _not_passthrough(result: BatchResult, inputs: int) -> str | None:
    """Why a batch's result cannot continue as its inputs (None: it can). Each output goes on as
    the token of the input at its position, so it must be that input's row and no other's: an
    input the plugin rejected, or an output it says it made from other inputs, would carry
    another row's data under this row's lineage (and its rejection would go unrecorded)."""
    if len(result.rows) != inputs:
        return f"passthrough needs one output per input: {inputs} in, {len(result.rows)} out"
    if result.rejected:
        k = min(k for k, _why in result.rejected)
        return f"passthrough needs one output per input, and the aggregation rejected input {k + 1} of the batch"
    if result.sources is not None and result.sources != [[i] for i in range(inputs)]:
        return "passthrough needs each output made from the input at its place, and the aggregation says otherwise"
    return None


def _bad_sources(result: BatchResult, inputs: int, rejected: dict[int, str]) -> str | None:
    """Why an aggregation's `sources` cannot be the outputs' parents (None: they can)."""
    if result.sources is None:
        return None
    if len(result.sources) != len(result.rows):
        return f"the aggregation gave sources for {len(result.sources)} outputs, not its {len(result.rows)}"
    for i, made_from in enumerate(result.sources):
        if not made_from or any(not 0 <= k < inputs or k in rejected for k in made_from):
            return f"output {i + 1}: its sources must be inputs of the batch it did not reject, at least one"
    return None
