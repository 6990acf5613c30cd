"""Clustering a folder of photos into a clusters folder (``cluster_folder``), editing one (``edit``), and
enrolling a group in a gallery (``name_group``): where the algorithm, the files and the sheets meet the
embedder and the gallery.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facesearch.cluster.files import STATE_NAME, crop_path, load, load_crop, save
from facesearch.cluster.grouping import ClusterError, Clusters, ClusterSettings, FaceRow, group_of, regroup
from facesearch.cluster.sheets import draw_sheets
from facesearch.errors import Remedy


def edit(folder: str | os.PathLike, change: Callable[[Clusters], object]) -> tuple[object, Clusters]:
    """Load a clusters folder, apply ``change`` (name, merge, split, remove), save it and redraw its contact
    sheets; returns what ``change`` returned and the folder as it is now."""
    c = load(folder)
    result = change(c)
    save(c)
    draw_sheets(c)
    return result, c



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
        progress: called with the number of photos looked at, as they are. An exception it raises stops the run
            there (how a caller cancels one): the folder stays as the last save left it.

    Raises:
        ClusterError: ``out`` was clustered with another model, or holds faces of photos still on disk that are not
            among ``photos`` (they, and their groups' names, would be lost).
    """
    out = Path(out)
    old = load(out) if (out / STATE_NAME).is_file() else None
    model = {"fingerprint": embedder.fingerprint, "source": embedder.model_source}
    if old is not None and old.model["fingerprint"] != model["fingerprint"]:
        raise ClusterError(f"{out}: clustered with model {old.model['fingerprint']}, not {model['fingerprint']}; "
                           "use that model, or cluster into a new folder")
    settings = replace(old.settings if old else ClusterSettings(), **(changes or {}))
    given = [str(Path(photo).resolve()) for photo in photos]
    rows, vectors, fresh, seen, failures = _earlier_faces(old, given)
    if progress and len(photos) > len(fresh):
        progress(len(photos) - len(fresh))
    next_face = 1 + max((r.face_id for r in old.rows), default=0) if old else 1
    new_rows, new_vectors = _new_faces(out, embedder, fresh, next_face, failures, progress)
    rows, vectors = rows + new_rows, vectors + new_vectors
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


def _earlier_faces(old: Clusters | None, given: list[str]):
    """Each photo given, by its content: the earlier run's faces of those it clustered already, the others to
    detect. Returns ``(rows, vectors, fresh, seen, failures)``: reused rows and their vectors, ``(path, sha256)``
    of the new photos, every content hash given, and the photos that could not be read.

    Raises:
        ClusterError: the earlier run holds photos still on disk that are not given (``_refuse_dropping``).
    """
    from facesearch.data.images import file_sha256

    by_sha: dict[str, list[int]] = {}
    for i, r in enumerate(old.rows if old is not None else []):
        by_sha.setdefault(r.sha256, []).append(i)
    rows, vectors, fresh, seen, failures = [], [], [], set(), {}
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
    return rows, vectors, fresh, seen, failures


def _new_faces(out: Path, embedder, fresh: list[tuple[str, str]], next_face: int, failures: dict[str, str],
               progress) -> tuple[list[FaceRow], list[np.ndarray]]:
    """Find and embed every face of the ``fresh`` photos (``Embedder.faces_of``): a row each (numbered from
    ``next_face``), its vector, and its crop kept in ``out``. Why a photo gave none goes into ``failures``. Stopped
    by an error (or by ``progress``), it removes the crops it wrote: no save records them."""
    rows, vectors, crops = [], [], []
    try:
        for (path, sha), photo in zip(fresh, embedder.faces_of([path for path, _ in fresh], select="all")):
            if not photo.ok:
                failures[path] = f"{photo.status}: {photo.reason}"
            for f in photo.faces:
                row = FaceRow(next_face, path, sha, [round(float(v), 1) for v in f.face.box],
                              round(float(f.face.prob), 4), len(photo.faces))
                crop = crop_path(out, next_face)
                crop.parent.mkdir(parents=True, exist_ok=True)
                crops.append(crop)
                f.crop.save(crop, quality=95)
                rows.append(row)
                vectors.append(np.asarray(f.embedding, dtype=np.float32))
                next_face += 1
            if progress:
                progress(1)
    except BaseException:
        for crop in crops:
            crop.unlink(missing_ok=True)
        raise
    return rows, vectors


def _refuse_dropping(old: Clusters, given: set[str], shas: set[str]) -> None:
    """Refuse a run whose photos leave out photos of the earlier run that are still on disk: their faces, and
    the names of their groups, would go (photos given under another path are found by their content)."""
    left = sorted({r.photo for r in old.rows
                   if r.photo not in given and r.sha256 not in shas and os.path.exists(r.photo)})
    if left:
        raise ClusterError(f"{old.folder}: holds the faces of {len(left)} photos in {_folders(left)}, which are not "
                           f"among the photos given ({_folders(given)}); this run would drop them and their groups' "
                           "names. Give those photos too, or cluster into a new folder", remedy=Remedy.give("out"))


def _folders(paths) -> str:
    """The folder that holds ``paths`` (their deepest common one), else the first few of their folders."""
    parents = sorted({os.path.dirname(p) for p in paths})
    common = os.path.commonpath(parents)
    if len(parents) == 1 or os.path.dirname(common) != common:  # a common folder that is not the root
        return common
    return ", ".join(parents[:3]) + (f" and {len(parents) - 3} more" if len(parents) > 3 else "")


def _label_with_gallery(c: Clusters, gallery) -> None:
    from facesearch.search import aggregate

    gallery.check_model(c.model["fingerprint"])
    threshold, _ = gallery.threshold()
    hits = gallery.search(c.vectors, k=10) if len(c.vectors) else []
    for r, h in zip(c.rows, hits):
        top = aggregate(h, 1)
        r.identity = top[0].name if top and top[0].similarity >= threshold else ""


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
    members = group_of(c, group)
    index = {r.face_id: i for i, r in enumerate(c.rows)}
    faces = [NewFace(name, c.vectors[index[r.face_id]], source_path=r.photo, source_sha256=r.key, box=r.box,
                     det_prob=r.det_prob, crop=load_crop(c, r)) for r in members]
    result = gallery.add_faces(faces, c.model["fingerprint"], source=c.model.get("source"))
    duplicates = [(members[i].face_id, holder) for i, holder in result.duplicates]
    elsewhere: dict[str, list[int]] = {}
    for face_id, holder in duplicates:
        if holder != name:
            elsewhere.setdefault(holder, []).append(face_id)
    if sum(map(len, elsewhere.values())) == len(members):
        held = ", ".join(f"{n!r} ({len(ids)} faces)" for n, ids in elsewhere.items())
        raise ClusterError(f"group {group}: none of its {len(members)} faces enrolled as {name!r}: already enrolled "
                           f"as {held}; if they are {name!r}, rename or merge that identity",
                           remedy=(Remedy.run("identities.rename"), Remedy.run("identities.merge")))
    c.names[group] = name
    for r in members:
        r.pinned = "in"
    return {"enrolled": len(result.ids), "duplicates": duplicates, "elsewhere": elsewhere}

