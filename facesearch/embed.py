"""Photos → face embeddings: detect and crop exactly as ``prepare`` does, then the model's fc7, L2-normalised.

``Embedder`` wraps a checkpoint for inference (eval, ``torch.inference_mode``, channels-last, batched)
and optionally averages each face with its mirror image, a cheap and well-known gain for verification.
Detection, face selection and cropping are ``facesearch.data.detect``'s, shared with ``prepare``, so a
gallery face is cut the same way as the training crops were.

``Embedder.faces_of`` is the one photo → faces → crops → embeddings loop: enroll, who, cluster, explain,
calibrate, the evaluations and the service all go through it, and ``gallery_model`` is the one rule for which
model a gallery is used with.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from facesearch.data.detect import CropSettings
from facesearch.errors import BadInput

logger = logging.getLogger(__name__)

SELECT_RULES = ("all", "largest", "center", "only")


@dataclass(frozen=True)
class PhotoFace:
    """One face of one photo: where it is, its crop, and (unless asked not to) its embedding."""

    path: str | None  # the photo (None for a photo passed in memory)
    face: object  # facesearch.data.detect.DetectedFace: box, landmarks, prob in photo pixels
    crop: object  # the PIL crop that was embedded
    embedding: np.ndarray | None  # (d,) float32, L2-normalised (None: ``Embedder.faces_of(embed=False)``)


@dataclass(frozen=True)
class PhotoFaces:
    """What one photo gave: its chosen faces, or why it gave none (``status`` other than "ok")."""

    path: str | None  # the photo (None for a photo passed in memory)
    faces: list[PhotoFace]  # the faces ``select`` chose, in the detector's order
    found: int = 0  # faces detected, before ``select`` chose
    image: object = None  # the decoded RGB photo (None: it could not be decoded)
    status: str = "ok"  # "ok", "no_face", "several_faces" (select="only"), or load_image's ("unreadable", ...)
    reason: str = ""  # why, for a status other than "ok"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Decoded:
    """A photo decoded already (an upload checked before it was kept), with the file it is kept as: what
    ``Embedder.faces_of`` then reports as its path, without decoding it again."""

    path: str | os.PathLike
    image: object  # RGB PIL image


def gallery_model(checkpoint=None, gallery=None):
    """The model a gallery is used with: the checkpoint given, else the one the gallery records (its
    ``model_source``), else the shipped base model."""
    from facesearch.checkpoint import resolve_checkpoint

    return resolve_checkpoint(checkpoint, gallery.model_source if gallery is not None else None)


class Embedder:
    """A face model's checkpoint ready to embed faces.

    Args:
        model: a checkpoint path (or run folder), or a ``LoadedModel``; refused when it records another kind of
            model than a face model (``checkpoint.require_kind``).
        device: "auto" (CUDA when available), "cpu", "cuda", ...
        flip: average each face's embedding with its horizontal mirror's (2x the compute).
        batch_size: crops per forward pass.
        crop: how to cut faces; default: recorded in the checkpoint, else prepare's defaults.
        detector: a ``FaceDetector`` to share; default: one on the same device.
    """

    def __init__(self, model, device: str = "auto", flip: bool = True, batch_size: int = 32,
                 crop: CropSettings | None = None, detector=None):
        import torch

        from facesearch.checkpoint import LoadedModel, load_checkpoint, require_kind
        from facesearch.runtime import resolve_device

        self.device = resolve_device(device)
        if isinstance(model, LoadedModel):
            require_kind(model.kind, "faces", model.path)  # a CIFAR-10 classifier embeds no faces
            self.loaded = model
        else:
            self.loaded = load_checkpoint(model, self.device, kind="faces")
        self.model = self.loaded.model.to(self.device, memory_format=torch.channels_last).eval()
        self.flip = flip
        self.batch_size = batch_size
        self.crop = crop or CropSettings.from_checkpoint(self.loaded)
        self._detector = detector

    @classmethod
    def for_queries(cls, model, device: str = "auto", min_face: int | None = None) -> "Embedder":
        """The query-side face finder and embedder: what `who` answers with, and what explain, evaluate,
        calibrate and cluster measure (one way to build it, so that they all find the same faces in the same
        photo). The detector's settings are the checkpoint's (``DetectorSettings``); ``min_face`` overrides
        its smallest face."""
        from facesearch.data.detect import DetectorSettings, FaceDetector

        embedder = cls(model, device=device)
        settings = DetectorSettings.from_checkpoint(embedder.loaded)
        embedder._detector = FaceDetector(device=str(embedder.device), thresholds=settings.thresholds,
                                          min_face_size=settings.min_face_size if min_face is None else min_face)
        return embedder

    @property
    def fingerprint(self) -> str:
        """The model's fingerprint: galleries refuse embeddings of any other model."""
        return self.loaded.fingerprint

    @property
    def model_source(self) -> str | None:
        """Where the model came from, as a gallery records it ("base" or an absolute path; None: in memory)."""
        from facesearch.checkpoint import model_source

        return model_source(self.loaded.path) if self.loaded.path is not None else None

    @property
    def dim(self) -> int:
        return self.loaded.config.embedding_width

    @property
    def detector(self):
        if self._detector is None:
            from facesearch.data.detect import FaceDetector

            self._detector = FaceDetector(device=str(self.device))
        return self._detector

    def embed_crops(self, crops: Sequence) -> np.ndarray:
        """Face crops (PIL, any square size) → (n, d) float32 L2-normalised embeddings."""
        out = [self._embed_batch(crops[i : i + self.batch_size]) for i in range(0, len(crops), self.batch_size)]
        return np.concatenate(out) if out else np.empty((0, self.dim), dtype=np.float32)

    def _embed_batch(self, crops: Sequence) -> np.ndarray:
        import torch

        from facesearch.checkpoint import preprocess_batch

        x = preprocess_batch(list(crops), self.loaded.preprocess)  # (n, 3, S, S)
        if self.flip:
            x = torch.cat([x, x.flip(3)])  # (2n, 3, S, S): one forward pass for both views
        x = x.to(self.device, memory_format=torch.channels_last)
        with torch.inference_mode():
            e = self.model.forward_embedding(x).float()  # (n or 2n, d)
        if self.flip:
            e = e[: len(crops)] + e[len(crops) :]
        e = torch.nn.functional.normalize(e, dim=1).cpu().numpy().astype(np.float32, copy=False)
        if not np.isfinite(e).all():  # damaged weights: such vectors would match nothing and poison a gallery
            from facesearch.checkpoint import CheckpointError

            raise CheckpointError(f"{self.loaded.path or 'the model'}: gives embeddings that are not finite numbers "
                                  "(NaN or inf): its weights are damaged")
        return e

    def faces_of(self, photos: Sequence, select: str = "all", batch_size: int = 16,
                 embed: bool = True) -> Iterator[PhotoFaces]:
        """Photos → their faces: decoded, detected, chosen, cropped and embedded, a batch of photos at a time (one
        detection pass and one forward pass per batch). The one loop that enroll, who, cluster, explain,
        calibrate, evaluation and the service go through.

        Args:
            photos: each a path, the photo's bytes, an RGB PIL image, or a ``Decoded`` photo.
            select: "all" faces, the one "largest" / nearest the "center", or "only": the face of a photo that
                has exactly one (a photo of several gets status "several_faces").
            batch_size: photos per detection batch.
            embed: False: crops only (``PhotoFace.embedding`` None), for a caller that embeds them itself.
        Yields:
            One ``PhotoFaces`` per photo, in input order, as soon as its batch is done; a photo that cannot be
            decoded, or shows no face, says why instead of stopping the run.
        """
        if select not in SELECT_RULES:
            raise BadInput(f"select must be one of {SELECT_RULES}, not {select!r}")
        for start in range(0, len(photos), batch_size):
            yield from self._faces_of_batch(photos[start : start + batch_size], select, embed)

    def _faces_of_batch(self, photos: Sequence, select: str, embed: bool) -> list[PhotoFaces]:
        from facesearch.data.detect import crop_face, select_face

        decoded = [_decode(photo) for photo in photos]  # (path, image or None, failure)
        ok = [n for n, (_, image, _) in enumerate(decoded) if image is not None]
        found = dict(zip(ok, self.detector.detect([decoded[n][1] for n in ok]) if ok else []))
        chosen = []  # (photo number, DetectedFace, crop)
        for n, faces in found.items():
            image = decoded[n][1]
            if select == "only":
                faces = faces if len(faces) == 1 else []
            elif select != "all":
                faces = [f for f in [select_face(faces, image.size, select)] if f is not None]
            chosen += [(n, f, crop_face(image, f, self.crop.size, self.crop.margin, self.crop.align)) for f in faces]
        vectors = self.embed_crops([c for _, _, c in chosen]) if embed else [None] * len(chosen)
        faces_of: dict[int, list[PhotoFace]] = {n: [] for n in ok}
        for (n, face, crop), v in zip(chosen, vectors):
            faces_of[n].append(PhotoFace(decoded[n][0], face, crop, v))
        return [_outcome(path, image, failure, faces_of.get(n, []), len(found.get(n, [])))
                for n, (path, image, failure) in enumerate(decoded)]

    def embed_photo(self, photo, select: str = "all") -> list[tuple[object, np.ndarray]]:
        """Faces of one photo (path, bytes or PIL image) with their embeddings, as ``(DetectedFace, (d,) array)``
        pairs.

        Args:
            select: "all" faces, or the one "largest" / nearest the "center" (empty list: no face).
        Raises:
            ImageError: the photo cannot be decoded.
        """
        from facesearch.data.images import ImageError

        result = next(self.faces_of([photo], select))
        if result.image is None:
            raise ImageError(result.status, result.reason, result.path)
        return [(f.face, f.embedding) for f in result.faces]


def _decode(photo) -> tuple[str | None, object, tuple[str, str] | None]:
    """A photo given to ``faces_of`` → ``(path or None, RGB image or None, (status, reason) when undecodable)``."""
    from facesearch.data.images import ImageError, load_image

    if isinstance(photo, Decoded):
        return str(photo.path), photo.image, None
    path = str(photo) if isinstance(photo, (str, os.PathLike)) else None
    if path is None and not isinstance(photo, (bytes, bytearray)):
        return None, photo.convert("RGB"), None
    try:
        return path, load_image(photo), None
    except ImageError as e:  # load_image turns every OSError into one
        return path, None, (e.status, e.reason)


def _outcome(path, image, failure, faces: list[PhotoFace], found: int) -> PhotoFaces:
    if failure is not None:
        return PhotoFaces(path, [], 0, None, *failure)
    if found == 0:
        return PhotoFaces(path, [], 0, image, "no_face", "no face detected")
    if not faces:  # select="only" and several faces
        return PhotoFaces(path, [], found, image, "several_faces", f"{found} faces")
    return PhotoFaces(path, faces, found, image)


@dataclass(frozen=True)
class EmbeddedFiles:
    faces: list[PhotoFace]  # in input order; several per photo with select="all"
    vectors: np.ndarray  # (len(faces), d) float32
    failures: dict[str, str]  # photo → reason (unreadable, no face)


def embed_files(embedder: Embedder, paths: Sequence[str | os.PathLike], select: str = "largest",
                batch_size: int = 16, progress: Callable[[int], None] | None = None) -> EmbeddedFiles:
    """Embed the faces of many photo files, a batch of photos at a time.

    Returns:
        Every embedded face, their stacked vectors, and why each other photo gave nothing.
    """
    faces: list[PhotoFace] = []
    failures: dict[str, str] = {}
    for result in embedder.faces_of(list(paths), select, batch_size):
        faces.extend(result.faces)
        if not result.ok:
            failures[str(result.path)] = f"{result.status}: {result.reason}"
        if progress:
            progress(1)
    vectors = np.stack([f.embedding for f in faces]) if faces else np.empty((0, embedder.dim), np.float32)
    return EmbeddedFiles(faces, vectors, failures)


def write_embeddings(result: EmbeddedFiles, out: str | os.PathLike) -> tuple[Path, Path]:
    """``out`` (.npy, (n, d) float32) and a sidecar ``.json`` naming each row's photo, box and probability."""
    import json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, result.vectors)
    rows = [{"path": f.path, "box": [round(float(v), 2) for v in f.face.box], "prob": round(float(f.face.prob), 4)}
            for f in result.faces]
    meta = out.with_suffix(".json")
    meta.write_text(json.dumps({"rows": rows, "failures": result.failures}, indent=1))
    return out, meta
