"""The gallery's SQL schema (SQLAlchemy 2 ORM). Alembic migrations in ``migrations/`` own the tables.

Four tables, and a fifth where PostgreSQL has pgvector:

- ``identities``: one row per person, ``name`` unique and stored verbatim (never used in a path).
- ``faces``: one row per enrolled face. Its primary key *is* the FAISS id, never reused
  (SQLite ``AUTOINCREMENT``, PostgreSQL identity column backed by a sequence).
- ``gallery_state``: exactly one row; the gallery's model, threshold, index settings, the ``uid`` its folder and
  index file are bound to, the ``epoch`` every face mutation bumps, which tells a stale index file from a fresh
  one, and the digest of its vectors, which tells a foreign index file from its own.
- ``api_keys``: the keys ``facesearch serve`` accepts (``facesearch keys create``), stored as SHA-256 digests.
- ``face_vectors`` (PostgreSQL with the pgvector extension only; its own ``VectorBase`` metadata): each face's
  embedding as ``halfvec``, searched in SQL by an HNSW index when the gallery's vector store is pgvector.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from pgvector.sqlalchemy import HALFVEC
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names, so migrations can drop and alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL; SQLite's AUTOINCREMENT needs the column to be exactly INTEGER PRIMARY KEY.
FaceId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class Identity(Base):
    __tablename__ = "identities"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    faces: Mapped[list[Face]] = relationship(back_populates="identity", passive_deletes=True)


class Face(Base):
    __tablename__ = "faces"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(FaceId, sa.Identity(), primary_key=True)
    identity_id: Mapped[int] = mapped_column(sa.ForeignKey("identities.id", ondelete="CASCADE"), index=True)
    source_path: Mapped[str | None] = mapped_column(sa.Text)  # the enrolled photo, absolute, as given
    # sha256 of the photo's bytes; unique so the same photo is never enrolled twice, even by two
    # processes at once (the second insert fails and is reported as a duplicate).
    source_sha256: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    crop_path: Mapped[str | None] = mapped_column(sa.Text)  # relative to the gallery folder
    box: Mapped[list[float] | None] = mapped_column(sa.JSON)  # x1, y1, x2, y2 in photo pixels
    landmarks: Mapped[list[list[float]] | None] = mapped_column(sa.JSON)  # (5, 2)
    det_prob: Mapped[float | None] = mapped_column(sa.Float)
    embedding: Mapped[bytes] = mapped_column(sa.LargeBinary)  # (d,) L2-normalised, float32 (embeddings.STORED)
    model_fingerprint: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)

    identity: Mapped[Identity] = relationship(back_populates="faces")


class GalleryState(Base):
    __tablename__ = "gallery_state"
    __table_args__ = (sa.CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    uid: Mapped[str] = mapped_column(sa.String(32))  # random; ties an index file to this database
    epoch: Mapped[int] = mapped_column(sa.BigInteger, default=0)  # bumped by every face mutation
    # XOR of every face's 64-bit vector hash (digest.py), hex; updated in each transaction that adds, removes or
    # re-embeds faces. An index file records the hashes of the vectors it holds: one copied from another gallery
    # (the same uid, epoch and face ids, other vectors) does not match it.
    vectors_digest: Mapped[str] = mapped_column(sa.String(16), default="0" * 16)
    model_fingerprint: Mapped[str | None] = mapped_column(sa.String(64))  # None until the first enroll
    model_source: Mapped[str | None] = mapped_column(sa.Text)  # "base" or a checkpoint path (checkpoint.model_source)
    embedding_dim: Mapped[int | None] = mapped_column(sa.Integer)
    threshold: Mapped[float | None] = mapped_column(sa.Float)  # None: use store.DEFAULT_THRESHOLD
    threshold_meta: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)  # how it was calibrated
    index_settings: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)  # VectorSettings as a dict
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.Text, unique=True)
    # SHA-256 of the key: the key itself is shown once, at creation, and never stored. Keys are 32 random
    # bytes, so a plain digest (no salt, no slow hash) cannot be searched back.
    digest: Mapped[str] = mapped_column(sa.String(64), unique=True)
    read_only: Mapped[bool] = mapped_column(sa.Boolean, default=False)  # may recognize, may not change the gallery
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow)


class VectorBase(DeclarativeBase):
    """Tables that exist only where the database has pgvector (migration 0004 creates them there)."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class FaceVector(VectorBase):
    __tablename__ = "face_vectors"

    face_id: Mapped[int] = mapped_column(FaceId, sa.ForeignKey(Face.id, ondelete="CASCADE"), primary_key=True)
    # No fixed dimension in the column (a gallery may move to a model of another width); the HNSW index is on
    # the cast to halfvec(d) of the gallery's d (gallery/vectors/pgvector_sql.py), and searches order by that same cast.
    embedding: Mapped[Any] = mapped_column(HALFVEC())
