"""What a class-incremental method adds to the engine's hook set (see
:mod:`hundred.engine.method`): two task-level hooks and three declarations the scenario reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from hundred.engine.method import Method


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


class IncrementalMethod(Method):
    """Base class of class-incremental methods.

    Declarations: ``uses_memory`` (train on task data + exemplars, keep the memory updated),
    ``trains_on_all_seen`` (joint training upper bound), ``keeps_old_model`` (the scenario
    passes a frozen copy of the previous task's model to :meth:`before_task`), ``classifier``
    (``"linear"`` or ``"nme"``: which prediction is the method's own).
    """

    uses_memory: ClassVar[bool] = True
    trains_on_all_seen: ClassVar[bool] = False
    keeps_old_model: ClassVar[bool] = False
    classifier: ClassVar[str] = "linear"

    task: Task
    old_model: nn.Module | None = None

    def before_task(self, task: Task, model: nn.Module, old_model: nn.Module | None) -> None:
        """Called once the head has grown for ``task``, before its training starts."""
        self.task, self.old_model = task, old_model

    def after_task(self, task: Task, model: nn.Module) -> dict[str, Any]:
        """Called after ``task``'s training, before memory update and evaluation; returns
        anything worth logging for the task."""
        return {}
