"""What a dataset-condensation method plugs into: :class:`CondenseMethod`.

The images are the parameters: the scenario (:mod:`hundred.tracks.condense.scenario`) owns
the loop — initialise the synthetic set, then for each iteration ask the method for the
gradients of the set's parameters (:meth:`CondenseMethod.compute_gradients`), take an
optimiser step, checkpoint — and evaluates the result with fresh networks. A matching method
defines :meth:`CondenseMethod.matching_loss` (one scalar whose gradient the default
``compute_gradients`` backpropagates); a method whose gradient is not the backward pass of one
graph (TESLA's constant-memory reverse pass) overrides ``compute_gradients`` itself.
Baselines that only *select* real images (random, herding, the full data) set
``optimises = False`` and may override :meth:`CondenseMethod.select`.

FYI (Son et al., ECCV 2024) is a switch on every matching method, ``method_params.fyi``:
:meth:`CondenseMethod.matched` doubles each synthetic class batch with its horizontal flip
before it is matched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from torch import nn

from hundred.config import RunConfig
from hundred.data import Dataset
from hundred.engine.method import Images, Method
from hundred.errors import HundredError
from hundred.models import Classifier, create
from hundred.tracks.condense.synthetic import RealImages, SyntheticSet


class MatchingParams(BaseModel):
    """Parameters every matching method has."""

    model_config = ConfigDict(extra="forbid")

    fyi: bool = Field(False, description="FYI (Son et al., 'FYI: Flip Your Images for Dataset "
                      "Distillation', ECCV 2024): match with every synthetic image and its "
                      "horizontal flip (each class batch doubled)")


@dataclass
class CondenseContext:
    """What a method may use: the run's config, device and data, the real training images on
    the device, a factory of freshly initialised networks, and DSA (None when off)."""

    config: RunConfig
    device: torch.device
    dataset: Dataset
    real: RealImages
    image_size: int
    run_dir: Path
    console: Console
    dsa: Any | None = None  # hundred.tracks.condense.dsa.DSA

    @property
    def num_classes(self) -> int:
        return self.real.num_classes

    def new_network(self, name: str | None = None) -> Classifier:
        """A freshly initialised network (``model.name`` by default) on the device, drawn with
        the global torch RNG (so resume redraws the same one)."""
        model = create(name or self.config.model.name, self.num_classes,
                       img_size=self.image_size, **self.config.model.options)
        return model.to(self.device)

    def siamese(self, real: torch.Tensor, synthetic: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """DSA on a real and a synthetic batch with the same sampled transformations (identity
        when DSA is off)."""
        if self.dsa is None:
            return real, synthetic
        return self.dsa.siamese(real, synthetic)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """DSA on one batch (identity when DSA is off)."""
        return images if self.dsa is None else self.dsa(images)


class CondenseMethod(Method):
    """Base class of the condense track's methods.

    ``optimises``: whether the set is learned (False: a baseline that only selects real
    images). ``full_data``: evaluate the whole real training set instead of a synthetic one
    (the upper-bound baseline). ``default_image_lr``: the paper's pixel learning rate (``condense.image_lr``
    overrides it). ``uses_dsa``: whether ``condense.dsa`` applies while matching.
    """

    Params: ClassVar[type[BaseModel]] = MatchingParams
    optimises: ClassVar[bool] = True
    full_data: ClassVar[bool] = False
    default_image_lr: ClassVar[float] = 1.0
    uses_dsa: ClassVar[bool] = True

    def loss(self, model: nn.Module, images: Images, labels: torch.Tensor) -> torch.Tensor:
        raise HundredError(f"{self.track}/{self.name} has no per-batch training loss: the "
                           f"condense scenario calls compute_gradients")

    # -- the hooks the scenario calls -------------------------------------------------------
    def prepare(self, ctx: CondenseContext) -> None:
        """Once, before the run directory is created (``ctx.run_dir`` is not set yet): load
        and check what the method needs from outside (e.g. expert trajectories), so that bad
        input writes nothing."""

    def select(self, ctx: CondenseContext) -> torch.Tensor | None:
        """Indices (into the training split) of the real images the set starts from, ``ipc``
        per class in class order; None for ``condense.init`` (random real images or noise)."""
        return None

    def setup_set(self, synthetic: SyntheticSet, ctx: CondenseContext) -> None:
        """Once, after the set is initialised and before the optimiser is built: add what the
        method learns beside the pixels (``synthetic.add_soft_labels``, ``add_learned_lr``)
        and its own modules (``add_trainable``/``add_state``: checkpointed)."""

    def optimizer_groups(self, synthetic: SyntheticSet, image_lr: float, momentum: float
                         ) -> list[dict[str, Any]]:
        """SGD parameter groups: the pixels at ``image_lr`` (default). Methods that learn a
        learning rate or soft labels add their groups."""
        return [{"params": [synthetic.images], "lr": image_lr, "momentum": momentum}]

    def compute_gradients(self, synthetic: SyntheticSet, ctx: CondenseContext
                          ) -> dict[str, float]:
        """Fill ``.grad`` of the set's (and the method's) parameters for one iteration;
        returns values to log (``loss`` at least). Default: backpropagate
        :meth:`matching_loss`."""
        loss = self.matching_loss(synthetic, ctx)
        loss.backward()
        return {"loss": float(loss.detach())}

    def matching_loss(self, synthetic: SyntheticSet, ctx: CondenseContext) -> torch.Tensor:
        """The matching objective of one iteration (matching methods define it)."""
        raise NotImplementedError(f"{self.track}/{self.name} defines no matching loss")

    def after_step(self, synthetic: SyntheticSet) -> None:
        """After every optimiser step (e.g. keep a learned lr positive)."""

    # -- shared pieces ----------------------------------------------------------------------
    def matched(self, images: torch.Tensor) -> torch.Tensor:
        """The synthetic images a matching step uses: with FYI, each one and its horizontal
        flip (Son et al., ECCV 2024, Sec. 4); else the images themselves."""
        if getattr(self.params, "fyi", False):
            return torch.cat([images, images.flip(-1)])
        return images

    def image_lr(self, config: RunConfig) -> float:
        """``condense.image_lr``, else the method's paper value."""
        value = config.condense.image_lr
        return self.default_image_lr if value is None else float(value)


