"""Which database a gallery folder belongs to: ``gallery.json`` in the folder records its database's uid.

A folder's index file and crops are the faces of one database. Opened with another gallery's database (a ``url``
pointing elsewhere), a rebuild would overwrite that index and delete the crops as orphans.
So every open compares the folder's record with the database's ``gallery_state.uid`` and refuses a mismatch,
naming both, before anything is read or written. Several folders may belong to one database (servers sharing a
PostgreSQL gallery); a folder belongs to one database.

A folder without the record (a new one, or one made by an earlier facesearch) is bound on its first writable
open, unless what it holds says it is another database's: an index file naming another uid, or, for a database
with no gallery yet, any index, crops or record at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

from facesearch.errors import Remedy
from facesearch.gallery.files import CROPS_DIR
from facesearch.gallery.records import GalleryError
from facesearch.gallery.vectors.index import INDEX_NAME, IndexFileError, read_header

logger = logging.getLogger(__name__)

RECORD = "gallery.json"


def read_record(folder: Path) -> dict | None:
    """The folder's record ({"uid", "database"}), None when it has none."""
    path = folder / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise GalleryError(f"{path}: unreadable ({e}); it records which database this gallery folder belongs to: "
                           "restore it from a backup, or delete it if you know the database is this folder's") from None
    if not isinstance(record, dict) or not isinstance(record.get("uid"), str):
        raise GalleryError(f"{path}: not a gallery record (no uid); restore it from a backup, or delete it if you "
                           "know the database is this folder's")
    return record


def check(folder: Path, uid: str | None, database: str, known_crops: Callable[[], set[str]]) -> dict | None:
    """Refuse (GalleryError) the database ``database`` whose gallery uid is ``uid`` (None: it holds no gallery
    yet) for ``folder`` when the folder belongs to another one; ``known_crops`` gives the crop paths the database's
    faces refer to (asked only of a folder without a record or an index). Returns the folder's record (None: it
    has none)."""
    record = read_record(folder)
    if uid is None:
        held = [name for name in (RECORD, INDEX_NAME, CROPS_DIR) if (folder / name).exists()]
        if held:
            owner = f" (gallery {record['uid']}, database {record.get('database')})" if record else ""
            raise GalleryError(
                f"{database} holds no gallery yet, but {folder} holds another gallery's faces{owner}: "
                f"{_and(held)}. Nothing was changed: give another folder to start a new gallery, or that gallery's "
                "database", remedy=Remedy.give("url"))
        return None
    if record is not None:
        if record["uid"] != uid:
            raise GalleryError(
                f"{folder} belongs to gallery {record['uid']} (its database: {record.get('database')}), but "
                f"{database} is the database of gallery {uid}. Nothing was changed: give that database's own "
                "folder, or the folder's own database", remedy=Remedy.give("url"))
        return record
    try:
        indexed = read_header(folder / INDEX_NAME, any_format=True)["uid"]
    except (IndexFileError, KeyError, TypeError):
        indexed = None
    if indexed is not None and indexed != uid:
        raise GalleryError(
            f"{folder} holds the index of gallery {indexed}, but {database} is the database of gallery {uid}. "
            f"Nothing was changed: if this database is the folder's and its index was copied from another gallery, "
            f"delete {folder / INDEX_NAME} and try again; else give the folder's own database",
            remedy=Remedy.give("url"))
    if indexed is None and (folder / CROPS_DIR).is_dir():
        files = {p.relative_to(folder).as_posix() for p in (folder / CROPS_DIR).rglob("*") if p.is_file()}
        unknown = sorted(files - known_crops())
        if unknown:
            raise GalleryError(
                f"{folder} has no {RECORD} nor index, and {len(unknown)} of its {len(files)} crop files are no faces "
                f"of {database} (gallery {uid}): the folder may be another database's. Nothing was changed: if this "
                f"is its database, move the crop files it does not know (such as {unknown[0]}) out of the folder "
                "and try again; else give the folder's own database", remedy=Remedy.give("url"))
    return None


def bind(folder: Path, uid: str, database: str) -> None:
    """Record in ``folder`` that it belongs to the database of gallery ``uid`` (temp file + atomic rename)."""
    path = folder / RECORD
    tmp = folder / f".{RECORD}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps({"uid": uid, "database": database}, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise GalleryError(f"{path}: cannot record which database this gallery folder belongs to "
                           f"({e.strerror or e})") from None
    logger.info("%s bound to gallery %s (%s)", folder, uid, database)


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
