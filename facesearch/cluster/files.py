"""The clusters folder's files: what ``load`` reads and ``save`` writes (each file replaced whole, never half
written), and the face crops the run keeps.

``save`` writes the two data files first and clusters.json last, naming the digests of the data files it goes
with; ``load`` reads them back only as a matching set, so a reader that runs beside a save (the pages follow a
clustering while it writes) reads the old set or the new one, never faces.csv of one and embeddings.npy of the
other: it reads again for a moment until the save has finished.

    CLUSTERS/faces.csv        one row per face (``FaceRow``)
    CLUSTERS/embeddings.npy   (faces, d) float32, in faces.csv order
    CLUSTERS/clusters.json    the model, the settings, and per group its name
    CLUSTERS/crops/<id>.jpg   each face as the model saw it
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from facesearch.cluster.grouping import ClusterError, Clusters, ClusterSettings, FaceRow
from facesearch.errors import Remedy

FACES_NAME, EMBEDDINGS_NAME, STATE_NAME = "faces.csv", "embeddings.npy", "clusters.json"
CROPS_DIR = "crops"


def load(folder: str | os.PathLike, wait: float = 2.0) -> Clusters:
    """A clusters folder written by ``cluster_folder``; a save under way is waited for up to ``wait`` seconds."""
    folder = Path(folder)
    state_path = folder / STATE_NAME
    if not state_path.is_file():
        raise ClusterError(f"{folder}: not a clusters folder (no {STATE_NAME}); cluster photos into it first",
                           remedy=Remedy.run("cluster", photos="PHOTOS", out=folder))
    deadline = time.monotonic() + wait
    while True:
        try:
            state, rows, vectors, matched = _read(folder)
        except (OSError, ValueError, KeyError) as e:
            raise ClusterError(f"{folder}: damaged clusters folder ({e}); cluster the photos again into a new folder",
                               remedy=Remedy.run("cluster")) from None
        if matched or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # a save is between its renames: the set is whole again in milliseconds
    if not matched:
        raise ClusterError(f"{folder}: {FACES_NAME} and {EMBEDDINGS_NAME} are not one save's ({len(rows)} faces, "
                           f"{len(vectors)} embeddings: changed by hand, or a save cut short); cluster the photos "
                           "again into a new folder",
                           remedy=Remedy.run("cluster"))
    return Clusters(folder, rows, vectors, state["model"], ClusterSettings(**state["settings"]),
                    {int(k): v for k, v in state.get("names", {}).items()}, int(state.get("next_group", 0)))


def _read(folder: Path) -> tuple[dict, list[FaceRow], np.ndarray, bool]:
    """The three files as they are now, and whether they are one save's (digests recorded; folders written
    before digests were: the counts agree)."""
    state = json.loads((folder / STATE_NAME).read_text())
    faces_bytes = (folder / FACES_NAME).read_bytes()
    rows = [_row(d) for d in csv.DictReader(io.StringIO(faces_bytes.decode(), newline=""))]
    vectors_bytes = (folder / EMBEDDINGS_NAME).read_bytes() if rows or "digests" in state else b""
    vectors = np.load(io.BytesIO(vectors_bytes), allow_pickle=False) if rows else np.empty((0, 0), np.float32)
    digests = state.get("digests")
    if digests is not None:
        matched = digests == {FACES_NAME: _digest(faces_bytes), EMBEDDINGS_NAME: _digest(vectors_bytes)}
    else:
        matched = len(vectors) == len(rows)
    return state, rows, vectors, matched


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def save(c: Clusters) -> None:
    """Write the folder: each file to a temp name, then renamed (a crash leaves the old or the new one), the data
    files first and clusters.json, which names their digests, last."""
    c.folder.mkdir(parents=True, exist_ok=True)
    vectors = io.BytesIO()
    np.save(vectors, c.vectors.astype(np.float32), allow_pickle=False)
    faces = io.StringIO(newline="")
    w = csv.DictWriter(faces, fieldnames=[k for k in asdict(c.rows[0])] if c.rows else list(FaceRow.__annotations__))
    w.writeheader()
    for r in c.rows:
        d = asdict(r)
        d["box"] = json.dumps(d["box"])
        d["distance"] = "" if r.distance is None else f"{r.distance:.4f}"
        w.writerow(d)
    faces_bytes, vectors_bytes = faces.getvalue().encode(), vectors.getvalue()
    state = {"model": c.model, "settings": asdict(c.settings), "names": {str(g): n for g, n in c.names.items()},
             "next_group": c.next_group,
             "digests": {FACES_NAME: _digest(faces_bytes), EMBEDDINGS_NAME: _digest(vectors_bytes)}}
    _atomic(c.folder / FACES_NAME, faces_bytes)
    _atomic(c.folder / EMBEDDINGS_NAME, vectors_bytes)
    _atomic(c.folder / STATE_NAME, json.dumps(state, indent=1).encode())


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _row(d: dict) -> FaceRow:
    return FaceRow(face_id=int(d["face_id"]), photo=d["photo"], sha256=d["sha256"], box=json.loads(d["box"]),
                   det_prob=float(d["det_prob"]), n_faces=int(d["n_faces"]), group=int(d["group"]),
                   distance=float(d["distance"]) if d["distance"] else None, identity=d.get("identity", ""),
                   pinned=d.get("pinned", ""))

def crop_path(folder: Path, face_id: int) -> Path:
    """Where a clusters folder keeps a face's crop."""
    return folder / CROPS_DIR / f"{face_id}.jpg"


def load_crop(c: Clusters, r: FaceRow):
    """A face's crop as the model saw it (PIL), or None when it is gone."""
    from facesearch.data.images import ImageError, load_image

    try:
        return load_image(crop_path(c.folder, r.face_id), min_side=1)
    except ImageError:  # load_image turns every OSError into one
        return None
