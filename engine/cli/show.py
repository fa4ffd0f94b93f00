"""`elspeth runs` and `elspeth show RUN`: what runs there are, and everything about one of them.

A sink file is tied to the run that wrote it by the sha256 of its bytes up to the durable position
the run's log records (see `file_digest`). The log records that digest with each position (since
migration 0008): a file whose first bytes hash otherwise now is `changed`. Flushes recorded before
carry none; then the hash printed is of the file as it is now, to keep and compare later.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from engine.cli.common import counted, database_from_ctx
from landscape.db import Database
from landscape.postgres import PostgresRecorder
from landscape.queries import Artifact, list_runs, row_counts, run_detail, run_lifecycle
from landscape.roles import Role
from landscape.visible import one_line
from statecharts.machines import RUN_OPEN, RunState

_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A date/time (ISO 8601; without a zone, local time) or a duration back from now (`2h`,
    `3d`, `1w2d`). Raises click.BadParameter naming what is allowed."""
    now = now or datetime.now(UTC)
    compact = text.strip().lower()
    if compact and _DURATION.sub("", compact).strip() == "":
        try:
            delta = timedelta()
            for n, unit in _DURATION.findall(compact):
                delta += timedelta(**{_UNIT[unit]: int(n)})
            return now - delta
        except (OverflowError, ValueError):  # further back than a date goes (or than an int's
            return datetime.min.replace(tzinfo=UTC)  # digits may be): every run is since then
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a date/time (2024-05-01, 2024-05-01T14:30) nor a duration (30m, 2h, 3d, 1w)",
            param_hint="--since",
        ) from None
    if when.tzinfo is not None:
        return when
    try:
        return when.astimezone()
    except (OverflowError, ValueError):  # local time of 0001-01-01 can be before the first date
        return datetime.min.replace(tzinfo=UTC)  # (every run is since then)


@dataclass(frozen=True, slots=True)
class SinkFile:
    """One sink's output as the run left it: the last durable position its log records, and the
    file's bytes up to there as they are now."""

    sink: str
    location: str
    position: int
    rows: int
    flushes: int
    last_flush_seq: int
    state: str  # ok | grown | changed | short | missing | not_a_file
    sha256: str | None  # of the first `position` bytes (ok and grown only)
    size: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "sink": self.sink,
            "location": self.location,
            "position": self.position,
            "rows": self.rows,
            "flushes": self.flushes,
            "last_flush_seq": self.last_flush_seq,
            "file": self.state,
            "size": self.size,
            "sha256": self.sha256,
        }

    def describe(self) -> str:
        if self.state == "not_a_file":
            return "not a file: nothing to hash"
        if self.state == "left":
            # (From before the run; or, while it can be resumed, written after its last durable
            # point by a process that crashed: a resume cuts those.)
            return f"no rows written: the {self.size} bytes there are none the run made durable"
        if self.state == "missing":
            # A sink that got no rows writes no file (nor does a file sink in append mode change one).
            return "no rows written: no file was written" if self.position == 0 else "the file is gone"
        if self.state == "changed":
            return (
                f"its first {self.position} bytes are not those the run made durable (they hash to sha256 "
                f"{self.sha256}, not to the one the log records): changed or replaced since"
            )
        if self.state == "short":
            return (
                f"the file holds {self.size} bytes, fewer than the {self.position} the run made durable: "
                "it was cut or replaced since"
            )
        digest = f"sha256 {self.sha256} of its first {self.position} bytes"
        if self.state == "grown":
            return f"{digest} (the file has {self.size} bytes: written to since, or by an unfinished run)"
        return digest


def sink_files(artifacts: list[Artifact], working_dir: str | None) -> list[SinkFile]:
    """Per sink, its last durable position (from the artifacts, one per SinkFlushed) and the
    digest of its file up to there. Relative locations resolve against the run's folder."""
    by_sink: dict[str, list[Artifact]] = {}
    for a in artifacts:
        by_sink.setdefault(a.sink, []).append(a)
    out = []
    for sink, flushes in sorted(by_sink.items()):
        last = max(flushes, key=lambda a: a.seq)
        path = Path(last.location)
        if not path.is_absolute() and working_dir:
            path = Path(working_dir) / path
        state, digest, size = file_digest(path, last.position)
        if digest is not None and last.sha256 is not None and digest != last.sha256:
            state = "changed"
        rows = sum(a.rows for a in flushes)
        if rows == 0 and state in ("ok", "grown"):
            # A file a sink that got no rows did not touch (as the prior system did): in append
            # mode, its position is where the file ended before the run, not bytes of the run's.
            state = "left"
        out.append(SinkFile(sink=sink, location=last.location, position=last.position,
                            rows=rows, flushes=len(flushes), last_flush_seq=last.seq,
                            state=state, sha256=digest, size=size))  # fmt: skip
    return out


def file_digest(path: Path, position: int) -> tuple[str, str | None, int | None]:
    """(state, sha256 of the first `position` bytes, size). A location that is not a regular
    file (a database table, `db#table`) is `not_a_file`; only regular files are opened."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return ("missing" if "#" not in path.name else "not_a_file"), None, None
    except OSError:
        return "not_a_file", None, None
    if not stat.S_ISREG(st.st_mode):
        return "not_a_file", None, None
    if st.st_size < position:
        return "short", None, st.st_size
    h = hashlib.sha256()
    left = position
    with path.open("rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                return "short", None, st.st_size
            h.update(chunk)
            left -= len(chunk)
        tail = f.read(17) if 0 < st.st_size - position <= 16 else b""
    # A JSON array sink's closing bracket follows its last position (`close` writes it, and no
    # position includes it): in whatever encoding, the file is then exactly what the run wrote.
    closed = tail.replace(b"\x00", b"").strip() == b"]"
    return ("ok" if st.st_size == position or closed else "grown"), h.hexdigest(), st.st_size


# -- runs -----------------------------------------------------------------------------------------


@click.command("runs")
@click.argument("run_id", required=False)
@click.option("--status", "statuses", multiple=True, type=click.Choice([str(s) for s in RunState]),
              help="Only runs in this state (repeatable).")  # fmt: skip
@click.option("--since", help="Only runs started since a date/time (2024-05-01T14:30) or for a duration (2h, 3d).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    callback=lambda _ctx, _param, n: n if n is None else min(n, 1 << 62),  # (no more rows than a bigint counts)
    help="At most this many runs.",
)
@click.option("--json", "as_json", is_flag=True, help="An array of objects, newest first (shape: docs/cli.md).")
@click.pass_context
def runs_cmd(
    ctx: click.Context, run_id: str | None, statuses: tuple[str, ...], since: str | None, limit: int | None,
    as_json: bool,
) -> None:  # fmt: skip
    """List runs, newest first (`runs RUN_ID` is `show RUN_ID`). A run still `running` whose
    writer is gone crashed (or lost its database): it says so, with the command that continues it."""
    if run_id is not None:
        if statuses or since or limit:
            raise click.UsageError("--status, --since and --limit list runs: omit them with a RUN_ID")
        show_run(ctx, run_id, as_json)
        return
    after = parse_since(since) if since else None
    with database_from_ctx(ctx, role=Role.AUDITOR) as db:
        runs = list_runs(db, status=statuses, since=after, limit=limit)
        recorder = PostgresRecorder(db)
        # Only runs the log leaves open can have a writer; ended ones report None.
        alive = {r.run_id: recorder.writer_alive(r.run_id) for r in runs if r.status in RUN_OPEN}
    if as_json:
        out = [
            {
                "run_id": r.run_id,
                "status": r.status,
                "started_at": r.started_at.isoformat(),
                "ended_at": r.ended_at.isoformat() if r.ended_at else None,
                "resumes": r.resumes,
                "rows": r.rows_in,
                "settings": r.settings_path,
                "writer_alive": alive.get(r.run_id),
            }
            for r in runs
        ]
        click.echo(json.dumps(out, indent=2))
        return
    if not runs:
        click.echo("no runs" + (" match" if statuses or since else " yet"))
        return
    click.echo(f"{'run id':<32} {'status':<12} {'started':<20} {'duration':>10} {'rows':>10}")
    for r in runs:
        note = f"  writer gone: elspeth resume (or abandon) {r.run_id}" if alive.get(r.run_id) is False else ""
        started = r.started_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        took = _duration((r.ended_at - r.started_at).total_seconds()) if r.ended_at else "-"
        click.echo(f"{r.run_id:<32} {r.status:<12} {started:<20} {took:>10} {r.rows_in:>10}{note}")


# -- show -----------------------------------------------------------------------------------------


@click.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (shape: docs/cli.md).")
@click.pass_context
def show_cmd(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Everything about one run: settings, nodes with timings and outcomes, rows and tokens,
    sink files with their content hashes, resumes and durations."""
    show_run(ctx, run_id, as_json)


def show_run(ctx: click.Context, run_id: str, as_json: bool) -> None:
    with database_from_ctx(ctx, role=Role.AUDITOR) as db:
        out = run_report(db, run_id)
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        _print(out)


def run_report(db: Database, run_id: str) -> dict[str, Any]:
    """The `show --json` object (docs/cli.md)."""
    detail = run_detail(db, run_id)  # UnknownRun when there is none
    counts = row_counts(db, run_id)
    lifecycle = run_lifecycle(db, run_id)
    alive = PostgresRecorder(db).writer_alive(run_id) if detail.run.status in RUN_OPEN else None
    working_dir = next((e.working_dir for e in reversed(lifecycle) if e.working_dir), None)  # the last
    r = detail.run
    return {
        "run_id": r.run_id,
        "status": r.status,
        "started_at": r.started_at.isoformat(),
        "ended_at": r.ended_at.isoformat() if r.ended_at else None,
        "seconds": detail.seconds,
        "resumes": r.resumes,
        "writer_alive": alive,
        "settings": {"path": r.settings_path, "hash": detail.settings_hash},
        "working_dir": working_dir,
        "source_fingerprint": detail.source_fingerprint,
        "last_seq": detail.last_seq,
        "rows": {
            "in": counts.rows_in,
            "written": counts.written,
            "quarantined": counts.quarantined,
            "failed": counts.failed,
            "diverted": counts.diverted,
            "discarded": counts.discarded,
            "unfinished": counts.unfinished,
        },
        "tokens": detail.outcomes,
        "tokens_pending": detail.pending,
        "nodes": [
            {
                "node": n.node,
                "kind": n.kind,
                "plugin": n.plugin,
                "config_hash": n.config_hash,
                "processed": n.processed,
                "outcomes": n.outcomes,
                "total_us": n.total_us,
                "mean_us": n.total_us // n.processed if n.processed else None,
                "groups": n.groups,
                "late_arrivals": n.late_arrivals,
            }
            for n in detail.nodes
        ],
        "artifacts": [f.as_dict() for f in sink_files(detail.artifacts, working_dir)],
        "lifecycle": [
            {"seq": e.seq, "time": e.time.isoformat(), "event": e.event, "detail": e.detail} for e in lifecycle
        ],
    }


def _print(o: dict[str, Any]) -> None:
    took = f" in {_duration(o['seconds'])}" if o["seconds"] is not None else ""
    alive = {
        True: " (its writer is at work)",
        False: " (its writer is gone: `elspeth resume` it, or `elspeth abandon` it)",
    }.get(o["writer_alive"], "")
    click.echo(f"run {o['run_id']}: {o['status']}{took}{alive}")
    click.echo(f"  started {o['started_at']}, ended {o['ended_at'] or '-'}, resumed {o['resumes']} times")
    click.echo(f"  settings {one_line(o['settings']['path'])} (sha256 {o['settings']['hash']})")
    if o["working_dir"]:
        click.echo(f"  working folder {one_line(o['working_dir'])}")
    rows = o["rows"]
    written = ", ".join(f"{k} {v}" for k, v in rows["written"].items()) or "none"
    # (Rows still in an open batch, at a coalesce or on their way when the run stopped: without
    # them, a stopped run's rows were short of what it read, with no word of where the rest were.)
    when = "yet: its writer is at work" if o["writer_alive"] else "when the run stopped"
    unfinished = f"; unfinished {rows['unfinished']} (not ended {when})" if rows["unfinished"] else ""
    discarded = f" ({rows['discarded']} of them to discard)" if rows["discarded"] else ""
    click.echo(f"  rows: {rows['in']} in; written: {written}; quarantined {rows['quarantined']}, "
               f"failed {rows['failed']}, diverted {rows['diverted']}{discarded}{unfinished}")  # fmt: skip
    pending = o["tokens_pending"]
    tokens = ", ".join(f"{k} {v}" for k, v in o["tokens"].items()) or ("none ended" if pending else "none")
    if pending:
        tokens += f"; pending {pending} (not ended {when})"
    click.echo(f"  tokens: {tokens}")
    click.echo("  nodes:")
    for n in o["nodes"]:
        late = n["late_arrivals"]
        outcomes = "".join(
            f", {k} {v}" + (f" ({late} of them late arrivals)" if k == "failed" and late else "")
            for k, v in n["outcomes"].items()
        )
        outcomes += _groups(n["kind"], n["groups"])
        timing = f" ({n['total_us']} µs in all, {n['mean_us']} µs each)" if n["processed"] else ""
        wrote = f", {counted(o['rows']['written'].get(n['node'], 0), 'row')} written" if n["kind"] == "sink" else ""
        click.echo(
            f"    {n['node']:<20} {n['kind']:<12} {n['plugin']:<16} {counted(n['processed'], 'step')}{timing}{wrote}"
            f"{outcomes}"
        )
    click.echo("  sink files:")
    for a in o["artifacts"]:
        f = SinkFile(**{k if k != "file" else "state": v for k, v in a.items()})
        click.echo(
            f"    {a['sink']}: {counted(a['rows'], 'row')} → {one_line(a['location'])} (durable to {a['position']}): "
            f"{f.describe()}"
        )
    click.echo("  lifecycle:")
    for e in o["lifecycle"]:
        detail = f": {one_line(e['detail'])}" if e["detail"] else ""
        click.echo(f"    seq {e['seq']:<8} {e['time']}  {e['event']}{detail}")


def _groups(kind: str, groups: dict[str, int]) -> str:
    """A coalesce's instances or an aggregation's batches, by state: '; merged 10, failed 1'."""
    if kind == "coalesce" and groups:
        return "; coalesces " + ", ".join(f"{state} {n}" for state, n in groups.items())
    if kind == "aggregation" and groups:
        states = [k for k in groups if not k.endswith("_rows")]
        return "; batches " + ", ".join(f"{s} {groups[s]} ({groups[s + '_rows']} rows)" for s in states)
    return ""


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"
