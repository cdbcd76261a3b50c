"""DataDAM — Sajedi, Khaki, Amjadian, Liu, Lawryshyn & Plataniotis, "DataDAM: Efficient
Dataset Distillation with Attention Matching" (ICCV 2023, arXiv 2310.00093), Sec. 3: match,
class by class and under a freshly initialised frozen network each iteration,

* the spatial attention maps of the intermediate layers (the SAM module): for a feature map
  ``f`` (C, H, W), ``a = sum_c |f_c|^p`` flattened over (H, W) and L2-normalised per image;
  ``L_SAM = sum_c sum_l || mean_real a_l - mean_syn a_l ||^2`` over the layers ``l`` (every
  block's activation output except the last block's), and
* the final embeddings (the last layer's features, as DM does):
  ``L_MMD = sum_c || mean_real psi - mean_syn psi ||^2``,

with ``L = L_SAM + lambda * L_MMD``. Real and synthetic batches of a class share one DSA
transformation. Defaults follow the official repository's hyperparameter table (p = 4,
lambda = 0.01 at low resolution, 0.02 at high; pixel lr 1.0 for IPC <= 50, 10 above; 8000
iterations) and its code, which multiplies the whole loss by 100 (``loss_scale``; with SGD
that is a factor on the pixel step size). The official code hard-codes p = 1 and draws 64
real images per class (``condense.real_batch=64`` reproduces it).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from hundred.config import RunConfig
from hundred.models import Classifier
from hundred.models.activations import ACTIVATIONS
from hundred.models.backbones import ConvNet
from hundred.models.taps import capture_stages, stage_modules, unwrap
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.condense.matching import (class_matches, embed, frozen_network,
                                              mean_discrepancy)
from hundred.tracks.condense.method import CondenseContext, CondenseMethod, MatchingParams
from hundred.tracks.condense.synthetic import SyntheticSet


def attention_map(features: torch.Tensor, power: float) -> torch.Tensor:
    """DataDAM's spatial attention of a feature map ``(N, C, H, W)``: ``sum_c |f_c|^power``,
    flattened to ``(N, H*W)`` and L2-normalised per image (a token sequence ``(N, T, D)``
    sums over ``D``)."""
    channel_dim = 1 if features.dim() == 4 else -1
    attention = features.abs().pow(power).sum(dim=channel_dim)
    return F.normalize(attention.flatten(1), p=2.0, dim=1)


def attention_layers(network: nn.Module) -> list[nn.Module]:
    """The modules whose outputs DataDAM matches: in a ConvNet, the activation of every block
    but the last (the official code hooks the ReLUs of ``features``, all but the last); in
    other backbones, every stage but the last (:func:`hundred.models.taps.stage_modules`)."""
    module = unwrap(network)
    backbone = getattr(module, "backbone", module)
    if isinstance(backbone, ConvNet):
        activations = tuple(ACTIVATIONS.values())
        layers = [m for m in backbone.layers if isinstance(m, activations)]
    else:
        layers = stage_modules(module)
    return layers[:-1]


class DataDAMParams(MatchingParams):
    power: float = Field(4.0, gt=0, description="exponent p of the attention map "
                         "sum_c |f_c|^p (paper's table: 4; the official code runs p = 1)")
    task_balance: float = Field(0.01, ge=0, description="lambda: weight of the last-layer "
                                "embedding term L_MMD (0.01 low resolution, 0.02 high)")
    loss_scale: float = Field(100.0, gt=0, description="factor on the whole loss "
                              "L_SAM + lambda L_MMD (official code: 100)")


@register("condense", "datadam")
class DataDAM(CondenseMethod):
    """Match per-class mean spatial attention maps of the intermediate layers and mean final
    embeddings under a fresh random network every iteration."""

    Params = DataDAMParams
    default_image_lr: ClassVar[float] = 1.0
    search_space = {"method_params.power": Choice((1.0, 4.0)),
                    "method_params.task_balance": Choice((0.01, 0.02))}

    def image_lr(self, config: RunConfig) -> float:
        """``condense.image_lr``, else the paper's: 1.0 up to 50 images per class, 10 above."""
        if config.condense.image_lr is not None:
            return float(config.condense.image_lr)
        return self.default_image_lr if config.condense.ipc <= 50 else 10.0

    def describe(self, network: Classifier, images: torch.Tensor) -> list[torch.Tensor]:
        """The attention map of each matched layer, then the final embedding."""
        with capture_stages(network, attention_layers(network)) as outputs:
            embedding = embed(network, images)
        return [attention_map(f, self.params.power) for f in outputs] + [embedding]

    def matching_loss(self, synthetic: SyntheticSet, ctx: CondenseContext) -> torch.Tensor:
        network = frozen_network(ctx)
        attention = synthetic.images.new_zeros(())
        embedding = synthetic.images.new_zeros(())
        for match in class_matches(self, synthetic, ctx, lambda x: self.describe(network, x)):
            *real_maps, real_embedding = match.real
            *synthetic_maps, synthetic_embedding = match.synthetic
            for real_map, synthetic_map in zip(real_maps, synthetic_maps):
                attention = attention + mean_discrepancy(real_map, synthetic_map)
            embedding = embedding + mean_discrepancy(real_embedding, synthetic_embedding)
        return self.params.loss_scale * (attention + self.params.task_balance * embedding)
