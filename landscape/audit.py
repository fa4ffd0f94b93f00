"""Offline verification of an export file or a proof bundle: what `elspeth verify` runs. A pure
function of the file, a public key and (optionally) a checkpoint the auditor kept; no database,
no settings, no driver. docs/verification.md says what each check proves.

Every failure is an AuditFailure naming the file, the line (or event) and what is wrong; the
first one found ends the check.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from landscape.canonical import is_name
from landscape.chain import event_hash
from landscape.chain_half import SPLIT_AT, ChainHalf
from landscape.checkpoint import EMPTY_LOG, Checkpoint, CheckpointError, open_checkpoint, parse_run_origin
from landscape.errors import LandscapeError, quoted
from landscape.export import (
    DECISION_MACHINES,
    FORMAT,
    PROOF_TYPE,
    BadLine,
    CheckpointRecord,
    End,
    ErasedRecord,
    EventRecord,
    ExportError,
    Header,
    PayloadRecord,
    ProofBundle,
    Record,
    SealProof,
    SealRecord,
    decision_named,
    decode_bundle,
    read_events,
    read_records,
)
from landscape.files import NotASmallFile, read_small_file
from landscape.fold import RunFold
from landscape.merkle import ProofError, consistency_proof, leaf_hash, verify_consistency, verify_inclusion
from landscape.note import NoteError, Verifier, parse_note
from landscape.records import Payload, StoredEvent
from landscape.seal import open_seal, origin_for, why_not_sealed
from landscape.verify import (
    Verification,
    check_body,
    check_chain,
    check_events,
    events_span,
    joined,
    payload_matches,
    row_hashes,
    verify_events,
)
from landscape.visible import one_line
from landscape.wiring import Wirings, off_the_wiring
from statecharts import events as ev
from statecharts.compiled import BATCH, COALESCE, EVENT_MACHINE, TOKEN, InvalidTransition
from statecharts.errors import StatechartError
from statecharts.machines import INITIAL, RUN_FINAL, TOKEN_OUTCOME_OF

# A proof bundle is read whole; one larger than this is not one ELSPETH made for a row.
MAX_BUNDLE_BYTES = 256 * 1024 * 1024


class AuditFailure(LandscapeError):
    """The file does not verify, or cannot be read; the message names where and why, in one line.
    It quotes what the file says (a run id, an origin), so a line break the file holds is shown as
    `\\n`: printed as one, it would put a line of the file's author's under the verifier's."""

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


@dataclass(frozen=True, slots=True)
class ExportReport:
    run_id: str
    key: str
    events: int
    root: bytes
    checkpoints: int
    payloads_included: bool
    payloads: int
    erased: int
    extends: int | None  # the size of the kept checkpoint the export was proved to extend
    # The run's state where the log ends. Not completed or abandoned (`ended`): the run was still
    # going when exported or was resumed after (failed, interrupted), or the file was cut back to
    # an earlier signed checkpoint (each checkpoint is in it, and the end of the file is not
    # signed); only a kept checkpoint tells.
    status: str
    ended: bool
    unsigned: int = 0  # erasure records signed by nothing, taken on the store's word (`unsigned_erasures`)
    # Erasure records that a seal of this run in the export signs, though the export holds no record
    # of that digest: a file made from the store holds each payload's record, so these are
    # erasures left out of it (or a payload erased twice, whose first record it holds).
    unshown: int = 0
    # Each sink's last durable flush in the signed log: its location, its position (bytes) and
    # the sha256 of the file's bytes up to there (None: recorded before logs held it).
    sinks: dict[str, SinkEnd] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SinkEnd:
    location: str
    position: int
    sha256: str | None
    # The sink as the run's settings last declared it ({plugin, options}, redacted; None: not a
    # mapping): what it writes as it closes follows from these (`elspeth verify --sink-file`).
    declared: dict[str, Any] | None = None
    # Where the run's output begins: the bytes its file held when the run first opened the sink
    # (an append-mode file's earlier rows; the sink's first flush in the log).
    start: int = 0


@dataclass(frozen=True, slots=True)
class ProofReport:
    run_id: str
    key: str
    subject: str
    events: int
    size: int
    root: bytes
    payloads_included: bool
    payloads: int
    erased: int
    # Tokens of the bundle without their end event in it, and tokens its events name (a parent,
    # a child, what a branch merged into) without any event in it: a bundle proves that the
    # events it holds are in the signed log, not that it holds all of them (an export does).
    unended: int
    extends: int | None  # the size of the kept checkpoint the bundle was proved to extend
    unsigned: int = 0  # erasure records signed by nothing, taken on the store's word (`unsigned_erasures`)
    absent: int = 0
    # Tokens created in the bundle whose events there do not follow one another (`_left_out`).
    skipping: int = 0
    row: bool = False  # a row's bundle (else one event's)
    # A row's bundle with the run's settings (format 3): steps were held to the settings' wiring.
    wiring: bool = False
    # A row's bundle with its decisions (format 4): the coalesces, batches and sink flushes it
    # holds, and how many of those its tokens' events call for are not whole in it (`_decisions`).
    decisions: bool = False
    decided: tuple[int, int, int] = (0, 0, 0)  # coalesces, batches, sink flushes
    undecided: int = 0


def _sink_ends(fold: RunFold) -> dict[str, SinkEnd]:
    sinks = fold.settings.get("sinks")
    declared = sinks if isinstance(sinks, dict) else {}
    return {
        name: SinkEnd(
            fold.sink_locations.get(name, ""),
            position,
            fold.sink_digests.get(name),
            declared[name] if isinstance(declared.get(name), dict) else None,
            fold.sink_starts.get(name, 0),
        )
        for name, position in fold.sink_positions.items()
    }


def sniff(path: Path) -> str:
    """`export` or `proof`: which kind of file this is. An export's first line is its header
    record, byte for byte as ELSPETH writes it. A bundle is one JSON document naming its type
    (ELSPETH writes it indented, type first; it may have been reformatted since, its keys in
    another order, the type last, its characters spelled as JSON escapes): any other file that
    names that type is read as a bundle, whose reader says what is wrong with it, and the rest as
    an export, whose reader says the same."""
    try:
        with _open_regular(path) as f:
            start = f.read(len(_EXPORT_START))
            if start == _EXPORT_START:
                return "export"
            # (in chunks, up to the most a bundle may hold: a string holding the marker spells its
            # quotes escaped, so only a key or a value can be it)
            seen, tail = len(start), start
            while chunk := f.read(1 << 20):
                if _PROOF_MARKER.search(tail + chunk):
                    return "proof"
                seen += len(chunk)
                if seen > MAX_BUNDLE_BYTES:
                    break
                tail = (tail + chunk)[-_PROOF_MARKER_MOST:]
            return "proof" if _PROOF_MARKER.search(tail) else "export"
    except OSError as e:
        raise AuditFailure(f"{path}: cannot read it: {e.strerror}") from None


def _spelled(text: str) -> re.Pattern[bytes]:
    """`text` as a JSON string in quotes, each character as itself or as a `\\uXXXX` escape
    (JSON's other escapes spell no letter, digit or '-'). A bundle spelling its type so was
    taken for an export, and refused as not being one (a review)."""
    return re.compile(b'"' + b"".join(b"(?:%s|\\\\u(?i:%04x))" % (re.escape(c.encode()), ord(c)) for c in text) + b'"')


_PROOF_MARKER = _spelled(PROOF_TYPE)
_PROOF_MARKER_MOST = 2 + 6 * len(PROOF_TYPE)  # the longest spelling, every character escaped


_EXPORT_START = b'{"type":"elspeth-export"'


def _open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading when it is a regular file; AuditFailure when it is not (a FIFO is
    not waited on: one swapped in after `sniff` looked would hang `verify`)."""
    f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
    try:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise AuditFailure(f"{path}: not a regular file; allowed: an export or a proof bundle")
    except BaseException:
        f.close()
        raise
    return f


def check_sink_file(
    report: ExportReport,
    name: str,
    path: Path,
    *,
    closing: bytes | None = b"",
    later: bool = False,
    earlier: bool = False,
) -> str:
    """Whether the file at `path` is what sink `name` of the verified export's run wrote: its first
    bytes, up to the sink's last durable position, hash to the sha256 the signed log records
    there, they begin where the run began writing (the sink's first flush: what the file held
    then, an append-mode file's earlier rows, the run did not write), and nothing follows but what
    the sink writes as the run completes (`closing`: a JSON array's closing bracket; None:
    unknown, not a built-in file sink). A line saying so, or AuditFailure saying why not.
    `earlier`: bytes before the run's output (an earlier run's, appended to) may be there, and
    `later`: bytes the log does not account for may follow (another run appending to the file);
    each is counted in the line instead. A database sink has no file to tie."""
    end = report.sinks.get(name)
    if end is None:
        known = ", ".join(sorted(report.sinks)) or "none"
        raise AuditFailure(f"--sink-file {name}: the run made nothing durable in a sink of that name (its sinks "
                           f"with durable output: {known})")  # fmt: skip
    if end.sha256 is None:
        raise AuditFailure(f"--sink-file {name}: the run's log records no digest of that sink's output (a database "
                           "table, or a flush recorded before logs held one): no file can be tied to it")  # fmt: skip
    what = f"sink '{name}' (written as {one_line(end.location)})"  # (the key holder's text: one line of ours)
    if not 0 <= end.start <= end.position:
        raise AuditFailure(f"--sink-file {name}: the run's log has the sink's output begin at byte {end.start}, and "
                           f"its last durable position at {end.position}: no file can be tied to that")  # fmt: skip
    # What the sink wrote after its last durable flush: its closing text, written only as the run
    # completes (a run that failed or was abandoned closed no sink; nor has one still running),
    # and only after bytes of its own: a sink that made none durable never opened its file, and
    # its close writes nothing (no file, or an empty one, is its output; a review).
    completed = report.status == "completed"
    if end.position == 0:
        closing = b""
    expected = (closing or b"") if completed else b""
    try:
        with _open_regular(path) as f:
            digest, read = hashlib.sha256(), 0
            while read < end.position and (chunk := f.read(min(1 << 20, end.position - read))):
                digest.update(chunk)
                read += len(chunk)
            after = f.read(len(closing or b"") + 1)  # enough to tell its closing text
            size = os.fstat(f.fileno()).st_size
    except AuditFailure:
        raise AuditFailure(f"--sink-file {name}: {path} is not a regular file") from None
    except FileNotFoundError:
        if end.position == 0:
            return f"{path}: no such file, and {what} made no bytes durable: nothing to tie"
        raise AuditFailure(f"--sink-file {name}: {path} does not exist; the run made {end.position} bytes "
                           "durable there") from None  # fmt: skip
    except OSError as e:
        raise AuditFailure(f"--sink-file {name}: cannot read {path}: {e.strerror}") from None
    if end.position == 0 and size > 0:  # (the digest of no bytes is every file's: nothing ties it)
        raise AuditFailure(f"{path} is not the output of {what}: the run made no bytes durable there, and the file "
                           f"holds {size}")  # fmt: skip
    if read < end.position:
        raise AuditFailure(f"{path} is not the output of {what}: it holds {read} bytes, and the run made "
                           f"{end.position} durable (cut, or another file)")  # fmt: skip
    if digest.hexdigest() != end.sha256:
        raise AuditFailure(f"{path} is not the output of {what}: its first {end.position} bytes do not hash to "
                           f"the sha256 the run's signed log records ({end.sha256[:16]}…): changed since, or "
                           "another file")  # fmt: skip
    # The file's bytes up to the last durable position are tied; those before the run's first
    # flush were in the file already when the run opened it: not its output, whatever they say.
    before = (f"the {end.start} bytes the file held before the run wrote to it (an earlier run's output, appended "
              "to, or whatever was there: the signed log records the sink opening on them)")  # fmt: skip
    if end.start and not earlier:
        ours = (f"bytes {end.start} to {end.position - 1} are" if end.position > end.start
                else "none of its bytes is: the run wrote none")  # fmt: skip
        raise AuditFailure(f"{path} is not the output of {what} alone: {ours}, as the signed log records them; "
                           f"it begins with {before}; if the file may hold an earlier run's output, "
                           "--allow-earlier-bytes accepts that")  # fmt: skip
    if end.start:
        span = f"bytes {end.start} to {end.position - 1}" if end.position > end.start else "no bytes"
        ours = f"{span}, as the signed log records them, after {before}, allowed by --allow-earlier-bytes"
        signed = (f"{span} are the output of {what}, as the signed log records them, after {before}, allowed "
                  "by --allow-earlier-bytes")  # fmt: skip
    else:
        ours = f"all {end.position} bytes, as the signed log records them"
        signed = f"its first {end.position} bytes are the output of {what}, as the signed log records them"
    if after == expected and size == end.position + len(expected):
        if expected:
            return (f"{path}: the output of {what}, whole: {ours}, then the {len(expected)} that close it, which "
                    f"its sink writes as the run completes ({_shown(expected)})")  # fmt: skip
        if closing and not completed:
            return (f"{path}: the output of {what}, {ours}; the log ends the run {report.status}, and only a run "
                    f"that completes closes its sinks, so the file lacks the {_shown(closing)} its sink writes then "
                    "(a JSON array without its ']')")  # fmt: skip
        return f"{path}: the output of {what}, {ours}"
    extra = size - end.position
    if completed and closing is None:
        why = ("the run completed, and what its sink's plugin writes as it closes is unknown here (not a built-in "
               "file sink, or its recorded options do not build one)")  # fmt: skip
    elif completed and closing and closing.startswith(after):
        why = (f"the run completed, and its sink then wrote {_shown(closing)} as it closed, of which the file holds "
               f"only {extra} bytes (cut after the run?)")  # fmt: skip
    elif completed and closing:
        why = (f"the run completed, and after that position its sink wrote only {_shown(closing)} as it closed, "
               f"where the file holds {extra} bytes{' that are not those' if extra else ''}: rows added before the "
               "closing text? (a later run appending to the array rewrites it too)")  # fmt: skip
    elif completed:
        why = f"{extra} bytes follow, which the run's log does not account for (another run appending?)"
    elif closing and after == closing and size == end.position + len(closing):
        why = (f"the {extra} bytes that follow are what its sink writes as the run completes ({_shown(closing)}), "
               f"and the log ends the run {report.status}: written by a run that failed as it closed its sinks "
               "(one after this one failed to close), or added since")  # fmt: skip
    else:
        why = (f"{extra} bytes follow, which the run's log does not account for: it ends the run {report.status}, "
               "which closes no sink (what a crash left after the last flush, another run appending, or this run "
               "going on after the export)")  # fmt: skip
    if later:
        return f"{path}: {signed}; {why}; allowed by --allow-later-bytes"
    if not end.start:
        tied = f"its first {end.position} bytes are"
    elif end.position > end.start:
        tied = f"bytes {end.start} to {end.position - 1} are"
    else:  # (not "bytes 1 to 0 are", a review)
        tied = f"the run wrote none of its bytes (its first {end.start} are the file's before the run)"
    raise AuditFailure(f"{path} is not the output of {what} alone: {tied}, as the signed log records them, "
                       f"but {why}; if a later run may have appended to the file, --allow-later-bytes accepts "
                       "that")  # fmt: skip


def _shown(data: bytes) -> str:
    """Bytes as an auditor reads them: text with its line breaks escaped, else hex."""
    try:
        return repr(data.decode("utf-8"))
    except UnicodeDecodeError:
        return data.hex()


# A checkpoint note is a few lines, with a signature or a few: anything this large is none.
_NOTE_LIMIT = 64 * 1024


def read_kept_checkpoint(path: Path, key: Verifier) -> Checkpoint:
    """A checkpoint note the auditor kept (`elspeth checkpoint`), signed by `key`."""
    try:
        note = read_small_file(path, _NOTE_LIMIT)
    except NotASmallFile as e:
        raise AuditFailure(f"checkpoint {path}: {e}; allowed: a checkpoint `elspeth checkpoint` wrote") from None
    except OSError as e:
        raise AuditFailure(f"checkpoint {path}: cannot read it: {e.strerror}") from None
    try:
        kept = open_checkpoint(note, key)
    except NoteError as e:
        raise AuditFailure(f"checkpoint {path}: {e}") from None
    if kept.size == 0:
        # Every log extends an empty one: checked against it, a rewritten history passed unseen,
        # and a faithful one was said to be rewritten (no consistency proof starts from nothing).
        raise AuditFailure(f"checkpoint {path}: it {EMPTY_LOG}; allowed: a checkpoint `elspeth checkpoint` wrote")
    return kept


# -- the export ------------------------------------------------------------------------------------


def verify_export(
    path: Path,
    key: Verifier,
    *,
    kept: Checkpoint | None = None,
    kept_name: str = "",
    run_id: str | None = None,
    unsigned_erasures: bool = False,
    split_at: int = SPLIT_AT,
) -> ExportReport:
    """Check an export (see docs/verification.md). `unsigned_erasures`: an erasure record that no
    seal signs (one from before purge signed them) is taken on the store's word, and counted.

    First the signatures cover the events (`_ExportCheck.signed`, no event body decoded), then
    everything else is checked with the bodies decoded and folded.

    An export whose newest checkpoint signs at least `split_at` events is checked by two
    processes, as the store's log is (`landscape.chain_half`): this one reads the file, checks its
    records and folds the events, a second checks the chain. When either finds anything, or the
    second could not do its half, one pass over the file again (`verify_events`) says what, in
    exactly the words it always did: the halves meet a bad line in another order than one pass."""
    try:
        with _open_regular(path) as f:
            _ExportCheck(path, key, kept, kept_name, run_id, unsigned_erasures, split_at).signed(f)
            f.seek(0)
            try:
                return _ExportCheck(path, key, kept, kept_name, run_id, unsigned_erasures, split_at).run(
                    read_records(f)
                )
            except _OnePass:
                pass  # (the pass below runs outside this handler, whose traceback holds the first pass's memory)
            f.seek(0)  # the same open file again, not whatever the path names by now
            return _ExportCheck(path, key, kept, kept_name, run_id, unsigned_erasures, None).run(read_records(f))
    except BadLine as e:
        raise AuditFailure(f"{path}, {e}") from None
    except OSError as e:
        raise AuditFailure(f"{path}: cannot read it: {e.strerror}") from None


# What the order of an export's records may not be, as both passes say it.
_EVENT_AFTER_SEAL = "an event after a seal record (the seals come after the last event)"
_CHECKPOINT_AMONG_EVENTS = "a checkpoint record among the events (checkpoints come right after the header)"
_SECOND_HEADER = "a second header"
_AFTER_END = "a line after the end record"


class _Recheck(Exception):
    """The fast first pass found something, or could not be made: the thorough one is to say what."""


class _OnePass(Exception):
    """The two halves found something, or could not be joined: one pass is to say what."""


class _ExportCheck:
    """One pass over an export's records. Memory: the checkpoints, the set of row payloads
    referenced so far (the payload check needs it) and, with a kept checkpoint, 32 bytes per
    event (the leaves its consistency proof is computed from)."""

    def __init__(
        self,
        path: Path,
        key: Verifier,
        kept: Checkpoint | None,
        kept_name: str,
        run_id: str | None,
        unsigned_erasures: bool,
        split_at: int | None,
    ) -> None:
        self.path, self.key, self.kept, self.kept_name, self.run_id = path, key, kept, kept_name, run_id
        self.unsigned_erasures, self.split_at = unsigned_erasures, split_at
        self.header: Header | None = None
        self.checkpoints: list[tuple[int, int, bytes]] = []  # (line, size, root)
        self.seen: set[bytes] = set()
        # Row payloads the last event referenced first, whose records must follow it.
        self.expected: deque[tuple[str, int]] = deque()  # (hash, seq)
        self.event_line = 0
        self.event_seq = -1
        self.lines_of: dict[int, int] = {}  # seq -> line, for the few seqs a message may name
        self.leaves = bytearray()
        self.counts = {"events": 0, "payloads": 0, "erased": 0}
        self.end: tuple[int, End] | None = None
        # Erasure records: digest -> line, until a seal line proves them; the seals' digests
        # proved so far (`landscape.seal`).
        self.unsealed: dict[bytes, int] = {}
        self.sealed: set[bytes] = set()
        self.seals = 0
        self.seal_texts: set[str] = set()  # what each seal read signs
        self.run_sealed: set[bytes] = set()  # the digests signed by seals of this run's own origin

    def fail(self, line: int, why: str) -> AuditFailure:
        return AuditFailure(f"{self.path}, line {line}: {why}")

    def signed(self, f: BinaryIO) -> None:
        """The first pass: the header and the checkpoints' signatures, then that the events are
        one chain whose tree has each checkpoint's root, all present and all covered, without
        decoding any event body. A chain is anyone's to compute, and a forged body may decode to
        forty times its size: `run`, after this, decodes only events a signature covers.

        Read fast first: the chain checked by a second process (`ChainHalf`) on a long export,
        the lines of payloads, erasures and seals passed over (`read_events`). When that finds
        anything, or the second process gives no answer, the pass is made again here, every
        line read and checked in file order, to say what in the words `run` would use (for a
        file with more than one fault, the first in this pass's order). One line at a time."""
        try:
            self._signed(f, thorough=False)
            return
        except _Recheck:
            pass
        f.seek(0)  # (the same open file, not whatever the path names by now)
        _ExportCheck(self.path, self.key, None, "", self.run_id, False, None)._signed(f, thorough=True)

    def _signed(self, f: BinaryIO, *, thorough: bool) -> None:
        records = read_records(f)
        number, first = next(records, (1, None))
        if not isinstance(first, Header):
            raise self.fail(number, "this is not an ELSPETH export (no header)")
        header = self._check_header(first)
        rest: Iterator[tuple[int, Record]] = iter(())
        for number, record in records:
            if not isinstance(record, CheckpointRecord):
                rest = _prepend((number, record), records if thorough else read_events(f, number))
                break
            self._check_checkpoint(number, record)
        if not self.checkpoints:
            return  # (`run` says so, reading no event)
        try:
            self._chained(header.run_id, rest, thorough)
        except (AuditFailure, BadLine):
            if thorough:
                raise
            raise _Recheck from None

    def _chained(self, run_id: str, rest: Iterator[tuple[int, Record]], thorough: bool) -> None:
        """The events of `rest` are one chain whose tree has each checkpoint's root, all present
        and all covered; the file has its end record."""
        final = self.checkpoints[-1][1]
        line = seq = uncovered = 0  # the last event's line and seq; the line of seq `final`
        ended = False

        def events() -> Iterator[StoredEvent]:
            nonlocal line, seq, uncovered, ended
            for number, record in rest:
                if isinstance(record, EventRecord):
                    if thorough and self.seals:
                        raise self.fail(number, _EVENT_AFTER_SEAL)
                    line, seq = number, record.seq
                    self.counts["events"] += 1
                    if seq == final and not uncovered:
                        uncovered = number
                    yield record.stored()
                elif isinstance(record, End):
                    ended = True
                    if thorough:  # (what `run` checks of the records' order and counts, no body read)
                        self._check_end(number, record)
                        for after, _record in rest:
                            raise self.fail(after, _AFTER_END)
                        return
                elif thorough:
                    self._counted(number, record)

        sizes = [size for _, size, _ in self.checkpoints]
        if not thorough and self.split_at is not None and final >= self.split_at:
            try:
                with ChainHalf(run_id, sizes) as half:
                    for _ in half.tap(events(), weigh=True):
                        pass
                    chain = half.result()
            except Exception:
                chain = None
            if chain is None:
                raise _Recheck
        else:
            chain = check_chain(run_id, events(), roots_at=sizes)
        if chain.bad:  # (named by the seq expected when it is missing, as `verify_events` names it)
            raise self.fail(line, f"event seq {min(seq, chain.events)}: {chain.why}")
        if not ended:
            raise AuditFailure(f"{self.path}: the file ends without its end record: it was cut short")
        if chain.events == 0:
            return  # (`run` says so)
        self._held_to_checkpoints(chain.events, chain.roots, uncovered)

    def _held_to_checkpoints(self, events: int, roots: dict[int, bytes], uncovered: int) -> None:
        """The log of `events` events, whose tree had `roots` at the checkpoints' sizes, is the one
        each checkpoint signs: none larger than the log, each root its own, no event after the
        newest (whose first is on line `uncovered`)."""
        for line, size, root in self.checkpoints:
            if size > events:
                raise self.fail(
                    line, f"{events_span(events, size - 1)} missing: this checkpoint was signed over {size} events"
                )
            if roots.get(size) != root:
                raise self.fail(line, f"the first {size} events do not hash to the root of this checkpoint of {size}")
        final_line, final, _root = self.checkpoints[-1]
        if events > final:
            raise self.fail(
                uncovered,
                f"{events_span(final, events - 1)} not covered by any signed checkpoint "
                f"(the newest, line {final_line}, covers {final})",
            )

    def run(self, records: Iterator[tuple[int, Record]]) -> ExportReport:
        number, first = next(records, (1, None))
        if not isinstance(first, Header):
            raise self.fail(number, "this is not an ELSPETH export (no header)")
        header = self._check_header(first)
        pending: tuple[int, Record] | None = None
        for number, record in records:
            if not isinstance(record, CheckpointRecord):
                pending = (number, record)
                break
            self._check_checkpoint(number, record)
        if not self.checkpoints:
            raise self.fail(pending[0] if pending else 2, "the export holds no signed checkpoint")
        sizes = [size for _line, size, _root in self.checkpoints]
        _line, final, final_root = self.checkpoints[-1]
        self.lines_of = {final: 0}
        events = self._events(pending, records)
        if self.split_at is not None and final >= self.split_at:
            verified = self._in_two_halves(header.run_id, events, sizes)
        else:
            verified = verify_events(header.run_id, events, observe=self._observe, roots_at=sizes, references=False)
        if verified.bad is not None:
            raise self.fail(self.event_line, f"event seq {verified.bad.seq}: {verified.bad.why}")
        if verified.events == 0:
            raise self.fail(self.end[0] if self.end else 2, "the export holds no event")
        self._held_to_checkpoints(verified.events, verified.roots, self.lines_of.get(final, 0))
        unsigned = 0
        for digest, line in self.unsealed.items():
            if digest not in self.sealed and self.unsigned_erasures:
                unsigned += 1
            elif digest not in self.sealed:
                raise self.fail(
                    line,
                    f"this erasure record is signed by no seal of {self.key.label} in the export: it does not "
                    "explain why the payload is gone (a record written before purge signed its records, or by someone "
                    "who could write to the store but not sign; --unsigned-erasures takes such records on the store's word)",
                )
        extends = self._check_kept(final, final_root) if self.kept is not None else None
        unshown = len(self.run_sealed - self.unsealed.keys())
        return ExportReport(
            run_id=header.run_id, key=self.key.label, events=verified.events, root=final_root,
            checkpoints=len(self.checkpoints), payloads_included=header.payloads,
            payloads=self.counts["payloads"], erased=self.counts["erased"], extends=extends,
            status=str(verified.fold.status), ended=verified.fold.status in RUN_FINAL, unsigned=unsigned,
            unshown=unshown, sinks=_sink_ends(verified.fold),
        )  # fmt: skip

    def _in_two_halves(self, run_id: str, events: Iterator[StoredEvent], sizes: list[int]) -> Verification:
        """`verify_events` of the events, its halves in two processes (`ChainHalf`); _OnePass when
        either found anything (a bad line or record among them), the second could not do its
        half, or anything else went wrong on the way: one pass then meets it in its own order."""
        try:
            with ChainHalf(run_id, sizes) as chain:
                halves = chain.tap(events, weigh=True)
                checked = check_events(run_id, halves, observe=self._observe, references=False)
                answer = chain.result() if checked.bad is None else None
        except Exception:
            raise _OnePass from None
        verified = joined(checked, answer) if answer is not None else None
        if verified is None:
            raise _OnePass
        return verified

    def _check_header(self, header: Header) -> Header:
        if header.key != self.key.text():
            try:
                named = Verifier.parse(header.key).label
            except NoteError:
                named = "a malformed key"
            raise self.fail(
                1, f"the export says its checkpoints are signed by {named}, not by the key given ({self.key.label})"
            )
        try:
            _store, origin_run = parse_run_origin(header.origin)
        except CheckpointError as e:
            raise self.fail(1, str(e)) from None
        if origin_run != header.run_id:
            raise self.fail(
                1, f"the header's run {quoted(header.run_id)} is not the run its origin names ({quoted(origin_run)})"
            )
        if self.run_id is not None and header.run_id != self.run_id:
            raise self.fail(1, f"this is an export of run {quoted(header.run_id)}, not of run {self.run_id}")
        self.header = header
        return header

    def _check_checkpoint(self, number: int, record: CheckpointRecord) -> None:
        assert self.header is not None
        try:
            cp = open_checkpoint(record.note, self.key)
        except NoteError as e:
            raise self.fail(number, f"checkpoint: {e}") from None
        if cp.origin != self.header.origin:
            # The note is signed, so it is the header (or another run's checkpoint) that is wrong.
            where = 1 if not self.checkpoints else number
            raise self.fail(where, f"the header names the log {quoted(self.header.origin)}, the signed checkpoint "
                                   f"on line {number} the log {quoted(cp.origin)}")  # fmt: skip
        if cp.size != record.size:
            raise self.fail(number, f"the record says {record.size} events, its signed note {cp.size}")
        if cp.size == 0:  # (no tree root is kept for 0 events: the check of the roots would skip it)
            raise self.fail(number, f"this checkpoint {EMPTY_LOG}")
        if self.checkpoints and cp.size <= self.checkpoints[-1][1]:
            raise self.fail(number, f"a checkpoint of {cp.size} events after one of {self.checkpoints[-1][1]}: "
                                    "each appears once, smallest first")  # fmt: skip
        self.checkpoints.append((number, cp.size, cp.root))

    def _events(
        self, pending: tuple[int, Record] | None, records: Iterator[tuple[int, Record]]
    ) -> Iterator[StoredEvent]:
        """The event records as stored events, checking the records between them on the way."""
        assert self.header is not None
        stream = records if pending is None else _prepend(pending, records)
        for number, record in stream:
            if isinstance(record, EventRecord):
                if self.seals:
                    raise self.fail(number, _EVENT_AFTER_SEAL)
                self._expect_nothing_more(number)
                self.event_line, self.event_seq = number, record.seq
                self.counts["events"] += 1
                if record.seq in self.lines_of:
                    self.lines_of[record.seq] = number
                yield record.stored()
            elif isinstance(record, PayloadRecord):
                self._check_payload(number, record)
            elif isinstance(record, ErasedRecord):
                self._check_erased(number, record)
            elif isinstance(record, SealRecord):
                self._expect_nothing_more(number)
                self._check_seal(number, record)
            elif isinstance(record, End):
                self._expect_nothing_more(number)
                self._check_end(number, record)
                self.end = (number, record)
                for after, _record in stream:
                    raise self.fail(after, _AFTER_END)
                return
            elif isinstance(record, CheckpointRecord):
                raise self.fail(number, _CHECKPOINT_AMONG_EVENTS)
            else:
                raise self.fail(number, _SECOND_HEADER)
        raise AuditFailure(f"{self.path}: the file ends without its end record: it was cut short")

    def _observe(self, stored: StoredEvent, event: ev.EventBase) -> None:
        for h in row_hashes(event):
            if not is_name(h):  # (found before the Merkle roots are compared, when it comes first)
                shown = repr(h[:70]) + ("…" if len(h) > 70 else "")
                raise self.fail(self.event_line, f"event seq {stored.seq} references row payload {shown}, which is "
                                                 "no payload's name (64 lowercase hex digits)")  # fmt: skip
            digest = bytes.fromhex(h)
            if digest not in self.seen:
                self.seen.add(digest)
                self.expected.append((h, stored.seq))
        if self.kept is not None:
            self.leaves += leaf_hash(stored.hash)

    def _expect_nothing_more(self, number: int) -> None:
        """Every row payload the last event referenced first has had its record."""
        assert self.header is not None
        if self.header.payloads and self.expected:
            h, seq = self.expected[0]
            raise self.fail(number, f"row payload {h}, first referenced by event seq {seq} (line {self.event_line}), "
                                    "has no payload or erasure record before this line")  # fmt: skip
        self.expected.clear()

    def _check_payload(self, number: int, record: PayloadRecord) -> None:
        assert self.header is not None
        if not self.header.payloads:
            raise self.fail(number, "a payload record in an export made without payloads")
        self._take(number, record.hash, "payload")
        if not payload_matches(record.hash, Payload(record.salt, record.data)):
            raise self.fail(number, f"row payload {record.hash} does not match its commitment (salt or data changed)")
        self.counts["payloads"] += 1

    def _check_erased(self, number: int, record: ErasedRecord) -> None:
        if not record.digest_matches():
            raise self.fail(number, f"the erasure record of {record.hash} was changed (its digest does not match)")
        assert self.header is not None
        why = record.problem(self.header.run_id)
        if why is not None:
            raise self.fail(number, why)
        self._take(number, record.hash, "erasure")
        self.unsealed.setdefault(bytes.fromhex(record.digest), number)
        self.counts["erased"] += 1

    def _check_seal(self, number: int, record: SealRecord) -> None:
        assert self.header is not None
        if self.header.format < 2:
            raise self.fail(number, f"a seal in a format-{self.header.format} export, which holds none (format 2 on)")
        # A seal once, by what it signs: a copy would be checked again and count again in the end
        # record, and one with another key's signature line added (passed over) is the same seal.
        try:
            signed = parse_note(record.note).text
        except NoteError:
            signed = record.note  # (said below: it does not verify)
        if signed in self.seal_texts:
            raise self.fail(number, "this seal is in the export already: each seal appears once")
        digests = [bytes.fromhex(d) for d in record.digests]
        if any(a >= b for a, b in pairwise(record.digests)):
            raise self.fail(number, "a seal's digests are listed each once, in ascending order")
        origin = origin_for(record.note, self.header.origin)
        why = why_not_sealed(record.note, digests, self.key, origin)
        if why is not None:
            raise self.fail(number, f"this seal of erasure records does not count: {why.removeprefix('its seal ')}")
        self.seal_texts.add(signed)
        self.sealed.update(digests)
        if origin == self.header.origin:  # (the store's no-run seals sign records of other runs too)
            self.run_sealed.update(digests)
        self.seals += 1

    def _take(self, number: int, h: str, what: str) -> None:
        """`h` must be the next payload the last event referenced first (without payloads, any
        later one of them: only erased ones have records then)."""
        assert self.header is not None
        while self.expected:
            want, _seq = self.expected.popleft()
            if want == h:
                return
            if self.header.payloads:
                break
        record = f"{'an' if what[0] in 'aeiou' else 'a'} {what} record of {h}"
        if not self.event_line:  # (before any event: nothing has referenced a payload yet)
            raise self.fail(number, f"{record} before any event: a payload's record follows the event that names it")
        where = f"event seq {self.event_seq} (line {self.event_line})"
        raise self.fail(number, f"{record}, which is not the next row payload {where} references first")

    def _counted(self, number: int, record: Record) -> None:
        """A record between the events, in the first pass: counted for the end record, or refused
        where it stands (a checkpoint, a header)."""
        if isinstance(record, PayloadRecord | ErasedRecord):
            self.counts["payloads" if isinstance(record, PayloadRecord) else "erased"] += 1
        elif isinstance(record, SealRecord):
            self.seals += 1
        elif isinstance(record, CheckpointRecord):
            raise self.fail(number, _CHECKPOINT_AMONG_EVENTS)
        else:
            raise self.fail(number, _SECOND_HEADER)

    def _check_end(self, number: int, end: End) -> None:
        found = {**self.counts, "checkpoints": len(self.checkpoints), "seals": self.seals}
        for name, value in found.items():
            said = getattr(end, name)
            if said != value:
                raise self.fail(number, f"the end record counts {said} {name}, the file holds {value}")

    def _check_kept(self, final: int, final_root: bytes) -> int:
        """The export extends the checkpoint the auditor kept: a consistency proof from its size
        to the final one, computed from the export's own leaves."""
        kept = self.kept
        assert kept is not None and self.header is not None
        where = f"the checkpoint you kept ({self.kept_name}, {kept.size} events)"
        if kept.origin != self.header.origin:
            raise AuditFailure(f"{self.path}: {where} is of {kept.origin}, this export of {self.header.origin}")
        if kept.size > final:
            raise AuditFailure(
                f"{self.path}: the export holds {final} events, fewer than {where}: "
                f"{events_span(final, kept.size - 1)} gone"
            )
        leaves = self.leaves

        def source(start: int, end: int) -> list[bytes]:
            return [bytes(leaves[i * 32 : i * 32 + 32]) for i in range(start, end)]

        try:
            proof = consistency_proof(kept.size, final, source) if 0 < kept.size < final else []
            verify_consistency(kept.size, final, proof, kept.root, final_root)
        except ProofError as e:
            raise AuditFailure(
                f"{self.path}: the export does not extend {where}: its history was rewritten ({e})"
            ) from None
        return kept.size


def _prepend(first: tuple[int, Record], rest: Iterator[tuple[int, Record]]) -> Iterator[tuple[int, Record]]:
    yield first
    yield from rest


# -- the proof bundle -------------------------------------------------------------------------------


def verify_proof(
    path: Path,
    key: Verifier,
    *,
    kept: Checkpoint | None = None,
    kept_name: str = "",
    run_id: str | None = None,
    unsigned_erasures: bool = False,
) -> ProofReport:
    """Check a proof bundle (`elspeth prove`): its checkpoint's signature, each event's chain hash
    recomputed from its fields and its inclusion in the signed tree, that the events are what the
    bundle says (one seq, or one row's lineage), each row payload against its commitment, and,
    given the checkpoint the auditor `kept`, the bundle's consistency proof from it."""
    try:
        with _open_regular(path) as f:  # (not by `path.open`: a FIFO swapped in since `sniff` would hang it)
            data = f.read(MAX_BUNDLE_BYTES + 1)
    except OSError as e:
        raise AuditFailure(f"{path}: cannot read it: {e.strerror}") from None
    if len(data) > MAX_BUNDLE_BYTES:
        raise AuditFailure(f"{path}: larger than any proof bundle ({MAX_BUNDLE_BYTES} bytes)")
    try:
        bundle = decode_bundle(data)
    except ExportError as e:
        raise AuditFailure(f"{path}: {e}") from None
    return _ProofCheck(path, key, bundle, run_id, kept, kept_name, unsigned_erasures).run()


def _tokens_named(e: ev.EventBase) -> list[str]:
    """The tokens an event names besides its own: parents, children, a merge's token, a branch's."""
    if isinstance(e, ev.TokenCreated):
        return list(e.parents)
    if isinstance(e, ev.TokenForked | ev.TokenExpanded):
        return list(e.children)
    if isinstance(e, ev.TokenCoalesced):
        return [e.into]
    if isinstance(e, ev.BranchArrived | ev.BranchLost):
        return [e.token_id]
    return []


def _left_out(events: list[tuple[StoredEvent, ev.EventBase]], wirings: Wirings | None) -> int:
    """How many tokens created in a row's bundle have events there that do not follow one another,
    so that one of theirs was left out: the token machine refuses an event in the state the ones
    before left it in (a completion without its sink's assignment), or a step's input is not the
    data the token held (its creation's, then each step's output: a step that changed it is gone),
    nor a fork's branch created with it, or (given the run's `wirings`) an event is not where the
    settings send the token (`landscape.wiring`: a step left out that kept the data, a gate or a
    filter that passed, or a token's last before its sink or coalesce). `prove --row` holds every
    event of each token it holds the creation of."""
    state: dict[str, str] = {}
    data: dict[str, str] = {}
    skipping: set[str] = set()
    for stored, e in events:
        token = stored.entity_id
        if stored.machine != "token" or token in skipping:
            continue
        if isinstance(e, ev.TokenCreated):
            if token in state:
                skipping.add(token)
            state[token], data[token] = TOKEN.apply(INITIAL, "TokenCreated"), e.data_hash
            # A fork's branch starts with its parent's data, as the parent held it then.
            forked = e.parents[0] if len(e.parents) == 1 and e.fork_id == e.parents[0] else None
            if forked in data and data[forked] != e.data_hash:
                skipping.add(forked)
            continue
        if token not in state:  # (created in another row's bundle, or before: not this one's to judge)
            continue
        try:
            state[token] = TOKEN.apply(state[token], stored.event_type)
        except InvalidTransition:
            skipping.add(token)
            continue
        if isinstance(e, ev.StepCompleted):
            if e.input_hash != data[token]:
                skipping.add(token)
            data[token] = e.output_hash
    if wirings is not None:
        skipping |= off_the_wiring(events, wirings)
    return len(skipping)


_DECIDING = {"coalesce": COALESCE, "batch": BATCH}
# A token's outcome once its sink made it durable: its write needs that sink's flush before it.
_WRITTEN = (ev.TokenCompleted, ev.TokenRouted, ev.TokenDiverted, ev.TokenQuarantined)


def _decisions(events: list[tuple[StoredEvent, ev.EventBase]], tokens: set[str]) -> tuple[tuple[int, int, int], int]:
    """A row's bundle (format 4): how many coalesces, batches and sink flushes it holds beside its
    tokens' events (each counted), and how many of those its tokens' events call for are not whole in it: a
    coalesce or batch one names whose events there do not start with its opening and follow one
    another, or that a token's event says ended (merged into it, consumed by it) without its
    closing event; a token's write (its outcome once its sink is durable) with no flush of that
    sink between its assignment and it. `prove --row` holds all of them."""
    state: dict[str, str] = {}
    kinds: dict[str, str] = {}  # entity -> its machine (coalesce, batch)
    broken: set[str] = set()
    ended_by_token: set[str] = set()
    named: set[str] = set()
    waiting: dict[str, str | None] = {}  # token -> the sink it was assigned to, None once that sink flushed
    held: set[tuple[str, str]] = set()  # (coalesce, token) a token's event says it was held in
    arrived: set[tuple[str, str]] = set()  # (coalesce, token) the coalesce's event says arrived
    flushes = missing = 0
    for stored, e in events:
        if stored.machine == "token" and stored.entity_id in tokens:
            token = stored.entity_id
            if (entity := decision_named(e)) is not None:
                named.add(entity)
                if isinstance(e, ev.TokenCoalesced | ev.TokenConsumed):
                    ended_by_token.add(entity)
                elif isinstance(e, ev.TokenHeld):
                    held.add((entity, token))
            if isinstance(e, ev.SinkAssigned):
                waiting[token] = e.sink
            elif isinstance(e, _WRITTEN) and e.sink is not None and token in waiting:
                missing += waiting.pop(token) is not None
            elif isinstance(e, ev.TokenFailed):
                waiting.pop(token, None)
        elif isinstance(e, ev.SinkFlushed):
            flushes += 1
            waiting |= {t: None for t, sink in waiting.items() if sink == e.sink}
        elif stored.machine in _DECIDING and stored.entity_id not in broken:
            if isinstance(e, ev.BranchArrived):
                arrived.add((stored.entity_id, e.token_id))
            kinds[stored.entity_id] = stored.machine
            try:
                state[stored.entity_id] = _DECIDING[stored.machine].apply(
                    state.get(stored.entity_id, INITIAL), stored.event_type
                )
            except InvalidTransition:
                broken.add(stored.entity_id)
    broken |= {entity for entity, _token in held - arrived}  # (an arrival, a self-transition, left out)
    terminal = COALESCE.terminal | BATCH.terminal
    for entity in named:
        if entity not in state or entity in broken or (entity in ended_by_token and state[entity] not in terminal):
            missing += 1
    held_in = [kinds[entity] for entity in state]
    return (held_in.count("coalesce"), held_in.count("batch"), flushes), missing


class _ProofCheck:
    def __init__(
        self,
        path: Path,
        key: Verifier,
        bundle: ProofBundle,
        run_id: str | None,
        kept: Checkpoint | None,
        kept_name: str,
        unsigned_erasures: bool,
    ) -> None:
        self.path, self.key, self.bundle, self.run_id = path, key, bundle, run_id
        self.kept, self.kept_name = kept, kept_name
        self.unsigned_erasures = unsigned_erasures
        self.unsigned = 0
        self.tokens: set[str] = set()  # a row's bundle's tokens (`_check_subject`)

    def fail(self, why: str) -> AuditFailure:
        return AuditFailure(f"{self.path}: {why}")

    def run(self) -> ProofReport:
        b = self.bundle
        if b.key != self.key.text():
            raise self.fail(f"the bundle says it is signed by another key than the one given ({self.key.label})")
        if self.run_id is not None and b.run_id != self.run_id:
            raise self.fail(f"this is a proof of run {quoted(b.run_id)}, not of run {self.run_id}")
        try:
            if parse_run_origin(b.origin)[1] != b.run_id:
                raise self.fail(
                    f"the bundle's run {quoted(b.run_id)} is not the run its origin names ({quoted(b.origin)})"
                )
            cp = open_checkpoint(b.checkpoint, self.key, origin=b.origin)
        except NoteError as e:
            raise self.fail(f"checkpoint: {e}") from None
        if (b.seq is None) == (b.row is None):
            raise self.fail("the bundle must name one subject: a seq or a row")
        number = b.seq if b.seq is not None else b.row
        if number is not None and number < 0:
            what = "seq" if b.seq is not None else "row index"
            raise self.fail(f"the bundle names {what} {number}: seqs and row indexes are counted from 0")
        if not b.events:
            raise self.fail("the bundle holds no event")
        events: list[tuple[StoredEvent, ev.EventBase]] = []
        for i, proven in enumerate(b.events):
            stored = proven.event.stored()
            if i and stored.seq <= events[-1][0].seq:
                raise self.fail(
                    f"event seq {stored.seq} comes after seq {events[-1][0].seq}: events are in seq order, once"
                )
            events.append((stored, self._check_event(stored, proven.proof, cp)))
        subject = self._check_subject(events)
        extends = self._check_extension(cp)
        payloads, erased = self._check_payloads(events)
        wirings = self._check_settings(cp)
        created = {s.entity_id for s, e in events if isinstance(e, ev.TokenCreated)}
        ended = {s.entity_id for s, e in events if type(e) in TOKEN_OUTCOME_OF}
        shown = {s.entity_id for s, _ in events if s.machine == "token"}
        named = {token for _, e in events for token in _tokens_named(e)}
        row = b.row is not None  # (one event's proof: nothing to end, nothing else to hold)
        decided, undecided = _decisions(events, self.tokens) if row and b.format >= 4 else ((0, 0, 0), 0)
        return ProofReport(
            run_id=b.run_id, key=self.key.label, subject=subject, events=len(events), size=cp.size, root=cp.root,
            payloads_included=b.payloads_included, payloads=payloads, erased=erased,
            unended=len(created - ended) if row else 0, absent=len(named - shown) if row else 0, row=row,
            skipping=_left_out(events, wirings) if row else 0, wiring=wirings is not None,
            extends=extends, unsigned=self.unsigned, decided=decided, undecided=undecided,
            decisions=row and b.format >= 4,
        )  # fmt: skip

    def _check_event(self, e: StoredEvent, proof: list[str], cp: Checkpoint) -> ev.EventBase:
        where = f"event seq {e.seq}"
        if e.run_id != self.bundle.run_id:
            raise self.fail(f"{where} is an event of run {quoted(e.run_id)}")
        if hashlib.sha256(e.payload).digest() != e.payload_hash:
            raise self.fail(f"{where}: the event body does not match its payload hash")
        fields = (e.run_id, e.seq, e.machine, e.entity_id, e.event_type, e.schema_version, e.recorded_at_us)
        if event_hash(e.prev_hash, *fields, e.payload_hash) != e.hash:
            raise self.fail(f"{where}: its fields do not hash to its chain hash (the header or hash was altered)")
        if EVENT_MACHINE.get(e.event_type) != e.machine:
            raise self.fail(
                f"{where}: event type {quoted(e.event_type)} does not belong to machine {quoted(e.machine)}"
            )
        # In the signed tree before its body is decoded: a forged body may decode to many times its size.
        if e.seq >= cp.size:
            raise self.fail(f"{where} is not in the signed tree of {cp.size} events")
        try:
            verify_inclusion(e.seq, cp.size, leaf_hash(e.hash), [bytes.fromhex(p) for p in proof], cp.root)
        except ProofError as err:
            raise self.fail(f"{where}: {err}") from None
        try:
            event = e.event
        except (StatechartError, msgspec.DecodeError, msgspec.ValidationError) as err:
            raise self.fail(f"{where}: the event body cannot be read: {err}") from None
        except RecursionError:
            raise self.fail(f"{where}: the event body cannot be read: it is nested too deeply") from None
        why = check_body(e, event)  # as for an export's events: the body says what its columns say
        if why is not None:
            raise self.fail(f"{where}: {why}")
        return event

    def _check_settings(self, cp: Checkpoint) -> Wirings | None:
        """The run's settings events the bundle holds, each proved in the signed tree: where
        they send each token (`landscape.wiring`). None when the bundle holds none (one event's
        bundle, or one made before format 3): then a step that kept the data cannot be told."""
        b = self.bundle
        if b.row is None:
            if b.settings:
                raise self.fail("a proof of one event holds no settings events")
            return None
        if not b.settings:
            if b.format >= 3:  # (one that says it is older is held to less, and the note says so)
                raise self.fail(
                    f"a row's bundle of format {b.format} holds the run's settings events; this one holds none"
                )
            return None
        wirings = Wirings()
        for i, proven in enumerate(b.settings):
            stored = proven.event.stored()
            if i and stored.seq <= wirings.starts[-1]:
                raise self.fail(
                    f"settings event seq {stored.seq} comes after seq {wirings.starts[-1]}: in seq order, once"
                )
            event = self._check_event(stored, proven.proof, cp)
            if not isinstance(event, ev.RunCreated | ev.RunResumed) or event.settings is None:
                raise self.fail(f"settings event seq {stored.seq} is a {stored.event_type} that gives no settings")
            if i == 0 and not isinstance(event, ev.RunCreated):
                raise self.fail(f"the first settings event (seq {stored.seq}) is not the run's RunCreated")
            wirings.add(stored.seq, event.settings)
        return wirings

    def _check_extension(self, cp: Checkpoint) -> int | None:
        """The bundle's consistency proof from a checkpoint the auditor kept to the bundle's own:
        the log its events are proved in extends the one the auditor saw (so an operator holding
        the key cannot prove events of a rewritten history). Checked whenever the bundle has one;
        required when the auditor gives a kept checkpoint."""
        x, kept = self.bundle.extends, self.kept
        where = f"the checkpoint you kept ({self.kept_name}, {kept.size} events)" if kept is not None else ""
        if kept is not None:
            if kept.origin != cp.origin:
                raise self.fail(f"{where} is of {kept.origin}, this bundle of {cp.origin}")
            if x is None:
                raise self.fail(
                    f"the bundle carries no consistency proof from {where}: ask for one made with "
                    "`elspeth prove ... --checkpoint` and that checkpoint"
                )
            if x.size != kept.size or bytes.fromhex(x.root) != kept.root:
                raise self.fail(
                    f"the bundle's consistency proof starts from another tree ({x.size} events) than {where}"
                )
        if x is None:
            return None
        if x.size == 0:  # (no consistency proof starts from an empty tree: refused below as a rewritten history)
            raise self.fail(
                "the bundle's consistency proof starts from an empty log (0 events), which every log extends, so it "
                "proves nothing; ELSPETH makes none such (`prove --checkpoint` refuses a checkpoint of 0 events)"
            )
        where = where or f"the tree of {x.size} events it names"
        try:
            verify_consistency(x.size, cp.size, [bytes.fromhex(p) for p in x.proof], bytes.fromhex(x.root), cp.root)
        except ProofError as e:
            raise self.fail(
                f"the bundle's signed tree does not extend {where}: its history was rewritten ({e})"
            ) from None
        return x.size

    def _check_subject(self, events: list[tuple[StoredEvent, ev.EventBase]]) -> str:
        b = self.bundle
        if b.seq is not None:
            if len(events) != 1 or events[0][0].seq != b.seq:
                raise self.fail(f"a proof of event seq {b.seq} must hold that one event")
            return f"event seq {b.seq}"
        # A row's lineage: every event is of a token created for the row or descending from one
        # created earlier in the bundle, or (format 4) one of their decisions: an event of a
        # coalesce or batch one of those tokens' events names, or a flush of a sink one of them
        # was assigned or written to (a flush is the run's, whichever rows it held: one more
        # proves nothing false). (That none is left out, no proof of inclusion can show.)
        if b.row is None:
            raise self.fail("a proof bundle names either a seq or a row")
        # Rows are counted from 1 for people (as explain, purge and prove take them); the bundle
        # holds the log's 0-based row_index.
        row, tokens = b.row, set[str]()
        for stored, event in events:
            if isinstance(event, ev.TokenCreated) and (
                (not event.parents and event.row_index == row) or any(p in tokens for p in event.parents)
            ):
                tokens.add(stored.entity_id)
            if stored.machine == "token" and stored.entity_id not in tokens:  # (nor one before its creation)
                raise self.fail(f"event seq {stored.seq} is not of a token of row {row + 1}'s lineage")
        named = {d for s, e in events if s.entity_id in tokens and (d := decision_named(e)) is not None}
        sinks = {e.sink for s, e in events if s.entity_id in tokens and isinstance(e, (ev.SinkAssigned, *_WRITTEN))}
        for stored, event in events:
            if stored.machine == "token":
                continue
            if b.format >= 4 and stored.machine in DECISION_MACHINES and stored.entity_id in named:
                continue
            if b.format >= 4 and isinstance(event, ev.SinkFlushed) and event.sink in sinks:
                continue
            raise self.fail(
                f"event seq {stored.seq} is not of a token of row {row + 1}'s lineage, nor of its decisions"
            )
        self.tokens = tokens
        return f"row {row + 1} ({len(tokens)} token(s))"

    def _check_sealed(self, record: ErasedRecord, sealed: SealProof) -> None:
        """The record is one that a seal signed by the key holds: its audit path in the seal's tree."""
        try:
            seal = open_seal(sealed.note, self.key, origin_for(sealed.note, self.bundle.origin))
            verify_inclusion(sealed.index, seal.size, leaf_hash(bytes.fromhex(record.digest)),
                             [bytes.fromhex(p) for p in sealed.proof], seal.root)  # fmt: skip
        except (NoteError, ProofError) as e:
            raise self.fail(
                f"the erasure record of {record.hash} is signed by no seal of {self.key.label}: {e}"
            ) from None

    def _check_payloads(self, events: list[tuple[StoredEvent, ev.EventBase]]) -> tuple[int, int]:
        b = self.bundle
        referenced = {h: stored.seq for stored, event in reversed(events) for h in row_hashes(event)}
        supplied = {p.hash: p for p in b.payloads}
        erased = {r.hash: r for r in b.erased}
        for h in [*supplied, *erased]:
            if h not in referenced:
                raise self.fail(f"row payload {h} is in the bundle but no event of it references it")
        if len(supplied) != len(b.payloads) or len(erased) != len(b.erased):
            raise self.fail("a row payload appears twice in the bundle")
        both = sorted(supplied.keys() & erased.keys())
        if both:  # (as an export's reader refuses the pair: it would count as held and as erased)
            raise self.fail(f"row payload {both[0]} is in the bundle both as data and as erased")
        seals = {p.digest: p for p in b.seals}
        if len(seals) != len(b.seals) or not seals.keys() <= {r.digest for r in b.erased}:
            raise self.fail("the bundle holds one seal proof for each erasure record, and no other")
        for r in b.erased:
            if not r.digest_matches():
                raise self.fail(f"the erasure record of {r.hash} was changed (its digest does not match)")
            why = r.problem(b.run_id)
            if why is not None:
                raise self.fail(why)
            sealed = seals.get(r.digest)
            if sealed is not None:
                self._check_sealed(r, sealed)
            elif self.unsigned_erasures:
                self.unsigned += 1
            else:
                raise self.fail(
                    f"the erasure record of {r.hash} is signed by no seal of {self.key.label} in the bundle: it does not "
                    "explain why the payload is gone (--unsigned-erasures takes such records on the store's word)"
                )
        if not b.payloads_included:
            if b.payloads:
                raise self.fail("payloads in a bundle made without payloads")
            return 0, len(erased)
        for h, seq in sorted(referenced.items(), key=lambda item: item[1]):
            p = supplied.get(h)
            if p is None and h not in erased:
                raise self.fail(f"row payload {h}, referenced by event seq {seq}, is missing (and not erased)")
            if p is not None and not payload_matches(h, Payload(p.salt, p.data)):
                raise self.fail(f"row payload {h}, referenced by event seq {seq}, does not match its commitment")
        return len(supplied), len(erased)


__all__ = ["FORMAT", "AuditFailure", "ExportReport", "ProofReport", "sniff", "verify_export", "verify_proof"]
