"""FedLoGe: joint local and generic federated learning under long-tailed data.

Xiao, Chen, Lin, Wang, Jiang, Wang, Zhang, Jiang, Zhou and Wang, "FedLoGe: Joint Local and
Generic Federated Learning under Long-tailed Data", ICLR 2024 (arXiv 2401.08977).

1. **SSE-C** (static sparse equiangular tight frame classifier). A simplex ETF
   ``M = sqrt(C/(C-1)) U (I_C - 1/C 1 1^T)`` (``U``: d x C with orthonormal columns; unit
   column norms, pairwise cosines ``-1/(C-1)``) is sparsified: a share ``sparsity`` of its
   entries (beta = 0.6 in the paper) is zeroed at random, and the remaining entries are
   optimised (Adam, zeros kept) towards equal column norms and the largest angle between each
   column and its nearest neighbour,
   ``min sum_k (||w_k|| - r)^2 - 1/C sum_k arccos(max_{j != k} cos(w_k, w_j))``.
   The result is frozen and never sent: the backbone is trained against it with
   cross-entropy, which pulls features onto fixed, well separated class directions while the
   sparsity suppresses noisy (tail) feature channels.
2. **Heads on detached features.** Each client also trains, on the *detached* features, an
   auxiliary global head (the model's linear head, averaged by FedAvg with the backbone) and
   its own local head (never sent); the three losses are summed, and since the heads only see
   detached features, each gradient reaches only its own parameters.
3. **GLA-FR** (global and local adaptive feature realignment). The auxiliary global head's
   class vectors grow with their class frequency; the realigned global head divides each one
   by its norm, ``logit_k = w_k^T z / ||w_k||`` (its bias, a class prior, is dropped), and is
   the generic prediction. A client's personalised prediction adds its local head's logits to
   the realigned global head's (``personal="global+local"``, as in the official evaluation)
   or uses the local head alone (``personal="local"``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig
from hundred.engine.losses import cross_entropy
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models import Classifier, LinearHead
from hundred.registry import register
from hundred.tracks.federated.method import FederatedMethod


def simplex_etf(feature_dim: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A simplex ETF as ``(num_classes, feature_dim)`` rows: unit norms, pairwise cosines
    ``-1/(C-1)``. Needs ``feature_dim >= num_classes`` (``U`` has C orthonormal columns)."""
    if feature_dim < num_classes:
        raise HundredError(f"a simplex ETF of {num_classes} classes needs features of at least "
                           f"{num_classes} dimensions, the backbone gives {feature_dim}: use a "
                           "wider model (e.g. model.options.width)")
    random = torch.rand(feature_dim, num_classes, generator=generator, dtype=torch.float64)
    basis, _ = torch.linalg.qr(random)  # d x C, orthonormal columns
    centring = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    etf = math.sqrt(num_classes / (num_classes - 1)) * basis @ centring
    return etf.T.contiguous().float()


def _nearest_angle(weight: torch.Tensor) -> torch.Tensor:
    """Per class, the angle (radians) to its nearest other class vector."""
    unit = F.normalize(weight, dim=1)
    cosine = unit @ unit.T
    cosine = cosine - 2 * torch.eye(len(weight), dtype=weight.dtype)  # never its own
    return torch.acos(cosine.max(dim=1).values.clamp(-1 + 1e-6, 1 - 1e-6))


def sparse_etf(etf: torch.Tensor, sparsity: float, norm: float, steps: int, lr: float,
               generator: torch.Generator) -> torch.Tensor:
    """SSE-C: zero a share ``sparsity`` of ``etf``'s entries at random (exactly
    ``round(sparsity * numel)``), then optimise the others (Adam, ``steps`` at ``lr``) towards
    column norm ``norm`` and maximal nearest-neighbour angles; the zeros stay zero."""
    flat = torch.randperm(etf.numel(), generator=generator)[:round(sparsity * etf.numel())]
    mask = torch.ones(etf.numel())
    mask[flat] = 0
    mask = mask.view_as(etf)
    weight = (etf * mask).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weight], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        masked = weight * mask
        loss = ((masked.norm(dim=1) - norm) ** 2).sum() - _nearest_angle(masked).mean()
        loss.backward()
        optimizer.step()
    return (weight * mask).detach()


class FrozenClassifier(nn.Module):
    """The frozen SSE-C as a bias-free linear classifier."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.weight.to(features.dtype))


class FedLoGeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sparsity: float = Field(0.6, ge=0, lt=1, description="share beta of the ETF's entries set "
                            "to zero in SSE-C (paper: 0.6)")
    etf_norm: float = Field(1.0, gt=0, description="column norm the sparse ETF is optimised "
                            "to (a unit-norm ETF; the official code uses 0.1)")
    etf_steps: int = Field(1000, ge=0, description="Adam steps re-balancing the sparse ETF "
                           "(official code: 10000 at lr 1e-4)")
    etf_lr: float = Field(1e-3, gt=0, description="Adam learning rate of those steps")
    realign: bool = Field(True, description="GLA-FR's norm realignment of the global head; "
                          "False = the averaged auxiliary head as trained, bias included "
                          "(an ablation)")
    personal: Literal["global+local", "local"] = Field(
        "global+local", description="personalised prediction: realigned global head + local "
        "head (the official evaluation), or the local head alone")


@register("federated", "fedloge")
class FedLoGe(FederatedMethod):
    """Backbone trained against the frozen SSE-C; global (averaged) and local (kept) heads
    trained on detached features; GLA-FR realignment at prediction."""

    Params = FedLoGeParams
    local_modules = ("local_head",)

    def prepare(self, config: RunConfig, num_classes: int, feature_dim: int) -> None:
        if config.model.head != "linear":
            raise HundredError(f"FedLoGe realigns a linear global head; model.head="
                               f"{config.model.head} is not one")
        if num_classes < 2:
            raise HundredError("FedLoGe's simplex ETF needs at least 2 classes")
        simplex_etf(feature_dim, num_classes, torch.Generator())  # refuses too few dimensions

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if "sse_c" in self.frozen:
            return
        classes, dim = model.head.out_features, model.feature_dim
        generator = torch.Generator().manual_seed(ctx.config.seed)  # the same on every client
        p = self.params
        weight = sparse_etf(simplex_etf(dim, classes, generator), p.sparsity, p.etf_norm,
                            p.etf_steps, p.etf_lr, generator)
        self.add_frozen("sse_c", FrozenClassifier(weight))
        self.add_trainable("local_head", LinearHead(dim, classes))

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        smoothing = self.config.train.label_smoothing
        features = model.features(images)
        backbone = cross_entropy(self.frozen["sse_c"](features), labels, smoothing)
        detached = features.detach()
        global_head = cross_entropy(model.head(detached), labels, smoothing)
        local_head = cross_entropy(self.trainable["local_head"](detached), labels, smoothing)
        return backbone + global_head + local_head

    def generic_logits(self, model: Classifier, features: torch.Tensor) -> torch.Tensor:
        """GLA-FR's realigned global head: each class vector of the averaged auxiliary head
        divided by its norm."""
        if not self.params.realign:
            return model.head(features)
        weight = model.head.weight
        return F.linear(features, weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def personal_logits(self, model: Classifier, features: torch.Tensor) -> torch.Tensor:
        local = self.trainable["local_head"](features)
        if self.params.personal == "local":
            return local
        return self.generic_logits(model, features) + local
