"""Signed erasures: the note `elspeth purge` signs over the erasure records it writes.

An erasure record explains why a payload the log references is gone. Unsigned, it is the word
of whoever could write to the store: someone with the owner's rights (or a superuser's) could
delete a payload and write a record explaining it, and no verifier could tell. So `purge` signs,
with the key that signs the runs' checkpoints, in the transaction that records and deletes, a
note over the records it writes of each run (of each part, for a long run): a *seal*.

What is signed is the Merkle tree (RFC 6962 hashing, `landscape.merkle`) whose leaves are the
records' digests (`Erasure.digest`: every field of a record, its time and role included), in
ascending byte order. The note text is exactly

    elspeth erasures\\n<the run's origin>\\n<number of records>\\n<base64 of the tree's root>\\n

Its first line makes it no checkpoint (a checkpoint's first line is an origin, which has no
space), and a checkpoint no seal. A tree rather than a list lets one record be proved with its
audit path (a proof bundle), while an export lists every digest of a seal once.

A record counts as signed when a seal of its run holds its digest and the seal's note verifies
with the key the verifier was given. Changing, adding or removing any record of a seal changes
its root: then none of its records counts as signed (the verifier cannot tell which was changed).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from landscape.checkpoint import CheckpointError, parse_run_origin, run_origin
from landscape.errors import quoted
from landscape.merkle import HASH_SIZE, leaf_hash
from landscape.merkle import root as merkle_root
from landscape.note import NoteError, Signer, Verifier, b64decode_strict, open_note, parse_note
from landscape.records import Erasure, Sealed

HEAD = "elspeth erasures"
_COUNT = re.compile(r"[1-9][0-9]{0,18}")  # (no more: a hostile note's count is read before its signature)
# The run part of the origin of a seal over records of no run: a retention of payloads kept
# before payloads had a run (migration 0007), which may serve any run. No run is named `*`.
NO_RUN = "*"


def origin_of(store_id: str, run_id: str | None) -> str:
    """The origin of a seal over erasure records of run `run_id` (None: of no run, `NO_RUN`)."""
    return run_origin(store_id, NO_RUN if run_id is None else run_id)


def origin_for(note: str, run_origin_text: str) -> str:
    """The origin a seal `note` found beside run `run_origin_text`'s records (an export, a bundle)
    must be checked against: the run's own, or the store's `NO_RUN` one when the note claims it."""
    store_id, _run = parse_run_origin(run_origin_text)
    no_run = run_origin(store_id, NO_RUN)
    try:
        claimed = parse_seal(parse_note(note).text).origin
    except NoteError:
        return run_origin_text
    return no_run if claimed == no_run else run_origin_text


@dataclass(frozen=True)
class Seal:
    """A claim, once signed, that run `origin` had exactly these `size` erasure records written
    together, their digests' tree having root `root`."""

    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{HEAD}\n{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def leaves(digests: Iterable[bytes]) -> list[bytes]:
    """The leaf hashes of a seal's tree: of the digests, in ascending order."""
    return [leaf_hash(d) for d in sorted(digests)]


def seal_of(origin: str, digests: Collection[bytes]) -> Seal:
    """The seal of these record digests (distinct: `purge` writes one record per payload)."""
    if not digests:
        raise ValueError("a seal is of one record or more")
    return Seal(origin, len(digests), merkle_root(leaves(digests)))


def sign(signer: Signer, origin: str, digests: Collection[bytes]) -> str:
    return signer.sign(seal_of(origin, digests).text())


def parse_seal(text: str) -> Seal:
    lines = text.split("\n", 5)
    if len(lines) != 5 or lines[0] != HEAD or lines[4] != "":
        raise CheckpointError(f"a seal's text is {HEAD!r}, an origin, a count and a root, each on its line")
    _head, origin, count, root, _end = lines
    if not _COUNT.fullmatch(count):
        raise CheckpointError(
            f"a seal's count {quoted(count, 30)} is not a positive decimal number without "
            "leading zeros, of at most 19 digits"
        )
    raw = b64decode_strict(root, "seal root hash")
    if len(raw) != HASH_SIZE:
        raise CheckpointError(f"a root hash is {HASH_SIZE} bytes, not {len(raw)}")
    return Seal(origin, int(count), raw)


def open_seal(note: str, verifier: Verifier | None, origin: str) -> Seal:
    """The seal a note holds, of `origin`, once `verifier`'s signature verifies (with no key, its
    form only: it proves nothing then). NoteError saying why not."""
    text = open_note(note, verifier).text if verifier is not None else parse_note(note).text
    seal = parse_seal(text)
    if seal.origin != origin:
        raise CheckpointError(f"the seal is of {quoted(seal.origin)}, not {quoted(origin)}")
    return seal


def why_not_sealed(note: str, digests: Collection[bytes], verifier: Verifier | None, origin: str) -> str | None:
    """None when `note` is a seal of `origin` over exactly these record digests (signed by
    `verifier`, when given); else why not, as a phrase about the seal."""
    try:
        seal = open_seal(note, verifier, origin)
    except NoteError as e:
        return f"its seal does not verify: {e}"
    if seal.size != len(digests):
        signs = f"{seal.size} record(s), not these {len(digests)}"
    elif merkle_root(leaves(digests)) != seal.root:
        signs = f"other records than these {len(digests)}"  # (as many: "4, not these 4" read as a slip)
    else:
        return None
    return f"its seal signs {signs}: records under it were changed, added or removed"


@dataclass(frozen=True)
class Verdict:
    """What one seal read from the store proves: the run it is of ('' for records of no run; None
    for a seal that is not there), the digests it signs, and why it proves nothing, if it does not
    (then `digests` is empty)."""

    run_id: str | None
    digests: frozenset[bytes]
    why: str | None


def unsealed(
    erased: Mapping[str, Erasure],
    seals: Mapping[int, Sealed],
    verifier: Verifier | None,
    store_id: str,
    checked: dict[int, Verdict] | None = None,
    *,
    accept_unsigned: bool = False,
) -> dict[str, str]:
    """Of these erasure records (payload name -> its record, read from the store), those that do
    not count as signed, each with why (a phrase about the record). A record counts when the seal
    it names verifies (`why_not_sealed`), is of its run and holds its digest: each record is
    checked on its own, as the records and the seals' digests are two reads of the store. With no
    key, or with `accept_unsigned` (`--unsigned-erasures`), a record that names no seal counts as
    the store's word, as before seals.
    `checked`: each seal's verdict so far, kept by a caller that asks in parts, so that a seal of
    hundreds of thousands of records is read and checked once; `seals` need then hold only those
    not in it."""
    checked = {} if checked is None else checked
    out: dict[str, str] = {}
    for h, e in erased.items():
        why: str | None
        if e.seal_id is None:
            if verifier is None or accept_unsigned:
                continue
            why = (
                "it is signed by nothing: written before `purge` signed its records (migration 0012), or by someone "
                "who could write to the store but not sign"
            )
        else:
            if e.seal_id not in checked:
                checked[e.seal_id] = verdict(seals.get(e.seal_id), verifier, store_id)
            why = record_why(e.run_id, e.digest(), checked[e.seal_id])
        if why is not None:
            out[h] = why
    return out


def record_why(run_id: str | None, digest: bytes, seal: Verdict) -> str | None:
    """Why a record of run `run_id` with this digest does not count under the seal it names, if
    it does not: the seal proves nothing, is of another run, or does not sign this record."""
    if seal.run_id is not None and seal.run_id != (run_id or ""):  # (records of no run: under run '')
        return f"the seal it names is of {f'run {seal.run_id}' if seal.run_id else 'records of no run'}"
    if seal.why is not None:
        return seal.why
    if digest not in seal.digests:
        return "it is not among the records its seal signs"
    return None


# The verdict on a seal a record names that is not in the store.
MISSING = Verdict(None, frozenset(), "the seal it names is not in the store")


def verdict(sealed: Sealed | None, verifier: Verifier | None, store_id: str) -> Verdict:
    """What a seal as the store holds it proves (None: a seal a record names that is not there)."""
    if sealed is None:
        return MISSING
    try:
        origin = origin_of(store_id, sealed.run_id or None)
    except NoteError as err:  # (a store id or run id no origin can hold)
        return Verdict(sealed.run_id, frozenset(), f"its seal cannot be checked: {err}")
    why = why_not_sealed(sealed.note, sealed.digests, verifier, origin)
    return Verdict(sealed.run_id, frozenset() if why else frozenset(sealed.digests), why)
