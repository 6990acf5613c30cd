"""Search hits: the index's nearest face ids → ``FaceHit`` rows, with exact cosines when the index approximates."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from facesearch.gallery.embeddings import decode_embeddings
from facesearch.gallery.files import inside_lexically
from facesearch.gallery.models import Face, Identity
from facesearch.gallery.records import FaceHit


class HitRow(NamedTuple):
    name: str
    crop_path: str | None
    source_path: str | None
    embedding: bytes | None  # fetched only to re-score an approximate index's hits


def hit_columns(with_embeddings: bool) -> tuple:
    """A hit's columns: the face id, then HitRow's fields (faces joined to identities)."""
    return (Face.id, Identity.name, Face.crop_path, Face.source_path,
            Face.embedding if with_embeddings else sa.null())


def hit_rows(s: Session, ids: np.ndarray, with_embeddings: bool) -> dict[int, HitRow]:
    """The rows of the faces ``ids`` (one query), keyed by face id."""
    query = sa.select(*hit_columns(with_embeddings)).join(Identity).where(Face.id.in_([int(i) for i in ids]))
    return {row[0]: HitRow(*row[1:]) for row in s.execute(query)}


def identity_hits(s: Session, folder: Path, identity_id: int, query: np.ndarray) -> list[FaceHit]:
    """Every face of one identity scored against ``query`` ((d,) float32, unit), best first: exact cosines from the
    stored embeddings, not the vector store's (an approximate index's top k may leave out some of them)."""
    query_rows = sa.select(*hit_columns(True)).join(Identity).where(Face.identity_id == identity_id)
    rows = {row[0]: HitRow(*row[1:]) for row in s.execute(query_rows)}
    ids = np.fromiter(rows, dtype=np.int64, count=len(rows))
    return ranked_hits(folder, query, np.zeros(len(ids), np.float32), ids, rows, exact=False)


def ranked_hits(folder: Path, query: np.ndarray, sims: np.ndarray, ids: np.ndarray, rows: dict[int, HitRow],
                exact: bool) -> list[FaceHit]:
    """One query's hits, best first. ``exact``: the index's similarities are exact cosines; otherwise they are
    recomputed from the stored embeddings. ``rows`` lacks the -1 padding and faces deleted since the search."""
    found = [(float(sim), int(i), rows[int(i)]) for sim, i in zip(sims, ids) if int(i) in rows]
    if found and not exact:
        stored = decode_embeddings([row.embedding for _, _, row in found], len(query))
        cosines = (stored @ query).tolist()
        found = [(cos, i, row) for cos, (_, i, row) in zip(cosines, found)]
    hits = [FaceHit(i, row.name, sim, inside_lexically(folder, row.crop_path), row.source_path) for sim, i, row in found]
    return sorted(hits, key=lambda h: -h.similarity)
