"""Retrieval metrics on hand-made embeddings: perfect clusters, random embeddings, a case
worked out by hand, and the comparison of a longer (new) embedding with a shorter (old) one
on the common coordinates."""

from __future__ import annotations

import pytest
import torch

from hundred.tracks.compat.retrieval import cosine_distances, retrieval_metrics


def test_perfect_clusters_give_top1_and_map_of_100():
    labels = torch.arange(5).repeat_interleave(6)
    centres = torch.eye(8)[:5] * 10
    embeddings = centres[labels] + 0.01 * torch.randn(len(labels), 8)
    metrics = retrieval_metrics(embeddings, embeddings, labels, chunk=7)
    assert metrics == {"top1": pytest.approx(100.0), "map": pytest.approx(100.0)}


def test_random_embeddings_give_about_chance():
    torch.manual_seed(0)
    labels = torch.arange(10).repeat_interleave(50)
    embeddings = torch.randn(len(labels), 32)
    metrics = retrieval_metrics(embeddings, embeddings, labels)
    assert 3.0 < metrics["top1"] < 20.0  # chance: 49/499 = 9.8 %
    assert 7.0 < metrics["map"] < 15.0


def test_a_case_worked_out_by_hand():
    # each query's nearest neighbour has the other class; the relevant image comes third for
    # the first two queries (AP 1/3) and second for the last two (AP 1/2)
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    metrics = retrieval_metrics(embeddings, embeddings, labels)
    assert metrics["top1"] == 0.0
    assert metrics["map"] == pytest.approx(100.0 * (1 / 3 + 1 / 3 + 1 / 2 + 1 / 2) / 4)


def test_a_longer_embedding_is_compared_on_the_common_coordinates():
    torch.manual_seed(1)
    labels = torch.arange(4).repeat_interleave(5)
    old = torch.randn(20, 6)
    new = torch.cat([3.0 * old, torch.randn(20, 3)], dim=1)  # same direction on the old dims
    assert torch.allclose(cosine_distances(new, old), cosine_distances(old, old), atol=1e-6)
    assert retrieval_metrics(new, old, labels) == retrieval_metrics(old, old, labels)
    with pytest.raises(ValueError):
        retrieval_metrics(new[:5], old, labels)
