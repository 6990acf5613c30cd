"""The gallery: identities and faces in SQL (the source of truth), their embeddings indexed by a vector store.

``Gallery`` (store.py) ties the two with transactions (``transactions``); ``models`` is the schema, ``db`` the
engine and migrations, ``opening`` what is checked when a gallery is opened, ``lock`` the folder lock, ``binding``
which database a folder belongs to; ``faces`` adds faces (model claim, rows, crop files), ``embeddings`` encodes and
reads their vectors, ``files`` keeps the crops and uploaded photos, ``identities`` looks them up, renames and merges,
``hits`` turns a store's nearest faces into search hits; ``vectors`` holds the two vector stores (a FAISS index
file, or pgvector in PostgreSQL) behind one protocol, ``digest`` ties an index to the database's vectors, ``check``
compares everything with SQL; ``enroll`` turns photos into faces; ``keys`` holds the API keys of ``facesearch
serve``; ``records`` holds what goes in and out.
"""

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
from facesearch.gallery.vectors import VectorSettings
from facesearch.gallery.vectors.index import FaceIndex, IndexSettings
from facesearch.gallery.vectors.pgvector_sql import PgvectorSettings

__all__ = [
    "DEFAULT_THRESHOLD", "AddResult", "CheckReport", "FaceHit", "FaceIndex", "FaceInfo", "FaceNotFound", "Gallery", "GalleryError",
    "IdentityInfo", "IdentityNotFound", "IndexSettings", "ModelMismatchError", "NewFace", "PgvectorSettings",
    "VectorSettings",
]
