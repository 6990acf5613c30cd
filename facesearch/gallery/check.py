"""``gallery check``: compare the index file, the stored crops, the uploaded photos and the embeddings with SQL,
change nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from facesearch.gallery import db
from facesearch.gallery.digest import combine, vector_hashes
from facesearch.gallery.index import FaceIndex, IndexFileError, IndexSettings
from facesearch.gallery.models import Face, GalleryState
from facesearch.gallery.records import CheckReport

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


def orphan_uploads(conn, folder: Path) -> list[Path]:
    """Files in ``uploads/`` that no face refers to: a refused or duplicate upload, or one whose faces are gone."""
    files = [p for p in (folder / UPLOADS_DIR).iterdir() if p.is_file()] if (folder / UPLOADS_DIR).is_dir() else []
    files = [p for p in files if not (p.name.startswith(".") and time.time() - p.stat().st_mtime < YOUNG_S)]
    return [p for p in files if p.name not in referenced_uploads(conn, [p.name for p in files])]


def referenced_uploads(conn, names: list[str]) -> set[str]:
    """The names among ``names`` (files of ``uploads/``) that some face refers to."""
    by_sha = {name.split(".")[0]: name for name in names}
    referenced = set()
    shas = list(by_sha)
    for start in range(0, len(shas), CHUNK):
        rows = conn.execute(sa.select(Face.source_sha256, Face.source_path)
                            .where(Face.source_sha256.in_(shas[start : start + CHUNK]))).all()
        referenced |= {os.path.basename(path) for _, path in rows if path}
    return referenced & set(names)


def stored_hashes(conn) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vector hashes) of every face, from the stored embeddings (streamed)."""
    result = conn.execute(sa.select(Face.id, Face.embedding).order_by(Face.id)
                          .execution_options(stream_results=True, yield_per=CHUNK))
    ids, hashes = [np.empty(0, np.int64)], [np.empty(0, np.uint64)]
    for rows in result.partitions():
        ids.append(np.asarray([r[0] for r in rows], dtype=np.int64))
        hashes.append(vector_hashes([r[0] for r in rows], [r[1] for r in rows]))
    return np.concatenate(ids), np.concatenate(hashes)


def check_gallery(gallery) -> CheckReport:
    """Everything that disagrees with the database, as readable sentences, each with its way out (empty:
    consistent)."""
    from facesearch.gallery.vectors import faces_without_vectors

    with db.snapshot(gallery.engine) as conn:  # one snapshot: the faces, the state and the vector rows agree
        state = conn.execute(sa.select(GalleryState.__table__)).one()
        faces = conn.execute(sa.select(Face.id, Face.crop_path, Face.model_fingerprint)).all()
        ids, hashes = stored_hashes(conn)
        in_sql = IndexSettings.from_dict(state.index_settings).store == "pgvector"
        without = faces_without_vectors(conn) if in_sql else 0
        uploads = orphan_uploads(conn, gallery.folder)
    problems = []
    if combine(hashes) != state.vectors_digest:
        problems.append(f"the database records the vector digest {state.vectors_digest}, its faces' embeddings add up "
                        f"to {combine(hashes)}: they were changed outside facesearch (rebuild records their digest)")
    if in_sql:
        problems += [f"{without} faces have no vector in face_vectors (rebuild writes them)"] if without else []
    else:
        problems += check_index(gallery.index_path, state, ids, hashes)
    mixed = sum(1 for f in faces if f[2] != state.model_fingerprint)
    if mixed:
        problems.append(f"{mixed} faces were embedded by a model other than the gallery's {state.model_fingerprint} "
                        "(`facesearch gallery reembed` moves them all to one model)")
    referenced = {inside(gallery.folder, f[1]) for f in faces if f[1]}
    missing = sum(1 for p in referenced if p is None or not p.exists())
    orphans = orphan_crops(gallery.folder, referenced)
    if missing:
        problems.append(f"{missing} stored crops are missing (their faces are still searched; rebuild cannot bring "
                        f"the pictures back: restore {CROPS_DIR}/ from a backup)")
    if orphans:
        problems.append(f"{len(orphans)} crop files belong to no face (rebuild deletes them)")
    if uploads:
        problems.append(f"{len(uploads)} uploaded photos in {UPLOADS_DIR}/ belong to no face (rebuild deletes them)")
    details = {"faces": len(ids), "epoch": state.epoch, "missing_crops": missing, "orphan_crops": len(orphans),
               "orphan_uploads": len(uploads)}
    return CheckReport(problems, details)


def check_index(path: Path, state, ids: np.ndarray, hashes: np.ndarray) -> list[str]:
    """How the index file at ``path`` differs from the database state, its face ids and their vector hashes."""
    if state.embedding_dim is None:
        return []
    try:
        index = FaceIndex.read(path)
    except IndexFileError as e:
        return [f"index file unusable ({e}); rebuild recreates it"]
    problems = []
    if index.uid != state.uid:
        problems.append(f"{path} belongs to another database (uid {index.uid}, expected {state.uid}); rebuild "
                        "replaces it")
    if index.epoch != state.epoch:
        problems.append(f"index is stale: it reflects epoch {index.epoch}, the database is at {state.epoch} (the "
                        "next search or rebuild brings it up to date)")
    if index.settings != IndexSettings.from_dict(state.index_settings):
        problems.append("index was built with other settings than the database's; rebuild builds it with them")
    missing = len(np.setdiff1d(ids, index.ids))
    orphans = len(np.setdiff1d(index.ids, ids))
    if missing or orphans:
        problems.append(f"index lacks {missing} faces and holds {orphans} vectors of deleted faces; rebuild "
                        "replaces it")
    common, in_db, in_index = np.intersect1d(ids, index.ids, assume_unique=True, return_indices=True)
    foreign = int(np.count_nonzero(hashes[in_db] != index.hashes[in_index]))
    if foreign:
        problems.append(f"index holds other vectors than the database's for {foreign} of its {len(common)} faces "
                        "(a copy of another gallery's index?); rebuild replaces it")
    if index.needs_rebuild(len(ids)):
        problems.append(f"index {index.layout} should be rebuilt ({index.n_tombstones} tombstones, "
                        f"target {index.target_layout()})")
    return problems
