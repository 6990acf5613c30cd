"""The pgvector store: the vectors in PostgreSQL itself (``face_vectors``, ``pgvector_sql.py``), searched in SQL,
with no index file: every process that opens the gallery sees every committed enrollment at once.

A face's vector row is written in the transaction that adds the face and deleted with it (ON DELETE CASCADE), so
there is nothing to catch up after a commit; the hits are re-scored exactly from the float32 embeddings in
``faces``, so the similarities do not depend on the store.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

import facesearch.gallery.vectors.pgvector_sql as sql
from facesearch.gallery.hits import ranked_hits
from facesearch.gallery.models import Face, GalleryState
from facesearch.gallery.records import FaceHit, GalleryError
from facesearch.gallery.transactions import Transactions, bump, state as current_state
from facesearch.gallery.vectors.base import VectorSettings

logger = logging.getLogger(__name__)

LAYOUT = "pgvector hnsw"


class PgvectorStore:
    """The gallery's vectors in its PostgreSQL database."""

    name = "pgvector"

    def __init__(self, folder: Path, engine: Engine, tx: Transactions, *, writable: bool, concurrent: bool):
        """``writable`` and ``concurrent`` change nothing here: the database is the index, its server takes turns."""
        self.folder, self.engine, self.tx = folder, engine, tx

    def add(self, conn: Connection, state: GalleryState, settings: VectorSettings, ids: np.ndarray,
            xb: np.ndarray) -> None:
        """The new faces' vector rows, and the HNSW index for their width when it is missing."""
        sql.insert(conn, ids, xb)
        sql.ensure_index(conn, state.embedding_dim, settings.pgvector)

    def sync(self, rebuild: bool = False) -> None:
        """Nothing to catch up: the rows went in and out with the faces."""

    def search(self, xq: np.ndarray, k: int) -> list[list[FaceHit]]:
        """In one read transaction: the HNSW index in SQL, each query's top-k fetched with its rows in one statement,
        then re-scored exactly from the float32 embeddings."""
        with self.tx.read() as s:
            state = current_state(s)
            if state.embedding_dim is None:
                return [[] for _ in xq]
            if xq.shape[1] != state.embedding_dim:
                raise GalleryError(f"query embeddings have {xq.shape[1]} dimensions, the gallery "
                                   f"{state.embedding_dim}")
            ef_search = VectorSettings.from_dict(state.index_settings).pgvector.ef_search
            found = sql.search(s.connection(), xq, k, state.embedding_dim, ef_search)
        return [ranked_hits(self.folder, q, sims, ids, rows, exact=False) for q, (sims, ids, rows) in zip(xq, found)]

    def rebuild(self, current: VectorSettings, settings: VectorSettings | None) -> dict[str, Any]:
        """Every vector row written again from ``faces`` and the HNSW index built anew, in one transaction with the
        new settings; unless they change only how it is searched (``ef_search``): those are stored, nothing is
        rebuilt."""
        if settings is not None and settings.pgvector.index_params() == current.pgvector.index_params():
            with self.tx.mutation() as s:
                current_state(s).index_settings = settings.to_dict()
                bump(s)
                faces = s.scalar(sa.select(sa.func.count(Face.id)))
            return {"layout": LAYOUT, "faces": faces, "rebuilt": False, "trains_at": None}
        return self._refill(settings)

    def _refill(self, settings: VectorSettings | None = None) -> dict[str, Any]:
        """The rows written again from ``faces`` and the HNSW index built anew (with ``settings`` when given, stored
        in the same transaction), and the faces' vector digest recorded."""
        with self.tx.mutation() as s:
            state = current_state(s)
            if settings is not None:
                state.index_settings = settings.to_dict()
            settings = settings or VectorSettings.from_dict(state.index_settings)
            n, digest = self._load(s.connection(), state, settings)
            if digest != state.vectors_digest:
                logger.warning("the database recorded the vector digest %s, its faces add up to %s (changed outside "
                               "facesearch): recorded", state.vectors_digest, digest)
            bump(s, digest=digest)
        return {"layout": LAYOUT, "faces": n, "rebuilt": True, "trains_at": None}

    @staticmethod
    def _load(conn: Connection, state: GalleryState, settings: VectorSettings) -> tuple[int, str]:
        """Every face's vector row from ``faces``, then the HNSW index for the gallery's width; the rows written and
        the vector digest of their faces."""
        n, digest = sql.fill(conn, state.embedding_dim)
        if state.embedding_dim is not None:
            sql.ensure_index(conn, state.embedding_dim, settings.pgvector)
        return n, digest

    def fill(self, conn: Connection, state: GalleryState, settings: VectorSettings) -> int:
        """The database must be PostgreSQL with pgvector, and the gallery's width one it indexes (checked before a
        whole gallery is copied)."""
        sql.require(conn, self.engine)
        if state.embedding_dim is not None:
            sql.check_dim(state.embedding_dim)
        return self._load(conn, state, settings)[0]

    def empty(self, conn: Connection) -> None:
        sql.clear(conn)

    def describe(self, conn: Connection, state: GalleryState) -> dict[str, Any]:
        """The table's rows and bytes, and its HNSW index's; no index file."""
        return {**sql.describe(conn, state.embedding_dim), "index_layout": None, "index_faces": None,
                "index_tombstones": None, "index_epoch": None, "index_bytes": None}

    def check(self, conn: Connection, state: GalleryState, ids: np.ndarray, hashes: np.ndarray) -> list[str]:
        without = sql.faces_without_vectors(conn)
        return [f"{without} faces have no vector in face_vectors (rebuild writes them)"] if without else []

    def check_dim(self, dim: int) -> None:
        sql.check_dim(dim)
