""""Who is this?": every face in a photo → the gallery's most similar identities, or "unknown".

Face hits are aggregated per identity: an identity scores the cosine similarity of its best matching
face (the face is reported too). The best identity is the answer when it reaches the threshold — the
gallery's own (``facesearch calibrate`` stores one, or one is set by hand), else the one its model records (the
base model's, measured on held-out people at a stated false-positive rate: its model card), else
``DEFAULT_THRESHOLD`` — and ``"unknown"`` otherwise. Higher thresholds are stricter: fewer wrong names, more unknowns.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from facesearch.errors import BadInput, Remedy
from facesearch.gallery.identities import UNKNOWN
from facesearch.gallery.records import FaceHit
from facesearch.gallery.store import DEFAULT_THRESHOLD, Gallery
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
    # "given" (the caller's); the gallery's: "calibrated" (measured by calibrate), "manual" (set by hand) or "stored"
    # (how, unrecorded); "model" (what the model records) or "default"
    threshold_source: str = "default"

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


@dataclass(frozen=True)
class WhoFailure:
    """A photo ``who_many`` could not answer (unreadable, not an image, ...); the run goes on."""

    photo: str
    status: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"photo": self.photo, "error": {"status": self.status, "reason": self.reason}}


def who(gallery: Gallery, embedder, photo, top_k: int = 5, threshold: float | None = None,
        annotate_into: str | os.PathLike | None = None, overwrite: bool = False) -> WhoResult:
    """Identify every face in a photo.

    Args:
        gallery: the gallery to search.
        embedder: a ``facesearch.embed.Embedder`` of the gallery's model (checked).
        photo: a path or an RGB PIL image.
        top_k: identities listed per face.
        threshold: cosine similarity needed to name a face; None: the gallery's (``answer_threshold``).
        annotate_into: draw the answers on the photo into this file (``annotate``; the photo is not decoded again).
        overwrite: ``annotate``'s.
    Returns:
        WhoResult with one FaceAnswer per detected face (empty when there is none).
    Raises:
        ImageError: the photo cannot be read.
    """
    from facesearch.data.images import ImageError

    rule = _Rule.of(gallery, embedder, top_k, threshold)
    found = next(embedder.faces_of([photo], select="all"))
    if found.image is None:
        raise ImageError(found.status, found.reason, found.path)
    result = _answer_photos(gallery, [found], rule)[0]
    if annotate_into is not None:
        annotate(_decoded(found), result, annotate_into, overwrite)
    return result


def who_images(gallery: Gallery, embedder, images: Sequence, top_k: int = 5,
               threshold: float | None = None) -> list[WhoResult]:
    """``who`` for several photos decoded already (RGB PIL images) as one batch: one detection pass, one forward
    pass over all their faces and one gallery query. One WhoResult per image, in order (``photo`` None). What the
    service answers concurrent recognitions with (``facesearch.serve.batching``)."""
    rule = _Rule.of(gallery, embedder, top_k, threshold)
    return _answer_photos(gallery, list(embedder.faces_of(images, select="all", batch_size=max(1, len(images)))), rule)


def who_many(gallery: Gallery, embedder, photos: Sequence[str | os.PathLike], top_k: int = 5,
             threshold: float | None = None, batch_size: int = 16,
             progress: Callable[[int], None] | None = None, annotate_into: Sequence[str | os.PathLike] | None = None,
             overwrite: bool = False) -> Iterator[WhoResult | WhoFailure]:
    """``who`` for many photos in one run: the model, index and database are opened once, faces are detected
    and embedded in batches, and the gallery is searched once per batch. Yields one answer per photo in input
    order, as soon as its batch is done; a photo that cannot be read yields a ``WhoFailure`` and the run goes on.
    ``annotate_into``: a file per photo that each answered photo's answers are drawn into (``annotate``).
    """
    rule = _Rule.of(gallery, embedder, top_k, threshold)
    found = embedder.faces_of([str(p) for p in photos], select="all", batch_size=batch_size)
    done = 0
    while batch := list(itertools.islice(found, batch_size)):  # the embedder's batches: one search each
        answers = iter(_answer_photos(gallery, [f for f in batch if f.image is not None], rule))
        for n, f in enumerate(batch, done):
            if f.image is None:
                yield WhoFailure(f.path, f.status, f.reason)
                continue
            result = next(answers)
            if annotate_into is not None:
                annotate(_decoded(f), result, annotate_into[n], overwrite)
            yield result
        done += len(batch)
        if progress:
            progress(len(batch))


@dataclass(frozen=True)
class _Rule:
    """How faces are answered: identities listed per face and the threshold, with where it came from."""

    top_k: int
    threshold: float
    source: str  # "given", or answer_threshold's

    @property
    def calibrated(self) -> bool:
        return self.source == "calibrated"

    @classmethod
    def of(cls, gallery: Gallery, embedder, top_k: int, threshold: float | None) -> _Rule:
        if top_k < 1:
            raise BadInput(f"{top_k}: list at least one identity per face", param="top_k")
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise BadInput(f"{threshold}: a cosine similarity lies between -1 and 1", param="threshold")
        gallery.check_model(embedder.fingerprint)
        if threshold is not None:
            return cls(top_k, float(threshold), "given")
        return cls(top_k, *answer_threshold(gallery, embedder.loaded))


def answer_threshold(gallery: Gallery, loaded) -> tuple[float, str]:
    """The threshold ``who`` names faces at when the caller gives none, and where it comes from: the one the gallery
    stores ("calibrated": measured by calibrate; "manual": set by hand; "stored": by an earlier facesearch that did
    not record how), else the one the gallery's model records ("model"), else the documented ``DEFAULT_THRESHOLD``
    ("default")."""
    stored = gallery.stored_threshold()
    if stored is not None:
        return stored.value, stored.source
    recorded = (loaded.extra.get("threshold") or {}).get("value") if loaded is not None else None
    return (float(recorded), "model") if recorded is not None else (float(DEFAULT_THRESHOLD), "default")


def _answer_photos(gallery: Gallery, photos: list, rule: _Rule) -> list[WhoResult]:
    """Every face of each photo (``Embedder.faces_of``'s), searched with one gallery query."""
    faces = [(n, f) for n, photo in enumerate(photos) for f in photo.faces]
    xq = np.stack([f.embedding for _, f in faces]) if faces else None  # (faces, d)
    hits = gallery.search(xq, k=max(rule.top_k * FACES_PER_IDENTITY, 50)) if faces else []
    per_photo: list[list[FaceAnswer]] = [[] for _ in photos]
    for (n, f), h in zip(faces, hits):
        per_photo[n].append(_answer(f.face, aggregate(h, rule.top_k), rule.threshold))
    return [WhoResult(photo.path, rule.threshold, rule.calibrated, answers, rule.source)
            for photo, answers in zip(photos, per_photo)]


def _decoded(photo):
    """A photo ``faces_of`` decoded, to draw on: with its path, so that ``annotate`` checks it is not drawn over."""
    from facesearch.embed import Decoded

    return Decoded(photo.path, photo.image) if photo.path is not None else photo.image


def _answer(face, matches: list[IdentityMatch], threshold: float) -> FaceAnswer:
    box = [round(float(v), 1) for v in face.box]
    if not matches:
        return FaceAnswer(box, float(face.prob), UNKNOWN, None, [])
    top = matches[0]
    name = top.name if top.similarity >= threshold else UNKNOWN
    return FaceAnswer(box, round(float(face.prob), 4), name, top.similarity, matches)


def annotate(photo, result: WhoResult, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Draw each face's box and answer on the photo and save it to ``out`` (format from the suffix).

    ``photo``: a path, an RGB PIL image, or a ``facesearch.embed.Decoded`` photo (not decoded again). ``out`` is
    never the photo itself, and an existing file is replaced only when ``overwrite``: ValueError otherwise
    (``annotation_problem`` says so before any work, for every output of a run).
    """
    from PIL import ImageDraw

    from facesearch.data.images import load_image
    from facesearch.embed import Decoded

    out = Path(out)
    path = photo.path if isinstance(photo, Decoded) else photo if isinstance(photo, (str, os.PathLike)) else None
    if path is not None:
        problem = annotation_problem([out], [Path(path)], [], overwrite)
        if problem:
            raise problem
    if isinstance(photo, Decoded):
        image = photo.image.copy()
    else:
        image = load_image(photo) if path is not None else photo.convert("RGB").copy()
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
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(out, "wb" if overwrite else "xb") as f:  # "x": a file that appeared meanwhile is not replaced
            image.save(f, format=_image_format(out))
    except FileExistsError:
        raise BadInput(f"{out}: exists already; not replaced (overwrite replaces it)") from None
    return out


def annotation_problem(outs: Sequence[Path], photos: Sequence[Path], protected: Sequence[Path],
                       overwrite: bool) -> BadInput | None:
    """Why drawing the answers to ``outs`` must not go ahead, as the error to raise (None: it may): an output that
    is one of the ``photos`` answered, lies inside a ``protected`` folder (the gallery's: its crops, index and
    database are facesearch's alone) or is a file already there (unless ``overwrite``), or has no image suffix."""
    inputs = {p.resolve() for p in photos}
    folders = [f.resolve() for f in protected]
    existing = []
    for out in outs:
        target = out.resolve()
        if target in inputs or any(out.exists() and p.exists() and os.path.samefile(out, p) for p in photos):
            return BadInput(f"{out}: that is a photo being answered; give another file or folder to draw into")
        inside = next((f for f in folders if target == f or target.is_relative_to(f)), None)
        if inside is not None:
            return BadInput(f"{out}: inside the gallery folder {inside}, whose files only facesearch writes; give a "
                            "path outside it")
        if out.is_dir():
            return BadInput(f"{out}: a folder; give the file name to draw into")
        if _image_format(out) is None:
            return BadInput(f"{out}: {out.suffix or 'no suffix'} is not an image format (give .jpg, .png, ...)")
        if out.exists() and not overwrite:
            existing.append(out)
    if existing:
        what = f"{existing[0]} exists" if len(existing) == 1 else f"{existing[0]} and {len(existing) - 1} more exist"
        return BadInput(f"{what} already: give another name, or overwrite {'it' if len(existing) == 1 else 'them'}",
                        remedy=Remedy.give("overwrite"))
    return None


def _image_format(out: Path) -> str | None:
    """The PIL format a file name's suffix asks for (None: not an image suffix)."""
    from PIL import Image

    return Image.registered_extensions().get(out.suffix.lower())
