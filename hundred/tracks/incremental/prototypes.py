"""Tools of prototype-based, exemplar-free class-incremental methods: rotation label
expansion, class prototypes (means of features) and the nearest-class-mean scorer.

* Rotation label expansion — Lee, Hwang & Shin, "Self-supervised Label Augmentation via
  Input Transformations", ICML 2020; used by PASS (Zhu, Zhang, Wang, Yin & Liu,
  "Prototype Augmentation and Self-Supervision for Incremental Learning", CVPR 2021, Sec. 3.3)
  and NAPA-VQ (Malepathirana, Senanayake & Halgamuge, ICCV 2023): every image is seen rotated
  by 0, 90, 180 and 270 degrees, and class ``y`` rotated ``r`` quarter turns becomes the
  expanded class ``4 y + r``.
* Prototypes — the mean feature of each class, kept after its task when its images are gone
  (PASS, NAPA-VQ). Unlike :func:`hundred.tracks.incremental.scenario.class_means` (iCaRL's
  normalised mean of normalised features, for NME), these are plain means in feature space,
  where prototype augmentation adds noise or interpolates.
* Nearest-class-mean scores — the negative Euclidean distance between L2-normalised features
  and L2-normalised class references (prototypes, or a codebook's coding vectors); its argmax
  is the nearest class mean (equivalently, the highest cosine similarity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ROTATIONS = 4  # quarter turns: 0, 90, 180, 270 degrees


def rotation_expanded(images: torch.Tensor, labels: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(4 B images, 4 B labels)``: each image followed by its three rotations (quarter turns
    counter-clockwise in the image plane), labelled ``4 y + r`` for ``r`` quarter turns."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation label expansion needs square images, got "
                         f"{tuple(images.shape[-2:])}")
    rotated = torch.stack([torch.rot90(images, r, dims=(-2, -1)) for r in range(ROTATIONS)], 1)
    expanded = torch.stack([labels * ROTATIONS + r for r in range(ROTATIONS)], 1)
    return rotated.flatten(0, 1), expanded.flatten()


def class_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums of ``features`` ``(num_classes, D)`` and counts ``(num_classes,)``, to be
    accumulated over batches; their ratio is the class prototype (mean feature)."""
    sums = features.new_zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    return sums, counts


def nearest_mean_scores(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` scores whose argmax is the nearest class mean: minus the Euclidean distance
    between the L2-normalised features and the L2-normalised class means."""
    return -torch.cdist(F.normalize(features.float(), dim=1), F.normalize(means.float(), dim=1))
