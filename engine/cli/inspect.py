"""Investigators' commands: `replay`, `explain`, `projections rebuild`."""

from __future__ import annotations

from collections import Counter
from typing import Any

import click

from engine.cli.common import database_from_ctx
from engine.cli.errors import ElspethCliError
from landscape.canonical import decode_row
from landscape.db import Database
from landscape.errors import LandscapeError
from landscape.fold import RunFold
from landscape.payloads import load_payloads
from landscape.projections import rebuild
from landscape.roles import Role
from landscape.store import read_events, verify_chain
from statecharts import events as ev


@click.command("replay")
@click.argument("run_id")
@click.option("--as-of", "as_of", type=int, help="Show the state after this seq.")
@click.option("--check", is_flag=True, help="Compare the projection tables with the fold.")
@click.pass_context
def replay_cmd(ctx: click.Context, run_id: str, as_of: int | None, check: bool) -> None:
    """Rebuild a run from its events, checking the chain and every transition."""
    if check and as_of is not None:
        raise click.UsageError("--check compares the projections, which hold a run's latest state: omit --as-of")
    with database_from_ctx(ctx, role=Role.AUDITOR) as db:
        conn = db.connect()
        try:
            # The projections and the seq they reflect, read in one statement: they are committed
            # together, so a live run's later events cannot make them look wrong.
            rows = conn.execute(
                "SELECT r.last_seq, m.metric, m.value FROM runs r "
                "LEFT JOIN run_metrics m ON m.run_id = r.run_id WHERE r.run_id = %s",
                (run_id,),
            ).fetchall()
            conn.commit()
            metrics = {metric: value for _seq, metric, value in rows if metric is not None}
            upto = as_of if as_of is not None else (rows[0][0] if rows and check else None)
            verified = verify_chain(conn, run_id)
            fold = RunFold(run_id, ended=set())
            per_node: Counter[str] = Counter()
            for e in read_events(conn, run_id, upto_seq=upto):
                event = e.event
                fold.apply(e.seq, e.entity_id, event)
                if isinstance(event, ev.StepCompleted | ev.TokenForked | ev.TokenExpanded):
                    per_node[event.node] += 1
            conn.commit()
        except LandscapeError as e:
            raise ElspethCliError(str(e)) from e
        finally:
            conn.close()
    click.echo(f"run {run_id}: chain verified ({verified.events} events, head {verified.head.hex()[:16]})")
    click.echo(f"state{'' if upto is None else f' as of seq {upto}'}: {fold.status} (seq {fold.last_seq})")
    click.echo(f"source records: {fold.source_records}{' (exhausted)' if fold.source_exhausted else ''}")
    click.echo("outcomes: " + (", ".join(f"{k} {v}" for k, v in sorted(fold.outcomes.items())) or "none"))
    click.echo("per node: " + (", ".join(f"{k} {v}" for k, v in sorted(per_node.items())) or "none"))
    click.echo(
        f"in flight: {len(fold.tokens)} tokens, {len(fold.coalesces)} open coalesces, {len(fold.batches)} open batches"
    )
    if check:
        problems = _compare(fold, metrics)
        if problems:
            raise ElspethCliError("projections differ from the fold: " + "; ".join(problems))
        click.echo("projections agree with the fold")


def _compare(fold: RunFold, metrics: dict[str, float]) -> list[str]:
    problems = []
    if int(metrics.get("rows_in", 0)) != fold.source_records:
        problems.append(f"rows_in {metrics.get('rows_in', 0):.0f} != {fold.source_records}")
    for outcome, n in fold.outcomes.items():
        if int(metrics.get(f"outcome.{outcome}", 0)) != n:
            problems.append(f"outcome.{outcome} {metrics.get(f'outcome.{outcome}', 0):.0f} != {n}")
    return problems


@click.command("explain")
@click.argument("run_id")
@click.option("--row", "row_index", type=int, help="Source record (0-based).")
@click.option("--token", "token_id", help="One token.")
@click.pass_context
def explain_cmd(ctx: click.Context, run_id: str, row_index: int | None, token_id: str | None) -> None:
    """The lineage of one row: its data at every step, and where it ended."""
    if (row_index is None) == (token_id is None):
        raise click.UsageError("give exactly one of --row N or --token ID")
    with database_from_ctx(ctx, role=Role.AUDITOR) as db:
        conn = db.connect()
        try:
            if token_id is not None:
                found = conn.execute(
                    "SELECT row_index FROM tokens WHERE run_id = %s AND token_id = %s", (run_id, token_id)
                ).fetchone()
                if found is None:
                    raise ElspethCliError(f"run {run_id} has no token {token_id}")
                row_index = found[0]
            tokens = conn.execute(
                "SELECT t.token_id, t.branch, t.data_hash, o.outcome, o.node, o.sink, o.reason, o.detail "
                "FROM tokens t LEFT JOIN token_outcomes o USING (run_id, token_id) "
                "WHERE t.run_id = %s AND t.row_index = %s ORDER BY t.created_seq",
                (run_id, row_index),
            ).fetchall()
            steps = conn.execute(
                "SELECT token_id, node, route, output_hash, duration_us FROM node_states "
                "WHERE run_id = %s AND token_id = ANY(%s) ORDER BY seq",
                (run_id, [t[0] for t in tokens]),
            ).fetchall()
            conn.commit()
        finally:
            conn.close()
        if not tokens:
            known = _run_exists(db, run_id)
            raise ElspethCliError(
                f"run {run_id} has no row {row_index}"
                if known
                else f"no run {run_id} in {db.describe()} (see `elspeth runs`)"
            )
        hashes = {t[2] for t in tokens} | {s[3] for s in steps}
        data = {h: decode_row(b) for h, b in load_payloads(db, hashes).items()}
    by_token: dict[str, list[Any]] = {}
    for s in steps:
        by_token.setdefault(s[0], []).append(s)
    click.echo(f"run {run_id}, row {row_index}")
    for tid, branch, h, outcome, node, sink, reason, detail in tokens:
        if token_id is not None and tid != token_id:
            continue
        click.echo(f"token {tid}{f' (branch {branch})' if branch else ''}")
        click.echo(f"  created: {_fmt(data[h])}")
        for _t, step_node, route, out, dur in by_token.get(tid, []):
            label = f" → {route}" if route else ""
            click.echo(f"  {step_node}{label} ({dur} µs): {_fmt(data[out])}")
        where = f" at {node}" if node else ""
        into = f" into {sink}" if sink else ""
        why = "".join(f": {text}" for text in (reason, detail) if text)
        click.echo(f"  outcome: {outcome or 'not yet ended'}{where}{into}{why}")


def _run_exists(db: Database, run_id: str) -> bool:
    with db.connect() as conn:
        return conn.execute("SELECT 1 FROM runs WHERE run_id = %s", (run_id,)).fetchone() is not None


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
    with database_from_ctx(ctx) as db:
        conn = db.connect()
        try:
            ids = list(run_ids) or [
                r[0] for r in conn.execute("SELECT DISTINCT run_id FROM events ORDER BY run_id").fetchall()
            ]
            conn.commit()
            for run_id in ids:
                n = rebuild(conn, run_id)
                click.echo(f"rebuilt {run_id} from {n} events")
        finally:
            conn.close()
