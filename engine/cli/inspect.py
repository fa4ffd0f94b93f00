"""Investigators' commands: `replay`, `explain`, `projections rebuild`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import click

from engine.cli.common import database_from_ctx, home_from_ctx
from engine.cli.errors import ElspethCliError
from landscape.errors import UnknownRun
from landscape.role_names import Role

# The store's modules (and the driver, and the signing library) are imported in the commands
# that use them, so that `elspeth --help` starts fast.


@click.command("replay")
@click.argument("run_id")
@click.option("--as-of", "as_of", type=int, help="Show the state after this seq.")
@click.option("--check", is_flag=True, help="Also compare every projection row with a rebuild from the events.")
@click.option("--public-key", type=click.Path(), help="Check checkpoint signatures with this .pub [this home's key].")
@click.option("--witness", type=click.Path(), help="The run's witness file [<home>/witness/RUN_ID.checkpoints].")
@click.pass_context
def replay_cmd(
    ctx: click.Context, run_id: str, as_of: int | None, check: bool, public_key: str | None, witness: str | None
) -> None:
    """Rebuild a run from its events in one pass, verifying the chain, every transition and
    every row payload the events reference."""
    if check and as_of is not None:
        raise click.UsageError("--check compares the projections, which hold a run's latest state: omit --as-of")
    from engine import signing
    from landscape.notary import read_witness, witness_path
    from landscape.postgres import PostgresRecorder
    from landscape.projections import compare
    from landscape.queries import metrics_at
    from landscape.records import StoredEvent
    from landscape.verify import verify_run
    from statecharts import events as ev

    home = home_from_ctx(ctx)
    with database_from_ctx(ctx, role=Role.AUDITOR) as db:
        recorder = PostgresRecorder(db)
        if not recorder.run_exists(run_id):
            raise UnknownRun(f"no run {run_id} in {db.describe()} (see `elspeth runs`)")
        # Checkpoints first, then the projections: on a live run both only grow, so neither can
        # claim more than the events read after them hold.
        witness_file = Path(witness) if witness else witness_path(signing.witness_dir(home), run_id)
        stored, witnessed = recorder.checkpoints(run_id), read_witness(witness_file, run_id)
        checkpoints = [*stored, *witnessed] if as_of is None else []
        key = signing.verifier(home, public_key)
        # The projections and the seq they reflect, read together: a live run's later events
        # cannot make them look wrong, as the log is read only up to that seq.
        projected = metrics_at(db, run_id) if check else None
        upto = as_of if as_of is not None else (projected.last_seq if projected is not None else None)
        per_node: Counter[str] = Counter()

        def count(_stored: StoredEvent, event: ev.EventBase) -> None:
            if isinstance(event, ev.StepCompleted | ev.TokenForked | ev.TokenExpanded):
                per_node[event.node] += 1

        verified = verify_run(recorder, run_id, upto_seq=upto, observe=count, checkpoints=checkpoints, verifier=key)
        checked = compare(db, run_id) if check else None
    fold = verified.fold
    click.echo(f"run {run_id}: chain verified ({verified.events} events, head {verified.head.hex()[:16]})")
    if checkpoints:
        newest = max(cp.size for cp in checkpoints)
        signed = f"signatures checked with {key.label}" if key else "signatures NOT checked (no key: give --public-key)"
        click.echo(
            f"checkpoints: {len(stored)} in the store, {len(witnessed)} in {witness_file}, the newest covers "
            f"{newest} events; Merkle roots match; {signed}"
        )
        if not witnessed:
            click.echo(f"elspeth: warning: no witness file at {witness_file}: checked the store's copy only", err=True)
    elif as_of is None:
        raise ElspethCliError(
            f"run {run_id} has no signed checkpoint, in the store or in {witness_file}: "
            "a cut-off tail could not be told apart from the end of the log"
        )
    if verified.erased:
        click.echo(f"erased: {len(verified.erased)} row payload(s) (see `elspeth explain`; docs/erasure.md)")
    click.echo(f"state{'' if upto is None else f' as of seq {upto}'}: {fold.status} (seq {fold.last_seq})")
    click.echo(f"source records: {fold.source_records}{' (exhausted)' if fold.source_exhausted else ''}")
    click.echo("outcomes: " + (", ".join(f"{k} {v}" for k, v in sorted(fold.outcomes.items())) or "none"))
    click.echo("per node: " + (", ".join(f"{k} {v}" for k, v in sorted(per_node.items())) or "none"))
    click.echo(
        f"in flight: {len(fold.tokens)} tokens, {len(fold.coalesces)} open coalesces, {len(fold.batches)} open batches"
    )
    if checked is not None:
        seq, differences = checked
        if differences:
            shown = "; ".join(d.describe() for d in differences[:10])
            more = f" (and {len(differences) - 10} more)" if len(differences) > 10 else ""
            raise ElspethCliError(f"run {run_id}: projections differ from the events: {shown}{more}")
        click.echo(f"projections agree with the events (every row of every table, up to seq {seq})")


@click.command("explain")
@click.argument("run_id")
@click.option("--row", "row_index", type=int, help="Source record (0-based).")
@click.option("--token", "token_id", help="One token.")
@click.pass_context
def explain_cmd(ctx: click.Context, run_id: str, row_index: int | None, token_id: str | None) -> None:
    """The lineage of one row: its data at every step, and where it ended."""
    if (row_index is None) == (token_id is None):
        raise click.UsageError("give exactly one of --row N or --token ID")
    from landscape.canonical import decode_row
    from landscape.payloads import load_payloads
    from landscape.postgres import PostgresRecorder
    from landscape.queries import lineage

    with database_from_ctx(ctx, role=Role.AUDITOR) as db:
        found = lineage(db, run_id, row_index=row_index, token_id=token_id)
        hashes = {t.data_hash for t in found.tokens} | {s.output_hash for t in found.tokens for s in t.steps}
        data = {h: decode_row(b) for h, b in load_payloads(PostgresRecorder(db), hashes).items()}
    click.echo(f"run {run_id}, row {found.row_index}")
    for t in found.tokens:
        if token_id is not None and t.token_id != token_id:
            continue
        click.echo(f"token {t.token_id}{f' (branch {t.branch})' if t.branch else ''}")
        click.echo(f"  created: {_fmt(data[t.data_hash])}")
        for step in t.steps:
            label = f" → {step.route}" if step.route else ""
            click.echo(f"  {step.node}{label} ({step.duration_us} µs): {_fmt(data[step.output_hash])}")
        where = f" at {t.node}" if t.node else ""
        into = f" into {t.sink}" if t.sink else ""
        why = "".join(f": {text}" for text in (t.reason, t.detail) if text)
        click.echo(f"  outcome: {t.outcome or 'not yet ended'}{where}{into}{why}")


def _fmt(row: Any) -> str:
    text = repr(row)
    return text if len(text) <= 200 else text[:197] + "..."


@click.group("projections")
def projections_group() -> None:
    """The analyst tables derived from the events."""


@projections_group.command("rebuild")
@click.argument("run_ids", nargs=-1)
@click.pass_context
def rebuild_cmd(ctx: click.Context, run_ids: tuple[str, ...]) -> None:
    """Drop and rebuild the projection rows of the given runs (all runs when none given)."""
    from landscape.postgres import PostgresRecorder
    from landscape.projections import rebuild

    with database_from_ctx(ctx) as db:
        for run_id in list(run_ids) or PostgresRecorder(db).run_ids():
            n = rebuild(db, run_id)
            click.echo(f"rebuilt {run_id} from {n} events")
