"""Each unlearning method moves a tiny trained model the way its paper says (full-batch steps
of its own loss on its own rows and labels), and the membership-inference measure is 50 %
where members and non-members cannot be told apart."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hundred.tracks.unlearn.evaluation import (mia_efficacy, mia_efficacy_svc,
                                               true_class_outputs)
from hundred.tracks.unlearn.methods.finetune import Finetune
from hundred.tracks.unlearn.methods.grad_ascent import GradAscent
from hundred.tracks.unlearn.methods.l1_sparse import L1Sparse
from hundred.tracks.unlearn.methods.random_labels import RandomLabels
from hundred.tracks.unlearn.methods.retrain import Retrain

CLASSES, FEATURES = 4, 8


@pytest.fixture(scope="module")
def problem():
    """A linear classifier trained on 64 points of 4 Gaussian classes; rows 0-15 the forget
    set, the rest retained."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % CLASSES
    means = torch.randn(CLASSES, FEATURES, generator=generator) * 2
    inputs = means[labels] + torch.randn(64, FEATURES, generator=generator)
    model = nn.Linear(FEATURES, CLASSES)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model, inputs, labels, np.arange(16), np.arange(16, 64)


def unlearned(method, problem, steps: int = 30, lr: float = 0.1) -> nn.Module:
    """``steps`` full-batch SGD steps of ``method.loss`` on its phase rows and labels."""
    original, inputs, labels, forget, retain = problem
    model = copy.deepcopy(original)
    rows = torch.from_numpy(method.phase_rows(forget, retain))
    relabelled = method.phase_labels(labels.numpy(), forget, CLASSES, seed=0)
    targets = labels if relabelled is None else torch.from_numpy(relabelled)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        method.on_epoch_start(step * method.params.epochs // steps)
        optimizer.zero_grad()
        method.loss(model, inputs[rows], targets[rows]).backward()
        optimizer.step()
    return model


def forget_loss(model, problem) -> float:
    _, inputs, labels, forget, _ = problem
    with torch.no_grad():
        return float(F.cross_entropy(model(inputs[forget]), labels[forget]))


def retain_loss(model, problem) -> float:
    _, inputs, labels, _, retain = problem
    with torch.no_grad():
        return float(F.cross_entropy(model(inputs[retain]), labels[retain]))


@torch.no_grad()
def l1(model) -> float:
    return float(sum(p.abs().sum() for p in model.parameters()))


def test_gradient_ascent_raises_the_forget_loss_and_reads_only_the_forget_set(problem):
    method = GradAscent()
    assert method.phase_rows(problem[3], problem[4]).tolist() == list(range(16))
    model = unlearned(method, problem, lr=0.05)
    assert forget_loss(model, problem) > forget_loss(problem[0], problem) + 0.1


def test_finetuning_lowers_the_retain_loss_on_the_retained_rows_only(problem):
    method = Finetune()
    assert method.phase_rows(problem[3], problem[4]).tolist() == list(range(16, 64))
    model = unlearned(method, problem)
    assert retain_loss(model, problem) < retain_loss(problem[0], problem)


def test_random_labels_relabel_the_forget_set_only_and_raise_its_true_loss(problem):
    method = RandomLabels()
    labels = problem[2].numpy()
    relabelled = method.phase_labels(labels, problem[3], CLASSES, seed=0)
    assert np.array_equal(relabelled[16:], labels[16:])
    assert (relabelled[:16] != labels[:16]).any() and relabelled.max() < CLASSES
    assert method.phase_rows(problem[3], problem[4]).tolist() == list(range(64))
    model = unlearned(method, problem, steps=100, lr=0.5)
    assert forget_loss(model, problem) > forget_loss(problem[0], problem)


def test_l1_sparse_unlearning_ends_sparser_than_finetuning(problem):
    method = L1Sparse({"alpha": 0.01, "epochs": 4})
    method.on_epoch_start(0)
    assert method.strength == pytest.approx(0.01)
    method.on_epoch_start(3)
    assert method.strength == pytest.approx(0.01 / 4)  # linear decay: gamma (1 - t / T)
    assert l1(unlearned(method, problem)) < l1(unlearned(Finetune(), problem))


def test_retraining_starts_afresh_on_the_retained_rows():
    method = Retrain()
    assert method.retrains and method.phase_values() == {}
    assert method.phase_rows(np.arange(3), np.arange(3, 10)).tolist() == list(range(3, 10))


def test_the_membership_attack_says_fifty_percent_when_nothing_was_seen():
    """An untrained network never saw members, non-members or targets: all three are drawn
    from one distribution, and the forget set looks neither more nor less like training
    data."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, CLASSES))

    def batches(count: int):
        return [(torch.randn(50, 3, 8, 8), torch.randint(0, CLASSES, (50,)))
                for _ in range(count)]

    _, members, _ = true_class_outputs(model, batches(10))
    _, non_members, _ = true_class_outputs(model, batches(10))
    _, targets, _ = true_class_outputs(model, batches(2))
    assert mia_efficacy(members, non_members, targets) == pytest.approx(50.0, abs=2.0)
    assert 0.0 <= mia_efficacy_svc(members, non_members, targets) <= 100.0


def test_the_membership_attack_tells_members_apart_when_it_can():
    rng = np.random.default_rng(0)
    members, non_members = rng.beta(8, 2, 500), rng.beta(2, 5, 500)
    assert mia_efficacy(members, non_members, rng.beta(8, 2, 100)) < 20
    assert mia_efficacy(members, non_members, rng.beta(2, 5, 100)) > 80
    assert mia_efficacy_svc(members, non_members, rng.beta(2, 5, 100)) > 80
