"""QuScore (black-box microbial-GA attack on a classifier + interpreter) at tiny scale: a
ConvNet-D3 trained for a few seconds on 16 px `digits` is the target system."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hundred.errors import HundredError
from hundred.models import create
from hundred.tracks.robust.interpreters import (InterpretableSystem, cam_map, differentiable_map,
                                                gradient_map)
from hundred.tracks.robust.quscore import quscore_attack, run_quscore

MEAN, STD = 0.25, 0.35  # the target normalises inside: attacks live in pixel space [0, 1]


class PixelSpace(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - MEAN) / STD)


def _refuse_backward(grad: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("backward through the target's logits outside its interpreter")


class GuardedTarget(nn.Module):
    """The target model, refusing any autograd use outside its own interpreter, and counting
    the images it classifies (outside the interpreter) and interprets."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.interpreting = False
        self.classified = 0
        self.interpreted = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.interpreting:
            if torch.is_grad_enabled() or images.requires_grad:
                raise RuntimeError("autograd through the target outside its interpreter")
            self.classified += len(images)
        logits = self.model(images)
        if logits.requires_grad and not self.interpreting:
            logits.register_hook(_refuse_backward)
        return logits

    @contextmanager
    def interpreter_running(self, count: int):
        self.interpreting = True
        self.interpreted += count
        try:
            yield
        finally:
            self.interpreting = False


def _digits(res: int = 16) -> tuple[torch.Tensor, ...]:
    from hundred.data.sources.digits import open_digits

    dataset = open_digits(None, res=res)
    out = []
    for split in ("train", "val"):
        arrays = dataset.splits[split]
        out += [torch.tensor(arrays.images).permute(0, 3, 1, 2).float() / 255,
                torch.tensor(arrays.labels).long()]
    return tuple(out)


def _train(name: str, images: torch.Tensor, labels: torch.Tensor, epochs: int, **options
           ) -> nn.Module:
    torch.manual_seed(0)
    model = PixelSpace(create(name, 10, img_size=16, **options))
    optimiser = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        order = torch.randperm(len(images))
        for first in range(0, len(images), 64):
            batch = order[first:first + 64]
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    for parameter in model.parameters():
        parameter.grad = None
    return model.eval()


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    train_x, train_y, val_x, val_y = _digits()
    target = _train("convnet_d3", train_x, train_y, epochs=2, width=16)
    surrogate = _train("resnet20", train_x, train_y, epochs=1, width=4)
    with torch.no_grad():
        correct = target(val_x).argmax(1) == val_y
    assert correct.float().mean() > 0.8  # the target learnt something
    return target, surrogate, val_x[:12], val_y[:12]


def test_interpreters_agree_with_their_differentiable_twins_and_cam_is_cam(setup):
    target, surrogate, images, labels = setup
    for interpret, kind in ((gradient_map, "grad"), (cam_map, "cam")):
        maps = interpret(target, images, labels)
        assert maps.shape == (len(images), 16, 16)
        assert maps.min() >= 0 and maps.amax((1, 2)).allclose(torch.ones(len(images)))
        twin = differentiable_map(kind, target, images, labels)
        assert torch.allclose(maps, twin.detach(), atol=1e-4)
    # CAM proper (Zhou et al.) on a globally pooled net with a linear head: sum_k w_ck A_k
    classifier = surrogate.model
    stages = []
    handle = classifier.backbone.stages[-1].register_forward_hook(
        lambda module, inputs, output: stages.append(output))
    with torch.no_grad():
        surrogate(images)
    handle.remove()
    cam = torch.einsum("nk,nkhw->nhw", classifier.head.weight[labels], stages[-1])
    cam = F.interpolate(cam[:, None], (16, 16), mode="bilinear")[:, 0].flatten(1)
    cam = cam - cam.min(1, keepdim=True).values
    cam = (cam / cam.max(1, keepdim=True).values).view(-1, 16, 16)
    assert torch.allclose(cam_map(surrogate, images, labels), cam, atol=1e-4)


@pytest.mark.parametrize("with_surrogate", [False, True])
def test_never_differentiates_the_target_and_counts_every_query(setup, with_surrogate):
    target, surrogate, images, labels = setup
    guarded = GuardedTarget(target)
    with pytest.raises(RuntimeError):  # the guard does catch a white-box step
        guarded(images.clone().requires_grad_(True)).sum().backward()
    guarded.classified = 0

    def interpreter(model, batch, classes):
        with guarded.interpreter_running(len(batch)):
            return gradient_map(model, batch, classes)

    seen = []

    class Recording(InterpretableSystem):
        def query(self, batch):
            probs, maps = super().query(batch)
            seen.append((probs, maps))
            return probs, maps

    system = Recording(guarded, interpreter)
    result = run_quscore(system, images, labels, eps=0.08, max_queries=60, seed=0,
                         surrogate=surrogate if with_surrogate else None)
    assert all(not t.requires_grad and t.grad_fn is None for pair in seen for t in pair)
    assert all(p.grad is None for p in target.parameters())
    per_image = result["per_image"]["queries"]
    assert result["total_queries"] == sum(per_image) == system.queries
    assert guarded.classified == guarded.interpreted == system.queries
    assert max(per_image) <= 60 and min(per_image) >= 1


def test_perturbation_stays_inside_the_pixel_space_budget(setup):
    target, _, images, labels = setup
    for eps in (0.03, 0.12):
        result = run_quscore(target, images, labels, "cam", eps=eps, max_queries=40, seed=0)
        adversarial = result["adversarial"]
        assert adversarial.min() >= 0 and adversarial.max() <= 1
        assert (adversarial - images).abs().max() <= eps + 1e-6
        assert max(result["per_image"]["linf"]) <= eps + 1e-6


def test_succeeds_within_the_budget_and_a_larger_budget_never_does_worse(setup):
    target, _, images, labels = setup
    rates = []
    for eps in (0.05, 0.12, 0.3):
        result = run_quscore(target, images, labels, "grad", eps=eps, max_queries=150, seed=0)
        rates.append(result["success_rate"])
        won = torch.tensor(result["per_image"]["success"])
        assert all(q <= 150 for q in result["per_image"]["queries"])
        with torch.no_grad():  # every success really fools the target, within eps
            predicted = target(result["adversarial"][won]).argmax(1)
        assert (predicted != labels[won]).all()
    assert rates == sorted(rates) and rates[-1] >= 0.5


def test_interpretation_threshold_is_part_of_success(setup):
    target, _, images, labels = setup
    result = run_quscore(target, images, labels, "grad", eps=0.15, max_queries=150, seed=0,
                         max_interp_distance=0.05)
    per_image = result["per_image"]
    for won, distance in zip(per_image["success"], per_image["interp_distance"]):
        if won:
            assert distance <= 0.05


def _same(per_image: dict, other: dict) -> None:
    assert per_image.keys() == other.keys()
    for key in per_image:
        torch.testing.assert_close(torch.tensor(per_image[key], dtype=torch.float64),
                                   torch.tensor(other[key], dtype=torch.float64),
                                   rtol=0, atol=0, equal_nan=True, msg=key)


def test_same_seed_same_result_and_images_are_independent(setup):
    target, _, images, labels = setup

    def attack(batch, classes, seed):
        return run_quscore(target, batch, classes, "grad", eps=0.08, max_queries=60, seed=seed)

    first, again = attack(images, labels, 0), attack(images, labels, 0)
    _same(first["per_image"], again["per_image"])
    assert torch.equal(first["adversarial"], again["adversarial"])
    other = attack(images, labels, 1)
    assert not torch.equal(first["adversarial"], other["adversarial"])
    # image n draws from its own generator (seed, n): attacking the first five alone gives
    # the same per-image results as attacking them among twelve
    part = attack(images[:5], labels[:5], 0)
    _same(part["per_image"], {key: values[:5] for key, values in first["per_image"].items()})


def test_registry_builder_returns_adversarial_pixels_inside_the_threat_model(setup):
    from hundred.tracks.robust.attacks import ThreatModel, check_budget

    target, _, images, labels = setup
    threat = ThreatModel(eps=0.3)
    attack = quscore_attack(target, threat, 10, 0, interpreter="cam", max_queries=100)
    adversarial = attack(images, labels)
    check_budget(adversarial, images, threat)
    result = attack.results[-1]
    with torch.no_grad():
        fooled = target(adversarial).argmax(1) != labels
    attacked = torch.tensor(result["per_image"]["attacked"])
    assert fooled[attacked].tolist() == torch.tensor(result["per_image"]["success"])[
        attacked].tolist()
    assert fooled[~attacked].all()  # misclassified clean images are passed through
    assert attack.system.queries == result["total_queries"]
    with pytest.raises(HundredError):
        quscore_attack(target, ThreatModel(norm="l2", eps=0.5), 10, 0)


def test_a_budget_below_one_population_is_refused(setup):
    target, _, images, labels = setup
    with pytest.raises(HundredError):
        run_quscore(target, images, labels, eps=0.1, max_queries=5, pop_size=5)
