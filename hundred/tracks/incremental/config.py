"""The ``incremental:`` section of a run config: the class-incremental scenario."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from hundred.config import StrictModel


class IncrementalConfig(StrictModel):
    """Class-incremental scenario: tasks, class order and exemplar memory."""

    scenario: str = Field("B0-Inc10", pattern=r"^B\d+-Inc\d+$",
                          description="B<first task classes>-Inc<classes per later task>")
    class_order_seed: int = Field(1993, ge=0, description="np.random.seed(s); permutation")
    class_order: Optional[list[int]] = Field(None, description="explicit class order")
    memory: int = Field(2000, ge=0, description="exemplars in total (fixed-total memory)")
    memory_per_class: Optional[int] = Field(
        None, ge=1, description="exemplars per class instead (growing memory)")
    selection: Literal["herding", "random"] = "herding"
    first_task_epochs: Optional[int] = Field(
        None, ge=1, description="epochs of the first task (PyCIL's init_epoch; default "
        "train.epochs); step milestones are scaled in proportion")
