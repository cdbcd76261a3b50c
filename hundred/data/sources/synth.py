"""``synth100``: a built-in, procedurally generated 100-class RGB dataset (no files needed).

Why it exists: tests, the demo and CI need a dataset that is always there, costs seconds to
build, and still behaves like a real one — a small CNN learns it well but not perfectly, and
forgets old classes when trained task by task, so continual-learning and distillation code
can be exercised end to end without downloading ImageNet.

How it is made. A class is one combination of four attributes — a shape (disk, ring,
star ...), a texture (plain, striped, checkered ...), an object colour and a background —
so classes share attributes and a network must learn the combinations. The 1,920 possible
combinations are shuffled once by the seed; class ``c`` is the ``c``-th combination, so a
class's definition depends only on ``(seed, c)`` and ``classes=10`` gives the first ten
classes of the full set. Each sample then draws its own position, scale, rotation, texture
frequency and phase, colour jitter, a blotchy shaded background, an occasional distractor
shape and pixel noise. Sample ``i`` of a class is the same image whatever
``train_per_class``/``val_per_class`` are (per-sample draws are taken row by row from
streams seeded by ``(seed, class, split)``), so small sets are prefixes of the default one.
Images are rendered from signed-distance fields, vectorised over a whole class at a time.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hundred.data.dataset import ArraySplit, Dataset
from hundred.errors import HundredError

# Bump whenever the pixels a (seed, options) pair produces change, so packed copies can be
# told apart from freshly generated ones.
GENERATOR_VERSION = "synth100-v1"

SHAPES = ("disk", "square", "triangle", "ring", "cross", "star", "hexagon", "crescent")
TEXTURES = ("plain", "striped", "checkered", "dotted", "ringed", "speckled")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 40),
    "orange": (240, 140, 30),
    "yellow": (235, 215, 55),
    "green": (60, 170, 60),
    "teal": (30, 160, 160),
    "blue": (45, 80, 215),
    "purple": (135, 55, 180),
    "pink": (240, 125, 185),
    "white": (235, 235, 235),
    "brown": (125, 80, 40),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "dark": (35, 35, 40),
    "light": (200, 200, 195),
    "sand": (190, 160, 110),
    "sky": (110, 150, 205),
}
_GRID = (len(SHAPES), len(TEXTURES), len(COLOURS), len(BACKGROUNDS))
MAX_CLASSES = 1000  # fewer than the 1,920 combinations, so every class is distinct

_COLOUR_RGB = np.array(list(COLOURS.values()), dtype=np.float32)
_BACKGROUND_RGB = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
_SPLIT_CODES = {"train": 1, "val": 2}
_BLOTCH_GRID = 4  # the background's low-frequency blotches live on a 4x4 grid

# Per-sample parameters: one row of uniforms per sample (see _render for their meaning).
_P_CX, _P_CY, _P_SCALE, _P_ANGLE, _P_FREQ, _P_PHASE_X, _P_PHASE_Y = range(7)
_P_FG_JITTER = slice(7, 10)
_P_BRIGHTNESS, _P_TEX_CONTRAST = 10, 11
_P_BG_JITTER = slice(12, 15)
_P_GRAD_ANGLE, _P_GRAD_AMP = 15, 16
_P_DISTRACT, _P_D_SHAPE, _P_D_COLOUR, _P_D_X, _P_D_Y, _P_D_SCALE, _P_D_ANGLE = range(17, 24)
_P_NOISE = 24
_P_BLOTCH = slice(25, 25 + 3 * _BLOTCH_GRID**2)
_NUM_PARAMS = 25 + 3 * _BLOTCH_GRID**2

# Difficulty: colours of neighbouring names overlap under jitter, and small, faint or noisy
# samples are genuinely ambiguous. Tuned so that a 0.27M-parameter ResNet-style CNN reaches
# about 84 % val accuracy on the 100 classes after 12 epochs (60 % after 4), leaving headroom
# for bigger models and better methods. Ranges are (low, high) of a uniform draw per sample.
_OBJECT_SCALE = (0.2, 0.65)  # object radius, as a fraction of half the image
_DISTRACTOR_RATE = 0.6  # share of samples with a distractor shape behind the object
_DISTRACTOR_SCALE = (0.12, 0.35)
_COLOUR_JITTER = 55.0  # per channel, +- grey levels
_BRIGHTNESS = (0.65, 1.2)
_TEXTURE_CONTRAST = (0.25, 0.75)  # how much a texture darkens the object colour
_MAX_NOISE_STD = 29.0  # grey levels

# Rendering budget: about this many pixels are rendered at once (bounds memory at large res).
_CHUNK_PIXELS = 1 << 21


def open_synth100(
    argument: str | None,
    *,
    classes: int = 100,
    train_per_class: int = 500,
    val_per_class: int = 100,
    res: int = 32,
    seed: int = 0,
) -> Dataset:
    """Generate the synthetic dataset: ``classes`` classes of ``res`` x ``res`` RGB images.

    Train and val are independent draws from the same class distributions; both are sorted
    by class. The same options give bit-identical arrays (on one platform: numpy's SIMD
    maths may round a rare pixel differently on another CPU, hence the packed checksums).
    """
    if argument is not None:
        raise HundredError(f"synth100 takes no argument (got 'synth100:{argument}'); "
                           "use options such as classes=10 res=16")
    _check_range("classes", classes, 2, MAX_CLASSES)
    _check_range("train_per_class", train_per_class, 1, None)
    _check_range("val_per_class", val_per_class, 1, None)
    _check_range("res", res, 8, 512)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise HundredError(f"synth100 option seed={seed!r}: expected an integer >= 0")

    attributes = class_attributes(seed, classes)
    splits = {
        split: _generate_split(attributes, seed, split, per_class, res)
        for split, per_class in (("train", train_per_class), ("val", val_per_class))
    }
    return Dataset(
        name="synth100",
        class_ids=[f"s{c:03d}" for c in range(classes)],
        class_names=[_class_name(*attrs) for attrs in attributes],
        splits=splits,
        info={
            "seed": seed,
            "res": res,
            "classes": classes,
            "train_per_class": train_per_class,
            "val_per_class": val_per_class,
            "generator": GENERATOR_VERSION,
        },
    )


def class_attributes(seed: int, classes: int) -> list[tuple[int, int, int, int]]:
    """``(shape, texture, colour, background)`` indices of the first ``classes`` classes.

    The full combination grid is permuted once by the seed, so class ``c`` is the same
    whatever ``classes`` is, and no two classes share all four attributes.
    """
    order = np.random.default_rng([seed, 0]).permutation(int(np.prod(_GRID)))[:classes]
    return [tuple(int(i) for i in np.unravel_index(k, _GRID)) for k in order]  # type: ignore[misc]


def _class_name(shape: int, texture: int, colour: int, background: int) -> str:
    """E.g. ``"red striped disk on sky"``; a plain texture is left unsaid."""
    texture_word = "" if TEXTURES[texture] == "plain" else f"{TEXTURES[texture]} "
    return (f"{list(COLOURS)[colour]} {texture_word}{SHAPES[shape]} "
            f"on {list(BACKGROUNDS)[background]}")


def _check_range(name: str, value: object, low: int, high: int | None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high  # type: ignore[operator]
    if not ok:
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise HundredError(f"synth100 option {name}={value!r}: expected an integer {allowed}")


def _generate_split(
    attributes: list[tuple[int, int, int, int]], seed: int, split: str, per_class: int, res: int
) -> ArraySplit:
    images = np.empty((len(attributes) * per_class, res, res, 3), dtype=np.uint8)
    chunk = max(1, _CHUNK_PIXELS // (res * res))

    def render_class(c: int) -> None:
        # Three streams per (seed, class, split): parameter rows, pixel noise, speckle. Each
        # is consumed sample by sample in order, so sample i never depends on per_class.
        key = [seed, c, _SPLIT_CODES[split]]
        params = np.random.default_rng(key + [0]).random((per_class, _NUM_PARAMS), np.float32)
        noise_rng, speckle_rng = (np.random.default_rng(key + [k]) for k in (1, 2))
        for start in range(0, per_class, chunk):
            stop = min(start + chunk, per_class)
            images[c * per_class + start: c * per_class + stop] = _render(
                attributes[c], params[start:stop], noise_rng, speckle_rng, res)

    # Classes are independent and numpy releases the GIL inside its array loops, so classes
    # render in parallel on several cores without changing a single pixel.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(render_class, range(len(attributes))))
    labels = np.repeat(np.arange(len(attributes), dtype=np.int64), per_class)
    return ArraySplit(images=images, labels=labels)


def _render(
    attrs: tuple[int, int, int, int], p: np.ndarray, noise_rng: np.random.Generator,
    speckle_rng: np.random.Generator, res: int,
) -> np.ndarray:
    """Render one batch of samples of one class; ``p`` holds one row of uniforms per sample.

    Masks and weights are computed on single-channel arrays and the colours are mixed in
    one pass at the end, because passes over (n, res, res, 3) floats dominate the cost.
    """
    shape, texture, colour, background = attrs
    n = len(p)
    col = lambda k: p[:, k, None, None]  # noqa: E731 - a (n, 1, 1) view of parameter k
    grid = (np.arange(res, dtype=np.float32) + 0.5) / res * 2 - 1  # pixel centres in [-1, 1]
    gx, gy = grid[None, None, :], grid[None, :, None]

    # Background: a jittered base colour plus a shading ramp and colour blotches, all set on
    # a coarse grid and upsampled (upsampling is linear, so this equals adding them after).
    nodes = (np.arange(_BLOTCH_GRID, dtype=np.float32) + 0.5) / _BLOTCH_GRID * 2 - 1
    ramp_angle = col(_P_GRAD_ANGLE) * 2 * np.pi
    ramp = (np.cos(ramp_angle) * nodes[None, None, :] + np.sin(ramp_angle) * nodes[None, :, None]
            ) * (col(_P_GRAD_AMP) * 50)
    blotch = p[:, _P_BLOTCH].reshape(n, _BLOTCH_GRID, _BLOTCH_GRID, 3) - 0.5
    bg_rgb = _BACKGROUND_RGB[background] + (p[:, _P_BG_JITTER] - 0.5) * 60
    background_image = _upsample(bg_rgb[:, None, None, :] + ramp[..., None] + blotch * 70, res)

    # A distractor (in some samples): a small plain shape of any kind and colour, drawn
    # behind the object so that "which shape is the object" must be learnt, not assumed.
    d_scale = _between(_DISTRACTOR_SCALE, col(_P_D_SCALE))
    dx, dy = _object_frame(gx, gy, col(_P_D_X) * 1.6 - 0.8, col(_P_D_Y) * 1.6 - 0.8,
                           col(_P_D_ANGLE) * 2 * np.pi, d_scale)
    d_shape = (p[:, _P_D_SHAPE] * len(SHAPES)).astype(int)
    d_dist = np.empty_like(dx)
    for s in np.unique(d_shape):
        d_dist[d_shape == s] = _shape_sdf(int(s), dx[d_shape == s], dy[d_shape == s])
    d_alpha = _coverage(d_dist, d_scale, res) * (col(_P_DISTRACT) < _DISTRACTOR_RATE)
    d_rgb = _COLOUR_RGB[(p[:, _P_D_COLOUR] * len(COLOURS)).astype(int)]

    # The object: class shape and texture (which darkens the colour), random pose.
    scale = _between(_OBJECT_SCALE, col(_P_SCALE))
    x, y = _object_frame(gx, gy, (col(_P_CX) - 0.5) * 0.7, (col(_P_CY) - 0.5) * 0.7,
                         col(_P_ANGLE) * 2 * np.pi, scale)
    alpha = _coverage(_shape_sdf(shape, x, y), scale, res)
    speckle = speckle_rng.random((n, res, res), dtype=np.float32)
    pattern = _texture(TEXTURES[texture], x, y, col(_P_FREQ) * 0.5 + 0.8,
                       col(_P_PHASE_X), col(_P_PHASE_Y), speckle)
    shade = 1 - _between(_TEXTURE_CONTRAST, col(_P_TEX_CONTRAST)) * pattern
    fg_rgb = (_COLOUR_RGB[colour] + (p[:, _P_FG_JITTER] - 0.5) * (2 * _COLOUR_JITTER)) * (
        _between(_BRIGHTNESS, p[:, _P_BRIGHTNESS, None]))

    # Composite, background under distractor under object, plus uniform pixel noise.
    # Channel-planar, so each product is a (n, res, res) plane times a per-sample scalar:
    # numpy is several times slower broadcasting over a last axis of 3.
    w_background = (1 - d_alpha) * (1 - alpha)
    w_distractor = d_alpha * (1 - alpha)
    w_object = alpha * shade
    noise = noise_rng.integers(0, 256, (n, 3, res, res), dtype=np.uint8).astype(np.float32)
    noise -= 127.5
    noise *= col(_P_NOISE)[:, None] * (_MAX_NOISE_STD * np.sqrt(12) / 255)
    image = background_image
    for ch in range(3):
        plane = image[:, ch]
        plane *= w_background
        plane += w_distractor * d_rgb[:, ch, None, None]
        plane += w_object * fg_rgb[:, ch, None, None]
        plane += noise[:, ch]
    image += 0.5  # round to nearest on the cast below
    np.clip(image, 0, 255, out=image)
    return image.transpose(0, 2, 3, 1).astype(np.uint8)


def _between(bounds: tuple[float, float], u: np.ndarray) -> np.ndarray:
    """Map uniforms in [0, 1) onto the range ``bounds``."""
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _object_frame(
    gx: np.ndarray, gy: np.ndarray, cx: np.ndarray, cy: np.ndarray, angle: np.ndarray,
    scale: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in each object's own frame: centred, unrotated, radius ~1."""
    cos, sin = np.cos(angle), np.sin(angle)
    dx, dy = gx - cx, gy - cy
    return (cos * dx + sin * dy) / scale, (cos * dy - sin * dx) / scale


def _coverage(distance: np.ndarray, scale: np.ndarray, res: int) -> np.ndarray:
    """Anti-aliased coverage from a signed distance in object units (negative = inside)."""
    return np.clip(0.5 - distance * scale * (res / 2), 0, 1)


def _polygon(x: np.ndarray, y: np.ndarray, sides: int, apothem: float) -> np.ndarray:
    """Signed distance (exact inside, close outside) to a regular polygon."""
    distance = np.full_like(x, -np.inf)
    for k in range(sides):
        angle = np.pi / 2 + 2 * np.pi * k / sides
        np.maximum(distance, np.cos(angle) * x + np.sin(angle) * y, out=distance)
    return distance - apothem


def _shape_sdf(shape: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance to shape ``shape`` (an index into SHAPES), about unit radius."""
    name = SHAPES[shape]
    r = np.sqrt(x * x + y * y)
    if name == "disk":
        return r - 0.9
    if name == "square":
        return np.maximum(np.abs(x), np.abs(y)) - 0.75
    if name == "triangle":
        return _polygon(x, y, 3, 0.5)
    if name == "ring":
        return np.abs(r - 0.68) - 0.3
    if name == "cross":
        ax, ay = np.abs(x), np.abs(y)
        return np.minimum(np.maximum(ax - 0.95, ay - 0.32), np.maximum(ax - 0.32, ay - 0.95))
    if name == "star":
        # Five points: the radius oscillates with the polar angle; divided by the largest
        # slope so the value stays close to a true distance.
        return (r - 0.6 - 0.38 * np.cos(5 * np.arctan2(y, x))) / 2
    if name == "hexagon":
        return _polygon(x, y, 6, 0.82)
    if name == "crescent":
        return np.maximum(r - 0.95, 0.75 - np.sqrt((x - 0.45) ** 2 + y * y))
    raise ValueError(name)


def _texture(
    name: str, x: np.ndarray, y: np.ndarray, freq: np.ndarray, phase_x: np.ndarray,
    phase_y: np.ndarray, speckle: np.ndarray,
) -> np.ndarray:
    """Texture intensity in [0, 1] in the object's frame (it turns with the object)."""
    two_pi = 2 * np.pi
    if name == "plain":
        return np.zeros_like(x)
    if name == "striped":
        return (np.sin(two_pi * (1.6 * freq * x + phase_x)) > 0).astype(np.float32)
    if name == "checkered":
        return (np.sin(two_pi * (1.3 * freq * x + phase_x))
                * np.sin(two_pi * (1.3 * freq * y + phase_y)) > 0).astype(np.float32)
    if name == "dotted":
        fx = (2.2 * freq * x + phase_x) % 1 - 0.5
        fy = (2.2 * freq * y + phase_y) % 1 - 0.5
        return (fx * fx + fy * fy < 0.09).astype(np.float32)
    if name == "ringed":
        return (np.sin(two_pi * (2.2 * freq * np.sqrt(x * x + y * y) + phase_x)) > 0).astype(
            np.float32)
    if name == "speckled":
        return (speckle < 0.4).astype(np.float32)
    raise ValueError(name)


def _upsample(coarse: np.ndarray, res: int) -> np.ndarray:
    """Bilinear upsampling of ``(n, g, g, 3)`` to channel-planar ``(n, 3, res, res)``."""
    g = coarse.shape[1]
    pos = np.clip((np.arange(res) + 0.5) / res * g - 0.5, 0, g - 1)
    low = np.minimum(pos.astype(int), g - 2)
    weight = np.zeros((res, g), dtype=np.float32)
    weight[np.arange(res), low] = 1 - (pos - low)
    weight[np.arange(res), low + 1] = pos - low
    n = len(coarse)
    planes = coarse.transpose(0, 3, 1, 2).reshape(n * 3, g * g)
    return (planes @ np.kron(weight, weight).T).reshape(n, 3, res, res)
