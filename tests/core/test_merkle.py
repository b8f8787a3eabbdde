"""RFC 9162 Merkle tree: tree heads, compact ranges, pruned prefixes and inclusion proofs.

Everything is checked against an independent, literal transcription of RFC 9162 section 2.1 (``Reference``)
and, where the published Certificate Transparency test data exists, against those numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigos.core.canonical import canonical, parse
from aigos.core.merkle import (
    EMPTY_ROOT,
    CompactRange,
    Tree,
    leaf_hash,
    node_hash,
    root_of,
    verify_inclusion,
)

MAX_SIZE = 70


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _largest_power_of_two_below(n: int) -> int:
    """By counting, not by bit tricks (RFC 9162: the largest power of two smaller than n)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Reference:
    """MTH and PATH of RFC 9162 sections 2.1.1 and 2.1.3.1, recursive over ranges of ``data``."""

    def __init__(self, data: Sequence[bytes]) -> None:
        self.data = list(data)
        self._cache: dict[tuple[int, int], bytes] = {}

    def leaf(self, index: int) -> bytes:
        return _sha256(b"\x00" + self.data[index])

    def mth(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi])."""
        cached = self._cache.get((lo, hi))
        if cached is not None:
            return cached
        n = hi - lo
        if n == 0:
            result = _sha256(b"")
        elif n == 1:
            result = self.leaf(lo)
        else:
            k = _largest_power_of_two_below(n)
            result = _sha256(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi))
        self._cache[(lo, hi)] = result
        return result

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        """PATH(m, D[lo:hi]), ``m`` relative to ``lo``."""
        n = hi - lo
        if n == 1:
            return []
        k = _largest_power_of_two_below(n)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def perfect_subtrees(self, size: int) -> list[bytes]:
        """The roots of the maximal perfect subtrees covering ``[0, size)``, largest first."""
        nodes, start = [], 0
        for bit in reversed(range(size.bit_length())):
            if size >> bit & 1:
                nodes.append(self.mth(start, start + (1 << bit)))
                start += 1 << bit
        return nodes


DATA = [f"leaf-{i}".encode() for i in range(MAX_SIZE)]
REF = Reference(DATA)
HASHES = [leaf_hash(d) for d in DATA]
FULL = Tree(HASHES)


def _flip(data: bytes, position: int = 0) -> bytes:
    buf = bytearray(data)
    buf[position] ^= 0x01
    return bytes(buf)


def _compact(hashes: Sequence[bytes]) -> CompactRange:
    compact = CompactRange()
    for h in hashes:
        compact.append(h)
    return compact


# --- Published RFC 6962 / RFC 9162 test data (certificate-transparency test vectors) -----------------------

CT_DATA = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

#: MTH over the leaves b"0", b"1", ..., b"7" (each hashed with ``leaf_hash``), computed once with
#: ``Reference`` and pinned, so a change to the hashing shows up even if module and reference drift together.
DIGITS_ROOT = "3b85a9626c1ccb64c6b95ec7fa64888defe2cf12e39e77e10812ce5fcb9cb58e"


def test_hash_primitives_are_domain_separated_sha256() -> None:
    assert _sha256(b"") == EMPTY_ROOT
    assert leaf_hash(b"") == _sha256(b"\x00")
    assert leaf_hash(b"abc") == _sha256(b"\x00abc")
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(left, right) == _sha256(b"\x01" + left + right)
    assert node_hash(left, right) != node_hash(right, left)
    # Without the prefixes a leaf whose data is left||right would collide with the node.
    assert leaf_hash(left + right) != node_hash(left, right)


@pytest.mark.parametrize("n", range(len(CT_ROOTS)))
def test_roots_match_published_ct_vectors(n: int) -> None:
    hashes = [leaf_hash(d) for d in CT_DATA[:n]]
    assert root_of(hashes).hex() == CT_ROOTS[n]
    assert Tree(hashes).root().hex() == CT_ROOTS[n]
    assert Tree([leaf_hash(d) for d in CT_DATA]).root(n).hex() == CT_ROOTS[n]
    assert Reference(CT_DATA).mth(0, n).hex() == CT_ROOTS[n]


@pytest.mark.parametrize(("index", "size", "expected"), CT_INCLUSION)
def test_inclusion_proofs_match_published_ct_vectors(index: int, size: int, expected: list[str]) -> None:
    hashes = [leaf_hash(d) for d in CT_DATA]
    proof = Tree(hashes).inclusion_proof(index, size)
    assert [p.hex() for p in proof] == expected
    assert [p.hex() for p in Reference(CT_DATA).path(index, 0, size)] == expected
    assert verify_inclusion(hashes[index], index, size, proof, bytes.fromhex(CT_ROOTS[size]))


def test_known_answer_root_of_digit_leaves() -> None:
    digits = [str(i).encode() for i in range(8)]
    hashes = [leaf_hash(d) for d in digits]
    assert Reference(digits).mth(0, 8).hex() == DIGITS_ROOT
    assert root_of(hashes).hex() == DIGITS_ROOT
    assert Tree(hashes).root().hex() == DIGITS_ROOT
    assert _compact(hashes).root().hex() == DIGITS_ROOT


@pytest.mark.parametrize("n", range(MAX_SIZE + 1))
def test_root_matches_reference(n: int) -> None:
    expected = REF.mth(0, n)
    assert root_of(HASHES[:n]) == expected
    assert Tree(HASHES[:n]).root() == expected
    assert FULL.root(n) == expected
    assert _compact(HASHES[:n]).root() == expected


@pytest.mark.parametrize("n", range(1, MAX_SIZE + 1))
def test_every_inclusion_proof_matches_reference_and_verifies(n: int) -> None:
    tree = Tree(HASHES[:n])
    root = REF.mth(0, n)
    for index in range(n):
        proof = tree.inclusion_proof(index)
        assert proof == REF.path(index, 0, n), (n, index)
        assert FULL.inclusion_proof(index, n) == proof
        assert verify_inclusion(HASHES[index], index, n, proof, root)


@pytest.mark.parametrize("n", range(1, MAX_SIZE + 1))
def test_tampered_inclusion_proofs_fail(n: int) -> None:
    root = REF.mth(0, n)
    for index in range(n):
        leaf = HASHES[index]
        proof = REF.path(index, 0, n)
        # Wrong leaf, wrong root.
        assert not verify_inclusion(_flip(leaf), index, n, proof, root)
        if n > 1:
            assert not verify_inclusion(HASHES[(index + 1) % n], index, n, proof, root)
        assert not verify_inclusion(leaf, index, n, proof, _flip(root, 31))
        # Any bit of any proof node.
        for i in range(len(proof)):
            for position in (0, 31):
                bad = list(proof)
                bad[i] = _flip(bad[i], position)
                assert not verify_inclusion(leaf, index, n, bad, root), (n, index, i)
        # Truncated, extended, reversed.
        if proof:
            assert not verify_inclusion(leaf, index, n, proof[:-1], root)
            assert not verify_inclusion(leaf, index, n, proof[1:], root)
        assert not verify_inclusion(leaf, index, n, [*proof, root], root)
        assert not verify_inclusion(leaf, index, n, [root, *proof], root)
        if len(proof) > 1 and proof != proof[::-1]:
            assert not verify_inclusion(leaf, index, n, proof[::-1], root)
        # Another index with the same proof.
        for other in range(n):
            if other != index:
                assert not verify_inclusion(leaf, other, n, proof, root), (n, index, other)
        # Another size, checked against that size's real root.
        for other_size in (n - 1, n + 1, 2 * n):
            if index < other_size <= MAX_SIZE and other_size != n:
                assert not verify_inclusion(leaf, index, other_size, proof, REF.mth(0, other_size))
        # Indices outside the tree.
        assert not verify_inclusion(leaf, n, n, proof, root)
        assert not verify_inclusion(leaf, -1, n, proof, root)


def test_a_proof_binds_the_root_not_the_claimed_size() -> None:
    """RFC 9162 verification consumes only the bits of ``size - 1`` its shifts look at.

    A proof at size 8 still verifies if the caller claims size 7 against the size-8 root; no size-7 tree has
    that root, so this is harmless as long as size and root are taken together from a signed checkpoint,
    which is what the audit log does.
    """
    proof = FULL.inclusion_proof(5, 8)
    assert verify_inclusion(HASHES[5], 5, 7, proof, REF.mth(0, 8))
    assert not verify_inclusion(HASHES[5], 5, 7, proof, REF.mth(0, 7))


def test_verify_inclusion_rejects_degenerate_arguments() -> None:
    assert not verify_inclusion(HASHES[0], 0, 0, [], EMPTY_ROOT)
    assert not verify_inclusion(HASHES[0], 0, 0, [], HASHES[0])
    assert not verify_inclusion(HASHES[0], -1, 1, [], HASHES[0])
    assert verify_inclusion(HASHES[0], 0, 1, [], HASHES[0])
    assert not verify_inclusion(HASHES[0], 0, 1, [HASHES[1]], HASHES[0])
    assert not verify_inclusion(b"short", 0, 1, [], HASHES[0])
    # Malformed nodes are a False, not an exception.
    assert not verify_inclusion(HASHES[0], 0, 2, [b""], REF.mth(0, 2))


@pytest.mark.parametrize(
    ("index", "size"),
    [(-1, 5), (5, 5), (6, 5), (0, 0), (0, MAX_SIZE + 1), (MAX_SIZE, None), (MAX_SIZE + 3, None), (3, 2)],
)
def test_inclusion_proof_out_of_range_raises(index: int, size: int | None) -> None:
    with pytest.raises(ValueError, match="is not in a tree of size"):
        FULL.inclusion_proof(index, size)


@pytest.mark.parametrize("size", [-1, MAX_SIZE + 1, 10 * MAX_SIZE])
def test_root_out_of_range_raises(size: int) -> None:
    with pytest.raises(ValueError, match="no tree head"):
        FULL.root(size)


def test_empty_tree() -> None:
    tree = Tree([])
    assert tree.size == 0
    assert tree.root() == EMPTY_ROOT
    assert root_of([]) == EMPTY_ROOT
    assert CompactRange().root() == EMPTY_ROOT
    with pytest.raises(ValueError):
        tree.inclusion_proof(0)


# --- Compact ranges ---------------------------------------------------------------------------------------


def test_compact_range_tracks_the_perfect_subtrees_as_leaves_are_appended() -> None:
    compact = CompactRange()
    assert compact.to_json() == {"size": 0, "nodes": []}
    for n in range(1, MAX_SIZE + 1):
        compact.append(HASHES[n - 1])
        assert compact.size == n
        assert len(compact.nodes) == bin(n).count("1")
        assert compact.nodes == REF.perfect_subtrees(n), n
        assert compact.root() == REF.mth(0, n)


@pytest.mark.parametrize("n", range(MAX_SIZE + 1))
def test_compact_range_json_round_trip(n: int) -> None:
    compact = _compact(HASHES[:n])
    as_json = compact.to_json()
    assert as_json["size"] == n
    assert all(isinstance(node, str) and len(node) == 64 for node in as_json["nodes"])  # type: ignore[attr-defined]
    # Survives an actual trip through JSON text.
    restored = CompactRange.from_json(parse(canonical(as_json)))
    assert restored == compact
    assert restored.root() == REF.mth(0, n)
    # And keeps extending like the original.
    if n < MAX_SIZE:
        restored.append(HASHES[n])
        assert restored.root() == REF.mth(0, n + 1)


@pytest.mark.parametrize(
    ("size", "node_count"), [(0, 1), (1, 0), (1, 2), (3, 1), (3, 3), (4, 2), (7, 2), (8, 0), (64, 2), (69, 2)]
)
def test_compact_range_from_json_rejects_wrong_node_count(size: int, node_count: int) -> None:
    value: dict[str, object] = {"size": size, "nodes": [HASHES[i].hex() for i in range(node_count)]}
    with pytest.raises(ValueError, match="node count does not match size"):
        CompactRange.from_json(value)


def test_compact_range_from_json_rejects_non_hex_node() -> None:
    with pytest.raises(ValueError):
        CompactRange.from_json({"size": 1, "nodes": ["zz" * 32]})


def test_compact_range_copy_is_independent() -> None:
    original = _compact(HASHES[:5])
    copy = original.copy()
    copy.append(HASHES[5])
    assert original.size == 5
    assert original.root() == REF.mth(0, 5)
    assert copy.root() == REF.mth(0, 6)


# --- Pruned prefixes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix_size", range(MAX_SIZE + 1))
def test_pruned_tree_gives_the_full_trees_roots(prefix_size: int) -> None:
    tree = Tree(HASHES[prefix_size:], _compact(HASHES[:prefix_size]))
    assert tree.size == MAX_SIZE
    assert tree.root() == REF.mth(0, MAX_SIZE)
    for size in range(prefix_size, MAX_SIZE + 1):
        assert tree.root(size) == REF.mth(0, size), size
    # Proofs at the full size for every leaf after the prefix.
    for index in range(prefix_size, MAX_SIZE):
        assert tree.inclusion_proof(index) == REF.path(index, 0, MAX_SIZE), index


@pytest.mark.parametrize("n", [*range(1, 25), 33])
def test_pruned_tree_gives_the_full_trees_proofs_at_every_size(n: int) -> None:
    for prefix_size in range(n + 1):
        tree = Tree(HASHES[prefix_size:n], _compact(HASHES[:prefix_size]))
        assert tree.root() == REF.mth(0, n)
        for size in range(max(prefix_size, 1), n + 1):
            for index in range(prefix_size, size):
                proof = tree.inclusion_proof(index, size)
                assert proof == REF.path(index, 0, size), (prefix_size, index, size)
                assert verify_inclusion(HASHES[index], index, size, proof, REF.mth(0, size))


@pytest.mark.parametrize("prefix_size", [2, 3, 5, 8, 13, 33, 64, 69])
def test_pruned_tree_refuses_heads_inside_the_prefix(prefix_size: int) -> None:
    tree = Tree(HASHES[prefix_size:], _compact(HASHES[:prefix_size]))
    for size in range(1, prefix_size):
        with pytest.raises(ValueError, match="no tree head"):
            tree.root(size)
    with pytest.raises(ValueError, match="no tree head"):
        tree.root(MAX_SIZE + 1)


@pytest.mark.parametrize("prefix_size", [2, 3, 4, 7, 8, 9, 31, 64])
def test_pruned_tree_cannot_prove_leaves_whose_siblings_were_pruned(prefix_size: int) -> None:
    tree = Tree(HASHES[prefix_size:], _compact(HASHES[:prefix_size]))
    # Leaf 0's first sibling, leaf 1, is inside every prefix of two or more leaves.
    with pytest.raises(ValueError, match="pruned"):
        tree.inclusion_proof(0)


def test_pruned_tree_with_empty_suffix() -> None:
    tree = Tree([], _compact(HASHES[:13]))
    assert tree.size == 13
    assert tree.root() == REF.mth(0, 13)
    with pytest.raises(ValueError):
        tree.inclusion_proof(13)


# --- The incremental builder against the all-at-once tree, on random sizes --------------------------------


@settings(max_examples=60, deadline=None, database=None)
@given(size=st.integers(min_value=0, max_value=3000), resume_at=st.integers(min_value=0, max_value=3000))
def test_compact_range_folds_to_the_all_at_once_root_at_any_size(size: int, resume_at: int) -> None:
    """Appending leaf by leaf (the verifier's O(log n) fold) gives ``Tree``'s root, also when the fold is
    stopped, stored as JSON and resumed (as an export's anchor does)."""
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    resume_at = min(resume_at, size)
    compact = _compact(hashes[:resume_at])
    compact = CompactRange.from_json(compact.to_json())
    for h in hashes[resume_at:]:
        compact.append(h)
    assert compact.size == size
    assert len(compact.nodes) == bin(size).count("1")
    assert compact.root() == Tree(hashes).root() == root_of(hashes)
    if size:
        assert compact.root() == Tree(hashes[resume_at:], _compact(hashes[:resume_at])).root()
