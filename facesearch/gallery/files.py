"""The gallery folder's files beside the database: the face crops and the photos uploaded through
``facesearch serve``; which of them belong to no face; and paths that stay inside the folder.

A face row names its crop (``crops/<id // 10000>/<id>.jpg``) and, for an uploaded photo, ``uploads/<sha256><suffix>``;
the rows are the truth, so a file no row refers to (left by an interrupted enrollment, or by a face removed) is an
orphan that ``gallery rebuild`` deletes.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from facesearch.gallery.models import Face

logger = logging.getLogger(__name__)

CROPS_DIR = "crops"
# Photos enrolled through `facesearch serve`, kept so that `gallery reembed` can cut their face again: named
# <sha256><suffix>, each referred to by the faces whose source_path has that name and whose source_sha256 is that hash.
UPLOADS_DIR = "uploads"
YOUNG_S = 3600  # a temp file younger than this may be an upload being copied in: never taken for an orphan
CHUNK = 2000  # faces per query


def inside(folder: Path, rel: str | None) -> Path | None:
    """``folder / rel`` when it stays inside the gallery folder (a tampered row cannot reach out)."""
    if not rel:
        return None
    path = (folder / rel).resolve()
    return path if path.is_relative_to(folder) else None


def inside_lexically(folder: Path, rel: str | None) -> Path | None:
    """``inside`` without touching the file system (no symlink resolution): for paths only reported, such as
    a search hit's crop, where ``resolve()``'s per-component ``lstat`` cost ~0.1 ms a hit. Anything that
    deletes or writes a file goes through ``inside``."""
    if not rel:
        return None
    root = str(folder)
    path = os.path.normpath(os.path.join(root, rel))  # string work: ~10x cheaper than pathlib here
    return Path(path) if path == root or path.startswith(root.rstrip(os.sep) + os.sep) else None


def orphan_crops(folder: Path, referenced: set[Path | None]) -> list[Path]:
    """Files under ``crops/`` that no face row points to (left by an interrupted enrollment)."""
    crops = folder / CROPS_DIR
    if not crops.is_dir():
        return []
    return [p for p in crops.rglob("*") if p.is_file() and p.resolve() not in referenced]


def orphan_uploads(conn: Connection, folder: Path) -> list[Path]:
    """Files in ``uploads/`` that no face refers to: a refused or duplicate upload, or one whose faces are gone."""
    files = [p for p in (folder / UPLOADS_DIR).iterdir() if p.is_file()] if (folder / UPLOADS_DIR).is_dir() else []
    files = [p for p in files if not (p.name.startswith(".") and time.time() - p.stat().st_mtime < YOUNG_S)]
    return [p for p in files if p.name not in referenced_uploads(conn, [p.name for p in files])]


def referenced_uploads(conn: Connection, names: list[str]) -> set[str]:
    """The names among ``names`` (files of ``uploads/``) that some face refers to."""
    by_sha = {name.split(".")[0]: name for name in names}
    referenced = set()
    shas = list(by_sha)
    for start in range(0, len(shas), CHUNK):
        rows = conn.execute(sa.select(Face.source_sha256, Face.source_path)
                            .where(Face.source_sha256.in_(shas[start : start + CHUNK]))).all()
        referenced |= {os.path.basename(path) for _, path in rows if path}
    return referenced & set(names)


def is_upload(folder: Path, path: Path) -> bool:
    """Whether ``path`` is a file kept in the gallery's ``uploads/``."""
    return path.parent.resolve() == (folder / UPLOADS_DIR).resolve() and path.is_file()


def uploads_among(folder: Path, sources: Sequence[str | None]) -> list[Path]:
    """The files of ``uploads/`` among the source paths of faces (photos enrolled elsewhere are left out)."""
    names = {os.path.basename(p) for p in sources if p and os.path.basename(os.path.dirname(p)) == UPLOADS_DIR}
    return [folder / UPLOADS_DIR / name for name in sorted(names)]


def delete_crops(folder: Path, crops: Sequence[str | None]) -> None:
    """Delete the crop files of faces just removed (a path that leaves the folder is never touched)."""
    for rel in crops:
        path = inside(folder, rel)
        if path is not None:
            path.unlink(missing_ok=True)


def delete_orphans(conn: Connection, folder: Path) -> dict[str, int]:
    """Delete crop files and uploaded photos that no face refers to; how many of each."""
    rows = conn.scalars(sa.select(Face.crop_path).where(Face.crop_path.is_not(None))).all()
    uploads = orphan_uploads(conn, folder)
    crops = orphan_crops(folder, {inside(folder, c) for c in rows})
    for path in crops + uploads:
        path.unlink(missing_ok=True)
    if crops or uploads:
        logger.info("deleted %d crop files and %d uploaded photos that belonged to no face", len(crops),
                    len(uploads))
    return {"orphan_crops": len(crops), "orphan_uploads": len(uploads)}
