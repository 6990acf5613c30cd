"""The gallery: SQL (the source of truth) and a FAISS index (rebuilt from it), one key — the face id.

A gallery folder holds::

    gallery.db      SQLite database (unless --db / $FACESEARCH_DB names another, e.g. PostgreSQL)
    gallery.json    the uid of the database this folder belongs to: another gallery's is refused (binding.py)
    index.faiss     the FAISS index, with the database uid, epoch and vector digest it reflects (freshness.py)
    gallery.lock    fcntl lock: index writers and schema upgrades take turns (lock.py)
    crops/          the enrolled face crops, named by face id (never by identity name)
    uploads/        photos enrolled through `facesearch serve`, named by content hash; deleted with their faces

Every change to the set of faces runs in one SQL transaction that also bumps ``gallery_state.epoch``;
only after it commits is the index brought up to date, under the lock, by comparing its ids with the
database's and written to a temp file that is atomically renamed into place. A process killed at any
point therefore leaves committed faces in SQL and an index file that is either current or stale; a stale,
missing, torn or foreign index is detected by epoch, uid or checksum and synchronised on the next open.

``Gallery`` is the transactions and the public face of the package; the work is in ``faces`` (adding faces),
``identities``, ``hits`` (search results), ``freshness`` (the index) and ``check``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from facesearch.gallery import binding, db, faces as face_rows, hits, identities, keys, vectors
from facesearch.gallery.check import CROPS_DIR, UPLOADS_DIR, inside, orphan_crops, orphan_uploads, referenced_uploads
from facesearch.gallery.digest import EMPTY, combine, vector_hashes
from facesearch.gallery.freshness import INDEX_NAME, IndexKeeper
from facesearch.gallery.index import IndexFileError, IndexSettings, read_header
from facesearch.gallery.lock import exclusive
from facesearch.gallery.models import Face, GalleryState, Identity
from facesearch.gallery.keys import KeyInfo
from facesearch.gallery.records import (AddResult, CheckReport, FaceHit, FaceInfo, GalleryError, GalleryReadOnly,
                                        IdentityInfo, NewFace)

logger = logging.getLogger(__name__)

# Cosine similarity below which `who` answers "unknown" when the gallery has no calibrated threshold
# (`facesearch calibrate` stores one). Higher is stricter. A placeholder: calibrate on your own data.
DEFAULT_THRESHOLD = 0.5


class Gallery:
    """A face gallery in ``folder`` (created when missing), on SQLite by default or on ``url``.

    SQLite databases are upgraded to the latest schema on open; PostgreSQL ones must be upgraded
    explicitly (``facesearch db upgrade``) unless ``migrate=True``.
    """

    def __init__(self, folder: str | os.PathLike, url: str | None = None, *, create: bool = True,
                 migrate: bool | None = None, read_only: bool | None = False, concurrent: bool = False):
        """
        Args:
            folder: the gallery folder; created (private to the user: 0700, its database 0600) when missing
                and ``create``.
            url: a database URL instead of the folder's SQLite ``gallery.db``; it must be the folder's own (the
                uid recorded in ``gallery.json``), or hold no gallery yet for a folder that holds none.
            migrate: upgrade an old schema on open (default: SQLite yes, PostgreSQL no).
            read_only: open for reading only: nothing is written to the database (SQLite opens it ``mode=ro``), so
                reading needs no write permission and no free disk space; only an old schema is upgraded first
                where the user may write it (``migrate``). The index file, a cache of the database, is refreshed
                when the folder is writable, else kept in memory. ``None``: read-only exactly when the user may not
                write the gallery (a shared or read-only mount, another user's gallery); writes then refuse with a
                clear error.
            concurrent: the object is shared by threads that search while others write (``facesearch serve``):
                the index in memory is updated on a copy, never under a search in flight.
        """
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            if not create or read_only:
                raise GalleryError(f"{self.folder}: no such gallery folder")
            self.folder.mkdir(parents=True, mode=0o700)
        self.url = db.resolve_url(self.folder, url)
        sqlite_file = db.sqlite_path(self.url)
        not_writable = self._not_writable(sqlite_file)
        if read_only is False and not_writable:
            raise GalleryReadOnly(f"{self.folder}: the gallery is read-only for this user (no write permission); "
                                  "this command changes it: use a writable copy")
        self.read_only = not_writable if read_only is None else read_only
        if sqlite_file is not None and (not sqlite_file.exists() or sqlite_file.stat().st_size == 0):
            self._refuse_lost_database(sqlite_file)
            if self.read_only or not create:
                raise GalleryError(f"{self.folder}: not a gallery (no {sqlite_file.name} in this folder); "
                                   "`facesearch enroll PHOTOS -g FOLDER` creates one")
            os.close(os.open(sqlite_file, os.O_CREAT | os.O_WRONLY, 0o600))  # SQLite keeps these permissions
        migrate = db.is_sqlite(self.url) if migrate is None else migrate
        self.engine = db.create_engine(self.url, read_only=self.read_only)
        try:
            if self.read_only:
                self._check_schema(migrate and not not_writable)
            else:
                self._prepare_database(migrate)
        except BaseException:
            self.engine.dispose()
            raise
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(db.writer(self.engine), expire_on_commit=False)
        self._index = IndexKeeper(self.folder, self.engine, concurrent=concurrent,
                                  writable=not self.read_only or os.access(self.folder, os.W_OK))

    def _refuse_lost_database(self, sqlite_file: Path) -> None:
        """A folder whose database is gone (or empty) but whose index, crops or record remain is a damaged gallery,
        not a new one: starting afresh there would overwrite the index of faces a backup of the database could
        restore."""
        left = [name for name in (binding.RECORD, INDEX_NAME, CROPS_DIR) if (self.folder / name).exists()]
        if left:
            state = "empty" if sqlite_file.exists() else "missing"
            listed = left[0] if len(left) == 1 else f"{', '.join(left[:-1])} and {left[-1]}"
            raise GalleryError(f"{sqlite_file}: the gallery database is {state}, but {listed} of its faces remain "
                               "in the folder: restore the database from a backup, or move the folder aside to start "
                               "a new gallery")

    def _not_writable(self, sqlite_file: Path | None) -> bool:
        """Whether this user may not write the folder (or the SQLite file in it)."""
        if not os.access(self.folder, os.W_OK):
            return True
        return sqlite_file is not None and sqlite_file.exists() and not os.access(sqlite_file, os.W_OK)

    def _check_schema(self, may_upgrade: bool) -> None:
        """A gallery opened read-only must belong to this folder and have this version's schema: an older one is
        upgraded first when ``may_upgrade`` (a writable SQLite file: what every command did before it read), else
        refused."""
        head, current = db.head_revision(), db.checked_revision(self.engine)
        uid = self._stored_uid(current)
        if uid is None:
            raise GalleryError(f"{db.where(self.url)}: holds no gallery yet; `facesearch enroll PHOTOS -g FOLDER` "
                               "creates one")
        if binding.check(self.folder, uid, db.where(self.url), self._known_crops) is None \
                and os.access(self.folder, os.W_OK):
            with contextlib.suppress(GalleryError):  # recorded for the next open, where the folder allows it
                binding.bind(self.folder, uid, db.where(self.url))
        if current != head and may_upgrade:
            self._upgrade()
        elif current != head:
            raise GalleryError(f"{db.where(self.url)}: database schema is at revision {current}, this version "
                               f"reads {head}; upgrade it once with write access (`facesearch db upgrade`)")

    def _stored_uid(self, revision: str | None) -> str | None:
        """The database's gallery uid (None: no gallery yet); read as every schema revision stores it, before any
        upgrade, so that a database that is not the folder's is refused before anything is written to it."""
        if revision is None:
            return None
        with self.engine.connect() as conn:
            return conn.execute(sa.text("SELECT uid FROM gallery_state WHERE id = 1")).scalar()

    def _known_crops(self) -> set[str]:
        """The crop paths (relative to the folder) the database's faces refer to."""
        with self.engine.connect() as conn:
            rows = conn.scalars(sa.select(Face.crop_path).where(Face.crop_path.is_not(None))).all()
        return {Path(os.path.normpath(rel)).as_posix() for rel in rows}

    def _upgrade(self) -> None:
        """Upgrade the schema to this version's, with an engine of its own (this one is read-only). This one's
        connections are closed first, so that the writer is the last to close and folds SQLite's write-ahead log
        back into the file (a reader without write access could not)."""
        self.engine.dispose()
        engine = db.create_engine(self.url)
        try:
            with exclusive(self.folder):
                if db.checked_revision(engine) != db.head_revision():
                    db.upgrade(engine)
        finally:
            engine.dispose()

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
        """Check that the folder belongs to the database (a database with no gallery yet gets one, for a folder
        that holds none), upgrade its schema when ``migrate``, and record the binding in the folder."""
        head, current = db.head_revision(), db.checked_revision(self.engine)
        uid = self._stored_uid(current)
        record = binding.check(self.folder, uid, db.where(self.url), self._known_crops)
        if current != head:
            if not migrate:
                raise GalleryError(
                    f"{db.where(self.url)}: database schema is not at revision {head}; "
                    f"run `facesearch db upgrade --db URL` first"
                )
            with exclusive(self.folder):
                if db.checked_revision(self.engine) != head:
                    db.upgrade(self.engine)
        if uid is None:
            with contextlib.suppress(sa.exc.IntegrityError), db.writer(self.engine).begin() as conn:
                # another process may insert it first: then ours fails, and both read the one that was
                conn.execute(sa.insert(GalleryState).values(id=1, uid=uuid.uuid4().hex, epoch=0, vectors_digest=EMPTY,
                                                            index_settings=IndexSettings().to_dict()))
            uid = self._stored_uid(head)
        if record is None:
            binding.bind(self.folder, uid, db.where(self.url))

    def _refuse_read_only(self) -> None:
        if self.read_only:
            raise GalleryReadOnly(f"{self.folder}: the gallery is open read-only (no write permission, or opened "
                                  "so); this command changes it: use a writable copy")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Session]:
        """A write transaction; refused on a gallery opened read-only."""
        self._refuse_read_only()
        with self._write() as s, s.begin():
            yield s

    @contextlib.contextmanager
    def _mutation(self) -> Iterator[Session]:
        """A write transaction, serialised with every other one (SQLite: BEGIN IMMEDIATE takes the write
        lock; PostgreSQL: a row lock on gallery_state), so check-then-insert cannot race."""
        with self._transaction() as s:
            s.execute(sa.select(GalleryState.id).where(GalleryState.id == 1).with_for_update())
            yield s

    @staticmethod
    def _bump(s: Session, changed: np.ndarray | None = None, digest: str | None = None) -> None:
        """Record that the set of faces (or their vectors, or the index settings) changed: ``changed`` holds the
        vector hashes of the faces added or removed (XOR-ed into the digest), ``digest`` the whole new digest."""
        values = {"epoch": GalleryState.epoch + 1}
        if changed is not None and len(changed):
            current = s.scalar(sa.select(GalleryState.vectors_digest).where(GalleryState.id == 1))
            values["vectors_digest"] = combine(changed, current)
        if digest is not None:
            values["vectors_digest"] = digest
        s.execute(sa.update(GalleryState).where(GalleryState.id == 1).values(**values))

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
            face_rows.check_model(s, self._state(s), fingerprint, self.folder)

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
        with self._transaction() as s:
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
            GalleryError: an embedding that is not finite.
        """
        faces = [dataclasses.replace(f, name=identities.new_name(f.name)) for f in faces]
        for f in faces:
            if not np.isfinite(f.embedding).all():  # a NaN row would match nothing, and FAISS would rank it anyway
                raise GalleryError(f"{f.source_path or f.name}: its embedding is not finite numbers (NaN or inf); "
                                   "nothing was enrolled")
        duplicates: list[tuple[int, str]] = []
        written: list[Path] = []
        try:
            with self._mutation() as s:
                face_rows.claim_model(s, self._state(s), fingerprint, faces, source, self.folder)
                with s.no_autoflush:  # one flush for the batch, not one per lookup
                    rows = face_rows.insert_faces(s, faces, fingerprint, duplicates)
                s.flush()  # one batched INSERT ... RETURNING assigns the ids, the FAISS ids
                for face, row in rows:
                    if face.crop is not None:
                        row.crop_path = face_rows.write_crop(self.folder, row.id, face.crop, written)
                if rows:
                    self._add_vectors(s, rows)
                    self._bump(s, vector_hashes([row.id for _, row in rows], [row.embedding for _, row in rows]))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        if rows:
            self._sync_index()
        return AddResult([row.id for _, row in rows], duplicates)

    def _add_vectors(self, s: Session, rows) -> None:
        """With the pgvector store, the new faces' vector rows, in the transaction that adds the faces."""
        state = self._state(s)
        settings = IndexSettings.from_dict(state.index_settings)
        if settings.store != "pgvector":
            return
        conn = s.connection()
        vectors.insert(conn, [row.id for _, row in rows], np.stack([np.asarray(f.embedding, np.float32) for f, _ in rows]))
        vectors.ensure_index(conn, state.embedding_dim, settings.pg_hnsw_m, settings.pg_ef_construction,
                             settings.pg_build_memory_mb)

    def _sync_index(self, rebuild: bool = False):
        """Bring the FAISS index file up to date after a change (the pgvector store needs nothing: SQL is it)."""
        if self.index_settings.store == "faiss":
            return self._index.sync(rebuild=rebuild)
        return None

    # -- identities ---------------------------------------------------------------------------------

    def identities(self) -> list[IdentityInfo]:
        """Every identity with its number of faces, by name."""
        with self._read() as s:
            return identities.list_all(s)

    def identity(self, name: str) -> IdentityInfo:
        """One identity with its faces; raises IdentityNotFound."""
        with self._read() as s:
            return identities.describe(s, identities.clean_name(name), self.folder)

    def create_identity(self, name: str) -> str:
        """A new identity with no faces yet; returns its stored (cleaned) name."""
        name = identities.new_name(name)
        with self._transaction() as s:
            identities.create(s, name)
        return name

    def face(self, face_id: int) -> FaceInfo:
        """One enrolled face; raises FaceNotFound."""
        with self._read() as s:
            f = identities.find_face(s, face_id, self.folder)
            return identities.face_info(self.folder, f, f.identity.name)

    def remove_face(self, face_id: int) -> FaceInfo:
        """Delete one face (its row, its vector and its stored crop); its identity stays, possibly empty."""
        with self._mutation() as s:
            f = identities.find_face(s, face_id, self.folder)
            info, crop = identities.face_info(self.folder, f, f.identity.name), f.crop_path
            s.delete(f)
            self._bump(s, vector_hashes([f.id], [f.embedding]))
        self._delete_crops([crop])
        self._forget_uploads([info.source_path])
        self._sync_index()
        return info

    def rename(self, old: str, new: str) -> None:
        """Rename an identity (fails if ``new`` exists: merge instead)."""
        old, new = identities.clean_name(old), identities.new_name(new)
        with self._transaction() as s:
            identities.rename(s, old, new, self.folder)

    def merge(self, source: str, target: str, create: bool = False) -> int:
        """Move every face of ``source`` to ``target`` and delete ``source``; a missing ``target`` is created
        only when ``create``.

        Returns:
            The number of faces moved.
        """
        source, target = identities.clean_name(source), identities.new_name(target)
        with self._transaction() as s:
            return identities.merge(s, source, target, self.folder, create=create)

    def remove(self, name: str) -> int:
        """Delete an identity, its faces, their vectors and their stored crops. Returns faces removed."""
        name = identities.clean_name(name)
        with self._mutation() as s:
            ident = identities.find(s, name, self.folder)
            rows = s.execute(sa.select(Face.id, Face.embedding, Face.crop_path, Face.source_path)
                             .where(Face.identity_id == ident.id)).all()
            s.execute(sa.delete(Face).where(Face.identity_id == ident.id))
            s.delete(ident)
            self._bump(s, vector_hashes([r.id for r in rows], [r.embedding for r in rows]))
        self._delete_crops([r.crop_path for r in rows])
        self._forget_uploads([r.source_path for r in rows])
        self._sync_index()
        return len(rows)

    def _delete_crops(self, crops: Sequence[str | None]) -> None:
        for rel in crops:
            path = self._inside(rel)
            if path is not None:
                path.unlink(missing_ok=True)

    def _forget_uploads(self, sources: Sequence[str | None]) -> None:
        """Delete the uploaded photos (``uploads/``) of faces just removed that no other face refers to."""
        names = {os.path.basename(p) for p in sources if p and os.path.basename(os.path.dirname(p)) == UPLOADS_DIR}
        for name in names:
            self.discard_upload(self.folder / UPLOADS_DIR / name)

    def discard_upload(self, path: str | os.PathLike) -> bool:
        """Delete ``path``, a photo kept in the gallery's ``uploads/`` (``facesearch serve``), unless a face refers
        to it: what is left of an upload that was refused, a duplicate, or whose faces are gone. Returns whether it
        was deleted (a path elsewhere is never touched)."""
        path = Path(path)
        if path.parent.resolve() != (self.folder / UPLOADS_DIR).resolve() or not path.is_file():
            return False
        self._refuse_read_only()
        with self._read() as s:
            if referenced_uploads(s.connection(), [path.name]):
                return False
        path.unlink(missing_ok=True)
        return True

    def _inside(self, rel: str | None) -> Path | None:
        return inside(self.folder, rel)

    # -- API keys (facesearch serve) ----------------------------------------------------------------

    def create_key(self, name: str, read_only: bool = False) -> str:
        """A new API key named ``name``; the key is returned once and only its digest is stored."""
        name = identities.clean_name(name, "API key name")
        with self._transaction() as s:
            return keys.create(s, name, read_only)

    def api_keys(self) -> list[KeyInfo]:
        with self._read() as s:
            return keys.list_all(s)

    def revoke_key(self, name: str) -> None:
        with self._transaction() as s:
            keys.revoke(s, identities.clean_name(name))

    def check_key(self, key: str) -> KeyInfo | None:
        """The key's record, None when the gallery does not accept it."""
        with self._read() as s:
            return keys.lookup(s, key)

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
        with self._read() as s:
            state = self._state(s)
            if IndexSettings.from_dict(state.index_settings).store == "pgvector":
                return self._search_sql(s, state, xq, k)
        index = self._index.current()
        if index is None or len(index.ids) == 0:
            return [[] for _ in xq]
        if xq.shape[1] != index.dim:
            raise GalleryError(f"query embeddings have {xq.shape[1]} dimensions, the gallery {index.dim}")
        S, I = index.search(xq, k)
        with self._read() as s:
            rows = hits.hit_rows(s, np.unique(I[I >= 0]), with_embeddings=not index.exact)
        return [hits.ranked_hits(self.folder, q, sims, ids, rows, index.exact) for q, sims, ids in zip(xq, S, I)]

    def _search_sql(self, s: Session, state: GalleryState, xq: np.ndarray, k: int) -> list[list[FaceHit]]:
        """The pgvector store's search, in the caller's read transaction: the HNSW index in SQL, each query's
        top-k fetched with its rows in one statement, then re-scored exactly from the float32 embeddings."""
        if state.embedding_dim is None:
            return [[] for _ in xq]
        if xq.shape[1] != state.embedding_dim:
            raise GalleryError(f"query embeddings have {xq.shape[1]} dimensions, the gallery {state.embedding_dim}")
        ef_search = IndexSettings.from_dict(state.index_settings).pg_ef_search
        found = vectors.search(s.connection(), xq, k, state.embedding_dim, ef_search)
        return [hits.ranked_hits(self.folder, q, sims, ids, rows, exact=False) for q, (sims, ids, rows) in zip(xq, found)]

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
        settings = IndexSettings.from_dict(state.index_settings)
        in_sql = {}
        if settings.store == "pgvector":
            with self._read() as s:
                in_sql = vectors.describe(s.connection(), state.embedding_dim)
        return {
            "folder": str(self.folder), "database": db.masked(self.url), "identities": n_ids, "faces": n_faces,
            "vector_store": settings.store, **in_sql,
            "model_fingerprint": state.model_fingerprint, "model_source": state.model_source, "embedding_dim": state.embedding_dim,
            "threshold": threshold, "threshold_calibrated": meta is not None, "epoch": state.epoch,
            "index_settings": settings.to_dict(),
            "index_layout": header.get("layout"), "index_faces": header.get("n_ids"),
            "index_tombstones": header.get("n_tombstones"), "index_epoch": header.get("epoch"),
            "index_bytes": self.index_path.stat().st_size if self.index_path.exists() else None,
        }

    def check(self) -> CheckReport:
        """Compare the index file, the crops and the embeddings with SQL; changes nothing."""
        from facesearch.gallery.check import check_gallery

        return check_gallery(self)

    def rebuild(self, settings: IndexSettings | None = None) -> dict[str, Any]:
        """Rebuild the index from SQL (optionally with new settings), record the vector digest of the faces it was
        built from, and delete what belongs to no face: crop files, and uploaded photos no face refers to.

        With the FAISS store the new index is built before the new settings are stored, so an interrupted rebuild
        changes nothing. With the pgvector store every vector row is written again from ``faces`` and the HNSW
        index built anew, in one transaction with the new settings, unless they change only how it is searched
        (``pg_ef_search``): those are stored, nothing is rebuilt.

        Returns:
            {"layout", "faces", "rebuilt", "orphan_crops", "orphan_uploads"} (the last two: files deleted).
        """
        self._refuse_read_only()
        current = self.index_settings
        if settings is not None and settings.store != current.store:
            raise GalleryError(f"moving the vectors to the {settings.store} store is `facesearch gallery store "
                               f"{settings.store}`, not a rebuild")
        if current.store == "pgvector" and settings is not None and settings.pg_index() == current.pg_index():
            with self._mutation() as s:
                self._state(s).index_settings = settings.to_dict()
                self._bump(s)
            result = {"layout": "pgvector hnsw", "faces": self.stats()["faces"], "rebuilt": False}
        elif current.store == "pgvector":
            result = self._refill_vectors(settings)
        else:
            index = self._index.rebuild(settings, lambda built: self._record_rebuild(settings, built))
            result = {"layout": index.layout if index else None, "faces": len(index.ids) if index else 0,
                      "rebuilt": True}
        return {**result, **self._delete_orphans()}

    def _record_rebuild(self, settings: IndexSettings | None, built) -> None:
        """Store the settings an index was rebuilt with and, when the faces it was built from (at the epoch it
        records) add up to another digest than the one recorded, theirs."""
        with self._mutation() as s:
            state = self._state(s)
            digest = None
            if built is not None and state.epoch == built.epoch and state.vectors_digest != built.digest:
                logger.warning("the database recorded the vector digest %s, its faces add up to %s (changed outside "
                               "facesearch): recorded", state.vectors_digest, built.digest)
                digest = built.digest
            if settings is not None:
                state.index_settings = settings.to_dict()
            if settings is not None or digest is not None:
                self._bump(s, digest=digest)

    def _delete_orphans(self) -> dict[str, int]:
        """Delete crop files and uploaded photos that no face refers to; how many of each."""
        with self._read() as s:
            crops = s.scalars(sa.select(Face.crop_path).where(Face.crop_path.is_not(None))).all()
            uploads = orphan_uploads(s.connection(), self.folder)
        crops = orphan_crops(self.folder, {self._inside(c) for c in crops})
        for path in crops + uploads:
            path.unlink(missing_ok=True)
        if crops or uploads:
            logger.info("deleted %d crop files and %d uploaded photos that belonged to no face", len(crops),
                        len(uploads))
        return {"orphan_crops": len(crops), "orphan_uploads": len(uploads)}

    def _refill_vectors(self, settings: IndexSettings | None = None) -> dict[str, Any]:
        """The pgvector store's rows written again from ``faces`` and its HNSW index built anew (with ``settings``
        when given, stored in the same transaction), and the faces' vector digest recorded."""
        with self._mutation() as s:
            state = self._state(s)
            if settings is not None:
                state.index_settings = settings.to_dict()
            settings = settings or IndexSettings.from_dict(state.index_settings)
            n, digest = self._load_vectors(s.connection(), state, settings)
            if digest != state.vectors_digest:
                logger.warning("the database recorded the vector digest %s, its faces add up to %s (changed outside "
                               "facesearch): recorded", state.vectors_digest, digest)
            self._bump(s, digest=digest)
        return {"layout": "pgvector hnsw", "faces": n, "rebuilt": True}

    @staticmethod
    def _load_vectors(conn, state: GalleryState, settings: IndexSettings) -> tuple[int, str]:
        """Every face's vector row from ``faces``, then the HNSW index for the gallery's width; the rows written and
        the vector digest of their faces."""
        n, digest = vectors.fill(conn, state.embedding_dim)
        if state.embedding_dim is not None:
            vectors.ensure_index(conn, state.embedding_dim, settings.pg_hnsw_m, settings.pg_ef_construction,
                                 settings.pg_build_memory_mb)
        return n, digest

    def use_store(self, store: str) -> dict[str, Any]:
        """Move the gallery's vectors to ``store`` ("faiss" or "pgvector"), in one transaction; the faces, their
        identities and embeddings in ``faces`` are untouched. Returns {"store", "faces"}."""
        current = self.index_settings
        target = dataclasses.replace(current, store=store)  # refuses an unknown store
        if store == current.store:
            return {"store": store, "faces": self.stats()["faces"], "moved": False}
        with self._mutation() as s:
            conn, state = s.connection(), self._state(s)
            if store == "pgvector":
                vectors.require(conn, self.url)
                if state.embedding_dim is not None:
                    vectors.check_dim(state.embedding_dim)  # before copying a whole gallery
                n, _ = self._load_vectors(conn, state, target)
            else:
                vectors.clear(conn)
                n = s.scalar(sa.select(sa.func.count(Face.id)))
            state.index_settings = target.to_dict()
            self._bump(s)
        if store == "pgvector":
            self.index_path.unlink(missing_ok=True)  # no index file: SQL is the index now
        else:
            self._index.sync(rebuild=True)
        return {"store": store, "faces": int(n), "moved": True}

    def face_sources(self) -> list[FaceInfo]:
        """Every face (no embeddings): what `reembed` recomputes from."""
        query = sa.select(Face, Identity.name).join(Identity).order_by(Face.id)
        with self._read() as s:
            return [identities.face_info(self.folder, f, name) for f, name in s.execute(query)]

    def replace_embeddings(self, face_ids: Sequence[int], vectors: np.ndarray, fingerprint: str,
                           source: str | None = None) -> None:
        """Move the whole gallery to another model: every face gets its new embedding in one transaction.

        Args:
            face_ids: every face of the gallery, exactly once (a gallery never mixes models).
            vectors: (n, d) float32 L2-normalised, in the order of ``face_ids``.
            fingerprint: the new model.
            source: where the new model is (``checkpoint.model_source``).
        """
        if self.index_settings.store == "pgvector":
            from facesearch.gallery.vectors import check_dim

            check_dim(vectors.shape[1])  # before anything changes
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._mutation() as s:
            have = set(s.scalars(sa.select(Face.id)).all())
            if have != {int(i) for i in face_ids}:
                raise GalleryError("re-embedding must cover every face of the gallery exactly once")
            blobs = [face_rows.encode_embedding(vector) for vector in vectors]
            for face_id, blob in zip(face_ids, blobs):
                s.execute(sa.update(Face).where(Face.id == int(face_id)).values(
                    embedding=blob, model_fingerprint=fingerprint))
            state = self._state(s)
            state.model_fingerprint, state.embedding_dim = fingerprint, int(vectors.shape[1])
            state.model_source = source
            self._bump(s, digest=combine(vector_hashes(face_ids, blobs)))
        if self.index_settings.store == "pgvector":
            self._refill_vectors()  # the new vectors, with an index for their width
        else:
            self._index.sync(rebuild=True)

