"""The Gallery: SQL (the source of truth) and a vector store (an index rebuilt from it), one key — the face id.

A gallery folder holds::

    gallery.db      SQLite database (unless --db / $FACESEARCH_DB names another, e.g. PostgreSQL)
    gallery.json    the uid of the database this folder belongs to: another gallery's is refused (binding.py)
    index.faiss     with the FAISS store: the index, with the database uid, epoch and vector digest it reflects
    gallery.lock    fcntl lock: index writers and schema upgrades take turns (lock.py)
    crops/          the enrolled face crops, named by face id (never by identity name)
    uploads/        photos enrolled through `facesearch serve`, named by content hash; deleted with their faces

Every change to the set of faces runs in one SQL transaction that also bumps ``gallery_state.epoch``
(transactions.py); the vector store writes what must commit with the faces in that transaction (pgvector's rows),
and catches up after it commits (the FAISS file, under the lock, written to a temp file that is atomically renamed
into place). A process killed at any point therefore leaves committed faces in SQL and an index that is either
current or stale; a stale, missing, torn or foreign index file is detected by epoch, uid or checksum and
synchronised on the next open.

``Gallery`` is the transactions and the public face of the package; it holds one vector store (``vectors/``) and
never asks which. The work is in ``opening`` (permissions, schema, binding), ``faces`` (adding faces),
``identities``, ``keys``, ``files`` (crops and uploads), ``vectors`` and ``check``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import sqlalchemy as sa

import facesearch.gallery.db as db
import facesearch.gallery.faces as face_rows
import facesearch.gallery.files as files
import facesearch.gallery.identities as identities
import facesearch.gallery.keys as keys
from facesearch.errors import BadInput, Remedy
from facesearch.gallery.check import check_gallery
from facesearch.gallery.digest import combine, vector_hashes
from facesearch.gallery.embeddings import encode_embedding
from facesearch.gallery.hits import identity_hits
from facesearch.gallery.keys import KeyInfo
from facesearch.gallery.models import Face, Identity
from facesearch.gallery.opening import gallery_folder, open_database
from facesearch.gallery.records import (AddResult, CheckReport, FaceHit, FaceInfo, GalleryError, IdentityInfo, NewFace,
                                        Page, StoredThreshold)
from facesearch.gallery.transactions import Transactions, bump, state as current_state
from facesearch.gallery.vectors import VectorSettings, VectorStore, open_store
from facesearch.gallery.vectors.index import INDEX_NAME, IndexSettings
from facesearch.gallery.vectors.pgvector_sql import PgvectorSettings

# Cosine similarity below which `who` answers "unknown" when the gallery stores no threshold of its own
# (`facesearch calibrate` stores one). Higher is stricter. A placeholder: calibrate on your own data.
DEFAULT_THRESHOLD = 0.5
SET_SOURCES = ("calibrated", "manual")  # where a stored threshold comes from (``Gallery.set_threshold``)
SOURCE_KEY = "threshold_source"  # where it is recorded: in the threshold's meta (an earlier facesearch did not)
PAGE_HAND_SET = "set on the gallery page"  # the ``method`` facesearch serve's gallery page records with a threshold


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
        self.folder = gallery_folder(folder, create, read_only)
        self.url = db.resolve_url(self.folder, url)
        self.engine, self.read_only = open_database(self.folder, self.url, create=create, migrate=migrate,
                                                    read_only=read_only)
        self._tx = Transactions(self.engine, self.folder, self.read_only)
        self._writable = not self.read_only or os.access(self.folder, os.W_OK)  # the index file may be refreshed
        self._concurrent = concurrent
        self._store: VectorStore | None = None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def index_path(self) -> Path:
        """Where the FAISS store keeps its index file."""
        return self.folder / INDEX_NAME

    def _vectors(self, settings: VectorSettings | None = None) -> VectorStore:
        """The store holding the vectors as ``settings`` say (default: the database's now; another process may have
        moved them)."""
        self._store = open_store(settings or self.vector_settings, self._store, self.folder, self.engine, self._tx,
                                 writable=self._writable, concurrent=self._concurrent)
        return self._store

    # -- model and threshold ------------------------------------------------------------------------

    @property
    def model_fingerprint(self) -> str | None:
        with self._tx.read() as s:
            return current_state(s).model_fingerprint

    @property
    def model_source(self) -> str | None:
        """The checkpoint the gallery's embeddings were made with ("base": the shipped model), or None."""
        with self._tx.read() as s:
            return current_state(s).model_source

    def check_model(self, fingerprint: str) -> None:
        """Raise ModelMismatchError unless the gallery is empty or holds this model's embeddings."""
        with self._tx.read() as s:
            face_rows.check_model(s, current_state(s), fingerprint, self.folder)

    @property
    def vector_settings(self) -> VectorSettings:
        """Which store holds the vectors, and how each store builds and searches them."""
        with self._tx.read() as s:
            return VectorSettings.from_dict(current_state(s).index_settings)

    def threshold(self) -> tuple[float, dict[str, Any] | None]:
        """The similarity threshold `who` uses and how it was obtained (None: none is stored, the documented
        default). Where it came from: ``stored_threshold``."""
        stored = self.stored_threshold()
        return (DEFAULT_THRESHOLD, None) if stored is None else (stored.value, stored.meta)

    def stored_threshold(self) -> StoredThreshold | None:
        """The threshold stored in the gallery, with where it came from and how it was obtained; None when none is
        (`who` then uses its model's or the default: ``search.answer_threshold``)."""
        with self._tx.read() as s:
            state = current_state(s)
            if state.threshold is None:
                return None
            meta = dict(state.threshold_meta or {})
            source = meta.pop(SOURCE_KEY, None)
            if source is None:  # an earlier facesearch's: the gallery page's hand-set ones said so, nothing else did
                source = "manual" if meta.get("method") == PAGE_HAND_SET else "stored"
            return StoredThreshold(float(state.threshold), source, meta)

    def set_threshold(self, value: float, meta: dict[str, Any] | None = None, source: str = "calibrated") -> None:
        """Store the threshold `who` names faces at, with how it was obtained (``meta``) and where it came from:
        ``source`` "calibrated" (measured on photos: `facesearch calibrate`, ``calibrate_gallery``) or "manual" (set
        by hand)."""
        if source not in SET_SOURCES:
            raise BadInput(f"threshold source {source!r}: one of {SET_SOURCES}", param="source")
        with self._tx.transaction() as s:
            state = current_state(s)
            state.threshold, state.threshold_meta = float(value), {**(meta or {}), SOURCE_KEY: source}

    # -- enrolling ----------------------------------------------------------------------------------

    def enrolled_as(self, sha256: str) -> str | None:
        """The identity a photo (by content hash) is already enrolled under, or None."""
        with self._tx.read() as s:
            return s.scalar(sa.select(Identity.name).join(Face).where(Face.source_sha256 == sha256))

    def add_faces(self, faces: Sequence[NewFace], fingerprint: str, source: str | None = None) -> AddResult:
        """Enroll faces (one transaction), then bring the vector store up to date.

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
            with self._tx.mutation() as s:
                state = current_state(s)
                face_rows.claim_model(s, state, fingerprint, faces, source, self.folder)
                with s.no_autoflush:  # one flush for the batch, not one per lookup
                    rows = face_rows.insert_faces(s, faces, fingerprint, duplicates)
                s.flush()  # one batched INSERT ... RETURNING assigns the ids, the vector stores' ids
                for face, row in rows:
                    if face.crop is not None:
                        row.crop_path = face_rows.write_crop(self.folder, row.id, face.crop, written)
                if rows:
                    settings = VectorSettings.from_dict(state.index_settings)
                    self._vectors(settings).add(s.connection(), state, settings, [row.id for _, row in rows],
                                                np.stack([np.asarray(f.embedding, np.float32) for f, _ in rows]))
                    bump(s, vector_hashes([row.id for _, row in rows], [row.embedding for _, row in rows]))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        if rows:
            self._vectors().sync()
        return AddResult([row.id for _, row in rows], duplicates)

    # -- identities ---------------------------------------------------------------------------------

    def identities(self) -> list[IdentityInfo]:
        """Every identity with its number of faces, by name."""
        with self._tx.read() as s:
            return identities.list_all(s)

    def identity_page(self, offset: int = 0, limit: int | None = None) -> Page:
        """``limit`` identities (None: all) from ``offset`` on, by name, with how many there are: paged in SQL."""
        with self._tx.read() as s:
            return Page(s.scalar(sa.select(sa.func.count(Identity.id))), identities.list_all(s, offset, limit))

    def identity(self, name: str) -> IdentityInfo:
        """One identity with its faces; raises IdentityNotFound."""
        with self._tx.read() as s:
            return identities.describe(s, identities.clean_name(name), self.folder)

    def create_identity(self, name: str) -> str:
        """A new identity with no faces yet; returns its stored (cleaned) name."""
        name = identities.new_name(name)
        with self._tx.transaction() as s:
            identities.create(s, name)
        return name

    def face(self, face_id: int) -> FaceInfo:
        """One enrolled face; raises FaceNotFound."""
        with self._tx.read() as s:
            f = identities.find_face(s, face_id, self.folder)
            return identities.face_info(self.folder, f, f.identity.name)

    def remove_face(self, face_id: int) -> FaceInfo:
        """Delete one face (its row, its vector and its stored crop); its identity stays, possibly empty."""
        with self._tx.mutation() as s:
            f = identities.find_face(s, face_id, self.folder)
            info, crop = identities.face_info(self.folder, f, f.identity.name), f.crop_path
            s.delete(f)
            bump(s, vector_hashes([f.id], [f.embedding]))
        self._forget_files([crop], [info.source_path])
        return info

    def rename(self, old: str, new: str) -> None:
        """Rename an identity (fails if ``new`` exists: merge instead)."""
        old, new = identities.clean_name(old), identities.new_name(new)
        with self._tx.transaction() as s:
            identities.rename(s, old, new, self.folder)

    def merge(self, source: str, target: str, create: bool = False) -> int:
        """Move every face of ``source`` to ``target`` and delete ``source``; a missing ``target`` is created
        only when ``create``.

        Returns:
            The number of faces moved.
        """
        source, target = identities.clean_name(source), identities.new_name(target)
        with self._tx.transaction() as s:
            return identities.merge(s, source, target, self.folder, create=create)

    def remove(self, name: str) -> int:
        """Delete an identity, its faces, their vectors and their stored crops. Returns faces removed."""
        return self._remove_faces_of(name, drop_identity=True)

    def remove_faces(self, name: str) -> int:
        """Delete every face of an identity (their vectors and stored crops) in one change; the identity stays,
        with no faces. Returns faces removed."""
        return self._remove_faces_of(name, drop_identity=False)

    def _remove_faces_of(self, name: str, drop_identity: bool) -> int:
        name = identities.clean_name(name)
        with self._tx.mutation() as s:
            ident = identities.find(s, name, self.folder)
            rows = s.execute(sa.select(Face.id, Face.embedding, Face.crop_path, Face.source_path)
                             .where(Face.identity_id == ident.id)).all()
            s.execute(sa.delete(Face).where(Face.identity_id == ident.id))
            if drop_identity:
                s.delete(ident)
            bump(s, vector_hashes([r.id for r in rows], [r.embedding for r in rows]))
        self._forget_files([r.crop_path for r in rows], [r.source_path for r in rows])
        return len(rows)

    def _forget_files(self, crops: Sequence[str | None], sources: Sequence[str | None]) -> None:
        """After faces were removed: their crops, the uploaded photos no other face refers to, and their vectors
        (the store catches up)."""
        files.delete_crops(self.folder, crops)
        for path in files.uploads_among(self.folder, sources):
            self.discard_upload(path)
        self._vectors().sync()

    def discard_upload(self, path: str | os.PathLike) -> bool:
        """Delete ``path``, a photo kept in the gallery's ``uploads/`` (``facesearch serve``), unless a face refers
        to it: what is left of an upload that was refused, a duplicate, or whose faces are gone. Returns whether it
        was deleted (a path elsewhere is never touched)."""
        path = Path(path)
        if not files.is_upload(self.folder, path):
            return False
        self._tx.refuse_read_only()
        with self._tx.read() as s:
            if files.referenced_uploads(s.connection(), [path.name]):
                return False
        path.unlink(missing_ok=True)
        return True

    # -- API keys (facesearch serve) ----------------------------------------------------------------

    def create_key(self, name: str, read_only: bool = False) -> str:
        """A new API key named ``name``; the key is returned once and only its digest is stored."""
        name = identities.clean_name(name, "API key name")
        with self._tx.transaction() as s:
            return keys.create(s, name, read_only)

    def api_keys(self) -> list[KeyInfo]:
        with self._tx.read() as s:
            return keys.list_all(s)

    def revoke_key(self, name: str) -> None:
        with self._tx.transaction() as s:
            keys.revoke(s, identities.clean_name(name))

    def check_key(self, key: str) -> KeyInfo | None:
        """The key's record, None when the gallery does not accept it."""
        with self._tx.read() as s:
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
        return self._vectors().search(np.atleast_2d(np.asarray(xq, dtype=np.float32)), k)

    def score_identity(self, name: str, xq: np.ndarray) -> list[FaceHit]:
        """Every face of identity ``name`` scored against one query, best first: the exact cosine to each of its
        stored embeddings, with no vector store in between (an approximate index's top k may leave some out, and a
        search over the whole gallery costs its size).

        Args:
            name: the identity (IdentityNotFound when there is none).
            xq: (d,) float32 L2-normalised query embedding, from the gallery's model.
        Returns:
            One FaceHit per face of the identity (none for an identity without faces).
        """
        query = np.asarray(xq, dtype=np.float32).reshape(-1)
        with self._tx.read() as s:
            dim = current_state(s).embedding_dim
            if dim is not None and len(query) != dim:
                raise GalleryError(f"query embeddings have {len(query)} dimensions, the gallery {dim}")
            ident = identities.find(s, identities.clean_name(name), self.folder)
            return identity_hits(s, self.folder, ident.id, query)

    # -- maintenance --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts, model, threshold, vector store, index layout and sizes."""
        with self._tx.read() as s:
            state = current_state(s)
            n_ids = s.scalar(sa.select(sa.func.count(Identity.id)))
            n_faces = s.scalar(sa.select(sa.func.count(Face.id)))
            settings = VectorSettings.from_dict(state.index_settings)
            described = self._vectors(settings).describe(s.connection(), state)
        stored = self.stored_threshold()
        return {
            "folder": str(self.folder), "database": db.masked(self.url), "identities": n_ids, "faces": n_faces,
            "vector_store": settings.store,
            "model_fingerprint": state.model_fingerprint, "model_source": state.model_source, "embedding_dim": state.embedding_dim,
            "threshold": DEFAULT_THRESHOLD if stored is None else stored.value,
            "threshold_calibrated": stored is not None and stored.source == "calibrated", "epoch": state.epoch,
            "index_settings": settings.to_dict(), **described,
        }

    def check(self) -> CheckReport:
        """Compare the vector store, the crops and the embeddings with SQL; changes nothing."""
        return check_gallery(self.engine, self.folder, self._vectors)

    def rebuild(self, settings: IndexSettings | PgvectorSettings | VectorSettings | None = None) -> dict[str, Any]:
        """Rebuild the vector store from SQL (optionally with new settings: one store's, or the whole), record the
        vector digest of the faces it was built from, and delete what belongs to no face: crop files, and uploaded
        photos no face refers to.

        With the FAISS store the new index is built before the new settings are stored, so an interrupted rebuild
        changes nothing. With the pgvector store every vector row is written again from ``faces`` and the HNSW
        index built anew, in one transaction with the new settings, unless they change only how it is searched
        (``ef_search``): those are stored, nothing is rebuilt. Moving the vectors to the other store is
        ``use_store``'s, refused here.

        Returns:
            {"layout", "faces", "rebuilt", "trains_at" (None, or the faces at which the index asked for is first
            trained: until then an exact one stands in), "orphan_crops", "orphan_uploads"} (the last two: files
            deleted).
        """
        self._tx.refuse_read_only()
        current = self.vector_settings
        new = None if settings is None else current.with_part(settings)
        result = self._vectors(current).rebuild(current, new)
        with self._tx.read() as s:
            return {**result, **files.delete_orphans(s.connection(), self.folder)}

    def use_store(self, store: str, only_if_empty: bool = False) -> dict[str, Any]:
        """Move the gallery's vectors to ``store`` ("faiss" or "pgvector"), in one transaction; the faces, their
        identities and embeddings in ``faces`` are untouched. ``only_if_empty``: refuse to move a gallery that holds
        faces (a new gallery's store is being chosen). Returns {"store", "faces", "moved"}."""
        current = self.vector_settings
        target = dataclasses.replace(current, store=store)  # refuses an unknown store
        here = self._vectors(current)
        there = open_store(target, here, self.folder, self.engine, self._tx, writable=self._writable,
                           concurrent=self._concurrent)
        with self._tx.read() as s:
            faces = s.scalar(sa.select(sa.func.count(Face.id)))
        if there is here:
            return {"store": store, "faces": faces, "moved": False}
        if only_if_empty and faces:
            raise GalleryError(f"{self.folder}: its vectors are in the {here.name} store; move them",
                               remedy=Remedy.run("use_store", store=store))
        with self._tx.mutation() as s:
            conn, state = s.connection(), current_state(s)
            n = there.fill(conn, state, target)
            here.empty(conn)
            state.index_settings = target.to_dict()
            bump(s)
        self._store = there
        there.sync(rebuild=True)
        return {"store": store, "faces": int(n), "moved": True}

    def face_sources(self) -> list[FaceInfo]:
        """Every face (no embeddings), by id: what `reembed` recomputes from."""
        with self._tx.read() as s:
            return identities.list_faces(s, self.folder)

    def face_page(self, offset: int = 0, limit: int | None = None) -> Page:
        """``limit`` faces (None: all) from ``offset`` on, by id, with how many there are: paged in SQL."""
        with self._tx.read() as s:
            total = s.scalar(sa.select(sa.func.count(Face.id)))
            return Page(total, identities.list_faces(s, self.folder, offset, limit))

    def replace_embeddings(self, face_ids: Sequence[int], vectors: np.ndarray, fingerprint: str,
                           source: str | None = None) -> None:
        """Move the whole gallery to another model: every face gets its new embedding in one transaction, then the
        vector store is rebuilt.

        Args:
            face_ids: every face of the gallery, exactly once (a gallery never mixes models).
            vectors: (n, d) float32 L2-normalised, in the order of ``face_ids``.
            fingerprint: the new model.
            source: where the new model is (``checkpoint.model_source``).
        """
        store = self._vectors()
        store.check_dim(vectors.shape[1])  # before anything changes
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._tx.mutation() as s:
            have = set(s.scalars(sa.select(Face.id)).all())
            if have != {int(i) for i in face_ids}:
                raise GalleryError("re-embedding must cover every face of the gallery exactly once")
            blobs = [encode_embedding(vector) for vector in vectors]
            for face_id, blob in zip(face_ids, blobs):
                s.execute(sa.update(Face).where(Face.id == int(face_id)).values(
                    embedding=blob, model_fingerprint=fingerprint))
            state = current_state(s)
            state.model_fingerprint, state.embedding_dim = fingerprint, int(vectors.shape[1])
            state.model_source = source
            bump(s, digest=combine(vector_hashes(face_ids, blobs)))
        settings = self.vector_settings
        self._vectors(settings).rebuild(settings, None)  # the new vectors, with an index for their width
