"""Image folders: ``imagefolder:ROOT`` and the ImageNet-100 subsets ``imagenet100:LIST:ROOT``.

``ROOT`` holds ``train/`` and ``val/``, each a folder per class (ImageNet layout: the class
folders are wnids such as ``n01440764``), images in any format Pillow reads. Opening a folder
only *lists* files — cheap and deterministic (sorted); decoding happens once, when the
dataset is packed (``hundred data pack``), where bad files are skipped and reported.

``imagenet100`` is the same folder restricted to a class list: one of the lists shipped in
``hundred/data/lists`` (``seed1993``, ``sorted100``, ``cmc``, ``seed1993b``, ``gcd``; see
docs/data.md for who uses which) or a path to a text file of wnids, one per line.
"""

from __future__ import annotations

from typing import Any

import functools
import hashlib
import importlib.resources
import importlib.util
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from hundred.data.dataset import Dataset, FileSplit
from hundred.errors import HundredError

WNID = re.compile(r"n\d{8}")


# --------------------------------------------------------------------------------- listing


def _class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``split_dir`` (symlinked folders count)."""
    return sorted(
        entry.name
        for entry in os.scandir(split_dir)
        if not entry.name.startswith(".") and entry.is_dir()
    )


def _image_files(class_dir: Path) -> list[Path]:
    """Every visible file under ``class_dir``, sorted; whether it is an image is decided later.

    Extensions are not trusted either way (ImageNet has PNGs and CMYK files named .JPEG), so
    every file is listed and packing skips and reports what does not decode. Hidden files and
    folders (``.DS_Store``, ``._x.jpg``, ``.ipynb_checkpoints``) are left out.
    """
    files: list[Path] = []
    for folder, subfolders, names in os.walk(class_dir):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        files.extend(Path(folder, name) for name in names if not name.startswith("."))
    return sorted(files)


def _split_dir(root: Path, name: str, what: str) -> Path:
    path = root / name
    if not path.is_dir():
        raise HundredError(f"{what}: no {name}/ folder in {root} (expected {name}/<class>/<image>)")
    return path


def _check_val_classes(val_classes: list[str], train_classes: list[str], val_dir: Path) -> None:
    """Val must use the train classes: a val-only class would have no label to map to."""
    unknown = sorted(set(val_classes) - set(train_classes))
    if unknown:
        raise HundredError(
            f"{val_dir} has {len(unknown)} class folder(s) missing from train/: "
            f"{_few(unknown)}; train and val must share their classes"
        )


def _few(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _file_split(split_dir: Path, class_ids: list[str]) -> FileSplit:
    """All files of ``class_ids`` under ``split_dir``, labelled by position in ``class_ids``."""
    files: list[Path] = []
    labels: list[int] = []
    for label, class_id in enumerate(class_ids):
        class_dir = split_dir / class_id
        found = _image_files(class_dir) if class_dir.is_dir() else []
        files.extend(found)
        labels.extend([label] * len(found))
    return FileSplit(files=files, labels=np.asarray(labels, dtype=np.int64))


def _open_tree(
    argument: str | None,
    *,
    what: str,
    train_dir: str,
    val_dir: str,
    classes: list[str] | None = None,
) -> tuple[Path, list[str], dict[str, FileSplit], dict[str, object]]:
    """List ``ROOT/{train,val}``; all train classes, or exactly ``classes`` when given.

    Returns the resolved root, the sorted class ids (labels are their indices), the splits,
    and facts for ``Dataset.info``. Every problem is a :class:`HundredError` naming the path.
    """
    if not argument:
        raise HundredError(f"{what} needs a folder: {what}:PATH")
    root = Path(argument).expanduser()
    if not root.is_dir():
        raise HundredError(f"{what}: folder {root} does not exist")
    root = root.resolve()
    train_path = _split_dir(root, train_dir, what)
    val_path = _split_dir(root, val_dir, what)
    train_classes = _class_folders(train_path)
    val_classes = _class_folders(val_path)
    if not train_classes:
        raise HundredError(f"{what}: {train_path} has no class folders")
    if not val_classes and any(entry.is_file() for entry in os.scandir(val_path)):
        raise HundredError(
            f"{what}: {val_path} holds image files but no class folders; move each image into "
            f"a folder named after its class (ImageNet's flat val/ must be sorted by its labels)"
        )

    if classes is None:
        _check_val_classes(val_classes, train_classes, val_path)
        class_ids = train_classes
    else:
        for split_path, present in ((train_path, train_classes), (val_path, val_classes)):
            missing = sorted(set(classes) - set(present))
            if missing:
                raise HundredError(
                    f"{what}: {len(missing)} listed class(es) missing from {split_path}: "
                    f"{_few(missing)}"
                )
        class_ids = sorted(classes)

    splits = {
        "train": _file_split(train_path, class_ids),
        "val": _file_split(val_path, class_ids),
    }
    info: dict[str, object] = {
        "root": str(root),
        "train_dir": train_dir,
        "val_dir": val_dir,
        "classes_without_val": sorted(set(class_ids) - set(val_classes)),
    }
    return root, class_ids, splits, info


# ----------------------------------------------------------------------------- class names


@functools.lru_cache(maxsize=1)
def _wnid_lemmas() -> dict[str, str]:
    """wnid -> WordNet lemmas ("tench, Tinca tinca") from timm's offline package data.

    The table file is read directly rather than through ``timm.data.ImageNetInfo`` because
    importing timm imports torch (seconds), which ``hundred data info`` should not pay for
    just to print names. ``ImageNetInfo`` is the fallback should timm move the file; without
    timm the folder names are used.
    """
    spec = importlib.util.find_spec("timm")
    if spec is not None and spec.submodule_search_locations:
        table = Path(list(spec.submodule_search_locations)[0], "data", "_info",
                     "imagenet_synset_to_lemma.txt")
        if table.is_file():
            lines = table.read_text(encoding="utf-8").splitlines()
            return dict(line.split("\t", 1) for line in lines if "\t" in line)
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        return {}
    imagenet = ImageNetInfo()
    return {wnid: imagenet.label_name_to_description(wnid) for wnid in imagenet.label_names()}


def class_names_for(class_ids: list[str]) -> list[str]:
    """Readable names: a wnid's first lemma ("tench"), otherwise the folder name itself.

    ImageNet-1k has two "crane"s and two "maillot"s; a name that repeats within the dataset
    gets its wnid appended so names stay unique.
    """
    lemmas = _wnid_lemmas() if any(WNID.fullmatch(c) for c in class_ids) else {}
    names = [
        lemmas[c].split(",")[0].strip() if WNID.fullmatch(c) and c in lemmas else c
        for c in class_ids
    ]
    repeats = {name for name, count in Counter(names).items() if count > 1}
    return [f"{name} ({c})" if name in repeats else name for name, c in zip(names, class_ids)]


# ----------------------------------------------------------------------------- class lists


def named_lists() -> list[str]:
    """The class lists shipped with hundred (file stems in ``hundred/data/lists``)."""
    folder = importlib.resources.files("hundred.data") / "lists"
    return sorted(item.name[:-4] for item in folder.iterdir() if item.name.endswith(".txt"))


def read_class_list(name_or_path: str) -> tuple[str, list[str], str]:
    """A class list by shipped name or file path: ``(name, wnids in file order, sha256)``.

    Blank lines and ``#`` comments are ignored; a repeated class is an error (it would
    silently shrink the subset).
    """
    if name_or_path in named_lists():
        resource = importlib.resources.files("hundred.data") / "lists" / f"{name_or_path}.txt"
        data, name = resource.read_bytes(), name_or_path
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise HundredError(
                f"unknown class list {name_or_path!r}: not one of {', '.join(named_lists())} "
                f"and not a file"
            )
        data, name = path.read_bytes(), path.stem
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise HundredError(f"class list {name_or_path}: not a UTF-8 text file") from None
    wnids: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if any(char.isspace() for char in entry) or "/" in entry:
            raise HundredError(
                f"class list {name_or_path} line {number}: expected one class folder name "
                f"(a wnid like n01440764), got {entry!r}"
            )
        wnids.append(entry)
    repeated = sorted(c for c, count in Counter(wnids).items() if count > 1)
    if repeated:
        raise HundredError(f"class list {name_or_path} repeats {_few(repeated)}")
    if not wnids:
        raise HundredError(f"class list {name_or_path} is empty")
    return name, wnids, hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------- sources


def _folder_dataset(name: str, class_ids: list[str], splits: Any, info: dict) -> Dataset:
    """The Dataset of an opened tree: names from the wnid table where the ids are wnids."""
    return Dataset(name=name, class_ids=class_ids, class_names=class_names_for(class_ids),
                   splits=dict(splits), info=info)


def open_imagefolder(
    argument: str | None, *, train_dir: str = "train", val_dir: str = "val"
) -> Dataset:
    """Every class folder of ``ROOT/train`` (sorted; label = index), with ``ROOT/val``."""
    root, class_ids, splits, info = _open_tree(
        argument, what="imagefolder", train_dir=train_dir, val_dir=val_dir
    )
    return _folder_dataset(f"imagefolder:{root.name}", class_ids, splits, info)


def open_imagenet100(
    argument: str | None, *, train_dir: str = "train", val_dir: str = "val"
) -> Dataset:
    """``LIST:ROOT``: the ImageNet folder at ROOT restricted to the classes of LIST.

    Labels are 0..K-1 in sorted-wnid order (the convention of the continual-learning papers,
    whose class *arrival* order is a seeded permutation on top); the list's own order is
    kept in ``info["list_order"]``, with the list's name and sha256.
    """
    usage = (f"imagenet100 needs LIST:PATH, LIST one of {', '.join(named_lists())} "
             f"or a text file of wnids (e.g. imagenet100:seed1993:/data/imagenet)")
    if not argument or ":" not in argument:
        raise HundredError(usage)
    list_spec, _, path = argument.partition(":")
    if not list_spec or not path:
        raise HundredError(usage)
    list_name, wnids, list_sha256 = read_class_list(list_spec)
    root, class_ids, splits, info = _open_tree(
        path, what=f"imagenet100:{list_name}", train_dir=train_dir, val_dir=val_dir,
        classes=wnids,
    )
    info.update(list=list_name, list_source=list_spec, list_sha256=list_sha256,
                list_order=wnids)
    return _folder_dataset(f"imagenet100:{list_name}", class_ids, splits, info)
