"""The faces' stored embeddings (``faces.embedding``): how they are encoded, and reading them back in chunks, with
the vector hash of each (digest.py), for the vector stores and ``gallery check``.

Every read and write of the column goes through this module. Reads go through one connection whose transaction is
a snapshot (``db.snapshot``) where the caller needs the vectors and the state it records to agree.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from facesearch.errors import BadInput, Remedy
from facesearch.gallery.digest import vector_hashes
from facesearch.gallery.models import Face

# How a face's full embedding is stored: float32, 4 bytes a dimension (2 KB for the base model's 512). Half
# precision would halve that and moved a real model's cosines by at most 6e-5 (docs/BENCHMARKS.md, "Storage"), but
# a model whose cosines crowd within 1e-4 of each other (random weights, as the demo's baseline and the tests use)
# loses its exact self-matches; not switched.
STORED = np.dtype(np.float32)
CHUNK = 2000  # ids per IN (...) query, rows per streamed batch


def encode_embedding(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).reshape(-1).astype(STORED).tobytes()


def decode_embeddings(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Stored embeddings → (n, dim) float32; a blob of another size means a mixed-model gallery."""
    size = STORED.itemsize * dim
    if any(len(b) != size for b in blobs):
        raise BadInput(f"stored embeddings of a size other than {dim} values: the gallery's faces were embedded by "
                       "several models; move them all to one", remedy=Remedy.run("reembed"))
    return np.frombuffer(b"".join(blobs), dtype=STORED).reshape(len(blobs), dim).astype(np.float32, copy=False)


def _chunk(rows, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, (n, dim) vectors, (n,) vector hashes) of (id, embedding) rows."""
    ids, blobs = [r[0] for r in rows], [r[1] for r in rows]
    return np.asarray(ids, dtype=np.int64), decode_embeddings(blobs, dim), vector_hashes(ids, blobs)


def fetch_vectors(conn: Connection, ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, (n, dim) vectors, (n,) vector hashes) for these face ids, in chunks; ids no longer present are left out."""
    parts = []
    for start in range(0, len(ids), CHUNK):
        chunk = [int(i) for i in ids[start : start + CHUNK]]
        parts.append(_chunk(conn.execute(sa.select(Face.id, Face.embedding).where(Face.id.in_(chunk))).all(), dim))
    if not parts:
        return np.empty(0, np.int64), np.empty((0, dim), np.float32), np.empty(0, np.uint64)
    return tuple(np.concatenate(column) for column in zip(*parts))


def iter_vectors(conn: Connection, dim: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every stored embedding, streamed in chunks of (ids, (n, dim) vectors, (n,) vector hashes)."""
    # streaming is this statement's option, not the connection's: Connection.execution_options changes the
    # connection itself, and the caller's next statements (inserts, with the pgvector store) would stream too
    result = conn.execute(sa.select(Face.id, Face.embedding).order_by(Face.id)
                          .execution_options(stream_results=True, yield_per=CHUNK))
    for rows in result.partitions():
        yield _chunk(rows, dim)


def stored_hashes(conn: Connection) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vector hashes) of every face, from the stored embeddings (streamed)."""
    result = conn.execute(sa.select(Face.id, Face.embedding).order_by(Face.id)
                          .execution_options(stream_results=True, yield_per=CHUNK))
    ids, hashes = [np.empty(0, np.int64)], [np.empty(0, np.uint64)]
    for rows in result.partitions():
        ids.append(np.asarray([r[0] for r in rows], dtype=np.int64))
        hashes.append(vector_hashes([r[0] for r in rows], [r[1] for r in rows]))
    return np.concatenate(ids), np.concatenate(hashes)
