"""Packing: decode and resize a dataset once into uint8 arrays that load at memory speed.

A packed directory holds, per split, ``{split}_images.npy`` (uint8 ``N, R, R, 3``) and
``{split}_labels.npy`` (int64), plus ``meta.json``: classes, counts, the sha256 of every
array, what was skipped and why, and where the data came from (principle 3).

How it stays safe and bounded at ImageNet scale:

* **Validate first.** Resolution, resize mode, worker count, the output path, free disk
  space and the source itself are checked before a single image is decoded.
* **Bounded memory.** Each split's image array is preallocated on disk with
  ``np.lib.format.open_memmap``; worker processes decode chunks of files and write straight
  into their rows of that file, so neither the pixels nor the pipe between processes ever
  hold more than a few chunks.
* **Skip and report.** A file that does not decode (see :mod:`hundred.data.decode`) is
  dropped; the surviving rows are compacted in place and labels stay aligned. Skips are
  listed in ``meta.json`` and printed; a class left with no images is a warning.
* **Atomic.** Everything is built in a sibling ``OUT.partial-<pid>`` directory; ``meta.json``
  is written last, then the directory is renamed to ``OUT``. A killed pack leaves no ``OUT``
  at all, and :func:`verify` rejects any directory without ``meta.json`` or whose arrays
  do not match their checksums.
* **Checked on every read.** :func:`load_packed` (behind every command that trains or
  evaluates) refuses a malformed ``meta.json``, an array whose sha256, dtype or shape is not
  what meta.json records, and labels outside ``[0, num_classes)``, naming the file and
  field; checksums are cached in ``verified.json`` (see "read back" below). ``pack`` writes
  that cache itself, so the first load of a fresh pack hashes nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from hundred.data import decode
from hundred.data.dataset import ArraySplit, Dataset, FileSplit, labels_outside
from hundred.errors import HundredError
from hundred.io import (check_replaceable, fsync_path, publish_directory, sha256_file,
                        write_json, write_npy)

FORMAT = "hundred-packed"
FORMAT_VERSION = 1
META = "meta.json"
MIN_RES, MAX_RES = 4, 2048
MAX_CHUNK = 64  # files per worker task: big enough to amortise IPC, small enough to balance
COPY_ROWS = 1024  # rows moved at a time when compacting out skipped images
SHOW_SKIPPED = 5  # skipped files printed on screen (all of them are in meta.json)
SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")


# ------------------------------------------------------------------------------ validation


def _check_arguments(res: Any, resize: str, workers: int | None) -> None:
    if isinstance(res, bool) or not isinstance(res, (int, np.integer)) \
            or not MIN_RES <= res <= MAX_RES:
        raise HundredError(f"--res must be an integer in [{MIN_RES}, {MAX_RES}], got {res!r}")
    if resize not in decode.RESIZE_MODES:
        raise HundredError(f"--resize must be one of {', '.join(decode.RESIZE_MODES)}, got {resize!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise HundredError(f"--workers must be a positive integer, got {workers!r}")


def _check_out(out: Path, force: bool) -> None:
    """Refuse an existing ``out``; with ``force`` replace only a packed dataset (or an empty
    directory)."""
    check_replaceable(out, force, is_packed, "packed dataset")


def _check_dataset(dataset: Dataset) -> None:
    if not dataset.splits:
        raise HundredError(f"{dataset.name} has no splits to pack")
    if dataset.num_classes == 0:
        raise HundredError(f"{dataset.name} has no classes")
    for name, split in dataset.splits.items():
        if not SPLIT_NAME.fullmatch(name):
            raise HundredError(f"{dataset.name}: split name {name!r} is not a plain word")
        labels = split.labels
        if len(labels) and (not np.issubdtype(labels.dtype, np.integer)
                            or labels.min() < 0 or labels.max() >= dataset.num_classes):
            raise HundredError(
                f"{dataset.name}/{name}: labels must be integers in [0, {dataset.num_classes})"
            )


def _check_space(out: Path, dataset: Dataset, res: int) -> None:
    """Fail up front, not after an hour of decoding, when the arrays cannot fit on disk."""
    rows = sum(len(split) for split in dataset.splits.values())
    needed = rows * (res * res * 3 + 8) + (1 << 20)
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise HundredError(
            f"packing {rows} images at {res}x{res} needs {needed / 1e9:.2f} GB, "
            f"but {existing} has {free / 1e9:.2f} GB free"
        )


def _available_cpus() -> int:
    """Cores this process may use (respects CPU affinity / container limits where visible)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _open(source: str | Dataset, options: dict[str, Any] | None) -> tuple[Dataset, str | None]:
    from hundred.data.sources import open_source

    if isinstance(source, Dataset):
        if options:
            raise HundredError("options apply to a source spec, not to a Dataset object")
        return source, None
    return open_source(str(source), **(options or {})), str(source)


# -------------------------------------------------------------------------------- decoding


def _decode_chunk(task: tuple[str, int, list[str], int, str, bool]) -> tuple[int, list[tuple[int, str]]]:
    """Decode ``files`` into rows ``start...`` of the ``.npy`` at ``images_path``.

    Runs in a worker process: it opens the preallocated array itself (a shared file
    mapping, so writes land in the one file) and returns only the skip reasons.
    """
    images_path, start, files, res, resize, draft = task
    images = np.load(images_path, mmap_mode="r+")
    skipped: list[tuple[int, str]] = []
    for offset, file in enumerate(files):
        result = decode.decode_image(file, res, resize=resize, draft=draft)
        if isinstance(result, str):
            skipped.append((start + offset, result))
        else:
            images[start + offset] = result
    del images
    return len(files), skipped


def _fill_from_files(
    images_path: Path, split: FileSplit, res: int, resize: str, draft: bool,
    pool: Any, workers: int, advance: Callable[[int], None],
) -> dict[int, str]:
    """Decode every file of ``split`` into its row; returns ``{row: reason}`` for skips."""
    chunk = max(1, min(MAX_CHUNK, math.ceil(len(split) / (workers * 4))))
    files = [str(file) for file in split.files]
    tasks = [(str(images_path), start, files[start:start + chunk], res, resize, draft)
             for start in range(0, len(files), chunk)]
    results: Iterable[tuple[int, list[tuple[int, str]]]]
    results = pool.imap_unordered(_decode_chunk, tasks) if pool is not None and len(tasks) > 1 \
        else map(_decode_chunk, tasks)
    reasons: dict[int, str] = {}
    for done, skipped in results:
        reasons.update(skipped)
        advance(done)
    return reasons


def _fill_from_arrays(
    images_path: Path, split: ArraySplit, res: int, resize: str, advance: Callable[[int], None]
) -> None:
    """Copy (resizing where the resolution differs) already-decoded images into their rows."""
    images = np.load(images_path, mmap_mode="r+")
    for start in range(0, len(split), COPY_ROWS):
        block = np.asarray(split.images[start:start + COPY_ROWS])
        if block.shape[1:3] != (res, res):
            block = np.stack([decode.resize_array(image, res, resize) for image in block])
        images[start:start + len(block)] = block
        advance(len(block))
    images.flush()
    del images


def _compact(images_path: Path, keep: np.ndarray) -> None:
    """Move the rows ``keep`` (ascending) to the front and cut the file to ``len(keep)`` rows.

    Moving forward in ascending order never overwrites a row still to be read.
    """
    first_moved = int(np.argmax(keep != np.arange(len(keep)))) if len(keep) else 0
    images = np.load(images_path, mmap_mode="r+")
    if len(keep) and keep[first_moved] != first_moved:
        for dst in range(first_moved, len(keep), COPY_ROWS):
            src = keep[dst:dst + COPY_ROWS]
            images[dst:dst + len(src)] = images[src]
        images.flush()
    row_shape = images.shape[1:]
    del images
    _truncate_rows(images_path, len(keep), row_shape)


def _truncate_rows(path: Path, rows: int, row_shape: tuple[int, ...]) -> None:
    """Shrink a C-ordered uint8 ``.npy`` to its first ``rows`` rows, in place.

    numpy pads ``.npy`` headers so the first dimension can change without moving the data;
    should the new header not fit exactly, the array is copied to a fresh file instead.
    """
    import io

    with open(path, "r+b") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
            else np.lib.format.read_array_header_2_0
        read_header(handle)
        data_offset = handle.tell()
        header = io.BytesIO()
        write_header = np.lib.format.write_array_header_1_0 if version == (1, 0) \
            else np.lib.format.write_array_header_2_0
        write_header(header, {"descr": "|u1", "fortran_order": False,
                              "shape": (rows, *row_shape)})
        if len(header.getvalue()) == data_offset:
            handle.seek(0)
            handle.write(header.getvalue())
            handle.truncate(data_offset + rows * int(np.prod(row_shape)))
            return
    old = np.load(path, mmap_mode="r")
    write_npy(path, np.asarray(old[:rows]))  # rare fallback; the rows fit in memory or not at all


def _fsync(path: Path) -> None:
    fsync_path(path)


# ------------------------------------------------------------------------------------ pack


def _jsonable(value: Any) -> Any:
    """``Dataset.info`` made JSON-safe (paths, numpy scalars and arrays)."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _few(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f" ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _progress(quiet: bool) -> Any:
    """A rich progress bar with rate and ETA (disabled when ``quiet``)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.0f} img/s" if task.speed else "- img/s")

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        disable=quiet, transient=False,
    )


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)  # paths stay on one line


def pack(
    source: str | Dataset,
    *,
    out: Path,
    res: int,
    resize: str = "shorter-crop",
    workers: int | None = None,
    draft: bool = True,
    force: bool = False,
    options: dict[str, Any] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Decode ``source`` (a spec string or a :class:`Dataset`) once into ``out``; returns meta.

    ``res``: output side length; ``resize``: ``"shorter-crop"`` or ``"stretch"``;
    ``workers``: decoding processes (default: usable cores); ``draft``: JPEG draft mode;
    ``force``: replace an existing packed ``out``; ``options``: the source's options;
    ``quiet``: no progress bar or summary (skips and warnings are still printed).
    """
    started = time.time()
    out = Path(out).expanduser().absolute()
    _check_arguments(res, resize, workers)
    res = int(res)
    workers = workers or _available_cpus()
    _check_out(out, force)
    dataset, spec = _open(source, options)
    _check_dataset(dataset)
    _check_space(out, dataset, res)

    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    _warn_leftovers(out, partial)
    try:
        if partial.exists():  # left by an earlier failed call in this very process
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    except OSError as error:
        raise HundredError(f"cannot write the output next to {out}: {error}") from None
    try:
        stats: dict[str, list[int] | None] = {}
        meta = _pack_into(partial, dataset, spec, options, res, resize, draft, workers, quiet,
                          stats)
        meta["seconds"] = round(time.time() - started, 2)
        # the arrays were just hashed: record that, so the first load need not hash again
        _write_cache(partial, {name: {"sha256": facts["sha256"], "stat": stats[name]}
                               for name, facts in meta["files"].items() if stats.get(name)})
        write_json(partial / META, meta)  # last: its presence marks a finished pack
        _fsync(partial)
        _publish(partial, out, force)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _report(meta, out, quiet)
    return meta


def _pack_into(
    partial: Path, dataset: Dataset, spec: str | None, options: dict[str, Any] | None,
    res: int, resize: str, draft: bool, workers: int, quiet: bool,
    stats: dict[str, list[int] | None],
) -> dict[str, Any]:
    """Write every split's arrays into ``partial``; return the meta (without writing it).
    ``stats`` receives each array's stat key as it was hashed (for the checksum cache)."""
    skipped: list[dict[str, str]] = [dict(entry) for entry in dataset.skipped]
    splits_meta: dict[str, Any] = {}
    files_meta: dict[str, Any] = {}
    warnings: list[str] = []
    decoding = workers > 1 and any(
        isinstance(split, FileSplit) and len(split) > 1 for split in dataset.splits.values()
    )
    # The pool starts before the progress bar's refresh thread exists (safe to fork).
    largest = max(len(split) for split in dataset.splits.values())
    pool = multiprocessing.get_context().Pool(min(workers, largest)) if decoding else None
    try:
        with _progress(quiet) as progress:
            for name, split in dataset.splits.items():
                task = progress.add_task(f"{dataset.name} {name}", total=len(split))

                def advance(count: int, task: Any = task) -> None:
                    progress.advance(task, count)

                images_path = partial / f"{name}_images.npy"
                array = np.lib.format.open_memmap(
                    images_path, mode="w+", dtype=np.uint8, shape=(len(split), res, res, 3)
                )
                del array  # workers and fillers reopen it by path
                reasons: dict[int, str] = {}
                if isinstance(split, ArraySplit):
                    _fill_from_arrays(images_path, split, res, resize, advance)
                else:
                    reasons = _fill_from_files(images_path, split, res, resize, draft,
                                               pool, workers, advance)
                    skipped.extend(
                        {"split": name, "file": str(split.files[row]), "reason": reason}
                        for row, reason in sorted(reasons.items())
                    )
                keep = np.setdiff1d(np.arange(len(split)), np.fromiter(reasons, dtype=np.int64))
                if len(keep) < len(split):
                    _compact(images_path, keep)
                labels = np.asarray(split.labels, dtype=np.int64)[keep]
                labels_path = partial / f"{name}_labels.npy"
                write_npy(labels_path, labels)
                class_counts = np.bincount(labels, minlength=dataset.num_classes)
                empty = [dataset.class_ids[c] for c in np.flatnonzero(class_counts == 0)]
                if empty:
                    warnings.append(f"{name}: {len(empty)} class(es) have no images: {_few(empty)}")
                splits_meta[name] = {
                    "count": int(len(labels)),
                    "class_counts": class_counts.tolist(),
                    "images": images_path.name,
                    "labels": labels_path.name,
                }
                for path, dtype, shape in ((images_path, "uint8", [len(labels), res, res, 3]),
                                           (labels_path, "int64", [len(labels)])):
                    _fsync(path)
                    digest, stats[path.name] = _hash_with_stat(path)
                    files_meta[path.name] = {"sha256": digest, "dtype": dtype,
                                             "shape": shape, "bytes": path.stat().st_size}
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()

    from hundred import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": dataset.name,
        "source": spec,
        "options": _jsonable(options or {}),
        "list": _jsonable(dataset.info.get("list")),
        "resolution": res,
        "resize": resize,
        "resample": decode.RESAMPLE_NAME,
        "draft": bool(draft),
        "num_classes": dataset.num_classes,
        "class_ids": list(dataset.class_ids),
        "class_names": list(dataset.class_names),
        "splits": splits_meta,
        "files": files_meta,
        "skipped": skipped,
        "warnings": warnings,
        "info": _jsonable(dataset.info),
        "hundred_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _warn_leftovers(out: Path, partial: Path) -> None:
    """Point at directories of packs that were killed (they are never reused or deleted here:
    on a shared file system the pack that owns one may still be running on another machine)."""
    prefix = f"{out.name}.partial-"
    stale = sorted(p for p in out.parent.iterdir() if p.name.startswith(prefix) and p != partial) \
        if out.parent.is_dir() else []
    if stale:
        _console(stderr=True).print(
            f"note: unfinished pack(s) from interrupted runs, safe to delete once no pack is "
            f"running: {', '.join(str(p) for p in stale)}", markup=False)


def _publish(partial: Path, out: Path, force: bool) -> None:
    """Rename the finished ``partial`` to ``out`` (:func:`hundred.io.publish_directory`)."""
    publish_directory(partial, out, force, is_packed, "packed dataset")


def _report(meta: dict[str, Any], out: Path, quiet: bool) -> None:
    """Print skips and warnings always; the summary line unless ``quiet``."""
    err = _console(stderr=True)
    skipped = meta["skipped"]
    if skipped:
        err.print(f"[yellow]skipped {len(skipped)} file(s)[/] (all listed in {out / META}):",
                  markup=True)
        for entry in skipped[:SHOW_SKIPPED]:
            err.print(f"  {entry.get('split', '?')}: {entry.get('file')}: {entry.get('reason')}",
                      markup=False)
        if len(skipped) > SHOW_SKIPPED:
            err.print(f"  ... and {len(skipped) - SHOW_SKIPPED} more", markup=False)
    for warning in meta["warnings"]:
        err.print(f"[yellow]warning:[/] {warning}", markup=True)
    if not quiet:
        counts = ", ".join(f"{name} {entry['count']}" for name, entry in meta["splits"].items())
        size = sum(entry["bytes"] for entry in meta["files"].values())
        _console().print(
            f"packed {meta['name']} ({counts}) at {meta['resolution']}x{meta['resolution']} "
            f"into {out} ({size / 1e6:.1f} MB, {meta['seconds']:.1f} s)", markup=False
        )


# ------------------------------------------------------------------------------- read back
#
# Everything that reads a packed directory (``hundred run/tune/evaluate/check`` through
# :func:`hundred.data.load`, ``hundred data info``, ``hundred data verify``) goes through the
# checks below, so a damaged or hand-edited pack is refused with one line naming the file and
# the field, before a single batch is drawn:
#
# 1. the path: it exists, is a directory, holds ``meta.json`` (:func:`packed_path`);
# 2. ``meta.json``: valid UTF-8 JSON, every field the reader uses present and of the right
#    type, and consistent with itself (:func:`_check_meta`);
# 3. every array: present, of the recorded size, its sha256 equal to meta.json's
#    (:func:`_checksums`; cached in ``verified.json``, see below), then opened with
#    ``allow_pickle=False`` and its dtype and shape compared with meta.json;
# 4. labels: in ``[0, num_classes)`` (the first offender and its index are named), and their
#    per-class counts equal to meta.json's.
#
# The checksum cache: hashing reads every byte (0.7-1 GB/s from the page cache on a 2-core
# CPU with SHA extensions, disk speed when cold: 2.3 s for a 100-class 64 px pack, 1.6 GB;
# docs/reliability.md), so a verified array's (size, mtime, ctime) and sha256 are recorded in
# ``verified.json`` next to the data, written atomically. A later load hashes only arrays
# whose size, mtime or ctime changed (any write changes the ctime, even one that puts the
# mtime back). A read-only directory is verified on every load, without a cache.
# ``hundred data verify`` always hashes everything and refreshes the cache.

VERIFIED = "verified.json"
VERIFIED_FORMAT = "hundred-verified"
VERIFIED_VERSION = 1
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_MISSING = object()


def is_packed(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding a ``meta.json`` written by :func:`pack`."""
    meta_path = Path(path) / META
    try:
        if not meta_path.is_file():
            return False
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def packed_path(spec: str | os.PathLike) -> Path | None:
    """The packed directory ``spec`` names, or ``None`` when it is a source spec.

    A path holding a ``meta.json`` is packed data (whatever its name); a spec that starts
    with a known source name (``synth100``, ``cifar10:PATH`` ...) is a source; anything else
    is taken for a path to packed data and must be one: a missing path, a file, or a
    directory without ``meta.json`` is a :class:`HundredError` saying which.
    """
    from hundred.data.sources import SOURCES

    text = os.fspath(spec)
    path = Path(text).expanduser()
    if os.path.lexists(path / META):
        return path
    name = text.partition(":")[0]
    if not isinstance(spec, os.PathLike) and name in SOURCES:
        return None
    if not path.exists():
        message = f"{path} does not exist"
        if name and not any(sep in name for sep in ("/", "\\", "~", ".")):
            message += f" and {name!r} is not a data source (known: {', '.join(SOURCES)})"
        raise HundredError(message)
    if not path.is_dir():
        raise HundredError(f"{path} is not a directory: packed data is the directory "
                           f"`hundred data pack SOURCE --res R --out DIR` writes")
    message = (f"no {META} in {path}: not a packed dataset (run `hundred data pack SOURCE "
               f"--res R --out DIR` to make one; an interrupted pack never writes {META})")
    if (path / "train").is_dir():
        message += f"; for a folder of class folders: hundred data pack imagefolder:{path} " \
                   f"--res R --out DIR"
    raise HundredError(message)


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool)) \
        or value is None else repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"got {text} ({type(value).__name__})"


def _meta_error(meta_path: Path, field: str, expected: str, value: Any = _MISSING) -> HundredError:
    problem = f"{field} is missing (it must be {expected})" if value is _MISSING \
        else f"{field} must be {expected}, {_show(value)}"
    return HundredError(f"{meta_path}: {problem} (edited or damaged since packing; pack again)")


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_plain_name(value: Any) -> bool:
    return isinstance(value, str) and value not in ("", ".", "..") and Path(value).name == value \
        and "\\" not in value


def _is_int1(value: Any) -> bool:
    return _is_int(value, 1)


def _check_meta(meta: Any, meta_path: Path) -> dict[str, Any]:
    """``meta`` if every field a reader uses is present, well typed and self-consistent;
    otherwise a :class:`HundredError` naming the first bad field (dotted, as in
    ``splits.train.count``)."""
    if not isinstance(meta, dict):
        raise HundredError(f"{meta_path} is not a JSON object ({_show(meta)}): not the meta "
                           f"file of a packed dataset")

    def need(where: dict[str, Any], key: str, field: str, expected: str,
             ok: Callable[[Any], bool]) -> Any:
        value = where.get(key, _MISSING)
        if value is _MISSING or not ok(value):
            raise _meta_error(meta_path, field, expected, value)
        return value

    need(meta, "format", "format", f'"{FORMAT}"', lambda v: v == FORMAT)
    version = need(meta, "format_version", "format_version", "an integer >= 1", _is_int1)
    if version > FORMAT_VERSION:
        raise HundredError(f"{meta_path.parent} was packed by a newer hundred (format version "
                           f"{version}); upgrade hundred to read it")
    need(meta, "name", "name", "a non-empty string", lambda v: isinstance(v, str) and v != "")
    classes = need(meta, "num_classes", "num_classes", "an integer >= 1", _is_int1)
    for key in ("class_ids", "class_names"):
        need(meta, key, key, f"a list of {classes} strings (num_classes)",
             lambda v: isinstance(v, list) and len(v) == classes
             and all(isinstance(item, str) for item in v))
    res = need(meta, "resolution", "resolution", f"an integer in [{MIN_RES}, {MAX_RES}]",
               lambda v: _is_int(v, MIN_RES) and v <= MAX_RES)
    need(meta, "resize", "resize", "a string", lambda v: isinstance(v, str))
    for key, expected, ok in (
        ("skipped", "a list of objects", lambda v: isinstance(v, list)
         and all(isinstance(item, dict) for item in v)),
        ("warnings", "a list of strings", lambda v: isinstance(v, list)
         and all(isinstance(item, str) for item in v)),
        ("info", "an object or null", lambda v: v is None or isinstance(v, dict)),
    ):
        if key in meta:
            need(meta, key, key, expected, ok)

    files = _check_files(meta, meta_path)
    splits = need(meta, "splits", "splits", "a non-empty object of split name -> facts",
                  lambda v: isinstance(v, dict) and len(v) > 0)
    for split, entry in splits.items():
        field = f"splits.{split}"
        if not isinstance(split, str) or not SPLIT_NAME.fullmatch(split):
            raise _meta_error(meta_path, "splits", "keyed by plain words (train, val)", split)
        if not isinstance(entry, dict):
            raise _meta_error(meta_path, field, "an object (count, class_counts, images, labels)",
                              entry)
        count = need(entry, "count", f"{field}.count", "an integer >= 0", _is_int)
        need(entry, "class_counts", f"{field}.class_counts",
             f"{classes} integers >= 0 (num_classes) that sum to {field}.count ({count})",
             lambda v: isinstance(v, list) and len(v) == classes
             and all(_is_int(n) for n in v) and sum(v) == count)
        for key, dtype, shape in (("images", "uint8", [count, res, res, 3]),
                                  ("labels", "int64", [count])):
            name = need(entry, key, f"{field}.{key}", "a plain file name in the directory",
                        _is_plain_name)
            if name not in files:
                raise _meta_error(meta_path, f"{field}.{key}",
                                  "an array listed under files (with its sha256)", name)
            facts = files[name]
            if facts["dtype"] != dtype:
                raise _meta_error(meta_path, f"files[{name}].dtype", f'"{dtype}" ({field}.{key})',
                                  facts["dtype"])
            if facts["shape"] != shape:
                raise _meta_error(meta_path, f"files[{name}].shape",
                                  f"{shape} ({field}.count, resolution)", facts["shape"])
    return meta


def _check_files(meta: dict[str, Any], meta_path: Path) -> dict[str, Any]:
    """``meta["files"]``, the arrays a meta.json lists, if each names a plain ``.npy`` file and
    records its sha256, dtype, shape and size; otherwise a :class:`HundredError` naming the
    field. Shared by packed data and data derived from it."""

    def need(where: dict[str, Any], key: str, field: str, expected: str,
             ok: Callable[[Any], bool]) -> Any:
        value = where.get(key, _MISSING)
        if value is _MISSING or not ok(value):
            raise _meta_error(meta_path, field, expected, value)
        return value

    files = need(meta, "files", "files", "an object of array file name -> facts",
                 lambda v: isinstance(v, dict) and len(v) > 0)
    for name, facts in files.items():
        field = f"files[{name}]"
        if not _is_plain_name(name) or not name.endswith(".npy"):
            raise _meta_error(meta_path, "files", "keyed by plain .npy file names", name)
        if not isinstance(facts, dict):
            raise _meta_error(meta_path, field, "an object (sha256, dtype, shape, bytes)", facts)
        need(facts, "sha256", f"{field}.sha256", "64 hex digits",
             lambda v: isinstance(v, str) and SHA256.fullmatch(v) is not None)
        need(facts, "dtype", f"{field}.dtype", "a numpy dtype name", lambda v: isinstance(v, str))
        need(facts, "shape", f"{field}.shape", "a list of integers >= 0",
             lambda v: isinstance(v, list) and all(_is_int(n) for n in v))
        need(facts, "bytes", f"{field}.bytes", "an integer >= 0", _is_int)
    return files


def _read_json_object(meta_path: Path) -> Any:
    """The parsed contents of ``meta_path``; a :class:`HundredError` when unreadable or not
    JSON."""
    try:
        raw = meta_path.read_bytes()
    except OSError as error:
        raise HundredError(f"{meta_path} is unreadable: {error.strerror or error}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise HundredError(f"{meta_path} is not valid JSON (not UTF-8 text); the pack is "
                           f"damaged: pack again") from None
    except json.JSONDecodeError as error:
        raise HundredError(f"{meta_path} is not valid JSON ({error.msg}: line {error.lineno} "
                           f"column {error.colno}); the pack is damaged: pack again") from None
    except RecursionError:
        raise HundredError(f"{meta_path} is not valid JSON (nested too deeply)") from None


def _read_meta(path: Path) -> dict[str, Any]:
    """The checked ``meta.json`` of the packed directory ``path`` (see :func:`_check_meta`)."""
    meta_path = path / META
    if not os.path.lexists(meta_path):
        packed_path(path)  # raises: path missing, not a directory, or no meta.json
    return _check_meta(_read_json_object(meta_path), meta_path)


# ------------------------------------------------------------------------ checksum cache


def _stat_key(file: Path) -> list[int]:
    """What the cache trusts a file by: size, mtime and ctime (ns). Any write moves the ctime,
    even one followed by ``touch -r`` to put the mtime back."""
    stat = file.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _hash_with_stat(file: Path) -> tuple[str, list[int] | None]:
    """sha256 of ``file`` and its stat key, or ``None`` for the key when the file changed
    while it was read (then the hash is not cached)."""
    before = _stat_key(file)
    digest = sha256_file(file)
    return digest, before if _stat_key(file) == before else None


def _read_cache(path: Path) -> dict[str, Any]:
    """The verified entries of ``path/verified.json``; anything unreadable counts as none."""
    try:
        cache = json.loads((path / VERIFIED).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(cache, dict) or cache.get("format") != VERIFIED_FORMAT \
            or cache.get("version") != VERIFIED_VERSION or not isinstance(cache.get("files"), dict):
        return {}
    return cache["files"]


def _cached(cache: dict[str, Any], name: str, sha256: str, key: list[int]) -> bool:
    entry = cache.get(name)
    return isinstance(entry, dict) and entry.get("sha256") == sha256.lower() \
        and entry.get("stat") == key


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    """Record verified arrays; a directory that cannot be written (read-only media, another
    user's data) is fine: the next load verifies again."""
    from hundred import __version__

    with contextlib.suppress(OSError):
        write_json(path / VERIFIED, {
            "format": VERIFIED_FORMAT, "version": VERIFIED_VERSION,
            "about": "arrays whose sha256 matched meta.json, by (size, mtime_ns, ctime_ns); "
                     "a cache: delete it freely",
            "hundred_version": __version__,
            "files": entries,
        })


def _checksums(path: Path, files: dict[str, Any], rehash: bool) -> dict[str, str]:
    """``{array: problem}`` for arrays that are missing, of the wrong size or whose sha256
    differs from ``files`` (meta.json); arrays not listed are fine.

    Unless ``rehash``, an array whose stat key and expected sha256 are in the cache is not
    read. The rest are hashed in parallel threads (hashlib releases the GIL), and the cache
    is rewritten when anything changed.
    """
    from concurrent.futures import ThreadPoolExecutor

    cache = {} if rehash else _read_cache(path)
    problems: dict[str, str] = {}
    verified: dict[str, Any] = {}
    to_hash: list[str] = []
    for name, facts in files.items():
        file = path / name
        if not file.is_file():
            problems[name] = f"missing {name}"
            continue
        try:
            key = _stat_key(file)
        except OSError as error:
            problems[name] = f"{name}: unreadable ({error.strerror or error})"
            continue
        if key[0] != facts["bytes"]:
            problems[name] = (f"{name}: {key[0]} bytes, meta.json says {facts['bytes']} "
                              f"(truncated or replaced since packing)")
        elif _cached(cache, name, facts["sha256"], key):
            verified[name] = cache[name]
        else:
            to_hash.append(name)
    def hash_one(name: str) -> tuple[str, list[int] | None] | OSError:
        try:
            return _hash_with_stat(path / name)
        except OSError as error:  # permission denied, I/O error, removed meanwhile
            return error

    if to_hash:
        workers = min(len(to_hash), _available_cpus())
        with ThreadPoolExecutor(workers) as pool:
            hashed = dict(zip(to_hash, pool.map(hash_one, to_hash)))
        for name in to_hash:
            result = hashed[name]
            if isinstance(result, OSError):
                problems[name] = f"{name}: unreadable ({result.strerror or result})"
                continue
            digest, key = result
            if digest != files[name]["sha256"].lower():
                problems[name] = f"{name}: sha256 mismatch (changed or damaged since packing)"
            elif key is not None:
                verified[name] = {"sha256": digest, "stat": key}
    if verified != cache:  # something was hashed, changed or dropped
        _write_cache(path, verified)
    return problems


# ---------------------------------------------------------------------------- array checks


def _open_array(file: Path, mmap: bool) -> np.ndarray:
    """A ``.npy`` file opened without ever unpickling (``allow_pickle=False``)."""
    try:
        return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        text = str(error)
        if "pickle" in text or "Python objects" in text:
            raise HundredError(f"{file.name}: holds pickled Python objects; refused "
                               f"(arrays are loaded with allow_pickle=False, never unpickled)") \
                from None
        raise HundredError(f"{file.name}: not a readable .npy array ({text})") from None


def _failer(path: Path, problems: list[str] | None, remedy: str) -> Callable[[str], None]:
    """With ``problems`` a list, a function appending each problem to it (``verify``); with
    ``None`` one raising the first as a :class:`HundredError` (loading)."""
    def fail(problem: str) -> None:
        if problems is None:
            raise HundredError(f"{path}: {problem}; run `hundred data verify {path}` for a full "
                               f"report, then {remedy}")
        problems.append(problem)

    return fail


def _check_files_on_disk(path: Path, files: dict[str, Any], *, rehash: bool,
                         mmap_names: set[str], fail: Callable[[str], None]
                         ) -> dict[str, np.ndarray]:
    """Step 3 of the checks above for the arrays ``files`` (meta.json's) of ``path``: present,
    of the recorded size and sha256, opened without pickle, of the recorded dtype and shape.
    Returns the arrays that passed (those in ``mmap_names`` memory-mapped)."""
    failed = _checksums(path, files, rehash)
    for problem in failed.values():
        fail(problem)
    arrays: dict[str, np.ndarray] = {}
    for name, facts in files.items():
        if name in failed:
            continue
        try:
            array = _open_array(path / name, mmap=name in mmap_names)
        except HundredError as error:
            fail(str(error))
            continue
        if str(array.dtype) != facts["dtype"] or list(array.shape) != facts["shape"]:
            fail(f"{name}: {array.dtype} {list(array.shape)}, meta.json says "
                 f"{facts['dtype']} {facts['shape']}")
            continue
        arrays[name] = array
    return arrays


def _check_arrays(path: Path, meta: dict[str, Any], *, rehash: bool, mmap: bool,
                  problems: list[str] | None) -> dict[str, np.ndarray]:
    """Steps 3 and 4 of the checks above, on a checked ``meta``: the opened arrays by name.

    With ``problems`` a list, every problem is appended and checking goes on (``verify``);
    with ``None`` the first one raises :class:`HundredError` (loading).
    """
    fail = _failer(path, problems, "pack again")
    images = {entry["images"] for entry in meta["splits"].values()}
    arrays = _check_files_on_disk(path, meta["files"], rehash=rehash,
                                  mmap_names=images if mmap else set(), fail=fail)
    classes = meta["num_classes"]
    for split, entry in meta["splits"].items():
        labels = arrays.get(entry["labels"])
        if labels is None:
            continue
        problem = labels_outside(labels, classes)
        if problem:
            fail(f"{entry['labels']}: {problem}")
        elif np.bincount(labels, minlength=classes).tolist() != entry["class_counts"]:
            fail(f"{split}: per-class label counts differ from meta.json "
                 f"splits.{split}.class_counts")
    return arrays


def _checksum_status(path: Path, meta: dict[str, Any]) -> str:
    """One line for ``hundred data info``: are the arrays verified (from the cache, no
    hashing), or what will the next load hash."""
    cache = _read_cache(path)
    pending = []
    for name, facts in meta["files"].items():
        try:
            key = _stat_key(path / name)
        except OSError:
            return f"{name} is missing: run `hundred data verify {path}`"
        if not _cached(cache, name, facts["sha256"], key):
            pending.append(facts["bytes"])
    if not pending:
        return f"verified (sha256 of every array, cached in {VERIFIED})"
    return (f"{len(pending)} of {len(meta['files'])} array(s) not verified since they last "
            f"changed; the next load hashes them ({sum(pending) / 1e6:.1f} MB)")


def load_packed(path: str | os.PathLike, mmap: bool = True) -> Dataset:
    """A packed directory as a :class:`Dataset` of (memory-mapped) :class:`ArraySplit` s.

    Every check of this section runs first (a :class:`HundredError` names the first
    problem): meta.json's fields, each array's size, sha256 (cached in ``verified.json``),
    dtype and shape, the label range and the per-class counts. Arrays are opened with
    ``allow_pickle=False``. For a directory of derived data (see "derived data" below) it is
    the pack that data belongs to, with ``info["derived"]`` naming the derived directory.
    """
    path = Path(path).expanduser()
    derived = _derived(path)
    if derived is not None:
        parent, derived_meta = derived
        dataset = load_packed(parent, mmap)
        dataset.info["derived"] = {"dir": str(path), "format": derived_meta["format"],
                                   "fingerprint": derived_meta[DERIVED_KEY]["fingerprint"]}
        return dataset
    meta = _read_meta(path)
    arrays = _check_arrays(path, meta, rehash=False, mmap=mmap, problems=None)
    splits: dict[str, ArraySplit | FileSplit] = {
        name: ArraySplit(images=arrays[entry["images"]], labels=arrays[entry["labels"]])
        for name, entry in meta["splits"].items()
    }
    info = dict(meta.get("info") or {})
    info["packed"] = {key: meta.get(key) for key in
                      ("source", "resolution", "resize", "draft", "created", "hundred_version")}
    info["packed"]["dir"] = str(path)
    return Dataset(
        name=meta["name"],
        class_ids=list(meta["class_ids"]),
        class_names=list(meta["class_names"]),
        splits=splits,
        skipped=list(meta.get("skipped", [])),
        info=info,
    )


def verify(path: str | os.PathLike) -> list[str]:
    """Problems with a packed directory (empty list: it is complete and intact).

    The checks of :func:`load_packed`, reporting every problem instead of the first, plus
    arrays present but not listed in meta.json; every array is hashed (the cache is not
    trusted, only refreshed).
    """
    path = Path(path).expanduser()
    try:
        derived = _derived(path)
        if derived is not None:
            return _verify_derived(path, *derived)
        meta = _read_meta(path)
    except HundredError as error:
        return [str(error)]
    problems: list[str] = []
    present = {item.name for item in path.glob("*.npy")}
    for name in sorted(present - set(meta["files"])):
        problems.append(f"unexpected array {name} (not in meta.json)")
    _check_arrays(path, meta, rehash=True, mmap=True, problems=problems)
    return problems


# ---------------------------------------------------------------------------- derived data
#
# Data derived from a packed dataset (a dataset reinforcement: ``hundred data reinforce``)
# lives in a directory of its own. Its meta.json has a ``format`` of its own, lists its arrays
# under ``files`` exactly as a pack's does (sha256, dtype, shape, bytes; checksums cached in
# its own ``verified.json``) and names the pack it belongs to under ``packed``:
# ``{"path": <relative to the directory>, "fingerprint": <hundred.data.fingerprint of the
# pack>}``. Such a directory is accepted wherever packed data is: loading it loads the pack it
# names (``info["derived"]`` points back, for the method that reads the derived arrays with
# :func:`load_derived`), and :func:`verify` checks its arrays, the pack, and that the pack is
# still the data it was derived from.

DERIVED_KEY = "packed"


def _derived(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """``(pack, meta)`` when ``path`` holds data derived from the packed directory ``pack``;
    ``None`` when it holds anything else (the pack reader then says what is wrong)."""
    meta_path = path / META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(meta, dict) or meta.get("format") == FORMAT or DERIVED_KEY not in meta:
        return None
    if not isinstance(meta.get("format"), str):
        raise _meta_error(meta_path, "format", "a string", meta.get("format", _MISSING))
    origin = meta[DERIVED_KEY]
    if not isinstance(origin, dict) or not isinstance(origin.get("path"), str) \
            or not origin["path"] or not isinstance(origin.get("fingerprint"), str):
        raise _meta_error(meta_path, DERIVED_KEY, 'an object {"path": the packed data it '
                          'belongs to, "fingerprint": its fingerprint}', origin)
    _check_files(meta, meta_path)
    parent = Path(os.path.normpath(path / origin["path"]))
    if not is_packed(parent):
        raise HundredError(f"{path} belongs to the packed data at {parent}, which is missing "
                           f"or not packed data: keep the two side by side")
    return parent, meta


def load_derived(path: str | os.PathLike, mmap: bool = True
                 ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The checked meta.json and arrays of the derived data at ``path``: each array's size,
    sha256 (cached in ``verified.json``), dtype and shape as meta.json records, opened with
    ``allow_pickle=False`` (memory-mapped with ``mmap``). A :class:`HundredError` names the
    first problem. The caller checks its own fields and the pack's fingerprint."""
    path = Path(path).expanduser()
    derived = _derived(path)
    if derived is None:
        raise HundredError(f"{path} holds no data derived from a pack (its {META} must name "
                           f"the packed data it belongs to)")
    meta = derived[1]
    fail = _failer(path, None, f"make it again ({meta['format']})")
    arrays = _check_files_on_disk(path, meta["files"], rehash=False,
                                  mmap_names=set(meta["files"]) if mmap else set(), fail=fail)
    return meta, arrays


def record_arrays(path: str | os.PathLike, names: Iterable[str]) -> dict[str, Any]:
    """``files`` entries (sha256, dtype, shape, bytes) for the arrays ``names`` of ``path``,
    for a meta.json; their checksums are cached in ``verified.json``, so the first load
    hashes nothing (as :func:`pack` does)."""
    path = Path(path)
    files: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    for name in names:
        file = path / name
        _fsync(file)
        array = _open_array(file, mmap=True)
        digest, key = _hash_with_stat(file)
        files[name] = {"sha256": digest, "dtype": str(array.dtype), "shape": list(array.shape),
                       "bytes": file.stat().st_size}
        del array
        if key is not None:
            cache[name] = {"sha256": digest, "stat": key}
    _write_cache(path, cache)
    return files


def _verify_derived(path: Path, parent: Path, meta: dict[str, Any]) -> list[str]:
    """:func:`verify` for derived data: its arrays, its pack, and the pack's fingerprint."""
    from hundred.data.subset import fingerprint

    problems: list[str] = []
    present = {item.name for item in path.glob("*.npy")}
    for name in sorted(present - set(meta["files"])):
        problems.append(f"unexpected array {name} (not in meta.json)")
    _check_files_on_disk(path, meta["files"], rehash=True, mmap_names=set(meta["files"]),
                         fail=problems.append)
    parent_problems = verify(parent)
    problems += [f"{parent}: {problem}" for problem in parent_problems]
    if not parent_problems:
        found, expected = fingerprint(load_packed(parent)), meta[DERIVED_KEY]["fingerprint"]
        if found != expected:
            problems.append(f"the packed data at {parent} (fingerprint {found}) is not the data "
                            f"this was made from (fingerprint {expected})")
    return problems


def print_info(target: str | os.PathLike, options: dict[str, Any] | None = None) -> None:
    """A summary table of a packed directory or a source spec (name, classes, counts ...)."""
    from rich.table import Table

    options = options or {}
    path = packed_path(target)
    table = Table(show_header=False, title=str(target))
    table.add_column(style="bold")
    table.add_column()
    derived = _derived(path) if path is not None else None
    if derived is not None:
        if options:
            raise HundredError("a packed directory takes no source options")
        parent, meta = derived
        size = sum(facts["bytes"] for facts in meta["files"].values())
        rows = [("format", str(meta["format"])),
                ("derived from", f"{parent} (fingerprint {meta[DERIVED_KEY]['fingerprint']})"),
                ("arrays", f"{len(meta['files'])}, {size / 1e6:.1f} MB"),
                ("created", f"{meta.get('created')} by hundred {meta.get('hundred_version')}"),
                ("checksums", _checksum_status(path, meta))]
    elif path is not None:
        if options:
            raise HundredError("a packed directory takes no source options")
        meta = _read_meta(path)
        size = sum(facts.get("bytes", 0) for facts in meta["files"].values())
        rows = [
            ("name", meta["name"]),
            ("packed from", str(meta.get("source") or "a Dataset object")),
            ("classes", str(meta["num_classes"])),
            ("class names", _few(meta["class_names"], 5)),
            ("resolution", f"{meta['resolution']}x{meta['resolution']} ({meta['resize']}, "
                           f"{meta.get('resample')}, draft {'on' if meta.get('draft') else 'off'})"),
            *[(f"{name} images", str(entry["count"])) for name, entry in meta["splits"].items()],
            ("skipped", str(len(meta.get("skipped", [])))),
            *[("warning", warning) for warning in meta.get("warnings", [])],
            ("size on disk", f"{size / 1e6:.1f} MB"),
            ("created", f"{meta.get('created')} by hundred {meta.get('hundred_version')}"),
            ("checksums", _checksum_status(path, meta)),
        ]
    else:
        from hundred.data.sources import open_source

        dataset = open_source(str(target), **options)

        def resolution(split: ArraySplit | FileSplit) -> str:
            if isinstance(split, FileSplit):
                return "image files, decoded when packed"
            height, width = split.resolution
            return f"{height}x{width}"

        rows = [
            ("name", dataset.name),
            ("classes", str(dataset.num_classes)),
            ("class names", _few(dataset.class_names, 5)),
            *[(f"{name} images", f"{len(split)} ({resolution(split)})")
              for name, split in dataset.splits.items()],
            ("skipped", str(len(dataset.skipped))),
        ]
        if "list" in dataset.info:
            rows.append(("class list", f"{dataset.info['list']} "
                                       f"(sha256 {str(dataset.info.get('list_sha256'))[:12]})"))
    for key, value in rows:
        table.add_row(key, value)
    _console().print(table)
