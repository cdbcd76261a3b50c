"""The ``compress:`` section of a run config: the FLOPs target a pruning method aims at, the
finished run a run starts from (the dense model to prune or fine-tune), and how latency is
measured.

Nothing here imports torch (config validation runs before anything heavy).
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from hundred.config import StrictModel


class CompressConfig(StrictModel):
    """Settings of the compress track (the measurements are in :mod:`hundred.engine.cost`)."""

    flops_target: Optional[float] = Field(
        None, description="the share of the dense model's FLOPs the compressed model may keep, "
        "in (0, 1) (0.5: half the FLOPs); read by the pruning methods; None = no target "
        "(the dense baseline, memory-saving training)")
    init: Optional[str] = Field(
        None, description="start from this finished run (RUN_DIR; same model.name and "
        "model.options): its whole model when it was trained on the same data and classes, "
        "else its backbone with a new head; None = random initialisation")
    latency_batch: int = Field(
        64, ge=2, description="the large batch of the latency measurement (batch 1 is always "
        "measured too)")
    latency_warmup: int = Field(10, ge=0, description="untimed forward passes before the "
                                "timed ones, at each batch size")
    latency_repeats: int = Field(30, ge=1, description="timed forward passes at each batch "
                                 "size; their median is reported")

    @field_validator("flops_target")
    @classmethod
    def _inside_unit_interval(cls, value: Optional[float]) -> Optional[float]:
        if value is not None and not 0.0 < value < 1.0:  # NaN is refused by StrictModel
            raise ValueError(f"compress.flops_target={value} is outside (0, 1): it is the "
                             "share of the dense model's FLOPs to keep, e.g. 0.5 for half")
        return value
