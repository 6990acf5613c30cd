"""Photos → face embeddings: detect and crop exactly as ``prepare`` does, then the model's fc7, L2-normalised.

``Embedder`` wraps a checkpoint for inference (eval, ``torch.inference_mode``, channels-last, batched)
and optionally averages each face with its mirror image, a cheap and well-known gain for verification.
Detection, face selection and cropping are ``facesearch.data.detect``'s, shared with ``prepare``, so a
gallery face is cut the same way as the training crops were.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facesearch.data.detect import CropSettings
from facesearch.errors import BadInput

logger = logging.getLogger(__name__)

SELECT_RULES = ("all", "largest", "center")


@dataclass(frozen=True)
class PhotoFace:
    """One embedded face of one photo."""

    path: str | None  # the photo (None for an image passed in memory)
    face: object  # facesearch.data.detect.Face: box, landmarks, prob in photo pixels
    crop: object  # the PIL crop that was embedded
    embedding: np.ndarray  # (d,) float32, L2-normalised


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

    def embed_photo(self, photo, select: str = "all") -> list[tuple[object, np.ndarray]]:
        """Faces of one photo (path or PIL image) with their embeddings, as ``(Face, (d,) array)`` pairs.

        Args:
            select: "all" faces, or the one "largest" / nearest the "center" (empty list: no face).
        """
        from facesearch.data.images import load_image

        image = load_image(photo) if isinstance(photo, (str, os.PathLike)) else photo.convert("RGB")
        return [(f.face, f.embedding) for f in self.embed_images([image], select)[0]]

    def detect_and_crop(self, images: Sequence, select: str = "all") -> list[list[tuple[object, object]]]:
        """Detect (batched), select and crop the faces of several RGB PIL images: per image, ``(Face, crop)``."""
        from facesearch.data.detect import crop_face, select_face

        if select not in SELECT_RULES:
            raise BadInput(f"select must be one of {SELECT_RULES}, not {select!r}")
        out = []
        for image, faces in zip(images, self.detector.detect(list(images))):
            if select != "all":
                faces = [f for f in [select_face(faces, image.size, select)] if f is not None]
            out.append([(f, crop_face(image, f, self.crop.size, self.crop.margin, self.crop.align)) for f in faces])
        return out

    def embed_images(self, images: Sequence, select: str = "all", paths: Sequence | None = None) -> list[list[PhotoFace]]:
        """Detect (batched), select, crop and embed (batched) the faces of several RGB PIL images."""
        chosen = [(n, face, crop) for n, faces in enumerate(self.detect_and_crop(images, select))
                  for face, crop in faces]  # (image number, Face, crop)
        vectors = self.embed_crops([c for _, _, c in chosen])
        out: list[list[PhotoFace]] = [[] for _ in images]
        for (n, face, crop), v in zip(chosen, vectors):
            out[n].append(PhotoFace(str(paths[n]) if paths is not None else None, face, crop, v))
        return out


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
    from facesearch.data.images import ImageError, load_image

    faces: list[PhotoFace] = []
    failures: dict[str, str] = {}
    for start in range(0, len(paths), batch_size):
        batch, images = [], []
        for path in paths[start : start + batch_size]:
            try:
                images.append(load_image(path))
                batch.append(path)
            except ImageError as e:  # load_image turns every OSError into one
                failures[str(path)] = f"{e.status}: {e.reason}"
        for path, found in zip(batch, embedder.embed_images(images, select, paths=batch)):
            faces.extend(found)
            if not found:
                failures[str(path)] = "no_face: no face detected"
        if progress:
            progress(len(paths[start : start + batch_size]))
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
