"""Verification by the LFW pairs protocol: pairs files, 10-fold or train/test accuracy, ROC, TAR at FAR.

Reads LFW's pairs files (with or without their count header), embeds each photo once, and reports for the model
and its random-weights baseline: accuracy with a bootstrap CI (10-fold: threshold on 9 consecutive folds,
accuracy on the 10th; train/test: threshold from the train file), ROC AUC and TAR at each FAR.
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
    make_embedder,
    models_to_score,
    note_photos,
    rate_key,
)
from facesearch.runtime import resolve_device

FAR_TARGETS = (1e-2, 1e-3)


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
            raise BadInput(f"{path}: header {said} promises {expected} pairs, found {len(pairs)}")
    return PairsFile(str(path), pairs, header[0] if header and len(header) == 2 else None)


def _parse_pair_line(path, no: int, tokens: list[str]) -> Pair:
    try:
        if len(tokens) == 3:
            return Pair(tokens[0], int(tokens[1]), tokens[0], int(tokens[2]), True)
        if len(tokens) == 4:
            return Pair(tokens[0], int(tokens[1]), tokens[2], int(tokens[3]), False)
    except ValueError:
        pass
    raise BadInput(f"{path}, line {no}: expected 'name i j' or 'name1 i name2 j', got {' '.join(tokens)!r}")


def pair_folds(pairs_file: PairsFile, default_folds: int = 10) -> list[np.ndarray]:
    """The fixed consecutive folds of a 10-fold file; an error when a fold lacks either kind of pair."""
    folds = metrics.consecutive_folds(len(pairs_file.pairs), pairs_file.n_folds or default_folds)
    same = np.array([p.same for p in pairs_file.pairs])
    for i, fold in enumerate(folds):
        if same[fold].all() or not same[fold].any():
            raise BadInput(
                f"{pairs_file.path}: fold {i + 1} holds only {'matched' if same[fold].all() else 'mismatched'} "
                "pairs, so it is not a 10-fold file; pass a train file and a test file (LFW View 1)"
            )
    return folds


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


def verification_figures(scores, labels, far_targets=FAR_TARGETS, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUC (with CI) and TAR at each FAR ("not measurable" with fewer than 1/FAR impostor pairs)."""
    roc = metrics.roc_curve(scores, labels)

    def stat_auc(idx):
        return metrics.auc(metrics.roc_curve(scores[idx], labels[idx]))

    tar = {}
    for far in far_targets:
        value = metrics.tar_at_far(scores, labels, far)
        tar[rate_key(far)] = NOT_MEASURABLE if value is None else value
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
        raw_dir: see :func:`embed_photos`.
        baseline: also evaluate a random-weights model of the same architecture (seed ``seed``).
        n_boot: bootstrap resamples for the 95 % intervals.
    Returns:
        A :class:`PairsReport`; ``report.summary`` is JSON-ready.
    """
    device = str(resolve_device(device))
    if len(pairs_files) not in (1, 2):
        raise BadInput("give one 10-fold pairs file, or a train file and a test file")
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
    for name, loaded in models_to_score(model, device, baseline, seed):
        embedded = embed_photos(
            make_embedder(loaded, device), relpaths, images_dir,
            raw_dir=raw_dir, crop_size=loaded.preprocess.input_size, progress=progress,
        )
        if name == "model":
            note_photos(summary, loaded, embedded)
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
