"""Calibrate the gallery's "unknown" threshold from data: at a target false-positive identification rate,
or at the balanced point.

``who`` answers "unknown" when the best gallery match scores below the threshold. Too low and
strangers get someone's name; too high and enrolled people go unrecognised. Calibration searches the
gallery with photos of enrolled people (mated probes) and of people who are not enrolled (non-mated
probes), and picks either the lowest threshold at which at most ``target_fpir`` of the strangers are named
(1 % by default: for a model good enough that enrolled people still clear it), or, with no target, the
balanced threshold: as many strangers named as enrolled people's photos refused (the equal-error point of
"is this person enrolled at all"; the honest choice for a weak model, where a 1 % threshold would refuse
nearly everyone). The threshold and how it was chosen are stored in the gallery.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facesearch.errors import BadInput
from facesearch.evaluation import metrics

log = logging.getLogger(__name__)

DEFAULT_FPIR = 0.01
MIN_BALANCED = 10  # photos of each kind (enrolled people, strangers) the balanced threshold needs


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold and what it does on the calibration photos."""

    threshold: float  # cosine similarity; a best match scoring at least this is named
    target_fpir: float | None  # None: the balanced threshold
    fpir: float  # achieved: share of non-mated probes named at this threshold (<= target)
    dir: float | None  # share of mated probes named correctly at this threshold (None: no mated probes)
    n_mated: int
    n_nonmated: int
    accepted: float | None = None  # share of mated probes given a name at all, right or wrong

    @property
    def rule(self) -> str:
        return "balanced" if self.target_fpir is None else "fpir"

    def to_dict(self) -> dict:
        return {**asdict(self), "rule": self.rule}


def choose_threshold(mated_top, mated_hit, nonmated_top, target_fpir: float | None = DEFAULT_FPIR) -> Calibration:
    """The lowest threshold naming at most ``target_fpir`` of the non-mated probes; with None, the balanced one.

    Args:
        mated_top: (n_mated,) best gallery score of each photo of an enrolled person.
        mated_hit: (n_mated,) bool, whether that best match is the right person.
        nonmated_top: (n_nonmated,) best gallery score of each photo of a person not enrolled.
        target_fpir: e.g. 0.01; needs at least ``1 / target_fpir`` non-mated photos. None: the threshold at
            which the share of non-mated probes named is nearest the share of mated probes refused
            (:func:`facesearch.evaluation.metrics.equal_error`); needs ``MIN_BALANCED`` photos of each kind.

    Raises:
        ValueError: too few photos to measure ``target_fpir`` (or the balanced point).
    """
    nonmated_top = np.asarray(nonmated_top, dtype=np.float64)
    mated_top = np.asarray(mated_top, dtype=np.float64)
    if target_fpir is not None and not 0 < target_fpir < 1:  # also refuses nan
        raise BadInput(f"target FPIR {target_fpir}: a share of strangers strictly between 0 and 1, e.g. 0.01")
    require_strangers(len(nonmated_top), target_fpir, len(mated_top))
    if target_fpir is None:
        threshold = metrics.equal_error(mated_top, nonmated_top).threshold
    else:
        threshold = metrics.threshold_at_rate(nonmated_top, target_fpir)
    hit = np.asarray(mated_hit, dtype=bool) & (mated_top >= threshold)
    return Calibration(
        threshold=threshold,
        target_fpir=target_fpir,
        fpir=float(np.mean(nonmated_top >= threshold)),
        dir=float(hit.mean()) if len(hit) else None,
        n_mated=int(len(mated_top)),
        n_nonmated=int(len(nonmated_top)),
        accepted=float(np.mean(mated_top >= threshold)) if len(mated_top) else None,
    )


def require_strangers(have: int, target_fpir: float | None, have_mated: int | None = None) -> None:
    """Raise ValueError unless ``have`` non-mated photos can measure ``target_fpir``.

    With ``target_fpir`` None (the balanced threshold): unless there are ``MIN_BALANCED`` non-mated photos and
    (when ``have_mated`` is given) as many photos of enrolled people.
    """
    if target_fpir is None:
        if have < MIN_BALANCED or (have_mated is not None and have_mated < MIN_BALANCED):
            mated = "" if have_mated is None else f" and {have_mated} of enrolled people"
            raise BadInput(f"{have} photos of people not in the gallery{mated}: the balanced threshold needs at "
                           f"least {MIN_BALANCED} of each")
        return
    need = metrics.min_negatives(target_fpir)
    if have < need:
        raise BadInput(
            f"{target_fpir:g}: {have} photos of people not in the gallery cannot measure so small a false-positive "
            f"rate: at least {need} are needed, or a target of {1 / max(have, 1):.2g} or more",
            param="fpir",
        )


def probe_outcomes(gallery, vectors: np.ndarray, identities: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Search the gallery with each probe and split the best matches into mated and non-mated.

    Args:
        gallery: an open ``facesearch.gallery.Gallery``.
        vectors: (n, d) L2-normalised probe embeddings from the gallery's model.
        identities: (n,) who each probe shows; names enrolled in the gallery make mated probes.
    Returns:
        ``(mated_top, mated_hit, nonmated_top)`` as :func:`choose_threshold` takes them.
    """
    enrolled = {info.name for info in gallery.identities()}
    best = [hits[0] if hits else None for hits in gallery.search(vectors, k=1)]  # best face = best identity
    top = np.array([h.similarity if h else -np.inf for h in best])
    named = [h.identity if h else None for h in best]
    mated = np.array([name in enrolled for name in identities], dtype=bool)
    hit = np.array([n == i for n, i in zip(named, identities)], dtype=bool)
    return top[mated], hit[mated], top[~mated]


def calibrate_gallery(
    gallery,
    embedder,
    data_dir: str | os.PathLike,
    *,
    target_fpir: float | None = DEFAULT_FPIR,
    select: str = "largest",
    progress=None,
) -> Calibration:
    """Calibrate and store the gallery's unknown-threshold from ``<identity>/*.jpg`` photos.

    Folders named like an enrolled identity are that person's photos (mated probes); any other folder
    is a person not enrolled (non-mated). Photos already enrolled in the gallery (same bytes) are
    skipped: they would match themselves.

    Args:
        gallery: an open ``facesearch.gallery.Gallery``, writable (the threshold is stored in it).
        embedder: a ``facesearch.embed.Embedder`` of the gallery's model (``Embedder.for_queries``: the face finder
            ``who`` uses; checked against the gallery's model first).
        data_dir: the calibration photos (or a ``prepare`` output of them).
        target_fpir: share of strangers that may be given a name, e.g. 0.01; None: the balanced threshold.
        select: which face of each photo to use ("largest" or "center").
    Raises:
        ValueError: too few photos of people not enrolled to measure ``target_fpir``.
        facesearch.gallery.GalleryError: another model's gallery.
    """
    from facesearch.evaluation.common import embed_photos, list_photos

    gallery.check_model(embedder.fingerprint)
    photos = {key: identity for identity, keys in list_photos(data_dir).items() for key in keys}
    fresh = [k for k in photos if not _already_enrolled(gallery, Path(data_dir) / k)]
    enrolled = {info.name for info in gallery.identities()}
    if not enrolled:  # every probe's best score would be -inf: no threshold means anything
        raise BadInput(f"{gallery.folder}: nobody is enrolled in this gallery; enroll people before calibrating "
                       "their unknown-threshold")
    n_strangers = sum(photos[k] not in enrolled for k in fresh)
    require_strangers(n_strangers, target_fpir, len(fresh) - n_strangers)  # before the slow part
    embedded = embed_photos(embedder, fresh, data_dir, crop_size=embedder.loaded.preprocess.input_size,
                            select=select, progress=progress)
    keys = sorted(embedded.vectors)
    if not keys:
        raise BadInput(f"{data_dir}: no usable calibration photos")
    vectors = np.stack([embedded.vectors[k] for k in keys])  # (n, d)
    calibration = choose_threshold(*probe_outcomes(gallery, vectors, [photos[k] for k in keys]), target_fpir)
    meta = {**calibration.to_dict(), "data_dir": str(data_dir), "fingerprint": embedder.fingerprint,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "n_skipped_enrolled": len(photos) - len(fresh), "n_unusable": len(embedded.missing)}
    gallery.set_threshold(calibration.threshold, meta)
    log.info("threshold %.4f stored in %s (%s)", calibration.threshold, gallery.folder, meta)
    return calibration


def _already_enrolled(gallery, path: Path) -> bool:
    if not path.is_file():
        return False
    from facesearch.data.images import file_sha256

    return gallery.enrolled_as(file_sha256(path)) is not None
