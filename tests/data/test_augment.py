"""Batched augmentation: determinism, geometry of each step, exact normalisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hundred.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    Augment,
    ColorJitter,
    RandomCrop,
    RandomFlip,
    RandomResizedCrop,
    build_augment,
    to_nchw,
)
from hundred.errors import HundredError


def _batch(n: int = 16, height: int = 20, width: int = 20, seed: int = 0) -> torch.Tensor:
    """Random uint8 images as packed: (N, H, W, 3)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, height, width, 3), dtype=torch.uint8, generator=generator)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_shape_dtype_and_determinism(preset: str) -> None:
    images = _batch(height=20, width=24)
    augment = build_augment(preset, 16)
    first = augment(images, _gen(1))
    assert first.shape == (16, 3, 16, 16)
    assert first.dtype == torch.float32 and first.is_contiguous()
    assert torch.equal(first, augment(images, _gen(1)))
    if preset != "none":
        assert not torch.equal(first, augment(images, _gen(2)))


def test_nchw_input_gives_the_same_result() -> None:
    images = _batch()
    augment = build_augment("rrc-flip-jitter", 16)
    assert torch.allclose(augment(images, _gen(3)), augment(images.permute(0, 3, 1, 2).contiguous(), _gen(3)))


def test_normalisation_is_exact_for_a_known_pixel() -> None:
    images = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    images[0] = 200
    images[1, 3, 5] = torch.tensor([10, 128, 255], dtype=torch.uint8)
    out = build_augment("none", 8)(images)
    for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):
        assert out[0, channel].sub((200 / 255 - mean) / std).abs().max() < 1e-5
        assert out[1, channel, 0, 0].item() == pytest.approx((0 - mean) / std, abs=1e-5)
        value = (10, 128, 255)[channel]
        assert out[1, channel, 3, 5].item() == pytest.approx((value / 255 - mean) / std, abs=1e-5)


def test_custom_mean_std_standardise_constant_channels() -> None:
    images = torch.full((4, 6, 6, 3), 51, dtype=torch.uint8)  # 51 / 255 = 0.2
    out = build_augment("crop-flip", 6, mean=(0.2, 0.2, 0.2), std=(0.5, 0.5, 0.5))(images, _gen(0))
    assert out.abs().max() < 1e-6


def test_flip_matches_torch_flip_where_flagged() -> None:
    images = to_nchw(_batch(n=64))
    flip = RandomFlip(p=0.5)
    params = flip.sample(images, _gen(4))
    out = flip.apply(images, params)
    flags = params["flip"]
    assert 0 < int(flags.sum()) < 64
    for i in range(64):
        expected = torch.flip(images[i], dims=[-1]) if flags[i] else images[i]
        assert torch.equal(out[i], expected)


@pytest.mark.parametrize("pad_mode,torch_mode", [("reflect", "reflect"), ("zeros", "constant")])
def test_pad_crop_is_a_window_of_the_padded_input(pad_mode: str, torch_mode: str) -> None:
    images = to_nchw(_batch(n=32, height=12, width=10))
    crop = RandomCrop(size=(12, 10), padding=3, pad_mode=pad_mode)
    params = crop.sample(images, _gen(5))
    out = crop.apply(images, params)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images.float(), (3, 3, 3, 3), mode=torch_mode)
    shifts = set()
    for i in range(32):
        dy, dx = int(params["dy"][i]), int(params["dx"][i])
        assert 0 <= dy <= 6 and 0 <= dx <= 6
        shifts.add((dy, dx))
        assert torch.equal(out[i].float(), padded[i, :, dy : dy + 12, dx : dx + 10])
    assert len(shifts) > 5  # per-sample offsets, not one per batch


@pytest.mark.parametrize("pad_mode", ["reflect", "zeros"])
def test_crop_with_folded_flip_mirrors_the_window(pad_mode: str) -> None:
    images = to_nchw(_batch(n=32, height=12, width=10))
    crop = RandomCrop(size=(10, 8), padding=2, pad_mode=pad_mode, hflip=0.5)
    params = crop.sample(images, _gen(9))
    flags = params["flip"]
    assert 0 < int(flags.sum()) < 32
    plain = crop.apply(images, {"dy": params["dy"], "dx": params["dx"]})
    expected = torch.where(flags[:, None, None, None], plain.flip(-1), plain)
    assert torch.equal(crop.apply(images, params), expected)


def test_random_resized_crop_with_folded_flip_mirrors_the_crop() -> None:
    images = to_nchw(_batch(n=32, height=24, width=30)).float() / 255
    rrc = RandomResizedCrop(size=(12, 14), hflip=0.5)
    params = rrc.sample(images, _gen(10))
    flags = params["flip"]
    assert 0 < int(flags.sum()) < 32
    plain = rrc.apply(images, {key: value for key, value in params.items() if key != "flip"})
    expected = torch.where(flags[:, None, None, None], plain.flip(-1), plain)
    assert torch.allclose(rrc.apply(images, params), expected, atol=1e-5)


def test_crop_to_a_smaller_size() -> None:
    out = RandomCrop(size=(8, 6), padding=0)(to_nchw(_batch(height=12, width=10)), _gen(0))
    assert out.shape == (16, 3, 8, 6)


def test_random_resized_crop_size_and_boxes() -> None:
    images = to_nchw(_batch(n=200, height=30, width=40)).float() / 255
    rrc = RandomResizedCrop(size=(12, 16), scale=(0.2, 0.9))
    params = rrc.sample(images, _gen(6))
    assert rrc.apply(images, params).shape == (200, 3, 12, 16)
    x0, y0, w, h = params["x0"], params["y0"], params["w"], params["h"]
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 40).all() and (y0 + h <= 30).all()
    area = w * h / (30 * 40)
    assert area.min() > 0.15 and area.max() < 0.95  # the scale range, up to pixel rounding
    assert len(set(zip(x0.tolist(), y0.tolist()))) > 50


def test_random_resized_crop_of_the_whole_image_is_the_identity() -> None:
    images = to_nchw(_batch(height=16, width=16)).float() / 255
    rrc = RandomResizedCrop(size=(16, 16), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(rrc(images, _gen(0)), images, atol=1e-5)


def test_color_jitter_with_zero_strength_is_the_identity() -> None:
    images = to_nchw(_batch()).float() / 255
    assert torch.equal(ColorJitter()(images, _gen(0)), images)
    pipeline = build_augment([{"op": "jitter", "brightness": 0, "hue": 0}], 20)
    assert torch.equal(pipeline(_batch(), _gen(0)), build_augment("none", 20)(_batch()))


def test_color_jitter_changes_samples_differently_and_stays_in_range() -> None:
    images = to_nchw(_batch()).float() / 255
    jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    params = jitter.sample(images, _gen(7))
    assert params["brightness"].unique().numel() == len(images)
    out = jitter.apply(images, params)
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, images)


def test_brightness_factor_multiplies() -> None:
    images = to_nchw(_batch()).float() / 255
    jitter = ColorJitter(brightness=0.5)
    params = jitter.sample(images, _gen(8))
    expected = (images * params["brightness"].view(-1, 1, 1, 1)).clamp(0, 1)
    assert torch.allclose(jitter.apply(images, params), expected, atol=1e-6)


def test_eval_view_is_a_centre_crop_or_identity() -> None:
    images = _batch(height=36, width=36)
    evaluate = build_augment("rrc-flip", 32, train=False)
    expected = build_augment("none", 32)(images[:, 2:34, 2:34])
    assert torch.allclose(evaluate(images), expected, atol=1e-6)
    same = build_augment("crop-flip", 36, train=False)
    assert torch.allclose(same(images), build_augment("none", 36)(images))
    assert evaluate(_batch(height=20, width=28)).shape == (16, 3, 32, 32)  # smaller input: resized


def test_spec_lists_and_errors() -> None:
    augment = build_augment(["flip", {"op": "rrc", "scale": [0.5, 1.0]}], (8, 12))
    assert isinstance(augment, Augment) and augment(_batch(), _gen(0)).shape == (16, 3, 8, 12)
    assert build_augment(augment, 99) is augment
    with pytest.raises(HundredError, match="unknown augmentation preset"):
        build_augment("rrc-flop", 8)
    with pytest.raises(HundredError, match="unknown augmentation step"):
        build_augment([{"op": "rotate"}], 8)
    with pytest.raises(HundredError, match="bad arguments"):
        build_augment([{"op": "flip", "probability": 0.3}], 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_is_deterministic() -> None:
    images = _batch().cuda()
    augment = build_augment("rrc-flip-jitter", 16)

    def run(seed: int) -> torch.Tensor:
        return augment(images, torch.Generator(device="cuda").manual_seed(seed))

    assert run(0).device.type == "cuda" and torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
