"""MTT — Cazenavette, Wang, Torralba, Efros & Zhu, "Dataset Distillation by Matching Training
Trajectories" (CVPR 2022, arXiv 2203.11932), Sec. 3.1, Eq. 1-2 and Algorithm 1.

Each iteration: a random expert (``method_params.experts``, written by ``hundred condense
experts``) and start epoch ``t < T+``; a student starts at the expert's ``theta*_t`` and takes
``N`` SGD steps on minibatches of the (DSA-augmented, FYI-doubled when on) synthetic images
with a learned step size ``alpha`` (Eq. 1), backpropagating through all of them; the loss is
the normalised distance to the expert ``M`` epochs later (Eq. 2)::

    L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2.

The pixels (SGD, momentum 0.5) and ``alpha`` (its own SGD group: lr ``lr_lr``, momentum 0.5,
starting at ``lr_teacher``) follow ``dL``. Memory grows with N (every step's graph is kept
for the backward pass); ``tesla`` computes the same gradient in memory that does not.

Defaults: N = 30, M = 2, T+ = 20, lr_lr = 1e-5, alpha_0 = 0.01 (the paper's CIFAR-10 IPC 10
setting). Pixel lr 1000: the paper's CIFAR values assume ZCA-whitened pixels; its ImageNet
subsets, normalised by mean/std as here (no ZCA), use 1000 (``condense.image_lr`` overrides).
The learned lr is clamped to ``min_lr`` after each step to keep it positive (the official code
does not clamp).
"""

from __future__ import annotations

import torch

from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.condense.method import CondenseContext
from hundred.tracks.condense.synthetic import SyntheticSet
from hundred.tracks.condense.trajectory import (TrajectoryMethod, TrajectoryParams,
                                                matching_ratio, unrolled_student)


class MTTParams(TrajectoryParams):
    """MTT's hyperparameters (see :class:`TrajectoryParams`)."""


@register("condense", "mtt")
class MTT(TrajectoryMethod):
    """Match the expert's parameters M epochs on after N unrolled student steps."""

    Params = MTTParams
    search_space = {"condense.image_lr": Choice((100.0, 1000.0, 10000.0)),
                    "method_params.syn_steps": Choice((10, 20, 30)),
                    "method_params.lr_lr": Choice((1e-6, 1e-5, 1e-4))}

    def matching_loss(self, synthetic: SyntheticSet, ctx: CondenseContext) -> torch.Tensor:
        _, _, start, target = self.draw_segment(ctx, synthetic.images.dtype)
        images = self.matched(synthetic.images)
        plan = self.plan(len(images), ctx)
        assert synthetic.lr is not None, "setup_set adds the learned lr"
        final = unrolled_student(self.network, self.layout, images,
                                 self.matched_targets(synthetic), synthetic.lr, start, plan,
                                 ctx.dsa)
        return matching_ratio(final, start, target)
