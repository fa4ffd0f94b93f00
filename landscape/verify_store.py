"""Verifying a run as the store holds it: `verify_log` (the events) and `verify_run` (the events,
the signed checkpoints, the row payloads).

A long log is verified by two processes at once, from one read. Each event costs a few
microseconds of Python in one interpreter (decoding, four hashes, the Merkle tree, the fold), so
one process keeps one core busy and leaves the other to the server. This process reads the log,
in one snapshot of the database (`PostgresRecorder.shared_snapshot`) that its other reads share,
decodes and folds the events (`check_events`), and hands them on, a page at a time, to a child
that runs the chain half of the checks on the very same events (`landscape.chain_half`); then, for
`verify_run`, it hashes the payloads the events reference (`unconfirmed`). (Each process read the
log for itself before: the server did that work twice, and the two reads had to be held to be
the same by their digests, in all about 4 CPU-s of a 1,000,000-event check.) When both find
nothing, their results together are exactly what one pass (`verify_events`) returns. When either
finds something, or the child could not do its half, one pass over the same snapshot names the
first bad event, as it always has; that second read is held to the first (`held_to_first`), as a
server can answer two reads differently (whoever controls it can make it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence

from landscape.chain_half import SPLIT_AT, ChainHalf
from landscape.checkpoint import run_origin
from landscape.errors import StoreError, VerifierFailed
from landscape.notary import Witnessed
from landscape.note import Verifier
from landscape.postgres import PostgresRecorder
from landscape.records import StoredEvent
from landscape.seal import unsealed
from landscape.verify import (
    CONFIRM_AT,
    ChainCheck,
    Finding,
    Observer,
    ReadDigest,
    Verification,
    check_chain,
    check_events,
    checkpoint_of,
    digested,
    events_span,
    gc_paused,
    joined,
    unconfirmed,
    verify_checkpoints,
    verify_events,
    verify_payloads,
)


def verify_log(
    recorder: PostgresRecorder,
    run_id: str,
    *,
    upto_seq: int | None = None,
    observe: Observer | None = None,
    roots_at: Collection[int] = (),
    references: bool = True,
    payloads: bool = False,
    split_at: int = SPLIT_AT,
    confirm_at: int = CONFIRM_AT,
) -> tuple[Verification, dict[str, int]]:
    """`verify_events` over a run's stored events (up to `upto_seq`); never raises for a bad log.
    Also returns the row payloads the events reference that are yet to be checked (hash -> first
    seq): all of `Verification.referenced`, but when `payloads` and the log was long enough to be
    split, only those not found intact in the store (`unconfirmed`). Those are looked up as the log
    is read, each time `confirm_at` names are noted (`check_events`), so that memory stays bounded
    on any log; when there were fewer, in one scan at the end. `observe` sees each event of a good
    log once, exactly as verified; after a bad one, what it saw is not to be relied on. StoreError
    when the store showed two reads of the log different events (`_verify_split`). Cyclic garbage
    collection is paused meanwhile (`gc_paused`), also for `observe`."""
    last = recorder.last_seq(run_id)
    upto = last if upto_seq is None else min(upto_seq, last)
    with gc_paused():
        if upto + 1 < split_at:
            events = recorder.read_events(run_id, upto_seq=upto)
            one = verify_events(run_id, events, observe=observe, roots_at=roots_at, references=references)
            return one, one.referenced
        with recorder.shared_snapshot() as snapshot:
            return _verify_split(recorder, run_id, snapshot, upto, observe, roots_at, references, payloads, confirm_at)


def _verify_split(
    recorder: PostgresRecorder,
    run_id: str,
    snapshot: str,
    upto: int,
    observe: Observer | None,
    roots_at: Collection[int],
    references: bool,
    payloads: bool,
    confirm_at: int,
) -> tuple[Verification, dict[str, int]]:
    """`verify_log` of a long log: the halves in two processes, else one pass in the snapshot."""

    def events() -> Iterator[StoredEvent]:
        return recorder.read_events(run_id, upto_seq=upto, snapshot=snapshot)

    def pages() -> Iterator[list[StoredEvent]]:
        return recorder.read_pages(run_id, upto_seq=upto, snapshot=snapshot)

    probed = False

    def confirm(names: Mapping[str, int]) -> set[str]:
        """Those of `names` the snapshot does not hold intact (see `unconfirmed`)."""
        nonlocal probed
        probed = True
        return unconfirmed(names, recorder.probe_payloads(run_id, names, snapshot))

    with ChainHalf(run_id, roots_at) as chain:
        checked = check_events(
            run_id, chain.tap(events()), observe=observe, references=references,
            confirm=confirm if payloads else None, confirm_at=confirm_at,
        )  # fmt: skip
        left = checked.referenced
        if payloads and left and checked.bad is None:
            # Those noted since the last probe; all of them when there was none, and then one
            # scan of the run's payloads reads them faster than probes would.
            rows = (
                recorder.probe_payloads(run_id, left, snapshot) if probed else recorder.scan_payloads(run_id, snapshot)
            )
            left = {h: left[h] for h in unconfirmed(left, rows)}
        answer = chain.result() if checked.bad is None else None
        taken = chain.digest()
    if answer is not None and (halves := joined(checked, answer)) is not None:
        return halves, left
    # Something is wrong, or the second process could not do its half (it did not start, or
    # failed): one pass in the same snapshot names the first bad event, or finds none.
    first_bad = checked.bad is not None or (answer is not None and answer.bad)
    del checked, left  # (the first pass's fold and names: not held through the second)
    read = ReadDigest()
    one = verify_events(run_id, digested(pages(), read), roots_at=roots_at, references=references)
    if one.bad is None:
        held_to_first(first_bad, taken, read, run_id, observed=observe is not None)
    return one, one.referenced


def held_to_first(first_bad: bool, taken: bytes | None, second: ReadDigest, run_id: str, *, observed: bool) -> None:
    """A second read of the log, which one pass found good, against the first: StoreError when
    they differ. The checks are the same whichever process runs them, so a first read found bad
    (by either half) shows the server answered two reads differently. Otherwise the first read
    is held to the second by its digest, when this process took one (`ChainHalf.digest`: no
    child started). When it took none (the child failed or was killed) and something `observed`
    that first read, what it saw stands on nothing: VerifierFailed, and nothing is concluded."""
    if first_bad or (taken is not None and taken != second.digest()):
        raise StoreError(_TWO_FACED.format(run_id=run_id))
    if taken is None and observed:
        raise VerifierFailed(
            f"run {run_id}: the second process of the check ended without an answer (was it killed?), so what was "
            "shown of the log's first read cannot be held to the second: nothing was concluded; run it again"
        )


# A server that showed two reads of one snapshot different events: whoever controls it is lying.
_TWO_FACED = (
    "the store showed two reads of run {run_id}'s log in one snapshot different events: it is not to be trusted "
    "(see docs/verification.md, the threat model)"
)


def verify_run(
    recorder: PostgresRecorder,
    run_id: str,
    *,
    upto_seq: int | None = None,
    observe: Observer | None = None,
    checkpoints: Sequence[Witnessed] = (),
    verifier: Verifier | None = None,
    payloads: bool = True,
    split_at: int = SPLIT_AT,
    confirm_at: int = CONFIRM_AT,
    as_of_now: bool = True,
    unsigned_erasures: bool = False,
) -> Verification:
    """Verify a run's log (`verify_log`), check the signed `checkpoints` against it (see
    `verify_checkpoints`) and, unless the reader looks at the log as it was at an earlier seq
    (`as_of_now` false), that the store's log ends where one of them does (`unsigned_end`);
    then, with `payloads`, the row payloads it references (`explain` checks only those of the
    rows it shows, and says which are bad): a payload gone counts as erased only under an erasure
    record whose seal verifies with `verifier` (`landscape.seal.unsealed`; one no seal signs with
    `unsigned_erasures` too). Raises ChainBroken naming the first bad seq (CorruptLog when the run
    has no events)."""
    sizes = [cp.size for cp in checkpoints]
    with gc_paused():  # the payloads read are as many as the rows: see `gc_paused`
        verified, left = verify_log(
            recorder, run_id, upto_seq=upto_seq, observe=observe, roots_at=sizes, references=payloads,
            payloads=payloads, split_at=split_at, confirm_at=confirm_at,
        )  # fmt: skip
        verified.raise_if_bad()
        if checkpoints:
            origin = run_origin(recorder.store_id(), run_id)
            verified.bad = verify_checkpoints(verified, checkpoints, verifier, origin)
            if verified.bad is None and as_of_now:
                verified.bad = unsigned_end(recorder, run_id, verified, checkpoints, verifier, origin)
            verified.raise_if_bad()
        if not payloads:
            return verified
        # Those not found intact already (all, unless `verify_log` scanned): erased, altered, kept
        # before payloads had a run, or named other than a payload is (in capitals). Erased ones
        # first: a payload an erasure record covers is not read even when it is in the store
        # (`_REINSTATED`), so only the others are looked for (a run purged by retention: none).
        verified.erased = recorder.erasures(run_id, left) if left else {}
        present = recorder.payloads(run_id, [h for h in left if h not in verified.erased])
        # In neither: gone, unless a purge committed between the two reads (its records, then).
        late = [h for h in left if h not in present and h not in verified.erased]
        if late:
            verified.erased.update(recorder.erasures(run_id, late))
        # An erasure record explains a payload's absence only when it is signed (its seal's
        # note verifies with the key, and holds exactly the records that name it).
        seals = recorder.erasure_seals(e.seal_id for e in verified.erased.values() if e.seal_id is not None)
        unsigned = (
            unsealed(verified.erased, seals, verifier, recorder.store_id(), accept_unsigned=unsigned_erasures)
            if verified.erased
            else {}
        )
        for h, why in unsigned.items():
            if verified.erased[h].seal_id is None:
                unsigned[h] = f"{why} (--unsigned-erasures takes such records on the store's word)"
        explained = verified.erased.keys() - unsigned.keys()
        bad = verify_payloads(left, present, explained=explained, unsigned=unsigned)
    if bad is not None:
        verified.bad = bad
        verified.raise_if_bad()
    return verified


def unsigned_end(
    recorder: PostgresRecorder,
    run_id: str,
    verified: Verification,
    checkpoints: Sequence[Witnessed],
    verifier: Verifier | None,
    origin: str,
) -> Finding | None:
    """None when the run's log, as the store holds it now, ends where a signed checkpoint ends.

    ELSPETH signs a checkpoint of the whole log in the very transaction of each commit, so no
    committed event is ever past the newest one. Events that are were written by someone who can
    write to the store but cannot sign: appended to a run that had ended, they would be a
    resume's to continue (a forged row written, the source cursor moved past a real one) and
    `explain`'s to show. The log's end is read after `verified` was, and the store's checkpoints
    after that: a live run's later commits each bring their own, so a reader racing a writer
    finds its checkpoint. `checkpoints` were checked against `verified` already; one read here
    whose size is the end must be signed for this run (with `verifier`, when given) and, when
    `verified` reached that end, hash to its root."""
    end = recorder.last_seq(run_id) + 1
    newest = max((cp.size for cp in checkpoints), default=0)
    if end <= newest:
        return None  # (a log shorter than a checkpoint was named by verify_checkpoints)
    for cp in recorder.checkpoints(run_id):
        checkpoint = checkpoint_of(cp.note, end, verifier, origin) if cp.size == end else None
        if (
            checkpoint is not None
            and checkpoint.root == cp.root
            and (end != verified.events or cp.root == verified.root)
        ):
            return None
    return Finding(
        newest,
        f"{events_span(newest, end - 1)} of the store's log {'is' if end - newest == 1 else 'are'} signed by no "
        f"checkpoint (the newest signs {newest}): ELSPETH signs every commit, so they were written by someone who "
        "could write to the store but not sign, or their checkpoint was deleted with the witness file's copy",
    )


def chain_beside(
    recorder: PostgresRecorder,
    run_id: str,
    upto: int,
    roots_at: Collection[int],
    through: Callable[[Iterable[StoredEvent]], Iterable[StoredEvent]],
) -> ChainCheck:
    """The chain half of a verification (`check_chain`) of the run's events up to seq `upto`,
    while `through` takes the same events, each once, in order (an export writes them).

    A long log's chain is checked by a second process (`ChainHalf`) on the pages this process
    reads, so that `through` has a core of its own. A short one's is checked here, as `through`
    yields. Events that do not verify are said by the result (`ChainCheck.bad`; `events` counts the
    good ones before the first bad one); `through` may have taken some of them. StoreError when
    the store showed the read that `through` took and the one pass after it different events."""
    if upto + 1 < SPLIT_AT:
        return check_chain(run_id, through(recorder.read_events(run_id, upto_seq=upto)), roots_at=roots_at)
    with gc_paused(), recorder.shared_snapshot() as snapshot:
        with ChainHalf(run_id, roots_at) as chain:
            for _ in chain.tap(through(recorder.read_events(run_id, upto_seq=upto, snapshot=snapshot))):
                pass
            answer = chain.result()
            taken = chain.digest()
        if answer is not None and not answer.bad:
            return answer
        # The second process could not do its half, or found a bad event: one pass here, which
        # names the first bad one.
        read = ReadDigest()
        pages = recorder.read_pages(run_id, upto_seq=upto, snapshot=snapshot)
        one = check_chain(run_id, digested(pages, read), roots_at=roots_at)
    if not one.bad:
        held_to_first(answer is not None and answer.bad, taken, read, run_id, observed=True)  # (`through` saw it)
    return one
