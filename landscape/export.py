"""The export file of a run, and the proof bundle of one event or row: their records, how they
are written from the store, and how they are read back. Driver-free: `elspeth verify` reads them
where no database (and no driver) is installed. The checks are in `landscape.audit`; the exact
format is documented in docs/verification.md ("The export file").

An export is JSON lines, one record a line, each written exactly one way (msgspec's encoding of
the record's struct, fields in a fixed order, binary fields in base64, hashes in lowercase hex), so
a reader can tell any changed byte by re-encoding what it read:

    header       {"type":"elspeth-export","format":2,"run_id",...}        line 1
    checkpoint   every signed checkpoint, smallest tree first               lines 2...
    event        the run's events in seq order; after each event, a
    payload      record for each row payload it is the first to reference
    erased         (or the erasure record of one that was erased)
    seal         each seal of the erasure records (`landscape.seal`)       after the last event
    end          the count of each kind of record                           last line

The signed claims come first, so a verifier streaming the events knows every size it must
compute a root at; payloads come right after the event that first names them, so each is checked
where it stands and a missing one is named by its line. A seal lists the digests of every record
it signs, so its records are judged once they have all been read.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Annotated, NamedTuple, NoReturn

import msgspec

from landscape.checkpoint import EMPTY_LOG, Checkpoint, open_checkpoint, parse_checkpoint, parse_run_origin
from landscape.errors import LandscapeError
from landscape.merkle import (
    ProofError,
    consistency_proof,
    inclusion_proof,
    inclusion_proofs,
    leaf_hash,
    verify_consistency,
)
from landscape.notary import Witnessed
from landscape.note import NoteError, Verifier, parse_note
from landscape.recorder import Recorder
from landscape.records import Erasure, StoredEvent, record_digest
from landscape.seal import MISSING, leaves, record_why, verdict
from landscape.verify import payload_matches, row_hashes
from statecharts import events as ev
from statecharts.errors import StatechartError

if TYPE_CHECKING:
    from landscape.postgres import PostgresRecorder

#: The format this ELSPETH writes and the newest it reads. 2: the seals of the erasure records.
FORMAT = 2
# A proof bundle's: format 3 holds a row's run settings events (`ProofBundle.settings`); format 4
# a row's decisions beside its tokens' events (`DECISION_MACHINES`, `SinkFlushed`).
BUNDLE_FORMAT = 4
EXPORT_TYPE = "elspeth-export"
PROOF_TYPE = "elspeth-proof"

#: The longest line of an export, in bytes, without its newline. A reader holds a line at a time,
#: so this bounds its memory whatever file it is handed; the writer refuses a run with a longer
#: record (a row of more than about 190 MB: its data as base64) rather than write a file that no
#: verifier would read.
MAX_LINE = 256 * 1024 * 1024

Hex32 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]  # (`$` would let a final newline in)
Count = Annotated[int, msgspec.Meta(ge=0)]
# An event's integers are the store's bigint columns: no event ELSPETH wrote holds a larger one
# (and a verifier's page of events, `landscape.chain_half`, could not encode it).
Bigint = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class ExportError(LandscapeError):
    """An export or proof that cannot be made, or a file that is not one; the message says why."""


class BadLine(LandscapeError):
    """A line of an export that is not a well-formed record."""

    def __init__(self, line: int, why: str) -> None:
        super().__init__(f"line {line}: {why}")
        self.line = line
        self.why = why


class _Record(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True):
    pass


class Header(_Record, tag=EXPORT_TYPE, frozen=True):
    format: int
    run_id: str
    origin: str  # elspeth/<store id>/<run id>, as every checkpoint's note names it
    key: str  # the verifier key text of the key that signed the checkpoints
    payloads: bool  # false: exported with --no-payloads (commitments only)


class CheckpointRecord(_Record, tag="checkpoint", frozen=True):
    size: Count
    note: str  # the signed note, exactly as stored


class EventRecord(_Record, tag="event", frozen=True):
    run_id: str
    seq: Seq
    machine: str
    entity_id: str
    event_type: str
    schema_version: Bigint
    recorded_at_us: Bigint
    payload: bytes  # the event body's exact bytes
    payload_hash: Hex32
    prev_hash: Hex32
    hash: Hex32

    @classmethod
    def of(cls, e: StoredEvent) -> EventRecord:
        return cls(
            run_id=e.run_id, seq=e.seq, machine=e.machine, entity_id=e.entity_id, event_type=e.event_type,
            schema_version=e.schema_version, recorded_at_us=e.recorded_at_us, payload=e.payload,
            payload_hash=e.payload_hash.hex(), prev_hash=e.prev_hash.hex(), hash=e.hash.hex(),
        )  # fmt: skip

    def stored(self) -> StoredEvent:
        return StoredEvent(
            self.run_id, self.seq, self.machine, self.entity_id, self.event_type, self.schema_version,
            self.recorded_at_us, self.payload, bytes.fromhex(self.payload_hash), bytes.fromhex(self.prev_hash),
            bytes.fromhex(self.hash),
        )  # fmt: skip


class PayloadRecord(_Record, tag="payload", frozen=True):
    hash: Hex32  # the commitment sha256(salt ‖ data) the events hold
    salt: bytes
    data: bytes


class ErasedRecord(_Record, tag="erased", frozen=True):
    """The store's record of an erased payload. Nothing signs it (it is the operator's word, see
    docs/erasure.md), so it carries a digest of its own fields: a changed byte is still caught
    and named on its line, as on every other line."""

    hash: Hex32
    run_id: str | None
    row_index: int | None
    kind: str
    reason: str
    erased_at: str  # ISO 8601
    erased_by: str
    digest: Hex32

    @classmethod
    def of(cls, e: Erasure) -> ErasedRecord:
        return cls(*e.fields(), digest=e.digest().hex())

    def digest_matches(self) -> bool:
        fields = (self.hash, self.run_id, self.row_index, self.kind, self.reason, self.erased_at, self.erased_by)
        return record_digest(fields).hex() == self.digest

    def problem(self, run_id: str) -> str | None:
        """What makes this no erasure record of a payload of run `run_id`, if anything (its
        digest aside): another run named, a negative row, a time that is none."""
        if self.run_id is not None and self.run_id != run_id:
            return f"the erasure record of {self.hash} names run {self.run_id}"
        if self.row_index is not None and self.row_index < 0:
            return f"the erasure record of {self.hash} names row_index {self.row_index}"
        try:
            datetime.fromisoformat(self.erased_at)
        except ValueError:
            return f"the erasure record of {self.hash} has erased_at {self.erased_at!r}, which is no time"
        return None

    def describe(self) -> str:
        return f"erased on {self.erased_at[:10]} ({self.kind}: {self.reason})"


class SealRecord(_Record, tag="seal", frozen=True):
    """A seal of the erasure records (`landscape.seal`): its signed note and the digest of every
    record it was signed over, in ascending order, those of payloads this export does not hold
    included (a verifier recomputes the root from them all)."""

    note: str
    digests: list[Hex32]


class End(_Record, tag="end", frozen=True, omit_defaults=True):
    """(`seals` is left out when 0: a format-1 end line, which has none, reads back as written.)"""

    events: Count
    payloads: Count
    erased: Count
    checkpoints: Count
    seals: Count = 0  # (format 1 had none)


Record = Header | CheckpointRecord | EventRecord | PayloadRecord | ErasedRecord | SealRecord | End

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Record)


def encode(record: Record) -> bytes:
    """The one spelling of a record, without its newline."""
    return _encoder.encode(record)


def check_format(value: object, what: str, newest: int = FORMAT) -> None:
    """Refuse a format this ELSPETH cannot read (ExportError naming it)."""
    if type(value) is not int or value < 1:
        raise ExportError(f"{what} has format {value!r}, which is no ELSPETH format")
    if value > newest:
        raise ExportError(f"{what} is format {value}, newer than this ELSPETH reads ({newest}): upgrade ELSPETH")


def read_records(f: IO[bytes]) -> Iterator[tuple[int, Record]]:
    """(line number, record) of each line of an export file, checking that each line is a
    complete record written the one way ELSPETH writes it; BadLine otherwise. Line 1 must be the
    header of a format this ELSPETH reads (checked before the rest of it, which a newer format may
    change). No line longer than `MAX_LINE` is read whole."""
    number = 0
    while raw := _read_line(f, number + 1):
        number += 1
        if number == 1 and raw.strip():  # (a blank line is said to be one, by `_record`)
            _check_header_format(memoryview(raw)[:-1])
        yield number, _record(number, raw)


def _read_line(f: IO[bytes], number: int) -> bytes:
    """Line `number`, with its newline (b"" at the end of the file); BadLine for one longer than
    any record or cut short. No line longer than `MAX_LINE` is read whole."""
    raw = f.readline(MAX_LINE + 1)  # (the longest line and its newline)
    if raw and not raw.endswith(b"\n"):
        if len(raw) > MAX_LINE:
            raise BadLine(number, f"longer than any record of an export ({MAX_LINE} bytes)")
        raise BadLine(number, "the line does not end with a newline: the file was cut short")
    return raw


def _record(number: int, raw: bytes, *, exact: bool = True) -> Record:
    """The record line `number` holds, written the one way ELSPETH writes it (unless not `exact`);
    BadLine otherwise."""
    line = memoryview(raw)[:-1]  # (a view: a long line is not copied again)
    if not raw.strip():  # (what the decoder would say of it is about JSON, not about the file)
        raise BadLine(number, "a blank line: an export has none (the file was changed)")
    try:
        record = _decoder.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as e:
        raise BadLine(number, f"not a record of an ELSPETH export ({_why(e)})") from None
    if exact and encode(record) != line:
        raise BadLine(number, f"the {_kind(record)} record is not written as ELSPETH writes it (a changed byte?)")
    return record


# The start of the lines a first pass over an export passes over (`read_events`), as `encode`
# spells them (the tag first): the records whose checks need the events decoded.
_PASSED_OVER = (b'{"type":"payload",', b'{"type":"erased",', b'{"type":"seal",')


def read_events(f: IO[bytes], number: int) -> Iterator[tuple[int, EventRecord | End]]:
    """The event records and the end record of an export file from line `number + 1` on, for a
    fast first pass over it (`landscape.audit`): the lines of payloads, erasures and seals
    passed over, the others decoded but not compared with their one spelling (the pass after
    reads every line and compares each; a line passed over here that is not what it starts as
    leaves a gap in the chain, or no end record). No event body is decoded (it stays bytes)."""
    while raw := _read_line(f, number + 1):
        number += 1
        if raw.startswith(_PASSED_OVER):
            continue
        record = _record(number, raw, exact=False)
        if isinstance(record, EventRecord | End):
            yield number, record


class _Peek(msgspec.Struct):
    """What is read of a file before knowing its format: its type and format, nothing else (the
    rest is skipped, not built: a file of deeply nested or countless values costs no memory)."""

    type: str | int | float | bool | None = None
    format: str | int | float | bool | None = None


_peek_decoder = msgspec.json.Decoder(_Peek)


def _peek(data: bytes | memoryview) -> _Peek | None:
    """The type and format a JSON object names (when they are plain values); None otherwise."""
    try:
        return _peek_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


def _why(e: Exception) -> str:
    return "nested too deeply" if isinstance(e, RecursionError) else str(e)


def _check_header_format(line: bytes | memoryview) -> None:
    peek = _peek(line)
    if peek is None or peek.type != EXPORT_TYPE:
        raise BadLine(1, "this is not an ELSPETH export (its first line is not an elspeth-export header)")
    try:
        check_format(peek.format, "this export")
    except ExportError as e:
        raise BadLine(1, str(e)) from None


def _kind(record: Record) -> str:
    return "header" if isinstance(record, Header) else str(record.__struct_config__.tag)


# -- writing --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Written:
    events: int
    payloads: int
    erased: int
    checkpoints: int
    size: int  # the newest checkpoint's tree size (the export holds exactly that many events)
    unsigned: int = 0  # erasure records signed by nothing, written with `unsigned_erasures`


def signed_checkpoints(stored: Iterable[Witnessed], witnessed: Iterable[Witnessed], key: Verifier) -> list[Witnessed]:
    """The checkpoints of a run from the store and its witness file, each once (the same note
    in both is one), smallest tree first. ExportError if there is none, or if one is signed by
    another key than `key` (naming both): an export names the one key that checks it."""
    unique: dict[str, Witnessed] = {}
    for cp in (*stored, *witnessed):
        unique.setdefault(cp.note, cp)
    if not unique:
        raise ExportError("the run has no signed checkpoint (in the store or its witness file) to export against")
    for cp in unique.values():
        try:
            note = parse_note(cp.note)
            parse_checkpoint(note.text)
        except NoteError as e:
            raise ExportError(f"the checkpoint of {cp.size} events ({cp.where}) is not a signed note: {e}") from None
        labels = [s.label for s in note.signatures]
        if key.label not in labels:
            raise ExportError(
                f"the checkpoint of {cp.size} events ({cp.where}) is signed by {', '.join(labels)}, not by "
                f"{key.label}: give the run's public key with --public-key"
            )
        try:  # the signature itself, not only its label: anyone who can write the store can copy a label
            signed = open_checkpoint(cp.note, key)
        except NoteError as e:
            raise ExportError(f"the checkpoint of {cp.size} events ({cp.where}) does not verify: {e}") from None
        if (cp.size, cp.root) != (signed.size, signed.root):  # what beside the note is not signed
            raise ExportError(
                f"the checkpoint of {cp.size} events ({cp.where}) says a size or root other than its signed note's "
                f"({signed.size} events): the record was changed"
            )
        if signed.size == 0:  # (no tree root is kept for 0 events: it was said to differ, "events were changed")
            raise ExportError(f"the checkpoint of 0 events ({cp.where}) {EMPTY_LOG}")
    return sorted(unique.values(), key=lambda cp: (cp.size, cp.note))


def write_export(
    recorder: PostgresRecorder,
    run_id: str,
    out: IO[bytes],
    *,
    origin: str,
    key: Verifier,
    checkpoints: list[Witnessed],
    payloads: bool = True,
    chunk: int = 20_000,
    unsigned_erasures: bool = False,
) -> Written:
    """Write the export of a run's events up to its newest checkpoint (later events are not
    signed yet) to `out`. Streams: memory holds one chunk of events and the set of payload
    hashes already written. (The payloads a chunk first references are asked for together: over
    1,044,437 events, chunks of 2,000 took 24 s, of 20,000 18-22 s, 23 MB more at the peak.)

    What `elspeth verify` would refuse for the store's sake is found as it is written, and raised
    as ExportError naming it (the caller then keeps no file): the chain and the Merkle roots the
    signed checkpoints claim (`check_chain`), events missing, a row payload that does not match
    its commitment or is gone without an erasure record. An operator learns it here, where the
    store can be looked into, not from the auditor. An erasure record signed by nothing (from
    before purge signed them) is refused too, unless `unsigned_erasures`: then written, and counted."""
    size = checkpoints[-1].size
    out.write(_line(Header(format=FORMAT, run_id=run_id, origin=origin, key=key.text(), payloads=payloads)))
    for cp in checkpoints:
        out.write(_line(CheckpointRecord(size=cp.size, note=cp.note)))
    counts = [0, 0, 0]  # events, payloads, erased
    seen: set[str] = set()
    batch: list[StoredEvent] = []
    sealed_by: dict[str, Named] = {}  # erased payload -> the seal its record names

    def written(events: Iterable[StoredEvent]) -> Iterator[StoredEvent]:
        nonlocal batch
        for e in events:
            yield e  # (checked first: a bad one stops the chain check, and is not written)
            batch.append(e)
            if len(batch) >= chunk:
                _write_chunk(recorder, batch, seen, out, payloads, counts, sealed_by)
                batch = []

    from landscape.verify_store import chain_beside  # (the database's; `verify` of a file needs none)

    chain = chain_beside(recorder, run_id, size - 1, [cp.size for cp in checkpoints], written)
    if chain.bad:
        raise ExportError(
            f"the store's log of run {run_id} does not verify at seq {chain.events} (its chain, or what an event "
            f"says it is): no export was written; see `elspeth replay {run_id} --check`"
        )
    _write_chunk(recorder, batch, seen, out, payloads, counts, sealed_by)
    events, n_payloads, erased = counts
    if events < size:
        # The store holds fewer events than its newest checkpoint signs: a tail (or more) was
        # deleted. The file would fail `verify`; say so here, where the store can be looked at.
        raise ExportError(
            f"the store holds {events} event(s) of run {run_id} up to seq {size - 1}, which its newest checkpoint "
            f"signs: events are missing from the log; see `elspeth replay {run_id} --check`"
        )
    for cp in checkpoints:
        if chain.roots.get(cp.size) != cp.root:
            raise ExportError(
                f"the store's log of run {run_id} is not the one its signed checkpoint of {cp.size} events signs (its "
                f"Merkle root differs): events were changed; no export was written; see `elspeth replay {run_id} --check`"
            )
    seals = _write_seals(recorder, run_id, sealed_by, out, key, origin, unsigned_erasures)
    out.write(_line(End(events=events, payloads=n_payloads, erased=erased, checkpoints=len(checkpoints), seals=seals)))
    unsigned = sum(named.seal_id is None for named in sealed_by.values())
    return Written(events, n_payloads, erased, len(checkpoints), size, unsigned)


class Named(NamedTuple):
    """What an export keeps of each erasure record it wrote, to check it against its seal."""

    seal_id: int | None
    run_id: str | None
    digest: bytes


def _write_seals(
    recorder: Recorder,
    run_id: str,
    sealed_by: dict[str, Named],
    out: IO[bytes],
    key: Verifier,
    origin: str,
    unsigned_erasures: bool,
) -> int:
    """The seal of each erasure record written, once each; ExportError for a record that would
    not count as signed by `key` (`verify` would refuse the file; one signed by nothing is let
    through with `unsigned_erasures`, as `verify --unsigned-erasures` does)."""
    stored = recorder.erasure_seals(n.seal_id for n in sealed_by.values() if n.seal_id is not None)
    store_id = parse_run_origin(origin)[0]
    verdicts = {i: verdict(found, key, store_id) for i, found in stored.items()}  # (each seal once)
    for h, named in sealed_by.items():
        if named.seal_id is None:
            why = "" if unsigned_erasures else _SIGNED_BY_NOTHING
        else:
            problem = record_why(named.run_id, named.digest, verdicts.get(named.seal_id, MISSING))
            why = f"does not count as signed: {problem}" if problem else ""
        if why:
            raise ExportError(
                f"the erasure record of row payload {h} {why}; `verify` would not count it: no export was written; "
                f"see `elspeth replay {run_id} --check`"
            )
    for seal_id in sorted(stored):
        found = stored[seal_id]
        out.write(_line(SealRecord(note=found.note, digests=sorted(d.hex() for d in found.digests))))
    return len(stored)


_SIGNED_BY_NOTHING = (
    "is signed by nothing (written before purge signed its records, or by someone who could not sign; "
    "--unsigned-erasures takes such records on the store's word, and counts them)"
)


def _line(record: Record) -> bytes:
    """A record's line; ExportError for one longer than any reader reads (`MAX_LINE`)."""
    line = encode(record)
    if len(line) > MAX_LINE:
        if isinstance(record, EventRecord):
            what = f"event seq {record.seq}"
        elif isinstance(record, PayloadRecord):
            what = f"row payload {record.hash}"
        else:
            what = f"the {_kind(record)} record"
        raise ExportError(f"{what} takes {len(line)} bytes in an export, more than a line may ({MAX_LINE})")
    return line + b"\n"


def first_references(events: Iterable[StoredEvent], seen: set[str]) -> Iterator[tuple[StoredEvent, list[str]]]:
    """Each event with the row payloads it is the first to reference (in the order it names
    them), adding them to `seen`. An event whose body cannot be read references none here: the
    verifier names it."""
    for e in events:
        try:
            hashes = row_hashes(e.event)
        except (StatechartError, msgspec.DecodeError, msgspec.ValidationError):
            hashes = ()
        new = []
        for h in hashes:
            if h not in seen:
                seen.add(h)
                new.append(h)
        yield e, new


def _write_chunk(
    recorder: Recorder,
    batch: list[StoredEvent],
    seen: set[str],
    out: IO[bytes],
    payloads: bool,
    counts: list[int],
    sealed_by: dict[str, Named],
) -> None:
    firsts = list(first_references(batch, seen))
    wanted = [h for _e, new in firsts for h in new]
    present = recorder.payloads(batch[0].run_id, wanted) if payloads and wanted else {}
    absent = [h for h in wanted if h not in present]
    erasures = recorder.erasures(batch[0].run_id, absent) if absent else {}
    for e, new in firsts:
        out.write(_line(EventRecord.of(e)))
        counts[0] += 1
        for h in new:
            if h in present:
                p = present[h]
                if not payload_matches(h, p):
                    raise ExportError(
                        f"row payload {h} (first referenced by event seq {e.seq}) does not match its commitment in "
                        f"the store: its data or salt was changed; no export was written; see `elspeth replay "
                        f"{e.run_id} --check`"
                    )
                out.write(_line(PayloadRecord(hash=h, salt=p.salt, data=p.data)))
                counts[1] += 1
            elif h in erasures:
                record = erasures[h]
                out.write(_line(ErasedRecord.of(record)))
                sealed_by[h] = Named(record.seal_id, record.run_id, record.digest())
                counts[2] += 1
            elif payloads:
                raise ExportError(
                    f"row payload {h} (first referenced by event seq {e.seq}) is not in the store, and no erasure "
                    f"record says why: no export was written; see `elspeth replay {e.run_id} --check`"
                )


# -- the proof bundle -----------------------------------------------------------------------------


class ProvenEvent(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    event: EventRecord
    proof: list[Hex32]  # the audit path of leaf `event.seq`, leaf side first


class Extension(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The consistency proof from a checkpoint the auditor kept (its size and root) to the
    bundle's: the log the bundle's events are proved in extends the one the auditor saw."""

    size: Count
    root: Hex32
    proof: list[Hex32]


# omit_defaults: a bundle made without a kept checkpoint reads as it did before `extends` existed.
class SealProof(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """That an erasure record (by its digest) is one a seal signs: the seal's note and the
    record's audit path in the seal's tree (`landscape.seal`), leaf side first."""

    digest: Hex32
    note: str
    index: Count
    proof: list[Hex32]


class ProofBundle(_Record, tag=PROOF_TYPE, frozen=True, omit_defaults=True):
    format: int
    run_id: str
    origin: str
    key: str
    seq: int | None  # the subject: one event (--seq) ...
    row: int | None  # ... or one source row's lineage (--row)
    checkpoint: str  # the signed note the proofs lead to
    events: list[ProvenEvent]
    payloads_included: bool
    payloads: list[PayloadRecord]
    erased: list[ErasedRecord]
    extends: Extension | None = None  # `prove --checkpoint`
    seals: list[SealProof] = []  # one per erased record (format 2)
    # A row's bundle: the run's settings events in the signed tree (RunCreated, and each RunResumed
    # that changed the settings), which say where each of the row's tokens goes next (format 3).
    settings: list[ProvenEvent] = []


_bundle_decoder = msgspec.json.Decoder(ProofBundle)


def encode_bundle(bundle: ProofBundle) -> bytes:
    return msgspec.json.format(_encoder.encode(bundle), indent=1) + b"\n"


def decode_bundle(data: bytes) -> ProofBundle:
    """The bundle in `data`; ExportError saying why not (a newer format is named as such)."""
    try:
        peek = _peek_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as e:
        # (a file is read as a bundle when it names the type: one cut short or mangled is said so)
        raise ExportError(f"not a well-formed proof bundle ({_why(e)})") from None
    if peek.type != PROOF_TYPE:
        raise ExportError("not an ELSPETH export or proof bundle")
    check_format(peek.format, "this proof bundle", BUNDLE_FORMAT)
    try:
        bundle = _bundle_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as e:
        raise ExportError(f"not a well-formed proof bundle ({_why(e)})") from None
    # A key given twice: the decoder keeps the last, a reader keeping the first would see other
    # values than were checked here. Looked for in a bundle the decoder took whole (so of known
    # keys and types only: no hostile shape), each object dropped once its keys are seen, so that
    # the bundle is not held decoded twice. (Its spelling is not compared: a bundle may be
    # reformatted to be read.)
    try:
        json.loads(data, object_pairs_hook=_no_key_twice)
    except (ValueError, RecursionError) as e:  # (what msgspec took, Python's json may not: 4,301 digits)
        raise ExportError(f"not a well-formed proof bundle ({_why(e)})") from None
    if bundle.format < 2 and bundle.seals:
        raise ExportError(
            f"the proof bundle is format {bundle.format}, which holds no seals (format 2 on), yet holds some"
        )
    if bundle.format < 3 and bundle.settings:
        raise ExportError(
            f"the proof bundle is format {bundle.format}, which holds no settings events (format 3 on), yet holds some"
        )
    return bundle


def _no_key_twice(pairs: list[tuple[str, object]]) -> None:
    """Refuses an object giving a key twice; keeps nothing of it (None in its place)."""
    if len({k for k, _ in pairs}) != len(pairs):
        twice = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise ExportError(f"the proof bundle gives a key twice in one object: {', '.join(twice)}")


class Lineage:
    """Which of the given source rows each token contains, learnt from the events in seq order:
    a token created for a row (no parents, its row index), and every token descending from one
    (fork branches, expansions, merges, batch outputs that contain it) — what `prove --row` proves
    and `purge --row` erases. A token descending from several of the rows counts for the first."""

    def __init__(self, rows: Collection[int]) -> None:
        self.rows = rows
        self.owner: dict[str, int] = {}  # token id -> the source row it contains

    def row_of(self, e: StoredEvent, created: ev.EventBase | None) -> int | None:
        """The row event `e` is of, if one of the rows (`created`: its decoded body, when it is a
        TokenCreated; the body is not read otherwise)."""
        if e.machine != "token":
            return None
        if isinstance(created, ev.TokenCreated):
            parents = created.parents
            if not parents and created.row_index in self.rows:
                self.owner[e.entity_id] = created.row_index
            else:
                row = next((self.owner[p] for p in parents if p in self.owner), None)
                if row is not None:
                    self.owner[e.entity_id] = row
        return self.owner.get(e.entity_id)


# The events that give a run's settings (a RunResumed only when a forced resume changed them).
_SETTINGS_EVENTS = frozenset(("RunCreated", "RunResumed"))

# The machines whose entities decide about tokens held in them: a coalesce (merged or failed, on
# which trigger, with which branches missing) and an aggregation's batch (flushed on which
# trigger, completed or failed). A row's bundle holds every event of each one its tokens name.
DECISION_MACHINES = frozenset(("coalesce", "batch"))
_CLOSING = frozenset(("CoalesceMerged", "CoalesceFailed", "BatchCompleted", "BatchFailed"))


def decision_named(e: ev.EventBase) -> str | None:
    """The coalesce or batch a token event names: where it was held, merged, buffered, consumed."""
    if isinstance(e, ev.TokenHeld | ev.TokenCoalesced):
        return e.coalesce_id
    if isinstance(e, ev.TokenBuffered | ev.TokenConsumed):
        return e.batch_id
    return None


class RowDecisions:
    """The events beside a row's tokens' own that say what was decided about them, learnt in seq
    order: every event of each coalesce and batch one of the tokens was held or buffered in (an
    entity's events before the token's are kept until it closes: a batch opens before its first
    row is buffered, a coalesce before its first branch is held), and for each of the tokens'
    sink assignments the flush of that sink that followed (what made the write durable, and
    where in the file it landed)."""

    def __init__(self) -> None:
        self.ours: set[str] = set()
        self.waiting: dict[str, list[StoredEvent]] = {}  # events of open entities not (yet) known ours
        self.unflushed: set[str] = set()  # sinks one of the tokens was assigned to since their last flush

    def token_event(self, e: StoredEvent, taken: list[StoredEvent]) -> None:
        """One of the row's tokens' events (taken already)."""
        if e.event_type == "SinkAssigned" and isinstance(assigned := e.event, ev.SinkAssigned):
            self.unflushed.add(assigned.sink)
        elif e.event_type in ("TokenHeld", "TokenCoalesced", "TokenBuffered", "TokenConsumed"):
            entity = decision_named(e.event)
            if entity is not None and entity not in self.ours:
                self.ours.add(entity)
                taken += self.waiting.pop(entity, [])

    def other_event(self, e: StoredEvent, taken: list[StoredEvent]) -> None:
        """An event of no token of the row: taken when it is one of the row's decisions."""
        if e.machine in DECISION_MACHINES:
            if e.entity_id in self.ours:
                taken.append(e)
            elif e.event_type in _CLOSING:
                self.waiting.pop(e.entity_id, None)
            else:
                self.waiting.setdefault(e.entity_id, []).append(e)
        elif (
            e.event_type == "SinkFlushed"
            and self.unflushed
            and isinstance(flushed := e.event, ev.SinkFlushed)
            and flushed.sink in self.unflushed
        ):
            self.unflushed.discard(flushed.sink)
            taken.append(e)


def build_proof(
    recorder: PostgresRecorder,
    run_id: str,
    newest: Witnessed,
    *,
    origin: str,
    key: Verifier,
    seq: int | None = None,
    row: int | None = None,
    payloads: bool = True,
    kept: Checkpoint | None = None,
    unsigned_erasures: bool = False,
) -> ProofBundle:
    """The proof bundle of event `seq`, or of every event of source row `row`'s lineage, in the
    tree the checkpoint `newest` signs, with a consistency proof from `kept` (a checkpoint the
    auditor kept) when given. Reads the log once (every leaf is needed for the paths: 32 bytes an
    event). ExportError if the run has no such event or row in that tree, or its log does not
    extend `kept`."""
    leaves: list[bytes] = []
    settings: list[StoredEvent] = []
    chosen: list[StoredEvent] = []
    found = Lineage(() if row is None else {row})
    decisions = RowDecisions()
    undecodable: int | None = None

    def take(e: StoredEvent) -> None:
        if row is None:
            if e.seq == seq:
                chosen.append(e)
            return
        if e.machine == "run" and e.event_type in _SETTINGS_EVENTS and getattr(e.event, "settings", None) is not None:
            settings.append(e)
        created = e.event if e.machine == "token" and e.event_type == "TokenCreated" else None
        if found.row_of(e, created) is not None:
            chosen.append(e)
            decisions.token_event(e, chosen)
        else:
            decisions.other_event(e, chosen)

    def through(events: Iterable[StoredEvent]) -> Iterator[StoredEvent]:
        nonlocal undecodable
        for e in events:
            leaves.append(leaf_hash(e.hash))
            yield e  # (to the chain check first, as an export's are)
            if undecodable is None:
                try:
                    take(e)
                except (StatechartError, msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                    undecodable = e.seq

    # What `verify` would refuse for the store's sake is found here, as `export` finds it: the
    # chain, the signed root, an event whose body does not decode (a review: a traceback).
    from landscape.verify_store import chain_beside  # (the database's; `verify` of a bundle needs none)

    chain = chain_beside(recorder, run_id, newest.size - 1, [newest.size], through)
    if chain.bad or undecodable is not None:
        at = chain.events if chain.bad else undecodable
        raise ExportError(
            f"the store's log of run {run_id} does not verify at seq {at} (its chain, or what an event says it is): "
            f"no proof was written; see `elspeth replay {run_id} --check`"
        )
    if len(leaves) < newest.size:
        raise ExportError(
            f"run {run_id} has {len(leaves)} events, fewer than its newest checkpoint signs ({newest.size}): "
            "see `elspeth replay --check`"
        )
    if chain.roots.get(newest.size) != newest.root:
        raise ExportError(
            f"the store's log of run {run_id} is not the one its signed checkpoint of {newest.size} events signs (its "
            f"Merkle root differs): events were changed; no proof was written; see `elspeth replay {run_id} --check`"
        )
    if not chosen:
        subject = f"row {row + 1}" if row is not None else f"event seq {seq}"  # (row counts from 1, as --row)
        raise ExportError(f"run {run_id} has no {subject} in its signed tree of {newest.size} events")
    chosen.sort(key=lambda e: e.seq)  # (a decision's events before its token's were held back till then)
    proofs = inclusion_proofs([e.seq for e in [*chosen, *settings]], newest.size, leaves)
    extends = None if kept is None else _extension(kept, origin, newest, leaves)
    hashes = list(dict.fromkeys(h for e in chosen for h in row_hashes(e.event)))
    present = recorder.payloads(run_id, hashes) if payloads else {}
    absent = [h for h in hashes if h not in present]
    erasures = recorder.erasures(run_id, absent) if absent else {}
    erased = [erasures[h] for h in hashes if h in erasures]
    # As `export`: a payload changed, or gone without an erasure record, is found here (a review).
    for h in hashes:
        if h in present and not payload_matches(h, present[h]):
            raise ExportError(
                f"row payload {h} does not match its commitment in the store: its data or salt was changed; no proof "
                f"was written; see `elspeth replay {run_id} --check`"
            )
        if payloads and h not in present and h not in erasures:
            raise ExportError(
                f"row payload {h} is missing from the store, and no erasure record says why; no proof was written; see "
                f"`elspeth replay {run_id} --check`"
            )
    return ProofBundle(
        format=BUNDLE_FORMAT, run_id=run_id, origin=origin, key=key.text(), seq=seq, row=row, checkpoint=newest.note,
        events=[ProvenEvent(EventRecord.of(e), [p.hex() for p in proofs[e.seq]]) for e in chosen],
        payloads_included=payloads,
        payloads=[PayloadRecord(hash=h, salt=present[h].salt, data=present[h].data) for h in hashes if h in present],
        erased=[ErasedRecord.of(e) for e in erased], extends=extends,
        seals=_seal_proofs(recorder, run_id, erased, key, origin, unsigned_erasures),
        settings=[ProvenEvent(EventRecord.of(e), [p.hex() for p in proofs[e.seq]]) for e in settings],
    )  # fmt: skip


def _seal_proofs(
    recorder: Recorder, run_id: str, erased: list[Erasure], key: Verifier, origin: str, unsigned_erasures: bool
) -> list[SealProof]:
    """Each erasure record's seal and audit path; ExportError for one that would not count as
    signed by `key` (`verify` would refuse the bundle), but one signed by nothing with
    `unsigned_erasures` (which then has none)."""
    stored = recorder.erasure_seals(e.seal_id for e in erased if e.seal_id is not None)
    store_id = parse_run_origin(origin)[0]
    verdicts = {i: verdict(found, key, store_id) for i, found in stored.items()}  # (each seal once)
    trees: dict[int, tuple[list[bytes], list[bytes]]] = {}  # seal -> its digests in order, their leaves
    proofs = []
    for e in erased:
        if e.seal_id is None:
            if unsigned_erasures:
                continue
            _refuse_unsealed(e, run_id, _SIGNED_BY_NOTHING.removeprefix("is "))
        problem = record_why(e.run_id, e.digest(), verdicts.get(e.seal_id, MISSING))
        if problem is not None:
            _refuse_unsealed(e, run_id, problem)
        if e.seal_id not in trees:
            ordered = sorted(stored[e.seal_id].digests)
            trees[e.seal_id] = (ordered, leaves(ordered))
        ordered, tree = trees[e.seal_id]
        index = bisect.bisect_left(ordered, e.digest())  # (there: `record_why` found it among them)
        path = inclusion_proof(index, len(ordered), tree)
        proofs.append(SealProof(digest=e.digest().hex(), note=stored[e.seal_id].note, index=index,
                                proof=[p.hex() for p in path]))  # fmt: skip
    return proofs


def _refuse_unsealed(e: Erasure, run_id: str, problem: str) -> NoReturn:
    raise ExportError(
        f"the erasure record of row payload {e.hash} does not count as signed: {problem}; `verify` would not "
        f"count it: no bundle was written; see `elspeth replay {run_id} --check`"
    )


def _extension(kept: Checkpoint, origin: str, newest: Witnessed, leaves: list[bytes]) -> Extension:
    """The consistency proof from `kept` to `newest`, checked here so that a log that does not
    extend what the auditor saw is refused by the operator's command already."""
    what = f"the checkpoint given ({kept.size} events)"
    if kept.origin != origin:
        raise ExportError(f"{what} is of {kept.origin}, not of {origin}")
    if kept.size > newest.size:
        raise ExportError(
            f"{what} signs more events than the run's newest checkpoint ({newest.size}): "
            "the log was cut back; see `elspeth replay --check`"
        )
    proof = consistency_proof(kept.size, newest.size, leaves) if 0 < kept.size < newest.size else []
    try:
        verify_consistency(kept.size, newest.size, proof, kept.root, newest.root)
    except ProofError as e:
        raise ExportError(
            f"the run's log does not extend {what}: its history was rewritten ({e}); see `elspeth replay --check`"
        ) from None
    return Extension(size=kept.size, root=kept.root.hex(), proof=[p.hex() for p in proof])
