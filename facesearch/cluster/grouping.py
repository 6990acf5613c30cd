"""The clustering itself, on embeddings in memory: grouping faces by person (``group_faces``, scikit-learn's
density and linkage clustering, chosen by ``bench/cluster.py``: docs/BENCHMARKS.md), keeping the groups' ids and
names from one run to the next (``regroup``), and a person's edits (``merge``, ``remove``, ``split``).

Nothing here reads or writes files: ``facesearch.cluster.files`` does, ``facesearch.cluster.sheets`` draws.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from facesearch.errors import BadInput, FacesearchError, NotFound

UNCLUSTERED = -1
SHEETS_DIR = "sheets"  # a clusters folder's contact sheets: sheets/group-<g>.png (facesearch.cluster.sheets)
ALGORITHMS = ("complete", "average", "dbscan")  # complete/average: agglomerative linkage


class ClusterError(FacesearchError):
    """A clusters folder or request that cannot be used; the message says why and what to do."""


class ClusterNotFound(ClusterError, NotFound):
    """A group, or the clusters folder, that is not there."""


@dataclass(frozen=True)
class ClusterSettings:
    """How faces are grouped. ``eps`` is a cosine distance (1 - cosine similarity): two faces closer than it are
    neighbours; a group needs ``min_size`` faces. Defaults chosen by ``bench/cluster.py`` (docs/BENCHMARKS.md)."""

    algorithm: str = "complete"
    eps: float = 0.3
    min_size: int = 3
    # Centre the folder's embeddings on their own mean first: faces of one photo collection share a common
    # component (lighting, camera, age of the photos) that crowds every cosine up; the model's training mean
    # does not remove it for photos unlike its training set.
    centre: bool = True

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise BadInput(f"algorithm must be one of {ALGORITHMS}, not {self.algorithm!r}")
        if not 0 < self.eps < 2:
            raise BadInput(f"{self.eps}: a cosine distance between 0 and 2", param="eps")
        if self.min_size < 2:
            raise BadInput(f"{self.min_size}: a group holds at least 2 faces", param="min_size")


def group_faces(vectors: np.ndarray, settings: ClusterSettings = ClusterSettings()) -> np.ndarray:
    """Group L2-normalised embeddings (n, d): a label per face, ``UNCLUSTERED`` (-1) for faces in no group."""
    n = len(vectors)
    if n < settings.min_size:
        return np.full(n, UNCLUSTERED, dtype=np.int64)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if settings.centre:
        x = x - x.mean(0)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if settings.algorithm == "dbscan":
        from sklearn.cluster import DBSCAN

        labels = DBSCAN(eps=settings.eps, min_samples=settings.min_size, metric="cosine",
                        algorithm="brute", n_jobs=1).fit_predict(x)
    else:
        from sklearn.cluster import AgglomerativeClustering

        # complete linkage: every two faces of a group are within eps (precise); average: their mean distance is
        labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage=settings.algorithm,
                                         distance_threshold=settings.eps).fit_predict(x)
        sizes = np.bincount(labels)
        labels = np.where(sizes[labels] >= settings.min_size, labels, UNCLUSTERED)
    return _renumber(np.asarray(labels, dtype=np.int64))


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Groups numbered 0.. by size (largest first), -1 kept."""
    kept = labels[labels >= 0]
    order = [g for g, _ in Counter(kept.tolist()).most_common()]
    mapping = {g: i for i, g in enumerate(order)}
    return np.array([mapping.get(int(v), UNCLUSTERED) for v in labels], dtype=np.int64)



# --- the faces and their groups ----------------------------------------------------------------------------------


@dataclass
class FaceRow:
    face_id: int
    photo: str  # absolute path
    sha256: str  # the photo's content
    box: list[float]
    det_prob: float
    n_faces: int  # faces found in the photo
    group: int = UNCLUSTERED
    distance: float | None = None  # cosine distance to the group's centre
    identity: str = ""  # the gallery identity it matches (above the gallery's threshold), if one was given
    pinned: str = ""  # "" (the algorithm's), "in" (a person placed it in its group), "out" (taken out)

    @property
    def key(self) -> str:
        """What enrolling dedupes on: the photo's hash, plus the face for a photo of several faces."""
        return self.sha256 if self.n_faces == 1 else f"{self.sha256}#{self.face_id}"


@dataclass
class Clusters:
    """A clusters folder in memory: the faces, their embeddings and the groups' names."""

    folder: Path
    rows: list[FaceRow]
    vectors: np.ndarray  # (len(rows), d)
    model: dict  # {"fingerprint", "source"}
    settings: ClusterSettings
    names: dict[int, str] = field(default_factory=dict)  # group -> name
    next_group: int = 0

    def groups(self) -> dict[int, list[FaceRow]]:
        """Group id -> its faces, closest to the centre first (unclustered faces left out)."""
        out: dict[int, list[FaceRow]] = {}
        for r in self.rows:
            if r.group != UNCLUSTERED:
                out.setdefault(r.group, []).append(r)
        return {g: sorted(rs, key=lambda r: (r.distance is None, r.distance or 0.0)) for g, rs in sorted(out.items())}

    def summary(self) -> dict:
        groups = self.groups()
        return {
            "folder": str(self.folder), "faces": len(self.rows), "photos": len({r.photo for r in self.rows}),
            "groups": len(groups), "unclustered": sum(r.group == UNCLUSTERED for r in self.rows),
            "model": self.model, "settings": asdict(self.settings),
            "group_list": [{"group": g, "name": self.names.get(g), "faces": len(rs),
                            "identity": _majority([r.identity for r in rs]),
                            "sheet": str(self.folder / SHEETS_DIR / f"group-{g}.png")} for g, rs in groups.items()],
        }


def regroup(c: Clusters, previous: dict[int, int] | None = None) -> None:
    """Cluster the faces again and give each group the id of the earlier group whose faces it holds most of
    (``previous``: face id -> group; people's placements count first), so names stay; new groups get new ids.
    A face a person placed in a group stays there; one taken out stays out."""
    previous = previous if previous is not None else {r.face_id: r.group for r in c.rows}
    used = [i for i, r in enumerate(c.rows) if r.pinned != "out"]
    labels = np.full(len(c.rows), UNCLUSTERED, dtype=np.int64)
    if used:
        labels[used] = group_faces(c.vectors[used], c.settings)
    votes: Counter = Counter()
    for i, r in enumerate(c.rows):
        if labels[i] == UNCLUSTERED:
            continue
        if r.pinned == "in":
            votes[(int(labels[i]), r.group)] += len(c.rows)  # a person's placement outweighs any overlap
        elif previous.get(r.face_id, UNCLUSTERED) != UNCLUSTERED:
            votes[(int(labels[i]), previous[r.face_id])] += 1
    assigned: dict[int, int] = {}
    taken: set[int] = set()
    for (new, old_id), _ in votes.most_common():
        if new not in assigned and old_id not in taken:
            assigned[new] = old_id
            taken.add(old_id)
    c.next_group = max([c.next_group, *[g + 1 for g in previous.values()], *[r.group + 1 for r in c.rows]])
    for new in sorted({int(v) for v in labels if v != UNCLUSTERED}):
        if new not in assigned:
            assigned[new] = c.next_group
            c.next_group += 1
    for i, r in enumerate(c.rows):
        if r.pinned != "in":
            r.group = assigned[int(labels[i])] if labels[i] != UNCLUSTERED else UNCLUSTERED
    _distances(c)
    live = {r.group for r in c.rows}
    c.names = {g: n for g, n in c.names.items() if g in live}


def _distances(c: Clusters) -> None:
    """Each face's cosine distance to its group's (normalised) mean; None for unclustered faces."""
    by_group: dict[int, list[int]] = {}
    for i, r in enumerate(c.rows):  # one pass over the faces, not one per group
        if r.group == UNCLUSTERED:
            r.distance = None
        else:
            by_group.setdefault(r.group, []).append(i)
    for idx in by_group.values():
        centre = c.vectors[idx].mean(0)
        centre /= max(np.linalg.norm(centre), 1e-12)
        for i, d in zip(idx, (1 - c.vectors[idx] @ centre).tolist()):
            c.rows[i].distance = round(float(d), 4)


def _majority(values: list[str]) -> str | None:
    named = [v for v in values if v]
    return Counter(named).most_common(1)[0][0] if named else None


# --- edits ------------------------------------------------------------------------------------------------------


def group_of(c: Clusters, group: int) -> list[FaceRow]:
    """The faces of one group; ClusterError when there is no such group."""
    members = [r for r in c.rows if r.group == group]
    if not members:
        raise ClusterNotFound(f"{c.folder}: no group {group} (groups: {', '.join(map(str, c.groups())) or 'none'})")
    return members


def merge(c: Clusters, target: int, sources: Sequence[int]) -> int:
    """Move every face of the ``sources`` groups into ``target``; they stay there on later runs. Faces moved."""
    group_of(c, target)
    moved = 0
    for source in sources:
        if source == target:
            raise ClusterError(f"cannot merge group {target} into itself")
        for r in group_of(c, source):
            r.group, r.pinned = target, "in"
            moved += 1
        c.names.pop(source, None)
    for r in group_of(c, target):
        r.pinned = "in"
    _distances(c)
    return moved


def remove(c: Clusters, face_ids: Sequence[int]) -> int:
    """Take faces out of their groups (they stay unclustered on later runs). Faces removed."""
    wanted = {int(i) for i in face_ids}
    unknown = wanted - {r.face_id for r in c.rows}
    if unknown:
        raise ClusterError(f"{c.folder}: no face {', '.join(map(str, sorted(unknown)))}")
    for r in c.rows:
        if r.face_id in wanted:
            r.group, r.pinned, r.distance = UNCLUSTERED, "out", None
    _distances(c)
    return len(wanted)


def split(c: Clusters, group: int, eps: float | None = None) -> list[int]:
    """Cluster one group again, tighter (``eps``: default half the folder's): its parts become groups of their own
    (the largest keeps the id and name). Returns the group ids it became."""
    members = [i for i, r in enumerate(c.rows) if r.group == group]
    group_of(c, group)
    tighter = replace(c.settings, eps=eps if eps is not None else c.settings.eps / 2)
    labels = group_faces(c.vectors[members], tighter)
    ids: dict[int, int] = {}
    for i, label in zip(members, labels.tolist()):
        if label == UNCLUSTERED:  # fits none of the tighter parts: the algorithm's to place again on later runs
            c.rows[i].group, c.rows[i].pinned = UNCLUSTERED, ""
            continue
        if label not in ids:
            ids[label] = group if label == 0 else c.next_group
            if label != 0:
                c.next_group += 1
        c.rows[i].group = ids[label]
        c.rows[i].pinned = "in"
    _distances(c)
    return sorted(ids.values())


