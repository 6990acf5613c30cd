"""Find faces (MTCNN from facenet-pytorch), choose one, cut it out: detect → select → crop.

``FaceDetector.detect`` takes a list of PIL images of any sizes and returns every face in each. MTCNN can
only batch images of one size. Each photo is searched on a canvas that depends on its own size alone (rounded
up to ``CANVAS_STEP`` pixels, padded grey), and photos share an MTCNN call only when their canvases are equal:
the canvas sets MTCNN's image pyramid, its resampling and what its later stages see beyond the photo's edge, so
a canvas shared with larger photos used to change which faces a photo had (a group photo refused in one batch
was enrolled in another). Boxes are mapped back to the photo's own pixels. The network weights ship inside the
facenet-pytorch wheel and are loaded on the first call, never at import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from facesearch.data.images import NEUTRAL_GREY  # padding outside the photo, as transparent pixels get
from facesearch.errors import BadInput

logger = logging.getLogger(__name__)


# Where the five landmarks (eyes, nose, mouth corners) land in a 112x112 crop: the template used by
# ArcFace/InsightFace. At the default margin (0.2) an aligned crop is exactly that standard crop.
_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
_TEMPLATE_MARGIN = 0.2
# A photo is searched on its own size rounded up to a multiple of this (padded grey, bottom and right): photos of
# nearly the same size share a canvas, hence a batch, and a photo's canvas never depends on the others.
CANVAS_STEP = 32


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One detected face, in pixels of the photo it was found in."""

    box: np.ndarray  # (4,) float32: x1, y1, x2, y2
    landmarks: np.ndarray  # (5, 2) float32: left eye, right eye, nose, left/right mouth corner
    prob: float  # MTCNN's final-stage probability

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return float(max(x2 - x1, 0) * max(y2 - y1, 0))

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return float(x1 + x2) / 2, float(y1 + y2) / 2


class FaceDetector:
    """Batched MTCNN over photos of mixed sizes.

    Args:
        device: "auto", "cpu", "cuda", "cuda:1", ...
        min_face_size: smallest face searched for, in pixels (MTCNN's default is 20).
        thresholds: MTCNN's three stage thresholds.
        batch_size: photos (of one canvas size) per MTCNN call.
        min_face_ratio: speed knob; also skip faces smaller than this fraction of the shorter side of the
            photo's canvas (0 = off). Small faces are what make MTCNN slow: its image pyramid starts at
            12 / min_face of the photo's size.
        max_side: speed knob; photos with a longer side are searched at this size (None = off).
        retry_missed: with ``min_face_ratio`` on, search each photo where nothing was found once more,
            at ``min_face_size``, so the knob never loses a face the plain search finds.

    A photo's faces depend on the photo and these settings only, not on the other photos of the call (the
    photos sharing its canvas may shift a box by float rounding, ~1e-5 px: batched convolutions round so).
    """

    def __init__(
        self,
        device: str = "auto",
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        batch_size: int = 16,
        min_face_ratio: float = 0.0,
        max_side: int | None = None,
        retry_missed: bool = True,
    ):
        self.device = device
        self.min_face_size = min_face_size
        self.thresholds = tuple(thresholds)
        self.batch_size = batch_size
        self.min_face_ratio = min_face_ratio
        self.max_side = max_side
        self.retry_missed = retry_missed
        self._mtcnn = None  # built on the first detect()

    def detect(self, images: list[Image.Image]) -> list[list[DetectedFace]]:
        """All faces in each photo (RGB PIL images of any sizes), in the photo's own pixels."""
        faces = self._detect_all(images, self.min_face_ratio)
        if self.min_face_ratio > 0 and self.retry_missed:
            missed = [i for i, found in enumerate(faces) if not found]
            for i, found in zip(missed, self._detect_all([images[i] for i in missed], 0.0)):
                faces[i] = found  # MTCNN's plain search at min_face_size
        return faces

    def _detect_all(self, images, min_face_ratio: float) -> list[list[DetectedFace]]:
        scales = [_working_scale(im.size, self.max_side) for im in images]
        arrays = [_working_array(im, s) for im, s in zip(images, scales)]  # each (h, w, 3) uint8
        results: list[list[DetectedFace]] = [[] for _ in images]
        for canvas, batch in _group_by_canvas([a.shape[:2] for a in arrays], self.batch_size):
            min_face = max(float(self.min_face_size), min_face_ratio * min(canvas))
            found = self._detect_canvas([arrays[i] for i in batch], canvas, min_face)
            for i, faces in zip(batch, found):
                results[i] = [_rescale(f, 1.0 / scales[i]) for f in faces]
        return results

    def _detect_canvas(self, arrays: list[np.ndarray], canvas: tuple[int, int],
                       min_face: float) -> list[list[DetectedFace]]:
        """One MTCNN call on photos padded (bottom/right, grey) to their canvas, (height, width)."""
        from facesearch.data.mtcnn import detect_equal_sized  # torch and facenet: on the first detection

        mtcnn = self._model()
        height, width = canvas
        if min(height, width) < min_face:  # MTCNN's image pyramid would be empty: no face that large fits
            return [[] for _ in arrays]
        padded = np.full((len(arrays), height, width, 3), NEUTRAL_GREY[0], dtype=np.uint8)  # (n, H, W, 3)
        for k, a in enumerate(arrays):
            padded[k, : a.shape[0], : a.shape[1]] = a
        # What MTCNN.detect() finds in these photos, computed faster (facesearch.data.mtcnn).
        boxes, points = detect_equal_sized(padded, min_face, mtcnn, self.thresholds)
        return [_faces_inside(b, p, a.shape[:2]) for b, p, a in zip(boxes, points, arrays)]

    def _model(self):
        if self._mtcnn is None:
            from facenet_pytorch import MTCNN  # facenet and torch load on the first detection, not on import

            from facesearch.runtime import CHANNELS_LAST, resolve_device  # torch too: on the first detection

            device = str(resolve_device(self.device))
            self._mtcnn = MTCNN(
                keep_all=True, post_process=False, min_face_size=self.min_face_size,
                thresholds=list(self.thresholds), device=device,
            )
            if device == "cpu":  # ~25 % less CPU time for these small convolutions, same results
                for net in (self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet):
                    net.to(memory_format=CHANNELS_LAST)
            logger.info("MTCNN loaded on %s", device)
        return self._mtcnn


def _working_scale(size: tuple[int, int], max_side: int | None) -> float:
    longer = max(size)
    return 1.0 if max_side is None or longer <= max_side else max_side / longer


def _working_array(image: Image.Image, scale: float) -> np.ndarray:
    if scale != 1.0:
        w, h = image.size
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR, reducing_gap=2.0)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def canvas_of(shape: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) a photo of ``shape`` (height, width) is searched on: each rounded up to ``CANVAS_STEP``."""
    return tuple(-(-side // CANVAS_STEP) * CANVAS_STEP for side in shape)


def _group_by_canvas(shapes: list[tuple[int, int]], batch_size: int) -> list[tuple[tuple[int, int], list[int]]]:
    """Batches of at most ``batch_size`` indices whose photos have the same canvas, with that canvas."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(canvas_of(shape), []).append(i)
    return [(canvas, members[k : k + batch_size]) for canvas, members in sorted(groups.items())
            for k in range(0, len(members), batch_size)]


def _faces_inside(boxes, points, shape: tuple[int, int]) -> list[DetectedFace]:
    """Faces from MTCNN's raw (k, 5) boxes and (k, 5, 2) points, dropping any centred in the padding."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 5)
    points = np.asarray(points, dtype=np.float32).reshape(-1, 5, 2)
    h, w = shape
    faces = []
    for box, pts in zip(boxes, points):
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        if 0 <= cx < w and 0 <= cy < h:
            faces.append(DetectedFace(box=box[:4].copy(), landmarks=pts.copy(), prob=float(box[4])))
    return faces


def _rescale(face: DetectedFace, factor: float) -> DetectedFace:
    if factor == 1.0:
        return face
    return DetectedFace(box=face.box * np.float32(factor), landmarks=face.landmarks * np.float32(factor),
                        prob=face.prob)


def select_face(faces: list[DetectedFace], image_size: tuple[int, int], rule: str = "largest") -> DetectedFace | None:
    """The face to keep: ``"largest"`` box, or ``"center"`` (closest to the photo's centre — right for
    LFW-style photos centred on one person). ``None`` when there is no face."""
    if not faces:
        return None
    if rule == "largest":
        return max(faces, key=lambda f: (f.area, f.prob))
    if rule == "center":
        w, h = image_size
        return min(faces, key=lambda f: ((f.center[0] - w / 2) ** 2 + (f.center[1] - h / 2) ** 2, -f.prob))
    raise BadInput(f"unknown selection rule {rule!r}; use 'largest' or 'center'")


@dataclass(frozen=True)
class CropSettings:
    """How faces are cut out of photos; must match the ``prepare`` run the model was trained on."""

    size: int = 112  # crop side in px (prepare's default); the model input is resized from it
    margin: float = 0.2
    align: bool = False

    @classmethod
    def from_dict(cls, recorded: dict) -> CropSettings:
        """The size/margin/align of a settings dict (prepare's ``dataset.json``, a checkpoint's ``crop``); the
        defaults fill in what it lacks, other keys are ignored."""
        return cls(**{k: recorded[k] for k in ("size", "margin", "align") if k in recorded})

    @classmethod
    def from_checkpoint(cls, loaded) -> CropSettings:
        """The crop settings recorded in the checkpoint (``extra["crop"]``), else prepare's defaults."""
        return cls.from_dict(getattr(loaded, "extra", {}).get("crop") or {})


@dataclass(frozen=True)
class DetectorSettings:
    """How faces are looked for in a query photo (``who``, ``explain``, ``evaluate``, ``calibrate``,
    ``cluster``); recorded in a checkpoint beside its crop settings, so a model says how it is to be used."""

    # Smallest face, in photo pixels (MTCNN's own default is 20, what ``prepare`` searches from). A 20-40 px
    # face is blown up 3-6x into the model's input and rarely recognised, and skipping them cuts MTCNN's time
    # on a 640 px photo about threefold (measured 183 -> 60 ms on a 2-core CPU); ``who --min-face 20`` finds them.
    min_face_size: int = 40
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # MTCNN's three stage thresholds (its defaults)

    @classmethod
    def from_checkpoint(cls, loaded) -> DetectorSettings:
        """The settings a checkpoint records (``extra["crop"]["detector"]``); the defaults for older ones."""
        recorded = (getattr(loaded, "extra", {}).get("crop") or {}).get("detector") or {}
        return cls(**{k: tuple(v) if k == "thresholds" else v for k, v in recorded.items()
                      if k in ("min_face_size", "thresholds")})

    def to_dict(self) -> dict:
        return {"min_face_size": self.min_face_size, "thresholds": list(self.thresholds)}


def crop_face(image: Image.Image, face: DetectedFace, size: int = 112, margin: float = 0.2,
              align: bool = False) -> Image.Image:
    """A square RGB ``size`` x ``size`` crop of one face.

    Args:
        image: the photo the face was found in.
        face: the detection.
        size: output side in pixels.
        margin: extra context as a fraction of the box's longer side, half on each side
            (0.2 → the crop spans 1.2 box sides).
        align: rotate and scale by the five landmarks (similarity transform) onto a fixed template
            instead of cutting the box: eyes always level and at the same place.

    Parts of the crop outside the photo are padded with grey, never stretched.
    """
    if align:
        return _aligned_crop(image, face.landmarks, size, margin)
    x1, y1, x2, y2 = (float(v) for v in face.box)
    side = max(x2 - x1, y2 - y1) * (1 + margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return _padded_square(image, (cx - side / 2, cy - side / 2, side), size)


def center_crop(image: Image.Image, size: int, fraction: float = 1.0) -> Image.Image:
    """The central square (``fraction`` of the shorter side), resized to ``size`` — the fallback when no
    face is found in a photo that is known to be centred on one."""
    w, h = image.size
    side = min(w, h) * fraction
    return _padded_square(image.convert("RGB"), ((w - side) / 2, (h - side) / 2, side), size)


def _padded_square(image: Image.Image, square: tuple[float, float, float], size: int) -> Image.Image:
    """Resize the square (left, top, side) of ``image`` to ``size``; what lies outside the photo is grey."""
    left, top, side = square
    w, h = image.size
    scale = size / max(side, 1e-6)  # output px per photo px
    out = Image.new("RGB", (size, size), NEUTRAL_GREY)
    ix1, iy1 = max(left, 0.0), max(top, 0.0)
    ix2, iy2 = min(left + side, float(w)), min(top + side, float(h))
    if ix2 <= ix1 or iy2 <= iy1:
        return out
    part_size = (max(1, round((ix2 - ix1) * scale)), max(1, round((iy2 - iy1) * scale)))
    part = image.convert("RGB").resize(part_size, Image.BICUBIC, box=(ix1, iy1, ix2, iy2), reducing_gap=3.0)
    out.paste(part, (round((ix1 - left) * scale), round((iy1 - top) * scale)))
    return out


def _aligned_crop(image: Image.Image, landmarks: np.ndarray, size: int, margin: float) -> Image.Image:
    # The template, widened for margins above the standard one, in output pixels.
    template = (_TEMPLATE_112 / 112 - 0.5) * ((1 + _TEMPLATE_MARGIN) / (1 + margin)) + 0.5
    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    scale, rotation, shift = _similarity(src, template * size)
    # Shrink big photos first so the affine resampling does not alias (it reads one pixel per output).
    reduce = int(1 / scale // 2)
    if reduce >= 2:
        image, src = image.reduce(reduce), src / reduce
        scale, rotation, shift = _similarity(src, template * size)
    # PIL wants the inverse map, output (x, y) → photo (x, y).
    inverse = rotation.T / scale  # (2, 2)
    offset = -inverse @ shift  # (2,)
    coeffs = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    return image.convert("RGB").transform(
        (size, size), Image.AFFINE, coeffs, resample=Image.BICUBIC, fillcolor=NEUTRAL_GREY
    )


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991) with dst ≈ scale * rotation @ src + shift."""
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = dst_c.T @ src_c / len(src)  # (2, 2)
    u, s, vt = np.linalg.svd(cov)
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(s) @ d) / max((src_c**2).sum() / len(src), 1e-12))
    return scale, rotation, mu_dst - scale * rotation @ mu_src
