"""`elspeth purge`: erase row data by retention or by a data subject's request, keeping every proof."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from engine.cli.common import database_from_ctx, home_from_ctx
from engine.cli.errors import ElspethCliError
from engine.settings import LONGEST_RETENTION_DAYS
from landscape.role_names import Role

if TYPE_CHECKING:
    from landscape.erasure import Plan
    from landscape.note import Signer

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"([0-9]{1,9})\s*([smhdw])")  # (\d takes other scripts' digits)


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `2w`, `1d12h`: a sum of whole numbers with units s, m, h, d, w."""
    spec = text.strip().lower()
    parts = _DURATION.findall(spec)
    if not spec or "".join(f"{n}{u}" for n, u in parts) != spec.replace(" ", ""):
        raise click.BadParameter(f"{text!r} is not a duration: use e.g. 90d, 12h, 2w or 1d12h (units s m h d w)")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds > _LONGEST.total_seconds():
        raise click.BadParameter(f"{text!r} is too long: at most {_LONGEST.days}d (about 1900 years)")
    return timedelta(seconds=seconds)


_LONGEST = timedelta(days=LONGEST_RETENTION_DAYS)


class _Duration(click.ParamType[timedelta]):
    """`parse_duration` as the option's type: click names the option in its error."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except click.BadParameter as e:
            self.fail(e.message, param, ctx)


@click.command("purge")
@click.argument("run_id", required=False)
@click.option("--row", "rows", type=click.IntRange(min=1), multiple=True,
              help="A source row of RUN_ID, counted from 1 as `explain --row` and __row_number__ (repeatable).")  # fmt: skip
@click.option(
    "--older-than", "older_than", type=_Duration(), help="Retention: erase every payload written longer ago (e.g. 90d)."
)
@click.option("--reason", default=None,
              help="Why (recorded with every erased payload, for good, and readable by analysts): a ticket or "
                   "policy, never the data subject's name.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Show what would be erased; erase nothing.")
@click.option("--force", is_flag=True,
              help="Erase the data of runs that can still be resumed, or whose end is unproved, too (said in each record).")  # fmt: skip
@click.option("--public-key", "public_key", type=click.Path(),
              help="The .pub of the key that signs the runs' checkpoints, to be sure of it: purge signs its records "
                   "with ELSPETH_SIGNING_KEY's key, else this home's, and refuses when that is another key.")  # fmt: skip
@click.pass_context
def purge_cmd(
    ctx: click.Context, run_id: str | None, rows: tuple[int, ...], older_than: timedelta | None, reason: str | None,
    dry_run: bool, force: bool, public_key: str | None,
) -> None:  # fmt: skip
    """Erase row data: `purge --older-than 90d` (retention) or `purge RUN_ID --row N [--row M]`
    (one data subject's rows, in every token that contains them). The events, the chain and every
    proof stay valid; each erased payload is recorded (when, what, why, by which role). The data
    of a run that can still be resumed (neither completed nor abandoned) is left alone unless --force."""
    if (older_than is None) == (run_id is None):
        raise click.UsageError("give either --older-than DURATION, or RUN_ID with --row N")
    if run_id is not None and not rows:
        raise click.UsageError("say which rows of the run to erase: --row N (repeatable)")
    if older_than is not None and rows:
        raise click.UsageError("--row goes with RUN_ID, not with --older-than")
    age = older_than
    if reason is None and not dry_run:  # (one given but empty is said so below, as abandon says it)
        raise click.UsageError("--reason TEXT is required: it is recorded with every erased payload")
    if reason is not None:  # (recorded with every erased payload, and shown by explain)
        from engine.operator_text import reason_problem

        problem = reason_problem(reason, "why the data is erased")
        if problem is not None:
            raise click.UsageError(problem)
        reason = reason.strip()
    from engine import signing
    from engine.cli.checkpoints import read_checkpoints
    from landscape.erasure import erase, plan_retention, plan_rows, vacuum_payloads  # here: --help stays fast
    from landscape.postgres import PostgresRecorder

    now = datetime.now(UTC)
    # The key that checks the checkpoint at each log's end: a run's data goes as a final run's only
    # under its signature (see `run_statuses`). A public key is enough to check it.
    key = signing.verifier(home_from_ctx(ctx), public_key)
    # The key that signs the erasure records (`landscape.seal`): a verifier holding the runs' key
    # counts an erasure only under its signature. A dry run needs none (one who holds only the
    # public key may look), but says when the purge itself would be refused.
    from landscape.keys import KeyFileError

    refusal: str | None = None
    signer: Signer | None = None
    try:
        signer = signing.existing_signer(home_from_ctx(ctx))
    except KeyFileError as e:  # (a .pub named as the signing key, a key file others may read, ...)
        if not dry_run:
            raise
        refusal = str(e)
    if signer is None and refusal is None:
        refusal = (
            "purge signs the erasure records it writes with the key that signs the runs' checkpoints, and there is "
            "none here: set ELSPETH_SIGNING_KEY to that .key file, or use the ELSPETH home the runs were written from"
        )
    elif signer is not None and key is not None and signer.verifier.text() != key.text():
        refusal = (
            f"the erasure records would be signed by {signer.verifier.label}, but the runs' checkpoints are checked "
            f"with {key.label} (--public-key): a verifier holding that key would not count them; set "
            "ELSPETH_SIGNING_KEY to its .key file"
        )
    if refusal is not None and not dry_run:
        raise ElspethCliError(refusal)
    # As the owner: only it may delete payloads and write erasure records (the writer may not).
    with database_from_ctx(ctx, role=Role.OWNER, existing=True) as db:
        if age is not None:
            plan = plan_retention(db, now - age, force=force, verifier=key)
        else:
            # The run's checkpoints as `replay` reads them, the witness file's too: the rows'
            # payloads are found in the log as those sign it (see `plan_rows`).
            recorder = PostgresRecorder(db)
            checkpoints = (
                read_checkpoints(recorder, run_id, home_from_ctx(ctx), witness=None, key=key).all
                if run_id and recorder.run_exists(run_id)
                else None
            )
            plan = plan_rows(
                db, run_id or "", [r - 1 for r in rows], force=force, verifier=key, checkpoints=checkpoints
            )
        for line in _describe(plan, dry_run, run_id):
            click.echo(line)
        if dry_run and refusal is not None and plan.size:
            click.echo(f"but purge without --dry-run would erase nothing here: {refusal}")
        if dry_run or not plan.size:
            return
        assert signer is not None  # (refused above when not)
        erased = erase(db, plan, reason or "", signer=signer)
        click.echo(
            f"erased {erased} payload(s), the records signed by {signer.verifier.label}; the events and every proof "
            "are unchanged"
        )
        if vacuum_payloads(db):
            click.echo(
                "vacuumed the payloads table: the erased rows' space is free for reuse; their bytes may stay in its "
                "files until overwritten, and stay in the WAL and in backups (docs/erasure.md)"
            )


_LISTED = 20  # runs named one by one; the rest are counted


def _put_back(plan: Plan, dry_run: bool) -> list[str]:
    if not plan.put_back:
        return []
    verb = "would delete" if dry_run else "deleting"
    return [
        f"{verb} {plan.put_back} payload(s) put back in the store after their erasure (by someone who could write "
        "to it; see docs/erasure.md): the records of their erasure stand for them"
    ]


def _describe(plan: Plan, dry_run: bool, run_id: str | None) -> list[str]:
    from landscape.erasure import unproved

    verb = "would erase" if dry_run else "erasing"
    lines = []
    if plan.kind == "request":
        rows = ", ".join(str(r + 1) for r in plan.rows)
        status = next(iter(plan.resumable.values()), "")
        forced = (
            f" (--force: it {'is ' + status if unproved(status) else 'can still be resumed'})" if plan.forced else ""
        )
        if plan.payloads:
            lines.append(f"{verb} {len(plan.payloads)} payload(s) of {len(plan.tokens)} token(s){forced}: "
                         f"run {run_id}, row(s) {rows}")  # fmt: skip
            lines.append(f"  tokens: {', '.join(plan.tokens)}")
        elif not plan.put_back:
            lines.append(f"nothing to erase: the data of run {run_id}, row(s) {rows} is gone already")
        if plan.already_erased:
            lines.append(f"  {plan.already_erased} payload(s) of these rows were erased before")
        lines.extend(_put_back(plan, dry_run))
        if plan.unread_from is not None:
            lines.append(
                f"  read the log only up to seq {plan.unread_from - 1}, the newest checkpoint that verifies with the "
                f"key: what its events from seq {plan.unread_from} on gave these rows is not erased (those events are "
                "signed by no checkpoint this key checks; see `elspeth replay RUN --check`)"
            )
        return lines
    by_run = sorted(plan.runs().items())
    lines.extend(_put_back(plan, dry_run))
    if plan.counts:
        lines.append(f"{verb} {sum(plan.counts.values())} payload(s) of {len(by_run)} run(s):")
        for run, n in by_run[:_LISTED]:
            lines.append(f"  {run or '(payloads kept before runs were recorded on them)'}: {n} payload(s)")
        if len(by_run) > _LISTED:
            lines.append(f"  and {len(by_run) - _LISTED} more run(s)")
    elif not plan.put_back:
        lines.append(
            "nothing to erase: "
            + (
                "every payload that old is of a run that can still be resumed, or whose end is unproved"
                if plan.resumable
                else "no payload is that old"
            )
        )
    leaving = "would leave" if dry_run else "leaving"
    kept = {run: status for run, status in plan.resumable.items() if not unproved(status)}
    unsure = {run: status for run, status in plan.resumable.items() if unproved(status)}
    if kept and not plan.forced:
        lines.append(
            f"{leaving} the data of {len(kept)} run(s) that can still be resumed (not completed; a resume needs "
            "it): finish them with `elspeth resume RUN_ID`, end those not to go on with `elspeth abandon RUN_ID "
            "--reason TEXT`, or erase it too with --force"
        )
        lines.extend(_listed(kept))
    if unsure and not plan.forced:
        lines.append(
            f"{leaving} the data of {len(unsure)} run(s) whose status purge cannot prove: the checkpoint at the end "
            "of each must be signed by the key purge signs with (ELSPETH_SIGNING_KEY; docs/erasure.md), as anyone who can "
            "write to the store could add an ending; or erase it too with --force"
        )
        lines.extend(_listed(unsure))
    if plan.forced and kept:
        lines.append(f"  --force: {len(kept)} of them can still be resumed, and then not past this data")
    if plan.forced and unsure:
        lines.append(
            f"  --force: {len(unsure)} of them have a status purge cannot prove with its key; their erasure records "
            "are signed by purge's key, which a verifier holding another run key will not count"
        )
    return lines


def _listed(runs: dict[str, str]) -> list[str]:
    lines = [
        f"  {run or '(payloads kept before runs were recorded on them)'}: {status}" for run, status in runs.items()
    ]
    more = f"  and {len(runs) - _LISTED} more run(s)" if len(runs) > _LISTED else None
    return lines[:_LISTED] + ([more] if more else [])
