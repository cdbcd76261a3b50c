"""TAS: search the width of every prunable layer with learnable distributions, then train the
most probable shape with knowledge distillation from the unpruned network.

Dong & Yang, "Network Pruning via Transformable Architecture Search" (NeurIPS 2019,
arXiv 1905.09717; official code github.com/D-X-Y/AutoDL-Projects, read only, nothing copied):

* a learnable distribution over the candidate widths of every layer (Sec. 3.1): logits
  ``alpha_g`` over ``C_g x {0.3, 0.4, ..., 1.0}`` (Sec. 4.1); here one distribution per
  channel group of :mod:`hundred.tracks.compress.groups` (Torch-Pruning's groups, so layers
  tied by a residual sum share one width, and the groups it cannot remove correctly, e.g. the
  stream of option-A ResNets, stay dense);
* Gumbel-softmax sampling of ``I = 2`` candidates per group (Eq. 3 and Sec. 3.1: ``I``
  candidates drawn from the Gumbel-perturbed distribution, their weights the softmax of the
  perturbed logits among the drawn ones), with ``tau`` decaying linearly from 10 to 0.1;
* channel-wise interpolation, CWI (Eq. 2): the drawn widths' feature maps ``O[:, :c_i]`` are
  aligned to the largest drawn width by adaptive average pooling along the channels, then
  summed with the sampled weights (:func:`aggregate`); channels beyond that width are zero,
  as the next layer's zero-filled input in the official code;
* the expected FLOPs (Eq. 5-6): each layer's multiply-adds at the expected input and output
  widths ``E[c] = sum_j softmax(alpha)_j c_j`` (:meth:`SearchSpace.expected_macs`),
  differentiable in ``alpha``; the cost loss (Eq. 7) is ``+log E[F]`` when the argmax shape
  is above the target, ``-log E[F]`` when it is below target - tolerance, 0 inside the band
  (:func:`cost_loss`); the architecture loss is ``CE + lambda_cost x cost`` (Eq. 8);
* alternating updates (Algorithm 1): the train split is cut into two disjoint class-balanced
  halves (:func:`split_halves`); every step updates the weights (the engine's optimiser, CE
  on a batch of the first half, widths drawn with ``alpha`` held fixed), then ``alpha``
  (Adam, lr 1e-3, weight decay 1e-3, betas (0.5, 0.999) as the official code) on a batch of
  the second half;
* the argmax shape is exported as a width plan (``model.options.pruned_widths``) with the
  search's weights (the first channels), and its KD training (Sec. 3.3: random
  initialisation, ``0.9 T^2 KL + 0.1 CE`` at ``T = 4``) is the classify track's ``kd``
  started from that plan: the summary's ``compression.kd_command``.

Depth is not searched: a width plan cannot remove blocks (see the notes).
"""

from __future__ import annotations

import copy
import json
import shlex
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.losses import cross_entropy
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models import Classifier, create
from hundred.models.widths import OPTION as PRUNED_WIDTHS
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.compress.groups import NORMS, GroupSet, find_groups
from hundred.tracks.compress.method import CompressMethod

CHANNEL_FIRST = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm,
                 nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


class TASParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width_choices: tuple[float, ...] = Field(
        (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), description="candidate widths as shares of "
        "each group's channels (Sec. 4.1); each becomes max(1, floor(share x channels))")
    sampled: int = Field(2, ge=1, description="I: candidates drawn per group and step (Sec. 3.1)")
    cost_weight: float = Field(2.0, ge=0, description="lambda_cost of the FLOPs loss (Eq. 8)")
    tolerance: float = Field(0.05, ge=0, lt=1, description="t: no cost loss while the argmax "
                             "shape keeps between flops_target - t and flops_target")
    tau_max: float = Field(10.0, gt=0, description="Gumbel temperature at the first epoch")
    tau_min: float = Field(0.1, gt=0, description="Gumbel temperature reached at the end "
                           "(linear decay per epoch)")
    arch_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the width logits")
    arch_weight_decay: float = Field(1e-3, ge=0, description="Adam weight decay of the logits")
    force_target: bool = Field(True, description="when the final argmax shape misses the band "
                               "[target - t, target], step the least probable widths "
                               "down (or up) until it holds (counted as forced_steps)")

    @field_validator("width_choices")
    @classmethod
    def _shares(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0.0 < share <= 1.0 for share in value) or 1.0 not in value:
            raise ValueError("width_choices must be shares in (0, 1] including 1.0")
        return tuple(sorted(set(value)))


# -- the pieces of the method ------------------------------------------------------------------
def width_candidates(channels: int, shares: Sequence[float]) -> list[int]:
    """The distinct candidate widths of a group of ``channels`` channels, ascending."""
    return sorted({max(1, int(channels * share)) for share in shares})


def split_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the train split (indices), class by class (a seeded
    permutation of each class's indices, the first half to the weights' half): together they
    are the whole split, and each class is in both."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    first, second = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = (len(members) + 1) // 2
        first.append(members[:cut])
        second.append(members[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def channel_interpolate(x: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    """CWI (Eq. 2): ``x`` resized to ``width`` channels along ``dim`` by adaptive average
    pooling (channel ``i`` of the result averages input channels ``floor(i C / width)`` to
    ``ceil((i + 1) C / width)``), as the official ``ChannelWiseInterV2``."""
    channels = x.shape[dim]
    if channels == width:
        return x
    moved = x.movedim(dim, -1)
    flat = moved.reshape(-1, 1, channels)
    pooled = F.adaptive_avg_pool1d(flat, width)
    return pooled.reshape(*moved.shape[:-1], width).movedim(-1, dim)


def aggregate(x: torch.Tensor, widths: Sequence[int], weights: torch.Tensor, dim: int = 1
              ) -> torch.Tensor:
    """The feature map of a layer whose width is a mixture: ``sum_i weights[i] CWI(x[:c_i],
    c_max)``, zero beyond ``c_max = max(widths)``, in the full width of ``x`` (so every
    coupled layer and residual sum keeps its shape)."""
    dim = dim % x.dim()
    full, largest = x.shape[dim], max(widths)
    mixed = None
    for width, weight in zip(widths, weights):
        part = channel_interpolate(x.narrow(dim, 0, width), largest, dim) * weight
        mixed = part if mixed is None else mixed + part
    if largest == full:
        return mixed
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, full - largest]
    return F.pad(mixed, pad)


def gumbel_select(logits: torch.Tensor, tau: float, count: int,
                  generator: torch.Generator) -> tuple[list[int], torch.Tensor]:
    """Draw ``count`` distinct candidates from the Gumbel-softmax of ``logits`` (1-d) at
    temperature ``tau``; their weights are the softmax of the perturbed logits among the
    drawn ones (differentiable in ``logits``). Seeded by ``generator`` (CPU)."""
    count = min(count, logits.numel())
    gumbels = -torch.empty(logits.shape).exponential_(generator=generator).log()
    perturbed = (logits.log_softmax(0) + gumbels.to(logits.device, logits.dtype)) / tau
    probs = perturbed.detach().softmax(0).float().cpu()
    chosen = torch.multinomial(probs + 1e-7, count, replacement=False, generator=generator)
    index = chosen.to(logits.device)
    return chosen.tolist(), perturbed.gather(0, index).softmax(0)


def cost_loss(expected_ratio: torch.Tensor, current_ratio: float, target: float,
              tolerance: float) -> torch.Tensor:
    """Eq. 7: ``log E[F]`` when the argmax shape's FLOPs share ``current_ratio`` is above the
    target (pushes the expected FLOPs down), ``-log E[F]`` when it is below ``target -
    tolerance`` (pushes them up), zero (no gradient) inside the band."""
    if current_ratio > target:
        return expected_ratio.log()
    if current_ratio < target - tolerance:
        return -expected_ratio.log()
    return expected_ratio.sum() * 0.0


class SearchSpace:
    """The candidate widths of every group of a :class:`GroupSet` and the conv/linear FLOPs
    model of a shape (the same one :meth:`GroupSet.macs` counts, kept-first channels), as a
    differentiable function of each group's width."""

    def __init__(self, groups: GroupSet, shares: Sequence[float]) -> None:
        self.groups = groups
        self.candidates = [width_candidates(group.channels, shares) for group in groups.groups]
        names = list(groups.layers)
        index = {name: i for i, name in enumerate(names)}
        size = (len(names), len(groups.groups))
        self.in_share, self.out_share = torch.zeros(size), torch.zeros(size)
        for g, group in enumerate(groups.groups):
            for matrix, members in ((self.out_share, group.outputs),
                                    (self.in_share, group.inputs)):
                for name, counts in members:
                    if name in index:  # layer channels per root channel
                        matrix[index[name], g] += float(counts.sum()) / group.channels
        layers = [groups.layers[name] for name in names]
        self.dense_in = torch.tensor([float(cost.in_channels) for cost in layers])
        self.dense_out = torch.tensor([float(cost.out_channels) for cost in layers])
        self.per_pair = torch.tensor([cost.macs_per_pair for cost in layers])
        self.depthwise = torch.tensor([cost.depthwise for cost in layers])
        self.channels = torch.tensor([float(group.channels) for group in groups.groups])
        self.dense_macs = float(self.macs(self.channels))

    def macs(self, widths: torch.Tensor) -> torch.Tensor:
        """Conv/linear multiply-adds with group ``g`` kept at ``widths[g]`` channels (any real
        widths: the expected FLOPs use the expected widths)."""
        like = {"device": widths.device, "dtype": widths.dtype}
        removed = self.channels.to(**like) - widths
        inputs = self.dense_in.to(**like) - self.in_share.to(**like) @ removed
        outputs = self.dense_out.to(**like) - self.out_share.to(**like) @ removed
        inputs = torch.where(self.depthwise.to(widths.device), torch.ones_like(inputs), inputs)
        return (self.per_pair.to(**like) * inputs * outputs).sum()

    def expected_widths(self, probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([(p * torch.tensor(c, dtype=p.dtype, device=p.device)).sum()
                            for p, c in zip(probabilities, self.candidates)])

    def expected_ratio(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """E[F] / F_dense for the width distributions ``softmax(logits[g])`` (Eq. 5-6)."""
        widths = self.expected_widths([(a if a.dtype == torch.float64 else a.float())
                                       .softmax(0) for a in logits])
        return self.macs(widths) / self.dense_macs

    def ratio(self, choice: Sequence[int]) -> float:
        """F / F_dense of the shape taking candidate ``choice[g]`` of every group."""
        widths = torch.tensor([float(c[i]) for c, i in zip(self.candidates, choice)])
        return float(self.macs(widths)) / self.dense_macs

    def masks(self, choice: Sequence[int]) -> list[torch.Tensor]:
        """Removal masks (channels from the chosen width on) of the shape ``choice``."""
        return [torch.arange(group.channels) >= c[i]
                for group, c, i in zip(self.groups.groups, self.candidates, choice)]


def fit_band(space: SearchSpace, logits: Sequence[torch.Tensor], choice: list[int],
             target: float, tolerance: float) -> tuple[list[int], int]:
    """``choice`` moved into the band [target - tolerance, target], one candidate step at a
    time: down (while above the target) at the group whose next smaller width loses the
    least log-probability per FLOP saved, up (while below the band) where the next larger
    width loses the least per FLOP added without leaving the band. Returns the shape and the
    number of steps."""
    logp = [a.detach().float().log_softmax(0).cpu() for a in logits]
    choice, steps = list(choice), 0
    while space.ratio(choice) > target + 1e-12:
        now, best = space.ratio(choice), None
        for g, i in enumerate(choice):
            if i == 0:
                continue
            trial = choice[:g] + [i - 1] + choice[g + 1:]
            saved = now - space.ratio(trial)
            score = float(logp[g][i] - logp[g][i - 1]) / max(saved, 1e-12)
            if saved > 0 and (best is None or score < best[0]):
                best = (score, trial)
        if best is None:
            break
        choice, steps = best[1], steps + 1
    while space.ratio(choice) < target - tolerance - 1e-12:
        now, best = space.ratio(choice), None
        for g, i in enumerate(choice):
            if i + 1 >= len(space.candidates[g]):
                continue
            trial = choice[:g] + [i + 1] + choice[g + 1:]
            added = space.ratio(trial) - now
            if space.ratio(trial) > target + 1e-12 or added <= 0:
                continue
            score = float(logp[g][i] - logp[g][i + 1]) / added
            if best is None or score < best[0]:
                best = (score, trial)
        if best is None:
            break
        choice, steps = best[1], steps + 1
    return choice, steps


class _Logits(nn.Module):
    """The width logits, one vector per group (``method.arch.logits.<g>`` in checkpoints)."""

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        self.logits = nn.ParameterList(nn.Parameter(torch.randn(k) * 0.01) for k in sizes)


@register("compress", "tas")
class TAS(CompressMethod):
    """Width search with alternating weight and architecture updates; exports the argmax shape
    (trained afterwards with ``classify kd``)."""

    Params = TASParams
    needs_flops_target = True
    search_space = {"method_params.cost_weight": Choice((1.0, 2.0, 4.0)),
                    "method_params.arch_lr": Choice((1e-3, 1e-2))}

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        self.groups: GroupSet | None = None
        self.space: SearchSpace | None = None
        self.reference: Classifier | None = None
        self.image_size: int | None = None
        self.generator = torch.Generator().manual_seed(int(self.config.seed))
        self.tau = self.params.tau_max
        self.arch_loader: Any = None
        self._arch_batches: Any = None
        self.arch_optimizer: torch.optim.Optimizer | None = None
        self._arch_state: dict[str, Any] | None = None
        self._handles: list[Any] = []
        self._points: dict[nn.Module, tuple[int, int]] = {}  # module -> (group, channel dim)
        self._selection: list[tuple[list[int], torch.Tensor]] | None = None
        self._eval_choice: list[int] | None = None
        self._final_choice: list[int] | None = None
        self.forced_steps = 0
        self.removal_difference: float | None = None
        self._epoch_stats = {"arch_ce": 0.0, "cost": 0.0, "arch_steps": 0}
        self.halves: tuple[int, int] | None = None

    # -- checks before anything is written ----------------------------------------------------
    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        if config.train.ema_decay is not None:
            raise HundredError("compress/tas exports the searched shape of the trained weights; "
                               "leave train.ema_decay unset")
        if PRUNED_WIDTHS in config.model.options:
            raise HundredError(f"compress/tas searches the widths of the dense network: remove "
                               f"model.options.{PRUNED_WIDTHS}")
        self.reference = create(config.model.name, dataset.num_classes, head=config.model.head,
                                img_size=image_size, **config.model.options)
        self.groups = find_groups(self.reference, image_size, f"model {config.model.name}")
        self.space = SearchSpace(self.groups, self.params.width_choices)
        smallest = self.space.ratio([0] * len(self.space.candidates))
        target = float(config.compress.flops_target)
        if smallest > target:
            raise HundredError(f"the FLOPs target {target} is out of reach for compress/tas: "
                               f"the smallest candidate widths keep {smallest:.3f} of the "
                               "FLOPs (lower method_params.width_choices or raise the target)")
        self.image_size = image_size

    # -- the two halves of the train split ----------------------------------------------------
    def train_loader(self, ctx: Any, dataset: Dataset) -> Any:
        from hundred.engine.run import train_loader

        weights_half, arch_half = split_halves(dataset.arrays("train").labels, self.config.seed)
        self.halves = (len(weights_half), len(arch_half))
        self.arch_loader = train_loader(ctx, dataset, indices=arch_half, seed_offset=1)
        return train_loader(ctx, dataset, indices=weights_half)

    # -- the searchable network ---------------------------------------------------------------
    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if self.space is None:
            raise HundredError("compress/tas runs inside the compress scenario (prepare finds "
                               "the channel groups)")
        self.steps_per_epoch, self.epochs = ctx.steps_per_epoch, ctx.epochs
        if "arch" not in self.stateful:
            self.add_state("arch", _Logits([len(c) for c in self.space.candidates]))
            self.stateful["arch"].requires_grad_(True)  # trained by the method's own Adam
        if not self._handles:
            self._attach(model)

    def _attach(self, model: nn.Module) -> None:
        """Forward hooks on each group's mix points: its normalisation layers (each conv's
        batch norm), else the layers whose outputs it is."""
        modules = dict(model.named_modules())
        for g, group in enumerate(self.groups.groups):
            names = [rows.module for rows in group.rows
                     if isinstance(modules[rows.module], NORMS) and rows.attr == "weight"]
            if not names:
                names = [name for name, _ in group.outputs]
            for name in dict.fromkeys(names):
                module = modules[name]
                dim = 1 if isinstance(module, CHANNEL_FIRST) else -1
                self._points[module] = (g, dim)
                self._handles.append(module.register_forward_hook(self._mix))

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _mix(self, module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        g, dim = self._points[module]
        if self._selection is not None:  # a training forward: the drawn widths, mixed
            widths, weights = self._selection[g]
            return aggregate(output, widths, weights.to(output.dtype), dim)
        choice = self._eval_choice if self._final_choice is None else self._final_choice
        width = self.space.candidates[g][choice[g]]
        if width >= output.shape[dim]:
            return output
        keep = torch.arange(output.shape[dim], device=output.device) < width
        shape = [1] * output.dim()
        shape[dim] = -1
        return output * keep.view(shape).to(output.dtype)

    @property
    def logits(self) -> list[torch.Tensor]:
        return list(self.stateful["arch"].logits)

    def argmax_choice(self) -> list[int]:
        return [int(a.detach().argmax()) for a in self.logits]

    def _draw(self, detach: bool) -> list[tuple[list[int], torch.Tensor]]:
        selection = []
        for g, logits in enumerate(self.logits):
            chosen, weights = gumbel_select(logits.detach() if detach else logits, self.tau,
                                            self.params.sampled, self.generator)
            selection.append(([self.space.candidates[g][i] for i in chosen], weights))
        return selection

    # -- training -----------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        share = epoch / max(1, self.epochs - 1)
        self.tau = self.params.tau_max - (self.params.tau_max - self.params.tau_min) * share
        self.arch_loader.set_epoch(epoch)
        self._arch_batches = iter(self.arch_loader)
        self._eval_choice = self.argmax_choice()
        self._epoch_stats = {"arch_ce": 0.0, "cost": 0.0, "arch_steps": 0}

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The weights' step: CE of the network with widths drawn from the current
        distributions (held fixed)."""
        self._selection = self._draw(detach=True)
        try:
            logits = model(images)
        finally:
            self._selection = None
        return cross_entropy(logits, labels, self.config.train.label_smoothing)

    def _next_arch_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._arch_batches is None:
            self._arch_batches = iter(self.arch_loader)
        try:
            return next(self._arch_batches)
        except StopIteration:  # the architecture half ran out first: start it again
            self._arch_batches = iter(self.arch_loader)
            return next(self._arch_batches)

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.arch_optimizer is None:
            self.arch_optimizer = torch.optim.Adam(
                self.logits, lr=self.params.arch_lr, betas=(0.5, 0.999),
                weight_decay=self.params.arch_weight_decay)
            if self._arch_state is not None:
                self.arch_optimizer.load_state_dict(self._arch_state)
                self._arch_state = None
        return self.arch_optimizer

    def architecture_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 8 on a batch of the second half: CE with drawn widths (differentiable in the
        logits through the mixing weights) + lambda_cost x the cost loss; returns the loss,
        the CE and the cost term."""
        self._selection = self._draw(detach=False)
        try:
            logits = model(images)
        finally:
            self._selection = None
        ce = cross_entropy(logits, labels)
        expected = self.space.expected_ratio(self.logits)
        current = self.space.ratio(self.argmax_choice())
        target = float(self.config.compress.flops_target)
        cost = cost_loss(expected, current, target, self.params.tolerance)
        return ce + self.params.cost_weight * cost, ce.detach(), cost.detach()

    def after_optimizer_step(self, model: nn.Module) -> None:
        """The architecture's step, after the weights' one (Algorithm 1)."""
        images, labels = self._next_arch_batch()
        loss, ce, cost = self.architecture_loss(model, images, labels)
        parameters = self.logits
        grads = torch.autograd.grad(loss, parameters, allow_unused=True)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads)]
            for grad in grads:
                torch.distributed.all_reduce(grad)
                grad /= world
        for parameter, grad in zip(parameters, grads):
            parameter.grad = None if grad is None else grad.detach()
        self._optimizer().step()
        for parameter in parameters:
            parameter.grad = None
        self._eval_choice = self.argmax_choice()
        self._epoch_stats["arch_ce"] += float(ce)
        self._epoch_stats["cost"] += float(cost)
        self._epoch_stats["arch_steps"] += 1

    def epoch_log(self, epoch: int) -> dict[str, Any]:
        if self.space is None or "arch" not in self.stateful:
            return {}
        steps = max(1, self._epoch_stats["arch_steps"])
        with torch.no_grad():
            expected = float(self.space.expected_ratio(self.logits))
        return {"tau": self.tau, "arch_ce": self._epoch_stats["arch_ce"] / steps,
                "cost_loss": self._epoch_stats["cost"] / steps,
                "expected_flops_ratio": expected,
                "argmax_flops_ratio": self.space.ratio(self.argmax_choice())}

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(),
                "arch_optimizer": None if self.arch_optimizer is None
                else self.arch_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])
        self._arch_state = state.get("arch_optimizer")
        self.arch_optimizer = None

    # -- the searched network -----------------------------------------------------------------
    def reference_model(self, model: Classifier) -> nn.Module:
        return self.reference if self.reference is not None else model

    def compressed_model(self, model: Classifier) -> Classifier:
        """The argmax shape (moved into the FLOPs band when ``force_target``) cut from the
        trained weights: the first channels of every group."""
        choice = self.argmax_choice()
        target = float(self.config.compress.flops_target)
        if self.params.force_target:
            choice, self.forced_steps = fit_band(self.space, self.logits, choice, target,
                                                 self.params.tolerance)
        self._final_choice = choice
        was = model.training
        model.eval()
        size = self.image_size or 32
        probe = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
        probe = probe.to(next(model.parameters()).device)
        with torch.no_grad():
            masked = model(probe)
        self._detach()  # the search is over: the exported network is plain
        model.train(was)
        smaller = self.groups.remove(copy.deepcopy(model).eval(), self.space.masks(choice))
        with torch.no_grad():
            self.removal_difference = float((masked - smaller(probe)).abs().max())
        return smaller

    def kd_args(self, plan: dict[str, int]) -> list[str]:
        """The arguments of ``hundred run classify kd`` that train the searched shape from
        scratch with KD from the dense network (Sec. 3.3), on this run's data."""
        config = self.config
        teacher = config.compress.init or "DENSE_RUN_DIR"
        options = {k: v for k, v in config.model.options.items() if k != PRUNED_WIDTHS}
        options[PRUNED_WIDTHS] = plan
        args = ["run", "classify", "kd", "--teacher", str(teacher),
                "--data", str(config.data.source), "--model", config.model.name,
                "--set", f"model.options={json.dumps(options)}"]
        if config.data.options:
            args += ["--set", f"data.options={json.dumps(config.data.options)}"]
        return args

    def extra_measurements(self, model: Classifier, loader: Any) -> dict[str, Any]:
        from hundred.models.widths import structure_of

        with torch.no_grad():
            dense = structure_of(self.reference) if self.reference is not None else {}
        plan = {name: width for name, width in structure_of(model).items()
                if dense.get(name) != width}
        choice = self._final_choice or self.argmax_choice()
        args = self.kd_args(plan)
        with torch.no_grad():
            probabilities = [[round(float(p), 4) for p in a.float().softmax(0)]
                             for a in self.logits]
            expected = float(self.space.expected_ratio(self.logits))
        return {"compression": {
            "method": "tas", "channel_groups": len(self.groups.groups),
            "rejected_groups": self.groups.rejected,
            "candidates": {group.root: c for group, c in
                           zip(self.groups.groups, self.space.candidates)},
            "probabilities": {group.root: p for group, p in
                              zip(self.groups.groups, probabilities)},
            "searched_widths": {group.root: c[i] for group, c, i in
                                zip(self.groups.groups, self.space.candidates, choice)},
            "argmax_flops_ratio": self.space.ratio(self.argmax_choice()),
            "planned_flops_ratio": self.space.ratio(choice),
            "expected_flops_ratio": expected, "forced_steps": self.forced_steps,
            "tolerance": self.params.tolerance, "tau_final": self.tau,
            "train_halves": list(self.halves) if self.halves else None,
            "removal_max_abs_difference": self.removal_difference,
            "plan": plan, "kd_args": args,
            "kd_command": "hundred " + " ".join(shlex.quote(a) for a in args),
            "depth_searched": False}}

