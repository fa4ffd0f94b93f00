"""`elspeth purge`: erase row data by retention or by a data subject's request, keeping every proof."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from engine.cli.common import database_from_ctx
from landscape.role_names import Role

if TYPE_CHECKING:
    from landscape.erasure import Plan

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d{1,9})\s*([smhdw])")


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `2w`, `1d12h`: a sum of whole numbers with units s, m, h, d, w."""
    spec = text.strip().lower()
    parts = _DURATION.findall(spec)
    if not spec or "".join(f"{n}{u}" for n, u in parts) != spec.replace(" ", ""):
        raise click.BadParameter(f"{text!r} is not a duration: use e.g. 90d, 12h, 2w or 1d12h (units s m h d w)")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))


@click.command("purge")
@click.argument("run_id", required=False)
@click.option("--row", "rows", type=click.IntRange(min=1), multiple=True,
              help="A source row of RUN_ID, counted from 1 as `explain --row` and __row_number__ (repeatable).")  # fmt: skip
@click.option("--older-than", "older_than", help="Retention: erase every payload written longer ago (e.g. 90d).")
@click.option("--reason", default=None, help="Why (recorded with every erased payload). Required.")
@click.option("--dry-run", is_flag=True, help="Show what would be erased; erase nothing.")
@click.pass_context
def purge_cmd(
    ctx: click.Context, run_id: str | None, rows: tuple[int, ...], older_than: str | None, reason: str | None,
    dry_run: bool,
) -> None:  # fmt: skip
    """Erase row data: `purge --older-than 90d` (retention) or `purge RUN_ID --row N [--row M]`
    (one data subject's rows, in every token that contains them). The events, the chain and every
    proof stay valid; each erased payload is recorded (when, what, why, by which role)."""
    if (older_than is None) == (run_id is None):
        raise click.UsageError("give either --older-than DURATION, or RUN_ID with --row N")
    if run_id is not None and not rows:
        raise click.UsageError("say which rows of the run to erase: --row N (repeatable)")
    if older_than is not None and rows:
        raise click.UsageError("--row goes with RUN_ID, not with --older-than")
    age = parse_duration(older_than) if older_than is not None else None
    if not dry_run and not (reason or "").strip():
        raise click.UsageError("--reason TEXT is required: it is recorded with every erased payload")
    from landscape.erasure import erase, plan_retention, plan_rows  # here: --help stays fast

    now = datetime.now(UTC)
    # As the owner: only it may delete payloads (the writer may not, by design).
    with database_from_ctx(ctx, role=Role.OWNER) as db:
        plan = plan_retention(db, now - age) if age is not None else plan_rows(db, run_id or "", [r - 1 for r in rows])
        click.echo(_describe(plan, dry_run))
        if dry_run or not plan.payloads:
            return
        erased = erase(db, plan, reason or "", now)
    click.echo(f"erased {erased} payload(s); the events and every proof are unchanged")


def _describe(plan: Plan, dry_run: bool) -> str:
    verb = "would erase" if dry_run else "erasing"
    what = f"{len(plan.payloads)} payload(s)"
    if plan.kind == "request":
        what += f" of {len(plan.tokens)} token(s)"
    gone = f"; {plan.already_erased} already erased" if plan.already_erased else ""
    return f"{verb} {what}{gone}"
