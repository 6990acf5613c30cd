"""What the gallery takes and returns: plain frozen dataclasses, and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facesearch.errors import Conflict, FacesearchError, ModelMismatch, NotFound, ReadOnly


class GalleryError(FacesearchError):
    """A gallery operation failed for a reason the user can act on (message says which)."""


class ModelMismatchError(GalleryError, ModelMismatch):
    """The checkpoint is not the model whose embeddings the gallery holds."""


class IdentityNotFound(GalleryError, NotFound):
    pass


class FaceNotFound(GalleryError, NotFound):
    pass


class NameTaken(GalleryError, Conflict):
    """An identity or API key name already in use."""


class GalleryReadOnly(GalleryError, ReadOnly):
    """A change asked of a gallery opened read-only."""


@dataclass(frozen=True)
class NewFace:
    """One face to enroll: its embedding and where it came from."""

    name: str  # identity (the gallery stores it NFC-normalised and trimmed: identities.clean_name)
    embedding: np.ndarray  # (d,) float32, L2-normalised
    source_path: str | None = None
    source_sha256: str | None = None  # content hash of the photo: the same photo is enrolled once
    box: Sequence[float] | None = None  # x1, y1, x2, y2 in photo pixels
    landmarks: Sequence[Sequence[float]] | None = None  # (5, 2)
    det_prob: float | None = None
    crop: Any = None  # PIL image stored as crops/<id>.jpg, or None


@dataclass(frozen=True)
class AddResult:
    ids: list[int]  # new face ids, in input order (skipped faces left out)
    duplicates: list[tuple[int, str]]  # (input position, identity already holding that photo)


@dataclass(frozen=True)
class FaceHit:
    face_id: int
    identity: str
    similarity: float  # cosine similarity to the query
    crop_path: Path | None
    source_path: str | None


@dataclass(frozen=True)
class FaceInfo:
    id: int
    identity: str
    source_path: str | None
    source_sha256: str | None
    crop_path: Path | None
    box: list[float] | None
    landmarks: list[list[float]] | None
    det_prob: float | None
    created_at: datetime


@dataclass(frozen=True)
class IdentityInfo:
    name: str
    n_faces: int
    created_at: datetime
    updated_at: datetime
    faces: list[FaceInfo] = field(default_factory=list)  # filled by Gallery.identity()


@dataclass(frozen=True)
class StoredThreshold:
    """The threshold a gallery stores, and where it came from."""

    value: float
    # "calibrated" (measured on photos: `facesearch calibrate`), "manual" (set by hand), or "stored" (stored by an
    # earlier facesearch that did not record how it was set)
    source: str
    meta: dict[str, Any]  # how it was obtained (a calibration's figures; who set it by hand, when)


@dataclass(frozen=True)
class Page:
    """A slice of a list kept in SQL: how many there are in all, and the rows of the slice."""

    total: int
    items: list


@dataclass(frozen=True)
class CheckReport:
    problems: list[str]  # empty: consistent
    details: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not self.problems
