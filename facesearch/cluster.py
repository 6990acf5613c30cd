"""Name the people in unlabelled photos: every face of a folder found, embedded and grouped by person.

``cluster_folder`` finds every face of every photo with the face finder and embedder ``who`` uses
(``Embedder.for_queries``), groups the embeddings with scikit-learn's density clustering (``group_faces``:
the algorithm and its settings were chosen by ``bench/cluster.py``, see docs/BENCHMARKS.md), and keeps the
result in a folder that later runs and edits build on::

    CLUSTERS/faces.csv        one row per face: face id, photo, content hash, box, group, distance to the group's
                              centre, the gallery identity it matches, and whether a person placed it
    CLUSTERS/embeddings.npy   (faces, d) float32, in faces.csv order
    CLUSTERS/clusters.json    the model, the settings, and per group its name and size
    CLUSTERS/crops/<id>.jpg   each face as the model saw it; CLUSTERS/sheets/group-<g>.png a contact sheet per group

Faces that fit no group are unclustered (group -1), never forced into one. Re-running over the folder embeds
only new photos, clusters everything again and gives each new group the id (and name) of the old group whose
faces it holds most of, so names survive. Edits by a person are kept over later runs: a face moved into a
group (``merge``) stays there, a face taken out (``remove``) stays out. One clusters folder holds one photo
collection: a run that would drop the faces of photos still on disk but not given (another folder clustered into
the same CLUSTERS) is refused; photos deleted since go, photos moved are found again by their content.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facesearch.errors import BadInput, FacesearchError, NotFound

log = logging.getLogger(__name__)

FACES_NAME, EMBEDDINGS_NAME, STATE_NAME = "faces.csv", "embeddings.npy", "clusters.json"
UNCLUSTERED = -1
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


# --- the clusters folder -------------------------------------------------------------------------------------


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
                            "sheet": str(self.folder / "sheets" / f"group-{g}.png")} for g, rs in groups.items()],
        }


def load(folder: str | os.PathLike) -> Clusters:
    """A clusters folder written by ``cluster_folder``."""
    folder = Path(folder)
    state_path = folder / STATE_NAME
    if not state_path.is_file():
        raise ClusterError(f"{folder}: not a clusters folder (no {STATE_NAME}); run `facesearch cluster PHOTOS "
                           f"--out {folder}` first")
    try:
        state = json.loads(state_path.read_text())
        with open(folder / FACES_NAME, newline="") as f:
            rows = [_row(d) for d in csv.DictReader(f)]
        vectors = np.load(folder / EMBEDDINGS_NAME) if rows else np.empty((0, 0), np.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ClusterError(f"{folder}: damaged clusters folder ({e}); run `facesearch cluster` again into a new "
                           "folder") from None
    if len(vectors) != len(rows):
        raise ClusterError(f"{folder}: {FACES_NAME} and {EMBEDDINGS_NAME} disagree ({len(rows)} faces, "
                           f"{len(vectors)} embeddings); run `facesearch cluster` again into a new folder")
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


def edit(folder: str | os.PathLike, change: Callable[[Clusters], object]) -> tuple[object, Clusters]:
    """Load a clusters folder, apply ``change`` (name, merge, split, remove), save it and redraw its contact
    sheets; returns what ``change`` returned and the folder as it is now."""
    c = load(folder)
    result = change(c)
    save(c)
    draw_sheets(c)
    return result, c


def _atomic(path: Path, write: Callable[[Path], None], suffix: str = "") -> None:
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    write(tmp)
    os.replace(tmp, path)


def _row(d: dict) -> FaceRow:
    return FaceRow(face_id=int(d["face_id"]), photo=d["photo"], sha256=d["sha256"], box=json.loads(d["box"]),
                   det_prob=float(d["det_prob"]), n_faces=int(d["n_faces"]), group=int(d["group"]),
                   distance=float(d["distance"]) if d["distance"] else None, identity=d.get("identity", ""),
                   pinned=d.get("pinned", ""))


# --- clustering a folder -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterReport:
    """What ``cluster_folder`` did. When no photo gave a face nothing was written (an earlier run's folder is as
    it was) and ``clusters`` holds no faces."""

    clusters: Clusters
    new_photos: int  # photos detected and embedded this run
    reused_photos: int  # photos whose faces came from the earlier run
    failures: dict[str, str]  # photo -> why it was skipped


def cluster_folder(photos: Sequence[str | os.PathLike], out: str | os.PathLike, embedder,
                   changes: dict | None = None, gallery=None,
                   progress: Callable[[int], None] | None = None) -> ClusterReport:
    """Find, embed and group every face of ``photos``; write (or update) the clusters folder ``out``.

    Args:
        photos: photo files (a folder's, listed by the caller).
        out: the clusters folder; an earlier run's is updated (its groups keep their ids and names).
        embedder: ``Embedder.for_queries(model)``: the same face finder and embedder as ``who``.
        changes: ``ClusterSettings`` fields to change from the earlier run's settings (else from the defaults).
        gallery: label faces that match an enrolled identity above the gallery's threshold.

    Raises:
        ClusterError: ``out`` was clustered with another model, or holds faces of photos still on disk that are not
            among ``photos`` (they, and their groups' names, would be lost).
    """
    from facesearch.data.images import ImageError, file_sha256, load_image

    out = Path(out)
    old = load(out) if (out / STATE_NAME).is_file() else None
    model = {"fingerprint": embedder.fingerprint, "source": embedder.model_source}
    if old is not None and old.model["fingerprint"] != model["fingerprint"]:
        raise ClusterError(f"{out}: clustered with model {old.model['fingerprint']}, not {model['fingerprint']}; "
                           "use that model, or cluster into a new folder")
    settings = replace(old.settings if old else ClusterSettings(), **(changes or {}))
    by_sha: dict[str, list[int]] = {}
    if old is not None:
        for i, r in enumerate(old.rows):
            by_sha.setdefault(r.sha256, []).append(i)
    rows, vectors, failures = [], [], {}
    next_face = 1 + max((r.face_id for r in old.rows), default=0) if old else 1
    fresh: list[tuple[str, str]] = []  # (path, sha) to detect
    seen: set[str] = set()
    given = [str(Path(photo).resolve()) for photo in photos]
    for path in given:
        try:
            sha = file_sha256(path)
        except OSError as e:
            failures[path] = e.strerror or str(e)
            continue
        if sha in seen:
            continue  # the same photo twice: its faces once
        seen.add(sha)
        if sha in by_sha:
            for i in by_sha[sha]:
                rows.append(replace(old.rows[i], photo=path))
                vectors.append(old.vectors[i])
        else:
            fresh.append((path, sha))
    if old is not None:
        _refuse_dropping(old, set(given), seen)
    if progress and len(photos) > len(fresh):
        progress(len(photos) - len(fresh))
    crops_dir = out / "crops"
    step = 16
    for start in range(0, len(fresh), step):
        batch = fresh[start : start + step]
        images = {}
        for path, sha in batch:
            try:
                images[(path, sha)] = load_image(path)
            except ImageError as e:
                failures[path] = f"{e.status}: {e.reason}"
        found = embedder.embed_images(list(images.values()), select="all")
        if any(found):
            crops_dir.mkdir(parents=True, exist_ok=True)
        for (path, sha), faces in zip(images, found):
            if not faces:
                failures[path] = "no_face: no face detected"
            for f in faces:
                row = FaceRow(next_face, path, sha, [round(float(v), 1) for v in f.face.box],
                              round(float(f.face.prob), 4), len(faces))
                f.crop.save(crops_dir / f"{next_face}.jpg", quality=95)
                rows.append(row)
                vectors.append(np.asarray(f.embedding, dtype=np.float32))
                next_face += 1
        if progress:
            progress(len(batch))
    matrix = np.stack(vectors) if vectors else np.empty((0, embedder.dim), np.float32)
    if not rows:  # no photo gave a face: nothing to group, and an earlier run's folder is left as it was
        return ClusterReport(Clusters(out, [], matrix, model, settings), len(fresh), 0, failures)
    clusters = Clusters(out, rows, matrix, model, settings, dict(old.names) if old else {},
                        old.next_group if old else 0)
    regroup(clusters, previous={r.face_id: r.group for r in old.rows} if old else {})
    if gallery is not None:
        _label_with_gallery(clusters, gallery)
    save(clusters)
    draw_sheets(clusters)
    return ClusterReport(clusters, len(fresh), len(seen) - len(fresh), failures)


def _refuse_dropping(old: Clusters, given: set[str], shas: set[str]) -> None:
    """Refuse a run whose photos leave out photos of the earlier run that are still on disk: their faces, and
    the names of their groups, would go (photos given under another path are found by their content)."""
    left = sorted({r.photo for r in old.rows
                   if r.photo not in given and r.sha256 not in shas and os.path.exists(r.photo)})
    if left:
        raise ClusterError(f"{old.folder}: holds the faces of {len(left)} photos in {_folders(left)}, which are not "
                           f"among the photos given ({_folders(given)}); this run would drop them and their groups' "
                           "names. Give those photos too, or cluster into a new --out folder")


def _folders(paths) -> str:
    """The folder that holds ``paths`` (their deepest common one), else the first few of their folders."""
    parents = sorted({os.path.dirname(p) for p in paths})
    common = os.path.commonpath(parents)
    if len(parents) == 1 or os.path.dirname(common) != common:  # a common folder that is not the root
        return common
    return ", ".join(parents[:3]) + (f" and {len(parents) - 3} more" if len(parents) > 3 else "")


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


def _label_with_gallery(c: Clusters, gallery) -> None:
    from facesearch.search import aggregate

    gallery.check_model(c.model["fingerprint"])
    threshold, _ = gallery.threshold()
    hits = gallery.search(c.vectors, k=10) if len(c.vectors) else []
    for r, h in zip(c.rows, hits):
        top = aggregate(h, 1)
        r.identity = top[0].name if top and top[0].similarity >= threshold else ""


def _majority(values: list[str]) -> str | None:
    named = [v for v in values if v]
    return Counter(named).most_common(1)[0][0] if named else None


# --- edits ------------------------------------------------------------------------------------------------------


def _group(c: Clusters, group: int) -> list[FaceRow]:
    members = [r for r in c.rows if r.group == group]
    if not members:
        raise ClusterNotFound(f"{c.folder}: no group {group} (groups: {', '.join(map(str, c.groups())) or 'none'})")
    return members


def merge(c: Clusters, target: int, sources: Sequence[int]) -> int:
    """Move every face of the ``sources`` groups into ``target``; they stay there on later runs. Faces moved."""
    _group(c, target)
    moved = 0
    for source in sources:
        if source == target:
            raise ClusterError(f"cannot merge group {target} into itself")
        for r in _group(c, source):
            r.group, r.pinned = target, "in"
            moved += 1
        c.names.pop(source, None)
    for r in _group(c, target):
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
    _group(c, group)
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


def name_group(c: Clusters, group: int, name: str, gallery) -> dict:
    """Enroll the group's faces in ``gallery`` as ``name`` (a new or an existing identity), each face once.

    A face already enrolled is skipped: as ``name`` it counts as named; as another identity it stays that
    identity's (as `enroll` leaves a photo enrolled under another name). The group takes the name only when some of
    its faces are ``name``'s.

    Returns: {"enrolled", "duplicates" (faces already in the gallery, with their identity), "elsewhere" (identity ->
    the face ids it holds, for faces enrolled as another identity than ``name``)}.
    Raises:
        ClusterError: every face of the group is another identity's already (nothing is changed).
    """
    from facesearch.gallery import NewFace
    from facesearch.gallery.identities import clean_name

    name = clean_name(name)
    members = _group(c, group)
    index = {r.face_id: i for i, r in enumerate(c.rows)}
    faces = [NewFace(name, c.vectors[index[r.face_id]], source_path=r.photo, source_sha256=r.key, box=r.box,
                     det_prob=r.det_prob, crop=_crop(c, r)) for r in members]
    result = gallery.add_faces(faces, c.model["fingerprint"], source=c.model.get("source"))
    duplicates = [(members[i].face_id, holder) for i, holder in result.duplicates]
    elsewhere: dict[str, list[int]] = {}
    for face_id, holder in duplicates:
        if holder != name:
            elsewhere.setdefault(holder, []).append(face_id)
    if sum(map(len, elsewhere.values())) == len(members):
        held = ", ".join(f"{n!r} ({len(ids)} faces)" for n, ids in elsewhere.items())
        raise ClusterError(f"group {group}: none of its {len(members)} faces enrolled as {name!r}: already enrolled "
                           f"as {held}; if they are {name!r}, rename or merge that identity (`facesearch identities "
                           "rename|merge`)")
    c.names[group] = name
    for r in members:
        r.pinned = "in"
    return {"enrolled": len(result.ids), "duplicates": duplicates, "elsewhere": elsewhere}


def _crop(c: Clusters, r: FaceRow):
    from facesearch.data.images import ImageError, load_image

    try:
        return load_image(c.folder / "crops" / f"{r.face_id}.jpg", min_side=1)
    except ImageError:  # load_image turns every OSError into one
        return None


# --- contact sheets ---------------------------------------------------------------------------------------------


def draw_sheets(c: Clusters, per_sheet: int = 48, tile: int = 96) -> list[Path]:
    """One PNG per group: its faces closest to the centre first, up to ``per_sheet``; old sheets are replaced."""
    from PIL import Image, ImageDraw

    sheets = c.folder / "sheets"
    sheets.mkdir(parents=True, exist_ok=True)
    for old in sheets.glob("group-*.png"):
        old.unlink()
    written = []
    for g, members in c.groups().items():
        shown = members[:per_sheet]
        cols = min(8, len(shown))
        rows = (len(shown) + cols - 1) // cols
        sheet = Image.new("RGB", (cols * tile, rows * tile + 24), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        title = f"group {g}" + (f": {c.names[g]}" if g in c.names else "") + f" ({len(members)} faces)"
        draw.text((6, 5), title, fill=(0, 0, 0))
        for k, r in enumerate(shown):
            crop = _crop(c, r)
            if crop is not None:
                sheet.paste(crop.resize((tile, tile)), ((k % cols) * tile, 24 + (k // cols) * tile))
        path = sheets / f"group-{g}.png"
        sheet.save(path)
        written.append(path)
    return written
