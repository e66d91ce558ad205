"""The results log's tree against RFC 9162 / RFC 6962's published test vectors (the
Certificate Transparency reference leaves, their tree heads for every size 0-8, and proofs),
then every proof of every size up to 70 against a tree built the RFC's recursive way."""

from __future__ import annotations

import hashlib

import pytest

from scoreserver.core import merkle

LEAVES = [
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
ROOTS = [
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
INCLUSION = [  # (index, size, path)
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
]
CONSISTENCY = [  # (old, new, proof)
    (
        2,
        8,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def reference_tree() -> merkle.Tree:
    return merkle.Tree([merkle.leaf_hash(d) for d in LEAVES])


def test_the_tree_heads_are_the_rfcs_for_every_size() -> None:
    tree = reference_tree()
    assert [tree.root(n).hex() for n in range(9)] == ROOTS
    assert merkle.Tree().root().hex() == ROOTS[0]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_proofs_are_the_rfcs(index: int, size: int, path: list[str]) -> None:
    tree = reference_tree()
    assert [p.hex() for p in tree.inclusion_proof(index, size)] == path
    proof = [bytes.fromhex(p) for p in path]
    root = bytes.fromhex(ROOTS[size])
    assert merkle.verify_inclusion(tree.leaf(index), index, size, proof, root)


@pytest.mark.parametrize(("old", "new", "path"), CONSISTENCY)
def test_consistency_proofs_are_the_rfcs(old: int, new: int, path: list[str]) -> None:
    tree = reference_tree()
    assert [p.hex() for p in tree.consistency_proof(old, new)] == path
    proof = [bytes.fromhex(p) for p in path]
    assert merkle.verify_consistency(
        old, new, bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]), proof
    )


def recursive_root(leaves: list[bytes]) -> bytes:
    """MTH written as RFC 9162 2.1.1 writes it."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.node_hash(recursive_root(leaves[:k]), recursive_root(leaves[k:]))


N = 70
MANY = [merkle.leaf_hash(i.to_bytes(2, "big")) for i in range(N)]


def test_every_size_has_the_recursive_head_and_every_proof_verifies() -> None:
    tree = merkle.Tree(MANY)
    for size in range(N + 1):
        root = tree.root(size)
        assert root == recursive_root(MANY[:size])
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert merkle.verify_inclusion(MANY[index], index, size, proof, root)
            assert not merkle.verify_inclusion(MANY[index], index, size, proof, tree.root(0))
            if index + 1 < size:
                assert not merkle.verify_inclusion(MANY[index], index + 1, size, proof, root)
        for old in range(size + 1):
            proof = tree.consistency_proof(old, size)
            assert merkle.verify_consistency(old, size, tree.root(old), root, proof)


def test_mangled_proofs_are_refused() -> None:
    tree = merkle.Tree(MANY)
    for size in range(2, N + 1):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
            for bad in (flipped, proof[:-1], [*proof, b"\xab" * 32], [p[:31] for p in proof]):
                assert not merkle.verify_inclusion(MANY[index], index, size, bad, root)
            assert not merkle.verify_inclusion(MANY[index], index, size, proof, tree.root(1))
        for old in range(1, size):
            proof = tree.consistency_proof(old, size)
            flipped = [bytes([proof[0][0] ^ 0x80]) + proof[0][1:], *proof[1:]]
            for bad in (flipped, proof[:-1], [*proof, b"\xcd" * 32], []):
                assert not merkle.verify_consistency(old, size, tree.root(old), root, bad)
            # A rewritten history: the same size, another leaf in it.
            other = merkle.Tree([*MANY[: old - 1], merkle.leaf_hash(b"forged"), *MANY[old:size]])
            assert not merkle.verify_consistency(
                old, size, other.root(old), root, other.consistency_proof(old, size)
            )


def test_sizes_out_of_range_are_errors_for_the_tree_and_false_for_the_verifiers() -> None:
    tree = reference_tree()
    for call in (
        lambda: tree.root(9),
        lambda: tree.inclusion_proof(8, 8),
        lambda: tree.inclusion_proof(-1, 8),
        lambda: tree.inclusion_proof(0, 9),
        lambda: tree.consistency_proof(5, 3),
        lambda: tree.consistency_proof(0, 9),
        lambda: tree.append(b"short"),
    ):
        with pytest.raises(ValueError, match="no |32 bytes"):
            call()
    root8 = bytes.fromhex(ROOTS[8])
    proof = tree.inclusion_proof(5, 8)
    assert not merkle.verify_inclusion(tree.leaf(5), 8, 8, proof, root8)
    assert not merkle.verify_inclusion(tree.leaf(5), -1, 8, proof, root8)
    assert merkle.verify_consistency(4, 4, tree.root(4), tree.root(4), [])
    assert not merkle.verify_consistency(4, 4, tree.root(4), tree.root(5), [])
    assert not merkle.verify_consistency(4, 4, tree.root(4), tree.root(4), [b"\0" * 32])
    assert merkle.verify_consistency(0, 8, merkle.EMPTY_ROOT, root8, [])
    assert not merkle.verify_consistency(0, 8, tree.root(1), root8, [])
    assert not merkle.verify_consistency(8, 6, root8, tree.root(6), [])
