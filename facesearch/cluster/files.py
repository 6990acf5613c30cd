"""The clusters folder's files: what ``load`` reads and ``save`` writes (each file replaced whole, never half
written), and the face crops the run keeps.

    CLUSTERS/faces.csv        one row per face (``FaceRow``)
    CLUSTERS/embeddings.npy   (faces, d) float32, in faces.csv order
    CLUSTERS/clusters.json    the model, the settings, and per group its name
    CLUSTERS/crops/<id>.jpg   each face as the model saw it
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from facesearch.cluster.grouping import ClusterError, Clusters, ClusterSettings, FaceRow
from facesearch.errors import Remedy

FACES_NAME, EMBEDDINGS_NAME, STATE_NAME = "faces.csv", "embeddings.npy", "clusters.json"
CROPS_DIR = "crops"


def load(folder: str | os.PathLike) -> Clusters:
    """A clusters folder written by ``cluster_folder``."""
    folder = Path(folder)
    state_path = folder / STATE_NAME
    if not state_path.is_file():
        raise ClusterError(f"{folder}: not a clusters folder (no {STATE_NAME}); cluster photos into it first",
                           remedy=Remedy.run("cluster", photos="PHOTOS", out=folder))
    try:
        state = json.loads(state_path.read_text())
        with open(folder / FACES_NAME, newline="") as f:
            rows = [_row(d) for d in csv.DictReader(f)]
        vectors = np.load(folder / EMBEDDINGS_NAME) if rows else np.empty((0, 0), np.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ClusterError(f"{folder}: damaged clusters folder ({e}); cluster the photos again into a new folder",
                           remedy=Remedy.run("cluster")) from None
    if len(vectors) != len(rows):
        raise ClusterError(f"{folder}: {FACES_NAME} and {EMBEDDINGS_NAME} disagree ({len(rows)} faces, "
                           f"{len(vectors)} embeddings); cluster the photos again into a new folder",
                           remedy=Remedy.run("cluster"))
    return Clusters(folder, rows, vectors, state["model"], ClusterSettings(**state["settings"]),
                    {int(k): v for k, v in state.get("names", {}).items()}, int(state.get("next_group", 0)))


def save(c: Clusters) -> None:
    """Write the folder (each file to a temp name, then renamed: a crash leaves the old or the new one)."""
    c.folder.mkdir(parents=True, exist_ok=True)
    state = {"model": c.model, "settings": asdict(c.settings), "names": {str(g): n for g, n in c.names.items()},
             "next_group": c.next_group}
    _atomic(c.folder / STATE_NAME, lambda p: p.write_text(json.dumps(state, indent=1)))
    _atomic(c.folder / EMBEDDINGS_NAME, lambda p: np.save(p, c.vectors.astype(np.float32), allow_pickle=False),
            suffix=".npy")

    def write_rows(path: Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[k for k in asdict(c.rows[0])] if c.rows else list(FaceRow.__annotations__))
            w.writeheader()
            for r in c.rows:
                d = asdict(r)
                d["box"] = json.dumps(d["box"])
                d["distance"] = "" if r.distance is None else f"{r.distance:.4f}"
                w.writerow(d)

    _atomic(c.folder / FACES_NAME, write_rows)


def _atomic(path: Path, write: Callable[[Path], None], suffix: str = "") -> None:
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    write(tmp)
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
