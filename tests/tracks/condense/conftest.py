"""Tiny fixtures of the condense track: a random 4-class training split at 8 px on the CPU,
its RealImages, and a CondenseContext built by hand (DSA off, a width-8 ConvNet-D3)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from rich.console import Console

from hundred.config import RunConfig, build_config
from hundred.data import ArraySplit, Dataset
from hundred.tracks.condense.method import CondenseContext
from hundred.tracks.condense.synthetic import RealImages, SyntheticSet

NUM_CLASSES = 4
PER_CLASS = 3
SIZE = 8
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def condense_config(*overrides: str) -> RunConfig:
    """A condense-track config (``track=condense``, a width-8 ConvNet-D3) plus ``overrides``."""
    return build_config(overrides=["track=condense", "method=dm", "model.name=convnet_d3",
                                   "model.options={width: 8}", *overrides])


def random_split(per_class: int = PER_CLASS, seed: int = 0) -> ArraySplit:
    """``per_class`` random 8 px images of each of the 4 classes (labels in class blocks)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(NUM_CLASSES * per_class, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class)
    return ArraySplit(images, labels)


@pytest.fixture
def make_context(tmp_path: Path) -> Callable[..., CondenseContext]:
    """``make_context(*overrides, per_class=3)``: a CondenseContext on the CPU with DSA off."""

    def make(*overrides: str, per_class: int = PER_CLASS) -> CondenseContext:
        config = condense_config(*overrides)
        split = random_split(per_class)
        names = [f"class{c}" for c in range(NUM_CLASSES)]
        dataset = Dataset(name="tiny", class_ids=names, class_names=names,
                          splits={"train": split})
        device = torch.device("cpu")
        real = RealImages(split, NUM_CLASSES, SIZE, device, MEAN, STD)
        return CondenseContext(config=config, device=device, dataset=dataset, real=real,
                               image_size=SIZE, run_dir=tmp_path, console=Console(quiet=True),
                               dsa=None)

    return make


def _whole_classes(ctx: CondenseContext) -> SyntheticSet:
    indices = torch.cat(ctx.real.class_indices)
    return SyntheticSet(ctx.real.take(indices), ctx.real.labels[indices])


def _random_set(ipc: int, seed: int = 1) -> SyntheticSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(NUM_CLASSES * ipc, 3, SIZE, SIZE, generator=generator)
    return SyntheticSet(images, torch.arange(NUM_CLASSES).repeat_interleave(ipc))


@pytest.fixture
def whole_classes() -> Callable[[CondenseContext], SyntheticSet]:
    """``whole_classes(ctx)``: a synthetic set that is exactly every real image of ``ctx``
    (ipc = images per class, in class order)."""
    return _whole_classes


@pytest.fixture
def random_set() -> Callable[..., SyntheticSet]:
    """``random_set(ipc, seed=1)``: ``ipc`` Gaussian-noise images per class."""
    return _random_set
