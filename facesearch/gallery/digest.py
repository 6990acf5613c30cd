"""A gallery's vector digest: what ties an index file to the vectors of its own database.

Each face's vector hash is 64 bits of BLAKE2b over its id (8 bytes, little endian) and its stored embedding (the
``faces.embedding`` bytes); the digest is the XOR of every face's hash. ``gallery_state.vectors_digest`` records it,
updated in each transaction that adds, removes or re-embeds faces (XOR is its own inverse, so that needs only the
faces changed); an index file records the hash of each vector it holds. An index copied from a sibling gallery
(the same uid, epoch and face ids, other vectors) therefore does not match the database, and is rebuilt.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

EMPTY = "0" * 16  # the digest of a gallery with no faces


def vector_hashes(ids: Sequence[int], blobs: Sequence[bytes]) -> np.ndarray:
    """(n,) uint64: the vector hash of each face ``ids[i]`` whose stored embedding is ``blobs[i]``."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(int(i).to_bytes(8, "little", signed=True) + bytes(b),
                                                       digest_size=8).digest(), "little")
                        for i, b in zip(ids, blobs)), dtype=np.uint64, count=len(ids))


def combine(hashes: np.ndarray, start: str = EMPTY) -> str:
    """``start`` (a digest, hex) XOR every hash in ``hashes``: the digest with those faces added, or taken out."""
    value = np.bitwise_xor.reduce(np.asarray(hashes, dtype=np.uint64), initial=np.uint64(int(start, 16)))
    return f"{int(value):016x}"
