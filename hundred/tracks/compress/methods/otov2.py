"""OTOv2: train once with the DHSPG optimiser, which drives whole zero-invariant groups to
exactly zero, then remove those groups physically — no fine-tuning, identical outputs.

Chen, Liang, Ding, Zhu, Zharkov, "OTOv2: Automatic, Generic, User-Friendly" (ICLR 2023):

* zero-invariant groups (Sec. 3.1): every output channel of a Torch-Pruning group
  (:mod:`hundred.tracks.compress.groups`: the filter rows and bias producing it and the
  normalisation scale and shift on it), found from the dependency graph and each group
  checked to be removable without changing the outputs;
* DHSPG (Sec. 3.2, Algorithm 2): at the partition step every group is scored,
  ``s = 0.5 * normalize(cos(-x_g, -grad_g)) + 0.5 * normalize(1 / avg|x_g|)`` (normalize: L2
  over all groups; ``avg|x_g| = ||x_g|| / #entries``), and the best-scored groups form G_p,
  the groups to remove; on G_p every step adds the group-lasso step
  ``x_g <- x_g - a * grad_g - a * lambda_g * x_g / ||x_g||`` with the adaptive
  ``lambda_g = clip(amplify * (-<x_g, grad_g> / ||x_g||), lambda, lambda * hat_coeff)`` where
  ``<x_g, grad_g> < 0`` (the midpoint of its bounds when the clip reaches the upper bound
  ``-||grad_g||^2 ||x_g|| / <x_g, grad_g>``), ``lambda`` elsewhere (Eq. 4-6), then the
  half-space projection (Eq. 7) sets ``x_g = 0`` when ``<x_hat_g, x_g> < eps * ||x_g||^2``;
  zero groups stay zero, and penalty and projection stop once the target is reached;
* construct_subnet (Sec. 3.3): the zero groups are removed (Torch-Pruning), which leaves the
  outputs unchanged; the smaller network is exported as it is.

``grad_g`` is the optimiser's own search direction (SGD: gradient + weight decay with
momentum; AdamW: its adaptive step), as the official DHSPG uses: DHSPG runs as a hook after
the engine's optimiser step, which recovers that direction from the step it made
(``(x_before - x_after) / lr``) and adds the group-lasso term and the projection.

The budget is ``compress.flops_target`` instead of the paper's group sparsity: G_p is the
best-scored groups taken in score order until the network without them keeps at most
``flops_target - tolerance`` of the dense FLOPs (the paper's ``K = (target + tolerance) x
#groups``, in FLOPs), and the target is reached when the zero groups' removal brings the
network to ``flops_target``. A layer always keeps one channel. When training ends first, the
rest of G_p is zeroed in score order until the target holds (``forced_zero_groups`` in the
summary; 0 when DHSPG got there itself).
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.losses import cross_entropy
from hundred.engine.method import SetupContext
from hundred.engine.trainer import lr_factor
from hundred.errors import HundredError
from hundred.models import Classifier, create
from hundred.registry import register
from hundred.space import Choice
from hundred.tracks.compress.groups import GroupSet, find_groups
from hundred.tracks.compress.method import CompressMethod

# the official defaults per optimiser variant (lambda, amplify, hat coefficient)
DEFAULTS = {"sgd": (1e-3, 2.0, 10.0), "adamw": (1e-2, 20.0, 1e3)}
SAFE = 1e-8


class OTOv2Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lmbda: Optional[float] = Field(None, gt=0, description="the group-lasso weight lambda; None "
                                   "= the paper's default for optim.name (sgd 1e-3, adamw 1e-2)")
    lmbda_amplify: Optional[float] = Field(None, gt=0, description="amplify of the adaptive "
                                           "lambda (None: sgd 2, adamw 20)")
    hat_lmbda_coeff: Optional[float] = Field(None, ge=1, description="upper clip of lambda as "
                                             "a multiple of lambda (None: sgd 10, adamw 1e3)")
    epsilon: float = Field(0.95, ge=0, lt=1, description="half-space projection threshold eps "
                           "(the official tutorials' 0.95; the constructor's default is 0)")
    tolerance: float = Field(0.05, ge=0, lt=1, description="G_p is chosen to reach "
                             "flops_target - tolerance (the paper's group-sparsity tolerance)")
    partition_epochs: float = Field(0.0, ge=0, description="epochs of plain training before "
                                    "the partition into G_p / G_np (the official "
                                    "start_pruning_steps, default 0; its tutorials use about a "
                                    "sixth of training)")
    force_at_end: bool = Field(True, description="when training ends before DHSPG reaches the "
                               "target, zero the rest of G_p in score order so the export "
                               "meets it (counted as forced_zero_groups)")


class _Channels:
    """All zero-invariant groups of a :class:`GroupSet` as one vector space: the rows of every
    parameter they own, each mapped to a global channel index."""

    def __init__(self, groups: GroupSet, model: nn.Module) -> None:
        self.groups = groups
        self.offsets, total = [], 0
        for group in groups.groups:
            self.offsets.append(total)
            total += group.channels
        self.count = total
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for offset, group in zip(self.offsets, groups.groups):
            for parameter, layer_idx, root_idx in groups.tensors(model, group):
                self.parts.append((parameter, layer_idx, root_idx + offset))
        device = self.parts[0][0].device
        sizes = torch.zeros(self.count, device=device)
        for parameter, layer_idx, index in self.parts:
            sizes.index_add_(0, index, torch.full_like(index, parameter[0].numel(),
                                                       dtype=torch.float32))
        self.sizes = sizes

    def rows(self) -> list[torch.Tensor]:
        """Copies of the current rows, flattened to (rows, entries)."""
        return [parameter.detach()[layer_idx].reshape(len(layer_idx), -1).float().clone()
                for parameter, layer_idx, _ in self.parts]

    def dot(self, left: list[torch.Tensor], right: list[torch.Tensor]) -> torch.Tensor:
        """Channel-wise inner products of two row sets."""
        result = torch.zeros(self.count, device=self.sizes.device)
        for (_, _, index), a, b in zip(self.parts, left, right):
            result.index_add_(0, index, (a * b).sum(1))
        return result

    @torch.no_grad()
    def write(self, rows: list[torch.Tensor]) -> None:
        for (parameter, layer_idx, _), values in zip(self.parts, rows):
            parameter[layer_idx] = values.reshape(parameter[layer_idx].shape).to(parameter.dtype)

    def masks(self, channels: torch.Tensor) -> list[torch.Tensor]:
        """A global bool vector as one mask per group (on the CPU)."""
        channels = channels.cpu()
        return [channels[offset:offset + group.channels]
                for offset, group in zip(self.offsets, self.groups.groups)]

    def locate(self, channel: int) -> tuple[int, int]:
        """(group, channel within it) of a global channel index."""
        for index in range(len(self.offsets) - 1, -1, -1):
            if channel >= self.offsets[index]:
                return index, channel - self.offsets[index]
        raise IndexError(channel)


@register("compress", "otov2")
class OTOv2(CompressMethod):
    """Cross-entropy training with DHSPG on the zero-invariant groups; the zero groups are
    removed at the end (no fine-tuning)."""

    Params = OTOv2Params
    needs_flops_target = True
    search_space = {"method_params.lmbda": Choice((1e-4, 1e-3, 1e-2)),
                    "method_params.partition_epochs": Choice((0.0, 1.0))}

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        variant = self.config.optim.name
        lmbda, amplify, hat = DEFAULTS.get(variant, DEFAULTS["sgd"])
        self.lmbda = self.params.lmbda if self.params.lmbda is not None else lmbda
        self.amplify = (self.params.lmbda_amplify if self.params.lmbda_amplify is not None
                        else amplify)
        self.hat = (self.params.hat_lmbda_coeff if self.params.hat_lmbda_coeff is not None
                    else hat)
        self.groups: GroupSet | None = None
        self.channels: _Channels | None = None
        self.penalized: torch.Tensor | None = None  # G_p, a global bool vector
        self.scores: torch.Tensor | None = None
        self.reached_step: int | None = None
        self.step = 0
        self.previous: list[torch.Tensor] | None = None
        self.forced = 0
        self.removal_difference: float | None = None
        self._zero_count = -1
        self._zero_flops = 1.0

    # -- checks before anything is written ----------------------------------------------------
    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        if config.train.ema_decay is not None:
            raise HundredError("compress/otov2 removes groups that are exactly zero: an EMA of "
                               "the weights never is; leave train.ema_decay unset")
        model = create(config.model.name, dataset.num_classes, head=config.model.head,
                       img_size=image_size, **config.model.options)
        self.groups = find_groups(model, image_size, f"model {config.model.name}")
        self.groups.uniform(float(config.compress.flops_target))  # out of reach: an error now
        self.image_size = image_size

    # -- DHSPG ----------------------------------------------------------------------------------
    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if self.groups is None:  # a method used outside the scenario
            self.groups = find_groups(model, None)
        self.steps_per_epoch, self.epochs = ctx.steps_per_epoch, ctx.epochs
        self.channels = _Channels(self.groups, model)
        self.partition_step = int(round(self.params.partition_epochs * ctx.steps_per_epoch))
        self.dense_macs = self.groups.macs()

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(images), labels, self.config.train.label_smoothing)

    def on_epoch_start(self, epoch: int) -> None:
        self.step = epoch * self.steps_per_epoch
        self.previous = self.channels.rows()  # x before the next step (also after a resume)

    def _lr(self) -> float:
        return self.config.optim.lr * lr_factor(self.step, self.steps_per_epoch, self.epochs,
                                                self.config.schedule)

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module) -> None:
        channels = self.channels
        before = self.previous if self.previous is not None else channels.rows()
        after = channels.rows()
        lr = max(self._lr(), SAFE)
        grads = [(b - a) / lr for b, a in zip(before, after)]
        norms = channels.dot(before, before).sqrt()
        if self.penalized is None and self.step >= self.partition_step:
            self._partition(before, grads, norms)
        updated = after
        if self.penalized is not None and self.reached_step is None:
            updated = self._penalize(before, after, grads, norms, lr)
        zero = norms == 0  # zero groups stay zero
        updated = [rows * (~zero[index]).unsqueeze(1) for rows, (_, _, index)
                   in zip(updated, channels.parts)]
        channels.write(updated)
        self.previous = updated
        self.step += 1
        if self.penalized is not None and self.reached_step is None and self._reached():
            self.reached_step = self.step

    def _partition(self, x: list[torch.Tensor], grads: list[torch.Tensor],
                   norms: torch.Tensor) -> None:
        """Score every group and take G_p in score order until the FLOPs target (less the
        tolerance) holds without them."""
        channels = self.channels
        grad_norms = channels.dot(grads, grads).sqrt()
        cosine = channels.dot(x, grads) / (norms * grad_norms).clamp_min(SAFE)  # cos(-x,-g)
        average = norms / channels.sizes
        scores = 0.5 * F.normalize(cosine, dim=0) + 0.5 * F.normalize(1.0 / (average + 1e-6),
                                                                    dim=0)
        self.scores = scores
        self.penalized = self._select(scores, self.config.compress.flops_target
                                      - self.params.tolerance)

    def _select(self, scores: torch.Tensor, share: float) -> torch.Tensor:
        channels = self.channels
        order = torch.argsort(scores.cpu(), descending=True, stable=True).tolist()
        chosen = self.groups.greedy((channels.locate(c) for c in order),
                                    max(share, 0.0) * self.dense_macs)
        selected = torch.zeros(channels.count, dtype=torch.bool, device=scores.device)
        for index, channel in chosen:
            selected[channels.offsets[index] + channel] = True
        return selected

    def _penalize(self, x: list[torch.Tensor], after: list[torch.Tensor],
                  grads: list[torch.Tensor], norms: torch.Tensor, lr: float
                  ) -> list[torch.Tensor]:
        """The group-lasso step with the adaptive lambda, then the half-space projection, on
        the nonzero groups of G_p."""
        channels = self.channels
        inner = channels.dot(x, grads)
        grad_norms = channels.dot(grads, grads).sqrt()
        active = self.penalized & (norms > 0)
        lambdas = torch.full_like(norms, self.lmbda)
        adjust = active & (inner < 0)
        safe_norms = norms.clamp_min(SAFE)
        lower = -inner / safe_norms
        upper = -(grad_norms ** 2) * norms / inner.clamp_max(-SAFE)
        adjusted = torch.clamp(self.amplify * lower, min=self.lmbda, max=self.lmbda * self.hat)
        adjusted = torch.where(adjusted >= upper, (upper + lower) / 2, adjusted)
        lambdas = torch.where(adjust, adjusted, lambdas)
        step = torch.where(active, lr * lambdas / (norms + SAFE), torch.zeros_like(norms))
        hat = [rows - step[index].unsqueeze(1) * previous for rows, previous, (_, _, index)
               in zip(after, x, channels.parts)]
        projected = active & (channels.dot(hat, x) < self.params.epsilon * norms ** 2)
        return [rows * (~projected[index]).unsqueeze(1) for rows, (_, _, index)
                in zip(hat, channels.parts)]

    def _reached(self) -> bool:
        zero = self.channels.dot(self.previous, self.previous) == 0
        count = int(zero.sum())
        if count != self._zero_count:
            self._zero_count = count
            self._zero_flops = self.groups.macs(self.channels.masks(zero)) / self.dense_macs
        return self._zero_flops <= self.config.compress.flops_target + 1e-9

    def epoch_log(self, epoch: int) -> dict[str, Any]:
        if self.channels is None or self.previous is None:
            return {}
        zero = self.channels.dot(self.previous, self.previous) == 0
        return {"zero_groups": int(zero.sum()),
                "penalized_groups": None if self.penalized is None else int(self.penalized.sum()),
                "planned_flops_ratio": self.groups.macs(self.channels.masks(zero))
                / self.dense_macs}

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"penalized": None if self.penalized is None else self.penalized.cpu(),
                "scores": None if self.scores is None else self.scores.cpu(),
                "reached_step": self.reached_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.channels.sizes.device if self.channels is not None else None
        self.penalized = None if state.get("penalized") is None else \
            state["penalized"].to(device)
        self.scores = None if state.get("scores") is None else state["scores"].to(device)
        self.reached_step = state.get("reached_step")

    # -- the smaller network ------------------------------------------------------------------
    def compressed_model(self, model: Classifier) -> Classifier:
        """The trained model with its zero groups removed (and, when training ended before
        the target, the rest of G_p zeroed first: ``force_at_end``)."""
        groups = self.groups
        work = copy.deepcopy(model).eval()
        masks = groups.zero_masks(work)
        target = self.config.compress.flops_target * groups.macs()
        if groups.macs(masks) > target * (1 + 1e-9) and self.params.force_at_end:
            scores = self.scores
            if scores is None:  # never partitioned: the magnitude term alone
                norms = torch.cat(groups.norms(work)).cpu()
                sizes = self.channels.sizes.cpu() if self.channels is not None else 1.0
                scores = F.normalize(1.0 / (norms / sizes + 1e-6), dim=0)
            scores = scores.cpu().clone()
            if self.penalized is not None:  # G_p first, in score order
                scores = scores + 10.0 * self.penalized.cpu().float()
            channels = self.channels or _Channels(groups, work)
            order = torch.argsort(scores, descending=True, stable=True).tolist()
            extra = groups.greedy((channels.locate(c) for c in order), target, already=masks)
            for index, channel in extra:
                masks[index][channel] = True
            self.forced = len(extra)
            groups.zero(work, masks)
        smaller = groups.remove(work, masks).eval()
        probe = torch.randn(4, 3, groups.image_size or 32, groups.image_size or 32,
                            device=next(work.parameters()).device)
        with torch.no_grad():
            self.removal_difference = float((work(probe) - smaller(probe)).abs().max())
        self._final_masks = masks
        return smaller

    def extra_measurements(self, model: Classifier, loader: Any) -> dict[str, Any]:
        groups = self.groups
        masks = getattr(self, "_final_masks", None)
        zero = sum(int(mask.sum()) for mask in masks) if masks is not None else None
        return {"compression": {
            "method": "otov2", "zero_invariant_groups": groups.num_channels,
            "channel_groups": len(groups.groups), "rejected_groups": groups.rejected,
            "penalized_groups": None if self.penalized is None else int(self.penalized.sum()),
            "removed_groups": zero,
            "group_sparsity": None if zero is None else zero / groups.num_channels,
            "forced_zero_groups": self.forced,
            "target_reached_at_step": self.reached_step,
            "planned_flops_ratio": None if masks is None else groups.macs(masks) / groups.macs(),
            "removal_max_abs_difference": self.removal_difference,
            "lambda": self.lmbda, "lambda_amplify": self.amplify, "hat_lambda_coeff": self.hat}}
