"""Self-supervised augmentation: grayscale, Gaussian blur, solarisation, the SimCLR/BYOL presets
and their per-view recipes in the loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hundred.data.augment import (
    PRESETS,
    VIEW_RECIPES,
    Op,
    RandomGaussianBlur,
    RandomGrayscale,
    RandomSolarize,
    blur_kernel_size,
    build_augment,
    view_specs,
)
from hundred.data.loader import BatchLoader
from hundred.errors import HundredError

SSL_PRESETS = sorted({preset for views in VIEW_RECIPES.values() for preset in views})


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _floats(n: int = 4, side: int = 6, seed: int = 0) -> torch.Tensor:
    """Random float images in [0, 1], (N, 3, side, side)."""
    return torch.rand(n, 3, side, side, generator=_gen(seed))


def _uint8(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """Random packed uint8 images, (N, side, side, 3)."""
    return torch.randint(0, 256, (n, side, side, 3), dtype=torch.uint8, generator=_gen(seed))


def _reference_blur(image: torch.Tensor, sigma: float, size: int) -> torch.Tensor:
    """One (3, H, W) image blurred with the 2-D Gaussian kernel written out from its definition,
    reflected borders, as a per-channel convolution."""
    radius = size // 2
    offsets = range(-radius, radius + 1)
    taps = torch.tensor([math.exp(-(n * n) / (2 * sigma * sigma)) for n in offsets])
    taps = taps / taps.sum()
    kernel = (taps[:, None] * taps[None, :]).expand(3, 1, size, size)
    padded = F.pad(image[None], (radius,) * 4, mode="reflect")
    return F.conv2d(padded, kernel, groups=3)[0]


# --------------------------------------------------------------------------- each op at p = 1 and 0


def test_grayscale_is_the_bt601_luma_on_every_channel() -> None:
    images = _floats()
    out = RandomGrayscale(p=1.0)(images, _gen(0))
    luma = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    for channel in range(3):
        assert torch.allclose(out[:, channel], luma, atol=1e-6)
    assert torch.equal(RandomGrayscale(p=0.0)(images, _gen(0)), images)


def test_solarize_inverts_exactly_the_pixels_at_or_above_one_half() -> None:
    images = _floats()
    images[0, 0, 0, :4] = torch.tensor([0.4999, 0.5001, 1.0, 0.0])
    out = RandomSolarize(p=1.0)(images, _gen(0))
    expected = torch.where(images >= 0.5, 1 - images, images)
    assert torch.equal(out, expected)
    assert out[0, 0, 0, :4].tolist() == pytest.approx([0.4999, 0.4999, 0.0, 0.0])
    assert torch.equal(RandomSolarize(p=0.0)(images, _gen(0)), images)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_blur_with_known_sigmas_matches_a_reference_convolution(kernel_size: int) -> None:
    images = _floats(n=3, side=9)
    sigmas = torch.tensor([0.3, 1.0, 2.0])
    blur = RandomGaussianBlur(p=1.0, kernel_size=kernel_size)
    out = blur.apply(images, {"applied": torch.tensor([True, True, False]), "sigma": sigmas})
    for index in range(2):
        expected = _reference_blur(images[index], sigmas[index].item(), kernel_size)
        assert torch.allclose(out[index], expected, atol=1e-6)
        assert not torch.allclose(out[index], images[index], atol=1e-3)
    assert torch.equal(out[2], images[2])  # not chosen: passes through exactly


def test_blur_draws_sigma_in_range_and_p_zero_is_the_identity() -> None:
    images = _floats(n=64, side=8)
    params = RandomGaussianBlur(p=1.0, kernel_size=3).sample(images, _gen(0))
    assert params["applied"].all()
    assert params["sigma"].min() >= 0.1 and params["sigma"].max() <= 2.0
    assert params["sigma"].max() - params["sigma"].min() > 1.5  # spread over the range
    assert torch.equal(RandomGaussianBlur(p=0.0, kernel_size=3)(images, _gen(0)), images)


def test_blur_kernel_follows_the_ten_percent_rule() -> None:
    assert [blur_kernel_size(side) for side in (224, 96, 64, 32, 19)] == [23, 9, 7, 3, 1]
    images = _floats(n=2, side=32)
    blur = RandomGaussianBlur(p=1.0)
    params = blur.sample(images, _gen(0))
    out = blur.apply(images, params)
    for index in range(2):
        expected = _reference_blur(images[index], params["sigma"][index].item(), 3)
        assert torch.allclose(out[index], expected, atol=1e-6)
    small = _floats(n=2, side=16)  # kernel 1: nothing to blur
    assert torch.equal(blur(small, _gen(0)), small)


# --------------------------------------------------------------------------- probability, seeds


def _changed(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return (before - after).flatten(1).abs().amax(dim=1) > 1e-6


@pytest.mark.parametrize(
    ("op", "p"),
    [
        (RandomGrayscale(p=0.2), 0.2),
        (RandomSolarize(p=0.2), 0.2),
        (RandomGaussianBlur(p=0.5, kernel_size=3), 0.5),
        (RandomGaussianBlur(p=0.1, kernel_size=3), 0.1),
    ],
)
def test_each_sample_is_changed_with_probability_p(op: Op, p: float) -> None:
    images = _floats(n=2000, side=4, seed=1)
    fraction = _changed(images, op(images, _gen(5))).float().mean().item()
    # binomial standard deviation at n = 2000 is <= 0.0112: +-0.04 is > 3.5 of them
    assert abs(fraction - p) < 0.04


@pytest.mark.parametrize("op", [RandomGrayscale(p=0.5), RandomSolarize(p=0.5),
                                RandomGaussianBlur(p=0.5, kernel_size=3)])
def test_same_seed_same_output_other_seed_differs(op: Op) -> None:
    images = _floats(n=32, side=6)
    first = op(images, _gen(1))
    assert torch.equal(first, op(images, _gen(1)))
    assert not torch.equal(first, op(images, _gen(2)))
    params = op.sample(images, _gen(1))
    assert all(value.shape[0] == 32 for value in params.values())  # one row per image


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(HundredError, match="probability"):
        build_augment([{"op": "grayscale", "p": 1.5}], 8)
    with pytest.raises(HundredError, match="odd"):
        build_augment([{"op": "blur", "kernel_size": 4}], 8)
    with pytest.raises(HundredError, match="sigma"):
        build_augment([{"op": "blur", "sigma": [2.0, 0.5]}], 8)
    assert build_augment([{"op": "blur", "sigma": [0.5, 1.0]}], 8).ops[0].sigma == (0.5, 1.0)


# --------------------------------------------------------------------------- presets and recipes


@pytest.mark.parametrize("side", [32, 96])
@pytest.mark.parametrize("preset", SSL_PRESETS)
def test_ssl_presets_make_float_views_of_uint8_batches(preset: str, side: int) -> None:
    assert preset in PRESETS
    images = _uint8(4, side)
    augment = build_augment(preset, side)
    out = augment(images, _gen(0))
    assert out.shape == (4, 3, side, side) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.equal(out, augment(images, _gen(0)))
    assert not torch.equal(out, augment(images, _gen(1)))


def test_presets_carry_the_papers_probabilities() -> None:
    def probability(preset: str, op: str) -> float:
        return next((step["p"] for step in PRESETS[preset] if step["op"] == op), 0.0)

    assert [probability("simclr", op) for op in ("jitter", "grayscale", "blur")] == [0.8, 0.2, 0.5]
    assert [probability("byol-view1", op) for op in ("blur", "solarize")] == [1.0, 0.0]
    assert [probability("byol-view2", op) for op in ("blur", "solarize")] == [0.1, 0.2]
    assert all(probability(preset, "blur") == 0.0 for preset in view_specs("simclr-small"))
    assert all(probability(preset, "blur") == 0.0 for preset in view_specs("byol-small"))


def test_view_specs_maps_recipes_and_rejects_unknown_ones() -> None:
    assert view_specs("byol") == ("byol-view1", "byol-view2")
    assert view_specs("simclr") == ("simclr", "simclr")
    with pytest.raises(HundredError, match="unknown self-supervised.*simclr"):
        view_specs("dino")


# --------------------------------------------------------------------------- in the loader


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 5, 40).astype(np.int64)


def _views(loader: BatchLoader) -> list[list[torch.Tensor]]:
    return [[view.clone() for view in views] for views, _ in loader]


def test_byol_loader_yields_two_different_pipelines_and_resumes_exactly(arrays) -> None:
    def make(specs: tuple[str, ...]) -> BatchLoader:
        return BatchLoader(arrays, 8, seed=4, view_augments=specs, mean=(0.5,) * 3, std=(0.5,) * 3)

    full = _views(make(view_specs("byol")))
    assert len(full) == 5 and all(len(views) == 2 for views in full)
    only_view1 = _views(make(("byol-view1", "byol-view1")))
    only_view2 = _views(make(("byol-view2", "byol-view2")))
    for (first, second), same1, same2 in zip(full, only_view1, only_view2):
        assert not torch.equal(first, second)
        assert torch.equal(first, same1[0]) and torch.equal(second, same2[1])  # each its own spec
        assert not torch.equal(second, same1[1])  # view 2 is not view 1's pipeline

    interrupted = make(view_specs("byol"))
    for step, _ in enumerate(interrupted):
        if step == 1:
            break
    resumed = make(view_specs("byol"))
    resumed.load_state_dict(interrupted.state_dict())
    rest = _views(resumed)
    assert len(rest) == 3
    assert all(torch.equal(a, b) for got, want in zip(rest, full[2:]) for a, b in zip(got, want))
