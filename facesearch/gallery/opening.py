"""Opening a gallery's database: permissions (read-only for a user who may not write), a folder whose database is
lost, the schema (upgraded, or refused), the gallery row of a new database, and the folder's binding to its
database (binding.py) — all before anything is read or written."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

import facesearch.gallery.binding as binding
import facesearch.gallery.db as db
from facesearch.errors import Remedy
from facesearch.gallery.digest import EMPTY
from facesearch.gallery.files import CROPS_DIR
from facesearch.gallery.lock import exclusive
from facesearch.gallery.models import Face, GalleryState
from facesearch.gallery.records import GalleryError, GalleryReadOnly
from facesearch.gallery.vectors.base import VectorSettings
from facesearch.gallery.vectors.index import INDEX_NAME


def gallery_folder(folder: str | os.PathLike, create: bool, read_only: bool | None) -> Path:
    """The gallery folder, resolved; created (private to the user: 0700) when missing and ``create``."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        if not create or read_only:
            raise GalleryError(f"{folder}: no such gallery folder")
        folder.mkdir(parents=True, mode=0o700)
    return folder


def open_database(folder: Path, url: str, *, create: bool, migrate: bool | None,
                  read_only: bool | None) -> tuple[Engine, bool]:
    """The engine of the gallery database ``url`` for ``folder``, checked and prepared as ``Gallery`` documents its
    arguments; and whether it is open read-only."""
    sqlite_file = db.sqlite_path(url)
    not_writable = _not_writable(folder, sqlite_file)
    if read_only is False and not_writable:
        raise GalleryReadOnly(f"{folder}: the gallery is read-only for this user (no write permission); "
                              "this command changes it: use a writable copy")
    read_only = not_writable if read_only is None else read_only
    if sqlite_file is not None and (not sqlite_file.exists() or sqlite_file.stat().st_size == 0):
        _refuse_lost_database(folder, sqlite_file)
        if read_only or not create:
            raise GalleryError(f"{folder}: not a gallery (no {sqlite_file.name} in this folder); enrolling photos "
                               "creates one", remedy=Remedy.run("enroll", items="PHOTOS", folder="FOLDER"))
        os.close(os.open(sqlite_file, os.O_CREAT | os.O_WRONLY, 0o600))  # SQLite keeps these permissions
    migrate = db.is_sqlite(url) if migrate is None else migrate
    engine = db.create_engine(url, read_only=read_only)
    try:
        if read_only:
            _check_schema(folder, url, engine, migrate and not not_writable)
        else:
            _prepare_database(folder, url, engine, migrate)
    except BaseException:
        engine.dispose()
        raise
    return engine, read_only


def _refuse_lost_database(folder: Path, sqlite_file: Path) -> None:
    """A folder whose database is gone (or empty) but whose index, crops or record remain is a damaged gallery,
    not a new one: starting afresh there would overwrite the index of faces a backup of the database could
    restore."""
    left = [name for name in (binding.RECORD, INDEX_NAME, CROPS_DIR) if (folder / name).exists()]
    if left:
        state = "empty" if sqlite_file.exists() else "missing"
        listed = left[0] if len(left) == 1 else f"{', '.join(left[:-1])} and {left[-1]}"
        raise GalleryError(f"{sqlite_file}: the gallery database is {state}, but {listed} of its faces remain "
                           "in the folder: restore the database from a backup, or move the folder aside to start "
                           "a new gallery")


def _not_writable(folder: Path, sqlite_file: Path | None) -> bool:
    """Whether this user may not write the folder (or the SQLite file in it)."""
    if not os.access(folder, os.W_OK):
        return True
    return sqlite_file is not None and sqlite_file.exists() and not os.access(sqlite_file, os.W_OK)


def _check_schema(folder: Path, url: str, engine: Engine, may_upgrade: bool) -> None:
    """A gallery opened read-only must belong to this folder and have this version's schema: an older one is
    upgraded first when ``may_upgrade`` (a writable SQLite file: what every command did before it read), else
    refused."""
    head, current = db.head_revision(), db.checked_revision(engine)
    uid = _stored_uid(engine, current)
    if uid is None:
        raise GalleryError(f"{db.where(url)}: holds no gallery yet; enrolling photos creates one",
                           remedy=Remedy.run("enroll", items="PHOTOS", folder="FOLDER"))
    if binding.check(folder, uid, db.where(url), lambda: _known_crops(engine)) is None \
            and os.access(folder, os.W_OK):
        with contextlib.suppress(GalleryError):  # recorded for the next open, where the folder allows it
            binding.bind(folder, uid, db.where(url))
    if current != head and may_upgrade:
        _upgrade(folder, url, engine)
    elif current != head:
        raise GalleryError(f"{db.where(url)}: database schema is at revision {current}, this version "
                           f"reads {head}; upgrade it once with write access", remedy=Remedy.run("db.upgrade"))


def _stored_uid(engine: Engine, revision: str | None) -> str | None:
    """The database's gallery uid (None: no gallery yet); read as every schema revision stores it, before any
    upgrade, so that a database that is not the folder's is refused before anything is written to it."""
    if revision is None:
        return None
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT uid FROM gallery_state WHERE id = 1")).scalar()


def _known_crops(engine: Engine) -> set[str]:
    """The crop paths (relative to the folder) the database's faces refer to."""
    with engine.connect() as conn:
        rows = conn.scalars(sa.select(Face.crop_path).where(Face.crop_path.is_not(None))).all()
    return {Path(os.path.normpath(rel)).as_posix() for rel in rows}


def _upgrade(folder: Path, url: str, engine: Engine) -> None:
    """Upgrade the schema to this version's, with an engine of its own (``engine`` is read-only). Its connections
    are closed first, so that the writer is the last to close and folds SQLite's write-ahead log back into the
    file (a reader without write access could not)."""
    engine.dispose()
    writer = db.create_engine(url)
    try:
        with exclusive(folder):
            if db.checked_revision(writer) != db.head_revision():
                db.upgrade(writer)
    finally:
        writer.dispose()


def _prepare_database(folder: Path, url: str, engine: Engine, migrate: bool) -> None:
    """Check that the folder belongs to the database (a database with no gallery yet gets one, for a folder
    that holds none), upgrade its schema when ``migrate``, and record the binding in the folder."""
    head, current = db.head_revision(), db.checked_revision(engine)
    uid = _stored_uid(engine, current)
    record = binding.check(folder, uid, db.where(url), lambda: _known_crops(engine))
    if current != head:
        if not migrate:
            raise GalleryError(f"{db.where(url)}: database schema is not at revision {head}; upgrade it first",
                               remedy=Remedy.run("db.upgrade", url="URL"))
        with exclusive(folder):
            if db.checked_revision(engine) != head:
                db.upgrade(engine)
    if uid is None:
        with contextlib.suppress(sa.exc.IntegrityError), db.writer(engine).begin() as conn:
            # another process may insert it first: then ours fails, and both read the one that was
            conn.execute(sa.insert(GalleryState).values(id=1, uid=uuid.uuid4().hex, epoch=0, vectors_digest=EMPTY,
                                                        index_settings=VectorSettings().to_dict()))
        uid = _stored_uid(engine, head)
    if record is None:
        binding.bind(folder, uid, db.where(url))

