"""Packed copies: a new packed dataset derived from another (a poisoned copy, a corrupted
copy) or generated (3D-DST), built in ``OUT.partial-<pid>`` and renamed into place only when
complete, so a failed or killed build never leaves a half-written dataset at ``OUT``. Used by
``hundred data poison``, ``hundred data corrupt`` and ``hundred data dst3d``."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hundred.errors import HundredError


def check_copy_paths(source: Path, out: Path, replace: bool) -> None:
    """HundredError unless ``source`` is a packed dataset and ``out`` a place for a copy of
    it: not the source, not inside it (nor it inside ``out``), and free unless ``replace``."""
    from hundred.data.pack import is_packed

    if not source.exists():
        raise HundredError(f"{source} does not exist: give a packed directory "
                           f"(hundred data pack SOURCE --res R --out DIR)")
    if not is_packed(source):
        raise HundredError(f"{source} is not a packed dataset (no meta.json of format "
                           f"hundred-packed): pack it first with hundred data pack SOURCE "
                           f"--res R --out DIR")
    real_source, real_out = source.resolve(), out.resolve()
    if real_out == real_source:
        raise HundredError(f"--out {out} is the source itself; a copy is written")
    if real_source in real_out.parents or real_out in real_source.parents:
        raise HundredError(f"--out {out} and the source {source} lie inside one another; "
                           f"choose an --out beside the source")
    if (out.exists() or out.is_symlink()) and not replace:
        raise HundredError(f"{out} already exists; choose another --out or pass --replace")
    from hundred.io import check_replaceable

    check_replaceable(out, replace, is_packed, "packed dataset")


@contextmanager
def building_copy(out: Path) -> Iterator[Path]:
    """A fresh ``OUT.partial-<pid>`` directory to build a packed copy in, removed when the
    block fails; :func:`publish_copy` renames it into place."""
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    try:
        if partial.exists():  # left by an earlier failed call of this very process
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    except OSError as error:
        raise HundredError(f"cannot write the output next to {out}: {error}") from None
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def publish_copy(partial: Path, out: Path, meta: dict[str, Any], replace: bool) -> None:
    """Write ``meta`` last (its presence marks a finished copy), sync, and rename ``partial``
    to ``out`` (replacing a packed dataset there only when ``replace``)."""
    from hundred.data.pack import META, is_packed
    from hundred.io import fsync_path, publish_directory, write_json

    write_json(partial / META, meta)
    fsync_path(partial)
    publish_directory(partial, out, replace, is_packed, "packed dataset")


def check_copy_space(out: Path, meta: dict[str, Any]) -> None:
    """HundredError unless the disk under ``out`` holds the files ``meta`` lists (+ 1 MiB)."""
    needed = sum(int(facts["bytes"]) for facts in meta["files"].values()) + (1 << 20)
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise HundredError(f"the copy needs {needed / 1e9:.2f} GB, but {existing} has "
                           f"{free / 1e9:.2f} GB free")
