"""Metrics against values computed by hand on tiny inputs."""

import numpy as np
import pytest

from edge import metrics

# Genuine distances 0.2, 0.4, 0.9; impostor distances 0.5, 1.0, 1.2, 1.5.
DIST = np.array([0.2, 0.4, 0.9, 0.5, 1.0, 1.2, 1.5])
SAME = np.array([True, True, True, False, False, False, False])


def test_pair_distances_enumerates_each_pair_once():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    d, same = metrics.pair_distances(emb, ["a", "b", "a"])
    assert np.allclose(d, [np.sqrt(2), 0.0, np.sqrt(2)])
    assert same.tolist() == [False, True, False]


def test_l2_distances_matches_definition():
    rng = np.random.default_rng(1)
    q, r = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
    expected = np.linalg.norm(q[:, None, :] - r[None, :, :], axis=2)
    assert np.allclose(metrics.l2_distances(q, r), expected, atol=1e-5)


def test_roc_auc_by_hand():
    # Genuine-closer-than-impostor pairs: 0.2 and 0.4 beat all 4 impostors (8); 0.9 beats 3 of 4 (3) -> 11/12.
    assert metrics.roc_auc(DIST, SAME) == pytest.approx(11 / 12)


def test_roc_auc_counts_ties_half():
    assert metrics.roc_auc(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.5)


def test_roc_points():
    far, tar, thr = metrics.roc(DIST, SAME)
    assert far[0] == 0 and tar[0] == 0 and far[-1] == 1 and tar[-1] == 1
    # At threshold 0.5: two genuines accepted, one impostor.
    i = int(np.where(thr == 0.5)[0][0])
    assert tar[i] == pytest.approx(2 / 3) and far[i] == pytest.approx(1 / 4)


def test_threshold_and_tar_at_far_zero():
    # FAR 0 must reject the impostor at 0.5: threshold halfway between 0.4 and 0.5, TAR 2/3.
    tar, thr = metrics.tar_at_far(DIST, SAME, 0.0)
    assert thr == pytest.approx(0.45)
    assert tar == pytest.approx(2 / 3)


def test_tar_at_far_quarter_allows_one_impostor():
    tar, thr = metrics.tar_at_far(DIST, SAME, 0.25)
    assert thr == pytest.approx(0.95)  # between 0.9 and the next impostor 1.0
    assert tar == pytest.approx(1.0)
    assert metrics.rates_at(DIST, SAME, thr) == (pytest.approx(1.0), pytest.approx(0.25))


def test_equal_error_rate_by_hand():
    # Perfect separation -> 0.
    assert metrics.equal_error_rate(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0], bool)) == 0.0
    # One genuine at 0.6 above one impostor at 0.5 out of 2 each:
    # at t=0.5 FAR 1/2, FRR 1/2 -> EER 0.5... check against the ROC crossing.
    d = np.array([0.1, 0.6, 0.5, 0.9])
    s = np.array([True, True, False, False])
    assert metrics.equal_error_rate(d, s) == pytest.approx(0.5)


def test_best_accuracy_threshold_and_kfold():
    assert metrics.best_accuracy_threshold(DIST, SAME) == pytest.approx(0.45)
    # Perfectly separable data gives 100% in every fold.
    rng = np.random.default_rng(0)
    d = np.concatenate([rng.uniform(0.1, 0.8, 50), rng.uniform(1.0, 1.6, 50)])
    s = np.concatenate([np.ones(50, bool), np.zeros(50, bool)])
    assert metrics.kfold_accuracy(d, s, folds=10) == 1.0
    # Swap one genuine far out: it is misclassified in its own fold -> 99/100.
    d[0] = 1.55
    assert metrics.kfold_accuracy(d, s, folds=10) == pytest.approx(0.99)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="genuine and one impostor"):
        metrics.roc_auc(np.array([0.1]), np.array([True]))
    with pytest.raises(ValueError, match="far must be"):
        metrics.threshold_at_far(DIST, SAME, 2.0)
    with pytest.raises(ValueError, match="labels"):
        metrics.pair_distances(np.zeros((2, 3)), ["a"])
