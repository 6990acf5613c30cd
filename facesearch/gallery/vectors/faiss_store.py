"""The FAISS store: the vectors in an index file in the gallery folder, a cache of the database rebuilt from it.

The file never holds a face the database has not committed: after each commit that changed the faces, the index is
brought up to date under the folder lock (``freshness.IndexKeeper``), and a search first checks that it matches the
database. SQLite or PostgreSQL alike; each process keeps its own copy in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from facesearch.gallery.hits import hit_rows, ranked_hits
from facesearch.gallery.models import Face, GalleryState
from facesearch.gallery.records import FaceHit, GalleryError
from facesearch.gallery.transactions import Transactions, bump, state as current_state
from facesearch.gallery.vectors.base import VectorSettings
from facesearch.gallery.vectors.freshness import IndexKeeper
from facesearch.gallery.vectors.index import FaceIndex, IndexFileError, IndexSettings, read_header

logger = logging.getLogger(__name__)


class FaissFileStore:
    """The gallery's vectors in ``folder/index.faiss``."""

    name = "faiss"

    def __init__(self, folder: Path, engine: Engine, tx: Transactions, *, writable: bool, concurrent: bool):
        """``writable``: the index file may be written (else it is kept up to date in memory only); ``concurrent``:
        threads search while others write (``IndexKeeper``)."""
        self.folder, self.tx = folder, tx
        self._keeper = IndexKeeper(folder, engine, writable=writable, concurrent=concurrent)
        self.path = self._keeper.path

    def add(self, conn: Connection, state: GalleryState, settings: VectorSettings, ids: np.ndarray,
            xb: np.ndarray) -> None:
        """Nothing in the transaction: the file catches up once the faces are committed (``sync``)."""

    def sync(self, rebuild: bool = False) -> FaceIndex | None:
        return self._keeper.sync(rebuild=rebuild)

    def search(self, xq: np.ndarray, k: int) -> list[list[FaceHit]]:
        """The index's top ``k``; an approximate index's hits re-scored exactly from the stored embeddings."""
        index = self._keeper.current()
        if index is None or len(index.ids) == 0:
            return [[] for _ in xq]
        if xq.shape[1] != index.dim:
            raise GalleryError(f"query embeddings have {xq.shape[1]} dimensions, the gallery {index.dim}")
        S, I = index.search(xq, k)
        with self.tx.read() as s:
            rows = hit_rows(s, np.unique(I[I >= 0]), with_embeddings=not index.exact)
        return [ranked_hits(self.folder, q, sims, ids, rows, index.exact) for q, sims, ids in zip(xq, S, I)]

    def rebuild(self, current: VectorSettings, settings: VectorSettings | None) -> dict[str, Any]:
        """The new index is built before the new settings are stored, so an interrupted rebuild changes nothing."""
        index = self._keeper.rebuild(settings.faiss if settings else None, lambda built: self._record(settings, built))
        faces = len(index.ids) if index else 0
        return {"layout": index.layout if index else None, "faces": faces, "rebuilt": True,
                "trains_at": (settings or current).faiss.trains_at(faces)}

    def _record(self, settings: VectorSettings | None, built: FaceIndex | None) -> None:
        """Store the settings an index was rebuilt with and, when the faces it was built from (at the epoch it
        records) add up to another digest than the one recorded, theirs."""
        with self.tx.mutation() as s:
            state = current_state(s)
            digest = None
            if built is not None and state.epoch == built.epoch and state.vectors_digest != built.digest:
                logger.warning("the database recorded the vector digest %s, its faces add up to %s (changed outside "
                               "facesearch): recorded", state.vectors_digest, built.digest)
                digest = built.digest
            if settings is not None:
                state.index_settings = settings.to_dict()
            if settings is not None or digest is not None:
                bump(s, digest=digest)

    def fill(self, conn: Connection, state: GalleryState, settings: VectorSettings) -> int:
        """Nothing to write in the transaction: the file is built once the move is committed (``sync``)."""
        return int(conn.scalar(sa.select(sa.func.count(Face.id))))

    def empty(self, conn: Connection) -> None:
        """The index file goes: SQL is the index now (were the move not to commit, the next search rebuilds it)."""
        self.path.unlink(missing_ok=True)

    def describe(self, conn: Connection, state: GalleryState) -> dict[str, Any]:
        try:
            header = read_header(self.path)
        except IndexFileError:
            header = {}
        return {"index_layout": header.get("layout"), "index_faces": header.get("n_ids"),
                "index_tombstones": header.get("n_tombstones"), "index_epoch": header.get("epoch"),
                "index_bytes": self.path.stat().st_size if self.path.exists() else None}

    def check(self, conn: Connection, state: GalleryState, ids: np.ndarray, hashes: np.ndarray) -> list[str]:
        """How the index file differs from the database state, its face ids and their vector hashes."""
        if state.embedding_dim is None:
            return []
        path = self.path
        try:
            index = FaceIndex.read(path)
        except IndexFileError as e:
            return [f"index file unusable ({e}); rebuild recreates it"]
        problems = []
        if index.uid != state.uid:
            problems.append(f"{path} belongs to another database (uid {index.uid}, expected {state.uid}); rebuild "
                            "replaces it")
        if index.epoch != state.epoch:
            problems.append(f"index is stale: it reflects epoch {index.epoch}, the database is at {state.epoch} (the "
                            "next search or rebuild brings it up to date)")
        if index.settings != IndexSettings.from_dict(state.index_settings):
            problems.append("index was built with other settings than the database's; rebuild builds it with them")
        missing = len(np.setdiff1d(ids, index.ids))
        orphans = len(np.setdiff1d(index.ids, ids))
        if missing or orphans:
            problems.append(f"index lacks {missing} faces and holds {orphans} vectors of deleted faces; rebuild "
                            "replaces it")
        common, in_db, in_index = np.intersect1d(ids, index.ids, assume_unique=True, return_indices=True)
        foreign = int(np.count_nonzero(hashes[in_db] != index.hashes[in_index]))
        if foreign:
            problems.append(f"index holds other vectors than the database's for {foreign} of its {len(common)} faces "
                            "(a copy of another gallery's index?); rebuild replaces it")
        if index.needs_rebuild(len(ids)):
            problems.append(f"index {index.layout} should be rebuilt ({index.n_tombstones} tombstones, "
                            f"target {index.target_layout()})")
        return problems

    def check_dim(self, dim: int) -> None:
        """FAISS indexes embeddings of any width."""
