"""Bringing a FAISS index in line with the faces table: diff by id, or build from scratch.

All functions read through one connection whose transaction is a snapshot (``db.snapshot``), so the
vectors added and the epoch recorded describe the same database state.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from facesearch.gallery.digest import vector_hashes
from facesearch.gallery.faces import decode_embeddings
from facesearch.gallery.index import FaceIndex, IndexSettings
from facesearch.gallery.models import Face

logger = logging.getLogger(__name__)

CHUNK = 2000  # ids per IN (...) query, vectors per index add

# (database uid, epoch, settings, embedding dim, vector digest)
IndexKey = tuple[str, int, IndexSettings, int, str]


def state_key(state) -> IndexKey | None:
    """The key of the database state a ``gallery_state`` row describes (None: no embedding size yet)."""
    if state.embedding_dim is None:
        return None
    return (state.uid, state.epoch, IndexSettings.from_dict(state.index_settings), state.embedding_dim,
            state.vectors_digest)


def index_key(index: FaceIndex) -> IndexKey:
    return index.uid, index.epoch, index.settings, index.dim, index.digest


def header_key(header: dict[str, Any]) -> IndexKey:
    return (header["uid"], header["epoch"], IndexSettings.from_dict(header["settings"]), header["dim"],
            header.get("digest"))


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


def apply_diff(conn: Connection, index: FaceIndex, ids: np.ndarray) -> tuple[int, int]:
    """Add the faces SQL has and the index lacks; remove those the index has and SQL lacks.

    Returns:
        (added, removed) counts.
    """
    missing = np.setdiff1d(ids, index.ids, assume_unique=True)
    orphans = np.setdiff1d(index.ids, ids, assume_unique=True)
    index.remove(orphans)
    add_ids, xb, hashes = fetch_vectors(conn, missing, index.dim)
    index.add(add_ids, xb, hashes)
    if len(missing) or len(orphans):
        logger.info("index synchronised: %d faces added, %d removed", len(add_ids), len(orphans))
    return len(add_ids), len(orphans)


def build(conn: Connection, ids: np.ndarray, settings: IndexSettings, dim: int, uid: str, seed: int = 0) -> FaceIndex:
    """A fresh index over every face in the database (trained on a random sample when needed)."""
    train = None
    if settings.needs_training() and len(ids) >= settings.min_train:
        sample = np.random.default_rng(seed).choice(ids, min(len(ids), settings.train_size), replace=False)
        train = fetch_vectors(conn, np.sort(sample), dim)[1]
    index = FaceIndex.create(settings, dim, len(ids), train, uid=uid)
    for chunk_ids, xb, hashes in iter_vectors(conn, dim):
        index.add(chunk_ids, xb, hashes)
    logger.info("index built: %s, %d faces", index.layout, len(index.ids))
    return index
