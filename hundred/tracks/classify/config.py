"""The ``classify:`` section of a run config: what a classification run needs beyond the
shared settings: the teacher of the distillation methods, and the finished run whose backbone
a run starts from (fine-tuning, linear evaluation)."""

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
    init: Optional[str] = Field(
        None, description="start from the backbone of this finished run directory (RUN_DIR, "
        "e.g. a self-supervised pre-training; same model.name and model.options) with a new "
        "head for this data's classes; None = random initialisation")
    freeze_backbone: bool = Field(
        False, description="train only the head (linear evaluation): the backbone gets no "
        "gradient and runs in eval mode (its normalisation statistics stay as they are)")
