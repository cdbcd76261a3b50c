"""Differentiable Siamese Augmentation against its defining claims, on tiny CPU batches: the
same transformation reaches the real and the synthetic batch, the gradient reaches the
synthetic pixels through every family, each family does what it says on a hand-made image,
and the global torch RNG alone decides the draw."""

import math

import pytest
import torch

from hundred.errors import HundredError
from hundred.tracks.condense.dsa import DEFAULT_STRATEGY, DSA, DSAParams, FAMILIES


def _images(count: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _params(family: str, **values: list) -> DSAParams:
    return DSAParams(family, {name: torch.tensor(rows) for name, rows in values.items()})


# ------------------------------------------------------------------------------- strategy


def test_unknown_family_is_a_clear_error_naming_the_valid_ones():
    with pytest.raises(HundredError) as error:
        DSA("color_blur_flip")
    message = str(error.value)
    assert "'blur'" in message and all(name in message for name in FAMILIES)
    with pytest.raises(HundredError):
        DSA("")


def test_one_family_per_call_drawn_uniformly_over_the_strategy():
    torch.manual_seed(0)
    dsa = DSA()
    drawn = [dsa.sample(2).family for _ in range(300)]
    assert set(drawn) == set(FAMILIES)
    assert all(drawn.count(name) > 20 for name in FAMILIES)  # 50 expected each
    only = DSA("flip_rotate")
    assert {only.sample(2).family for _ in range(50)} == {"flip", "rotate"}


# ------------------------------------------------------------------------------- Siamese


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_siamese_gives_image_i_of_both_batches_the_same_transformation(family, per_sample):
    torch.manual_seed(1)
    dsa = DSA(family, siamese_per_sample=per_sample)
    real = _images(6)
    synthetic = real[:3].clone()
    real_out, synthetic_out = dsa.siamese(real, synthetic)
    assert real_out.shape == real.shape and synthetic_out.shape == synthetic.shape
    assert torch.allclose(real_out[:3], synthetic_out, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_siamese_default_applies_one_transformation_to_every_image(family):
    """The official code's Siamese mode: all images of both batches share the parameters."""
    torch.manual_seed(2)
    same = _images(1).expand(5, -1, -1, -1).contiguous()
    real_out, synthetic_out = DSA(family).siamese(same, same[:2].clone())
    assert torch.allclose(real_out, real_out[:1].expand_as(real_out), atol=1e-6)
    assert torch.allclose(synthetic_out, real_out[:2], atol=1e-6)


def test_per_sample_siamese_and_plain_calls_draw_per_image_and_differ_between_calls():
    torch.manual_seed(3)
    same = _images(1).expand(4, -1, -1, -1).contiguous()
    real_out, _ = DSA("rotate", siamese_per_sample=True).siamese(same, same[:2].clone())
    assert not torch.allclose(real_out[0], real_out[1])      # own angle per index
    dsa = DSA("rotate")
    first, second = dsa(same), dsa(same)
    assert not torch.allclose(first[0], first[1])              # plain call: per image
    assert not torch.allclose(first, second)                   # independent calls differ
    assert not torch.allclose(dsa.siamese(same, same)[0], dsa.siamese(same, same)[0])


def test_apply_uses_the_first_entries_and_refuses_a_larger_batch():
    dsa = DSA("rotate")
    params = _params("rotate", angle=[0.0, math.pi / 2, 0.3])
    images = _images(2)
    out = dsa.apply(images, params)
    assert torch.allclose(out[0], images[0], atol=1e-6)                   # angle 0
    assert torch.allclose(out[1], torch.rot90(images[1], 1, (-2, -1)), atol=1e-5)
    assert torch.allclose(dsa.apply(images[1:], params), images[1:], atol=1e-6)  # row 0
    with pytest.raises(ValueError, match="3 images"):
        dsa.apply(_images(4), params)


# ------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_reaches_the_synthetic_pixels_through_every_family(family):
    torch.manual_seed(4)
    dsa = DSA(family)
    synthetic = _images(3, seed=1).requires_grad_(True)
    real_out, synthetic_out = dsa.siamese(_images(5), synthetic)
    weights = _images(3, seed=2)
    ((synthetic_out * weights).sum() + real_out.sum()).backward()
    grad = synthetic.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # each image receives gradient (cutout removes at most a quarter of the pixels)
    assert (grad.flatten(1).abs().sum(1) > 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_transformation_is_exactly_differentiable_in_the_pixels(family):
    """Every DSA transformation is affine in the pixels: the analytic gradient matches finite
    differences (double precision)."""
    torch.manual_seed(5)
    dsa = DSA(family)
    params = dsa.sample(2)
    images = _images(2, size=6).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: dsa.apply(x, params), (images,))


# --------------------------------------------------------------------- each family's effect


def test_flip_mirrors_a_left_right_gradient_where_drawn():
    ramp = torch.arange(8.0).expand(2, 3, 8, 8).contiguous()
    out = DSA("flip").apply(ramp, _params("flip", flip=[True, False]))
    assert torch.equal(out[0], ramp[0].flip(-1)) and torch.equal(out[1], ramp[1])
    torch.manual_seed(6)
    rate = DSA("flip").sample(2000).values["flip"].float().mean()
    assert 0.45 < rate < 0.55


def _translated(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[i, j] = image[i + dy, j + dx]``, zero where that falls outside."""
    out = torch.zeros_like(image)
    height, width = image.shape[-2:]
    for i in range(height):
        for j in range(width):
            if 0 <= i + dy < height and 0 <= j + dx < width:
                out[:, i, j] = image[:, i + dy, j + dx]
    return out


def test_crop_translates_by_whole_pixels_up_to_an_eighth_of_the_side_with_zero_fill():
    size, limit = 16, 2                       # round(0.125 * 16)
    image = torch.arange(1.0, 3 * size * size + 1).reshape(3, size, size)
    torch.manual_seed(7)
    dsa = DSA("crop")
    out = dsa.apply(image.expand(300, -1, -1, -1).contiguous(), dsa.sample(300))
    candidates = {(dy, dx): _translated(image, dy, dx)
                  for dy in range(-limit, limit + 1) for dx in range(-limit, limit + 1)}
    seen = set()
    for sample in out:
        matches = [shift for shift, expected in candidates.items() if torch.equal(sample, expected)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(candidates)            # every shift in [-2, 2]^2 occurs


def test_cutout_zeroes_one_clipped_half_side_square_and_keeps_the_rest():
    torch.manual_seed(8)
    dsa = DSA("cutout")
    ones = torch.ones(200, 3, 8, 8)
    out = dsa.apply(ones, dsa.sample(200))
    assert ((out == 0) | (out == 1)).all()
    full_squares = 0
    for sample in out:
        cut = sample[0] == 0
        assert (cut == (sample == 0)).all()  # the same square in every channel
        rows, cols = cut.any(1).nonzero().flatten(), cut.any(0).nonzero().flatten()
        assert 2 <= len(rows) <= 4 and 2 <= len(cols) <= 4   # 4x4, clipped at the border
        assert cut.sum() == len(rows) * len(cols)             # a rectangle
        assert (rows.diff() == 1).all() and (cols.diff() == 1).all()
        full_squares += int(cut.sum() == 16)
    assert full_squares > 0


def test_rotate_zero_is_identity_and_quarter_turn_is_anticlockwise():
    dsa = DSA("rotate")
    images = _images(2)
    assert torch.allclose(dsa.apply(images, _params("rotate", angle=[0.0, 0.0])), images,
                          atol=1e-6)
    quarter = dsa.apply(images, _params("rotate", angle=[math.pi / 2, -math.pi / 2]))
    assert torch.allclose(quarter[0], torch.rot90(images[0], 1, (-2, -1)), atol=1e-5)
    assert torch.allclose(quarter[1], torch.rot90(images[1], -1, (-2, -1)), atol=1e-5)
    torch.manual_seed(9)
    angles = dsa.sample(500).values["angle"]
    assert angles.abs().max() <= math.radians(15) and angles.abs().max() > math.radians(13)


def test_scale_one_is_identity_and_two_shrinks_the_image_into_the_centre():
    dsa = DSA("scale")
    images = _images(1)
    assert torch.allclose(dsa.apply(images, _params("scale", scale_x=[1.0], scale_y=[1.0])),
                          images, atol=1e-6)
    shrunk = dsa.apply(torch.ones(1, 3, 8, 8), _params("scale", scale_x=[2.0], scale_y=[2.0]))
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 2:6] = True
    assert torch.allclose(shrunk[0][:, inside], torch.ones(1))
    assert (shrunk[0][:, ~inside] == 0).all()
    wide = dsa.apply(torch.ones(1, 3, 8, 8), _params("scale", scale_x=[2.0], scale_y=[1.0]))
    assert (wide[0, :, :, 2:6] == 1).all() and (wide[0, :, :, :2] == 0).all()  # x only
    torch.manual_seed(10)
    factors = torch.cat(list(dsa.sample(500).values.values()))
    assert factors.min() >= 1 / 1.2 and factors.max() <= 1.2
    assert factors.min() < 0.85 and factors.max() > 1.15


def test_color_shifts_brightness_and_scales_saturation_and_contrast():
    dsa = DSA("color")
    images = _images(1)

    def color(brightness: float, saturation: float, contrast: float) -> torch.Tensor:
        return dsa.apply(images, _params("color", brightness=[brightness],
                                         saturation=[saturation], contrast=[contrast]))

    assert torch.allclose(color(0.3, 1.0, 1.0), images + 0.3, atol=1e-6)   # not clamped
    grey = color(0.0, 0.0, 1.0)
    assert torch.allclose(grey, images.mean(1, keepdim=True).expand_as(images), atol=1e-6)
    half = color(0.0, 1.0, 0.5)
    assert torch.allclose(half.mean(), images.mean(), atol=1e-6)
    assert torch.allclose(half - half.mean(), (images - images.mean()) * 0.5, atol=1e-6)
    torch.manual_seed(11)
    drawn = dsa.sample(1000).values
    for name, (low, high) in {"brightness": (-0.5, 0.5), "saturation": (0.0, 2.0),
                              "contrast": (0.5, 1.5)}.items():
        assert drawn[name].min() >= low and drawn[name].max() <= high
        assert drawn[name].max() - drawn[name].min() > 0.9 * (high - low)


# ------------------------------------------------------------------------------ randomness


def test_the_global_rng_state_alone_decides_the_augmentation():
    dsa = DSA(DEFAULT_STRATEGY)
    real, synthetic = _images(6), _images(3, seed=1)

    def run() -> list[torch.Tensor]:
        outputs = []
        for _ in range(8):
            outputs.extend(dsa.siamese(real, synthetic))
            outputs.append(dsa(real))
        return outputs

    torch.manual_seed(12)
    first = run()
    state = torch.get_rng_state()
    after = run()
    torch.manual_seed(12)
    assert all(torch.equal(a, b) for a, b in zip(first, run()))
    torch.set_rng_state(state)                 # resume mid-run redraws exactly
    assert all(torch.equal(a, b) for a, b in zip(after, run()))
    torch.manual_seed(13)
    assert not all(torch.equal(a, b) for a, b in zip(first, run()))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_familys_parameters_come_from_the_global_rng(family):
    def draw(seed: int) -> DSAParams:
        torch.manual_seed(seed)
        return DSA(family).sample(64)

    def same(a: DSAParams, b: DSAParams) -> bool:
        return all(torch.equal(a.values[name], b.values[name]) for name in a.values)

    assert same(draw(0), draw(0)) and not same(draw(0), draw(1))
