"""The hook set through which a method plugs into the trainer. Keep it minimal.

A method subclasses :class:`Method` (or its track's base class), declares its
hyperparameters as a pydantic model (``Params``, validated before training starts), may
declare which of them ``hundred tune`` searches (``search_space``, added to the shared grid
of :mod:`hundred.protocol.space`) and how many augmented views of each image it trains on
(``views``), and overrides only the hooks it needs:

* ``setup(model, ctx)`` — once before training: build the method's own modules (a
  projector, an auxiliary head, a teacher, masks) with :meth:`Method.add_trainable` (they
  join the optimiser and the checkpoint), :meth:`Method.add_state` (the checkpoint only: a
  momentum encoder, a queue of keys, which the method updates itself) or
  :meth:`Method.add_frozen` (neither);
* ``loss(model, images, labels)`` — the training loss for one batch (required);
* ``on_epoch_start(epoch)`` / ``on_epoch_end(epoch)``;
* ``after_optimizer_step(model)`` — e.g. weight clipping;
* ``epoch_log(epoch)`` — values of the method's own (JSON-able: numbers, lists, mappings)
  that the trainer adds to the epoch's record in ``metrics.jsonl`` (e.g. histograms of
  contrastive scores, which a track's report may draw: ``ReportSpec.histograms``);
* ``state_dict()`` / ``load_state_dict()`` — anything beyond the modules that resume needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence, Union

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from hundred.config import RunConfig, build_config
from hundred.errors import HundredError
from hundred.space import Dimension

# What ``loss`` receives as images: one batch, or a list of views of it (``Method.views`` > 1).
Images = Union[torch.Tensor, Sequence[torch.Tensor]]


class NoParams(BaseModel):
    """A method without hyperparameters of its own."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class SetupContext:
    """What :meth:`Method.setup` may need: the run's config, the device the model trains on,
    and the length of the training phase (steps per epoch, epochs)."""

    config: RunConfig
    device: torch.device
    steps_per_epoch: int
    epochs: int


class Method(ABC):
    """Base class of a method plugin. ``track`` and ``name`` are set by the registry.

    ``self.params`` holds the validated method hyperparameters, ``self.config`` the run's
    configuration (shared settings such as ``train.label_smoothing``). ``search_space``
    holds the method's own tuning entries (config path -> :class:`~hundred.space.Choice`
    or a range, e.g. ``{"method_params.temperature": Choice((0.5, 1.0, 2.0))}``); tuning
    adds them to the shared grid (epochs, lr, schedule, ...), as Cha & Cho (TMLR 2025) do.
    A method that does not train (``shared_grid = False``: e.g. test-time adaptation of a
    finished model) is tuned over its own entries only, since the shared training settings
    would not change its result. ``views`` is the number of independently augmented views of each image that ``loss``
    receives (a list of tensors when above 1, as contrastive methods need).

    ``self.trainable`` holds the method's own trainable modules: the trainer moves them to
    the device, optimises them with the model, averages their gradients under DDP, and saves
    and restores them in every checkpoint (``method.<name>.*`` keys). ``self.frozen`` holds
    modules that are used but never trained (a teacher): on the device, in eval mode, without
    gradients, in neither the optimiser nor the checkpoint. ``self.stateful`` holds modules
    whose weights and buffers the method updates itself, without gradients (a momentum
    encoder, a queue of negatives): on the device, in the model's train/eval mode, saved and
    restored with the trainable ones (``method.<name>.*``), in neither the optimiser nor DDP's
    gradient averaging.
    """

    track: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    search_space: ClassVar[Mapping[str, Dimension]] = {}
    shared_grid: ClassVar[bool] = True
    views: ClassVar[int] = 1

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        if config is None:  # a method made outside a run: its track's default config
            config = (build_config(overrides=[f"track={self.track}", f"method={self.name}"])
                      if self.track else RunConfig())
        self.config = config
        try:
            self.params = self.Params.model_validate(params or {})
        except ValidationError as error:
            problems = "; ".join(
                f"method_params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise HundredError(f"{self.track}/{self.name}: {problems}") from None
        self.trainable = nn.ModuleDict()
        self.frozen = nn.ModuleDict()
        self.stateful = nn.ModuleDict()

    def add_trainable(self, name: str, module: nn.Module) -> nn.Module:
        """Register ``module`` (e.g. a projector) to be trained and checkpointed with the model."""
        self._check_unique(name, self.stateful, "state")
        self.trainable[name] = module
        return module

    def add_state(self, name: str, module: nn.Module) -> nn.Module:
        """Register ``module`` (e.g. a momentum encoder, a queue buffer) as state the method
        updates itself: checkpointed and restored on resume like a trainable module, but
        without gradients (``requires_grad`` off) and kept out of the optimiser."""
        self._check_unique(name, self.trainable, "trainable")
        self.stateful[name] = module.requires_grad_(False)
        return module

    def checkpointed(self) -> nn.ModuleDict:
        """The modules a checkpoint holds under ``method.<name>.*``: trainable and stateful
        (a view over the same module objects, so loading into it restores them)."""
        return nn.ModuleDict({**self.trainable, **self.stateful})

    @staticmethod
    def _check_unique(name: str, other: nn.ModuleDict, kind: str) -> None:
        """Trainable and stateful modules share the ``method.<name>.*`` checkpoint keys."""
        if name in other:
            raise HundredError(f"method module {name!r} is already registered as {kind}")

    def add_frozen(self, name: str, module: nn.Module) -> nn.Module:
        """Register ``module`` (e.g. a teacher) as used but never trained: it is put in eval
        mode without gradients and kept out of the optimiser and the checkpoint."""
        self.frozen[name] = module.eval().requires_grad_(False)
        return module

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        """Called by the trainer before it builds its optimiser: once per training phase (once
        for a single-phase track, once per task of a multi-task one, so build modules only if
        they are not there yet). The default builds nothing."""

    @abstractmethod
    def loss(self, model: nn.Module, images: Images, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch (every method defines it). ``images`` is a list of
        ``views`` tensors when the method declares more than one view."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first batch of ``epoch`` (0-based)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after the last optimiser step of ``epoch``, before evaluation."""

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Called after every optimiser step (e.g. to clip or project weights)."""

    def epoch_log(self, epoch: int) -> dict[str, Any]:
        """Extra entries of ``epoch``'s record in ``metrics.jsonl`` (JSON-able values; keys
        must not clash with the trainer's own: ``epoch``, ``lr``, ``train_loss``, ``val_*``...).
        Called on every rank after :meth:`on_epoch_end` (so a method may all-reduce here);
        rank 0's return value is written. Default: nothing."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values beyond the modules that resume needs (default: none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
