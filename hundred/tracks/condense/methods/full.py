"""The upper bound: the whole real training set, evaluated with the same protocol as every
learned set (fresh networks, the same epochs, optimiser and augmentation) — the "whole
dataset" column of the condensation papers' tables."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from hundred.engine.method import NoParams
from hundred.registry import register
from hundred.tracks.condense.method import CondenseMethod


@register("condense", "full")
class FullData(CondenseMethod):
    """Every real training image; ``condense.ipc`` and the optimisation do not apply."""

    Params: ClassVar[type[BaseModel]] = NoParams
    optimises = False
    full_data = True
    uses_dsa = False
