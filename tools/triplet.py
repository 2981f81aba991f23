"""Triplet loss (FaceNet, Schroff et al. 2015) and online triplet mining for fine-tuning.

L(A, P, N) = max(||f(A) - f(P)||^2 - ||f(A) - f(N)||^2 + alpha, 0)

The model is compiled with `TripletLoss`, which reads a batch of embeddings laid out as
[anchors; positives; negatives] (three equal thirds along the batch axis), the layout FaceNet's
own training code used. `y_true` is ignored by that layout. The mining functions take a batch of
embeddings with integer identity labels instead and pick triplets inside the batch.
"""

from __future__ import annotations

import keras
from keras import ops

DEFAULT_ALPHA = 0.2


def triplet_loss(anchor, positive, negative, alpha: float = DEFAULT_ALPHA):
    """Per-triplet loss max(d(a,p)^2 - d(a,n)^2 + alpha, 0); inputs are (K, D) tensors."""
    pos_dist = ops.sum(ops.square(anchor - positive), axis=-1)
    neg_dist = ops.sum(ops.square(anchor - negative), axis=-1)
    return ops.maximum(pos_dist - neg_dist + alpha, 0.0)


def split_triplets(embeddings):
    """Split a (3K, D) batch laid out as [anchors; positives; negatives] into its three parts."""
    batch = ops.shape(embeddings)[0]
    third = batch // 3
    return embeddings[:third], embeddings[third:2 * third], embeddings[2 * third:3 * third]


@keras.saving.register_keras_serializable(package="edge_face")
class TripletLoss(keras.losses.Loss):
    """Keras loss over a [anchors; positives; negatives] batch; mean over the K triplets."""

    def __init__(self, alpha: float = DEFAULT_ALPHA, name: str = "triplet_loss", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        if alpha < 0:
            raise ValueError(f"triplet margin alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)

    def call(self, y_true, y_pred):
        anchor, positive, negative = split_triplets(y_pred)
        # One value per triplet; Keras then averages them (sum_over_batch_size).
        return triplet_loss(anchor, positive, negative, self.alpha)

    def get_config(self) -> dict:
        config = super().get_config()
        config["alpha"] = self.alpha
        return config


def pairwise_squared_distances(embeddings):
    """(N, N) squared L2 distances, clipped at 0 against rounding."""
    dot = ops.matmul(embeddings, ops.transpose(embeddings))
    norms = ops.diagonal(dot)
    dist = ops.expand_dims(norms, 0) - 2.0 * dot + ops.expand_dims(norms, 1)
    return ops.maximum(dist, 0.0)


def _masks(labels):
    labels = ops.reshape(labels, (-1,))
    same = ops.equal(ops.expand_dims(labels, 0), ops.expand_dims(labels, 1))
    eye = ops.cast(ops.eye(ops.shape(labels)[0]), "bool")
    positive = ops.logical_and(same, ops.logical_not(eye))
    negative = ops.logical_not(same)
    return positive, negative


def batch_hard_triplet_loss(labels, embeddings, alpha: float = DEFAULT_ALPHA):
    """Batch-hard mining (Hermans et al. 2017): per anchor the farthest positive and nearest negative.

    Anchors without a positive or without a negative in the batch contribute 0.
    """
    dist = pairwise_squared_distances(embeddings)
    positive, negative = _masks(labels)
    pos_f, neg_f = ops.cast(positive, dist.dtype), ops.cast(negative, dist.dtype)
    hardest_pos = ops.max(dist * pos_f, axis=1)
    big = ops.max(dist) + 1.0
    hardest_neg = ops.min(dist + big * (1.0 - neg_f), axis=1)
    valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    losses = ops.maximum(hardest_pos - hardest_neg + alpha, 0.0) * ops.cast(valid, dist.dtype)
    count = ops.maximum(ops.sum(ops.cast(valid, dist.dtype)), 1.0)
    return ops.sum(losses) / count


def semi_hard_triplet_loss(labels, embeddings, alpha: float = DEFAULT_ALPHA):
    """Semi-hard mining (FaceNet paper): for each (anchor, positive) the nearest negative farther than the positive.

    When no negative is farther than the positive, the farthest negative is used (as FaceNet's
    and TF-Addons' implementations do), so hard negatives never collapse training early.
    Mean over (anchor, positive) pairs with a non-zero loss-eligible negative.
    """
    dist = pairwise_squared_distances(embeddings)
    positive, negative = _masks(labels)
    neg_f = ops.cast(negative, dist.dtype)
    # d_an[a, n] broadcast against d_ap[a, p]: shape (A, P, N)
    d_ap = ops.expand_dims(dist, 2)
    d_an = ops.expand_dims(dist, 1)
    neg3 = ops.expand_dims(neg_f, 1)
    semi = ops.logical_and(ops.greater(d_an, d_ap), ops.cast(neg3, "bool"))
    semi_f = ops.cast(semi, dist.dtype)
    big = ops.max(dist) + 1.0
    nearest_semi = ops.min(d_an + big * (1.0 - semi_f), axis=2)
    farthest_neg = ops.max(dist * neg_f, axis=1, keepdims=True) * ops.ones_like(dist)
    has_semi = ops.any(semi, axis=2)
    chosen = ops.where(has_semi, nearest_semi, farthest_neg)
    pos_f = ops.cast(ops.logical_and(positive, ops.expand_dims(ops.any(negative, axis=1), 1)), dist.dtype)
    losses = ops.maximum(dist - chosen + alpha, 0.0) * pos_f
    return ops.sum(losses) / ops.maximum(ops.sum(pos_f), 1.0)
