"""Clustering accuracy (GCD's All / Old / New) under the Hungarian cluster -> class mapping."""

import math

import numpy as np
import pytest

from hundred.tracks.incremental.clustering import cluster_to_class, clustering_accuracy


def test_a_permuted_labelling_is_perfect():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 6, size=200)
    permutation = rng.permutation(6) + 10  # other ids, shuffled
    result = clustering_accuracy(targets, permutation[targets], old_classes=[0, 1, 2])
    assert result == {"all": 100.0, "old": 100.0, "new": 100.0}


def test_matches_a_hand_computed_confusion_matrix():
    # cluster x class counts:        class 0  class 1  class 2
    #   cluster a (0)                   3        1        0
    #   cluster b (1)                   0        2        2
    #   cluster c (2)                   1        0        1
    # best mapping: a->0 (3), b->1 (2), c->2 (1) = 6 correct of 10 (a->0, b->2, c->1 gives
    # 3 + 2 + 0 = 5)
    pairs = [(0, 0)] * 3 + [(0, 1)] + [(1, 1)] * 2 + [(1, 2)] * 2 + [(2, 0), (2, 2)]
    clusters, targets = map(np.array, zip(*pairs))
    assert cluster_to_class(targets, clusters) == {0: 0, 1: 1, 2: 2}
    result = clustering_accuracy(targets, clusters, old_classes=[0])
    assert result["all"] == pytest.approx(100 * 6 / 10)
    assert result["old"] == pytest.approx(100 * 3 / 4)  # class 0: 3 of its 4 samples
    assert result["new"] == pytest.approx(100 * 3 / 6)  # classes 1, 2: 2 + 1 of 6


def test_extra_clusters_count_as_wrong_and_missing_groups_are_nan():
    targets = np.array([0, 0, 1, 1])
    clusters = np.array([5, 5, 6, 7])  # three clusters for two classes: one stays unmapped
    result = clustering_accuracy(targets, clusters)
    assert result["all"] == 75.0 and math.isnan(result["old"]) and result["new"] == 75.0
