"""The verifier: a pure function of stored events (and the payloads supplied), no database.

It checks, in one pass: seq continuity from 0, each body against its payload hash, each link of
the hash chain, that every event decodes and names its machine, and that every event is a legal
transition from the state the fold is in. It stops at the first bad event and names it. `replay`
and `resume` read the log through it (the fold it returns is the replayed state), a long log in two
halves run by two processes (`check_chain`, `check_events`, `joined`; `landscape.verify_store`);
`elspeth verify` of an exported file runs it unchanged, with no driver installed.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from landscape.canonical import commitment, well_split
from landscape.chain import GENESIS, event_hash
from landscape.checkpoint import EMPTY_LOG, Checkpoint, CheckpointError, open_checkpoint, parse_checkpoint
from landscape.errors import ChainBroken, CorruptLog, quoted
from landscape.fold import IllegalEvent, RunFold
from landscape.merkle import EMPTY_ROOT, MerkleAccumulator
from landscape.notary import Witnessed
from landscape.note import NoteError, Verifier, parse_note
from landscape.records import Erasure, Payload, StoredEvent
from landscape.token_ids import EndedIds
from statecharts import events as ev
from statecharts.compiled import EVENT_MACHINE
from statecharts.errors import StatechartError
from statecharts.events import encode_event

Observer = Callable[[StoredEvent, ev.EventBase], None]


@dataclass(frozen=True, slots=True)
class Finding:
    """The first bad record: its seq and why."""

    seq: int
    why: str


@dataclass(slots=True)
class Verification:
    run_id: str
    fold: RunFold
    events: int = 0
    head: bytes = GENESIS
    # Row payload hash -> the first seq that references it (for the payload check). When the
    # store was asked as the log was read (`check_events`' `confirm`), only those it did not
    # confirm and those noted since it was last asked.
    referenced: dict[str, int] = field(default_factory=dict)
    # Referenced payloads that a recorded erasure explains (filled by `verify_run`).
    erased: dict[str, Erasure] = field(default_factory=dict)
    # The Merkle root of the first n events, for each n asked for (`roots_at`), and of them all.
    roots: dict[int, bytes] = field(default_factory=dict)
    root: bytes = EMPTY_ROOT
    # The Merkle tree of the good events: a resumed writer continues it without re-reading.
    tree: MerkleAccumulator = field(default_factory=MerkleAccumulator)
    bad: Finding | None = None

    @property
    def ok(self) -> bool:
        return self.bad is None

    def raise_if_bad(self) -> Verification:
        if self.bad is not None:
            raise ChainBroken(self.run_id, self.bad.seq, self.bad.why)
        if self.events == 0:
            raise CorruptLog(f"run {self.run_id} has no events")
        return self


def verify_events(
    run_id: str,
    events: Iterable[StoredEvent],
    *,
    observe: Observer | None = None,
    roots_at: Collection[int] = (),
    references: bool = True,
) -> Verification:
    """Verify a run's stored events in seq order, folding them as it goes (strict fold: an event
    for a token that already ended is caught), and build their Merkle tree (leaf: each event's
    chain hash), keeping the root at each size in `roots_at`. With `references`, note every row
    payload the events reference (`Verification.referenced`, for a payload check; a resume, which
    loads only its live tokens' rows, goes without: a million-row run references millions).
    Never raises for a bad log: the result says."""
    result = Verification(run_id, RunFold(run_id, ended=EndedIds()))
    leaves = _Leaves(roots_at)
    with _reading(events):
        prev, expected = _verify_each(run_id, events, result, leaves, observe, references)
        leaves.flush()
    result.events, result.head, result.roots = expected, prev, leaves.roots
    result.root, result.tree = leaves.tree.root(), leaves.tree
    return result


_LEAF_BATCH = 4096


@contextlib.contextmanager
def _reading(events: Iterable[StoredEvent]) -> Iterator[None]:
    """Stopping at a bad event leaves a streaming reader unfinished: close it at the end (a reader
    of the store holds a transaction, and so its locks, until closed), not when it is collected."""
    try:
        yield
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: a verifier keeps hundreds of thousands of objects
    alive (the fold's tokens, the payloads read), and each collection of the oldest generation
    walks them all again; on a 1,000,000-event replay that was a tenth of the time. What is made
    inside (events, rows, hashes) holds no reference cycles, so nothing waits for a collection.
    For commands and the store's verification (`landscape.verify_store`), not for this module's
    functions: the pause is the whole process's, and a library caller's `observe` may make cycles."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Leaves:
    """The Merkle tree of the good events, fed their chain hashes in batches (memory stays
    bounded without checkpoints): at each size a root is wanted for, every `_LEAF_BATCH` events,
    and at the end (`flush`, also after a bad event: the tree holds exactly the good events)."""

    __slots__ = ("pending", "roots", "tree", "wanted")

    def __init__(self, wanted: Collection[int]) -> None:
        self.tree = MerkleAccumulator()
        self.wanted = set(wanted)
        self.roots: dict[int, bytes] = {}
        self.pending: list[bytes] = []

    def add(self, chain_hash: bytes, size: int) -> None:
        """The chain hash of the event that makes the log `size` events long."""
        self.pending.append(chain_hash)
        if size in self.wanted:
            self.flush()
            self.roots[size] = self.tree.root()
        elif len(self.pending) >= _LEAF_BATCH:
            self.flush()

    def flush(self) -> None:
        self.tree.extend_data(self.pending)
        self.pending.clear()


def _verify_each(
    run_id: str,
    events: Iterable[StoredEvent],
    result: Verification,
    leaves: _Leaves,
    observe: Observer | None,
    references: bool,
) -> tuple[bytes, int]:
    """The loop of `verify_events`; returns the head and the count of the good events. Each
    event costs a few microseconds, so what it calls is bound to locals."""
    apply, remember, add = result.fold.apply, result.referenced.setdefault if references else None, leaves.add
    prev, expected = GENESIS, 0
    for e in events:
        why = _check_record(run_id, e, expected, prev)
        if why is not None:
            result.bad = Finding(expected if e.seq > expected else e.seq, why)
            break
        why = _check_event(e, apply, remember, observe)
        if why is not None:
            result.bad = Finding(e.seq, why)
            break
        prev = e.hash
        expected += 1
        add(prev, expected)
    return prev, expected


# --- the same checks in two halves, for two processes (`landscape.verify_store`) ------------------
# Every check of `verify_events` is either about the chain (`_check_record`, the Merkle tree) or
# about the events' meaning (`_check_event`: the body, the fold). Two processes read the same
# events (one snapshot) and run one half each; when both find nothing, `joined` makes the very
# Verification `verify_events` would have returned. When either finds something, the caller runs
# `verify_events` on the same events, which names the first bad one as it always does.


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """The chain half of a verification: how many events were good, the head, the Merkle roots
    asked for and the tree (`MerkleAccumulator.to_bytes`), and whether one was bad (and why)."""

    events: int
    head: bytes
    roots: dict[int, bytes]
    tree: bytes
    bad: bool
    why: str | None = None


class ReadDigest:
    """What one read of the log showed, as a digest: every field of every event, its body
    included, in order (each event's MessagePack encoding, which spells each field apart). Two
    reads of the store in one snapshot are two answers of the server, and they can differ (a
    superuser's view in place of `events` can tell its readers apart): a verification that reads
    the log a second time (to name the first bad event) holds the second read to the first by
    their digests.

    It takes the events a page at a time (`digested`, `encode_page`): one encoding and one hash
    call per page, not per event. Per event, the same digest cost a 1,000,000-event check about
    3 CPU-s of its 17."""

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add_page(self, events: Sequence[StoredEvent]) -> None:
        """The next events read, in order."""
        if events:
            self.add_encoded(encode_page(events), len(events))

    def add_encoded(self, page: bytes, n: int) -> None:
        """The next `n` events read, as `encode_page` encoded them. The page's encoding less its
        array header is its events' encodings one after another: the digest does not depend on
        where pages end."""
        self._hash.update(memoryview(page)[_array_header_size(n) :])

    def digest(self) -> bytes:
        return self._hash.digest()


encode_page: Callable[[Sequence[StoredEvent]], bytes] = msgspec.msgpack.Encoder().encode
"""Events as one MessagePack array (of arrays: `StoredEvent` is `array_like`)."""
decode_page: Callable[[bytes], list[StoredEvent]] = msgspec.msgpack.Decoder(list[StoredEvent]).decode


def _array_header_size(n: int) -> int:
    """The bytes of a MessagePack array header for `n` items (fixarray, array 16, array 32)."""
    return 1 if n < 16 else 3 if n < 1 << 16 else 5


def digested(pages: Iterable[Sequence[StoredEvent]], read: ReadDigest) -> Iterator[StoredEvent]:
    """The events of `pages`, each page added to `read` before its events are handed on. Closing
    this closes `pages` (a reader of the store holds a transaction until closed)."""
    try:
        for page in pages:
            read.add_page(page)
            yield from page
    finally:
        close = getattr(pages, "close", None)
        if close is not None:
            close()


def check_chain(run_id: str, events: Iterable[StoredEvent], *, roots_at: Collection[int] = ()) -> ChainCheck:
    """`verify_events`' chain checks alone (seq, run, payload hash, links, machine; the tree)."""
    leaves = _Leaves(roots_at)
    add = leaves.add
    prev, expected, why = GENESIS, 0, None
    sha256, machines = hashlib.sha256, EVENT_MACHINE
    with _reading(events):
        for e in events:
            # `_check_record`'s checks, inline (the call was a tenth of this loop); it says which
            # one failed. The child of a long log's check spends its time here. (The run id is
            # compared too: the hash is of the verifier's, so a run id column changed alone
            # still matches it, a review found.)
            ph = e.payload_hash
            if (
                e.seq != expected
                or e.run_id != run_id
                or e.prev_hash != prev
                or sha256(e.payload).digest() != ph
                or event_hash(prev, run_id, expected, e.machine, e.entity_id, e.event_type, e.schema_version,
                              e.recorded_at_us, ph) != e.hash
                or machines.get(e.event_type) != e.machine
            ):  # fmt: skip
                why = _check_record(run_id, e, expected, prev)
                if why is not None:
                    break
            prev = e.hash
            expected += 1
            add(prev, expected)
        leaves.flush()
    return ChainCheck(expected, prev, leaves.roots, leaves.tree.to_bytes(), why is not None, why)


# The row payload names a verification holds before it has the store confirm them (`check_events`'
# `confirm`): each costs about 190 bytes (the name, its first seq, a dict slot), so about 200 MB.
# A log referencing fewer (a run of up to about 450,000 rows of the linear example) never asks.
CONFIRM_AT = 1 << 20


def check_events(
    run_id: str,
    events: Iterable[StoredEvent],
    *,
    observe: Observer | None = None,
    references: bool = True,
    confirm: Callable[[Mapping[str, int]], Iterable[str]] | None = None,
    confirm_at: int = CONFIRM_AT,
) -> Verification:
    """`verify_events`' other checks alone (each body, each transition, in seq order from 0).

    With `confirm` (which returns those of the names it is given that the store does not hold
    intact), the payload names noted are handed to it each time there are `confirm_at` of them, so
    that memory stays bounded however long the log: `Verification.referenced` then holds only
    the names not confirmed, each with the first seq that references it."""
    result = Verification(run_id, RunFold(run_id, ended=EndedIds()))
    referenced = result.referenced
    apply, remember = result.fold.apply, referenced.setdefault if references else None
    if confirm is None:
        confirm_at = 1 << 62
    kept: dict[str, int] = {}  # names `confirm` did not confirm, with their first seq
    expected, head = 0, GENESIS
    with _reading(events):
        for e in events:
            why = _check_event(e, apply, remember, observe) if e.seq == expected else "out of order"
            if why is not None:
                result.bad = Finding(e.seq, why)
                break
            expected += 1
            head = e.hash
            if len(referenced) >= confirm_at:
                assert confirm is not None
                for name in confirm(referenced):
                    kept.setdefault(name, referenced[name])  # (a name kept earlier has the lower seq)
                referenced.clear()
    for name, seq in kept.items():
        referenced[name] = min(seq, referenced.get(name, seq))
    result.events, result.head = expected, head  # the head as stored: `joined` compares it
    return result


def joined(checked: Verification, chain: ChainCheck) -> Verification | None:
    """The two halves' results, over the same events, as one `Verification` when both found
    nothing; None otherwise (then `verify_events` says what is wrong)."""
    if checked.bad is not None or chain.bad:
        return None
    if (checked.events, checked.head) != (chain.events, chain.head):
        return None
    checked.roots = chain.roots
    checked.tree = MerkleAccumulator.from_bytes(chain.tree)
    checked.root = checked.tree.root()
    return checked


def unconfirmed(referenced: Iterable[str], rows: Iterable[tuple[bytes, bytes, bytes]]) -> set[str]:
    """Of the `referenced` row payloads (by their names as the events spell them), those not found
    intact among these stored ones (hash, salt, data): whose salt and data hash to the name and
    are split as ELSPETH splits them (`well_split`). Only a referenced payload is hashed, and none
    is kept: a scan of millions holds one page at a time. A name in capitals is no payload's name,
    so it stays (and `verify_run` then finds no payload of that name)."""
    left = set(referenced)
    sha256, discard = hashlib.sha256, left.discard
    for h, salt, data in rows:
        name = h.hex()
        if name in left and sha256(salt + data).digest() == h and well_split(salt, data):
            discard(name)
    return left


def verify_checkpoints(
    verified: Verification, checkpoints: Iterable[Witnessed], verifier: Verifier | None, origin: str
) -> Finding | None:
    """Each signed checkpoint (from the store or a witness file) against the log as verified:
    its signature and origin (when a verifier key is given), that the log is at least as long
    (a shorter log is a named truncation), and that the first `size` events hash to its root.
    `verified` must have been built with `roots_at` holding every checkpoint's size."""
    for cp in sorted(checkpoints, key=lambda c: c.size):
        where = f"checkpoint of {cp.size} events signed at {cp.recorded_at} ({cp.where})"
        try:
            signed = signed_checkpoint(cp.note, verifier, origin)
        except NoteError as e:
            return Finding(min(max(cp.size, 0), verified.events), f"the {where} does not verify: {e}")
        # The size and root a record holds beside its note (a store's columns, a witness line's
        # field) are not signed: they must be the note's, or a relabelled note would vouch for a
        # log cut short.
        if (cp.size, cp.root) != (signed.size, signed.root):
            return Finding(
                min(max(cp.size, 0), signed.size, verified.events),
                f"the {where} holds a size or root other than its signed note's ({signed.size} events): "
                "the record was changed",
            )
        if cp.size == 0:  # (taken unseen: no root is kept for 0 events, nor one of another root refused)
            return Finding(0, f"the {where} {EMPTY_LOG}")
        if cp.size > verified.events:
            return Finding(verified.events, f"{events_span(verified.events, cp.size - 1)} missing; {where}")
        if cp.size > 0 and verified.roots.get(cp.size) != cp.root:
            return Finding(cp.size - 1, f"the first {cp.size} events do not hash to the root of the {where}")
    return None


def events_span(first: int, last: int) -> str:
    """ "event 7", or "events 7 to 9"."""
    return f"event {first}" if first == last else f"events {first} to {last}"


def signed_checkpoint(note: str, verifier: Verifier | None, origin: str) -> Checkpoint:
    """The checkpoint a note holds, of `origin`; its signature checked when there is a key."""
    if verifier is not None:
        return open_checkpoint(note, verifier, origin=origin)
    checkpoint = parse_checkpoint(parse_note(note).text)
    if checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint is of {quoted(checkpoint.origin)}, not {quoted(origin)}")
    return checkpoint


def checkpoint_of(note: str, size: int, verifier: Verifier | None, origin: str) -> Checkpoint | None:
    """The checkpoint `note` holds when it is one of `origin` over `size` events (signed by
    `verifier`, when given); None when it is not. What a log's end is held to: ELSPETH signs the
    whole log with each commit, so a log always ends where one of its checkpoints does."""
    try:
        checkpoint = signed_checkpoint(note, verifier, origin)
    except NoteError:  # (a CheckpointError among them)
        return None
    return checkpoint if checkpoint.size == size else None


def _check_record(run_id: str, e: StoredEvent, expected: int, prev: bytes) -> str | None:
    if e.run_id != run_id:
        return f"an event of run {e.run_id} is in this run's log"
    if e.seq != expected:
        return f"seq {expected} is missing" if e.seq > expected else f"seq {e.seq} appears again or out of order"
    if hashlib.sha256(e.payload).digest() != e.payload_hash:
        return "the event body does not match its payload hash"
    if e.prev_hash != prev:
        return "prev_hash does not match the previous event's hash"
    fields = (e.machine, e.entity_id, e.event_type, e.schema_version, e.recorded_at_us)
    if event_hash(prev, run_id, e.seq, *fields, e.payload_hash) != e.hash:
        return "the event header or hash was altered"
    if EVENT_MACHINE.get(e.event_type) != e.machine:
        return f"event type {e.event_type!r} does not belong to machine {e.machine!r}"
    return None


def _check_event(
    e: StoredEvent,
    apply: Callable[[int, str, ev.EventBase], object],
    remember: Callable[[str, int], object] | None,
    observe: Observer | None,
) -> str | None:
    """Decode the body, check it says what its columns say, fold it (`apply`), note the row
    payloads it references (`remember`) and show it to `observe`; why not, if it is bad."""
    try:
        event = e.event
    except (StatechartError, msgspec.DecodeError, msgspec.ValidationError) as err:
        return f"the event body cannot be read: {err}"
    except RecursionError:
        return "the event body cannot be read: it is nested too deeply"
    why = check_body(e, event)
    if why is not None:
        return why
    try:
        apply(e.seq, e.entity_id, event)
    except IllegalEvent as err:
        return f"not a legal transition: {err.detail}"
    if remember is not None:  # `row_hashes`, without a call and a tuple per event: half the cost
        if type(event) is _STEP:
            remember(event.input_hash, e.seq)
            remember(event.output_hash, e.seq)
        elif type(event) is _CREATED:
            remember(event.data_hash, e.seq)
    if observe is not None:
        observe(e, event)
    return None


def check_body(e: StoredEvent, event: ev.EventBase) -> str | None:
    """The body says what its columns say, in the one encoding the writer produces. Its type
    tag picks the class it decodes to, and keys it does not know are dropped on decoding, but the
    projections read the `event_type` column and the body's keys by name: a body that differed
    from its decoding could make them show what the log does not say."""
    kind = type(event)
    if kind.__name__ != e.event_type:
        return f"the event body is a {kind.__name__}, its event_type column says {e.event_type}"
    if e.schema_version != kind.SCHEMA_VERSION or encode_event(event) == e.payload:
        return None
    # Not byte for byte what the writer makes today: a body written before fields at their
    # default were left out spells them out. Each key must be one of the event's, and no object,
    # at any depth (a resume's `nodes`), may have a key twice: which one a decoder keeps is its own.
    try:
        keys = json.loads(e.payload, object_pairs_hook=_once).keys()
    except RecursionError:
        return "the event body is not written as ELSPETH writes it, and is nested too deeply to read its keys"
    except _KeyTwice:
        keys = None
    except ValueError:  # (what msgspec reads, Python's json may not: a number of over 4,300 digits)
        return "the event body is not written as ELSPETH writes it, and its keys cannot be read"
    if keys is None or not keys <= {"type", *kind.__struct_fields__}:
        return "the event body holds a key that its event does not have, or a key twice"
    return None


_STEP, _CREATED = ev.StepCompleted, ev.TokenCreated


class _KeyTwice(ValueError):
    pass


def _once(pairs: list[tuple[str, object]]) -> dict[str, object]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _KeyTwice
    return found


def row_hashes(event: ev.EventBase) -> tuple[str, ...]:
    """The row payloads an event references (only token creation and steps carry row data)."""
    if isinstance(event, ev.TokenCreated):
        return (event.data_hash,)
    if isinstance(event, ev.StepCompleted):
        return (event.input_hash, event.output_hash)
    return ()


def payload_matches(hash_hex: str, payload: Payload) -> bool:
    return commitment(payload.salt, payload.data) == hash_hex and well_split(payload.salt, payload.data)


def verify_payloads(
    referenced: Mapping[str, int],
    supplied: Mapping[str, Payload],
    *,
    explained: Collection[str] | None = None,
    unsigned: Mapping[str, str] | None = None,
) -> Finding | None:
    """Every referenced row payload is supplied and matches its hash, or a recorded erasure
    explains its absence (`explained`: the hashes of those). `unsigned`: hash -> why the erasure
    record of a payload does not explain it (`landscape.seal.unsealed`). The finding names the
    lowest seq."""
    bad: Finding | None = None
    for h, seq in referenced.items():
        data = supplied.get(h)
        if data is None:
            if explained is not None and h in explained:
                continue
            if unsigned is not None and h in unsigned:
                why = f"row payload {h} it references is gone, and its erasure record does not count: {unsigned[h]}"
            else:
                why = f"row payload {h} it references is missing from the payloads"
        elif not payload_matches(h, data):
            why = f"row payload {h} it references was altered in the payloads"
        else:
            continue
        if bad is None or seq < bad.seq:
            bad = Finding(seq, why)
    return bad
