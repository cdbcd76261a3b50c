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

    A path holding ``meta.json`` is read as a packed dataset, checked first (meta.json's
    fields, every array's sha256, dtype and shape, the label range: see
    :mod:`hundred.data.pack`); a spec starting with a source name (``synth100``,
    ``cifar10:PATH`` ...) is opened as that source, which must yield decoded arrays (image
    folders must be packed first). Any other spec is a path that does not hold packed data,
    and the :class:`~hundred.errors.HundredError` says why (missing, a file, no meta.json).
    """
    from hundred.data.pack import load_packed, packed_path
    from hundred.data.sources import open_source
    from hundred.errors import HundredError

    path = packed_path(spec)
    if path is not None:
        if options:
            raise HundredError(f"a packed directory takes no source options, got {sorted(options)}")
        return load_packed(path)
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
