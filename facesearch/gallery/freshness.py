"""Index freshness: the FAISS index the gallery searches always reflects the database as it is now.

One state key, ``(database uid, epoch, index settings, embedding dim)``, read from ``gallery_state``, says
which database state an index holds (the index file records its own key in its header). The index in memory
is used while its key matches the database's; else the file's, when its header matches; else the index is
synchronised with SQL under the gallery lock (diff by face id, or a rebuild) and written to a temp file that
is atomically renamed into place. A gallery opened read-only keeps the synchronised index in memory only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from facesearch.gallery import db, sync
from facesearch.gallery.index import FaceIndex, IndexFileError, read_header
from facesearch.gallery.lock import exclusive
from facesearch.gallery.models import Face, GalleryState

logger = logging.getLogger(__name__)

INDEX_NAME = "index.faiss"


class IndexKeeper:
    """The gallery's index: the copy in memory, the file ``folder/index.faiss``, and how to bring them up to date."""

    def __init__(self, folder: Path, engine: Engine, writable: bool = True, concurrent: bool = False):
        """``concurrent``: other threads may be searching the index in memory while it is brought up to date
        (``facesearch serve``), so updates are made on a copy and swapped in whole when done."""
        self.folder, self.engine, self.writable, self.concurrent = folder, engine, writable, concurrent
        self.path = folder / INDEX_NAME
        self._memory: FaceIndex | None = None
        self._syncing = threading.Lock()  # the folder lock is per process: threads of one take turns here

    def current(self) -> FaceIndex | None:
        """The index matching the database now (None: no faces were ever enrolled)."""
        with db.snapshot(self.engine) as conn:
            key = sync.state_key(conn.execute(sa.select(GalleryState.__table__)).one())
        if key is None:
            return None
        if self._memory is not None and sync.index_key(self._memory) == key:
            return self._memory
        with contextlib.suppress(IndexFileError):
            if sync.header_key(read_header(self.path)) == key:
                self._memory = FaceIndex.read(self.path)
                return self._memory
        return self.sync()

    def sync(self, rebuild: bool = False) -> FaceIndex | None:
        """Bring the index up to date with SQL (``rebuild``: from scratch), write it, keep it in memory."""
        with self._syncing, exclusive(self.folder) if self.writable else contextlib.nullcontext():
            index = None if rebuild else self._from_file()
            with db.snapshot(self.engine) as conn:
                key = sync.state_key(conn.execute(sa.select(GalleryState.__table__)).one())
                if key is None:
                    index = None
                elif index is None or sync.index_key(index) != key:
                    index = self._synced(conn, index, key)
                    if self.writable:
                        self._write(index)
            self._memory = index
            return index

    def _synced(self, conn, index: FaceIndex | None, key: sync.IndexKey) -> FaceIndex:
        uid, epoch, settings, dim = key
        ids = np.asarray(conn.execute(sa.select(Face.id)).scalars().all(), dtype=np.int64)
        if index is not None and (index.uid, index.settings, index.dim) == (uid, settings, dim):
            if self.concurrent and index is self._memory:
                index = index.copy()  # searches in flight keep the one they hold
            sync.apply_diff(conn, index, ids)
        else:
            index = None
        if index is None or index.needs_rebuild(len(ids)):
            index = sync.build(conn, ids, settings, dim, uid)
        index.epoch = epoch
        return index

    def _from_file(self) -> FaceIndex | None:
        """The index file's content (the in-memory copy when it is the same), None when unusable."""
        try:
            header = read_header(self.path)
            if self._memory is not None and sync.header_key(header) == sync.index_key(self._memory):
                return self._memory
            return FaceIndex.read(self.path)
        except IndexFileError as e:
            if self.path.exists():
                logger.warning("index file unusable, rebuilding from the database: %s", e)
            return None

    def _write(self, index: FaceIndex) -> None:
        """Temp file + atomic rename; the caller holds the lock."""
        tmp = self.folder / f".{INDEX_NAME}.{os.getpid()}.tmp"
        try:
            index.write(tmp)
            os.replace(tmp, self.path)  # atomic: readers see the old file or the new one
        except OSError as e:
            tmp.unlink(missing_ok=True)
            logger.warning("could not write %s (%s); the index lives in memory only", self.path, e)
