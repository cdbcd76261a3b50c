"""The sanity checks the literature asks of a robustness evaluation (Carlini et al., "On
Evaluating Adversarial Robustness", 2019; Croce & Hein, ICML 2020), on tiny CPU models:
robust accuracy never exceeds clean accuracy, ε = 0 gives clean accuracy, more PGD steps
never raise robust accuracy (fixed model and seed), a fixed seed gives a fixed number, ε is
measured in pixel space whatever the normalisation, and a gradient-masked model is flagged
by AutoAttack doing better than PGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hundred.errors import HundredError
from hundred.tracks.robust.attacks import (ATTACKS, PixelSpaceModel, ThreatModel,
                                           adversarial_batch, build_pgd, register_attack,
                                           robust_accuracy, seeded)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def toy_data(classes: int = 4, per_class: int = 8, seed: int = 0, gap: float = 0.04
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 RGB images in [0, 1]: class c brightens its own quarter of the pixels by ``gap``
    over noise — linearly separable, but by a margin that a few /255 of L∞ can undo."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = 0.5 + 0.05 * torch.randn(len(labels), 3, 8, 8, generator=generator)
    for index, label in enumerate(labels.tolist()):
        images[index, :, 2 * label:2 * label + 2, :] += gap
    return images.clamp(0, 1), labels


def linear_model(classes: int = 4) -> nn.Module:
    """A linear classifier that reads the class quarters of the *normalised* image."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, classes))
    with torch.no_grad():
        weight = torch.zeros(classes, 3, 8, 8)
        for label in range(classes):
            weight[label, :, 2 * label:2 * label + 2, :] = 1.0
        model[1].weight.copy_(weight.flatten(1) / 48)
        model[1].bias.zero_()
    return model


def normalised(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def accuracy(model: nn.Module, attack: str, threat: ThreatModel, seed: int = 0) -> dict:
    images, labels = toy_data()
    batches = [(normalised(images[:16]), labels[:16]), (normalised(images[16:]), labels[16:])]
    return robust_accuracy(model, batches, MEAN, STD, attack, threat, num_classes=4, seed=seed)


def test_robust_accuracy_never_exceeds_clean_and_eps_zero_is_clean():
    model = linear_model()
    attacked = accuracy(model, "pgd", ThreatModel(eps=4 / 255, steps=10, step_size=1 / 255))
    assert attacked["clean_top1"] > 80  # the toy problem is learnt ...
    assert attacked["robust_top1"] < attacked["clean_top1"]  # ... and not robust
    none = accuracy(model, "pgd", ThreatModel(eps=0.0, steps=10, step_size=1 / 255))
    assert none["robust_top1"] == none["clean_top1"] == attacked["clean_top1"]
    assert none["eps"] == 0 and attacked["eps_label"] == "4/255" and attacked["steps"] == 10


def test_more_pgd_steps_never_raise_robust_accuracy():
    model = linear_model()
    robust = [accuracy(model, "pgd", ThreatModel(eps=5 / 255, steps=steps, step_size=0.5 / 255),
                       seed=3)["robust_top1"] for steps in (1, 2, 4, 8, 16)]
    assert all(later <= earlier for earlier, later in zip(robust, robust[1:])), robust
    assert robust[-1] < robust[0]  # the steps matter on this model


def test_a_fixed_seed_gives_a_fixed_number_and_leaves_the_global_rng_alone():
    model = linear_model()
    threat = ThreatModel(eps=2 / 255, steps=2, step_size=0.5 / 255)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = accuracy(model, "pgd", threat, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    assert accuracy(model, "pgd", threat, seed=7) == first


def test_eps_is_in_pixel_space_not_in_normalised_space():
    """std 0.25: a wrapper attacking the normalised tensor would perturb pixels 4x too much."""
    images, labels = toy_data()
    pixel_model = PixelSpaceModel(linear_model(), MEAN, STD).eval()
    eps = 8 / 255
    attack = build_pgd(pixel_model, ThreatModel(eps=eps, steps=5, step_size=2 / 255), 4, 0)
    with seeded(0):
        adversarial = adversarial_batch(pixel_model, attack, normalised(images), labels)
    in_pixels = (adversarial - normalised(images)) * torch.tensor(STD).view(1, 3, 1, 1)
    assert in_pixels.abs().max() <= eps + 1e-5
    assert in_pixels.abs().max() >= 0.9 * eps  # the budget is used, in pixel units
    assert (adversarial - normalised(images)).abs().max() >= 0.9 * eps / 0.25


class QuantisedInput(nn.Module):
    """Gradient masking by input quantisation: the forward pass rounds pixels to 1/255
    steps, whose gradient is zero everywhere; the classifier behind it is not robust."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        quantised = torch.round(pixels * 255) / 255
        return self.inner(normalised(quantised))


@pytest.fixture
def one_thread():
    """Square's 5000 sequential queries of a tiny model: one thread is fastest on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_autoattack_flags_a_gradient_masked_model_where_pgd_is_blind(one_thread):
    model = QuantisedInput(linear_model())
    # a budget at which the model is broken everywhere, so Square stops early (seconds)
    threat = ThreatModel(eps=12 / 255, steps=20, step_size=2 / 255)
    images, labels = toy_data(per_class=3)
    batches = [(normalised(images), labels)]
    pgd = robust_accuracy(model, batches, MEAN, STD, "pgd", threat, 4, seed=0)
    auto = robust_accuracy(model, batches, MEAN, STD, "autoattack", threat, 4, seed=0)
    assert pgd["robust_top1"] >= 0.9 * pgd["clean_top1"]  # zero gradients: PGD finds nothing
    assert auto["robust_top1"] < pgd["robust_top1"] - 50  # Square (black-box) does
    assert auto["components"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert "steps" not in auto and auto["torchattacks"]


def test_the_registry_takes_a_plugged_in_attack_and_checks_its_budget():
    def too_strong(model, threat, num_classes, seed):
        return lambda pixels, labels: (pixels + 2 * threat.eps).clamp(0, 1)

    register_attack("too_strong_for_test", too_strong)
    try:
        with pytest.raises(HundredError, match="left the threat model"):
            accuracy(linear_model(), "too_strong_for_test", ThreatModel(eps=2 / 255))
    finally:
        ATTACKS.pop("too_strong_for_test")
    with pytest.raises(HundredError, match="unknown attack 'nope'"):
        accuracy(linear_model(), "nope", ThreatModel())


def test_an_attack_limit_draws_a_fixed_sample_across_the_split_not_its_first_rows():
    from hundred.tracks.robust.attacks import attack_subset

    labels = np.repeat(np.arange(10), 50)  # packed splits are sorted by class
    rows = attack_subset(len(labels), 100)
    assert len(rows) == len(set(rows.tolist())) == 100 and np.all(np.diff(rows) > 0)
    assert len(set(labels[rows].tolist())) == 10  # the first 100 rows hold 2 classes
    assert np.array_equal(rows, attack_subset(len(labels), 100))  # the same every time
    assert attack_subset(500, None) is None and attack_subset(500, 500) is None
