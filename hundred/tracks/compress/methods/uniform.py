"""The uniform baseline of structured pruning: every prunable layer thinned by one factor,
chosen so that the network keeps about ``compress.flops_target`` of the dense FLOPs, and
trained from scratch with plain cross-entropy — the comparison OTOv2 (Chen et al., ICLR 2023)
and TAS (Dong & Yang, "Network Pruning via Transformable Architecture Search", NeurIPS 2019,
Sec. 4: "uniformly pruned" networks at equal FLOPs) make.

The factor ``r`` is the largest one for which keeping ``max(1, round(r x channels))`` of every
channel group (:mod:`hundred.tracks.compress.groups`: Torch-Pruning's groups, the ones it
cannot remove correctly left dense, e.g. the residual stream of option-A ResNets) gives at most
``flops_target`` of the dense conv/linear multiply-adds. The thin network is cut from the
randomly initialised dense one before training starts (its weights keep the dense
initialisation's scale), or from the ``--init`` run's weights when one is given.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.losses import cross_entropy
from hundred.engine.method import SetupContext
from hundred.errors import HundredError
from hundred.models import Classifier, create
from hundred.registry import register
from hundred.tracks.compress.groups import GroupSet, find_groups
from hundred.tracks.compress.method import CompressMethod


@register("compress", "uniform")
class Uniform(CompressMethod):
    """Cross-entropy training of the uniformly thinned network."""

    needs_flops_target = True

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        self.groups: GroupSet | None = None
        self.masks: list[torch.Tensor] | None = None
        self.reference: Classifier | None = None

    def prepare(self, config: RunConfig, dataset: Dataset, image_size: int) -> None:
        if config.train.ema_decay is not None:
            raise HundredError("compress/uniform thins the model after the EMA copy is made; "
                               "leave train.ema_decay unset")
        self.reference = create(config.model.name, dataset.num_classes, head=config.model.head,
                                img_size=image_size, **config.model.options)
        self.groups = find_groups(self.reference, image_size, f"model {config.model.name}")
        self.masks = self.groups.uniform(float(config.compress.flops_target))

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if self.masks is None:
            raise HundredError("compress/uniform runs inside the compress scenario (prepare "
                               "chooses the widths)")
        if getattr(self, "_thinned", False):
            return
        self.groups.remove(model, self.masks, in_place=True)
        self._thinned = True

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(images), labels, self.config.train.label_smoothing)

    def reference_model(self, model: Classifier) -> nn.Module:
        return self.reference if self.reference is not None else model

    def extra_measurements(self, model: Classifier, loader: Any) -> dict[str, Any]:
        groups = self.groups
        kept = [int((~mask).sum()) for mask in self.masks]
        return {"compression": {
            "method": "uniform", "channel_groups": len(groups.groups),
            "rejected_groups": groups.rejected,
            "keep_ratio": sum(kept) / groups.num_channels,
            "planned_flops_ratio": groups.macs(self.masks) / groups.macs()}}
