"""CIFAR-10 and CIFAR-100 from the official "python version" files.

``cifar10:PATH`` / ``cifar100:PATH`` where PATH is the extracted folder
(``cifar-10-batches-py/`` or ``cifar-100-python/``), the folder that contains it (or contains
the official archive), or the official ``.tar.gz`` itself. Archives are read member by member
in one pass, never extracted to disk. Every file is a pickle and goes through
:func:`~hundred.data.safe_pickle.safe_load_pickle`, so a tampered download cannot run code.

The files hold dicts with bytes keys (``b"data"``: uint8 rows of 3072 = 3x32x32, channels
first; ``b"labels"`` or ``b"fine_labels"``/``b"coarse_labels"``) and a meta file with the
class names. Splits: ``train``, and ``val`` = the official test set.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hundred.data.dataset import ArraySplit, Dataset
from hundred.data.safe_pickle import safe_load_pickle
from hundred.errors import HundredError

_SIDE = 32
_ROW = 3 * _SIDE * _SIDE


@dataclass(frozen=True)
class _Layout:
    """Where one CIFAR variant keeps its files."""

    title: str  # "CIFAR-10", for messages
    folder: str  # name of the extracted folder, also the folder inside the archive
    archive: str  # official archive name
    train: tuple[str, ...]
    test: str
    meta: str

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train, self.test, self.meta)

    @property
    def expected(self) -> str:
        return (f"expected {self.folder}/ holding {', '.join(self.members)}, "
                f"its parent folder, or {self.archive}")


CIFAR10 = _Layout("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                  tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
CIFAR100 = _Layout("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
                   ("train",), "test", "meta")

# member name -> (what to call it in errors, unpickled content)
_Files = dict[str, tuple[str, Any]]


def _require(present: set[str], layout: _Layout, where: Path) -> None:
    missing = [member for member in layout.members if member not in present]
    if missing:
        raise HundredError(
            f"{layout.title} files missing in {where}: {', '.join(missing)}; {layout.expected}"
        )


def _read_folder(folder: Path, layout: _Layout) -> _Files:
    _require({m for m in layout.members if (folder / m).is_file()}, layout, folder)
    found: _Files = {}
    for member in layout.members:
        what = str(folder / member)
        with open(folder / member, "rb") as handle:
            found[member] = (what, safe_load_pickle(handle, what=what))
    return found


def _read_archive(archive: Path, layout: _Layout) -> _Files:
    wanted = {f"{layout.folder}/{member}": member for member in layout.members}
    found: _Files = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:  # in stream order: the archive is decompressed once
                name = info.name.removeprefix("./")
                member = wanted.get(name)
                if member is None or member in found:
                    continue
                handle = tar.extractfile(info) if info.isfile() else None
                if handle is None:
                    raise HundredError(f"{archive}:{name} is not a regular file")
                what = f"{archive}:{name}"
                found[member] = (what, safe_load_pickle(handle, what=what))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise HundredError(
            f"cannot read {archive} as a tar archive ({error}); {layout.expected}"
        ) from None
    _require(set(found), layout, archive)
    return found


def _read_files(path: Path, layout: _Layout) -> _Files:
    """Unpickle every file of ``layout`` from a folder, its parent, or the archive."""
    if path.is_dir():
        if (path / layout.folder).is_dir():
            return _read_folder(path / layout.folder, layout)
        if (path / layout.archive).is_file():
            return _read_archive(path / layout.archive, layout)
        return _read_folder(path, layout)
    if path.is_file():
        return _read_archive(path, layout)
    raise HundredError(f"{layout.title}: no such file or folder {path}; {layout.expected}")


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


def _field(content: Any, key: bytes, what: str) -> Any:
    if not isinstance(content, dict) or key not in content:
        keys = sorted(map(repr, content)) if isinstance(content, dict) else _describe(content)
        raise HundredError(f"{what}: expected a dict with key {key!r}, found {keys}")
    return content[key]


def _class_names(meta: tuple[str, Any], key: bytes) -> list[str]:
    what, content = meta
    names = _field(content, key, what)
    if not isinstance(names, list) or not names \
            or not all(isinstance(name, (bytes, str)) for name in names):
        raise HundredError(
            f"{what}: expected {key!r} to be a list of names, got {_describe(names)}"
        )
    names = [name.decode("utf-8") if isinstance(name, bytes) else name for name in names]
    if len(set(names)) != len(names):
        raise HundredError(f"{what}: class names in {key!r} repeat: {names}")
    return names


def _batch(
    batch: tuple[str, Any], labels_key: bytes, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 32, 32, 3)`` (a view) and int64 labels of one batch file, checked."""
    what, content = batch
    data = _field(content, b"data", what)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != _ROW:
        raise HundredError(
            f"{what}: expected b'data' as a uint8 array of shape (N, {_ROW}) "
            f"(3x{_SIDE}x{_SIDE}, channels first), got {_describe(data)}"
        )
    raw_labels = _field(content, labels_key, what)
    try:
        labels = np.asarray(raw_labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        labels = None
    if labels is None or labels.shape != (len(data),):
        raise HundredError(
            f"{what}: expected {labels_key!r} to hold {len(data)} integer labels, "
            f"got {_describe(raw_labels)}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise HundredError(
            f"{what}: labels in {labels_key!r} must lie in 0..{num_classes - 1} "
            f"(the meta file names {num_classes} classes), found {labels.min()}..{labels.max()}"
        )
    # Rows are channel planes (R, G, B) of 32x32 each, row-major: CHW -> HWC.
    return data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1), labels


def _open_cifar(argument: str | None, layout: _Layout, *, name: str, labels_key: bytes,
                names_key: bytes, info: dict[str, Any]) -> Dataset:
    """The reader shared by CIFAR-10 and CIFAR-100."""
    if not argument:
        raise HundredError(f"source {name} needs a path: {name}:PATH; {layout.expected}")
    path = Path(argument).expanduser()
    files = _read_files(path, layout)
    class_names = _class_names(files[layout.meta], names_key)
    splits: dict[str, ArraySplit] = {}
    for split, members in (("train", layout.train), ("val", (layout.test,))):
        images, labels = zip(*(_batch(files[m], labels_key, len(class_names)) for m in members))
        splits[split] = ArraySplit(np.ascontiguousarray(np.concatenate(images)),
                                   np.concatenate(labels))
    return Dataset(name=name, class_ids=list(class_names), class_names=class_names,
                   splits=splits, info={"path": str(path), **info})


def open_cifar10(argument: str | None) -> Dataset:
    """CIFAR-10: 10 classes, 50000 train / 10000 val (test) images of 32x32."""
    return _open_cifar(argument, CIFAR10, name="cifar10", labels_key=b"labels",
                       names_key=b"label_names", info={})


def open_cifar100(argument: str | None, *, label: str = "fine") -> Dataset:
    """CIFAR-100 with its 100 ``fine`` classes or its 20 ``coarse`` superclasses.

    The coarse variant is named ``cifar100-coarse`` so results on it are never mistaken for
    the 100-class task.
    """
    if label not in ("fine", "coarse"):
        raise HundredError(f"cifar100 option label={label!r}: expected 'fine' or 'coarse'")
    name = "cifar100" if label == "fine" else "cifar100-coarse"
    return _open_cifar(argument, CIFAR100, name=name, labels_key=f"{label}_labels".encode(),
                       names_key=f"{label}_label_names".encode(), info={"label": label})
