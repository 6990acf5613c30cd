"""The gallery: SQL (the source of truth) and a FAISS index (rebuilt from it), one key — the face id.

A gallery folder holds::

    gallery.db      SQLite database (unless --db / $FACESEARCH_DB names another, e.g. PostgreSQL)
    index.faiss     the FAISS index, with the database uid and epoch it reflects (see index.py)
    gallery.lock    fcntl lock: index writers and schema upgrades take turns
    crops/          the enrolled face crops, named by face id (never by identity name)

Every change to the set of faces runs in one SQL transaction that also bumps ``gallery_state.epoch``;
only after it commits is the index brought up to date, under the lock, by comparing its ids with the
database's and written to a temp file that is atomically renamed into place. A process killed at any
point therefore leaves committed faces in SQL and an index file that is either current or stale; a stale,
missing, torn or foreign index is detected by epoch, uid or checksum and synchronised on the next open.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from facesearch.gallery import db, sync
from facesearch.gallery.check import CROPS_DIR, inside, inside_lexically, orphan_crops
from facesearch.gallery.index import FaceIndex, IndexFileError, IndexSettings, read_header
from facesearch.gallery.models import Face, GalleryState, Identity, utcnow
from facesearch.gallery.records import (
    AddResult,
    CheckReport,
    FaceHit,
    FaceInfo,
    GalleryError,
    IdentityInfo,
    IdentityNotFound,
    ModelMismatchError,
    NewFace,
)

logger = logging.getLogger(__name__)

INDEX_NAME = "index.faiss"
LOCK_NAME = "gallery.lock"
# Cosine similarity below which `who` answers "unknown" when the gallery has no calibrated threshold
# (`facesearch calibrate` stores one). Higher is stricter. A placeholder: calibrate on your own data.
DEFAULT_THRESHOLD = 0.5


class Gallery:
    """A face gallery in ``folder`` (created when missing), on SQLite by default or on ``url``.

    SQLite databases are upgraded to the latest schema on open; PostgreSQL ones must be upgraded
    explicitly (``facesearch db upgrade``) unless ``migrate=True``.
    """

    def __init__(self, folder: str | os.PathLike, url: str | None = None, *, create: bool = True, migrate: bool | None = None):
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            if not create:
                raise GalleryError(f"{self.folder}: no such gallery folder")
            self.folder.mkdir(parents=True)
        self.url = db.resolve_url(self.folder, url)
        self.engine = db.create_engine(self.url)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(db.writer(self.engine), expire_on_commit=False)
        self._index: FaceIndex | None = None
        self._prepare_database(db.is_sqlite(self.url) if migrate is None else migrate)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def index_path(self) -> Path:
        return self.folder / INDEX_NAME

    # -- setup --------------------------------------------------------------------------------------

    def _prepare_database(self, migrate: bool) -> None:
        head = db.head_revision()
        if db.current_revision(self.engine) != head:
            if not migrate:
                raise GalleryError(
                    f"{db.masked(self.url)}: database schema is not at revision {head}; "
                    f"run `facesearch db upgrade --db URL` first"
                )
            with self._lock():
                if db.current_revision(self.engine) != head:
                    db.upgrade(self.engine)
        with contextlib.suppress(sa.exc.IntegrityError), self._write() as s, s.begin():
            if s.get(GalleryState, 1) is None:  # another process may insert it first: then ours fails, fine
                s.add(GalleryState(id=1, uid=uuid.uuid4().hex, epoch=0, index_settings=IndexSettings().to_dict()))

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Exclusive lock across processes (and across Gallery objects of one process)."""
        with open(self.folder / LOCK_NAME, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _mutation(self) -> Iterator[Session]:
        """A write transaction, serialised with every other one (SQLite: BEGIN IMMEDIATE takes the write
        lock; PostgreSQL: a row lock on gallery_state), so check-then-insert cannot race."""
        with self._write() as s, s.begin():
            s.execute(sa.select(GalleryState.id).where(GalleryState.id == 1).with_for_update())
            yield s

    @staticmethod
    def _bump(s: Session) -> None:
        """Record that the set of faces (or their vectors, or the index settings) changed."""
        s.execute(sa.update(GalleryState).where(GalleryState.id == 1).values(epoch=GalleryState.epoch + 1))

    def _state(self, s: Session) -> GalleryState:
        return s.get(GalleryState, 1, populate_existing=True)

    # -- model and threshold ------------------------------------------------------------------------

    @property
    def model_fingerprint(self) -> str | None:
        with self._read() as s:
            return self._state(s).model_fingerprint

    @property
    def model_source(self) -> str | None:
        """The checkpoint the gallery's embeddings were made with ("base": the shipped model), or None."""
        with self._read() as s:
            return self._state(s).model_source

    def check_model(self, fingerprint: str) -> None:
        """Raise ModelMismatchError unless the gallery is empty or holds this model's embeddings."""
        with self._read() as s:
            self._check_model(s, fingerprint)

    def _check_model(self, s: Session, fingerprint: str) -> None:
        held = self._state(s).model_fingerprint
        if held is not None and held != fingerprint and s.scalar(sa.select(sa.func.count(Face.id))):
            raise ModelMismatchError(
                f"{self.folder}: the gallery holds embeddings of model {held}, the checkpoint is model "
                f"{fingerprint}; use the gallery's checkpoint, or move the gallery to the new model with "
                f"`facesearch gallery reembed --checkpoint NEW`"
            )

    @property
    def index_settings(self) -> IndexSettings:
        with self._read() as s:
            return IndexSettings.from_dict(self._state(s).index_settings)

    def threshold(self) -> tuple[float, dict[str, Any] | None]:
        """The similarity threshold `who` uses and how it was set (None: the documented default)."""
        with self._read() as s:
            state = self._state(s)
            if state.threshold is None:
                return DEFAULT_THRESHOLD, None
            return state.threshold, state.threshold_meta

    def set_threshold(self, value: float, meta: dict[str, Any] | None = None) -> None:
        """Store a calibrated threshold (e.g. from `facesearch evaluate`), with how it was obtained."""
        with self._write() as s, s.begin():
            state = self._state(s)
            state.threshold, state.threshold_meta = float(value), meta

    # -- enrolling ----------------------------------------------------------------------------------

    def enrolled_as(self, sha256: str) -> str | None:
        """The identity a photo (by content hash) is already enrolled under, or None."""
        with self._read() as s:
            return s.scalar(sa.select(Identity.name).join(Face).where(Face.source_sha256 == sha256))

    def add_faces(self, faces: Sequence[NewFace], fingerprint: str, source: str | None = None) -> AddResult:
        """Enroll faces (one transaction), then bring the index up to date.

        Args:
            faces: the faces, possibly of several identities (created when new).
            fingerprint: the model that computed the embeddings (``LoadedModel.fingerprint``).
            source: where that model is (``checkpoint.model_source``), recorded for commands given no checkpoint.
        Returns:
            The new face ids and the faces skipped because their photo is already enrolled.
        Raises:
            ModelMismatchError: the gallery holds another model's embeddings.
        """
        duplicates: list[tuple[int, str]] = []
        written: list[Path] = []
        try:
            with self._mutation() as s:
                self._claim_model(s, fingerprint, faces, source)
                with s.no_autoflush:  # one flush for the batch, not one per lookup
                    rows = self._insert_faces(s, faces, fingerprint, duplicates)
                s.flush()  # one batched INSERT ... RETURNING assigns the ids, the FAISS ids
                for face, row in rows:
                    if face.crop is not None:
                        row.crop_path = self._write_crop(row.id, face.crop, written)
                if rows:
                    self._bump(s)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        if rows:
            self._sync_index()
        return AddResult([row.id for _, row in rows], duplicates)

    def _claim_model(self, s: Session, fingerprint: str, faces: Sequence[NewFace], source: str | None) -> None:
        self._check_model(s, fingerprint)
        state = self._state(s)
        dims = {int(np.asarray(f.embedding).size) for f in faces}
        if len(dims) > 1:
            raise GalleryError(f"embeddings of different sizes in one batch: {sorted(dims)}")
        has_faces = s.scalar(sa.select(sa.func.count(Face.id)))
        if has_faces and dims and state.embedding_dim not in dims:
            raise GalleryError(f"embedding size {dims.pop()} does not match the gallery's {state.embedding_dim}")
        if not dims:
            return
        if state.model_fingerprint != fingerprint or not has_faces:
            state.model_fingerprint, state.embedding_dim = fingerprint, dims.pop()
        if source is not None:
            state.model_source = source

    def _insert_faces(self, s: Session, faces: Sequence[NewFace], fingerprint: str,
                      duplicates: list[tuple[int, str]]) -> list[tuple[NewFace, Face]]:
        """Face rows for the faces whose photo is not enrolled yet (the others go to ``duplicates``)."""
        identities: dict[str, Identity] = {}
        in_batch: dict[str, str] = {}  # sha256 → name, for a photo given twice in one call
        rows = []
        for i, face in enumerate(faces):
            sha = face.source_sha256
            holder = sha and (in_batch.get(sha) or s.scalar(
                sa.select(Identity.name).join(Face).where(Face.source_sha256 == sha)))
            if holder:
                duplicates.append((i, holder))
                continue
            if sha:
                in_batch[sha] = face.name
            if face.name not in identities:
                identities[face.name] = s.scalar(sa.select(Identity).where(Identity.name == face.name)) or Identity(name=face.name)
                identities[face.name].updated_at = utcnow()
            vector = np.ascontiguousarray(face.embedding, dtype=np.float32).reshape(-1)
            row = Face(
                identity=identities[face.name], source_path=face.source_path, source_sha256=sha,
                box=_floats(face.box), landmarks=_floats(face.landmarks), det_prob=face.det_prob,
                embedding=vector.tobytes(), model_fingerprint=fingerprint,
            )
            s.add(row)
            rows.append((face, row))
        return rows

    def _write_crop(self, face_id: int, crop, written: list[Path]) -> str:
        """Save a crop as crops/<id // 10000>/<id>.jpg (by id: names never become paths); returns that path."""
        rel = f"{CROPS_DIR}/{face_id // 10_000}/{face_id}.jpg"
        path = self.folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        crop.save(tmp, format="JPEG", quality=95)
        os.replace(tmp, path)
        written.append(path)
        return rel

    # -- identities ---------------------------------------------------------------------------------

    def identities(self) -> list[IdentityInfo]:
        """Every identity with its number of faces, by name."""
        n_faces = sa.func.count(Face.id)
        query = sa.select(Identity, n_faces).outerjoin(Face).group_by(Identity.id).order_by(Identity.name)
        with self._read() as s:
            return [IdentityInfo(i.name, n, i.created_at, i.updated_at) for i, n in s.execute(query)]

    def identity(self, name: str) -> IdentityInfo:
        """One identity with its faces; raises IdentityNotFound."""
        with self._read() as s:
            ident = self._identity(s, name)
            faces = s.scalars(sa.select(Face).where(Face.identity_id == ident.id).order_by(Face.id)).all()
            infos = [self._face_info(f, name) for f in faces]
            return IdentityInfo(ident.name, len(infos), ident.created_at, ident.updated_at, infos)

    def _face_info(self, f: Face, name: str) -> FaceInfo:
        crop = self.folder / f.crop_path if f.crop_path else None
        return FaceInfo(f.id, name, f.source_path, f.source_sha256, crop, f.box, f.landmarks, f.det_prob, f.created_at)

    def _identity(self, s: Session, name: str) -> Identity:
        ident = s.scalar(sa.select(Identity).where(Identity.name == name))
        if ident is None:
            raise IdentityNotFound(f"no identity named {name!r} in {self.folder}")
        return ident

    def rename(self, old: str, new: str) -> None:
        """Rename an identity (the index is keyed by face, so it does not change)."""
        with self._write() as s, s.begin():
            ident = self._identity(s, old)
            if old != new and s.scalar(sa.select(Identity.id).where(Identity.name == new)) is not None:
                raise GalleryError(f"an identity named {new!r} exists already; merge into it instead")
            ident.name = new

    def merge(self, source: str, target: str) -> int:
        """Move every face of ``source`` to ``target`` (created when missing) and delete ``source``.

        Returns:
            The number of faces moved.
        """
        if source == target:
            raise GalleryError("cannot merge an identity into itself")
        with self._write() as s, s.begin():
            src = self._identity(s, source)
            dst = s.scalar(sa.select(Identity).where(Identity.name == target)) or Identity(name=target)
            s.add(dst)
            s.flush()
            moved = s.execute(sa.update(Face).where(Face.identity_id == src.id).values(identity_id=dst.id))
            dst.updated_at = utcnow()
            s.delete(src)
            return moved.rowcount

    def remove(self, name: str) -> int:
        """Delete an identity, its faces, their vectors and their stored crops. Returns faces removed."""
        with self._mutation() as s:
            ident = self._identity(s, name)
            crops = s.scalars(sa.select(Face.crop_path).where(Face.identity_id == ident.id)).all()
            s.execute(sa.delete(Face).where(Face.identity_id == ident.id))
            s.delete(ident)
            self._bump(s)
        self._delete_crops(crops)
        self._sync_index()
        return len(crops)

    def remove_faces(self, face_ids: Sequence[int]) -> int:
        """Delete single faces (and their crops); identities left without faces stay. Returns faces removed."""
        ids = [int(i) for i in face_ids]
        with self._mutation() as s:
            crops = s.scalars(sa.select(Face.crop_path).where(Face.id.in_(ids))).all()
            s.execute(sa.delete(Face).where(Face.id.in_(ids)))
            self._bump(s)
        self._delete_crops(crops)
        self._sync_index()
        return len(crops)

    def _delete_crops(self, crops: Sequence[str | None]) -> None:
        for rel in crops:
            path = self._inside(rel)
            if path is not None:
                path.unlink(missing_ok=True)

    def _inside(self, rel: str | None) -> Path | None:
        return inside(self.folder, rel)

    # -- search -------------------------------------------------------------------------------------

    def search(self, xq: np.ndarray, k: int = 50) -> list[list[FaceHit]]:
        """The ``k`` most similar enrolled faces for each query, best first.

        Args:
            xq: (nq, d) float32 L2-normalised query embeddings, from the gallery's model.
            k: faces per query, before any aggregation by identity.
        Returns:
            One list of FaceHit per query; similarities are exact cosines (re-scored from the stored
            embeddings when the index approximates them).
        """
        xq = np.atleast_2d(np.asarray(xq, dtype=np.float32))
        index = self._fresh_index()
        if index is None or len(index.ids) == 0:
            return [[] for _ in xq]
        if xq.shape[1] != index.dim:
            raise GalleryError(f"query embeddings have {xq.shape[1]} dimensions, the gallery {index.dim}")
        S, I = index.search(xq, k)
        rows = self._hit_rows(np.unique(I[I >= 0]), with_vectors=not index.exact)
        return [self._hits(q, s, i, rows) for q, s, i in zip(xq, S, I)]

    def _hit_rows(self, ids: np.ndarray, with_vectors: bool) -> dict[int, tuple]:
        cols = [Face.id, Identity.name, Face.crop_path, Face.source_path]
        if with_vectors:
            cols.append(Face.embedding)
        query = sa.select(*cols).join(Identity).where(Face.id.in_([int(i) for i in ids]))
        with self._read() as s:
            return {row[0]: row[1:] for row in s.execute(query)}

    def _hits(self, q: np.ndarray, sims: np.ndarray, ids: np.ndarray, rows: dict[int, tuple]) -> list[FaceHit]:
        # rows lacks the -1 padding and any face deleted since the index was read
        found = [(float(sim), int(i), rows[int(i)]) for sim, i in zip(sims, ids) if int(i) in rows]
        if found and len(found[0][2]) == 4:  # approximate index: exact cosines from the stored embeddings
            stored = np.frombuffer(b"".join(row[3] for _, _, row in found), dtype=np.float32).reshape(len(found), -1)
            exact = (stored @ q).tolist()
            found = [(e, i, row) for e, (_, i, row) in zip(exact, found)]
        hits = [FaceHit(i, row[0], sim, inside_lexically(self.folder, row[1]), row[2]) for sim, i, row in found]
        return sorted(hits, key=lambda h: -h.similarity)

    # -- the index ----------------------------------------------------------------------------------

    def _fresh_index(self) -> FaceIndex | None:
        """The index matching the database now: in memory, else from the file, else synchronised."""
        with self._read() as s:
            state = self._state(s)
            key = (state.uid, state.epoch, IndexSettings.from_dict(state.index_settings), state.embedding_dim)
        if state.embedding_dim is None:
            return None
        if self._index is not None and sync.index_key(self._index) == key:
            return self._index
        with contextlib.suppress(IndexFileError):
            if sync.header_key(read_header(self.index_path)) == key:
                self._index = FaceIndex.read(self.index_path)
                return self._index
        return self._sync_index()

    def _sync_index(self, rebuild: bool = False) -> FaceIndex | None:
        """Bring the index file up to date with SQL (under the lock) and keep it in memory."""
        with self._lock():
            index = None if rebuild else self._current_file()
            with db.snapshot(self.engine) as conn:
                state = conn.execute(sa.select(GalleryState.__table__)).one()
                key = (state.uid, state.epoch, IndexSettings.from_dict(state.index_settings), state.embedding_dim)
                if state.embedding_dim is None:
                    index = None
                elif index is None or sync.index_key(index) != key:
                    index = self._synced(conn, index, key)
                    self._write_index(index)
            self._index = index
            return index

    def _synced(self, conn, index: FaceIndex | None, key: sync.IndexKey) -> FaceIndex:
        uid, epoch, settings, dim = key
        ids = np.asarray(conn.execute(sa.select(Face.id)).scalars().all(), dtype=np.int64)
        if index is not None and (index.uid, index.settings, index.dim) == (uid, settings, dim):
            sync.apply_diff(conn, index, ids)
        else:
            index = None
        if index is None or index.needs_rebuild(len(ids)):
            index = sync.build(conn, ids, settings, dim, uid)
        index.epoch = epoch
        return index

    def _current_file(self) -> FaceIndex | None:
        """The index file's content (the in-memory copy when it is the same), None when unusable."""
        try:
            header = read_header(self.index_path)
            if self._index is not None and sync.header_key(header) == sync.index_key(self._index):
                return self._index
            return FaceIndex.read(self.index_path)
        except IndexFileError as e:
            if self.index_path.exists():
                logger.warning("index file unusable, rebuilding from the database: %s", e)
            return None

    def _write_index(self, index: FaceIndex) -> None:
        """Temp file + atomic rename; the caller holds the lock."""
        tmp = self.folder / f".{INDEX_NAME}.{os.getpid()}.tmp"
        try:
            index.write(tmp)
            os.replace(tmp, self.index_path)  # atomic: readers see the old file or the new one
        except OSError as e:
            tmp.unlink(missing_ok=True)
            logger.warning("could not write %s (%s); the index lives in memory only", self.index_path, e)

    # -- maintenance --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts, model, threshold, index layout and sizes."""
        with self._read() as s:
            state = self._state(s)
            n_ids = s.scalar(sa.select(sa.func.count(Identity.id)))
            n_faces = s.scalar(sa.select(sa.func.count(Face.id)))
        try:
            header = read_header(self.index_path)
        except IndexFileError:
            header = {}
        threshold, meta = self.threshold()
        return {
            "folder": str(self.folder), "database": db.masked(self.url), "identities": n_ids, "faces": n_faces,
            "model_fingerprint": state.model_fingerprint, "model_source": state.model_source, "embedding_dim": state.embedding_dim,
            "threshold": threshold, "threshold_calibrated": meta is not None, "epoch": state.epoch,
            "index_settings": IndexSettings.from_dict(state.index_settings).to_dict(),
            "index_layout": header.get("layout"), "index_faces": header.get("n_ids"),
            "index_tombstones": header.get("n_tombstones"), "index_epoch": header.get("epoch"),
            "index_bytes": self.index_path.stat().st_size if self.index_path.exists() else None,
        }

    def check(self) -> CheckReport:
        """Compare the index file, the crops and the embeddings with SQL; changes nothing."""
        from facesearch.gallery.check import check_gallery

        return check_gallery(self)

    def rebuild(self, settings: IndexSettings | None = None) -> dict[str, Any]:
        """Rebuild the index from SQL (optionally with new settings) and delete orphan crop files."""
        if settings is not None:
            with self._mutation() as s:
                self._state(s).index_settings = settings.to_dict()
                self._bump(s)
        index = self._sync_index(rebuild=True)
        with self._read() as s:
            crops = s.scalars(sa.select(Face.crop_path).where(Face.crop_path.is_not(None))).all()
        for path in orphan_crops(self.folder, {self._inside(c) for c in crops}):
            path.unlink(missing_ok=True)
        return {"layout": index.layout if index else None, "faces": len(index.ids) if index else 0}

    def face_sources(self) -> list[FaceInfo]:
        """Every face (no embeddings): what `reembed` recomputes from."""
        query = sa.select(Face, Identity.name).join(Identity).order_by(Face.id)
        with self._read() as s:
            return [self._face_info(f, name) for f, name in s.execute(query)]

    def replace_embeddings(self, face_ids: Sequence[int], vectors: np.ndarray, fingerprint: str,
                           source: str | None = None) -> None:
        """Move the whole gallery to another model: every face gets its new embedding in one transaction.

        Args:
            face_ids: every face of the gallery, exactly once (a gallery never mixes models).
            vectors: (n, d) float32 L2-normalised, in the order of ``face_ids``.
            fingerprint: the new model.
            source: where the new model is (``checkpoint.model_source``).
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._mutation() as s:
            have = set(s.scalars(sa.select(Face.id)).all())
            if have != {int(i) for i in face_ids}:
                raise GalleryError("re-embedding must cover every face of the gallery exactly once")
            for face_id, vector in zip(face_ids, vectors):
                s.execute(sa.update(Face).where(Face.id == int(face_id)).values(embedding=vector.tobytes(), model_fingerprint=fingerprint))
            state = self._state(s)
            state.model_fingerprint, state.embedding_dim = fingerprint, int(vectors.shape[1])
            state.model_source = source
            self._bump(s)
        self._sync_index(rebuild=True)


def _floats(value) -> list | None:
    """Boxes and landmarks as plain JSON lists of floats."""
    return None if value is None else np.asarray(value, dtype=float).round(2).tolist()
