"""The results log's Merkle tree: RFC 9162's hashing (section 2.1.1), inclusion proofs (2.1.3)
and consistency proofs (2.1.4), checked against the RFC's test vectors (tests/unit/
test_merkle.py). Pure: bytes in, bytes out.

`Tree` keeps, for every level, the hashes of the complete subtrees its leaves make so far, so
that appending costs O(log n) and the hash of any subtree the RFC's recursion asks for is a
few lookups: a proof costs O(log^2 n) hashes, not O(n).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1): where the RFC splits n leaves."""
    return 1 << ((n - 1).bit_length() - 1)


class Tree:
    """An append-only Merkle tree of leaf hashes."""

    def __init__(self, leaves: Sequence[bytes] = ()):
        # levels[k][i]: the hash of leaves [i * 2**k, (i + 1) * 2**k), once all are in.
        self.levels: list[list[bytes]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    def __len__(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash; returns its index."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        index = len(self.levels[0])
        self.levels[0].append(leaf)
        level, i = 0, index
        while i % 2 == 1:  # a right child completes its parent
            row = self.levels[level]
            parent = node_hash(row[i - 1], row[i])
            level, i = level + 1, i // 2
            if level == len(self.levels):
                self.levels.append([])
            self.levels[level].append(parent)
        return index

    def leaf(self, index: int) -> bytes:
        return self.levels[0][index]

    def _hash(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end): start is a multiple of the subtree's width, as every
        subtree of the RFC's recursion is."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0:  # complete: stored
            level = n.bit_length() - 1
            return self.levels[level][start >> level]
        k = _split(n)
        return node_hash(self._hash(start, start + k), self._hash(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """The tree head of the first `size` leaves (all of them by default)."""
        size = len(self) if size is None else size
        if not 0 <= size <= len(self):
            raise ValueError(f"no tree of size {size} (the log has {len(self)} entries)")
        return self._hash(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[size]) of RFC 9162, 2.1.3.1."""
        if not 0 <= index < size <= len(self):
            raise ValueError(f"no entry {index} in a tree of size {size}")
        proof: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                proof.append(self._hash(start + k, end))
                end = start + k
            else:
                proof.append(self._hash(start, start + k))
                start += k
        proof.reverse()
        return proof

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """PROOF(old, D[new]) of RFC 9162, 2.1.4.1 (empty for old 0 or old == new)."""
        if not 0 <= old <= new <= len(self):
            raise ValueError(f"no consistency from {old} to {new} (the log has {len(self)})")
        if old == 0 or old == new:
            return []
        proof: list[bytes] = []
        start, end, whole = 0, new, True  # SUBPROOF(m, D[start:end], b)
        m = old
        while True:
            n = end - start
            if m == n:
                if not whole:
                    proof.append(self._hash(start, end))
                break
            k = _split(n)
            if m <= k:
                proof.append(self._hash(start + k, end))
                end = start + k
            else:
                proof.append(self._hash(start, start + k))
                start, m, whole = start + k, m - k, False
        proof.reverse()
        return proof


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162, 2.1.3.2: does `proof` show `leaf` at `index` in the tree of `size` whose
    head is `root`?"""
    if not 0 <= index < size or len(leaf) != HASH_SIZE or len(root) != HASH_SIZE:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != HASH_SIZE or sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162, 2.1.4.2: is the tree of `new` leaves with head `new_root` an extension of
    the one of `old` leaves with head `old_root`?"""
    if not 0 <= old <= new or len(old_root) != HASH_SIZE or len(new_root) != HASH_SIZE:
        return False
    if any(len(p) != HASH_SIZE for p in proof):
        return False
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old head is the first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn % 2 == 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root
