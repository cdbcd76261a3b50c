"""Class-incremental building blocks: task splits, class order, memory, metrics, WA, heads."""

import numpy as np
import pytest
import torch

from hundred.config import build_config
from hundred.errors import HundredError
from hundred.models.heads import CosineHead, LinearHead
from hundred.tracks.incremental.config import IncrementalConfig
from hundred.tracks.incremental.memory import ExemplarMemory, herding_order
from hundred.tracks.incremental.metrics import (average_forgetting, average_incremental_accuracy,
                                                backward_transfer)
from hundred.tracks.incremental.methods.wa import align_weights
from hundred.tracks.incremental.method import Task
from hundred.tracks.incremental.scenario import class_order, task_config, task_sizes


def test_task_sizes():
    assert task_sizes("B0-Inc10", 100) == [10] * 10
    assert task_sizes("B50-Inc10", 100) == [50, 10, 10, 10, 10, 10]
    assert task_sizes("B0-Inc30", 100) == [30, 30, 30, 10]  # remainder task
    with pytest.raises(HundredError):
        task_sizes("B100-Inc10", 100)


def test_first_task_epochs_lengthen_only_the_first_task_scaling_milestones():
    config = build_config(overrides=["track=incremental", "train.epochs=10",
                                     "schedule.name=step", "schedule.milestones=[5, 8]",
                                     "incremental.first_task_epochs=30"])
    first = task_config(config, Task(0, 2, tuple(range(10)), 0))
    assert first.train.epochs == 30 and first.schedule.milestones == [15, 24]
    assert task_config(config, Task(1, 2, tuple(range(10, 20)), 10)) is config
    unset = build_config(overrides=["track=incremental", "train.epochs=10"])
    assert task_config(unset, Task(0, 2, tuple(range(10)), 0)) is unset


def test_class_order_is_the_community_seed_1993_permutation():
    order = class_order(100, IncrementalConfig())
    assert order[:10].tolist() == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
    explicit = class_order(3, IncrementalConfig(class_order=[2, 0, 1]))
    assert explicit.tolist() == [2, 0, 1]
    with pytest.raises(HundredError):
        class_order(3, IncrementalConfig(class_order=[0, 0, 1]))


def test_herding_mean_is_closer_to_class_mean_than_random():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 16, generator=generator) + 2 * torch.rand(1, 16, generator=generator)
    normalised = torch.nn.functional.normalize(features, dim=1)
    target = normalised.mean(0)
    chosen = herding_order(features, 10)
    assert len(set(chosen.tolist())) == 10
    herd_error = (normalised[chosen].mean(0) - target).norm()
    random_errors = [(normalised[torch.randperm(300, generator=generator)[:10]].mean(0) - target).norm()
                     for _ in range(50)]
    assert herd_error < min(random_errors)


def test_fixed_total_memory_shrinks_old_classes_keeping_the_herding_prefix():
    memory = ExemplarMemory(total=20, selection="herding")
    features = torch.randn(100, 8)
    class_indices = {c: np.arange(c * 25, (c + 1) * 25) for c in range(4)}
    memory.update([0, 1], class_indices, lambda idx: features[idx])
    first = memory.exemplars[0].copy()
    assert [len(memory.exemplars[c]) for c in (0, 1)] == [10, 10]
    memory.update([2, 3], class_indices, lambda idx: features[idx])
    assert [len(memory.exemplars[c]) for c in range(4)] == [5, 5, 5, 5]
    assert memory.exemplars[0].tolist() == first[:5].tolist()
    assert all(np.isin(memory.exemplars[c], class_indices[c]).all() for c in range(4))
    per_class = ExemplarMemory(per_class=3, selection="random")
    per_class.update([0, 1, 2], class_indices, lambda idx: features[idx])
    assert len(per_class) == 9 and len(per_class.indices()) == 9


def test_metrics_on_a_hand_made_accuracy_matrix():
    nan = np.nan
    matrix = np.array([[90.0, nan, nan], [60.0, 80.0, nan], [50.0, 70.0, 85.0]])
    # forgetting: task0 max(90, 60) - 50 = 40; task1 max(80) - 70 = 10 -> 25
    assert average_forgetting(matrix) == pytest.approx(25.0)
    # BWT: ((50 - 90) + (70 - 80)) / 2 = -25
    assert backward_transfer(matrix) == pytest.approx(-25.0)
    assert average_incremental_accuracy([90.0, 70.0, 68.0]) == pytest.approx(76.0)


def test_weight_aligning_equalises_mean_norms():
    weight = torch.cat([torch.rand(6, 5), 3 * torch.rand(4, 5)])
    gamma = align_weights(weight, num_old=6)
    norms = weight.norm(dim=1)
    assert norms[:6].mean() == pytest.approx(float(norms[6:].mean()), rel=1e-5)
    assert gamma < 1


@pytest.mark.parametrize("head_class", [LinearHead, CosineHead])
def test_heads_grow_keeping_old_rows(head_class):
    head = head_class(8, 3)
    features = torch.randn(4, 8)
    before = head(features)
    grown = head.grown(2)
    assert grown.out_features == 5
    assert torch.allclose(grown(features)[:, :3], before)


def test_icarl_distils_old_classes_to_the_previous_sigmoids_and_learns_new_ones_one_hot():
    from hundred.tracks.incremental.methods.icarl import ICaRL

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 5, bias=False)  # 3 old classes, 2 new
    old_model = torch.nn.Linear(6, 3, bias=False)
    old_model.weight.data.copy_(model.weight.data[:3])
    method = ICaRL({})
    method.before_task(Task(1, 2, (3, 4), 3), model, old_model)
    images, labels = torch.randn(8, 6), torch.tensor([3, 4] * 4)
    method.loss(model, images, labels).backward()
    # Unchanged old outputs already equal their distillation targets: no gradient on them.
    assert model.weight.grad[:3].abs().max() < 1e-6
    assert model.weight.grad[3:].abs().max() > 1e-3
