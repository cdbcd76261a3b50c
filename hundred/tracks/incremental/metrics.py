"""Class-incremental metrics from the accuracy matrix ``a[t][j]`` (accuracy on task j's
classes after training task t; NaN above the diagonal) and per-step accuracies."""

from __future__ import annotations

import numpy as np


def average_incremental_accuracy(step_accuracy: list[float]) -> float:
    """Mean over steps of the accuracy on all classes seen so far (Rebuffi et al., iCaRL)."""
    return float(np.mean(step_accuracy))


def average_forgetting(matrix: np.ndarray) -> float:
    """Chaudhry et al. 2018 (RWalk): for each earlier task j, the best accuracy it ever had
    before the last step minus its accuracy after the last step; averaged over j < T-1."""
    tasks = matrix.shape[0]
    if tasks < 2:
        return 0.0
    drops = [np.nanmax(matrix[j : tasks - 1, j]) - matrix[tasks - 1, j] for j in range(tasks - 1)]
    return float(np.mean(drops))


def backward_transfer(matrix: np.ndarray) -> float:
    """Lopez-Paz & Ranzato 2017 (GEM): mean of a[T-1][j] - a[j][j] over j < T-1 (negative =
    forgetting)."""
    tasks = matrix.shape[0]
    if tasks < 2:
        return 0.0
    return float(np.mean([matrix[tasks - 1, j] - matrix[j, j] for j in range(tasks - 1)]))


def summarise(step_top1: list[float], matrix: np.ndarray) -> dict[str, float]:
    """The headline numbers of one run."""
    return {
        "avg_incremental_accuracy": average_incremental_accuracy(step_top1),
        "last_accuracy": float(step_top1[-1]),
        "avg_forgetting": average_forgetting(matrix),
        "backward_transfer": backward_transfer(matrix),
    }


def matrix_to_json(matrix: np.ndarray) -> list[list[float | None]]:
    """Rows of the matrix with NaN (not yet seen) as None, for JSON."""
    return [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in matrix]
