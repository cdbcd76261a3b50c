"""What a class-incremental method adds to the engine's hook set (see
:mod:`hundred.engine.method`): two task-level hooks and three declarations the scenario reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import nn

from hundred.config import RunConfig
from hundred.engine.method import Method
from hundred.errors import HundredError
from hundred.tracks.incremental.memory import exemplar_free


@dataclass(frozen=True)
class Task:
    """One step of the scenario. Classes are output positions (0..n_seen-1 in arrival order)."""

    index: int
    count: int
    new_classes: tuple[int, ...]
    num_old: int

    @property
    def num_new(self) -> int:
        return len(self.new_classes)

    @property
    def num_seen(self) -> int:
        return self.num_old + self.num_new


@dataclass(frozen=True)
class TaskData:
    """The current task's training images, for a method's :meth:`IncrementalMethod.after_task`
    (prototypes, drift projectors ...): ``train`` is the task's training loader (shuffled,
    augmented as in training; iterate it for more epochs with ``train.set_epoch``), ``plain()``
    an unaugmented pass over the same images in order, ``indices`` their train-split indices.
    In an exemplar-free run these are the current task's images only."""

    train: Any
    plain: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
    indices: Any


# What a method needs from the exemplar memory (``IncrementalMethod.exemplars``).
EXEMPLAR_NEEDS = ("required", "optional", "never")


def check_exemplars(method: type[IncrementalMethod], scenario: Any) -> None:
    """Refuse an exemplar-free scenario (``incremental.memory=0``, or
    ``memory_per_class=0``) for a method that declares ``exemplars = "required"``."""
    if method.exemplars == "required" and exemplar_free(scenario):
        raise HundredError(
            f"incremental/{method.name or method.__name__} trains on exemplars of old classes "
            f"(exemplars = \"required\"), so it cannot run exemplar-free: give "
            f"incremental.memory > 0 (--memory N; or memory_per_class > 0), or choose a "
            f"method that declares exemplars = \"optional\" or \"never\" (e.g. finetune)")


class IncrementalMethod(Method):
    """Base class of class-incremental methods.

    Declarations: ``exemplars`` (what the method needs from the exemplar memory, one of
    :data:`EXEMPLAR_NEEDS`: ``"required"`` — it trains on task data + exemplars and refuses an
    exemplar-free scenario, ``incremental.memory=0``, with a HundredError before anything
    runs; ``"optional"`` — it uses exemplars when the scenario keeps some and runs
    exemplar-free otherwise; ``"never"`` — it keeps none, and unless it
    ``trains_on_all_seen`` the scenario serves it only the current task's images),
    ``uses_memory`` (derived: ``exemplars != "never"``; a subclass that sets only
    ``uses_memory`` gets ``"optional"`` or ``"never"``), ``trains_on_all_seen`` (joint
    training upper bound), ``keeps_old_model`` (the scenario passes a frozen copy of the
    previous task's model to :meth:`before_task`), ``classifier`` (which prediction is the
    method's own: ``"nme"``, the scenario's nearest mean of exemplars; anything else, e.g.
    ``"linear"`` or ``"ncm"``, names what :meth:`predict` returns, which the scenario evaluates
    as its ``linear`` record).
    """

    exemplars: ClassVar[str] = "optional"
    uses_memory: ClassVar[bool] = True
    trains_on_all_seen: ClassVar[bool] = False
    keeps_old_model: ClassVar[bool] = False
    classifier: ClassVar[str] = "linear"

    task: Task
    old_model: nn.Module | None = None
    task_data: TaskData | None = None  # set by the scenario before after_task

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "exemplars" in own:
            if cls.exemplars not in EXEMPLAR_NEEDS:
                raise TypeError(f"{cls.__name__}.exemplars must be one of {EXEMPLAR_NEEDS}, "
                                f"not {cls.exemplars!r}")
            if "uses_memory" in own and cls.uses_memory != (cls.exemplars != "never"):
                raise TypeError(f"{cls.__name__}: uses_memory={cls.uses_memory} contradicts "
                                f"exemplars={cls.exemplars!r}")
            cls.uses_memory = cls.exemplars != "never"
        elif "uses_memory" in own:
            cls.exemplars = "optional" if cls.uses_memory else "never"

    def __init__(self, params: dict[str, Any] | None = None, config: RunConfig | None = None
                 ) -> None:
        super().__init__(params, config)
        scenario = getattr(self.config, "incremental", None)
        if scenario is not None:  # refused here, so before the run writes anything
            check_exemplars(type(self), scenario)

    def before_task(self, task: Task, model: nn.Module, old_model: nn.Module | None) -> None:
        """Called once the head has grown for ``task``, before its training starts."""
        self.task, self.old_model = task, old_model

    def after_task(self, task: Task, model: nn.Module) -> dict[str, Any]:
        """Called after ``task``'s training, before memory update and evaluation; returns
        anything worth logging for the task. ``self.task_data`` holds the task's images. On
        resume it may run again for a task whose training had finished, so anything random
        in it should draw from a generator seeded by the task, not the global RNG."""
        return {}

    def predict(self, model: nn.Module, images: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores over the seen classes, features)`` of ``images`` at evaluation (eval
        mode, no grad): the head's logits and the backbone's features unless the method
        classifies otherwise (prototypes, a cascade of projectors ...). The scenario scores
        the first as the method's own classifier (the ``linear`` record) and uses the
        second for the NME classifier when there are exemplars."""
        return model(images, return_features=True)
