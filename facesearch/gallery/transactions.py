"""The gallery's sessions: reads, write transactions (refused on a gallery opened read-only), and mutations of the
set of faces, which take turns and record in ``gallery_state`` that the faces changed.

Every change to the set of faces (or to their vectors, or to the vector settings) bumps ``gallery_state.epoch`` in
its own transaction, and XORs the vector hashes of the faces added or removed into ``vectors_digest`` (digest.py):
what tells a stale or foreign index file from a current one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from facesearch.gallery.db import writer
from facesearch.gallery.digest import combine
from facesearch.gallery.models import GalleryState
from facesearch.gallery.records import GalleryReadOnly


class Transactions:
    """The sessions of one open gallery (in ``folder``, on ``engine``)."""

    def __init__(self, engine: Engine, folder: Path, read_only: bool):
        self.folder, self.read_only = folder, read_only
        self.read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(writer(engine), expire_on_commit=False)

    def refuse_read_only(self) -> None:
        if self.read_only:
            raise GalleryReadOnly(f"{self.folder}: the gallery is open read-only (no write permission, or opened "
                                  "so); this command changes it: use a writable copy")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write transaction; refused on a gallery opened read-only."""
        self.refuse_read_only()
        with self._write() as s, s.begin():
            yield s

    @contextlib.contextmanager
    def mutation(self) -> Iterator[Session]:
        """A write transaction, serialised with every other one (SQLite: BEGIN IMMEDIATE takes the write
        lock; PostgreSQL: a row lock on gallery_state), so check-then-insert cannot race."""
        with self.transaction() as s:
            s.execute(sa.select(GalleryState.id).where(GalleryState.id == 1).with_for_update())
            yield s


def state(s: Session) -> GalleryState:
    """The gallery's one ``gallery_state`` row, as the database holds it now."""
    return s.get(GalleryState, 1, populate_existing=True)


def bump(s: Session, changed: np.ndarray | None = None, digest: str | None = None) -> None:
    """Record that the set of faces (or their vectors, or the vector settings) changed: ``changed`` holds the
    vector hashes of the faces added or removed (XOR-ed into the digest), ``digest`` the whole new digest."""
    values = {"epoch": GalleryState.epoch + 1}
    if changed is not None and len(changed):
        current = s.scalar(sa.select(GalleryState.vectors_digest).where(GalleryState.id == 1))
        values["vectors_digest"] = combine(changed, current)
    if digest is not None:
        values["vectors_digest"] = digest
    s.execute(sa.update(GalleryState).where(GalleryState.id == 1).values(**values))
