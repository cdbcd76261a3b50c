"""Image grids that runs write into their directories (``ReportSpec.images``), e.g. a
learned synthetic set or samples drawn from a model. Reports copy them next to their
tables (:func:`hundred.report.plots.run_image`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_grid(images: np.ndarray, labels: np.ndarray, path: Path, max_per_class: int = 10,
              max_classes: int = 20) -> None:
    """A PNG grid of NHWC uint8 ``images``: one row per class (the first ``max_classes``),
    up to ``max_per_class`` images each; written atomically."""
    from PIL import Image

    from hundred.io import atomic_open

    classes = sorted(set(int(label) for label in labels))[:max_classes]
    rows = [images[labels == label][:max_per_class] for label in classes]
    columns = max(len(row) for row in rows)
    height, width = images.shape[1:3]
    pad = 1
    canvas = np.full((len(rows) * (height + pad) + pad, columns * (width + pad) + pad, 3), 255,
                     dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            canvas[top:top + height, left:left + width] = image
    scale = max(1, 64 // height)
    picture = Image.fromarray(canvas)
    if scale > 1:
        picture = picture.resize((canvas.shape[1] * scale, canvas.shape[0] * scale),
                                 Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        picture.save(handle, format="PNG")
