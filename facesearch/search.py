""""Who is this?": every face in a photo → the gallery's most similar identities, or "unknown".

Face hits are aggregated per identity: an identity scores the cosine similarity of its best matching
face (the face is reported too). The best identity is the answer when it reaches the threshold — the
gallery's calibrated one (``facesearch calibrate`` stores it), else ``DEFAULT_THRESHOLD`` — and
``"unknown"`` otherwise. Higher thresholds are stricter: fewer wrong names, more unknowns.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facesearch.gallery.records import FaceHit
from facesearch.gallery.store import Gallery

UNKNOWN = "unknown"
FACES_PER_IDENTITY = 10  # face hits fetched per requested identity, before aggregation

@dataclass(frozen=True)
class IdentityMatch:
    name: str
    similarity: float  # cosine similarity of the best matching face
    face_id: int  # that face
    crop_path: str | None
    source_path: str | None


@dataclass(frozen=True)
class FaceAnswer:
    box: list[float]  # x1, y1, x2, y2 in photo pixels
    det_prob: float
    identity: str  # the best match's name, or "unknown" below the threshold
    similarity: float | None  # the best match's similarity (None: empty gallery)
    matches: list[IdentityMatch] = field(default_factory=list)  # top-k identities, best first


@dataclass(frozen=True)
class WhoResult:
    photo: str | None
    threshold: float
    threshold_calibrated: bool
    faces: list[FaceAnswer]
    threshold_source: str = "default"  # "given" (the caller's), "calibrated" (the gallery's) or "default"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def aggregate(hits: Sequence[FaceHit], top_k: int) -> list[IdentityMatch]:
    """Face hits (best first) → the ``top_k`` identities, each scored by its best face."""
    best: dict[str, FaceHit] = {}
    for hit in hits:
        if hit.identity not in best or hit.similarity > best[hit.identity].similarity:
            best[hit.identity] = hit
    ranked = sorted(best.values(), key=lambda h: -h.similarity)[:top_k]
    return [
        IdentityMatch(h.identity, round(h.similarity, 6), h.face_id, str(h.crop_path) if h.crop_path else None, h.source_path)
        for h in ranked
    ]


def who(gallery: Gallery, embedder, photo, top_k: int = 5, threshold: float | None = None) -> WhoResult:
    """Identify every face in a photo.

    Args:
        gallery: the gallery to search.
        embedder: a ``facesearch.embed.Embedder`` of the gallery's model (checked).
        photo: a path or an RGB PIL image.
        top_k: identities listed per face.
        threshold: cosine similarity needed to name a face; None: the gallery's (calibrated or default).
    Returns:
        WhoResult with one FaceAnswer per detected face (empty when there is none).
    """
    if top_k < 1:
        raise ValueError(f"top_k {top_k}: list at least one identity per face")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold}: a cosine similarity lies between -1 and 1")
    gallery.check_model(embedder.fingerprint)
    calibrated, source = False, "given"
    if threshold is None:
        threshold, meta = gallery.threshold()
        calibrated = meta is not None
        source = "calibrated" if calibrated else "default"
    faces = embedder.embed_photo(photo, select="all")
    xq = np.stack([v for _, v in faces]) if faces else np.empty((0, embedder.dim), np.float32)
    hits = gallery.search(xq, k=max(top_k * FACES_PER_IDENTITY, 50)) if faces else []
    answers = [_answer(face, aggregate(h, top_k), threshold) for (face, _), h in zip(faces, hits)]
    path = str(photo) if isinstance(photo, (str, os.PathLike)) else None
    return WhoResult(path, float(threshold), calibrated, answers, source)


def _answer(face, matches: list[IdentityMatch], threshold: float) -> FaceAnswer:
    box = [round(float(v), 1) for v in face.box]
    if not matches:
        return FaceAnswer(box, float(face.prob), UNKNOWN, None, [])
    top = matches[0]
    name = top.name if top.similarity >= threshold else UNKNOWN
    return FaceAnswer(box, round(float(face.prob), 4), name, top.similarity, matches)


def annotate(photo, result: WhoResult, out: str | os.PathLike) -> Path:
    """Draw each face's box and answer on the photo and save it to ``out`` (format from the suffix)."""
    from PIL import ImageDraw

    from facesearch.data.images import load_image

    image = load_image(photo) if isinstance(photo, (str, os.PathLike)) else photo.convert("RGB")
    image = image.copy()
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    for face in result.faces:
        known = face.identity != UNKNOWN
        colour = (40, 200, 80) if known else (230, 60, 50)
        draw.rectangle(face.box, outline=colour, width=width)
        label = face.identity if face.similarity is None else f"{face.identity} {face.similarity:.2f}"
        x1, y1 = face.box[0], face.box[1]
        left, top, right, bottom = draw.textbbox((x1, y1), label)
        y = max(0, y1 - (bottom - top) - 4)
        draw.rectangle((x1, y, x1 + (right - left) + 4, y + (bottom - top) + 4), fill=colour)
        draw.text((x1 + 2, y + 1), label, fill=(255, 255, 255))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out
