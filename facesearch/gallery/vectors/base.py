"""What a vector store is: the ``VectorStore`` protocol, and ``VectorSettings``, which says which store holds a
gallery's vectors and how each store builds and searches them.

The faces' embeddings in SQL are the truth; a store indexes them for search. The Gallery owns the transactions
and calls its store at fixed points: inside the transaction that adds faces (``add``), after each commit that
changed the faces (``sync``), to search, to rebuild, to take a gallery's vectors in or give them up (``fill``,
``empty``, in the transaction that moves them), to describe and to check itself. It never asks which store it
holds; ``open_store`` (``vectors/__init__.py``) is the one place a store is chosen by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from sqlalchemy.engine import Connection

from facesearch.errors import BadInput, Remedy
from facesearch.gallery.models import GalleryState
from facesearch.gallery.records import FaceHit, GalleryError
from facesearch.gallery.vectors.index import IndexSettings
from facesearch.gallery.vectors.pgvector_sql import PgvectorSettings

STORES = ("faiss", "pgvector")  # the names of VectorSettings' fields holding each store's settings
PG_PREFIX = "pg_"  # pgvector's settings as stored: beside the FAISS file's, in one JSON object


@dataclass(frozen=True)
class VectorSettings:
    """Which store holds the gallery's vectors (``store``), and each store's settings: the one in use, and the
    other's, kept for a move back. Stored in ``gallery_state.index_settings`` as one flat JSON object (the FAISS
    settings, pgvector's with a ``pg_`` prefix, and ``store``)."""

    store: str = "faiss"  # "faiss" (an index file in the gallery folder) or "pgvector" (in PostgreSQL itself)
    faiss: IndexSettings = field(default_factory=IndexSettings)
    pgvector: PgvectorSettings = field(default_factory=PgvectorSettings)

    def __post_init__(self) -> None:
        if self.store not in STORES:
            raise BadInput(f"vector store must be one of {STORES}, not {self.store!r}")

    @property
    def in_use(self) -> IndexSettings | PgvectorSettings:
        """The settings of the store that holds the vectors."""
        return getattr(self, self.store)

    def with_search_breadth(self, ef_search: int) -> VectorSettings:
        """These settings with the store in use searching ``ef_search`` candidates (its HNSW's breadth)."""
        return replace(self, **{self.store: self.in_use.with_search_breadth(ef_search)})

    def with_part(self, part: IndexSettings | PgvectorSettings | VectorSettings) -> VectorSettings:
        """These settings with one store's replaced by ``part`` (a whole ``VectorSettings``: it, for this store)."""
        if isinstance(part, IndexSettings):
            return replace(self, faiss=part)
        if isinstance(part, PgvectorSettings):
            return replace(self, pgvector=part)
        if part.store != self.store:
            raise GalleryError(f"moving the vectors to the {part.store} store is a change of store, not a rebuild",
                               remedy=Remedy.run("use_store", store=part.store))
        return part

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, **self.faiss.to_dict(),
                **{PG_PREFIX + k: v for k, v in self.pgvector.to_dict().items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> VectorSettings:
        d = d or {}
        pg = {k[len(PG_PREFIX):]: v for k, v in d.items() if k.startswith(PG_PREFIX)}
        return cls(d.get("store", "faiss"), IndexSettings.from_dict(d), PgvectorSettings.from_dict(pg))


class VectorStore(Protocol):
    """Where a gallery's vectors are indexed and searched. Transactions are the Gallery's: a method given ``conn``
    works inside the caller's transaction; the others open their own."""

    name: str  # the store's name in VectorSettings.store

    def add(self, conn: Connection, state: GalleryState, settings: VectorSettings, ids: np.ndarray,
            xb: np.ndarray) -> None:
        """In the transaction that inserts the faces ``ids`` (int64) with their (n, d) float32 unit vectors ``xb``:
        what must commit with them."""

    def sync(self, rebuild: bool = False) -> None:
        """After a commit that added or removed faces: catch up with the database (``rebuild``: from scratch)."""

    def search(self, xq: np.ndarray, k: int) -> list[list[FaceHit]]:
        """The ``k`` faces most similar to each (nq, d) query, best first, with exact cosines."""

    def rebuild(self, current: VectorSettings, settings: VectorSettings | None) -> dict[str, Any]:
        """Index every face anew (with ``settings`` when given, recorded in the database); {"layout", "faces",
        "rebuilt", "trains_at"}."""

    def fill(self, conn: Connection, state: GalleryState, settings: VectorSettings) -> int:
        """In the transaction that moves a gallery's vectors here: take every face in; how many."""

    def empty(self, conn: Connection) -> None:
        """In the transaction that moves a gallery's vectors elsewhere: give up what this store held."""

    def describe(self, conn: Connection, state: GalleryState) -> dict[str, Any]:
        """What ``gallery stats`` shows of the store: its layout and sizes."""

    def check(self, conn: Connection, state: GalleryState, ids: np.ndarray, hashes: np.ndarray) -> list[str]:
        """How the store differs from the database's faces ``ids`` and their vector hashes, as sentences that each
        say what fixes it; changes nothing."""

    def check_dim(self, dim: int) -> None:
        """Refuse (GalleryError) embeddings of ``dim`` dimensions this store cannot index, before anything changes."""
