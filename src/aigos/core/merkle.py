"""Merkle tree hashing of RFC 9162 (Certificate Transparency v2): tree heads and inclusion proofs.

Leaves are hashed as ``SHA-256(0x00 || leaf)`` and interior nodes as ``SHA-256(0x01 || left || right)``;
the tree over ``n`` leaves splits at the largest power of two below ``n``. ``CompactRange`` holds the
O(log n) roots of the perfect subtrees covering a prefix of the log: enough to extend the tree, compute
its head at any later size, and build proofs for leaves after the prefix even once the prefix itself has
been pruned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    """The hash of one leaf."""
    return _sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


@dataclass
class CompactRange:
    """The roots of the maximal perfect subtrees covering leaves ``[0, size)``, largest first.

    Appending a leaf merges equal-sized subtrees like a binary counter, so each leaf costs two hashes
    amortised. ``nodes`` has one entry per set bit of ``size``.
    """

    size: int = 0
    nodes: list[bytes] = field(default_factory=list)

    def append(self, hashed_leaf: bytes) -> None:
        """Add the next leaf (already ``leaf_hash``-ed)."""
        nodes, merged = self.nodes, hashed_leaf
        self.size = size = self.size + 1
        # Each trailing zero bit of the new size is a pair of equal subtrees to merge: the newest node
        # on the stack is the left one. (Inline hashing: this runs for every entry a verifier reads.)
        while not size & 1:
            merged = _sha256(b"\x01" + nodes.pop() + merged).digest()
            size >>= 1
        nodes.append(merged)

    def root(self) -> bytes:
        """The tree head over ``[0, size)``."""
        if not self.nodes:
            return EMPTY_ROOT
        root = self.nodes[-1]
        for node in reversed(self.nodes[:-1]):
            root = node_hash(node, root)
        return root

    def copy(self) -> CompactRange:
        """An independent copy."""
        return CompactRange(self.size, list(self.nodes))

    def to_json(self) -> dict[str, object]:
        """A JSON form (hex hashes) for storage and exports."""
        return {"size": self.size, "nodes": [node.hex() for node in self.nodes]}

    @classmethod
    def from_json(cls, value: dict[str, object]) -> CompactRange:
        """The inverse of ``to_json``; checks that the node count matches the size."""
        size = int(str(value["size"]))
        raw = value["nodes"]
        assert isinstance(raw, list)
        nodes = [bytes.fromhex(str(node)) for node in raw]
        if len(nodes) != bin(size).count("1"):
            raise ValueError("compact range: node count does not match size")
        return cls(size, nodes)


class Tree:
    """A tree over ``prefix`` (pruned, known only by its compact range) followed by explicit leaf hashes.

    ``leaves[i]`` is the hashed leaf at index ``prefix.size + i``.
    """

    def __init__(self, leaves: Sequence[bytes], prefix: CompactRange | None = None) -> None:
        self.prefix = prefix or CompactRange()
        self.leaves = leaves
        self._prefix_nodes: dict[tuple[int, int], bytes] = {}
        start = 0
        for node in self.prefix.nodes:
            width = 1 << (node_width_bits := _width_bits(self.prefix.size, start))
            self._prefix_nodes[(start, start + width)] = node
            start += width
            del node_width_bits

    @property
    def size(self) -> int:
        """Leaves in the tree, pruned prefix included."""
        return self.prefix.size + len(self.leaves)

    def _hash(self, lo: int, hi: int) -> bytes:
        """The root of the subtree over leaves ``[lo, hi)``."""
        known = self._prefix_nodes.get((lo, hi))
        if known is not None:
            return known
        if hi - lo == 1:
            if lo < self.prefix.size:
                raise ValueError(f"leaf {lo} was pruned")
            return self.leaves[lo - self.prefix.size]
        k = _split(hi - lo)
        return node_hash(self._hash(lo, lo + k), self._hash(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        """The tree head at ``size`` (default: all leaves); ``size`` must not be inside the pruned prefix."""
        size = self.size if size is None else size
        if size == 0:
            return EMPTY_ROOT
        if size < self.prefix.size or size > self.size:
            raise ValueError(f"no tree head at size {size}")
        return self._hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 9162 section 2.1.3.1)."""
        size = self.size if size is None else size
        if not 0 <= index < size <= self.size:
            raise ValueError(f"leaf {index} is not in a tree of size {size}")
        proof: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                proof.append(self._hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._hash(lo, lo + k))
                lo = lo + k
        proof.reverse()
        return proof


def _width_bits(size: int, start: int) -> int:
    """Bits of the width of the compact-range node beginning at ``start`` in a range of ``size``."""
    remaining = size - start
    return remaining.bit_length() - 1


def root_of(hashed_leaves: Sequence[bytes]) -> bytes:
    """The tree head over the given hashed leaves."""
    compact = CompactRange()
    for leaf in hashed_leaves:
        compact.append(leaf)
    return compact.root()


def verify_inclusion(hashed_leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether ``proof`` shows the leaf at ``index`` is in the tree of ``size`` with head ``root``.

    The verification algorithm of RFC 9162 section 2.1.3.2.
    """
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = hashed_leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root
