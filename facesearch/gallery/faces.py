"""Adding faces: the model a gallery's embeddings belong to, the face rows, and their crop files (the encoding of
the embeddings is ``embeddings.py``'s)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from facesearch.errors import Remedy
from facesearch.gallery.embeddings import encode_embedding
from facesearch.gallery.files import CROPS_DIR
from facesearch.gallery.models import Face, GalleryState, Identity, utcnow
from facesearch.gallery.records import GalleryError, ModelMismatchError, NewFace


def check_model(s: Session, state: GalleryState, fingerprint: str, folder: Path) -> None:
    """Raise ModelMismatchError unless the gallery is empty or holds this model's embeddings."""
    held = state.model_fingerprint
    if held is not None and held != fingerprint and s.scalar(sa.select(sa.func.count(Face.id))):
        if state.model_source == "base" and held != _shipped_base():  # the base model of an earlier facesearch
            raise ModelMismatchError(
                f"{folder}: the gallery holds embeddings of an earlier base model ({held}); this facesearch ships "
                f"base model {fingerprint}. Move the gallery to it (every face is recomputed from its stored photo "
                "or crop), or give the earlier model's file as the checkpoint",
                remedy=(Remedy.run("reembed", checkpoint="base", folder=folder), Remedy.give("checkpoint")))
        raise ModelMismatchError(
            f"{folder}: the gallery holds embeddings of model {held}, the checkpoint is model "
            f"{fingerprint}; use the gallery's checkpoint, or move the gallery to the new model",
            remedy=Remedy.run("reembed", checkpoint="NEW"))


def _shipped_base() -> str | None:
    """The fingerprint of the base model this facesearch ships (None if it cannot be read)."""
    from facesearch.checkpoint import CheckpointError, read_checkpoint  # torch: loaded only when a model differs

    try:
        return read_checkpoint("base").get("fingerprint")
    except CheckpointError:
        return None


def claim_model(s: Session, state: GalleryState, fingerprint: str, faces: Sequence[NewFace], source: str | None,
                folder: Path) -> None:
    """Record that the gallery's embeddings are ``fingerprint``'s (of ``source``), refusing another model's."""
    check_model(s, state, fingerprint, folder)
    dims = {int(np.asarray(f.embedding).size) for f in faces}
    if len(dims) > 1:
        raise GalleryError(f"embeddings of different sizes in one batch: {sorted(dims)}")
    has_faces = s.scalar(sa.select(sa.func.count(Face.id)))
    if has_faces and dims and state.embedding_dim not in dims:
        raise GalleryError(f"embedding size {dims.pop()} does not match the gallery's {state.embedding_dim}")
    if not dims:
        return
    if state.model_fingerprint != fingerprint or not has_faces:
        state.model_fingerprint, state.embedding_dim = fingerprint, dims.pop()
    if source is not None:
        state.model_source = source


def insert_faces(s: Session, faces: Sequence[NewFace], fingerprint: str,
                 duplicates: list[tuple[int, str]]) -> list[tuple[NewFace, Face]]:
    """Face rows for the faces whose photo is not enrolled yet (the others go to ``duplicates``)."""
    identities: dict[str, Identity] = {}
    in_batch: dict[str, str] = {}  # sha256 → name, for a photo given twice in one call
    rows = []
    for i, face in enumerate(faces):
        sha = face.source_sha256
        holder = sha and (in_batch.get(sha) or s.scalar(
            sa.select(Identity.name).join(Face).where(Face.source_sha256 == sha)))
        if holder:
            duplicates.append((i, holder))
            continue
        if sha:
            in_batch[sha] = face.name
        if face.name not in identities:
            identities[face.name] = s.scalar(sa.select(Identity).where(Identity.name == face.name)) or Identity(name=face.name)
            identities[face.name].updated_at = utcnow()
        row = Face(
            identity=identities[face.name], source_path=face.source_path, source_sha256=sha,
            box=_floats(face.box), landmarks=_floats(face.landmarks), det_prob=face.det_prob,
            embedding=encode_embedding(face.embedding), model_fingerprint=fingerprint,
        )
        s.add(row)
        rows.append((face, row))
    return rows


def write_crop(folder: Path, face_id: int, crop, written: list[Path]) -> str:
    """Save a crop as crops/<id // 10000>/<id>.jpg (by id: names never become paths); returns that path."""
    rel = f"{CROPS_DIR}/{face_id // 10_000}/{face_id}.jpg"
    path = folder / rel
    (folder / CROPS_DIR).mkdir(exist_ok=True, mode=0o700)  # faces are private to the gallery's owner
    path.parent.mkdir(exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    crop.save(tmp, format="JPEG", quality=95)
    os.replace(tmp, path)
    written.append(path)
    return rel


def _floats(value) -> list | None:
    """Boxes and landmarks as plain JSON lists of floats."""
    return None if value is None else np.asarray(value, dtype=float).round(2).tolist()
