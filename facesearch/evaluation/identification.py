"""Open-set identification: enroll k photos per person, probe with the others and with strangers.

Reports for the model and its random-weights baseline: rank-1 and rank-5 of the enrolled people's other photos,
DIR at each FPIR with the DIR-FPIR curve, and the detection equal-error rate (telling enrolled people from
strangers at all), all with bootstrap CIs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from facesearch.errors import BadInput
from facesearch.evaluation import metrics
from facesearch.evaluation.common import (
    NOT_MEASURABLE,
    Embedded,
    Progress,
    embed_photos,
    list_photos,
    make_embedder,
    models_to_score,
    note_photos,
    rate_key,
)
from facesearch.runtime import resolve_device

FPIR_TARGETS = (1e-2, 1e-1)
DISTRACTOR_PREFIX = "distractors:"  # keys and identities of photos from a distractor folder


# ---------------------------------------------------------------- open-set identification


@dataclass(frozen=True)
class OpenSetSplit:
    """Which photos are enrolled, and which probe the gallery (keys are photo paths)."""

    enrolled: list[tuple[str, str]]  # (key, identity), k per enrolled identity
    mated: list[tuple[str, str]]  # (key, identity) probes of enrolled people
    nonmated: list[tuple[str, str]]  # (key, identity) probes of people never enrolled


def split_open_set(photos: dict[str, Sequence[str]], enroll_per_identity: int = 1, seed: int = 0) -> OpenSetSplit:
    """Enroll ``k`` photos (chosen at random, fixed seed) of everyone with more than ``k``; probe with the rest.

    People with ``k`` photos or fewer (with k = 1: a single photo) are never enrolled: all their photos
    are non-mated probes (distractors).

    Args:
        photos: identity -> its photo keys.
    """
    rng = np.random.default_rng(seed)
    enrolled, mated, nonmated = [], [], []
    for identity in sorted(photos):
        keys = sorted(photos[identity])
        if len(keys) <= enroll_per_identity:
            nonmated += [(k, identity) for k in keys]
            continue
        order = rng.permutation(len(keys))
        enrolled += [(keys[i], identity) for i in order[:enroll_per_identity]]
        mated += [(keys[i], identity) for i in order[enroll_per_identity:]]
    return OpenSetSplit(enrolled, mated, nonmated)


@dataclass
class OpenSetReport:
    summary: dict  # JSON-ready
    curves: dict[str, metrics.DirFpirCurve]  # model name -> DIR against FPIR


def identification_figures(
    gallery, gallery_ids, probes, probe_ids, fpir_targets=FPIR_TARGETS, n_boot: int = 1000, seed: int = 0
) -> tuple[dict, metrics.DirFpirCurve]:
    """Rank-1/rank-5 of mated probes and DIR at each FPIR, with bootstrap CIs, and the DIR-FPIR curve.

    Args:
        gallery: (n_templates, d) L2-normalised embeddings of the enrolled photos.
        gallery_ids: (n_templates,) their identities.
        probes: (n_probes, d) L2-normalised embeddings; probes whose identity is not in the gallery
            are the non-mated ones.
        probe_ids: (n_probes,) their identities.
    """
    scores, ids = metrics.identity_scores(np.asarray(probes) @ np.asarray(gallery).T, gallery_ids)  # (n_probes, n_ids)
    probe_ids = np.asarray(probe_ids)
    is_mated = np.isin(probe_ids, ids)
    mated, nonmated = scores[is_mated], scores[~is_mated]  # (n_m, n_ids), (n_nm, n_ids)
    truth = np.searchsorted(ids, probe_ids[is_mated])
    rank = metrics.ranks(mated, truth)
    top, non_top = mated.max(axis=1), nonmated.max(axis=1)  # each probe's best identity score
    figures = {"n_mated_probes": int(len(mated)), "n_nonmated_probes": int(len(nonmated))}
    figures.update(_rank_figures(rank, n_boot, seed))
    figures.update(_dir_figures(top, rank == 1, non_top, fpir_targets, n_boot, seed))
    figures.update(_balanced_figures(top, rank == 1, non_top, n_boot, seed))
    return figures, metrics.dir_fpir_curve(mated, truth, nonmated)


def _rank_figures(rank: np.ndarray, n_boot: int, seed: int, ks: Sequence[int] = (1, 5)) -> dict:
    """Rank-k identification rate of mated probes, with bootstrap CIs."""
    figures = {}
    for k in ks:
        within = rank <= k  # (n_mated,) bool
        figures[f"rank{k}"] = float(within.mean())
        figures[f"rank{k}_ci95"] = metrics.bootstrap_ci(
            lambda idx: within[idx].mean(), len(rank), n_boot=n_boot, seed=seed  # noqa: B023 (called at once)
        )
    return figures


def _dir_figures(top, hit, non_top, fpir_targets, n_boot: int, seed: int) -> dict:
    """DIR at each FPIR with a CI that resamples mated and non-mated probes separately."""
    n_m = len(top)
    strata = np.r_[np.ones(n_m, bool), np.zeros(len(non_top), bool)]
    out = {"dir_at_fpir": {}, "dir_at_fpir_ci95": {}, "threshold_at_fpir": {}}
    for fpir in fpir_targets:
        key = rate_key(fpir)
        threshold = metrics.threshold_at_rate(non_top, fpir)
        if threshold is None:
            out["dir_at_fpir"][key] = out["threshold_at_fpir"][key] = NOT_MEASURABLE
            out["dir_at_fpir_ci95"][key] = None
            continue

        def stat(idx, fpir=fpir):
            m, nm = idx[idx < n_m], idx[idx >= n_m] - n_m
            return metrics.dir_from_top(top[m], hit[m], non_top[nm], fpir)

        out["dir_at_fpir"][key] = metrics.dir_from_top(top, hit, non_top, fpir)
        out["dir_at_fpir_ci95"][key] = metrics.bootstrap_ci(stat, len(strata), strata=strata, n_boot=n_boot, seed=seed)
        out["threshold_at_fpir"][key] = threshold
    return out


def _balanced_figures(top, hit, non_top, n_boot: int, seed: int) -> dict:
    """The equal-error point of "is this person enrolled at all" (best score of mated vs non-mated probes).

    ``detection_eer``: at the threshold naming as many strangers as it refuses enrolled people's photos, that
    share (lower is better; 50 % is chance); ``dir_at_detection_eer``: the mated probes named correctly there.
    """
    if len(top) == 0 or len(non_top) == 0:
        return {"detection_eer": NOT_MEASURABLE, "detection_eer_ci95": None, "dir_at_detection_eer": NOT_MEASURABLE}
    n_m = len(top)
    strata = np.r_[np.ones(n_m, bool), np.zeros(len(non_top), bool)]

    def stat(idx):
        return metrics.equal_error(top[idx[idx < n_m]], non_top[idx[idx >= n_m] - n_m]).rate

    ee = metrics.equal_error(top, non_top)
    return {
        "detection_eer": ee.rate,
        "detection_eer_ci95": metrics.bootstrap_ci(stat, len(strata), strata=strata, n_boot=n_boot, seed=seed),
        "dir_at_detection_eer": float(np.mean(hit & (top >= ee.threshold))),
    }


def evaluate_open_set(
    model,
    data_dir: str | os.PathLike,
    *,
    enroll_per_identity: int = 1,
    device: str = "auto",
    baseline: bool = True,
    fpir_targets: Sequence[float] = FPIR_TARGETS,
    n_boot: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
    splits: Sequence[str] | None = None,
    distractors: str | os.PathLike | None = None,
    distractor_splits: Sequence[str] | None = None,
) -> OpenSetReport:
    """Open-set identification: enroll k photos per person, probe with the others and with strangers.

    Args:
        model: a checkpoint path (or run directory) or a ``LoadedModel``.
        data_dir: ``<identity>/*.jpg`` photos (e.g. LFW's ``images``), or a ``prepare`` output.
        enroll_per_identity: photos enrolled per person (people with no more than this are distractors).
        seed: picks the enrolled photos, and seeds the baseline's weights and the bootstrap.
        splits: with a ``prepare`` output, only its rows of these splits (e.g. ``["holdout"]``).
        distractors: a second folder of photos (or ``prepare`` output) of people who are never enrolled:
            every photo is a non-mated probe, e.g. a deployment's "strangers". Its people count as
            strangers even where a folder name matches an enrolled one.
        distractor_splits: with a ``prepare`` output as ``distractors``, only its rows of these splits.
    Returns:
        An :class:`OpenSetReport`: rank-1, rank-5, DIR at each FPIR (with CIs) for the model and its baseline.
    """
    device = str(resolve_device(device))
    split = split_open_set(list_photos(data_dir, splits), enroll_per_identity, seed)
    if not split.enrolled:
        raise BadInput(
            f"{data_dir}: nobody has more than {enroll_per_identity} photo(s), so nobody can be enrolled and probed"
        )
    keys = [k for k, _ in split.enrolled + split.mated + split.nonmated]
    extra = _distractor_probes(distractors, distractor_splits)  # (key, identity), both prefixed
    split = OpenSetSplit(split.enrolled, split.mated, split.nonmated + extra)
    summary = {
        "kind": "open-set",
        "data_dir": str(data_dir),
        "enroll_per_identity": enroll_per_identity,
        "splits": list(splits) if splits else None,
        "seed": seed,
        "n_enrolled_identities": len({i for _, i in split.enrolled}),
        "n_distractor_identities": len({i for _, i in split.nonmated}),
        "n_templates": len(split.enrolled),
        "distractors": str(distractors) if distractors is not None else None,
    }
    report = OpenSetReport(summary, {})
    for name, loaded in models_to_score(model, device, baseline, seed):
        embedder = make_embedder(loaded, device)
        embedded = embed_photos(embedder, keys, data_dir, crop_size=loaded.preprocess.input_size, progress=progress)
        if extra:
            more = embed_photos(embedder, [k[len(DISTRACTOR_PREFIX):] for k, _ in extra], distractors,
                                crop_size=loaded.preprocess.input_size, progress=progress)
            embedded.vectors.update((DISTRACTOR_PREFIX + k, v) for k, v in more.vectors.items())
            embedded.fallback += [DISTRACTOR_PREFIX + k for k in more.fallback]
            embedded.missing += [DISTRACTOR_PREFIX + k for k in more.missing]
        if name == "model":
            note_photos(summary, loaded, embedded)
        figures, report.curves[name] = _open_set_figures(embedded, split, fpir_targets, n_boot, seed)
        summary[name] = {"fingerprint": loaded.fingerprint, **figures}
    return report


def _distractor_probes(folder, splits) -> list[tuple[str, str]]:
    """Every photo of ``folder`` as a non-mated probe; keys and identities prefixed so they never meet the gallery's."""
    if folder is None:
        return []
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of distractor photos")
    photos = list_photos(folder, splits)
    if not photos:
        raise BadInput(f"{folder}: no distractor photos" + (f" in split(s) {', '.join(splits)}" if splits else ""))
    return [(DISTRACTOR_PREFIX + k, DISTRACTOR_PREFIX + i) for i in sorted(photos) for k in sorted(photos[i])]


def _open_set_figures(embedded: Embedded, split: OpenSetSplit, fpir_targets, n_boot: int, seed: int):
    """:func:`identification_figures` of the split's photos that were embedded."""
    gallery = [(k, i) for k, i in split.enrolled if k in embedded.vectors]
    probes = [(k, i) for k, i in split.mated + split.nonmated if k in embedded.vectors]
    return identification_figures(
        np.stack([embedded.vectors[k] for k, _ in gallery]),  # (n_templates, d)
        [i for _, i in gallery],
        np.stack([embedded.vectors[k] for k, _ in probes]),  # (n_probes, d)
        [i for _, i in probes],
        fpir_targets,
        n_boot,
        seed,
    )
