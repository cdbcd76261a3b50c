"""Atomic file writes: a killed process never leaves a half-written file under the final name.

Every writer goes to a temporary name in the same directory, is flushed and fsynced, then
renamed over the final name (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

from hundred.errors import HundredError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on clean exit rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_open` leaves when its process is killed
    mid-write (``.<name>.<random>.tmp``) anywhere below ``directory``; returns them."""
    removed = []
    for path in Path(directory).rglob(".*.tmp"):
        if path.is_file() and path.name.count(".") >= 3:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write one array in ``.npy`` format, atomically (memory-mappable on read)."""
    with atomic_open(path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks so large arrays never sit in memory twice."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or directory to disk, so a crash after a rename cannot lose data."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms; best effort
        return
    try:
        with contextlib.suppress(OSError):  # not every filesystem syncs directories
            os.fsync(fd)
    finally:
        os.close(fd)


def check_replaceable(out: Path, force: bool, is_kind: Callable[[Path], bool], kind: str
                      ) -> None:
    """Refuse an existing ``out``; with ``force`` allow replacing only a directory that
    ``is_kind`` recognises (or an empty one): a typo such as ``--out ~`` must never wipe a
    home directory."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise HundredError(f"{out} already exists; choose another --out or pass --force to "
                           "replace it")
    if not out.is_dir() or out.is_symlink() or not (is_kind(out) or not any(out.iterdir())):
        raise HundredError(f"{out} exists and is not a {kind}; refusing to replace it even "
                           "with --force (delete it yourself if that is what you want)")


def publish_directory(partial: Path, out: Path, force: bool,
                      is_kind: Callable[[Path], bool], kind: str) -> None:
    """Rename the finished directory ``partial`` to ``out``; with ``force`` swap an old
    ``out`` (checked by :func:`check_replaceable`) out first. Replacing is two renames: a
    crash between them leaves the old data at ``OUT.old-<pid>`` and nothing at ``OUT`` —
    never a mix of the two."""
    old: Path | None = None
    if out.exists():
        check_replaceable(out, force, is_kind, kind)  # it may have appeared meanwhile
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(partial, out)
    except OSError as error:
        if old is not None:
            os.rename(old, out)
        raise HundredError(f"cannot move the {kind} to {out}: {error}") from None
    fsync_path(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
