"""Safe photo decoding: every file either becomes an RGB image or an ``ImageError`` with a status and a reason.

Real photo folders hold truncated JPEGs, text files named ``.jpg``, 16-bit scans, transparent PNGs and
decompression bombs. ``load_image`` turns each of them into either a plain 8-bit RGB image, the right way
up, or an ``ImageError`` whose ``status`` is one of the manifest's STATUSES and whose ``reason`` a person
can read. Truncated files are rejected, never half-decoded (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facesearch.errors import FacesearchError

logger = logging.getLogger(__name__)

# What counts as a photo when a folder is listed (enroll, evaluate, calibrate, CIFAR-style folders): Pillow reads
# all of these; anything else in a folder is not looked at.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})
# Photo formats Pillow reads only in some builds or with a plugin, or not at all (camera RAW): a folder listing for
# enroll, who and embed includes them, so that each one is either read or reported with its reason, never skipped
# without a word.
OTHER_PHOTO_SUFFIXES = frozenset({".heic", ".heif", ".avif", ".jxl", ".jfif", ".jpe", ".jp2", ".dng", ".cr2", ".cr3",
                                  ".nef", ".arw", ".raf", ".orf", ".rw2", ".svg"})
# Transparent pixels and padding become this neutral grey rather than black or white.
NEUTRAL_GREY = (128, 128, 128)
MIN_SIDE = 32  # px; smaller photos cannot hold a face MTCNN finds (its smallest face is 12 px at best)
# The largest photo decoded, width x height, checked from the file's header before any pixel is decoded: a 64-
# megapixel PNG of 187 KB costs ~3 GB and half a minute to decode and search. The service's upload limit too.
MAX_PIXELS = 40_000_000

_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def is_photo(path: Path) -> bool:
    """Whether a folder listing counts an entry as a photo: by its suffix (``IMAGE_SUFFIXES`` and
    ``OTHER_PHOTO_SUFFIXES``), whatever it is but a folder. A photo-named file that cannot be read (a HEIC photo,
    a named pipe, a broken link) is listed, so that reading it reports why."""
    suffix = path.suffix.lower()
    return (suffix in IMAGE_SUFFIXES or suffix in OTHER_PHOTO_SUFFIXES) and not path.is_dir()


def list_photos(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The photos named and those anywhere inside the folders named (sorted per folder), each once, in order.
    A named file is kept whatever it is (reading it says what is wrong with it)."""
    out: list[Path] = []
    for path in map(Path, paths):
        out += sorted(p for p in path.rglob("*") if is_photo(p)) if path.is_dir() else [path]
    return list(dict.fromkeys(out))


class NotAFileError(OSError):
    """A path that names something other than a regular file (a folder, a named pipe, a device, a socket)."""


def _kind_of(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a file for reading in binary, refusing anything but a regular file before a byte is read.

    A named pipe would block the reader until something writes to it (forever), a device never ends; both are
    refused, as are folders. Opened without blocking, then checked on the open file itself (no race with a
    rename in between).

    Raises:
        NotAFileError: (an ``OSError``) not a regular file; its ``strerror`` says what it is.
        OSError: missing, permission denied, ...
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _kind_of(mode)
            raise NotAFileError(0, f"{kind}, not a photo file" if kind != "not a regular file" else kind, str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_sha256(path: str | os.PathLike) -> str:
    """Content hash of a file's bytes: how prepare and the gallery recognise a photo they already hold.

    Raises:
        OSError: cannot be read; ``NotAFileError`` for anything but a regular file (never blocks on a pipe).
    """
    digest = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ImageError(FacesearchError):
    """A photo that cannot be used, with its manifest ``status`` (also the service's word) and a readable ``reason``."""

    http_status = 422

    def __init__(self, status: str, reason: str, path: str | os.PathLike | None = None):
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.path = path  # set by load_image: the message then names the file

    def text(self) -> str:
        return f"{self.path}: {self.status}: {self.reason}" if self.path is not None else super().text()


def load_image(
    path: str | os.PathLike | bytes, min_side: int = MIN_SIDE, max_pixels: int | None = None
) -> Image.Image:
    """Decode one photo into an 8-bit RGB image, EXIF orientation applied.

    Args:
        path: the file, or its bytes (an upload, decoded from memory).
        min_side: photos whose shorter side is below this many pixels raise ``too_small``.
        max_pixels: the largest width x height decoded (read from the header, before decoding); ``None``:
            ``MAX_PIXELS``.

    Returns:
        A loaded RGB image. Animated images give their first frame.

    Raises:
        ImageError: status ``not_an_image``, ``too_large``, ``truncated``, ``unreadable`` (also for anything
            but a regular file: a folder, a named pipe, a device) or ``too_small``; its ``path`` is ``path`` (None for
            bytes).
    """
    try:
        return _load(path, min_side, MAX_PIXELS if max_pixels is None else max_pixels)
    except ImageError as e:
        e.path = None if isinstance(path, (bytes, bytearray)) else path
        raise


def _load(path, min_side: int, max_pixels: int) -> Image.Image:
    with _open_photo(path) as file, _decode_errors_as_image_errors():
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; we refuse the whole range.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                opened = Image.open(file)
            except UnidentifiedImageError as e:
                raise ImageError("not_an_image", _unknown_format(file, path)) from e
        with opened:
            _check_pixels(opened, max_pixels)  # from the header: nothing is decoded yet
            opened.seek(0)  # animated: the first frame
            opened.load()
            image = to_rgb(_exif_transpose(opened, "a photo in memory" if isinstance(path, (bytes, bytearray)) else path))
            if image is opened:  # closing `opened` would free the pixels we return
                image = image.copy()
    if min(image.size) < min_side:
        w, h = image.size
        raise ImageError("too_small", f"{w}x{h} px is below the {min_side} px minimum side")
    return image


def _open_photo(path) -> BinaryIO:
    """The photo's file, open; ``ImageError`` for one that is missing, unreadable, not a regular file or empty.
    Bytes are read from memory."""
    if isinstance(path, (bytes, bytearray)):
        if not path:
            raise ImageError("not_an_image", "empty file (0 bytes)")
        return io.BytesIO(path)
    try:
        file = open_regular(path)
    except NotAFileError as e:
        raise ImageError("unreadable", f"{e.strerror}") from e
    except OSError as e:
        raise ImageError("unreadable", f"cannot read the file: {e.strerror or e}") from e
    if os.fstat(file.fileno()).st_size == 0:
        file.close()
        raise ImageError("not_an_image", "empty file (0 bytes)")
    return file


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


# Formats people's photos come in that Pillow does not read here, by their first bytes: (offset, magic, name).
_FOREIGN_FORMATS = (
    (4, b"ftypheic", "HEIC"), (4, b"ftypheix", "HEIC"), (4, b"ftyphevc", "HEIC"), (4, b"ftypmif1", "HEIF"),
    (4, b"ftypmsf1", "HEIF"), (4, b"ftypavif", "AVIF"), (0, b"\xff\x0a", "JPEG XL"), (4, b"JXL ", "JPEG XL"),
)
_FOREIGN_SUFFIXES = {".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".jxl": "JPEG XL", ".svg": "SVG",
                     ".dng": "camera RAW", ".cr2": "camera RAW", ".cr3": "camera RAW", ".nef": "camera RAW",
                     ".arw": "camera RAW", ".raf": "camera RAW", ".orf": "camera RAW", ".rw2": "camera RAW"}


def _unknown_format(file: BinaryIO, path) -> str:
    """Why Pillow could not identify a file: a photo format it cannot read here (named by the file's first bytes
    or its suffix), else no image at all."""
    file.seek(0)
    head = file.read(16)
    found = next((fmt for offset, magic, fmt in _FOREIGN_FORMATS if head[offset : offset + len(magic)] == magic),
                 None if isinstance(path, (bytes, bytearray)) else _FOREIGN_SUFFIXES.get(Path(path).suffix.lower()))
    if found:
        return f"a photo in {found} format, which this installation cannot read: convert it to JPEG or PNG"
    return "not an image format Pillow can read"


def _check_pixels(image: Image.Image, limit: int | None) -> None:
    w, h = image.size
    if limit is not None and w * h > limit:
        raise ImageError("too_large", f"{w}x{h} = {w * h:,} pixels, over the {limit:,}-pixel limit (refused before "
                         "decoding: a photo this large costs gigabytes of memory); scale it down first")


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


def to_square_rgb(image: Image.Image, size: int) -> Image.Image:
    """RGB, centre-cropped to a square, resized to ``size`` (antialiased bilinear). Face crops are square."""
    image = image.convert("RGB")
    w, h = image.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return image


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
