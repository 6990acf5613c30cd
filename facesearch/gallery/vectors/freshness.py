"""Index freshness: the FAISS index the gallery searches always reflects the database as it is now.

One state key, ``(database uid, epoch, index settings, embedding dim, vector digest)``, read from
``gallery_state``, says which database state an index holds (the index file records its own key in its header,
and the hash of every vector it holds, which add up to its digest). The index in memory is used while its key
matches the database's; else the file's, when its header matches; else the index is synchronised with SQL under
the gallery lock (diff by face id; a rebuild when the vectors still do not add up to the database's digest, or
the file is another database's, missing, unusable or built with other settings) and written to a temp file that
is atomically renamed into place. Where the folder cannot be written (a read-only mount, another user's gallery,
a full disk) the synchronised index is kept in memory only. A build from scratch says so in the log, at warning
level when it is large (``ANNOUNCE_FACES``): a search waiting for it would otherwise be silent for minutes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from facesearch.errors import Remedy
from facesearch.gallery.db import snapshot
from facesearch.gallery.lock import exclusive
from facesearch.gallery.models import Face, GalleryState
import facesearch.gallery.vectors.sync as sync
from facesearch.gallery.vectors.index import (
    INDEX_NAME, EarlierIndexFile, FaceIndex, IndexFileError, IndexSettings, read_header,
)

logger = logging.getLogger(__name__)

ANNOUNCE_FACES = 10_000  # a search that must first build an index of this many faces says so at warning level


class IndexKeeper:
    """The gallery's index: the copy in memory, the file ``folder/index.faiss``, and how to bring them up to date."""

    def __init__(self, folder: Path, engine: Engine, writable: bool = True, concurrent: bool = False):
        """``writable``: the index file may be written (else it is only read, and kept up to date in memory).
        ``concurrent``: other threads may be searching the index in memory while it is brought up to date
        (``facesearch serve``), so updates are made on a copy and swapped in whole when done."""
        self.folder, self.engine, self.writable, self.concurrent = folder, engine, writable, concurrent
        self.path = folder / INDEX_NAME
        self._memory: FaceIndex | None = None
        self._memory_key: sync.IndexKey | None = None  # the database state the index in memory was synchronised with
        self._syncing = threading.Lock()  # the folder lock is per process: threads of one take turns here

    def current(self) -> FaceIndex | None:
        """The index matching the database now (None: no faces were ever enrolled)."""
        key = self._state_key()
        if key is None:
            return None
        if self._memory is not None and self._memory_key == key:
            return self._memory
        with contextlib.suppress(IndexFileError):
            if sync.header_key(read_header(self.path)) == key:
                index = FaceIndex.read(self.path)
                if sync.index_key(index) == key:
                    self._memory, self._memory_key = index, key
                    return index
        return self.sync()

    def sync(self, rebuild: bool = False) -> FaceIndex | None:
        """Bring the index up to date with SQL (``rebuild``: from scratch), write it, keep it in memory."""
        with self._syncing, self._locked() as may_write:
            index = None if rebuild else self._from_file()
            with snapshot(self.engine) as conn:
                key = sync.state_key(conn.execute(sa.select(GalleryState.__table__)).one())
                if key is None:
                    index = None
                elif index is None or sync.index_key(index) != key:
                    index = self._synced(conn, index, key, explicit=rebuild)
                    if may_write:
                        self._write(index)
            self._memory, self._memory_key = index, key
            return index

    def rebuild(self, settings: IndexSettings | None, commit: Callable[[FaceIndex | None], None]) -> FaceIndex | None:
        """Build the index anew from SQL (with ``settings`` when given), then ``commit(index)`` (the caller records
        the settings in the database), then bring it up to date with faces committed meanwhile, and write it.
        Nothing changes until the build is done: an interrupted rebuild leaves the gallery as it was."""
        with self._syncing, self._locked() as may_write:
            index = None
            with snapshot(self.engine) as conn:
                key = sync.state_key(conn.execute(sa.select(GalleryState.__table__)).one())
                if key is not None:
                    uid, epoch, current, dim, _ = key
                    ids = np.asarray(conn.execute(sa.select(Face.id)).scalars().all(), dtype=np.int64)
                    logger.info("building the %s index of %d faces", (settings or current).kind, len(ids))
                    index = sync.build(conn, ids, settings or current, dim, uid)
                    index.epoch = epoch
            commit(index)
            key = self._state_key()
            if key is not None and (index is None or sync.index_key(index) != key):
                with snapshot(self.engine) as conn:
                    key = sync.state_key(conn.execute(sa.select(GalleryState.__table__)).one())
                    index = self._synced(conn, index, key, explicit=True)
            if key is None:
                index = None
            elif may_write:
                self._write(index)
            self._memory, self._memory_key = index, key
            return index

    def _state_key(self) -> sync.IndexKey | None:
        with snapshot(self.engine) as conn:
            return sync.state_key(conn.execute(sa.select(GalleryState.__table__)).one())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[bool]:
        """The folder lock, when the index file may be written; yields whether it may (a folder that cannot be
        written after all, e.g. a full disk that cannot hold the lock file, keeps the index in memory)."""
        if not self.writable:
            yield False
            return
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(exclusive(self.folder))
            except OSError as e:
                logger.warning("cannot lock %s (%s): the index is kept in memory only", self.folder, e.strerror or e)
                yield False
                return
            yield True

    def _synced(self, conn, index: FaceIndex | None, key: sync.IndexKey, explicit: bool = False) -> FaceIndex:
        """``index`` brought in line with the database state ``key`` (read through ``conn``), or a new one."""
        uid, epoch, settings, dim, digest = key
        ids = np.asarray(conn.execute(sa.select(Face.id)).scalars().all(), dtype=np.int64)
        reason = "a rebuild was asked for" if explicit and index is None else self._unusable(index, key)
        if reason is None:
            if self.concurrent and index is self._memory:
                index = index.copy()  # searches in flight keep the one they hold
            sync.apply_diff(conn, index, ids)
            if index.digest != digest:
                reason = "its vectors are not this database's (a copy of another gallery's index?)"
            elif index.needs_rebuild(len(ids)):
                reason = (f"it has {index.n_tombstones} deleted faces, or can now be trained (target "
                          f"{index.target_layout()})")
        if reason is not None:
            self._announce(reason, settings, len(ids), explicit)
            index = sync.build(conn, ids, settings, dim, uid)
            if index.digest != digest:
                logger.warning("the database records the vector digest %s, its faces add up to %s: they were changed "
                               "outside facesearch; the index follows the faces (a rebuild records their digest)",
                               digest, index.digest)
        index.epoch = epoch
        return index

    def _unusable(self, index: FaceIndex | None, key: sync.IndexKey) -> str | None:
        """Why ``index`` cannot be brought up to date by adding and removing faces (None: it can)."""
        uid, _, settings, dim, _ = key
        if index is None:
            return "the index file is missing" if not self.path.exists() else "the index file is unusable"
        if index.uid != uid:
            return f"the index file belongs to another database (uid {index.uid}, this one is {uid})"
        if index.settings != settings:
            return "the index was built with other settings (an interrupted rebuild?)"
        if index.dim != dim:
            return f"the index holds {index.dim}-wide vectors, the gallery's are {dim}"
        return None

    def _announce(self, reason: str, settings: IndexSettings, n: int, explicit: bool) -> None:
        """Say that the index is built from scratch, and why: at warning level when a search waits for a large one."""
        where = "" if self.writable else " (kept in memory only: the gallery folder is not writable)"
        message = f"{self.path}: {reason}: building the {settings.kind} index of {n} faces from the database{where}"
        if n >= ANNOUNCE_FACES and not explicit:
            logger.warning("%s; this takes a while (a rebuild of the index builds it ahead of time)", message,
                           extra={"remedy": Remedy.run("rebuild")})
        else:
            logger.info("%s", message)

    def _from_file(self) -> FaceIndex | None:
        """The index file's content (the in-memory copy when it is the same), None when unusable."""
        try:
            header = read_header(self.path)
            if self._memory is not None and sync.header_key(header) == sync.index_key(self._memory):
                return self._memory
            return FaceIndex.read(self.path)
        except IndexFileError as e:
            if self.path.exists():  # a file of an earlier facesearch is rebuilt as a matter of course
                (logger.info if isinstance(e, EarlierIndexFile) else logger.warning)(
                    "index file unusable, rebuilding from the database: %s", e)
            return None

    def _write(self, index: FaceIndex) -> None:
        """Temp file + atomic rename; the caller holds the lock."""
        tmp = self.folder / f".{INDEX_NAME}.{os.getpid()}.tmp"
        try:
            index.write(tmp)
            os.replace(tmp, self.path)  # atomic: readers see the old file or the new one
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            logger.warning("could not write %s (%s); the index lives in memory only", self.path, e)
