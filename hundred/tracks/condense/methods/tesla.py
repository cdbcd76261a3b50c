"""TESLA — Cui, Wang, Si & Hsieh, "Scaling Up Dataset Distillation to ImageNet-1K with Constant
Memory" (ICML 2023, arXiv 2211.10586): MTT's objective (Eq. 1-2 of Cazenavette et al., CVPR
2022) with a gradient whose memory does not grow with the number of unrolled steps N, and soft
labels assigned by the expert ("soft label assignment", SLA).

Gradient (``gradient: exact``, the default): the true gradient of the unrolled MTT loss with
respect to the pixels and the learned lr, by the adjoint (reverse) pass of
:func:`hundred.tracks.condense.trajectory.adjoint_gradients`: a forward pass without graphs that
stores each step's parameters ``theta_i`` (one flat vector per step) and its minibatch indices
and DSA parameters, then, from the last step back, one step's graph at a time (recompute
``g_i`` with ``create_graph``, one vector-Jacobian product with the adjoint ``lambda``).

``gradient: paper`` reproduces the paper's two-pass formula (its Eq. 6: the gradient of the
expanded loss ``||theta_0 - alpha sum_i g_i - theta*||^2`` with each ``g_i`` differentiated
with respect to its own batch only): the same loop with ``lambda`` frozen at
``dL/dtheta_N``. It omits the cross-step terms (``g_j``, ``j > i``, depends on ``X_i``
through ``theta_j``), so it equals the exact gradient for N = 1 only. (The official code
further loses the factor 2 of the pixel gradient — ``2 * torch.autograd.grad(...)`` repeats a
tuple; its issue #5 — which this mode does not copy: it is Eq. 6 as printed.)

Memory (``snapshots``): ``device`` keeps the N + 1 parameter snapshots on the accelerator —
memory grows by one parameter vector per step instead of one full graph (activations of a
forward and a double-backward pass) per step, i.e. nearly flat for a small ConvNet; ``host``
moves them to CPU memory, so the accelerator's memory stays flat in N at the cost of a
device<->host copy of every snapshot (twice per step). Time is about 1.5x MTT's per iteration:
every step's gradient is computed twice (once without a graph, once with).

Soft labels (``soft_labels: true``, the paper's SLA): the labels of the synthetic images are
the softmax (temperature ``label_temperature``, 1 in the paper and code) of the expert's
predictions at the target epoch ``theta*_{t+M}`` of the current iteration, on the current
(unaugmented) images; they are not learned ("train-free") and are recomputed every iteration;
the last assignment is what the set is evaluated with. The official repository switches them
on for ImageNet-1K (``--teacher_label``) and off in its CIFAR commands. With FYI, each flipped
image gets the expert's label of the flipped image.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch.func import functional_call

from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.condense.method import CondenseContext
from hundred.tracks.condense.synthetic import SyntheticSet
from hundred.tracks.condense.trajectory import (TrajectoryMethod, TrajectoryParams,
                                                adjoint_gradients)


class TeslaParams(TrajectoryParams):
    """TESLA's hyperparameters: MTT's plus how the gradient is computed and the labels."""

    gradient: Literal["exact", "paper"] = Field(
        "exact", description="exact: the true gradient of the unrolled MTT loss (adjoint "
        "pass); paper: the published two-pass approximation (drops cross-step terms)")
    snapshots: Literal["device", "host"] = Field(
        "device", description="where the per-step parameter snapshots live: device (fast) or "
        "host memory (device memory flat in syn_steps)")
    soft_labels: bool = Field(True, description="soft label assignment: the expert's softmax "
                              "at the target epoch, recomputed every iteration, not learned")
    label_temperature: float = Field(1.0, gt=0, description="softmax temperature of the "
                                     "expert's labels (1 in the paper)")


@register("condense", "tesla")
class Tesla(TrajectoryMethod):
    """MTT's loss, its exact gradient in memory that does not grow with N, expert soft labels."""

    Params = TeslaParams
    search_space = {"condense.image_lr": Choice((100.0, 1000.0, 10000.0)),
                    "method_params.syn_steps": Choice((10, 20, 30)),
                    "method_params.lr_lr": Choice((1e-6, 1e-5, 1e-4))}

    def setup_set(self, synthetic: SyntheticSet, ctx: CondenseContext) -> None:
        super().setup_set(synthetic, ctx)
        params: TeslaParams = self.params  # type: ignore[assignment]
        if params.soft_labels:  # a first assignment (expert 0 at the last target epoch)
            epoch = min(self.bank.epochs, params.max_start_epoch - 1 + params.expert_epochs)
            expert, _ = self.bank.segment(0, epoch, epoch, ctx.device, synthetic.images.dtype)
            synthetic.add_soft_labels(self.expert_logits(expert, synthetic.images),
                                      learnable=False)

    def expert_logits(self, flat: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The expert's (parameters ``flat``) logits on ``images``, divided by the
        temperature."""
        with torch.no_grad():
            logits = functional_call(self.network, self.layout.unflatten(flat),
                                     (images.detach(),))
        return logits / self.params.label_temperature  # type: ignore[attr-defined]

    def compute_gradients(self, synthetic: SyntheticSet, ctx: CondenseContext
                          ) -> dict[str, float]:
        params: TeslaParams = self.params  # type: ignore[assignment]
        assert synthetic.lr is not None, "setup_set adds the learned lr"
        _, _, start, target = self.draw_segment(ctx, synthetic.images.dtype)
        images = self.matched(synthetic.images)  # a cheap graph back to the pixels
        if params.soft_labels:
            logits = self.expert_logits(target, images)
            targets = logits.softmax(dim=1)
            if synthetic.soft_labels is not None:
                synthetic.soft_labels.data.copy_(logits[:len(synthetic.images)])
        else:
            targets = self.matched_targets(synthetic)
        plan = self.plan(len(images), ctx)
        result = adjoint_gradients(self.network, self.layout, images, targets, synthetic.lr,
                                   start, target, plan, ctx.dsa, snapshots=params.snapshots,
                                   paper=params.gradient == "paper")
        images.backward(result.images)
        lr_grad = result.lr.to(synthetic.lr.dtype).reshape(synthetic.lr.shape)
        synthetic.lr.grad = lr_grad if synthetic.lr.grad is None else synthetic.lr.grad + lr_grad
        return {"loss": float(result.loss)}
