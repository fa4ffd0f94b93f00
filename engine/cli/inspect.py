"""Investigators' commands: `replay`, `projections rebuild` (`explain` is in explain.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import click

from engine.cli.checkpoints import key_option, read_checkpoints, witness_option
from engine.cli.common import database_from_ctx, home_from_ctx, warn_reinstated
from engine.cli.errors import ElspethCliError
from engine.cli.verify import say_unsigned, unsigned_erasures_option
from landscape.errors import UnknownRun
from landscape.postgres import PostgresRecorder
from landscape.projections import Comparison, Difference, has_projection_rows, rebuild, without_events
from landscape.records import StoredEvent
from landscape.roles import Role
from landscape.verify_store import verify_run
from landscape.visible import one_line
from statecharts import events as ev
from statecharts.machines import RunState


@click.command("replay")
@click.argument("run_id")
@click.option("--as-of", "as_of", type=click.IntRange(min=0), help="Show the state after this seq.")
@click.option("--check", is_flag=True, help="Also compare every projection row with a rebuild from the events.")
@key_option
@witness_option
@unsigned_erasures_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object (shape: docs/cli.md).")
@click.pass_context
def replay_cmd(
    ctx: click.Context,
    run_id: str,
    as_of: int | None,
    check: bool,
    public_key: str | None,
    witness: str | None,
    unsigned_erasures: bool,
    as_json: bool,
) -> None:
    """Rebuild a run from its events in one pass, verifying the chain, every transition and
    every row payload the events reference."""
    if check and as_of is not None:
        raise click.UsageError("--check compares the projections, which hold a run's latest state: omit --as-of")
    home = home_from_ctx(ctx)
    with database_from_ctx(ctx, role=Role.AUDITOR) as db:
        recorder = PostgresRecorder(db)
        if not recorder.run_exists(run_id):
            if check and has_projection_rows(db, run_id):
                raise ElspethCliError(
                    f"run {run_id} has no events, yet the projection tables hold rows of it: they were written "
                    "without the log; `elspeth projections rebuild` removes them"
                )
            raise UnknownRun(f"no run {one_line(run_id)} in {db.describe()} (see `elspeth runs`)")
        # Checkpoints first, then the projections: on a live run both only grow, so neither can
        # claim more than the events read after them hold. As of a seq before the log's end:
        # those of that prefix. At or past its end, all of them: a log cut before that seq is
        # shorter than some checkpoint, whatever seq was asked for.
        found = read_checkpoints(recorder, run_id, home, witness=witness, public_key=public_key)
        whole = as_of is None or as_of >= recorder.last_seq(run_id)
        if whole:
            found.require(run_id)
        checkpoints = found.all if whole or as_of is None else found.covering(as_of + 1)
        per_node = NodeCounts()
        with ExitStack() as stack:
            # The projections and the seq they reflect, read together (one snapshot): a live
            # run's later events cannot make them look wrong, as the log is read only up to that
            # seq. The server rebuilds and compares them (on its own core) while this process
            # verifies the log.
            comparison = stack.enter_context(Comparison(db, run_id)) if check else None
            upto = as_of
            compared: Future[list[Difference]] | None = None
            if comparison is not None:
                upto = comparison.upto if comparison.upto >= 0 else None
                pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="elspeth-compare"))
                compared = pool.submit(comparison.differences)
            try:
                verified = verify_run(
                    recorder, run_id, upto_seq=upto, observe=per_node, checkpoints=checkpoints, verifier=found.key,
                    as_of_now=whole, unsigned_erasures=unsigned_erasures,
                )  # fmt: skip
            except BaseException:
                if comparison is not None:  # a broken log or Ctrl-C: no need to wait for the server
                    comparison.cancel()
                raise
            checked = (comparison.upto, compared.result()) if comparison is not None and compared else None
        warn_reinstated(recorder, run_id)
    fold = verified.fold
    differences = checked[1] if checked is not None else []
    hazards = comparison.hazards if comparison is not None else []
    # Records no seal signs that explained a payload all the same: with no key, or --unsigned-erasures.
    unsigned = sum(e.seal_id is None for e in verified.erased.values())
    if as_json:
        out: dict[str, Any] = {
            "run_id": run_id,
            "events": verified.events,
            "head": verified.head.hex(),
            "as_of": upto,
            "status": str(fold.status),
            "last_seq": fold.last_seq,
            "source_records": fold.source_records,
            "source_exhausted": fold.source_exhausted,
            "outcomes": dict(sorted(fold.outcomes.items())),
            "per_node": per_node.as_dict(),
            "in_flight": {"tokens": len(fold.tokens), "coalesces": len(fold.coalesces), "batches": len(fold.batches)},
            "checkpoints": found.as_json(checkpoints),
            "erased": len(verified.erased),
            "erased_unsigned": unsigned,
            "check": None
            if checked is None
            else {
                "upto_seq": checked[0],
                "agree": not differences and not hazards,
                "differences": [d.describe() for d in differences],
                "hazards": hazards,
            },
        }
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(f"run {run_id}: chain verified ({verified.events} events, head {verified.head.hex()[:16]})")
        if checkpoints:
            click.echo(found.summary(checkpoints))
        if verified.erased:
            click.echo(f"erased: {len(verified.erased)} row payload(s) (see `elspeth explain`; docs/erasure.md)")
        if found.key is not None:
            say_unsigned(unsigned)
        click.echo(f"state{'' if upto is None else f' as of seq {upto}'}: {fold.status} (seq {fold.last_seq})")
        click.echo(f"source records: {fold.source_records}{' (exhausted)' if fold.source_exhausted else ''}")
        click.echo("outcomes: " + (", ".join(f"{k} {v}" for k, v in sorted(fold.outcomes.items())) or "none"))
        click.echo("per node (tokens that reached it, and what it did with them):")
        for node, counts in per_node.as_dict().items():
            click.echo(f"  {node}: {sum(counts.values())} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
        # (An abandoned run's never will be: "left unfinished", not "in flight".)
        left = "left unfinished" if fold.status == RunState.ABANDONED else "in flight"
        click.echo(
            f"{left}: {len(fold.tokens)} tokens, {len(fold.coalesces)} open coalesces, {len(fold.batches)} open batches"
        )
    if checked is not None:
        if differences:
            shown = "; ".join(d.describe() for d in differences[:10])
            more = f" (and {len(differences) - 10} more)" if len(differences) > 10 else ""
            raise ElspethCliError(f"run {run_id}: projections differ from the events: {shown}{more}")
        if hazards:  # (`reading_hazards`: what this check read would not be what others read)
            raise ElspethCliError(
                f"run {run_id}: the projections were not compared: the store is set up to show its readers other "
                f"rows than a check reads: {'; '.join(hazards)}; see docs/verification.md (threat model)"
            )
        if not as_json:
            click.echo(f"projections agree with the events (every row of every table, up to seq {checked[0]})")


class NodeCounts:
    """Per node, what happened to the tokens that reached it, counted from the events: passed
    (a step), a gate's route label, forked, expanded, diverted (a row error sent to on_error),
    failed, merged (a coalesce), consumed or quarantined (an aggregation). Every token a node decided about is
    in one of these, so a gate's count includes the rows it routed and those it diverted.

    It sees every event of a replay: one lookup by the event's type, and a count keyed by (node,
    what) in one dict, sorted out only at the end (the chain of type tests it replaced, with a
    Counter per node, was a tenth of a replay's main thread)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def __call__(self, _stored: StoredEvent, event: ev.EventBase) -> None:
        what = _COUNTED.get(type(event))
        if what is None:
            return  # most events (a token's creation, its sink) are passed over at once
        key = what(event)
        if key is not None:
            self._counts[key] = self._counts.get(key, 0) + 1

    def as_dict(self) -> dict[str, dict[str, int]]:
        nodes: dict[str, dict[str, int]] = {}
        for (node, what), n in sorted(self._counts.items()):
            nodes.setdefault(node, {})[what] = n
        return nodes


def _step(e: ev.StepCompleted) -> tuple[str, str]:
    return (e.node, "passed" if e.route is None else f"route {e.route}")


def _sink(e: ev.SinkAssigned) -> tuple[str, str] | None:
    # Sent to an on_error sink (its TokenDiverted follows): diverted by the node that failed it.
    return (e.node, "diverted") if e.outcome == "diverted" and e.node is not None else None


# The event types that can count, each with the (node, what) it counts under (None: not counted).
_COUNTED: dict[type[ev.EventBase], Callable[[Any], tuple[str, str] | None]] = {
    ev.StepCompleted: _step,
    ev.TokenForked: lambda e: (e.node, "forked"),
    ev.TokenExpanded: lambda e: (e.node, "expanded"),
    ev.SinkAssigned: _sink,
    ev.TokenDiverted: lambda e: (e.node, "diverted") if e.sink is None else None,  # on_error: discard
    ev.TokenFailed: lambda e: (e.node, "failed") if e.node is not None else None,
    ev.TokenCoalesced: lambda e: (e.coalesce_id.split(":", 1)[0], "merged"),
    ev.TokenConsumed: lambda e: (e.batch_id.split("#", 1)[0], "consumed"),
    # A batch member its aggregation rejected.
    ev.TokenQuarantined: lambda e: (e.node, "quarantined") if e.node is not None else None,
}


@click.group("projections")
def projections_group() -> None:
    """The analyst tables derived from the events."""


@projections_group.command("rebuild")
@click.argument("run_ids", nargs=-1)
@click.pass_context
def rebuild_cmd(ctx: click.Context, run_ids: tuple[str, ...]) -> None:
    """Drop and rebuild the projection rows of the given runs (all runs when none given, and
    the rows of runs that have no events are removed)."""
    with database_from_ctx(ctx) as db:
        for run_id in list(run_ids) or [*PostgresRecorder(db).run_ids(), *without_events(db)]:
            n = rebuild(db, run_id)
            if n:
                click.echo(f"rebuilt {run_id} from {n} events")
            else:
                click.echo(f"removed the projection rows of {run_id}: it has no events")
