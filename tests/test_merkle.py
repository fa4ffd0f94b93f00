"""The Merkle tree against the RFC 6962 test vectors (tests/vectors/rfc6962, Apache-2.0, from
transparency-dev/merkle) and against trees built here: every leaf, every pair of sizes."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from landscape.merkle import (
    EMPTY_ROOT,
    MerkleAccumulator,
    ProofError,
    consistency_proof,
    inclusion_proof,
    inclusion_proofs,
    leaf_hash,
    node_hash,
    root,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors" / "rfc6962"

# The leaves of the RFC 6962 reference tree (the vectors' roots and proofs are over these).
RFC_LEAVES = [bytes.fromhex(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                         "606162636465666768696a6b6c6d6e6f")]  # fmt: skip


def _b64(s: str) -> bytes:
    return base64.b64decode(s)


def _cases(kind: str) -> list[Any]:
    files = sorted((VECTORS / kind).rglob("*.json"))
    return [pytest.param(json.loads(f.read_text()), id=str(f.relative_to(VECTORS))) for f in files]


INCLUSION = _cases("inclusion")
CONSISTENCY = _cases("consistency")


def test_the_vectors_are_all_there() -> None:
    # A missing folder would otherwise parametrise to nothing and pass.
    assert len(INCLUSION) >= 90 and len(CONSISTENCY) >= 90
    assert (VECTORS / "LICENSE").is_file()


def mth(leaves: list[bytes]) -> bytes:
    """MTH exactly as RFC 9162 §2.1.1 writes it, recursively, over leaf hashes."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def test_the_reference_tree_has_the_published_root() -> None:
    hashes = [leaf_hash(x) for x in RFC_LEAVES]
    assert root(hashes).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    assert root([]) == hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()


@pytest.mark.parametrize("case", INCLUSION)
def test_inclusion_vector(case: dict[str, Any]) -> None:
    args = (case["leafIdx"], case["treeSize"], _b64(case["leafHash"]), [_b64(p) for p in case["proof"] or []])
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args, _b64(case["root"]))
    else:
        verify_inclusion(*args, _b64(case["root"]))


@pytest.mark.parametrize("case", CONSISTENCY)
def test_consistency_vector(case: dict[str, Any]) -> None:
    args = (case["size1"], case["size2"], [_b64(p) for p in case["proof"] or []], _b64(case["root1"]))
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args, _b64(case["root2"]))
    else:
        verify_consistency(*args, _b64(case["root2"]))


def _happy(cases: list[Any]) -> list[dict[str, Any]]:
    return [c.values[0] for c in cases if not c.values[0]["wantErr"]]


def test_generated_proofs_equal_the_vectors_over_the_reference_tree() -> None:
    hashes = [leaf_hash(x) for x in RFC_LEAVES]
    checked = 0
    for case in _happy(INCLUSION):
        n = case["treeSize"]
        if n <= len(hashes) and root(hashes[:n]) == _b64(case["root"]):
            assert inclusion_proof(case["leafIdx"], n, hashes) == [_b64(p) for p in case["proof"] or []]
            checked += 1
    for case in _happy(CONSISTENCY):
        n = case["size2"]
        if case["size1"] > 0 and n <= len(hashes) and root(hashes[:n]) == _b64(case["root2"]):
            assert consistency_proof(case["size1"], n, hashes) == [_b64(p) for p in case["proof"] or []]
            checked += 1
    assert checked >= 8


LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(200)]
ROOTS = [mth(LEAVES[:n]) for n in range(len(LEAVES) + 1)]


def test_accumulator_root_equals_the_recursive_root_at_every_size() -> None:
    acc = MerkleAccumulator()
    assert acc.root() == EMPTY_ROOT and acc.size == 0
    for n, h in enumerate(LEAVES, start=1):
        acc.append(h)
        assert acc.size == n and len(acc.frontier) == n.bit_count()
        assert acc.root() == ROOTS[n]


def test_an_inclusion_proof_for_every_leaf_of_every_tree_verifies() -> None:
    for n in range(1, 130):
        for i in range(n):
            proof = inclusion_proof(i, n, LEAVES)
            verify_inclusion(i, n, LEAVES[i], proof, ROOTS[n])
    n = 200  # and the largest tree, through a source callable as a store would serve it
    reads: list[tuple[int, int]] = []

    def source(start: int, end: int) -> list[bytes]:
        reads.append((start, end))
        return LEAVES[start:end]

    for i in range(n):
        verify_inclusion(i, n, LEAVES[i], inclusion_proof(i, n, source), ROOTS[n])
    assert all(0 <= a < b <= n for a, b in reads)


def test_a_consistency_proof_for_every_pair_of_sizes_verifies() -> None:
    for n2 in range(1, len(LEAVES) + 1):
        for n1 in range(1, n2 + 1):
            proof = consistency_proof(n1, n2, LEAVES)
            verify_consistency(n1, n2, proof, ROOTS[n1], ROOTS[n2])


def test_proofs_from_remembered_subtrees_equal_those_hashed_straight(monkeypatch: pytest.MonkeyPatch) -> None:
    import landscape.merkle as merkle

    monkeypatch.setattr(merkle, "_MEMO_MIN", 2)  # every subtree above two leaves from its halves
    for n in range(1, 70):
        for i in range(n):
            verify_inclusion(i, n, LEAVES[i], inclusion_proof(i, n, LEAVES), ROOTS[n])
        for m in range(1, n + 1):
            verify_consistency(m, n, consistency_proof(m, n, LEAVES), ROOTS[m], ROOTS[n])


def test_many_proofs_of_a_large_tree_read_each_leaf_about_once() -> None:
    n = 5000
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    tree_root = root(leaves)
    read = 0

    def source(start: int, end: int) -> list[bytes]:
        nonlocal read
        read += end - start
        return leaves[start:end]

    wanted = [0, 1, 1023, 1024, 2047, 2500, 4095, 4096, 4999]
    proofs = inclusion_proofs(wanted, n, source)
    assert read <= n + 9 * 1024  # each proof reads at most its own small subtrees afresh
    for i in wanted:
        assert proofs[i] == inclusion_proof(i, n, leaves)
        verify_inclusion(i, n, leaves[i], proofs[i], tree_root)
    verify_consistency(3001, n, consistency_proof(3001, n, leaves), root(leaves[:3001]), tree_root)


def test_the_accumulator_state_round_trips_through_bytes() -> None:
    acc = MerkleAccumulator.from_leaves(LEAVES[:77])
    state = acc.to_bytes()
    assert len(state) == 8 + 32 * (77).bit_count()
    again = MerkleAccumulator.from_bytes(state)
    assert again.size == 77 and again.root() == ROOTS[77]
    with pytest.raises(ProofError, match="8 \\+ 32·k bytes, not 39"):
        MerkleAccumulator.from_bytes(state[:39])
    with pytest.raises(ProofError, match="4 frontier hashes, not 3"):
        MerkleAccumulator.from_bytes(state[:-32])


def _mutations(proof: list[bytes]) -> list[list[bytes]]:
    out: list[list[bytes]] = [proof[:-1], [*proof, proof[-1] if proof else LEAVES[0]], [LEAVES[1], *proof]]
    for j in range(len(proof)):
        flipped = bytearray(proof[j])
        flipped[j % 32] ^= 0x01
        out.append([*proof[:j], bytes(flipped), *proof[j + 1 :]])
        out.append(proof[:j] + proof[j + 1 :])
    return [m for m in out if m != proof]


def test_every_mutated_inclusion_proof_is_refused() -> None:
    for n in range(1, 40):
        for i in range(n):
            proof = inclusion_proof(i, n, LEAVES)
            for bad in _mutations(proof):
                with pytest.raises(ProofError):
                    verify_inclusion(i, n, LEAVES[i], bad, ROOTS[n])
            # Another position. (Another tree size can share the path's shape: the size is bound
            # by the signed checkpoint the root comes from, not by the proof.)
            for j in (i - 1, i + 1):
                with pytest.raises(ProofError):
                    verify_inclusion(j, n, LEAVES[i], proof, ROOTS[n])
            with pytest.raises(ProofError):
                verify_inclusion(i, n, LEAVES[i + 1], proof, ROOTS[n])
            with pytest.raises(ProofError):
                verify_inclusion(i, n, LEAVES[i], proof, ROOTS[n + 1])


def test_every_mutated_consistency_proof_is_refused() -> None:
    for n2 in range(2, 40):
        for n1 in range(1, n2):
            proof = consistency_proof(n1, n2, LEAVES)
            for bad in _mutations(proof):
                with pytest.raises(ProofError):
                    verify_consistency(n1, n2, bad, ROOTS[n1], ROOTS[n2])
            for m1 in (n1 - 1, n1 + 1):  # the new size is bound by its checkpoint, as above
                with pytest.raises(ProofError):
                    verify_consistency(m1, n2, proof, ROOTS[n1], ROOTS[n2])
            with pytest.raises(ProofError):  # another old root: a rewritten history
                verify_consistency(n1, n2, proof, mth([*LEAVES[: n1 - 1], LEAVES[199]]), ROOTS[n2])
            with pytest.raises(ProofError):
                verify_consistency(n1, n2, proof, ROOTS[n1], ROOTS[n2 + 1])


def test_bad_arguments_are_refused_with_a_reason() -> None:
    with pytest.raises(ProofError, match="not in a tree of 3"):
        inclusion_proof(3, 3, LEAVES)
    with pytest.raises(ProofError, match="no consistency proof from a tree of 0"):
        consistency_proof(0, 3, LEAVES)
    with pytest.raises(ProofError, match=r"gave 2 leaves for 0\.\.3, not 4"):
        inclusion_proof(4, 5, lambda a, b: LEAVES[a : min(b, 2)])
    with pytest.raises(ProofError, match="32 bytes, not 3"):
        MerkleAccumulator().append(b"abc")
    with pytest.raises(ProofError, match="3 frontier hashes, not 1"):
        MerkleAccumulator.restore(7, [LEAVES[0]])
    # A malformed element is named as such, not reported as a mere mismatch.
    proof = inclusion_proof(2, 5, LEAVES)
    with pytest.raises(ProofError, match="inclusion proof element 1 is 31 bytes"):
        verify_inclusion(2, 5, LEAVES[2], [proof[0], proof[1][:31], *proof[2:]], ROOTS[5])
    proof = consistency_proof(3, 7, LEAVES)
    with pytest.raises(ProofError, match="consistency proof element 0 is 33 bytes"):
        verify_consistency(3, 7, [proof[0] + b"x", *proof[1:]], ROOTS[3], ROOTS[7])
    with pytest.raises(ProofError, match="more than a tree of 1"):
        root_from_inclusion_proof(0, 1, LEAVES[0], [LEAVES[1]])


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.binary(max_size=8), max_size=300), cut=st.integers(min_value=0, max_value=300))
def test_accumulator_equals_recursive_root_and_survives_restore(data: list[bytes], cut: int) -> None:
    hashes = [leaf_hash(x) for x in data]
    cut = min(cut, len(hashes))
    first = MerkleAccumulator.from_leaves(hashes[:cut])
    resumed = MerkleAccumulator.restore(first.size, first.frontier)  # what a resumed writer does
    for h in hashes[cut:]:
        resumed.append(h)
    assert resumed.root() == mth(hashes) == root(hashes)
    assert resumed.size == len(hashes)


def test_extending_with_leaf_data_builds_the_same_tree_as_appending_leaf_hashes() -> None:
    # The RFC vectors' leaf data, in runs of every length from every starting size: the batched
    # path a replay takes must give the roots the one-leaf path gives (and so the vectors').
    data = RFC_LEAVES * 5
    for start in range(len(data)):
        for end in range(start, len(data) + 1):
            acc = MerkleAccumulator.from_leaves(leaf_hash(d) for d in data[:start])
            acc.extend_data(data[start:end])
            assert acc.size == end
            assert acc.root() == root([leaf_hash(d) for d in data[:end]])
    acc = MerkleAccumulator()
    acc.extend_data(RFC_LEAVES)
    assert acc.root().hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
