"""Choosing representative samples by their features: herding (Welling, "Herding Dynamical
Weights to Learn", ICML 2009), as iCaRL's exemplar selection (Rebuffi et al., CVPR 2017,
Alg. 4) and the dataset-condensation papers' "herding" baseline use it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def herding_order(features: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` rows chosen greedily so that the running mean of the chosen
    (L2-normalised) features stays closest to the mean of all of them; no row twice."""
    normalised = F.normalize(features.float(), dim=1)
    target = normalised.mean(dim=0)
    count = min(count, len(normalised))
    chosen = torch.empty(count, dtype=torch.long)
    running = torch.zeros_like(target)
    available = torch.ones(len(normalised), dtype=torch.bool)
    for k in range(count):
        candidate_means = (running + normalised) / (k + 1)
        distance = (candidate_means - target).norm(dim=1)
        distance[~available] = float("inf")
        best = int(distance.argmin())
        chosen[k] = best
        available[best] = False
        running += normalised[best]
    return chosen
