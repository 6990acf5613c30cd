"""Calibrate the gallery's "unknown" threshold from data, at a target false-positive identification rate.

``who`` answers "unknown" when the best gallery match scores below the threshold. Too low and
strangers get someone's name; too high and enrolled people go unrecognised. Calibration searches the
gallery with photos of enrolled people (mated probes) and of people who are not enrolled (non-mated
probes), and picks the lowest threshold at which at most ``target_fpir`` of the strangers are named
(1 % by default). The threshold and how it was chosen are stored in the gallery.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from facesearch import metrics

log = logging.getLogger(__name__)

DEFAULT_FPIR = 0.01


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold and what it does on the calibration photos."""

    threshold: float  # cosine similarity; a best match scoring at least this is named
    target_fpir: float
    fpir: float  # achieved: share of non-mated probes named at this threshold (<= target)
    dir: float | None  # share of mated probes named correctly at this threshold (None: no mated probes)
    n_mated: int
    n_nonmated: int

    def to_dict(self) -> dict:
        return asdict(self)


def choose_threshold(mated_top, mated_hit, nonmated_top, target_fpir: float = DEFAULT_FPIR) -> Calibration:
    """The lowest threshold naming at most ``target_fpir`` of the non-mated probes.

    Args:
        mated_top: (n_mated,) best gallery score of each photo of an enrolled person.
        mated_hit: (n_mated,) bool, whether that best match is the right person.
        nonmated_top: (n_nonmated,) best gallery score of each photo of a person not enrolled.
        target_fpir: e.g. 0.01; needs at least ``1 / target_fpir`` non-mated photos.

    Raises:
        ValueError: too few non-mated photos to measure ``target_fpir``.
    """
    nonmated_top = np.asarray(nonmated_top, dtype=np.float64)
    mated_top = np.asarray(mated_top, dtype=np.float64)
    threshold = metrics.threshold_at_rate(nonmated_top, target_fpir)
    if threshold is None:
        need = metrics.min_negatives(target_fpir)
        raise ValueError(
            f"{len(nonmated_top)} photos of people not in the gallery cannot measure a false-positive rate of "
            f"{target_fpir:g}: at least {need} are needed (or raise the target, e.g. --fpir {1 / max(len(nonmated_top), 1):.2g})"
        )
    hit = np.asarray(mated_hit, dtype=bool) & (mated_top >= threshold)
    return Calibration(
        threshold=threshold,
        target_fpir=target_fpir,
        fpir=float(np.mean(nonmated_top >= threshold)),
        dir=float(hit.mean()) if len(hit) else None,
        n_mated=int(len(mated_top)),
        n_nonmated=int(len(nonmated_top)),
    )
