"""Clustering accuracy, the metric of generalized category discovery (GCD: Vaze et al., CVPR
2022; continual GCD, e.g. Happy: Ma et al., NeurIPS 2024): predictions are cluster ids, not
class labels, so each cluster is first mapped to one class by the assignment that maximises
the number of correctly labelled samples (the Hungarian algorithm on the cluster x class
count matrix, scipy's ``linear_sum_assignment``); accuracy is then the fraction of samples
whose cluster maps to their class.

As in GCD's evaluation, the one mapping is computed over all samples and then accuracy is
also reported on the samples of the old (labelled before) and of the new classes, so the
three numbers (All / Old / New) come from the same assignment.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy.optimize import linear_sum_assignment


def cluster_to_class(targets: np.ndarray, clusters: np.ndarray) -> dict[int, int]:
    """The cluster -> class mapping that maximises the correctly labelled samples (each
    cluster to at most one class and each class to at most one cluster)."""
    targets, clusters = np.asarray(targets, dtype=np.int64), np.asarray(clusters, np.int64)
    if targets.shape != clusters.shape or targets.ndim != 1:
        raise ValueError(f"targets {targets.shape} and clusters {clusters.shape} must be "
                         f"equal-length vectors")
    cluster_ids, cluster_index = np.unique(clusters, return_inverse=True)
    class_ids, class_index = np.unique(targets, return_inverse=True)
    counts = np.zeros((len(cluster_ids), len(class_ids)), dtype=np.int64)
    np.add.at(counts, (cluster_index, class_index), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {int(cluster_ids[r]): int(class_ids[c]) for r, c in zip(rows, cols)}


def clustering_accuracy(targets: np.ndarray, clusters: np.ndarray,
                        old_classes: Iterable[int] = ()) -> dict[str, float]:
    """``{"all", "old", "new"}`` clustering accuracy (%) under the one best mapping; ``old``
    and ``new`` are NaN when no sample belongs to them. Clusters left unmapped (more clusters
    than classes) count as wrong."""
    targets, clusters = np.asarray(targets, dtype=np.int64), np.asarray(clusters, np.int64)
    mapping = cluster_to_class(targets, clusters)
    predicted = np.array([mapping.get(int(c), -1) for c in clusters], dtype=np.int64)
    correct = predicted == targets
    old = np.isin(targets, np.fromiter(old_classes, dtype=np.int64))

    def percent(mask: np.ndarray) -> float:
        return float(100.0 * correct[mask].mean()) if mask.any() else float("nan")

    return {"all": percent(np.ones_like(old)), "old": percent(old), "new": percent(~old)}
