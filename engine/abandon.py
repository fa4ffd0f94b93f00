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
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from engine import signing
from engine.errors import ResumeRefused
from engine.orchestrator import changed_since_read, verified_to_write_on
from engine.settings import LandscapeSettings, SettingsError, load_settings
from landscape.db import Database
from landscape.fold import RunFold
from landscape.postgres import PostgresRecorder
from statecharts import events as ev
from statecharts.compiled import EVENT_MACHINE
from statecharts.machines import RUN_FINAL, RUN_OPEN, RunState

# A reason is read by people (`show`, `explain`, an export): a sentence or two, on one line.
MAX_REASON_CHARS = 1000


class AbandonRefused(ResumeRefused):
    """A run that cannot be abandoned (completed already, being written, a log that does not
    verify, ...); nothing was recorded."""


@dataclass(frozen=True)
class Abandoned:
    run_id: str
    was: str  # the run's status before: failed, interrupted, or running (its writer gone)
    events: int  # the log's length now
    unrecorded: list[tuple[str, Path, int]]  # sink, file, bytes after the run's durable position


def check_reason(reason: str) -> str:
    """The reason as recorded, or AbandonRefused saying what is allowed."""
    text = reason.strip()
    if not text:
        raise AbandonRefused("--reason: empty; allowed: a sentence saying why the run is not to go on")
    if len(text) > MAX_REASON_CHARS:
        raise AbandonRefused(f"--reason: {len(text):,} characters; allowed: at most {MAX_REASON_CHARS:,}")
    # Shown on investigators' terminals: an escape sequence could rewrite what they read, a
    # bidirectional override or a zero-width character hide or reorder it, a line separator
    # start a line that looks like another event's.
    hidden = [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    if hidden:
        raise AbandonRefused(
            f"--reason: holds U+{ord(hidden[0]):04X}, a control, format or line-separating character; allowed: one "
            "line of visible text"
        )
    if all(unicodedata.category(c).startswith(("Z", "M")) for c in text):
        raise AbandonRefused("--reason: nothing visible in it; allowed: a sentence saying why the run is not to go on")
    return text


def abandon_run(
    db: Database, run_id: str, reason: str, *, settings_path: Path | None = None, home: str | None = None
) -> Abandoned:
    """Record that the stopped run `run_id` is not to go on. Its log is verified first, as a
    resume's is, with the key of the settings it ran with (`settings_path`, else the file its log
    names, when it is still there; else the key ELSPETH_SIGNING_KEY or the home gives)."""
    reason = check_reason(reason)
    recorder = PostgresRecorder(db)
    if not recorder.run_exists(run_id):
        raise AbandonRefused(f"no run {run_id} in this audit store (see `elspeth runs`)")
    if recorder.writer_alive(run_id):
        raise AbandonRefused(
            f"run {run_id} is being written by another process right now; stop it first (Ctrl-C, or SIGTERM to "
            "its process: it is then recorded interrupted), then abandon it; nothing was recorded"
        )
    created = recorder.run_created(run_id)
    landscape, base = _landscape(run_id, created, settings_path)
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
    return Abandoned(run_id, was, fold.last_seq + 1, _unrecorded_bytes(fold))


def _landscape(run_id: str, created: ev.RunCreated | None, given: Path | None) -> tuple[LandscapeSettings, Path]:
    """The settings' key and witness folder, and the folder they are relative to: from the file
    given, else from the file the run was started with when it is still there (read before the
    log is verified, as a resume does: a wrong key fails the verification), else none."""
    if given is not None:
        return load_settings(given).settings.landscape, given.absolute().parent
    if created is not None:
        recorded = Path(created.working_dir) / created.settings_path
        if recorded.is_file():
            try:
                return load_settings(recorded).settings.landscape, recorded.parent
            except SettingsError as e:  # a file the user did not name: say which, and the way round
                raise AbandonRefused(
                    f"run {run_id}: the settings file it was started with cannot be read now, for the key that "
                    f"signs it ({e}); give the run's settings with -s FILE; nothing was recorded"
                ) from e
    return LandscapeSettings(), Path(created.working_dir if created is not None else ".").absolute()


def _unrecorded_bytes(fold: RunFold) -> list[tuple[str, Path, int]]:
    """Each sink file that still starts with what the run made durable (its recorded digest) and
    holds more: rows written after its last durability point, which no log records. They stay
    (a resume would have cut them off); said."""
    found = []
    for sink, location in fold.sink_locations.items():
        path = Path(fold.working_dir or ".") / location
        durable, digest = fold.sink_positions.get(sink, 0), fold.sink_digests.get(sink)
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size <= durable or digest is None:
                continue
            with path.open("rb") as f:
                h, left = hashlib.sha256(), durable
                while left > 0 and (block := f.read(min(left, 1 << 20))):
                    h.update(block)
                    left -= len(block)
        except (OSError, ValueError):  # gone, unreadable, a location that is no path
            continue
        if h.hexdigest() == digest:
            found.append((sink, path, st.st_size - durable))
    return found
