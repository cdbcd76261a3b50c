"""scikit-learn's bundled handwritten digits as a small real 10-class RGB dataset.

Real data with no download: 1797 8x8 grey images (values 0..16) ship inside scikit-learn.
They make a quick sanity check that a method learns something on real images, on a CPU, in
seconds. The images are scaled to uint8 0..255, resized to ``res`` (bilinear), repeated into
three identical channels, and split train/val by a seeded stratified split, so that every
run with the same options sees exactly the same split.
"""

from __future__ import annotations

import numpy as np

from hundred.data.dataset import ArraySplit, Dataset
from hundred.errors import HundredError

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_MAX_RES = 1024


def _resize_grey(images: np.ndarray, res: int) -> np.ndarray:
    """Bilinear resize of ``(N, h, w)`` uint8 grey images to ``(N, res, res)``."""
    if images.shape[1:] == (res, res):
        return images
    from PIL import Image

    bilinear = Image.Resampling.BILINEAR
    resized = [np.asarray(Image.fromarray(img).resize((res, res), bilinear)) for img in images]
    return np.stack(resized)


def open_digits(
    argument: str | None, *, res: int = 32, val_fraction: float = 0.25, seed: int = 0
) -> Dataset:
    """The digits dataset at ``res`` x ``res``; ``val_fraction`` of each class is held out.

    The split is stratified (each class keeps its share in both splits) and depends only on
    ``seed``; samples keep their original order within each split.
    """
    if argument:
        raise HundredError(f"source digits takes no argument, got {argument!r}")
    if isinstance(res, bool) or not isinstance(res, int) or not 1 <= res <= _MAX_RES:
        raise HundredError(f"digits option res={res!r}: expected an integer in 1..{_MAX_RES}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 < val_fraction < 1.0:
        raise HundredError(
            f"digits option val_fraction={val_fraction!r}: expected a number strictly "
            f"between 0 and 1"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise HundredError(f"digits option seed={seed!r}: expected an integer in 0..2**32-1")

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    # Values are integers 0..16; 255/16 maps them onto the full uint8 range.
    grey = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    rgb = np.repeat(_resize_grey(grey, res)[..., None], 3, axis=-1)

    indices = np.arange(len(labels))
    try:
        train_idx, val_idx = train_test_split(
            indices, test_size=float(val_fraction), random_state=seed, stratify=labels
        )
    except ValueError as error:  # e.g. a fraction too small to hold one sample per class
        raise HundredError(f"digits option val_fraction={val_fraction!r}: {error}") from None
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)

    return Dataset(
        name="digits",
        class_ids=[str(digit) for digit in range(10)],
        class_names=list(CLASS_NAMES),
        splits={
            "train": ArraySplit(rgb[train_idx], labels[train_idx]),
            "val": ArraySplit(rgb[val_idx], labels[val_idx]),
        },
        info={"res": res, "seed": seed, "val_fraction": float(val_fraction),
              "origin": "sklearn.datasets.load_digits"},
    )
