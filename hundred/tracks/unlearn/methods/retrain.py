"""Retraining from scratch on the retained data: exact unlearning, the gold standard every
approximate method is measured against (its "gap to retrain").

Cao & Yang, "Towards Making Systems Forget with Machine Unlearning" (IEEE S&P 2015); the
reference of Jia et al. (NeurIPS 2023) and Fan et al. (ECCV 2024). The model is trained like
the original one (the run's ``train``/``optim``/``schedule``) on the retained rows only:
minimise (1/|D_r|) sum_{(x, y) in D_r} CE(f(x), y).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel

from hundred.engine.method import NoParams
from hundred.registry import register
from hundred.tracks.unlearn.method import UnlearnMethod


@register("unlearn", "retrain")
class Retrain(UnlearnMethod):
    """A fresh model trained on the retained data under the run's own schedule."""

    retrains: ClassVar[bool] = True
    Params: ClassVar[type[BaseModel]] = NoParams

    def phase_values(self) -> dict[str, Any]:
        return {}
