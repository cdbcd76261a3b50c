"""The SSL track's offline evaluation (linear probe, weighted kNN, feature extraction) against
its defining claims on tiny tensors and a tiny network."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from hundred.data.loader import BatchLoader
from hundred.errors import HundredError
from hundred.models import create
from hundred.tracks.ssl.evaluation import (evaluate_representation, extract_features,
                                           knn_accuracy, linear_probe, standardize)


def _separable(classes=5, dim=16, per_class=(40, 20), spread=10.0, noise=0.1, seed=0):
    """Train and val features: far-apart class means plus small Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(classes, dim, generator=generator)
    splits = []
    for count in per_class:
        labels = torch.arange(classes).repeat_interleave(count)
        features = means[labels] + noise * torch.randn(len(labels), dim, generator=generator)
        splits += [features, labels]
    return splits


def _random(classes=4, dim=16, count=400, seed=1):
    """Train and val features and labels drawn independently: nothing to learn."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(count, dim, generator=generator),
            torch.randint(classes, (count,), generator=generator),
            torch.randn(count, dim, generator=generator),
            torch.randint(classes, (count,), generator=generator)]


# ------------------------------------------------------------------------------ linear probe


def test_probe_separates_separable_features_perfectly():
    train_x, train_y, val_x, val_y = _separable()
    result = linear_probe(train_x, train_y, val_x, val_y, 5, epochs=5, batch_size=50)
    assert result.top1 == 100.0 and result.top5 == 100.0 and result.train_top1 == 100.0
    assert result.train_loss < 0.05 and result.seconds > 0


def test_probe_is_at_chance_on_random_labels():
    # 400 val samples, 4 classes: chance 25 %, binomial std ~2.2 points
    train_x, train_y, val_x, val_y = _random()
    result = linear_probe(train_x, train_y, val_x, val_y, 4, epochs=10, batch_size=100)
    assert abs(result.top1 - 25.0) < 10.0
    assert result.train_top1 > result.top1 + 5   # it does fit the train split a little


def test_probe_is_deterministic_for_a_seed_and_the_seed_matters():
    train_x, train_y, val_x, val_y = _random()
    runs = [linear_probe(train_x, train_y, val_x, val_y, 4, epochs=3, batch_size=64, seed=s)
            for s in (0, 0, 1)]
    assert (runs[0].top1, runs[0].train_loss) == (runs[1].top1, runs[1].train_loss)
    assert runs[0].train_loss != runs[2].train_loss


def test_probe_does_not_depend_on_the_feature_scale():
    # standardisation: scaling and shifting every feature dimension changes nothing (up to
    # float rounding), while the raw-feature probe at the same lr is thrown off by it
    train_x, train_y, val_x, val_y = _separable(noise=3.0, seed=2)
    scale, shift = torch.logspace(-3, 3, 16), torch.linspace(-50, 50, 16)
    base = linear_probe(train_x, train_y, val_x, val_y, 5, epochs=5, batch_size=32)
    moved = linear_probe(train_x * scale + shift, train_y, val_x * scale + shift, val_y, 5,
                         epochs=5, batch_size=32)
    assert moved.top1 == base.top1
    assert moved.train_loss == pytest.approx(base.train_loss, rel=1e-3)
    raw = linear_probe(train_x * scale + shift, train_y, val_x * scale + shift, val_y, 5,
                       epochs=5, batch_size=32, standardize_features=False)
    assert raw.top1 < base.top1


def test_standardize_uses_train_statistics_and_only_centres_constant_dimensions():
    train_x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    val_x = torch.tensor([[2.0, 7.0]])
    train_z, val_z = standardize(train_x, val_x)
    assert torch.allclose(train_z, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(val_z, torch.tensor([[0.0, 2.0]]))


def test_probe_rejects_bad_input():
    train_x, train_y, val_x, val_y = _random()
    with pytest.raises(HundredError):
        linear_probe(train_x, train_y[:-1], val_x, val_y, 4)
    with pytest.raises(HundredError):
        linear_probe(train_x, train_y, val_x, val_y, 4, optimizer="lbfgs")


# ---------------------------------------------------------------------------------------- kNN


def test_knn_is_perfect_on_separable_features_and_at_chance_on_random_ones():
    train_x, train_y, val_x, val_y = _separable()
    assert knn_accuracy(train_x, train_y, val_x, val_y, 5, k=(5, 20)) == {5: 100.0, 20: 100.0}
    train_x, train_y, val_x, val_y = _random()
    accuracy = knn_accuracy(train_x, train_y, val_x, val_y, 4, k=(20, 200))
    assert all(abs(value - 25.0) < 10.0 for value in accuracy.values())


def _on_circle(*angles):
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles])


def test_knn_weights_votes_by_exp_similarity_over_temperature():
    # the query sits at angle 0; its nearest neighbour (class 0) is at 0.1 rad, two farther
    # ones (class 1) at +-0.3 rad. Class 0 wins iff exp(s0 / T) > 2 exp(s1 / T), i.e. iff
    # T < (s0 - s1) / ln 2: at low temperature the nearest wins, at high temperature the pair.
    train_x = 3.0 * _on_circle(0.1, 0.3, -0.3)     # norms do not matter: cosine similarity
    train_y = torch.tensor([0, 1, 1])
    query = _on_circle(0.0)
    threshold = (math.cos(0.1) - math.cos(0.3)) / math.log(2)

    def accuracy(label, temperature, k=3):
        return knn_accuracy(train_x, train_y, query, torch.tensor([label]), 2, k=k,
                            temperature=temperature)[k]

    assert accuracy(0, 0.9 * threshold) == 100.0 and accuracy(1, 0.9 * threshold) == 0.0
    assert accuracy(1, 1.1 * threshold) == 100.0 and accuracy(0, 1.1 * threshold) == 0.0
    assert accuracy(0, 1.1 * threshold, k=1) == 100.0   # k = 1: the nearest alone decides
    assert accuracy(0, 1e-4) == 100.0                   # no overflow at tiny temperatures


def test_knn_in_chunks_equals_unchunked_and_clamps_k():
    train_x, train_y, val_x, val_y = _separable(noise=6.0, seed=3)
    whole = knn_accuracy(train_x, train_y, val_x, val_y, 5, k=(1, 20, 199, 200, 500),
                         chunk=len(val_x))
    for chunk in (1, 7, None):
        assert knn_accuracy(train_x, train_y, val_x, val_y, 5, k=(1, 20, 199, 200, 500),
                            chunk=chunk) == whole
    assert 0 < whole[20] < 100   # noisy enough to be a real check
    assert whole[500] == whole[200] and len(train_x) == 200   # k above the train set: clamped


# ----------------------------------------------------------------------------- extraction


def _tiny_loader(count=20, classes=5, size=8, seed=0, batch_size=7):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    labels = np.arange(count) % classes
    return BatchLoader((images, labels), batch_size, shuffle=False, drop_last=False,
                       train=False, prefetch=0)


@pytest.mark.parametrize("training", [True, False])
def test_extract_features_are_the_eval_mode_features_and_mode_is_restored(training):
    torch.manual_seed(0)
    model = create("resnet20", 5, img_size=8).train(training)
    loader = _tiny_loader()
    features, labels = extract_features(model, loader)
    images = torch.cat([batch for batch, _ in loader])
    assert model.training is training
    assert features.dtype == torch.float32 and features.shape == (20, model.feature_dim)
    assert torch.equal(labels, torch.arange(20) % 5)
    with torch.no_grad():
        expected = model.eval().features(images)
        in_train_mode = model.train().features(images)
    assert torch.allclose(features, expected, atol=1e-5)
    assert not torch.allclose(features, in_train_mode, atol=1e-3)   # batch norm: mode matters


class _FeaturesViaForward(nn.Module):
    """A model that exposes its features only through ``forward(x, return_features=True)``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = create("convnet_d3", 5, img_size=8)

    def forward(self, x, return_features=False):
        return self.net(x, return_features=return_features)


def test_extract_features_falls_back_to_return_features():
    torch.manual_seed(0)
    model = _FeaturesViaForward()
    features, _ = extract_features(model, _tiny_loader())
    images = torch.cat([batch for batch, _ in _tiny_loader()])
    with torch.no_grad():
        assert torch.allclose(features, model.eval().net.features(images), atol=1e-5)


def test_evaluate_representation_returns_the_summary_keys():
    torch.manual_seed(0)
    model = create("convnet_d3", 5, img_size=8)
    summary = evaluate_representation(model, _tiny_loader(count=30), _tiny_loader(seed=1), 5,
                                      probe_epochs=2, probe_batch_size=8, knn_k=(3, 200))
    assert set(summary) == {"linear_top1", "linear_top5", "linear_train_top1", "knn3_top1",
                            "knn200_top1", "feature_dim", "extract_seconds", "probe_seconds",
                            "knn_seconds"}
    assert summary["feature_dim"] == model.feature_dim
    assert all(0.0 <= summary[key] <= 100.0 for key in ("linear_top1", "knn3_top1"))
    assert summary["linear_top5"] == 100.0   # 5 classes: the top 5 always holds the label
