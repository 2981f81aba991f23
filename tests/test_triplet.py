"""Triplet loss and online mining against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tools.triplet import (  # noqa: E402
    TripletLoss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
    triplet_loss,
)


def test_triplet_loss_hand_computed() -> None:
    anchor = np.array([[0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    positive = np.array([[0.3, 0.4], [1.0, 0.1]], dtype=np.float32)  # d^2 = 0.25, 0.01
    negative = np.array([[0.6, 0.0], [0.0, 0.0]], dtype=np.float32)  # d^2 = 0.36, 1.0
    # max(0.25 - 0.36 + 0.2, 0) = 0.09 ; max(0.01 - 1.0 + 0.2, 0) = 0
    np.testing.assert_allclose(np.asarray(triplet_loss(anchor, positive, negative, 0.2)), [0.09, 0.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(triplet_loss(anchor, positive, negative, 1.0)), [0.89, 0.01], atol=1e-6)


def test_keras_loss_reads_anchor_positive_negative_thirds() -> None:
    batch = np.array([[0.0, 0.0], [1.0, 0.0],   # anchors
                      [0.3, 0.4], [1.0, 0.1],   # positives
                      [0.6, 0.0], [0.0, 0.0]],  # negatives
                     dtype=np.float32)
    loss = TripletLoss(alpha=0.2)
    assert float(loss(np.zeros(6), batch)) == pytest.approx((0.09 + 0.0) / 2, abs=1e-6)
    assert TripletLoss.from_config(loss.get_config()).alpha == pytest.approx(0.2)
    with pytest.raises(ValueError, match="alpha"):
        TripletLoss(alpha=-0.1)


def test_batch_hard_picks_farthest_positive_and_nearest_negative() -> None:
    # 1-D embeddings: labels 0,0,1,1 at positions 0, 1, 1.5, 3
    emb = np.array([[0.0], [1.0], [1.5], [3.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    # anchor 0: pos d^2=1, nearest neg d^2=2.25 -> max(1-2.25+0.2,0)=0
    # anchor 1: pos 1, neg 0.25 -> 0.95 ; anchor 2: pos 2.25, neg 0.25 -> 2.2 ; anchor 3: pos 2.25, neg 4 -> 0
    expected = (0 + 0.95 + 2.2 + 0) / 4
    assert float(batch_hard_triplet_loss(labels, emb, 0.2)) == pytest.approx(expected, abs=1e-5)


def test_semi_hard_prefers_negative_beyond_positive() -> None:
    emb = np.array([[0.0], [1.0], [1.5], [3.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    # pairs (a,p): (0,1) d_ap=1: negs d^2 2.25, 9 -> semi-hard 2.25 -> max(1-2.25+.2,0)=0
    # (1,0) d_ap=1: negs 0.25, 4 -> semi-hard 4 -> 0
    # (2,3) d_ap=2.25: negs 2.25(not >), 0.25 -> none beyond -> farthest 2.25 -> 0.2
    # (3,2) d_ap=2.25: negs 9, 4 -> nearest beyond 4 -> 0
    expected = (0 + 0 + 0.2 + 0) / 4
    assert float(semi_hard_triplet_loss(labels, emb, 0.2)) == pytest.approx(expected, abs=1e-5)


def test_mining_without_positives_is_zero() -> None:
    emb = np.eye(3, dtype=np.float32)
    assert float(batch_hard_triplet_loss(np.array([0, 1, 2]), emb)) == 0.0
    assert float(semi_hard_triplet_loss(np.array([0, 1, 2]), emb)) == 0.0
