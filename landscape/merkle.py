"""The Merkle tree of a run: RFC 6962 / RFC 9162 §2.1 tree hash, an incremental accumulator, and
inclusion and consistency proofs with their verifiers. Pure: no I/O.

Everything here works on *leaf hashes* (`leaf_hash(data)`), the 32-byte values the tree is built
from; which bytes are a leaf's data is `docs/verification.md`'s business, not this module's.
Proof generation reads leaf hashes through a `LeafSource`, so the same code runs over a list in
memory or over a store that fetches a range of leaves on demand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from landscape.errors import LandscapeError

HASH_SIZE = 32
#: MTH({}) = SHA-256 of nothing (RFC 9162 §2.1.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: `source(start, end)` returns the leaf hashes of leaves start..end-1, in order.
LeafSource = Callable[[int, int], Sequence[bytes]]
Leaves = LeafSource | Sequence[bytes]

# Proof generation builds subtrees larger than this from their halves, remembering each root,
# and reads smaller ones from the source in one call: memory stays bounded however large the
# tree is, and a store-backed source answers range queries of at most this many leaves.
_MEMO_MIN = 1024

_sha256 = hashlib.sha256


class ProofError(LandscapeError):
    """A Merkle proof does not verify, or its inputs are malformed; the message says which."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 ‖ data): the hash of one leaf."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ left ‖ right): the hash of an interior node."""
    return _sha256(b"\x01" + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The tree hash MTH of these leaves (any count, including none)."""
    return MerkleAccumulator.from_leaves(leaf_hashes).root()


class MerkleAccumulator:
    """The tree of an append-only log, kept as a compact range: the roots of the perfect subtrees
    that make up the leaves so far, largest first — popcount(size) hashes, at most 64.

    `append` costs one leaf-level push plus one node hash per carry (amortised one); `root()`
    folds the frontier right to left (popcount(size) - 1 hashes). `frontier` and `restore` let a
    writer persist the state in a few hashes and continue later without re-reading the log.
    """

    __slots__ = ("_frontier", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._frontier: list[bytes] = []

    @classmethod
    def from_leaves(cls, leaf_hashes: Iterable[bytes]) -> MerkleAccumulator:
        acc = cls()
        for h in leaf_hashes:
            acc.append(h)
        return acc

    @classmethod
    def restore(cls, size: int, frontier: Sequence[bytes]) -> MerkleAccumulator:
        """The accumulator whose `size` and `frontier` were these; refuses a frontier that cannot
        belong to a tree of that size."""
        if size < 0:
            raise ProofError(f"tree size {size} is negative")
        if len(frontier) != size.bit_count():
            raise ProofError(f"a tree of {size} leaves has {size.bit_count()} frontier hashes, not {len(frontier)}")
        _check_hashes(frontier, "frontier")
        acc = cls()
        acc._size = size
        acc._frontier = list(frontier)
        return acc

    @property
    def size(self) -> int:
        """Number of leaves appended."""
        return self._size

    @property
    def frontier(self) -> tuple[bytes, ...]:
        """Roots of the perfect subtrees covering the leaves, largest (leftmost) first."""
        return tuple(self._frontier)

    def append(self, leaf: bytes) -> None:
        """Add the leaf with this leaf hash (see `leaf_hash`) at index `size`."""
        if len(leaf) != HASH_SIZE:
            raise ProofError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
        node = leaf
        carry = self._size
        frontier = self._frontier
        # Each trailing 1 bit of the old size is a perfect subtree of the new leaf's height:
        # merge with it, exactly as binary addition carries.
        while carry & 1:
            node = _sha256(b"\x01" + frontier.pop() + node).digest()
            carry >>= 1
        frontier.append(node)
        self._size += 1

    def extend_data(self, items: Iterable[bytes]) -> None:
        """Append the leaves whose data are `items` (their leaf hashes are computed here): the same
        as `append(leaf_hash(d))` for each, without two Python calls per leaf (a replay appends
        one leaf per event)."""
        sha256 = _sha256
        frontier = self._frontier
        size = self._size
        try:
            for data in items:
                node = sha256(b"\x00" + data).digest()  # fails (not bytes) before any change
                carry = size
                while carry & 1:
                    node = sha256(b"\x01" + frontier.pop() + node).digest()
                    carry >>= 1
                frontier.append(node)
                size += 1
        finally:
            self._size = size

    def root(self) -> bytes:
        """MTH of the leaves so far (RFC 9162 §2.1.1)."""
        frontier = self._frontier
        if not frontier:
            return EMPTY_ROOT
        # MTH splits at the largest power of two below n, which is the first frontier subtree;
        # the right part splits the same way, so the root is a fold from the right.
        node = frontier[-1]
        for left in reversed(frontier[:-1]):
            node = _sha256(b"\x01" + left + node).digest()
        return node

    def copy(self) -> MerkleAccumulator:
        return MerkleAccumulator.restore(self._size, self._frontier)

    def to_bytes(self) -> bytes:
        """The state in 8 + 32·popcount(size) bytes: size (big-endian), then the frontier."""
        return self._size.to_bytes(8, "big") + b"".join(self._frontier)

    @classmethod
    def from_bytes(cls, state: bytes) -> MerkleAccumulator:
        """The accumulator `to_bytes` described; ProofError if `state` cannot be one."""
        if len(state) < 8 or (len(state) - 8) % HASH_SIZE:
            raise ProofError(f"an accumulator state is 8 + 32·k bytes, not {len(state)}")
        size = int.from_bytes(state[:8], "big")
        return cls.restore(size, [state[i : i + HASH_SIZE] for i in range(8, len(state), HASH_SIZE)])


# --- proof generation (RFC 9162 §2.1.3.1 PATH and §2.1.4.1 PROOF/SUBPROOF) ---------------------


def _as_source(leaves: Leaves) -> LeafSource:
    if callable(leaves):
        return leaves
    seq = leaves
    return lambda start, end: seq[start:end]


class _Subtrees:
    """Roots of the tree's subtrees, each computed once. A large subtree's root is made from its
    two halves' (remembered), so the proofs of many leaves of one tree read each leaf about once
    in all; ranges of at most `_MEMO_MIN` leaves are hashed straight from the source (a proof
    needs the siblings of its own leaf's small subtrees afresh: under 2·_MEMO_MIN leaves)."""

    __slots__ = ("_memo", "_source")

    def __init__(self, leaves: Leaves) -> None:
        self._source = _as_source(leaves)
        self._memo: dict[tuple[int, int], bytes] = {}

    def root(self, start: int, end: int) -> bytes:
        key = (start, end)
        got = self._memo.get(key)
        if got is None:
            if end - start <= _MEMO_MIN:
                got = _range_root(self._source, start, end)
            else:
                k = _split(end - start)
                got = node_hash(self.root(start, start + k), self.root(start + k, end))
            self._memo[key] = got
        return got


def _range_root(source: LeafSource, start: int, end: int) -> bytes:
    """MTH of leaves start..end-1 (itself a tree of end - start leaves)."""
    got = source(start, end)
    if len(got) != end - start:
        raise ProofError(f"the leaf source gave {len(got)} leaves for {start}..{end - 1}, not {end - start}")
    return MerkleAccumulator.from_leaves(got).root()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(index: int, size: int, leaves: Leaves) -> list[bytes]:
    """The audit path of leaf `index` in the tree of the first `size` leaves, leaf side first."""
    return _inclusion_proof(index, size, _Subtrees(leaves))


def inclusion_proofs(indices: Iterable[int], size: int, leaves: Leaves) -> dict[int, list[bytes]]:
    """`inclusion_proof` of each index, sharing the subtree roots they have in common."""
    subtrees = _Subtrees(leaves)
    return {i: _inclusion_proof(i, size, subtrees) for i in indices}


def _inclusion_proof(index: int, size: int, subtrees: _Subtrees) -> list[bytes]:
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    path: list[bytes] = []
    # Walk down from the root; the sibling of each subtree we enter is one proof element.
    # Collected root-first, returned leaf-first as RFC 9162 orders them.
    start, end, m = 0, size, index
    while end - start > 1:
        k = _split(end - start)
        if m < k:
            path.append(subtrees.root(start + k, end))
            end = start + k
        else:
            path.append(subtrees.root(start, start + k))
            start, m = start + k, m - k
    path.reverse()
    return path


def consistency_proof(size1: int, size2: int, leaves: Leaves) -> list[bytes]:
    """The proof that the tree of the first `size2` leaves extends the one of the first `size1`
    (0 < size1 <= size2; empty when they are equal)."""
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof from a tree of {size1} leaves to one of {size2}")
    subtrees = _Subtrees(leaves)
    proof: list[bytes] = []
    # SUBPROOF(m, D[start:end], whole): `whole` is true while the old tree's root is itself a
    # node of this subtree path (then the verifier knows it and it is not sent).
    start, end, m, whole = 0, size2, size1, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            proof.append(subtrees.root(start + k, end))
            end = start + k
        else:
            proof.append(subtrees.root(start, start + k))
            start, m, whole = start + k, m - k, False
    if not whole:
        proof.append(subtrees.root(start, end))
    proof.reverse()
    return proof


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) --------------------------------------------


def _check_hashes(hashes: Sequence[bytes], what: str) -> None:
    for i, h in enumerate(hashes):
        if len(h) != HASH_SIZE:
            raise ProofError(f"{what} element {i} is {len(h)} bytes, not {HASH_SIZE}")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` and the leaf hash `leaf` at `index` imply for a tree of `size`."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    if len(leaf) != HASH_SIZE:
        raise ProofError(f"the leaf hash is {len(leaf)} bytes, not {HASH_SIZE}")
    _check_hashes(proof, "inclusion proof")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError(f"inclusion proof has {len(proof)} hashes, more than a tree of {size} needs")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # A right edge without a sibling at this level: climb until we are a right child.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof has {len(proof)} hashes, fewer than leaf {index} of {size} needs")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root_hash: bytes) -> None:
    """Raise ProofError unless `proof` shows the leaf hash `leaf` at `index` in the tree of
    `size` leaves whose root is `root_hash`."""
    if root_from_inclusion_proof(index, size, leaf, proof) != root_hash:
        raise ProofError(f"inclusion proof of leaf {index} does not lead to the root of the tree of {size}")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Raise ProofError unless `proof` shows the tree of `size2` leaves with root `root2` extends
    the tree of `size1` leaves with root `root1`."""
    if size1 < 0 or size2 < size1:
        raise ProofError(f"a tree of {size2} leaves cannot extend one of {size1}")
    if size1 == size2:
        if proof:
            raise ProofError(f"trees of equal size ({size1}) need an empty proof, got {len(proof)} hashes")
        if size1 == 0 and root1 != EMPTY_ROOT:
            raise ProofError("the root of an empty tree is SHA-256 of nothing, and this is not it")
        if root1 != root2:
            raise ProofError(f"two trees of {size1} leaves with different roots")
        return
    if size1 == 0:
        # Every tree extends the empty one: a proof from it proves nothing, so none is accepted.
        raise ProofError("a consistency proof from an empty tree proves nothing")
    if not proof:
        raise ProofError(f"the consistency proof from {size1} to {size2} leaves is empty")
    _check_hashes(proof, "consistency proof")
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        # The old tree is a perfect subtree of the new one: its root is the path's first node.
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof has {len(proof)} hashes, more than {size1} to {size2} needs")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof has {len(proof)} hashes, fewer than {size1} to {size2} needs")
    if fr != root1:
        raise ProofError(f"consistency proof does not lead to the root of the tree of {size1}")
    if sr != root2:
        raise ProofError(f"consistency proof does not lead to the root of the tree of {size2}")
