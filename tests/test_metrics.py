"""Metrics on synthetic scores whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from facesearch.evaluation import metrics


def test_roc_and_auc_match_a_hand_computed_example():
    # Two impostors (0.1, 0.4), two genuine (0.35, 0.8): 3 of the 4 genuine/impostor orderings are right.
    roc = metrics.roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert metrics.auc(roc) == pytest.approx(0.75)
    assert roc.far.tolist() == [0, 0, 0.5, 0.5, 1]
    assert roc.tar.tolist() == [0, 0.5, 0.5, 1, 1]
    assert np.isinf(roc.thresholds[0])


def test_auc_is_one_when_separated_and_zero_when_reversed():
    labels = [1, 1, 0, 0]
    assert metrics.auc(metrics.roc_curve([0.9, 0.8, 0.2, 0.1], labels)) == 1.0
    assert metrics.auc(metrics.roc_curve([0.1, 0.2, 0.8, 0.9], labels)) == 0.0


def test_roc_moves_tied_scores_together():
    roc = metrics.roc_curve([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0])
    assert roc.far.tolist() == [0, 1] and roc.tar.tolist() == [0, 1]
    assert metrics.auc(roc) == pytest.approx(0.5)


def test_roc_needs_both_classes():
    with pytest.raises(ValueError, match="both"):
        metrics.roc_curve([0.1, 0.2], [1, 1])


def test_threshold_at_rate_keeps_at_most_the_allowed_false_accepts():
    negatives = np.arange(100) / 100.0  # 0.00 .. 0.99
    t = metrics.threshold_at_rate(negatives, 0.05)
    assert np.sum(negatives >= t) == 5  # exactly 5 % accepted
    assert metrics.threshold_at_rate(negatives, 0.001) is None  # needs 1000 negatives
    assert metrics.threshold_at_rate(negatives, 0.01) > 0.98  # 1 of 100: only 0.99 passes


def test_threshold_at_rate_rejects_ties_rather_than_exceed_the_rate():
    negatives = np.r_[np.full(10, 0.9), np.zeros(90)]
    t = metrics.threshold_at_rate(negatives, 0.05)  # 5 allowed, but 10 are tied at 0.9
    assert np.sum(negatives >= t) == 0


def test_tar_at_far_known_answer_and_not_measurable():
    rng = np.random.default_rng(0)
    impostors = rng.uniform(0, 1, 1000)
    genuine = np.r_[np.full(70, 2.0), np.full(30, 0.5)]  # 70 % clearly above every impostor
    scores = np.r_[genuine, impostors]
    labels = np.r_[np.ones(100), np.zeros(1000)]
    assert metrics.tar_at_far(scores, labels, 1e-3) == pytest.approx(0.70)
    assert metrics.tar_at_far(scores, labels, 1e-4) is None  # 1000 impostors cannot show 1e-4


def test_best_threshold_finds_the_gap_and_scores_accuracy():
    scores = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    labels = [0, 0, 0, 1, 1, 1]
    threshold, accuracy = metrics.best_threshold(scores, labels)
    assert accuracy == 1.0
    assert threshold == pytest.approx(0.5)  # midway between 0.3 and 0.7
    assert metrics.accuracy_at(scores, labels, threshold) == 1.0


def test_best_threshold_with_overlap():
    # Best cut is at 0.45 (5 of 6 right); no threshold gets all 6.
    scores = [0.1, 0.2, 0.5, 0.4, 0.8, 0.9]
    labels = [0, 0, 0, 1, 1, 1]
    threshold, accuracy = metrics.best_threshold(scores, labels)
    assert accuracy == pytest.approx(5 / 6)
    assert metrics.accuracy_at(scores, labels, threshold) == pytest.approx(5 / 6)


def test_consecutive_folds_are_fixed_blocks_in_file_order():
    folds = metrics.consecutive_folds(20, 10)
    assert [f.tolist() for f in folds[:2]] == [[0, 1], [2, 3]]
    assert np.concatenate(folds).tolist() == list(range(20))  # never reshuffled
    with pytest.raises(ValueError, match="equal folds"):
        metrics.consecutive_folds(21, 10)


def test_kfold_chooses_each_threshold_without_its_own_fold():
    # Folds 0-8 separate at 0.5. Fold 9 (0.6 genuine, 0.55 impostor) would be judged perfectly by a
    # cut at 0.575, which is what a threshold chosen on all 20 pairs finds; chosen on the other nine
    # folds the cut is 0.5, so fold 9 scores 50 %.
    blocks = [([0.9, 0.1], [1, 0])] * 9 + [([0.6, 0.55], [1, 0])]
    scores = np.concatenate([b[0] for b in blocks])
    labels = np.concatenate([b[1] for b in blocks])
    assert metrics.best_threshold(scores, labels) == (pytest.approx(0.575), 1.0)
    result = metrics.kfold_accuracy(scores, labels, metrics.consecutive_folds(20, 10))
    assert result.accuracies[:9].tolist() == [1.0] * 9
    assert result.accuracies[9] == 0.5
    assert result.thresholds[9] == pytest.approx(0.5)
    assert result.mean == pytest.approx(0.95)
    assert result.std == pytest.approx(np.std([1.0] * 9 + [0.5]))
    assert result.correct.sum() == 19


def test_identity_scores_take_the_best_template_per_identity():
    sims = np.array([[0.1, 0.9, 0.3], [0.5, 0.2, 0.4]])  # 2 probes x 3 templates
    scores, ids = metrics.identity_scores(sims, ["b", "a", "b"])
    assert ids.tolist() == ["a", "b"]
    assert scores.tolist() == [[0.9, 0.3], [0.2, 0.5]]


def test_rank_k_rates():
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # truth 0: rank 1
            [0.9, 0.8, 0.2, 0.3],  # truth 1: rank 2
            [0.9, 0.8, 0.7, 0.1],  # truth 3: rank 4
        ]
    )
    truth = np.array([0, 1, 3])
    assert metrics.ranks(scores, truth).tolist() == [1, 2, 4]
    assert metrics.rank_k_rates(scores, truth, ks=(1, 2, 5)) == {
        1: pytest.approx(1 / 3),
        2: pytest.approx(2 / 3),
        5: 1.0,
    }


def test_dir_at_fpir_known_answer():
    # 4 mated probes over 2 identities; 100 non-mated probes with best scores 0.00 .. 0.99.
    mated = np.array([[1.5, 0.0], [0.0, 1.2], [0.5, 0.0], [0.9, 0.95]])
    truth = np.array([0, 1, 0, 0])  # last one is ranked second: never counts
    nonmated = np.stack([np.arange(100) / 100.0, np.zeros(100)], axis=1)
    # FPIR 1e-1: threshold just above 0.89, so probes scoring 1.5 and 1.2 count: DIR = 2/4.
    assert metrics.dir_at_fpir(mated, truth, nonmated, 0.1) == pytest.approx(0.5)
    # FPIR 0.6: threshold just above 0.39 -> the 0.5 probe counts too.
    assert metrics.dir_at_fpir(mated, truth, nonmated, 0.6) == pytest.approx(0.75)
    assert metrics.dir_at_fpir(mated, truth, nonmated, 1e-3) is None


def test_dir_fpir_curve_is_monotone_and_ends_at_rank1_rate():
    rng = np.random.default_rng(1)
    mated = rng.normal(size=(50, 10))
    truth = rng.integers(0, 10, 50)
    mated[np.arange(50), truth] += 2.0
    nonmated = rng.normal(size=(80, 10))
    curve = metrics.dir_fpir_curve(mated, truth, nonmated)
    assert curve.fpir[0] == 0 and curve.dir[0] == 0
    assert np.all(np.diff(curve.fpir) >= 0) and np.all(np.diff(curve.dir) >= 0)
    assert curve.fpir[-1] == 1.0
    assert curve.dir[-1] == pytest.approx(metrics.rank_k_rates(mated, truth, ks=(1,))[1])


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(2)
    small = rng.random(50) < 0.8
    large = rng.random(5000) < 0.8

    def width(correct):
        low, high = metrics.bootstrap_ci(lambda idx: correct[idx].mean(), len(correct), n_boot=300)
        assert low <= correct.mean() <= high
        return high - low

    assert width(large) < width(small) / 3


def test_bootstrap_ci_keeps_strata_sizes_and_skips_unmeasurable():
    labels = np.r_[np.ones(10), np.zeros(90)]
    seen = []
    metrics.bootstrap_ci(lambda idx: seen.append(labels[idx].sum()) or 0.0, 100, strata=labels, n_boot=20)
    assert set(seen) == {10}
    assert metrics.bootstrap_ci(lambda idx: None, 10, n_boot=5) is None


def test_equal_error_balances_the_two_error_rates():
    pos = np.array([0.9, 0.8, 0.7, 0.6, 0.3])  # one enrolled photo scores low
    neg = np.array([0.65, 0.5, 0.4, 0.2, 0.1])  # one stranger scores high
    ee = metrics.equal_error(pos, neg)
    assert ee.threshold == pytest.approx(0.6) and ee.false_accept == pytest.approx(0.2)
    assert ee.false_reject == pytest.approx(0.2) and ee.rate == pytest.approx(0.2)
    assert metrics.equal_error([2.0, 3.0], [0.0, 1.0]).rate == 0.0  # separable: no error at all
    with pytest.raises(ValueError, match="both positive and negative"):
        metrics.equal_error([], neg)
