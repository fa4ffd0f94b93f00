"""`elspeth explain`: one row's lineage, step by step, read from the verified log.

Built on the events, not on the projection tables (`landscape.lineage`): a plain change of a
projection cannot make explain lie, and row data is shown only after it matched its hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import click
import msgspec
from click.core import ParameterSource

from engine.cli.checkpoints import Checkpoints, key_option, read_checkpoints, witness_option
from engine.cli.common import counted, database_from_ctx, home_from_ctx, warn_reinstated
from engine.cli.errors import ElspethCliError
from engine.cli.verify import unsigned_erasures_option
from engine.cli.visible import say
from engine.expressions import Expression, ExpressionError, ExpressionSyntaxError, compile_expression
from landscape import lineage as lin
from landscape.errors import UnknownRun
from landscape.postgres import PostgresRecorder
from landscape.roles import Role
from landscape.seal import Verdict
from landscape.visible import one_line
from statecharts.machines import RunState

_WIDTH = 200  # a row's data longer than this is cut in the text output (never in --json)
_VALUE_WIDTH = 80  # and each value in a step's changes (a field's name: 60), so that each change is named
_CHANGES_SHOWN = 20  # changes of one step shown in the text output: the others are counted


@click.command("explain")
@click.argument("run_id")
@click.option(
    "--row",
    "row_numbers",
    type=click.IntRange(min=1),
    multiple=True,  # (to refuse a second one: click keeps the last of a single-valued option, unsaid)
    help="Source record N, counted from 1 over the records read (header and blank lines excluded): "
    "the same number as a quarantine record's __row_number__.",
)
@click.option("--token", "token_id", help="Explain the row this token belongs to.")
@click.option(
    "--where", "where", help="Rows whose source data satisfies this expression, e.g. \"row['id'] == 'A-17'\"."
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many rows (--where only)."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object (shape: docs/cli.md).")
@key_option
@witness_option
@unsigned_erasures_option
@click.pass_context
def explain_cmd(
    ctx: click.Context,
    run_id: str,
    row_numbers: tuple[int, ...],
    token_id: str | None,
    where: str | None,
    limit: int,
    as_json: bool,
    public_key: str | None,
    witness: str | None,
    unsigned_erasures: bool,
) -> None:
    """What happened to one row: every step with its seq and time, the fields each step changed,
    the gates' decisions, forks, merges and batches, and the sink position where it landed (or
    why it did not). Read from the event log after verifying it; row data is shown only once it
    matches the hash the log recorded. The log is checked against the run's signed checkpoints
    (the store's and the witness file's): a log cut short is refused, not shown as rows that got
    no further."""
    if len(row_numbers) > 1:
        raise click.UsageError("explain shows one row at a time: give --row once (a new command for each row)")
    row_number = row_numbers[0] if row_numbers else None
    if sum(x is not None for x in (row_number, token_id, where)) != 1:
        raise click.UsageError("give exactly one of --row N, --token ID or --where EXPR")
    # --limit has a default, so only one typed can be told from none: refused, not ignored unsaid.
    if where is None and ctx.get_parameter_source("limit") is not ParameterSource.DEFAULT:
        raise click.UsageError(
            "--limit goes with --where (at most N of the rows it matches), not with --row or --token"
        )
    condition = _compile(where) if where is not None else None
    home = home_from_ctx(ctx)
    with database_from_ctx(ctx, role=Role.AUDITOR) as db:
        recorder = PostgresRecorder(db)
        if not recorder.run_exists(run_id):
            raise UnknownRun(f"no run {one_line(run_id)} in {db.describe()} (see `elspeth runs`)")
        found = read_checkpoints(recorder, run_id, home, witness=witness, public_key=public_key)
        found.require(run_id)
        upto: int | None = None
        note = ""
        if row_number is not None:
            indexes = [row_number - 1]
        elif token_id is not None:
            indexes = [lin.find_token_row(recorder, run_id, token_id, checkpoints=found.all, verifier=found.key)]
        else:
            assert condition is not None
            indexes, upto, note = _matching(recorder, run_id, condition, limit, found, unsigned_erasures)
        explained = lin.explain_rows(
            recorder, run_id, indexes, upto_seq=upto, checkpoints=found.all, verifier=found.key,
            unsigned_erasures=unsigned_erasures,
        )  # fmt: skip
        warn_reinstated(recorder, run_id)
    if not explained.rows:
        what = f"row {row_number}" if row_number is not None else f"row matching {where!r}"
        raise ElspethCliError(f"run {one_line(run_id)} has no {what}" + (f" ({note})" if note else ""))
    if as_json:
        out = {
            "run_id": explained.run_id,
            "events_verified": explained.events_verified,
            "head": explained.head,
            "run_status": explained.run_status,
            "checkpoints": found.as_json(found.all),
            "rows": explained.rows,
        }
        click.echo(msgspec.json.format(msgspec.json.encode(out), indent=2).decode())
    else:
        _print(explained, found.summary(found.all))
    if note:
        say(f"elspeth: {note}")


def _compile(where: str) -> Expression:
    try:
        return compile_expression(where)
    except ExpressionSyntaxError as e:
        raise click.BadParameter(str(e), param_hint="--where") from e


def _matching(
    recorder: PostgresRecorder, run_id: str, condition: Expression, limit: int, found: Checkpoints, unsigned: bool
) -> tuple[list[int], int, str]:
    """Rows whose first data (as the source gave it) satisfies `condition`; a row whose data is
    erased, missing or altered is not evaluated, and said so (an erasure in its record's words). Returns the rows, the seq the log was read
    to, and a note."""
    roots, quarantined, upto = lin.source_rows(recorder, run_id, checkpoints=found.all, verifier=found.key)
    matched: list[int] = []
    total = unchecked = unevaluated = as_read = 0
    erased: dict[str, int] = {}  # why (the erasure record's words) -> rows
    not_bool: dict[str, int] = {}  # the type the expression gave instead of true or false -> rows
    seals: dict[int, Verdict] = {}  # each seal checked once, however many chunks it covers
    for i in range(0, len(roots), 5000):
        chunk = roots[i : i + 5000]
        data = lin.checked_payloads(recorder, run_id, {h for _, h in chunk}, found.key, seals, accept_unsigned=unsigned)
        for index, h in chunk:
            d = data[h]
            if d.status == "erased":
                erased[d.why or ""] = erased.get(d.why or "", 0) + 1
                continue
            if d.status != "ok":
                unchecked += 1
                continue
            try:
                value = condition.evaluate(d.value) if isinstance(d.value, dict) else False
            except ExpressionError:
                value = False  # as a gate would: an expression that cannot be evaluated is no match
                unevaluated += 1
            # A number or text is no match either (a gate would take text as a route label, but
            # here there are no routes); said as the failures are, not left as a silent miss.
            if not isinstance(value, bool):
                kind = "null" if value is None else type(value).__name__
                not_bool[kind] = not_bool.get(kind, 0) + 1
            hit = value is True
            if hit:
                total += 1
                if len(matched) < limit:
                    matched.append(index)
            elif index in quarantined:
                as_read += 1
    notes = []
    if total > len(matched):
        notes.append(f"{total} rows match; showing the first {len(matched)} (--limit)")
    ranked = sorted(erased.items(), key=lambda item: -item[1])
    for why, n in ranked[:3]:
        notes.append(f"{counted(n, 'row')} not searched: {_its(n)} data was {why}")
    if ranked[3:]:
        more = sum(n for _why, n in ranked[3:])
        notes.append(f"{more} more {_rows(more)} not searched: {_its(more)} data was erased")
    if unchecked:
        notes.append(
            f"{counted(unchecked, 'row')} not searched: {_its(unchecked)} data is missing or altered in the payload "
            "store"
        )
    if unevaluated:
        notes.append(
            f"{counted(unevaluated, 'row')} on which the expression could not be evaluated (a field missing, a value "
            "of another type), taken as no match"
        )
    if not_bool:
        notes.append(
            f"{counted(sum(not_bool.values()), 'row')} on which the expression gave neither true nor false "
            f"({', '.join(sorted(not_bool))}), taken as no match"
        )
    if as_read:  # (row['id'] == 97 is false for a quarantined row's "97": nothing was said)
        were, their = ("was", "its") if as_read == 1 else ("were", "their")
        notes.append(
            f"{as_read} of the rows that did not match {were} quarantined by the source: {their} fields are as it "
            "read them (text, not the schema's types: '97', not 97)"
        )
    return matched, upto, "; ".join(notes)


def _rows(n: int) -> str:
    return "row" if n == 1 else "rows"


def _its(n: int) -> str:
    return "its" if n == 1 else "their"


# -- text output ----------------------------------------------------------------------------------


def _print(x: lin.Explained, checkpoints: str) -> None:
    click.echo(f"run {x.run_id}: log verified ({x.events_verified} events, head {x.head[:16]}); times in UTC")
    click.echo(checkpoints)
    for row in x.rows:
        click.echo(f"row {row.row} (row_index {row.row_index})")
        for t in row.tokens:
            branch = f", branch {t.branch}" if t.branch else ""
            click.echo(f"  token {t.token_id}{branch}")
            for entry in t.entries:
                if isinstance(entry, lin.Ended) and entry.outcome in ("forked", "expanded"):
                    continue  # the fork or expansion line above says it
                click.echo(f"    seq {entry.seq:<6} {entry.time:%Y-%m-%d %H:%M:%S.%f}  {_describe(entry)}")
            if t.outcome is None and x.run_status == RunState.ABANDONED:
                click.echo(f"    never ended: {t.state} when the run was abandoned (see `elspeth show {x.run_id}`)")
            elif t.outcome is None:
                click.echo(f"    not ended yet: {t.state}")
        for c in row.coalesces:
            why = f", {c.reason}" if c.reason else ""
            trigger = f" ({c.trigger})" if c.trigger else ""
            # (union: the later branch's value won; what each branch held is in its steps)
            names = ", ".join(_field(name) for name in c.collisions)
            collided = f"; fields the branches gave different values: {names}" if c.collisions else ""
            click.echo(
                f"  coalesce {c.id}: {c.outcome} at seq {c.seq}{trigger}{why}: arrived {', '.join(c.arrived) or 'none'}; "
                f"missing {', '.join(c.missing) or 'none'}{collided}"
            )
        for b in row.batches:
            why = f": {b.reason}" if b.reason else ""
            click.echo(f"  batch {b.id}: {b.outcome} at seq {b.seq} (trigger {b.trigger}, {b.size} rows){why}")


def _describe(e: lin.Entry) -> str:
    if isinstance(e, lin.Created):
        origin = {"source": "from the source", "fork": "as a fork branch", "expand": "by an expansion",
                  "merge": "by a merge", "batch": "by an aggregation"}.get(e.via, e.via)  # fmt: skip
        parents = f" of {', '.join(e.parents)}" if e.parents else ""
        return f"created {origin}{parents}, at '{e.at}': {_data(e.data)}"
    if isinstance(e, lin.Step):
        return f"{e.node} ({e.duration_us} µs) → '{e.next}': {_changes(e.changes, e.unchecked)}"
    if isinstance(e, lin.Gate):
        return f"gate {e.node}: {e.condition or '?'} → {e.route}, to '{e.next}'"
    if isinstance(e, lin.Forked):
        return f"gate {e.node}: {e.condition or '?'} → fork into {', '.join(e.children)}"
    if isinstance(e, lin.Expanded):
        return f"{e.node} expanded it into {', '.join(e.children)}"
    if isinstance(e, lin.Held):
        return f"held at coalesce {e.coalesce_id} as branch {e.branch}"
    if isinstance(e, lin.Buffered):
        return f"joined batch {e.batch_id}"
    if isinstance(e, lin.Assigned):
        why = f" ({e.reason})" if e.reason else ""
        return f"written to sink {e.sink}, to be {e.outcome} once durable{why}"
    return _ended(e)


def _ended(e: lin.Ended) -> str:
    at = f" at {e.node}" if e.node else ""
    why = "".join(f": {text}" for text in (e.reason, e.detail) if text)
    if e.landed is not None:
        d = e.landed
        return (
            f"{e.outcome}{at}{why} — landed in sink {d.sink} ({d.location}) between positions {d.from_position} "
            f"and {d.to_position}, made durable by the flush at seq {d.flush_seq}"
        )
    if e.outcome in ("forked", "expanded"):
        return f"{e.outcome}: continues as {', '.join(e.into)}"
    if e.outcome == "coalesced":
        return f"coalesced in {e.detail}: continues as {', '.join(e.into)}"
    if e.outcome == "consumed_in_batch":
        return f"consumed by batch {e.detail}: its outputs are {', '.join(e.into) or 'none'}"
    if e.sink is None and e.outcome in ("diverted", "quarantined"):
        return f"{e.outcome}{at}{why} — discarded, written to no sink"
    return f"{e.outcome}{at}{why} — not written to any sink"


def _data(d: lin.Data) -> str:
    if d.status == "erased":
        return f"data erased: {d.why}"
    if d.status == "missing":
        why = f"; {d.why}" if d.why else ""
        return f"DATA MISSING from the payload store (hash {d.hash[:16]}…){why}: not shown"
    if d.status == "altered":
        return f"DATA ALTERED in the payload store (it does not match hash {d.hash[:16]}…): not shown"
    return _cut(_text(d.value))


def _changes(changes: list[lin.Change] | None, unchecked: lin.Data | None) -> str:
    if changes is None:
        if unchecked is not None and unchecked.status == "erased":
            return f"data erased: {unchecked.why}; changes not shown"
        return "data missing or altered in the payload store: changes not shown"
    if not changes:
        return "no field changed"
    parts = []
    for c in changes[:_CHANGES_SHOWN]:
        name = _field(c.field)
        old, new = _cut(_text(c.old), _VALUE_WIDTH), _cut(_text(c.new), _VALUE_WIDTH)
        if c.change == "added":
            parts.append(f"+{name} = {new}")
        elif c.change == "removed":
            parts.append(f"-{name} (was {old})")
        else:
            parts.append(f"{name}: {old} → {new}")
    if len(changes) > _CHANGES_SHOWN:
        parts.append(f"and {len(changes) - _CHANGES_SHOWN} more changes (--json shows them all)")
    return "; ".join(parts)


def _text(value: Any) -> str:
    """A value of the row as JSON with every character past ASCII escaped (`\\u00e9`): a value is
    the input's, and look-alike quotes (U+02BA) and arrows in it printed a change that never
    happened (a hostile review); `--json` shows the text as it is."""
    return json.dumps(value, default=str)


def _field(name: str) -> str:
    """A field's name as it is when it is an ASCII identifier, else quoted with JSON's escapes,
    every other character as `\\uXXXX`: names are the input's (a JSON key), and one that held a
    line break printed lines that looked like the lineage's own (a hostile review forged a `seq`
    line and a `row` header), one that held `"; status: "pending" → "approved"` a change that never
    happened (another), and one of look-alike letters (U+02D0 for a colon, U+02BA for a quote, an invisible
    Hangul filler for a space) the same as an identifier (a third). A long one is cut at 50
    characters and told from others that begin alike by its digest's first 8 hex digits."""
    if name.isascii() and name.isidentifier() and len(name) <= 60:
        return name
    if len(name) <= 60:
        return json.dumps(name)
    return json.dumps(name[:50] + "…") + "#" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _cut(text: str, width: int = _WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
