"""Ending a stopped run for good: `elspeth abandon RUN_ID --reason TEXT`.

A failed, interrupted or crashed run stays resumable, and so it holds on to what a resume
needs: its payloads are kept from retention (`purge`), and a new run may not append to its sink
files. Some runs can never go on (an input that is gone, rows purged with --force) and some
should not; abandoning one records the operator's reason as the run's last event, in a commit
signed as every other, and the run is then final: nothing may follow in its log, and a resume
is refused. What it had in flight stays unfinished in the log, as it was.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine import signing
from engine.errors import ResumeRefused
from engine.operator_text import reason_problem
from engine.orchestrator import changed_since_read, verified_to_write_on
from engine.settings import LandscapeSettings, SettingsError, load_settings
from landscape.commits import holding, writes
from landscape.db import Database
from landscape.fold import RunFold
from landscape.postgres import PostgresRecorder
from landscape.queries import run_summary
from landscape.visible import one_line
from statecharts import events as ev
from statecharts.compiled import EVENT_MACHINE
from statecharts.machines import RUN_FINAL, RUN_OPEN, RunState

# A reason is read by people (`show`, `explain`, an export): a sentence or two, on one line.


class AbandonRefused(ResumeRefused):
    """A run that cannot be abandoned (completed already, being written, a log that does not
    verify, ...); nothing was recorded."""


@dataclass(frozen=True)
class Abandoned:
    run_id: str
    was: str  # the run's status before: failed, interrupted, or running (its writer gone)
    events: int  # the log's length now
    notes: list[str]  # what its sinks hold that its log does not say (`_left_behind`)


def check_reason(reason: str) -> str:
    """The reason as recorded, or AbandonRefused saying what is allowed."""
    problem = reason_problem(reason, "why the run is not to go on")
    if problem is not None:
        raise AbandonRefused(problem)
    return reason.strip()


def abandon_run(
    db: Database, run_id: str, reason: str, *, settings_path: Path | None = None, home: str | None = None
) -> Abandoned:
    """Record that the stopped run `run_id` is not to go on. Its log is verified first, as a
    resume's is, with the key of the settings it ran with (`settings_path`, else the file its log
    names, when it is still there; else the key ELSPETH_SIGNING_KEY or the home gives)."""
    reason = check_reason(reason)
    recorder = PostgresRecorder(db)
    if not recorder.run_exists(run_id):
        raise AbandonRefused(f"no run {one_line(run_id)} in {db.describe()} (see `elspeth runs`; another --home?)")
    holder = recorder.lock_holder(run_id)
    if holder is not None and writes(holder):
        raise AbandonRefused(
            f"run {run_id} is {holding(holder)}; stop it first (Ctrl-C, or SIGTERM to its process: it is then "
            "recorded interrupted), then abandon it; nothing was recorded"
        )
    if holder is not None:
        raise AbandonRefused(f"run {run_id} is {holding(holder)}; abandon it once that has ended; nothing was recorded")
    # A quick answer for the common mistake, as the store says it (the log decides below).
    summary = run_summary(db, run_id)
    if summary is not None and summary.status in RUN_FINAL:
        raise AbandonRefused(
            f"run {run_id} is {summary.status} already, as the runs table says; nothing was recorded (if that is "
            f"doubted: `elspeth replay {run_id} --check` compares it with the log, and `elspeth projections rebuild "
            f"{run_id}` puts a changed table right)"
        )
    created = recorder.run_created(run_id)
    # The settings file the run last went on under (a resume may have named another), as resume reads it.
    recorded = summary.settings_path if summary is not None else created.settings_path if created else None
    folder = recorder.working_dir(run_id) if created is not None else None
    landscape, base = _landscape(run_id, folder, recorded, settings_path)
    verified = verified_to_write_on(db, recorder, run_id, created, landscape.signing_key, landscape.witness_dir,
                                    base, home, "abandoned")  # fmt: skip
    fold = verified.fold
    if fold.status in RUN_FINAL:
        raise AbandonRefused(f"run {run_id} is {fold.status} already; nothing was recorded")
    if fold.status not in {*RUN_OPEN, RunState.FAILED, RunState.INTERRUPTED}:
        raise AbandonRefused(f"run {run_id} is {fold.status}: it never started; nothing was recorded")
    was = str(fold.status)
    notary = signing.notary(recorder, home, key=landscape.signing_key, witness=landscape.witness_dir, base=base)
    writer = recorder.open_writer(run_id, notary=notary, verified=(verified.tree, verified.head))
    try:
        problem = changed_since_read(db, run_id, fold, writer.next_seq)
        if problem:
            raise AbandonRefused(problem)
        ending: list[ev.EventBase] = [ev.RunAbandoned(reason=reason)]
        if fold.status in RUN_OPEN:
            # Its writer died (we hold its lock now): said first, as a resume says it.
            ending.insert(0, ev.RunInterrupted(reason="writer lost"))
        for event in ending:
            fold.apply(writer.next_seq, run_id, event)  # the run's machine allows it, or nothing is written
            writer.append(EVENT_MACHINE[type(event).__name__], run_id, event)
        writer.commit(wait=True)
    finally:
        writer.close()
    return Abandoned(
        run_id, was, fold.last_seq + 1, _left_behind(fold, recorder.flushed_since(run_id, its_last_flush=True))
    )


def _landscape(
    run_id: str, folder: str | None, settings_path: str | None, given: Path | None
) -> tuple[LandscapeSettings, Path]:
    """The settings' key and witness folder, and the folder they are relative to: from the file
    given, else from the run's settings file (`settings_path`, relative to the folder it ran in)
    when it is still there (read before the log is verified, as a resume does: a wrong key fails
    the verification), else none."""
    if given is not None:
        return load_settings(given).settings.landscape, given.absolute().parent
    if folder is not None and settings_path is not None:
        recorded = Path(folder) / settings_path
        if recorded.is_file():
            try:
                return load_settings(recorded).settings.landscape, recorded.parent
            except SettingsError as e:  # a file the user did not name: say which, and the way round
                raise AbandonRefused(
                    f"run {run_id}: the settings file it was started with cannot be read now, for the key that "
                    f"signs it ({e}); give the run's settings with -s FILE; nothing was recorded"
                ) from e
    return LandscapeSettings(), Path(folder if folder is not None else ".").absolute()


def _left_behind(fold: RunFold, later: Sequence[tuple[str, str, str]] = ()) -> list[str]:
    """What the run's sinks hold beyond what its log says, one line each. A resume would have cut
    it off (and closed a JSON array); abandoning leaves the outputs as they are, and says so:
    - a file that still starts with what the run made durable (its recorded digest) and holds
      more: rows written after its last durability point, which no log records;
    - a JSON array the run never closed (a new run refuses to append to it);
    - a database table: its rows past the durable position are not looked for here;
    - a file that no longer starts with what the run made durable: replaced or changed since;
    - a file that is gone, where the run made bytes durable: moved or deleted since."""
    notes = []
    for sink, location in fold.sink_locations.items():
        plugin = _plugin_of(fold, sink)
        durable = fold.sink_positions.get(sink, 0)
        if plugin == "database":
            notes.append(
                f"sink '{sink}' ({location}): a database table; rows written to it after the run's last durability "
                f"point (its {durable} rows) are not looked for here and stay: they are those its "
                f"elspeth_sink_tokens lists for this run with a sink_position above {durable}"
            )
            continue
        path = Path(fold.working_dir or ".") / location
        other = next((r for r, loc, wd in later if _same_file(Path(wd) / loc, path)), None)
        if other is not None:  # (a rerun since its crash: the bytes there are that run's, not its crash's)
            notes.append(f"sink '{sink}': {path} was written by run {other} since this run's last flush: what it holds "
                         "is that run's output")  # fmt: skip
            continue
        if durable > 0 and not os.path.exists(path):  # (a new user's review: said of `show`, not here)
            notes.append(
                f"sink '{sink}': {path} is gone (moved or deleted since): the {durable:,} bytes the run made durable "
                "there, which its log records as its output, are not on disk"
            )
            continue
        ours, extra, ends = _past_durable(path, durable, fold.sink_digests.get(sink))
        if ours is False:
            notes.append(
                f"sink '{sink}': {path} no longer starts with the {durable:,} bytes the run made durable (replaced or "
                "changed since): it is not the run's output as its log records it"
            )
        if extra and durable == 0:
            # (No bytes of the file are the run's by its log: the digest of none is every file's.)
            notes.append(
                f"sink '{sink}': {path} holds {extra:,} bytes, and the run made none durable there: they may be rows it "
                "wrote before its first durability point, or another file put there since; its log ties none of them "
                "to it, so nothing refuses them. Look before a run appends to the file or reads it"
            )
        elif extra:
            notes.append(
                f"sink '{sink}': {path} holds {extra:,} bytes after what the run made durable: rows it wrote after "
                "its last durability point, which its log does not record. They stay; remove them if they should not "
                f"(`truncate -s {durable} -- {shlex.quote(str(path))}`): a new run appending to the file, or reading it, refuses to "
                "while they are there"
            )
        if ours and plugin == "json" and ends[:1] == b"[" and ends[-1:] != b"]":
            notes.append(
                f"sink '{sink}': {path} is a JSON array the run never closed (no final ']'): as it is, it is no valid "
                "JSON, and a new run refuses to append to it; close it or move it aside"
            )
    return notes


def _plugin_of(fold: RunFold, sink: str) -> str | None:
    sinks = fold.settings.get("sinks")
    options = sinks.get(sink) if isinstance(sinks, dict) else None
    plugin = options.get("plugin") if isinstance(options, dict) else None
    return plugin if isinstance(plugin, str) else None


def _past_durable(path: Path, durable: int, digest: str | None) -> tuple[bool | None, int, bytes]:
    """Whether the regular file at `path` starts with the `durable` bytes the run made durable
    (their sha256 is `digest`; None: no such file, or nothing to compare with), how many bytes
    it holds after them, and its first and last bytes that are not white space."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or digest is None:
            return None, 0, b""
        if st.st_size < durable:
            return False, 0, b""
        with path.open("rb") as f:
            head = f.read(4096).lstrip()[:1]
            f.seek(0)
            h, left = hashlib.sha256(), durable
            while left > 0 and (block := f.read(min(left, 1 << 20))):
                h.update(block)
                left -= len(block)
            f.seek(max(0, st.st_size - 4096))
            ends = head + f.read().rstrip()[-1:]
    except (OSError, ValueError):  # gone, unreadable, a location that is no path
        return None, 0, b""
    ours = h.hexdigest() == digest
    return ours, st.st_size - durable if ours else 0, ends


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
