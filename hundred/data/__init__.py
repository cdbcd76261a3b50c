"""The data layer: sources, packing to uint8 arrays, and the batch loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hundred.data.dataset import ArraySplit, Dataset, FileSplit, class_subset_indices

__all__ = ["ArraySplit", "Dataset", "FileSplit", "class_subset_indices", "load"]


def load(spec: str | Path, **options: Any) -> Dataset:
    """A decoded dataset ready for the loader: a packed directory (memory-mapped) or a source.

    A directory holding ``meta.json`` is read as a packed dataset; anything else is opened as
    a source spec (``synth100``, ``cifar10:PATH`` ...), which must yield decoded arrays
    (image folders must be packed first).
    """
    from hundred.data.pack import is_packed, load_packed
    from hundred.data.sources import open_source

    if is_packed(Path(spec)):
        if options:
            raise ValueError(f"a packed directory takes no source options, got {sorted(options)}")
        return load_packed(Path(spec))
    dataset = open_source(str(spec), **options)
    for split in dataset.splits:
        dataset.arrays(split)  # clear error if a split is still files
    return dataset
