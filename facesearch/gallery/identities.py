"""Identities: looking them up, listing, renaming and merging, inside a caller's transaction."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from facesearch.gallery.models import Face, Identity, utcnow
from facesearch.gallery.records import FaceInfo, FaceNotFound, GalleryError, IdentityInfo, IdentityNotFound, NameTaken


MAX_NAME_LENGTH = 200  # characters, after normalisation
UNKNOWN = "unknown"  # what `who` answers for a face below the threshold: no identity may be called so
RESERVED = (UNKNOWN,)  # compared case-insensitively, after NFKC (so "Unknown", "ＵＮＫＮＯＷＮ" too)
_JOINERS = {"\u200c", "\u200d"}  # zero-width (non-)joiners: part of how some scripts write names


def clean_name(name: str, what: str = "identity name") -> str:
    """An identity name as the gallery stores it: Unicode NFC (so "Zoë" typed two ways is one person), without
    surrounding white space. Raises GalleryError for an empty name, one over ``MAX_NAME_LENGTH`` characters, or
    one holding control or invisible formatting characters. ``what``: the kind of name, for the message."""
    if not isinstance(name, str):
        raise GalleryError(f"{what} {name!r}: not text")
    cleaned = unicodedata.normalize("NFC", name).strip()
    if not cleaned:
        raise GalleryError(f"{what} {name!r}: empty")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise GalleryError(f"{what} {cleaned[:40]!r}...: {len(cleaned)} characters, more than the "
                           f"{MAX_NAME_LENGTH} allowed")
    bad = sorted({c for c in cleaned if unicodedata.category(c).startswith("C") and c not in _JOINERS})
    if bad:
        codes = ", ".join(f"U+{ord(c):04X}" for c in bad)
        raise GalleryError(f"{what} {cleaned!r}: holds control or invisible characters ({codes})")
    return cleaned


def new_name(name: str) -> str:
    """``clean_name`` for a name an identity is about to get (enrolled, created, renamed or merged into): also
    refuses the reserved names, which `who` prints for faces it cannot name. Lookups use ``clean_name`` alone, so
    an identity named so by an earlier facesearch can still be renamed or removed."""
    cleaned = clean_name(name)
    if unicodedata.normalize("NFKC", cleaned).casefold() in RESERVED:
        raise GalleryError(f"identity name {cleaned!r}: reserved (`who` answers {UNKNOWN!r} for a face it cannot "
                           "name, so no person may be called so); choose another name")
    return cleaned


def find(s: Session, name: str, folder: Path) -> Identity:
    """The identity called ``name``; raises IdentityNotFound."""
    ident = s.scalar(sa.select(Identity).where(Identity.name == name))
    if ident is None:
        raise IdentityNotFound(f"no identity named {name!r} in {folder}")
    return ident


def create(s: Session, name: str) -> None:
    """A new identity with no faces yet (faces are added by enrolling photos under its name)."""
    if s.scalar(sa.select(Identity.id).where(Identity.name == name)) is not None:
        raise NameTaken(f"an identity named {name!r} exists already")
    s.add(Identity(name=name))


def find_face(s: Session, face_id: int, folder: Path) -> Face:
    """The face with this id; raises FaceNotFound."""
    face = s.get(Face, face_id)
    if face is None:
        raise FaceNotFound(f"no face with id {face_id} in {folder}")
    return face


def list_all(s: Session, offset: int = 0, limit: int | None = None) -> list[IdentityInfo]:
    """Every identity with its number of faces, by name; ``limit`` of them from ``offset`` on (None: all)."""
    n_faces = sa.func.count(Face.id)
    query = (sa.select(Identity, n_faces).outerjoin(Face).group_by(Identity.id).order_by(Identity.name)
             .offset(offset).limit(limit))
    return [IdentityInfo(i.name, n, i.created_at, i.updated_at) for i, n in s.execute(query)]


def list_faces(s: Session, folder: Path, offset: int = 0, limit: int | None = None) -> list[FaceInfo]:
    """Every face (no embeddings), by id; ``limit`` of them from ``offset`` on (None: all)."""
    query = sa.select(Face, Identity.name).join(Identity).order_by(Face.id).offset(offset).limit(limit)
    return [face_info(folder, f, name) for f, name in s.execute(query)]


def describe(s: Session, name: str, folder: Path) -> IdentityInfo:
    """One identity with its faces."""
    ident = find(s, name, folder)
    faces = s.scalars(sa.select(Face).where(Face.identity_id == ident.id).order_by(Face.id)).all()
    infos = [face_info(folder, f, name) for f in faces]
    return IdentityInfo(ident.name, len(infos), ident.created_at, ident.updated_at, infos)


def face_info(folder: Path, f: Face, name: str) -> FaceInfo:
    crop = folder / f.crop_path if f.crop_path else None
    return FaceInfo(f.id, name, f.source_path, f.source_sha256, crop, f.box, f.landmarks, f.det_prob, f.created_at)


def rename(s: Session, old: str, new: str, folder: Path) -> None:
    """Rename an identity (the index is keyed by face, so it does not change)."""
    ident = find(s, old, folder)
    if old != new and s.scalar(sa.select(Identity.id).where(Identity.name == new)) is not None:
        raise NameTaken(f"an identity named {new!r} exists already; merge into it instead")
    ident.name = new


def merge(s: Session, source: str, target: str, folder: Path, create: bool = False) -> int:
    """Move every face of ``source`` to ``target``, delete ``source``; faces moved. A missing ``target`` is
    created only when ``create`` (else a typo would silently make a new person)."""
    if source == target:
        raise GalleryError("cannot merge an identity into itself")
    src = find(s, source, folder)
    dst = s.scalar(sa.select(Identity).where(Identity.name == target))
    if dst is None and not create:
        raise IdentityNotFound(f"no identity named {target!r} in {folder} to merge into; rename {source!r} "
                               "instead, or ask for the merge to create it")
    dst = dst or Identity(name=target)
    s.add(dst)
    s.flush()
    moved = s.execute(sa.update(Face).where(Face.identity_id == src.id).values(identity_id=dst.id))
    dst.updated_at = utcnow()
    s.delete(src)
    return moved.rowcount
