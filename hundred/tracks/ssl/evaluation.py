"""Offline evaluation of a self-supervised representation: a linear probe and a weighted kNN
on frozen backbone features, the two numbers the SSL papers and solo-learn report.

1. :func:`extract_features` runs the backbone once over an unaugmented, ordered loader (eval
   mode, ``no_grad``) and keeps the features; everything after works on those tensors at
   memory speed, so a 100-epoch probe costs seconds, not 100 passes through the network.
2. :func:`linear_probe` trains a linear classifier on the frozen features, the linear
   evaluation protocol of the SSL papers as solo-learn runs it (da Costa et al., "solo-learn:
   A Library of Self-supervised Methods for Visual Representation Learning", JMLR 2022; its
   ImageNet-100 linear configs: SGD, batch 256, no weight decay, 100 epochs, a plain
   ``nn.Linear`` on raw features, and an lr set per method: BYOL 0.3, SimCLR 1.0). Two
   choices differ from solo-learn, which trains on *augmented* images through the frozen
   backbone with a step schedule (x0.1 at epochs 60 and 80):

   * the features are computed once from unaugmented images (no crop/flip in the probe);
   * each feature dimension is standardised with the train split's mean and std. A linear
     map of standardised features is still a linear map of the raw ones (the function class
     is unchanged), but the optimisation no longer depends on the feature scale, which
     differs by orders of magnitude between methods (BYOL vs SimCLR vs a random net); one lr
     (0.1) then fits all, where solo-learn tunes it per method. This is MAE's
     BatchNorm-without-affine before the linear head (He et al., "Masked Autoencoders Are
     Scalable Vision Learners", CVPR 2022, App. A.1, linear probing), with the train
     statistics fixed instead of running, so the probe is deterministic.

   The classifier starts at zero (the problem is convex, so no random init is needed), is
   trained with SGD (momentum 0.9) or Adam under a per-step cosine schedule to zero, on
   mini-batches drawn from a seeded ``torch.Generator``; it is deterministic given the seed.
   The accuracy of the *last* epoch is reported (no epoch is picked on the validation data).
3. :func:`knn_accuracy` is the weighted kNN of Wu, Xiong, Yu & Lin, "Unsupervised Feature
   Learning via Non-Parametric Instance Discrimination" (CVPR 2018, Sec. 3.4, weighted
   k-nearest-neighbour classifier), also solo-learn's and DINO's: features are L2-normalised,
   the ``k`` training samples of largest cosine similarity ``s_i`` vote for their class with
   weight ``exp(s_i / T)``, and the class of largest summed weight is predicted. Defaults
   k = 20 (solo-learn, DINO) and 200 (Wu et al.), T = 0.07. The similarity matrix is built
   in blocks of validation rows, so memory stays bounded.
4. :func:`evaluate_representation` chains the three and returns a summary-ready dict.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hundred.engine.metrics import topk_correct
from hundred.errors import HundredError
from hundred.models import Classifier
from hundred.models.taps import unwrap

__all__ = ["ProbeResult", "evaluate_representation", "extract_features", "knn_accuracy",
           "linear_probe", "standardize"]

# Default similarity entries per kNN block (64 MiB of float32), when ``chunk`` is not given.
KNN_BLOCK_ELEMENTS = 2**24


@torch.no_grad()
def extract_features(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     device: torch.device | str | None = None,
                     autocast: torch.autocast | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone features ``(N, D)`` (float32) and labels ``(N,)`` of every batch of
    ``loader``, in order, with the model in eval mode (its train/eval mode is restored after).

    ``model`` is a :class:`hundred.models.Classifier` (possibly DDP- or compile-wrapped: the
    module underneath is used, so no DDP collective runs) or any module whose
    ``model(x, return_features=True)`` returns ``(logits, features)``. Batches are moved to
    ``device`` when given, and the results stay there (otherwise where the batches were).
    ``autocast`` (e.g. the trainer's bf16 context) wraps the forward pass."""
    base = unwrap(model)
    was_training = base.training
    base.eval()
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        for images, targets in loader:
            if device is not None:
                images = images.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
            if autocast is not None:
                with autocast:
                    batch = _features(base, images)
            else:
                batch = _features(base, images)
            features.append(batch.float())
            labels.append(targets)
    finally:
        base.train(was_training)
    if not features:
        raise HundredError("extract_features: the loader yielded no batches")
    return torch.cat(features), torch.cat(labels)


def _features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    if isinstance(model, Classifier):
        return model.features(images)
    return model(images, return_features=True)[1]


@dataclass(frozen=True)
class ProbeResult:
    """Accuracies (%) of the linear probe after its last epoch, and its cost."""

    top1: float
    top5: float
    train_top1: float    # on the (unaugmented) train features: over-/under-fitting at a glance
    train_loss: float    # mean cross-entropy of the last epoch's mini-batches
    seconds: float


def standardize(train_x: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6
                ) -> tuple[torch.Tensor, ...]:
    """``train_x`` and ``others`` standardised per dimension with the train mean and std; a
    dimension that is constant on the train split (std <= eps) is only centred."""
    mean = train_x.mean(dim=0)
    std = train_x.std(dim=0, unbiased=False)
    std = torch.where(std > eps, std, torch.ones_like(std))
    return tuple((x - mean) / std for x in (train_x, *others))


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
                 val_y: torch.Tensor, num_classes: int, *, epochs: int = 100, lr: float = 0.1,
                 batch_size: int = 256, weight_decay: float = 0.0,
                 optimizer: Literal["sgd", "adam"] = "sgd", standardize_features: bool = True,
                 seed: int = 0, device: torch.device | str | None = None) -> ProbeResult:
    """Train a linear classifier on frozen features and return its last-epoch accuracies.

    SGD with momentum 0.9 (or Adam) and a per-step cosine schedule from ``lr`` to zero over
    ``epochs`` passes; each pass visits the train features in a fresh order drawn from a
    generator seeded with ``seed`` (the last, smaller batch is kept). Runs on ``device``
    (default: where ``train_x`` is); deterministic given ``seed`` on a given device."""
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise HundredError(f"linear_probe: need epochs >= 1, batch_size >= 1 and lr > 0 "
                           f"(got {epochs}, {batch_size}, {lr})")
    _check_pair(train_x, train_y, "train")
    _check_pair(val_x, val_y, "val")
    start = time.perf_counter()
    device = torch.device(device) if device is not None else train_x.device
    train_x, val_x = train_x.to(device).float(), val_x.to(device).float()
    train_y, val_y = train_y.to(device).long(), val_y.to(device).long()
    if standardize_features:
        train_x, val_x = standardize(train_x, val_x)

    classifier = nn.Linear(train_x.shape[1], num_classes).to(device)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(classifier.parameters(), lr=lr,
                                                     momentum=0.9, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise HundredError(f"linear_probe: unknown optimizer {optimizer!r} (sgd or adam)")

    count = train_x.shape[0]
    steps_per_epoch = math.ceil(count / batch_size)
    total_steps = epochs * steps_per_epoch
    generator = torch.Generator().manual_seed(seed)
    step = 0
    loss_sum = torch.zeros((), device=device)
    for epoch in range(epochs):
        order = torch.randperm(count, generator=generator).to(device)
        if epoch == epochs - 1:
            loss_sum.zero_()
        for first in range(0, count, batch_size):
            for group in opt.param_groups:
                group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps))
            batch = order[first:first + batch_size]
            loss = F.cross_entropy(classifier(train_x[batch]), train_y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(batch)
            step += 1

    with torch.no_grad():
        val_hits = _hits(classifier, val_x, val_y)
        train_hits = _hits(classifier, train_x, train_y)
    return ProbeResult(top1=100.0 * val_hits[1] / len(val_y),
                       top5=100.0 * val_hits[5] / len(val_y),
                       train_top1=100.0 * train_hits[1] / count,
                       train_loss=float(loss_sum) / count, seconds=time.perf_counter() - start)


def _hits(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, block: int = 8192
          ) -> dict[int, float]:
    """Top-1 / top-5 hit counts of ``classifier`` on ``x``, in blocks of rows."""
    totals = {1: 0.0, 5: 0.0}
    for first in range(0, len(y), block):
        hits = topk_correct(classifier(x[first:first + block]), y[first:first + block])
        for k in totals:
            totals[k] += float(hits[k])
    return totals


def _check_pair(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if x.dim() != 2 or y.dim() != 1 or len(x) != len(y) or len(x) == 0:
        raise HundredError(f"{name} features must be (N, D) with N >= 1 and labels (N,); got "
                           f"{tuple(x.shape)} and {tuple(y.shape)}")


@torch.no_grad()
def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
                 val_y: torch.Tensor, num_classes: int, k: int | Sequence[int] = (20, 200),
                 temperature: float = 0.07, chunk: int | None = None) -> dict[int, float]:
    """Top-1 accuracy (%) of the weighted kNN classifier for each ``k``, keyed by the ``k``
    asked for (a ``k`` above the train-set size is clamped to it).

    Cosine similarity of L2-normalised features; the ``k`` most similar train samples vote
    with weight ``exp(s / temperature)`` (computed as ``exp((s - s_max) / temperature)``,
    the same per-row positive factor, so no overflow at small temperatures); ties of summed
    weight go to the lower class index. ``chunk`` validation rows are compared at a time
    (default: about ``KNN_BLOCK_ELEMENTS`` similarities per block). Runs where ``train_x``
    is."""
    ks = (k,) if isinstance(k, int) else tuple(k)
    if not ks or min(ks) < 1 or temperature <= 0:
        raise HundredError(f"knn_accuracy: need k >= 1 and temperature > 0 "
                           f"(got {ks}, {temperature})")
    _check_pair(train_x, train_y, "train")
    _check_pair(val_x, val_y, "val")
    device = train_x.device
    train_x = F.normalize(train_x.float(), dim=1)
    train_y = train_y.to(device).long()
    val_y = val_y.to(device).long()
    count = train_x.shape[0]
    clamped = {requested: min(requested, count) for requested in ks}
    largest = max(clamped.values())
    rows = chunk if chunk is not None else max(1, KNN_BLOCK_ELEMENTS // count)
    if rows < 1:
        raise HundredError(f"knn_accuracy: chunk must be >= 1, got {chunk}")
    correct = {requested: torch.zeros((), dtype=torch.long, device=device) for requested in ks}
    for first in range(0, len(val_y), rows):
        queries = F.normalize(val_x[first:first + rows].to(device).float(), dim=1)
        similarity, neighbours = (queries @ train_x.T).topk(largest, dim=1)   # sorted, desc.
        weights = ((similarity - similarity[:, :1]) / temperature).exp()
        neighbour_labels = train_y[neighbours]
        targets = val_y[first:first + rows]
        for requested, used in clamped.items():
            votes = torch.zeros(len(queries), num_classes, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :used], weights[:, :used])
            correct[requested] += (votes.argmax(dim=1) == targets).sum()
    return {requested: 100.0 * float(hits) / len(val_y) for requested, hits in correct.items()}


def evaluate_representation(model: nn.Module,
                            train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                            val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                            num_classes: int, *, probe_epochs: int = 100,
                            probe_lr: float = 0.1, probe_batch_size: int = 256,
                            probe_weight_decay: float = 0.0,
                            knn_k: Sequence[int] = (20, 200), knn_temperature: float = 0.07,
                            seed: int = 0, device: torch.device | str | None = None,
                            autocast: torch.autocast | None = None) -> dict[str, float | int]:
    """Linear probe and weighted kNN of ``model``'s frozen backbone features: features of
    ``train_loader`` (the unaugmented train split, e.g. ``eval_loader(ctx, data, "train")``)
    and ``val_loader`` are extracted once, then probed. Returns ``linear_top1``,
    ``linear_top5``, ``linear_train_top1``, ``knn<k>_top1`` for each ``k``, ``feature_dim``
    and the seconds spent (``extract_seconds``, ``probe_seconds``, ``knn_seconds``)."""
    start = time.perf_counter()
    train_x, train_y = extract_features(model, train_loader, device, autocast)
    val_x, val_y = extract_features(model, val_loader, device, autocast)
    extracted = _synced_time(train_x.device)
    probe = linear_probe(train_x, train_y, val_x, val_y, num_classes, epochs=probe_epochs,
                         lr=probe_lr, batch_size=probe_batch_size,
                         weight_decay=probe_weight_decay, seed=seed)
    knn_start = time.perf_counter()
    knn = knn_accuracy(train_x, train_y, val_x, val_y, num_classes, k=knn_k,
                       temperature=knn_temperature)
    summary: dict[str, float | int] = {
        "linear_top1": probe.top1, "linear_top5": probe.top5,
        "linear_train_top1": probe.train_top1,
        **{f"knn{requested}_top1": accuracy for requested, accuracy in knn.items()},
        "feature_dim": int(train_x.shape[1]),
        "extract_seconds": extracted - start, "probe_seconds": probe.seconds,
        "knn_seconds": time.perf_counter() - knn_start,
    }
    return summary


def _synced_time(device: torch.device) -> float:
    """``time.perf_counter()`` after the queued work on ``device`` has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
