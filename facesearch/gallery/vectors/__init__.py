"""A gallery's vector stores: where the faces' embeddings (kept in SQL, the truth) are indexed and searched.

``base`` is the ``VectorStore`` protocol and the ``VectorSettings`` that say which store holds a gallery's vectors;
``faiss_store`` keeps them in an index file in the gallery folder (``index`` the file, ``sync`` and ``freshness``
keeping it in line with the database); ``pgvector_store`` in PostgreSQL itself (``pgvector_sql`` the SQL).
``open_store`` is the one place a store is chosen by name.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from facesearch.gallery.transactions import Transactions
from facesearch.gallery.vectors.base import STORES, VectorSettings, VectorStore
from facesearch.gallery.vectors.faiss_store import FaissFileStore
from facesearch.gallery.vectors.pgvector_store import PgvectorStore

_IMPLEMENTATIONS = {store.name: store for store in (FaissFileStore, PgvectorStore)}


def open_store(settings: VectorSettings, held: VectorStore | None, folder: Path, engine: Engine,
               tx: Transactions, *, writable: bool, concurrent: bool) -> VectorStore:
    """The store ``settings`` name: ``held`` when it is that one (it keeps what it has in memory), else a new one
    (another process may have moved the gallery's vectors since ``held`` was opened)."""
    if held is not None and held.name == settings.store:
        return held
    return _IMPLEMENTATIONS[settings.store](folder, engine, tx, writable=writable, concurrent=concurrent)


__all__ = ["STORES", "VectorSettings", "VectorStore", "open_store"]
