"""The ``compat:`` section of a run config: which share of the classes the old model was
trained on (or the finished compat run whose old model to reuse), the old model's embedding
dimension, and how long the old model trains.

Nothing here imports torch (config validation runs before anything heavy).
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from hundred.config import StrictModel


class CompatConfig(StrictModel):
    """Settings of the compat track (backward-compatible representation learning)."""

    old_classes: float = Field(
        0.5, description="the share of the classes (the first round(share x classes) labels) "
        "the old model is trained on, in (0, 1); the new model trains on all of them "
        "(CIFAR-100 50 -> 100 in BCT and OCA: 0.5)")
    old: Optional[str] = Field(
        None, description="reuse the old model of this finished compat run (RUN_DIR) instead "
        "of training one: same data, model.name, model.options, compat.embed_dim and "
        "compat.old_classes; None = train the old model in this run")
    embed_dim: int = Field(
        128, ge=2, description="dimension of the old model's embedding (a linear projection "
        "of the backbone's features, L2-normalised); the new model's is the same (independent, "
        "bct) or larger (oca adds method_params.extra_dims). OCA's default: 128")
    old_epochs: Optional[int] = Field(
        None, ge=1, description="epochs of the old model's training; None = train.epochs")

    @field_validator("old_classes")
    @classmethod
    def _inside_unit_interval(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError(f"compat.old_classes={value} is outside (0, 1): it is the share of "
                             "the classes the old model knows, e.g. 0.5 for half")
        return value
