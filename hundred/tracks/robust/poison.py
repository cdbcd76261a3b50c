"""Unlearnable (availability-poisoned) copies of packed datasets: ``hundred data poison``.

CUDA — Sadasivan, Soltanolkotabi & Feizi, "CUDA: Convolution-based Unlearnable Datasets"
(CVPR 2023, arXiv 2303.04278), Sec. 3 ("CUDA generation"). Every class ``y`` gets a random
``k x k`` filter ``k_y`` generated from a private key: each entry uniform in ``[0, bp)`` (the
blur parameter, 0.3 by default) and one randomly chosen entry set to 1. A training image of
class ``y`` becomes ``x' = (x * k_y) / max(x * k_y)``: the filter is applied depthwise, the
*same* filter on every colour channel, zero-padded to keep the size (a "same" convolution;
cross-correlation as deep-learning libraries compute it), and the result divided by its
largest value over all channels and pixels, so the brightest pixel is 1. The network then
learns the filter-label shortcut instead of the images' features, and a model trained on the
poisoned data is near chance on clean test images. The test (val) split is never touched.

Partial poisoning (the paper's ``mix``): a ``fraction`` of the training images is poisoned,
the rest left byte-identical. The official code flips an independent coin per image over the
whole training set; here exactly ``round(fraction * N)`` images are drawn uniformly without
replacement over the whole split (global, not per class, like the paper), so the count is
exact and recorded, and the drawn rows are stored as a boolean mask array.

Randomness comes only from the key: the filters from ``numpy.random.default_rng([key, 0])``,
the poisoned rows from ``default_rng([key, 1])``. The key itself is *not* written anywhere:
the paper's filters are private (knowing them is what a deconvolution defence needs), so
meta.json records that a key was used and the sha256 of the filters, which lets the key's
holder check that a dataset is theirs. A small key (0, 1, 2 ...) can be found again by trying
keys against that fingerprint; use a large random one when secrecy matters.

Storage: pixel values are computed in float64 from the uint8 images, scaled by 255, clipped
to ``[0, 255]`` and rounded to the nearest integer (the official code truncates, which makes
images darker by half a level on average).

Poisons are registered in :data:`POISONS` (name -> :class:`Poison` subclass), so other
availability or backdoor poisons can join with their own ``Params``. Hooks a poison may
override: :meth:`Poison.select` (which rows; default: uniform over the split),
:meth:`Poison.prepare` (learn from the clean training set first, e.g. a trigger generator),
:meth:`Poison.write_files` (extra files in the output, e.g. ``trigger.safetensors``). The
backdoors ``blto`` and ``patch`` live in :mod:`hundred.tracks.robust.backdoor`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hundred.data.copies import (building_copy, check_copy_paths, check_copy_space,
                                   publish_copy)
from hundred.errors import HundredError

SPLIT = "train"  # the only split a poison touches; every other split is copied unchanged
MASK_SUFFIX = "_poisoned.npy"  # boolean mask of the poisoned rows, next to the split's arrays
CHUNK_ROWS = 1024  # images poisoned at a time (bounded memory at ImageNet scale)
FILTER_STREAM, SELECTION_STREAM = 0, 1  # independent random streams derived from the key


# ------------------------------------------------------------------------------- registry


class Poison(ABC):
    """A poisoning method: turns uint8 training images of given labels into poisoned ones.

    Subclasses set ``name``, ``paper`` and ``Params`` (a pydantic model with the paper's
    defaults); ``__init__`` derives everything random from ``key`` alone.
    """

    name: ClassVar[str]
    paper: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def __init__(self, key: int, num_classes: int, params: BaseModel) -> None:
        self.key = key
        self.num_classes = num_classes
        self.params = params

    #: how :meth:`select` chooses the rows, for meta.json
    selection: ClassVar[str] = ("round(fraction * N) rows uniformly without replacement over "
                                "the whole split (global, not per class), from the key")

    @abstractmethod
    def apply(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Poisoned copies of ``images`` (uint8 ``N, H, W, 3``) whose classes are ``labels``."""

    def record(self) -> dict[str, Any]:
        """JSON-safe facts for meta.json (never the key)."""
        return {}

    def select(self, labels: np.ndarray, fraction: float) -> np.ndarray:
        """Boolean mask of the rows to poison (labels of the whole split); bad requests raise
        :class:`HundredError` (called before anything is written)."""
        return _selection(self.key, len(labels), fraction)

    def prepare(self, images: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                device: str = "auto") -> None:
        """Learn what :meth:`apply` needs from the clean split (``images`` uint8, maybe
        memory-mapped) before anything is written; ``mask``: the rows to be poisoned."""

    def write_files(self, directory: Path) -> dict[str, Any]:
        """Write extra files into the output ``directory`` (atomically); returns meta.json
        facts about them (names, sha256), merged into the poison record."""
        return {}


PoisonType = TypeVar("PoisonType", bound=type[Poison])
POISONS: dict[str, type[Poison]] = {}


def register_poison(name: str) -> Callable[[PoisonType], PoisonType]:
    """Class decorator: make a :class:`Poison` available as ``--method name``."""
    def decorate(cls: PoisonType) -> PoisonType:
        if name in POISONS:
            raise ValueError(f"poison {name!r} is registered twice")
        cls.name = name
        POISONS[name] = cls
        return cls

    return decorate


# ----------------------------------------------------------------------------------- CUDA


class CudaParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    blur: float = Field(0.3, gt=0, description="blur parameter bp: filter entries are uniform "
                        "in [0, bp) besides the one tap set to 1 (paper: 0.3 for CIFAR)")
    kernel_size: int = Field(3, ge=1, description="filter side k (odd; paper: 3)")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd, so that the filtered image keeps its size")
        return value


def cuda_filters(key: int, num_classes: int, blur: float = 0.3, kernel_size: int = 3
                 ) -> np.ndarray:
    """The class-wise CUDA filters ``(num_classes, k, k)`` float64 of ``key``: entries
    ``U(0, blur)``, then one uniformly chosen entry set to 1; the same filter serves all three
    colour channels. Depends on nothing but the arguments."""
    rng = np.random.default_rng([key, FILTER_STREAM])
    filters = np.empty((num_classes, kernel_size, kernel_size), dtype=np.float64)
    for label in range(num_classes):
        weights = rng.uniform(0.0, blur, size=(kernel_size, kernel_size))
        weights.flat[rng.integers(kernel_size * kernel_size)] = 1.0
        filters[label] = weights
    return filters


def filters_fingerprint(filters: np.ndarray) -> str:
    """sha256 (hex) of the filters' float64 values and shape."""
    array = np.ascontiguousarray(filters, dtype="<f8")
    digest = hashlib.sha256(json.dumps(list(array.shape)).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def convolve_same(images: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Each image ``(N, H, W, C)`` cross-correlated with its own filter ``(N, k, k)``, the same
    on every channel, with zero padding ``k // 2`` (torch's ``conv2d(groups=C, padding=k//2)``);
    float64."""
    size = filters.shape[-1]
    pad = size // 2
    height, width = images.shape[1:3]
    padded = np.pad(images.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros(images.shape, dtype=np.float64)
    for row in range(size):
        for col in range(size):
            out += filters[:, row, col, None, None, None] \
                * padded[:, row:row + height, col:col + width, :]
    return out


def normalise_to_uint8(filtered: np.ndarray) -> np.ndarray:
    """``x / max(x)`` per image (over all pixels and channels) in ``[0, 1]``, stored as uint8:
    scaled by 255, clipped, rounded. An all-zero image stays zero."""
    peak = filtered.max(axis=(1, 2, 3), keepdims=True)
    scaled = np.divide(filtered, peak, out=np.zeros_like(filtered), where=peak > 0)
    return np.rint(np.clip(scaled * 255.0, 0.0, 255.0)).astype(np.uint8)


@register_poison("cuda")
class Cuda(Poison):
    """Class-wise random blur filters from a private key (CUDA, Sec. 3)."""

    paper = ("Sadasivan, Soltanolkotabi & Feizi, CUDA: Convolution-based Unlearnable Datasets, "
             "CVPR 2023 (arXiv 2303.04278)")
    Params = CudaParams

    def __init__(self, key: int, num_classes: int, params: BaseModel) -> None:
        super().__init__(key, num_classes, params)
        assert isinstance(params, CudaParams)
        self.filters = cuda_filters(key, num_classes, params.blur, params.kernel_size)

    def apply(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if not len(images):
            return images.copy()
        return normalise_to_uint8(convolve_same(images, self.filters[labels]))

    def record(self) -> dict[str, Any]:
        size = self.filters.shape[-1]
        return {"filters_sha256": filters_fingerprint(self.filters),
                "filters": f"{self.num_classes} x {size}x{size}, shared by the colour channels",
                "normalisation": "x * k_y / max(x * k_y) per image, x255, clip, round"}


# ----------------------------------------------------------------------- poisoned packs


def _check_request(method: str, key: Any, fraction: Any, params: dict[str, Any]
                   ) -> tuple[type[Poison], BaseModel]:
    if method not in POISONS:
        raise HundredError(f"unknown poison method {method!r}; known: {', '.join(sorted(POISONS))}")
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
        raise HundredError(f"--key must be an integer >= 0 (the private seed), got {key!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) \
            or not 0.0 <= float(fraction) <= 1.0:  # NaN fails both comparisons
        raise HundredError(f"--fraction must be a number in [0, 1], got {fraction!r}")
    cls = POISONS[method]
    try:
        return cls, cls.Params(**params)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
                             for item in error.errors())
        raise HundredError(f"poison {method}: {problems}") from None


def _selection(key: int, count: int, fraction: float) -> np.ndarray:
    """Boolean mask of the ``round(fraction * count)`` rows to poison, uniform without
    replacement over the split (drawn from the key's selection stream)."""
    chosen = math.floor(fraction * count + 0.5)
    mask = np.zeros(count, dtype=bool)
    if chosen == count:
        mask[:] = True
    elif chosen:
        rng = np.random.default_rng([key, SELECTION_STREAM])
        mask[rng.choice(count, size=chosen, replace=False)] = True
    return mask


def _write_split(partial: Path, source: Path, entry: dict[str, Any], labels: np.ndarray,
                 mask: np.ndarray, poison: Poison) -> None:
    """The poisoned image array of a split (rows outside ``mask`` copied byte for byte)."""
    clean = np.load(source / entry["images"], mmap_mode="r", allow_pickle=False)
    target = np.lib.format.open_memmap(partial / entry["images"], mode="w+", dtype=np.uint8,
                                       shape=clean.shape)
    for start in range(0, len(clean), CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, len(clean))
        block = np.array(clean[start:stop])
        rows = mask[start:stop]
        if rows.any():
            block[rows] = poison.apply(block[rows], labels[start:stop][rows])
        target[start:stop] = block
    target.flush()
    del target, clean


def poison_packed(source: str | os.PathLike, out: str | os.PathLike, method: str = "cuda", *,
                  key: int, fraction: float = 1.0, replace: bool = False,
                  device: str = "auto", **params: Any) -> dict[str, Any]:
    """Write a poisoned copy of the packed dataset ``source`` to ``out``; returns its meta.json.

    The ``train`` split's images are poisoned (a ``fraction`` of them, chosen by ``key``);
    labels and every other split (val: the clean test data) are copied byte for byte. The
    output is packed data like any other (checksums, ``verified.json``), named
    ``<name>+<method>``; meta.json's ``poison`` (also under ``info``) records the method, its
    params, the fraction, the poisoned count per class, the mask array, the source's path and
    fingerprint, and a fingerprint of what the key generated — not the key. Built in
    ``OUT.partial-<pid>`` and renamed into place; an existing ``out`` is refused unless
    ``replace`` (and then only a packed dataset or an empty directory is replaced). Bad input
    raises :class:`HundredError` before anything is written. ``device`` is where a poison that
    learns (:meth:`Poison.prepare`, e.g. BLTO's generator) trains.
    """
    from hundred import __version__
    from hundred.data.pack import META, load_packed, record_arrays
    from hundred.data.subset import fingerprint

    started = time.time()
    cls, checked = _check_request(method, key, fraction, params)
    key, fraction = int(key), float(fraction)
    source = Path(source).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    check_copy_paths(source, out, replace)
    dataset = load_packed(source)  # every check: meta.json, sha256s, labels
    meta = json.loads((source / META).read_text(encoding="utf-8"))
    if SPLIT not in meta["splits"]:
        raise HundredError(f"{source} has no {SPLIT} split to poison "
                           f"(has {', '.join(sorted(meta['splits']))})")
    if "poison" in meta:
        raise HundredError(f"{source} is already poisoned ({meta['poison'].get('method')}); "
                           f"poison the clean pack instead")
    check_copy_space(out, meta)
    poison = cls(key, dataset.num_classes, checked)
    labels = np.asarray(dataset.arrays(SPLIT).labels)
    mask = poison.select(labels, fraction)
    mask_name = f"{SPLIT}{MASK_SUFFIX}"
    poison.prepare(dataset.arrays(SPLIT).images, labels, mask, device)

    with building_copy(out) as partial:
        names: list[str] = []
        for split, entry in meta["splits"].items():
            if split == SPLIT:
                _write_split(partial, source, entry, labels, mask, poison)
            else:
                shutil.copyfile(source / entry["images"], partial / entry["images"])
            shutil.copyfile(source / entry["labels"], partial / entry["labels"])
            names += [entry["images"], entry["labels"]]
        np.save(partial / mask_name, mask, allow_pickle=False)
        names.append(mask_name)
        extra = poison.write_files(partial)
        record = {
            "method": method,
            "paper": cls.paper,
            "params": checked.model_dump(),
            "split": SPLIT,
            "fraction": fraction,
            "poisoned": int(mask.sum()),
            "of": int(len(mask)),
            "poisoned_per_class": np.bincount(labels[mask], minlength=dataset.num_classes
                                              ).tolist(),
            "selection": poison.selection,
            "mask": mask_name,
            "key": "private: not recorded (filters and rows were drawn from it)",
            **poison.record(),
            **extra,
            "source": {"path": str(source), "name": meta["name"],
                       "fingerprint": fingerprint(dataset)},
            "unchanged": sorted(split for split in meta["splits"] if split != SPLIT),
        }
        new_meta = dict(meta)
        new_meta.update({
            "name": f"{meta['name']}+{method}",
            "files": record_arrays(partial, names),
            "info": {**(meta.get("info") or {}), "poison": record},
            "poison": record,
            "hundred_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 2),
        })
        publish_copy(partial, out, new_meta, replace)
    return new_meta


# ------------------------------------------------------------------------------------ CLI


def add_poison_command(data_commands: Any) -> None:
    """Add ``hundred data poison`` to the ``hundred data`` sub-parser group."""
    parser = data_commands.add_parser(
        "poison", help="write an unlearnable (poisoned) copy of packed data: its train split "
        "poisoned from a private key, val unchanged",
        description="Poison the train split of a packed dataset (CUDA: class-wise random blur "
        "filters from --key) and write a packed copy to --out; the val split stays clean. "
        "The key is not recorded: keep it to recognise the data later.")
    parser.add_argument("packed", help="packed dataset directory (hundred data pack)")
    parser.add_argument("--method", default="cuda", choices=sorted(POISONS),
                        help="poison (default cuda; backdoors: blto, patch)")
    parser.add_argument("--key", type=int, required=True,
                        help="private integer seed of the filters/trigger and of the poisoned "
                        "rows")
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="share of train images to poison, in [0, 1] (default 1)")
    parser.add_argument("--blur", type=float, default=None,
                        help="CUDA blur parameter bp (default 0.3)")
    parser.add_argument("--kernel-size", type=int, default=None,
                        help="CUDA filter side (odd, default 3)")
    parser.add_argument("--target-class", type=int, default=None,
                        help="backdoors (blto, patch): the attack's target class; its images "
                        "are the ones poisoned (default 0)")
    parser.add_argument("-o", "--option", action="append", default=[], metavar="NAME=VALUE",
                        help="any other parameter of the method, e.g. -o steps=200 -o "
                        "eps=8/255 (see docs/robust.md)")
    parser.add_argument("--device", default="auto",
                        help="where a learnt poison (blto) trains: auto, cpu, cuda ...")
    parser.add_argument("--replace", "--force", dest="replace", action="store_true",
                        help="replace an existing packed --out")
    parser.set_defaults(func=_cmd_data_poison)


def _cmd_data_poison(args: argparse.Namespace) -> None:
    from hundred.cli import parse_options

    params: dict[str, Any] = {name.replace("-", "_"): value for name, value in
                              parse_options(getattr(args, "option", None) or []).items()}
    params.update({name: value for name, value in (("blur", args.blur),
                                                   ("kernel_size", args.kernel_size),
                                                   ("target_class",
                                                    getattr(args, "target_class", None)))
                   if value is not None})
    meta = poison_packed(args.packed, args.out, args.method, key=args.key,
                         fraction=args.fraction, replace=args.replace,
                         device=getattr(args, "device", "auto"), **params)
    record = meta["poison"]
    print(f"poisoned {record['poisoned']} of {record['of']} {record['split']} images of "
          f"{record['source']['name']} with {record['method']} into {args.out} "
          f"({_fingerprint_note(record)}; "
          f"{', '.join(record['unchanged']) or 'no other split'} unchanged)")


def _fingerprint_note(record: dict[str, Any]) -> str:
    if "filters_sha256" in record:
        return f"filters sha256 {str(record['filters_sha256'])[:16]}"
    trigger = record.get("trigger")
    if isinstance(trigger, dict) and "sha256" in trigger:
        return f"target class {record.get('target_class')}, trigger {trigger['file']} sha256 " \
            f"{str(trigger['sha256'])[:16]}"
    return "no fingerprint"


# the backdoor poisons (blto, patch) register themselves into POISONS on import; last, so
# that everything they import from this module exists
from hundred.tracks.robust import backdoor as _backdoor  # noqa: E402,F401
