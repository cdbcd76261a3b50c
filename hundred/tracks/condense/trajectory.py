"""What trajectory matching (MTT, TESLA) shares: the expert segment, the student's unrolled SGD
steps on the synthetic set, the normalised parameter-matching loss, and three ways to get its
gradient.

Cazenavette et al., "Dataset Distillation by Matching Training Trajectories" (CVPR 2022,
arXiv 2203.11932), Sec. 3.1 and Algorithm 1. Each iteration draws an expert and a start epoch
``t < T+`` (``max_start_epoch``), starts a student at the expert's ``theta*_t`` and takes
``N`` (``syn_steps``) SGD steps on minibatches ``X_i`` of the augmented synthetic images with a
learned step size ``alpha`` (Eq. 1)::

    theta_{i+1} = theta_i - alpha * g_i,   g_i = grad_theta l(A(X_i); theta_i)

then compares where it ends with the expert ``M`` (``expert_epochs``) epochs later (Eq. 2)::

    L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2.

Gradients of ``L`` with respect to the images and ``alpha``:

* :func:`unrolled_student` — MTT: the N steps with ``create_graph`` (autograd keeps every
  step's graph: memory grows with N);
* :func:`adjoint_gradients` — TESLA's goal computed exactly (reverse-mode through the unrolled
  SGD, the adjoint method): a forward pass without graphs that keeps only the parameter
  snapshots ``theta_i`` (flat vectors, on the device or in host memory) and each step's
  minibatch indices and drawn DSA parameters; then for ``i = N-1 .. 0`` the step's gradient
  ``g_i`` is recomputed with a graph and one vector-Jacobian product with the adjoint
  ``lambda`` (``lambda_N = dL/dtheta_N``) gives::

      dL/dX_i  += -alpha * d(g_i . lambda)/dX_i
      dL/dalpha += -g_i . lambda
      lambda   <- lambda - alpha * d(g_i . lambda)/dtheta_i      (= dL/dtheta_i)

  Only one step's graph lives at a time;
* ``paper=True`` — Cui et al. (ICML 2023), Eq. 6: the published two-pass formula. It expands
  ``theta_N = theta_0 - alpha * sum_i g_i`` and differentiates each ``g_i`` with respect to its
  own batch only, at fixed ``theta_i``: the same loop with ``lambda`` held at ``lambda_N``.
  It drops the cross-step terms (``g_j`` for ``j > i`` depends on ``X_i`` through
  ``theta_j``), so it is exact for N = 1 only.

Every random draw (expert, start epoch, minibatch order, DSA parameters) uses the global torch
RNG (CPU), in the same order for MTT and TESLA: the same RNG state gives both the same step
plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from hundred.errors import HundredError
from hundred.tracks.condense.evaluation import soft_cross_entropy
from hundred.tracks.condense.experts import ExpertBank, ParamLayout
from hundred.tracks.condense.method import CondenseContext, CondenseMethod, MatchingParams
from hundred.tracks.condense.synthetic import SyntheticSet


class TrajectoryParams(MatchingParams):
    """Trajectory matching's hyperparameters (MTT, CIFAR-10 IPC 10 row of the paper's
    hyperparameter table: N = 30, M = 2, T+ = 20, lr of the lr 1e-5, alpha_0 = 0.01)."""

    experts: Optional[str] = Field(None, description="directory of expert trajectories "
                                   "(hundred condense experts --out DIR); required")
    syn_steps: int = Field(30, ge=1, description="N: student SGD steps on the synthetic set "
                           "per iteration")
    expert_epochs: int = Field(2, ge=1, description="M: expert epochs the student's N steps "
                               "should cover (target theta*_{t+M})")
    max_start_epoch: int = Field(20, ge=1, description="T+: start epochs t are drawn from "
                                 "0..T+-1")
    lr_teacher: float = Field(0.01, gt=0, description="alpha_0: initial learned student lr "
                              "(the experts' lr)")
    lr_lr: float = Field(1e-5, gt=0, description="SGD lr of the learned student lr")
    lr_momentum: float = Field(0.5, ge=0, lt=1, description="SGD momentum of the learned lr")
    min_lr: float = Field(1e-6, gt=0, description="the learned lr is clamped to at least this "
                          "after each step (keeps it positive; the paper does not clamp)")
    batch_syn: Optional[int] = Field(None, ge=1, description="synthetic images per student "
                                     "step (None: all of them, the paper's default)")


@dataclass
class Step:
    """One student step's minibatch (indices into the matched images) and its drawn DSA
    parameters (None without DSA): what a second pass needs to replay it exactly."""

    indices: torch.Tensor
    augment: Any | None = None


def plan_steps(count: int, steps: int, batch: int | None, device: torch.device,
               dsa: Any | None) -> list[Step]:
    """``steps`` minibatches of ``batch`` indices (all images when None) from ``count`` images:
    consecutive chunks of random permutations (a new one when the last is used up), each with
    its DSA parameters; global torch RNG."""
    batch = count if batch is None else min(batch, count)
    plan: list[Step] = []
    chunks: list[torch.Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(count).split(batch))
        indices = chunks.pop(0).to(device)
        augment = None if dsa is None else dsa.sample(len(indices), device)
        plan.append(Step(indices, augment))
    return plan


def step_batch(images: torch.Tensor, targets: torch.Tensor, step: Step, dsa: Any | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The (augmented) images and targets of ``step``."""
    batch = images[step.indices]
    if dsa is not None and step.augment is not None:
        batch = dsa.apply(batch, step.augment)
    return batch, targets[step.indices]


def student_loss(network: nn.Module, layout: ParamLayout, flat: torch.Tensor,
                 images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (hard labels or probabilities) of ``network`` with parameters ``flat``."""
    logits = functional_call(network, layout.unflatten(flat), (images,))
    return soft_cross_entropy(logits, targets)


def matching_ratio(final: torch.Tensor, start: torch.Tensor, target: torch.Tensor
                   ) -> torch.Tensor:
    """MTT's Eq. 2: ``||final - target||^2 / ||start - target||^2``."""
    return (final - target).pow(2).sum() / (start - target).pow(2).sum()


def unrolled_student(network: nn.Module, layout: ParamLayout, images: torch.Tensor,
                     targets: torch.Tensor, lr: torch.Tensor, start: torch.Tensor,
                     plan: list[Step], dsa: Any | None) -> torch.Tensor:
    """``theta_N`` after the plan's SGD steps from ``start`` (Eq. 1), keeping every step's
    graph (differentiable with respect to ``images`` and ``lr``)."""
    theta = start.detach().requires_grad_(True)
    for step in plan:
        batch, labels = step_batch(images, targets, step, dsa)
        loss = student_loss(network, layout, theta, batch, labels)
        grad = torch.autograd.grad(loss, theta, create_graph=True)[0]
        theta = theta - lr * grad
    return theta


@dataclass
class AdjointResult:
    """The loss and its gradients with respect to the matched images and the lr."""

    loss: torch.Tensor
    images: torch.Tensor
    lr: torch.Tensor


def adjoint_gradients(network: nn.Module, layout: ParamLayout, images: torch.Tensor,
                      targets: torch.Tensor, lr: torch.Tensor, start: torch.Tensor,
                      target: torch.Tensor, plan: list[Step], dsa: Any | None, *,
                      snapshots: Literal["device", "host"] = "device",
                      paper: bool = False) -> AdjointResult:
    """The exact gradient of Eq. 2 through the plan's unrolled SGD steps, one step's graph at
    a time (see the module doc); ``paper``: TESLA's published approximation instead."""
    images = images.detach()
    alpha = lr.detach()
    host = torch.device("cpu")
    saved: list[torch.Tensor] = []
    theta = start.detach()
    for step in plan:  # forward: no graph kept, parameter snapshots only
        saved.append(theta.to(host, copy=True) if snapshots == "host" else theta)
        with torch.enable_grad():
            current = theta.clone().requires_grad_(True)
            batch, labels = step_batch(images, targets, step, dsa)
            grad = torch.autograd.grad(student_loss(network, layout, current, batch, labels),
                                       current)[0]
        theta = (theta - alpha * grad).detach()
    denominator = (start - target).pow(2).sum()
    difference = theta - target
    loss = difference.pow(2).sum() / denominator
    adjoint = 2 * difference / denominator  # lambda_N = dL/dtheta_N
    grad_images = torch.zeros_like(images)
    grad_lr = torch.zeros_like(alpha)
    for index in range(len(plan) - 1, -1, -1):  # reverse: one step's graph at a time
        step = plan[index]
        with torch.enable_grad():
            current = saved[index].to(start.device).requires_grad_(True)
            chosen = images[step.indices].requires_grad_(True)
            batch = chosen if dsa is None or step.augment is None else dsa.apply(chosen,
                                                                                 step.augment)
            loss_i = student_loss(network, layout, current, batch, targets[step.indices])
            grad = torch.autograd.grad(loss_i, current, create_graph=True)[0]
            product = (grad * adjoint).sum()
            inputs = (chosen,) if paper else (chosen, current)
            found = torch.autograd.grad(product, inputs, allow_unused=True)
        d_images = found[0]
        if d_images is not None:
            grad_images.index_add_(0, step.indices, -alpha * d_images)
        grad_lr = grad_lr - product.detach()
        if not paper:
            adjoint = adjoint - alpha * found[1]
        saved[index] = None  # type: ignore[call-overload]  # free the snapshot
    return AdjointResult(loss.detach(), grad_images, grad_lr)


class TrajectoryMethod(CondenseMethod):
    """The parts MTT and TESLA share: the experts (loaded and checked in :meth:`prepare`), a
    learned student lr (its own SGD group), the segment and step plan of an iteration."""

    Params = TrajectoryParams
    # MTT's pixel lr without ZCA whitening: their ImageNet-subset runs (mean/std normalised
    # pixels, as here) use 1000, and so does TESLA's CIFAR-10 command without --zca
    default_image_lr: ClassVar[float] = 1000.0

    def prepare(self, ctx: CondenseContext) -> None:
        params: TrajectoryParams = self.params  # type: ignore[assignment]
        if not params.experts:
            raise HundredError(f"{self.name} needs expert trajectories: train them with "
                               f"'hundred condense experts --data {ctx.config.data.label} "
                               f"--model {ctx.config.model.name} --out DIR' and pass "
                               f"--set method_params.experts=DIR")
        with torch.random.fork_rng(devices=[]):  # the template draws nothing the run sees
            self.network = ctx.new_network()
        self.network.train()
        self.network.requires_grad_(False)
        self.layout = ParamLayout.of(self.network)
        self.bank = ExpertBank.open(Path(params.experts), ctx.config, ctx.dataset,
                                    ctx.image_size, self.layout)
        last = params.max_start_epoch - 1 + params.expert_epochs
        if last > self.bank.epochs:
            raise HundredError(
                f"{self.name}: max_start_epoch {params.max_start_epoch} + expert_epochs "
                f"{params.expert_epochs} needs experts of at least {last} epochs; those in "
                f"{params.experts} have {self.bank.epochs}")

    def setup_set(self, synthetic: SyntheticSet, ctx: CondenseContext) -> None:
        synthetic.add_learned_lr(self.params.lr_teacher)  # type: ignore[attr-defined]

    def optimizer_groups(self, synthetic: SyntheticSet, image_lr: float, momentum: float
                         ) -> list[dict[str, Any]]:
        groups = super().optimizer_groups(synthetic, image_lr, momentum)
        params: TrajectoryParams = self.params  # type: ignore[assignment]
        groups.append({"params": [synthetic.lr], "lr": params.lr_lr,
                       "momentum": params.lr_momentum})
        return groups

    def after_step(self, synthetic: SyntheticSet) -> None:
        if synthetic.lr is not None:
            with torch.no_grad():
                synthetic.lr.clamp_(min=self.params.min_lr)  # type: ignore[attr-defined]

    def draw_segment(self, ctx: CondenseContext, dtype: torch.dtype = torch.float32
                     ) -> tuple[int, int, torch.Tensor, torch.Tensor]:
        """A random expert and start epoch ``t`` (global torch RNG) and the expert's flat
        parameters at ``t`` and ``t + M``."""
        params: TrajectoryParams = self.params  # type: ignore[assignment]
        expert = int(torch.randint(len(self.bank), (1,)))
        epoch = int(torch.randint(params.max_start_epoch, (1,)))
        start, target = self.bank.segment(expert, epoch, epoch + params.expert_epochs,
                                          ctx.device, dtype)
        return expert, epoch, start, target

    def plan(self, count: int, ctx: CondenseContext) -> list[Step]:
        params: TrajectoryParams = self.params  # type: ignore[assignment]
        return plan_steps(count, params.syn_steps, params.batch_syn, ctx.device, ctx.dsa)

    def matched_targets(self, synthetic: SyntheticSet) -> torch.Tensor:
        """The hard labels of the matched images (doubled with FYI, as the images are)."""
        labels = synthetic.labels
        return torch.cat([labels, labels]) if getattr(self.params, "fyi", False) else labels


__all__ = ["AdjointResult", "Step", "TrajectoryMethod", "TrajectoryParams", "adjoint_gradients",
           "matching_ratio", "plan_steps", "step_batch", "student_loss", "unrolled_student"]
