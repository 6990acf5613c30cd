"""The prepared dataset's manifest: one row per input photo, written by ``prepare``, read by training.

Layout of a ``prepare`` output folder::

    OUT_DIR/manifest.csv          one row per input file (this module)
    OUT_DIR/dataset.json          the settings the crops were made with (size, margin, align, select, seed) and
                                  the raw folders (raw_dirs: {label: path}; label "" for a single folder)
    OUT_DIR/<identity>/<hash>.jpg the face crops (RGB, square, ``size`` px)

Boxes are ``(x1, y1, x2, y2)`` in pixels of the decoded, EXIF-rotated photo; landmarks are five
``(x, y)`` points (left eye, right eye, nose, left mouth corner, right mouth corner), as MTCNN gives them.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable

from facesearch.errors import MissingFile, Remedy

MANIFEST_NAME = "manifest.csv"
SETTINGS_NAME = "dataset.json"

STATUSES = (
    "ok",  # a face was found and cropped
    "duplicate",  # same content already seen for the same identity
    "conflict",  # same content under two identities (e.g. a group photo filed twice)
    "unreadable",  # an image format Pillow knows, but decoding failed
    "truncated",  # the file ends early
    "not_an_image",  # zero bytes, text, or a format Pillow does not know
    "too_large",  # over the decompression-bomb pixel limit
    "too_small",  # below the minimum side length
    "no_face",  # decoded fine, MTCNN found no face
    "no_identity",  # a file directly in RAW_DIR, not inside an identity folder
    "not_followed",  # a link to a folder outside RAW_DIR (or back into a folder already scanned)
)
SPLITS = ("train", "val", "test", "holdout", "unlabelled")  # unlabelled: prepare --unlabelled


@dataclass
class ManifestRow:
    path: str  # the input file, relative to RAW_DIR, POSIX separators ("<folder name>/..." when several are merged)
    identity: str  # the identity folder, relative to RAW_DIR (nested folders joined with "/")
    sha256: str  # content hash of the file's bytes ("" when the file could not be read at all)
    size: int  # bytes; with mtime_ns, tells a file changed in place
    mtime_ns: int
    status: str  # one of STATUSES
    reason: str  # a readable sentence; "" for ok
    prob: float | None = None  # detector probability of the kept face
    box: tuple[float, float, float, float] | None = None
    landmarks: tuple[tuple[float, float], ...] | None = None
    n_faces: int = 0  # faces found in the photo; > 1 flags a group photo
    crop: str | None = None  # relative to OUT_DIR, for status ok
    split: str | None = None  # one of SPLITS, for status ok

    @property
    def multi_face(self) -> bool:
        return self.n_faces > 1


_JSON_FIELDS = {"box", "landmarks"}
_COLUMNS = [f.name for f in fields(ManifestRow)]


def _encode(row: ManifestRow) -> dict[str, str]:
    out = {}
    for key, value in asdict(row).items():
        if value is None:
            out[key] = ""
        elif key in _JSON_FIELDS:
            out[key] = json.dumps(value)
        else:
            out[key] = str(value)
    return out


def _decode(raw: dict[str, str]) -> ManifestRow:
    def opt(key, cast):
        return cast(raw[key]) if raw.get(key, "") != "" else None

    box = opt("box", json.loads)
    landmarks = opt("landmarks", json.loads)
    return ManifestRow(
        path=raw["path"],
        identity=raw["identity"],
        sha256=raw["sha256"],
        size=int(raw["size"]),
        mtime_ns=int(raw["mtime_ns"]),
        status=raw["status"],
        reason=raw["reason"],
        prob=opt("prob", float),
        box=tuple(box) if box is not None else None,
        landmarks=tuple(tuple(p) for p in landmarks) if landmarks is not None else None,
        n_faces=int(raw["n_faces"] or 0),
        crop=opt("crop", str),
        split=opt("split", str),
    )


def write_manifest(out_dir: str | os.PathLike, rows: Iterable[ManifestRow]) -> Path:
    """Write all rows atomically (temp file + rename), sorted by path, so a crash never leaves half a file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / MANIFEST_NAME
    tmp = target.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_COLUMNS)
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r.path):
            writer.writerow(_encode(row))
    os.replace(tmp, target)
    return target


def read_manifest(out_dir: str | os.PathLike) -> list[ManifestRow]:
    """All rows of a ``prepare`` output; a clear error when OUT_DIR holds none."""
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise MissingFile(f"{path}: no manifest; prepare photos into {out_dir} first",
                          remedy=Remedy.run("prepare", raw_dir="RAW_DIR", out_dir=out_dir))
    with open(path, newline="", encoding="utf-8") as f:
        return [_decode(raw) for raw in csv.DictReader(f)]


def ok_rows(rows: Iterable[ManifestRow], split: str | None = None) -> list[ManifestRow]:
    """Rows with a usable crop, optionally only one split."""
    return [r for r in rows if r.status == "ok" and (split is None or r.split == split)]


def read_settings(out_dir: str | os.PathLike) -> dict:
    path = Path(out_dir) / SETTINGS_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def write_settings(out_dir: str | os.PathLike, settings: dict) -> None:
    path = Path(out_dir) / SETTINGS_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
    os.replace(tmp, path)
