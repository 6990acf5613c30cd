"""Photos → gallery faces: ``enroll`` (photos of one person, or a folder of people) and ``reembed``.

One enrolled face per photo: a photo with several faces is refused unless ``largest=True`` (group photos
are the usual way a wrong face gets enrolled). The same photo (by content hash) is enrolled only once.
Work goes in batches of photos; each batch is one transaction, so an interrupted run keeps what it
committed and a rerun skips it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facesearch.data.images import is_photo
from facesearch.embed import Decoded
from facesearch.errors import Remedy
from facesearch.gallery.records import GalleryError, NewFace
from facesearch.gallery.store import Gallery

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrollOutcome:
    path: str
    name: str
    status: str  # "enrolled", "duplicate", "no_face", "several_faces", or load_image's status (e.g. "unreadable")
    reason: str = ""
    face_id: int | None = None
    n_faces: int = 0  # faces detected in the photo
    enrolled_as: str | None = None  # a duplicate: the identity the photo is already enrolled under


def folder_items(root: str | os.PathLike) -> list[tuple[Path, str]]:
    """``(photo, name)`` for every image in ``root/<name>/`` (sub-folders of a person included).

    Names are the folder names (the gallery normalises them: NFC, trimmed). Files directly in ``root`` belong
    to nobody and are skipped.
    """
    root = Path(root)
    items = []
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(p for p in person.rglob("*") if is_photo(p))
        items += [(photo, person.name) for photo in photos]
    return items


def enroll(gallery: Gallery, embedder, items: Sequence[tuple[str | os.PathLike, str]], largest: bool = False,
           batch_size: int = 16, progress: Callable[[int], None] | None = None) -> list[EnrollOutcome]:
    """Enroll photos, each under its name.

    Args:
        gallery: the gallery.
        embedder: a ``facesearch.embed.Embedder``; must be the gallery's model (checked first).
        items: ``(photo, identity name)`` pairs; a photo is a path, or a ``Decoded`` one (an upload checked and
            kept already: not decoded again).
        largest: in a photo with several faces, enroll the largest instead of refusing the photo.
        batch_size: photos per detection batch and per transaction.
        progress: called with the number of photos done after each batch.
    Returns:
        One outcome per photo, in input order.
    """
    from facesearch.gallery.identities import new_name

    gallery.check_model(embedder.fingerprint)
    outcomes: dict[int, EnrollOutcome] = {}
    named: list[tuple[int, tuple[str | os.PathLike, str]]] = []  # position, (photo, cleaned name)
    for i, (path, name) in enumerate(items):
        try:
            named.append((i, (path, new_name(name))))
        except GalleryError as e:
            outcomes[i] = EnrollOutcome(_path_of(path), str(name), "bad_name", str(e))
    if progress and outcomes:
        progress(len(outcomes))
    for start in range(0, len(named), batch_size):
        positions, batch = zip(*named[start : start + batch_size])
        outcomes.update(zip(positions, _enroll_batch(gallery, embedder, list(batch), largest)))
        if progress:
            progress(len(batch))
    return [outcomes[i] for i in range(len(items))]


def failed(outcome: EnrollOutcome) -> bool:
    """Whether a photo did not end up in the gallery under the name asked for (a photo already enrolled under
    that name is a success: enrolling a folder again is a no-op)."""
    if outcome.status == "enrolled":
        return False
    return not (outcome.status == "duplicate" and outcome.enrolled_as == outcome.name)


def _enroll_batch(gallery: Gallery, embedder, batch, largest: bool) -> list[EnrollOutcome]:
    done: dict[int, EnrollOutcome] = {}
    fresh = _new_photos(gallery, batch, done)  # position → sha256 of the photos not enrolled yet
    new, n_faces = [], {}  # (position, NewFace); position → faces detected in the photo
    found = embedder.faces_of([batch[i][0] for i in fresh], select="largest" if largest else "only",
                              batch_size=max(1, len(fresh)))
    for (i, sha), photo in zip(fresh.items(), found):
        path, name = _path_of(batch[i][0]), batch[i][1]
        if photo.status == "several_faces":
            done[i] = EnrollOutcome(path, name, "several_faces", f"{photo.found} faces: refused (which one to enroll "
                                    "is not known; the largest one can be chosen)", n_faces=photo.found)
        elif not photo.ok:
            done[i] = EnrollOutcome(path, name, photo.status, photo.reason)
        else:
            new.append((i, _new_face(name, sha, photo)))
            n_faces[i] = photo.found
    result = gallery.add_faces([face for _, face in new], embedder.fingerprint, embedder.model_source)
    skipped = {new[k][0]: holder for k, holder in result.duplicates}
    added = iter(result.ids)
    for i, _ in new:
        path, name, n = _path_of(batch[i][0]), batch[i][1], n_faces[i]
        if i in skipped:
            done[i] = EnrollOutcome(path, name, "duplicate", f"already enrolled as {skipped[i]!r}", n_faces=n,
                                     enrolled_as=skipped[i])
        else:
            note = f"largest of {n} faces" if n > 1 else ""
            done[i] = EnrollOutcome(path, name, "enrolled", note, face_id=next(added), n_faces=n)
    return [done[i] for i in range(len(batch))]


def _new_photos(gallery: Gallery, batch, done: dict[int, EnrollOutcome]) -> dict[int, str]:
    """The content hash of each photo not enrolled yet; outcomes for the others go into ``done``."""
    from facesearch.data.images import file_sha256

    fresh = {}
    for i, (photo, name) in enumerate(batch):
        path = _path_of(photo)
        try:
            sha = file_sha256(path)
        except OSError as e:
            done[i] = EnrollOutcome(str(path), name, "unreadable", e.strerror or str(e))
            continue
        holder = gallery.enrolled_as(sha)
        if holder is not None:
            done[i] = EnrollOutcome(str(path), name, "duplicate", f"already enrolled as {holder!r}", enrolled_as=holder)
        else:
            fresh[i] = sha
    return fresh


def _path_of(photo) -> str:
    return str(photo.path if isinstance(photo, Decoded) else photo)


def _new_face(name: str, sha: str, photo) -> NewFace:
    """The face ``Embedder.faces_of`` chose in a photo, as the gallery stores it."""
    f = photo.faces[0]
    return NewFace(name=name, embedding=f.embedding, source_path=str(Path(f.path).resolve()), source_sha256=sha,
                   box=f.face.box, landmarks=f.face.landmarks, det_prob=f.face.prob, crop=f.crop)


@dataclass(frozen=True)
class ReembedReport:
    faces: int
    from_photo: int  # re-cropped from the original photo and stored box
    from_crop: int  # the photo was gone or changed: the stored crop was embedded instead


def reembed(gallery: Gallery, embedder, batch_size: int = 64,
            progress: Callable[[int], None] | None = None) -> ReembedReport:
    """Recompute every face's embedding with another model (from its photo and box, else its stored crop),
    then switch the gallery to that model in one transaction. Nothing changes if any face cannot be
    recomputed: a gallery never mixes models."""
    faces = gallery.face_sources()
    vectors, from_crop, lost = [], 0, []
    for start in range(0, len(faces), batch_size):
        crops = []
        for info in faces[start : start + batch_size]:
            crop, source = _recrop(info, embedder.crop)
            if crop is None:
                lost.append(info)
                continue
            from_crop += source == "crop"
            crops.append(crop)
        vectors.append(embedder.embed_crops(crops))
        if progress:
            progress(len(faces[start : start + batch_size]))
    if lost:
        names = ", ".join(sorted({f.identity for f in lost})[:5])
        raise GalleryError(f"{len(lost)} faces ({names}...) have neither their photo nor a stored crop; "
                           "remove them first", remedy=Remedy.run("identities.remove"))
    matrix = np.concatenate(vectors) if vectors else np.empty((0, embedder.dim), np.float32)
    gallery.replace_embeddings([f.id for f in faces], matrix, embedder.fingerprint, embedder.model_source)
    return ReembedReport(len(faces), len(faces) - from_crop, from_crop)


def _recrop(info, crop_settings):
    """The face cut again from its unchanged photo, else the stored crop; (None, "") when neither exists."""
    from facesearch.data.detect import DetectedFace, crop_face
    from facesearch.data.images import ImageError, file_sha256, load_image

    c = crop_settings
    try:
        if info.source_path and info.box and file_sha256(info.source_path) == info.source_sha256:
            landmarks = np.asarray(info.landmarks if info.landmarks else np.zeros((5, 2)), dtype=np.float32)
            face = DetectedFace(box=np.asarray(info.box, dtype=np.float32), landmarks=landmarks,
                                prob=info.det_prob or 0.0)
            return crop_face(load_image(info.source_path), face, c.size, c.margin, c.align and info.landmarks is not None), "photo"
    except (OSError, ImageError) as e:
        logger.info("face %d: photo unusable (%s), using the stored crop", info.id, e)
    if info.crop_path is not None and info.crop_path.is_file():
        return load_image(info.crop_path, min_side=1), "crop"
    return None, ""
