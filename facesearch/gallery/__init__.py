"""The gallery: identities and faces in SQL (the source of truth), their embeddings in a FAISS index.

``Gallery`` (store.py) ties the two with transactions; ``models`` is the schema, ``db`` the engine and
migrations, ``lock`` the folder lock, ``binding`` which database a folder belongs to; ``faces`` adds faces (model
claim, rows, crop files), ``identities`` looks them up, renames and merges, ``hits`` turns index results into
search hits; ``index`` is the FAISS side, ``freshness`` keeps it matching the database (``sync`` diffs and builds
it, ``digest`` ties its vectors to the database's), ``check`` compares them;
``enroll`` turns photos into faces; ``keys`` holds the API keys of ``facesearch serve``; ``records`` holds what
goes in and out.
"""

from facesearch.gallery.index import FaceIndex, IndexSettings
from facesearch.gallery.records import (
    AddResult,
    CheckReport,
    FaceHit,
    FaceNotFound,
    FaceInfo,
    GalleryError,
    IdentityInfo,
    IdentityNotFound,
    ModelMismatchError,
    NewFace,
)
from facesearch.gallery.store import DEFAULT_THRESHOLD, Gallery

__all__ = [
    "DEFAULT_THRESHOLD", "AddResult", "CheckReport", "FaceHit", "FaceIndex", "FaceInfo", "FaceNotFound", "Gallery", "GalleryError",
    "IdentityInfo", "IdentityNotFound", "IndexSettings", "ModelMismatchError", "NewFace",
]
