"""Sample-quality metrics of the generate track, tiny: the Fréchet distance matches its closed
form on Gaussians (0 for a set with itself, symmetric, growing with a mean shift, finite on
singular covariances); improved precision/recall is 1/1 for identical sets, 0/0 for far-apart
ones, and ~1/~0.5 when the samples cover half the real modes; the Inception Score is 1 for
identical predictions and C for confident ones over C balanced classes; the Inception
network only loads from a local file (missing or unloadable: HundredError, never a
download); the evaluator wrapper normalises as the classifier was trained; the report holds
every number."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from hundred.errors import HundredError
from hundred.models import create
from hundred.tracks.generate import metrics
from hundred.tracks.generate.metrics import (FeatureNet, InceptionFeatures, classifier_accuracy,
                                             frechet_distance, inception_score,
                                             precision_recall, quality_report)


def gaussian_set(mean: np.ndarray, variances: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` points whose empirical mean is exactly ``mean`` and whose empirical (unbiased)
    covariance is exactly ``diag(variances)``."""
    rng = np.random.default_rng(seed)
    centred = rng.standard_normal((n, len(mean)))
    centred -= centred.mean(axis=0)
    q, _ = np.linalg.qr(centred)  # orthonormal columns in the span of centred columns
    return mean + q * np.sqrt(n - 1) * np.sqrt(variances)


# --- Fréchet distance -----------------------------------------------------------------------

def test_frechet_of_a_set_with_itself_is_zero() -> None:
    feats = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_frechet_matches_closed_form_for_diagonal_gaussians() -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 0.0, 0.0, 0.5])
    s1, s2 = np.array([1.0, 2.0, 0.5, 3.0]), np.array([4.0, 0.5, 0.5, 1.0])
    a, b = gaussian_set(mu1, s1, 300, 1), gaussian_set(mu2, s2, 250, 2)
    assert np.allclose(np.cov(a, rowvar=False), np.diag(s1))  # the construction is exact
    closed = float(((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum())
    assert frechet_distance(a, b) == pytest.approx(closed, rel=1e-8)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == \
        pytest.approx(closed, rel=1e-4)


def test_frechet_is_symmetric_and_grows_with_a_mean_shift() -> None:
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(100, 6, generator=gen), torch.randn(120, 6, generator=gen) * 1.5
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)
    shifts = [0.0, 0.5, 1.0, 2.0]
    values = [frechet_distance(a, a + s) for s in shifts]
    assert values == sorted(values) and values[0] < 1e-8
    # the same covariance: only the mean term remains, ||shift * 1||^2 = 6 s^2
    assert values[-1] == pytest.approx(6 * 2.0 ** 2, rel=1e-8)


def test_frechet_is_finite_on_singular_covariances() -> None:
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(5, 16, generator=gen), torch.randn(6, 16, generator=gen)  # N < D
    value = frechet_distance(a, b)
    assert np.isfinite(value) and value > 0


def test_frechet_rejects_bad_input() -> None:
    with pytest.raises(HundredError, match="feature sizes differ"):
        frechet_distance(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(HundredError, match="at least 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(4, 3))
    with pytest.raises(HundredError, match="NaN"):
        frechet_distance(torch.full((4, 3), float("nan")), torch.randn(4, 3))


# --- precision / recall ---------------------------------------------------------------------

def clusters(centres: torch.Tensor, per: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([c + 0.1 * torch.randn(per, centres.shape[1], generator=gen)
                      for c in centres])


def test_identical_sets_have_precision_and_recall_one() -> None:
    feats = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    assert precision_recall(feats, feats, k=3) == (1.0, 1.0)


def test_far_apart_sets_have_precision_and_recall_zero() -> None:
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(50, 4, generator=gen), torch.randn(40, 4, generator=gen) + 100.0
    assert precision_recall(real, fake, k=3, batch=7) == (0.0, 0.0)


def test_samples_covering_half_the_modes_have_half_the_recall() -> None:
    centres = torch.zeros(4, 2)
    centres[:, 0] = torch.arange(4) * 10.0  # four far-apart modes in the plane
    real = clusters(centres, 100, seed=2)
    fake = clusters(centres[:2], 100, seed=3)  # only two of them: mode dropping
    precision, recall = precision_recall(real, fake, k=3, batch=64)
    assert precision >= 0.9
    assert 0.4 <= recall <= 0.5
    # the reverse roles: the fakes spread over twice the real modes
    precision, recall = precision_recall(fake, real, k=3)
    assert 0.4 <= precision <= 0.5 and recall >= 0.9


def test_precision_recall_rejects_too_few_samples() -> None:
    with pytest.raises(HundredError, match="more than 3"):
        precision_recall(torch.randn(3, 2), torch.randn(10, 2), k=3)
    with pytest.raises(HundredError, match="k >= 1"):
        precision_recall(torch.randn(5, 2), torch.randn(5, 2), k=0)


# --- Inception Score and accuracy -----------------------------------------------------------

def test_inception_score_of_uniform_predictions_is_one() -> None:
    mean, std = inception_score(torch.full((40, 5), 0.2), splits=4)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_balanced_predictions_is_the_class_count() -> None:
    classes = 6
    probs = torch.eye(classes).repeat_interleave(10, dim=0)  # 10 confident samples a class
    assert inception_score(probs, splits=1)[0] == pytest.approx(classes)
    # class-ordered samples in order: each split holds one class only, so the score
    # collapses to 1; the default shuffle mixes the classes over the splits again
    assert inception_score(probs, splits=classes, shuffle_seed=None)[0] == pytest.approx(1.0)
    assert inception_score(probs, splits=2)[0] > classes - 1


def test_inception_score_rejects_logits_and_bad_splits() -> None:
    with pytest.raises(HundredError, match="softmax"):
        inception_score(torch.randn(10, 3))
    with pytest.raises(HundredError, match="splits"):
        inception_score(torch.full((4, 2), 0.5), splits=5)


def test_classifier_accuracy_is_top1_percent() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert classifier_accuracy(probs, np.array([0, 1, 1, 1])) == pytest.approx(75.0)


# --- Inception-V3 from a local file ---------------------------------------------------------

@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt of torch-fidelity to fetch weights fails the test."""
    import torch_fidelity.feature_extractor_inceptionv3 as module

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(module, "load_state_dict_from_url", refuse)


def test_inception_needs_an_existing_local_file(tmp_path, no_download) -> None:
    with pytest.raises(HundredError, match="does not exist"):
        InceptionFeatures(tmp_path / "missing.pth")
    with pytest.raises(HundredError, match="local weights file"):
        InceptionFeatures(None)  # type: ignore[arg-type]


def test_inception_refuses_files_that_do_not_load(tmp_path, no_download) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(HundredError, match="not a plain PyTorch state dict"):
        InceptionFeatures(garbage)
    pickled = tmp_path / "code.pth"
    pickled.write_bytes(pickle.dumps(print, protocol=2))  # a pickle that names code: never executed
    with pytest.raises(HundredError, match="not a plain PyTorch state dict"):
        InceptionFeatures(pickled)
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, foreign)  # e.g. another network's weights
    with pytest.raises(HundredError, match="does not fit"):
        InceptionFeatures(foreign)


@pytest.mark.slow
def test_inception_stand_in_gives_pool_features_and_probabilities(tmp_path, monkeypatch,
                                                                   no_download) -> None:
    """STAND-IN: a randomly initialised Inception-V3 saved by the test (no real weights
    here); it checks the file path, the input conversion and the output shapes only."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with monkeypatch.context() as patch:  # build it without loading any weights
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict",
                      lambda self, *args, **kwargs: None)
        torch.manual_seed(0)
        random_net = FeatureExtractorInceptionV3("stand-in", ["2048"],
                                                 feature_extractor_weights_path=str(empty))
    path = tmp_path / "inception-stand-in.pth"
    torch.save(random_net.state_dict(), path)
    del random_net
    inception = InceptionFeatures(path)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pool, probs = inception(images)
    assert pool.shape == (2, 2048) and probs.shape == (2, 1008)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2), atol=1e-5)
    # [-1, 1] floats and the same images as uint8 give the same features; grey works too
    pool8, _ = inception(metrics.to_uint8(images))
    assert torch.allclose(pool, pool8)
    assert inception(images[:, :1])[0].shape == (2, 2048)


# --- the evaluator and the report -----------------------------------------------------------

class Recorder(nn.Module):
    """A classifier stand-in that records what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, return_features: bool = False):
        self.seen = x
        features = x.flatten(1) * self.scale
        logits = features[:, :3]
        return (logits, features) if return_features else logits


def test_feature_net_applies_the_classifier_normalisation() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    recorder = Recorder()
    net = FeatureNet(recorder, mean, std, name="recorder")
    images = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    features, probs = net(images)
    expected = (torch.tensor([0.0, 0.5, 1.0]) - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(recorder.seen.flatten(), expected)
    assert torch.allclose(probs, expected.softmax(0)[None])
    assert features.shape == (1, 3)
    assert "not FID" in net.label and "recorder" in net.label
    with pytest.raises(HundredError, match="mean and std"):
        FeatureNet(recorder, (0.5,), std)


class StandInInception(nn.Module):
    """STAND-IN for InceptionFeatures in the report (pool features and probabilities)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 8 * 8, 10)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.proj(images.flatten(1))
        return pool, pool.softmax(dim=1)


def test_quality_report_holds_every_number() -> None:
    torch.manual_seed(0)
    classifier = create("resnet20", 4, img_size=8, width=4).eval()
    net = FeatureNet(classifier, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), name="resnet20")
    gen = torch.Generator().manual_seed(1)
    real = torch.rand(32, 3, 8, 8, generator=gen) * 2 - 1
    labels = torch.arange(4).repeat_interleave(8)
    same = quality_report(real, labels, real, labels, net, batch=10)
    assert same["fd"] == pytest.approx(0.0, abs=1e-6)
    assert (same["precision"], same["recall"]) == (1.0, 1.0)
    assert same["sample_top1"] == same["real_top1"]
    assert "not FID" in same["fd_label"] and "fid" not in same
    noise = torch.rand(24, 3, 8, 8, generator=gen) * 0.2 - 1  # nearly black images
    report = quality_report(real, labels, noise, labels[:24], net,
                            inception=StandInInception(), batch=10)
    assert report["fd"] > same["fd"]
    assert 0 <= report["precision"] <= 1 and 0 <= report["recall"] <= 1
    assert 0 <= report["sample_top1"] <= 100
    assert 1 <= report["classifier_score"] <= 4 + 1e-6
    assert report["fid"] > 0 and 1 <= report["inception_score"] <= 10 + 1e-6
    assert classifier.training is False
    with pytest.raises(HundredError, match="differ in length"):
        quality_report(real, labels[:5], real, labels, net)
