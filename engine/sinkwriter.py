"""Sink writes: rows go to their sink at once and are made durable at each durability point,
with retries, a circuit breaker, and `on_write_failure` — all of it recorded as events."""

from __future__ import annotations

import random
from collections.abc import Callable

from engine.clock import Clock
from engine.plugins.protocol import PluginError, Row, RowError, RowsRefused, Sink, at_node
from engine.work import Context, PendingWrite
from landscape.errors import LandscapeError
from statecharts import events as ev
from statecharts.machines import TokenState


class SinkWriter:
    def __init__(self, ctx: Context, clock: Clock) -> None:
        self.ctx = ctx
        self.clock = clock
        self.sinks = ctx.nodes.sinks
        # Jitter for retry backoff; seeded by the run so that a run's waits are reproducible.
        self._jitter = random.Random(ctx.fold.run_id)
        self.pending: dict[str, list[PendingWrite]] = {}

    def write(
        self, token_id: str, row: Row, sink: str, outcome: str, node: str | None, reason: str | None,
        tried: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        """Write a row that its token's SinkAssigned event already sent to `sink`. A row the sink
        cannot write whole (a field it has no column for: RowError) is a row error: it follows
        the sink's `on_write_failure`, and without one (or in a loop of them) the token fails
        with the reason, naming the field, recorded — never written without the field."""
        p = PendingWrite(token_id, outcome, node, reason, row, tried)
        try:
            self.sinks[sink].write(token_id, row)
        except RowError as e:
            self._refused(p, sink, e.reason)
            return
        self.pending.setdefault(sink, []).append(p)

    def _refused(self, p: PendingWrite, sink: str, reason: str) -> None:
        """A row `sink` refused (at `write`, or its destination at `flush`): to the sink's
        `on_write_failure`, or, without one (or in a loop of them), the token fails with why."""
        tried = (*p.tried, sink)
        why = f"sink '{sink}' cannot write the row: {reason}{_meant(p)}"
        fallback = self.ctx.nodes.write_failure.get(sink)
        if fallback is None or fallback == "discard" or fallback in tried:
            self.ctx.emit(p.token_id, ev.TokenFailed(reason="sink_row_refused", node=sink, detail=why))
            return
        diverted = str(TokenState.DIVERTED)
        self.ctx.emit(p.token_id, ev.SinkAssigned(sink=fallback, outcome=diverted, node=sink, reason=why))
        self.write(p.token_id, p.row, fallback, diverted, sink, why, tried)

    def flush_all(self, after_flush: Callable[[], None] | None = None) -> None:
        """Make every pending sink write durable, then record it and its tokens' outcomes.

        The order is the guarantee: a token is recorded `completed` only after its row is on
        disk (or committed), so the log never claims a write that a crash could undo. A sink
        whose flush fails hands its rows to its `on_write_failure` (another sink, flushed in
        the same round, or `discard`: the tokens fail); without one, the run fails.
        """
        emit, run_id = self.ctx.emit, self.ctx.fold.run_id
        failed: set[str] = set()
        while names := [n for n in sorted(self.pending) if self.pending[n]]:
            for sink_name in names:
                writes, self.pending[sink_name] = self.pending[sink_name], []
                sink = self.sinks[sink_name]
                try:
                    position = self._flush_with_retry(sink_name, sink, writes)
                except PluginError as e:
                    failed.add(sink_name)
                    self._write_failed(sink_name, writes, e, failed)
                    continue
                if not writes:  # every row refused by the destination: nothing was written
                    continue
                if after_flush is not None:
                    after_flush()
                emit(
                    run_id,
                    ev.SinkFlushed(
                        sink=sink_name,
                        position=position,
                        rows=len(writes),
                        location=sink.location(),
                        sha256=digest(sink),
                    ),
                )
                for p in writes:
                    emit(p.token_id, _written(p, sink_name))

    def _flush_with_retry(self, sink_name: str, sink: Sink, writes: list[PendingWrite]) -> int:
        """`sink.flush()`, retried with exponential backoff and jitter; every failed attempt is
        an event. A circuit breaker, derived from those events, stops trying a sink that has
        failed `failure_threshold` times in a row until `reset_seconds` have passed."""
        r, fold = self.ctx.nodes.retry, self.ctx.fold
        attempt = 0
        while True:
            failures = fold.sink_failures.get(sink_name, 0)
            if r.failure_threshold is not None and failures >= r.failure_threshold:
                reopens = fold.sink_failed_at.get(sink_name, 0.0) + (r.reset_seconds or 0.0)
                if self.ctx.now() < reopens:
                    raise PluginError(f"sink '{sink_name}'", f"circuit open after {failures} failed writes")
            attempt += 1
            try:
                return sink.flush()
            except RowsRefused as refused:
                # The destination refused these rows alone (a constraint of its table), and kept
                # nothing: they follow `on_write_failure`, the others are written again. Not a
                # failed attempt of the sink's; every round drops at least one row, so it ends.
                attempt -= 1
                self.reopen(sink_name)
                kept = []
                for p in writes:
                    why = refused.reasons.get(p.token_id)
                    if why is None:
                        kept.append(p)
                    else:
                        self._refused(p, sink_name, why)
                if len(kept) == len(writes):
                    raise PluginError(f"sink '{sink_name}'", "refused rows it was not given") from refused
                writes[:] = []  # (the caller's list: it records these as written)
                for p in kept:
                    try:  # (the first row may have been refused: the next one fixes the columns)
                        sink.write(p.token_id, p.row)
                    except RowError as again:
                        self._refused(p, sink_name, again.reason)
                        continue
                    writes.append(p)
            except LandscapeError:
                raise  # the audit store's word (a sink asked whether this process still holds the run): not the sink's failure
            except Exception as raised:
                e = at_node(f"sink '{sink_name}'", raised)
                now = self.ctx.now()
                retry_at = None
                if attempt < r.max_attempts:
                    delay = backoff(r.initial_delay_seconds, r.exponential_base, attempt, r.max_delay_seconds)
                    retry_at = now + delay * self._jitter.uniform(0.5, 1.0)
                failed = ev.SinkWriteFailed(sink=sink_name, attempt=attempt, error=str(e), at=now, retry_at=retry_at)
                self.ctx.emit(fold.run_id, failed)
                if retry_at is None:
                    raise e from raised
                # The clock naps in short steps (so that a stop is seen): wait out the whole backoff.
                while self.ctx.now() < retry_at:
                    self.clock.sleep_until(retry_at)
                # Drop what the failed attempt may have left, then write the same rows again. The
                # sink checks them against its destination as it is now (a table changed since):
                # a row it no longer takes follows `on_write_failure`, as at its first write.
                self.reopen(sink_name)
                rows, writes[:] = list(writes), []
                for p in rows:
                    try:
                        sink.write(p.token_id, p.row)
                    except RowError as refused:
                        self._refused(p, sink_name, refused.reason)
                        continue
                    writes.append(p)

    def flush(self, sink_name: str) -> int:
        try:
            return self.sinks[sink_name].flush()
        except Exception as e:
            raise at_node(f"sink '{sink_name}'", e) from e

    def reopen(self, sink_name: str) -> None:
        """Open a sink at its last durable position (from the log), dropping anything after it:
        only while this process still writes the run (`Context.fence`). Another that took the run
        over may have written after that position."""
        self.ctx.fence()
        sink = self.sinks[sink_name]
        sink.release()
        expect = getattr(sink, "expect", None)  # a file sink checks its bytes against the log's digest
        if expect is not None:
            expect(self.ctx.fold.sink_digests.get(sink_name))
        try:
            sink.open(self.ctx.fold.run_id, self.ctx.fold.sink_positions.get(sink_name))
        except Exception as e:
            raise at_node(f"sink '{sink_name}'", e) from e

    def _write_failed(self, sink_name: str, writes: list[PendingWrite], error: PluginError, failed: set[str]) -> None:
        fallback = self.ctx.nodes.write_failure.get(sink_name)
        if fallback is None or fallback in failed:
            raise error
        # Drop whatever the failed flush left behind: back to the last durable position.
        self.reopen(sink_name)
        for p in writes:
            if fallback == "discard":
                detail = f"{error}{_meant(p)}"
                self.ctx.emit(p.token_id, ev.TokenFailed(reason="sink_write_failed", node=sink_name, detail=detail))
                continue
            reason = f"write failed: {error}{_meant(p)}"
            diverted = str(TokenState.DIVERTED)
            self.ctx.emit(p.token_id, ev.SinkAssigned(sink=fallback, outcome=diverted, node=sink_name, reason=reason))
            self.write(p.token_id, p.row, fallback, diverted, sink_name, reason, (sink_name,))


def _meant(p: PendingWrite) -> str:
    """What the row was on its way to be, with why, when that had a reason (a row the source
    quarantined, one diverted): said after a sink's refusal, which ends the token otherwise, so
    that the first reason stays in the outcome an analyst reads (`token_outcomes.detail`: a
    review found a malformed record's reason only in the events, which an analyst cannot read)."""
    return f"; it was to be {p.outcome}: {p.reason}" if p.reason else ""


def digest(sink: Sink) -> str | None:
    """The sha256 of a file sink's bytes up to its position (None for a sink that has none)."""
    of = getattr(sink, "digest", None)
    return None if of is None else of()


def _written(p: PendingWrite, sink: str) -> ev.EventBase:
    """The event that ends a token once its row is durable in `sink`."""
    if p.outcome == TokenState.COMPLETED:
        return ev.TokenCompleted(sink=sink)
    if p.outcome == TokenState.ROUTED:
        return ev.TokenRouted(sink=sink, node=p.node)
    if p.outcome == TokenState.QUARANTINED:
        return ev.TokenQuarantined(reason=p.reason or "invalid row", sink=sink)
    return ev.TokenDiverted(node=p.node or "", reason=p.reason or "", sink=sink)


def backoff(initial: float, base: float, attempt: int, most: float) -> float:
    """The wait before the attempt after `attempt`: initial * base ** (attempt - 1), at most `most`.
    Capped before it is computed: a float power past 1.8e308 raises (max_attempts 2000, base 2,
    waits capped at a minute: the failed attempt's record raised, the run left open; a review)."""
    try:
        return min(most, initial * base ** (attempt - 1))
    except OverflowError:
        return most if initial > 0 else 0.0
