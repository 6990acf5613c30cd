"""Measure accuracy: the LFW pairs protocol (verification) and open-set identification.

Both take a model (a checkpoint path or a ``LoadedModel``) and photos, embed every photo once through
the same path as ``who`` (``Embedder``), and score with :mod:`facesearch.metrics`. Photos come either
as a raw folder (``<Name>/<Name>_0001.jpg``: faces are detected, the most central one kept) or as a
``prepare`` output folder (its manifest's crops are used, no detection). A random-weights model of the
same architecture (fixed seed) is evaluated beside the trained one as the baseline.

Only torch, torchvision, numpy and Pillow are needed here (plus facenet-pytorch for raw photos): the
GPU script imports this module directly. The closed-set check of a classifier lives in
:mod:`facesearch.evaluate_closed`; plots in :mod:`facesearch.evaluate_plots`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from facesearch import metrics
from facesearch.data.manifest import MANIFEST_NAME, read_manifest, read_settings

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}
FAR_TARGETS = (1e-2, 1e-3)
FPIR_TARGETS = (1e-2, 1e-1)
NOT_MEASURABLE = "not measurable"
DISTRACTOR_PREFIX = "distractors:"  # keys and identities of photos from a distractor folder

Progress = Callable[[int], None]  # called with the number of photos just finished


# ---------------------------------------------------------------- pairs files


@dataclass(frozen=True)
class Pair:
    name1: str
    index1: int
    name2: str
    index2: int
    same: bool  # True for a "name i j" line, False for "name1 i name2 j"

    @property
    def paths(self) -> tuple[str, str]:
        return image_relpath(self.name1, self.index1), image_relpath(self.name2, self.index2)


@dataclass(frozen=True)
class PairsFile:
    path: str
    pairs: tuple[Pair, ...]
    n_folds: int | None  # from a "10 300" header; None without one (or with a count-only header)


def image_relpath(name: str, index: int) -> str:
    """LFW's layout: ``Name/Name_0001.jpg``."""
    return f"{name}/{name}_{index:04d}.jpg"


def parse_pairs(path: str | os.PathLike) -> PairsFile:
    """Read an LFW pairs file, with or without its count header.

    Lines are ``name i j`` (same person) or ``name1 i name2 j`` (two people). The header is ``N``
    (N matched then N mismatched pairs: View 1) or ``FOLDS N`` (each of FOLDS consecutive blocks holds
    N matched then N mismatched pairs: View 2); the files in ``lfw-view1`` have none.

    Raises:
        ValueError: naming the file and line, for a malformed line or a header that disagrees.
    """
    rows = [(no, line.split()) for no, line in enumerate(Path(path).read_text().splitlines(), 1)]
    rows = [(no, tokens) for no, tokens in rows if tokens]
    header = None
    if rows and len(rows[0][1]) <= 2 and all(t.isdigit() for t in rows[0][1]):
        header = [int(t) for t in rows.pop(0)[1]]
    pairs = tuple(_parse_pair_line(path, no, tokens) for no, tokens in rows)
    if header is not None:
        expected = 2 * header[-1] * (header[0] if len(header) == 2 else 1)
        if expected != len(pairs):
            said = " ".join(map(str, header))
            raise ValueError(f"{path}: header {said} promises {expected} pairs, found {len(pairs)}")
    return PairsFile(str(path), pairs, header[0] if header and len(header) == 2 else None)


def _parse_pair_line(path, no: int, tokens: list[str]) -> Pair:
    try:
        if len(tokens) == 3:
            return Pair(tokens[0], int(tokens[1]), tokens[0], int(tokens[2]), True)
        if len(tokens) == 4:
            return Pair(tokens[0], int(tokens[1]), tokens[2], int(tokens[3]), False)
    except ValueError:
        pass
    raise ValueError(f"{path}, line {no}: expected 'name i j' or 'name1 i name2 j', got {' '.join(tokens)!r}")


def pair_folds(pairs_file: PairsFile, default_folds: int = 10) -> list[np.ndarray]:
    """The fixed consecutive folds of a 10-fold file; an error when a fold lacks either kind of pair."""
    folds = metrics.consecutive_folds(len(pairs_file.pairs), pairs_file.n_folds or default_folds)
    same = np.array([p.same for p in pairs_file.pairs])
    for i, fold in enumerate(folds):
        if same[fold].all() or not same[fold].any():
            raise ValueError(
                f"{pairs_file.path}: fold {i + 1} holds only {'matched' if same[fold].all() else 'mismatched'} "
                "pairs, so it is not a 10-fold file; pass a train file and a test file (LFW View 1)"
            )
    return folds


# ---------------------------------------------------------------- models and embedding


def load_model(model, device: str = "auto"):
    """A ``LoadedModel`` from a checkpoint path (or run directory), or the one given."""
    if isinstance(model, (str, os.PathLike)):
        from facesearch.checkpoint import load_checkpoint

        return load_checkpoint(model, device=device)
    return model


def random_baseline(loaded, seed: int = 0):
    """The same architecture and config with fresh random weights (fixed seed): the chance-level reference."""
    import dataclasses

    import torch

    from facesearch.checkpoint import fingerprint
    from facesearch.models.vgg import VGG16

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VGG16(loaded.config)
    device = next(loaded.model.parameters()).device
    model.to(device).eval()
    return dataclasses.replace(
        loaded, model=model, fingerprint=fingerprint(model.state_dict()), path=None,
        extra={**loaded.extra, "random_seed": seed},  # keeps e.g. the recorded crop settings
    )


def _models(model, device: str, baseline: bool, seed: int) -> list[tuple[str, object]]:
    loaded = load_model(model, device)
    out = [("model", loaded)]
    if baseline:
        out.append(("random_baseline", random_baseline(loaded, seed)))
    return out


@dataclass
class Embedded:
    """Embeddings of photos, keyed by the photo's path relative to the images folder."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (d,) L2-normalised
    fallback: list[str] = field(default_factory=list)  # no face detected: the centre crop was embedded
    missing: list[str] = field(default_factory=list)  # no photo, unreadable, or no crop and no original


def is_prepared(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a ``prepare`` output (holds a manifest)."""
    return (Path(folder) / MANIFEST_NAME).is_file()


def embed_images(
    embedder,
    relpaths: Iterable[str],
    images_dir: str | os.PathLike,
    *,
    raw_dir: str | os.PathLike | None = None,
    crop_size: int = 112,
    select: str = "center",
    batch_size: int = 128,
    progress: Progress | None = None,
) -> Embedded:
    """Embed the photos ``relpaths`` of a raw folder or of a ``prepare`` output.

    Args:
        embedder: a ``facesearch.embed.Embedder`` (or anything with its ``embed_crops``/``embed_images``).
        relpaths: photo paths relative to the raw folder, e.g. ``Name/Name_0001.jpg``.
        images_dir: the raw folder, or a ``prepare`` output whose manifest lists those paths.
        raw_dir: for a ``prepare`` output, the raw folder it was made from: photos without a usable
            crop are then centre-cropped from the original instead of counted missing.
        crop_size: side of the centre crop used when no face is found in a raw photo.
        select: which face of a raw photo to keep: "center" (LFW photos are centred on their
            person, often with others around) or "largest".
    """
    relpaths = sorted(set(relpaths))
    if is_prepared(images_dir):
        sources, embedded = _prepared_sources(relpaths, Path(images_dir), raw_dir)
        keys = list(sources)
        vectors = _embed_in_batches(embedder, [sources[k] for k in keys], batch_size, progress)
        embedded.vectors.update(zip(keys, vectors))
        return embedded
    return _embed_raw_photos(embedder, relpaths, Path(images_dir), crop_size, select, batch_size, progress)


def _prepared_sources(relpaths: list[str], out_dir: Path, raw_dir) -> tuple[dict[str, Callable], Embedded]:
    """Loader of each photo's crop (a crop file, or a centre crop of the original), and the misses."""
    from facesearch.data.detect import center_crop
    from facesearch.data.images import ImageError, load_image

    rows = {r.path: r for r in read_manifest(out_dir)}
    crop_by_hash = {r.sha256: r.crop for r in rows.values() if r.status == "ok" and r.crop}
    settings = read_settings(out_dir)
    raw_dir = Path(raw_dir) if raw_dir else Path(settings["raw_dir"]) if settings.get("raw_dir") else None
    size = int(settings.get("size", 112))
    sources, embedded = {}, Embedded()
    for rel in relpaths:
        row = rows.get(rel)
        crop = row and (row.crop if row.status == "ok" else crop_by_hash.get(row.sha256))  # duplicates share a crop
        if crop and (out_dir / crop).is_file():
            sources[rel] = lambda p=out_dir / crop: load_image(p, min_side=1)
        elif raw_dir is not None and (raw_dir / rel).is_file():
            try:
                image = load_image(raw_dir / rel)
            except ImageError:
                embedded.missing.append(rel)
                continue
            sources[rel] = lambda im=image: center_crop(im, size)
            embedded.fallback.append(rel)
        else:
            embedded.missing.append(rel)
    return sources, embedded


def _embed_in_batches(embedder, loaders: Sequence[Callable], batch_size: int, progress: Progress | None) -> np.ndarray:
    """Embed crops made by ``loaders`` a batch at a time (never all crops in memory at once)."""
    chunks = []
    for start in range(0, len(loaders), batch_size):
        batch = [load() for load in loaders[start : start + batch_size]]
        chunks.append(np.asarray(embedder.embed_crops(batch), dtype=np.float32))  # (b, d)
        if progress:
            progress(len(batch))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def _embed_raw_photos(embedder, relpaths, images_dir: Path, crop_size, select, batch_size, progress) -> Embedded:
    """Detect, keep one face (``select``) and embed, as ``who`` does; centre crop when no face is found."""
    from facesearch.data.detect import center_crop

    embedded, no_face = Embedded(), {}
    step = 16  # photos per detection batch
    for start in range(0, len(relpaths), step):
        batch = relpaths[start : start + step]
        images = _load_photos(images_dir, batch, embedded.missing)  # rel -> image
        found = embedder.embed_images(list(images.values()), select=select)  # per photo: [PhotoFace]
        for (rel, image), faces in zip(images.items(), found):
            if faces:
                embedded.vectors[rel] = np.asarray(faces[0].embedding, dtype=np.float32)
            else:
                no_face[rel] = lambda im=image: center_crop(im, crop_size)
        if progress:
            progress(len(batch))
    keys = list(no_face)
    embedded.vectors.update(zip(keys, _embed_in_batches(embedder, [no_face[k] for k in keys], batch_size, None)))
    embedded.fallback.extend(keys)
    return embedded


def _load_photos(root: Path, relpaths: Sequence[str], missing: list[str]) -> dict:
    """The decoded photos that exist and decode; the others are appended to ``missing``."""
    from facesearch.data.images import ImageError, load_image

    images = {}
    for rel in relpaths:
        try:
            images[rel] = load_image(root / rel)
        except (ImageError, OSError) as err:
            log.warning("%s: %s", root / rel, err)
            missing.append(rel)
    return images


def make_embedder(loaded, device: str):
    """The ``Embedder`` that ``who`` uses, for this model."""
    from facesearch.embed import Embedder

    return Embedder(loaded, device=device)


# ---------------------------------------------------------------- verification (pairs)


@dataclass
class PairsReport:
    """Figures of one pairs evaluation, and what the plots need."""

    summary: dict  # JSON-ready: protocol, counts, and per model ("model", "random_baseline") its figures
    labels: np.ndarray  # (n,) bool, the pairs the figures are measured on (the test file in train/test mode)
    scores: dict[str, np.ndarray]  # model name -> (n,) cosine similarities of those pairs
    thresholds: dict[str, float]  # model name -> the "same person" threshold applied to them


def pair_scores(embedded: Embedded, pairs: Sequence[Pair]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosine similarity of each pair whose two photos were both embedded.

    Returns:
        ``(scores, labels, kept)``: (m,) float, (m,) bool and the (m,) indices into ``pairs``.
    """
    kept = np.array([i for i, p in enumerate(pairs) if all(k in embedded.vectors for k in p.paths)], dtype=np.int64)
    if len(kept) == 0:
        return np.zeros(0), np.zeros(0, bool), kept
    a = np.stack([embedded.vectors[pairs[i].paths[0]] for i in kept])  # (m, d)
    b = np.stack([embedded.vectors[pairs[i].paths[1]] for i in kept])  # (m, d)
    labels = np.array([pairs[i].same for i in kept])
    return (a * b).sum(axis=1).astype(np.float64), labels, kept


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


def verification_figures(scores, labels, far_targets=FAR_TARGETS, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUC (with CI) and TAR at each FAR ("not measurable" with fewer than 1/FAR impostor pairs)."""
    roc = metrics.roc_curve(scores, labels)

    def stat_auc(idx):
        return metrics.auc(metrics.roc_curve(scores[idx], labels[idx]))

    tar = {}
    for far in far_targets:
        value = metrics.tar_at_far(scores, labels, far)
        tar[_rate_key(far)] = NOT_MEASURABLE if value is None else value
    return {
        "auc": metrics.auc(roc),
        "auc_ci95": metrics.bootstrap_ci(stat_auc, len(scores), strata=labels, n_boot=n_boot, seed=seed),
        "tar_at_far": tar,
        "n_genuine": int(labels.sum()),
        "n_impostor": int((~labels).sum()),
    }


def train_test_figures(train, test, n_boot: int = 1000, seed: int = 0) -> tuple[dict, float]:
    """Threshold chosen on the train pairs, accuracy on the test pairs (with a bootstrap CI over them).

    Args:
        train, test: ``(scores, labels)`` each.
    Returns:
        ``(figures, threshold)``.
    """
    threshold, train_accuracy = metrics.best_threshold(*train)
    scores, labels = test
    correct = (scores >= threshold) == labels
    ci = metrics.bootstrap_ci(lambda idx: correct[idx].mean(), len(correct), strata=labels, n_boot=n_boot, seed=seed)
    figures = {
        "accuracy": float(correct.mean()),
        "accuracy_ci95": ci,
        "threshold": threshold,
        "train_accuracy": train_accuracy,
    }
    return figures, threshold


def kfold_figures(scores, labels, folds: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0) -> tuple[dict, float]:
    """The k-fold protocol: mean ± std over folds, and a bootstrap CI over pairs (each judged by its fold)."""
    result = metrics.kfold_accuracy(scores, labels, folds)
    correct = result.correct
    ci = metrics.bootstrap_ci(lambda idx: correct[idx].mean(), len(correct), strata=labels, n_boot=n_boot, seed=seed)
    figures = {
        "accuracy": result.mean,
        "accuracy_std": result.std,
        "accuracy_ci95": ci,
        "fold_accuracies": result.accuracies.tolist(),
        "threshold": float(np.median(result.thresholds)),
    }
    return figures, float(np.median(result.thresholds))


def evaluate_pairs(
    model,
    pairs_files: Sequence[str | os.PathLike],
    images_dir: str | os.PathLike,
    *,
    device: str = "auto",
    raw_dir: str | os.PathLike | None = None,
    baseline: bool = True,
    far_targets: Sequence[float] = FAR_TARGETS,
    n_boot: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
) -> PairsReport:
    """The LFW pairs protocol for a model, and for its random-weights baseline.

    Args:
        model: a checkpoint path (or run directory) or a ``LoadedModel``.
        pairs_files: one 10-fold file (threshold chosen on 9 consecutive folds, accuracy on the 10th),
            or a train file and a test file (LFW View 1: threshold from train, accuracy on test).
        images_dir: LFW's ``images`` folder, or a ``prepare`` output made from it.
        device: "auto", "cuda", "cpu".
        raw_dir: see :func:`embed_images`.
        baseline: also evaluate a random-weights model of the same architecture (seed ``seed``).
        n_boot: bootstrap resamples for the 95 % intervals.
    Returns:
        A :class:`PairsReport`; ``report.summary`` is JSON-ready.
    """
    from facesearch.checkpoint import resolve_device

    device = str(resolve_device(device))
    if len(pairs_files) not in (1, 2):
        raise ValueError("give one 10-fold pairs file, or a train file and a test file")
    files = [parse_pairs(p) for p in pairs_files]
    folds = pair_folds(files[0]) if len(files) == 1 else None
    relpaths = {path for f in files for pair in f.pairs for path in pair.paths}
    summary = {
        "kind": "pairs",
        "protocol": f"{len(folds)}-fold" if folds else "train/test",
        "pairs_files": [str(p) for p in pairs_files],
        "images": str(images_dir),
        "n_images": len(relpaths),
    }
    report = PairsReport(summary, np.zeros(0, bool), {}, {})
    for name, loaded in _models(model, device, baseline, seed):
        embedded = embed_images(
            make_embedder(loaded, device), relpaths, images_dir,
            raw_dir=raw_dir, crop_size=loaded.preprocess.input_size, progress=progress,
        )
        if name == "model":
            _note_photos(summary, loaded, embedded)
        figures, scores, labels, threshold = _score_pairs(embedded, files, folds, far_targets, n_boot, seed)
        summary[name] = {"fingerprint": loaded.fingerprint, **figures}
        report.labels, report.scores[name], report.thresholds[name] = labels, scores, threshold
    return report


def _score_pairs(embedded: Embedded, files: list[PairsFile], folds, far_targets, n_boot: int, seed: int):
    """Figures of one model's embeddings; returns (figures, scores, labels, threshold) of the measured pairs."""
    scored = [pair_scores(embedded, f.pairs) for f in files]
    skipped = sum(len(f.pairs) - len(s[2]) for f, s in zip(files, scored))
    if folds is not None:
        scores, labels, kept = scored[0]
        kept_folds = [np.flatnonzero(np.isin(kept, fold)) for fold in folds]  # folds stay the file's blocks
        figures, threshold = kfold_figures(scores, labels, kept_folds, n_boot, seed)
    else:
        train, (scores, labels, _) = scored[0][:2], scored[1]
        figures, threshold = train_test_figures(train, (scores, labels), n_boot, seed)
    figures.update(verification_figures(scores, labels, far_targets, n_boot, seed))
    figures.update(n_pairs=int(len(scores)), n_pairs_skipped=int(skipped))
    return figures, scores, labels, threshold


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
    figures = {"n_mated_probes": int(len(mated)), "n_nonmated_probes": int(len(nonmated))}
    figures.update(_rank_figures(rank, n_boot, seed))
    figures.update(_dir_figures(mated.max(axis=1), rank == 1, nonmated.max(axis=1), fpir_targets, n_boot, seed))
    figures.update(_balanced_figures(mated.max(axis=1), rank == 1, nonmated.max(axis=1), n_boot, seed))
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
        key = _rate_key(fpir)
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


def list_photos(data_dir: str | os.PathLike, splits: Sequence[str] | None = None) -> dict[str, list[str]]:
    """identity -> photo keys: the manifest's usable rows of a ``prepare`` output, else ``<identity>/*`` images.

    ``splits`` keeps only a prepare output's rows of those splits (e.g. ``["holdout"]``: people never trained on).
    """
    data_dir = Path(data_dir)
    photos: dict[str, list[str]] = {}
    if is_prepared(data_dir):
        from facesearch.data.manifest import ok_rows

        for row in ok_rows(read_manifest(data_dir)):
            if splits is None or row.split in splits:
                photos.setdefault(row.identity, []).append(row.path)
    elif splits is not None:
        raise ValueError(f"{data_dir}: splits are only known for a `facesearch prepare` output")
    else:
        for path in sorted(data_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and path.parent != data_dir:
                identity = path.parent.relative_to(data_dir).as_posix()
                photos.setdefault(identity, []).append(path.relative_to(data_dir).as_posix())
    return photos


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
    from facesearch.checkpoint import resolve_device

    device = str(resolve_device(device))
    split = split_open_set(list_photos(data_dir, splits), enroll_per_identity, seed)
    if not split.enrolled:
        raise ValueError(
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
    for name, loaded in _models(model, device, baseline, seed):
        embedder = make_embedder(loaded, device)
        embedded = embed_images(embedder, keys, data_dir, crop_size=loaded.preprocess.input_size, progress=progress)
        if extra:
            more = embed_images(embedder, [k[len(DISTRACTOR_PREFIX):] for k, _ in extra], distractors,
                                crop_size=loaded.preprocess.input_size, progress=progress)
            embedded.vectors.update((DISTRACTOR_PREFIX + k, v) for k, v in more.vectors.items())
            embedded.fallback += [DISTRACTOR_PREFIX + k for k in more.fallback]
            embedded.missing += [DISTRACTOR_PREFIX + k for k in more.missing]
        if name == "model":
            _note_photos(summary, loaded, embedded)
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
        raise ValueError(f"{folder}: no distractor photos" + (f" in split(s) {', '.join(splits)}" if splits else ""))
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


def _note_photos(summary: dict, loaded, embedded: Embedded) -> None:
    """Record the model and how many photos fell back to a centre crop or were missing."""
    summary.update(checkpoint=str(loaded.path), fingerprint=loaded.fingerprint)
    summary.update(n_center_crop_fallback=len(embedded.fallback), n_missing_images=len(embedded.missing))
    summary["missing_images"] = embedded.missing[:20]  # a sample, to look at


# ---------------------------------------------------------------- results file


def append_result(path: str | os.PathLike, summary: dict) -> dict:
    """Append one evaluation (its figures, the checkpoint fingerprint, the date) as a line of JSON.

    Returns:
        The record written.
    """
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **summary}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=False) + "\n")
    return record


def read_results(path: str | os.PathLike) -> list[dict]:
    """Every record of a results file, oldest first."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
