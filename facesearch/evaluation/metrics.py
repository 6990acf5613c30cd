"""Verification and identification metrics on similarity scores (numpy only).

Shared by ``evaluate``, ``calibrate`` and the gallery. Conventions throughout:

- a higher score means "more alike" (cosine similarity of L2-normalised embeddings);
- a pair or probe is *accepted* when ``score >= threshold``;
- labels are ``True`` for genuine pairs (same person; "mated" probes), ``False`` for impostors.

Operating points at a small rate (TAR at FAR, DIR at FPIR) need enough negatives to exist: a FAR of
1e-3 measured on 500 impostor pairs is a guess, so those functions return ``None`` ("not measurable")
when there are fewer than ``1 / rate`` negatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from facesearch.errors import BadInput


@dataclass(frozen=True)
class Roc:
    """Receiver operating characteristic, one point per distinct score (plus "accept nothing")."""

    far: np.ndarray  # (m,) false accept rate, non-decreasing from 0
    tar: np.ndarray  # (m,) true accept rate, non-decreasing from 0
    thresholds: np.ndarray  # (m,) accept when score >= threshold; thresholds[0] is +inf


@dataclass(frozen=True)
class KFoldResult:
    """Accuracy of a threshold chosen on the other folds, for each fold in turn."""

    accuracies: np.ndarray  # (k,) accuracy on each held-out fold
    thresholds: np.ndarray  # (k,) threshold chosen on the other k-1 folds
    correct: np.ndarray  # (n,) bool, each pair judged with its own fold's threshold

    @property
    def mean(self) -> float:
        return float(self.accuracies.mean())

    @property
    def std(self) -> float:
        """Population std of the fold accuracies (ddof=0), as the usual LFW evaluation code reports."""
        return float(self.accuracies.std())


@dataclass(frozen=True)
class DirFpirCurve:
    """Detection-and-identification rate against false-positive identification rate."""

    fpir: np.ndarray  # (m,) share of non-mated probes whose best score >= threshold
    dir: np.ndarray  # (m,) share of mated probes ranked first AND scoring >= threshold
    thresholds: np.ndarray  # (m,) descending; thresholds[0] is +inf


def _check_pairs(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    if labels.all() or not labels.any():
        raise BadInput("need both genuine and impostor pairs")
    return scores, labels


def min_negatives(rate: float) -> int:
    """Fewest negatives that make a false-accept/false-positive rate of ``rate`` measurable."""
    return math.ceil(1.0 / rate - 1e-9)


def threshold_at_rate(negatives, rate: float) -> float | None:
    """Lowest threshold at which at most ``rate`` of the negatives are accepted.

    Args:
        negatives: scores of impostor pairs, or best gallery scores of non-mated probes.
        rate: target FAR / FPIR, e.g. 1e-2.

    Returns:
        The threshold (accept when ``score >= threshold``), or None when fewer than ``1 / rate``
        negatives exist, so the rate cannot be measured.
    """
    neg = np.sort(np.asarray(negatives, dtype=np.float64).ravel())[::-1]  # descending
    if len(neg) == 0 or len(neg) < min_negatives(rate):
        return None
    allowed = int(math.floor(rate * len(neg) + 1e-9))  # false accepts we may keep
    if allowed >= len(neg):
        return float(-np.inf)
    # Just above the (allowed+1)-th highest negative: ties with it are rejected too, so the
    # achieved rate never exceeds the target.
    return float(np.nextafter(neg[allowed], np.inf))


def roc_curve(scores, labels) -> Roc:
    """ROC of a verification score: one point per distinct score, from strictest to loosest."""
    scores, labels = _check_pairs(scores, labels)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # ties move together
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(~y)[last_of_run]
    return Roc(
        far=np.r_[0, fp] / (~y).sum(),
        tar=np.r_[0, tp] / y.sum(),
        thresholds=np.r_[np.inf, s[last_of_run]],
    )


def auc(roc: Roc) -> float:
    """Area under the ROC curve (trapezoids); 0.5 is chance, 1.0 a perfect separation."""
    return float(np.sum(np.diff(roc.far) * (roc.tar[1:] + roc.tar[:-1]) / 2))


def tar_at_far(scores, labels, far: float) -> float | None:
    """True accept rate at the threshold giving at most ``far`` false accepts; None if not measurable."""
    scores, labels = _check_pairs(scores, labels)
    threshold = threshold_at_rate(scores[~labels], far)
    if threshold is None:
        return None
    return float(np.mean(scores[labels] >= threshold))


def accuracy_at(scores, labels, threshold: float) -> float:
    """Share of pairs judged right when pairs scoring ``>= threshold`` are called "same"."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    return float(np.mean((scores >= threshold) == labels))


def best_threshold(scores, labels) -> tuple[float, float]:
    """The threshold with the highest accuracy on these pairs.

    Returns:
        ``(threshold, accuracy)``. The threshold sits midway between the two distinct scores it
        separates; among equally accurate thresholds the strictest is kept.
    """
    scores, labels = _check_pairs(scores, labels)
    roc = roc_curve(scores, labels)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    accuracy = (roc.tar * n_pos + (1 - roc.far) * n_neg) / len(scores)  # (m,)
    j = int(np.argmax(accuracy))
    t = roc.thresholds
    if j == 0:  # accept nothing
        threshold = float(np.nextafter(t[1], np.inf))
    elif j + 1 < len(t):
        threshold = float((t[j] + t[j + 1]) / 2)
    else:
        threshold = float(t[j])
    return threshold, float(accuracy[j])


@dataclass(frozen=True)
class EqualError:
    """The threshold at which as many positives are refused as negatives accepted (as near as the scores allow)."""

    threshold: float  # accept when score >= threshold
    false_accept: float  # share of negatives accepted at it
    false_reject: float  # share of positives refused at it

    @property
    def rate(self) -> float:
        """The equal error rate: the larger of the two errors at the threshold."""
        return max(self.false_accept, self.false_reject)


def equal_error(positives, negatives) -> EqualError:
    """The equal-error operating point of a score: the threshold minimising the larger of the two error rates.

    Args:
        positives: scores that should be accepted (genuine pairs; best scores of enrolled people's photos).
        negatives: scores that should be refused (impostor pairs; best scores of strangers' photos).
    Raises:
        ValueError: either side is empty.
    """
    pos, neg = np.asarray(positives, np.float64).ravel(), np.asarray(negatives, np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise BadInput("an equal-error threshold needs both positive and negative scores")
    roc = roc_curve(np.r_[pos, neg], np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    worst = np.maximum(roc.far, 1 - roc.tar)  # (m,)
    j = int(np.argmin(worst))  # the strictest of equally good thresholds
    return EqualError(float(roc.thresholds[j]), float(roc.far[j]), float(1 - roc.tar[j]))


def consecutive_folds(n: int, n_folds: int = 10) -> list[np.ndarray]:
    """Indices of ``n_folds`` fixed consecutive blocks of ``0..n-1`` (the LFW protocol; never shuffled)."""
    if n % n_folds:
        raise BadInput(f"{n} pairs do not split into {n_folds} equal folds")
    return list(np.arange(n).reshape(n_folds, n // n_folds))


def kfold_accuracy(scores, labels, folds: Sequence[np.ndarray]) -> KFoldResult:
    """Choose the threshold on all folds but one, measure accuracy on that one, for each fold."""
    scores, labels = _check_pairs(scores, labels)
    accuracies, thresholds = [], []
    correct = np.zeros(len(scores), dtype=bool)
    for i, test in enumerate(folds):
        train = np.concatenate([f for j, f in enumerate(folds) if j != i])
        threshold, _ = best_threshold(scores[train], labels[train])
        correct[test] = (scores[test] >= threshold) == labels[test]
        accuracies.append(correct[test].mean())
        thresholds.append(threshold)
    return KFoldResult(np.array(accuracies), np.array(thresholds), correct)


def identity_scores(similarities, template_ids) -> tuple[np.ndarray, np.ndarray]:
    """Reduce probe-vs-template similarities to probe-vs-identity scores (best template wins).

    Args:
        similarities: (n_probes, n_templates) scores against every enrolled photo.
        template_ids: (n_templates,) the identity of each enrolled photo.

    Returns:
        ``(scores, ids)``: (n_probes, n_ids) scores and the (n_ids,) sorted identities of the columns.
    """
    sims = np.asarray(similarities, dtype=np.float64)
    ids, inverse = np.unique(np.asarray(template_ids), return_inverse=True)
    order = np.argsort(inverse, kind="mergesort")
    starts = np.searchsorted(inverse[order], np.arange(len(ids)))
    return np.maximum.reduceat(sims[:, order], starts, axis=1), ids


def ranks(scores, truth) -> np.ndarray:
    """(n,) 1-based rank of each probe's true identity (1 + number of identities scoring higher).

    Args:
        scores: (n_probes, n_ids) probe-vs-identity scores of mated probes.
        truth: (n_probes,) column index of each probe's true identity.
    """
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64)
    true_score = scores[np.arange(len(truth)), truth]
    return 1 + (scores > true_score[:, None]).sum(axis=1)


def rank_k_rates(scores, truth, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Closed-set identification rate at each rank k: share of probes whose identity is in the top k."""
    r = ranks(scores, truth)
    return {k: float(np.mean(r <= k)) for k in ks}


def _mated_top(mated, truth) -> tuple[np.ndarray, np.ndarray]:
    """(best score, rank-1 correct) of each mated probe."""
    mated = np.asarray(mated, dtype=np.float64)
    return mated.max(axis=1), ranks(mated, truth) == 1


def dir_at_fpir(mated, truth, nonmated, fpir: float) -> float | None:
    """Detection-and-identification rate at a false-positive identification rate (open set).

    Args:
        mated: (n_mated, n_ids) scores of probes whose person is enrolled.
        truth: (n_mated,) column of each mated probe's identity.
        nonmated: (n_nonmated, n_ids) scores of probes of people never enrolled.
        fpir: target share of non-mated probes wrongly matched to someone, e.g. 1e-2.

    Returns:
        Share of mated probes ranked first and scoring above the threshold, or None when fewer
        than ``1 / fpir`` non-mated probes exist.
    """
    top, correct = _mated_top(mated, truth)
    return dir_from_top(top, correct, np.asarray(nonmated, dtype=np.float64).max(axis=1), fpir)


def dir_from_top(top, correct, nonmated_top, fpir: float) -> float | None:
    """:func:`dir_at_fpir` from each probe's best score alone (cheap enough to bootstrap).

    Args:
        top: (n_mated,) best gallery score of each mated probe.
        correct: (n_mated,) bool, whether that best score is the probe's own identity.
        nonmated_top: (n_nonmated,) best gallery score of each non-mated probe.
    """
    threshold = threshold_at_rate(nonmated_top, fpir)
    if threshold is None or len(top) == 0:
        return None
    return float(np.mean(np.asarray(correct) & (np.asarray(top) >= threshold)))


def dir_fpir_curve(mated, truth, nonmated) -> DirFpirCurve:
    """DIR against FPIR over every threshold that changes either."""
    top, correct = _mated_top(mated, truth)
    hits = np.sort(top[correct])  # ascending, for searchsorted
    neg = np.sort(np.asarray(nonmated, dtype=np.float64).max(axis=1))
    thresholds = np.r_[np.inf, np.unique(np.r_[hits, neg])[::-1]]

    def above(sorted_scores: np.ndarray) -> np.ndarray:  # how many score >= each threshold
        return len(sorted_scores) - np.searchsorted(sorted_scores, thresholds, "left")

    return DirFpirCurve(
        fpir=above(neg) / max(len(neg), 1),
        dir=above(hits) / max(len(top), 1),
        thresholds=thresholds,
    )


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | None],
    n: int,
    *,
    strata=None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of a statistic over ``n`` items.

    Args:
        statistic: called with an (n,) array of resampled item indices; may return None
            (e.g. "not measurable" on that resample), which is skipped.
        n: number of items (pairs or probes).
        strata: optional (n,) labels; each stratum is resampled on its own, so e.g. the share
            of genuine pairs stays fixed.
        n_boot: number of resamples.
        confidence: e.g. 0.95 for a 95 % interval.
        seed: fixes the resamples, so reruns report the same interval.

    Returns:
        ``(low, high)``, or None when the statistic was never measurable.
    """
    rng = np.random.default_rng(seed)
    if strata is None:
        groups = [np.arange(n)]
    else:
        strata = np.asarray(strata)
        groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        value = statistic(idx)
        if value is not None:
            values.append(value)
    if not values:
        return None
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
