"""The hook set through which a method plugs into the trainer. Keep it minimal.

A method subclasses :class:`Method`, declares its hyperparameters as a pydantic model
(``Params``, validated before training starts), may declare which of them ``hundred tune``
searches (``search_space``, added to the shared grid of :mod:`hundred.protocol.space`), and
overrides only the hooks it needs:

* ``loss(model, images, labels)`` — the training loss for one batch (required);
* ``on_epoch_start(epoch)`` / ``on_epoch_end(epoch)``;
* ``after_optimizer_step(model)`` — e.g. weight clipping;
* ``state_dict()`` / ``load_state_dict()`` — anything beyond the model that resume needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from hundred.config import RunConfig
from hundred.errors import HundredError
from hundred.protocol.space import Dimension


class NoParams(BaseModel):
    """A method without hyperparameters of its own."""

    model_config = ConfigDict(extra="forbid")


class Method(ABC):
    """Base class of a method plugin. ``track`` and ``name`` are set by the registry.

    ``self.params`` holds the validated method hyperparameters, ``self.config`` the run's
    configuration (shared settings such as ``train.label_smoothing``). ``search_space``
    holds the method's own tuning entries (config path -> :class:`~hundred.protocol.space.Choice`
    or a range, e.g. ``{"method_params.temperature": Choice((0.5, 1.0, 2.0))}``); tuning
    adds them to the shared grid (epochs, lr, schedule, ...), as Cha & Cho (TMLR 2025) do.
    """

    track: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    search_space: ClassVar[Mapping[str, Dimension]] = {}

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        self.config = config if config is not None else RunConfig()
        try:
            self.params = self.Params.model_validate(params or {})
        except ValidationError as error:
            problems = "; ".join(
                f"method_params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise HundredError(f"{self.track}/{self.name}: {problems}") from None

    @abstractmethod
    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (every method defines it)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first batch of ``epoch`` (0-based)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after the last optimiser step of ``epoch``, before evaluation."""

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Called after every optimiser step (e.g. to clip or project weights)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
