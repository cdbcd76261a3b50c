"""The two shapes a dataset takes in hundred.

A *source* (synthetic, digits, CIFAR files, an image folder) produces a :class:`Dataset`
whose splits are either decoded arrays in memory (:class:`ArraySplit`) or files still to be
decoded (:class:`FileSplit`). Packing turns every split into uint8 arrays on disk; loading a
packed directory gives a :class:`Dataset` of memory-mapped :class:`ArraySplit` s, which the
batch loader reads by index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hundred.errors import HundredError

SPLITS = ("train", "val")


class MissingSplit(HundredError, KeyError):
    """A split a dataset does not have: a user-facing error (the CLI prints one line), and
    still a ``KeyError`` for code that catches one."""

    __str__ = BaseException.__str__  # the message, not KeyError's repr of it


class NotDecoded(HundredError, TypeError):
    """A split that is still image files where decoded arrays are needed (pack it first)."""


@dataclass(frozen=True)
class ArraySplit:
    """Decoded images ``(N, H, W, 3)`` uint8 (in memory or memory-mapped) and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"{len(self.images)} images but labels of shape {self.labels.shape}")
        _check_label_dtype(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def resolution(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])


@dataclass(frozen=True)
class FileSplit:
    """Image files still to be decoded, one label per file."""

    files: list[Path]
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.labels.shape != (len(self.files),):
            raise ValueError(f"{len(self.files)} files but labels of shape {self.labels.shape}")
        _check_label_dtype(self.labels)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    """A labelled image dataset: class ids (e.g. wnids), human-readable names, and splits.

    ``skipped`` lists inputs that were left out, each ``{"file": ..., "reason": ...}``;
    ``info`` holds source-specific facts worth recording (seed, class list, resolution).
    """

    name: str
    class_ids: list[str]
    class_names: list[str]
    splits: dict[str, ArraySplit | FileSplit]
    skipped: list[dict[str, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.class_ids) != len(self.class_names):
            raise ValueError("class_ids and class_names differ in length")
        for name, split in self.splits.items():
            problem = labels_outside(split.labels, self.num_classes)
            if problem:
                raise HundredError(f"{self.name}/{name}: {problem}")

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def is_decoded(self) -> bool:
        return all(isinstance(split, ArraySplit) for split in self.splits.values())

    def arrays(self, split: str) -> ArraySplit:
        """The decoded arrays of ``split``; a clear error if it is missing or not decoded."""
        if split not in self.splits:
            raise MissingSplit(f"{self.name} has no split {split!r} (has {sorted(self.splits)})")
        data = self.splits[split]
        if not isinstance(data, ArraySplit):
            raise NotDecoded(
                f"{self.name}/{split} is a folder of image files; pack it first: "
                f"hundred data pack <source> --res R --out DIR"
            )
        return data


def _check_label_dtype(labels: np.ndarray) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}")


def labels_outside(labels: np.ndarray, num_classes: int) -> str | None:
    """Why ``labels`` do not all lie in ``[0, num_classes)``, naming the first offender and
    its index, or ``None`` when they do. A label out of range would otherwise surface as an
    ``IndexError`` (or a silently wrong one-hot) in the middle of an epoch."""
    if not len(labels):
        return None
    low, high = labels.min(), labels.max()
    if 0 <= low and high < num_classes:
        return None
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    first = int(bad[0])
    return (f"label {int(labels[first])} at index {first} is outside [0, {num_classes}) "
            f"({len(bad)} of {len(labels)} labels are)")


def class_subset_indices(labels: np.ndarray, classes: np.ndarray | list[int]) -> np.ndarray:
    """Indices of the samples whose label is in ``classes`` (sorted, int64); no data is copied."""
    mask = np.isin(labels, np.asarray(classes, dtype=labels.dtype))
    return np.flatnonzero(mask).astype(np.int64)
