"""Baseline: ``ipc`` real training images per class chosen at random, not optimised — the
floor every condensation method must clear at the same IPC (Wang et al., "Dataset
Distillation", 2018; Zhao et al., ICLR 2021, Table 1 "Random")."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel

from hundred.engine.method import NoParams
from hundred.registry import register
from hundred.tracks.condense.method import CondenseContext, CondenseMethod
from hundred.tracks.condense.synthetic import random_real_indices


@register("condense", "random")
class RandomReal(CondenseMethod):
    """Random real images of each class (whatever ``condense.init`` says)."""

    Params: ClassVar[type[BaseModel]] = NoParams
    optimises = False
    uses_dsa = False

    def select(self, ctx: CondenseContext) -> torch.Tensor:
        return random_real_indices(ctx.real, ctx.config.condense.ipc)
