"""``gallery check``: compare the vector store, the stored crops, the uploaded photos and the embeddings with SQL,
change nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from facesearch.gallery.db import snapshot
from facesearch.gallery.digest import combine
from facesearch.gallery.embeddings import stored_hashes
from facesearch.gallery.files import CROPS_DIR, UPLOADS_DIR, inside, orphan_crops, orphan_uploads
from facesearch.gallery.models import Face, GalleryState
from facesearch.gallery.records import CheckReport
from facesearch.gallery.vectors import VectorSettings, VectorStore


def check_gallery(engine: Engine, folder: Path, store_for: Callable[[VectorSettings], VectorStore]) -> CheckReport:
    """Everything that disagrees with the database, as readable sentences, each with its way out (empty:
    consistent). ``store_for``: the gallery's vector store, for the settings the database records."""
    with snapshot(engine) as conn:  # one snapshot: the faces, the state and the store agree
        state = conn.execute(sa.select(GalleryState.__table__)).one()
        faces = conn.execute(sa.select(Face.id, Face.crop_path, Face.model_fingerprint)).all()
        ids, hashes = stored_hashes(conn)
        in_store = store_for(VectorSettings.from_dict(state.index_settings)).check(conn, state, ids, hashes)
        uploads = orphan_uploads(conn, folder)
    problems = []
    if combine(hashes) != state.vectors_digest:
        problems.append(f"the database records the vector digest {state.vectors_digest}, its faces' embeddings add up "
                        f"to {combine(hashes)}: they were changed outside facesearch (rebuild records their digest)")
    problems += in_store
    mixed = sum(1 for f in faces if f[2] != state.model_fingerprint)
    if mixed:
        problems.append(f"{mixed} faces were embedded by a model other than the gallery's {state.model_fingerprint} "
                        "(reembed moves them all to one model)")
    referenced = {inside(folder, f[1]) for f in faces if f[1]}
    missing = sum(1 for p in referenced if p is None or not p.exists())
    orphans = orphan_crops(folder, referenced)
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
