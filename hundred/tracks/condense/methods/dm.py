"""DM — Zhao & Bilen, "Dataset Condensation with Distribution Matching" (WACV 2023, arXiv
2110.04181), Sec. 3.2, Eq. 4 (Eq. 3 with Siamese augmentation) and Algorithm 1: the synthetic
set of each class should have the same mean embedding as the real images of that class, for
embeddings drawn from a family of randomly initialised networks,

    min_S  E_{theta, omega} sum_c || mean_{x in B_c^T} psi_theta(A(x, omega))
                                     - mean_{s in S_c} psi_theta(A(s, omega)) ||^2,

estimated each iteration with one freshly initialised network ``psi_theta`` (the backbone's
features; never trained), one real batch per class and one DSA transformation ``A(., omega)``
shared by the real and synthetic batches of the class. Paper defaults (CIFAR): 20000
iterations, pixel lr 1.0 (SGD, momentum 0.5), 256 real images per class per iteration
(``condense.iterations`` / ``condense.image_lr`` / ``condense.real_batch``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.condense.matching import (class_matches, embed, frozen_network,
                                              mean_discrepancy)
from hundred.tracks.condense.method import CondenseContext, CondenseMethod, MatchingParams
from hundred.tracks.condense.synthetic import SyntheticSet


class DMParams(MatchingParams):
    """DM has no hyperparameters beyond the shared ``condense`` settings (and ``fyi``)."""


@register("condense", "dm")
class DM(CondenseMethod):
    """Match each class's mean embedding under a fresh random network every iteration."""

    Params = DMParams
    default_image_lr: ClassVar[float] = 1.0
    search_space = {"condense.image_lr": Choice((0.1, 1.0, 10.0))}

    def matching_loss(self, synthetic: SyntheticSet, ctx: CondenseContext) -> torch.Tensor:
        network = frozen_network(ctx)
        loss = synthetic.images.new_zeros(())
        for match in class_matches(self, synthetic, ctx, lambda x: [embed(network, x)]):
            loss = loss + mean_discrepancy(match.real[0], match.synthetic[0])
        return loss
