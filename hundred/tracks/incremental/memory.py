"""Exemplar memory: a few training samples per seen class, kept as indices (never copies).

Fixed total (e.g. 2000 exemplars shared by all seen classes, so each class's share shrinks
as classes arrive) or fixed per class (e.g. 20 each, so the memory grows). Selection by
herding (Welling 2009, as used by iCaRL: Rebuffi et al., CVPR 2017, Alg. 4) on
L2-normalised features, or at random. Each class's exemplars are stored in selection order,
so shrinking keeps a prefix — iCaRL's ReduceExemplarSet. A budget of 0 is the
exemplar-free scenario (:func:`exemplar_free`): no image of an old class is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from hundred.engine.selection import herding_order
from hundred.errors import HundredError


def exemplar_free(scenario: Any) -> bool:
    """Whether the ``incremental:`` section keeps no exemplars at all: a per-class budget
    of 0 (``memory_per_class=0``), or no per-class budget and ``memory=0``."""
    per_class = scenario.memory_per_class
    return per_class == 0 if per_class is not None else scenario.memory == 0


@dataclass
class ExemplarMemory:
    """Per-class exemplar indices into the training split, in selection order."""

    total: int = 2000
    per_class: int | None = None
    selection: str = "herding"
    seed: int = 0
    exemplars: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.selection not in ("herding", "random"):
            raise HundredError(f"memory selection must be herding or random, not {self.selection}")

    def quota(self, num_classes: int) -> int:
        """Exemplars per class when ``num_classes`` classes share the memory."""
        return self.per_class if self.per_class is not None else self.total // max(1, num_classes)

    def indices(self) -> np.ndarray:
        """All exemplar indices (sorted), for the training loader."""
        if not self.exemplars:
            return np.empty(0, dtype=np.int64)
        return np.sort(np.concatenate(list(self.exemplars.values()))).astype(np.int64)

    def __len__(self) -> int:
        return sum(len(v) for v in self.exemplars.values())

    def update(self, new_classes: list[int], class_indices: dict[int, np.ndarray],
               features_of: Callable[[np.ndarray], torch.Tensor]) -> None:
        """Shrink the old classes' sets to the new quota, then select the new classes' sets.

        ``class_indices[c]`` are the training indices of class ``c``; ``features_of(idx)``
        returns their features (only called for herding).
        """
        quota = self.quota(len(self.exemplars) + len(new_classes))
        for cls in list(self.exemplars):
            self.exemplars[cls] = self.exemplars[cls][:quota]
        for cls in new_classes:
            candidates = np.asarray(class_indices[cls], dtype=np.int64)
            if self.selection == "herding":
                order = herding_order(features_of(candidates), quota).numpy()
            else:
                rng = np.random.default_rng([self.seed, cls])
                order = rng.permutation(len(candidates))[:quota]
            self.exemplars[cls] = candidates[order]

    def state_dict(self) -> dict[str, Any]:
        return {"exemplars": {str(c): v.tolist() for c, v in self.exemplars.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.exemplars = {int(c): np.asarray(v, dtype=np.int64)
                          for c, v in state["exemplars"].items()}
