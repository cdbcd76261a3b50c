"""Small image trees generated on the fly: good images, and every kind of bad one packing meets."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, seed-dependent RGB image (smooth so that resampling differences stay small)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = seed * 0.7
    channels = [
        127.5 + 127.5 * np.sin(x / max(width, 1) * np.pi * 2 + phase),
        127.5 + 127.5 * np.cos(y / max(height, 1) * np.pi * 2 + phase),
        (x + y) / max(width + height - 2, 1) * 255.0,
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def write_image(path: Path, width: int = 40, height: int = 30, *, mode: str = "RGB",
                fmt: str = "JPEG", seed: int = 0) -> Path:
    """Write a gradient image in ``mode`` and ``fmt`` at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(gradient(width, height, seed), mode="RGB")
    if mode == "RGBA":
        alpha = np.full((height, width), 255, dtype=np.uint8)
        alpha[:, : width // 2] = 0  # left half fully transparent
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray(alpha, mode="L"))
    elif mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def huge_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A PNG of a few dozen bytes whose header claims ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # Signature (8) | length (4) | b"IHDR" (4) | width, height (4 + 4) ... | crc (4)
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def truncated_jpeg(path: Path) -> Path:
    """A noisy JPEG cut to half its bytes (noise: so the cut lands inside the scan data)."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buffer, format="JPEG", quality=95)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def make_tree(root: Path, classes: list[str], train: int = 3, val: int = 1,
              size: tuple[int, int] = (40, 30)) -> Path:
    """``root/{train,val}/<class>/<i>.jpg`` of gradient JPEGs; returns ``root``."""
    for index, name in enumerate(classes):
        for split, count in (("train", train), ("val", val)):
            for i in range(count):
                write_image(root / split / name / f"{i:03d}.jpg", *size, seed=index * 10 + i)
    return root


class ImageMaker:
    """The writers above, handed to tests as the ``images`` fixture.

    (Tests cannot import from a ``conftest.py`` reliably: every test folder has one.)
    """

    write = staticmethod(write_image)
    huge_png = staticmethod(huge_png)
    truncated_jpeg = staticmethod(truncated_jpeg)
    gradient = staticmethod(gradient)


@pytest.fixture
def images() -> type[ImageMaker]:
    """Image writers: ``images.write(path, w, h, mode=..., fmt=...)``, ``images.huge_png(path)``."""
    return ImageMaker


@pytest.fixture
def tree_factory(tmp_path: Path) -> Callable[..., Path]:
    """``tree_factory(classes, train=3, val=1, name="tree")`` -> a fresh image tree."""
    def factory(classes: list[str], train: int = 3, val: int = 1, name: str = "tree",
                size: tuple[int, int] = (40, 30)) -> Path:
        return make_tree(tmp_path / name, classes, train, val, size)

    return factory


@pytest.fixture
def messy_tree(tmp_path: Path) -> Path:
    """Two classes with good, convertible and broken files, as ImageNet-sized trees contain.

    ``good``: RGB JPEG, greyscale JPEG, CMYK JPEG, RGBA PNG, palette PNG (all must pack);
    ``bad``: truncated JPEG, zero-byte file, text named .jpg, a 100000x100000 PNG header
    (all must be skipped), plus a hidden ``.DS_Store`` that must not even be listed.
    """
    root = tmp_path / "messy"
    good = root / "train" / "good"
    write_image(good / "a_rgb.jpg")
    write_image(good / "b_gray.jpg", mode="L")
    write_image(good / "c_cmyk.jpg", mode="CMYK")
    write_image(good / "d_rgba.png", mode="RGBA", fmt="PNG")
    write_image(good / "e_palette.png", mode="P", fmt="PNG")
    bad = root / "train" / "bad"
    write_image(bad / "a_fine.jpg", seed=3)
    truncated_jpeg(bad / "b_truncated.jpg")
    (bad / "c_empty.jpg").write_bytes(b"")
    (bad / "d_text.jpg").write_text("this is not an image\n")
    huge_png(bad / "e_huge.png")
    (bad / ".DS_Store").write_bytes(b"\x00\x01junk")
    write_image(root / "val" / "good" / "v.jpg", seed=5)
    write_image(root / "val" / "bad" / "v.jpg", seed=6)
    return root
