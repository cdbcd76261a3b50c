"""Random labelling (RL): fine-tune on the forget set relabelled at random, together with the
retained data, so that the model's answers on the forget set become arbitrary.

Golatkar et al., "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep
Networks" (CVPR 2020); the RL baseline of Jia et al. (NeurIPS 2023) and Fan et al. (ECCV
2024), whose code trains on the union of the relabelled forget set and the retained set:
minimise mean_{D_f u D_r} CE(f_theta(x), y'), y' drawn uniformly from the C classes for
(x, y) in D_f (it may equal y, as in that code) and y' = y on D_r; 10 epochs, lr 0.01 to
0.1 (tuned). The random labels are drawn once per run from ``unlearn.forget_seed`` (else
the run seed).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import BaseModel, Field

from hundred.registry import register
from hundred.tracks.unlearn.method import PhaseParams, UnlearnMethod


class RandomLabelsParams(PhaseParams):
    epochs: int = Field(10, ge=1, description="epochs over forget u retain (Jia et al. "
                        "2023: 10)")
    lr: float = Field(0.01, gt=0, description="constant learning rate (Jia et al. 2023: "
                      "0.01 to 0.1, tuned)")


@register("unlearn", "random_labels")
class RandomLabels(UnlearnMethod):
    """Cross-entropy on the retained rows and on the forget rows with random labels."""

    Params: ClassVar[type[BaseModel]] = RandomLabelsParams

    def phase_rows(self, forget: np.ndarray, retain: np.ndarray) -> np.ndarray:
        return np.sort(np.concatenate([forget, retain]))

    def phase_labels(self, labels: np.ndarray, forget: np.ndarray, num_classes: int,
                     seed: int) -> np.ndarray:
        relabelled = np.array(labels, dtype=np.int64, copy=True)
        rng = np.random.default_rng(seed)
        relabelled[forget] = rng.integers(0, num_classes, len(forget))
        return relabelled
