"""`elspeth verify FILE --public-key KEY.pub`: check an export or a proof bundle offline.

No database, no settings and no driver: this module and everything it imports must load where
psycopg is not installed (tests/test_audit.py runs it so), and `engine.cli.main` imports it on
its own for that reason.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import click

from engine.cli.errors import ElspethCliError
from engine.cli.visible import say
from landscape.audit import ExportReport, check_sink_file, read_kept_checkpoint, sniff, verify_export, verify_proof
from landscape.keys import load_verifier

# One option, one meaning, wherever a run's erasures are checked (replay, export, prove, verify).
unsigned_erasures_option = click.option(
    "--unsigned-erasures",
    "unsigned_erasures",
    is_flag=True,
    help="Take erasure records that no seal signs (written before purge signed them) on the store's word, and "
    "count them in a warning; a record naming a seal that does not verify is still refused.",
)


@click.command("verify")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--public-key",
    "public_key",
    required=True,
    type=click.Path(path_type=Path),
    help="The .pub of the key that signed the run's checkpoints (obtained from the operator, not the file).",
)
@click.option(
    "--checkpoint",
    "kept",
    type=click.Path(path_type=Path),
    help="A checkpoint you kept from earlier (`elspeth checkpoint`): also prove the file's log extends it "
    "(a bundle must be made with `elspeth prove --checkpoint` and it).",
)
@click.option("--run", "run_id", help="Refuse the file unless it is of this run.")
@click.option(
    "--require-payloads",
    is_flag=True,
    help="Refuse a file without the row payloads (commitments only: `export --no-payloads`, `prove "
    "--no-payloads`): its header says so, and nothing signs that, so one stripped of them reads the same.",
)
@click.option(
    "--sink-file",
    "sink_files",
    multiple=True,
    metavar="SINK=PATH",
    help="Also prove PATH is what the run's sink SINK wrote: its bytes up to the sink's last durable position "
    "hash to the sha256 the signed log records, and nothing follows but what the sink writes as the run completes "
    "(a JSON array's closing bracket); anything else is refused (repeatable; an export, not a bundle).",
)
@click.option(
    "--allow-later-bytes",
    "later",
    is_flag=True,
    help="With --sink-file: a file may hold bytes after the run's output that its log does not account for (a "
    "later run appending to the same file), counted instead of refused.",
)
@click.option(
    "--allow-earlier-bytes",
    "earlier",
    is_flag=True,
    help="With --sink-file: a file may begin with bytes it held before the run wrote to it (an earlier run's "
    "output, which an append-mode sink continued), counted instead of refused.",
)
@unsigned_erasures_option
def verify_cmd(file: Path, public_key: Path, kept: Path | None, run_id: str | None, require_payloads: bool,
               sink_files: tuple[str, ...], later: bool, earlier: bool, unsigned_erasures: bool) -> None:  # fmt: skip
    """Verify an export (`elspeth export`) or a proof bundle (`elspeth prove`) offline: the
    signatures, the hash chain, the Merkle tree against every signed checkpoint, the transitions
    and the row payloads. Exit 1 naming the first bad line or event."""
    tied = [_sink_file(given) for given in sink_files]
    key = load_verifier(public_key)
    old = read_kept_checkpoint(kept, key) if kept is not None else None
    if sniff(file) == "proof":
        if tied:
            raise ElspethCliError(f"{file} is a proof bundle: it holds some of the run's events, not every sink's "
                                  "last flush; --sink-file needs the run's export (`elspeth export`)")  # fmt: skip
        proof = verify_proof(file, key, kept=old, kept_name=str(kept), run_id=run_id,
                             unsigned_erasures=unsigned_erasures)  # fmt: skip
        _payloads_required(file, proof.payloads_included, require_payloads, bundle=True)
        click.echo(
            f"{file}: proof of run {proof.run_id}, {proof.subject}: {proof.events} event(s) in the tree of "
            f"{proof.size} events (root {proof.root.hex()[:16]}) signed by {proof.key}"
        )
        click.echo(_payloads(proof.payloads_included, proof.payloads, proof.erased, bundle=True))
        held = _held(*proof.decided)
        if held:
            click.echo(f"with {held} of the row's tokens")
        say_unsigned(proof.unsigned)
        if kept is not None:
            click.echo(f"extends the checkpoint you kept ({kept}, {proof.extends} events): consistency proof verified")
        if proof.row:
            gaps = [
                *([f"{proof.unended} token(s) of the bundle have no end event in it"] if proof.unended else []),
                *([f"{proof.absent} token(s) its events name have no event in it"] if proof.absent else []),
                *([f"{proof.skipping} token(s) have events in it that do not follow one another (one of theirs was "
                   "left out of it)"] if proof.skipping else []),
                *([f"{proof.undecided} {_undecided(proof.undecided)} its tokens' events call for "
                   f"{'is' if proof.undecided == 1 else 'are'} not whole in it"] if proof.undecided else []),
            ]  # fmt: skip
            unwired = (
                ""
                if proof.wiring
                else (
                    " (nor, made before format 3, does it hold the run's settings: a step left out that kept the data "
                    "cannot be told)"
                )
            )
            if not proof.decisions:
                unwired += (
                    " (made before format 4, it holds no coalesce, batch or sink flush of its tokens: what they "
                    "decided is not proved)"
                )
            say(
                f"elspeth: note: {'; '.join(gaps) + ': ' if gaps else ''}a bundle proves that the events it holds are "
                f"in the signed log, not that none was left out (an export shows them all){unwired}"
            )
        return
    report = verify_export(file, key, kept=old, kept_name=str(kept), run_id=run_id,
                           unsigned_erasures=unsigned_erasures)  # fmt: skip
    _payloads_required(file, report.payloads_included, require_payloads, bundle=False)
    # The sink files first: one that does not match fails the command before anything is said
    # to have verified.
    sinks = [check_sink_file(report, name, path, closing=_closing(report, name, path), later=later, earlier=earlier)
             for name, path in tied]  # fmt: skip
    click.echo(
        f"{file}: run {report.run_id}: {report.events} events, chain and transitions verified; Merkle root "
        f"{report.root.hex()[:16]} matches all {report.checkpoints} checkpoint(s) signed by {report.key}"
    )
    click.echo(_payloads(report.payloads_included, report.payloads, report.erased, bundle=False))
    say_unsigned(report.unsigned)
    if report.unshown:
        say(
            f"elspeth: warning: this run's seals sign {report.unshown} erasure record(s) that the export does not "
            "hold: erasures the store recorded were left out of the file (or a payload was erased twice, and the "
            "file holds one of its records)"
        )
    click.echo(f"the run, where the log ends: {report.status}")
    if report.extends is not None:
        click.echo(f"extends the checkpoint you kept ({kept}, {report.extends} events): consistency proof verified")
    for line in sinks:
        click.echo(line)
    if not report.ended:
        say(
            f"elspeth: warning: the log does not end the run (its state there: {report.status}, which a run is "
            "resumed or goes on from): either the run went on after the export was made, or the file was cut back "
            "to an earlier signed checkpoint, which only a checkpoint you kept from later can tell (--checkpoint)"
        )


def _held(coalesces: int, batches: int, flushes: int) -> str:
    """`1 coalesce and 3 sink flushes`: each kind a bundle holds, counted in its number."""
    kinds = [
        f"{n} {one if n == 1 else many}"
        for n, one, many in ((coalesces, "coalesce", "coalesces"), (batches, "batch", "batches"),
                             (flushes, "sink flush", "sink flushes"))
        if n
    ]  # fmt: skip
    return " and ".join(kinds) if len(kinds) < 3 else f"{kinds[0]}, {kinds[1]} and {kinds[2]}"


def _undecided(n: int) -> str:
    return "coalesce, batch or sink flush" if n == 1 else "coalesces, batches or sink flushes"


def _closing(report: ExportReport, name: str, path: Path) -> bytes | None:
    """What sink `name` writes as the run completes, after its last flush, built from the settings
    the signed log records for it (None: unknown). A sink that made no bytes of its own durable,
    continuing what its file held (an append), closes after those bytes, read from `path`."""
    from engine.plugins.sinks import closing_of  # (only with --sink-file; imports no driver)

    end = report.sinks.get(name)
    if end is None or end.declared is None:
        return None
    continued = (path, end.position) if 0 < end.start == end.position and _regular(path) else None
    return closing_of(str(end.declared.get("plugin")), end.declared.get("options"), continued)


def _regular(path: Path) -> bool:
    """Whether `path` is a regular file, to be read (a FIFO would be waited on: `check_sink_file`
    refuses what is not one)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _sink_file(given: str) -> tuple[str, Path]:
    name, eq, path = given.partition("=")
    if not eq or not name or not path:
        raise click.BadParameter(f"{given!r}: allowed: SINK=PATH (a sink's name, then its output file)",
                                 param_hint="'--sink-file'")  # fmt: skip
    return name, Path(path)


def say_unsigned(unsigned: int) -> None:
    """The line every command taking `--unsigned-erasures` prints when it took any."""
    if unsigned:
        say(
            f"elspeth: warning: {unsigned} erasure record(s) signed by no seal, taken on the store's word "
            "(--unsigned-erasures): nothing proves those payloads were erased rather than deleted"
        )


# How a file without payloads came to be, by its header's word: an export is exported, a bundle made by prove.
_WITHOUT = {False: "exported without them", True: "made with `prove --no-payloads`"}
_ASK = {False: "ask for a full export", True: "ask for a bundle made without --no-payloads"}


def _payloads_required(file: Path, included: bool, required: bool, *, bundle: bool) -> None:
    """A file without payloads proves the events, not the rows: refused when they are required,
    and said either way, since the header's flag is not signed (the file may have been stripped)."""
    if included:
        return
    if required:
        raise ElspethCliError(
            f"{file} holds no row payloads (its header says it was {_WITHOUT[bundle]}; nothing signs that, "
            f"so they may have been stripped): refused, as --require-payloads asks; {_ASK[bundle]}"
        )
    say(
        "elspeth: warning: the file holds no row payloads, by its header's word, which nothing signs: one stripped "
        "of them reads the same; the rows are not proved (--require-payloads refuses such a file)"
    )


def _payloads(included: bool, matched: int, erased: int, *, bundle: bool) -> str:
    if not included:
        how = "made with `prove --no-payloads`" if bundle else "exported without payloads"
        return f"row payloads: NOT CHECKED ({how}: commitments only); {erased} recorded as erased"
    return f"row payloads: {matched} match their commitments; {erased} erased (with a record)"
