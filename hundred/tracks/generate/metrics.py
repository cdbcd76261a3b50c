"""Sample-quality metrics of the generate track (pure functions; the scenario calls them).

* :func:`frechet_distance` -- the Fréchet distance between two Gaussians fitted to features
  (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium", NeurIPS 2017, the FID formula)::

      d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))

  On Inception-V3 pool features it is FID; on the features of a classifier hundred trained
  itself it is a *feature Fréchet distance* (``fd``), never called FID.
* :func:`precision_recall` -- improved precision and recall (Kynkäänniemi et al., "Improved
  Precision and Recall Metric for Assessing Generative Models", NeurIPS 2019): each set's
  manifold is the union of balls around its points with the radius to the point's k-th
  nearest neighbour in the same set (Eq. 1-2, k = 3 by default as in the paper); precision is
  the fraction of fake points inside the real manifold, recall the fraction of real points
  inside the fake manifold.
* :func:`inception_score` -- exp(E_x KL(p(y|x) || p(y))) (Salimans et al., "Improved
  Techniques for Training GANs", NeurIPS 2016), mean and std over splits, on any classifier's
  softmax probabilities; :func:`classifier_accuracy` the top-1 accuracy (%) of such
  probabilities against the labels the samples were conditioned on.
* :class:`InceptionFeatures` -- torch-fidelity's Inception-V3 (the TF-FID port) from a weights
  file the USER supplies; nothing is ever downloaded.
* :class:`FeatureNet` -- penultimate features and softmax probabilities of a classifier hundred
  trained (the evaluator for ``fd``, ``sample_top1`` and ``classifier_score``).
* :func:`quality_report` -- all of the above on real and generated images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from hundred.errors import HundredError

__all__ = ["FeatureNet", "InceptionFeatures", "classifier_accuracy", "frechet_distance",
           "inception_score", "precision_recall", "quality_report", "to_uint8"]

# pytorch-fid / the TF reference add this to the covariance diagonals when sqrtm fails
SQRTM_EPS = 1e-6
# an imaginary part of sqrtm above this (on the diagonal) is not a rounding error
IMAG_TOLERANCE = 1e-3
# the Inception Score's split count of Salimans et al. (10 splits of 5000 samples)
IS_SPLITS = 10
# quality_report: at least this many samples per Inception-Score split
MIN_PER_SPLIT = 100


def _as_array(features: Any, name: str) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise HundredError(f"{name} must be a [N, D] feature matrix, got shape {array.shape}")
    if array.shape[0] < 2:
        raise HundredError(f"{name} needs at least 2 samples for a covariance, got "
                           f"{array.shape[0]}")
    if not np.isfinite(array).all():
        raise HundredError(f"{name} contains NaN or infinite values")
    return array


def _trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """Tr((S_a S_b)^(1/2)) with scipy's sqrtm, robust as the reference implementations: a
    non-finite result is retried with ``SQRTM_EPS`` added to both diagonals (the covariance
    of fewer samples than dimensions is singular), and the tiny imaginary parts that rounding
    leaves are discarded (a large one is an error)."""
    from scipy import linalg

    root = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(root).all():
        offset = np.eye(sigma_a.shape[0]) * SQRTM_EPS
        root = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(root):
        largest = float(np.max(np.abs(np.diagonal(root).imag)))
        if largest > IMAG_TOLERANCE:
            raise HundredError(f"Fréchet distance: the covariance square root has an imaginary "
                               f"component of {largest:.3g}; use more samples than feature "
                               f"dimensions")
        root = root.real
    return float(np.trace(root))


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray
                     ) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` and ``[M, D]``
    (float64, unbiased covariances as ``numpy.cov``), Heusel et al. 2017:
    ``||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2))``. Clipped at 0 (rounding
    can make a distance of a set to itself a tiny negative number)."""
    a = _as_array(feats_a, "feats_a")
    b = _as_array(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise HundredError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False))
    diff = mu_a - mu_b
    value = (diff @ diff + np.trace(sigma_a) + np.trace(sigma_b)
             - 2.0 * _trace_sqrt_product(sigma_a, sigma_b))
    return max(float(value), 0.0)


def _as_features(features: Any, name: str, device: torch.device | None) -> torch.Tensor:
    tensor = torch.as_tensor(features)
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        raise HundredError(f"{name} must be a non-empty [N, D] feature matrix, got shape "
                           f"{tuple(tensor.shape)}")
    return tensor.to(device or tensor.device, torch.float32)


def _kth_radii(points: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in ``points`` (itself excluded)."""
    radii = []
    for start in range(0, len(points), batch):
        distances = torch.cdist(points[start:start + batch], points)
        # the k+1 smallest include the point itself (distance 0)
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch: int
            ) -> torch.Tensor:
    """For each query: is it within ``radii[j]`` of some ``centres[j]``?"""
    hits = []
    for start in range(0, len(queries), batch):
        distances = torch.cdist(queries[start:start + batch], centres)
        hits.append((distances <= radii[None, :]).any(dim=1))
    return torch.cat(hits)


@torch.no_grad()
def precision_recall(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray,
                     k: int = 3, batch: int = 1024, device: torch.device | str | None = None
                     ) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019) of ``fake`` features
    against ``real`` features (``[N, D]``, ``[M, D]``), with k-NN radius manifolds (k = 3, the
    paper's default). Precision: fraction of fake points within the k-NN radius of some real
    point; recall: fraction of real points within the k-NN radius of some fake point. Pairwise
    distances are computed ``batch`` rows at a time with ``torch.cdist`` on ``device``."""
    if k < 1:
        raise HundredError(f"precision/recall needs k >= 1, got {k}")
    device = torch.device(device) if device is not None else None
    real_t = _as_features(real, "real", device)
    fake_t = _as_features(fake, "fake", device or real_t.device)
    if real_t.shape[1] != fake_t.shape[1]:
        raise HundredError(f"feature sizes differ: {real_t.shape[1]} vs {fake_t.shape[1]}")
    for name, points in (("real", real_t), ("fake", fake_t)):
        if len(points) <= k:
            raise HundredError(f"precision/recall with k={k} needs more than {k} {name} "
                               f"samples, got {len(points)}")
    real_radii = _kth_radii(real_t, k, batch)
    fake_radii = _kth_radii(fake_t, k, batch)
    precision = _inside(fake_t, real_t, real_radii, batch).float().mean().item()
    recall = _inside(real_t, fake_t, fake_radii, batch).float().mean().item()
    return float(precision), float(recall)


def _as_probs(probs: Any) -> torch.Tensor:
    tensor = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        raise HundredError(f"probabilities must be a non-empty [N, C] matrix, got shape "
                           f"{tuple(tensor.shape)}")
    if (tensor < 0).any() or not torch.allclose(tensor.sum(dim=1), torch.ones(len(tensor),
                                                                               dtype=torch.float64),
                                                atol=1e-3):
        raise HundredError("probabilities must be non-negative rows summing to 1 (softmax "
                           "outputs, not logits)")
    return tensor


def inception_score(probs: torch.Tensor | np.ndarray, splits: int = IS_SPLITS,
                    shuffle_seed: int | None = 0) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)``
    the mean prediction of a split, as mean and standard deviation over ``splits`` equal
    splits (10 in the paper). ``probs`` are softmax probabilities ``[N, C]`` of any
    classifier. The samples are shuffled with ``shuffle_seed`` first (as torch-fidelity does;
    ``None`` keeps their order): class-conditional samples come ordered by class, and a split
    holding a few classes only would score low. 1 for identical predictions, C for confident
    predictions spread evenly over C classes."""
    p = _as_probs(probs)
    if not 1 <= splits <= len(p):
        raise HundredError(f"inception_score: splits must be in [1, {len(p)}] (the sample "
                           f"count), got {splits}")
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(shuffle_seed)
        p = p[torch.randperm(len(p), generator=generator)]
    scores = []
    for chunk in torch.tensor_split(p, splits):
        marginal = chunk.mean(dim=0, keepdim=True)
        kl = (torch.special.xlogy(chunk, chunk) - torch.special.xlogy(chunk, marginal)).sum(1)
        scores.append(float(kl.mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


def classifier_accuracy(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray
                        ) -> float:
    """Top-1 accuracy (%, as the engine reports accuracies) of ``probs`` (``[N, C]``, or
    logits: only the argmax counts) against ``labels`` ``[N]``, e.g. of an evaluator on
    class-conditional samples against the classes they were generated for."""
    scores = torch.as_tensor(probs).detach().cpu()
    targets = torch.as_tensor(labels).detach().cpu().long().reshape(-1)
    if scores.ndim != 2 or len(scores) != len(targets) or len(targets) == 0:
        raise HundredError(f"classifier_accuracy needs [N, C] scores and [N] labels, got "
                           f"{tuple(scores.shape)} and {tuple(targets.shape)}")
    return 100.0 * (scores.argmax(dim=1) == targets).double().mean().item()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else ''}"


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (float) or uint8, NCHW, as uint8 RGB in [0, 255] (grey repeated to 3
    channels): what torch-fidelity's Inception-V3 takes (it resizes to 299 px itself, with
    TF1's bilinear interpolation as the reference FID code)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise HundredError(f"images must be [N, 1 or 3, H, W], got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        from hundred.tracks.generate.pixels import to_uint8 as pixels_to_uint8

        images = pixels_to_uint8(images)
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return images


class InceptionFeatures(nn.Module):
    """torch-fidelity's Inception-V3 (the port of the TF graph FID and IS were defined on) from
    a LOCAL weights file ``weights_path`` in torch-fidelity's format (``weights-inception-2015-
    12-05-6726825d.pth``; ``torch_fidelity.util_convert_inception_weights`` makes one). The
    path is checked before the network is built, so nothing is downloaded: a missing file or
    one that does not load is a HundredError.

    Calling it on images (``[N, C, H, W]`` in [-1, 1] or uint8) gives ``(pool, probs)``: the
    2048-d pool features (FID) and the softmax of the bias-free logits (IS; torch-fidelity's
    ``logits_unbiased``, as the original IS code)."""

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        if weights_path is None or str(weights_path) == "":
            raise HundredError("Inception weights: give a local weights file (nothing is "
                               "downloaded)")
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise HundredError(f"Inception weights file {path} does not exist (give a local "
                               f"torch-fidelity Inception-V3 weights file; nothing is "
                               f"downloaded)")
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:  # first as plain tensors: a pickle that runs code is refused, never executed
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise HundredError(f"Inception weights file {path} is not a plain PyTorch state "
                               f"dict ({_first_line(error)})") from None
        try:  # torch-fidelity loads it again, from the path: no download is possible
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(path))
        except Exception as error:  # state-dict errors of many kinds
            raise HundredError(f"Inception weights file {path} does not fit torch-fidelity's "
                               f"Inception-V3 ({_first_line(error)})") from None
        self.weights_path = path
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = self.net(to_uint8(images))
        return pool, logits.softmax(dim=1)


class FeatureNet(nn.Module):
    """A classifier hundred trained (:class:`hundred.models.Classifier`: backbone + head) as a
    sample evaluator: images in [-1, 1] are mapped to [0, 1], normalised with the classifier's
    own ``mean``/``std`` (``data.mean``/``data.std`` of its run config), resized to its
    ``image_size`` when given and different, and give ``(features, probs)``: the penultimate
    (backbone) features and the softmax of its logits. ``name`` names the model in labels."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 name: str = "classifier", image_size: int | None = None) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise HundredError(f"mean and std need 3 values each (std > 0), got {mean} / {std}")
        self.model = model
        self.train(model.training)
        self.name = name
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    @property
    def label(self) -> str:
        """How ``fd`` is named in tables: never FID."""
        return f"FD (features of {self.name} trained by hundred; not FID)"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from hundred.tracks.generate.pixels import to_classifier

        x = images.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = to_classifier(x, self.mean, self.std, self.image_size, clamp=True)
        logits, features = self.model(x, return_features=True)
        return features.float(), logits.float().softmax(dim=1)


def _module_device(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def _extract(net: nn.Module, images: torch.Tensor, batch: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``net``'s (features, probs) on ``images`` in batches on the net's device, in eval
    mode (restored after), results on the CPU."""
    device = _module_device(net)
    modes = [(module, module.training) for module in net.modules()]
    net.eval()
    features, probs = [], []
    try:
        for start in range(0, len(images), batch):
            f, p = net(images[start:start + batch].to(device))
            features.append(f.float().cpu())
            probs.append(p.float().cpu())
    finally:
        for module, training in modes:
            module.training = training
    return torch.cat(features), torch.cat(probs)


def report_splits(count: int) -> int:
    """Inception-Score splits for ``count`` samples in :func:`quality_report`: the paper's 10,
    fewer so that every split keeps at least ``MIN_PER_SPLIT`` samples (at least 1)."""
    return max(1, min(IS_SPLITS, count // MIN_PER_SPLIT))


@torch.no_grad()
def quality_report(real_images: torch.Tensor, real_labels: torch.Tensor,
                   fake_images: torch.Tensor, fake_labels: torch.Tensor,
                   feature_net: FeatureNet, inception: InceptionFeatures | None = None,
                   k: int = 3, batch: int = 256) -> dict[str, Any]:
    """Sample quality of ``fake_images`` (generated for ``fake_labels``) against
    ``real_images`` (held-out data; ``real_labels`` give the evaluator's accuracy on them,
    ``real_top1``, the ceiling of ``sample_top1``), all NCHW in [-1, 1]:

    * ``fd``: Fréchet distance of ``feature_net``'s penultimate features (named by
      ``fd_label``; not FID), ``precision``/``recall`` (k-NN manifolds of the same features),
    * ``sample_top1``: the evaluator's top-1 accuracy (%) on the samples against the classes
      they were generated for, ``classifier_score``: the Inception Score on its predictions,
    * with ``inception``: ``fid`` and ``inception_score`` (+ ``inception_score_std``) on
      Inception-V3.

    Batched (``batch`` images per forward), without gradients, on ``feature_net``'s device
    (``inception`` is moved there)."""
    if len(real_images) != len(real_labels) or len(fake_images) != len(fake_labels):
        raise HundredError("quality_report: images and labels differ in length "
                           f"(real {len(real_images)}/{len(real_labels)}, "
                           f"fake {len(fake_images)}/{len(fake_labels)})")
    real_features, real_probs = _extract(feature_net, real_images, batch)
    fake_features, fake_probs = _extract(feature_net, fake_images, batch)
    precision, recall = precision_recall(real_features, fake_features, k=k,
                                         device=_module_device(feature_net))
    score, score_std = inception_score(fake_probs, splits=report_splits(len(fake_probs)))
    report: dict[str, Any] = {
        "fd": frechet_distance(real_features, fake_features),
        "fd_label": feature_net.label,
        "precision": precision,
        "recall": recall,
        "sample_top1": classifier_accuracy(fake_probs, fake_labels),
        "real_top1": classifier_accuracy(real_probs, real_labels),
        "classifier_score": score,
        "classifier_score_std": score_std,
        "k": k,
        "real_samples": len(real_images),
        "fake_samples": len(fake_images),
    }
    if inception is not None:
        inception.to(_module_device(feature_net))  # on the evaluator's device
        real_pool, _ = _extract(inception, real_images, batch)
        fake_pool, fake_inception_probs = _extract(inception, fake_images, batch)
        is_mean, is_std = inception_score(fake_inception_probs,
                                          splits=report_splits(len(fake_inception_probs)))
        report.update(fid=frechet_distance(real_pool, fake_pool), inception_score=is_mean,
                      inception_score_std=is_std)
    return report
