"""`elspeth run`, `elspeth resume` and `elspeth abandon`: the operator's commands."""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from engine.cli.common import counted, database_from_ctx, home_from_ctx
from engine.cli.errors import ElspethCliError, SettingsCliError, settled
from engine.cli.preflight import check_paths
from engine.cli.show import sink_files
from engine.cli.visible import say
from engine.dag import DagError
from engine.errors import RunFailedError
from engine.orchestrator import Outcome, Pipeline, build_pipeline, pipeline_problems, resume_run, start_run
from engine.plugins.protocol import PluginError
from engine.settings import SettingsError, load_settings
from engine.stopping import StoppedAtOnce
from landscape import faults
from landscape.db import Database, is_postgresql_url, redact
from landscape.fold import RunFold
from landscape.queries import RowCounts, run_end
from landscape.visible import one_line
from statecharts.machines import RunState

#: Problems (or warnings) shown at most: a file of another format, or a block pasted twice, can
#: hold a thousand unknown keys, and the first of them say what is wrong.
SHOWN = 50


def _at_most(lines: list[str], what: str) -> list[str]:
    more = len(lines) - SHOWN
    return lines if more <= 0 else [*lines[:SHOWN], f"… and {more} more {what} (fix these first)"]


def load_pipeline(path: Path) -> Pipeline:
    """Settings → DAG → plugins; every problem with the file becomes one exit-2 error."""
    try:
        os.getcwd().encode("utf-8")  # (relative paths resolve from it, and the run records it, as text)
    except FileNotFoundError:
        raise ElspethCliError(
            "the folder elspeth was started in no longer exists (deleted or moved?), and the settings' relative "
            "paths resolve from it; change to a folder that exists"
        ) from None
    except UnicodeEncodeError:
        raise ElspethCliError(
            f"the folder elspeth runs in, {os.getcwd()!r}, has a name that is not valid UTF-8, and a run records the "
            "folder it ran in as text; allowed: a folder whose name is UTF-8 (rename it, or run from another)"
        ) from None
    try:
        str(path).encode("utf-8")  # (a run records it, as text)
    except UnicodeEncodeError:
        raise ElspethCliError(
            f"the settings file's name, {str(path)!r}, is not valid UTF-8, and a run records it as text; allowed: a "
            "settings file whose path is UTF-8 (rename it)"
        ) from None
    try:
        loaded = load_settings(path)
        for warning in _at_most(loaded.warnings, "warnings"):
            say(f"elspeth: warning: {warning}")
        return build_pipeline(loaded)
    except SettingsError as e:
        errors = list(e.errors)
        if e.loaded is not None:  # the settings decoded: their DAG and plugin options can be checked too
            errors += [m for m in pipeline_problems(e.loaded) if m not in errors]
        raise SettingsCliError("\n".join(_at_most(errors, "problems"))) from e
    except DagError as e:
        raise SettingsCliError("\n".join(_at_most([f"{one_line(path)}: {m}" for m in e.errors], "problems"))) from e
    except PluginError as e:
        raise ElspethCliError(str(e)) from e


def describe(pipeline: Pipeline) -> str:
    """What a valid pipeline consists of, in one line (validate and --dry-run)."""
    order = pipeline.dag.node_order
    steps = f"{len(order)} step{'s' if len(order) != 1 else ''}" + (f" ({', '.join(order)})" if order else "")
    sinks = sorted(pipeline.loaded.settings.sinks)
    return f"source {pipeline.loaded.settings.source.plugin}, {steps}, sinks {', '.join(sinks)}"


def _postgres_url(url: str | None) -> str | None:
    """`landscape.url` when it names PostgreSQL. The prior system's SQLite URLs are accepted in
    settings files, but the audit trail always lives in PostgreSQL (the embedded one then)."""
    return url if url and is_postgresql_url(url) else None


def _settings_file_url(path: Path) -> str | None:
    try:
        return _postgres_url(load_settings(path).settings.landscape.url)
    except SettingsError as e:
        raise SettingsCliError(str(e)) from e


def _commit_every(pipeline: Pipeline, override: int | None) -> int:
    if override is not None:
        return override
    return pipeline.loaded.settings.checkpoint.commit_every_rows()


class Progress:
    """A live bar on a terminal; a plain line every few seconds otherwise (logs, CI).

    The bar is redrawn by the engine's thread, at most once a second, when it reports progress
    (at each durability point, at least once a second). rich's own refresh thread would take the
    GIL from the engine in the very short slices a run sets for the writer's thread (see
    `engine.orchestrator.GIL_SLICE_SECONDS`): measured, 3 % of a run's time, not 0.1 %."""

    REDRAW_SECONDS = 1.0

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last_line = 0.0
        self.last_drawn = 0.0
        # (A terminal that takes no controls, Emacs's shell say, draws no bar: it gets the lines.)
        # (No standard error at all, `2>&-`: nothing to draw on, and no bar drawn on stdout.)
        self.tty = sys.stderr is not None and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        self._bar: Any = None
        if self.tty:
            from rich.console import Console
            from rich.progress import Progress as RichProgress
            from rich.progress import TextColumn, TimeElapsedColumn

            # On the terminal found above, drawn with its controls: rich's own console would write
            # to standard output, whose every control `visible` shows as text (the bar was a
            # line of escapes, never cleared, before each line of the summary).
            self._bar = RichProgress(TextColumn("{task.description}"), TimeElapsedColumn(), transient=True,
                                     auto_refresh=False, console=Console(file=sys.stderr))  # fmt: skip
            self._task = self._bar.add_task("starting", total=None)
            self._bar.start()

    def __call__(self, fold: RunFold) -> None:
        rows = fold.source_records
        elapsed = max(time.monotonic() - self.started, 1e-9)
        text = f"{rows} rows read, {fold.accounted()} tokens done, {rows / elapsed:.0f} rows/s"
        if self._bar is not None:
            if elapsed - self.last_drawn >= self.REDRAW_SECONDS:
                self.last_drawn = elapsed
                self._bar.update(self._task, description=text, refresh=True)
        elif elapsed - self.last_line >= 5.0:
            self.last_line = elapsed
            say(f"elspeth: {text}")

    def close(self) -> None:
        """Take the bar off the terminal (once; again is nothing): before anything else is printed,
        which a live bar would otherwise draw itself above, line after line."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def print_summary(db: Database, outcome: Outcome, seconds: float, command_seconds: float) -> None:
    """Rows as an operator counts them (source records in, rows written per sink, rows
    quarantined, failed, diverted), then tokens (a fork, a merge or a batch makes more tokens
    than rows), then each sink's file with the hash that ties it to this run."""
    end = run_end(db, outcome.run_id)
    rows = end.rows
    now = rows.rows_in - outcome.records_before  # a resumed run's rate is of what this process read
    rate = now / seconds if seconds > 0 else 0.0
    # This command's time, which `show` (the run's recorded start to end) does not include: loading
    # the settings and opening the store (a first start's initdb) before the run begins, sealing it
    # after it ends (and, resumed, the time it was down). The rate is of the run's own time.
    click.echo(f"run {outcome.run_id} {outcome.status}; this command took {command_seconds:.2f} s")
    since = f"{now} since the resume, " if outcome.records_before else ""
    click.echo(f"  rows in: {rows.rows_in} ({since}{rate:.0f} rows/s)")  # (no separator: as every count here)
    if outcome.input_changed:  # rows that moved into the first records of the new input were not read
        n = outcome.records_before
        click.echo(
            f"  the input changed (--force): read from its record {n + 1} on; its first {n} records were not read "
            f"(the run had read {n} records before this resume, from the input as it was then): compare the two "
            "if rows may have moved"
        )
    written = ", ".join(f"{sink} {n}" for sink, n in rows.written.items()) or "none"
    click.echo(f"  rows written: {written}")
    unfinished = f", not ended: {rows.unfinished} (resume the run to finish them)" if rows.unfinished else ""
    click.echo(
        f"  rows quarantined: {rows.quarantined}, failed: {rows.failed}, diverted: {rows.diverted}"
        f"{_discarded(rows)}{unfinished}"
    )
    first = end.first_failed
    if first is not None:  # a run can complete with every row failed: say why, and where to look
        at = f" at {first[1]}" if first[1] else ""
        click.echo(f"  first failed: row {first[0] + 1}{at}: {first[2] or 'no reason recorded'}")
    if end.outcomes:
        click.echo("  tokens: " + ", ".join(f"{k} {v}" for k, v in end.outcomes.items()))
    # This process works in the run's folder (resume changes to it), where relative paths resolve.
    for f in sink_files(end.artifacts, None):
        click.echo(f"  sink {f.sink}: {counted(f.rows, 'row')} → {one_line(f.location)}: {f.describe()}")
    row = first[0] + 1 if first is not None else 1
    explain = (
        f" — `elspeth show {outcome.run_id}`, `elspeth explain {outcome.run_id} --row {row}`" if rows.rows_in else ""
    )
    click.echo(f"  audit trail: {db.describe()}{explain}")
    # A run that did nothing useful still completes (exit 0): say so where the operator looks.
    if outcome.status == RunState.COMPLETED and rows.rows_in == 0:
        say("elspeth: warning: the source read no records: is its input the one meant?")
    elif outcome.status == RunState.COMPLETED and not any(rows.written.values()):
        # Whatever took them: a run whose every row was quarantined or diverted to `discard` wrote
        # nothing, exit 0, without a word (a careless user's review; only failures were said).
        say(
            f"elspeth: warning: no row was written: {rows.failed} failed, {rows.quarantined} quarantined, "
            f"{rows.diverted} diverted{_discarded(rows)}"
        )


def _discarded(rows: RowCounts) -> str:
    """Of the quarantined and diverted rows, those a token of which went to `discard`: recorded, and
    written to no sink (another of the row's tokens, a fork's branch, may have been)."""
    return f" ({rows.discarded} of them to discard)" if rows.discarded else ""


def _report(
    ctx: click.Context, db: Database, go: Callable[[], Outcome], resume: Callable[[str], str], progress: Progress
) -> None:
    """Run `go` and print its summary; `resume(run_id)` is the command to suggest when it stops.
    `progress` is closed as soon as `go` returns or raises."""
    started = time.monotonic()
    command_started = float((ctx.find_root().obj or {}).get("started", started))
    try:
        try:
            outcome = go()
            # From here a signal cuts short only the summary: the run's end is on record.
            if outcome.status == RunState.INTERRUPTED:
                settled(f"run {outcome.run_id} interrupted; continue it with `{resume(outcome.run_id)}`", 130)
            else:
                settled(f"run {outcome.run_id} {outcome.status}: `elspeth show {outcome.run_id}`", 0)
        finally:
            progress.close()
    except RunFailedError as e:
        for note in e.notes:
            say(f"elspeth: note: {note}")
        raise ElspethCliError(
            f"{e} — fix the cause, then `{resume(e.run_id)}` (with --force if that meant changing the settings or "
            "the input)"
        ) from e
    except StoppedAtOnce as e:  # a signal, as for `interrupted` below: exit 130
        say(f"elspeth: {e}")
        sys.exit(130)
    faults.reached("summary")
    now = time.monotonic()
    print_summary(db, outcome, now - started, now - command_started)
    for note in outcome.notes:
        say(f"elspeth: note: {note}")
    if outcome.status == RunState.INTERRUPTED:
        say(f"run {outcome.run_id} interrupted; continue it with `{resume(outcome.run_id)}`")
        sys.exit(130)


def _resume_command(ctx: click.Context, settings_url: str | None, settings_path: Path | None) -> Callable[[str], str]:
    """The `elspeth resume` that finds this run again: with the --home or --database given as
    flags (the environment carries over by itself; a password shows as ***), and with -s FILE
    when that file's landscape.url chose the audit store."""
    root = ctx.find_root()
    obj = root.obj or {}
    flags = ""
    for name in ("home", "database"):
        if obj.get(name) and root.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            value = str(Path(obj[name]).resolve()) if name == "home" else redact(obj[name])
            flags += f" --{name} {shlex.quote(value)}"
    by_settings = settings_url is not None and not obj.get("database") and settings_path is not None
    settings = f" -s {shlex.quote(str(settings_path.resolve()))}" if by_settings and settings_path else ""
    return lambda run_id: f"elspeth{flags} resume {run_id}{settings}"


@click.command("run")
@click.option("-s", "--settings", "settings_path", required=True, type=click.Path(path_type=Path))
@click.option("--execute", is_flag=True, help="Accepted for compatibility: running is the default.")
@click.option("--dry-run", is_flag=True, help="Validate the settings and build the DAG, run nothing.")
@click.option("--commit-every", type=click.IntRange(min=1), help="Rows per durability point.")
@click.pass_context
def run_cmd(ctx: click.Context, settings_path: Path, execute: bool, dry_run: bool, commit_every: int | None) -> None:
    """Run a pipeline, recording every step of every row."""
    if dry_run and execute:  # (silently one of the two, the operator would not know which)
        raise click.UsageError("--dry-run and --execute contradict each other: give one")
    pipeline = load_pipeline(settings_path)
    try:
        check_paths(pipeline)  # before any store is opened or created: a missing input leaves nothing
    except ElspethCliError:
        pipeline.close()
        raise
    if dry_run:
        click.echo(f"dry run: {one_line(settings_path)} is valid: {describe(pipeline)}; nothing was run")
        return
    home = home_from_ctx(ctx)
    progress = Progress()
    settings_url = _postgres_url(pipeline.loaded.settings.landscape.url)
    try:
        with database_from_ctx(ctx, settings_url=settings_url) as db:
            _report(
                ctx,
                db,
                lambda: start_run(
                    db,
                    pipeline,
                    commit_every=_commit_every(pipeline, commit_every),
                    progress=progress,
                    home=home,
                    sending="process",
                ),
                _resume_command(ctx, settings_url, settings_path),
                progress,
            )
    finally:
        progress.close()
        pipeline.close()


@click.command("resume")
@click.argument("run_id")
@click.option("--force", is_flag=True, help="Resume even though the input or settings changed (recorded).")
@click.option("-s", "--settings", "settings_path", type=click.Path(path_type=Path), help="Settings file to use.")
@click.option("--commit-every", type=click.IntRange(min=1), help="Rows per durability point.")
@click.pass_context
def resume_cmd(
    ctx: click.Context, run_id: str, force: bool, settings_path: Path | None, commit_every: int | None
) -> None:
    """Continue an interrupted, failed or crashed run from its event log. With -s, the run's
    settings come from that file and its `landscape.url` says where the audit trail is."""
    if settings_path is not None:  # resume changes folder to the run's: read the file the user means
        if settings_path.exists() and not settings_path.is_file():  # (/dev/stdin, a pipe: resolved, a name of nothing)
            raise SettingsCliError(f"{one_line(settings_path)}: not a regular file; allowed: a settings file (YAML)")
        try:
            settings_path = settings_path.resolve()
        except (OSError, RuntimeError) as e:  # (RuntimeError: a symbolic link loop, before Python 3.13)
            why = e.strerror if isinstance(e, OSError) and e.strerror else "a symbolic link on its way loops"
            raise SettingsCliError(f"{one_line(settings_path)}: cannot read the settings file: {why}") from None
    settings_url = _settings_file_url(settings_path) if settings_path is not None else None
    home = home_from_ctx(ctx)
    progress = Progress()

    def load(path: Path) -> Pipeline:
        try:
            return load_pipeline(path)
        except SettingsCliError as e:  # (an older ELSPETH accepted them, or the file was edited)
            raise SettingsCliError(
                f"{e.format_message()}\nrun {run_id} cannot be resumed with these settings: fix them and resume with "
                f"`elspeth resume {run_id} -s FILE` (--force too if their text changed: it allows a changed input as "
                f"well), or end it with `elspeth abandon {run_id} --reason TEXT`"
            ) from e

    try:
        with database_from_ctx(ctx, settings_url=settings_url, existing=True) as db:
            _report(
                ctx,
                db,
                lambda: resume_run(
                    db,
                    run_id,
                    load,
                    force=force,
                    commit_every=commit_every,
                    progress=progress,
                    settings_path=settings_path,
                    home=home,
                    sending="process",
                ),
                _resume_command(ctx, settings_url, settings_path),
                progress,
            )
    finally:
        progress.close()


@click.command("abandon")
@click.argument("run_id")
@click.option("--reason", required=True, help="Why the run is not to go on (recorded in its log).")
@click.option("-s", "--settings", "settings_path", type=click.Path(path_type=Path),
              help="Settings file naming the run's signing key [the file the run was started with].")  # fmt: skip
@click.pass_context
def abandon_cmd(ctx: click.Context, run_id: str, reason: str, settings_path: Path | None) -> None:
    """End a failed, interrupted or crashed run for good: it can then not be resumed, its data
    ages out under `purge --older-than`, and new runs may append to its sink files."""
    from engine.abandon import abandon_run  # (not needed by the other commands of this module)
    from engine.operator_text import reason_problem

    # A reason that may not be recorded is a command line to fix (exit 2, as `purge` says it), and
    # said before any store is opened.
    problem = reason_problem(reason, "why the run is not to go on")
    if problem is not None:
        raise click.UsageError(problem)
    settings_url = _settings_file_url(settings_path) if settings_path is not None else None
    with database_from_ctx(ctx, settings_url=settings_url, existing=True) as db:
        done = abandon_run(db, run_id, reason, settings_path=settings_path, home=home_from_ctx(ctx))
    crashed = done.was in (RunState.RUNNING, RunState.DRAINING)
    was = "had crashed, its writer gone" if crashed else f"was {done.was}"
    click.echo(
        f"run {run_id} abandoned (it {was}); its log ends at {done.events} events, signed. It cannot be resumed; "
        "its data is now retention's (`elspeth purge --older-than`, with the key that signed it)."
    )
    for note in done.notes:
        say(f"elspeth: note: {note}")
