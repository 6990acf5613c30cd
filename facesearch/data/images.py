"""Safe photo decoding: every file either becomes an RGB image or an ``ImageError`` with a status and a reason.

Real photo folders hold truncated JPEGs, text files named ``.jpg``, 16-bit scans, transparent PNGs and
decompression bombs. ``load_image`` turns each of them into either a plain 8-bit RGB image, the right way
up, or an ``ImageError`` whose ``status`` is one of the manifest's STATUSES and whose ``reason`` a person
can read. Truncated files are rejected, never half-decoded (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off).
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# What counts as a photo when a folder is listed (enroll, evaluate, calibrate, CIFAR-style folders): Pillow reads
# all of these; anything else in a folder is not looked at.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})
# Transparent pixels and padding become this neutral grey rather than black or white.
NEUTRAL_GREY = (128, 128, 128)
MIN_SIDE = 32  # px; smaller photos cannot hold a face MTCNN finds (its smallest face is 12 px at best)

_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def is_photo(path: Path) -> bool:
    """Whether a file is one a folder listing counts as a photo (by its suffix: ``IMAGE_SUFFIXES``)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def list_photos(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The photos named and those anywhere inside the folders named (sorted per folder), each once, in order.
    A named file is kept whatever it is (reading it says what is wrong with it)."""
    out: list[Path] = []
    for path in map(Path, paths):
        out += sorted(p for p in path.rglob("*") if is_photo(p)) if path.is_dir() else [path]
    return list(dict.fromkeys(out))


def file_sha256(path: str | os.PathLike) -> str:
    """Content hash of a file's bytes: how prepare and the gallery recognise a photo they already hold."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ImageError(Exception):
    """A photo that cannot be used, with its manifest ``status`` and a readable ``reason``."""

    def __init__(self, status: str, reason: str, path: str | os.PathLike | None = None):
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.path = path  # set by load_image: the message then names the file

    def __str__(self) -> str:
        return f"{self.path}: {self.status}: {self.reason}" if self.path is not None else super().__str__()


def load_image(
    path: str | os.PathLike, min_side: int = MIN_SIDE, max_pixels: int | None = None
) -> Image.Image:
    """Decode one photo into an 8-bit RGB image, EXIF orientation applied.

    Args:
        path: the file.
        min_side: photos whose shorter side is below this many pixels raise ``too_small``.
        max_pixels: decompression-bomb limit; ``None`` uses Pillow's ``Image.MAX_IMAGE_PIXELS``.

    Returns:
        A loaded RGB image. Animated images give their first frame.

    Raises:
        ImageError: status ``not_an_image``, ``too_large``, ``truncated``, ``unreadable`` or ``too_small``;
            its ``path`` is ``path``.
    """
    try:
        return _load(path, min_side, max_pixels)
    except ImageError as e:
        e.path = path
        raise


def _load(path, min_side: int, max_pixels: int | None) -> Image.Image:
    _check_not_empty(path)
    with _decode_errors_as_image_errors():
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; we refuse the whole range.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            _check_pixels(opened, Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels)
            opened.seek(0)  # animated: the first frame
            opened.load()
            image = to_rgb(_exif_transpose(opened, path))
            if image is opened:  # closing `opened` would free the pixels we return
                image = image.copy()
    if min(image.size) < min_side:
        w, h = image.size
        raise ImageError("too_small", f"{w}x{h} px is below the {min_side} px minimum side")
    return image


def _check_not_empty(path) -> None:
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ImageError("unreadable", f"cannot read the file: {e.strerror or e}") from e
    if size == 0:
        raise ImageError("not_an_image", "empty file (0 bytes)")


@contextmanager
def _decode_errors_as_image_errors():
    """Turn every way Pillow fails on a bad file into an ``ImageError`` with a readable reason."""
    try:
        yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("too_large", f"decompression-bomb limit: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError("not_an_image", "not an image format Pillow can read") from e
    except OSError as e:
        message = str(e)
        if "truncated" in message or "broken data stream" in message:
            raise ImageError("truncated", f"the file ends early ({message})") from e
        raise ImageError("unreadable", f"cannot decode: {message}") from e
    except (SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, MemoryError) as e:
        # Pillow's plugins signal corrupt headers and data with assorted exception types.
        raise ImageError("unreadable", f"cannot decode: {type(e).__name__}: {e}") from e


def _check_pixels(image: Image.Image, limit: int | None) -> None:
    w, h = image.size
    if limit is not None and w * h > limit:
        raise ImageError("too_large", f"{w}x{h} = {w * h:,} pixels is over the {limit:,}-pixel decompression-bomb limit")


def _exif_transpose(image: Image.Image, path) -> Image.Image:
    """Apply the EXIF orientation tag; a corrupt EXIF block is ignored (the pixels are fine)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad EXIF
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", path, e)
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited on grey, high bit depths scaled by their range."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _HIGH_DEPTH_MODES:
        return _scale_to_8bit(image).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, NEUTRAL_GREY + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV: Pillow's own conversions are right for these.
    return image.convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale to 8 bits by the values' real range.

    ``convert("L")`` clips anything above 255 to white, so a 16-bit scan comes out blank.
    """
    values = np.asarray(image, dtype=np.float64)  # (h, w)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Image.new("L", image.size, 0)
    lo, hi = float(finite.min()), float(finite.max())
    scaled = (np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) / max(hi - lo, 1e-12) * 255.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
