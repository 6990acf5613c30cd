"""API keys for ``facesearch serve``, kept in the gallery's database: created, listed, revoked, checked.

A key is ``fs_`` + 32 random bytes (URL-safe base64); only its SHA-256 digest is stored, so a copy of the
database does not hand out access. Read-only keys may recognize and read; only full keys change the gallery.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from facesearch.gallery.models import ApiKey, utcnow
from facesearch.gallery.records import GalleryError, NameTaken

PREFIX = "fs_"


@dataclass(frozen=True)
class KeyInfo:
    name: str
    read_only: bool
    created_at: datetime


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create(s: Session, name: str, read_only: bool) -> str:
    """Store a new key under ``name`` (unique); returns the key, which is not stored and cannot be shown again."""
    if s.scalar(sa.select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise NameTaken(f"an API key named {name!r} exists already; revoke it first or choose another name")
    key = PREFIX + secrets.token_urlsafe(32)
    s.add(ApiKey(name=name, digest=digest(key), read_only=read_only, created_at=utcnow()))
    return key


def list_all(s: Session) -> list[KeyInfo]:
    rows = s.scalars(sa.select(ApiKey).order_by(ApiKey.name)).all()
    return [KeyInfo(k.name, k.read_only, k.created_at) for k in rows]


def revoke(s: Session, name: str) -> None:
    if s.execute(sa.delete(ApiKey).where(ApiKey.name == name)).rowcount == 0:
        raise GalleryError(f"no API key named {name!r}")


def lookup(s: Session, key: str) -> KeyInfo | None:
    """The key's record, or None for a key this gallery does not know (or a revoked one)."""
    if not key.startswith(PREFIX):
        return None
    row = s.scalar(sa.select(ApiKey).where(ApiKey.digest == digest(key)))
    return None if row is None else KeyInfo(row.name, row.read_only, row.created_at)
