"""``gallery check``: compare the index file, the stored crops and the embeddings with SQL, change nothing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from facesearch.gallery import db
from facesearch.gallery.index import FaceIndex, IndexFileError, IndexSettings
from facesearch.gallery.models import Face, GalleryState
from facesearch.gallery.records import CheckReport

CROPS_DIR = "crops"


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


def check_gallery(gallery) -> CheckReport:
    """Everything that disagrees with the database, as readable sentences (empty: consistent)."""
    from facesearch.gallery.vectors import faces_without_vectors

    with db.snapshot(gallery.engine) as conn:  # one snapshot: the faces, the state and the vector rows agree
        state = conn.execute(sa.select(GalleryState.__table__)).one()
        faces = conn.execute(sa.select(Face.id, Face.crop_path, Face.model_fingerprint)).all()
        in_sql = IndexSettings.from_dict(state.index_settings).store == "pgvector"
        without = faces_without_vectors(conn) if in_sql else 0
    ids = np.asarray([f[0] for f in faces], dtype=np.int64)
    if in_sql:
        problems = [f"{without} faces have no vector in face_vectors (`gallery rebuild` writes them)"] if without else []
    else:
        problems = check_index(gallery.index_path, state, ids)
    mixed = sum(1 for f in faces if f[2] != state.model_fingerprint)
    if mixed:
        problems.append(f"{mixed} faces were embedded by a model other than the gallery's {state.model_fingerprint}")
    referenced = {inside(gallery.folder, f[1]) for f in faces if f[1]}
    missing = sum(1 for p in referenced if p is None or not p.exists())
    orphans = orphan_crops(gallery.folder, referenced)
    if missing:
        problems.append(f"{missing} stored crops are missing")
    if orphans:
        problems.append(f"{len(orphans)} crop files belong to no face (rebuild deletes them)")
    details = {"faces": len(ids), "epoch": state.epoch, "missing_crops": missing, "orphan_crops": len(orphans)}
    return CheckReport(problems, details)


def check_index(path: Path, state, ids: np.ndarray) -> list[str]:
    """How the index file at ``path`` differs from the database state and its face ids."""
    if state.embedding_dim is None:
        return []
    try:
        index = FaceIndex.read(path)
    except IndexFileError as e:
        return [f"index file unusable ({e}); rebuild will recreate it"]
    problems = []
    if index.uid != state.uid:
        problems.append(f"{path} belongs to another database (uid {index.uid}, expected {state.uid})")
    if index.epoch != state.epoch:
        problems.append(f"index is stale: it reflects epoch {index.epoch}, the database is at {state.epoch}")
    if index.settings != IndexSettings.from_dict(state.index_settings):
        problems.append("index was built with other settings than the database's")
    missing = len(np.setdiff1d(ids, index.ids))
    orphans = len(np.setdiff1d(index.ids, ids))
    if missing or orphans:
        problems.append(f"index lacks {missing} faces and holds {orphans} vectors of deleted faces")
    if index.needs_rebuild(len(ids)):
        problems.append(f"index {index.layout} should be rebuilt ({index.n_tombstones} tombstones, "
                        f"target {index.target_layout()})")
    return problems
