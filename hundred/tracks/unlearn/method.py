"""What an unlearn method adds to the engine's hook set.

The scenario (:mod:`hundred.tracks.unlearn.scenario`) has the original model and the forget
set; it then trains one more phase with the shared trainer, on the rows and labels the
method names, under the method's own schedule:

* ``retrains`` — the method trains a fresh model on the retained data under the run's own
  ``train``/``optim``/``schedule`` (retraining, the gold standard); the others start from
  the original model;
* :meth:`UnlearnMethod.phase_rows` — the rows of the train split the phase reads (default:
  the retained ones);
* :meth:`UnlearnMethod.phase_labels` — the labels of the train split during the phase
  (default: unchanged; random labelling relabels the forget set);
* :meth:`UnlearnMethod.phase_values` — the config values of the phase (default: the
  method's ``epochs`` and ``lr`` at a constant rate, SGD with the run's momentum and weight
  decay, as the unlearning code of Jia et al. 2023 and Fan et al. 2024 runs it);
* ``loss`` — as in every track.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hundred.engine.losses import cross_entropy
from hundred.engine.method import Method


class PhaseParams(BaseModel):
    """The unlearning phase's length and learning rate (each method sets its paper's)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1, description="epochs of the unlearning phase over its rows")
    lr: float = Field(0.01, gt=0, description="learning rate of the unlearning phase "
                      "(constant)")


class UnlearnMethod(Method):
    """Base class of the unlearn track's methods: cross-entropy on the phase's batches."""

    retrains: ClassVar[bool] = False
    Params: ClassVar[type[BaseModel]] = PhaseParams

    def phase_rows(self, forget: np.ndarray, retain: np.ndarray) -> np.ndarray:
        """Rows of the train split the unlearning phase trains on (default: the retained)."""
        return retain

    def phase_labels(self, labels: np.ndarray, forget: np.ndarray, num_classes: int,
                     seed: int) -> np.ndarray | None:
        """Labels of the whole train split during the phase; None: the true ones."""
        return None

    def phase_values(self) -> dict[str, Any]:
        """Config values of the unlearning phase (``hundred.config.with_values`` keys)."""
        return {"train.epochs": self.params.epochs, "optim.lr": self.params.lr,
                "schedule.name": "constant", "schedule.warmup_epochs": 0.0}

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
             ) -> torch.Tensor:
        return cross_entropy(model(images), labels, self.config.train.label_smoothing)
