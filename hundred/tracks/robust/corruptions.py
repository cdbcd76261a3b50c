"""Common corruptions of uint8 images (Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019: the 15 types of ImageNet-C /
CIFAR-10-C at severities 1-5), through the ``imagecorruptions`` package (Michaelis et al.,
2019), and the packed corrupted copy of a dataset's val split: ``hundred data corrupt``.

Compatibility shim (why): imagecorruptions 1.1.2 was written for numpy 1 and scikit-image
< 0.19. Two of the 15 types fail on today's stack: ``glass_blur`` calls
``skimage.filters.gaussian(..., multichannel=True)`` (the keyword is gone since skimage 0.19:
it is ``channel_axis=-1`` now) and ``fog`` builds its plasma map with ``np.float_`` (removed in
numpy 2); and ``impulse_noise`` is not reproducible, since skimage's ``random_noise`` now
draws from a fresh generator instead of numpy's global one. :func:`_patch_imagecorruptions`
replaces three module attributes the package reads, *inside the imagecorruptions module
only*: ``gaussian`` by a wrapper that maps ``multichannel=True`` to ``channel_axis=-1``,
``np`` by a proxy of numpy that adds ``float_ = float64``, and ``sk`` by a proxy of skimage
whose ``util.random_noise`` takes its seed from numpy's global generator. Global numpy and
skimage are untouched.

Randomness: the package draws from numpy's global generator. Each image is corrupted under
its own seed, derived from ``(seed, corruption, severity, row)``, with the global state saved
and restored around the call, so a corrupted image depends on nothing but those four values
(:func:`corrupt_images`).

Small images: imagecorruptions refuses images under 32 px. A smaller image (synth100 at 16
px, say) is enlarged to 32 px on its shorter side (bicubic), corrupted there, and shrunk back
(Pillow's antialiased bicubic); the corruption's spatial scale is thus that of a 32 px
image. All 15 types are tested at 16 and 32 px. Frost crops a patch of its (large) frost
photographs at the image's size, as the package does for every size.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import types
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hundred.errors import HundredError

#: the 15 corruption types of the benchmark, in its order (noise, blur, weather, digital)
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
SPLIT = "val"  # the split a corrupted pack holds corrupted copies of
MIN_SIZE = 8  # smallest image side accepted (16 and 32 px are tested for every type)
PACKAGE_MIN_SIZE = 32  # imagecorruptions refuses smaller images: they are enlarged first
DOMAIN_SUFFIX, ROW_SUFFIX = "_domain.npy", "_row.npy"  # arrays beside a corrupted split
CHUNK_ROWS = 1024  # images corrupted at a time when packing


@dataclass(frozen=True)
class Domain:
    """One test domain of a stream: a corruption at a severity (``clean``: severity 0)."""

    corruption: str
    severity: int

    @property
    def name(self) -> str:
        return f"{self.corruption}-{self.severity}"


# ---------------------------------------------------------------------------- the shim


class _NumpyWithFloat(types.ModuleType):
    """numpy as imagecorruptions sees it: every attribute of numpy, plus ``float_``."""

    float_ = np.float64

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _gaussian_with_multichannel(image: Any, *args: Any, multichannel: bool | None = None,
                                **kwargs: Any) -> Any:
    """``skimage.filters.gaussian`` accepting the pre-0.19 ``multichannel`` keyword."""
    from skimage.filters import gaussian

    if multichannel:
        kwargs.setdefault("channel_axis", -1)
    return gaussian(image, *args, **kwargs)


class _SkimageSeeded(types.ModuleType):
    """skimage as imagecorruptions sees it, with ``util.random_noise`` drawing its seed from
    numpy's global generator (which :func:`corrupt_images` seeds per image)."""

    def __init__(self) -> None:
        import skimage

        super().__init__("skimage")
        self._skimage = skimage
        self.util = types.SimpleNamespace(random_noise=self._random_noise)

    def __getattr__(self, name: str) -> Any:
        import skimage.color  # noqa: F401  (imagecorruptions reads sk.color)

        return getattr(self._skimage, name)

    @staticmethod
    def _random_noise(image: Any, **kwargs: Any) -> Any:
        from skimage.util import random_noise

        kwargs.setdefault("rng", int(np.random.randint(2**31)))
        return random_noise(image, **kwargs)


@functools.lru_cache(maxsize=None)
def _patch_imagecorruptions() -> Callable[..., np.ndarray]:
    """Import imagecorruptions, patch its module (see the module docstring) once, and return
    its ``corrupt`` function."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources' deprecation notice
        try:
            import imagecorruptions
            import imagecorruptions.corruptions as module
        except ImportError as error:  # e.g. pkg_resources missing (setuptools >= 81)
            raise HundredError(f"the corruptions need the imagecorruptions package and "
                               f"pkg_resources (setuptools < 81): {error}") from None
    module.gaussian = _gaussian_with_multichannel
    module.sk = _SkimageSeeded()
    if not hasattr(np, "float_"):
        module.np = _NumpyWithFloat("numpy")
    return imagecorruptions.corrupt


# --------------------------------------------------------------------------- validation


def parse_corruptions(value: str | Sequence[str]) -> list[str]:
    """``all`` (the 15 types) or names (a comma-separated string or a list), checked."""
    names = ([n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str)
             else [str(n).strip() for n in value])
    if names == ["all"]:
        return list(CORRUPTIONS)
    if not names:
        raise HundredError("give at least one corruption (or 'all')")
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise HundredError(f"unknown corruption {', '.join(map(repr, unknown))}; choose from "
                           f"all, {', '.join(CORRUPTIONS)}")
    if len(set(names)) != len(names):
        raise HundredError(f"corruptions repeat: {', '.join(names)}")
    return names


def parse_severities(value: str | int | Sequence[int]) -> list[int]:
    """``5``, ``1-5``, ``1,3,5`` or a list of integers in 1..5, checked."""
    if isinstance(value, bool):
        raise HundredError(f"severities must be integers in 1-5, got {value!r}")
    if isinstance(value, int):
        levels = [value]
    elif isinstance(value, str):
        levels = []
        for part in (p.strip() for p in value.split(",") if p.strip()):
            low, _, high = part.partition("-")
            try:
                first, last = int(low), int(high or low)
            except ValueError:
                raise HundredError(f"severities {value!r}: write 5, 1-5 or 1,3,5") from None
            levels.extend(range(first, last + 1) if first <= last else [first, last])
    else:
        levels = list(value)
    bad = [s for s in levels if isinstance(s, bool) or not isinstance(s, int)
           or s not in SEVERITIES]
    if not levels or bad:
        raise HundredError(f"severities must be integers in 1-5 (the benchmark's levels), "
                           f"got {value!r}")
    if len(set(levels)) != len(levels):
        raise HundredError(f"severities repeat: {value!r}")
    return levels


# --------------------------------------------------------------------------- corrupting


def image_seed(seed: int, domain: Domain, row: int) -> int:
    """The numpy seed of one corrupted image: a hash of seed, corruption, severity, row."""
    text = f"{seed}/{domain.corruption}/{domain.severity}/{row}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


def corrupt_images(images: np.ndarray, domain: Domain, seed: int,
                   rows: np.ndarray | None = None) -> np.ndarray:
    """``images`` (uint8 ``N, H, W, 3``) under ``domain``; image ``i`` is drawn with
    :func:`image_seed` of its ``rows[i]`` (default ``i``), so the result depends only on the
    arguments. numpy's global random state is left as it was."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise HundredError(f"corruptions take uint8 images (N, H, W, 3), got {images.dtype} "
                           f"{images.shape}")
    if min(images.shape[1:3]) < MIN_SIZE:
        raise HundredError(f"corruptions need images of at least {MIN_SIZE} px, "
                           f"got {images.shape[1]}x"
                           f"{images.shape[2]}")
    if domain.corruption not in CORRUPTIONS or domain.severity not in SEVERITIES:
        raise HundredError(f"unknown domain {domain.name}")
    corrupt = _patch_imagecorruptions()
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    out = np.empty_like(images)
    state = np.random.get_state()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, image in enumerate(images):
                np.random.seed(image_seed(seed, domain, int(rows[i])))
                out[i] = _corrupt_one(corrupt, image, domain)
    finally:
        np.random.set_state(state)
    return out


def _corrupt_one(corrupt: Callable[..., np.ndarray], image: np.ndarray, domain: Domain
                 ) -> np.ndarray:
    """One uint8 image under ``domain``; one under 32 px is enlarged to 32 px (bicubic)
    first and shrunk back to its size afterwards (Pillow's antialiased bicubic), since the
    package refuses smaller images."""
    from PIL import Image

    height, width = image.shape[:2]
    small = min(height, width) < PACKAGE_MIN_SIZE
    if small:
        scale = PACKAGE_MIN_SIZE / min(height, width)
        size = (max(PACKAGE_MIN_SIZE, round(width * scale)),
                max(PACKAGE_MIN_SIZE, round(height * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
    result = np.asarray(corrupt(image, corruption_name=domain.corruption,
                                severity=domain.severity))
    result = np.rint(np.clip(result, 0, 255)).astype(np.uint8)
    if small or result.shape[:2] != (height, width):
        result = np.asarray(Image.fromarray(result).resize((width, height), Image.BICUBIC))
    return result


def domains_of(corruptions: Sequence[str], severities: Sequence[int]) -> list[Domain]:
    """Every (corruption, severity) pair, corruption-major: the domain ids of a pack."""
    return [Domain(c, s) for c in corruptions for s in severities]


# ------------------------------------------------------------------------ the pack


def corrupt_packed(source: str | os.PathLike, out: str | os.PathLike,
                   corruptions: Sequence[str], severities: Sequence[int], seed: int = 0,
                   replace: bool = False) -> dict[str, Any]:
    """Write ``out``: a packed copy of ``source`` whose ``val`` split holds every clean val
    image once per domain (corruption-major, severities inside; :func:`domains_of`), with
    ``val_domain.npy`` (the domain id of each row) and ``val_row.npy`` (the clean row it was
    made from) beside it; ``train`` (the source model's data) is copied byte for byte.
    meta.json's ``corruption`` lists the domains by id, the seed, the generator and the
    source's fingerprint. The machinery of ``hundred data poison`` (path checks, checksums,
    build in ``OUT.partial-<pid>`` and rename) writes it; bad input raises
    :class:`HundredError` before anything is written. Returns the new meta.json."""
    from hundred import __version__
    from hundred.data.pack import META, load_packed, record_arrays
    from hundred.data.subset import fingerprint
    from hundred.data.copies import (building_copy, check_copy_paths, check_copy_space,
                                     publish_copy)

    corruptions, severities = parse_corruptions(corruptions), parse_severities(severities)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise HundredError(f"--seed must be an integer, got {seed!r}")
    source = Path(source).expanduser().absolute()
    out = Path(out).expanduser().absolute()
    check_copy_paths(source, out, replace)
    dataset = load_packed(source)
    meta = json.loads((source / META).read_text(encoding="utf-8"))
    if SPLIT not in meta["splits"]:
        raise HundredError(f"{source} has no {SPLIT} split to corrupt")
    if "corruption" in meta:
        raise HundredError(f"{source} is already corrupted; corrupt the clean pack instead")
    val = dataset.arrays(SPLIT)
    clean, labels = val.images, np.asarray(val.labels)  # images stay memory-mapped
    if min(clean.shape[1:3]) < MIN_SIZE:
        raise HundredError(f"{source}: {clean.shape[1]} px images; the corruptions need at "
                           f"least {MIN_SIZE} px")
    domains = domains_of(corruptions, severities)
    check_copy_space(out, {"files": {
        "val": {"bytes": int(np.prod(clean.shape)) * len(domains)}, **meta["files"]}})
    with building_copy(out) as partial:
        entry = meta["splits"][SPLIT]
        names: list[str] = []
        for split, other in meta["splits"].items():
            if split != SPLIT:
                for key in ("images", "labels"):
                    shutil.copyfile(source / other[key], partial / other[key])
                    names.append(other[key])
        n = len(clean)
        images = np.lib.format.open_memmap(partial / entry["images"], mode="w+",
                                           dtype=np.uint8, shape=(n * len(domains),
                                                                  *clean.shape[1:]))
        for index, domain in enumerate(domains):  # in chunks: bounded memory on big splits
            for start in range(0, n, CHUNK_ROWS):
                stop = min(start + CHUNK_ROWS, n)
                images[index * n + start:index * n + stop] = corrupt_images(
                    np.asarray(clean[start:stop]), domain, seed, rows=np.arange(start, stop))
        images.flush()
        del images
        extra = {"domain": f"{SPLIT}{DOMAIN_SUFFIX}", "row": f"{SPLIT}{ROW_SUFFIX}"}
        np.save(partial / entry["labels"], np.tile(labels, len(domains)), allow_pickle=False)
        np.save(partial / extra["domain"], np.repeat(np.arange(len(domains)), n),
                allow_pickle=False)
        np.save(partial / extra["row"], np.tile(np.arange(n), len(domains)),
                allow_pickle=False)
        names += [entry["images"], entry["labels"], *extra.values()]
        record = {
            "paper": "Hendrycks & Dietterich, ICLR 2019 (ImageNet-C's 15 corruptions)",
            "generator": "imagecorruptions (with hundred's numpy-2 / skimage shim)",
            "seed": seed, "split": SPLIT, "images_per_domain": n,
            "domains": [{"id": i, "corruption": d.corruption, "severity": d.severity}
                        for i, d in enumerate(domains)],
            "arrays": extra,
            "source": {"path": str(source), "name": meta["name"],
                       "fingerprint": fingerprint(dataset)}}
        new_meta = dict(meta)
        splits = dict(meta["splits"])
        splits[SPLIT] = {**entry, "count": n * len(domains),
                         "class_counts": [c * len(domains) for c in entry["class_counts"]]}
        new_meta.update({
            "name": f"{meta['name']}+corrupt", "splits": splits,
            "files": record_arrays(partial, names),
            "info": {**(meta.get("info") or {}), "corruption": record},
            "corruption": record, "hundred_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        publish_copy(partial, out, new_meta, replace)
    return new_meta


def load_corrupted_val(path: str | os.PathLike) -> tuple[dict[str, Any], np.ndarray,
                                                          np.ndarray, np.ndarray]:
    """A pack written by :func:`corrupt_packed`: its corruption record and the val split's
    images, labels and domain ids (all checked by :func:`~hundred.data.pack.load_packed`)."""
    from hundred.data.pack import META, load_packed, packed_path

    directory = packed_path(str(path))
    if directory is None:
        raise HundredError(f"{path} is not a packed dataset (hundred data corrupt writes one)")
    meta = json.loads((directory / META).read_text(encoding="utf-8"))
    record = meta.get("corruption")
    if not isinstance(record, dict):
        raise HundredError(f"{path} is not a corrupted pack (no 'corruption' in meta.json): "
                           "write one with hundred data corrupt PACKED --out DIR")
    val = load_packed(directory).arrays(SPLIT)
    domains = np.load(directory / record["arrays"]["domain"], allow_pickle=False)
    return record, val.images, np.asarray(val.labels), domains


def add_corrupt_command(data_commands: Any) -> None:
    """``hundred data corrupt PACKED --out DIR``."""
    parser = data_commands.add_parser(
        "corrupt", help="corrupted copies of a packed dataset's val split (ImageNet-C's 15 "
        "corruptions x severities), the test stream of test-time adaptation",
        description="Writes DIR: PACKED with its val split replaced by one corrupted copy per "
        "(corruption, severity) domain, domain ids in meta.json and val_domain.npy. "
        "Deterministic for a seed; written atomically; bad input writes nothing.")
    parser.add_argument("packed", help="a packed dataset (hundred data pack)")
    parser.add_argument("--out", required=True, help="the new dataset folder (must not exist)")
    parser.add_argument("--corruptions", default="all", help="all (the 15 types) or "
                        "name,name,... (default all)")
    parser.add_argument("--severities", default="5", help="5, 1-5 or 1,3,5 (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random corruptions")
    parser.add_argument("--replace", "--force", dest="replace", action="store_true",
                        help="replace an existing packed --out")
    parser.set_defaults(func=_cmd_corrupt)


def _cmd_corrupt(args: argparse.Namespace) -> None:
    meta = corrupt_packed(args.packed, args.out, args.corruptions, args.severities,
                          seed=args.seed, replace=args.replace)
    record = meta["corruption"]
    print(f"wrote {args.out}: {len(record['domains'])} domains x "
          f"{record['images_per_domain']} {SPLIT} images of {record['source']['name']} "
          f"(seed {args.seed}); train unchanged")
