"""Verification metrics over L2 distances, as pure numpy functions.

Convention: a pair is accepted as "same person" when its distance is <= the threshold. `same` is a
boolean array: True for genuine pairs (same person), False for impostor pairs.
"""

from __future__ import annotations

import numpy as np


def l2_distances(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Euclidean distances between every query row and every reference row, (Q, R)."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    references = np.atleast_2d(np.asarray(references, dtype=np.float32))
    squared = (
        np.einsum("ij,ij->i", queries, queries)[:, None]
        + np.einsum("ij,ij->i", references, references)[None, :]
        - 2.0 * queries @ references.T
    )
    return np.sqrt(np.maximum(squared, 0.0))


def pair_distances(embeddings: np.ndarray, labels: list | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances and same-person flags for all pairs i < j."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels)
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    rows, cols = np.triu_indices(len(embeddings), k=1)
    distances = l2_distances(embeddings, embeddings)[rows, cols]
    return distances.astype(np.float64), labels[rows] == labels[cols]


def _split(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distances = np.asarray(distances, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if distances.shape != same.shape:
        raise ValueError(f"distances {distances.shape} and same {same.shape} differ in shape")
    genuine, impostor = distances[same], distances[~same]
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("need at least one genuine and one impostor pair")
    return genuine, impostor


def roc(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds) at every distinct distance, starting from 'accept nothing'."""
    genuine, impostor = _split(distances, same)
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    genuine_sorted, impostor_sorted = np.sort(genuine), np.sort(impostor)
    tar = np.searchsorted(genuine_sorted, thresholds, side="right") / len(genuine)
    far = np.searchsorted(impostor_sorted, thresholds, side="right") / len(impostor)
    below = np.nextafter(thresholds[0], -np.inf)
    return np.concatenate([[0.0], far]), np.concatenate([[0.0], tar]), np.concatenate([[below], thresholds])


def roc_auc(distances: np.ndarray, same: np.ndarray) -> float:
    """Probability that a random genuine pair is closer than a random impostor pair (ties count half)."""
    genuine, impostor = _split(distances, same)
    values = np.concatenate([genuine, impostor])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    # Average rank of each tie group (1-based), by ascending distance.
    upper = np.cumsum(counts)
    average_rank = upper - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    rank_sum_impostor = ranks[len(genuine):].sum()
    n_imp, n_gen = len(impostor), len(genuine)
    # Mann-Whitney U of impostors ranking above genuines = pairs where impostor distance > genuine.
    u_statistic = rank_sum_impostor - n_imp * (n_imp + 1) / 2.0
    return float(u_statistic / (n_imp * n_gen))


def equal_error_rate(distances: np.ndarray, same: np.ndarray) -> float:
    """The error rate where false accepts equal false rejects (linear interpolation on the ROC)."""
    far, tar, _ = roc(distances, same)
    frr = 1.0 - tar
    gap = far - frr  # rises from -1 (accept nothing) to +1 (accept everything)
    index = int(np.argmax(gap >= 0))
    if gap[index] == 0 or index == 0:
        return float(far[index])
    # Interpolate between points index-1 (gap < 0) and index (gap > 0).
    weight = -gap[index - 1] / (gap[index] - gap[index - 1])
    far_at = far[index - 1] + weight * (far[index] - far[index - 1])
    frr_at = frr[index - 1] + weight * (frr[index] - frr[index - 1])
    return float((far_at + frr_at) / 2.0)


def threshold_at_far(distances: np.ndarray, same: np.ndarray, far: float) -> float:
    """The largest threshold whose false-accept rate on these pairs is <= `far`.

    It lies halfway between the first impostor distance that must be rejected and the largest
    distance below it, so the threshold does not sit on a measured value.
    """
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be within [0, 1], got {far}")
    genuine, impostor = _split(distances, same)
    impostor_sorted = np.sort(impostor)
    allowed = int(np.floor(far * len(impostor) + 1e-9))
    everything = np.concatenate([genuine, impostor])
    if allowed >= len(impostor):
        return float(everything.max())
    first_rejected = impostor_sorted[allowed]
    below = everything[everything < first_rejected]
    if len(below) == 0:
        return float(np.nextafter(first_rejected, -np.inf))
    return float((below.max() + first_rejected) / 2.0)


def tar_at_far(distances: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float]:
    """(true-accept rate, threshold) at the largest threshold whose FAR is <= `far`."""
    threshold = threshold_at_far(distances, same, far)
    genuine, _ = _split(distances, same)
    return float(np.mean(genuine <= threshold)), threshold


def rates_at(distances: np.ndarray, same: np.ndarray, threshold: float) -> tuple[float, float]:
    """(tar, far) when accepting pairs with distance <= threshold."""
    genuine, impostor = _split(distances, same)
    return float(np.mean(genuine <= threshold)), float(np.mean(impostor <= threshold))


def best_accuracy_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """The threshold that maximizes accuracy on these pairs (midpoint between distinct distances)."""
    distances = np.asarray(distances, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    order = np.argsort(distances, kind="stable")
    sorted_d, sorted_same = distances[order], same[order]
    n_neg = int((~sorted_same).sum())
    accepted_genuine = np.concatenate([[0], np.cumsum(sorted_same)])
    accepted = np.arange(len(sorted_d) + 1)
    correct = accepted_genuine + (n_neg - (accepted - accepted_genuine))
    # Only cut between distinct values: accepting i items means threshold in [d[i-1], d[i]).
    valid = np.ones(len(sorted_d) + 1, dtype=bool)
    valid[1:-1] = sorted_d[1:] > sorted_d[:-1]
    best = int(np.argmax(np.where(valid, correct, -1)))
    if best == 0:
        return float(np.nextafter(sorted_d[0], -np.inf))
    if best == len(sorted_d):
        return float(sorted_d[-1])
    return float((sorted_d[best - 1] + sorted_d[best]) / 2.0)


def kfold_accuracy(distances: np.ndarray, same: np.ndarray, folds: int = 10, seed: int = 0) -> float:
    """LFW protocol: pick the best-accuracy threshold on k-1 folds, measure accuracy on the held-out fold."""
    distances = np.asarray(distances, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if folds < 2 or folds > len(distances):
        raise ValueError(f"folds must be within [2, {len(distances)}], got {folds}")
    order = np.random.default_rng(seed).permutation(len(distances))
    accuracies = []
    for held_out in np.array_split(order, folds):
        train = np.setdiff1d(order, held_out, assume_unique=True)
        threshold = best_accuracy_threshold(distances[train], same[train])
        predicted = distances[held_out] <= threshold
        accuracies.append(np.mean(predicted == same[held_out]))
    return float(np.mean(accuracies))
