"""The ``classify:`` section of a run config: what a classification run needs beyond the
shared settings (today: the teacher of the distillation methods)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from hundred.config import StrictModel


class ClassifyConfig(StrictModel):
    """Settings of the classification track."""

    teacher: Optional[str] = Field(
        None, description="the teacher of distillation methods: a finished hundred run "
        "directory (RUN_DIR) or timm:NAME:PATH (a timm model and a local safetensors file)")
    teacher_model: str = Field(
        "resnet56", description="the architecture of the ERM teacher that `hundred check` "
        "trains on each phase's data for the distillation methods (when no teacher is given)")
