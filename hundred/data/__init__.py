"""The data layer: sources, packing to uint8 arrays, and the batch loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hundred.data.dataset import ArraySplit, Dataset, FileSplit, class_subset_indices
from hundred.data.subset import fingerprint, select_classes

__all__ = ["ArraySplit", "Dataset", "FileSplit", "class_subset_indices", "fingerprint", "load",
           "load_selection", "select_classes"]


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


def load_selection(spec: str | Path, selection: str | None = None,
                   options: dict[str, Any] | None = None) -> Dataset:
    """:func:`load` with source ``options``, then keep only the classes of ``selection``
    (``"0-49"``: dataset labels, relabelled ``0..K-1``; see
    :func:`~hundred.data.subset.select_classes`). ``None`` keeps all. (The selection is not a
    keyword option: ``synth100`` has an option called ``classes`` of its own.)"""
    from hundred.config import parse_classes

    dataset = load(spec, **(options or {}))
    if selection is None:
        return dataset
    try:
        indices = parse_classes(selection)
    except ValueError as error:
        from hundred.errors import HundredError

        raise HundredError(f"data.classes: {error}") from None
    return select_classes(dataset, indices, selection)
