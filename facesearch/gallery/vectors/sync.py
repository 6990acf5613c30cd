"""Bringing a FAISS index in line with the faces table: diff by id, or build from scratch.

All functions read through one connection whose transaction is a snapshot (``db.snapshot``), so the
vectors added and the epoch recorded describe the same database state.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection

from facesearch.gallery.embeddings import fetch_vectors, iter_vectors
from facesearch.gallery.vectors.index import FaceIndex, IndexSettings

logger = logging.getLogger(__name__)

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
